#!/usr/bin/env bash
# A real Kubernetes control plane on 127.0.0.1, run as plain processes (no Docker, no kind),
# for celery-operator's integration tests and its demo.
#
#   hack/control-plane.sh start STATE_DIR              start everything, wait until ready, exit 0
#   hack/control-plane.sh stop STATE_DIR               stop everything (idempotent)
#   hack/control-plane.sh restart-apiserver STATE_DIR  stop kube-apiserver, start it again on the
#                                                      same port with the same flags, wait for /readyz;
#                                                      its clients in here start afresh (restart_clients)
#   hack/control-plane.sh stop-apiserver STATE_DIR     stop kube-apiserver only (an outage, for fault tests)
#   hack/control-plane.sh start-apiserver STATE_DIR    start it again after stop-apiserver, wait for
#                                                      /readyz, restart its clients as above
#   hack/control-plane.sh status STATE_DIR             print which components run (exit 1 if any is down)
#   hack/control-plane.sh start-keda STATE_DIR         KEDA beside it, for the peer benchmark
#                                                      (hack/peers/keda.sh); restart-hpa too
#
# Components: etcd, kube-apiserver, kube-controller-manager (deployments, replicasets, garbage
# collection, namespaces, service accounts), kube-scheduler, kwok, which keeps one fake node
# (kwok-node-0: 32 CPUs, 256Gi, 1000 pods) and makes the pods scheduled on it Running and Ready,
# and metrics-server, which serves the real metrics.k8s.io/v1beta1 API (`kubectl top`).
# Binaries come from hack/build-control-plane.sh (cached; the first build takes 10-20 minutes).
#
# Simulated CPU and memory (metrics.k8s.io, `kubectl top pods`): kwok plays each pod's usage from
# the pod's annotations (kwok's own usage-from-annotation config), for each of its containers:
#     kwok.x-k8s.io/usage-cpu: 250m       kwok.x-k8s.io/usage-memory: 100Mi
# A container without them uses 1m CPU and 1Mi memory; a pod with N containers reports N times the
# annotated figures. Memory comes back exact; CPU is a rate measured between two scrapes and comes
# back within a fraction of a percent (250m may read 249999874n; kubectl top rounds it up, to 250m
# or 251m): compare with a tolerance. The annotations can be changed on a running pod (kubectl
# annotate --overwrite); a template change rolls out new pods instead. metrics-server scrapes every
# 10 s (its minimum), so a new pod has metrics 10-20 s after it runs (two scrapes), and a changed
# annotation shows in the next scrape, within about 10 s. start waits for no scrape: it returns
# once the APIService v1beta1.metrics.k8s.io is Available and GET /apis/metrics.k8s.io/v1beta1/nodes
# answers (about 1 s more than before metrics-server). Reading pod metrics needs RBAC for
# pods.metrics.k8s.io (get, list); admin has it, operator.kubeconfig only what deploy/rbac.yaml grants.
#
# What start leaves in STATE_DIR:
#   admin.kubeconfig     token user "admin" in group system:masters
#   operator.kubeconfig  token user "system:serviceaccount:celery-operator:celery-operator" with
#                        the groups of that service account and no permissions but what RBAC
#                        grants, so deploy/rbac.yaml applies to it unmodified
#   env                  `source`-able: KUBECONFIG (admin), OPERATOR_KUBECONFIG, KUBE_APISERVER_URL,
#                        KUBE_CA_FILE, CONTROL_PLANE_STATE
#   pids/<name>.pid, logs/<name>.log, pki/, etcd/, cluster.env (ports and tokens; restart-apiserver
#   reads it)
#   logs/audit.log       one JSON line per request (watches aside) by the operator's
#                        ServiceAccount, and per read of a Celery object by anyone, with its user,
#                        user agent and when it was received: the fault tests read which replica
#                        wrote what, and when; the API cost benchmark, who read what
#
# start wipes what an earlier start left in STATE_DIR (stopping its processes first), so every start
# is a fresh, empty cluster. If start fails it prints the tail of the failing component's log,
# stops what it started (logs stay) and exits non-zero.
#
# With REAL_NODE=1, start also runs a real node, real-0 (containerd, runc, a kubelet; see
# hack/node/real-node.sh), and taints kwok-node-0 so that only pods tolerating
# kwok.x-k8s.io/node=fake land on it; stop tears the node down with everything it ran.
#
# Environment: CONTROL_PLANE_TIMEOUT (seconds for each wait, default 60), REAL_NODE (0 or 1).
set -euo pipefail

HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TIMEOUT=${CONTROL_PLANE_TIMEOUT:-60}
# Started in this order (each waits for the previous one); stopped all at once.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok metrics-server)
NODE_NAME=kwok-node-0
REAL_NODE=${REAL_NODE:-0}
OPERATOR_USER=system:serviceaccount:celery-operator:celery-operator
OPERATOR_GROUPS=system:serviceaccounts,system:serviceaccounts:celery-operator,system:authenticated
# KEDA's operator, its metrics adapter and the HPA controller it needs, when the peer benchmark
# starts them (start-keda): users of their own, so the audit log tells their requests apart.
KEDA_OPERATOR_USER=keda-operator
KEDA_ADAPTER_USER=keda-adapter
HPA_USER=hpa-controller

log() { printf '[control-plane] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
  sed -n '5,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# ---------------------------------------------------------------------------------------------
# Processes

pid_of() { cat "$STATE/pids/$1.pid" 2>/dev/null || true; }

# alive PID: the process exists and has not exited. An exited process stays a zombie until
# init reaps it, which here can take seconds, and kill -0 still succeeds on a zombie.
alive() {
  local st
  st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}

# True when the pid file of component $1 names a live process running that component's binary
# (named in pids/NAME.exe when it is not NAME); checking the binary guards against a recycled pid
# from an old, stale pid file.
running() {
  local pid argv0 exe=$1
  pid=$(pid_of "$1")
  [ -n "$pid" ] && alive "$pid" || return 1
  [ -f "$STATE/pids/$1.exe" ] && exe=$(cat "$STATE/pids/$1.exe")
  argv0=$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | head -n1) || return 1
  [ "$(basename -- "$argv0")" = "$exe" ]
}

# launch NAME ARGS...: run $BIN/NAME in the background, detached into its own session so that it
# outlives this script and a Ctrl-C or a process-group kill aimed at the caller does not reach it.
launch() {
  local name=$1; shift
  launch_cmd "$name" "$BIN/$name" "$@"
}

# launch_cmd NAME BINARY ARGS...: the same for a binary of another name or place.
launch_cmd() {
  local name=$1 exe=$2; shift 2
  mkdir -p "$STATE/pids" "$STATE/logs"
  # Appending keeps the log of the previous run across restart-apiserver.
  echo "=== $(date -u +%FT%TZ) starting $name" >>"$STATE/logs/$name.log"
  # A background job of a non-interactive shell is not a process-group leader, so setsid does not
  # fork and $! is the component's own pid.
  setsid "$exe" "$@" >>"$STATE/logs/$name.log" 2>&1 </dev/null &
  local pid=$! deadline=$((SECONDS + 5))
  echo "$pid" >"$STATE/pids/$name.pid"
  if [ "$(basename -- "$exe")" = "$name" ]; then rm -f "$STATE/pids/$name.exe"; else basename -- "$exe" >"$STATE/pids/$name.exe"; fi
  # Until setsid has exec'd the binary, /proc shows bash or setsid and running() would call the
  # component dead; let the exec happen (or the process die) first.
  until running "$name" || ! alive "$pid" || [ "$SECONDS" -ge "$deadline" ]; do sleep 0.05; done
}

# Print the end of a component's log, for whoever has to find out why it failed.
show_log() {
  local f="$STATE/logs/$1.log"
  [ -f "$f" ] || return 0
  log "last lines of $f:"
  tail -n "${2:-40}" "$f" >&2
}

