#!/usr/bin/env bash
# A/B of two vecrec binaries for a noisy machine: both serve at once (each
# on its own copy of the hybrid index run.sh builds, since a served index is
# locked), and the load alternates between them in short runs, so a slow
# spell of the machine falls on both arms alike. Besides req/s and p99 it
# reports the CPU each server spent per answered call (utime + stime from
# /proc, in ms), which the neighbours' load moves far less than req/s.
#
#   benches/serving/ab_alternate.sh OLD_BINARY NEW_BINARY
#   ROUNDS=8 C=8 DUR=3 RPC=recommend benches/serving/ab_alternate.sh OLD NEW
#
# Prints one line per run and then the medians per arm. Build the two
# binaries first (see ab.sh). Loopback only, ports PORT and PORT + 1
# (default 50083); bounded by ROUNDS × 2 × DUR, plus two copies of the
# index and at most 60 s for the servers to start. The first run of each
# server includes its warm-up (--warmup 0), alike for both arms.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
[[ $# -ge 2 ]] || { sed -n 2,16p "$0"; exit 2; }
A=$1
B=$2
ML="${VECREC_SHARED:-$REPO/../shared}/datasets/ml-latest-small"
INDEX="$REPO/.cache/bench-data/serving/hybrid"
PORT=${PORT:-50083}
ROUNDS=${ROUNDS:-8}
[[ -d "$INDEX" ]] || { echo "error: $INDEX missing: run benches/serving/run.sh once" >&2; exit 1; }
[[ $ROUNDS -ge 1 ]] || { echo "error: ROUNDS must be at least 1" >&2; exit 2; }
# shellcheck disable=SC1091
. "$REPO/.cache/env.sh"
# Both copies of the index on one file system, so neither arm reads faster.
WORK=$(mktemp -d "$REPO/.cache/ab-alternate.XXXXXX")
PA=
PB=
stop() {
    kill $PA $PB 2>/dev/null || true
    wait $PA $PB 2>/dev/null || true
    rm -rf "$WORK"
}
trap stop EXIT
cp -r "$INDEX" "$WORK/a"
cp -r "$INDEX" "$WORK/b"
"$A" serve --index "$WORK/a" --addr "127.0.0.1:$PORT" >"$WORK/a.log" 2>&1 &
PA=$!
"$B" serve --index "$WORK/b" --addr "127.0.0.1:$((PORT + 1))" >"$WORK/b.log" 2>&1 &
PB=$!
for _ in $(seq 120); do
    grep -q "listening on" "$WORK/a.log" && grep -q "listening on" "$WORK/b.log" && break
    sleep 0.5
done
for arm in a b; do
    grep -q "listening on" "$WORK/$arm.log" || {
        echo "error: server $arm did not start:" >&2
        tail -5 "$WORK/$arm.log" >&2
        exit 1
    }
done
# utime + stime: fields 14 and 15 of /proc/PID/stat, counted after the
# command name's closing parenthesis (the name may hold spaces).
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
HZ=$(getconf CLK_TCK)
for round in $(seq "$ROUNDS"); do
    # A then B in odd rounds, B then A in even ones.
    order="A B"
    [[ $((round % 2)) -eq 0 ]] && order="B A"
    for label in $order; do
        if [[ $label == A ]]; then pid=$PA port=$PORT; else pid=$PB port=$((PORT + 1)); fi
        before=$(cpu_ticks "$pid")
        line=$(target/release/vecrec-load --addr "127.0.0.1:$port" --rpc "${RPC:-recommend}" \
            --interactions "$ML/ratings.csv" --min-rating 4 --queries benches/serving/queries.txt \
            --duration "${DUR:-3}" --warmup 0 --concurrency "${C:-8}" --label "$label" \
            2>"$WORK/load.err") || {
            echo "error: vecrec-load against $label failed:" >&2
            cat "$WORK/load.err" >&2
            exit 1
        }
        after=$(cpu_ticks "$pid")
        echo "{\"round\":$round,\"cpu_ms\":$(((after - before) * 1000 / HZ)),${line#\{}" >>"$WORK/rows"
        tail -n1 "$WORK/rows"
    done
done
python3 - "$WORK/rows" <<'PY'
import json, statistics as st, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(xs):
    xs = [x for x in xs if x is not None]
    return st.median(xs) if xs else None
for label in ("A", "B"):
    s = [r for r in rows if r["label"] == label]
    print(json.dumps({"label": label, "runs": len(s),
                      "req_s": round(med(r["achieved_rps"] for r in s), 1),
                      "p99_ms": med(r["p99_ms"] for r in s),
                      "cpu_ms_per_call": round(med(r["cpu_ms"] / r["ok"] for r in s if r["ok"]) or 0, 3),
                      # vecrec-load exits 0 when calls fail: count them here.
                      "failed_calls": sum(sum(r.get("errors", {}).values()) for r in s)}))
by = {(r["round"], r["label"]): r for r in rows}
rounds = sorted({r["round"] for r in rows})
wins = sum(by[n, "B"]["achieved_rps"] > by[n, "A"]["achieved_rps"] for n in rounds)
print(json.dumps({"rounds_b_faster": wins, "rounds": len(rounds)}))
PY
