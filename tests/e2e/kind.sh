#!/usr/bin/env bash
# End-to-end test of logstream on a real cluster (kind), the way a user runs it:
#
#   kind cluster (Traefik on host ports 80/443) -> docker build both images
#   -> kind load -> helm install charts/logstream -> examples/demo-app.yaml and
#   examples/logstream.yaml in namespace "demo" -> assertions -> cleanup.
#
# Assertions (each prints "ok: ..." and lands in the summary):
#   1. operator: chart installed, webhook registered with a CA bundle
#   2. injection: every demo pod carries exactly one hardened, read-only
#      logstream sidecar; LogStream status 2 selected / 2 injected / 0 pending
#   3. sidecar: through `kubectl port-forward pod/<demo pod> :7680`, lines
#      written in the pod arrive over WebSocket (websocat) and SSE (curl -N)
#   4. aggregator: through `kubectl port-forward svc/logstream-aggregator`, the
#      merged stream carries lines from both replicas, each naming its pod
#   5. rollout: while `logstream tail --json` follows the aggregator, the demo
#      Deployment is rolled; every marker line written (kubectl exec succeeded)
#      in an old pod before it ended arrives exactly once, per-source
#      sequence numbers have no duplicates or holes, new pods are followed
#   6. ingress: the Ingress reaches the aggregator; without a token it is
#      refused (401); in the default kubernetes access mode a ServiceAccount
#      token (kubectl create token) allowed to get pods/log gets Grafana's Loki
#      health check (vector(1)+vector(1)) answered 2 and SSE streams through,
#      one without that permission gets 403, a wrong token 401
#   7. cleanup: deleting the LogStream removes the Services, Ingress and
#      aggregator objects, the auth-delegator ClusterRoleBinding and the
#      namespace label; new pods are not injected
#   8. uninstall: examples/README.md's clean-up commands (namespace, helm
#      uninstall, CRDs) succeed
#
# Commands are written as README.md and examples/README.md give them
# (tests/tests/readme.rs checks that every README command is run here, by
# .ci/run, or by that test itself).
#
# Needs bash >= 4.4, docker (a running engine), kind, kubectl, helm, websocat,
# curl, python3 and host ports 80/443 free. The Traefik image and the
# busybox/Rust base images are downloaded from the internet. Runs in CI
# (.github/workflows/e2e.yml); cannot run where there is no Docker engine.
#
# Usage: tests/e2e/kind.sh [--keep] [--skip-build] [--name CLUSTER]
#   --keep        keep the cluster (and print how to use it) instead of deleting it
#   --skip-build  use the images already in the local Docker image store
#   --name NAME   kind cluster name (default: logstream-e2e)
# Environment: E2E_WORK_DIR (logs, outputs, kubeconfig; default: a new temp
# dir), KIND_NODE_IMAGE, E2E_IMAGE_TAG.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "${HERE}/../.." && pwd)"
CHECKS="${HERE}/checks.py"

CLUSTER="logstream-e2e"
KEEP=0
SKIP_BUILD=0
while (($#)); do
  case "$1" in
    --keep) KEEP=1 ;;
    --skip-build) SKIP_BUILD=1 ;;
    --name)
      [[ $# -ge 2 ]] || { echo "--name needs a value" >&2; exit 2; }
      CLUSTER="$2"
      shift
      ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

NS="demo"
OP_NS="logstream-system"
RELEASE="logstream"
HOST="logs.demo.localtest.me"
REPLICAS=2 # examples/demo-app.yaml
TAG="${E2E_IMAGE_TAG:-dev}" # the tag examples/README.md builds
LOGSTREAM_IMAGE="ghcr.io/logstream-dev/logstream:${TAG}"
OPERATOR_IMAGE="ghcr.io/logstream-dev/logstream-operator:${TAG}"
APP_IMAGE="busybox:1.36" # examples/demo-app.yaml
# The ingress controller: Traefik, as on the one-node cluster of tests/node
# (its manifest, with the image pulled from Docker Hub instead of built here).
TRAEFIK_MANIFEST="${ROOT}/tests/node/traefik.yaml"
# Marker lines carry a per-run tag so that reruns on a kept cluster never match old lines.
RUN="e2e$(date +%s)"

WORK="${E2E_WORK_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/logstream-e2e.XXXXXX")}"
mkdir -p "${WORK}/bin"
# Our own kubeconfig: the user's ~/.kube/config is never touched.
export KUBECONFIG="${WORK}/kubeconfig"
export DOCKER_BUILDKIT=1

