# KEDA beside celery-operator on the test control plane, for the side-by-side benchmark
# (host/benches/peers.rs). Sourced by hack/control-plane.sh, which provides launch, wait_for,
# new_cert, kubectl_admin and the cluster's state; run through it:
#
#   hack/control-plane.sh start-keda STATE_DIR    KEDA's CRDs, its operator and metrics adapter
#                                                 (the external.metrics.k8s.io APIService), and
#                                                 the HPA controller KEDA's 1 → N path needs
#   hack/control-plane.sh restart-hpa STATE_DIR   the HPA controller again, with HPA_SYNC_PERIOD
#
# Binaries from hack/build-keda.sh (cached; the first build takes about 20 minutes). KEDA runs
# as plain processes on 127.0.0.1, like the rest of the control plane: its operator serves the
# gRPC metrics service the adapter reads (mutual TLS with a certificate of the cluster's CA in
# $STATE/keda-certs: ca.crt, tls.crt, tls.key, which KEDA reads by those names), and the
# aggregator reaches the adapter through an ExternalName Service, as it reaches metrics-server.
# KEDA's admission webhooks are not run: nothing here needs them.
#
# The HPA controller runs in a second kube-controller-manager (hpa-controller-manager, user
# hpa-controller), so that its sync period can change without touching the controllers the
# tests rely on. Environment: HPA_SYNC_PERIOD (default 15s, the Kubernetes default).
#
# KEDA's three parts have users of their own (keda-operator, keda-adapter, hpa-controller; see
# write_tokens), whose requests the audit log records like the operator's.

KEDA_COMPONENTS=(keda-operator keda-adapter hpa-controller-manager)
# KEDA's own namespace: its cluster objects and its operator's leader Lease live here.
KEDA_NAMESPACE=keda

cmd_start_keda() {
  load_cluster_env
  running kube-apiserver || die "the control plane is not running in $STATE"
  local keda_bin
  keda_bin=$("$HACK_DIR/build-keda.sh" | tail -n1)
  stop_keda
  write_keda_env
  load_keda_env
  make_keda_pki
  kubectl_admin create namespace "$KEDA_NAMESPACE" --dry-run=client -o yaml | kubectl_admin apply -f - >/dev/null
  kubectl_admin apply --server-side -f "$keda_bin/crds" >/dev/null
  start_keda_operator "$keda_bin"
  start_keda_adapter "$keda_bin"
  start_hpa_controller
  log "KEDA ready: operator pid $(pid_of keda-operator), adapter pid $(pid_of keda-adapter), HPA sync ${HPA_SYNC_PERIOD:-15s}"
}

cmd_restart_hpa() {
  load_cluster_env
  load_keda_env
  stop_components hpa-controller-manager
  start_hpa_controller
  log "HPA controller restarted, sync period ${HPA_SYNC_PERIOD:-15s}"
}

stop_keda() {
  stop_components "${KEDA_COMPONENTS[@]}"
}

write_keda_env() {
  local p; read -r -a p <<<"$(free_ports 6)"
  cat >"$STATE/keda.env" <<EOF
KEDA_METRICS_PORT=${p[0]}
KEDA_PROBE_PORT=${p[1]}
KEDA_GRPC_PORT=${p[2]}
KEDA_ADAPTER_PORT=${p[3]}
KEDA_ADAPTER_METRICS_PORT=${p[4]}
HPA_KCM_PORT=${p[5]}
EOF
}

load_keda_env() {
  [ -f "$STATE/keda.env" ] || die "$STATE/keda.env is missing: run '$0 start-keda $STATE' first"
  # shellcheck disable=SC1091
  . "$STATE/keda.env"
}

# One certificate for both ends of KEDA's gRPC link (mutual TLS) and for the adapter's serving
# endpoint, which the aggregator checks against <service>.<namespace>.svc.
make_keda_pki() {
  local d="$STATE/keda-certs"
  mkdir -p "$d"
  new_cert "$STATE/pki/ca" "$d/tls" keda serverAuth,clientAuth \
    "IP:127.0.0.1,DNS:localhost,DNS:keda-operator.$KEDA_NAMESPACE.svc,DNS:keda-operator-metrics-apiserver.$KEDA_NAMESPACE.svc"
  cp "$STATE/pki/ca.crt" "$d/ca.crt"
  chmod 600 "$d/tls.key"
}

