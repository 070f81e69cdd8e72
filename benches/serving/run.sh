#!/usr/bin/env bash
# Serving benchmark: vecrec against a Python peer (grpcio + onnxruntime +
# faiss, benches/serving/peer.py) over real loopback sockets, both driven by
# the same vecrec-load schedule.
#
#   benches/serving/run.sh            # full run (about 25 minutes on 2 cores)
#   ROUNDS=1 DUR=2 benches/serving/run.sh   # a quick look
#
# Steps: release build; ml-latest-small indexes (hybrid, and --content-only)
# into .cache/bench-data/serving unless already there (REBUILD=1 forces);
# four servers on loopback (vecrec on the hybrid index, vecrec on the
# content-only index, and the peer in its best configuration for each RPC,
# chosen by a sweep on this machine: asyncio grpc with one 2-thread ONNX
# Runtime session for SimilarItems and Recommend, and with one session per
# core and dynamic batching, as vecrec does, for SearchText and Embed; the
# peer runs the model as published, and for SearchText and Embed a fifth
# server, `peer-a8`, runs the peer on vecrec's own W8A8 rewrite of it, to
# show what the graph alone is worth); then ROUNDS interleaved rounds (the order of
# vecrec and the peer alternates from round to round) of
#   - closed loop, concurrency 1 / 8 / 32: SimilarItems, SearchText, Embed (16
#     texts) and Recommend (content-only index against the peer; the hybrid
#     index on its own);
#   - open loop, a rate sweep from 20% to 120% of each server's own
#     concurrency-32 throughput (measured in round 1);
#   - 4x overload in open loop (vecrec, hybrid index: Recommend and
#     SearchText), with the server's resident memory sampled before and during;
# then benches/serving/report.py writes results/serving.md and
# results/serving.png (medians over the rounds) from results/raw.jsonl.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
HERE="$REPO/benches/serving"
SHARED="${VECREC_SHARED:-$REPO/../shared}"
ML="$SHARED/datasets/ml-latest-small"
DATA="$REPO/.cache/bench-data/serving"
OUT="$HERE/results"
VENV="$REPO/.cache/serving-venv"
ROUNDS="${ROUNDS:-3}"
DUR="${DUR:-4}"
WARM="${WARM:-1}"
SWEEP="${SWEEP:-0.2 0.4 0.6 0.8 1.0 1.2}"
P_HYBRID=50071
P_CONTENT=50072
P_PEER=50073
P_PEER_BATCH=50074
P_PEER_A8=50075
LOAD="$REPO/target/release/vecrec-load"
RATINGS="$ML/ratings.csv"
QUERIES="$HERE/queries.txt"

[[ -d "$ML" ]] || { echo "error: $ML not found (set VECREC_SHARED)" >&2; exit 1; }
[[ -f "$REPO/.cache/env.sh" ]] || scripts/setup.sh
# shellcheck disable=SC1091
. "$REPO/.cache/env.sh"

if [[ ! -x "$VENV/bin/python" ]] || ! cmp -s "$HERE/requirements.txt" "$VENV/requirements.txt"; then
    echo "== Python venv for the peer ($VENV)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$HERE/requirements.txt"
    cp "$HERE/requirements.txt" "$VENV/requirements.txt"
fi

echo "== release build"
cargo build --release --bins --quiet

mkdir -p "$DATA" "$OUT"
# Indexes built with another encoder model are rebuilt.
model_sum="$(sha256sum "$VECREC_MODEL" | cut -d' ' -f1)"
if [[ "$(cat "$DATA/model.sha256" 2>/dev/null)" != "$model_sum" ]]; then
    REBUILD=1
fi
if [[ "${REBUILD:-0}" == 1 || ! -d "$DATA/hybrid" ]]; then
    echo "== hybrid index"
    rm -rf "$DATA/hybrid"
    target/release/vecrec-build --movielens "$ML" --out "$DATA/hybrid"
fi
if [[ "${REBUILD:-0}" == 1 || ! -d "$DATA/content" ]]; then
    echo "== content-only index"
    rm -rf "$DATA/content"
    target/release/vecrec-build --movielens "$ML" --content-only --out "$DATA/content"
fi
echo "$model_sum" >"$DATA/model.sha256"

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

# wait_for LOG PATTERN: until the server's log shows PATTERN (at most 300 s:
# the peer embeds the catalogue on its first start).
wait_for() {
    for _ in $(seq 1 3000); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "error: no '$2' in $1:" >&2
    tail -20 "$1" >&2
    exit 1
}

echo "== servers"
target/release/vecrec serve --index "$DATA/hybrid" --addr "127.0.0.1:$P_HYBRID" \
    >"$OUT/vecrec-hybrid.log" 2>&1 &
PIDS+=($!); PID_HYBRID=$!
target/release/vecrec serve --index "$DATA/content" --addr "127.0.0.1:$P_CONTENT" \
    >"$OUT/vecrec-content.log" 2>&1 &
PIDS+=($!)
"$VENV/bin/python" "$HERE/peer.py" --movielens "$ML" --addr "127.0.0.1:$P_PEER" \
    --server aio --no-batching --sessions 1 >"$OUT/peer.log" 2>&1 &
