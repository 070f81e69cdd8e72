#!/usr/bin/env bash
# Checks formatting and lints (clippy, warnings denied), then runs every test
# of the workspace and ends with one summary line over all test binaries
# ("tests: N passed, M failed"), so the outcome reads at a glance.
# The `cuda` feature is built first and `faiss-gpu` compile-checked (CI has no
# GPU; tests run on CPU); the tests run with the `hnsw_rs` comparison backend
# and the FAISS backend (built from source, a few minutes the first time), so
# the conformance suite covers them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo fmt --all --check
scripts/k8s-check.sh
cargo clippy --workspace --all-targets --features hnsw_rs,faiss -- -D warnings
cargo build --features cuda --bins
cargo check -p vecrec-index --features faiss-gpu
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --features hnsw_rs,faiss "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
