#!/usr/bin/env bash
# Chaos run: a local cluster (a coordinator and 3 workers on loopback) trains while this script randomly kills,
# stops, resumes and restarts workers and, exactly once, kills the coordinator and restarts it with --resume.
# The same run (same flags, seed and step count) is also trained undisturbed, first, by the same cluster; the
# chaos run must end with a valid final checkpoint of the same step whose validation loss (bard eval) is within
# 0.02 nats of the undisturbed one, and every fault must have been survived.
#
#   scripts/chaos.sh [MINUTES]      (default 5; fractions such as 0.5 work)
#
# MINUTES is the length of the disturbed run. The step count comes from a short calibration run (200 steps,
# about 5 s): steps = measured steps/s x MINUTES x 60 x 0.7, the 0.7 leaving room for the stalls that faults cause.
# The undisturbed run comes first and takes about 0.7 x MINUTES; with the calibration and the evaluations a run
# takes about 1.8 x MINUTES in all.
#
# Faults, one at a time, 3-10 s apart (each waits until the cluster is whole again and training has moved on):
#   kill-restart   SIGKILL a worker, restart it with the same --name 4-8 s later (after its eviction)
#   stop-resume    SIGSTOP a worker for 1-8 s, then SIGCONT (longer than 3 s: evicted, registers again)
#   kill-now       SIGKILL a worker and restart it with the same --name at once
#   coordinator    once, between 30 % and 60 % of the run: SIGKILL the coordinator, restart it 1-3 s later with
#                  --resume (same --bind); the workers reconnect by themselves
# The first three worker faults are the three kinds in random order, so each kind is exercised in any run long
# enough for three faults. A fault counts as survived when, within 30 s (plus the step timeout) of its end (the
# restart or SIGCONT), the coordinator has completed, with all 3 workers, a step that began after that end, a
# worker it evicted meanwhile has joined again, and (coordinator) the new coordinator logged "resumed at step N".
# The table at the end gives per kind: injected, survived, how many led to an eviction, and the slowest recovery
# (seconds from the fault until that step).
#
# Then the hostile peers (section 3 below): a silent peer, a poisoning peer, a flooding peer and a name thief, each
# against a real run with CURVE keys; the table says what each cost.
#
# Both runs keep the default --step-timeout (60 s): a worker killed and restarted at once under the same name
# registers again and is sent its step anew, so no fault should ever need that timeout.
#
# Environment: BARD_BIN (the bard binary; nothing is built then, else the release binary is built),
# CHAOS_SEED (the fault schedule's random seed, printed, to replay a schedule), CHAOS_STEPS (skip the calibration).
# Logs, checkpoints and metrics of both runs stay in the printed temp directory. Exit 0 only if all faults were
# survived, both runs reached the same final step and |val loss difference| <= 0.02 nats; every process it
# started is stopped on exit (also on failure or Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."

me=chaos
minutes=${1:-5}
if ! [[ $minutes =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)$ ]] || ! awk -v m="$minutes" 'BEGIN { exit !(m > 0) }'; then
    echo "usage: scripts/chaos.sh [MINUTES]   (a positive number, default 5)" >&2
    exit 2
fi
tolerance=0.02
duty=0.7
heartbeat_timeout=3
step_timeout=60
workers=(w1 w2 w3)
seed=${CHAOS_SEED:-$((RANDOM * 32768 + RANDOM))}
RANDOM=$seed

if [[ -n ${BARD_BIN:-} ]]; then
    bard=$BARD_BIN
else
    swift build -c release 2>&1 | tail -1
    bard="$(swift build -c release --show-bin-path)/bard"
fi
[[ -x $bard ]] || { echo "$me: no bard binary at $bard" >&2; exit 1; }
data=data/tinyshakespeare.txt
[[ -f $data ]] || scripts/get-corpus.sh >/dev/null
data=$(realpath "$data")

tmp=$(mktemp -d "${TMPDIR:-/tmp}/bard-chaos.XXXXXX")
echo "$me: logs, checkpoints and metrics in $tmp; fault schedule seed $seed (CHAOS_SEED=$seed replays it)"

