#!/usr/bin/env bash
# Interleaved A/B of two vecrec binaries on one RPC over loopback: each
# round serves the ml-latest-small hybrid index (built by run.sh into
# .cache/bench-data/serving/hybrid) with A, then with B, and drives each
# with vecrec-load at every concurrency in CS; medians over the rounds.
#
#   benches/serving/ab.sh OLD_BINARY NEW_BINARY [OUT.jsonl]
#   ROUNDS=3 DUR=5 CS="1 8 32" RPC=recommend benches/serving/ab.sh ...
#
# Build the two binaries first (e.g. `git stash; cargo build --release;
# cp target/release/vecrec /tmp/vecrec-old; git stash pop; ...`).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
[[ $# -ge 2 ]] || { sed -n 2,11p "$0"; exit 2; }
A=$1
B=$2
OUT=${3:-/dev/stdout}
ML="${VECREC_SHARED:-$REPO/../shared}/datasets/ml-latest-small"
INDEX="$REPO/.cache/bench-data/serving/hybrid"
PORT=${PORT:-50079}
[[ -d "$INDEX" ]] || { echo "error: $INDEX missing: run benches/serving/run.sh once" >&2; exit 1; }
# shellcheck disable=SC1091
. "$REPO/.cache/env.sh"
LOG=$(mktemp)
PID=
trap '[[ -n "$PID" ]] && kill "$PID" 2>/dev/null; rm -f "$LOG"' EXIT
rows=$(mktemp)
for round in $(seq "${ROUNDS:-3}"); do
    for label in A B; do
        bin=$A
        [[ $label == B ]] && bin=$B
        "$bin" serve --index "$INDEX" --addr "127.0.0.1:$PORT" >"$LOG" 2>&1 &
        PID=$!
        for _ in $(seq 120); do grep -q "listening on" "$LOG" && break; sleep 0.5; done
        for c in ${CS:-1 8 32}; do
            line=$(target/release/vecrec-load --addr "127.0.0.1:$PORT" --rpc "${RPC:-recommend}" \
                --interactions "$ML/ratings.csv" --min-rating 4 --queries benches/serving/queries.txt \
                --duration "${DUR:-5}" --warmup 1 --concurrency "$c" --label "$label" 2>/dev/null)
            echo "{\"round\":$round,${line#\{}" | tee -a "$rows" >&2
        done
        kill "$PID"; wait "$PID" 2>/dev/null || true
        PID=
    done
done
python3 - "$rows" <<'PY' >"$OUT"
import json, statistics as st, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for c in sorted({r["concurrency"] for r in rows}):
    for label in ("A", "B"):
        s = [r for r in rows if r["concurrency"] == c and r["label"] == label]
        print(json.dumps({"concurrency": c, "label": label, "runs": len(s),
                          "req_s": st.median(r["achieved_rps"] for r in s),
                          "p50_ms": st.median(r["p50_ms"] for r in s),
                          "p99_ms": st.median(r["p99_ms"] for r in s)}))
PY
rm -f "$rows"
