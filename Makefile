# Developer entry points. Every target that needs the model, the ONNX Runtime
# library or the venv depends on `setup`, which is cached (well under 3 s when
# nothing is missing), and sources $(VECREC_CACHE)/env.sh for its paths.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

export VECREC_CACHE ?= $(CURDIR)/.cache
export PATH := $(HOME)/.cargo/bin:$(PATH)

CARGO ?= cargo
ADDR ?= 127.0.0.1:50051
MOVIELENS ?= ../shared/datasets/ml-latest-small
ENV_SH = . "$(VECREC_CACHE)/env.sh"

.PHONY: help setup build run test fixtures eval lint bench-encoder bench-serving bench-experiments bench-build bench-memory k8s-check image-check

help:
	@echo "make setup     fetch the ONNX Runtime library, the MiniLM model and the Python venv into $(VECREC_CACHE)"
	@echo "make build     release build of every binary"
	@echo "make run       sample data, build an index, serve it on $(ADDR) and run an example query"
	@echo "make test      cargo test --workspace with the model available"
	@echo "make fixtures  regenerate tests/fixtures/encoder_fixture.json with the Python reference encoder"
	@echo "make eval      evaluate on MovieLens ($(MOVIELENS)) into out/eval.json"
	@echo "make bench-encoder  embedding throughput: Rust encoder vs Python onnxruntime on the same texts"
	@echo "make bench-serving  gRPC over loopback: vecrec vs a Python grpcio+onnxruntime+faiss peer (~25 min)"
	@echo "make bench-experiments  simulated A/A, A/B and interleaving over MovieLens TEST (~6 min)"
	@echo "make bench-build    vecrec-build time and peak memory per stage, 3k to 300k items (~75 min; SIZES=\"3000 30000\" for less)"
	@echo "make bench-memory   own memory of a served hybrid generation (one node, front tier, shard) at 10k and 40k items (~30 min the first time, ~3 min after)"
	@echo "make k8s-check  validate deploy/k8s offline against the Kubernetes schemas (also run by make test)"
	@echo "make image-check  build the container image's runtime stage with podman (as root) and check it serves"
	@echo "make lint      cargo fmt --check and clippy with warnings denied"

setup:
	@scripts/setup.sh

build: setup
	$(ENV_SH); $(CARGO) build --release --bins

# The example query waits in the background for the server's port, so the
# terminal shows the server's log and the answers together; the server then
# keeps serving until Ctrl-C, which also stops the query if it is still waiting.
run: build
	$(ENV_SH); target/release/vecrec-sample --seed 42 --out data/sample
	$(ENV_SH); target/release/vecrec-build --catalog data/sample/catalog.jsonl \
	  --interactions data/sample/interactions.csv --out data/index
	@echo
	@echo "example query, run below once the server is up:"
	@echo "  scripts/example_query.sh $(ADDR)"
	@echo "  (or: $(VECREC_CACHE)/venv/bin/python scripts/query.py $(ADDR) search \"space adventure\" 5)"
	@echo
	@$(ENV_SH); \
	  scripts/example_query.sh "$(ADDR)" & query=$$!; \
	  trap 'kill $$query 2>/dev/null || true' EXIT; \
	  target/release/vecrec serve --index data/index --addr "$(ADDR)"

# scripts/test.sh compile-checks the cuda feature (CI has no GPU), runs every
# test on CPU and ends with one "tests: N passed, M failed" line.
test: setup
	$(ENV_SH); scripts/test.sh

k8s-check: setup
	$(ENV_SH); scripts/k8s-check.sh

image-check: setup
	$(ENV_SH); scripts/image-check.sh

bench-encoder: setup
	$(ENV_SH); $(CARGO) bench --bench encoder
	$(ENV_SH); "$$VECREC_PYTHON" benches/encoder_peer.py

fixtures: setup
	$(ENV_SH); "$$VECREC_PYTHON" scripts/make_encoder_fixture.py

eval: build
	mkdir -p out
	$(ENV_SH); target/release/vecrec-eval --movielens $(MOVIELENS) --json out/eval.json \
		$$(test -f benches/peers/results/peers.json && echo --peers benches/peers/results/peers.json)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --features hnsw_rs,faiss -- -D warnings

bench-serving: setup
	benches/serving/run.sh

bench-experiments: setup
	benches/experiments/run.sh

bench-build: setup
	benches/build/run.sh

bench-memory: setup
	benches/memory/run.sh
