# shellcheck shell=bash
# The test cluster's real node (REAL_NODE=1 hack/control-plane.sh start DIR): containerd v2, runc
# and a kubelet registering node real-0, beside kwok's simulated node. Sourced by
# hack/control-plane.sh, whose helpers (launch, running, wait_for, stop_components, kubectl_admin,
# log, die) and variables (STATE, BIN, the ports and tokens of cluster.env) it uses.
#
# What runs, all under $STATE/node (N below) and nothing under the machine's /run/containerd,
# /var/lib/kubelet or /etc/cni:
#   containerd   in a mount namespace of its own (unshare --propagation slave), where N/run is
#                bind-mounted on /run/containerd: the runc shim puts its sockets under
#                /run/containerd/s whatever the configuration says, and this keeps them in N too.
#                Its root, state, socket, CNI configuration and runc's state are all in N. N is
#                an rshared bind mount, so what the kubelet mounts for pods (secrets, tokens)
#                reaches containerd's namespace, and what containerd mounts (container root
#                filesystems) stays in its namespace and goes with it.
#   kubelet      root dir N/kubelet, pod logs N/pod-logs, cgroupfs driver (cgroup v1 here, hence
#                failCgroupV1: false), serving TLS with a certificate of the cluster CA on the
#                node's address, client certificates and bearer tokens checked against the API
#                server (metrics-server scrapes /metrics/resource with its token).
#   the pod network  a bridge the harness creates (celeryop0, NODE_SUBNET, the node's address is
#                its first one, NODE_IP) with the CNI plugins bridge + host-local + portmap. Pods
#                get routes to the pod network and the Service range only, no default route,
#                and a forward rule drops anything from the bridge to any other interface: the
#                machine's network rule (loopback, or namespaces the harness made) holds.
#   pause        the sandbox image, from hack/node/pause.c (no registry is reachable here),
#                imported as localhost/pause:dev, containerd's pinned sandbox image.
#   kube-proxy   (iptables mode) routes Service IPs to pods, as on any cluster: a pod reaches an
#                app's Flower at <app>-flower.<ns>.svc:5555 and the API server at the
#                `kubernetes` Service (10.0.0.1:443).
#   coredns      the cluster DNS (kubernetes plugin, cluster.local) on NODE_IP:53, the kubelet's
#                clusterDNS; it also answers <svc>.<ns>.svc without the cluster.local search
#                domain, for a client beside the cluster (--dns-server NODE_IP:53). It forwards
#                nothing: a name outside the cluster does not resolve.
#   apiserver-proxy  socat on NODE_IP:APISERVER_PORT to the API server on 127.0.0.1: the
#                `kubernetes` Service's endpoint (the API server itself listens on loopback only,
#                and an endpoint may not be a loopback address).
#
# The kwok node gets the taint kwok.x-k8s.io/node=fake:NoSchedule, so ordinary pods land on the
# real node and only pods that tolerate it on the simulated one.
#
# stop_real_node stops the kubelet, kills every process of every pod (by the kubepods cgroups),
# the shims and containerd, unmounts all under N, removes the kubepods cgroups, the bridge and the
# forward rules, and puts back the sysctls the node changed (ip_forward, and the kernel defaults
# the kubelet sets). Nothing is left running or mounted.

REAL_NODE_NAME=real-0
# In the order start_real_node starts them (hack/control-plane.sh status lists them).
REAL_NODE_COMPONENTS=(containerd apiserver-proxy coredns kubelet kube-proxy)
# A /24 that nothing on these machines uses; override if yours does.
NODE_SUBNET=${NODE_SUBNET:-10.213.0.0/24}
NODE_BRIDGE=${NODE_BRIDGE:-celeryop0}
SERVICE_SUBNET=10.0.0.0/24
# iptables chain holding the node's forward rules (one per machine: one real node at a time).
NODE_CHAIN=CELERY-OPERATOR-NODE