# wait_for COMPONENT WHAT CMD...: retry CMD until it succeeds; fail early if COMPONENT died,
# and at the deadline.
wait_for() {
  local name=$1 what=$2; shift 2
  local deadline=$((SECONDS + TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    if ! running "$name"; then
      show_log "$name"
      die "$name exited while waiting for $what"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      show_log "$name"
      die "timed out after ${TIMEOUT}s waiting for $what"
    fi
    sleep 0.2
  done
}

# stop_components NAME...: SIGTERM them all, SIGKILL whatever still runs after 2 s. Nothing here
# needs a clean shutdown (start wipes the data), and kube-apiserver would otherwise hold its open
# watches for up to its 60 s request timeout before exiting.
stop_components() {
  local name pids=() pid deadline
  for name in "$@"; do
    if running "$name"; then
      pid=$(pid_of "$name")
      pids+=("$pid")
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  deadline=$((SECONDS + 2))
  for pid in "${pids[@]}"; do
    while alive "$pid"; do
      if [ "$SECONDS" -ge "$deadline" ]; then
        kill -KILL "$pid" 2>/dev/null || true
      fi
      sleep 0.1
    done
  done
  for name in "$@"; do rm -f "$STATE/pids/$name.pid" "$STATE/pids/$name.exe"; done
}

free_ports() {
  # All at once, holding each socket until every port is picked, so no two are the same.
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# ---------------------------------------------------------------------------------------------
# Certificates, tokens and kubeconfigs

# new_ca PREFIX CN
new_ca() {
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key" 2>/dev/null
  openssl req -x509 -new -key "$1.key" -subj "/CN=$2" -days 3650 -out "$1.crt" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"
}

# new_cert CA_PREFIX PREFIX CN EXTENDED_KEY_USAGE [SUBJECT_ALT_NAMES]
# CN may be a whole subject instead (starting with /, e.g. /O=system:masters/CN=name).
# rustls (kube-rs) is stricter than Go: it wants v3 extensions, a non-CA leaf and the IP in the SAN.
new_cert() {
  local ca=$1 out=$2 cn=$3 eku=$4 san=${5:-} subject
  case $cn in /*) subject=$cn ;; *) subject="/CN=$cn" ;; esac
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$out.key" 2>/dev/null
  openssl req -new -key "$out.key" -subj "$subject" -out "$out.csr"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [ -z "$san" ] || echo "subjectAltName=$san"
  } >"$out.ext"
  openssl x509 -req -in "$out.csr" -CA "$ca.crt" -CAkey "$ca.key" -set_serial "0x$(openssl rand -hex 8)" \
    -days 3650 -extfile "$out.ext" -out "$out.crt" 2>/dev/null
  rm -f "$out.csr" "$out.ext"
}

make_pki() {
  local d="$STATE/pki"
  mkdir -p "$d"
  new_ca "$d/ca" "celery-operator-test-ca"
  # 10.0.0.1 is the `kubernetes` Service's IP in --service-cluster-ip-range.
  new_cert "$d/ca" "$d/apiserver" kube-apiserver serverAuth \
    "IP:127.0.0.1,DNS:localhost,IP:10.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  # The aggregation layer proxies to extension API servers (metrics.k8s.io) with this client cert;
  # they trust it through the extension-apiserver-authentication ConfigMap.
  new_ca "$d/front-proxy-ca" "celery-operator-test-front-proxy-ca"
  new_cert "$d/front-proxy-ca" "$d/front-proxy-client" front-proxy-client clientAuth
  # kwok serves the fake kubelet endpoints over TLS with this (and plain HTTP on the same port);
  # metrics-server verifies it against ca.crt.
  new_cert "$d/ca" "$d/kwok" kwok serverAuth "IP:127.0.0.1,DNS:localhost"
  # The aggregator checks the name <service>.<namespace>.svc of the APIService's Service.
  new_cert "$d/ca" "$d/metrics-server" metrics-server serverAuth \
    "IP:127.0.0.1,DNS:localhost,DNS:metrics-server.kube-system.svc"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$d/sa.key" 2>/dev/null
  openssl pkey -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
  chmod 600 "$d"/*.key
}

# The ports, tokens and binary directory of this cluster; restart-apiserver and status read them.
write_cluster_env() {
  local p; read -r -a p <<<"$(free_ports 13)"
  local t=()
  for _ in 1 2 3 4 5 6 7 8 9 10 11 12; do t+=("$(openssl rand -hex 24)"); done
  cat >"$STATE/cluster.env" <<EOF
BIN='$BIN'
ETCD_PORT=${p[0]}
ETCD_PEER_PORT=${p[1]}
APISERVER_PORT=${p[2]}
KCM_PORT=${p[3]}
SCHEDULER_PORT=${p[4]}
KWOK_PORT=${p[5]}
METRICS_SERVER_PORT=${p[6]}
KUBELET_PORT=${p[7]}
KUBELET_HEALTHZ_PORT=${p[8]}
KUBE_PROXY_HEALTHZ_PORT=${p[9]}
KUBE_PROXY_METRICS_PORT=${p[10]}
COREDNS_HEALTH_PORT=${p[11]}
COREDNS_READY_PORT=${p[12]}
REAL_NODE=$REAL_NODE
ADMIN_TOKEN=${t[0]}
OPERATOR_TOKEN=${t[1]}
KCM_TOKEN=${t[2]}
SCHEDULER_TOKEN=${t[3]}
KWOK_TOKEN=${t[4]}
METRICS_SERVER_TOKEN=${t[5]}
KUBELET_TOKEN=${t[6]}
KUBE_PROXY_TOKEN=${t[7]}
COREDNS_TOKEN=${t[8]}
KEDA_OPERATOR_TOKEN=${t[9]}
KEDA_ADAPTER_TOKEN=${t[10]}
HPA_TOKEN=${t[11]}
EOF
  chmod 600 "$STATE/cluster.env"
}

load_cluster_env() {
  [ -f "$STATE/cluster.env" ] || die "$STATE/cluster.env is missing: run '$0 start $STATE' first"
  # shellcheck disable=SC1091
  . "$STATE/cluster.env"
}

# Static tokens keep the kubeconfigs trivial for kube-rs and kubectl alike (no client certs).
# Each component gets its own user so audit and RBAC errors say who did what; they are all
# system:masters because the controller manager, without per-controller service account
# credentials, needs the union of every controller's permissions.
write_tokens() {
  cat >"$STATE/pki/tokens.csv" <<EOF
$ADMIN_TOKEN,admin,admin,"system:masters"
$OPERATOR_TOKEN,$OPERATOR_USER,celery-operator,"$OPERATOR_GROUPS"
$KCM_TOKEN,kube-controller-manager,kube-controller-manager,"system:masters"
$SCHEDULER_TOKEN,kube-scheduler,kube-scheduler,"system:masters"
$KWOK_TOKEN,kwok,kwok,"system:masters"
$METRICS_SERVER_TOKEN,metrics-server,metrics-server,"system:masters"
$KUBELET_TOKEN,system:node:real-0,system:node:real-0,"system:nodes,system:masters"
$KUBE_PROXY_TOKEN,system:kube-proxy,system:kube-proxy,"system:masters"
$COREDNS_TOKEN,coredns,coredns,"system:masters"
$KEDA_OPERATOR_TOKEN,$KEDA_OPERATOR_USER,keda-operator,"system:masters"
$KEDA_ADAPTER_TOKEN,$KEDA_ADAPTER_USER,keda-adapter,"system:masters"
$HPA_TOKEN,$HPA_USER,hpa-controller,"system:masters"
EOF
  chmod 600 "$STATE/pki/tokens.csv"
}

# write_kubeconfig FILE USER TOKEN
write_kubeconfig() {
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: celery-operator-test
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority: $STATE/pki/ca.crt
users:
- name: $2
  user:
    token: $3
contexts:
- name: $2
  context:
    cluster: celery-operator-test
    user: $2
current-context: $2
EOF
  chmod 600 "$1"
}

write_kubeconfigs() {
  write_kubeconfig "$STATE/admin.kubeconfig" admin "$ADMIN_TOKEN"
  write_kubeconfig "$STATE/operator.kubeconfig" "$OPERATOR_USER" "$OPERATOR_TOKEN"
  write_kubeconfig "$STATE/pki/kube-controller-manager.kubeconfig" kube-controller-manager "$KCM_TOKEN"
  write_kubeconfig "$STATE/pki/kube-scheduler.kubeconfig" kube-scheduler "$SCHEDULER_TOKEN"
  write_kubeconfig "$STATE/pki/kwok.kubeconfig" kwok "$KWOK_TOKEN"
  write_kubeconfig "$STATE/pki/metrics-server.kubeconfig" metrics-server "$METRICS_SERVER_TOKEN"
  write_kubeconfig "$STATE/pki/kubelet.kubeconfig" system:node:real-0 "$KUBELET_TOKEN"
  write_kubeconfig "$STATE/pki/kube-proxy.kubeconfig" system:kube-proxy "$KUBE_PROXY_TOKEN"
  write_kubeconfig "$STATE/pki/coredns.kubeconfig" coredns "$COREDNS_TOKEN"
  write_kubeconfig "$STATE/pki/keda-operator.kubeconfig" "$KEDA_OPERATOR_USER" "$KEDA_OPERATOR_TOKEN"
  write_kubeconfig "$STATE/pki/keda-adapter.kubeconfig" "$KEDA_ADAPTER_USER" "$KEDA_ADAPTER_TOKEN"
  write_kubeconfig "$STATE/pki/hpa-controller.kubeconfig" "$HPA_USER" "$HPA_TOKEN"
  cat >"$STATE/env" <<EOF
export CONTROL_PLANE_STATE='$STATE'
export KUBECONFIG='$STATE/admin.kubeconfig'
export OPERATOR_KUBECONFIG='$STATE/operator.kubeconfig'
export KUBE_APISERVER_URL='https://127.0.0.1:$APISERVER_PORT'
export KUBE_CA_FILE='$STATE/pki/ca.crt'
EOF
}

kubectl_admin() { kubectl --kubeconfig "$STATE/admin.kubeconfig" --request-timeout=10s "$@"; }

# ---------------------------------------------------------------------------------------------
# Components

start_etcd() {
  local peer="http://127.0.0.1:$ETCD_PEER_PORT" client="http://127.0.0.1:$ETCD_PORT"
  # No fsync: the data is thrown away with the cluster, and fsync is most of etcd's latency.
  launch etcd --name=etcd0 --data-dir="$STATE/etcd" \
    --listen-client-urls="$client" --advertise-client-urls="$client" \
    --listen-peer-urls="$peer" --initial-advertise-peer-urls="$peer" \
    --initial-cluster="etcd0=$peer" --initial-cluster-state=new \
    --unsafe-no-fsync --log-level=warn
  wait_for etcd "etcd /health" etcd_healthy
}
etcd_healthy() { curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_PORT/health" | grep -q '"health":"true"'; }

# --endpoint-reconciler-type=none: the default reconciler refuses a loopback advertise address.
# --disable-admission-plugins=TaintNodesByCondition: that plugin gives every new node the
#   node.kubernetes.io/not-ready:NoSchedule taint, which only the node-lifecycle controller removes,
#   and that controller (which also evicts pods from nodes it deems unhealthy) is not run here.
# --requestheader-*/--proxy-client-*: the aggregation layer, for metrics.k8s.io later on.
start_apiserver() {
  local pki="$STATE/pki" kubelet_client=()
  # The real node's kubelet (logs, exec) trusts this client certificate.
  [ -f "$pki/apiserver-kubelet-client.crt" ] && kubelet_client=(
    --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt"
    --kubelet-client-key="$pki/apiserver-kubelet-client.key"
    --kubelet-preferred-address-types=InternalIP)
  launch kube-apiserver "${kubelet_client[@]}" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 --secure-port="$APISERVER_PORT" \
    --advertise-address=127.0.0.1 --endpoint-reconciler-type=none \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" \
    --token-auth-file="$pki/tokens.csv" \
    --authorization-mode=RBAC \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$pki/sa.pub" \
    --service-account-signing-key-file="$pki/sa.key" \
    --service-cluster-ip-range=10.0.0.0/24 \
    --allow-privileged=true \
    --disable-admission-plugins=TaintNodesByCondition \
    --requestheader-client-ca-file="$pki/front-proxy-ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User \
    --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$pki/front-proxy-client.crt" \
    --proxy-client-key-file="$pki/front-proxy-client.key" \
    --audit-policy-file="$STATE/audit-policy.yaml" \
    --audit-log-path="$STATE/logs/audit.log" --audit-log-format=json --audit-log-mode=blocking \
    --cert-dir="$STATE/kube-apiserver"
  wait_for kube-apiserver "kube-apiserver /readyz" apiserver_ready
}

# Requests by the operator's ServiceAccount only (and by KEDA's parts, which only the peer
# benchmark runs): the rest of the cluster's traffic would make the log large and slow the API
# server down.
write_audit_policy() {
  cat > "$STATE/audit-policy.yaml" <<YAML
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    users: ["$OPERATOR_USER", "$KEDA_OPERATOR_USER", "$KEDA_ADAPTER_USER", "$HPA_USER"]
    verbs: [get, list, create, update, patch, delete]
  - level: Metadata
    verbs: [get]
    resources: [{group: celeryproject.org, resources: [celery]}]
  - level: None
YAML
}
apiserver_ready() {
  [ "$(curl -fsS --max-time 5 --cacert "$STATE/pki/ca.crt" -H "Authorization: Bearer $ADMIN_TOKEN" \
    "https://127.0.0.1:$APISERVER_PORT/readyz")" = ok ]
}

start_controller_manager() {
  local kc="$STATE/pki/kube-controller-manager.kubeconfig"
  # The disruption controller keeps PodDisruptionBudgets' status, which the eviction API (a node
  # drain) checks: workerSpec.disruptionBudget is tested against it.
  local controllers=deployment-controller,replicaset-controller,garbage-collector-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller,disruption-controller
  # The real node routes Services (kube-proxy) and names them (CoreDNS) from their EndpointSlices,
  # and its pods mount the cluster CA from the kube-root-ca.crt ConfigMap of their namespace.
  [ "$REAL_NODE" = 1 ] && controllers+=,endpointslice-controller,root-ca-certificate-publisher-controller
  launch kube-controller-manager \
    --kubeconfig="$kc" --authentication-kubeconfig="$kc" --authorization-kubeconfig="$kc" \
    --bind-address=127.0.0.1 --secure-port="$KCM_PORT" --cert-dir="$STATE/kube-controller-manager" \
    --leader-elect=false \
    --controllers="$controllers" \
    --use-service-account-credentials=false \
    --service-account-private-key-file="$STATE/pki/sa.key" \
    --root-ca-file="$STATE/pki/ca.crt"
  # Its serving cert is self-signed in memory, hence -k; /healthz needs no credentials.
  wait_for kube-controller-manager "kube-controller-manager /healthz" \
    curl -fsSk --max-time 2 "https://127.0.0.1:$KCM_PORT/healthz"
  # Pods are refused in a namespace until its default ServiceAccount exists; waiting for the one
  # in "default" also shows that the controllers run.
  wait_for kube-controller-manager "ServiceAccount default/default" \
    kubectl_admin -n default get serviceaccount default
}

start_scheduler() {
  local kc="$STATE/pki/kube-scheduler.kubeconfig"
  launch kube-scheduler \
    --kubeconfig="$kc" --authentication-kubeconfig="$kc" --authorization-kubeconfig="$kc" \
    --bind-address=127.0.0.1 --secure-port="$SCHEDULER_PORT" --leader-elect=false
  wait_for kube-scheduler "kube-scheduler /readyz" \
    curl -fsSk --max-time 2 "https://127.0.0.1:$SCHEDULER_PORT/readyz"
}

start_kwok() {
  local configs=() f
  for f in "$BIN"/kwok-stages/*.yaml; do configs+=("--config=$f"); done
  [ ${#configs[@]} -gt 0 ] || die "no kwok stage files in $BIN/kwok-stages"
  # The ClusterResourceUsage from pod annotations and the Metric serving resource metrics.
  for f in usage-from-annotation metrics-resource; do
    [ -f "$BIN/kwok-metrics/$f.yaml" ] || die "$BIN/kwok-metrics/$f.yaml is missing"
    configs+=("--config=$BIN/kwok-metrics/$f.yaml")
  done
  # Only nodes annotated kwok.x-k8s.io/node=fake are kwok's; its server doubles as the fake
  # kubelet endpoint (HTTPS for metrics-server, plain HTTP for /healthz, on the same port), hence
  # node-ip/node-port pointing at it: they become the node's InternalIP and kubelet port.
  launch kwok --kubeconfig="$STATE/pki/kwok.kubeconfig" "${configs[@]}" \
    --tls-cert-file="$STATE/pki/kwok.crt" --tls-private-key-file="$STATE/pki/kwok.key" \
    --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --manage-nodes-with-label-selector= \
    --disregard-status-with-annotation-selector=kwok.x-k8s.io/status=custom \
    --disregard-status-with-label-selector= \
    --server-address="127.0.0.1:$KWOK_PORT" \
    --node-ip=127.0.0.1 --node-port="$KWOK_PORT" \
    --cidr=10.244.0.1/16 \
    --node-lease-duration-seconds=40
  wait_for kwok "kwok /healthz" curl -fsS --max-time 2 "http://127.0.0.1:$KWOK_PORT/healthz"
  create_node
  wait_for kwok "node $NODE_NAME Ready" node_ready
}
node_ready() {
  [ "$(kubectl_admin get node "$NODE_NAME" \
    -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

# The node as kwok's docs describe it, minus their NoSchedule taint: ordinary pods (the operator's
# workers) must land on it without tolerations.
create_node() {
  kubectl_admin apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata:
  name: $NODE_NAME
  annotations:
    node.alpha.kubernetes.io/ttl: "0"
    kwok.x-k8s.io/node: fake
    # Where metrics-server finds this node's resource metrics on kwok's server (kwok serves them
    # per node under /metrics/nodes/NODE/; a kubelet would serve /metrics/resource).
    metrics.k8s.io/resource-metrics-path: /metrics/nodes/$NODE_NAME/metrics/resource
  labels:
    beta.kubernetes.io/arch: amd64
    beta.kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    kubernetes.io/hostname: $NODE_NAME
    kubernetes.io/os: linux
    kubernetes.io/role: agent
    node-role.kubernetes.io/agent: ""
    type: kwok
status:
  allocatable:
    cpu: "32"
    memory: 256Gi
    pods: "1000"
  capacity:
    cpu: "32"
    memory: 256Gi
    pods: "1000"
EOF
}

# metrics-server scrapes the node's InternalIP (127.0.0.1) on the port in its status (kwok's), over
# TLS checked against our CA, with the bearer token of its kubeconfig (kwok asks for none).
# --metric-resolution=10s is the least it accepts, and it must be over 10/9 of the kubelet request
# timeout (default 10s), hence --kubelet-request-timeout=5s. The aggregation layer reaches it through
# the APIService v1beta1.metrics.k8s.io -> Service kube-system/metrics-server of type ExternalName
# 127.0.0.1 -> https://127.0.0.1:METRICS_SERVER_PORT, authenticating with the front-proxy client
# certificate that the --requestheader-* flags here (the apiserver's own) let it trust.
start_metrics_server() {
  local pki="$STATE/pki" kc="$STATE/pki/metrics-server.kubeconfig"
  launch metrics-server \
    --kubeconfig="$kc" --authentication-kubeconfig="$kc" --authorization-kubeconfig="$kc" \
    --bind-address=127.0.0.1 --secure-port="$METRICS_SERVER_PORT" \
    --tls-cert-file="$pki/metrics-server.crt" --tls-private-key-file="$pki/metrics-server.key" \
    --requestheader-client-ca-file="$pki/front-proxy-ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User \
    --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --kubelet-preferred-address-types=InternalIP \
    --kubelet-use-node-status-port \
    --kubelet-certificate-authority="$pki/ca.crt" \
    --kubelet-request-timeout=5s \
    --metric-resolution=10s
  warm_kwok_pod_cache
  wait_for metrics-server "metrics-server /livez" \
    curl -fsS --max-time 2 --cacert "$pki/ca.crt" "https://127.0.0.1:$METRICS_SERVER_PORT/livez"
  register_metrics_api
  wait_for metrics-server "APIService v1beta1.metrics.k8s.io Available" metrics_api_available
  wait_for metrics-server "GET /apis/metrics.k8s.io/v1beta1/nodes" \
    kubectl_admin get --raw /apis/metrics.k8s.io/v1beta1/nodes
}
metrics_api_available() { api_service_available v1beta1.metrics.k8s.io; }
# api_service_available NAME: the aggregator has found APIService NAME's server answering.
api_service_available() {
  [ "$(kubectl_admin get apiservice "$1" -o 'jsonpath={.status.conditions[?(@.type=="Available")].status}')" = True ]
}

# kwok's pod cache for metrics is lazy: it starts (listing all pods) when a scrape first finds a
# pod on the node, and that scrape still misses the pod, so the first pod of a cluster would need a
# third scrape (10 s more) before it had metrics. A throwaway pod, scraped once, starts it now.
warm_kwok_pod_cache() {
  kubectl_admin -n default apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: kwok-pod-cache-warmup
spec:
  nodeName: $NODE_NAME
  automountServiceAccountToken: false
  containers:
  - name: warmup
    image: none
EOF
  wait_for kwok "kwok's metrics of pod default/kwok-pod-cache-warmup" kwok_has_warmup_pod
  kubectl_admin -n default delete pod kwok-pod-cache-warmup --wait=true --timeout="${TIMEOUT}s" >/dev/null
}
# grep without -q reads to the end: -q stops at the match, and with pipefail curl's broken pipe
# would then fail the check.
kwok_has_warmup_pod() {
  curl -fsS --max-time 2 "http://127.0.0.1:$KWOK_PORT/metrics/nodes/$NODE_NAME/metrics/resource" |
    grep '^container_memory_working_set_bytes{.*pod="kwok-pod-cache-warmup"' >/dev/null
}

register_metrics_api() {
  register_api_service metrics.k8s.io v1beta1 kube-system metrics-server "$METRICS_SERVER_PORT"
}

# register_api_service GROUP VERSION NAMESPACE SERVICE PORT: the aggregator proxies GROUP/VERSION
# to SERVICE.NAMESPACE.svc, an ExternalName for 127.0.0.1, on PORT, trusting the cluster's CA.
register_api_service() {
  kubectl_admin apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Service
metadata:
  name: $4
  namespace: $3
spec:
  type: ExternalName
  externalName: 127.0.0.1
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata:
  name: $2.$1
spec:
  group: $1
  version: $2
  groupPriorityMinimum: 100
  versionPriority: 100
  service:
    namespace: $3
    name: $4
    port: $5
  caBundle: $(base64 -w0 <"$STATE/pki/ca.crt")
EOF
}

# ---------------------------------------------------------------------------------------------
# Commands

cmd_stop() {
  [ -d "$STATE" ] || return 0
  # shellcheck disable=SC1091
  [ -f "$STATE/cluster.env" ] && . "$STATE/cluster.env"
  # The node first: its kubelet would otherwise restart what is being stopped. Every step runs
  # even if one before it failed (a CI run once left etcd and the API server running behind a
  # failed node teardown); the first failure is the exit status.
  local rc=0 step
  for step in stop_real_node stop_keda "stop_components ${COMPONENTS[*]}"; do
    # shellcheck disable=SC2086
    $step || { local failed=$?; log "stop: '${step%% *}' failed (exit $failed); stopping the rest"; [ "$rc" -ne 0 ] || rc=$failed; }
  done
  return "$rc"
}

on_failed_start() {
  local rc=$?
  [ "$rc" -eq 0 ] && return
  log "start failed; stopping what was started (logs in $STATE/logs)"
  cmd_stop
  exit "$rc"
}

cmd_start() {
  local t0=$SECONDS
  cmd_stop
  # A fresh cluster every time: stale etcd data or certificates would not match new ports/tokens.
  rm -rf "$STATE"/{etcd,pki,pids,logs,kube-apiserver,kube-controller-manager,node,keda-certs,hpa-controller-manager} \
    "$STATE"/{cluster.env,keda.env,env,admin.kubeconfig,operator.kubeconfig}
  mkdir -p "$STATE/pids" "$STATE/logs"

  BIN=$(REAL_NODE=$REAL_NODE "$HACK_DIR/build-control-plane.sh" | tail -n1)
  local c
  for c in "${COMPONENTS[@]}"; do [ -x "$BIN/$c" ] || die "$BIN/$c is missing"; done
  if [ "$REAL_NODE" = 1 ]; then
    real_node_preflight || die "cannot start the real node (see above)"
    COMPONENTS+=("${REAL_NODE_COMPONENTS[@]}")
  fi

  # Leave nothing running behind a failed start; the logs stay for the post-mortem.
  trap on_failed_start EXIT

  write_cluster_env
  load_cluster_env
  make_pki
  [ "$REAL_NODE" = 1 ] && make_node_pki
  write_tokens
  write_kubeconfigs
  write_audit_policy

  start_etcd
  start_apiserver
  start_controller_manager
  start_scheduler
  start_kwok
  start_metrics_server
  [ "$REAL_NODE" = 1 ] && start_real_node

  trap - EXIT
  log "ready in $((SECONDS - t0))s: https://127.0.0.1:$APISERVER_PORT (source $STATE/env)"
}

cmd_restart_apiserver() {
  load_cluster_env
  running etcd || die "etcd is not running in $STATE"
  stop_components kube-apiserver
  start_apiserver
  restart_clients
  log "kube-apiserver restarted on https://127.0.0.1:$APISERVER_PORT"
}

# The API server's clients in here (kube-controller-manager, kube-scheduler, kwok) start afresh
# with it and list everything again: they stand in for the cluster's control plane, not for what
# is tested. The operator's own watches are never restarted; the fault tests check that they
# recover.
#
# kwok 0.8 manages a node's pods only while it holds the node's Lease: the Lease of the kwok it
# replaces would keep its pods Pending for the Lease's 40 s (and a test's new app with them), so
# it goes with the old kwok.
#
# A canary Deployment must then run a pod before the restart counts as done (and they start
# again when it does not), so a control plane that did not come back fails here, by name, not as
# a test waiting minutes for pods.
#
# NB: new pods that stayed Pending after the fault tests (no node, nothing in the scheduler's
# log; CI failed on it) were the fake node full: its 110-pod capacity (a kubelet's default) was
# below what the tier's tests leave running, hence 1000 in create_node.
restart_clients() {
  local attempt
  for attempt in 1 2 3; do
    stop_components kwok kube-scheduler kube-controller-manager
    kubectl_admin -n kube-node-lease delete lease "$NODE_NAME" --ignore-not-found >/dev/null
    start_controller_manager
    start_scheduler
    start_kwok
    if clients_act; then
      return 0
    fi
    log "the controllers, the scheduler or kwok did not run a new pod after the restart (attempt $attempt); starting them again"
  done
  die "a new pod does not run after restarting the API server's clients (see $STATE/logs)"
}

# clients_act: a Deployment made now gets a Running pod within 20 s (the controller manager,
# the scheduler and kwok all act on new objects). It is deleted either way.
clients_act() {
  local name="restart-canary-$RANDOM" ok=1
  kubectl_admin -n default create deployment "$name" --image=canary >/dev/null || return 1
  for _ in $(seq 1 40); do
    if [ "$(kubectl_admin -n default get deployment "$name" -o 'jsonpath={.status.readyReplicas}')" = 1 ]; then
      ok=0
      break
    fi
    sleep 0.5
  done
  kubectl_admin -n default delete deployment "$name" --wait=false >/dev/null 2>&1 || true
  return $ok
}

cmd_stop_apiserver() {
  load_cluster_env
  stop_components kube-apiserver
  log "kube-apiserver stopped"
}

cmd_start_apiserver() {
  load_cluster_env
  running etcd || die "etcd is not running in $STATE"
  if ! running kube-apiserver; then
    start_apiserver
    restart_clients
  fi
  log "kube-apiserver started on https://127.0.0.1:$APISERVER_PORT"
}

cmd_status() {
  local c all=0
  # shellcheck disable=SC1091
  [ -f "$STATE/cluster.env" ] && . "$STATE/cluster.env"
  [ "${REAL_NODE:-0}" = 1 ] && COMPONENTS+=("${REAL_NODE_COMPONENTS[@]}")
  for c in "${COMPONENTS[@]}"; do
    if running "$c"; then
      printf '%-24s running (pid %s)\n' "$c" "$(pid_of "$c")"
    else
      printf '%-24s stopped\n' "$c"
      all=1
    fi
  done
  return $all
}

# shellcheck source=hack/node/real-node.sh
. "$HACK_DIR/node/real-node.sh"
# shellcheck source=hack/peers/keda.sh
. "$HACK_DIR/peers/keda.sh"

[ $# -eq 2 ] || usage
STATE=$(realpath -m -- "$2")
case "$1" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  restart-apiserver) cmd_restart_apiserver ;;
  stop-apiserver) cmd_stop_apiserver ;;
  start-apiserver) cmd_start_apiserver ;;
  status) cmd_status ;;
  start-keda) cmd_start_keda ;;
  restart-hpa) cmd_restart_hpa ;;
  *) usage ;;
esac
