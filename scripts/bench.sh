#!/usr/bin/env bash
# Benchmarks SMC (shm) against plain TCP on loopback, side by side, in one run:
# ping-pong latency and streaming throughput between two processes. Runs in a
# fresh network namespace when root (quiet loopback), else in the current one.
# Numbers, not pass/fail: this is a benchmark, not a test.
#
#   scripts/bench.sh [BUILD_DIR]     (default build/)
set -euo pipefail
root="$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)"
build="$(cd "${1:-$root/build}" && pwd)"
bench="$build/smc_bench"
smc_run="$root/scripts/smc_run"
[ -x "$bench" ] || { echo "bench.sh: $bench not built (run scripts/setup.sh)" >&2; exit 2; }

ns_exec=()
if [ "$(id -u)" -eq 0 ] && ip netns add "smcbench-$$" 2>/dev/null; then
  trap 'ip netns del "smcbench-$$" 2>/dev/null || true' EXIT
  ip netns exec "smcbench-$$" ip link set lo up
  ns_exec=(ip netns exec "smcbench-$$")
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; [ ${#ns_exec[@]} -eq 0 ] || ip netns del "smcbench-$$" 2>/dev/null || true' EXIT

run() {  # run tcp|smc ARGS...: prints the client's result line
  local mode=$1
  shift
  local wrap=()
  [ "$mode" = smc ] && wrap=("$smc_run" -p 127.0.0.1)
  rm -f "$tmp/port"
  "${ns_exec[@]}" "${wrap[@]}" "$bench" server --addr 127.0.0.1 --port 0 --portfile "$tmp/port" "$@" \
    >"$tmp/server.out" 2>&1 &
  local spid=$!
  for _ in $(seq 200); do [ -s "$tmp/port" ] && break; sleep 0.05; done
  "${ns_exec[@]}" "${wrap[@]}" "$bench" client --addr 127.0.0.1 --port "$(cat "$tmp/port")" "$@"
  wait "$spid"
}

field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p"; }

printf '%-28s %14s %14s %8s\n' "test" "tcp" "smc" "ratio"
for size in 64 4096 65536; do
  t=$(run tcp --test pingpong --size "$size" --iters 20000 | field avg_us)
  s=$(run smc --test pingpong --size "$size" --iters 20000 | field avg_us)
  printf '%-28s %11s us %11s us %7.1fx\n' "ping-pong ${size} B (avg)" "$t" "$s" "$(awk -v a="$t" -v b="$s" 'BEGIN { print a / b }')"
done
for size in 65536 1048576; do
  t=$(run tcp --test stream --size "$size" --seconds 3 | field MBps)
  s=$(run smc --test stream --size "$size" --seconds 3 | field MBps)
  printf '%-28s %9s MB/s %9s MB/s %7.1fx\n' "stream ${size} B writes" "$t" "$s" "$(awk -v a="$s" -v b="$t" 'BEGIN { print a / b }')"
done