# What KEDA's binaries read from their environment: every namespace watched, and where KEDA's
# own objects live. Exported in this shell, which launch_cmd's processes inherit.
export_keda_env() {
  export WATCH_NAMESPACE="" POD_NAMESPACE="$KEDA_NAMESPACE" KEDA_CLUSTER_OBJECT_NAMESPACE="$KEDA_NAMESPACE" \
    OPERATOR_NAME=keda-operator KUBECONFIG="$1"
}

start_keda_operator() {
  local kc="$STATE/pki/keda-operator.kubeconfig"
  export_keda_env "$kc"
  # Certificates are given, not rotated, so nothing patches the APIService or webhooks. It
  # elects a leader as KEDA's own manifests run it (a Lease in $KEDA_NAMESPACE), so its API
  # requests at rest compare like for like with the operator's, whose Lease is on too.
  launch_cmd keda-operator "$1/keda" \
    --kubeconfig="$kc" --leader-elect=true \
    --metrics-bind-address="127.0.0.1:$KEDA_METRICS_PORT" \
    --health-probe-bind-address="127.0.0.1:$KEDA_PROBE_PORT" \
    --metrics-service-bind-address="127.0.0.1:$KEDA_GRPC_PORT" \
    --cert-dir="$STATE/keda-certs" --ca-dir="$STATE/keda-certs" \
    --enable-cert-rotation=false --enable-webhook-patching=false --enable-apiservice-patching=false
  wait_for keda-operator "keda-operator /readyz" curl -fsS --max-time 2 "http://127.0.0.1:$KEDA_PROBE_PORT/readyz"
}

start_keda_adapter() {
  local kc="$STATE/pki/keda-adapter.kubeconfig" certs="$STATE/keda-certs"
  export_keda_env "$kc"
  launch_cmd keda-adapter "$1/keda-adapter" \
    --kubeconfig="$kc" --lister-kubeconfig="$kc" \
    --authentication-kubeconfig="$kc" --authorization-kubeconfig="$kc" \
    --bind-address=127.0.0.1 --secure-port="$KEDA_ADAPTER_PORT" --port="$KEDA_ADAPTER_METRICS_PORT" \
    --cert-dir="$certs" --tls-cert-file="$certs/tls.crt" --tls-private-key-file="$certs/tls.key" \
    --requestheader-client-ca-file="$STATE/pki/front-proxy-ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User \
    --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --metrics-service-address="127.0.0.1:$KEDA_GRPC_PORT"
  wait_for keda-adapter "keda-adapter /livez" \
    curl -fsS --max-time 2 --cacert "$STATE/pki/ca.crt" "https://127.0.0.1:$KEDA_ADAPTER_PORT/livez"
  register_api_service external.metrics.k8s.io v1beta1 "$KEDA_NAMESPACE" keda-operator-metrics-apiserver "$KEDA_ADAPTER_PORT"
  wait_for keda-adapter "APIService v1beta1.external.metrics.k8s.io Available" \
    api_service_available v1beta1.external.metrics.k8s.io
}

start_hpa_controller() {
  local kc="$STATE/pki/hpa-controller.kubeconfig"
  launch_cmd hpa-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig="$kc" --authentication-kubeconfig="$kc" --authorization-kubeconfig="$kc" \
    --bind-address=127.0.0.1 --secure-port="$HPA_KCM_PORT" --cert-dir="$STATE/hpa-controller-manager" \
    --leader-elect=false \
    --controllers=horizontal-pod-autoscaler-controller \
    --horizontal-pod-autoscaler-sync-period="${HPA_SYNC_PERIOD:-15s}" \
    --use-service-account-credentials=false
  wait_for hpa-controller-manager "the HPA controller's /healthz" \
    curl -fsSk --max-time 2 "https://127.0.0.1:$HPA_KCM_PORT/healthz"
}
