#!/usr/bin/env bash
# Prints what the node could change on this machine, outside its work dirs:
# links, addresses, routes, iptables rules (v4 and v6, no counters), network
# namespaces (and their /etc/netns files), the sysctls kubelet and CNI set, mounts. `.ci/run` compares it
# before up.sh and after down.sh: the node must leave no trace.
set -uo pipefail
ip -o link show | awk -F': ' '{print $2}' | sort
ip -o addr show | awk '{print $2, $3, $4}' | sort
ip route show table all | sort
for t in filter nat mangle; do
  iptables -t "$t" -S | sort
  ip6tables -t "$t" -S 2>/dev/null | sort
done
ip netns list | sort
ls -A /etc/netns 2>/dev/null
sysctl net.ipv4.ip_forward vm.overcommit_memory kernel.panic kernel.panic_on_oops \
  net.ipv4.conf.all.route_localnet
awk '{print $5}' /proc/self/mountinfo | sort
