#!/usr/bin/env bash
# ANN benchmark: vecrec's own HNSW (f32; int8 codes with 3x oversampling and
# exact rescoring; f16 copies with the best k rescored), and the hnsw_rs crate and FAISS (HNSW16) through the
# same tool, against hnswlib, faiss-cpu (HNSWFlat, IVF-PQ) and usearch from
# PyPI on the same files, in
# one invocation, then a table and a recall/QPS plot; vecrec's backends also
# run the filtered sweep at 1%, 10% and 50% selectivity. Usage:
#
#   benches/ann/run.sh [bigann10k|fmnistsmall|clustered200k]   (default bigann10k)
#
# clustered200k is generated on first use (make_clustered.py, seed 42) into
# .cache/bench-data/.
#
# Writes benches/ann/results/<set>.jsonl, <set>.md and <set>.png. The peers are
# installed into .cache/bench-venv from benches/ann/requirements.txt.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SET="${1:-bigann10k}"
SHARED="${VECREC_SHARED:-$REPO/../shared}"
case "$SET" in
  bigann10k) D="$SHARED/datasets/ann-bigann10k"; B="$D/bigann10k_base.bvecs"; Q="$D/bigann10k_query.bvecs"; G="$D/bigann10k_groundtruth.ivecs"; METRIC=l2 ;;
  fmnistsmall) D="$SHARED/datasets/ann-fmnistsmall"; B="$D/fmnistsmall_base.fvecs"; Q="$D/fmnistsmall_query.fvecs"; G="$D/fmnistsmall_groundtruth.ivecs"; METRIC=l2 ;;
  clustered200k) D="${VECREC_CACHE:-$REPO/.cache}/bench-data/clustered200k"; B="$D/clustered200k_base.fvecs"; Q="$D/clustered200k_query.fvecs"; G="$D/clustered200k_groundtruth.ivecs"; METRIC=cosine ;;
  *) echo "unknown data set $SET (bigann10k, fmnistsmall, clustered200k)" >&2; exit 2 ;;
esac
VENV="${VECREC_CACHE:-$REPO/.cache}/bench-venv"
if [[ ! -x "$VENV/bin/python" ]] || ! cmp -s "$REPO/benches/ann/requirements.txt" "$VENV/requirements.txt"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q -r "$REPO/benches/ann/requirements.txt"
  cp "$REPO/benches/ann/requirements.txt" "$VENV/requirements.txt"
fi
if [[ "$SET" == clustered200k && ! -f "$G" ]]; then
  "$VENV/bin/python" "$REPO/benches/ann/make_clustered.py" "$D" --n 200000 --seed 42
fi
# hnsw_rs takes minutes per build on the large set; VECREC_BENCH_HNSW_RS=0 skips it.
RS="${VECREC_BENCH_HNSW_RS:-1}"
(cd "$REPO" && cargo build --release -q --features hnsw_rs,faiss --bin vecrec-ann-bench)
OUT="$REPO/benches/ann/results"
mkdir -p "$OUT"
ARGS=(--base "$B" --queries "$Q" --gt "$G" --metric "$METRIC" --m 16 --ef-construction 200 --ef 10,16,24,32,48,64,128,256 --threads 2)
{
  for b in hnsw hnsw_rs; do
    [[ "$b" == hnsw_rs && "$RS" == 0 ]] && continue
    "$REPO/target/release/vecrec-ann-bench" --backend "$b" "${ARGS[@]}" --selectivity 0.01,0.1,0.5
  done
  "$REPO/target/release/vecrec-ann-bench" --backend hnsw-int8 "${ARGS[@]}" --selectivity 0.01,0.1,0.5
  "$REPO/target/release/vecrec-ann-bench" --backend hnsw-f16 "${ARGS[@]}"
  # vecrec's FAISS backend (FAISS built from source by the faiss crate).
  "$REPO/target/release/vecrec-ann-bench" --backend faiss:HNSW16 "${ARGS[@]}"
  for b in hnswlib faiss-hnsw faiss-ivfpq usearch; do
    "$VENV/bin/python" "$REPO/benches/ann/peers.py" --backend "$b" "${ARGS[@]}"
  done
} | tee "$OUT/$SET.jsonl"
CPU="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
PEERS="$(grep -v '^#' "$REPO/benches/ann/requirements.txt" | grep -E 'hnswlib|faiss|usearch' | tr '\n' ' ')"
"$VENV/bin/python" "$REPO/benches/ann/report.py" "$OUT/$SET.jsonl" "$SET" \
  "$(nproc) cores ($CPU), $(uname -m), $(free -g | awk '/Mem:/ {print $2}') GiB; peers from PyPI: $PEERS"