START=${SECONDS}
CREATED=0
BG_PIDS=()
RESULTS=()
PHASE="preflight"

log() { printf '\n== [%4ds] %s\n' "$((SECONDS - START))" "$*"; PHASE="$*"; }
pass() { RESULTS+=("PASS  $*"); printf '   ok: %s\n' "$*"; }
fail() {
  RESULTS+=("FAIL  ${PHASE}: $*")
  printf '   FAILED: %s\n' "$*" >&2
  exit 1
}

# wait_until SECONDS WHAT CMD...: runs CMD every 2 s until it succeeds; fails
# the test after SECONDS, quoting the last line CMD wrote to $WHY.
WHY="${WORK}/why.txt"
wait_until() {
  local timeout=$1 what=$2
  shift 2
  local deadline=$((SECONDS + timeout))
  : >"${WHY}"
  until "$@"; do
    if ((SECONDS >= deadline)); then
      local why=""
      if [[ -s "${WHY}" ]]; then why=" (last: $(tail -n1 "${WHY}"))"; fi
      fail "timed out after ${timeout}s waiting for ${what}${why}"
    fi
    sleep 2
  done
}

# bg NAME CMD...: runs CMD in the background, stdout to $WORK/NAME.out and
# stderr to $WORK/NAME.err; its pid is in BG_PID (stopped at exit).
bg() {
  local name=$1
  shift
  "$@" >"${WORK}/${name}.out" 2>"${WORK}/${name}.err" &
  BG_PID=$!
  BG_PIDS+=("${BG_PID}")
}

stop() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# port_forward NAME TARGET PORT: kubectl port-forward in $NS to TARGET:PORT
# from a free local port; sets PF_PORT and PF_PID once it forwards.
port_forward() {
  local name=$1 target=$2 remote=$3
  bg "pf-${name}" kubectl -n "${NS}" port-forward "${target}" ":${remote}"
  PF_PID=${BG_PID}
  PF_PORT=""
  local deadline=$((SECONDS + 60))
  while [[ -z "${PF_PORT}" ]]; do
    # The background job creates its output file when it starts.
    if [[ -f "${WORK}/pf-${name}.out" ]]; then
      PF_PORT="$(sed -n 's/^Forwarding from 127\.0\.0\.1:\([0-9][0-9]*\) -> .*/\1/p' "${WORK}/pf-${name}.out")"
      PF_PORT="${PF_PORT%%$'\n'*}"
    fi
    if [[ -n "${PF_PORT}" ]]; then break; fi
    if ! kill -0 "${PF_PID}" 2>/dev/null; then
      fail "kubectl port-forward ${target} exited: $(cat "${WORK}/pf-${name}.err")"
    fi
    if ((SECONDS >= deadline)); then fail "kubectl port-forward ${target} did not start"; fi
    sleep 1
  done
}

# Appends LINE to the demo app's log file inside POD (as the app would).
write_line() {
  kubectl -n "${NS}" exec "$1" -c app -- sh -c "echo '$2' >> /var/log/app/app.log"
}

file_has() { [[ -f "$1" ]] && grep -qw -- "$2" "$1"; }

file_has_all() {
  local f=$1
  shift
  local m
  for m in "$@"; do file_has "${f}" "${m}" || return 1; done
}

exists() { kubectl -n "${NS}" get "$1" >/dev/null 2>&1; }

# None of the named pods exists any more.
pods_gone() {
  local left
  left="$(kubectl -n "${NS}" get pods "$@" --ignore-not-found -o name)" || return 1
  [[ -z "${left}" ]]
}

demo_pods_json() { kubectl -n "${NS}" get pods -l app=demo -o json; }

