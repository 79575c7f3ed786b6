#!/usr/bin/env bash
# Coverage-guided fuzzing of logstream's input paths with AFL++ (stable
# toolchain, through cargo-afl):
#
#   fuzz/run.sh [SECONDS] [TARGET...]   fuzz each target for SECONDS (default 15)
#
# Targets (logstream::fuzzing): request_head websocket_frames websocket_deflate_frames client_message
# stream_query logql file_bytes history_block. Each starts from fuzz/corpus/TARGET; findings
# go to $FUZZ_OUT/TARGET (default $HOME/.cache/logstream/fuzz-out). Exits non-zero, naming the
# inputs, when a run found a crash or a hang: add such an input to
# fuzz/corpus/TARGET once fixed, so `cargo test` replays it for ever.
#
# Installs cargo-afl and builds AFL++ under $HOME/.cache/logstream the first
# time (~1.5 min); the instrumented build has its own target folder.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-15}
shift || true
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=(request_head websocket_frames websocket_deflate_frames client_message stream_query logql file_bytes history_block)
fi
cache="$HOME/.cache/logstream"
afl_root="$cache/afl"
export PATH="$afl_root/bin:$PATH"
afl_version=0.18.2
if [[ "$(cargo afl --version 2>/dev/null || true)" != *"$afl_version"* ]]; then
    cargo install --locked --quiet cargo-afl --version "$afl_version" --root "$afl_root"
fi
# AFL++ itself (afl-fuzz and its runtime), built once per cargo-afl and
# rustc version, kept with the other cached builds.
export XDG_DATA_HOME="$cache/afl-data"
if ! compgen -G "$XDG_DATA_HOME/afl.rs/rustc-*/afl.rs-$afl_version/afl/bin/afl-fuzz" > /dev/null; then
    cargo afl config --build --force > "$cache/afl-config.log" 2>&1 ||
        { cat "$cache/afl-config.log" >&2; exit 1; }
fi
export CARGO_TARGET_DIR="$cache/fuzz-target"
cargo afl build --release --quiet -p logstream-fuzz --features afl
bin="$CARGO_TARGET_DIR/release/logstream-fuzz"

# No core-dump handler to wait for, no CPU frequency checks, no screen UI.
export AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_SKIP_CPUFREQ=1 AFL_NO_UI=1 \
    AFL_NO_AFFINITY=1 AFL_QUIET=1
failed=0
printf '%-18s %10s %8s %8s %7s %7s %8s\n' target execs exec/s corpus crashes hangs coverage
for t in "${targets[@]}"; do
    out="${FUZZ_OUT:-$cache/fuzz-out}/$t"
    rm -rf "$out"
    mkdir -p "$out"
    cargo afl fuzz -V "$secs" -t 5000 -i "fuzz/corpus/$t" -o "$out" -- "$bin" "$t" \
        > "$out/afl.log" 2>&1 || { cat "$out/afl.log" >&2; failed=1; continue; }
    stats="$out/default/fuzzer_stats"
    val() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$stats"; }
    printf '%-18s %10s %8s %8s %7s %7s %8s\n' "$t" "$(val execs_done)" "$(val execs_per_sec)" \
        "$(val corpus_count)" "$(val saved_crashes)" "$(val saved_hangs)" "$(val bitmap_cvg)"
    for kind in crashes hangs; do
        for f in "$out/default/$kind"/id:*; do
            [[ -e $f ]] || continue
            echo "$t: $kind input $f" >&2
            failed=1
        done
    done
done
exit "$failed"
