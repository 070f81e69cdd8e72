#!/usr/bin/env bash
# Recommendation peers of EVAL.md section 1 (Popularity, ItemKNN, EASE,
# implicit ALS, MiniLM content, EASE + MiniLM fusion) on the ml-latest-small
# split, tuned on validation, scored once on TEST:
#
#   benches/peers/run.sh                         (all peers; ~100 s on 2 cores, ~60 s
#                                                 once the MiniLM item vectors are cached)
#   benches/peers/run.sh --peers itemknn --merge (rerun one peer into the results; see --help)
#
# Extra arguments go to peers.py. Writes benches/peers/results/peers.json and
# peers.md. The peers are installed into .cache/peers-venv from
# benches/peers/requirements.txt (reinstalled when that file changes); the
# MiniLM item vectors are cached under .cache/bench-data/peers/. Needs the
# model files of `make setup` (.cache/models/minilm/) for the content peers.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${VECREC_CACHE:-$REPO/.cache}"
export VECREC_CACHE="$CACHE"
export VECREC_SHARED="${VECREC_SHARED:-$REPO/../shared}"
VENV="$CACHE/peers-venv"
if [[ ! -x "$VENV/bin/python" ]] || ! cmp -s "$REPO/benches/peers/requirements.txt" "$VENV/requirements.txt"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q -r "$REPO/benches/peers/requirements.txt"
  cp "$REPO/benches/peers/requirements.txt" "$VENV/requirements.txt"
fi
# implicit wants single-threaded OpenBLAS while it trains; peers.py limits
# BLAS to 1 thread around ALS and to --threads (default 2) elsewhere.
exec "$VENV/bin/python" "$REPO/benches/peers/peers.py" "$@"
