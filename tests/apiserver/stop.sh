#!/usr/bin/env bash
# Usage: stop.sh WORK_DIR
# Stops the processes that start.sh recorded in WORK_DIR/pids (controller
# manager first, etcd last): SIGTERM, bounded wait, then SIGKILL.
# WORK_DIR itself (logs, certs, etcd data) is left in place.
set -euo pipefail
[[ $# -eq 1 ]] || { echo "usage: $0 WORK_DIR" >&2; exit 2; }
PIDS="$1/pids"
[[ -f "$PIDS" ]] || exit 0

# Only signal a pid that is still the binary start.sh launched (pid reuse guard).
is_ours() { # PID NAME
  [[ -r "/proc/$1/cmdline" ]] && [[ "$(tr '\0' '\n' <"/proc/$1/cmdline" | head -n1)" == */"$2" ]]
}

tac "$PIDS" | while read -r pid name; do
  [[ -n "${pid:-}" ]] || continue
  is_ours "$pid" "$name" || continue
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do # up to ~10s
    is_ours "$pid" "$name" || break
    sleep 0.1 # poll interval only
  done
  if is_ours "$pid" "$name"; then
    echo "$name ($pid) did not exit on SIGTERM; sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
done
rm -f "$PIDS"
