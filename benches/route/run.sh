#!/usr/bin/env bash
# One node against 3 shards x 2 replicas behind `vecrec route`, on loopback,
# ml-latest-small, the content pipeline (PIPELINE=content, the default) or
# the hybrid one (PIPELINE=hybrid: the shards sliced from one node's
# generation, OUT/front, which the router serves with --front and which is
# the one node):
#   1. quality: TEST NDCG@10 through the router and from one node, both built
#      on TRAIN with exact search (benches/route/ndcg.py; reads TEST once);
#   2. latency: vecrec-load closed loop at concurrency 8, SimilarItems and
#      Recommend, one node and router interleaved, ROUNDS rounds (HNSW search);
#   3. faults: the same Recommend load on the router while one replica of
#      every shard is killed with SIGKILL KILL_AT seconds in (killed replicas
#      restarted between rounds).
# Writes raw.jsonl, ndcg.json, route.md and route.png under results/ (the
# content pipeline) or results/hybrid/.
#
#   benches/route/run.sh                  # about 6 minutes on 2 cores
#   PIPELINE=hybrid benches/route/run.sh  # about 12 minutes
#   ROUNDS=1 DUR=5 benches/route/run.sh   # a quick look
#   NDCG=0 ...                            # speed only, keeping the last ndcg.json
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
HERE="$REPO/benches/route"
SHARED="${VECREC_SHARED:-$REPO/../shared}"
ML="$SHARED/datasets/ml-latest-small"
SPLIT="$ML/split"
PIPELINE="${PIPELINE:-content}"
case "$PIPELINE" in
    content) DATA="$REPO/.cache/bench-data/route"; OUT="$HERE/results"; ONLY=(--content-only) ;;
    hybrid) DATA="$REPO/.cache/bench-data/route-hybrid"; OUT="$HERE/results/hybrid"; ONLY=() ;;
    *) echo "error: PIPELINE must be content or hybrid, not $PIPELINE" >&2; exit 1 ;;
esac
ROUNDS="${ROUNDS:-3}"
DUR="${DUR:-10}"
WARM="${WARM:-2}"
FAULT_DUR="${FAULT_DUR:-16}"
KILL_AT="${KILL_AT:-8}"
SHARDS=3
LOAD="$REPO/target/release/vecrec-load"
BIN="$REPO/target/release/vecrec"

[[ -d "$SPLIT" ]] || { echo "error: $SPLIT not found (set VECREC_SHARED)" >&2; exit 1; }
[[ -f "$REPO/.cache/env.sh" ]] || scripts/setup.sh
# shellcheck disable=SC1091
. "$REPO/.cache/env.sh"
VENV="$REPO/.cache/route-bench-venv"
if [[ ! -x "$VENV/bin/python" ]] || ! cmp -s "$HERE/requirements.txt" "$VENV/requirements.txt"; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$HERE/requirements.txt"
    cp "$HERE/requirements.txt" "$VENV/requirements.txt"
fi
echo "== release build"
cargo build --release --bins --quiet
mkdir -p "$DATA" "$OUT"

echo "== catalogue and TRAIN interactions from $SPLIT"
"$VECREC_PYTHON" - "$SPLIT" "$DATA" <<'PY'
import csv, json, sys
split, data = sys.argv[1:]
with open(f"{split}/item_text.csv") as f, open(f"{data}/catalog.jsonl", "w") as out:
    for row in csv.DictReader(f):
        text = row["text"]
        out.write(json.dumps({"id": row["item"], "title": text.split(" | ")[0], "text": text}) + "\n")
PY
cp "$SPLIT/train.csv" "$DATA/train.csv"

build() { # OUT [flags...]
    local out=$1; shift
    rm -rf "$out"
    target/release/vecrec-build --quiet "${ONLY[@]}" --catalog "$DATA/catalog.jsonl" \
        --interactions "$DATA/train.csv" --out "$out" "$@" >/dev/null
}
echo "== one node and $SHARDS shards ($PIPELINE)"
FRONT=()
if [[ $PIPELINE == content ]]; then
    build "$DATA/one"
    build "$DATA/parts" --shards "$SHARDS"
    ONE="$DATA/one"
else
    # The front generation is one node's build over the whole catalogue.
    build "$DATA/parts" --shards "$SHARDS"
    ONE="$DATA/parts/front"
    FRONT=(--front "$ONE")
fi
for s in $(seq 0 $((SHARDS - 1))); do
    for r in 0 1; do
        rm -rf "$DATA/replica-$s-$r"
        cp -r "$DATA/parts/shard-$s" "$DATA/replica-$s-$r"
    done
done
printf '[search]\nexact = true\n' >"$DATA/exact.toml"
: >"$DATA/hnsw.toml"

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

# start NAME ARGS...: starts `vecrec ARGS`, waits for its address, sets ADDR_<NAME> and PID_<NAME>.
start() {
    local name=$1; shift
    local log="$DATA/$name.log"
    "$BIN" "$@" >"$log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    for _ in $(seq 1 600); do
        if grep -q "^listening on " "$log"; then
            printf -v "ADDR_$name" '%s' "$(sed -n 's/^listening on //p' "$log")"
            printf -v "PID_$name" '%s' "$pid"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "error: vecrec $* did not start:" >&2; tail -5 "$log" >&2; exit 1
}