# --- processes --------------------------------------------------------------------------------------------------
coordinator=
declare -A wpid=()
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    set +e
    {  # (stderr off: the shell's "Killed" notices are noise here)
        local all=("${wpid[@]}") p i running
        [[ -n $coordinator ]] && all+=("$coordinator")
        for p in "${all[@]}"; do kill -CONT "$p"; kill -TERM "$p"; done
        for ((i = 0; i < 30; i++)); do
            running=0
            for p in "${all[@]}"; do kill -0 "$p" && running=1; done
            ((running)) || break
            sleep 0.1
        done
        for p in "${all[@]}"; do kill -KILL "$p"; wait "$p"; done
    } 2>/dev/null
    echo "$me: logs in $tmp"
    exit "$status"
}
trap cleanup EXIT
trap 'echo "$me: interrupted" >&2; exit 130' INT TERM

die() { echo "$me: FAIL: $*" >&2; exit 1; }
alive() { kill -0 "$1" 2>/dev/null; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
rand() { echo $(($1 + RANDOM % ($2 - $1 + 1))); }  # integer in [$1, $2]
rand_s() { awk -v a="$1" -v b="$2" -v r="$RANDOM" 'BEGIN { printf "%.1f", a + (b - a) * r / 32767 }'; }

free_port() {
    local p
    for _ in $(seq 50); do
        p=$((20000 + RANDOM % 20000))
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
    done
    die "no free port found"
}

model=(--layers 1 --embed 16 --hidden 64 --batch 32 --bptt 25 --seed 7 --sample-length 0)
# start_coordinator DIR PORT STEPS LOGNAME [--resume DIR]
start_coordinator() {
    local dir=$1 port=$2 steps=$3 log=$4; shift 4
    local every=$((steps / 10 < 100 ? (steps / 10 > 10 ? steps / 10 : 10) : 100))
    "$bard" coordinator --data "$data" --bind "tcp://127.0.0.1:$port" --workers ${#workers[@]} --min-workers 1 \
        --out "$dir" --steps "$steps" "${model[@]}" --checkpoint-every "$every" --heartbeat-timeout "$heartbeat_timeout" \
        --step-timeout "$step_timeout" "$@" >"$tmp/$log.log" 2>"$tmp/$log.err" &
    coordinator=$!
}
# start_worker NAME PORT RUN
start_worker() {
    "$bard" worker --connect "tcp://127.0.0.1:$2" --name "$3-$1" --data "$data" --idle-timeout 60 2>>"$tmp/$3-$1.log" &
    wpid[$1]=$!
}
# Runs an undisturbed cluster to its end (the coordinator and every worker must exit 0); sets took (seconds).
run_quietly() {  # DIR STEPS LABEL
    local port t0 status=0 w
    port=$(free_port)
    t0=$(now)
    start_coordinator "$1" "$port" "$2" "$3-coordinator"
    for w in "${workers[@]}"; do start_worker "$w" "$port" "$3"; done
    wait "$coordinator" || status=$?
    coordinator=
    [[ $status -eq 0 ]] || die "$3 run: the coordinator exited with status $status ($(tail -n 1 "$tmp/$3-coordinator.err"))"
    for w in "${workers[@]}"; do
        status=0; wait "${wpid[$w]}" || status=$?
        unset "wpid[$w]"
        [[ $status -eq 0 ]] || die "$3 run: worker $w exited with status $status"
    done
    took=$(since "$t0")
}
metric() {  # FIELD of the last metrics record of DIR (empty if none yet)
    tail -n 1 "$1/metrics.jsonl" 2>/dev/null | grep -o "\"$2\":[0-9.e+-]*" | cut -d: -f2 || true
}
ckpt_step() { "$bard" inspect "$1" 2>/dev/null | sed -n 's/^step: \([0-9]*\).*/\1/p'; }
val_loss() { "$bard" eval --checkpoint "$1" --data "$data" --json | grep -o '"loss" *: *[0-9.]*' | grep -o '[0-9.]*$'; }

# --- 1. calibration and the undisturbed run ---------------------------------------------------------------------
if [[ -n ${CHAOS_STEPS:-} ]]; then
    steps=$CHAOS_STEPS
    rate=$(awk -v s="$steps" -v m="$minutes" -v d="$duty" 'BEGIN { printf "%.1f", s / (m * 60 * d) }')
    echo "$me: CHAOS_STEPS=$steps"
else
    cal_steps=200
    run_quietly "$tmp/calibration" "$cal_steps" calibration
    rate=$(python3 - "$tmp/calibration/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
a, b = rows[49], rows[-2]  # past the warm-up, before the last step's validation and checkpoint
print(f"{(b['step'] - a['step']) / (b['time'] - a['time']):.1f}")
PY
)
    steps=$(awk -v r="$rate" -v m="$minutes" -v d="$duty" 'BEGIN { s = int(r * m * 60 * d / 10) * 10; print (s < 300 ? 300 : s) }')
    echo "$me: calibration: $rate steps/s with ${#workers[@]} workers; $steps steps for a disturbed run of about $minutes min"
fi
echo "$me: model ${model[*]}; $steps steps; heartbeat timeout $heartbeat_timeout s, step timeout $step_timeout s"

echo "$me: undisturbed run ..."
run_quietly "$tmp/undisturbed" "$steps" undisturbed
base_seconds=$took
echo "$me: undisturbed run done in $base_seconds s: $(grep -m1 '^done:' "$tmp/undisturbed-coordinator.log")"

# --- 2. the disturbed run ---------------------------------------------------------------------------------------
kinds=(kill-restart stop-resume kill-now coordinator)
declare -A injected=() survived=() evicted=() slowest=()
for k in "${kinds[@]}"; do injected[$k]=0 survived[$k]=0 evicted[$k]=0 slowest[$k]=0; done
out=$tmp/chaos
port=$(free_port)
t_start=$(now)
start_coordinator "$out" "$port" "$steps" chaos-coordinator-1
clog=$tmp/chaos-coordinator-1
incarnation=1
for w in "${workers[@]}"; do start_worker "$w" "$port" chaos; done
echo "$me: disturbed run on port $port ..."

step() { local s; s=$(metric "$out" step); echo "${s:-0}"; }
finished() { grep -q '^done:' "$clog.log" 2>/dev/null; }
check_coordinator() {  # the run must not die between faults
    alive "$coordinator" && return 0
    finished && return 0
    local status=0; wait "$coordinator" || status=$?
    coordinator=
    die "the coordinator exited with status $status at step $(step) ($(tail -n 1 "$clog.err"))"
}
say() { printf '%s: [%6.1f s, step %5d] %s\n' "$me" "$(since "$t_start")" "$(step)" "$*"; }
log_after() { tail -n +"$(($2 + 1))" "$1"; }  # lines of file $1 after line $2
lines() { wc -l <"$1"; }

# recover KIND STEP NAME ERR_OFFSET T0: waits until the coordinator has completed a step beyond STEP + 1 with all
# workers (STEP is read once the fault's action is over, restart or SIGCONT included, so that step began after it and
# went to every worker alive then), and NAME, if evicted since the fault, joined again. Counts the fault as survived
# and prints how long recovery took from the fault (T0).
recover() {
    local kind=$1 fault_step=$2 name=$3 offset=$4 t0=$5 deadline=$((SECONDS + 30 + step_timeout))
    local s n ev joined note
    while ((SECONDS < deadline)); do
        check_coordinator
        if finished; then break; fi
        s=$(step) n=$(metric "$out" workers)
        if ((s > fault_step + 1)) && [[ ${n:-0} == "${#workers[@]}" ]]; then
            ev=0 joined=1
            if [[ -n $name ]]; then
                ev=$(log_after "$clog.err" "$offset" | grep -n "evicting $name:" | tail -n 1 | cut -d: -f1 || true)
                if [[ -n $ev ]]; then
                    log_after "$clog.err" "$((offset + ev))" | grep -q "worker $name joined" || joined=0
                fi
            fi
            if ((joined)) && { [[ -z $name ]] || alive "${wpid[${name#chaos-}]}"; }; then
                local took; took=$(since "$t0")
                survived[$kind]=$((survived[$kind] + 1))
                note="recovered in $took s"
                if [[ -n ${ev:-} && $ev != 0 ]]; then
                    evicted[$kind]=$((evicted[$kind] + 1))
                    note+=" ($(log_after "$clog.err" "$offset" | grep -m1 "evicting $name:" | sed 's/^coordinator: //; s/;.*//'); joined again)"
                fi
                slowest[$kind]=$(awk -v a="${slowest[$kind]}" -v b="$took" 'BEGIN { print (b > a ? b : a) }')
                say "  $note"
                return 0
            fi
        fi
        sleep 0.2
    done
    say "  NOT SURVIVED: $kind on ${name:-the coordinator}: $(finished && echo "the run ended first" || echo "no step with all workers within $((30 + step_timeout)) s")"
    return 0
}

worker_fault() {  # KIND NAME
    local kind=$1 w=$2 name=chaos-$2 offset t0 pause
    offset=$(lines "$clog.err"); t0=$(now)
    injected[$kind]=$((injected[$kind] + 1))
    case $kind in
        kill-restart)
            pause=$(rand_s 4 8)
            say "SIGKILL $name; restart in $pause s"
            { kill -KILL "${wpid[$w]}"; wait "${wpid[$w]}"; } 2>/dev/null || true
            sleep "$pause"
            start_worker "$w" "$port" chaos ;;
        stop-resume)
            pause=$(rand_s 1 8)
            say "SIGSTOP $name for $pause s"
            kill -STOP "${wpid[$w]}"
            sleep "$pause"
            kill -CONT "${wpid[$w]}" ;;
        kill-now)
            say "SIGKILL $name and restart it at once"
            { kill -KILL "${wpid[$w]}"; wait "${wpid[$w]}"; } 2>/dev/null || true
            start_worker "$w" "$port" chaos ;;
    esac
    recover "$kind" "$(step)" "$name" "$offset" "$t0"
}