# kind runs Kubernetes >= 1.29: the sidecar must be a native one.
demo_converged() { demo_pods_json | python3 "${CHECKS}" pods-converged "${REPLICAS}" native >"${WORK}/demo-pods.txt" 2>>"${WHY}"; }

demo_uninjected() { demo_pods_json | python3 "${CHECKS}" pods-without-sidecar "${REPLICAS}" >"${WORK}/demo-pods.txt" 2>>"${WHY}"; }

cleanup() {
  local rc=$?
  set +e
  local pid
  # Only ours, and only those still running (stopped ones were reaped).
  for pid in "${BG_PIDS[@]}"; do
    if kill -0 "${pid}" 2>/dev/null; then
      kill "${pid}" 2>/dev/null
      wait "${pid}" 2>/dev/null
    fi
  done
  if ((rc != 0)) && ((CREATED)); then
    echo
    echo "== diagnostics (also in ${WORK}/diagnostics.txt and ${WORK}/kind-logs/)"
    {
      kubectl get pods -A -o wide
      kubectl -n "${NS}" get logstreams,deploy,rs,svc,ingress,endpoints,secrets -o wide
      kubectl -n "${NS}" get logstreams -o yaml
      kubectl -n "${NS}" describe pods
      kubectl get events -A --sort-by=.lastTimestamp | tail -n 80
      echo "--- operator log"
      kubectl -n "${OP_NS}" logs "deploy/${RELEASE}-operator" --tail=200
      echo "--- aggregator log"
      kubectl -n "${NS}" logs deploy/logstream-aggregator --tail=200
      echo "--- sidecar logs"
      kubectl -n "${NS}" logs -l app=demo -c logstream --tail=50 --prefix
    } >"${WORK}/diagnostics.txt" 2>&1
    tail -n 120 "${WORK}/diagnostics.txt"
    kind export logs "${WORK}/kind-logs" --name "${CLUSTER}" >/dev/null 2>&1
  fi
  echo
  echo "== summary ($((SECONDS - START))s, work dir ${WORK})"
  local r
  for r in "${RESULTS[@]}"; do echo "  ${r}"; done
  if ((rc == 0)); then echo "  => all assertions passed"; else echo "  => FAILED (exit ${rc}) during: ${PHASE}"; fi
  if ((CREATED)); then
    if ((KEEP)); then
      echo "  cluster kept: export KUBECONFIG=${KUBECONFIG}   (delete: kind delete cluster --name ${CLUSTER})"
    else
      kind delete cluster --name "${CLUSTER}" >/dev/null 2>&1 && echo "  cluster ${CLUSTER} deleted"
    fi
  fi
  exit "${rc}"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- preflight -----------------------------------------------------------------
log "preflight"
for tool in docker kind kubectl helm websocat curl python3; do
  command -v "${tool}" >/dev/null 2>&1 || fail "${tool} is not on PATH"
done
docker info >/dev/null 2>&1 || fail "no Docker engine answers (docker info); kind needs one"
if kind get clusters 2>/dev/null | grep -qx "${CLUSTER}"; then
  fail "a kind cluster named ${CLUSTER} exists already (kind delete cluster --name ${CLUSTER}, or --name)"
fi
echo "   work dir ${WORK}; kind $(kind version | awk '{print $2}'); $(helm version --short); websocat $(websocat --version | awk '{print $2}')"

# --- images --------------------------------------------------------------------
if ((SKIP_BUILD)); then
  log "images (--skip-build: ${LOGSTREAM_IMAGE}, ${OPERATOR_IMAGE})"
  docker image inspect "${LOGSTREAM_IMAGE}" "${OPERATOR_IMAGE}" >/dev/null || fail "images missing: build them first"
else
  log "docker build ${LOGSTREAM_IMAGE} and ${OPERATOR_IMAGE}"
  docker build -f "${ROOT}/sidecar/Dockerfile" -t "${LOGSTREAM_IMAGE}" "${ROOT}"
  docker build -f "${ROOT}/operator/Dockerfile" -t "${OPERATOR_IMAGE}" "${ROOT}"
fi
PLATFORM="linux/$(docker version -f '{{.Server.Arch}}')"
docker pull -q --platform "${PLATFORM}" "${APP_IMAGE}" >/dev/null
# The `logstream` CLI (`logstream tail`) is the static binary of the image.
cid="$(docker create "${LOGSTREAM_IMAGE}")"
docker cp "${cid}:/logstream" "${WORK}/bin/logstream" >/dev/null
docker rm "${cid}" >/dev/null
LOGSTREAM="${WORK}/bin/logstream"
"${LOGSTREAM}" --version >/dev/null || fail "the image's logstream binary does not run here"
pass "images ready; the CLI from the image runs on the host ($("${LOGSTREAM}" --version))"

# --- cluster with Traefik ------------------------------------------------------
log "kind cluster ${CLUSTER} with Traefik on host ports 80/443"
cat >"${WORK}/kind.yaml" <<'EOF'
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
    # Traefik is scheduled on this label and serves on the node's ports
    # 80/443 (hostPort).
    labels:
      ingress-ready: "true"
    extraPortMappings:
      - containerPort: 80
        hostPort: 80
        protocol: TCP
      - containerPort: 443
        hostPort: 443
        protocol: TCP
EOF
node_image=()
if [[ -n "${KIND_NODE_IMAGE:-}" ]]; then node_image=(--image "${KIND_NODE_IMAGE}"); fi
CREATED=1
kind create cluster --name "${CLUSTER}" --config "${WORK}/kind.yaml" --kubeconfig "${KUBECONFIG}" \
  --wait 180s "${node_image[@]}"
kubectl version
# tests/node/traefik.yaml (the default IngressClass `traefik`) without what
# is particular to the one-node cluster: a local image, a fixed ClusterIP.
sed -e '/imagePullPolicy: Never/d' -e '/ingressendpoint.ip=/d' -e '/clusterIP: /d' "${TRAEFIK_MANIFEST}" |
  kubectl apply -f -
kubectl -n traefik patch deployment traefik --type=json -p '[
  {"op":"add","path":"/spec/template/spec/nodeSelector","value":{"ingress-ready":"true"}},
  {"op":"add","path":"/spec/template/spec/tolerations","value":[{"key":"node-role.kubernetes.io/control-plane","operator":"Exists","effect":"NoSchedule"}]},
  {"op":"add","path":"/spec/template/spec/containers/0/ports/0/hostPort","value":80},
  {"op":"add","path":"/spec/template/spec/containers/0/ports/1/hostPort","value":443}
]'
kubectl -n traefik rollout status deployment/traefik --timeout=300s
IMAGES=("${LOGSTREAM_IMAGE}" "${OPERATOR_IMAGE}" "${APP_IMAGE}")
# kind's commands take their default cluster from KIND_CLUSTER_NAME, so the
# project's images load with examples/README.md's command as written.
if ! KIND_CLUSTER_NAME="${CLUSTER}" kind load docker-image ${LOGSTREAM_IMAGE} ${OPERATOR_IMAGE} 2>"${WORK}/kind-load.err" ||
  ! kind load docker-image --name "${CLUSTER}" "${APP_IMAGE}" 2>>"${WORK}/kind-load.err"; then
  # With Docker's containerd image store (the default since Docker 29) this
  # fails on multi-platform images ("content digest not found", kind#3795):
  # load a single-platform archive instead.
  echo "   kind load docker-image failed ($(tail -n1 "${WORK}/kind-load.err")); loading a ${PLATFORM} archive"
  docker image save --platform "${PLATFORM}" -o "${WORK}/images.tar" "${IMAGES[@]}"
  kind load image-archive --name "${CLUSTER}" "${WORK}/images.tar"
  rm -f "${WORK}/images.tar"
