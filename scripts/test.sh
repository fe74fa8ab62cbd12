#!/usr/bin/env bash
# The test command: install what the build needs, build, run the Swift suite and the independent numpy checks.
# BARD_SLOW=1 (set by CI) also runs the slow multi-process tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
swift build -c release
swift test -c release
deploy/check.sh
BARD_BIN="$(swift build -c release --show-bin-path)/bard" python3 -m pytest -q -p no:cacheprovider Tests/python
