#!/usr/bin/env bash
# Simulated experiments over ml-latest-small (vecrec-experiment simulate):
# A/A false-positive rates, A/B detection, and the users A/B (with and
# without CUPED) and interleaving need, for the experiments of
# benches/experiments/simulate.toml (the full pipeline against popularity
# alone; the reranker at its weight against none).
#
#   benches/experiments/run.sh     # 1,000 A/A and A/B seeds, 100 per power point (~6 min)
#   SEEDS=40 POWER_SEEDS=20 benches/experiments/run.sh   # a quick look
#
# The TRAIN index is built once under .cache/bench-data/simulate (REBUILD=1
# forces a new one). Results: benches/experiments/results/simulate.json and
# simulate.txt (what the tool printed).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
SHARED="${VECREC_SHARED:-$REPO/../shared}"
ML="$SHARED/datasets/ml-latest-small"
WORK="$REPO/.cache/bench-data/simulate"
OUT="$REPO/benches/experiments/results"
SEEDS="${SEEDS:-1000}"
POWER_SEEDS="${POWER_SEEDS:-100}"
MAX_USERS="${MAX_USERS:-102400}"

make -s setup
# shellcheck disable=SC1091
. "$REPO/.cache/env.sh"
cargo build --release --bin vecrec-experiment
[[ "${REBUILD:-0}" == 1 ]] && rm -rf "$WORK"
mkdir -p "$OUT"
/usr/bin/time -v target/release/vecrec-experiment simulate \
  --movielens "$ML" --config benches/experiments/simulate.toml \
  --seeds "$SEEDS" --power-seeds "$POWER_SEEDS" --max-users "$MAX_USERS" \
  --work "$WORK" --json "$OUT/simulate.json" \
  2> >(grep -v '^\s*$' | tail -n 40 > "$OUT/simulate.stderr") | tee "$OUT/simulate.txt"
