#!/usr/bin/env bash
# Bard against PyTorch on this machine, interleaved: each round runs `bard bench` and ../shared/bench/pytorch_lstm_bench.py
# one after the other for training with 1 and 2 threads and for batch-1 generation, so that both see the same load.
# This host's speed drifts by up to 30% within minutes; only ratios from the same rounds mean anything.
# With --avx2 both are held to AVX2 and FMA, as on a CPU without AVX-512 (Zen 3): Bard through OpenBLAS's Haswell
# kernels, PyTorch through ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS and ONEDNN_MAX_CPU_ISA.
#   scripts/bench-vs-pytorch.sh [ROUNDS] [--avx2]   (PyTorch venv: $BARD_TORCH_VENV, default /tmp/tv; created when missing)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=5 torch_env=()
for arg in "$@"; do
    case $arg in
        --avx2) export OPENBLAS_CORETYPE=Haswell
                torch_env=(ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2) ;;
        *) [[ $arg =~ ^[1-9][0-9]*$ ]] || { echo "bench-vs-pytorch: expected ROUNDS (a positive integer) or --avx2, got '$arg'" >&2; exit 2; }
           rounds=$arg ;;
    esac
done
torch_bench=../shared/bench/pytorch_lstm_bench.py
[[ -f $torch_bench ]] || { echo "bench-vs-pytorch: $torch_bench is missing (it lives in ../shared beside the checkout)" >&2; exit 2; }
venv=${BARD_TORCH_VENV:-/tmp/tv}
if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
    python3 -m venv "$venv"
    # The +cpu wheel is not on PyPI: this machine kind serves it from its local wheel folder (pip's find-links).
    "$venv/bin/pip" install -q torch==2.13.0+cpu numpy
fi
swift build -c release 2>&1 | tail -1
scripts/get-corpus.sh >/dev/null
bard="$(swift build -c release --show-bin-path)/bard"
export BARD_CORPUS=$PWD/data/tinyshakespeare.txt
log=$(mktemp "${TMPDIR:-/tmp}/bard-vs-torch.XXXXXX")
trap 'rm -f "$log"' EXIT

echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
[[ ${#torch_env[@]} -eq 0 ]] || echo "AVX2 only: Bard on OpenBLAS's Haswell kernels, PyTorch with ${torch_env[*]}"
# One measurement into the log, or a one-line error naming the command that failed.
measure() {  # label command...
    local label=$1 out
    shift
    out=$("$@" 2>&1 | grep -E '^\{|RESULT') || { echo "bench-vs-pytorch: '$*' failed" >&2; exit 1; }
    echo "$label $out" >>"$log"
}
for r in $(seq 1 "$rounds"); do
    for t in 1 2; do
        measure "bard train $t" "$bard" bench --threads "$t" --gen-chars 1 --json
        measure "torch train $t" env "${torch_env[@]}" "$venv/bin/python" "$torch_bench" train --threads "$t"
    done
    measure "bard gen 1" "$bard" bench --steps 1 --json
    # oneDNN off, as in the reference row: PyTorch's batch-1 generation is 15x slower with it on.
    measure "torch gen 1" env "${torch_env[@]}" "$venv/bin/python" "$torch_bench" gen --threads 1 --no-mkldnn
    echo "round $r of $rounds done; load $(cut -d' ' -f1 /proc/loadavg)" >&2
done

python3 - "$log" <<'PY'
import json, os, re, statistics, sys
runs, cores = {}, set()
for line in open(sys.argv[1]):
    who, mode, threads, rest = line.split(" ", 3)
    if who == "bard":
        o = json.loads(rest)
        v = o["train_chars_per_s"] if mode == "train" else o["generate_chars_per_s"]
        cores.add(o.get("blas_core", "unknown"))
    else:  # PyTorch prints "N chars/s (median-step M)" for training, "N chars/s" for generation
        m = re.search(r"median-step ([\d,]+)", rest) if mode == "train" else re.search(r": ([\d,]+) chars/s", rest)
        v = int(m.group(1).replace(",", ""))
    runs.setdefault((mode, threads), {}).setdefault(who, []).append(v)
print(f"{'measure':<22}{'Bard median':>13}{'PyTorch median':>16}{'ratio of medians':>18}{'per-round ratios':>30}")
for (mode, threads), r in runs.items():
    b, t = r["bard"], r["torch"]
    per = ", ".join(f"{x / y:.2f}" for x, y in zip(b, t))
    name = f"{mode}, {threads} thread{'s' if threads != '1' else ''}" if mode == "train" else "generate, batch 1"
    print(f"{name:<22}{statistics.median(b):>13,.0f}{statistics.median(t):>16,.0f}{statistics.median(b) / statistics.median(t):>18.2f}   {per}")
print("(chars/s; training is the median step of 40, batch 32, bptt 25, Embedding 512 -> LSTM 512 -> Linear)")
print(f"Bard's OpenBLAS kernels: {', '.join(sorted(cores))}"
      + (f" (OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']} in the environment overrides Bard's own choice)"
         if os.environ.get("OPENBLAS_CORETYPE") else " (Bard's own choice)"))
PY