coordinator_fault() {
    local c t0 pause status=0
    t0=$(now)
    injected[coordinator]=1
    { kill -KILL "$coordinator"; wait "$coordinator"; } 2>/dev/null || status=$?
    coordinator=
    c=$(ckpt_step "$out/model.safetensors")
    pause=$(rand_s 1 3)
    say "SIGKILL the coordinator (last checkpoint: step ${c:-none}); restart with --resume in $pause s"
    sleep "$pause"
    incarnation=$((incarnation + 1))
    start_coordinator "$out" "$port" "$steps" "chaos-coordinator-$incarnation" --resume "$out"
    clog=$tmp/chaos-coordinator-$incarnation
    local deadline=$((SECONDS + 30))
    until grep -q "^resumed at step ${c:-0} " "$clog.log" 2>/dev/null; do
        if ! alive "$coordinator" || ((SECONDS > deadline)); then
            say "  NOT SURVIVED: the restarted coordinator did not resume from step ${c:-?} ($(tail -n 1 "$clog.err" 2>/dev/null))"
            check_coordinator
            return 0
        fi
        sleep 0.2
    done
    say "  $(grep -m1 '^resumed at step' "$clog.log")"
    recover coordinator "${c:-0}" "" 0 "$t0"
}

# The coordinator fault comes once the run is 30-60 % done; no worker fault starts when less than ~12 s of
# training remain (a worker restarted after the end would find no coordinator).
coordinator_at=$((steps * (30 + RANDOM % 31) / 100))
order=("${kinds[@]:0:3}")
for i in 2 1; do j=$((RANDOM % (i + 1))); tmp_k=${order[$i]}; order[i]=${order[$j]}; order[j]=$tmp_k; done
faults=0
until finished; do
    gap=$(rand_s 3 10)
    end_gap=$(awk -v g="$gap" 'BEGIN { print int(g * 5) }')
    for ((i = 0; i < end_gap; i++)); do check_coordinator; finished && break; sleep 0.2; done
    finished && break
    remaining=$(awk -v s="$(step)" -v n="$steps" -v r="$rate" 'BEGIN { printf "%d", (n - s) / r }')
    if ((injected[coordinator] == 0 && $(step) >= coordinator_at)); then
        coordinator_fault  # (it resumes from an earlier checkpoint, so steps remain after it whenever it comes)
    elif ((remaining >= 12)); then
        if ((faults < 3)); then kind=${order[$faults]}; else kind=${kinds[$((RANDOM % 3))]}; fi
        worker_fault "$kind" "${workers[$((RANDOM % ${#workers[@]}))]}"
        faults=$((faults + 1))
    fi
