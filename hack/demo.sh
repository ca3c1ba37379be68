#!/usr/bin/env bash
# `make demo`: the operator on a real (local) Kubernetes control plane, from nothing.
#
# Starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (simulated
# nodes) on 127.0.0.1 (the first run builds them from source: 10-20 minutes), installs the
# CRD and RBAC from deploy/, runs `celery-operator run` as the ServiceAccount deploy/rbac.yaml
# binds, applies deploy/example-celery.yaml, and shows the children appear, become ready, and
# come back after being deleted. Ctrl-C stops everything it started.
#
# DEMO_EXIT=1 hack/demo.sh   runs the story once and exits (used by CI to check the demo).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${STATE:-$ROOT/.state}/demo
BIN=$ROOT/target/debug/celery-operator
cd "$ROOT"

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
operator_pid=

cleanup() {
  trap - EXIT INT TERM
  say "Stopping the operator and the control plane"
  [ -n "$operator_pid" ] && kill "$operator_pid" 2>/dev/null && wait "$operator_pid" 2>/dev/null || true
  hack/control-plane.sh stop "$STATE" || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

command -v kubectl >/dev/null || { echo "the demo needs kubectl on PATH" >&2; exit 1; }

say "Building the operator and the built-in scaling policies"
cargo build -q -p celery-operator
policies/build.sh

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
"$BIN" run --kubeconfig "$STATE/operator.kubeconfig" --listen 127.0.0.1:0 --leader-elect=false \
  --policy-dir "$ROOT/target/policies" \
  >"$STATE/logs/celery-operator.log" 2>&1 &
operator_pid=$!
echo "    logs: $STATE/logs/celery-operator.log"

say "Applying a Celery resource written for the Python operator (deploy/example-celery.yaml)"
cat deploy/example-celery.yaml
kubectl apply -f deploy/example-celery.yaml
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

if [ "${DEMO_EXIT:-}" = 1 ]; then exit 0; fi
say "The cluster keeps running: export KUBECONFIG=$KUBECONFIG and try kubectl edit celery celery-crd-example. Ctrl-C to stop."
while kill -0 "$operator_pid" 2>/dev/null; do sleep 2; done
echo "the operator stopped; see $STATE/logs/celery-operator.log" >&2
exit 1
