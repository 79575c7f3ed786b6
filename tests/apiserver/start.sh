#!/usr/bin/env bash
# Usage: start.sh BIN_DIR WORK_DIR
# Starts etcd, kube-apiserver and kube-controller-manager from BIN_DIR on free
# loopback ports (the way controller-runtime's envtest does, plus the
# controller manager), with all certs, logs and data in WORK_DIR.
# Writes WORK_DIR/kubeconfig (admin, O=system:masters) and WORK_DIR/pids and
# prints the kubeconfig path on the last line of stdout. Stop with stop.sh.
set -euo pipefail

[[ $# -eq 2 ]] || { echo "usage: $0 BIN_DIR WORK_DIR" >&2; exit 2; }
BIN="$(cd "$1" && pwd)"
mkdir -p "$2"
WORK="$(cd "$2" && pwd)"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TIMEOUT="${LOGSTREAM_APISERVER_TIMEOUT:-120}" # seconds, per component

for b in etcd kube-apiserver kube-controller-manager; do
  [[ -x "$BIN/$b" ]] || { echo "missing $BIN/$b (run build.sh)" >&2; exit 1; }
done
if [[ -s "$WORK/pids" ]]; then
  echo "$WORK/pids exists: already running? run stop.sh $WORK first" >&2
  exit 1
fi

PKI="$WORK/pki"
rm -rf "$WORK/etcd-data" "$PKI"
mkdir -p "$PKI" "$WORK/etcd-data" "$WORK/kcm-certs"
chmod 700 "$PKI" "$WORK/etcd-data"
: >"$WORK/pids"

started_ok=0
cleanup_on_failure() {
  if [[ $started_ok -ne 1 ]]; then
    echo "start failed; logs are in $WORK/*.log; stopping what was started" >&2
    "$HERE/stop.sh" "$WORK" >&2 || true
  fi
}
trap cleanup_on_failure EXIT

# shellcheck source=tests/apiserver/common.sh
source "$HERE/common.sh"
read -r ETCD_CLIENT_PORT ETCD_PEER_PORT API_PORT KCM_PORT <<<"$(free_ports 4)"

# --- certificates -------------------------------------------------------------
pki_ca
sign apiserver "/CN=kube-apiserver" "$(server_ext "IP:127.0.0.1,DNS:localhost,IP:10.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local")"
sign admin "/O=system:masters/CN=logstream-admin" "$CLIENT_EXT"
sign kube-controller-manager "/CN=system:kube-controller-manager" "$CLIENT_EXT"
pki_service_accounts
kubeconfig "$WORK/kubeconfig" admin
kubeconfig "$WORK/kube-controller-manager.kubeconfig" kube-controller-manager


# --- etcd ---------------------------------------------------------------------
ETCD_URL="http://127.0.0.1:$ETCD_CLIENT_PORT"
PEER_URL="http://127.0.0.1:$ETCD_PEER_PORT"
launch etcd "$BIN/etcd" --name=logstream --data-dir="$WORK/etcd-data" \
  --listen-client-urls="$ETCD_URL" --advertise-client-urls="$ETCD_URL" \
  --listen-peer-urls="$PEER_URL" --initial-advertise-peer-urls="$PEER_URL" \
  --initial-cluster="logstream=$PEER_URL" --initial-cluster-state=new \
  --unsafe-no-fsync=true --log-level=warn
wait_ready etcd curl -fsS --max-time 5 "$ETCD_URL/health"

# --- kube-apiserver -----------------------------------------------------------
API_URL="https://127.0.0.1:$API_PORT"
# Flags follow envtest; --endpoint-reconciler-type=none because 127.0.0.1 is not
# a valid Endpoints IP (the reconciler would only log errors).
# More flags for a benchmark (e.g. an audit log): LOGSTREAM_APISERVER_ARGS,
# split on spaces.
read -r -a EXTRA_API_ARGS <<< "${LOGSTREAM_APISERVER_ARGS:-}"
launch kube-apiserver "$BIN/kube-apiserver" \
  --etcd-servers="$ETCD_URL" \
  --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$API_PORT" \
  --cert-dir="$PKI" --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
  --client-ca-file="$PKI/ca.crt" \
  --service-account-issuer="$API_URL" \
  --service-account-key-file="$PKI/sa.pub" \
  --service-account-signing-key-file="$PKI/sa.key" \
  --service-cluster-ip-range=10.0.0.0/24 \
  --authorization-mode=RBAC \
  --disable-admission-plugins=ServiceAccount \
  --endpoint-reconciler-type=none \
  --allow-privileged=true \
  --profiling=false \
  "${EXTRA_API_ARGS[@]}"
api_readyz() {
  body_is_ok --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" "$API_URL/readyz"
}
wait_ready kube-apiserver api_readyz

# --- kube-controller-manager --------------------------------------------------
# No --authentication/authorization-kubeconfig: only /healthz, /readyz, /livez
# are served (always allowed), which is all that is polled here.
KCM_KUBECONFIG="$WORK/kube-controller-manager.kubeconfig"
launch kube-controller-manager "$BIN/kube-controller-manager" \
  --kubeconfig="$KCM_KUBECONFIG" \
  --bind-address=127.0.0.1 --secure-port="$KCM_PORT" --cert-dir="$WORK/kcm-certs" \
  --leader-elect=false \
  --use-service-account-credentials=true \
  --service-account-private-key-file="$PKI/sa.key" \
  --root-ca-file="$PKI/ca.crt" \
  --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
  --service-cluster-ip-range=10.0.0.0/24 \
  --profiling=false
wait_ready kube-controller-manager \
  body_is_ok --insecure "https://127.0.0.1:$KCM_PORT/healthz"

cat >"$WORK/env" <<EOF
ETCD_URL=$ETCD_URL
APISERVER_URL=$API_URL
KCM_URL=https://127.0.0.1:$KCM_PORT
KUBECONFIG=$WORK/kubeconfig
EOF
started_ok=1
echo "$WORK/kubeconfig"
