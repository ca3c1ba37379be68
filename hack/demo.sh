#!/usr/bin/env bash
# `make demo`: the operator on a real (local) Kubernetes control plane, from nothing.
#
# Starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (simulated
# nodes) on 127.0.0.1 (the first run builds them from source: 10-20 minutes), installs the
# CRD and RBAC from deploy/, runs `celery-operator run` as the ServiceAccount deploy/rbac.yaml
# binds, applies deploy/example-celery.yaml, and shows the children appear, become ready, and
# come back after being deleted. Then autoscaling: a local Redis, example/celery-queue-length.yaml,
# the example producer filling the queue, the worker replicas going up, a local Celery worker
# draining the queue and the replicas going down to zero. Ctrl-C stops everything it started.
#
# DEMO_EXIT=1 hack/demo.sh   runs the story once and exits (used by CI to check the demo).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${STATE:-$ROOT/.state}/demo
BIN=$ROOT/target/debug/celery-operator
cd "$ROOT"

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

say "Building the operator and the built-in scaling policies; Redis and a Celery venv"
cargo build -q -p celery-operator
policies/build.sh
hack/install-test-deps.sh
PYTHON=${CELERY_OPERATOR_TEST_VENV:-$HOME/.cache/celery-operator/venv}/bin/python

say "Starting the local control plane (the first run builds Kubernetes from source: 10-20 minutes)"
hack/build-control-plane.sh >/dev/null &
build=$!
start=$SECONDS
while kill -0 "$build" 2>/dev/null; do
  printf '\r    building control-plane binaries... %ds' $((SECONDS - start)); sleep 5
done
wait "$build"
printf '\r'
hack/control-plane.sh start "$STATE"
export KUBECONFIG=$STATE/admin.kubeconfig

say "Installing the CRD and RBAC (kubectl apply -f deploy/)"
kubectl apply -f deploy/namespace.yaml -f deploy/crd.yaml -f deploy/rbac.yaml
kubectl wait --for condition=established --timeout=60s crd/celery.celeryproject.org

say "Running celery-operator as system:serviceaccount:celery-operator:celery-operator"
# The apps' Flower Services exist only as names on this machine: their lookups go to a loopback
# port where nothing answers (and fail at once) rather than to the machine's DNS server.
"$BIN" run --kubeconfig "$STATE/operator.kubeconfig" --listen 127.0.0.1:0 --leader-elect=false \
  --policy-dir "$ROOT/target/policies" --dns-server 127.0.0.1:9 \
  >"$STATE/logs/celery-operator.log" 2>&1 &
operator_pid=$!
echo "    logs: $STATE/logs/celery-operator.log"

say "Starting a Redis broker on 127.0.0.1"
REDIS_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$STATE/logs/redis.log" 2>&1 &
redis_pid=$!
BROKER=redis://127.0.0.1:$REDIS_PORT/0
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.2; done
echo "    $BROKER (the examples say redis://redis:6379/0, the in-cluster Redis; here it runs beside the operator)"

say "Applying a Celery resource written for the Python operator (deploy/example-celery.yaml)"
cat deploy/example-celery.yaml
sed "s#redis://redis:6379/0#$BROKER#" deploy/example-celery.yaml | kubectl apply -f -
kubectl wait --for condition=Ready --timeout=120s celery/celery-crd-example

say "What the operator made"
kubectl get celery
kubectl get deployments,services,pods -l app.kubernetes.io/instance=celery-crd-example -o wide

say "Self-healing: deleting the worker Deployment by hand"
kubectl delete deployment celery-crd-example-celery-worker --wait=true
kubectl wait --for condition=Available --timeout=60s deployment/celery-crd-example-celery-worker
kubectl get deployment celery-crd-example-celery-worker

say "Status and events"
kubectl get celery celery-crd-example -o jsonpath='{range .status.conditions[*]}{.type}={.status} ({.reason}): {.message}{"\n"}{end}'
kubectl get events --field-selector involvedObject.kind=Celery

say "Autoscaling on the queue backlog (example/celery-queue-length.yaml)"
grep -v '^#' example/celery-queue-length.yaml
sed "s#redis://redis:6379/0#$BROKER#" example/celery-queue-length.yaml | kubectl apply -f -

# Prints backlog, worker replicas and the policy's reason every second until the Deployment asks
# for $1 replicas (or $2 seconds pass).
follow_until() {
  local want=$1 limit=$2 start=$SECONDS line replicas
  while :; do
    replicas=$(kubectl get deployment shop-celery-worker -o jsonpath='{.spec.replicas}' 2>/dev/null || true)
    line=$(kubectl get celery shop -o jsonpath='{.status.queueBacklog}|{.status.autoscaler.lastDecision.reason}' 2>/dev/null || true)
    printf '    %3ds  backlog %-5s workers %-3s %s\n' $((SECONDS - start)) "${line%%|*}" "${replicas:-?}" "${line#*|}"
    [ "$replicas" = "$want" ] && return 0
    [ $((SECONDS - start)) -ge "$limit" ] && { echo "    (still not at $want after ${limit}s)"; return 1; }
    sleep 1
  done
}
follow_until 0 60

say "The producer sends a burst of 90 tasks (example/producer.py --burst 90)"
(cd example && CELERY_BROKER_URL=$BROKER "$PYTHON" producer.py --burst 90 --duration 0.2)
follow_until 5 60

say "A Celery worker of the example app drains the queue; the operator scales down to zero"
(cd example && CELERY_BROKER_URL=$BROKER exec "$PYTHON" -m celery --app=app:celery_app worker --queues=celery \
  --pool=threads --concurrency=8 --loglevel=warning --without-heartbeat --without-mingle --without-gossip \
  >"$STATE/logs/celery-worker.log" 2>&1) &
worker_pid=$!
follow_until 0 120
kubectl get events --field-selector involvedObject.name=shop --sort-by=.metadata.creationTimestamp

if [ "${DEMO_EXIT:-}" = 1 ]; then exit 0; fi
say "The cluster keeps running: export KUBECONFIG=$KUBECONFIG and try kubectl edit celery celery-crd-example. Ctrl-C to stop."
while kill -0 "$operator_pid" 2>/dev/null; do sleep 2; done
echo "the operator stopped; see $STATE/logs/celery-operator.log" >&2
exit 1
