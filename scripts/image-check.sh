#!/usr/bin/env bash
# Builds vecrec's container image with podman on this machine and checks
# that it starts and answers: the image runs `vecrec serve` over a sample
# index (mounted read-only, with a read-only root filesystem, as
# deploy/k8s runs it), as the non-root user, and must answer the gRPC
# health check SERVING, a SearchText (so ONNX Runtime and the model load)
# and a Recommend.
#
#   scripts/image-check.sh            (make image-check; needs root)
#
# What it builds: the Dockerfile's runtime stage, as written, over binaries
# built here (`cargo build --release`) and the ONNX Runtime library and
# model `make setup` fetched. The build stage (a Rust image that runs
# `cargo build` in the container) needs a registry this machine cannot
# reach, so it is not run here. The runtime stage's base image is
# VECREC_RUNTIME_IMAGE when given (a registry or mirror you can pull from);
# otherwise a Debian bookworm made here with debootstrap from the Debian
# mirror apt uses (cached as localhost/vecrec-bookworm).
#
# Sandboxes: podman runs with a private containers.conf that sets no
# default ulimits (raising them needs CAP_SYS_RESOURCE), and when the
# host mounts cgroup v2 beside v1 with a controller (which crun refuses),
# the script runs in a private mount namespace without that mount.
set -euo pipefail
SELF="$(realpath "${BASH_SOURCE[0]}")"
REPO="$(cd "$(dirname "$SELF")/.." && pwd)"
cd "$REPO"
say() { echo "image-check: $*" >&2; }

[[ "$(id -u)" == 0 ]] || { say "run as root (rootful podman)"; exit 1; }
if [[ -z "${VECREC_IMAGE_CHECK_NS:-}" ]] && grep -qs . /sys/fs/cgroup/unified/cgroup.controllers; then
  # crun: "cgroups in hybrid mode not supported": leave the v2 mount out.
  export VECREC_IMAGE_CHECK_NS=1
  exec unshare -m bash -c 'umount /sys/fs/cgroup/unified && exec "$0" "$@"' "$SELF" "$@"
fi

missing=()
command -v podman > /dev/null || missing+=(podman)
command -v debootstrap > /dev/null || missing+=(debootstrap)
command -v strip > /dev/null || missing+=(binutils)
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  apt-get update -q > /dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" > /dev/null
fi
ENV_SH="${VECREC_CACHE:-$REPO/.cache}/env.sh"
[[ -f "$ENV_SH" ]] || { say "$ENV_SH missing: run make setup"; exit 1; }
# shellcheck source=/dev/null
. "$ENV_SH"

