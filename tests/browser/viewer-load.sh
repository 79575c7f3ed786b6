#!/bin/sh
# The web viewer under 10,000 lines/s for a minute (bench/RESULTS.md, "Web
# viewer"): a real `logstream serve`, a writer appending to a real file, the
# page in headless Chromium measuring its frames (requestAnimationFrame
# deltas, long tasks) and its JS heap (performance.memory, CDP metrics).
# The report is printed ("viewer load: {...}") and written to
# $CARGO_TARGET_DIR/tmp/browser/viewer-load.json.
#
#   tests/browser/viewer-load.sh                 # 60 s at 10,000 lines/s
#   VIEWER_LOAD_SECONDS=10 VIEWER_LOAD_RATE=20000 tests/browser/viewer-load.sh
set -eu
cd "$(dirname "$0")/../.."
export VIEWER_LOAD_SECONDS="${VIEWER_LOAD_SECONDS:-60}"
export VIEWER_LOAD_RATE="${VIEWER_LOAD_RATE:-10000}"
exec cargo test -p logstream --test browser \
  page_keeps_up_with_10k_lines_per_second_with_bounded_rows -- --exact --nocapture