fi
pass "cluster up ($(kubectl version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])')), Traefik $(sed -n 's#.*image: docker.io/library/traefik:##p' "${TRAEFIK_MANIFEST}") ready, images loaded"

# --- 1. operator ---------------------------------------------------------------
log "helm install ${RELEASE} charts/logstream"
helm install "${RELEASE}" "${ROOT}/charts/logstream" --namespace "${OP_NS}" --create-namespace --wait \
  --set "operator.image.tag=${TAG}" --set "logstream.image.tag=${TAG}" --timeout 5m
webhook_registered() {
  local ca
  ca="$(kubectl get mutatingwebhookconfiguration logstream-injector -o jsonpath='{.webhooks[0].clientConfig.caBundle}' 2>/dev/null)" || return 1
  [[ -n "${ca}" ]]
}
wait_until 120 "the MutatingWebhookConfiguration logstream-injector with a CA bundle" webhook_registered
pass "operator Ready; it registered the webhook logstream-injector with its generated CA"

# --- 2. demo app and LogStream: injection ----------------------------------------
log "kubectl apply examples/demo-app.yaml examples/logstream.yaml (namespace ${NS})"
kubectl create namespace "${NS}"
kubectl apply -n "${NS}" -f "${ROOT}/examples/demo-app.yaml" -f "${ROOT}/examples/logstream.yaml"
# Pods created before the namespace was labelled for injection are restarted
# by the operator (restartPods: true); either way all end up injected.
wait_until 300 "${REPLICAS} Ready demo pods, each with one native sidecar" demo_converged
mapfile -t PODS <"${WORK}/demo-pods.txt"
kubectl -n "${NS}" rollout status deploy/demo --timeout=120s
status_ok() {
  local s
  s="$(kubectl -n "${NS}" get ls demo -o jsonpath='{.status.selectedPods}/{.status.injectedPods}/{.status.pendingRestartPods} {.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Injected")].status}')" || return 1
  [[ "${s}" == "${REPLICAS}/${REPLICAS}/0 True True" ]]
}
wait_until 120 "LogStream status ${REPLICAS} selected / ${REPLICAS} injected / 0 pending, Ready and Injected" status_ok
kubectl get ls -n "${NS}"
kubectl -n "${NS}" describe ls demo
wait_until 120 "the aggregator Deployment" exists deploy/logstream-aggregator
kubectl -n "${NS}" rollout status deploy/logstream-aggregator --timeout=180s
pass "pods ${PODS[*]}: one native, hardened, read-only sidecar each; status ${REPLICAS}/${REPLICAS}/0"

