#!/usr/bin/env bash
# Installs what the broker tests (host/tests/brokers.rs) start by themselves: Debian's
# redis-server and rabbitmq-server (with its management plugin), and a Python venv with the
# real Celery and kombu, used to publish and hold messages exactly as Celery does, and Flower.
# Also what the real-node tier (host/tests/real_node) needs from Debian: libseccomp-dev (runc is
# built with cgo against it), iptables, conntrack and socat (kube-proxy and the node's network),
# debootstrap and umoci (the images, built without Docker).
# Idempotent and quick when everything is there. The venv lives outside the repository;
# the tests find it at the same path (or at $CELERY_OPERATOR_TEST_PYTHON).
set -euo pipefail

CELERY_VERSION=5.7.0
FLOWER_VERSION=2.2.0
VENV="${CELERY_OPERATOR_TEST_VENV:-$HOME/.cache/celery-operator/venv}"

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing+=(rabbitmq-server)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
[ -e /usr/include/seccomp.h ] || missing+=(libseccomp-dev)
for c in iptables conntrack socat debootstrap umoci; do command -v "$c" >/dev/null || missing+=("$c"); done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}"
  # The package starts a system-wide broker; the tests start their own, so stop it if it runs.
  if command -v service >/dev/null; then
    service redis-server stop >/dev/null 2>&1 || true
    service rabbitmq-server stop >/dev/null 2>&1 || true
  fi
fi

if ! "$VENV/bin/python" -c "
import celery, flower, sys
sys.exit(celery.__version__ != '$CELERY_VERSION' or flower.__version__ != '$FLOWER_VERSION')" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "celery[redis]==$CELERY_VERSION" "flower==$FLOWER_VERSION"
fi
echo "test dependencies: redis-server, rabbitmq-server, the real node's tools, celery $CELERY_VERSION and flower $FLOWER_VERSION in $VENV"
