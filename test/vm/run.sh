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
  "rdma_two|two|test/vm/rdma_two.sh test/vm/rdma_two.sh"
)

filter=${1:-}
passed=0
failed=0
failures=()

for entry in "${TESTS[@]}"; do
  IFS='|' read -r name mode words <<< "$entry"
  [[ -z $filter || $name == *"$filter"* ]] || continue
  read -ra argv <<< "$words"
  echo "=== vm test $name ($mode: ${argv[*]})"
  start=$SECONDS
  if scripts/vm/rxe-vm.sh "$mode" "${argv[@]}"; then
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
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
