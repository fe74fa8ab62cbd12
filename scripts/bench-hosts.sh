#!/usr/bin/env bash
# Star against sharded coordinators on emulated hosts (issue 11): N network namespaces bard-hI-PID, each with a veth
# link to a bridge in a switch namespace, each link limited with tc tbf to a rate in both directions (default
# 100mbit: with eight hosts sharing two cores each computes about eight times slower than a real host, so the link
# is slowed alike). One worker per host; the lead (coordinator) on host 0; in sharded mode one shard per host. For
# each N it trains the default model (2 x 512, 32 columns x bptt 50 in all, then 8 columns per host) for a few steps
# and prints, for star and sharded, chars/s and the bytes per step on the busiest host link, in each direction (from
# the interfaces' counters, over the measured steps), also as a multiple of the parameters' size P.
#
#   scripts/bench-hosts.sh [--hosts "2 4 8"] [--rate 100mbit] [--steps 12] [--warmup 4] [--keep-logs DIR]
#
# The star coordinator's link carries (N-1) x P each way per step, which at 100mbit is longer than the default
# heartbeat timeout (3 s) from N = 4 on: heartbeats queue behind it and workers are evicted. So the runs here take
# --heartbeat-timeout 60 and --step-timeout 600, and measure the links rather than the fault handling.
#
# Every process gets BARD_ZMTP_TIMEOUT_MS=60000: libzmq counts a frame in transit as silence, and at 100 Mbit/s a
# 17 MB step to one of several workers behind one link takes longer than the default 3 s, which would cut it.
#
# BARD_BIN names the bard binary (nothing is built then). Needs root and iproute2 (tc); exits 77 when network
# namespaces are unusable here. Plaintext sockets (--insecure) on the namespace network, and no shared memory (the
# namespaces share the host name and /dev/shm, which would bypass the links). Everything it creates is removed on
# exit.
set -euo pipefail
cd "$(dirname "$0")/.."

me=bench-hosts
hosts_list="2 4 8"
rate=100mbit
steps=12
warmup=4
keep_logs=
usage() { sed -n '10p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --hosts) [[ ${2:-} =~ ^[0-9\ ]+$ ]] || usage; hosts_list=$2; shift 2 ;;
        --rate) [[ ${2:-} =~ ^[0-9]+[kmg]?bit$ ]] || usage; rate=$2; shift 2 ;;
        --steps) [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || usage; steps=$2; shift 2 ;;
        --warmup) [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || usage; warmup=$2; shift 2 ;;
        --keep-logs) [[ -n ${2:-} ]] || usage; keep_logs=$2; shift 2 ;;
        -h|--help) usage ;;
        *) echo "$me: unknown argument $1" >&2; usage ;;
    esac
done
((warmup + 2 <= steps)) || { echo "$me: --steps must be at least --warmup + 2" >&2; exit 2; }

skip() { echo "$me: skipped: $*"; exit 77; }
[[ $(id -u) -eq 0 ]] || skip "needs root to create network namespaces"
{ command -v ip && command -v tc; } >/dev/null 2>&1 || skip "needs ip and tc (Debian package iproute2)"
if [[ -n ${BARD_BIN:-} ]]; then
    bard=$BARD_BIN
else
    swift build -c release 2>&1 | tail -1
    bard="$(swift build -c release --show-bin-path)/bard"
fi
scripts/get-corpus.sh >/dev/null
data=$(realpath data/tinyshakespeare.txt)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/bard-hosts.XXXXXX")
namespaces=()
pids=()

stop_all() {
    { for p in "${pids[@]}"; do kill -TERM "$p"; done
      sleep 0.5
      for ns in "${namespaces[@]}"; do for p in $(ip netns pids "$ns"); do kill -KILL "$p"; done; done
      for p in "${pids[@]}"; do wait "$p"; done
    } 2>/dev/null || true
    pids=()
    for ns in "${namespaces[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
    namespaces=()
}
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    stop_all
    if [[ -n $keep_logs ]]; then mkdir -p "$keep_logs" && cp -r "$tmp"/. "$keep_logs"/ && echo "$me: logs kept in $keep_logs"; fi
    rm -rf "$tmp"
    exit "$status"
}
trap cleanup EXIT
trap 'echo "$me: interrupted" >&2; exit 130' INT TERM
fail() { echo "$me: FAIL: $*" >&2; exit 1; }

# N hosts 198.18.0.10+i on a bridge in the switch namespace, each link shaped in both directions.
make_hosts() {
    local n=$1 i ns
    local sw=bard-sw-$$
    ip netns add "$sw" || skip "cannot create network namespaces here"
    namespaces+=("$sw")
    ip -n "$sw" link set lo up
    ip -n "$sw" link add br0 type bridge
    ip -n "$sw" link set br0 up
    for ((i = 0; i < n; i++)); do
        ns=bard-h$i-$$
        ip netns add "$ns"; namespaces+=("$ns")
        ip -n "$ns" link set lo up
        ip link add eth0 netns "$ns" type veth peer name "v$i" netns "$sw" || skip "cannot create veth pairs here"
        ip -n "$sw" link set "v$i" master br0
        ip -n "$sw" link set "v$i" up
        ip -n "$ns" addr add "198.18.0.$((10 + i))/24" dev eth0
        ip -n "$ns" link set eth0 up
        # Upload (the host's egress) and download (the switch port's egress toward the host).
        ip netns exec "$ns" tc qdisc add dev eth0 root tbf rate "$rate" burst 256kb latency 200ms
        ip netns exec "$sw" tc qdisc add dev "v$i" root tbf rate "$rate" burst 256kb latency 200ms
    done
}