done
status=0; wait "$coordinator" || status=$?
coordinator=
chaos_seconds=$(since "$t_start")
[[ $status -eq 0 ]] || die "the disturbed run's coordinator exited with status $status"
echo "$me: disturbed run done in $chaos_seconds s: $(grep -m1 '^done:' "$clog.log")"
# Every worker (the last incarnation of each) is told that training is over and exits 0.
for w in "${workers[@]}"; do
    for ((i = 0; i < 100; i++)); do alive "${wpid[$w]}" || break; sleep 0.1; done
    status=0
    if alive "${wpid[$w]}"; then status=timeout; else wait "${wpid[$w]}" || status=$?; fi
    unset "wpid[$w]"
    [[ $status == 0 ]] || die "worker chaos-$w did not exit 0 after the end of training (status $status)"
done

# --- 3. hostile peers -------------------------------------------------------------------------------------------
# A third run, with CURVE keys, two honest workers and scripts/hostile-peer.py (an outsider's implementation of the
# protocol) as each kind of hostile peer in turn, HOSTILE_SECONDS (default 15) each, after a baseline of the same
# length. Each row says what the peer cost: steps/s against the baseline, quarantines, rejected and dropped
# messages, and the coordinator's peak memory. The run must keep going through all of them, on its own math.
python3 -c 'import zmq' 2>/dev/null || python3 -m pip install -q --root-user-action=ignore pyzmq >/dev/null
hostile_seconds=${HOSTILE_SECONDS:-15}
hout=$tmp/hostile hkeys=$tmp/keys
"$bard" keys generate --out "$hkeys" >/dev/null
"$bard" keys generate --out "$hkeys" --client thief >/dev/null
hport=$(free_port)
"$bard" coordinator --data "$data" --bind "tcp://127.0.0.1:$hport" --keys "$hkeys" --workers 2 --min-workers 1 \
    --out "$hout" --steps 10000000 "${model[@]}" --checkpoint-every 1000 >"$tmp/hostile-coordinator.log" 2>"$tmp/hostile-coordinator.err" &
