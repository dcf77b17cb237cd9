#!/usr/bin/env bash
# Guest script for two VMs (two hosts, rxe0 each, one network): a verified
# stream between the hosts over SMC-R, chosen by SMC_TRANSPORT=auto (the
# hosts differ, so not shm). VM a serves, VM b connects; the shared results
# dir carries the server's port. rxe0's sent_pkts proves the bytes crossed
# the RDMA device, the stats that both sides counted an smc_rdma connection.
set -u
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

res=$SMC_VM_RESULTS
bytes=16M
export SMC_PEERS=10.9.0.0/24 SMC_TRANSPORT=auto
unset SMC_LOG_LEVEL SMC_CONFIG

wait_port() { [ -s "$res/port" ]; }

sent0=$(rxe_counter sent_pkts)
if [ "$SMC_VM_ROLE" = a ]; then
  SMC_STATS_FILE=$res/server.json timeout 240 "$smc_run" "$build/smc_pair" server \
    --addr "$SMC_VM_IP" --portfile "$res/port" --mode epoll --bytes "$bytes" > "$res/server.out" 2>&1
  rc=$?
  out=$(cat "$res/server.out")
  [ "$rc" -eq 0 ] && pass "server: $out" || fail "server exited $rc: $out"
  r=$(json_int "$res/server.json" smc_rdma)
  [ "${r:-0}" -ge 1 ] && pass "server counted an smc_rdma connection" ||
    fail "server smc_rdma=${r:-none}: $(cat "$res/server.json" 2> /dev/null)"
else
  if retry_for 120 wait_port; then
    SMC_STATS_FILE=$res/client.json timeout 240 "$smc_run" "$build/smc_pair" client \
      --addr "$SMC_VM_PEER_IP" --port "$(cat "$res/port")" --mode epoll --bytes "$bytes" \
      > "$res/client.out" 2>&1
    rc=$?
    out=$(cat "$res/client.out")
    [ "$rc" -eq 0 ] && pass "client: $out" || fail "client exited $rc: $out"
    r=$(json_int "$res/client.json" smc_rdma)
    [ "${r:-0}" -ge 1 ] && pass "client counted an smc_rdma connection" ||
      fail "client smc_rdma=${r:-none}: $(cat "$res/client.json" 2> /dev/null)"
  else
    fail "the server in VM a never published its port"
  fi
fi
sent=$(($(rxe_counter sent_pkts) - sent0))
mtu=$(ibv_devinfo -d "${SMC_VM_IBDEV:-rxe0}" | sed -n 's/.*active_mtu:[^0-9]*\([0-9]*\).*/\1/p' | head -1)
need=$((16 * 1024 * 1024 / ${mtu:-4096}))
[ "$sent" -ge "$need" ] && pass "rxe0 sent $sent packets (16 MiB needs >= $need)" ||
  fail "rxe0 sent only $sent packets (16 MiB needs >= $need)"
summary