# servers CONFIG: one node, every replica and the router, under CONFIG.
servers() {
    cleanup; PIDS=()
    start one serve --index "$ONE" --addr 127.0.0.1:0 --config "$1"
    local shard_args=()
    for s in $(seq 0 $((SHARDS - 1))); do
        start "r${s}_0" serve --index "$DATA/replica-$s-0" --addr 127.0.0.1:0 --config "$1"
        start "r${s}_1" serve --index "$DATA/replica-$s-1" --addr 127.0.0.1:0 --config "$1"
        local a="ADDR_r${s}_0" b="ADDR_r${s}_1"
        shard_args+=(--shard "${!a},${!b}")
    done
    start router route --addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 --config "$1" \
        "${FRONT[@]}" "${shard_args[@]}"
}

if [[ ${NDCG:-1} == 0 ]]; then
    # Speed only: TEST is read once per landed change, and ndcg.json is
    # the last run's that read it.
    [[ -f "$OUT/ndcg.json" ]] || { echo "error: NDCG=0 needs $OUT/ndcg.json" >&2; exit 1; }
    echo "== NDCG@10 on TEST: skipped (NDCG=0), keeping $OUT/ndcg.json"
else
    echo "== NDCG@10 on TEST, exact search"
    servers "$DATA/exact.toml"
    "$VECREC_PYTHON" "$HERE/ndcg.py" --split "$SPLIT" --one "$ADDR_one" --routed "$ADDR_router" \
        --out "$OUT/ndcg.json"
fi

RAW="$OUT/raw.jsonl"
: >"$RAW"
# cpu_ticks PID...: user + system CPU time of the processes, in clock ticks
# (fields 14 and 15 of /proc/PID/stat; a process gone counts 0).
cpu_ticks() {
    local t=0 p f
    for p in "$@"; do
        f=$(cut -d')' -f2- "/proc/$p/stat" 2>/dev/null) || continue
        t=$((t + $(awk '{print $12 + $13}' <<<"$f")))
    done
    echo "$t"
}
TICK=$(getconf CLK_TCK)
# counter NAME: the router's Prometheus counter NAME, summed over its series.
counter() {
    local url
    url=$(sed -n 's#^metrics on ##p' "$DATA/router.log")
    curl -s "$url" | awk -v m="$1" 'index($1, m) == 1 && $1 !~ /^#/ { s += $NF } END { printf "%d", s }'
}
load() { # ROUND KIND LABEL ADDR RPC DURATION
    # The CPU the serving side spent over the whole run (warm-up included):
    # the one node, or the router and, apart, the six replicas; and the
    # router's hedged and retried shard calls. Not for the fault runs,
    # whose killed replicas leave no count.
    local line own=() shards=() s r extra=""
    if [[ $3 == one ]]; then own=("$PID_one"); else
        own=("$PID_router")
        for s in $(seq 0 $((SHARDS - 1))); do for r in 0 1; do
            local p="PID_r${s}_$r"; shards+=("${!p}")
        done; done
    fi
    local own0 shards0 hedges0=0 retries0=0
    own0=$(cpu_ticks "${own[@]}"); shards0=$(cpu_ticks "${shards[@]}")
    if [[ $3 == router ]]; then
        hedges0=$(counter vecrec_route_hedges_total); retries0=$(counter vecrec_route_retries_total)
    fi
    line=$("$LOAD" --addr "$4" --rpc "$5" --label "$3" --interactions "$SPLIT/train.csv" \
        --concurrency 8 --duration "$6" --warmup "$WARM" 2>/dev/null)
    if [[ $2 == normal ]]; then
        extra=$(awk -v a="$own0" -v b="$(cpu_ticks "${own[@]}")" -v c="$shards0" \
            -v d="$(cpu_ticks "${shards[@]}")" -v t="$TICK" \
            'BEGIN { printf "\"cpu_s_server\":%.2f,\"cpu_s_shards\":%.2f,", (b - a) / t, (d - c) / t }')
    fi
    if [[ $3 == router ]]; then
        extra+="\"hedges\":$(( $(counter vecrec_route_hedges_total) - hedges0 )),"
        extra+="\"retries\":$(( $(counter vecrec_route_retries_total) - retries0 )),"
    fi
    echo "{\"round\":$1,\"kind\":\"$2\",$extra${line#\{}" >>"$RAW"
    echo "  $line"
}

echo "== latency and faults, HNSW search"
for round in $(seq 1 "$ROUNDS"); do
    servers "$DATA/hnsw.toml"
    echo "round $round"
    for rpc in similar recommend; do
        if (( round % 2 )); then order="one router"; else order="router one"; fi
        for who in $order; do
            a="ADDR_$who"
            load "$round" normal "$who" "${!a}" "$rpc" "$DUR"
        done
    done
    load "$round" before-fault router "$ADDR_router" recommend "$FAULT_DUR"
    ( sleep "$((WARM + KILL_AT))"
      for s in $(seq 0 $((SHARDS - 1))); do p="PID_r${s}_0"; kill -9 "${!p}"; done ) &
    killer=$!
    load "$round" fault router "$ADDR_router" recommend "$FAULT_DUR"
    wait "$killer"
done
cleanup; PIDS=()
"$VENV/bin/python" "$HERE/report.py" "$OUT"
