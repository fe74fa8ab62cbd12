#!/usr/bin/env bash
# Runs the libFuzzer targets (Tests/Fuzz) for a bounded time each: the cluster frame decoder and the safetensors
# reader, built with --sanitize=fuzzer and AddressSanitizer (a debug build). SwiftPM's --sanitize alone left some
# fresh builds without coverage instrumentation, so the flags also go to every compile with -Xswiftc, and a run
# that reaches fewer than 100 edges fails: a fuzzer without coverage would pass while testing nothing. A crash, a sanitizer report or a failed round trip
# fails the run and leaves the input that caused it in the printed directory.
#   scripts/fuzz.sh [SECONDS per target, default 30]
set -euo pipefail
cd "$(dirname "$0")/../Tests/Fuzz"
seconds=${1:-30}
[[ $seconds =~ ^[0-9]+$ && $seconds -gt 0 ]] || { echo "fuzz: SECONDS must be a positive integer" >&2; exit 64; }

flags=(--sanitize=fuzzer --sanitize=address -Xswiftc "-sanitize=fuzzer,address")
swift build "${flags[@]}" 2>&1 | grep -E "error|warning: unre|Compiling Fuzz|Build" || true
bin=$(swift build "${flags[@]}" --show-bin-path)
work=$(mktemp -d "${TMPDIR:-/tmp}/bard-fuzz.XXXXXX")
status=0
for target in FuzzFrames FuzzSafetensors; do
    mkdir -p "$work/$target"
    log="$work/$target.log"
    if "$bin/$target" -max_total_time="$seconds" -max_len=4096 -rss_limit_mb=4096 -timeout=10 \
        -artifact_prefix="$work/$target/" "$work/$target" >"$log" 2>&1; then
        edges=$(grep -E 'DONE' "$log" | grep -Eo 'cov: [0-9]+' | tail -1 | cut -d' ' -f2)
        runs=$(grep -Eo '^Done [0-9]+ runs' "$log" | head -1 | cut -d' ' -f2)
        if [[ ${edges:-0} -lt 100 ]]; then
            echo "fuzz: $target FAILED: only ${edges:-0} edges covered (is the build instrumented?); log $log" >&2
            status=1
        else
            echo "fuzz: $target ok: $runs runs in ${seconds} s, $edges edges covered"
        fi
    else
        echo "fuzz: $target FAILED; log $log, crashing input in $work/$target/" >&2
        tail -n 30 "$log" >&2
        status=1
    fi
done
if [[ $status -eq 0 ]]; then rm -rf "$work"; fi
exit $status
