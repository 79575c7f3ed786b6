#!/usr/bin/env bash
# Instructions (valgrind callgrind `Ir`) per 1,000 lines tailed and delivered
# to one raw WebSocket client, on a fixed workload (see ls-callgrind --help),
# with `tail -n +1 -F` on the same workload as the floor.
#
#   bench/callgrind.sh                measure the working tree (release build)
#                                     -> bench/results/callgrind.json
#   bench/callgrind.sh REV_A REV_B    build each revision in a temporary git
#                                     worktree, measure both (same invocation),
#                                     -> bench/results/callgrind-rev-SHA.json each,
#                                     and print the ratio B / A
#
# env: LINES (20000 lines per run), RUNS (3), CHUNK (100 lines per write)
# Takes ~1 min per revision with the defaults (plus the builds). Bench only:
# CI does not need valgrind.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=bench/results
LINES=${LINES:-20000}
RUNS=${RUNS:-3}
CHUNK=${CHUNK:-100}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$CARGO_TARGET_DIR/release
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
mkdir -p "$OUT"

nice cargo build --release -p logstream -p logstream-bench >&2

measure() { # BIN LABEL JSON [extra args]
    local bin=$1 label=$2 json=$3; shift 3
    echo "+ $BIN/ls-callgrind --server-bin $bin --label $label --lines $LINES --runs $RUNS --chunk $CHUNK $* --json-out $json" >&2
    "$BIN/ls-callgrind" --server-bin "$bin" --label "$label" --lines "$LINES" --runs "$RUNS" \
        --chunk "$CHUNK" "$@" --json-out "$json" >/dev/null
}

if (($# == 0)); then
    rev="$(git rev-parse --short HEAD)"
    git diff --quiet HEAD -- sidecar || rev="$rev + uncommitted changes in sidecar/"
    LS_REVISION="$rev" measure "$BIN/logstream" "$rev" "$OUT/callgrind.json"
    exit 0
fi
(($# == 2)) || { echo "usage: bench/callgrind.sh [REV_A REV_B]" >&2; exit 2; }

# Revisions share one target folder (dependencies build once), seeded from
# the main one when empty.
REVS_TARGET=$ROOT/target/callgrind-revs
if [[ ! -d $REVS_TARGET/release && -d $CARGO_TARGET_DIR/release ]]; then
    mkdir -p "$REVS_TARGET"
    cp -al "$CARGO_TARGET_DIR/release" "$REVS_TARGET/release" # hard links: no copy
fi
tmp=$(mktemp -d)
trap 'for w in "$tmp"/wt-*; do [[ -d $w ]] && git worktree remove --force "$w"; done; rm -rf "$tmp"' EXIT
bins=()
shas=()
for r in "$1" "$2"; do
    sha=$(git rev-parse --short "$r^{commit}")
    git worktree add --quiet --detach "$tmp/wt-$sha" "$sha"
    echo "== build $r ($sha)" >&2
    (cd "$tmp/wt-$sha" && CARGO_TARGET_DIR=$REVS_TARGET nice cargo build --release -p logstream >&2)
    cp "$REVS_TARGET/release/logstream" "$tmp/logstream-$sha"
    bins+=("$tmp/logstream-$sha")
    shas+=("$sha")
done
for i in 0 1; do
    LS_REVISION="${shas[$i]}" measure "${bins[$i]}" "${shas[$i]}" "$OUT/callgrind-rev-${shas[$i]}.json" \
        $([[ $i == 1 ]] && echo --no-floor)
done
python3 - "$OUT/callgrind-rev-${shas[0]}.json" "$OUT/callgrind-rev-${shas[1]}.json" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
ia = a["results"]["ours"]["ir_per_1000_lines_median"]
ib = b["results"]["ours"]["ir_per_1000_lines_median"]
print(f"{a['label']}: {ia:,.0f} Ir per 1,000 lines (spread {a['results']['ours']['spread']:.2%})")
print(f"{b['label']}: {ib:,.0f} Ir per 1,000 lines (spread {b['results']['ours']['spread']:.2%})")
print(f"ratio {b['label']} / {a['label']}: {ib / ia:.3f}")
PY
