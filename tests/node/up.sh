#!/usr/bin/env bash
# Usage: up.sh WORK_DIR
# A real one-node Kubernetes on this machine, for the tests and by hand:
# etcd, kube-apiserver (ServiceAccount tokens on), kube-controller-manager,
# kube-scheduler, containerd (CRI, own root/state/socket under WORK_DIR), a CNI
# bridge, kubelet and kube-proxy (iptables), with the project's images
# imported (images.sh; no registry). Waits for the node to be Ready and prints
# `export KUBECONFIG=WORK_DIR/kubeconfig` as its last line.
#
# Builds what is missing first (tests/apiserver/build.sh, images.sh; cached
# under $LOGSTREAM_CACHE, default ~/.cache/logstream). Clears what an earlier
# run left behind (a killed test, a crashed session) before it starts: one node
# per machine. Stop with down.sh WORK_DIR, which leaves the machine as it was.
#
# Network: pods live on the bridge $LS_NODE_BRIDGE (10.244.0.0/24) and get
# one route, the service range via the bridge's gateway; the node IP is a /32
# on lo; nothing is forwarded between the bridge and any other interface. The
# API server reaches pods through kube-proxy and the bridge; pods reach it at
# the `kubernetes` Service (10.0.0.1:443 -> 10.244.0.1:6443, a socat to its
# loopback port). Addresses 10.244.0.200-254 are left for test clients in
# network namespaces (tests/node/client-netns.sh). Traefik (traefik.yaml) is
# the ingress controller, at the Service address INGRESS_IP; CoreDNS
# (coredns.yaml) the cluster DNS at DNS_IP, for cluster.local only.
set -euo pipefail

