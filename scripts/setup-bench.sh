#!/usr/bin/env bash
# The Python peer of `make bench-serve` (bench/peer.py: FastAPI + OpenCV Haar + ONNX Runtime), in
# a virtual environment under .deps/bench-venv with the pinned bench/requirements.txt.
# Idempotent: a stamp records the requirements it was built from.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
deps="${FACE2SIMPSON_DEPS:-$root/.deps}"
venv="$deps/bench-venv"
req="$root/bench/requirements.txt"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [[ -f "$venv/.stamp" && "$(cat "$venv/.stamp")" == "$want" ]]; then
  exit 0
fi
python="${PYTHON:-$(command -v python3)}"
printf '\033[1msetup:\033[0m %s\n' "creating $venv for the benchmark's Python peer" >&2
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
printf '%s' "$want" >"$venv/.stamp"
