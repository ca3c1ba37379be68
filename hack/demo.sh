#!/usr/bin/env bash
# `make demo`: the operator on a real (local) Kubernetes control plane, from nothing.
#
# Starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok (a simulated node)
# and, where the machine can run it (root, cgroups), a real node: containerd, runc, a kubelet,
# kube-proxy and CoreDNS (hack/node/real-node.sh), all on this machine (the first run builds them
# from source), installs the CRD and RBAC from deploy/, runs `celery-operator run` as the
# ServiceAccount deploy/rbac.yaml binds, applies deploy/example-celery.yaml, and shows the
# children appear, become ready, and come back after being deleted. Then autoscaling: a local
# Redis, example/celery-queue-length.yaml, the example producer filling the queue, the worker
# replicas going up and, once the queue is drained, down to zero.
#
# On the real node the workers and Flower are real containers of example-image:dev (built
# without Docker by hack/build-images.sh): they drain the queue themselves, and the terminal shows
# their pods start and stop. On the simulated node no container runs, so a Celery worker of the
# example app on this machine drains the queue instead. REAL_NODE=0 forces the simulated node.
#
# DEMO_EXIT=1 hack/demo.sh   runs the story once and exits (used by CI to check the demo).
# CELERY_OPERATOR_BIN=PATH   runs that operator binary instead of building target/debug's (CI hands
#                            it the release binary it built: a debug build after `cargo test`
#                            compiles every dependency again, ~8 minutes on 2 cores).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${STATE:-$ROOT/.state}/demo
BIN=${CELERY_OPERATOR_BIN:-$ROOT/target/debug/celery-operator}
cd "$ROOT"
# shellcheck source=hack/progress.sh
. hack/progress.sh

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
operator_pid=
redis_pid=
worker_pid=

