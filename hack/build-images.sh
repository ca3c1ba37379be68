#!/usr/bin/env bash
# Builds the two container images without a Docker engine or a registry, from what this machine
# can reach (Debian's packages, PyPI, this tree), and imports them into the containerd of a
# running cluster's real node (REAL_NODE=1 hack/control-plane.sh start DIR):
#
#   celery-operator:dev  what ./Dockerfile builds: target/release/celery-operator at
#                        /usr/bin/celery-operator, the compiled built-in policies (target/policies)
#                        in /usr/lib/celery-operator/policies, on a distroless-style root: only the
#                        files of Debian's libc6, libgcc-s1, base-files, netbase, tzdata and
#                        ca-certificates (as gcr.io/distroless/cc-debian12), no shell; user
#                        65532:65532, entrypoint /usr/bin/celery-operator, arguments [run].
#   example-image:dev    what example/Dockerfile builds: Python 3.11 with example/requirements.txt
#                        (Celery and Flower, pinned) in a virtualenv on Debian, example/app.py and
#                        producer.py in /app, user 1000, the same command.
#
#   hack/build-images.sh DIR        build (cached where nothing changed) and import into DIR's node
#   hack/build-images.sh --no-import  only build, into the cache
#   IMAGES=example-image hack/build-images.sh DIR   only some of them (celery-operator, example-image)
#
# The Debian root filesystem both start from is made once by debootstrap (minbase, with python3)
# and cached by the recipe's digest, as is example-image (by its inputs): a second run builds only
# celery-operator:dev (seconds) and imports. The images are assembled with umoci into OCI
# archives in the cache (IMAGES_CACHE, by default ~/.cache/celery-operator/images), imported with
# `ctr images import`. The values read from the Dockerfiles (user, entrypoint, command, working
# directory, paths) are read from them here, and host/tests/packaging.rs checks the built images'
# configurations against the Dockerfiles, so what Docker users build is what the tests run.
#
# Needs: root (debootstrap, chroot), debootstrap and umoci (Debian packages), cargo, the policies
# built (policies/build.sh), and for the import a real node. Environment: OPERATOR_BINARY (default
# target/release/celery-operator; built with cargo when missing or older than the sources).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${IMAGES_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/celery-operator/images}
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# The packages of the distroless base (gcr.io/distroless/cc-debian12) that the operator needs.
OPERATOR_BASE_PACKAGES=(base-files netbase tzdata libc6 libgcc-s1 ca-certificates)