# --- 3. a pod's sidecar over WebSocket and SSE -----------------------------------
POD="$(kubectl -n "${NS}" get pods -l logstream.dev/stream=demo -o jsonpath='{.items[0].metadata.name}')"
[[ " ${PODS[*]} " == *" ${POD} "* ]] || fail "pod ${POD} is not one of the injected demo pods ${PODS[*]}"
log "kubectl port-forward pod/${POD} 7680: WebSocket and SSE"
port_forward sidecar "pod/${POD}" 7680
SIDECAR_URL="127.0.0.1:${PF_PORT}"
curl -fsS "http://${SIDECAR_URL}/readyz" >/dev/null || fail "sidecar /readyz through the port-forward"
# History (tail=) plus live, filtered to this run's markers: lines written
# while a client subscribes are neither missed nor repeated. websocat sends
# nothing (stdin is /dev/null, --no-close keeps the connection) and prints
# the raw lines.
bg ws websocat -t --no-close "ws://${SIDECAR_URL}/ws?format=raw&tail=100&grep=${RUN}-pod"
WS_PID=${BG_PID}
bg sse curl -sN "http://${SIDECAR_URL}/sse?format=raw&tail=100&grep=${RUN}-pod"
SSE_PID=${BG_PID}
wait_until 30 "the WebSocket hello" file_has "${WORK}/ws.out" hello
wait_until 30 "the SSE hello" file_has "${WORK}/sse.out" hello
kubectl -n "${NS}" exec "$POD" -c app -- sh -c 'echo hello from the walkthrough >> /var/log/app/app.log'
markers=()
for i in 1 2 3; do
  markers+=("${RUN}-pod-${i}")
  write_line "${POD}" "${RUN}-pod-${i}"
