#!/usr/bin/env bash
# ANN benchmark: every contender timed alike on the same TEXMEX files.
#
#   benches/ann/run.sh [debian60k|bigann10k|fmnistsmall|clustered200k]   (default debian60k)
#   ROUNDS=1 benches/ann/run.sh bigann10k                                 (fewer rounds)
#   SEARCH_THREADS=2 benches/ann/run.sh debian60k     (the batch table: results/<set>-t2.*)
#
# vecrec's own HNSW through `vecrec-ann-bench`: `hnsw` (f32 vectors; its
# build computes distances on int8 codes), `hnsw+f32-build` (the same, built
# on the f32 vectors), `hnsw-int8` (the graph walked on int8 codes, 3x
# oversampled, rescored exactly from the f32 rows), `hnsw-int8-codes` (the
# same walk, answers ranked on the codes alone: no f32 row is read), `hnsw-f16`
# (half-precision copies, the best k rescored); `faiss:HNSW16` (vecrec's FAISS
# backend, FAISS built from source) and the hnsw_rs crate through the same
# tool. The peers from PyPI through benches/ann/peers.py: hnswlib, faiss-cpu
# (HNSW flat, HNSW over SQ8 codes with and without an exact refine stage,
# fast-scan IVF-PQ with an exact refine stage) and usearch (f32, f16, i8).
# M 16, efConstruction 200, builds with 2 threads; searches on one thread,
# vecrec's one query at a time in a Rust loop, the peers' one batch call of
# all queries per timed pass (no Python per-query cost), ef set before the
# timer, imports before the build timer. ROUNDS (default 3) rounds run
# interleaved (every contender once per round); the report takes medians
# and spreads. vecrec's backends also run the filtered sweep at 1%, 10% and
# 50% selectivity in round 1. With SEARCH_THREADS=N the timed passes use N
# threads (vecrec splits the queries over N threads, the peers' batch calls
# get N threads), the filtered sweep and the f32-build, FAISS-from-source
# and hnsw_rs rows are left out, and the files are named <set>-tN.
#
# Sets: debian60k (real sentence embeddings: Debian package descriptions
# embedded by vecrec's own encoder, make_sentences.py; needs the apt lists,
# `apt-get update`), clustered200k (synthetic, make_clustered.py) -- both
# generated on first use into .cache/bench-data/ -- and the shared bigann10k
# and fmnistsmall.
#
# Writes benches/ann/results/<set>.jsonl, <set>.md and <set>.png. The peers are
# installed into .cache/bench-venv from benches/ann/requirements.txt.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SET="${1:-debian60k}"
SHARED="${VECREC_SHARED:-$REPO/../shared}"
CACHE="${VECREC_CACHE:-$REPO/.cache}"
ROUNDS="${ROUNDS:-3}"
ST="${SEARCH_THREADS:-1}"
NAME="$SET"
[[ "$ST" != 1 ]] && NAME="$SET-t$ST"
case "$SET" in
  bigann10k) D="$SHARED/datasets/ann-bigann10k"; B="$D/bigann10k_base.bvecs"; Q="$D/bigann10k_query.bvecs"; G="$D/bigann10k_groundtruth.ivecs"; METRIC=l2 ;;
  fmnistsmall) D="$SHARED/datasets/ann-fmnistsmall"; B="$D/fmnistsmall_base.fvecs"; Q="$D/fmnistsmall_query.fvecs"; G="$D/fmnistsmall_groundtruth.ivecs"; METRIC=l2 ;;
  clustered200k) D="$CACHE/bench-data/clustered200k"; B="$D/clustered200k_base.fvecs"; Q="$D/clustered200k_query.fvecs"; G="$D/clustered200k_groundtruth.ivecs"; METRIC=cosine ;;
  debian60k) D="$CACHE/bench-data/debian60k"; B="$D/debian60k_base.fvecs"; Q="$D/debian60k_query.fvecs"; G="$D/debian60k_groundtruth.ivecs"; METRIC=cosine ;;
  *) echo "unknown data set $SET (debian60k, bigann10k, fmnistsmall, clustered200k)" >&2; exit 2 ;;
