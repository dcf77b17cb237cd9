#!/usr/bin/env bash
# Guest script (rxe-vm.sh one): proves the one-VM Soft-RoCE setup works.
# rxe0 is ACTIVE, it has the RoCE v2 GID of 10.9.0.1, and perftest's
# ib_write_lat runs over it in loopback (rxe0 to itself) while rxe0's packet
# counter grows, i.e. the traffic really went through the Soft-RoCE device.
set -uo pipefail
# shellcheck source=test/vm/lib.sh
. "$(dirname "$(readlink -f "$0")")/lib.sh"

dev=$SMC_VM_IBDEV
ip=$SMC_VM_IP
gid=$SMC_VM_GID_INDEX

echo "--- rdma link"
rdma link
devinfo=$(ibv_devinfo -d "$dev")
echo "--- ibv_devinfo -d $dev"
echo "$devinfo"
check "ibv_devinfo: $dev port 1 is PORT_ACTIVE" grep -q 'state:.*PORT_ACTIVE' <<< "$devinfo"

echo "--- GID table of $dev port 1"
print_gids
check "RoCE v2 GID for $ip" has_roce_v2_gid "$ip"

sent_before=$(rxe_counter sent_pkts) || sent_before=""
check "hw_counters/sent_pkts readable ($sent_before)" test -n "$sent_before"

# Server in the background; the client retries (bounded) until it listens.
# Under emulation perftest's clock calibration sometimes gives up after the
# two connected ("Correlation coefficient r^2 < 0.9"), failing both ends:
# the pair runs again, up to three times.
echo "--- ib_write_lat loopback over $dev to $ip (GID index $gid)"
for attempt in 1 2 3; do
  timeout 120 ib_write_lat -d "$dev" -x "$gid" -n 200 > "$SMC_VM_RESULTS/write_lat_server.txt" 2>&1 &
  server=$!
  retry_for 30 timeout 60 ib_write_lat -d "$dev" -x "$gid" -n 200 "$ip"
  client_rc=$?
  wait "$server"
  server_rc=$?
  [ "$client_rc" -ne 0 ] || [ "$server_rc" -ne 0 ] || break
  echo "ib_write_lat pair failed (client $client_rc, server $server_rc), attempt $attempt"
done
check "ib_write_lat client" test "$client_rc" -eq 0
check "ib_write_lat server" test "$server_rc" -eq 0

sent_after=$(rxe_counter sent_pkts)
echo "  $dev sent_pkts: $sent_before -> $sent_after"
check "sent_pkts grew by at least 400 (2 x 200 iterations)" test "$((sent_after - ${sent_before:-0}))" -ge 400

summary
