#!/usr/bin/env bash
# Installs gloo's C++ headers into .deps/gloo/include, for the c10d shim (c10d/): libtorch_cpu.so
# contains Gloo and ProcessGroupGloo, but PyPI's torch wheel ships no gloo headers, and
# ProcessGroupGloo.hpp includes them. They come from Debian's libgloo-dev (bookworm), fetched
# with `apt-get download` at a pinned version and sha256 and unpacked with `dpkg-deb -x`:
# nothing is installed system-wide and only the headers are kept. Idempotent: a stamp records
# what was installed, so a second run returns at once.
#
# Needs apt-get and dpkg-deb (Debian or Ubuntu) with bookworm's package lists; as root it runs
# `apt-get update` when the package is unknown.
#
# Environment: FACE2SIMPSON_DEPS (default .deps/).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
deps="${FACE2SIMPSON_DEPS:-$root/.deps}"
dir="$deps/gloo"

package="libgloo-dev"
version="0.0~git20220518.5b14351-3"
deb_sha256="80529c9fd8af452faf489e686b94bf87075965c40673803810c4f41634b1e299"

stamp="$dir/.setup-stamp"
want="$package=$version sha256=$deb_sha256"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -f "$dir/include/gloo/config.h" ]]; then
  exit 0
fi

log() { printf '\033[1msetup:\033[0m %s\n' "$*" >&2; }
for tool in apt-get dpkg-deb sha256sum; do
  command -v "$tool" >/dev/null || {
    echo "setup: $tool is required to fetch gloo's headers (Debian's $package)" >&2
    exit 1
  }
done

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
log "fetching $package=$version (gloo's headers, for the c10d shim)"
download() { (cd "$tmp" && apt-get download -qq "$package=$version" >/dev/null 2>&1); }
if ! download; then
  if [[ $(id -u) -eq 0 ]]; then
    apt-get update -qq
    download || { echo "setup: apt-get download $package=$version failed after apt-get update (is this Debian bookworm?)" >&2; exit 1; }
  else
    echo "setup: apt-get download $package=$version failed; run 'apt-get update' as root (Debian bookworm's lists are needed) and try again" >&2
    exit 1
  fi
fi
deb=("$tmp"/"${package}"_*.deb)
got="$(sha256sum "${deb[0]}" | cut -d' ' -f1)"
[[ "$got" == "$deb_sha256" ]] || {
  echo "setup: ${deb[0]##*/} has sha256 $got, expected $deb_sha256; refusing to use it" >&2
  exit 1
}
dpkg-deb -x "${deb[0]}" "$tmp/x"
[[ -f "$tmp/x/usr/include/gloo/config.h" ]] || { echo "setup: $package holds no usr/include/gloo" >&2; exit 1; }
rm -rf "$dir.tmp"
mkdir -p "$dir.tmp/include"
mv "$tmp/x/usr/include/gloo" "$dir.tmp/include/gloo"
cp "$tmp/x/usr/share/doc/$package/copyright" "$dir.tmp/COPYRIGHT" 2>/dev/null || true
printf '%s' "$want" >"$dir.tmp/.setup-stamp"
rm -rf "$dir"
mv "$dir.tmp" "$dir"
log "done: gloo's headers in $dir/include"