cleanup() {
  trap - EXIT INT TERM
  say "Stopping the operator, Redis, the Celery worker and the control plane"
  for pid in $worker_pid $operator_pid $redis_pid; do
    kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  done
  hack/control-plane.sh stop "$STATE" || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

command -v kubectl >/dev/null || { echo "the demo needs kubectl on PATH" >&2; exit 1; }

# Whether this machine can run the real node; if not, why (said before the story needs it).
REAL_NODE=${REAL_NODE:-auto}
why_simulated=
if [ "$REAL_NODE" = 0 ]; then
  why_simulated="REAL_NODE=0"
elif [ "$(id -u)" != 0 ]; then
  why_simulated="the real node needs root (containers, mounts, a bridge)"
elif [ ! -d /sys/fs/cgroup/memory ] && [ ! -f /sys/fs/cgroup/cgroup.controllers ]; then
  why_simulated="the real node needs cgroups"
fi
[ -z "$why_simulated" ] && REAL_NODE=1 || REAL_NODE=0

mkdir -p "$STATE/logs"
say "Installing Redis, a Celery venv and the real node's tools (Debian packages, PyPI)"
progress "hack/install-test-deps.sh" hack/install-test-deps.sh
PYTHON=${CELERY_OPERATOR_TEST_VENV:-$HOME/.cache/celery-operator/venv}/bin/python

# NB: the three builds run at once: each waits on downloads part of the time, and the first run
# of all three takes ~30 minutes on 2 cores (later runs, seconds).
say "Building the operator, the built-in scaling policies and Kubernetes (first run: about 40 minutes on 2 cores; logs in $STATE/logs)"
if [ -n "${CELERY_OPERATOR_BIN:-}" ]; then
  [ -x "$BIN" ] || { echo "CELERY_OPERATOR_BIN=$BIN is not an executable" >&2; exit 1; }
else
  # The toolchain rust-toolchain.toml pins, before the two builds that use it start at once.
  progress "rustup toolchain install" rustup toolchain install
  job_start "operator (cargo build)" "$STATE/logs/build-operator.log" cargo build -p celery-operator
fi
job_start "policies (policies/build.sh)" "$STATE/logs/build-policies.log" policies/build.sh
job_start "Kubernetes (hack/build-control-plane.sh)" "$STATE/logs/build-control-plane.log" \
  env REAL_NODE="$REAL_NODE" hack/build-control-plane.sh
jobs_wait

if [ "$REAL_NODE" = 1 ]; then
  say "Starting the local control plane with a real node (containerd, runc, kubelet, kube-proxy, CoreDNS)"
  if ! REAL_NODE=1 hack/control-plane.sh start "$STATE"; then
    why_simulated="the real node did not start (see above and $STATE/logs)"
    REAL_NODE=0
  fi
fi
if [ "$REAL_NODE" = 0 ]; then
  say "Starting the local control plane with a simulated node only: $why_simulated"
  hack/control-plane.sh start "$STATE"
fi
export KUBECONFIG=$STATE/admin.kubeconfig
if [ "$REAL_NODE" = 1 ]; then
  NODE_IP=$(kubectl get node real-0 -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')
  say "Building the example app's image without Docker (hack/build-images.sh: debootstrap, pip, umoci)"
  progress "example-image (:dev and :latest)" env IMAGES=example-image hack/build-images.sh "$STATE"
fi
kubectl get nodes -o wide

# Waits until OBJECT's condition TYPE is True, for at most SECONDS.
# NB: `kubectl wait --for condition=…` fails at once, rather than waiting, while the object has no
# `.status.conditions` yet ("accessor error: <nil>"), which a just-created CRD or Celery may not:
# that failed a CI run of the demo. Polling the condition has no such window.
wait_condition() {
  local object=$1 type=$2 seconds=$3 status=""
  for _ in $(seq "$seconds"); do
    status=$(kubectl get "$object" -o jsonpath="{.status.conditions[?(@.type==\"$type\")].status}" 2>/dev/null || true)
    [ "$status" = True ] && return 0
    sleep 1
  done
  echo "$object: condition $type is not True after ${seconds}s (${status:-no such condition})" >&2
  kubectl get "$object" -o yaml >&2 || true
  return 1
}

say "Installing the CRD and RBAC (kubectl apply -f deploy/)"
kubectl apply -f deploy/namespace.yaml -f deploy/crd.yaml -f deploy/rbac.yaml
wait_condition crd/celery.celeryproject.org Established 60

say "Running celery-operator as system:serviceaccount:celery-operator:celery-operator"
if [ "$REAL_NODE" = 1 ]; then
  # Beside the cluster, the operator asks the cluster's DNS (CoreDNS on the node) for the apps'
  # Flower Services, and reaches them through kube-proxy, as it would in a pod.
  dns=$NODE_IP:53
else
  # The apps' Flower Services exist only as names on this machine: their lookups go to a loopback
  # port where nothing answers (and fail at once) rather than to the machine's DNS server.
  dns=127.0.0.1:9
fi
"$BIN" run --kubeconfig "$STATE/operator.kubeconfig" --listen 127.0.0.1:0 --leader-elect=false \
  --policy-dir "$ROOT/target/policies" --dns-server "$dns" \
  >"$STATE/logs/celery-operator.log" 2>&1 &
operator_pid=$!
echo "    logs: $STATE/logs/celery-operator.log"

REDIS_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
if [ "$REAL_NODE" = 1 ]; then
  say "Starting a Redis broker on 127.0.0.1 and on the node's address $NODE_IP (where the pods reach it)"
  redis-server --port "$REDIS_PORT" --bind "127.0.0.1 $NODE_IP" --protected-mode no --save '' --appendonly no \
    >"$STATE/logs/redis.log" 2>&1 &
  BROKER=redis://$NODE_IP:$REDIS_PORT/0
else
  say "Starting a Redis broker on 127.0.0.1"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$STATE/logs/redis.log" 2>&1 &
  BROKER=redis://127.0.0.1:$REDIS_PORT/0
fi
redis_pid=$!
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.2; done
echo "    $BROKER (the examples say redis://redis:6379/0, the in-cluster Redis; here it runs beside the operator)"

# The examples as written, with this machine's broker (on the real node, example-image is the
# image hack/build-images.sh imported, as `kind load` would).
localize() { sed -e "s#redis://redis:6379/0#$BROKER#" "$1"; }

say "Applying a Celery resource written for the Python operator (deploy/example-celery.yaml)"
cat deploy/example-celery.yaml
if [ "$REAL_NODE" = 0 ]; then
  echo "    (on the simulated node no Flower runs, and its Service's name does not resolve here:"
  echo "     a FlowerUnavailable warning follows once it has had a minute to start; the real node has both)"
fi
localize deploy/example-celery.yaml | kubectl apply -f -
wait_condition celery/celery-crd-example Ready 180

say "What the operator made"
kubectl get celery
kubectl get deployments,services,pods -l app.kubernetes.io/instance=celery-crd-example -o wide

say "Self-healing: deleting the worker Deployment by hand"
kubectl delete deployment celery-crd-example-celery-worker --wait=true
wait_condition deployment/celery-crd-example-celery-worker Available 60
kubectl get deployment celery-crd-example-celery-worker

say "Status and events"
kubectl get celery celery-crd-example -o jsonpath='{range .status.conditions[*]}{.type}={.status} ({.reason}): {.message}{"\n"}{end}'
kubectl get events --field-selector involvedObject.kind=Celery

say "Autoscaling on the queue backlog (example/celery-queue-length.yaml)"
grep -v '^#' example/celery-queue-length.yaml
localize example/celery-queue-length.yaml | kubectl apply -f -

# Prints backlog, worker replicas, the worker pods by phase and the policy's reason every second
# until the Deployment asks for $1 replicas and has that many pods (or $2 seconds pass).
follow_until() {
  local want=$1 limit=$2 start=$SECONDS line replicas pods running
  while :; do
    replicas=$(kubectl get deployment shop-celery-worker -o jsonpath='{.spec.replicas}' 2>/dev/null || true)
    line=$(kubectl get celery shop -o jsonpath='{.status.queueBacklog}|{.status.autoscaler.lastDecision.reason}' 2>/dev/null || true)
    pods=$(kubectl get pods -l app.kubernetes.io/instance=shop,app.kubernetes.io/component=worker --no-headers 2>/dev/null |
      awk '{n[$3]++} END {for (s in n) {printf "%s%d %s", sep, n[s], s; sep=", "}}' || true)
    running=$(kubectl get pods -l app.kubernetes.io/instance=shop,app.kubernetes.io/component=worker --no-headers 2>/dev/null | wc -l)
    printf '    %3ds  backlog %-5s workers %-3s pods: %-28s %s\n' $((SECONDS - start)) "${line%%|*}" "${replicas:-?}" \
      "${pods:-none}" "${line#*|}"
    [ "$replicas" = "$want" ] && [ "$running" = "$want" ] && return 0
    [ $((SECONDS - start)) -ge "$limit" ] && { echo "    (still not at $want after ${limit}s)"; return 1; }
    sleep 1
  done
}
follow_until 0 60

if [ "$REAL_NODE" = 1 ]; then
  say "The producer sends a burst of 400 tasks (example/producer.py --burst 400); real workers start and drain it"
  (cd example && CELERY_BROKER_URL=redis://127.0.0.1:$REDIS_PORT/0 "$PYTHON" producer.py --burst 400 --duration 0.5)
  follow_until 5 120 || true
  say "The queue drains; the operator scales down to zero, and the worker pods stop"
  follow_until 0 240
else
  say "The producer sends a burst of 90 tasks (example/producer.py --burst 90)"
  (cd example && CELERY_BROKER_URL=$BROKER "$PYTHON" producer.py --burst 90 --duration 0.2)
  follow_until 5 60

  say "Simulated pods run no worker: a Celery worker of the example app on this machine drains the queue; the operator scales down to zero"
  (cd example && CELERY_BROKER_URL=$BROKER exec "$PYTHON" -m celery --app=app:celery_app worker --queues=celery \
    --pool=threads --concurrency=8 --loglevel=warning --without-heartbeat --without-mingle --without-gossip \
    >"$STATE/logs/celery-worker.log" 2>&1) &
  worker_pid=$!
  follow_until 0 120
fi
kubectl get events --field-selector involvedObject.name=shop --sort-by=.metadata.creationTimestamp

if [ "${DEMO_EXIT:-}" = 1 ]; then exit 0; fi
say "The cluster keeps running: export KUBECONFIG=$KUBECONFIG and try kubectl edit celery celery-crd-example. Ctrl-C to stop."
while kill -0 "$operator_pid" 2>/dev/null; do sleep 2; done
echo "the operator stopped; see $STATE/logs/celery-operator.log" >&2
exit 1
