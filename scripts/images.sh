#!/usr/bin/env bash
# `make images`: builds the operator, inference and trainer images from the Dockerfile with
# podman, then smoke-runs each one. Works on machines that reach no container registry: the
# Debian base is made with debootstrap and `podman import`, and the Rust builder base from this
# machine's own toolchain. Base images are made once and reused.
#
# Environment: IMAGE_REPO (default localhost/face2simpson), IMAGE_TAG (default dev),
#              IMAGES (default "operator inference trainer": which targets to build and smoke),
#              SKIP_SMOKE=1 to only build.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
repo="${IMAGE_REPO:-localhost/face2simpson}"
tag="${IMAGE_TAG:-dev}"
work="$root/var/images"
images="$(printf '%s ' ${IMAGES:-operator inference trainer})" && images="${images% }"
for target in $images; do
  [[ "$target" =~ ^(operator|inference|trainer)$ ]] || { echo "images: unknown target '$target' in IMAGES (operator, inference, trainer)" >&2; exit 1; }
done
export IMAGES="$images"
# runc, cgroupfs and ulimits within this machine's hard limits; see the file.
export CONTAINERS_CONF="$root/images/containers.conf"

log() { printf '\033[1mimages:\033[0m %s\n' "$*" >&2; }
need() { command -v "$1" >/dev/null 2>&1; }

if ! need podman || ! need debootstrap; then
  [[ $(id -u) -eq 0 ]] || { echo "images: podman and debootstrap are missing; install them (root needed)" >&2; exit 1; }
  log "installing podman, runc and debootstrap from Debian"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap uidmap >/dev/null
fi

# The trainer's CUDA layer is built from ~3 GB of wheels into ~4 GB of libraries and then
# committed twice; with less room the build dies late with "no space left on device". Without
# the trainer, the builder layers and the compile cache need a few GB.
graphroot="$(podman info --format '{{.Store.GraphRoot}}')"
mkdir -p "$graphroot"
free_gb=$(( $(df --output=avail -k "$graphroot" | tail -1) / 1024 / 1024 ))
need_gb=5
[[ " $images " == *" trainer "* ]] && need_gb=20
if (( free_gb < ${MIN_FREE_GB:-$need_gb} )); then
  echo "images: only ${free_gb} GB free under $graphroot; building $images needs about ${need_gb} GB" >&2
  echo "images: free some (podman image prune, cargo clean) or set MIN_FREE_GB to try anyway" >&2
  exit 1
fi

rust_version="$(rustc --version | awk '{print $2}')"
debian_image="localhost/face2simpson-base/debian:bookworm"
rust_image="localhost/face2simpson-base/rust:$rust_version"
mkdir -p "$work"

if ! podman image exists "$debian_image"; then
  log "making $debian_image with debootstrap (minbase)"
  rm -rf "$work/rootfs"
  debootstrap --variant=minbase bookworm "$work/rootfs" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  # Same trimming as Debian's official slim images.
  rm -rf "$work/rootfs"/var/lib/apt/lists/* "$work/rootfs"/var/cache/apt/*.bin \
         "$work/rootfs"/usr/share/doc/* "$work/rootfs"/usr/share/man/* "$work/rootfs"/usr/share/locale/*
  tar -C "$work/rootfs" --numeric-owner -c . \
    | podman import --change 'CMD ["/bin/bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        - "$debian_image" >/dev/null
  rm -rf "$work/rootfs"
fi

if ! podman image exists "$rust_image"; then
  log "making $rust_image from this machine's toolchain ($(rustc --print sysroot))"
  ctx="$work/rust-base"
  rm -rf "$ctx" && mkdir -p "$ctx/extra-ca"
  # Hard links where possible: the toolchain is 1 GB and the documentation is not needed.
  sysroot="$(rustc --print sysroot)"
  cp -al "$sysroot" "$ctx/rust" 2>/dev/null || { rm -rf "$ctx/rust"; cp -a "$sysroot" "$ctx/rust"; }
  rm -rf "$ctx/rust/share/doc"
  # Certificates this machine trusts beyond Debian's (a TLS-intercepting egress proxy, say), so
  # cargo and pip in the builder stages can reach crates.io and PyPI.
  cp /usr/local/share/ca-certificates/*.crt "$ctx/extra-ca/" 2>/dev/null || true
  podman build --network=host --build-arg DEBIAN_IMAGE="$debian_image" \
    -f images/rust.Containerfile -t "$rust_image" "$ctx"
  rm -rf "$ctx"
fi

# The trainer stamps its revision into every metrics.json; .git is not in the build context.
revision="$(git rev-parse HEAD 2>/dev/null || true)"
for target in $images; do
  log "building $repo/$target:$tag"
  podman build --network=host --target "$target" \
    --build-arg RUST_IMAGE="$rust_image" --build-arg DEBIAN_IMAGE="$debian_image" \
    --build-arg FACE2SIMPSON_GIT_REVISION="$revision" \
    -t "$repo/$target:$tag" .
done

podman image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E "^$repo/(${images// /|}):$tag " >&2
[[ "${SKIP_SMOKE:-0}" == 1 ]] && exit 0
exec scripts/images-smoke.sh
