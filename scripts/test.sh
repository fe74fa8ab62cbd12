#!/usr/bin/env bash
# The test command: install what the build and the tests need (scripts/bootstrap.sh --test), build, run the Swift
# suite, check deploy/ offline, fuzz the two decoders of outside bytes for BARD_FUZZ_SECONDS (default 30) each, and run
# the Python tests (the independent numpy checks, get-corpus.sh's source order).
# BARD_SLOW=1 (set by CI) also runs the slow multi-process tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --test
swift build -c release
swift test -c release
deploy/check.sh
scripts/fuzz.sh "${BARD_FUZZ_SECONDS:-30}"
BARD_BIN="$(swift build -c release --show-bin-path)/bard" python3 -m pytest -q -p no:cacheprovider Tests/python
