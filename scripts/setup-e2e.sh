#!/usr/bin/env bash
# Builds the real Kubernetes control plane the e2e suite runs against, from Go modules served
# by the Go module proxy, into $FACE2SIMPSON_DEPS/e2e/bin (default .deps/e2e/bin):
#   etcd, kube-apiserver, kube-controller-manager, kubectl   (e2e/cluster/go.mod pins them)
#   helm                                                     (helm.sh/helm/v4, pinned below)
# Idempotent: a stamp records the pinned versions, so a second run returns at once. GOPATH and
# GOCACHE stay in Go's default places, so a rebuild after a version bump is incremental.
# First build here: ~8 min on 2 cores, ~6 GB in the Go caches, ~350 MB of binaries.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${FACE2SIMPSON_DEPS:-$root/.deps}/e2e/bin"
cluster="$root/e2e/cluster"
helm_version="v4.3.1"

case "${1:-}" in
  "") ;;
  -h | --help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "setup-e2e: unknown argument '$1' (try --help)" >&2; exit 2 ;;
esac

command -v go >/dev/null || {
  echo "setup-e2e: the Go toolchain (1.26) is needed to build the control plane; install it from go.dev or your distribution" >&2
  exit 1
}

# The stamp covers everything that decides what is built: the tools module and this script.
want="$(cat "$cluster/go.mod" "$cluster/go.sum" "$cluster/tools.go" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1) helm=$helm_version $(go env GOVERSION)"
stamp="$bin/.stamp"
binaries=(etcd kube-apiserver kube-controller-manager kubectl helm)
up_to_date() {
  [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] || return 1
  for b in "${binaries[@]}"; do [[ -x "$bin/$b" ]] || return 1; done
}
up_to_date && exit 0

log() { printf '\033[1msetup-e2e:\033[0m %s\n' "$*" >&2; }
mkdir -p "$bin"
# The machine's toolchain, never a download; modules as pinned by go.mod/go.sum; static
# binaries without debug info (they are only ever run here).
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
ldflags="-s -w"
# What hack/lib/version.sh stamps into a release build: without it the servers report
# v0.0.0-master, which version-aware clients (helm's kubeVersion checks, kubectl's skew
# warning) misread.
kube_version="$(sed -n 's#^\s*k8s.io/kubernetes \(v[0-9.]*\)$#\1#p' "$cluster/go.mod")"
kube_minor="$(cut -d. -f2 <<<"$kube_version")"
kube_ldflags="$ldflags"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$kube_minor"
  kube_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
start=$SECONDS

log "building etcd, kube-apiserver, kube-controller-manager and kubectl $kube_version (first time: several minutes)"
(
  cd "$cluster"
  go build -trimpath -ldflags="$ldflags" -o "$bin/etcd" go.etcd.io/etcd/server/v3
  go build -trimpath -ldflags="$kube_ldflags" -o "$bin/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kubectl
)

log "building helm $helm_version"
# Helm's own go.mod has no replace directives, so `go install module@version` is the pinned,
# checksum-verified build.
GOBIN="$bin" go install -trimpath \
  -ldflags="$ldflags -X helm.sh/helm/v4/internal/version.version=$helm_version" \
  "helm.sh/helm/v4/cmd/helm@$helm_version"

printf '%s' "$want" >"$stamp"
log "done in $((SECONDS - start)) s: $(cd "$bin" && du -ch "${binaries[@]}" | tail -1 | cut -f1) in $bin"