log() { printf '[images] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# progress WHAT CMD...: one line that moves while a long step runs.
# shellcheck source=hack/progress.sh
. "$ROOT/hack/progress.sh"

# dockerfile_value FILE KEYWORD: the arguments of the last KEYWORD instruction of FILE's final
# stage (what the image keeps).
dockerfile_value() {
  awk -v k="$2" 'toupper($1) == "FROM" { v = "" } toupper($1) == k { $1 = ""; sub(/^ /, ""); v = $0 } END { print v }' "$1"
}

# exec_form '["a", "b"]' -> a, b, one per line (the JSON array of ENTRYPOINT/CMD).
exec_form() { python3 -c 'import json, sys; print("\n".join(json.loads(sys.argv[1])))' "$1"; }

# --- the Debian root filesystem ---------------------------------------------------------------

ROOTFS_RECIPE="debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,tzdata,netbase $SUITE"
ROOTFS="$CACHE/debian-$SUITE-$(echo "$ROOTFS_RECIPE" | sha256sum | cut -c1-12)"

debian_rootfs() {
  [ -f "$ROOTFS/done" ] && return
  command -v debootstrap >/dev/null || die "debootstrap is missing (apt-get install debootstrap)"
  rm -rf "$ROOTFS"; mkdir -p "$ROOTFS"
  # shellcheck disable=SC2086
  progress "debootstrap $SUITE (once: a few minutes)" \
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,tzdata,netbase \
    "$SUITE" "$ROOTFS/rootfs" "$MIRROR"
  # Nothing of the build machine in the images: no apt lists, caches, logs or machine id.
  rm -rf "$ROOTFS/rootfs"/var/cache/apt/* "$ROOTFS/rootfs"/var/lib/apt/lists/* \
    "$ROOTFS/rootfs"/var/log/* "$ROOTFS/rootfs/etc/machine-id" "$ROOTFS/rootfs/etc/hostname"
  # Nor documentation, manual pages and translations (as in Docker's slim images).
  rm -rf "$ROOTFS/rootfs"/usr/share/{doc,man,info,locale}/*
  : >"$ROOTFS/rootfs/etc/resolv.conf"
  touch "$ROOTFS/done"
}

# --- OCI assembly ---------------------------------------------------------------------------

# oci_image NAME TAG ROOTFS_DIR OUT.tar CONFIG_ARGS...: a one-layer image of ROOTFS_DIR.
oci_image() {
  local name=$1 tag=$2 src=$3 out=$4; shift 4
  command -v umoci >/dev/null || die "umoci is missing (apt-get install umoci)"
  local w; w=$(mktemp -d "$CACHE/.oci.XXXXXX")
  umoci init --layout "$w/oci"
  umoci new --image "$w/oci:$tag"
  umoci unpack --image "$w/oci:$tag" "$w/bundle" >/dev/null
  cp -a "$src/." "$w/bundle/rootfs/"
  umoci repack --image "$w/oci:$tag" "$w/bundle"
  umoci config --image "$w/oci:$tag" --os linux --architecture amd64 \
    --author "celery-operator hack/build-images.sh" "$@"
  umoci gc --layout "$w/oci"
  tar -C "$w/oci" -cf "$out.tmp" .
  mv "$out.tmp" "$out"
  rm -rf "$w"
  log "$name:$tag: $(du -h "$out" | cut -f1) ($out)"
}

# config_args DOCKERFILE: umoci config flags for the Dockerfile's USER, WORKDIR, ENTRYPOINT, CMD.
config_args() {
  local f=$1 v a=()
  v=$(dockerfile_value "$f" USER); [ -z "$v" ] || a+=(--config.user "$v")
  v=$(dockerfile_value "$f" WORKDIR); [ -z "$v" ] || a+=(--config.workingdir "$v")
  v=$(dockerfile_value "$f" ENTRYPOINT)
  if [ -n "$v" ]; then
    a+=(--clear=config.entrypoint)
    while IFS= read -r x; do a+=(--config.entrypoint "$x"); done < <(exec_form "$v")
  fi
  v=$(dockerfile_value "$f" CMD)
  if [ -n "$v" ]; then
    a+=(--clear=config.cmd)
    while IFS= read -r x; do a+=(--config.cmd "$x"); done < <(exec_form "$v")
  fi
  printf '%s\0' "${a[@]}"
}

# --- example-image:dev ------------------------------------------------------------------------

EXAMPLE_INPUTS=("$ROOT/example/Dockerfile" "$ROOT/example/requirements.txt" "$ROOT/example/app.py"
  "$ROOT/example/producer.py" "${BASH_SOURCE[0]}")

example_image() {
  local digest out
  digest=$(cat "${EXAMPLE_INPUTS[@]}" <(echo "$ROOTFS") | sha256sum | cut -c1-12)
  out="$CACHE/example-image-$digest.tar"
  EXAMPLE_TAR=$out
  [ -f "$out" ] && { log "example-image:dev: cached ($out)"; return; }
  local w; w=$(mktemp -d "$CACHE/.example.XXXXXX")
  cp -a "$ROOTFS/rootfs" "$w/rootfs"
  # python:3.11-slim runs Python from PATH; here a virtualenv on Debian's Python 3.11, first on PATH.
  # pip reaches PyPI the way this machine does: its hosts file, name servers and CA bundle (PyPI
  # may be served by a mirror the machine trusts), for the install only; and none of this
  # machine's environment (PIP_* settings naming paths that are not in the image).
  cp /etc/ssl/certs/ca-certificates.crt "$w/rootfs/tmp/build-ca.crt"
  cp /etc/resolv.conf "$w/rootfs/etc/resolv.conf"
  cp "$w/rootfs/etc/hosts" "$w/hosts.image" 2>/dev/null || : >"$w/hosts.image"
  cp /etc/hosts "$w/rootfs/etc/hosts"
  in_image() { env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 chroot "$w/rootfs" "$@"; }
  in_image /usr/bin/python3 -m venv /opt/venv
  install -d "$w/rootfs/app"
  cp "$ROOT/example/requirements.txt" "$w/rootfs/app/"
  progress "pip install -r example/requirements.txt (into example-image)" \
    in_image /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
    --cert /tmp/build-ca.crt -r /app/requirements.txt
  rm -f "$w/rootfs/tmp/build-ca.crt"; : >"$w/rootfs/etc/resolv.conf"
  cp "$w/hosts.image" "$w/rootfs/etc/hosts"
  cp "$ROOT/example/app.py" "$ROOT/example/producer.py" "$w/rootfs/app/"
  # RUN useradd --uid 1000 --no-create-home celery
  in_image useradd --uid 1000 --no-create-home celery
  find "$w/rootfs" -name __pycache__ -prune -exec rm -rf {} +
  local args=()
  while IFS= read -r -d '' a; do args+=("$a"); done < <(config_args "$ROOT/example/Dockerfile")
  oci_image example-image dev "$w/rootfs" "$out" "${args[@]}" \
    --config.env PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.env PYTHONUNBUFFERED=1
  rm -rf "$w"
}

# --- celery-operator:dev ----------------------------------------------------------------------

operator_image() {
  local bin=${OPERATOR_BINARY:-$ROOT/target/release/celery-operator}
  if [ -z "${OPERATOR_BINARY:-}" ]; then
    progress "cargo build --release -p celery-operator" \
      cargo build --release --locked -p celery-operator --manifest-path "$ROOT/Cargo.toml"
  fi
  [ -x "$bin" ] || die "$bin is missing"
  local policies=("$ROOT"/target/policies/*.wasm)
  [ -e "${policies[0]}" ] || die "no compiled policies in target/policies (run policies/build.sh)"
  local w; w=$(mktemp -d "$CACHE/.operator.XXXXXX")
  local r="$w/rootfs" p f
  mkdir -p "$r/usr"
  # The merged /usr of Debian 12: /lib, /lib64, /bin and /sbin are links into /usr.
  for p in bin sbin lib lib64; do
    [ -L "$ROOTFS/rootfs/$p" ] && cp -a "$ROOTFS/rootfs/$p" "$r/" && mkdir -p "$r/usr/$p"
  done
  # Only the files of the distroless packages, from the same Debian root filesystem.
  for p in "${OPERATOR_BASE_PACKAGES[@]}"; do
    f="$ROOTFS/rootfs/var/lib/dpkg/info/$p.list"
    [ -f "$f" ] || f="$ROOTFS/rootfs/var/lib/dpkg/info/$p:amd64.list"
    [ -f "$f" ] || die "package $p is not in $ROOTFS/rootfs"
    (cd "$ROOTFS/rootfs" && sed 's#^/##' "$f" | while IFS= read -r path; do
      [ -e "$path" ] || [ -L "$path" ] || continue
      if [ -d "$path" ] && [ ! -L "$path" ]; then mkdir -p "$r/$path"; elif [ ! -L "$r/$path" ]; then cp -a --parents "$path" "$r"; fi
    done)
  done
  mkdir -p "$r/etc/ssl/certs" "$r/tmp" "$r/home/nonroot"
  chmod 1777 "$r/tmp"
  cp "$ROOTFS/rootfs/etc/ssl/certs/ca-certificates.crt" "$r/etc/ssl/certs/"
  # distroless's users: root, nobody and nonroot (65532).
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
    'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$r/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'nonroot:x:65532:' >"$r/etc/group"
  chown 65532:65532 "$r/home/nonroot"
  # COPY --from=operator /src/target/release/celery-operator /usr/bin/celery-operator
  # COPY --from=policies /src/target/policies/ /usr/lib/celery-operator/policies/
  install -D -m 0755 "$bin" "$r/usr/bin/celery-operator"
  install -d "$r/usr/lib/celery-operator/policies"
  cp "$ROOT"/target/policies/*.wasm "$ROOT"/target/policies/*.json "$r/usr/lib/celery-operator/policies/"
  [ ! -e "$r/bin/sh" ] && [ ! -e "$r/usr/bin/sh" ] || die "the operator image has a shell"
  local args=()
  while IFS= read -r -d '' a; do args+=("$a"); done < <(config_args "$ROOT/Dockerfile")
  OPERATOR_TAR="$CACHE/celery-operator-dev.tar"
  oci_image celery-operator dev "$r" "$OPERATOR_TAR" "${args[@]}" \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
  rm -rf "$w"
}

# --- import -----------------------------------------------------------------------------------

import_into() {
  local state=$1 ctr sock
  ctr=$(find "$(sed -n "s/^BIN='\(.*\)'$/\1/p" "$state/cluster.env")/node" -maxdepth 1 -name ctr 2>/dev/null | head -n1)
  sock="$state/node/containerd.sock"
  [ -x "$ctr" ] && [ -S "$sock" ] || die "no real node runs in $state (REAL_NODE=1 hack/control-plane.sh start $state)"
  local image tar
  for image in "${WANTED[@]}"; do
    case $image in
      celery-operator) tar=$OPERATOR_TAR ;;
      example-image) tar=$EXAMPLE_TAR ;;
    esac
    "$ctr" --address "$sock" -n k8s.io images import --base-name "docker.io/library/$image" "$tar" >/dev/null
    # Also as `latest`, the tag of the README's `docker build -t NAME`, so that deploy/ and the
    # examples run on the node as users apply them.
    "$ctr" --address "$sock" -n k8s.io images tag --force "docker.io/library/$image:dev" "docker.io/library/$image:latest" >/dev/null
    log "imported $image:dev (and :latest) into $state's node"
  done
}

[ $# -eq 1 ] || { sed -n '16,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "building the images needs root (debootstrap, chroot)"
read -r -a WANTED <<<"${IMAGES:-celery-operator example-image}"
for image in "${WANTED[@]}"; do
  case $image in celery-operator | example-image) ;; *) die "IMAGES: no image named $image (celery-operator, example-image)" ;; esac
done
mkdir -p "$CACHE"
debian_rootfs
for image in "${WANTED[@]}"; do
  case $image in
    celery-operator) operator_image ;;
    example-image) example_image ;;
  esac
done
if [ "$1" != --no-import ]; then import_into "$(realpath -m -- "$1")"; fi
