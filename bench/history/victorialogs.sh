#!/usr/bin/env bash
# VictoriaLogs side of the history benchmark (see bench/history/README.md).
#
#   bench/history/victorialogs.sh DATA.jsonl SUMMARY.json
#
# DATA.jsonl and SUMMARY.json come from ls-loggen (bench/history/run.sh makes
# them). Builds VictoriaLogs (cached), starts it on loopback with a fresh
# -storageDataPath, ingests DATA.jsonl through /insert/jsonline, measures
# ingest CPU and wall time, bytes on disk after a flush and after a forced
# merge, restarts it, times the three queries of the benchmark and writes
# bench/results/history-victorialogs.json (OUT=...).
#
# Environment:
#   VL_VERSION   v1.52.2 (module github.com/VictoriaMetrics/VictoriaLogs)
#   VL_CACHE     $HOME/.cache/logstream/victorialogs: Go caches, the binary
#   VL_STORAGE   shm (default: a fresh directory in /dev/shm, so reads are
#                page-cache reads; 1 GiB of raw logs takes ~0.1 GiB there)
#                or disk (a fresh directory under $VL_DISK_DIR, default
#                $HOME/.cache/logstream/history-bench)
#   VL_PORT      19428 (loopback only)
#   RUNS         5 runs of each query
#   OUT          bench/results/history-victorialogs.json
#   QUIET_WAIT   60: seconds to wait at most for a quiet machine (<= 15% busy)
#                before the ingest and before the queries
set -euo pipefail

cd "$(dirname "$0")/../.."
DATA=${1:?usage: victorialogs.sh DATA.jsonl SUMMARY.json}
SUMMARY=${2:?usage: victorialogs.sh DATA.jsonl SUMMARY.json}
VL_VERSION=${VL_VERSION:-v1.52.2}
VL_CACHE=${VL_CACHE:-$HOME/.cache/logstream/victorialogs}
VL_STORAGE=${VL_STORAGE:-shm}
VL_DISK_DIR=${VL_DISK_DIR:-$HOME/.cache/logstream/history-bench}
VL_PORT=${VL_PORT:-19428}
RUNS=${RUNS:-5}
OUT=${OUT:-bench/results/history-victorialogs.json}
GO=${GO:-/usr/local/go/bin/go}
VL_BIN=$VL_CACHE/victoria-logs-$VL_VERSION

build_victorialogs() {
    if [[ -x $VL_BIN ]]; then
        return
    fi
    echo "building VictoriaLogs $VL_VERSION into $VL_BIN" >&2
    mkdir -p "$VL_CACHE/mod"
    (
        cd "$VL_CACHE/mod"
        export GOPATH=$VL_CACHE/gopath GOCACHE=$VL_CACHE/gocache GOMODCACHE=$VL_CACHE/gomodcache GOFLAGS=-mod=mod
        # A throwaway module whose only dependency is VictoriaLogs at that version.
        printf 'module logstream.local/vlbuild\n\ngo 1.26\n' > go.mod
        printf '//go:build tools\n\npackage tools\n\nimport _ "github.com/VictoriaMetrics/VictoriaLogs/app/victoria-logs"\n' > tools.go
        rm -f go.sum
        "$GO" get "github.com/VictoriaMetrics/VictoriaLogs@$VL_VERSION"
        nice -n 10 "$GO" build -trimpath -o "$VL_BIN.tmp" github.com/VictoriaMetrics/VictoriaLogs/app/victoria-logs
        mv "$VL_BIN.tmp" "$VL_BIN"
    )
}

build_victorialogs
GO_VERSION=$("$GO" version)
VL_BUILD_INFO=$("$GO" version -m "$VL_BIN" | grep -E 'path|mod|go1|CGO_ENABLED|GOAMD64' | head -8 | sed 's/^[[:space:]]*//')

case $VL_STORAGE in
    shm) WORK=$(mktemp -d /dev/shm/ls-history-vl.XXXXXX) ;;
    disk) mkdir -p "$VL_DISK_DIR" && WORK=$(mktemp -d "$VL_DISK_DIR/vl.XXXXXX") ;;
    *) echo "VL_STORAGE must be shm or disk" >&2; exit 2 ;;
esac
STORAGE=$WORK/data
PIDFILE=$WORK/pid
LOG=$WORK/victoria-logs.log

cleanup() {
    if [[ -f $PIDFILE ]]; then
        local pid
        pid=$(cat "$PIDFILE")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    if [[ ${KEEP_LOG:-0} == 1 ]]; then cp "$LOG" "${OUT%.json}.log" || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

if curl -s -o /dev/null "http://127.0.0.1:$VL_PORT/health"; then
    echo "port $VL_PORT is in use" >&2
    exit 1
fi

# Retention: the data set's window is fixed (2026-12-01 by default); a wide
# retention and future retention keep it accepted whatever today's date is.
SERVER_CMD=("$VL_BIN"
    "-httpListenAddr=127.0.0.1:$VL_PORT"
    "-storageDataPath=$STORAGE"
    "-retentionPeriod=100y"
    "-futureRetention=100y"
    "-loggerLevel=INFO")
"${SERVER_CMD[@]}" >"$LOG" 2>&1 &
echo $! >"$PIDFILE"

SERVER_JSON=$(printf '%s\n' "${SERVER_CMD[@]}" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().splitlines()))')
META=$(python3 - "$VL_VERSION" "$VL_BIN" "$GO_VERSION" "$VL_BUILD_INFO" "$SERVER_JSON" "$STORAGE" <<'EOF'
import json, sys
version, binary, gov, info, cmd, storage = sys.argv[1:]
print(json.dumps({
    "version": version,
    "module": "github.com/VictoriaMetrics/VictoriaLogs",
    "licence": "Apache-2.0",
    "binary": binary,
    "build": {
        "commands": [
            "go get github.com/VictoriaMetrics/VictoriaLogs@" + version,
            "go build -trimpath -o " + binary + " github.com/VictoriaMetrics/VictoriaLogs/app/victoria-logs",
        ],
        "go": gov,
        "info": info.splitlines(),
    },
    "server_command": json.loads(cmd),
    "storage_path": storage,
    "ingest_command": "curl -s -X POST -H 'Content-Type: application/stream+json' --data-binary @DATA 'http://127.0.0.1:PORT/insert/jsonline?_stream_fields=namespace,pod,container,file&_msg_field=line&_time_field=ts' (sent by vl_measure.py with http.client, streamed in 1 MiB blocks, one request)",
}))
EOF
)

python3 bench/history/vl_measure.py \
    --port "$VL_PORT" --pid-file "$PIDFILE" \
    --data "$DATA" --summary "$SUMMARY" \
    --storage "$STORAGE" --storage-kind "$VL_STORAGE:$WORK" \
    --server-cmd "$SERVER_JSON" --server-log "$LOG" \
    --runs "$RUNS" --quiet-wait "${QUIET_WAIT:-60}" --out "$OUT" --meta "$META"

if grep -qP '\t(error|fatal|panic)\t' "$LOG"; then
    echo "victoria-logs logged errors:" >&2
    grep -P '\t(error|fatal|panic)\t' "$LOG" | head -20 >&2
fi