coordinator=$!
for w in h1 h2; do
    "$bard" worker --connect "tcp://127.0.0.1:$hport" --keys "$hkeys" --name "hostile-run-$w" --data "$data" 2>>"$tmp/hostile-$w.log" &
    wpid[$w]=$!
done
hstep() { local s; s=$(metric "$hout" step); echo "${s:-0}"; }
peak_mb() { awk '/VmHWM/ { printf "%d", $2 / 1024 }' "/proc/$coordinator/status"; }
for _ in $(seq 600); do (($(hstep) >= 20)) && break; sleep 0.1; done
(($(hstep) >= 20)) || die "hostile run: training did not start ($(tail -n 1 "$tmp/hostile-coordinator.err"))"
s0=$(hstep); sleep "$hostile_seconds"; base_rate=$(awk -v a="$s0" -v b="$(hstep)" -v t="$hostile_seconds" 'BEGIN { printf "%.1f", (b - a) / t }')
base_peak=$(peak_mb)
echo
printf '%-10s %-62s %9s %7s %11s %9s %8s %8s\n' peer "what it does" "steps/s" "x base" quarantines rejected dropped "peak MB"
printf '%-10s %-62s %9s %7s %11s %9s %8s %8s\n' none "(baseline: two honest workers)" "$base_rate" 1.00 0 0 0 "$base_peak"
declare -A hwhat=([silent]="registers, heartbeats, never answers a step"
    [poisoning]="answers every step with refuse(diverged)"
    [flooding]="unregistered: 6 x 8 MiB frames, 1 MiB names, garbage"
    [thief]="says hello with an honest worker's name, with its own key")
hostile_ok=1
for b in silent poisoning flooding thief; do
    key=$hkeys/client.key name=$b
    [[ $b == thief ]] && key=$hkeys/thief.key name=hostile-run-h1
    s0=$(hstep)
    python3 scripts/hostile-peer.py --connect "tcp://127.0.0.1:$hport" --behaviour "$b" --name "$name" \
        --seconds "$hostile_seconds" --keys "$hkeys" --key-file "$key" >>"$tmp/hostile-peers.log" 2>&1 || true
    s1=$(hstep)
    alive "$coordinator" || die "hostile run: the coordinator died during the $b peer ($(tail -n 1 "$tmp/hostile-coordinator.err"))"
    rate=$(awk -v a="$s0" -v b="$s1" -v t="$hostile_seconds" 'BEGIN { printf "%.1f", (b - a) / t }')
    ratio=$(awk -v r="$rate" -v b="$base_rate" 'BEGIN { printf "%.2f", (b > 0 ? r / b : 0) }')
    printf '%-10s %-62s %9s %7s %11s %9s %8s %8s\n' "$b" "${hwhat[$b]}" "$rate" "$ratio" "$(metric "$hout" quarantines)" \
        "$(metric "$hout" rejected)" "$(metric "$hout" dropped_messages)" "$(peak_mb)"
    ((s1 > s0)) || { hostile_ok=0; echo "$me: the $b peer stalled the run"; }