done
wait_until 30 "markers over WebSocket (${WORK}/ws.out)" file_has_all "${WORK}/ws.out" "${markers[@]}"
wait_until 30 "markers over SSE (${WORK}/sse.out)" file_has_all "${WORK}/sse.out" "${markers[@]}"
stop "${WS_PID}"
stop "${SSE_PID}"
stop "${PF_PID}"
pass "lines written in ${POD} arrived over WebSocket (websocat) and SSE (curl -N) through port-forward"

# --- 4. the aggregator merges both replicas --------------------------------------
log "kubectl port-forward svc/logstream-aggregator 7680: merged stream"
port_forward aggregator svc/logstream-aggregator 7680
AGG_PORT=${PF_PORT}
AGG_PF_PID=${PF_PID}
AGG_URL="http://127.0.0.1:${AGG_PORT}"
upstreams_connected() {
  local n
  n="$(curl -fsS "${AGG_URL}/metrics" | awk '$1 == "logstream_upstreams_connected" {print int($2)}')" || return 1
  [[ -n "${n}" ]] && ((n >= REPLICAS))
}
wait_until 90 "the aggregator to pull ${REPLICAS} sidecars (logstream_upstreams_connected)" upstreams_connected
# Plain chunked HTTP, NDJSON records; history plus live as above.
bg merged curl -sN "${AGG_URL}/stream?format=json&tail=100&grep=${RUN}-merged"
MERGED_PID=${BG_PID}
pairs=()
merged=()
for p in "${PODS[@]}"; do
  pairs+=("${p}=${RUN}-merged-${p}")
  merged+=("${RUN}-merged-${p}")
  write_line "${p}" "${RUN}-merged-${p}"
done
wait_until 60 "lines of every pod in the merged stream (${WORK}/merged.out)" file_has_all "${WORK}/merged.out" "${merged[@]}"
stop "${MERGED_PID}"
python3 "${CHECKS}" records-from-pods "${WORK}/merged.out" "${pairs[@]}" || fail "merged records"
pass "the aggregator's merged stream carries the lines of both replicas, each naming its pod"

# --- 5. rollout: nothing lost or repeated ------------------------------------------
log "kubectl rollout restart deploy/demo while logstream tail follows the aggregator"
bg rollout "${LOGSTREAM}" tail "${AGG_URL}" --json
TAIL_PID=${BG_PID}
pods_followed() {
  local p
  [[ -f "${WORK}/rollout.out" ]] || return 1
  for p in "${PODS[@]}"; do grep -qF "\"pod\":\"${p}\"" "${WORK}/rollout.out" || return 1; done
}
wait_until 60 "logstream tail to receive records of every pod" pods_followed

# writer POD: appends "<RUN>-roll-POD-N" lines, N = 1, 2, ..., until the app
# container stops running; records "POD MARKER" for every write that
# kubectl exec reported done.
writer() {
  local pod=$1 out="${WORK}/written-$1.txt" n=0 deadline=$((SECONDS + 300)) m state
  : >"${out}"
  while ((SECONDS < deadline)); do
    n=$((n + 1))
    m="${RUN}-roll-${pod}-${n}"
    if write_line "${pod}" "${m}" >/dev/null 2>&1; then
      echo "${pod} ${m}" >>"${out}"
    else
      state="$(kubectl -n "${NS}" get pod "${pod}" -o jsonpath='{.status.containerStatuses[?(@.name=="app")].state.running.startedAt}' 2>/dev/null)" || state=""
      if [[ -z "${state}" ]]; then return 0; fi
    fi
  done
}
WRITERS=()
for p in "${PODS[@]}"; do
  writer "${p}" &
  WRITERS+=("$!")
  BG_PIDS+=("$!")
