#!/usr/bin/env bash
# What the test suite needs beyond `make setup`: the Python tools venv (scripts/setup-tools.sh:
# packaging checks, tritonclient for inference/tests/oip.rs)
# and Debian's Chromium, for the web page test. Idempotent.
set -euo pipefail

"$(dirname "${BASH_SOURCE[0]}")/setup-tools.sh"

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
