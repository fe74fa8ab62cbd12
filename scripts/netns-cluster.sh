#!/usr/bin/env bash
# Three hosts on one machine: network namespaces bard-c-PID (coordinator), bard-w1-PID and bard-w2-PID (one worker
# each), joined by veth pairs to a bridge in the coordinator's namespace, addresses 198.18.0.1-3/24 (the
# benchmarking range, RFC 2544, reachable only inside these namespaces). The coordinator binds 198.18.0.1 with
# CURVE keys made for the run; mid-run w2's link is cut (ip link set eth0 down inside w2) and the script checks
# that the coordinator evicts w2 within a few seconds, that the run completes on w1 alone ("done: step N", exit
# 0, a checkpoint of step N), and that w1 can fetch the final checkpoint over the namespace network.
#
#   scripts/netns-cluster.sh [--steps N] [--keep-logs DIR] [--heal] [--data FILE]
#
#   --steps N        training steps (default 1500: about 20-40 s with the small model used here)
#   --keep-logs DIR  copy the logs (coordinator, workers, fetch, network setup) into DIR at the end
#   --heal           after the eviction, bring w2's link back up and also check that w2 joins again
#   --data FILE      corpus (default data/tinyshakespeare.txt, put in place by scripts/get-corpus.sh)
#
# BARD_BIN names the bard binary to use (nothing is built then); without it the script builds the release binary.
# Needs root and iproute2 (scripts/bootstrap.sh --test installs it). Exit status: 0 ok, 1 failure, 2 usage,
# 77 skipped (not root, no `ip`, or network namespaces/veth unusable here): the line before says why.
# Everything it creates (processes, namespaces, veths, the bridge, keys, logs) is removed on exit, also on
# failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

me=netns-cluster
steps=1500
keep_logs=
heal=0
data=data/tinyshakespeare.txt
usage() { sed -n '9,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --steps) [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || usage; steps=$2; shift 2 ;;
        --keep-logs) [[ -n ${2:-} ]] || usage; keep_logs=$2; shift 2 ;;
        --heal) heal=1; shift ;;
        --data) [[ -n ${2:-} ]] || usage; data=$2; shift 2 ;;
        -h|--help) usage ;;
        *) echo "$me: unknown argument $1" >&2; usage ;;
    esac
done

# w2's link is cut once a quarter of the run is done (at least 50 steps in, so both workers are computing).
cut_at=$((steps / 4 > 50 ? steps / 4 : 50))
((cut_at + 50 <= steps)) || { echo "$me: --steps $steps is too short to cut a link mid-run (need at least 100)" >&2; exit 2; }

skip() { echo "$me: skipped: $*"; exit 77; }
[[ $(id -u) -eq 0 ]] || skip "needs root to create network namespaces (run it with sudo)"
command -v ip >/dev/null 2>&1 || skip "no 'ip' command (Debian package iproute2; scripts/bootstrap.sh --test installs it)"

if [[ -n ${BARD_BIN:-} ]]; then
    bard=$BARD_BIN
else
    swift build -c release 2>&1 | tail -1
    bard="$(swift build -c release --show-bin-path)/bard"
fi
[[ -x $bard ]] || { echo "$me: FAIL: no bard binary at $bard"; exit 1; }
if [[ ! -f $data ]]; then
    [[ $data == data/tinyshakespeare.txt ]] && scripts/get-corpus.sh >/dev/null
    [[ -f $data ]] || { echo "$me: FAIL: no corpus at $data"; exit 1; }
fi
data=$(realpath "$data")

ns_c=bard-c-$$ ns_w1=bard-w1-$$ ns_w2=bard-w2-$$
addr_c=198.18.0.1 addr_w1=198.18.0.2 addr_w2=198.18.0.3
port=5555  # the namespace is new, so the port is free
endpoint="tcp://$addr_c:$port"
name_w1=w1-$$ name_w2=w2-$$
tmp=$(mktemp -d "${TMPDIR:-/tmp}/bard-netns.XXXXXX")
namespaces=()
pids=()
result=
outcome=1