counter() { ip netns exec "bard-h$1-$$" cat "/sys/class/net/eth0/statistics/$2_bytes"; }
last_step() { local s; s=$(tail -n 1 "$1/metrics.jsonl" 2>/dev/null | grep -o '"step":[0-9]*' | cut -d: -f2) || true; echo "${s:-0}"; }

# One run: N hosts, star or sharded, `columns` in all. Sets `measured` to "chars/s busiest-tx busiest-rx" (bytes per
# step). Runs in this shell, so the cleanup knows its processes and namespaces.
measured=
export BARD_ZMTP_TIMEOUT_MS=60000
run() {
    local n=$1 mode=$2 columns=$3 i lead=198.18.0.10 port=5555 out
    make_hosts "$n"
    out=$tmp/$mode-$n-$columns
    mkdir -p "$out"
    local extra=()
    [[ $mode == sharded ]] && extra=(--shards "$n")
    ip netns exec "bard-h0-$$" "$bard" coordinator --recipe default --data "$data" --bind "tcp://$lead:$port" --insecure --no-shm \
        --workers "$n" --batch "$columns" --steps "$steps" --sample-length 0 --out "$out/run" --threads 1 "${extra[@]}" \
        --heartbeat-timeout 60 --step-timeout 600 \
        >"$out/coordinator.log" 2>&1 &
    pids+=("$!")
    if [[ $mode == sharded ]]; then
        for ((i = 0; i < n; i++)); do
            ip netns exec "bard-h$i-$$" "$bard" shard --connect "tcp://$lead:$port" --bind "tcp://198.18.0.$((10 + i)):5601" \
                --insecure --name "shard-$i" >>"$out/shards.log" 2>&1 &
            pids+=("$!")
        done
    fi
    for ((i = 0; i < n; i++)); do
        ip netns exec "bard-h$i-$$" "$bard" worker --connect "tcp://$lead:$port" --no-shm --name "h$i" --idle-timeout 60 \
            >>"$out/workers.log" 2>&1 &
        pids+=("$!")
    done
    local deadline=$((SECONDS + 1800)) tx0=() rx0=() t0 t1
    wait_step() {  # until the lead has done step $1, within the run's 30 minutes
        until (($(last_step "$out/run") >= $1)); do
            ((SECONDS < deadline)) || fail "$mode, $n hosts: step $1 not reached in time (logs: $out)"
            kill -0 "${pids[0]}" 2>/dev/null || fail "$mode, $n hosts: the coordinator exited: $(tail -n 2 "$out/coordinator.log")"
            sleep 0.1
        done
    }
    wait_step "$warmup"
    local s0; s0=$(last_step "$out/run")
    t0=$(date +%s.%N)
    for ((i = 0; i < n; i++)); do tx0[i]=$(counter "$i" tx); rx0[i]=$(counter "$i" rx); done
    wait_step $((steps - 1))
    local s1; s1=$(last_step "$out/run")
    ((s1 > s0)) || fail "$mode, $n hosts: no step measured (steps $s0 to $s1)"
    t1=$(date +%s.%N)
    local tx=0 rx=0 d
    for ((i = 0; i < n; i++)); do
        d=$(($(counter "$i" tx) - tx0[i])); ((d > tx)) && tx=$d
        d=$(($(counter "$i" rx) - rx0[i])); ((d > rx)) && rx=$d
    done
    stop_all
    measured=$(python3 -c "import sys; k, t0, t1, tx, rx, chars = map(float, sys.argv[1:])
print(f'{chars * k / (t1 - t0):.0f} {tx / k:.0f} {rx / k:.0f}')" "$((s1 - s0))" "$t0" "$t1" "$tx" "$rx" "$((columns * 50))")
}

echo "$me: cpu $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; load at start $(cut -d' ' -f1-3 /proc/loadavg); rate $rate per link and direction; steps $warmup..$((steps - 1)) measured"
# P: the default model's parameters, in bytes (from a one-step run's checkpoint).
"$bard" train --recipe default --data "$data" --steps 1 --sample-length 0 --out "$tmp/p" --threads 1 >"$tmp/p.log" 2>&1 ||
    fail "cannot train the default model for its size: $(tail -n 1 "$tmp/p.log")"
params=$(sed -n 's/.*; \([0-9]*\) parameters;.*/\1/p' "$tmp/p.log" | head -n 1)
pbytes=$((4 * params))
echo "$me: the default model has $params parameters: P = $pbytes bytes"
echo
echo "| hosts | columns | mode | chars/s | busiest link, out per step | in per step | out / P | in / P |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
for n in $hosts_list; do
    column_counts=32
    ((8 * n != 32)) && column_counts="32 $((8 * n))"  # 8 x 4 = 32: measured once
    for columns in $column_counts; do
        for mode in star sharded; do
            run "$n" "$mode" "$columns"
            read -r cps tx rx <<<"$measured"
            python3 -c "import sys; n, c, m, cps, tx, rx, p = sys.argv[1:]; tx, rx, p = float(tx), float(rx), float(p)
print(f'| {n} | {c} | {m} | {cps} | {tx / 1e6:.1f} MB | {rx / 1e6:.1f} MB | {tx / p:.2f} | {rx / p:.2f} |')" \
                "$n" "$columns" "$mode" "$cps" "$tx" "$rx" "$pbytes"
        done
    done
done
echo
echo "$me: load at end $(cut -d' ' -f1-3 /proc/loadavg)"
