#!/usr/bin/env bash
# Installs the pinned npm dependencies of the baseline servers
# (bench/baselines/node: ws, socket.io, chokidar) with `npm ci`. Idempotent:
# does nothing when node_modules already matches package-lock.json.
set -euo pipefail
cd "$(dirname "$0")/node"
command -v node >/dev/null || { echo "node (>= 18) is required" >&2; exit 1; }
stamp=node_modules/.lock-sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
    exit 0
fi
npm ci --no-audit --no-fund --ignore-scripts
echo "$want" > "$stamp"