cleanup() {
    local status=$?
    trap - EXIT INT TERM ERR
    set +e
    {  # (stderr off: the shell's "Killed" notices are noise here)
        for p in "${pids[@]}"; do kill -TERM "$p"; done
        for ((i = 0; i < 20; i++)); do
            running=0
            for p in "${pids[@]}"; do kill -0 "$p" && running=1; done
            ((running)) || break
            sleep 0.1
        done
        for p in "${pids[@]}"; do kill -KILL "$p"; done
        # Whatever else still runs inside our namespaces was started by this script too.
        for ns in "${namespaces[@]}"; do
            for p in $(ip netns pids "$ns"); do kill -KILL "$p"; done
        done
        for p in "${pids[@]}"; do wait "$p"; done
    } 2>/dev/null
    # Deleting a namespace destroys the veth ends and the bridge inside it.
    for ns in "${namespaces[@]}"; do ip netns del "$ns" 2>/dev/null; done
    if [[ -n $keep_logs ]]; then
        mkdir -p "$keep_logs" && cp "$tmp"/*.log "$tmp"/*.err "$keep_logs"/ 2>/dev/null && echo "$me: logs kept in $keep_logs"
    fi
    rm -rf "$tmp"
    [[ -n $result ]] && echo "$result"
    if [[ $status -eq 77 ]]; then exit 77; fi
    exit "$outcome"
}
trap cleanup EXIT
fail() {
    result="$me: FAIL: $*"
    outcome=1
    if [[ -s $tmp/coordinator.err || -s $tmp/coordinator.log ]]; then
        echo "--- last lines of the coordinator's logs ($tmp, removed on exit; --keep-logs DIR keeps them)" >&2
        tail -n 8 "$tmp/coordinator.log" "$tmp/coordinator.err" >&2 2>/dev/null || true
    fi
    exit 1
}
trap 'fail "interrupted"' INT TERM
trap 'fail "unexpected error at line $LINENO: $BASH_COMMAND"' ERR

# --- the network ------------------------------------------------------------------------------------------------
setup() { "$@" >>"$tmp/network.log" 2>&1; }
for ns in "$ns_c" "$ns_w1" "$ns_w2"; do
    if ip netns list | grep -qw "^$ns"; then
        fail "network namespace $ns exists already (left by a killed run? remove it with: ip netns del $ns)"
    fi
    if ! setup ip netns add "$ns"; then
        result="$me: skipped: cannot create network namespaces here ($(tail -n 1 "$tmp/network.log"))"
        exit 77
    fi
    namespaces+=("$ns")
    setup ip -n "$ns" link set lo up
done
setup ip -n "$ns_c" link add br0 type bridge
setup ip -n "$ns_c" addr add "$addr_c/24" dev br0
setup ip -n "$ns_c" link set br0 up
for i in 1 2; do
    ns_var=ns_w$i addr_var=addr_w$i
    # Both ends are created inside the namespaces, so no interface of the host's own namespace is touched.
    if ! setup ip link add eth0 netns "${!ns_var}" type veth peer name "v-w$i" netns "$ns_c"; then
        result="$me: skipped: cannot create veth pairs here ($(tail -n 1 "$tmp/network.log"))"
        exit 77
    fi
    setup ip -n "$ns_c" link set "v-w$i" master br0
    setup ip -n "$ns_c" link set "v-w$i" up
    setup ip -n "${!ns_var}" addr add "${!addr_var}/24" dev eth0
    setup ip -n "${!ns_var}" link set eth0 up
done
if command -v ping >/dev/null 2>&1; then
    for a in "$addr_w1" "$addr_w2"; do
        setup ip netns exec "$ns_c" ping -c 1 -W 2 "$a" || fail "no ping from the coordinator's namespace to $a"
    done
    ping_note="ping ok"
else
    ping_note="no ping installed; connectivity checked by the cluster itself"
fi
echo "$me: namespaces $ns_c ($addr_c), $ns_w1 ($addr_w1), $ns_w2 ($addr_w2) on a bridge; $ping_note"

# --- the cluster ------------------------------------------------------------------------------------------------
"$bard" keys generate --out "$tmp/keys" >"$tmp/keys.log" 2>&1 || fail "bard keys generate failed"
# `ip netns exec` execs the command, so $! is bard's own pid (signals reach it directly).
ip netns exec "$ns_c" "$bard" coordinator --data "$data" --bind "$endpoint" --keys "$tmp/keys" --workers 2 --min-workers 1 \
    --out "$tmp/run" --steps "$steps" --layers 1 --embed 16 --hidden 64 --batch 32 --bptt 25 --seed 1 \
    --sample-length 0 --checkpoint-every 500 --linger 60 >"$tmp/coordinator.log" 2>"$tmp/coordinator.err" &
coordinator=$!; pids+=("$coordinator")
ip netns exec "$ns_w1" "$bard" worker --connect "$endpoint" --keys "$tmp/keys" --name "$name_w1" --data "$data" --idle-timeout 30 \
    >"$tmp/worker1.log" 2>&1 &
worker1=$!; pids+=("$worker1")
ip netns exec "$ns_w2" "$bard" worker --connect "$endpoint" --keys "$tmp/keys" --name "$name_w2" --data "$data" --idle-timeout 30 \
    >"$tmp/worker2.log" 2>&1 &
worker2=$!; pids+=("$worker2")

alive() { kill -0 "$1" 2>/dev/null; }
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }  # seconds since a date +%s.%N
current_step() {  # the coordinator's last completed step (0 before the first)
    local s
    s=$(tail -n 1 "$tmp/run/metrics.jsonl" 2>/dev/null | grep -o '"step":[0-9]*' | cut -d: -f2) || true
    echo "${s:-0}"
}
coordinator_died() {
    local status=0
    wait "$coordinator" || status=$?
    fail "the coordinator exited with status $status before $1"
}

deadline=$((SECONDS + 120))
until (($(current_step) >= cut_at)); do
    alive "$coordinator" || coordinator_died "step $cut_at"
    ((SECONDS < deadline)) || fail "step $cut_at not reached within 120 s (at step $(current_step))"
    sleep 0.2
done
joined=$(grep -c "worker $name_w2 joined" "$tmp/coordinator.err" || true)
((joined >= 1)) || fail "worker $name_w2 never joined"
grep -q "worker $name_w1 joined" "$tmp/coordinator.err" || fail "worker $name_w1 never joined"
cut_step=$(current_step)
ip -n "$ns_w2" link set eth0 down
cut_time=$(date +%s.%N)
echo "$me: both workers joined over CURVE; cut $ns_w2's link at step $cut_step of $steps"

# The coordinator must evict w2 for its silence: heartbeat timeout 3 s, so allow 10 s.
until grep -q "evicting $name_w2: silent" "$tmp/coordinator.err"; do
    alive "$coordinator" || coordinator_died "evicting $name_w2"
    (($(since "$cut_time" | cut -d. -f1) < 10)) || fail "no eviction of $name_w2 within 10 s of cutting its link"
    sleep 0.1
done
evicted_after=$(since "$cut_time")
evict_step=$(current_step)
echo "$me: $name_w2 evicted $evicted_after s after the cut (at step $evict_step): $(grep -m1 "evicting $name_w2" "$tmp/coordinator.err" | cut -c1-120)"

healed_note=
if ((heal)); then
    # Until w2 is back, w1's link to the coordinator runs at 1 Mbit/s (tc tbf), so that each step takes tens of ms
    # whatever the CPU: on a fast machine the rest of the run (w1 alone, the small model) takes less than a second,
    # less than w2 needs to reconnect, and it would end before w2 could join again.
    throttled=0
    if setup ip netns exec "$ns_w1" tc qdisc add dev eth0 root tbf rate 1mbit burst 32kb latency 2s; then
        throttled=1
    fi
    ip -n "$ns_w2" link set eth0 up
    deadline=$((SECONDS + 30))
    until (($(grep -c "worker $name_w2 joined" "$tmp/coordinator.err" || true) > joined)); do
        grep -q '^done: ' "$tmp/coordinator.log" && fail "the run ended before $name_w2 rejoined after the link came back"
        alive "$coordinator" || coordinator_died "$name_w2 rejoined"
        ((SECONDS < deadline)) || fail "$name_w2 did not join again within 30 s of its link coming back"
        sleep 0.2
    done
    rejoin_step=$(current_step)
    ((throttled)) && setup ip netns exec "$ns_w1" tc qdisc del dev eth0 root
    healed_note=", rejoined at step $rejoin_step after its link came back"
    echo "$me: link restored; $name_w2 joined again at step $rejoin_step"
fi

# The run completes on the remaining worker(s).
deadline=$((SECONDS + 600))
until grep -q '^done: ' "$tmp/coordinator.log"; do
    alive "$coordinator" || coordinator_died "the end of the run"
    ((SECONDS < deadline)) || fail "the run did not finish within 600 s (at step $(current_step))"
    sleep 0.2
done
done_line=$(grep -m1 '^done: ' "$tmp/coordinator.log")
[[ $done_line == "done: step $steps,"* ]] || fail "the run ended at the wrong step: $done_line"
ckpt="$tmp/run/model.safetensors"
[[ -s $ckpt ]] || fail "no final checkpoint at $ckpt"
ckpt_step=$("$bard" inspect "$ckpt" | sed -n 's/^step: \([0-9]*\).*/\1/p') || fail "bard inspect cannot read $ckpt"
[[ $ckpt_step == "$steps" ]] || fail "the final checkpoint is of step '${ckpt_step}', expected $steps"

# w1 downloads the final checkpoint from the lingering coordinator, over the namespace network and CURVE.
ip netns exec "$ns_w1" "$bard" fetch --from "$endpoint" --keys "$tmp/keys" --out "$tmp/fetched" --wait --timeout 30 \
    >"$tmp/fetch.log" 2>&1 || fail "bard fetch from $ns_w1 failed: $(tail -n 1 "$tmp/fetch.log")"
cmp -s "$ckpt" "$tmp/fetched/model.safetensors" || fail "the fetched checkpoint differs from the coordinator's"

kill -INT "$coordinator"
status=0; wait "$coordinator" || status=$?
[[ $status -eq 0 ]] || fail "the coordinator exited with status $status"
status=0
for ((i = 0; i < 100; i++)); do alive "$worker1" || break; sleep 0.1; done
alive "$worker1" && fail "worker $name_w1 still running after the end of training"
wait "$worker1" || status=$?
[[ $status -eq 0 ]] || fail "worker $name_w1 exited with status $status (expected 0)"
if ((heal)); then  # w2 is back in the run, so it too is told that training is over
    for ((i = 0; i < 100; i++)); do alive "$worker2" || break; sleep 0.1; done
    status=0; wait "$worker2" || status=$?
    [[ $status -eq 0 ]] || fail "worker $name_w2 exited with status $status after rejoining (expected 0)"
fi

evictions=$(sed -n 's/.* \([0-9]*\) evictions.*/\1/p' <<<"$done_line")
result="$me: ok: 3 namespaces; $name_w2 evicted ${evicted_after} s after its link was cut at step $cut_step${healed_note}; run completed: step $steps, val loss $(sed -n 's/.*val loss \([0-9.na\/]*\);.*/\1/p' <<<"$done_line"), $evictions eviction(s); final checkpoint fetched by $ns_w1 (sha256 verified, identical)"
outcome=0
