#!/usr/bin/env bash
# Guest script for two VMs (rxe-vm.sh two): SMC-R between two hosts, next to
# the device's own numbers and to the Linux kernel's own SMC-R (smc.ko, AF_SMC
# sockets) on the same devices, and to plain TCP, in one run:
#   perftest ib_write_lat / ib_send_lat / ib_write_bw,
#   smc_bench ping-pong and stream under smc_run -t rdma (the preload),
#   the same smc_bench on AF_SMC (TEST_AF_SMC=1: the kernel's SMC-R),
#   the same smc_bench on plain TCP.
# VM a serves, VM b measures and prints the table. A benchmark: it prints
# numbers and asserts nothing (it fails only when a step cannot run). Under
# TCG emulation only the ratios mean something, and they swing from run to
# run; between these two single-vCPU guests every RDMA round trip costs tens
# of milliseconds (TCP's does not), the same for perftest, Linux's SMC-R and
# ours, so the latency rows compare protocols, not CPU costs (the one-VM
# bench_rdma.sh does that). About 3 minutes:
#   scripts/vm/rxe-vm.sh two test/vm/bench_two.sh test/vm/bench_two.sh
set -u
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

res=$SMC_VM_RESULTS
dev=$SMC_VM_IBDEV
iters=${BENCH_ITERS:-200}
ueid=BENCH-SITE.1
export SMC_UEID=bench-site.1
unset SMC_LOG_LEVEL SMC_CONFIG SMC_PEERS

modprobe smc || fail "modprobe smc"
python3 "$here/kernel_smc_setup.py" "$ueid" "$SMC_VM_NETDEV" "$dev" || fail "kernel SMC setup"

have() { [ -s "$res/$1" ]; }

# step NAME KIND ARGS...: one measurement. KIND perf:TOOL runs a perftest
# tool, floor runs verbs_floor, else smc_bench as KIND (smc: under smc_run -t
# rdma; kernel: AF_SMC; tcp: plain). VM a serves (verbs_floor and smc_bench
# publish NAME.port), VM b runs the client and keeps its output in NAME.out.
step() {
  local name=$1 kind=$2
  shift 2
  local wrap=()
  case $kind in
    smc) wrap=(env SMC_PEERS="$SMC_VM_PEER_IP" "$smc_run" -t rdma) ;;
    kernel) wrap=(env TEST_AF_SMC=1) ;;
  esac
  if [ "$SMC_VM_ROLE" = a ]; then
    if [[ $kind == perf:* ]]; then
      timeout 120 "${kind#perf:}" -d "$dev" -x "$SMC_VM_GID_INDEX" "$@" > /dev/null 2>&1 ||
        fail "$name server"
    elif [ "$kind" = floor ]; then
      timeout 120 "$build/verbs_floor" server --addr "$SMC_VM_IP" --portfile "$res/$name.port" \
        "$@" > /dev/null 2>&1 || fail "$name server"
    else
      timeout 120 "${wrap[@]}" "$build/smc_bench" server --addr "$SMC_VM_IP" --port 0 \
        --portfile "$res/$name.port" "$@" > /dev/null 2>&1 || fail "$name server"
    fi
    retry_for 120 have "$name.done" > /dev/null
  else
    if [[ $kind == perf:* ]]; then
      # perftest's server listens on a fixed port: try until it is there.
      retry_for 60 timeout 120 "${kind#perf:}" -d "$dev" -x "$SMC_VM_GID_INDEX" "$@" \
        "$SMC_VM_PEER_IP" > "$res/$name.out" 2> /dev/null || fail "$name client"
    elif ! retry_for 60 have "$name.port" > /dev/null; then
      fail "$name: no server"
    elif [ "$kind" = floor ]; then
      timeout 120 "$build/verbs_floor" client --addr "$SMC_VM_PEER_IP" \
        --port "$(cat "$res/$name.port")" "$@" > "$res/$name.out" 2>&1 || fail "$name client"
    else
      timeout 120 "${wrap[@]}" "$build/smc_bench" client --addr "$SMC_VM_PEER_IP" \
        --port "$(cat "$res/$name.port")" "$@" > "$res/$name.out" 2>&1 || fail "$name client"
    fi
    echo > "$res/$name.done"
  fi
}

step write_lat perf:ib_write_lat -s 64 -n "$iters"
step send_lat perf:ib_send_lat -s 64 -n "$iters"
step write_bw perf:ib_write_bw -s 65536 -n 2000
step floor floor --pattern write_send --size 64 --iters "$iters"
for kind in smc kernel tcp; do
  step "pp_$kind" "$kind" --test pingpong --size 64 --iters "$iters"
  step "st_$kind" "$kind" --test stream --size 65536 --seconds 5
done

if [ "$SMC_VM_ROLE" = b ]; then
  # perftest prints: #bytes #iterations t_min t_max t_typical t_avg ...
  col() { awk -v c="$2" '/^ *[0-9]+ +[0-9]+ +[0-9.]+/ { print $c; exit }' "$res/$1.out"; }
  field() { sed -n "s/.*$2=\([0-9.]*\).*/\1/p" "$res/$1.out"; }
  echo
  echo "two VMs, $dev, $SMC_VM_IP -> $SMC_VM_PEER_IP, 64-byte round trips ($iters), 64 KiB stream:"
  printf '  %-34s %10s us (one-way, typical)\n' "ib_write_lat" "$(col write_lat 5)"
  printf '  %-34s %10s us (one-way, typical)\n' "ib_send_lat" "$(col send_lat 5)"
  printf '  %-34s %10s us (round trip, p50; avg %s)\n' "verbs_floor, WRITE+SEND (SMC-R's)" \
    "$(field floor p50_us)" "$(field floor avg_us)"
  for kind in smc kernel tcp; do
    label="smc_bench ping-pong, $kind"
    case $kind in
      smc) label="ping-pong, SMC-R (preload)" ;;
      kernel) label="ping-pong, SMC-R (Linux AF_SMC)" ;;
      tcp) label="ping-pong, TCP" ;;
    esac
    printf '  %-34s %10s us (round trip, p50; avg %s)\n' "$label" "$(field "pp_$kind" p50_us)" \
      "$(field "pp_$kind" avg_us)"
  done
  printf '  %-34s %10s MB/s\n' "ib_write_bw (64 KiB)" "$(col write_bw 4)"
  printf '  %-34s %10s MB/s\n' "stream, SMC-R (preload)" "$(field st_smc MBps)"
  printf '  %-34s %10s MB/s\n' "stream, SMC-R (Linux AF_SMC)" "$(field st_kernel MBps)"
  printf '  %-34s %10s MB/s\n' "stream, TCP" "$(field st_tcp MBps)"
  echo "  (perftest's latency is half a round trip: compare 2 x ib_write_lat with the ping-pongs)"
fi
[ "$failures" -eq 0 ]
