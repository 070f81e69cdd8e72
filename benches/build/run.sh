#!/usr/bin/env bash
# How vecrec-build's cost grows with the catalogue: seeded samples
# (vecrec-sample) of 3k, 30k, 100k and 300k items, users and events in
# proportion (400 users and ~15k events per 3k items), each built from
# nothing (empty embedding cache), then rebuilt after 1% of the item texts
# changed (the cache holds the other 99%). Per-stage seconds and peak RSS
# come from vecrec-build --report.
#
#   benches/build/run.sh                       # every size (the 300k embedding alone takes ~30 min)
#   SIZES="3000 30000" ROUNDS=3 benches/build/run.sh
#
# ROUNDS (default 3 up to 3k items, 2 up to 30k, 1 above) rounds run
# interleaved over the sizes; the report takes medians. Results: benches/build/results/
# (raw/*.json, build.md, build.png).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$REPO/benches/build"
cd "$REPO"
SIZES="${SIZES:-3000 30000 100000 300000}"
WORK="$REPO/.cache/bench-data/build"
OUT="$HERE/results"
VENV="$REPO/.cache/build-bench-venv"

make -s setup
# shellcheck disable=SC1091
. "$REPO/.cache/env.sh"
cargo build --release --bin vecrec-build --bin vecrec-sample
if [[ ! -x "$VENV/bin/python" ]] || ! cmp -s "$HERE/requirements.txt" "$VENV/requirements.txt"; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$HERE/requirements.txt"
    cp "$HERE/requirements.txt" "$VENV/requirements.txt"
fi
mkdir -p "$OUT/raw" "$WORK"

rounds_of() {
    if [[ -n "${ROUNDS:-}" ]]; then echo "$ROUNDS"
    elif (( $1 <= 3000 )); then echo 3
    elif (( $1 <= 30000 )); then echo 2
    else echo 1; fi
}
max_rounds=1
for n in $SIZES; do r=$(rounds_of "$n"); (( r > max_rounds )) && max_rounds=$r; done

for n in $SIZES; do
    users=$(( n * 400 / 3000 ))
    data="$WORK/sample-$n"
    if [[ ! -f "$data/catalog.jsonl" ]]; then
        echo "== sample: $n items, $users users"
        target/release/vecrec-sample --seed 42 --items "$n" --users "$users" --out "$data"
    fi
    # The same catalogue with every 100th title changed (1% of the texts).
    "$VENV/bin/python" - "$data/catalog.jsonl" "$data/changed.jsonl" <<'PY'
import json, sys
src, dst = sys.argv[1], sys.argv[2]
with open(src) as f, open(dst, "w") as g:
    for k, line in enumerate(f):
        item = json.loads(line)
        if k % 100 == 0:
            item["title"] = item["title"] + " (new edition)"
        g.write(json.dumps(item) + "\n")
PY
done

# Extra rounds of the small sizes first, interleaved; the last round runs every size.
for round in $(seq "$max_rounds" -1 1); do
    for n in $SIZES; do
        (( round > $(rounds_of "$n") )) && continue
        data="$WORK/sample-$n"
        root="$WORK/index-$n"
        rm -rf "$root"
        echo "== round $round, $n items: full build"
        target/release/vecrec-build --quiet --catalog "$data/catalog.jsonl" \
            --interactions "$data/interactions.csv" --out "$root" \
            --report "$OUT/raw/full-$n-r$round.json"
        echo "== round $round, $n items: rebuild after 1% of the texts changed"
        target/release/vecrec-build --quiet --catalog "$data/changed.jsonl" \
            --interactions "$data/interactions.csv" --out "$root" \
            --report "$OUT/raw/rebuild-$n-r$round.json"
        rm -rf "$root"
    done
done
"$VENV/bin/python" "$HERE/report.py" "$OUT/raw" "$OUT"
