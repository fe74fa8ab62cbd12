#!/usr/bin/env bash
# Runs the libFuzzer targets (Tests/Fuzz) for a bounded time each: the cluster frame decoder and the safetensors
# reader, built with --sanitize=fuzzer and AddressSanitizer (a debug build: in release builds SwiftPM's optimised
# code showed libFuzzer no coverage to work with). A crash, a sanitizer report or a failed round trip
# fails the run and leaves the input that caused it in the printed directory.
#   scripts/fuzz.sh [SECONDS per target, default 30]
set -euo pipefail
cd "$(dirname "$0")/../Tests/Fuzz"
seconds=${1:-30}
[[ $seconds =~ ^[0-9]+$ && $seconds -gt 0 ]] || { echo "fuzz: SECONDS must be a positive integer" >&2; exit 64; }

swift build --sanitize=fuzzer --sanitize=address 2>&1 | grep -E "error|warning: unre|Compiling Fuzz|Build" || true
bin=$(swift build --sanitize=fuzzer --sanitize=address --show-bin-path)
work=$(mktemp -d "${TMPDIR:-/tmp}/bard-fuzz.XXXXXX")
status=0
for target in FuzzFrames FuzzSafetensors; do
    mkdir -p "$work/$target"
    log="$work/$target.log"
    if "$bin/$target" -max_total_time="$seconds" -max_len=4096 -rss_limit_mb=4096 -timeout=10 \
        -artifact_prefix="$work/$target/" "$work/$target" >"$log" 2>&1; then
        echo "fuzz: $target ok: $(grep -Eo '^Done [0-9]+ runs' "$log" | head -1 | cut -d' ' -f2) runs in ${seconds} s, $(grep -E 'DONE' "$log" | grep -Eo 'cov: [0-9]+' | tail -1) edges covered"
    else
        echo "fuzz: $target FAILED; log $log, crashing input in $work/$target/" >&2
        tail -n 30 "$log" >&2
        status=1
    fi
done
if [[ $status -eq 0 ]]; then rm -rf "$work"; fi
exit $status
