#!/usr/bin/env bash
# The Python peer of `make bench-train` (bench/train_peer.py: the seed's PyTorch + torchvision
# stack), in a virtual environment under .deps/train-bench-venv with the pinned
# bench/train-requirements.txt. PyPI's torch wheel for Linux is the CUDA build and pulls NVIDIA's
# libraries (about 4 GB); only the benchmark needs it. Idempotent: a stamp records the
# requirements it was built from.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
deps="${FACE2SIMPSON_DEPS:-$root/.deps}"
venv="$deps/train-bench-venv"
req="$root/bench/train-requirements.txt"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [[ -f "$venv/.stamp" && "$(cat "$venv/.stamp")" == "$want" ]]; then
  exit 0
fi
python="${PYTHON:-$(command -v python3)}"
printf '\033[1msetup:\033[0m %s\n' "creating $venv for the training benchmark's PyTorch peer (~4 GB)" >&2
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
printf '%s' "$want" >"$venv/.stamp"
