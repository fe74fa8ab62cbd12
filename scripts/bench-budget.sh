#!/usr/bin/env bash
# Training to a deadline on this machine (issue 13): each budget recipe (10m, 30m, 60m) trains on tinyshakespeare
# (90/10) with all cores, then the final checkpoint is evaluated on the held-out 10% with `bard eval` (32 columns, as
# the PyTorch reference evaluates), and the validation loss, the wall time and the target are printed side by side.
#   scripts/bench-budget.sh [10m|30m|60m ...] [-- extra bard train flags]
# Targets: 10m <= 1.48, 30m <= 1.44, 60m <= 1.41 nats/char, each within its budget + 5% of wall time. All three take
# about 1 h 45 min. Results go to out/budget/RECIPE/ (metrics.jsonl, model, log) and the curves to out/budget/budget.svg.
set -euo pipefail
cd "$(dirname "$0")/.."

declare -A target=([10m]=1.48 [30m]=1.44 [60m]=1.41)
declare -A seconds=([10m]=600 [30m]=1800 [60m]=3600)
recipes=()
while [[ $# -gt 0 && $1 != -- ]]; do
    [[ -n ${target[$1]:-} ]] || { echo "bench-budget: unknown recipe '$1' (known: 10m 30m 60m)" >&2; exit 2; }
    recipes+=("$1"); shift
done
[[ ${1:-} != -- ]] || shift
extra=("$@")
((${#recipes[@]})) || recipes=(10m 30m 60m)

scripts/bootstrap.sh >/dev/null
swift build -c release 2>&1 | tail -1
scripts/get-corpus.sh >/dev/null
bard="$(swift build -c release --show-bin-path)/bard"
threads=$(nproc)
pid=
stop() { [[ -z $pid ]] || { kill -INT "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }; }
trap stop EXIT
trap 'stop; echo "bench-budget: interrupted" >&2; exit 130' INT TERM

echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'), $threads threads, avx512f: $(grep -qw avx512f /proc/cpuinfo && echo yes || echo no)"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
results=()
for recipe in "${recipes[@]}"; do
    out=out/budget/$recipe
    rm -rf "$out"
    mkdir -p "$out"
    echo "== --recipe $recipe: target validation <= ${target[$recipe]} nats/char within ${seconds[$recipe]} s + 5%"
    t0=$(date +%s.%N)
    "$bard" train --recipe "$recipe" --data data/tinyshakespeare.txt --threads "$threads" --out "$out" \
        --sample-length 0 "${extra[@]}" >"$out/train.log" 2>&1 &
    pid=$!
    wait "$pid" || { echo "bench-budget: $recipe failed; see $out/train.log" >&2; tail -3 "$out/train.log" >&2; exit 1; }
    pid=
    wall=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.0f}')" "$t0" "$(date +%s.%N)")
    grep -a "^model:\|^train:" "$out/train.log"
    "$bard" eval --checkpoint "$out/model.safetensors" --data data/tinyshakespeare.txt --json >"$out/eval.json"
    results+=("$(python3 - "$out" "$recipe" "${target[$recipe]}" "${seconds[$recipe]}" "$wall" "$(cut -d' ' -f1 /proc/loadavg)" <<'PY'
import json, sys
out, recipe, target, budget, wall, load = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
rows = [json.loads(l) for l in open(f"{out}/metrics.jsonl")]
val = json.load(open(f"{out}/eval.json"))["loss"]
last = rows[-1]
ok = val <= target and wall <= budget * 1.05
print(f"| {recipe} | {val:.4f} | {target} | {wall:.0f} s of {budget:.0f} | {last['step']} | {last['chars'] / 1e6:.1f} M "
      f"| {last['chars_per_s']:.0f} | {load} | {'yes' if ok else 'NO'} |")
PY
)")
    echo "${results[-1]}"
done

echo
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| recipe | val loss (bard eval, 32 columns) | target | wall time | steps | chars | chars/s | load at end | met |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
printf '%s\n' "${results[@]}"
plot=(--output out/budget/budget.svg --title "Bard's budget recipes on tinyshakespeare (2 cores)")
if [[ -f ../shared/reference/pytorch_curves_h100.jsonl ]]; then
    plot+=(--reference ../shared/reference/pytorch_curves_h100.jsonl --reference-config adam_1x512_b32_t50
           --reference-config adam_2x512_do25_b32_t50 --reference-config adam_3x512_do35_b32_t100)
fi
metrics=()
for recipe in "${recipes[@]}"; do metrics+=("out/budget/$recipe/metrics.jsonl"); done
"$bard" plot "${metrics[@]}" "${plot[@]}" && echo "curves: out/budget/budget.svg"
