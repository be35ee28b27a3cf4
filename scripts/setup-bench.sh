#!/usr/bin/env bash
# The Python peers of the benchmarks, each in a virtual environment under .deps/ built from a
# pinned requirements file. Idempotent: a stamp records the requirements it was built from.
#
#   scripts/setup-bench.sh          the two peers of `make bench-serve`, in .deps/bench-venv:
#                                   bench/peer_onnx.py (our pipeline on ONNX Runtime, uvicorn
#                                   with uvloop + httptools) and bench/peer.py (FastAPI + OpenCV
#                                   Haar + ONNX Runtime)
#   scripts/setup-bench.sh train    bench/train_peer.py (the seed's PyTorch + torchvision stack)
#                                   for `make bench-train`, in .deps/train-bench-venv. PyPI's
#                                   torch wheel for Linux is the CUDA build and pulls NVIDIA's
#                                   libraries: about 5 GB, for the benchmark only.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
deps="${FACE2SIMPSON_DEPS:-$root/.deps}"
case "${1:-serve}" in
  serve) venv="$deps/bench-venv" req="$root/bench/requirements.txt" ;;
  train) venv="$deps/train-bench-venv" req="$root/bench/train-requirements.txt" ;;
  *) echo "setup-bench: unknown peer '$1' (serve or train)" >&2; exit 2 ;;
esac
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [[ -f "$venv/.stamp" && "$(cat "$venv/.stamp")" == "$want" ]]; then
  exit 0
fi
python="${PYTHON:-$(command -v python3)}"
printf '\033[1msetup:\033[0m %s\n' "creating $venv for a benchmark's Python peer" >&2
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
printf '%s' "$want" >"$venv/.stamp"