done
written_some() {
  local p
  for p in "${PODS[@]}"; do
    [[ -f "${WORK}/written-${p}.txt" ]] && (($(wc -l <"${WORK}/written-${p}.txt") >= 3)) || return 1
  done
}
wait_until 60 "the writers to get going" written_some
kubectl -n "${NS}" rollout restart deploy/demo
kubectl -n "${NS}" rollout status deploy/demo --timeout=300s
# Old pods end after their grace period (the demo's busybox sh, PID 1,
# ignores SIGTERM: 30 s); then their sidecars drain.
wait_until 180 "the old pods ${PODS[*]} to be deleted" pods_gone "${PODS[@]}"
for pid in "${WRITERS[@]}"; do wait "${pid}" || fail "a writer failed"; done
expected=()
total=0
for p in "${PODS[@]}"; do
  expected+=("${WORK}/written-${p}.txt")
  n="$(wc -l <"${WORK}/written-${p}.txt")"
  ((n >= 3)) || fail "only ${n} marker lines could be written in ${p}"
  total=$((total + n))
done
echo "   ${total} marker lines written in the old pods before they ended"
wait_until 300 "${REPLICAS} new injected demo pods" demo_converged
mapfile -t NEW_PODS <"${WORK}/demo-pods.txt"
last_markers=()
for p in "${PODS[@]}"; do last_markers+=("$(tail -n1 "${WORK}/written-${p}.txt" | awk '{print $2}')"); done
wait_until 90 "the last marker of every old pod in logstream tail's output" file_has_all "${WORK}/rollout.out" "${last_markers[@]}"
after=()
for p in "${NEW_PODS[@]}"; do
  after+=("${RUN}-after-${p}")
  write_line "${p}" "${RUN}-after-${p}"
done
wait_until 90 "lines of the new pods ${NEW_PODS[*]} in the same follower" file_has_all "${WORK}/rollout.out" "${after[@]}"
stop "${TAIL_PID}"
stop "${AGG_PF_PID}"
if grep -q "records skipped" "${WORK}/rollout.err"; then
  fail "logstream tail reported a gap: $(grep "records skipped" "${WORK}/rollout.err" | head -n3)"
fi
python3 "${CHECKS}" rollout "${WORK}/rollout.out" "${RUN}-roll-" "${expected[@]}" || fail "rollout: see above; records in ${WORK}/rollout.out"
PODS=("${NEW_PODS[@]}")
pass "rollout: ${total} lines written before the old pods ended arrived exactly once; no duplicate or missing seq per source; new pods followed without reconnecting"

# --- 6. the Ingress and Grafana's Loki health check --------------------------------
log "Ingress ${HOST}: Loki API"
HEALTH="/loki/api/v1/query?query=vector(1)%2Bvector(1)&time=4000000000"
# http_code PATH [CURL ARGS...]: status of GET PATH through the Ingress; body in $WORK/ingress.body
http_code() {
  local path=$1
  shift
  curl -sS -o "${WORK}/ingress.body" -w '%{http_code}' -H "Host: ${HOST}" "$@" "http://127.0.0.1${path}" 2>/dev/null || true
}
ingress_refuses() { [[ "$(http_code "${HEALTH}")" == 401 ]]; }
# 404 (Traefik not synced yet) or 503 (no endpoints) until it routes.
wait_until 120 "the Ingress to route to the aggregator (401 without token)" ingress_refuses
grep -q "Kubernetes token" "${WORK}/ingress.body" || fail "unexpected 401 body: $(cat "${WORK}/ingress.body")"
pass "Ingress routes to the aggregator; a client without a token gets 401"

# kubernetes access mode (the default): whoever may `kubectl logs` may stream.
kubectl -n "${NS}" create serviceaccount me
kubectl -n "${NS}" create serviceaccount nobody
kubectl -n "${NS}" create role logstream-viewer --verb=get --resource=pods/log
kubectl -n "${NS}" create rolebinding me-logstream-viewer --role=logstream-viewer --serviceaccount="${NS}:me"
TOKEN="$(kubectl -n "${NS}" create token me)"
# examples/README.md's grant for an in-cluster Grafana (the ServiceAccount
# need not exist for the RoleBinding to be created).
kubectl -n "${NS}" create rolebinding grafana-logstream-viewer \
  --role=logstream-viewer --serviceaccount=monitoring:grafana
