#!/usr/bin/env bash
# Interleaved A/B of server settings under 4x overload: each round serves
# the ml-latest-small hybrid index (built by run.sh into
# .cache/bench-data/serving/hybrid) once per arm, each arm a set of
# VECREC_* environment settings for `vecrec serve` ("default" for none;
# a word bin=PATH serves that binary instead of target/release/vecrec),
# and drives it with vecrec-load: closed loop at concurrency 1 (the
# unloaded reference), then the open loop of run.sh's overload step
# (--rate, 2 connections, Embed batches of 16, 2 s timeout) for Recommend
# and SearchText. One JSON line per arm, round and RPC; medians at the end.
#
#   benches/serving/overload_ab.sh default VECREC_SERVER__OVERLOAD_IN_FLIGHT=1
#   benches/serving/overload_ab.sh bin=/tmp/old/vecrec bin=/tmp/new/vecrec
#   ROUNDS=3 DUR=4 RATES="recommend:6422 search:4180" benches/serving/overload_ab.sh ...
#
# RATES are 4x each RPC's concurrency-32 throughput in run.sh's round 1
# (results/serving.md); give the figures of your own machine.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
[[ $# -ge 1 ]] || { sed -n 2,15p "$0"; exit 2; }
ML="${VECREC_SHARED:-$REPO/../shared}/datasets/ml-latest-small"
INDEX="$REPO/.cache/bench-data/serving/hybrid"
PORT=${PORT:-50090}
[[ -d "$INDEX" ]] || { echo "error: $INDEX missing: run benches/serving/run.sh once" >&2; exit 1; }
# shellcheck disable=SC1091
. "$REPO/.cache/env.sh"
LOG=$(mktemp)
ROWS=$(mktemp)
PID=
trap '[[ -n "$PID" ]] && kill "$PID" 2>/dev/null; rm -f "$LOG" "$ROWS"' EXIT
common=(--interactions "$ML/ratings.csv" --min-rating 4 --queries benches/serving/queries.txt
    --duration "${DUR:-4}" --warmup 1)
for round in $(seq "${ROUNDS:-3}"); do
    for arm in "$@"; do
        settings=()
        [[ $arm != default ]] && read -r -a settings <<<"$arm"
        bin=target/release/vecrec
        for i in "${!settings[@]}"; do
            if [[ ${settings[$i]} == bin=* ]]; then
                bin=${settings[$i]#bin=}
                unset 'settings[i]'
            fi
        done
        env "${settings[@]}" "$bin" serve --index "$INDEX" \
            --addr "127.0.0.1:$PORT" >"$LOG" 2>&1 &
        PID=$!
        for _ in $(seq 120); do grep -q "listening on" "$LOG" && break; sleep 0.5; done
        for pair in ${RATES:-recommend:6422 search:4180}; do
            rpc=${pair%%:*}
            rate=${pair##*:}
            c1=$(target/release/vecrec-load --addr "127.0.0.1:$PORT" --rpc "$rpc" "${common[@]}" \
                --concurrency 1 2>/dev/null)
            over=$(target/release/vecrec-load --addr "127.0.0.1:$PORT" --rpc "$rpc" "${common[@]}" \
                --rate "$rate" --connections 2 --batch 16 --timeout-ms 2000 2>/dev/null)
            python3 - "$arm" "$round" "$c1" "$over" <<'PY' | tee -a "$ROWS"
import json, sys
arm, rnd, c1, over = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
print(json.dumps({"arm": arm, "round": rnd, "rpc": over["rpc"], "offered": over["rate"],
                  "c1_p99_ms": c1["p99_ms"], "ok_rps": over["achieved_rps"],
                  "ok_p50_ms": over["p50_ms"], "ok_p99_ms": over["p99_ms"],
                  "errors": over["errors"]}))
PY
        done
        kill "$PID"; wait "$PID" 2>/dev/null || true
        PID=
    done
done
echo "medians:"
python3 - "$ROWS" <<'PY'
import json, statistics as st, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for arm in dict.fromkeys(r["arm"] for r in rows):
    for rpc in dict.fromkeys(r["rpc"] for r in rows):
        s = [r for r in rows if r["arm"] == arm and r["rpc"] == rpc]
        c1, p99 = st.median(r["c1_p99_ms"] for r in s), st.median(r["ok_p99_ms"] for r in s)
        print(json.dumps({"arm": arm, "rpc": rpc, "runs": len(s),
                          "ok_rps": st.median(r["ok_rps"] for r in s),
                          "ok_p50_ms": st.median(r["ok_p50_ms"] for r in s),
                          "ok_p99_ms": p99, "c1_p99_ms": c1, "ratio": round(p99 / c1, 2)}))
PY