PIDS+=($!)
wait_for "$OUT/peer.log" "peer listening on"
"$VENV/bin/python" "$HERE/peer.py" --movielens "$ML" --addr "127.0.0.1:$P_PEER_BATCH" \
    --server aio --batching >"$OUT/peer-batching.log" 2>&1 &
PIDS+=($!)
wait_for "$OUT/peer-batching.log" "peer listening on"
"$VENV/bin/python" "$HERE/peer.py" --movielens "$ML" --addr "127.0.0.1:$P_PEER_A8" \
    --server aio --batching --model "$VECREC_MODEL" >"$OUT/peer-a8.log" 2>&1 &
PIDS+=($!)
wait_for "$OUT/vecrec-hybrid.log" "listening on"
wait_for "$OUT/vecrec-content.log" "listening on"
wait_for "$OUT/peer-a8.log" "peer listening on"

RAW="$OUT/raw.jsonl"
: >"$RAW"

# load LABEL PORT RPC ROUND KIND [vecrec-load flags...]: one run, one JSON line.
load() {
    local label=$1 port=$2 rpc=$3 round=$4 kind=$5
    shift 5
    local line
    line=$("$LOAD" --addr "127.0.0.1:$port" --rpc "$rpc" --label "$label" \
        --interactions "$RATINGS" --min-rating 4 --queries "$QUERIES" \
        --duration "$DUR" --warmup "$WARM" "$@" 2>/dev/null)
    echo "{\"round\":$round,\"kind\":\"$kind\",${line#\{}" >>"$RAW"
    echo "  $line"
}

# The contenders of each RPC, as "label:port" pairs.
pairs() {
    case $1 in
        recommend) echo "vecrec-content:$P_CONTENT peer:$P_PEER vecrec-hybrid:$P_HYBRID" ;;
        similar) echo "vecrec-hybrid:$P_HYBRID peer:$P_PEER" ;;
        *) echo "vecrec-hybrid:$P_HYBRID peer:$P_PEER_BATCH peer-a8:$P_PEER_A8" ;;
    esac
}

# In odd rounds vecrec goes first, in even rounds the peer.
ordered() {
    local round=$1
    shift
    if ((round % 2 == 1)); then echo "$@"; else echo "$@" | tr ' ' '\n' | tac | tr '\n' ' '; fi
}

# Saturation (req/s at concurrency 32 in round 1) of a label and rpc.
saturation() {
    "$VENV/bin/python" - "$RAW" "$1" "$2" <<'EOF'
import json, sys
raw, label, rpc = sys.argv[1:]
for l in open(raw):
    r = json.loads(l)
    if r["kind"] == "closed" and r["label"] == label and r["rpc"] == rpc and r["concurrency"] == 32:
        print(r["achieved_rps"]); break
EOF
}

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

RPCS="similar search embed recommend"
for round in $(seq 1 "$ROUNDS"); do
    echo "== round $round/$ROUNDS: closed loop"
    for rpc in $RPCS; do
        for c in 1 8 32; do
            for pair in $(ordered "$round" $(pairs $rpc)); do
                load "${pair%%:*}" "${pair##*:}" "$rpc" "$round" closed \
                    --concurrency "$c" --connections 2 --batch 16
            done
        done
    done
    echo "== round $round/$ROUNDS: open-loop sweep"
    for rpc in $RPCS; do
        for pair in $(ordered "$round" $(pairs $rpc)); do
            sat=$(saturation "${pair%%:*}" "$rpc")
            for f in $SWEEP; do
                rate=$(awk -v s="$sat" -v f="$f" 'BEGIN { r = int(s * f); print (r < 1 ? 1 : r) }')
                load "${pair%%:*}" "${pair##*:}" "$rpc" "$round" sweep \
                    --rate "$rate" --connections 2 --batch 16 --timeout-ms 2000
            done
        done
    done
    echo "== round $round/$ROUNDS: 4x overload (vecrec, hybrid index)"
    for rpc in recommend search; do
        sat=$(saturation vecrec-hybrid "$rpc")
        rate=$(awk -v s="$sat" 'BEGIN { print int(4 * s) }')
        before=$(rss_kb "$PID_HYBRID")
        peak=$before
        load vecrec-hybrid "$P_HYBRID" "$rpc" "$round" overload \
            --rate "$rate" --connections 2 --batch 16 --timeout-ms 2000 &
        lp=$!
        while kill -0 "$lp" 2>/dev/null; do
            now=$(rss_kb "$PID_HYBRID")
            ((now > peak)) && peak=$now
            sleep 0.2
        done
        wait "$lp"
        echo "{\"round\":$round,\"kind\":\"rss\",\"rpc\":\"$rpc\",\"label\":\"vecrec-hybrid\",\"rss_before_kb\":$before,\"rss_peak_kb\":$peak}" >>"$RAW"
        echo "  rss $rpc: ${before} kB before, ${peak} kB peak"
    done
done

echo "== report"
"$VENV/bin/python" "$HERE/report.py" "$RAW" "$OUT"
echo "wrote $OUT/serving.md and $OUT/serving.png"
