#!/usr/bin/env bash
# Runs the whole test suite: unit tests (plain and under ASan+UBSan), the
# process-pair integration tests under the preload in network namespaces, and
# the RDMA tests in Soft-RoCE VMs.
# Exits non-zero on any failure. Needs root (namespaces). Run scripts/setup.sh first.
set -uo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

passed=0
failed=0
failures=()
step() {  # step NAME COMMAND...
  local name=$1
  shift
  echo "=== $name"
  if "$@"; then
    passed=$((passed + 1))
    echo "=== $name: PASS"
  else
    failed=$((failed + 1))
    failures+=("$name")
    echo "=== $name: FAIL"
  fi
}

for b in build build-asan; do
  if [ ! -d "$b" ]; then
    echo "test.sh: $b/ missing: run scripts/setup.sh first" >&2
    exit 2
  fi
done

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
step "unit tests" ctest --test-dir build --output-on-failure
step "unit tests (ASan+UBSan)" ctest --test-dir build-asan --output-on-failure
step "process pairs under the preload" test/integration/run_pairs.sh build scripts/smc_run

# The same pairs with the library built under ASan+UBSan: the programs stay
# uninstrumented, the sanitizer runtime is preloaded first, then our library.
libasan=$(gcc -print-file-name=libasan.so)
step "process pairs under the ASan+UBSan preload" \
  env SMC_PRELOAD_LIB="$PWD/build-asan/libsmc_preload.so" LD_PRELOAD="$libasan" \
  ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=0 \
  test/integration/run_pairs.sh build scripts/smc_run

# Unmodified real applications (redis, nginx, memcached, iperf3, sockperf, a
# fork-per-connection socat) under smc_run, each in its own namespace.
step "real applications under smc_run" test/apps/run.sh

# Real RDMA: the same library over the kernel's Soft-RoCE in qemu guests.
step "RDMA in Soft-RoCE VMs" env SMC_VM_TIMEOUT=600 test/vm/run.sh

echo
for f in "${failures[@]}"; do
  echo "failed: $f"
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
