#!/usr/bin/env bash
# Interleaved Recommend through `vecrec route`, two router binaries A and B
# over the same shards: the hybrid ml-latest-small build of
# `PIPELINE=hybrid benches/route/run.sh` (3 shards, one replica each, and
# the front), an interleaving experiment whose arms differ only in fusion
# (rrf against geometric), vecrec-load Recommend at concurrency 8 over the
# TRAIN users, the two routers taking turns, ROUNDS rounds; prints one JSON
# line per run and the medians.
#
#   benches/route/interleave_ab.sh OLD_VECREC NEW_VECREC
#   ROUNDS=5 DUR=10 benches/route/interleave_ab.sh A B
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
A="${1:?usage: $0 ROUTER_BINARY_A ROUTER_BINARY_B}"
B="${2:?usage: $0 ROUTER_BINARY_A ROUTER_BINARY_B}"
SHARED="${VECREC_SHARED:-$REPO/../shared}"
TRAIN="$SHARED/datasets/ml-latest-small/split/train.csv"
DATA="$REPO/.cache/bench-data/route-hybrid"
PARTS="$DATA/parts"
ROUNDS="${ROUNDS:-3}"
DUR="${DUR:-10}"
WARM="${WARM:-2}"
BIN="$REPO/target/release/vecrec"
LOAD="$REPO/target/release/vecrec-load"
[[ -d "$PARTS/front" ]] || {
    echo "error: $PARTS/front not found: run PIPELINE=hybrid benches/route/run.sh first" >&2
    exit 1
}
[[ -x "$LOAD" && -x "$BIN" ]] || cargo build --release --bins --quiet
# shellcheck disable=SC1091
. "$REPO/.cache/env.sh"
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

printf '[live]\nenabled = false\n' >"$WORK/shard.toml"
cat >"$WORK/router.toml" <<'TOML'
[[experiments]]
name = "fusion-il"
salt = "bench"
mode = "interleave"

[[experiments.arms]]
name = "served"
share = 0.5

[[experiments.arms]]
name = "geometric"
share = 0.5
fusion = "geometric"
TOML

# start NAME BINARY ARGS...: sets ADDR_<NAME>.
start() {
    local name=$1 bin=$2; shift 2
    local log="$WORK/$name.log"
    "$bin" "$@" >"$log" 2>&1 &
    PIDS+=("$!")
    for _ in $(seq 1 600); do
        if grep -q "^listening on " "$log"; then
            printf -v "ADDR_$name" '%s' "$(sed -n 's/^listening on //p' "$log")"
            return 0
        fi
        sleep 0.1
    done
    echo "error: $bin $* did not start:" >&2; tail -5 "$log" >&2; exit 1
}

shard_args=()
for s in 0 1 2; do
    start "s$s" "$BIN" serve --index "$PARTS/shard-$s" --addr 127.0.0.1:0 --config "$WORK/shard.toml"
    a="ADDR_s$s"
    shard_args+=(--shard "${!a}")
done
for arm in A B; do
    start "router$arm" "${!arm}" route --addr 127.0.0.1:0 --config "$WORK/router.toml" \
        --front "$PARTS/front" --exposure-root "$WORK/exposures-$arm" "${shard_args[@]}"
done

RAW="$WORK/raw.jsonl"
for round in $(seq 1 "$ROUNDS"); do
    if (( round % 2 )); then order="A B"; else order="B A"; fi
    for arm in $order; do
        a="ADDR_router$arm"
        line=$("$LOAD" --addr "${!a}" --rpc recommend --label "$arm" --interactions "$TRAIN" \
            --concurrency 8 --duration "$DUR" --warmup "$WARM" 2>/dev/null)
        echo "$line" | tee -a "$RAW"
    done
done
python3 - "$RAW" "$A" "$B" <<'PY'
import json, statistics, sys
raw, a, b = sys.argv[1:]
runs = [json.loads(l) for l in open(raw)]
print("| router | binary | runs | req/s (median) | p50 ms | p99 ms | errors |")
print("|---|---|---:|---:|---:|---:|---:|")
for label, binary in (("A", a), ("B", b)):
    rs = [r for r in runs if r["label"] == label]
    med = lambda k: statistics.median(r[k] for r in rs)
    errors = sum(sum(r.get("errors", {}).values()) for r in rs)
    print(f"| {label} | {binary} | {len(rs)} | {med('achieved_rps'):,.0f} | "
          f"{med('p50_ms'):.2f} | {med('p99_ms'):.2f} | {errors} |")
PY
