#!/usr/bin/env bash
# Builds the real Kubernetes control-plane binaries the tests and the demo run on loopback
# (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok, metrics-server) from the
# Go module proxy with the machine's Go, and caches them outside the repository, keyed by version.
# Besides the binaries, the cache directory holds kwok's configuration, copied from its module:
# kwok-stages/ (pods Running and Ready, nodes Ready) and kwok-metrics/ (pod CPU and memory usage
# taken from pod annotations, served as kubelet-style resource metrics for metrics-server).
#
# With REAL_NODE=1 it also builds what a real node runs (hack/control-plane.sh's REAL_NODE=1):
# kubelet and kube-proxy from the same Kubernetes module (in the same pass, so they reuse its
# compiled packages), and in node/: containerd v2, its runc shim and ctr, runc (cgo, with
# Debian's libseccomp-dev), the CNI plugins, CoreDNS, and pause, the sandbox's init process,
# compiled from hack/node/pause.c, with its image (pause.tar, assembled by umoci).
#
# Prints the directory holding the binaries on its last line. A cached build returns at once.
#
#   hack/build-control-plane.sh            # build (or reuse) the control plane
#   REAL_NODE=1 hack/build-control-plane.sh   # ... and the real node's binaries
#   CONTROL_PLANE_CACHE=/some/dir hack/build-control-plane.sh
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.36.3}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
KWOK_VERSION=${KWOK_VERSION:-v0.8.0}
# v0.9.0, not v0.8.1: the module proxy serves only v0.8.0 and v0.9.0 of metrics-server, and
# v0.9.0 is built on the same Kubernetes libraries (v0.36) as the rest.
METRICS_SERVER_VERSION=${METRICS_SERVER_VERSION:-v0.9.0}
# The real node's runtime (REAL_NODE=1). Kubernetes 1.36's kubelet needs containerd 2.
CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.4.2}
RUNC_VERSION=${RUNC_VERSION:-v1.5.3}
CNI_PLUGINS_VERSION=${CNI_PLUGINS_VERSION:-v1.10.0}
# The cluster's DNS (the kubernetes plugin), run beside the node as a process.
COREDNS_VERSION=${COREDNS_VERSION:-v1.14.7}
REAL_NODE=${REAL_NODE:-0}
HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
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
  local wanted=(kube-apiserver kube-controller-manager kube-scheduler)
  [ "$REAL_NODE" = 1 ] && wanted+=(kubelet kube-proxy)
  for c in "${wanted[@]}"; do
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

# The real node's container runtime, in node/ with a stamp of the versions it was built from
# (a changed version rebuilds only node/).
NODE_REVISION="containerd-$CONTAINERD_VERSION runc-$RUNC_VERSION cni-$CNI_PLUGINS_VERSION coredns-$COREDNS_VERSION pause-$(sha256sum "$HACK_DIR/node/pause.c" | cut -c1-12)"
build_node_runtime() {
  [ "$(cat "$BIN/node/revision" 2>/dev/null)" = "$NODE_REVISION" ] && return
  log "building the real node's runtime: $NODE_REVISION (first run only: a few minutes)"
  local t="$BIN/node.tmp"
  rm -rf "$t"; mkdir -p "$t/cni"
  # containerd without the btrfs snapshotter (cgo, and a header Debian ships separately); the
  # overlayfs and native snapshotters are pure Go.
  GOBIN="$t" go install -tags no_btrfs -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION"
  # runc filters system calls with libseccomp, through cgo.
  [ -e /usr/include/seccomp.h ] || { log "runc needs libseccomp-dev (apt-get install libseccomp-dev)"; exit 1; }
  CGO_ENABLED=1 GOBIN="$t" go install -tags seccomp -ldflags "-s -w -X main.version=${RUNC_VERSION#v}" \
    "github.com/opencontainers/runc@$RUNC_VERSION"
  # The pod network: a bridge, addresses from a local range, the pod's loopback, hostPort.
  local p pkgs=()
  for p in main/bridge main/loopback ipam/host-local meta/portmap; do
    pkgs+=("github.com/containernetworking/plugins/plugins/$p@$CNI_PLUGINS_VERSION")
  done
  GOBIN="$t/cni" go install -ldflags "-s -w" "${pkgs[@]}"
  GOBIN="$t" go install -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION"
  # The pod sandbox's init process: a static binary that sleeps and reaps (no image to pull).
  cc -static -Os -o "$t/pause" "$HACK_DIR/node/pause.c"
  # ... and its image, an OCI archive that containerd imports at every start (localhost/pause:dev).
  command -v umoci >/dev/null || { log "the pause image needs umoci (apt-get install umoci)"; exit 1; }
  local oci="$t/pause-oci" bundle="$t/pause-bundle"
  umoci init --layout "$oci"
  umoci new --image "$oci:dev"
  umoci unpack --image "$oci:dev" "$bundle" >/dev/null
  install -m 0755 "$t/pause" "$bundle/rootfs/pause"
  umoci repack --image "$oci:dev" "$bundle"
  umoci config --image "$oci:dev" --config.entrypoint /pause --config.user 65535:65535 \
    --os linux --architecture amd64
  umoci gc --layout "$oci"
  tar -C "$oci" -cf "$t/pause.tar" .
  rm -rf "$oci" "$bundle"
  echo "$NODE_REVISION" >"$t/revision"
  rm -rf "$BIN/node"; mv "$t" "$BIN/node"
}

build_etcd
build_kubernetes
build_kwok
build_kwok_metrics
build_metrics_server
[ "$REAL_NODE" = 1 ] && build_node_runtime
echo "$BIN"
