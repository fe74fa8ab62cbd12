#!/usr/bin/env bash
# A whole Bard cluster on this machine: a coordinator and N workers on loopback (default N = number of cores),
# trains, fetches the final checkpoint into ./out/, prints a sample, and stops every process it started (also on
# Ctrl-C or when one of them fails). Flags after N go to the coordinator, e.g.
#   scripts/run-local-cluster.sh 2 --epochs 1
#   scripts/run-local-cluster.sh 4 --recipe default
#   scripts/run-local-cluster.sh 2 --data my.txt    # the workers get the same corpus (else their fingerprint differs)
# except --bind: the script owns the address (BARD_PORT sets the port, default 5555), and --shards K, which starts K
# coordinator shards too (bard shard, on the next K ports), so the parameters and the update live on them:
#   scripts/run-local-cluster.sh 2 --shards 2 --epochs 1
# The default recipe, 10m, trains for ten minutes (one-layer LSTM 512 annealed to the deadline; see docs/budget.md),
# plus the build on a fresh machine.
set -euo pipefail
caller=$PWD
cd "$(dirname "$0")/.."

workers=$(nproc)
if [[ $# -gt 0 && "$1" =~ ^[0-9]+$ ]]; then workers=$1; shift; fi
port=${BARD_PORT:-5555}
endpoint="tcp://127.0.0.1:$port"

# The pass-through flags: --bind is refused; --data is taken out and given to the coordinator and the workers alike.
data=
shards=0
flags=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --bind | --bind=*)
            echo "run-local-cluster: --bind is not allowed: the script binds $endpoint (set BARD_PORT to change the port)" >&2
            exit 2 ;;
        --data)
            [[ $# -ge 2 && -n $2 ]] || { echo "run-local-cluster: --data needs a path" >&2; exit 2; }
            data=$2; shift 2 ;;
        --shards)
            [[ $# -ge 2 && $2 =~ ^[1-9][0-9]*$ ]] || { echo "run-local-cluster: --shards needs a positive number" >&2; exit 2; }
            shards=$2; shift 2 ;;
        --shards=*)
            shards=${1#--shards=}
            [[ $shards =~ ^[1-9][0-9]*$ ]] || { echo "run-local-cluster: --shards needs a positive number" >&2; exit 2; }
            shift ;;
        --data=*)
            data=${1#--data=}
            [[ -n $data ]] || { echo "run-local-cluster: --data needs a path" >&2; exit 2; }
            shift ;;
        *) flags+=("$1"); shift ;;
    esac
done
if [[ -n $data ]]; then
    [[ $data == /* ]] || data=$caller/$data  # relative to where the script was started, not the repo root
    [[ -f $data ]] || { echo "run-local-cluster: --data $data: no such file" >&2; exit 2; }
fi

scripts/bootstrap.sh
swift build -c release 2>&1 | tail -1
if [[ -z $data ]]; then
    scripts/get-corpus.sh
    data=data/tinyshakespeare.txt
fi
bard="$(swift build -c release --show-bin-path)/bard"
run=$(mktemp -d "${TMPDIR:-/tmp}/bard-cluster.XXXXXX")
mkdir -p out

pids=()
cleanup() {
    trap - EXIT INT TERM
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'echo "interrupted: stopping the cluster" >&2; exit 130' INT TERM

echo "cluster: coordinator on $endpoint, $workers worker(s), $shards coordinator shard(s); run directory $run"
shard_flags=()
((shards == 0)) || shard_flags=(--shards "$shards")
"$bard" coordinator --bind "$endpoint" --workers "$workers" --data "$data" --out "$run/coordinator" --linger 120 \
    --recipe 10m "${shard_flags[@]}" "${flags[@]}" &
coordinator=$!; pids+=("$coordinator")
watched=("$coordinator")
for ((k = 1; k <= shards; k++)); do
    "$bard" shard --connect "$endpoint" --bind "tcp://127.0.0.1:$((port + k))" --name "shard-$k" 2>>"$run/shards.log" &
    pids+=("$!"); watched+=("$!")
done
"$bard" worker --connect "$endpoint" --count "$workers" --data "$data" 2>"$run/workers.log" &
pool=$!; pids+=("$pool"); watched+=("$pool")
"$bard" fetch --from "$endpoint" --out out --wait --timeout 1000000 2>"$run/fetch.log" &
fetcher=$!; pids+=("$fetcher")

# Wait for the final checkpoint; any process that fails first ends the run.
while kill -0 "$fetcher" 2>/dev/null; do
    for p in "${watched[@]}"; do
        if ! kill -0 "$p" 2>/dev/null; then
            status=0; wait "$p" || status=$?
            if [[ $status -ne 0 ]]; then
                echo "cluster: a process failed (status $status); logs in $run" >&2
                tail -n 5 "$run/workers.log" >&2 || true
                exit 1
            fi
        fi
    done
    sleep 1 & wait $!  # an interruptible wait: a signal to this script alone runs the trap at once
done
wait "$fetcher" || { echo "cluster: fetching the final checkpoint failed; see $run/fetch.log" >&2; exit 1; }
cat "$run/fetch.log" >&2 || true
kill -INT "$coordinator" 2>/dev/null || true
wait "$coordinator" 2>/dev/null || true
"$bard" inspect out/model.safetensors
echo
"$bard" sample --checkpoint out/model.safetensors --length 600 --prime "ROMEO:"
