#!/usr/bin/env bash
# Usage: down.sh WORK_DIR
# Tears down the node that up.sh WORK_DIR started, or whatever of it is left
# after a crash (no pids file, processes killed, WORK_DIR half gone), and
# leaves the machine as it was: containers and shims, processes, mounts, pod
# network namespaces, test-client namespaces, kube-proxy's and our iptables
# rules (v4 and v6), the pod bridge, the node IP, the sysctls kubelet and CNI
# changed, and the fixed host paths they write. WORK_DIR (logs, certs,
# configs) is left in place. Safe to run twice.
set -uo pipefail
[[ $# -eq 1 ]] || { echo "usage: $0 WORK_DIR" >&2; exit 2; }
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/node/net.env
source "$HERE/net.env"
WORK="${1%/}"
[[ -d $WORK ]] && WORK="$(cd "$WORK" && pwd)"
[[ -n $WORK && $WORK != / ]] || { echo "down.sh: refusing work dir '$1'" >&2; exit 2; }
PIDS="$WORK/pids"
CTD_SOCK="$WORK/containerd/containerd.sock"

cmd0() { tr '\0' '\n' 2>/dev/null <"/proc/$1/cmdline" | head -n1; }
# Processes of this node: a component (by argv[0]) whose command line names
# WORK_DIR (each is started with a path under it), or one in the pids file.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy
  containerd containerd-shim-runc-v2 socat kubectl)
# The API server's forwarder for pods names only addresses: it is ours by
# its listening address (net.env), or by the pids file.
ours() {
  {
    [[ -f $PIDS ]] && while read -r p name; do
      [[ "$(basename "$(cmd0 "$p")")" == "$name" ]] && echo "$p"
    done <"$PIDS"
    pgrep -f -- "TCP-LISTEN:6443,bind=$GW_IP," 2>/dev/null
    pgrep -f -- "$WORK/" 2>/dev/null |
      while read -r p; do
        grep -qF -- "$WORK/" "/proc/$p/cmdline" 2>/dev/null || continue
        [[ " ${COMPONENTS[*]} " == *" $(basename "$(cmd0 "$p")") "* ]] && echo "$p"
      done
  } | sort -u
}
stop_named() { # NAME... : SIGTERM the ones whose argv[0] ends in NAME, bounded wait, SIGKILL
  local p pids=()
  for p in $(ours); do
    for n in "$@"; do [[ "$(cmd0 "$p")" == */"$n" || "$(cmd0 "$p")" == "$n" ]] && pids+=("$p"); done
  done
  ((${#pids[@]})) || return 0
  kill -TERM "${pids[@]}" 2>/dev/null
  for _ in $(seq 1 100); do # up to ~10 s
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || return 0
    sleep 0.1 # poll interval
  done
  kill -KILL "${pids[@]}" 2>/dev/null
}

# 1. kubelet and kube-proxy first, so nothing restarts containers.
stop_named kubelet kube-proxy

# 2. Containers and sandboxes, through this node's containerd (never another),
#    then with runc directly for what a dead containerd left running.
if [[ -S $CTD_SOCK ]] && timeout 5 ctr --address "$CTD_SOCK" version >/dev/null 2>&1; then
  c() { timeout 30 ctr --address "$CTD_SOCK" -n k8s.io "$@"; }
  for t in $(c tasks ls -q 2>/dev/null); do c tasks kill -s SIGKILL "$t" >/dev/null 2>&1; done
  for t in $(c tasks ls -q 2>/dev/null); do c tasks delete -f "$t" >/dev/null 2>&1; done
  for k in $(c containers ls -q 2>/dev/null); do c containers delete "$k" >/dev/null 2>&1; done
fi
RUNC_ROOT="$WORK/containerd/runc/k8s.io"
if [[ -d $RUNC_ROOT ]]; then
  for id in $(runc --root "$RUNC_ROOT" list -q 2>/dev/null); do
    runc --root "$RUNC_ROOT" kill "$id" KILL >/dev/null 2>&1
    runc --root "$RUNC_ROOT" delete -f "$id" >/dev/null 2>&1
  done
fi

# 3. Everything else of ours (shims, apiserver, etcd, socat, port-forwards...).
stop_named containerd kube-scheduler kube-controller-manager socat kube-apiserver etcd
for p in $(ours) $(pgrep -f -- "-address $CTD_SOCK" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done

# 4. Mounts under WORK_DIR (deepest first) and pod network namespaces.
for _ in 1 2 3; do
  mapfile -t mnts < <(awk -v w="$WORK" '$5 == w || index($5, w "/") == 1 {print $5}' /proc/self/mountinfo | sort -r)
  ((${#mnts[@]})) || break
  for m in "${mnts[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
done
for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
  [[ $ns == "$CLIENT_NETNS_PREFIX"* ]] && ip netns del "$ns" 2>/dev/null
done
rm -rf "${CLIENT_ETC:?}/$CLIENT_NETNS_PREFIX"*
rmdir "$CLIENT_ETC" 2>/dev/null
# The first `ip netns add` mounted /run/netns on itself: undone when it was
# not a mount before the node and no namespace is left (a fresh machine has
# none; otherwise the mount stays for whoever else uses it).
if [[ -f $NETNS_RESTORE && -z "$(ip netns list 2>/dev/null)" ]]; then
  was="$(cat "$NETNS_RESTORE")"
  if [[ $was != mount ]]; then
    for _ in 1 2 3; do
      mountpoint -q /run/netns || break
      umount /run/netns 2>/dev/null || umount -l /run/netns 2>/dev/null
    done
  fi
  [[ $was == absent ]] && rmdir /run/netns 2>/dev/null
fi
for v in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
  [[ $v == lsc* ]] && ip link del "$v" 2>/dev/null
done

# 5. kube-proxy's and kubelet's rules: KUBE-* chains and the jumps to them.
for ipt in iptables ip6tables; do
  command -v "$ipt" >/dev/null || continue
  for tbl in filter nat mangle; do
    "$ipt" -t "$tbl" -S 2>/dev/null | grep -E '^-A [A-Z]+ .*-j KUBE-' | grep -vE '^-A KUBE-' |
      while read -r line; do
        eval "$ipt" -t "$tbl" "${line/-A/-D}" 2>/dev/null
      done
    chains="$("$ipt" -t "$tbl" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}')"
    for ch in $chains; do "$ipt" -t "$tbl" -F "$ch" 2>/dev/null; done
    for ch in $chains; do "$ipt" -t "$tbl" -X "$ch" 2>/dev/null; done
  done
done
conntrack -D -d "$SVC_CIDR" >/dev/null 2>&1

# 6. Our network objects.
for rule in "${FORWARD_RULES[@]}"; do
  # shellcheck disable=SC2086
  while iptables -D FORWARD $rule 2>/dev/null; do :; done
done
ip route del "$SVC_CIDR" dev "$BRIDGE" 2>/dev/null
ip link del "$BRIDGE" 2>/dev/null
ip addr del "$NODE_IP/32" dev lo 2>/dev/null

# 7. Host paths kubelet and libcni use whatever --root-dir says: only entries
#    of ours, then the directories if that left them empty.
for l in /var/log/containers/*.log; do
  [[ -L $l && "$(readlink "$l")" == "$WORK"/* ]] && rm -f "$l"
done
rm -f /var/lib/cni/results/"$CNI_NAME"-* /var/lib/cni/results/cni-loopback-* 2>/dev/null
rm -f /var/lib/kubelet/device-plugins/kubelet.sock 2>/dev/null
rmdir /var/log/containers /var/lib/cni/results /var/lib/cni /var/lib/kubelet/device-plugins \
  /var/lib/kubelet 2>/dev/null
# Shim sockets nothing listens on any more (ours, after a kill).
listening="$(ss -xlH 2>/dev/null | awk '{print $5}')"
for sock in /run/containerd/s/*; do
  [[ -S $sock ]] && ! grep -qxF "$sock" <<<"$listening" && rm -f "$sock"
done
rmdir /run/containerd/s /run/containerd 2>/dev/null

# 8. Sysctls, then our state.
if [[ -f $HOST_RESTORE ]]; then
  while IFS='=' read -r k v; do
    [[ -n $k && -n $v ]] && sysctl -q -w "$k=$v" >/dev/null 2>&1
  done <"$HOST_RESTORE"
  rm -f "$HOST_RESTORE"
fi
rm -f "$NETNS_RESTORE"
rm -f "$PIDS"
[[ -f $STATE_FILE && "$(cat "$STATE_FILE")" == "$WORK" ]] && rm -f "$STATE_FILE"
rmdir "$(dirname "$STATE_FILE")" 2>/dev/null
exit 0
