#!/usr/bin/env bash
# Draws the PNG plots of the `compare` group from its JSON results:
#   bench/plots/plot.sh [RESULTS_DIR] [OUT_DIR]   (default bench/results bench/plots)
# Installs matplotlib (pinned in requirements.txt) into a venv under
# $HOME/.cache/logstream/plot-venv the first time; idempotent.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
results=${1:-$here/../results}
out=${2:-$here}
venv="$HOME/.cache/logstream/plot-venv"
stamp="$venv/.requirements-sha256"
want=$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
    echo "$want" > "$stamp"
fi
"$venv/bin/python" "$here/plot.py" "$results" "$out"
