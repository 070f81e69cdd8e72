#!/usr/bin/env bash
# Runs every test of the workspace and ends with one summary line over all
# test binaries ("tests: N passed, M failed"), so the outcome reads at a glance.
# The `cuda` feature is built first (CI has no GPU; tests run on CPU); the
# tests run with the `hnsw_rs` comparison backend, so the conformance suite
# covers it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --features cuda --bins
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --features hnsw_rs "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
