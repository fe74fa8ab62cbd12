#!/usr/bin/env bash
# The main job on one machine: install what is missing, build, get the corpus, train with the default recipe
# (or whatever flags you pass, e.g. --epochs 1 or --recipe book), then print a sample of the trained model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
swift build -c release
scripts/get-corpus.sh
bard="$(swift build -c release --show-bin-path)/bard"
out=out
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do [[ "${args[i]}" == --out ]] && out="${args[i + 1]}"; done
"$bard" train --data data/tinyshakespeare.txt "$@"
echo
"$bard" sample --checkpoint "$out/model.safetensors" --length 600 --prime "ROMEO:"
