#!/usr/bin/env bash
# run.sh: unmodified real applications under scripts/smc_run, each in its own
# fresh network namespace (test/apps/<app>.sh): both ends under smc_run with
# SMC_PEERS set; the application's own verification, the stats files showing
# shm SMC connections, and the namespace's loopback carrying under 5% of the
# payload (proof that the bytes went over SMC, not TCP).
#
# usage (as root): test/apps/run.sh [APP...]    (default: all)
#   SMC_RUN=path   use another smc_run (a stub that only execs makes every
#                  loopback check fail: the tests can fail)
#   SMC_PRELOAD_LIB=path   the library smc_run preloads (e.g. the ASan build)
# Prints "PASS app: ..." / "FAIL app: ..." per application, then
# "N passed, M failed"; exits non-zero if any failed.
set -u
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
apps=("$@")
if [ ${#apps[@]} -eq 0 ]; then
  apps=(redis redis_fdlimit nginx memcached iperf3 sockperf socat node_cluster nginx_proxy nginx_php twemproxy haproxy sshd)
fi
passed=0
failed=0
for a in "${apps[@]}"; do
  if [ ! -x "$here/$a.sh" ]; then
    echo "FAIL $a: no test/apps/$a.sh"
    failed=$((failed + 1))
    continue
  fi
  t0=$(date +%s)
  if "$here/$a.sh"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
  fi
  echo "  ($a: $(($(date +%s) - t0)) s)"
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
