#!/usr/bin/env bash
# Usage: tests/node/recovery-check.sh     (from the repository root, as root)
# A node whose every process was killed (a session that ended without
# down.sh: components, shims, the containers' processes, SIGKILL) must not stop
# the next up.sh, and that node's down.sh must leave the machine as it was
# before the first one. Exit 1 naming what differs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
A=/tmp/lsnode-crashed B=/tmp/lsnode-next
trap 'tests/node/down.sh "$B" >/dev/null 2>&1; tests/node/down.sh "$A" >/dev/null 2>&1; rm -rf "$A" "$B"' EXIT
before="$(tests/node/host-state.sh)"
tests/node/up.sh "$A" >/dev/null
KUBECONFIG="$A/kubeconfig" "$(cat "$A/bin-dir")/kubectl" run crash-victim \
  --image=docker.io/library/busybox:1.36 --restart=Never -- sleep 3600 >/dev/null
KUBECONFIG="$A/kubeconfig" "$(cat "$A/bin-dir")/kubectl" wait pod/crash-victim \
  --for=condition=Ready --timeout=120s >/dev/null
tests/node/client-netns.sh add 3 >/dev/null
runc_root="$A/containerd/runc/k8s.io"
for id in $(runc --root "$runc_root" list -q); do
  pid="$(runc --root "$runc_root" state "$id" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')"
  kill -9 "$pid" 2>/dev/null || true
done
pkill -9 -f "$A/" || true
pkill -9 -f "TCP-LISTEN:6443," || true
tests/node/up.sh "$B" >/dev/null
ready="$(KUBECONFIG="$B/kubeconfig" "$(cat "$B/bin-dir")/kubectl" get node logstream-node \
  -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')"
[[ $ready == True ]] || { echo "recovery-check: node not Ready after the crash ($ready)" >&2; exit 1; }
tests/node/down.sh "$B"
after="$(tests/node/host-state.sh)"
if [[ "$before" != "$after" ]]; then
  echo "recovery-check: the machine differs after crash, up.sh, down.sh:" >&2
  diff <(echo "$before") <(echo "$after") >&2 || true
  exit 1
fi
echo "recovery-check: a crashed node was cleared, the next one came up and left no trace"
