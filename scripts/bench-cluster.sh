#!/usr/bin/env bash
# Data-parallel speed on this machine, side by side in one run: the coordinator with 1..4 workers x 1 thread
# (Embedding 512 -> LSTM 512 -> Linear, bptt 25), with 32 columns in all and with 32 columns per worker, plus
# bytes moved per step and the coordinator's own share of a step (send + reduce + update).
#   scripts/bench-cluster.sh [STEPS] [MAX_WORKERS]
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-40}
max=${2:-4}
swift build -c release 2>&1 | tail -1
scripts/get-corpus.sh >/dev/null
bard="$(swift build -c release --show-bin-path)/bard"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/bard-bench.XXXXXX")
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT

run() {  # workers batch -> one JSON line
    local workers=$1 batch=$2 port=$((5700 + RANDOM % 200)) out="$tmp/w$1-b$2"
    "$bard" coordinator --bind "tcp://127.0.0.1:$port" --workers "$workers" --data data/tinyshakespeare.txt --out "$out" \
        --layers 1 --embed 512 --hidden 512 --dropout 0 --bptt 25 --batch "$batch" --optimizer sgd --lr 0.05 --clip 5 \
        --steps "$steps" --checkpoint-every 0 --sample-length 0 >"$out.log" 2>&1 &
    local c=$!
    "$bard" worker --connect "tcp://127.0.0.1:$port" --count "$workers" >"$out.workers.log" 2>&1 &
    local w=$!
    wait "$c"; wait "$w" || true
    python3 - "$out/metrics.jsonl" "$workers" "$batch" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
rows = rows[5:-1]  # skip warm-up and the last step (validation, checkpoint)
dts = [b["time"] - a["time"] for a, b in zip(rows, rows[1:])]
chars = rows[1]["chars"] - rows[0]["chars"]
step = statistics.median(dts)
own = statistics.median([r["send_s"] + r["reduce_s"] + r["update_s"] for r in rows[1:]])
bytes_per_step = (rows[-1]["bytes_moved"] - rows[0]["bytes_moved"]) / (len(rows) - 1)
print(json.dumps({"workers": int(sys.argv[2]), "columns": int(sys.argv[3]), "chars_per_s": round(chars / step),
                  "step_ms": round(step * 1000, 1), "compute_ms": round(1000 * statistics.median(r["compute_s"] for r in rows[1:]), 1),
                  "coordinator_own_ms": round(own * 1000, 1), "coordinator_share": round(own / step, 3),
                  "mb_per_step": round(bytes_per_step / 1e6, 2)}))
PY
}

echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); BLAS $("$bard" bench --steps 1 --gen-chars 1 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["blas_core"])')"
for w in $(seq 1 "$max"); do run "$w" 32; done
for w in 1 2; do run "$w" $((32 * w)); done

# PyTorch DistributedDataParallel (gloo) on the same machine, the comparison issue 3 quotes (1.40x on the reference).
venv=${BARD_TORCH_VENV:-/tmp/tv}
torch_bench=../shared/bench/pytorch_lstm_bench.py
if [[ -f $torch_bench ]] && "$venv/bin/python" -c 'import torch' 2>/dev/null; then
    export BARD_CORPUS=$PWD/data/tinyshakespeare.txt
    one=$("$venv/bin/python" "$torch_bench" train --threads 1 --steps "$steps" | grep RESULT)
    ddp=$("$venv/bin/python" "$torch_bench" ddp --world 2 --threads 1 --steps "$steps" | grep RESULT)
    python3 - "$one" "$ddp" <<'PY'
import json, re, sys
cps = [int(re.search(r": ([\d,]+) chars/s", s).group(1).replace(",", "")) for s in sys.argv[1:]]
print(json.dumps({"pytorch_1_process_32_columns": cps[0], "pytorch_ddp_2x16_columns": cps[1], "ddp_ratio": round(cps[1] / cps[0], 2)}))
PY
else
    echo "(no PyTorch at $venv or no $torch_bench: DDP comparison skipped; scripts/bench-vs-pytorch.sh creates the venv)"
fi
