#!/usr/bin/env bash
# What a served hybrid generation costs in memory, by catalogue size: seeded
# samples (vecrec-sample) of SIZES items (users and events in proportion, as
# benches/build), each built once as a partitioned hybrid build of 3 shards
# (vecrec-build --shards 3; its front/ is one node's whole generation). Then,
# for each binary set and round, interleaved:
#   - one node: `vecrec serve` on front/;
#   - the front tier: `vecrec route --front front/` over the 3 shards (one
#     replica each);
#   - a shard: `vecrec serve` on shard-0.
# Each process is started, driven for DUR seconds of Recommend
# (vecrec-load, concurrency 2) so every model and table a call touches is
# loaded, then its /proc/PID/status is read: RssAnon (the process's own
# memory: heaps, ONNX Runtime sessions) and RssFile (the generation's pages
# it touched through the map), and the seconds from start to listening.
#
#   benches/memory/run.sh (make bench-memory)              # SIZES="10000 40000", ROUNDS=3
#   BASE_BIN=/tmp/vecrec-base benches/memory/run.sh        # also time another build's binaries
#
# BASE_BIN: a directory holding another build's vecrec and vecrec-load (for a
# before/after table, run in the same interleaved rounds). Results:
# benches/memory/results/ (raw.jsonl, memory.md, memory.png).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$REPO/benches/memory"
cd "$REPO"
SIZES="${SIZES:-10000 40000}"
ROUNDS="${ROUNDS:-3}"
DUR="${DUR:-3}"
SHARDS=3
WORK="$REPO/.cache/bench-data/memory"
OUT="$HERE/results"
VENV="$REPO/.cache/build-bench-venv"

make -s setup
# shellcheck disable=SC1091
. "$REPO/.cache/env.sh"
cargo build --release --bins --quiet
if [[ ! -x "$VENV/bin/python" ]] || ! cmp -s "$HERE/requirements.txt" "$VENV/requirements.txt"; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$HERE/requirements.txt"
    cp "$HERE/requirements.txt" "$VENV/requirements.txt"
fi
mkdir -p "$OUT" "$WORK"
SETS=("new:$REPO/target/release")
if [[ -n "${BASE_BIN:-}" ]]; then
    [[ -x "$BASE_BIN/vecrec" && -x "$BASE_BIN/vecrec-load" ]] \
        || { echo "error: BASE_BIN=$BASE_BIN holds no vecrec and vecrec-load" >&2; exit 1; }
    SETS=("base:$BASE_BIN" "${SETS[@]}")
fi

for n in $SIZES; do
    data="$WORK/sample-$n"
    if [[ ! -f "$data/parts/front/CURRENT" ]]; then
        users=$(( n * 400 / 3000 ))
        echo "== sample and build: $n items, $users users"
        rm -rf "$data"
        target/release/vecrec-sample --seed 42 --items "$n" --users "$users" --out "$data"
        target/release/vecrec-build --quiet --catalog "$data/catalog.jsonl" \
            --interactions "$data/interactions.csv" --out "$data/parts" --shards "$SHARDS" >/dev/null
    fi
done

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    PIDS=()
}
trap cleanup EXIT

# start NAME BIN_DIR ARGS...: starts vecrec, waits until it listens (at most
# 5 minutes); sets ADDR_NAME, PID_NAME and SECS_NAME (seconds to listening).
start() {
    local name=$1 bin=$2; shift 2
    local log="$WORK/$name.log" t0
    t0=$EPOCHREALTIME
    "$bin/vecrec" "$@" >"$log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    for _ in $(seq 1 3000); do
        if grep -q "^listening on " "$log"; then
            printf -v "ADDR_$name" '%s' "$(sed -n 's/^listening on //p' "$log")"
            printf -v "PID_$name" '%s' "$pid"
            printf -v "SECS_$name" '%s' "$(LC_ALL=C awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }')"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "error: vecrec $* did not start:" >&2; tail -5 "$log" >&2; exit 1
}

# record ROUND SET ITEMS ROLE NAME: drives NAME's address with Recommend, then
# appends its memory to raw.jsonl.
record() {
    local round=$1 set=$2 items=$3 role=$4 name=$5 bin=$6 data=$7
    local a="ADDR_$name" p="PID_$name" s="SECS_$name"
    if [[ $role != shard ]]; then
        "$bin/vecrec-load" --addr "${!a}" --rpc recommend --interactions "$data/interactions.csv" \
            --concurrency 2 --duration "$DUR" --warmup 1 >"$WORK/load.log" 2>&1 \
            || { echo "error: vecrec-load against $name failed:" >&2; tail -5 "$WORK/load.log" >&2; exit 1; }
    fi
    local anon file
    anon=$(awk '/^RssAnon:/ {print $2}' "/proc/${!p}/status" 2>/dev/null || true)
    file=$(awk '/^RssFile:/ {print $2}' "/proc/${!p}/status" 2>/dev/null || true)
    if [[ -z $anon || -z $file ]]; then
        echo "error: $name (pid ${!p}) is gone:" >&2; tail -5 "$WORK/$name.log" >&2; exit 1
    fi
    printf '{"round":%s,"set":"%s","items":%s,"role":"%s","anon_kb":%s,"file_kb":%s,"start_s":%s}\n' \
        "$round" "$set" "$items" "$role" "$anon" "$file" "${!s}" >>"$RAW"
    echo "  $set $items $role: anon $((anon / 1024)) MB, file $((file / 1024)) MB, started in ${!s} s"
}

# Every generation's files read once, so no binary set's first start pays
# for reading them from disk.
cat "$WORK"/sample-*/parts/*/gen-*/* "$WORK"/sample-*/parts/*/gen-*/*/* >/dev/null 2>&1 || true
RAW="$OUT/raw.jsonl"
: >"$RAW"
for round in $(seq 1 "$ROUNDS"); do
    echo "== round $round"
    order=("${SETS[@]}")
    if (( round % 2 == 0 )); then
        order=(); for (( i=${#SETS[@]}-1; i>=0; i-- )); do order+=("${SETS[$i]}"); done
    fi
    for n in $SIZES; do
        data="$WORK/sample-$n"
        for entry in "${order[@]}"; do
            set=${entry%%:*} bin=${entry#*:}
            cleanup
            start one "$bin" serve --index "$data/parts/front" --addr 127.0.0.1:0
            record "$round" "$set" "$n" one one "$bin" "$data"
            cleanup
            shard_args=()
            for s in $(seq 0 $((SHARDS - 1))); do
                start "s$s" "$bin" serve --index "$data/parts/shard-$s" --addr 127.0.0.1:0
                a="ADDR_s$s"
                shard_args+=(--shard "${!a}")
            done
            start router "$bin" route --addr 127.0.0.1:0 --front "$data/parts/front" "${shard_args[@]}"
            record "$round" "$set" "$n" front router "$bin" "$data"
            record "$round" "$set" "$n" shard s0 "$bin" "$data"
            cleanup
        done
    done
done
"$VENV/bin/python" "$HERE/report.py" "$OUT"
