#!/usr/bin/env bash
# Debian packages the build needs beside libtorch, unpacked into .deps/ (scripts/fetch-deb.sh:
# pinned version and sha256, nothing installed system-wide, a stamp per package):
#   * gloo's C++ headers into .deps/gloo/include, for the c10d shim (c10d/): libtorch_cpu.so
#     contains Gloo and ProcessGroupGloo, but PyPI's torch wheel ships no gloo headers, and
#     ProcessGroupGloo.hpp includes them (Debian's libgloo-dev);
#   * nasm into .deps/nasm/bin, which assembles libjpeg-turbo's SIMD code when mozjpeg-sys
#     builds the JPEG decoder (the Makefile puts it on PATH; without it the decoder still
#     builds, without SIMD, and cargo prints a warning). Skipped when nasm is on PATH already.
#
# Environment: FACE2SIMPSON_DEPS (default .deps/).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
deps="${FACE2SIMPSON_DEPS:-$root/.deps}"
fetch="$root/scripts/fetch-deb.sh"

"$fetch" libgloo-dev "0.0~git20220518.5b14351-3" \
  80529c9fd8af452faf489e686b94bf87075965c40673803810c4f41634b1e299 \
  usr/include "$deps/gloo" "gloo's headers, for the c10d shim"
[[ -f "$deps/gloo/include/gloo/config.h" ]] || { echo "setup: libgloo-dev holds no gloo/config.h" >&2; exit 1; }

if ! command -v nasm >/dev/null; then
  "$fetch" nasm 2.16.01-1 \
    0180693ad5d2da8b36e7d73b9b596dc3e9f900238e3de699976c0576875b878f \
    usr/bin "$deps/nasm" "nasm, for the JPEG decoder's SIMD"
fi