work="$(mktemp -d)"
conf="$work/containers.conf"
printf '[containers]\ndefault_ulimits = []\n' > "$conf"
export CONTAINERS_CONF="$conf"
server=""
cleanup() {
  if [[ -n "$server" ]]; then
    kill "$server" 2> /dev/null || true
    wait "$server" 2> /dev/null || true
  fi
  podman rm -f -i vecrec-image-check > /dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

base="${VECREC_RUNTIME_IMAGE:-localhost/vecrec-bookworm}"
if [[ -z "${VECREC_RUNTIME_IMAGE:-}" ]] && ! podman image exists "$base"; then
  say "making $base with debootstrap (bookworm, minbase)"
  mirror="$(grep -hoE 'https?://[^ ]+/debian/?$' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2> /dev/null | head -1 || true)"
  debootstrap --variant=minbase bookworm "$work/rootfs" "${mirror:-http://deb.debian.org/debian}" > "$work/debootstrap.log" 2>&1 \
    || { tail -5 "$work/debootstrap.log" >&2; exit 1; }
  tar -C "$work/rootfs" -c . | podman import - "$base" > /dev/null
  rm -rf "$work/rootfs"
fi

say "building the binaries (release)"
cargo build --release --quiet --locked --bin vecrec --bin vecrec-build --bin vecrec-admin --bin vecrec-sample

# The build stage's outputs, where the runtime stage copies them from.
ctx="$work/context"
mkdir -p "$ctx/src/target/release" "$ctx/opt/vecrec/models"
cp target/release/vecrec target/release/vecrec-build target/release/vecrec-admin "$ctx/src/target/release/"
strip "$ctx"/src/target/release/* # as the build stage does
cp -rL "$VECREC_CACHE/onnxruntime" "$ctx/opt/vecrec/onnxruntime"
cp -r "$VECREC_CACHE/models/minilm" "$ctx/opt/vecrec/models/minilm"
{
  grep -E '^ARG RUNTIME_IMAGE' Dockerfile || true
  sed -n '/^FROM .* AS runtime/,$p' Dockerfile | sed 's#^COPY --from=build #COPY #'
} > "$ctx/Containerfile"
grep -q '^ARG RUNTIME_IMAGE' "$ctx/Containerfile" && grep -q '^FROM .* AS runtime' "$ctx/Containerfile" \
  || { say "the Dockerfile has no ARG RUNTIME_IMAGE or no runtime stage (FROM ... AS runtime)"; exit 1; }
say "building the image's runtime stage on $base"
podman build --quiet --network host --build-arg "RUNTIME_IMAGE=$base" \
  -t localhost/vecrec:check -f "$ctx/Containerfile" "$ctx" > /dev/null
size_mb=$(($(podman image inspect --format '{{.Size}}' localhost/vecrec:check) / 1048576))
user="$(podman image inspect --format '{{.Config.User}}' localhost/vecrec:check)"
[[ "$user" == 10001 ]] || { say "the image runs as ${user:-root}, not 10001"; exit 1; }

say "a sample index to serve"
{
  target/release/vecrec-sample --seed 42 --out "$work/sample" \
    && target/release/vecrec-build --catalog "$work/sample/catalog.jsonl" \
      --interactions "$work/sample/interactions.csv" --out "$work/index"
} > "$work/build.log" 2>&1 || { tail -5 "$work/build.log" >&2; exit 1; }
chmod -R a+rX "$work/index"

port="${VECREC_IMAGE_CHECK_PORT:-50071}"
addr="127.0.0.1:$port"
if (exec 3<> "/dev/tcp/127.0.0.1/$port") 2> /dev/null; then
  say "something already listens on $addr: set VECREC_IMAGE_CHECK_PORT"
  exit 1
fi
podman run --rm --name vecrec-image-check --network host --read-only --read-only-tmpfs=false \
  -v "$work/index:/data/index:ro" -e VECREC_LIVE__ENABLED=false \
  localhost/vecrec:check serve --index /data/index --addr "$addr" > "$work/server.log" 2>&1 &
server=$!
# HealthCheckRequest{} is empty; HealthCheckResponse{status: SERVING} is 08 01.
health='import sys, grpc
reply = grpc.insecure_channel(sys.argv[1]).unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=2)
sys.exit(0 if reply == b"\x08\x01" else f"health answered {reply!r}, not SERVING")'
deadline=$((SECONDS + 120))
until "$VECREC_PYTHON" -c "$health" "$addr" 2> "$work/health.err"; do
  if ! kill -0 "$server" 2> /dev/null; then
    say "the container exited:"
    tail -5 "$work/server.log" >&2
    exit 1
  fi
  if ((SECONDS >= deadline)); then
    say "no health answer from $addr in 120 s:"
    tail -3 "$work/health.err" "$work/server.log" >&2
    exit 1
  fi
  sleep 0.5
done
say "health SERVING"
"$VECREC_PYTHON" scripts/query.py "$addr" search "space adventure" 3
"$VECREC_PYTHON" scripts/query.py "$addr" recommend u0001 3
running_as="$(podman exec vecrec-image-check id -u)"
[[ "$running_as" == 10001 ]] || { say "the server runs as uid $running_as, not 10001"; exit 1; }
say "ok: localhost/vecrec:check (${size_mb} MB) served as uid $running_as on a read-only root, health SERVING, SearchText and Recommend answered"
