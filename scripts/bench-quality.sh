#!/usr/bin/env bash
# Issue 2's quality benchmark on tinyshakespeare (90/10 split): each recipe trains until its validation loss reaches the
# target or its epoch budget ends (Ctrl-C-style stop, so the checkpoint is written), then the validation loss by epoch,
# the wall time and a plot against the PyTorch reference curves (../shared/reference, when present) are reported.
#   scripts/bench-quality.sh [RECIPE...] [-- extra bard train flags]
# Recipes and targets: default <= 1.45, adam_1x512_b32_t50 <= 1.50 within 7 epochs, book <= 1.56 within 6 epochs.
# Hours on 2 cores (about 1 h, 20 min and 40 min); results go to out/quality/RECIPE/ and out/quality/RECIPE.svg.
set -euo pipefail
cd "$(dirname "$0")/.."

declare -A target=([default]=1.45 [adam_1x512_b32_t50]=1.50 [book]=1.56)
declare -A reference=([default]=adam_2x512_do25_b32_t50 [adam_1x512_b32_t50]=adam_1x512_b32_t50 [book]=book_sgd_b16_t25)
recipes=()
while [[ $# -gt 0 && $1 != -- ]]; do
    [[ -n ${target[$1]:-} ]] || { echo "bench-quality: unknown recipe '$1' (known: ${!target[*]})" >&2; exit 2; }
    recipes+=("$1"); shift
done
[[ ${1:-} != -- ]] || shift
extra=("$@")
((${#recipes[@]})) || recipes=(adam_1x512_b32_t50 book default)

scripts/bootstrap.sh
swift build -c release 2>&1 | tail -1
scripts/get-corpus.sh >/dev/null
bard="$(swift build -c release --show-bin-path)/bard"
threads=$(nproc)
pid=
# Ctrl-C or SIGTERM stops the recipe in training (it checkpoints) and the whole benchmark, not just that recipe.
stop() { [[ -z $pid ]] || { kill -INT "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }; }
trap stop EXIT
trap 'stop; echo "bench-quality: interrupted" >&2; exit 130' INT TERM

echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg); $threads threads"
for recipe in "${recipes[@]}"; do
    out=out/quality/$recipe
    rm -rf "$out"
    mkdir -p "$out"
    echo "== $recipe: target validation <= ${target[$recipe]} nats/char"
    "$bard" train --recipe "$recipe" --data data/tinyshakespeare.txt --threads "$threads" --out "$out" \
        --sample-length 0 "${extra[@]}" >"$out.log" 2>&1 &
    pid=$!
    # Stop at the first epoch whose validation reaches the target (SIGINT checkpoints, then exits 0).
    while kill -0 "$pid" 2>/dev/null; do
        sleep 10
        if [[ -f $out/metrics.jsonl ]] && python3 - "$out/metrics.jsonl" "${target[$recipe]}" <<'PY'
import json, sys
vals = [json.loads(l).get("val_loss") for l in open(sys.argv[1]) if l.strip().endswith("}")]
sys.exit(0 if any(v is not None and v <= float(sys.argv[2]) for v in vals) else 1)
PY
        then
            kill -INT "$pid" 2>/dev/null || true
            break
        fi
    done
    wait "$pid" || { echo "bench-quality: $recipe failed; see $out.log" >&2; tail -3 "$out.log" >&2; exit 1; }
    pid=
    python3 - "$out/metrics.jsonl" "${target[$recipe]}" "$recipe" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
epochs = [(r["epoch"], r["val_loss"], r["time"]) for r in rows if "val_loss" in r]
if not epochs:
    sys.exit(f"{sys.argv[3]}: stopped before its first validation ({len(rows)} steps)")
best = min(v for _, v, _ in epochs)
print("epoch  val loss  wall s")
for e, v, t in epochs:
    print(f"{e:>5}  {v:8.4f}  {t:6.0f}")
verdict = "reached" if best <= float(sys.argv[2]) else "NOT reached"
print(f"{sys.argv[3]}: best validation {best:.4f} nats/char (target <= {sys.argv[2]}: {verdict}), {rows[-1]['time']:.0f} s")
PY
    plot=(--output "$out.svg" --title "Bard $recipe on tinyshakespeare")
    if [[ -f ../shared/reference/pytorch_curves_h100.jsonl ]]; then
        plot+=(--reference ../shared/reference/pytorch_curves_h100.jsonl --reference-config "${reference[$recipe]}")
    fi
    "$bard" plot "$out/metrics.jsonl" "${plot[@]}" && echo "curve: $out.svg"
done