node_ip() { local base=${NODE_SUBNET%/*}; echo "${base%.*}.$((${base##*.} + 1))"; }

node_dir() { echo "$STATE/node"; }

# The node's own certificates: the kubelet's serving certificate (metrics-server and the API
# server check it against ca.crt) and the API server's client certificate for kubelet calls
# (logs, exec), in group system:masters.
make_node_pki() {
  local d="$STATE/pki"
  new_cert "$d/ca" "$d/kubelet" "$REAL_NODE_NAME" serverAuth \
    "IP:$(node_ip),IP:127.0.0.1,DNS:$REAL_NODE_NAME,DNS:localhost"
  new_cert "$d/ca" "$d/apiserver-kubelet-client" /O=system:masters/CN=kube-apiserver-kubelet-client clientAuth
  chmod 600 "$d"/*.key
}

# The state directory of the real node holding this machine's bridge (written when the bridge is
# made, removed by its stop). /run is a tmpfs: after a reboot neither the file nor the bridge is left.
NODE_OWNER_FILE=${NODE_OWNER_FILE:-/run/celery-operator-real-node}

# The state directory of the node that left the bridge: its owner file, or else (a node started
# before owner files existed) the shared bind mount of its N, which holds its containerd.toml.
stale_node_owner() {
  local owner t
  owner=$(cat "$NODE_OWNER_FILE" 2>/dev/null || true)
  if [ -z "$owner" ]; then
    for t in $(findmnt -rn -o TARGET | grep -E '/node$' || true); do
      [ -f "$t/containerd.toml" ] && { owner=${t%/node}; break; }
    done
  fi
  echo "$owner"
}

# reclaim_stale_node: the bridge exists. A harness killed before its stop (the end of a session, a
# kill -9 of a test run) leaves the bridge, its forward rules, N's mounts and the kubepods cgroups
# behind with nothing of the node running; the next start would refuse forever. Clean them up as
# the owner's own stop would, and go on. Refuse, naming the owner, while any of its node runs.
reclaim_stale_node() {
  local owner c
  owner=$(stale_node_owner)
  if [ -n "$owner" ]; then
    for c in "${REAL_NODE_COMPONENTS[@]}"; do
      if (STATE=$owner; running "$c"); then
        log "bridge $NODE_BRIDGE exists: the real node of $owner runs on this machine ($c); stop it first: hack/control-plane.sh stop $owner"
        return 1
      fi
    done
  elif pgrep -x kubelet >/dev/null; then
    log "bridge $NODE_BRIDGE exists and a kubelet runs on this machine: another real node runs here (stop it first)"
    return 1
  fi
  log "reclaiming the real node ${owner:+of $owner }left behind by a run that did not stop it (nothing of it runs)"
  if [ -n "$owner" ] && [ -d "$owner/node" ]; then
    (STATE=$owner; stop_real_node)
  else
    # No state directory: its network, which is all the next start would trip over.
    (STATE=$(mktemp -d); mkdir -p "$STATE/node"; stop_real_node; rm -rf "$STATE")
  fi
  rm -f "$NODE_OWNER_FILE"
  if ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    log "bridge $NODE_BRIDGE is still there after reclaiming the node left behind (ip link del $NODE_BRIDGE)"
    return 1
  fi
}

# Refuse early, and say why, where a real node cannot run: the demo falls back to simulated nodes.
real_node_preflight() {
  [ "$(id -u)" = 0 ] || { log "the real node needs root (containers, mounts, a bridge)"; return 1; }
  [ -d /sys/fs/cgroup/memory ] || [ -f /sys/fs/cgroup/cgroup.controllers ] \
    || { log "the real node needs cgroups (no memory controller under /sys/fs/cgroup)"; return 1; }
  local c
  for c in ip iptables unshare nsenter mount umount; do
    command -v "$c" >/dev/null || { log "the real node needs $c"; return 1; }
  done
  if ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    reclaim_stale_node || return 1
  fi
  for c in containerd containerd-shim-runc-v2 ctr runc pause.tar cni/bridge cni/host-local cni/loopback cni/portmap; do
    [ -e "$BIN/node/$c" ] || { log "$BIN/node/$c is missing (REAL_NODE=1 hack/build-control-plane.sh builds it)"; return 1; }
  done
  for c in coredns; do
    [ -x "$BIN/node/$c" ] || { log "$BIN/node/$c is missing (REAL_NODE=1 hack/build-control-plane.sh builds it)"; return 1; }
  done
  command -v socat >/dev/null || { log "the real node needs socat (apt-get install socat)"; return 1; }
  command -v conntrack >/dev/null || { log "the real node needs conntrack (apt-get install conntrack)"; return 1; }
  for c in kubelet kube-proxy; do
    [ -x "$BIN/$c" ] || { log "$BIN/$c is missing (REAL_NODE=1 hack/build-control-plane.sh builds it)"; return 1; }
  done
}

# save_sysctl NAME: remember a kernel parameter's first value seen, for stop to put it back.
save_sysctl() {
  local saved; saved="$(node_dir)/sysctl.saved"
  grep -q "^$1 " "$saved" 2>/dev/null || echo "$1 $(cat "/proc/sys/${1//.//}")" >>"$saved"
}

# node_sysctl NAME VALUE: set a kernel parameter, saved first.
node_sysctl() {
  save_sysctl "$1"
  echo "$2" >"/proc/sys/${1//.//}"
}

# The kernel parameters the kubelet sets when protectKernelDefaults is false; saved first so
# that stop can restore them.
KUBELET_SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes)

setup_node_network() {
  local n ip gw
  n=$(node_dir); ip=$(node_ip)
  ip link add "$NODE_BRIDGE" type bridge
  echo "$STATE" >"$NODE_OWNER_FILE"
  ip addr add "$ip/${NODE_SUBNET#*/}" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  # Pod -> Service -> pod on the same bridge is routed through the node: forwarding, but only
  # within the bridge. Anything from the bridge to another interface is dropped, in the mangle
  # table, which comes before the filter table where kube-proxy accepts what it forwards. kwok's
  # pod addresses (10.244.0.0/16) exist nowhere: a blackhole route keeps a Service with kwok
  # endpoints from sending the node's own packets out of its default route.
  node_sysctl net.ipv4.ip_forward 1
  iptables -w -t mangle -N "$NODE_CHAIN"
  iptables -w -t mangle -A "$NODE_CHAIN" -i "$NODE_BRIDGE" -o "$NODE_BRIDGE" -j RETURN
  iptables -w -t mangle -A "$NODE_CHAIN" -i "$NODE_BRIDGE" -j DROP
  iptables -w -t mangle -A "$NODE_CHAIN" -o "$NODE_BRIDGE" -j DROP
  iptables -w -t mangle -I FORWARD 1 -j "$NODE_CHAIN"
  ip route add blackhole 10.244.0.0/16
  mkdir -p "$n/cni"
  cat >"$n/cni/10-celery-operator.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "celery-operator-test",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$NODE_BRIDGE",
      "isGateway": true,
      "isDefaultGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$n/cni-ipam",
        "ranges": [[{"subnet": "$NODE_SUBNET", "gateway": "$ip"}]],
        "routes": [{"dst": "$NODE_SUBNET"}, {"dst": "$SERVICE_SUBNET"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
}

write_containerd_config() {
  local n; n=$(node_dir)
  cat >"$n/containerd.toml" <<EOF
version = 3
root = "$n/containerd/root"
state = "$n/containerd/state"
# Plugins that would look at the machine (other snapshotters, NRI's socket, tracing) are off.
disabled_plugins = [
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.erofs",
  "io.containerd.nri.v1.nri",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "$n/containerd.sock"

[ttrpc]
  address = "$n/containerd.sock.ttrpc"

[debug]
  address = ""
  level = "info"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "localhost/pause:dev"

[plugins.'io.containerd.cri.v1.runtime']
  netns_mounts_under_state_dir = true
  # No process here may lower an OOM score (no CAP_SYS_RESOURCE, even as root): a sandbox's
  # -998 and a Guaranteed pod's -997 become containerd's own score instead of failing runc.
  restrict_oom_score_adj = true
  cdi_spec_dirs = []
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "$BIN/node/runc"
        Root = "$n/runc"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["$BIN/node/cni"]
    conf_dir = "$n/cni"

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
EOF
}

write_kubelet_config() {
  local n pki="$STATE/pki"; n=$(node_dir)
  : >"$n/resolv.conf"
  cat >"$n/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# These machines boot with cgroup v1 and no systemd.
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$n/containerd.sock
address: $(node_ip)
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $pki/kubelet.crt
tlsPrivateKeyFile: $pki/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization:
  mode: Webhook
clusterDomain: cluster.local
clusterDNS: [$(node_ip)]
# Pods with dnsPolicy Default get no name server rather than the machine's.
resolvConf: $n/resolv.conf
podLogsDir: $n/pod-logs
failSwapOn: false
# The machine's disk and memory are shared with everything else; evict only when nearly out.
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
# The images are imported, not pulled: never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
maxPods: 40
EOF
}

start_containerd() {
  local n; n=$(node_dir)
  mkdir -p "$n"/{run,containerd,runc,pod-logs,kubelet}
  # The shared bind mount of N (see the top of this file), and the empty mount point for N/run.
  mount --bind "$n" "$n"
  mount --make-rshared "$n"
  mkdir -p /run/containerd
  echo "=== $(date -u +%FT%TZ) starting containerd" >>"$STATE/logs/containerd.log"
  PATH="$BIN/node:$PATH" setsid unshare --mount --propagation slave -- \
    /bin/sh -c 'mount --bind "$1" /run/containerd && shift && exec "$@"' sh "$n/run" \
    "$BIN/node/containerd" --config "$n/containerd.toml" \
    >>"$STATE/logs/containerd.log" 2>&1 </dev/null &
  local pid=$! deadline=$((SECONDS + 5))
  echo "$pid" >"$STATE/pids/containerd.pid"
  # The same pid execs unshare, sh, then containerd (see launch in hack/control-plane.sh).
  until running containerd || ! alive "$pid" || [ "$SECONDS" -ge "$deadline" ]; do sleep 0.05; done
  wait_for containerd "containerd's socket" \
    "$BIN/node/ctr" --address "$n/containerd.sock" version
  "$BIN/node/ctr" --address "$n/containerd.sock" -n k8s.io images import \
    --base-name localhost/pause "$BIN/node/pause.tar" >/dev/null
}

start_kubelet() {
  local n; n=$(node_dir)
  launch kubelet --config="$n/kubelet.yaml" \
    --kubeconfig="$STATE/pki/kubelet.kubeconfig" \
    --root-dir="$n/kubelet" --cert-dir="$n/kubelet/pki" \
    --hostname-override="$REAL_NODE_NAME" --node-ip="$(node_ip)" \
    --node-labels=celeryproject.org/node=real
  wait_for kubelet "node $REAL_NODE_NAME Ready" real_node_ready
}
real_node_ready() {
  [ "$(kubectl_admin get node "$REAL_NODE_NAME" \
    -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

# The `kubernetes` Service's endpoint (the API server's endpoint reconciler is off: see
# start_apiserver) and the proxy behind it.
start_apiserver_proxy() {
  launch_cmd apiserver-proxy "$(command -v socat)" \
    "TCP-LISTEN:$APISERVER_PORT,bind=$(node_ip),fork,reuseaddr" "TCP:127.0.0.1:$APISERVER_PORT"
  kubectl_admin apply -f - >/dev/null <<EOF
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kubernetes
  namespace: default
  labels:
    kubernetes.io/service-name: kubernetes
    endpointslice.kubernetes.io/managed-by: celery-operator-test-harness
addressType: IPv4
endpoints:
  - addresses: ["$(node_ip)"]
    conditions: {ready: true}
ports:
  - name: https
    port: $APISERVER_PORT
    protocol: TCP
EOF
}

# kube-proxy as it runs on any node, minus what would retune the machine for it: conntrack
# table sizes and timeouts stay as they are, and no NodePort answers on localhost
# (route_localnet stays off).
write_kube_proxy_config() {
  cat >"$(node_dir)/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $STATE/pki/kube-proxy.kubeconfig
hostnameOverride: $REAL_NODE_NAME
mode: iptables
clusterCIDR: $NODE_SUBNET
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$KUBE_PROXY_METRICS_PORT
nodePortAddresses: ["$(node_ip)/32"]
iptables:
  localhostNodePorts: false
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
}

start_kube_proxy() {
  write_kube_proxy_config
  launch kube-proxy --config="$(node_dir)/kube-proxy.yaml"
  wait_for kube-proxy "kube-proxy /healthz" \
    curl -fsS --max-time 2 "http://127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT/healthz"
}

start_coredns() {
  local n; n=$(node_dir)
  cat >"$n/Corefile" <<EOF
.:53 {
    bind $(node_ip)
    errors
    health 127.0.0.1:$COREDNS_HEALTH_PORT
    ready 127.0.0.1:$COREDNS_READY_PORT
    # <svc>.<ns>.svc, as the operator names an app's Flower, for clients off the cluster whose
    # resolver has no cluster.local search domain (the demo's operator, run beside the cluster).
    rewrite name suffix .svc. .svc.cluster.local. answer auto
    kubernetes cluster.local in-addr.arpa {
        kubeconfig $STATE/pki/coredns.kubeconfig coredns
        pods insecure
    }
    cache 5
}
EOF
  launch_cmd coredns "$BIN/node/coredns" -conf "$n/Corefile"
  wait_for coredns "CoreDNS /ready" curl -fsS --max-time 2 "http://127.0.0.1:$COREDNS_READY_PORT/ready"
}

start_real_node() {
  real_node_preflight || die "cannot start the real node (see above)"
  mkdir -p "$(node_dir)"
  setup_node_network
  local s
  for s in "${KUBELET_SYSCTLS[@]}"; do save_sysctl "$s"; done
  write_containerd_config
  write_kubelet_config
  start_containerd
  start_apiserver_proxy
  start_coredns
  start_kubelet
  # kube-proxy reads the node's address from its Node object, which the kubelet registers.
  start_kube_proxy
  kubectl_admin taint node "$NODE_NAME" kwok.x-k8s.io/node=fake:NoSchedule --overwrite >/dev/null
}

# Every process of every pod: the kubelet puts them all under the kubepods cgroups.
kill_pod_processes() {
  local d pids
  for d in /sys/fs/cgroup/pids/kubepods /sys/fs/cgroup/memory/kubepods /sys/fs/cgroup/kubepods; do
    [ -d "$d" ] || continue
    pids=$(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
    # shellcheck disable=SC2086
    [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
  done
}

# The runc shims of this node's containerd (they outlive it: containerd starts them detached).
kill_shims() {
  local n p; n=$(node_dir)
  for p in /proc/[0-9]*; do
    # NB: `|| true`: a shim exits by itself once its container is killed (kill_pod_processes,
    # just before), and a failed kill as the last command of an && list ends the script under
    # set -e, silently, with containerd and the bridge left behind.
    tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -q "containerd-shim-runc-v2 .*-address $n/containerd.sock" \
      && { kill -KILL "${p#/proc/}" 2>/dev/null || true; }
  done
  return 0
}

remove_kubepods_cgroups() {
  local d
  for d in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [ -d "$d" ] || continue
    # Deepest first; a cgroup can only be removed once it has no children and no processes.
    find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
}

# remove_kube_chains iptables|ip6tables: every KUBE-* chain of every table, and the rules of the
# built-in chains that jump to one.
remove_kube_chains() {
  local cmd=$1 t c rule
  command -v "$cmd" >/dev/null || return 0
  for t in filter nat mangle; do
    while read -r rule; do
      [ -n "$rule" ] || continue
      # shellcheck disable=SC2086
      "$cmd" -w -t "$t" -D ${rule#-A } 2>/dev/null || true
    done < <("$cmd" -w -t "$t" -S 2>/dev/null | grep -E '^-A (INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) .*-j KUBE-' || true)
    for c in $("$cmd" -w -t "$t" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
      "$cmd" -w -t "$t" -F "$c" 2>/dev/null || true
    done
    for c in $("$cmd" -w -t "$t" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
      "$cmd" -w -t "$t" -X "$c" 2>/dev/null || true
    done
  done
}

stop_real_node() {
  local n; n=$(node_dir)
  [ -d "$n" ] || return 0
  stop_components kubelet kube-proxy coredns apiserver-proxy
  kill_pod_processes
  kill_shims
  stop_components containerd
  # Give the kernel a moment to reap the killed processes before their cgroups are removed.
  local i
  for i in 1 2 3 4 5 6 7 8 9 10; do
    remove_kubepods_cgroups
    [ -z "$(ls -d /sys/fs/cgroup/*/kubepods 2>/dev/null)" ] && break
    sleep 0.2
  done
  # What the kubelet mounted for pods, then N itself; deepest first.
  local m
  for m in $(findmnt -rn -o TARGET | grep -E "^$n(/|$)" | sort -r || true); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
  rmdir /run/containerd 2>/dev/null || true
  # kube-proxy's chains (its sysctls were left as they were: see write_kube_proxy_config).
  if [ -x "$BIN/kube-proxy" ]; then "$BIN/kube-proxy" --cleanup --proxy-mode=iptables >/dev/null 2>&1 || true; fi
  # ... and the kubelet's (KUBE-FIREWALL, KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT), for IPv6 too.
  remove_kube_chains iptables
  remove_kube_chains ip6tables
  if iptables -w -t mangle -L "$NODE_CHAIN" -n >/dev/null 2>&1; then
    iptables -w -t mangle -D FORWARD -j "$NODE_CHAIN" 2>/dev/null || true
    iptables -w -t mangle -F "$NODE_CHAIN"; iptables -w -t mangle -X "$NODE_CHAIN"
  fi
  ip route del blackhole 10.244.0.0/16 2>/dev/null || true
  ip link del "$NODE_BRIDGE" 2>/dev/null || true
  if [ "$(cat "$NODE_OWNER_FILE" 2>/dev/null)" = "$STATE" ]; then rm -f "$NODE_OWNER_FILE"; fi
  # The veth ends of pods whose sandboxes were killed go with their network namespaces.
  if [ -f "$n/sysctl.saved" ]; then
    local name value
    while read -r name value; do echo "$value" >"/proc/sys/${name//.//}" 2>/dev/null || true; done <"$n/sysctl.saved"
    rm -f "$n/sysctl.saved"
  fi
}
