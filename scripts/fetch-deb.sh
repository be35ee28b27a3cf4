#!/usr/bin/env bash
# Fetches one Debian bookworm package at a pinned version and sha256 with `apt-get download`,
# unpacks it with `dpkg-deb -x` and keeps one folder of it: nothing is installed system-wide.
# Idempotent: a stamp records what was kept, so a second run returns at once.
#
#   scripts/fetch-deb.sh PACKAGE VERSION SHA256 KEEP DEST WHY
#
# KEEP is a folder inside the package (usr/include, usr/bin); it ends up as DEST/<its last
# component> (DEST/include, DEST/bin). WHY says in the log what the package is for.
#
# Needs apt-get and dpkg-deb (Debian or Ubuntu) with bookworm's package lists; as root it runs
# `apt-get update` when the package is unknown.
set -euo pipefail

[[ $# -eq 6 ]] || { echo "usage: $0 PACKAGE VERSION SHA256 KEEP DEST WHY" >&2; exit 2; }
package="$1" version="$2" deb_sha256="$3" keep="$4" dir="$5" why="$6"

stamp="$dir/.setup-stamp"
want="$package=$version sha256=$deb_sha256"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -d "$dir/${keep##*/}" ]]; then
  exit 0
fi

log() { printf '\033[1msetup:\033[0m %s\n' "$*" >&2; }
for tool in apt-get dpkg-deb sha256sum; do
  command -v "$tool" >/dev/null || {
    echo "setup: $tool is required to fetch $why (Debian's $package)" >&2
    exit 1
  }
done

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
log "fetching $package=$version ($why)"
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
[[ -d "$tmp/x/$keep" ]] || { echo "setup: $package holds no $keep" >&2; exit 1; }
rm -rf "$dir.tmp"
mkdir -p "$dir.tmp"
mv "$tmp/x/$keep" "$dir.tmp/${keep##*/}"
cp "$tmp/x/usr/share/doc/$package/copyright" "$dir.tmp/COPYRIGHT" 2>/dev/null || true
printf '%s' "$want" >"$dir.tmp/.setup-stamp"
rm -rf "$dir"
mv "$dir.tmp" "$dir"
log "done: $why in $dir/${keep##*/}"
