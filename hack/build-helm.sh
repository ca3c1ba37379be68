#!/usr/bin/env bash
# Builds Helm from the Go module proxy with the machine's Go and caches it outside the
# repository, keyed by version. The chart tests (host/tests/chart.rs) and `make chart` use it.
# Prints the path of the binary on its last line; a cached build returns at once.
#
#   hack/build-helm.sh
#   HELM_VERSION=v3.21.4 hack/build-helm.sh
set -euo pipefail

HELM_VERSION=${HELM_VERSION:-v3.22.0}
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/celery-operator/helm-$HELM_VERSION
BIN="$CACHE/helm"

if [ ! -x "$BIN" ]; then
  command -v go >/dev/null || { echo "go is not installed; Helm is built from the Go module proxy" >&2; exit 1; }
  echo "[helm] building helm $HELM_VERSION (first run only: a few minutes)" >&2
  mkdir -p "$CACHE"
  # A scratch build cache: the compiled packages are not needed once the binary is cached.
  GOCACHE=$(mktemp -d -t celery-operator-gocache.XXXXXX)
  export GOCACHE
  trap 'rm -rf "$GOCACHE"' EXIT
  GOBIN="$CACHE" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
fi
echo "$BIN"
