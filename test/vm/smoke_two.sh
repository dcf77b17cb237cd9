#!/usr/bin/env bash
# Guest script (rxe-vm.sh two, both VMs): proves two VMs can do RDMA over
# their Soft-RoCE devices across the qemu network. A runs perftest servers,
# B the clients: ib_write_bw, then ib_write_lat (each on its own TCP port, so
# B's second client cannot reach A's first server). B retries each client,
# bounded, until A's server listens; A runs a server again when its run
# failed (under emulation perftest's clock calibration sometimes gives up
# after the two connected: "Correlation coefficient r^2 < 0.9").
set -uo pipefail
# shellcheck source=test/vm/lib.sh
. "$(dirname "$(readlink -f "$0")")/lib.sh"

dev=$SMC_VM_IBDEV
gid=$SMC_VM_GID_INDEX
peer=$SMC_VM_PEER_IP
bw=(ib_write_bw -d "$dev" -x "$gid" -n 200 -p 18515)
lat=(ib_write_lat -d "$dev" -x "$gid" -n 200 -p 18516)

echo "--- $SMC_VM_ROLE: $SMC_VM_IP, peer $peer"
rdma link
check "RoCE v2 GID for $SMC_VM_IP" has_roce_v2_gid "$SMC_VM_IP"
sent_before=$(rxe_counter sent_pkts)

case $SMC_VM_ROLE in
  a)
    # Bounded: if B never comes, fail instead of hanging.
    check "ib_write_bw server" retry_for 180 timeout 120 "${bw[@]}"
    check "ib_write_lat server" retry_for 120 timeout 120 "${lat[@]}"
    ;;
  b)
    check "ib_write_bw client to $peer" retry_for 120 timeout 120 "${bw[@]}" "$peer"
    check "ib_write_lat client to $peer" retry_for 60 timeout 120 "${lat[@]}" "$peer"
    ;;
  *)
    fail "unknown role $SMC_VM_ROLE (run with rxe-vm.sh two)"
    ;;
esac

sent_after=$(rxe_counter sent_pkts)
echo "  $dev sent_pkts: $sent_before -> $sent_after"
check "rxe0 sent packets" test "$sent_after" -gt "$sent_before"

summary
