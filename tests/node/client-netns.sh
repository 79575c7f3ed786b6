#!/usr/bin/env bash
# Usage: client-netns.sh add N | del N      (N: 1..54)
# A test client host on the node's pod bridge: network namespace
# lsnode-client-N with address 10.244.0.(199+N)/24 (outside the pods' range)
# and one route, the service range via the bridge gateway; nothing else is
# reachable. Run commands in it with `ip netns exec lsnode-client-N CMD`.
# There, the examples' Ingress hosts (INGRESS_HOSTS, e.g.
# logs.demo.localtest.me) resolve to the ingress controller's Service, as they
# resolve to the ingress controller on 127.0.0.1 on a workstation with kind:
# `ip netns exec` puts /etc/netns/lsnode-client-N/hosts in place of /etc/hosts.
# down.sh removes any that are left.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/node/net.env
source "$HERE/net.env"
[[ $# -eq 2 && $2 =~ ^[0-9]+$ && $2 -ge 1 && $2 -le 54 ]] || { echo "usage: $0 add|del N (1..54)" >&2; exit 2; }
ns="$CLIENT_NETNS_PREFIX$2" host="lsc$2" addr="${POD_CIDR%.*}.$((199 + $2))"
case $1 in
add)
  bash "${BASH_SOURCE[0]}" del "$2"
  ip netns add "$ns"
  ip link add "$host" type veth peer name eth0 netns "$ns"
  ip link set "$host" master "$BRIDGE" up
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "$addr/${POD_CIDR#*/}" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route add "$SVC_CIDR" via "$GW_IP"
  mkdir -p "$CLIENT_ETC/$ns"
  { echo "127.0.0.1 localhost"; echo "$INGRESS_IP ${INGRESS_HOSTS[*]}"; } >"$CLIENT_ETC/$ns/hosts"
  echo "$ns $addr"
  ;;
del)
  ip netns del "$ns" 2>/dev/null || true
  ip link del "$host" 2>/dev/null || true
  rm -rf "${CLIENT_ETC:?}/$ns"
  rmdir "$CLIENT_ETC" 2>/dev/null || true
  ;;
*) echo "usage: $0 add|del N" >&2; exit 2 ;;
esac
