#!/usr/bin/env bash
# The tax of the local cluster (issue 12), side by side in one run: one `bard train --threads 2` process against a
# coordinator with 2 one-thread workers on this machine (through shared memory, and with --no-shm through ZeroMQ
# messages), same model (Embedding 512 -> LSTM 512 -> Linear, Adam, clip
# 5, no dropout), 32 columns in all, for bptt 25 and 50. Rounds interleave the two so both see the same load; each
# figure is the median over rounds of a run's median step time (after 5 warm-up steps). The process and the cluster
# on shared memory run back to back, in alternating order from round to round, and each round's ratio is printed too,
# with their median: the machine's speed drifts by tens of percent within minutes, which moves the two runs of a round
# about alike. The --no-shm run comes third. Last, where a cluster step on shared memory goes, phase by phase.
#   scripts/bench-local.sh [STEPS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-40}
rounds=${2:-3}
[[ $steps =~ ^[1-9][0-9]*$ && $steps -ge 10 && $rounds =~ ^[1-9][0-9]*$ ]] || {
    echo "bench-local: STEPS must be an integer >= 10 and ROUNDS a positive integer" >&2; exit 2; }
swift build -c release 2>&1 | tail -1
scripts/get-corpus.sh >/dev/null
bard="$(swift build -c release --show-bin-path)/bard"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/bard-local.XXXXXX")
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
model=(--data data/tinyshakespeare.txt --layers 1 --embed 512 --hidden 512 --dropout 0 --batch 32 --optimizer adam
       --lr 0.002 --clip 5 --steps "$steps" --checkpoint-every 0 --sample-length 0 --val-fraction 0.01)

chars_per_s() {  # metrics.jsonl -> chars/s from the median step time after 5 warm-up steps
    python3 - "$1" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])][5:-1]
dts = [b["time"] - a["time"] for a, b in zip(rows, rows[1:])]
print(round((rows[1]["chars"] - rows[0]["chars"]) / statistics.median(dts)))
PY
}

phases() {  # metrics.jsonl -> the median ms of each phase of the coordinator's step (after 5 warm-up steps), one line
    python3 - "$1" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])][5:-1]
names = ["compute", "communication", "table", "send", "reduce", "update"]
print(" ".join(f"{n}={1e3 * statistics.median(r[n + '_s'] for r in rows):.2f}" for n in names if n + "_s" in rows[0]))
PY
}

single() {  # bptt -> chars/s
    local out="$tmp/single-$1"
    rm -rf "$out"
    "$bard" train "${model[@]}" --bptt "$1" --threads 2 --out "$out" >"$out.log" 2>&1 \
        || { echo "bench-local: bard train failed; see $out.log" >&2; exit 1; }
    chars_per_s "$out/metrics.jsonl"
}

cluster() {  # bptt [--no-shm] -> chars/s
    local out="$tmp/cluster-$1${2:-}" port=$((5800 + RANDOM % 200))
    rm -rf "$out"
    "$bard" coordinator --bind "tcp://127.0.0.1:$port" --workers 2 "${model[@]}" --bptt "$1" --out "$out" ${2:-} >"$out.log" 2>&1 &
    local c=$!
    "$bard" worker --connect "tcp://127.0.0.1:$port" --count 2 ${2:-} >"$out.workers.log" 2>&1 &
    local w=$!
    wait "$c" || { echo "bench-local: the coordinator failed; see $out.log" >&2; exit 1; }
    wait "$w" || true
    phases "$out/metrics.jsonl" >>"$tmp/phases-$1${2:-}"
    chars_per_s "$out/metrics.jsonl"
}

echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, avx512f: $(grep -qw avx512f /proc/cpuinfo && echo yes || echo no)"
kernels=$("$bard" bench --steps 1 --gen-chars 1 --batch 2 --embed 8 --hidden 8 --json | sed -n 's/.*"blas_core": "\([^"]*\)".*/\1/p')
if [[ -n ${OPENBLAS_CORETYPE:-} ]]; then
    echo "OpenBLAS kernels: $kernels (OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE in the environment overrides Bard's own choice)"
else
    echo "OpenBLAS kernels: $kernels (Bard's own choice)"
fi
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
declare -A results
for r in $(seq 1 "$rounds"); do
    for bptt in 25 50; do
        # The pair in alternating order (AB in odd rounds, BA in even ones), so that over pairs of rounds a steady
        # drift of the machine's speed favours neither side.
        if (( r % 2 )); then
            results[single-$bptt]+="$(single "$bptt") "
            results[cluster-$bptt]+="$(cluster "$bptt") "
        else
            results[cluster-$bptt]+="$(cluster "$bptt") "
            results[single-$bptt]+="$(single "$bptt") "
        fi
        results[messages-$bptt]+="$(cluster "$bptt" --no-shm) "
    done
    echo "round $r done (load $(cut -d' ' -f1 /proc/loadavg))"
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| bptt | one process, 2 threads (chars/s) | coordinator + 2 workers x 1 thread, shared memory | cluster / process | per-round ratios (median) | the same by messages (--no-shm) | messages / process |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for bptt in 25 50; do
    python3 - "$bptt" "${results[single-$bptt]}" "${results[cluster-$bptt]}" "${results[messages-$bptt]}" <<'PY'
import statistics, sys
s, c, m = (statistics.median(int(x) for x in a.split()) for a in sys.argv[2:5])
rounds = [int(cluster) / int(single) for single, cluster in zip(sys.argv[2].split(), sys.argv[3].split())]
print(f"| {sys.argv[1]} | {s:,} ({sys.argv[2].strip()}) | {c:,} ({sys.argv[3].strip()}) | {c / s:.2f}x "
      f"| {', '.join(f'{x:.2f}' for x in rounds)} ({statistics.median(rounds):.2f}x) "
      f"| {m:,} ({sys.argv[4].strip()}) | {m / s:.2f}x |")
PY
done
echo
echo "Where a cluster step goes, shared memory (ms; the median over rounds of each run's median):"
for bptt in 25 50; do
    python3 - "$bptt" "$tmp/phases-$bptt" <<'PY'
import statistics, sys
runs = [dict(kv.split("=") for kv in line.split()) for line in open(sys.argv[2]) if line.strip()]
print(f"  bptt {sys.argv[1]}: " + ", ".join(f"{n} {statistics.median(float(r[n]) for r in runs):.2f}" for n in runs[0]))
PY
done
