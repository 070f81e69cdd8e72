#!/usr/bin/env bash
# The serving encoder with and without ONNX Runtime's memory arena
# (encoder.memory_arena): resident memory before and after one maximal Embed
# (256 texts of 8,000 bytes, truncated to encoder.max_tokens), and SearchText
# throughput at concurrency 1 and 8, ROUNDS interleaved rounds.
#
#   benches/serving/arena.sh                 # debug binaries (cargo build --bins)
#   PROFILE=release benches/serving/arena.sh
#
# A seeded 612-item sample, content-only index, under a temporary directory;
# the server on 127.0.0.1 only. Prints one line per measurement.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PROFILE="${PROFILE:-debug}"
ROUNDS="${ROUNDS:-2}"
B="$REPO/target/$PROFILE"
# shellcheck disable=SC1091
source "$REPO/.cache/env.sh"
if [ "$PROFILE" = release ]; then cargo build --release --bins; else cargo build --bins; fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
"$B/vecrec-sample" --seed 1 --items 612 --users 30 --out data > /dev/null
"$B/vecrec-build" --catalog data/catalog.jsonl --interactions data/interactions.csv \
    --out idx --content-only > /dev/null 2>&1
python3 - <<'PY'
import random
random.seed(1)
w = "space galaxy recipe garden jazz guitar quantum river mountain novel history ocean".split()
with open("long.txt", "w") as f:
    for _ in range(256):
        f.write(" ".join(random.choice(w) for _ in range(1200))[:8000] + "\n")
PY

start() {
    VECREC_ENCODER__MEMORY_ARENA=$1 VECREC_SERVER__REQUEST_TIMEOUT_MS=240000 RUST_LOG=warn \
        "$B/vecrec" serve --index idx --addr 127.0.0.1:0 > srv.out 2> srv.err &
    PID=$!
    for _ in $(seq 150); do grep -q listening srv.out 2> /dev/null && break; sleep 0.2; done
    ADDR=$(sed -n 's/listening on //p' srv.out)
}
rss() { awk '/VmRSS|VmHWM/ {printf "%s %d MB  ", $1, $2 / 1024}' "/proc/$PID/status"; }

for round in $(seq "$ROUNDS"); do
    for arena in true false; do
        start "$arena"
        echo "round $round arena=$arena idle: $(rss)"
        "$B/vecrec-load" --addr "$ADDR" --rpc embed --batch 256 --queries long.txt \
            --concurrency 1 --duration 1 --warmup 0 --timeout-ms 240000 2> /dev/null > embed.json
        echo "round $round arena=$arena after one 256-text Embed: $(rss)"
        for c in 1 8; do
            "$B/vecrec-load" --addr "$ADDR" --rpc search --queries "$REPO/benches/serving/queries.txt" \
                --concurrency "$c" --duration 5 --warmup 1 2> /dev/null |
                python3 -c "import json,sys; d=json.load(sys.stdin); print('round $round arena=$arena SearchText c=$c:', d['achieved_rps'], 'req/s, p50', d['p50_ms'], 'ms, p99', d['p99_ms'], 'ms')"
        done
        kill "$PID"; wait "$PID" 2> /dev/null || true
    done
done
