#!/usr/bin/env bash
# A/B of two vecrec binaries for a noisy machine: both serve at once (A on
# the hybrid index run.sh builds, B on a copy of it, since a served index is
# locked), and the load alternates between them in short runs, so a slow
# spell of the machine falls on both arms alike. Besides req/s and p99 it
# reports the CPU each server spent per answered call (utime + stime from
# /proc, in ms), which the neighbours' load moves far less than req/s.
#
#   benches/serving/ab_alternate.sh OLD_BINARY NEW_BINARY
#   ROUNDS=8 C=8 DUR=3 RPC=recommend benches/serving/ab_alternate.sh OLD NEW
#
# Prints one line per run and then the medians per arm. Build the two
# binaries first (see ab.sh). Loopback only; bounded by ROUNDS × 2 × DUR.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
[[ $# -ge 2 ]] || { sed -n 2,13p "$0"; exit 2; }
A=$1
B=$2
ML="${VECREC_SHARED:-$REPO/../shared}/datasets/ml-latest-small"
INDEX="$REPO/.cache/bench-data/serving/hybrid"
[[ -d "$INDEX" ]] || { echo "error: $INDEX missing: run benches/serving/run.sh once" >&2; exit 1; }
# shellcheck disable=SC1091
. "$REPO/.cache/env.sh"
WORK=$(mktemp -d)
PA=
PB=
trap 'kill $PA $PB 2>/dev/null; rm -rf "$WORK"' EXIT
cp -r "$INDEX" "$WORK/copy"
"$A" serve --index "$INDEX" --addr 127.0.0.1:50083 >"$WORK/a.log" 2>&1 &
PA=$!
"$B" serve --index "$WORK/copy" --addr 127.0.0.1:50084 >"$WORK/b.log" 2>&1 &
PB=$!
for _ in $(seq 120); do
    grep -q "listening on" "$WORK/a.log" && grep -q "listening on" "$WORK/b.log" && break
    sleep 0.5
done
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK_MS=$((1000 / $(getconf CLK_TCK)))
for round in $(seq "${ROUNDS:-8}"); do
    for label in A B; do
        if [[ $label == A ]]; then pid=$PA port=50083; else pid=$PB port=50084; fi
        before=$(cpu_ticks "$pid")
        line=$(target/release/vecrec-load --addr "127.0.0.1:$port" --rpc "${RPC:-recommend}" \
            --interactions "$ML/ratings.csv" --min-rating 4 --queries benches/serving/queries.txt \
            --duration "${DUR:-3}" --warmup 0 --concurrency "${C:-8}" --label "$label" 2>/dev/null)
        after=$(cpu_ticks "$pid")
        echo "{\"round\":$round,\"cpu_ms\":$(((after - before) * TICK_MS)),${line#\{}" >>"$WORK/rows"
        tail -n1 "$WORK/rows"
    done
done
python3 - "$WORK/rows" <<'PY'
import json, statistics as st, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for label in ("A", "B"):
    s = [r for r in rows if r["label"] == label]
    print(json.dumps({"label": label, "runs": len(s),
                      "req_s": round(st.median(r["achieved_rps"] for r in s), 1),
                      "p99_ms": st.median(r["p99_ms"] for r in s),
                      "cpu_ms_per_call": round(st.median(r["cpu_ms"] / max(r["ok"], 1) for r in s), 3)}))
a, b = ([r for r in rows if r["label"] == x] for x in ("A", "B"))
wins = sum(y["achieved_rps"] > x["achieved_rps"] for x, y in zip(a, b))
print(json.dumps({"rounds_b_faster": wins, "rounds": len(a)}))
PY
