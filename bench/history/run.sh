#!/usr/bin/env bash
# History benchmark: logstream's disk-backed history side by side with
# VictoriaLogs on the same data (see bench/history/README.md).
#
#   bench/history/run.sh                    1 GiB data set, both sides
#   BYTES=50000000 bench/history/run.sh     smoke test (~50 MB)
#   SIDES=victorialogs bench/history/run.sh only one side (victorialogs, logstream)
#
# Environment:
#   BYTES      1073741824: size of the data set (ls-loggen --bytes)
#   SEED       1: seed of the data set (ls-loggen --seed)
#   DATA_DIR   $HOME/.cache/logstream/history-bench: the data set,
#              data-<BYTES>-<SEED>.jsonl and its summary .summary.json, made
#              once and reused while the generator is unchanged
#   RESULTS    bench/results: history-victorialogs.json, history-logstream.json
#              (a run with BYTES other than the default writes
#              history-*-<BYTES>.json, so smoke tests keep the full results)
#   plus those of bench/history/victorialogs.sh (VL_STORAGE, RUNS, QUIET_WAIT, ...)
set -euo pipefail

cd "$(dirname "$0")/../.."
BYTES=${BYTES:-1073741824}
SEED=${SEED:-1}
DATA_DIR=${DATA_DIR:-$HOME/.cache/logstream/history-bench}
RESULTS=${RESULTS:-bench/results}
SIDES=${SIDES:-victorialogs logstream}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/logstream/target-histbench}
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
BIN=$CARGO_TARGET_DIR/release

SUFFIX=""
if [[ $BYTES != 1073741824 ]]; then SUFFIX="-$BYTES"; fi

# The generator, and the logstream side's binary when it exists.
nice -n 10 cargo build --release -p logstream-bench --bin ls-loggen
if [[ -f bench/src/bin/ls-history-bench.rs ]]; then
    nice -n 10 cargo build --release -p logstream-bench --bin ls-history-bench
    nice -n 10 cargo build --release -p logstream --bin logstream
fi

# The data set, once per (size, seed, generator source): DATA.gen records the
# hash of ls-loggen.rs, so a changed generator makes it again.
mkdir -p "$DATA_DIR"
DATA=$DATA_DIR/data-$BYTES-$SEED.jsonl
SUMMARY=$DATA.summary.json
GEN_HASH=$(sha256sum bench/src/bin/ls-loggen.rs | cut -c1-16)
if [[ -f $DATA && -f $SUMMARY && -f $DATA.gen && $(cat "$DATA.gen") == "$GEN_HASH" ]]; then
    echo "data set: reusing $DATA" >&2
else
    echo "data set: writing $DATA ($BYTES bytes, seed $SEED)" >&2
    rm -f "$DATA" "$SUMMARY" "$DATA.gen"
    nice -n 10 "$BIN/ls-loggen" --out "$DATA" --bytes "$BYTES" --seed "$SEED" >"$SUMMARY.tmp"
    mv "$SUMMARY.tmp" "$SUMMARY"
    echo "$GEN_HASH" >"$DATA.gen"
fi
jq -c '{lines, bytes, levels, expected, secs, mb_per_s_written}' "$SUMMARY" >&2

run_victorialogs_side() {
    OUT=$RESULTS/history-victorialogs$SUFFIX.json bench/history/victorialogs.sh "$DATA" "$SUMMARY"
}

# Hook of the logstream side.
#
# ls-history-bench (bench/src/bin/ls-history-bench.rs, to be written with the
# history store) is called as
#
#   ls-history-bench --data DATA.jsonl --summary SUMMARY.json --out RESULT.json
#
# It must read the same data file, ingest it into logstream's history store
# (fresh directory in /dev/shm, as the VictoriaLogs side, or on disk with
# the same choice), and measure what victorialogs.sh measures, with the same
# JSON field names where they apply (see bench/history/README.md):
#   ingest: lines per CPU-second of the process that stores (utime+stime of
#           /proc/PID/stat) until every line is queryable, and until it is
#           on disk; wall time; bytes on disk (du -sb) per line;
#   queries (5 runs each, first run apart as cold, then min and median), each
#           checked against SUMMARY.json's "expected":
#     (a) {namespace="bench"} |= "needle-7f3a9c"       over the whole 6 h: 3 lines
#     (b) {pod="pod-07"} |= "error"                     over the last hour: expected.b_pod07_error_substring_last_hour
#     (c) sum by (level) (count_over_time({namespace="bench"}[1m]))   start..end, step 1m:
#         expected.c_loki_step_points points (LogQL windows (t-1m, t], so
#         the first record falls on the point t=start), summing to
#         expected.c_total; VictoriaLogs' [t, t+1m) buckets give
#         expected.c_level_minute_points
#   through the Loki-compatible HTTP API (query_range) like a user, so that
#   the HTTP and JSON costs are in the figures as they are for VictoriaLogs.
# Until the binary exists, this side is skipped.
run_logstream_side() {
    local bin=$BIN/ls-history-bench
    if [[ ! -x $bin ]]; then
        echo "logstream side: $bin does not exist yet, skipped" >&2
        return 0
    fi
    "$bin" --data "$DATA" --summary "$SUMMARY" --bin "$BIN/logstream" \
        --out "$RESULTS/history-logstream$SUFFIX.json"
}

for side in $SIDES; do
    case $side in
        victorialogs) run_victorialogs_side ;;
        logstream) run_logstream_side ;;
        *) echo "unknown side $side" >&2; exit 2 ;;
    esac
done