[[ $# -eq 1 ]] || { echo "usage: $0 WORK_DIR" >&2; exit 2; }
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
mkdir -p "$1"
WORK="$(cd "$1" && pwd)"
[[ $WORK != / && $WORK != "$HOME" ]] || { echo "up.sh: refusing work dir $WORK" >&2; exit 2; }
# shellcheck source=tests/node/net.env
source "$HERE/net.env"
CACHE="${LOGSTREAM_CACHE:-$HOME/.cache/logstream}"
TIMEOUT="${LOGSTREAM_NODE_TIMEOUT:-120}" # seconds, per component
step() { echo "[up ${SECONDS}s] $*" >&2; }
SECONDS=0

# --- what this needs on the machine -------------------------------------------
[[ $EUID -eq 0 ]] || { echo "up.sh needs root (network, mounts, containers)" >&2; exit 1; }
need() { # CMD-OR-PATH PACKAGE
  if [[ $1 == /* ]]; then [[ -e $1 ]]; else command -v "$1" >/dev/null; fi ||
    { echo "$1 not found (Debian $2): run .ci/install-tools" >&2; exit 1; }
}
need containerd containerd
need ctr containerd
need runc runc
need "$CNI_BIN/bridge" containernetworking-plugins
need "$CNI_BIN/host-local" containernetworking-plugins
need "$CNI_BIN/portmap" containernetworking-plugins
need iptables iptables
need conntrack conntrack
need socat socat
need openssl openssl
need buildah buildah
need curl curl
need ip iproute2

# --- clear what an earlier run left --------------------------------------------
if [[ -f "$STATE_FILE" ]]; then
  prev="$(cat "$STATE_FILE")"
  step "clearing an earlier node (${prev:-unknown work dir})"
  "$HERE/down.sh" "${prev:-$WORK}" >&2 || true
fi
"$HERE/down.sh" "$WORK" >&2 || true
mkdir -p "$(dirname "$STATE_FILE")"
echo "$WORK" >"$STATE_FILE"

# --- binaries and images ---------------------------------------------------------
BIN="$(bash "$ROOT/tests/apiserver/build.sh" | tail -n1)"
for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
  [[ -x "$BIN/$b" ]] || { echo "missing $BIN/$b (tests/apiserver/build.sh)" >&2; exit 1; }
done
mapfile -t ARCHIVES < <(bash "$HERE/images.sh" "$CACHE/node-images")
step "binaries in $BIN; images: ${ARCHIVES[*]##*/}"

PKI="$WORK/pki"
rm -rf "$WORK"/*
mkdir -p "$PKI" "$WORK/etcd-data" "$WORK/kcm-certs" "$WORK/sched-certs"
chmod 700 "$PKI" "$WORK/etcd-data"
: >"$WORK/pids"
echo "$BIN" >"$WORK/bin-dir"

started_ok=0
cleanup_on_failure() {
  if [[ $started_ok -ne 1 ]]; then
    echo "up.sh failed; logs are in $WORK/*.log" >&2
    [[ -n "${LOGSTREAM_NODE_KEEP_ON_FAILURE:-}" ]] || "$HERE/down.sh" "$WORK" >&2 || true
  fi
}
trap cleanup_on_failure EXIT

# shellcheck source=tests/apiserver/common.sh
source "$ROOT/tests/apiserver/common.sh"
read -r ETCD_CLIENT_PORT ETCD_PEER_PORT API_PORT KCM_PORT SCHED_PORT KUBELET_PORT \
  KUBELET_HEALTHZ_PORT PROXY_HEALTHZ_PORT PROXY_METRICS_PORT <<<"$(free_ports 9)"

# --- host state we change: remembered once so down.sh can restore it ------------
modprobe br_netfilter 2>/dev/null || true
if [[ ! -f "$HOST_RESTORE" ]]; then
  for s in "${SYSCTLS[@]}"; do
    v="$(sysctl -n "$s" 2>/dev/null)" && echo "$s=$v"
  done >"$HOST_RESTORE"
fi
if [[ ! -f "$NETNS_RESTORE" ]]; then
  if mountpoint -q /run/netns; then echo mount; elif [[ -d /run/netns ]]; then echo dir; else echo absent; fi >"$NETNS_RESTORE"
fi

# --- certificates ------------------------------------------------------------------
pki_ca
sign apiserver "/CN=kube-apiserver" "$(server_ext "IP:127.0.0.1,DNS:localhost,IP:$API_SVC_IP,IP:$GW_IP,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local")"
sign admin "/O=system:masters/CN=logstream-admin" "$CLIENT_EXT"
sign kube-controller-manager "/CN=system:kube-controller-manager" "$CLIENT_EXT"
sign kube-scheduler "/CN=system:kube-scheduler" "$CLIENT_EXT"
sign kube-proxy "/CN=system:kube-proxy" "$CLIENT_EXT"
sign kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" "$CLIENT_EXT"
sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$CLIENT_EXT"
sign kubelet-serving "/CN=$NODE_NAME" "$(server_ext "IP:$NODE_IP,DNS:$NODE_NAME")"
pki_service_accounts
for u in admin kube-controller-manager kube-scheduler kube-proxy kubelet; do
  kubeconfig "$WORK/$u.kubeconfig" "$u"
done
cp "$WORK/admin.kubeconfig" "$WORK/kubeconfig"
step certificates


ETCD_URL="http://127.0.0.1:$ETCD_CLIENT_PORT"
PEER_URL="http://127.0.0.1:$ETCD_PEER_PORT"
launch etcd "$BIN/etcd" --name=logstream --data-dir="$WORK/etcd-data" \
  --listen-client-urls="$ETCD_URL" --advertise-client-urls="$ETCD_URL" \
  --listen-peer-urls="$PEER_URL" --initial-advertise-peer-urls="$PEER_URL" \
  --initial-cluster="logstream=$PEER_URL" --initial-cluster-state=new \
  --unsafe-no-fsync=true --log-level=warn
wait_ready etcd curl -fsS --max-time 5 "$ETCD_URL/health"
step etcd ready

API_URL="https://127.0.0.1:$API_PORT"
launch kube-apiserver "$BIN/kube-apiserver" \
  --etcd-servers="$ETCD_URL" \
  --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$API_PORT" \
  --cert-dir="$PKI" --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
  --client-ca-file="$PKI/ca.crt" \
  --service-account-issuer="https://kubernetes.default.svc.cluster.local" \
  --service-account-key-file="$PKI/sa.pub" \
  --service-account-signing-key-file="$PKI/sa.key" \
  --service-cluster-ip-range="$SVC_CIDR" \
  --authorization-mode=Node,RBAC \
  --endpoint-reconciler-type=none \
  --allow-privileged=true \
  --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
  --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority="$PKI/ca.crt" \
  --kubelet-preferred-address-types=InternalIP \
  --profiling=false
api_readyz() {
  body_is_ok --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" "$API_URL/readyz"
}
wait_ready kube-apiserver api_readyz
step kube-apiserver ready

launch kube-controller-manager "$BIN/kube-controller-manager" \
  --kubeconfig="$WORK/kube-controller-manager.kubeconfig" \
  --bind-address=127.0.0.1 --secure-port="$KCM_PORT" --cert-dir="$WORK/kcm-certs" \
  --leader-elect=false \
  --use-service-account-credentials=true \
  --service-account-private-key-file="$PKI/sa.key" \
  --root-ca-file="$PKI/ca.crt" \
  --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
  --service-cluster-ip-range="$SVC_CIDR" \
  --profiling=false
launch kube-scheduler "$BIN/kube-scheduler" \
  --kubeconfig="$WORK/kube-scheduler.kubeconfig" \
  --bind-address=127.0.0.1 --secure-port="$SCHED_PORT" --cert-dir="$WORK/sched-certs" \
  --leader-elect=false --profiling=false
wait_ready kube-controller-manager body_is_ok --insecure "https://127.0.0.1:$KCM_PORT/healthz"
wait_ready kube-scheduler body_is_ok --insecure "https://127.0.0.1:$SCHED_PORT/healthz"
step kube-controller-manager, kube-scheduler ready

# --- host network ----------------------------------------------------------------------
ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
ip link set "$BRIDGE" up
ip addr replace "$GW_IP/${POD_CIDR#*/}" dev "$BRIDGE"
ip addr replace "$NODE_IP/32" dev lo
# A ClusterIP that kube-proxy does not translate stays on the pod bridge.
ip route replace "$SVC_CIDR" dev "$BRIDGE"
for rule in "${FORWARD_RULES[@]}"; do
  # shellcheck disable=SC2086
  iptables -C FORWARD $rule 2>/dev/null || iptables -I FORWARD 1 $rule
done
# Bridged traffic through iptables: kube-proxy's NAT for pods and test clients
# on the bridge that talk to a Service on the same bridge.
sysctl -q -w net.bridge.bridge-nf-call-iptables=1 >/dev/null

launch socat "$(command -v socat)" "TCP-LISTEN:6443,bind=$GW_IP,reuseaddr,fork" "TCP:127.0.0.1:$API_PORT"
wait_ready socat bash -c "exec 3<>/dev/tcp/$GW_IP/6443"

mkdir -p "$WORK/cni/net.d" "$WORK/cni/ipam"
cat >"$WORK/cni/net.d/10-$CNI_NAME.conflist" <<CNI
{
  "cniVersion": "1.0.0",
  "name": "$CNI_NAME",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$WORK/cni/ipam",
        "ranges": [[{ "subnet": "$POD_CIDR", "rangeStart": "$POD_RANGE_START", "rangeEnd": "$POD_RANGE_END" }]],
        "routes": [{ "dst": "$SVC_CIDR", "gw": "$GW_IP" }]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
CNI
step "bridge $BRIDGE $GW_IP, node IP $NODE_IP, API for pods at $GW_IP:6443"

# --- containerd ----------------------------------------------------------------------------
CTD="$WORK/containerd"
mkdir -p "$CTD"
cat >"$CTD/config.toml" <<TOML
version = 2
root = "$CTD/root"
state = "$CTD/state"
[grpc]
  address = "$CTD/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$CTD/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  netns_mounts_under_state_dir = true
  # Without CAP_SYS_RESOURCE in the bounding set (as in this sandbox) runc
  # cannot set a negative oom_score_adj and no sandbox starts: clamp it.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$CTD/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN"
    conf_dir = "$WORK/cni/net.d"
    max_conf_num = 1
TOML
launch containerd "$(command -v containerd)" --config "$CTD/config.toml" --log-level warn
ctr() { command ctr --address "$CTD/containerd.sock" "$@"; }
wait_ready containerd ctr version
for t in "${ARCHIVES[@]}"; do
  ctr -n k8s.io images import --no-unpack=false "$t" >>"$WORK/images.log" 2>&1 ||
    { echo "importing $t failed:" >&2; tail -5 "$WORK/images.log" >&2; exit 1; }
done
step "containerd ready; images: $(ctr -n k8s.io images ls -q | grep -v '^sha256:' | tr '\n' ' ')"

# --- kubelet ---------------------------------------------------------------------------------
mkdir -p "$WORK/kubelet" "$WORK/pod-logs"
cat >"$WORK/kubelet-config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$CTD/containerd.sock
cgroupDriver: cgroupfs
failSwapOn: false
failCgroupV1: false
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $PKI/ca.crt}
authorization:
  mode: AlwaysAllow
podLogsDir: $WORK/pod-logs
resolvConf: /etc/resolv.conf
clusterDNS: ["$DNS_IP"]
clusterDomain: $CLUSTER_DOMAIN
registerNode: true
rotateCertificates: false
serializeImagePulls: false
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
syncFrequency: 10s
fileCheckFrequency: 10s
nodeStatusUpdateFrequency: 5s
YAML
launch kubelet "$BIN/kubelet" \
  --config="$WORK/kubelet-config.yaml" \
  --kubeconfig="$WORK/kubelet.kubeconfig" \
  --root-dir="$WORK/kubelet" --cert-dir="$WORK/kubelet-pki" \
  --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --v=1
wait_ready kubelet body_is_ok "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz"

cat >"$WORK/kube-proxy-config.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection:
  kubeconfig: $WORK/kube-proxy.kubeconfig
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
clusterCIDR: $POD_CIDR
healthzBindAddress: 127.0.0.1:$PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$PROXY_METRICS_PORT
nodePortAddresses: ["$NODE_IP/32"]
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
iptables:
  localhostNodePorts: false
  masqueradeAll: false
  syncPeriod: 30s
  minSyncPeriod: 0s
YAML
launch kube-proxy "$BIN/kube-proxy" --config="$WORK/kube-proxy-config.yaml" --v=1
wait_ready kube-proxy curl -fsS --max-time 5 "http://127.0.0.1:$PROXY_HEALTHZ_PORT/healthz"

KUBECTL=("$BIN/kubectl" --kubeconfig "$WORK/kubeconfig")
node_ready() {
  [[ "$("${KUBECTL[@]}" get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" == True ]]
}
wait_ready kubelet node_ready
# Pods are refused until the namespace's ServiceAccount exists.
wait_ready kube-controller-manager "${KUBECTL[@]}" -n default get serviceaccount default
step "node $NODE_NAME Ready, kube-proxy healthy"

# The `kubernetes` Service's endpoint (the API server runs with
# --endpoint-reconciler-type=none): the socat on the bridge gateway.
"${KUBECTL[@]}" apply -f - >/dev/null <<YAML
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kubernetes-node
  namespace: default
  labels:
    kubernetes.io/service-name: kubernetes
    endpointslice.kubernetes.io/managed-by: logstream-tests-node
addressType: IPv4
endpoints:
- addresses: ["$GW_IP"]
  conditions: {ready: true}
ports:
- name: https
  port: 6443
  protocol: TCP
YAML

# Cluster add-ons, not waited for (what uses them waits for its own result):
# Traefik, the ingress controller (the default IngressClass), and CoreDNS, the
# cluster DNS. Their image tags must be the versions their go.mod pins.
addon() { # NAME MODULE IMAGE_PREFIX SERVICE_IP
  local version
  version="$(awk -v m="$2" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$HERE/$1/go.mod")"
  grep -q "image: $3${version#v}\$" "$HERE/$1.yaml" ||
    { echo "tests/node/$1.yaml: image is not $3${version#v} (tests/node/$1/go.mod)" >&2; exit 1; }
  grep -q "clusterIP: $4 " "$HERE/$1.yaml" ||
    { echo "tests/node/$1.yaml: the Service's clusterIP is not $4 (net.env)" >&2; exit 1; }
  "${KUBECTL[@]}" apply -f "$HERE/$1.yaml" >/dev/null
  step "$1 $version applied (Service $4)"
}
addon traefik github.com/traefik/traefik/v3 docker.io/library/traefik:v "$INGRESS_IP"
addon coredns github.com/coredns/coredns docker.io/coredns/coredns: "$DNS_IP"

cat >"$WORK/env" <<ENV
BIN_DIR=$BIN
APISERVER_URL=$API_URL
CONTAINERD_SOCK=$CTD/containerd.sock
KUBELET_URL=https://$NODE_IP:$KUBELET_PORT
NODE_NAME=$NODE_NAME
NODE_IP=$NODE_IP
BRIDGE=$BRIDGE
GW_IP=$GW_IP
POD_CIDR=$POD_CIDR
SVC_CIDR=$SVC_CIDR
INGRESS_IP=$INGRESS_IP
DNS_IP=$DNS_IP
KUBECONFIG=$WORK/kubeconfig
ENV
started_ok=1
step "up in ${SECONDS}s"
echo "export KUBECONFIG=$WORK/kubeconfig"
