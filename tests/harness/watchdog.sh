#!/bin/sh
# Usage: watchdog.sh WORK_DIR KEEP [STOP_SCRIPT]   (stdin: a pipe held open by the test process)
# Started by logstream-tests' ControlPlane (STOP_SCRIPT: tests/apiserver/stop.sh,
# the default) or Node (tests/node/down.sh) before the start script, in its own
# process group (a terminal's Ctrl-C does not reach it). It waits for EOF on
# stdin, which comes when the owner is dropped *or* when the test process dies
# in any way (panic=abort, SIGKILL, Ctrl-C): std creates pipes close-on-exec,
# so the test process holds the only write end. Then it runs STOP_SCRIPT
# WORK_DIR and removes WORK_DIR unless KEEP is 1.
set -u
[ $# -ge 2 ] || { echo "usage: $0 WORK_DIR KEEP [STOP_SCRIPT]" >&2; exit 2; }
cat >/dev/null
"${3:-$(dirname "$0")/../apiserver/stop.sh}" "$1" >/dev/null 2>&1
[ "$2" = 1 ] || rm -rf "$1"