esac
VENV="$CACHE/bench-venv"
if [[ ! -x "$VENV/bin/python" ]] || ! cmp -s "$REPO/benches/ann/requirements.txt" "$VENV/requirements.txt"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q -r "$REPO/benches/ann/requirements.txt"
  cp "$REPO/benches/ann/requirements.txt" "$VENV/requirements.txt"
fi
if [[ "$SET" == clustered200k && ! -f "$G" ]]; then
  "$VENV/bin/python" "$REPO/benches/ann/make_clustered.py" "$D" --n 200000 --seed 42
fi
if [[ "$SET" == debian60k && ! -f "$G" ]]; then
  make -s -C "$REPO" setup
  # shellcheck disable=SC1091
  (cd "$REPO" && . "$CACHE/env.sh" && cargo build --release -q --bin vecrec)
  (. "$CACHE/env.sh" && "$VENV/bin/python" "$REPO/benches/ann/make_sentences.py" "$D" --vecrec "$REPO/target/release/vecrec")
fi
# hnsw_rs takes minutes per build on the large sets; VECREC_BENCH_HNSW_RS=0
# skips it. VECREC_BENCH_FAISS=0 skips vecrec's FAISS backend (building FAISS
# from source takes ~7 minutes; the PyPI faiss-cpu rows stay).
RS="${VECREC_BENCH_HNSW_RS:-1}"
FAISS="${VECREC_BENCH_FAISS:-1}"
FEATURES=ann-bench
[[ "$RS" != 0 ]] && FEATURES="$FEATURES,hnsw_rs"
[[ "$FAISS" != 0 ]] && FEATURES="$FEATURES,faiss"
(cd "$REPO" && cargo build --release -q --features "$FEATURES" --bin vecrec-ann-bench)
OUT="$REPO/benches/ann/results"
mkdir -p "$OUT"
ARGS=(--base "$B" --queries "$Q" --gt "$G" --metric "$METRIC" --m 16 --ef-construction 200 --ef 10,16,24,32,48,64,96,128,256 --threads 2 --search-threads "$ST")
if [[ "$ST" != 1 ]]; then RS=0; FAISS=0; fi
BENCH="$REPO/target/release/vecrec-ann-bench"
{
  for round in $(seq 1 "$ROUNDS"); do
    SEL=()
    (( round == 1 && ST == 1 )) && SEL=(--selectivity 0.01,0.1,0.5)
    "$BENCH" --backend hnsw "${ARGS[@]}" --round "$round" "${SEL[@]}"
    if [[ "$ST" == 1 ]]; then "$BENCH" --backend hnsw --build-on-floats "${ARGS[@]}" --round "$round"; fi
    "$BENCH" --backend hnsw-int8 "${ARGS[@]}" --round "$round" "${SEL[@]}"
    "$BENCH" --backend hnsw-int8-codes "${ARGS[@]}" --round "$round"
    "$BENCH" --backend hnsw-f16 "${ARGS[@]}" --round "$round"
    if [[ "$FAISS" != 0 ]]; then "$BENCH" --backend faiss:HNSW16 "${ARGS[@]}" --round "$round"; fi
    if [[ "$RS" != 0 ]]; then "$BENCH" --backend hnsw_rs "${ARGS[@]}" --round "$round"; fi
    for b in hnswlib faiss-hnsw faiss-hnsw-sq8 faiss-hnsw-sq8-refine faiss-ivfpq-refine usearch usearch-f16 usearch-i8; do
      "$VENV/bin/python" "$REPO/benches/ann/peers.py" --backend "$b" "${ARGS[@]}" --round "$round"
    done
  done
} | tee "$OUT/$NAME.jsonl"
CPU="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
PEERS="$(grep -v '^#' "$REPO/benches/ann/requirements.txt" | grep -E 'hnswlib|faiss|usearch' | tr '\n' ' ')"
"$VENV/bin/python" "$REPO/benches/ann/report.py" "$OUT/$NAME.jsonl" "$NAME" \
  "$(nproc) cores ($CPU), $(uname -m), $(free -g | awk '/Mem:/ {print $2}') GiB; peers from PyPI: $PEERS"
