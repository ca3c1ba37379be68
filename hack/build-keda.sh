#!/usr/bin/env bash
# Builds KEDA (the operator and its metrics API server, "the adapter") from the Go module proxy
# with the machine's Go, for the side-by-side benchmark that runs it on the test control plane
# beside this operator. Cached outside the repository, keyed by version, like the control plane
# (hack/build-control-plane.sh). Beside the binaries: KEDA's CRDs (crds/), from its module.
#
# KEDA's go.mod has a `replace` line, so `go install …@version` refuses it: the module is
# downloaded and built from its own directory, with its own go.mod and go.sum (a writable copy:
# the module cache is read-only). About 20 minutes on 2 cores the first time.
#
# Prints the directory holding the binaries on its last line. A cached build returns at once.
#
#   hack/build-keda.sh
#   KEDA_VERSION=v2.21.0 KEDA_CACHE=/some/dir hack/build-keda.sh
set -euo pipefail

# The newest KEDA the Go module proxy serves.
KEDA_VERSION=${KEDA_VERSION:-v2.21.0}
CACHE=${KEDA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/celery-operator/keda}
BIN="$CACHE/keda-$KEDA_VERSION"

log() { printf '[keda] %s\n' "$*" >&2; }

if [ -x "$BIN/keda" ] && [ -x "$BIN/keda-adapter" ] && [ -d "$BIN/crds" ]; then
  echo "$BIN"
  exit 0
fi
command -v go >/dev/null || { log "go is not installed; KEDA is built from the Go module proxy"; exit 1; }

MODULE=github.com/kedacore/keda/v2
log "building KEDA $KEDA_VERSION (first run only: about 20 minutes on 2 cores)"
dir=$(go mod download -json "$MODULE@$KEDA_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
[ -n "$dir" ] && [ -f "$dir/go.mod" ] || { log "the module proxy did not give $MODULE@$KEDA_VERSION"; exit 1; }
# v2.21.0 says `go 1.26.0`, which the machine's Go builds; a later KEDA asking for a newer Go
# needs that toolchain (GOTOOLCHAIN=go1.27.3 hack/build-keda.sh: the go command fetches it from
# the module proxy).
log "module at $dir ($(grep -m1 '^go ' "$dir/go.mod"))"

work=$(mktemp -d -t celery-operator-keda.XXXXXX)
# The compiled packages (several GB) are never used again once the binaries are cached.
GOCACHE=$(mktemp -d -t celery-operator-gocache.XXXXXX)
export GOCACHE
trap 'rm -rf "$GOCACHE" "$work"' EXIT
cp -r "$dir/." "$work/"
chmod -R u+w "$work"

mkdir -p "$BIN"
ldflags="-s -w -X github.com/kedacore/keda/v2/version.Version=${KEDA_VERSION#v}"
(
  cd "$work"
  export GOFLAGS=-mod=mod CGO_ENABLED=0
  go build -trimpath -ldflags "$ldflags" -o "$BIN/keda.tmp" ./cmd/operator
  go build -trimpath -ldflags "$ldflags" -o "$BIN/keda-adapter.tmp" ./cmd/adapter
)
mkdir -p "$BIN/crds"
cp "$dir"/config/crd/bases/*.yaml "$BIN/crds/"
# Copies of the read-only module cache: writable, so that a rebuild can replace them.
chmod u+w "$BIN"/crds/*.yaml
mv "$BIN/keda.tmp" "$BIN/keda"
mv "$BIN/keda-adapter.tmp" "$BIN/keda-adapter"
log "built into $BIN"
echo "$BIN"
