#!/usr/bin/env bash
# Guest script for two VMs (rxe-vm.sh two): the preload against the Linux
# kernel's own SMC-R (smc.ko, AF_SMC sockets), a peer we did not write.
#   round 1: VM a's kernel SMC server  <- VM b's client under the preload
#   round 2: VM a's server under the preload <- VM b's kernel SMC client
#   rounds 3 and 4: the same, with smc_cycles: 6 connections, 3 at a time,
#   from one process; those after the first share its link group, so Linux
#   announces their buffers with LLC CONFIRM RKEY and frees them with DELETE
#   RKEY, which the preload must answer (else Linux declines or stalls)
# Each round is smc_pair's verified stream both ways at once (TEST_AF_SMC=1
# gives the kernel side AF_SMC sockets). Both sides learn of each other from
# SMC's TCP option only (scripts/smc-bpf on the preload's side). The
# preload's stats must count an smc_rdma connection and no fallback, and
# rxe0 must have carried the bytes.
set -u
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

res=$SMC_VM_RESULTS
bytes=8M
# Both peers must share a UEID: a site's own, set on the preload's side by
# SMC_UEID (the kernel's table holds it in upper case).
ueid=INTEROP-SITE.1
export SMC_UEID=interop-site.1
# No SMC_PEERS: the preload finds its kernel peer by RFC 7609's TCP option
# alone (scripts/smc-bpf), as the kernel finds it.
export SMC_TRANSPORT=auto
unset SMC_PEERS SMC_LOG_LEVEL SMC_CONFIG

have() { [ -s "$res/$1" ]; }

modprobe smc || fail "modprobe smc"
grep -q " cgroup2 " /proc/mounts || mount -t cgroup2 none /sys/fs/cgroup || fail "mount cgroup2"
"$repo/scripts/smc-bpf" install || fail "smc-bpf install"
python3 "$here/kernel_smc_setup.py" "$ueid" "$SMC_VM_NETDEV" "$SMC_VM_IBDEV" ||
  fail "kernel SMC setup"
# The kernel's fallback reasons, should it decline (smc_switch_to_fallback).
tracing=/sys/kernel/tracing
mount -t tracefs tracefs "$tracing" 2> /dev/null
echo 1 > "$tracing/events/smc/smc_switch_to_fallback/enable" 2> /dev/null

# kernel_side NAME server|client ARGS...: smc_pair on AF_SMC, no preload.
kernel_side() {
  local name=$1
  shift
  TEST_AF_SMC=1 timeout 180 "$build/smc_pair" "$@" --bytes "$bytes" > "$res/$name.out" 2>&1
  local rc=$?
  [ "$rc" -eq 0 ] && pass "$name (kernel SMC-R): $(cat "$res/$name.out")" ||
    fail "$name (kernel SMC-R) exited $rc: $(cat "$res/$name.out")"
}

# preload_side NAME server|client ARGS...: smc_pair under smc_run; its stats
# must show the connection went over SMC-R.
preload_side() {
  local name=$1
  shift
  SMC_STATS_FILE=$res/$name.json timeout 180 "$smc_run" "$build/smc_pair" "$@" --bytes "$bytes" \
    > "$res/$name.out" 2>&1
  local rc=$?
  [ "$rc" -eq 0 ] && pass "$name (preload): $(cat "$res/$name.out")" ||
    fail "$name (preload) exited $rc: $(cat "$res/$name.out")"
  local r f
  r=$(json_int "$res/$name.json" smc_rdma)
  f=$(json_int "$res/$name.json" fallback)
  [ "${r:-0}" -ge 1 ] && [ "${f:-1}" -eq 0 ] && pass "$name counted smc_rdma=$r, fallback=$f" ||
    fail "$name: smc_rdma=${r:-none} fallback=${f:-none}: $(cat "$res/$name.json" 2> /dev/null)"
}

# cycles NAME kernel|preload server|client ARGS...: smc_cycles, 6 connections,
# 3 at a time; the preload's side must count all 6 over SMC-R.
cycles() {
  local name=$1 side=$2 role=$3
  shift 3
  local run=(env TEST_AF_SMC=1)
  [ "$side" = preload ] && run=(env "SMC_STATS_FILE=$res/$name.json" "$smc_run")
  timeout 180 "${run[@]}" "$build/smc_cycles" "$role" "$@" --count 6 --parallel 3 \
    > "$res/$name.out" 2>&1
  local rc=$?
  [ "$rc" -eq 0 ] && pass "$name ($side): $(cat "$res/$name.out")" ||
    fail "$name ($side) exited $rc: $(cat "$res/$name.out")"
  if [ "$side" = preload ]; then
    local r
    r=$(json_int "$res/$name.json" smc_rdma)
    [ "${r:-0}" -eq 6 ] && pass "$name: all 6 connections over SMC-R" ||
      fail "$name: ${r:-0} of 6 connections over SMC-R: $(cat "$res/$name.json" 2> /dev/null)"
  fi
}

sent0=$(rxe_counter sent_pkts)
if [ "$SMC_VM_ROLE" = a ]; then
  kernel_side round1-server server --addr "$SMC_VM_IP" --portfile "$res/round1.port"
  preload_side round2-server server --addr "$SMC_VM_IP" --portfile "$res/round2.port"
  cycles round3-server kernel server --addr "$SMC_VM_IP" --portfile "$res/round3.port"
  cycles round4-server preload server --addr "$SMC_VM_IP" --portfile "$res/round4.port"
else
  if retry_for 120 have round1.port; then
    preload_side round1-client client --addr "$SMC_VM_PEER_IP" --port "$(cat "$res/round1.port")"
  else
    fail "round 1: the kernel server in VM a never published its port"
  fi
  if retry_for 120 have round2.port; then
    kernel_side round2-client client --addr "$SMC_VM_PEER_IP" --port "$(cat "$res/round2.port")"
  else
    fail "round 2: the preload server in VM a never published its port"
  fi
  if retry_for 120 have round3.port; then
    cycles round3-client preload client --addr "$SMC_VM_PEER_IP" --port "$(cat "$res/round3.port")"
  else
    fail "round 3: the kernel server in VM a never published its port"
  fi
  if retry_for 120 have round4.port; then
    cycles round4-client kernel client --addr "$SMC_VM_PEER_IP" --port "$(cat "$res/round4.port")"
  else
    fail "round 4: the preload server in VM a never published its port"
  fi
fi
sent=$(($(rxe_counter sent_pkts) - sent0))
mtu=$(ibv_devinfo -d "$SMC_VM_IBDEV" | sed -n 's/.*active_mtu:[^0-9]*\([0-9]*\).*/\1/p' | head -1)
need=$((8 * 1024 * 1024 / ${mtu:-4096}))
[ "$sent" -ge "$need" ] && pass "rxe0 sent $sent packets (8 MiB each round needs >= $need)" ||
  fail "rxe0 sent only $sent packets (8 MiB needs >= $need)"
echo "--- kernel log (smc):"
dmesg | grep -i "smc" | tail -20
echo "--- kernel fallbacks:"
grep -h smc_switch_to_fallback "$tracing/trace" 2> /dev/null | tail -5
summary
