#!/usr/bin/env bash
# Host-side entry of the Soft-RoCE VM tests (real RDMA in qemu guests, see
# scripts/vm/rxe-vm.sh). Runs each entry of TESTS, prints PASS/FAIL per entry
# and a final "N passed, M failed"; exits non-zero if any failed.
# Needs root and a prepared harness (scripts/vm/setup-vm.sh).
#
#   test/vm/run.sh [NAME_FILTER]    only entries whose name contains the filter
#
# Each VM run is bounded by SMC_VM_TIMEOUT (seconds, default 300). Keep the
# entries short: each one boots one or two emulated VMs (about 20 s for one,
# 50 s for two), and CI runs all of them.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/../.."

# One entry per run: "NAME|MODE|SCRIPT[ SCRIPT_B][ ARGS...]"
#   MODE one: SCRIPT runs in one VM (rxe0 on a dummy netdev, loopback)
#   MODE two: SCRIPT in VM a, SCRIPT_B in VM b (rxe0 on each, one network)
# Scripts and ARGS are split on spaces (no spaces inside them).
TESTS=(
  "smoke_one|one|test/vm/smoke_one.sh"
  "smoke_two|two|test/vm/smoke_two.sh test/vm/smoke_two.sh"
  "rdma_one|one|test/vm/rdma_one.sh"
  "handoff_rdma|one|test/vm/handoff_rdma.sh"
  "apps_rdma|one|test/vm/apps_rdma.sh"
  "rdma_two|two|test/vm/rdma_two.sh test/vm/rdma_two.sh"
  "kernel_interop|two|test/vm/kernel_interop.sh test/vm/kernel_interop.sh"
)

filter=${1:-}
passed=0
failed=0
crashes=0
failures=()

for entry in "${TESTS[@]}"; do
  IFS='|' read -r name mode words <<< "$entry"
  [[ -z $filter || $name == *"$filter"* ]] || continue
  read -ra argv <<< "$words"
  echo "=== vm test $name ($mode: ${argv[*]})"
  start=$SECONDS
  rc=0
  scripts/vm/rxe-vm.sh "$mode" "${argv[@]}" || rc=$?
  tries=1
  while [ "$rc" -eq 75 ] && [ "$tries" -lt 3 ]; do
    # The emulated guest's kernel crashed (under TCG, in the kernel's own
    # code: a double fault in rxe's packet allocation, seen in a few percent
    # of two-VM runs, also in a guest where only Linux's own SMC runs): that
    # says nothing about the test. Up to twice more; a third crash fails it.
    echo "=== vm test $name: guest kernel crashed; running it again"
    crashes=$((crashes + 1))
    tries=$((tries + 1))
    rc=0
    scripts/vm/rxe-vm.sh "$mode" "${argv[@]}" || rc=$?
  done
  if [ "$rc" -eq 0 ]; then
    echo "PASS $name ($((SECONDS - start)) s)"
    passed=$((passed + 1))
  else
    echo "FAIL $name ($((SECONDS - start)) s)"
    failed=$((failed + 1))
    failures+=("$name")
  fi
done

echo
for f in "${failures[@]}"; do
  echo "failed: $f"
done
[ "$crashes" -eq 0 ] || echo "guest kernel crashes (retried): $crashes"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