NOBODY="$(kubectl -n "${NS}" create token nobody)"
WANT='{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[4000000000,"2"]}]}}'
health_ok() {
  [[ "$(http_code "${HEALTH}" -H "Authorization: Bearer ${TOKEN}")" == 200 ]] &&
    [[ "$(cat "${WORK}/ingress.body")" == "${WANT}" ]]
}
# The RoleBinding takes effect at once; the aggregator caches answers 30 s.
wait_until 60 "Grafana's Loki health check with a viewer ServiceAccount token" health_ok
[[ "$(http_code "${HEALTH}" -H "Authorization: Bearer ${NOBODY}")" == 403 ]] || fail "a token without pods/log was not refused with 403"
grep -q "pods/log" "${WORK}/ingress.body" || fail "the 403 does not name the missing permission: $(cat "${WORK}/ingress.body")"
[[ "$(http_code "${HEALTH}" -H "Authorization: Bearer wrong-${TOKEN}")" == 401 ]] || fail "a wrong token was not refused with 401"
curl -sN --max-time 5 -H "Host: ${HOST}" -H "Authorization: Bearer ${TOKEN}" \
  "http://127.0.0.1/sse?tail=5&format=raw" >"${WORK}/ingress-sse.out" 2>/dev/null || true
grep -q "^event: hello" "${WORK}/ingress-sse.out" || fail "no SSE stream through the Ingress: $(head -c 300 "${WORK}/ingress-sse.out")"
BINDING="logstream:auth-delegator:${NS}"
kubectl get clusterrolebinding "${BINDING}" -o jsonpath='{.subjects[*].name}' | grep -qw logstream-aggregator ||
  fail "the aggregator's ServiceAccount is not in ${BINDING}"
pass "kubernetes access: a ServiceAccount token with get pods/log gets Grafana's Loki health check answered 2 through the Ingress and SSE; without it 403, a wrong token 401"

# --- 7. cleanup ---------------------------------------------------------------------
log "kubectl delete logstream demo: cleanup"
kubectl -n "${NS}" delete ls demo --wait=true --timeout=120s
OWNED=(service/demo-logstream ingress/demo-logstream deployment/logstream-aggregator
  service/logstream-aggregator serviceaccount/logstream-aggregator role/logstream-aggregator
  rolebinding/logstream-aggregator secret/logstream-pull-token)
all_gone() {
  local left
  left="$(kubectl -n "${NS}" get "${OWNED[@]}" --ignore-not-found -o name)" || return 1
  left+="$(kubectl -n "${NS}" get pods -l app.kubernetes.io/component=aggregator -o name)" || return 1
  [[ -z "${left}" ]]
}
wait_until 120 "the Services, Ingress and aggregator objects to be deleted" all_gone
binding_gone() { [[ -z "$(kubectl get clusterrolebinding "${BINDING}" --ignore-not-found -o name)" ]]; }
wait_until 60 "the ClusterRoleBinding ${BINDING} to be deleted" binding_gone
ns_unlabelled() {
  local label
  label="$(kubectl get namespace "${NS}" -o jsonpath='{.metadata.labels.logstream\.dev/injection}')" || return 1
  [[ -z "${label}" ]]
}
wait_until 60 "the namespace's injection label to be removed" ns_unlabelled
kubectl -n "${NS}" rollout restart deploy/demo
kubectl -n "${NS}" rollout status deploy/demo --timeout=300s
wait_until 180 "${REPLICAS} Ready demo pods without sidecar" demo_uninjected
pass "LogStream deleted: Services, Ingress, aggregator, pull token, auth-delegator binding and namespace label gone; new pods $(paste -sd' ' "${WORK}/demo-pods.txt") not injected"

# --- 8. uninstall, as examples/README.md's last step ---------------------------------
log "uninstall: namespace, helm release, CRDs"
kubectl delete namespace "${NS}"
helm uninstall "${RELEASE}" -n "${OP_NS}"
kubectl delete -f "${ROOT}/charts/logstream/crds/"
[[ -z "$(kubectl get crd logstreams.logstream.dev --ignore-not-found -o name)" ]] || fail "the LogStream CRD is still there"
pass "uninstalled: namespace, Helm release and CRD removed"
