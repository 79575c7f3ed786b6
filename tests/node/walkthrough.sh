#!/usr/bin/env bash
# Usage: tests/node/walkthrough.sh     (from the repository root)
# examples/README.md steps 2 to 7 (logcli's requests sent with curl), as written there, on the node of
# tests/node/up.sh with the chart installed (KUBECONFIG set): the demo app,
# a pod through `kubectl port-forward "pod/$POD" 7680` (websocat, curl) and
# through `kubectl logstream` (the plugin, on PATH as a user installs it), all
# pods through the aggregator (curl, `logstream tail`), token mode checked
# from a client host on the pod bridge, the Ingress through Traefik from that
# host, clean-up. Each command's output is
# checked; the first failure stops the script (exit 1) naming it.
# tests/tests/readme.rs counts the commands here as run (.ci/run runs this).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
[[ -n "${KUBECONFIG:-}" && -f "$KUBECONFIG" ]] || { echo "walkthrough.sh: set KUBECONFIG (tests/node/up.sh prints it)" >&2; exit 2; }
WORK_DIR="$(dirname "$KUBECONFIG")"
BIN_DIR="$(cat "$WORK_DIR/bin-dir")"
CACHE="${LOGSTREAM_CACHE:-$HOME/.cache/logstream}"
W="$(mktemp -d)"
PIDS=()
finish() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  "$ROOT/tests/node/client-netns.sh" del 9 >/dev/null 2>&1 || true
  rm -rf "$W"
}
trap finish EXIT
SECONDS=0
step() { echo "== walkthrough [${SECONDS}s] $*"; }
fail() { echo "walkthrough.sh: $*" >&2; exit 1; }
# The tools on PATH, as a user has them (real executables, not shell
# functions: a backgrounded function is a subshell that `kill $!` would stop
# without stopping its kubectl).
mkdir -p "$W/bin"
ln -s "$BIN_DIR/kubectl" "$W/bin/kubectl"
ln -s "$CACHE/tools/bin/helm" "$W/bin/helm"
ln -s "$CACHE/tools/bin/websocat" "$W/bin/websocat"
ln -s "$CACHE/musl-target/x86_64-unknown-linux-musl/release/logstream" "$W/bin/logstream"
ln -s "$CACHE/musl-target/x86_64-unknown-linux-musl/release/kubectl-logstream" "$W/bin/kubectl-logstream"
export PATH="$W/bin:$PATH"
# wait_for SECONDS WHAT CMD...: CMD until it succeeds.
wait_for() {
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "timed out waiting for $what"
    sleep 0.5 # poll interval
  done
}
# forwarding FILE: kubectl port-forward has printed its listening line.
forwarding() { grep -q '^Forwarding from 127.0.0.1:7680' "$1"; }
# some_lines FILE N [PATTERN]: at least N lines (matching PATTERN).
some_lines() { (($(grep -c -- "${3:-.}" "$1" || true) >= $2)) || fail "$1: fewer than $2 lines matching '${3:-.}':
$(head -5 "$1")"; }

step "2. deploy the demo app and stream its files"
kubectl create namespace demo
kubectl apply -n demo -f examples/demo-app.yaml -f examples/logstream.yaml
kubectl get ls -n demo
converged() { kubectl -n demo get pods -l app=demo -o json | python3 tests/e2e/checks.py pods-converged 2 native; }
wait_for 180 "2 injected demo pods" converged
kubectl -n demo get pods -l app=demo
kubectl -n demo describe ls demo >"$W/describe.txt"
grep -q 'Ready' "$W/describe.txt" || fail "describe ls demo: $(cat "$W/describe.txt")"

step "3. one pod, through its sidecar"
POD=$(kubectl -n demo get pods -l logstream.dev/stream=demo -o jsonpath='{.items[0].metadata.name}')
kubectl -n demo port-forward "pod/$POD" 7680 >"$W/pf-pod.log" 2>&1 &
PIDS+=($!)
wait_for 60 "port-forward to $POD" forwarding "$W/pf-pod.log"
# websocat reads until stdin ends; the demo app writes 5 lines a second.
sleep 3 | websocat ws://127.0.0.1:7680/ws >"$W/ws.out" || true
some_lines "$W/ws.out" 2 '"type":"records"'
sleep 3 | websocat 'ws://127.0.0.1:7680/ws?format=raw&level=warn+' >"$W/ws-warn.out" || true
some_lines "$W/ws-warn.out" 1
! grep -q ' INFO ' "$W/ws-warn.out" || fail "level=warn+ let an info line through"
timeout 3 curl -N 'http://127.0.0.1:7680/sse?tail=20' >"$W/sse.out" 2>/dev/null || true
some_lines "$W/sse.out" 20 '^data:'
timeout 3 curl -N 'http://127.0.0.1:7680/stream?tail=100&grep=upstream' >"$W/stream.out" 2>/dev/null || true
some_lines "$W/stream.out" 1 upstream
! grep -qv upstream "$W/stream.out" || fail "grep=upstream let another line through"
timeout 10 curl -sN 'http://127.0.0.1:7680/stream' >"$W/live.out" 2>/dev/null &
PIDS+=($!)
kubectl -n demo exec "$POD" -c app -- sh -c 'echo hello from the walkthrough >> /var/log/app/app.log'
wait_for 10 "the exec'd line on the live stream" grep -q 'hello from the walkthrough' "$W/live.out"
kill "${PIDS[@]}" 2>/dev/null || true
PIDS=()
# The plugin: both pods' lines, prefixed with their names.
kubectl logstream tail deploy/demo -n demo >"$W/plugin.out" 2>"$W/plugin.err" &
PIDS+=($!)
two_prefixes() { (($(awk '{print $1}' "$W/plugin.out" | sort -u | grep -c '^demo-') == 2)); }
wait_for 60 "kubectl logstream tail deploy/demo: lines of both pods" two_prefixes
timeout 5 kubectl logstream tail "$POD" -n demo --level warn+ -o raw >"$W/plugin-warn.out" 2>"$W/plugin-warn.err" || true
some_lines "$W/plugin-warn.out" 1
! grep -q ' INFO ' "$W/plugin-warn.out" || fail "kubectl logstream --level warn+ let an info line through"
kubectl logstream status -n demo >"$W/plugin-status.out"
grep -q '^LogStream demo/demo: 2 selected' "$W/plugin-status.out" || fail "kubectl logstream status: $(cat "$W/plugin-status.out")"
kill "${PIDS[@]}" 2>/dev/null || true
PIDS=()

step "4. all pods, through the aggregator"
kubectl -n demo rollout status deploy/logstream-aggregator --timeout=120s
kubectl -n demo port-forward svc/logstream-aggregator 7680 >"$W/pf-agg.log" 2>&1 &
PIDS+=($!)
wait_for 60 "port-forward to the aggregator" forwarding "$W/pf-agg.log"
both_pods() {
  timeout 3 curl -N 'http://127.0.0.1:7680/stream?format=json&tail=10&pod=demo-.*' >"$W/agg.out" 2>/dev/null || true
  (($(python3 -c 'import json,sys; print(len({json.loads(l)["pod"] for l in open(sys.argv[1]) if l.strip()}))' "$W/agg.out") == 2))
}
wait_for 60 "records of both demo pods from the aggregator" both_pods
timeout 5 logstream tail http://127.0.0.1:7680 --level error >"$W/tail-error.out" 2>"$W/tail-error.err" || true
some_lines "$W/tail-error.out" 1 error
! grep -qv error "$W/tail-error.out" || fail "--level error let another line through"

step "5. the Loki API with curl (what logcli sends)"
curl -s 'http://127.0.0.1:7680/loki/api/v1/labels?since=1h' >"$W/labels.json"
python3 - "$W/labels.json" <<'PY' || fail "labels: $(cat "$W/labels.json")"
import json, sys
got = set(json.load(open(sys.argv[1]))["data"])
assert {"namespace", "pod", "container", "file", "level"} <= got, got
PY
curl -sG http://127.0.0.1:7680/loki/api/v1/query_range --data-urlencode 'query={pod=~"demo-.*", level="error"}' --data-urlencode since=10m --data-urlencode limit=20 >"$W/errors.json"
python3 - "$W/errors.json" <<'PY' || fail "error lines: $(head -c 500 "$W/errors.json")"
import json, sys
r = json.load(open(sys.argv[1]))["data"]
assert r["resultType"] == "streams", r["resultType"]
lines = [v for s in r["result"] for v in s["values"]]
assert 1 <= len(lines) <= 20, len(lines)
assert all(s["stream"]["level"] == "error" and s["stream"]["pod"].startswith("demo-") for s in r["result"]), r["result"]
PY
curl -sG http://127.0.0.1:7680/loki/api/v1/query_range --data-urlencode 'query=sum by (level) (count_over_time({pod=~"demo-.*"}[1m]))' --data-urlencode since=10m >"$W/levels.json"
python3 - "$W/levels.json" <<'PY' || fail "count by level: $(head -c 500 "$W/levels.json")"
import json, sys
r = json.load(open(sys.argv[1]))["data"]
assert r["resultType"] == "matrix", r["resultType"]
levels = {s["metric"].get("level") for s in r["result"]}
assert {"info", "error"} <= levels, levels
PY
# Grafana 12's Logs Drilldown lists services: the demo pods' is their
# Deployment's `app` label, as the operator told their sidecars.
curl -s 'http://127.0.0.1:7680/loki/api/v1/index/volume?query=%7Bservice_name%3D~%60.%2B%60%7D&since=1h&limit=5000' >"$W/volume.json"
python3 - "$W/volume.json" <<'PY' || fail "index/volume: $(head -c 500 "$W/volume.json")"
import json, sys
r = json.load(open(sys.argv[1]))["data"]
services = {s["metric"]["service_name"] for s in r["result"]}
assert services == {"demo"}, services
PY

step "5. access mode token, from a client that is not loopback"
kubectl -n demo create secret generic logstream-viewer --from-literal=token="$(openssl rand -hex 24)"
kubectl -n demo patch ls demo --type merge \
  -p '{"spec":{"access":{"mode":"token","tokenSecret":{"name":"logstream-viewer","key":"token"}}}}'
TOKEN=$(kubectl -n demo get secret logstream-viewer -o jsonpath='{.data.token}' | base64 -d)
AGG_IP=$(kubectl -n demo get svc logstream-aggregator -o jsonpath='{.spec.clusterIP}')
"$ROOT/tests/node/client-netns.sh" add 9 >/dev/null
# code BASE_URL [CURL ARGS...]: the status of BASE_URL's Loki labels, from the client host.
code() {
  local base=$1
  shift
  ip netns exec lsnode-client-9 curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" "$base/loki/api/v1/labels"
}
AGG="http://$AGG_IP:7680"
token_accepted() { [[ "$(code "$AGG" -H "Authorization: Bearer $TOKEN")" == 200 ]]; }
wait_for 120 "the aggregator to accept the Secret's token (rolled out with token mode)" token_accepted
# One replica in token mode is not all of them: the Ingress below reaches
# both.
kubectl -n demo rollout status deploy/logstream-aggregator --timeout=120s
[[ "$(code "$AGG")" == 401 ]] || fail "no token: $(code "$AGG"), want 401"
[[ "$(code "$AGG" -H 'Authorization: Bearer wrong')" == 401 ]] || fail "wrong token: want 401"

step "6. through the Ingress (Traefik), as the README writes it"
# In the client namespace logs.demo.localtest.me resolves to Traefik's
# Service (client-netns.sh), as it resolves to the ingress controller on
# 127.0.0.1 on a workstation with kind.
# Traefik round-robins over the two replicas: two 200s in a row mean both
# serve the token (and Traefik no longer routes to the replaced pods).
ingress_serves() { for _ in 1 2; do [[ "$(code http://logs.demo.localtest.me -H "Authorization: Bearer $TOKEN")" == 200 ]] || return 1; done; }
wait_for 120 "Traefik to route logs.demo.localtest.me to the token-mode aggregators" ingress_serves
ip netns exec lsnode-client-9 curl -i http://logs.demo.localtest.me/stream >"$W/ingress-401.out"
head -1 "$W/ingress-401.out" | grep -q ' 401' || fail "no token through the Ingress: $(head -3 "$W/ingress-401.out")"
ip netns exec lsnode-client-9 timeout 3 curl -N -H "Authorization: Bearer $TOKEN" 'http://logs.demo.localtest.me/sse?tail=20' >"$W/ingress-sse.out" || true
some_lines "$W/ingress-sse.out" 20 '^data:'
ip netns exec lsnode-client-9 curl -H "Authorization: Bearer $TOKEN" \
  'http://logs.demo.localtest.me/loki/api/v1/query?query=vector(1)%2Bvector(1)&time=4000000000' >"$W/ingress-health.out"
grep -q '"value":\[4000000000,"2"\]' "$W/ingress-health.out" || fail "Grafana's health check through the Ingress: $(cat "$W/ingress-health.out")"

step "7. clean up"
kill "${PIDS[@]}" 2>/dev/null || true
PIDS=()
kubectl -n demo delete ls demo
kubectl delete namespace demo
helm uninstall logstream -n logstream-system
kubectl delete -f charts/logstream/crds/
step "done"
