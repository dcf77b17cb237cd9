#!/usr/bin/env bash
# Guest script (one VM): SMC-R next to the device's own numbers, in one run on
# rxe0 (loopback): perftest's ib_write_lat / ib_send_lat / ib_write_bw,
# verbs_floor (SMC-R's wire pattern, an RDMA WRITE and a CDC-sized SEND per
# message, on bare verbs: the floor for any SMC-R), our ping-pong (blocking
# reads, and an event loop's epoll_wait) and stream under smc_run -t rdma,
# and plain TCP on the same address. A benchmark: it prints numbers, it
# asserts nothing. Under TCG emulation only the ratios mean something, and
# they swing from run to run.
# Latency wants truly parallel vCPUs and a spin longer than the emulated
# round trip (perftest busy-polls without limit):
#   SMC_VM_TCG_THREAD=multi SMC_SPIN_US=2000 scripts/vm/rxe-vm.sh one test/vm/bench_rdma.sh
set -u
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
ip=$SMC_VM_IP
dev=${SMC_VM_IBDEV:-rxe0}
iters=${BENCH_ITERS:-2000}
tmp=$(mktemp -d)
unset SMC_LOG_LEVEL SMC_CONFIG

perf() {  # perf TOOL ARGS...: server and client of a perftest tool on loopback
  local tool=$1
  shift
  "$tool" -d "$dev" -x "$SMC_VM_GID_INDEX" "$@" > "$tmp/perf_srv.out" 2>&1 &
  local spid=$!
  local out=""
  for _ in $(seq 40); do
    out=$("$tool" -d "$dev" -x "$SMC_VM_GID_INDEX" "$@" "$ip" 2> /dev/null) && break
    sleep 0.25
  done
  wait "$spid" 2> /dev/null
  echo "$out"
}

bench() {  # bench tcp|smc ARGS...: our smc_bench, plain or under smc_run -t rdma
  local mode=$1
  shift
  local wrap=()
  [ "$mode" = smc ] && wrap=(env SMC_PEERS="$ip" "$smc_run" -t rdma)
  rm -f "$tmp/port"
  "${wrap[@]}" "$build/smc_bench" server --addr "$ip" --port 0 --portfile "$tmp/port" "$@" \
    > "$tmp/bench_srv.out" 2>&1 &
  local spid=$!
  retry_for 30 test -s "$tmp/port" > /dev/null
  "${wrap[@]}" "$build/smc_bench" client --addr "$ip" --port "$(cat "$tmp/port")" "$@"
  wait "$spid"
}

floor() {  # floor ARGS...: verbs_floor server and client on loopback
  rm -f "$tmp/port"
  "$build/verbs_floor" server --addr "$ip" --portfile "$tmp/port" "$@" > "$tmp/floor_srv.out" 2>&1 &
  local spid=$!
  retry_for 30 test -s "$tmp/port" > /dev/null
  "$build/verbs_floor" client --addr "$ip" --port "$(cat "$tmp/port")" "$@"
  wait "$spid"
}

# perftest prints: #bytes #iterations t_min t_max t_typical t_avg ...
lat_typ() { awk '/^ *[0-9]+ +[0-9]+ +[0-9.]+/ { print $5; exit }'; }
bw_avg() { awk '/^ *[0-9]+ +[0-9]+ +[0-9.]+/ { print $4; exit }'; }
field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p"; }

wl=$(perf ib_write_lat -s 64 -n "$iters" | lat_typ)
sl=$(perf ib_send_lat -s 64 -n "$iters" | lat_typ)
wb=$(perf ib_write_bw -s 65536 -n 2000 | bw_avg)
fs=$(floor --pattern send --size 64 --iters "$iters")
fw=$(floor --pattern write_send --size 64 --iters "$iters")
sp=$(bench smc --test pingpong --size 64 --iters "$iters")
tp=$(bench tcp --test pingpong --size 64 --iters "$iters")
se=$(bench smc --test pingpong --size 64 --iters "$iters" --wait epoll)
te=$(bench tcp --test pingpong --size 64 --iters "$iters" --wait epoll)
ss=$(bench smc --test stream --size 65536 --seconds 5)
ts=$(bench tcp --test stream --size 65536 --seconds 5)

echo
echo "one VM, $dev loopback ($ip), 64-byte round trips ($iters), 64 KiB stream:"
printf '  %-34s %10s us (one-way, typical)\n' "ib_write_lat" "$wl"
printf '  %-34s %10s us (one-way, typical)\n' "ib_send_lat" "$sl"
printf '  %-34s %10s us (round trip, avg; p50 %s)\n' "verbs_floor, SEND" "$(echo "$fs" | field avg_us)" "$(echo "$fs" | field p50_us)"
printf '  %-34s %10s us (round trip, avg; p50 %s)\n' "verbs_floor, WRITE+SEND (SMC-R's)" "$(echo "$fw" | field avg_us)" "$(echo "$fw" | field p50_us)"
printf '  %-34s %10s us (round trip, avg; p50 %s)\n' "smc_bench ping-pong, SMC-R" "$(echo "$sp" | field avg_us)" "$(echo "$sp" | field p50_us)"
printf '  %-34s %10s us (round trip, avg; p50 %s)\n' "smc_bench ping-pong, TCP" "$(echo "$tp" | field avg_us)" "$(echo "$tp" | field p50_us)"
printf '  %-34s %10s us (round trip, avg; p50 %s)\n' "the same in epoll_wait, SMC-R" "$(echo "$se" | field avg_us)" "$(echo "$se" | field p50_us)"
printf '  %-34s %10s us (round trip, avg; p50 %s)\n' "the same in epoll_wait, TCP" "$(echo "$te" | field avg_us)" "$(echo "$te" | field p50_us)"
printf '  %-34s %10s MB/s\n' "ib_write_bw (64 KiB)" "$wb"
printf '  %-34s %10s MB/s\n' "smc_bench stream, SMC-R" "$(echo "$ss" | field MBps)"
printf '  %-34s %10s MB/s\n' "smc_bench stream, TCP" "$(echo "$ts" | field MBps)"
echo "  (perftest's latency is half a round trip: compare 2 x ib_write_lat with the ping-pong)"
rm -rf "$tmp"
