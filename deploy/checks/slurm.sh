#!/usr/bin/env bash
# Runs deploy/slurm/bard.sbatch on this machine with fake `scontrol`, `srun` and
# `bard` on PATH (no Slurm, no real bard): checks the orchestration, not
# training. Scenarios:
#   ok         2 nodes x 2 workers: coordinator on the first node with
#              --workers 4 and --auto-resume, 4 workers connect to it, the
#              result is fetched into the submit dir, per-job keys removed,
#              exit 0
#   crash      the coordinator fails at start: the job fails fast, nothing left running
#   signal     SIGTERM to the job (scancel, time limit): the coordinator gets
#              SIGTERM (checkpoint), the job exits 143, nothing left running
#   sharded    BARD_SHARDS=1: a shard key is made, one coordinator shard per
#              node joins a coordinator started with --shards 2, exit 0
# Prints one line per failed expectation; exits 1 if any.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
script=$root/deploy/slurm/bard.sbatch
tmp=$(mktemp -d "${TMPDIR:-/tmp}/bard-slurm-check.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin"

# scontrol show hostnames LIST: the fake allocation's nodes, one per line.
cat >"$tmp/bin/scontrol" <<'EOF'
#!/usr/bin/env bash
[[ $1 == show && $2 == hostnames ]] || { echo "fake scontrol: unexpected $*" >&2; exit 2; }
printf '%s\n' $FAKE_NODES
EOF

# srun: runs the step's tasks here, as background processes; logs its options.
cat >"$tmp/bin/srun" <<'EOF'
#!/usr/bin/env bash
ntasks=1 nodelist=
args=("$@")
while [[ $# -gt 0 && $1 == -* ]]; do
    case $1 in
        --ntasks=*) ntasks=${1#*=} ;;
        --nodelist=*) nodelist=${1#*=} ;;
        --nodes=*|--ntasks-per-node=*|--cpus-per-task=*|--overlap|--kill-on-bad-exit=*) ;;
        *) echo "fake srun: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
echo "srun ${args[*]}" >>"$FAKE_LOG"
kids=()
trap 'kill -TERM "${kids[@]}" 2>/dev/null' TERM INT
for ((i = 0; i < ntasks; i++)); do
    SLURM_PROCID=$i SLURMD_NODENAME=${nodelist:-node} "$@" &
    kids+=($!)
done
rc=0
for k in "${kids[@]}"; do
    while :; do
        s=0; wait "$k" || s=$?
        kill -0 "$k" 2>/dev/null || break   # wait was interrupted by the trap
    done
    ((s > rc)) && rc=$s
done
exit $rc
EOF

# bard: just enough of the protocol, through files in $FAKE_RUN.
cat >"$tmp/bin/bard" <<'EOF'
#!/usr/bin/env bash
cmd=$1; shift
opt() { local want=$1; shift; while [[ $# -gt 0 ]]; do [[ $1 == "$want" ]] && { echo "$2"; return; }; shift; done; }
echo "bard $cmd $*" >>"$FAKE_LOG"
case $cmd in
keys)
    out=$(opt --out "$@"); mkdir -p "$out"
    client=$(opt --client "$@")
    if [[ -n $client ]]; then touch "$out/$client.key" "$out/$client.pub"
    else touch "$out"/{coordinator.key,coordinator.pub,client.key,client.pub,authorized_keys}; fi ;;
coordinator)
    [[ ${FAKE_COORDINATOR_FAIL:-0} == 1 ]] && { echo "fake coordinator: failing" >&2; exit 1; }
    trap 'echo "coordinator: SIGTERM" >>"$FAKE_LOG"; exit 130' TERM
    want=$(opt --workers "$@"); out=$(opt --out "$@"); shards=$(opt --shards "$@")
    until (($(find "$FAKE_RUN" -name 'shard-*' | wc -l) >= ${shards:-0})); do sleep 0.1; done
    until (($(find "$FAKE_RUN" -name 'worker-*' | wc -l) >= want)); do sleep 0.1; done
    [[ ${FAKE_NEVER_FINISH:-0} == 1 ]] && while :; do sleep 0.1; done
    echo weights >"$out/model.safetensors"; touch "$FAKE_RUN/done"
    for ((i = 0; i < 600; i++)); do sleep 0.1; done ;;   # --linger
worker)
    connect=$(opt --connect "$@")
    touch "$FAKE_RUN/worker-$SLURMD_NODENAME-$$-${connect//\//_}"
    trap 'exit 130' TERM
    until [[ -e $FAKE_RUN/done ]]; do sleep 0.1; done ;;
shard)
    [[ -e $(opt --key-file "$@") ]] || { echo "fake shard: no key file" >&2; exit 1; }
    touch "$FAKE_RUN/shard-$SLURMD_NODENAME-$$"
    trap 'exit 130' TERM
    until [[ -e $FAKE_RUN/done ]]; do sleep 0.1; done ;;
fetch)
    trap 'exit 130' TERM
    until [[ -e $FAKE_RUN/done ]]; do sleep 0.1; done
    out=$(opt --out "$@"); mkdir -p "$out"; echo weights >"$out/model.safetensors" ;;
*) echo "fake bard: unexpected $cmd" >&2; exit 2 ;;
esac
EOF
chmod +x "$tmp/bin/"*

