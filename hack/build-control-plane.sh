#!/usr/bin/env bash
# Builds the real Kubernetes control-plane binaries the tests and the demo run on loopback
# (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok, metrics-server) from the
# Go module proxy with the machine's Go, and caches them outside the repository, keyed by version.
# Besides the binaries, the cache directory holds kwok's configuration, copied from its module:
# kwok-stages/ (pods Running and Ready, nodes Ready) and kwok-metrics/ (pod CPU and memory usage
# taken from pod annotations, served as kubelet-style resource metrics for metrics-server).
#
# Prints the directory holding the binaries on its last line. A cached build returns at once.
#
#   hack/build-control-plane.sh            # build (or reuse) everything
#   CONTROL_PLANE_CACHE=/some/dir hack/build-control-plane.sh
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.36.3}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
KWOK_VERSION=${KWOK_VERSION:-v0.8.0}
# v0.9.0, not v0.8.1: the module proxy serves only v0.8.0 and v0.9.0 of metrics-server, and
# v0.9.0 is built on the same Kubernetes libraries (v0.36) as the rest.
METRICS_SERVER_VERSION=${METRICS_SERVER_VERSION:-v0.9.0}
CACHE=${CONTROL_PLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/celery-operator/control-plane}
# metrics-server came later; its version is kept in a stamp file beside its binary rather than in
# this directory's name, so an existing cache gains it without rebuilding Kubernetes.
BIN="$CACHE/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION"

log() { printf '[control-plane] %s\n' "$*" >&2; }

command -v go >/dev/null || { log "go is not installed; the control plane is built from the Go module proxy"; exit 1; }

mkdir -p "$BIN"
export GOFLAGS=-mod=mod CGO_ENABLED=0
# The compiled packages behind these binaries take ~5 GB and are never used again once the
# binaries are cached, so they go to a scratch build cache that is removed on exit.
GOCACHE=$(mktemp -d -t celery-operator-gocache.XXXXXX)
export GOCACHE
trap 'rm -rf "$GOCACHE"' EXIT

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

# kwok's own usage-from-annotation ClusterResourceUsage (kwok.x-k8s.io/usage-cpu and
# kwok.x-k8s.io/usage-memory, defaults 1m and 1Mi per container) and its Metric that serves
# /metrics/nodes/{nodeName}/metrics/resource the way a kubelet serves /metrics/resource.
# One change to the Metric: kwok's cumulative CPU counters start at 0 at the first scrape, and
# metrics-server drops a point whose CPU counter is 0, so a new pod's CPU would need three scrapes
# (20-30 s) instead of two; adding a nanosecond to each counter leaves every rate as it was.
KWOK_METRICS_REVISION="$KWOK_VERSION-1"
build_kwok_metrics() {
  [ "$(cat "$BIN/kwok-metrics/revision" 2>/dev/null)" = "$KWOK_METRICS_REVISION" ] && return
  local dir; dir=$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  local t="$BIN/kwok-metrics.tmp"
  rm -rf "$t"; mkdir -p "$t"
  cp "$dir/kustomize/metrics/usage/usage-from-annotation.yaml" "$t/"
  sed -E "s/value: '((pod|node)\.CumulativeUsage\(\"cpu\"[^)]*\))'/value: '\1 + 0.000000001'/" \
    "$dir/kustomize/metrics/resource/metrics-resource.yaml" >"$t/metrics-resource.yaml"
  [ "$(grep -c 'CumulativeUsage("cpu".* + 0.000000001' "$t/metrics-resource.yaml")" = 3 ] \
    || { log "kwok $KWOK_VERSION: unexpected kustomize/metrics/resource/metrics-resource.yaml"; exit 1; }
  echo "$KWOK_METRICS_REVISION" >"$t/revision"
  chmod -R u+w "$t"; rm -rf "$BIN/kwok-metrics"; mv "$t" "$BIN/kwok-metrics"
}

build_metrics_server() {
  [ -x "$BIN/metrics-server" ] && [ "$(cat "$BIN/metrics-server.version" 2>/dev/null)" = "$METRICS_SERVER_VERSION" ] \
    && return
  log "building metrics-server $METRICS_SERVER_VERSION (first run only: a few minutes)"
  rm -f "$BIN/metrics-server.version"
  GOBIN="$BIN" go install "sigs.k8s.io/metrics-server/cmd/metrics-server@$METRICS_SERVER_VERSION"
  echo "$METRICS_SERVER_VERSION" >"$BIN/metrics-server.version"
}

build_etcd
build_kubernetes
build_kwok
build_kwok_metrics
build_metrics_server
echo "$BIN"
