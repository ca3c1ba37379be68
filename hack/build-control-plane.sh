#!/usr/bin/env bash
# Builds the real Kubernetes control-plane binaries the tests and the demo run on loopback
# (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok) from the Go module
# proxy with the machine's Go, and caches them outside the repository, keyed by version.
#
# Prints the directory holding the binaries on its last line. A cached build returns at once.
#
#   hack/build-control-plane.sh            # build (or reuse) everything
#   CONTROL_PLANE_CACHE=/some/dir hack/build-control-plane.sh
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.36.3}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
KWOK_VERSION=${KWOK_VERSION:-v0.8.0}
CACHE=${CONTROL_PLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/celery-operator/control-plane}
BIN="$CACHE/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION"

log() { printf '[control-plane] %s\n' "$*" >&2; }

command -v go >/dev/null || { log "go is not installed; the control plane is built from the Go module proxy"; exit 1; }

mkdir -p "$BIN"
export GOFLAGS=-mod=mod CGO_ENABLED=0

build_etcd() {
  [ -x "$BIN/etcd" ] && return
  log "building etcd $ETCD_VERSION (first run only)"
  local w; w=$(mktemp -d)
  (cd "$w" && go mod init etcdwrap >/dev/null 2>&1 \
    && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null 2>&1 \
    && go build -trimpath -ldflags "-s -w" -o "$BIN/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "$BIN/etcd.tmp" "$BIN/etcd"; rm -rf "$w"
}

build_kubernetes() {
  local missing=()
  for c in kube-apiserver kube-controller-manager kube-scheduler; do
    [ -x "$BIN/$c" ] || missing+=("$c")
  done
  [ ${#missing[@]} -eq 0 ] && return
  log "building ${missing[*]} $K8S_VERSION (first run only: 10-20 minutes on 2 cores)"
  local gomod w staging="v0.${K8S_VERSION#v1.}"
  gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  w=$(mktemp -d)
  {
    echo "module k8swrap"
    grep -m1 '^go ' "$gomod"
    echo "require k8s.io/kubernetes $K8S_VERSION"
    # NB: k8s.io/kubernetes replaces its staging modules with local paths, which a
    # module consumer cannot follow; point each at its published version instead.
    sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#replace \1 => \1 '"$staging"'#p' "$gomod"
  } >"$w/go.mod"
  local ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2)"
  done
  for c in "${missing[@]}"; do
    log "  go build $c"
    (cd "$w" && go build -trimpath -ldflags "$ld" -o "$BIN/$c.tmp" "k8s.io/kubernetes/cmd/$c")
    mv "$BIN/$c.tmp" "$BIN/$c"
  done
  rm -rf "$w"
}

build_kwok() {
  [ -x "$BIN/kwok" ] && [ -d "$BIN/kwok-stages" ] && return
  log "building kwok $KWOK_VERSION"
  GOBIN="$BIN" go install "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  local dir; dir=$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  rm -rf "$BIN/kwok-stages.tmp"; mkdir -p "$BIN/kwok-stages.tmp"
  # The stages that make a scheduled pod Running and Ready, and a node Ready.
  local f
  for f in "$dir"/kustomize/stage/node/fast/*.yaml "$dir"/kustomize/stage/pod/fast/*.yaml; do
    [ "$(basename "$f")" = kustomization.yaml ] || cp "$f" "$BIN/kwok-stages.tmp/"
  done
  chmod -R u+w "$BIN/kwok-stages.tmp"; mv "$BIN/kwok-stages.tmp" "$BIN/kwok-stages"
}

build_etcd
build_kubernetes
build_kwok
echo "$BIN"