failures=0
expect() {   # expect DESCRIPTION COMMAND...
    if ! "${@:2}"; then echo "slurm $scenario: $1"; failures=$((failures + 1)); fi
}

setup() {   # a fresh submit dir and run dir for one scenario
    scenario=$1
    sub=$tmp/$scenario
    mkdir -p "$sub/data" "$sub/run"
    echo "To be, or not to be" >"$sub/data/tinyshakespeare.txt"
    : >"$sub/log"
    export PATH="$tmp/bin:$PATH" FAKE_NODES="n1 n2" FAKE_LOG=$sub/log FAKE_RUN=$sub/run \
        SLURM_JOB_ID=4242 SLURM_SUBMIT_DIR=$sub SLURM_JOB_NODELIST="n[1-2]" SLURM_JOB_NUM_NODES=2 \
        SLURM_NTASKS=4 SLURM_NTASKS_PER_NODE=2 BARD=bard
    unset BARD_DATA BARD_STATE BARD_RESULT BARD_KEYS BARD_PORT BARD_LINGER BARD_SHARDS FAKE_COORDINATOR_FAIL FAKE_NEVER_FINISH
}

no_leftovers() { ! pgrep -f "$tmp/bin/" >/dev/null; }
logged() { grep -qE -- "$1" "$sub/log"; }

# --- ok ---
setup ok
rc=0; (cd "$sub" && timeout 60 bash "$script" --epochs 1) >"$sub/out" 2>&1 || rc=$?
expect "exit status $rc, expected 0: $(tail -n 3 "$sub/out" | tr '\n' ' ')" test "$rc" -eq 0
expect "coordinator not started on n1 with --overlap" logged '^srun .*--nodelist=n1 .*--overlap .*bard coordinator'
expect "coordinator flags wrong" logged "^bard coordinator --data $sub/data/tinyshakespeare.txt --bind tcp://0.0.0.0:28484 --workers 4 --out $sub/bard-state --auto-resume --keys $sub/.bard-keys-4242 --metrics 0.0.0.0:28485 --linger 600 --epochs 1\$"
expect "workers step wrong" logged '^srun --ntasks=4 --ntasks-per-node=2 --cpus-per-task=1 .*bard worker --connect tcp://n1:28484 '
expect "not 4 workers connected to tcp://n1:28484" \
    test "$(find "$sub/run" -name 'worker-*-tcp:__n1:28484' | wc -l)" -eq 4
expect "no fetch --wait into the submit dir" logged "^bard fetch --from tcp://n1:28484 --keys $sub/.bard-keys-4242 --out $sub/bard-result-4242 --wait"
expect "result missing" test -s "$sub/bard-result-4242/model.safetensors"
expect "lingering coordinator not stopped" logged '^coordinator: SIGTERM'
expect "per-job keys left behind" test ! -e "$sub/.bard-keys-4242"
expect "processes left running" no_leftovers

# --- crash ---
setup crash
export FAKE_COORDINATOR_FAIL=1
rc=0; (cd "$sub" && timeout 30 bash "$script") >"$sub/out" 2>&1 || rc=$?
expect "exit status $rc, expected 1" test "$rc" -eq 1
expect "no message about the coordinator" grep -q 'the coordinator ended (status 1)' "$sub/out"
expect "per-job keys left behind" test ! -e "$sub/.bard-keys-4242"
expect "processes left running" no_leftovers

# --- signal ---
setup signal
export FAKE_NEVER_FINISH=1
(cd "$sub" && exec timeout 30 bash "$script") >"$sub/out" 2>&1 &
job=$!
for _ in $(seq 100); do (($(find "$sub/run" -name 'worker-*' | wc -l) >= 4)) && break; sleep 0.1; done
sleep 0.5
kill -TERM "$job"
rc=0; wait "$job" || rc=$?
expect "exit status $rc, expected 143" test "$rc" -eq 143
expect "coordinator did not get SIGTERM" logged '^coordinator: SIGTERM'
expect "processes left running" no_leftovers

# --- sharded ---
setup sharded
export BARD_SHARDS=1
rc=0; (cd "$sub" && timeout 60 bash "$script" --epochs 1) >"$sub/out" 2>&1 || rc=$?
expect "exit status $rc, expected 0: $(tail -n 3 "$sub/out" | tr '\n' ' ')" test "$rc" -eq 0
expect "no shard key made" logged "^bard keys generate --out $sub/.bard-keys-4242 --client shard --role shard\$"
expect "coordinator not told --shards 2" logged '^bard coordinator .* --linger 600 --shards 2 --epochs 1$'
expect "shards step wrong" logged '^srun --nodes=2 --ntasks=2 --ntasks-per-node=1 .*--overlap'
expect "shard flags wrong" logged "^bard shard --connect tcp://n1:28484 --bind tcp://0.0.0.0:28486 --advertise tcp://node:28486 --keys $sub/.bard-keys-4242 --key-file $sub/.bard-keys-4242/shard.key\$"
expect "not 2 shards joined" test "$(find "$sub/run" -name 'shard-*' | wc -l)" -eq 2
expect "result missing" test -s "$sub/bard-result-4242/model.safetensors"
expect "processes left running" no_leftovers

if ((failures)); then exit 1; fi
echo "4 scenarios (ok, crash, signal, sharded) behaved"
