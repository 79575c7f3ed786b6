#!/bin/sh
# Usage: watchdog.sh WORK_DIR KEEP   (stdin: a pipe held open by the test process)
# Started by logstream-tests' ControlPlane before tests/apiserver/start.sh, in
# its own process group (a terminal's Ctrl-C does not reach it). It waits for
# EOF on stdin, which comes when ControlPlane is dropped *or* when the test
# process dies in any way (panic=abort, SIGKILL, Ctrl-C): std creates pipes
# close-on-exec, so the test process holds the only write end. Then it stops
# the control plane and removes WORK_DIR unless KEEP is 1.
set -u
[ $# -eq 2 ] || { echo "usage: $0 WORK_DIR KEEP" >&2; exit 2; }
cat >/dev/null
"$(dirname "$0")/../apiserver/stop.sh" "$1" >/dev/null
[ "$2" = 1 ] || rm -rf "$1"