done
((peak_mb_delta = $(peak_mb) - base_peak)) || true
((peak_mb_delta < 100)) || { hostile_ok=0; echo "$me: the hostile peers grew the coordinator by $peak_mb_delta MB"; }
grep -q 'name hostile-run-h1 is registered by another key' "$tmp/hostile-coordinator.err" ||
    { hostile_ok=0; echo "$me: the name thief was not refused and logged"; }
kill -TERM "$coordinator"; wait "$coordinator" || true; coordinator=
for w in h1 h2; do kill -TERM "${wpid[$w]}" 2>/dev/null; wait "${wpid[$w]}" 2>/dev/null || true; unset "wpid[$w]"; done
echo "$me: hostile peers' own reports in $tmp/hostile-peers.log"

# --- 4. verdict ------------------------------------------------------------------------------------------------
ok=1
problems=()
base_ckpt=$tmp/undisturbed/model.safetensors chaos_ckpt=$out/model.safetensors
base_step=$(ckpt_step "$base_ckpt") || true
chaos_step=$(ckpt_step "$chaos_ckpt") || true
[[ -n $chaos_step ]] || { ok=0; problems+=("the disturbed run's final checkpoint does not load"); }
[[ $base_step == "$steps" && $chaos_step == "$steps" ]] ||
    { ok=0; problems+=("final steps differ: undisturbed ${base_step:-?}, disturbed ${chaos_step:-?}, expected $steps"); }
base_loss=$(val_loss "$base_ckpt") || die "bard eval failed on $base_ckpt"
chaos_loss=$(val_loss "$chaos_ckpt") || die "bard eval failed on $chaos_ckpt"
diff=$(awk -v a="$chaos_loss" -v b="$base_loss" 'BEGIN { printf "%+.4f", a - b }')
awk -v d="$diff" -v t="$tolerance" 'BEGIN { exit !(d <= t && -d <= t) }' ||
    { ok=0; problems+=("validation losses differ by $diff nats (more than $tolerance)"); }

echo
printf '%-13s %-58s %8s %8s %8s %10s\n' fault what injected survived evicted "slowest s"
declare -A what=([kill-restart]="SIGKILL a worker, restart it (same --name) 4-8 s later"
    [stop-resume]="SIGSTOP a worker 1-8 s, then SIGCONT"
    [kill-now]="SIGKILL a worker, restart it (same --name) at once"
    [coordinator]="SIGKILL the coordinator, restart it with --resume")
total=0 total_ok=0
for k in "${kinds[@]}"; do
    printf '%-13s %-58s %8d %8d %8d %10s\n' "$k" "${what[$k]}" "${injected[$k]}" "${survived[$k]}" "${evicted[$k]}" "${slowest[$k]}"
    total=$((total + injected[$k])) total_ok=$((total_ok + survived[$k]))
    if ((survived[$k] < injected[$k])); then ok=0; problems+=("$((injected[$k] - survived[$k])) $k fault(s) not survived"); fi
done
((hostile_ok)) || { ok=0; problems+=("a hostile peer stalled the run, grew the coordinator or went unrefused (table above)"); }
((injected[coordinator] == 1)) || { ok=0; problems+=("the coordinator fault was not injected (run too short: try more MINUTES)"); }
for k in kill-restart stop-resume kill-now; do
    ((injected[$k] > 0)) || echo "$me: note: no $k fault was injected (run too short for three worker faults)"
done
echo
echo "steps: $steps (both runs; final checkpoints at step ${base_step:-?} and ${chaos_step:-?})"
echo "undisturbed: val loss $base_loss ($base_seconds s)"
echo "disturbed:   val loss $chaos_loss ($chaos_seconds s, $total faults, $total_ok survived; $(cat "$tmp"/chaos-coordinator-*.err | grep -c 'evicting' || true) evictions logged by the coordinators)"
echo "difference:  $diff nats (tolerance $tolerance)"
if ((ok)); then
    echo "$me: ok: $total_ok/$total faults survived; val loss $chaos_loss vs $base_loss undisturbed ($diff nats)"
else
    echo "$me: FAIL: ${problems[*]}"
    exit 1
fi
