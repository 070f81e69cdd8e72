#!/usr/bin/env bash
# Validates deploy/k8s offline: every resource against the Kubernetes
# OpenAPI schemas bundled with the kubernetes-validate package (strict:
# an unknown field fails), and every manifest listed in kustomization.yaml.
# A deliberately broken StatefulSet must fail, so the check itself is known
# to catch errors. Run by scripts/test.sh (`make test`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${VECREC_PYTHON:-.cache/venv/bin/python}"
KV="$(dirname "$PY")/kubernetes-validate"
K8S_VERSION="${VECREC_K8S_VERSION:-1.31.0}"
DIR=deploy/k8s
[[ -x "$KV" ]] || { echo "k8s-check: $KV missing: run make setup" >&2; exit 1; }

mapfile -t files < <(find "$DIR" -name '*.yaml' ! -name kustomization.yaml | sort)
"$KV" --quiet --strict -k "$K8S_VERSION" "${files[@]}"

# Every manifest is in the kustomization, and everything it lists exists.
"$PY" - "$DIR" <<'PY'
import os, sys, yaml
d = sys.argv[1]
k = yaml.safe_load(open(os.path.join(d, "kustomization.yaml")))
listed = set(k["resources"])
present = {f for f in os.listdir(d) if f.endswith(".yaml") and f != "kustomization.yaml"}
if listed != present:
    sys.exit(f"k8s-check: kustomization.yaml lists {sorted(listed)} but {d} holds {sorted(present)}")
PY

broken="$(mktemp --suffix=.yaml)"
trap 'rm -f "$broken"' EXIT
sed 's/^  replicas: 2$/  replicas: two/' "$DIR/shard-0.yaml" >"$broken"
if "$KV" --quiet --strict -k "$K8S_VERSION" "$broken" >/dev/null 2>&1; then
  echo "k8s-check: a StatefulSet with replicas: two passed validation; the check is not working" >&2
  exit 1
fi
echo "k8s-check: ${#files[@]} manifests valid against Kubernetes $K8S_VERSION"
