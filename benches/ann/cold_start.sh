#!/usr/bin/env bash
# Cold start of a large index: 1,000,000 × 384 seeded unit vectors
# (make_clustered.py --n 1000000, cosine), indexed once by vecrec-ann-bench
# (M=16, ef_construction $EFC, default 200; 2 threads). Then every file of
# the generation is evicted from the page cache (posix_fadvise DONTNEED) and a
# fresh process opens the index from disk and answers: `open_s` is the time
# from the start of the open to the first answer, `open_mb` the resident
# memory then, `mem_mb` after the whole ef sweep. Usage:
#
#   benches/ann/cold_start.sh [hnsw|hnsw-int8]      (default hnsw)
#
# Writes benches/ann/results/cold1m-<backend>.jsonl (and -warm.jsonl: the
# build line and the sweep of the first, warm, reopen). The data (1.5 GB) and the
# index (about 1.7 GB) stay under .cache/.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BACKEND="${1:-hnsw}"
EFC="${EFC:-200}"
CACHE="${VECREC_CACHE:-$REPO/.cache}"
D="$CACHE/bench-data/clustered1000k"
B="$D/clustered1000k_base.fvecs"; Q="$D/clustered1000k_query.fvecs"; G="$D/clustered1000k_groundtruth.ivecs"
VENV="$CACHE/bench-venv"
if [[ ! -x "$VENV/bin/python" ]] || ! cmp -s "$REPO/benches/ann/requirements.txt" "$VENV/requirements.txt"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q -r "$REPO/benches/ann/requirements.txt"
  cp "$REPO/benches/ann/requirements.txt" "$VENV/requirements.txt"
fi
[[ -f "$G" ]] || "$VENV/bin/python" "$REPO/benches/ann/make_clustered.py" "$D" --n 1000000 --seed 42
(cd "$REPO" && cargo build --release -q --features hnsw_rs,faiss --bin vecrec-ann-bench)
BIN="$REPO/target/release/vecrec-ann-bench"
ROOT="$CACHE/bench-index/cold1m-$BACKEND-efc$EFC"
ARGS=(--backend "$BACKEND" --base "$B" --queries "$Q" --gt "$G" --metric cosine --m 16 --ef-construction "$EFC" --ef 32,64,128)
OUT="$REPO/benches/ann/results/cold1m-$BACKEND.jsonl"
mkdir -p "$(dirname "$OUT")"
if ! ls -d "$ROOT"/*/ >/dev/null 2>&1; then
  mkdir -p "$ROOT"
  "$BIN" "${ARGS[@]}" --threads 2 --out "$ROOT" > "${OUT%.jsonl}-warm.jsonl"
fi
GEN="$(ls -d "$ROOT"/*/ | head -n 1)"
evict() {
  "$VENV/bin/python" - "$GEN" <<'PY'
import os, sys
d = sys.argv[1]
for f in os.listdir(d):
    fd = os.open(os.path.join(d, f), os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
PY
}
evict
{
  head -n 1 "${OUT%.jsonl}-warm.jsonl" 2>/dev/null || true
  echo "{\"event\": \"cold\", \"backend\": \"$BACKEND\", \"files_mb\": $(du -sm "$GEN" | cut -f1), \"ef_construction\": $EFC}"
  "$BIN" "${ARGS[@]}" --search-only "$GEN"
} | tee "$OUT"
