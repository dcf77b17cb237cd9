#!/usr/bin/env bash
# Benchmarks SMC (shm) against plain TCP on loopback with real tools, side by
# side in one run and one fresh network namespace (quiet loopback). Every
# workload runs TCP then SMC, alternately, BENCH_ROUNDS times (default 5),
# each run with fresh server processes (under scripts/smc_run -p 127.0.0.1
# for SMC, plain for TCP; clients the same); it prints the median [min-max]
# of each side, the ratio of the medians (SMC/TCP) and the target. Then the
# system-call and fd counts (strace -f -c; /proc/PID/fd). Numbers, not
# pass/fail: it never fails on a missed target. Results: BENCHMARKS.md.
#
#   scripts/bench.sh [BUILD_DIR] [WORKLOAD...]      (as root; default build/)
#
# Workloads (default: all, in this order):
#   pingpong     smc_bench ping-pong, 64 B / 4 KiB / 64 KiB, 20000 round trips
#   stream       smc_bench stream, 64 KiB and 1 MiB writes, 3 s
#   redis1       redis-benchmark -t set,get -d 64 -c 1 -n 20000
#   redis50      redis-benchmark -t set,get -d 64 -c 50 -n 20000
#   nginx_ka     nginx (1 worker) + wrk -t 1 -c 50 -d 3s, a 1 KiB file, keep-alive
#   nginx_close  the same with -H 'Connection: close' (a connection per request)
#   connrr       smc_bench connrr: 2000 sequential connect + 1 B request/response + close
#   sockperf     sockperf ping-pong --tcp -m 64 -t 3
#   syscalls     strace counts: redis-server (attached) and redis-benchmark per GET,
#                the connrr client per connection (also with the library
#                loaded but disabled, and enabled without -p: fallback),
#                redis-server fds per idle connection (BENCH_IDLE connections),
#                a python poll() echo server's waits on BENCH_POLL_CONNS
#                connections, each woken by one byte (per wait)
# Environment: BENCH_ROUNDS (5), BENCH_WORKLOADS (instead of arguments),
#   BENCH_IDLE (1000), BENCH_POLL_CONNS (40).
set -u
root="$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)"
build="$root/build"
if [ $# -gt 0 ] && [ -d "$1" ]; then
  build=$1
  shift
fi
build="$(cd "$build" && pwd)"
all_workloads="pingpong stream redis1 redis50 nginx_ka nginx_close connrr sockperf syscalls"
workloads=${*:-${BENCH_WORKLOADS:-$all_workloads}}
rounds=${BENCH_ROUNDS:-5}
idle_conns=${BENCH_IDLE:-1000}
poll_conns=${BENCH_POLL_CONNS:-40}
bench="$build/smc_bench"
smc_run="$root/scripts/smc_run"
python=$(command -v /usr/bin/python3 || command -v python3)

die() { echo "bench.sh: $*" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || die "needs root (a network namespace of its own)"
[ -x "$bench" ] || die "$bench not built (run scripts/setup.sh)"
[ -f "$build/libsmc_preload.so" ] || die "$build/libsmc_preload.so not built"
for w in $workloads; do
  case " $all_workloads " in
    *" $w "*) ;;
    *) die "unknown workload '$w' (one of: $all_workloads)" ;;
  esac
done
for tool in redis-server redis-benchmark nginx wrk sockperf strace ip ss timeout; do
  command -v "$tool" >/dev/null || echo "bench.sh: warning: $tool not installed (run scripts/setup.sh)" >&2
done

ns="smcbench-$$"
tmp=$(mktemp -d /tmp/smcbench.XXXXXX)
chmod 755 "$tmp"
cleanup() {
  local p
  for p in $(jobs -p); do kill -9 "$p" 2>/dev/null; done
  ip netns del "$ns" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ip netns add "$ns" || die "cannot create a network namespace"
ip netns exec "$ns" ip link set lo up
# Many short connections (connrr, Connection: close): a wide ephemeral range
# above the servers' ports.
ip netns exec "$ns" sysctl -qw net.ipv4.ip_local_port_range="20000 65000"
NS=(ip netns exec "$ns")
ulimit -n 65536 2>/dev/null || true

# One copy of the library for the whole run (a rebuild meanwhile does not
# mix versions); smc_run preloads it (SMC_PRELOAD_LIB).
mkdir -p "$tmp/lib" "$tmp/stats" "$tmp/res" "$tmp/log"
lib="$tmp/lib/libsmc_preload.so"
cp -p "$build/libsmc_preload.so" "$lib"
# Nothing SMC_* from the caller or /etc: smc_run sets what SMC runs need.
unset SMC_ENABLE SMC_PEERS SMC_TRANSPORT SMC_RMB_SIZE SMC_DEVICES SMC_SPIN_US SMC_UEID \
  SMC_LOG_LEVEL SMC_LOG_FILE SMC_STATS_FILE LD_PRELOAD
export SMC_CONFIG="" SMC_PRELOAD_LIB="$lib"

NOTES=()
note() { NOTES+=("$*"); echo "  note: $*" >&2; }

# wrap MODE TAG: the command prefix W of a process run as MODE:
#   tcp       plain, no library
#   smc       scripts/smc_run -p 127.0.0.1 (stats in $tmp/stats/TAG.PID.json)
#   disabled  LD_PRELOAD=the library, SMC_ENABLE unset
#   fallback  scripts/smc_run without -p (a client proposes SMC to nobody)
wrap() {
  case $1 in
    tcp) W=() ;;
    smc) W=(env "SMC_STATS_FILE=$tmp/stats/$2.%p.json" "$smc_run" -p 127.0.0.1) ;;
    disabled) W=(env "LD_PRELOAD=$lib") ;;
    fallback) W=(env "SMC_STATS_FILE=$tmp/stats/$2.%p.json" "$smc_run") ;;
  esac
}

# start_bg LOG MODE TAG cmd...: a server in the namespace (bounded to 300 s);
# sets BG (the pid of its `timeout`, which forwards signals).
start_bg() {
  local log=$1 mode=$2 tag=$3
  shift 3
  wrap "$mode" "$tag"
  "${NS[@]}" timeout -k 5 300 "${W[@]}" "$@" >"$tmp/log/$log" 2>&1 &
  BG=$!
}

# run_ns LOG SECS cmd...: cmd in the namespace, bounded to SECS, output to
# $tmp/log/LOG, which ends with a line saying so if it timed out or failed.
run_ns() {
  local log=$1 secs=$2 rc
  shift 2
  "${NS[@]}" timeout -k 5 "$secs" "$@" >"$tmp/log/$log" 2>&1
  rc=$?
  case $rc in
    0) ;;
    124 | 137) echo "[timed out after $secs s]" >>"$tmp/log/$log" ;;
    *) echo "[exit status $rc]" >>"$tmp/log/$log" ;;
  esac
  return "$rc"
}

# run_fg LOG MODE TAG SECS cmd...: a client run as MODE (run_ns).
run_fg() {
  local log=$1 mode=$2 tag=$3 secs=$4
  shift 4
  wrap "$mode" "$tag"
  run_ns "$log" "$secs" "${W[@]}" "$@"
}

# stop_bg PID [SIGNAL]: asks the server to exit (default TERM), waits 10 s,
# then kills it and what it started.
stop_bg() {
  local pid=$1 sig=${2:-TERM} i c
  kill "-$sig" "$pid" 2>/dev/null
  for ((i = 0; i < 200; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  if kill -0 "$pid" 2>/dev/null; then
    note "a server (pid $pid) still ran 10 s after SIG$sig; killed"
    for c in $(pgrep -P "$pid"); do kill -9 "$c" 2>/dev/null; done
    kill -9 "$pid" 2>/dev/null
  fi
  wait "$pid" 2>/dev/null
}

# wait_listen PORT PID: until something listens on PORT in the namespace (10 s).
wait_listen() {
  local i
  for ((i = 0; i < 200; i++)); do
    "${NS[@]}" ss -Hltn "sport = :$1" 2>/dev/null | grep -q . && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

# child_pid PID: the process `timeout` PID runs.
child_pid() { pgrep -P "$1" | head -n 1; }

# record METRIC MODE VALUE: one result.
record() {
  if [[ $3 =~ ^[0-9]+([.][0-9]+)?$ ]]; then
    echo "$3" >>"$tmp/res/$1.$2"
  else
    note "$1 ($2): no result (got '${3}')"
  fi
}

# smc_check WORKLOAD TAG: counts the SMC (shm) connections and fallbacks that
# the client processes of an SMC run reported (their stats files).
smc_check() {
  local f shm=0 fb=0 v
  for f in "$tmp/stats/$2".*.json; do
    [ -f "$f" ] || continue
    v=$(sed -n 's/.*"smc_shm": \([0-9]*\).*/\1/p' "$f")
    shm=$((shm + ${v:-0}))
    v=$(sed -n 's/.*"fallback": \([0-9]*\).*/\1/p' "$f")
    fb=$((fb + ${v:-0}))
  done
  echo "$shm $fb" >>"$tmp/res/$1.smccheck"
}

log_tail() { tr '\r' '\n' <"$tmp/log/$1" 2>/dev/null | grep -v '^ *$' | tail -n 2 | tr -s ' \n' ' ' | cut -c1-300; }

field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" | head -n 1; }

# ---- workloads: each function runs one round of one mode ----

run_smc_bench() {  # run_smc_bench MODE TAG ARGS...: prints the client's result line
  local mode=$1 tag=$2 port
  shift 2
  rm -f "$tmp/port"
  start_bg "$tag.server" "$mode" "$tag.server" "$bench" server --addr 127.0.0.1 --port 0 --portfile "$tmp/port" "$@"
  local spid=$BG i
  for ((i = 0; i < 200; i++)); do [ -s "$tmp/port" ] && break; sleep 0.05; done
  port=$(cat "$tmp/port" 2>/dev/null)
  if [ -z "$port" ]; then
    note "$tag: smc_bench server did not start ($(log_tail "$tag.server"))"
    stop_bg "$spid" KILL
    return
  fi
  if ! run_fg "$tag.client" "$mode" "$tag.client" 120 "$bench" client --addr 127.0.0.1 --port "$port" "$@"; then
    note "$tag: smc_bench client failed ($(log_tail "$tag.client"))"
  fi
  stop_bg "$spid"
  cat "$tmp/log/$tag.client"
}

wl_pingpong() {
  local size out
  for size in 64 4096 65536; do
    out=$(run_smc_bench "$1" "pingpong$size.$2.$1" --test pingpong --size "$size" --iters 20000)
    record "pingpong$size" "$1" "$(field avg_us <<<"$out")"
  done
}

wl_stream() {
  local size out
  for size in 65536 1048576; do
    out=$(run_smc_bench "$1" "stream$size.$2.$1" --test stream --size "$size" --seconds 3)
    record "stream$size" "$1" "$(field MBps <<<"$out")"
  done
}

wl_connrr() {
  local out
  out=$(run_smc_bench "$1" "connrr.$2.$1" --test connrr --size 1 --iters 2000 --conns 2000)
  record connrr "$1" "$(field per_sec <<<"$out")"
  record connrr_us "$1" "$(field avg_us <<<"$out")"
}

redis_port=6379
start_redis() {  # start_redis LOG MODE TAG [MAXCLIENTS]: sets BG, returns non-zero if it does not listen
  start_bg "$1" "$2" "$3" redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$tmp" --daemonize no --protected-mode no --maxclients "${4:-10000}"
  if ! wait_listen "$redis_port" "$BG"; then
    note "$3: redis-server did not listen ($(log_tail "$1"))"
    stop_bg "$BG" KILL
    return 1
  fi
}

wl_redis() {  # wl_redis MODE ROUND CLIENTS REQUESTS
  local mode=$1 c=$3 n=$4 tag="redis$3.$2.$1" spid sum
  start_redis "$tag.server" "$mode" "$tag.server" || return
  spid=$BG
  if run_fg "$tag.client" "$mode" "$tag.client" 60 redis-benchmark -h 127.0.0.1 -p "$redis_port" \
    -t set,get -d 64 -c "$c" -n "$n" -q; then
    sum=$(tr '\r' '\n' <"$tmp/log/$tag.client" | grep 'requests per second')
    record "redis_set_$c" "$mode" "$(sed -n 's/^SET: \([0-9.]*\) requests per second.*/\1/p' <<<"$sum")"
    record "redis_get_$c" "$mode" "$(sed -n 's/^GET: \([0-9.]*\) requests per second.*/\1/p' <<<"$sum")"
  else
    note "$tag: redis-benchmark failed ($(log_tail "$tag.client"))"
  fi
  stop_bg "$spid"
  [ "$mode" = smc ] && smc_check "redis$c" "$tag.client"
}
wl_redis1() { wl_redis "$1" "$2" 1 20000; }
wl_redis50() { wl_redis "$1" "$2" 50 20000; }

nginx_port=8080
nginx_setup() {
  [ -f "$tmp/nginx.conf" ] && return
  mkdir -p "$tmp/www" "$tmp/nginx/logs" "$tmp/nginx/tmp"
  head -c 1024 /dev/urandom >"$tmp/www/1k.bin"
  cat >"$tmp/nginx.conf" <<EOF
user root root;
worker_processes 1;
daemon off;
master_process on;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_timeout 60;
  keepalive_requests 10000000;
  access_log off;
  default_type application/octet-stream;
  client_body_temp_path $tmp/nginx/tmp/body;
  proxy_temp_path $tmp/nginx/tmp/proxy;
  fastcgi_temp_path $tmp/nginx/tmp/fastcgi;
  uwsgi_temp_path $tmp/nginx/tmp/uwsgi;
  scgi_temp_path $tmp/nginx/tmp/scgi;
  server {
    listen 127.0.0.1:$nginx_port backlog=4096;
    root $tmp/www;
  }
}
EOF
}

wl_nginx() {  # wl_nginx MODE ROUND NAME [wrk options]
  local mode=$1 name=$3 tag="$3.$2.$1" spid rps
  shift 3
  nginx_setup
  start_bg "$tag.server" "$mode" "$tag.server" nginx -p "$tmp/nginx" -c "$tmp/nginx.conf"
  spid=$BG
  if ! wait_listen "$nginx_port" "$spid"; then
    note "$tag: nginx did not listen ($(tail -n 1 "$tmp/nginx/logs/error.log" 2>/dev/null))"
    stop_bg "$spid" KILL
    return
  fi
  if run_fg "$tag.client" "$mode" "$tag.client" 60 wrk -t 1 -c 50 -d 3s --timeout 5s "$@" \
    "http://127.0.0.1:$nginx_port/1k.bin"; then
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$tmp/log/$tag.client")
    if grep -q -e 'Socket errors' -e 'Non-2xx' "$tmp/log/$tag.client"; then
      note "$tag: wrk: $(grep -e 'Socket errors' -e 'Non-2xx' "$tmp/log/$tag.client" | tr -s ' ' | tr '\n' ' ')"
    fi
    record "$name" "$mode" "$rps"
  else
    note "$tag: wrk failed ($(log_tail "$tag.client"))"
  fi
  stop_bg "$spid" QUIT
  [ "$mode" = smc ] && smc_check "$name" "$tag.client"
}
wl_nginx_ka() { wl_nginx "$1" "$2" nginx_ka; }
wl_nginx_close() { wl_nginx "$1" "$2" nginx_close -H 'Connection: close'; }

sockperf_port=11111
wl_sockperf() {
  local mode=$1 tag="sockperf.$2.$1" spid out
  start_bg "$tag.server" "$mode" "$tag.server" sockperf server --tcp -i 127.0.0.1 -p "$sockperf_port"
  spid=$BG
  if ! wait_listen "$sockperf_port" "$spid"; then
    note "$tag: sockperf server did not listen ($(log_tail "$tag.server"))"
    stop_bg "$spid" KILL
    return
  fi
  # --mps: a cap above any rate reached (sockperf sizes its table of sent
  # messages by it; see test/apps/sockperf.sh), i.e. unpaced ping-pong.
  if run_fg "$tag.client" "$mode" "$tag.client" 60 sockperf ping-pong --tcp -i 127.0.0.1 -p "$sockperf_port" \
    -t 3 -m 64 --mps 4000000; then
    out=$(sed 's/\x1b\[[0-9;]*m//g' "$tmp/log/$tag.client")
    record sockperf_avg "$mode" "$(sed -n 's/.*Summary: Latency is \([0-9.]*\) usec.*/\1/p' <<<"$out")"
    record sockperf_p50 "$mode" "$(sed -n 's/.*percentile 50.000 = *\([0-9.]*\).*/\1/p' <<<"$out")"
  else
    note "$tag: sockperf client failed ($(log_tail "$tag.client"))"
  fi
  stop_bg "$spid" INT
  [ "$mode" = smc ] && smc_check sockperf "$tag.client"
}

# ---- the table ----

# stats METRIC MODE: "median min max n" of the recorded values (empty if none).
stats() {
  [ -s "$tmp/res/$1.$2" ] || return 0
  sort -g "$tmp/res/$1.$2" | awk '{ v[NR] = $1 } END {
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    print m, v[1], v[NR], NR }'
}

num() { awk -v v="$1" 'BEGIN { if (v >= 100) printf "%.0f", v; else if (v >= 10) printf "%.1f", v; else printf "%.2f", v }'; }

header_printed=0
# row METRIC LABEL UNIT higher|lower [TARGET]: one line of the table.
row() {
  local metric=$1 label=$2 unit=$3 better=$4 target=${5:-} t s tcol scol ratio="n/a" verdict=""
  if [ "$header_printed" -eq 0 ]; then
    printf '\n%-40s %-6s %-24s %-24s %8s  %s\n' "workload" "unit" "TCP median [min-max]" "SMC median [min-max]" "SMC/TCP" "target"
    header_printed=1
  fi
  t=$(stats "$metric" tcp)
  s=$(stats "$metric" smc)
  fmt() {
    local m lo hi
    [ -n "$1" ] || { echo "n/a"; return; }
    read -r m lo hi _ <<<"$1"
    echo "$(num "$m") [$(num "$lo")-$(num "$hi")]"
  }
  tcol=$(fmt "$t")
  scol=$(fmt "$s")
  if [ -n "$t" ] && [ -n "$s" ]; then
    ratio=$(awk -v a="${s%% *}" -v b="${t%% *}" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "n/a" }')
  fi
  if [ -n "$target" ]; then
    if [ "$ratio" = "n/a" ]; then
      verdict="MISSED (no result)"
    elif awk -v r="${ratio%x}" -v t="$target" -v b="$better" \
      'BEGIN { exit !((b == "higher" && r >= t) || (b == "lower" && r <= t)) }'; then
      verdict="ok"
    else
      verdict="MISSED"
    fi
    target="$([ "$better" = higher ] && echo ">=" || echo "<=") ${target}x $verdict"
  else
    target="-"
  fi
  printf '%-40s %-6s %-24s %-24s %8s  %s\n' "$label" "$unit" "$tcol" "$scol" "$ratio" "$target"
}

rows_for() {
  case $1 in
    pingpong)
      row pingpong64 "smc_bench ping-pong 64 B (avg)" us lower
      row pingpong4096 "smc_bench ping-pong 4 KiB (avg)" us lower
      row pingpong65536 "smc_bench ping-pong 64 KiB (avg)" us lower ;;
    stream)
      row stream65536 "smc_bench stream, 64 KiB writes" MB/s higher
      row stream1048576 "smc_bench stream, 1 MiB writes" MB/s higher ;;
    redis1)
      row redis_get_1 "redis-benchmark GET 64 B, 1 client" req/s higher 2.0
      row redis_set_1 "redis-benchmark SET 64 B, 1 client" req/s higher 2.0 ;;
    redis50)
      row redis_get_50 "redis-benchmark GET 64 B, 50 clients" req/s higher 1.35
      row redis_set_50 "redis-benchmark SET 64 B, 50 clients" req/s higher 1.35 ;;
    nginx_ka) row nginx_ka "nginx + wrk 1 KiB, 50 keep-alive conns" req/s higher 1.8 ;;
    nginx_close) row nginx_close "nginx + wrk 1 KiB, Connection: close" req/s higher 0.7 ;;
    connrr)
      row connrr "sequential connect + 1 B rr + close" conn/s higher 0.5
      row connrr_us "  the same, per connection (avg)" us lower ;;
    sockperf)
      row sockperf_avg "sockperf ping-pong 64 B latency (avg)" us lower 0.1
      row sockperf_p50 "sockperf ping-pong 64 B latency (p50)" us lower ;;
  esac
  if [ -s "$tmp/res/$1.smccheck" ]; then
    awk -v w="$1" '{ s += $1; f += $2 } END {
      printf "%-40s SMC runs: %d shm connections, %d fallbacks (client stats)\n", "  (" w ")", s, f }' \
      "$tmp/res/$1.smccheck"
  fi
}

# ---- system calls and fds ----

# strace_total FILE: the calls of the "total" line of an strace -c summary.
strace_total() { awk '$NF == "total" { print $4 }' "$1"; }
# strace_calls FILE: "syscall calls" lines.
strace_calls() { awk '$1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" { print $NF, $4 }' "$1"; }
# per_op A B N: (B - A) / N, or B / N when A is empty; 2 decimals.
per_op() { awk -v a="${1:-0}" -v b="$2" -v n="$3" 'BEGIN { printf "%.2f", (b - a) / n }'; }
# breakdown FILE N [BASE]: the syscalls per operation, most frequent first
# (with BASE: FILE minus BASE).
breakdown() {
  local base=${3:-/dev/null}
  { strace_calls "$base" | sed 's/$/ -1/'; strace_calls "$1" | sed 's/$/ 1/'; } |
    awk -v n="$2" '{ c[$1] += $2 * $3 } END {
      for (k in c) if (c[k] != 0) printf "%s %.4f\n", k, c[k] / n }' |
    sort -k2,2gr -k1,1 | awk '$2 >= 0.005 { printf "%s%s %.2f", (k++ ? ", " : ""), $1, $2; next }
      { rest += $2 } END { if (rest > 0) printf "%sothers %.2f", (k ? ", " : ""), rest; print "" }'
}

# strace_env MODE: strace -E options giving the traced command what
# smc_run (or the mode) would, and only to it.
strace_env() {
  case $1 in
    tcp) SE=() ;;
    smc) SE=(-E "LD_PRELOAD=$lib" -E SMC_ENABLE=1 -E SMC_PEERS=127.0.0.1 -E "SMC_STATS_FILE=$2.%p.json") ;;
    disabled) SE=(-E "LD_PRELOAD=$lib") ;;
    fallback) SE=(-E "LD_PRELOAD=$lib" -E SMC_ENABLE=1 -E "SMC_STATS_FILE=$2.%p.json") ;;
  esac
}

SYS_ROWS=()
sys_row() { SYS_ROWS+=("$(printf '%-52s %10s %10s  %s' "$1" "$2" "$3" "${4:-}")"); }

# redis-server attached and redis-benchmark, per GET (-c 50 -n 20000, 64 B values).
sys_redis() {
  local mode=$1 tag="sys.redis.$1" spid rpid spid_trace i n=20000
  start_redis "$tag.server" "$mode" "$tag.server" || return
  spid=$BG
  rpid=$(child_pid "$spid")
  # The value GET reads: redis-benchmark's key holds its last SET (64 B).
  run_fg "$tag.fill" "$mode" "$tag.fill" 60 redis-benchmark -h 127.0.0.1 -p "$redis_port" -t set -d 64 -c 1 -n 100 -q
  strace -f -c -o "$tmp/$tag.server.strace" -p "$rpid" 2>"$tmp/log/$tag.attach" &
  spid_trace=$!
  for ((i = 0; i < 100; i++)); do
    grep -q attached "$tmp/log/$tag.attach" 2>/dev/null && break
    sleep 0.05
  done
  sleep 0.5
  strace_env "$mode" "$tmp/stats/$tag.client"
  if ! run_ns "$tag.client" 300 strace -f -c -o "$tmp/$tag.client.strace" "${SE[@]}" \
    redis-benchmark -h 127.0.0.1 -p "$redis_port" -t get -d 64 -c 50 -n "$n" -q; then
    note "$tag: redis-benchmark under strace failed ($(log_tail "$tag.client"))"
  fi
  kill -INT "$spid_trace" 2>/dev/null
  wait "$spid_trace" 2>/dev/null
  stop_bg "$spid"
  SYS["redis_server.$mode"]=$(per_op "" "$(strace_total "$tmp/$tag.server.strace")" "$n")
  SYS["redis_bench.$mode"]=$(per_op "" "$(strace_total "$tmp/$tag.client.strace")" "$n")
  SYS["redis_server_threads.$mode"]=$(sed -n 's/.*attached with \([0-9]*\) threads.*/\1/p' "$tmp/log/$tag.attach")
  BRK["redis_server.$mode"]=$(breakdown "$tmp/$tag.server.strace" "$n")
  BRK["redis_bench.$mode"]=$(breakdown "$tmp/$tag.client.strace" "$n")
  [ "$mode" = smc ] && smc_check sys_redis "$tag.client"
}

# The connrr client: (calls for 2000 connections - calls for 1000) / 1000,
# so start-up does not count.
sys_connrr() {
  local mode=$1 server_mode=$1 k tag out port i
  [ "$mode" = fallback ] && server_mode=smc  # an SMC-ready server; the client proposes nothing
  for k in 1000 2000; do
    tag="sys.connrr$k.$mode"
    rm -f "$tmp/port"
    start_bg "$tag.server" "$server_mode" "$tag.server" "$bench" server --addr 127.0.0.1 --port 0 \
      --portfile "$tmp/port" --test connrr --conns "$k"
    for ((i = 0; i < 200; i++)); do [ -s "$tmp/port" ] && break; sleep 0.05; done
    port=$(cat "$tmp/port" 2>/dev/null)
    strace_env "$mode" "$tmp/stats/$tag.client"
    if ! run_ns "$tag.client" 300 strace -f -c -o "$tmp/$tag.strace" "${SE[@]}" \
      "$bench" client --addr 127.0.0.1 --port "${port:-1}" --test connrr --iters "$k"; then
      note "$tag: connrr client under strace failed ($(log_tail "$tag.client"))"
    fi
    stop_bg "$BG"
  done
  SYS["connrr.$mode"]=$(per_op "$(strace_total "$tmp/sys.connrr1000.$mode.strace")" \
    "$(strace_total "$tmp/sys.connrr2000.$mode.strace")" 1000)
  BRK["connrr.$mode"]=$(breakdown "$tmp/sys.connrr2000.$mode.strace" 1000 "$tmp/sys.connrr1000.$mode.strace")
  case $mode in smc | fallback) smc_check "sys_connrr_$mode" "sys.connrr2000.$mode.client" ;; esac
}

fd_count() { local f=(/proc/"$1"/fd/*); echo "${#f[@]}"; }

# fd_low PID: how many of the process's fds are numbered below its soft
# RLIMIT_NOFILE (the numbers the application itself can get).
fd_low() {
  local f n=0 lim
  lim=$(awk '/^Max open files/ { print $4 }' "/proc/$1/limits")
  for f in /proc/"$1"/fd/*; do
    [ "${f##*/}" -lt "$lim" ] && n=$((n + 1))
  done
  echo "$n"
}

# fd_kinds PID: "kind count" of the process's fds (socket, pipe, anon_inode:[...], path).
fd_kinds() {
  local f
  for f in /proc/"$1"/fd/*; do
    readlink "$f" 2>/dev/null | sed -e 's/^socket:.*/socket/' -e 's/^pipe:.*/pipe/' \
      -e 's/^\/memfd:.*/memfd/' -e 's/^\/dev\/shm\/.*/\/dev\/shm file/' -e 's/^anon_inode:\(.*\)/\1/'
  done | sort | uniq -c | awk '{ c = $1; $1 = ""; sub(/^ /, ""); print $0 "\t" c }'
}

# redis-server's fds per idle connection: BENCH_IDLE clients connect, each
# sends one PING and reads +PONG, then all stay idle while the fds are counted.
sys_idle() {
  local mode=$1 tag="sys.idle.$1" spid rpid base after cpid i soft low0 ok=0
  # redis-server runs with a soft RLIMIT_NOFILE of 2048 (its maxclients
  # 10000 would have it raise the limit to the hard one): the library's
  # fds go above it where the hard limit leaves room.
  soft=$(ulimit -S -n)
  ulimit -S -n 2048 && start_redis "$tag.server" "$mode" "$tag.server" 2016 && ok=1
  ulimit -S -n "$soft"
  [ "$ok" = 1 ] || return
  spid=$BG
  rpid=$(child_pid "$spid")
  sleep 0.3
  base=$(fd_count "$rpid")
  low0=$(fd_low "$rpid")
  fd_kinds "$rpid" >"$tmp/$tag.kinds0"
  rm -f "$tmp/idle.ready" "$tmp/idle.release"
  wrap "$mode" "$tag.client"
  "${NS[@]}" timeout -k 5 300 "${W[@]}" "$python" "$tmp/idle.py" 127.0.0.1 "$redis_port" "$idle_conns" \
    "$tmp/idle.ready" "$tmp/idle.release" >"$tmp/log/$tag.client" 2>&1 &
  cpid=$!
  for ((i = 0; i < 1200; i++)); do
    [ -f "$tmp/idle.ready" ] && break
    kill -0 "$cpid" 2>/dev/null || break
    sleep 0.05
  done
  if [ -f "$tmp/idle.ready" ]; then
    sleep 0.5
    after=$(fd_count "$rpid")
    fd_kinds "$rpid" >"$tmp/$tag.kinds1"
    SYS["idle_server.$mode"]=$(per_op "$base" "$after" "$idle_conns")
    SYS["idle_server_low.$mode"]=$(per_op "$low0" "$(fd_low "$rpid")" "$idle_conns")
    SYS["idle_server_limit.$mode"]=$(awk '/^Max open files/ { print $4 ":" $5 }' "/proc/$rpid/limits")
    read -r _ cb ca <"$tmp/idle.ready"
    SYS["idle_client.$mode"]=$(per_op "$cb" "$ca" "$idle_conns")
    BRK["idle_server.$mode"]=$(join -t $'\t' -a 2 -e 0 -o 0,1.2,2.2 <(sort "$tmp/$tag.kinds0") <(sort "$tmp/$tag.kinds1") |
      awk -F '\t' -v n="$idle_conns" '$3 != $2 {
        printf "%s%s %.3f (%+d)", (k++ ? ", " : ""), $1, ($3 - $2) / n, $3 - $2 } END { print "" }')
  else
    note "$tag: the idle clients did not connect ($(log_tail "$tag.client"))"
  fi
  touch "$tmp/idle.release"
  wait "$cpid" 2>/dev/null
  stop_bg "$spid"
  [ "$mode" = smc ] && smc_check sys_idle "$tag.client"
}

write_idle_py() {
  cat >"$tmp/idle.py" <<'EOF'
# idle.py HOST PORT N READY RELEASE: N connections to a redis server, one
# PING each, then idle until the file RELEASE exists; READY gets
# "pid fds_before fds_after".
import os, socket, sys, time
host, port, n, ready, release = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
nfds = lambda: len(os.listdir("/proc/self/fd"))
before = nfds()
socks = []
for i in range(n):
    s = socket.create_connection((host, port))
    s.sendall(b"PING\r\n")
    buf = b""
    while not buf.endswith(b"\r\n"):
        d = s.recv(64)
        if not d:
            sys.exit("connection %d closed by the server" % i)
        buf += d
    if buf != b"+PONG\r\n":
        sys.exit("connection %d: unexpected reply %r" % (i, buf))
    socks.append(s)
after = nfds()
with open(ready + ".tmp", "w") as f:
    f.write("%d %d %d\n" % (os.getpid(), before, after))
os.rename(ready + ".tmp", ready)
deadline = time.time() + 240
while not os.path.exists(release) and time.time() < deadline:
    time.sleep(0.05)
for s in socks:
    s.close()
EOF
}

write_poll_py() {
  cat >"$tmp/pollecho.py" <<'EOF'
# pollecho.py server PORTFILE N: a poll() echo server (select.poll: the
#   listener and every connection in one set), until its N connections end.
# pollecho.py client PORT N WAITS: N connections, then WAITS times one byte
#   on the next one (round robin), its echo read, 2 ms apart.
import os, select, socket, sys, time
if sys.argv[1] == "server":
    n = int(sys.argv[3])
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(128)
    with open(sys.argv[2] + ".tmp", "w") as f:
        f.write("%d\n" % s.getsockname()[1])
    os.rename(sys.argv[2] + ".tmp", sys.argv[2])
    p = select.poll()
    p.register(s, select.POLLIN)
    conns, seen = {}, 0
    while seen < n or conns:
        for fd, ev in p.poll():
            if fd == s.fileno():
                c, _ = s.accept()
                conns[c.fileno()] = c
                p.register(c, select.POLLIN)
                seen += 1
                continue
            c = conns[fd]
            d = c.recv(4096)
            if not d:
                p.unregister(c)
                c.close()
                del conns[fd]
                continue
            c.sendall(d)
else:
    port, n, waits = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    cs = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    for i in range(waits):
        c = cs[i % n]
        c.sendall(b"x")
        if c.recv(10) != b"x":
            sys.exit("wrong echo")
        time.sleep(0.002)
    for c in cs:
        c.close()
EOF
}

# The poll() echo server, traced: (calls for 400 waits - calls for 200) / 200.
sys_pollwait() {
  local mode=$1 k tag i port
  for k in 200 400; do
    tag="sys.poll$k.$mode"
    rm -f "$tmp/pport"
    strace_env "$mode" "$tmp/stats/$tag.server"
    "${NS[@]}" timeout -k 5 300 strace -f -c -o "$tmp/$tag.strace" "${SE[@]}" \
      "$python" "$tmp/pollecho.py" server "$tmp/pport" "$poll_conns" >"$tmp/log/$tag.server" 2>&1 &
    BG=$!
    for ((i = 0; i < 200; i++)); do [ -s "$tmp/pport" ] && break; sleep 0.05; done
    port=$(cat "$tmp/pport" 2>/dev/null)
    if ! run_fg "$tag.client" "$mode" "$tag.client" 300 "$python" "$tmp/pollecho.py" client \
      "${port:-1}" "$poll_conns" "$k"; then
      note "$tag: poll client failed ($(log_tail "$tag.client"))"
    fi
    for ((i = 0; i < 200; i++)); do kill -0 "$BG" 2>/dev/null || break; sleep 0.05; done
    stop_bg "$BG"
  done
  SYS["pollwait.$mode"]=$(per_op "$(strace_total "$tmp/sys.poll200.$mode.strace")" \
    "$(strace_total "$tmp/sys.poll400.$mode.strace")" 200)
  BRK["pollwait.$mode"]=$(breakdown "$tmp/sys.poll400.$mode.strace" 200 "$tmp/sys.poll200.$mode.strace")
  [ "$mode" = smc ] && smc_check sys_pollwait "sys.poll400.$mode.client"
}

wl_syscalls() {
  declare -gA SYS=() BRK=()
  local m
  write_idle_py
  write_poll_py
  for m in tcp smc; do sys_redis "$m"; done
  for m in tcp smc disabled fallback; do sys_connrr "$m"; done
  for m in tcp smc; do sys_idle "$m"; done
  for m in tcp smc; do sys_pollwait "$m"; done
  get() { echo "${SYS[$1]:-n/a}"; }
  echo
  printf '%-52s %10s %10s\n' "system calls and fds (counts, not timings)" "TCP" "SMC"
  printf '%-52s %10s %10s\n' "redis-server syscalls per GET (strace -f -p, attached)" "$(get redis_server.tcp)" "$(get redis_server.smc)"
  printf '%-52s %10s %10s\n' "redis-benchmark syscalls per GET (strace -f -c)" "$(get redis_bench.tcp)" "$(get redis_bench.smc)"
  printf '%-52s %10s %10s\n' "connrr client syscalls per connection" "$(get connrr.tcp)" "$(get connrr.smc)"
  printf '%-52s %10s %10s\n' "redis-server fds per idle connection ($idle_conns)" "$(get idle_server.tcp)" "$(get idle_server.smc)"
  printf '%-52s %10s %10s\n' "  of them below its soft RLIMIT_NOFILE ($(get idle_server_limit.smc))" "$(get idle_server_low.tcp)" "$(get idle_server_low.smc)"
  printf '%-52s %10s %10s\n' "  idle client (python) fds per connection" "$(get idle_client.tcp)" "$(get idle_client.smc)"
  printf '%-52s %10s %10s\n' "python poll() server syscalls per wait ($poll_conns conns)" "$(get pollwait.tcp)" "$(get pollwait.smc)"
  echo
  printf '%-52s %10s %10s  %s\n' "connrr client syscalls per connection" "measured" "vs TCP" "target"
  local mm d v
  for mm in tcp disabled fallback smc; do
    v=$(get "connrr.$mm")
    d=$(awk -v a="$v" -v b="$(get connrr.tcp)" 'BEGIN { if (a == "n/a" || b == "n/a") print "n/a"; else printf "%+.2f", a - b }')
    case $mm in
      tcp) printf '%-52s %10s %10s  %s\n' "  plain TCP (no library)" "$v" "" "" ;;
      disabled | fallback)
        local label="  library loaded, SMC_ENABLE unset (disabled)" verdict=MISSED
        [ "$mm" = fallback ] && label="  smc_run without -p (fallback)"
        [ "$d" = "+0.00" ] || [ "$d" = "-0.00" ] && verdict=ok
        printf '%-52s %10s %10s  %s\n' "$label" "$v" "$d" "+0 $verdict" ;;
      smc) printf '%-52s %10s %10s  %s\n' "  smc_run -p 127.0.0.1 (SMC)" "$v" "$d" "-" ;;
    esac
  done
  echo
  echo "per operation, by system call (or fd kind):"
  local key
  for key in redis_server.tcp redis_server.smc redis_bench.tcp redis_bench.smc connrr.tcp connrr.disabled \
    connrr.fallback connrr.smc idle_server.tcp idle_server.smc pollwait.tcp pollwait.smc; do
    printf '  %-20s %s\n' "$key" "${BRK[$key]:-n/a}"
  done
  echo "  (redis-server threads attached: TCP $(get redis_server_threads.tcp), SMC $(get redis_server_threads.smc))"
  local w
  for w in sys_redis sys_connrr_smc sys_connrr_fallback sys_idle sys_pollwait; do
    [ -s "$tmp/res/$w.smccheck" ] || continue
    awk -v w="$w" '{ s += $1; f += $2 } END {
      printf "  (%s: %d shm connections, %d fallbacks in the client stats)\n", w, s, f }' "$tmp/res/$w.smccheck"
  done
}

# ---- main ----

echo "smc-preload benchmarks: SMC (shm, scripts/smc_run -p 127.0.0.1) vs plain TCP, loopback in a fresh netns"
echo "date $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)); kernel $(uname -r)"
src=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$build/CMakeCache.txt" 2>/dev/null)
if [ -n "$src" ] && git -C "$src" rev-parse --short HEAD >/dev/null 2>&1; then
  src="$src at commit $(git -C "$src" rev-parse --short HEAD)$(git -C "$src" diff --quiet HEAD -- core preload rdma config ||
    echo ', with uncommitted changes in core/ preload/ rdma/ config/')"
fi
echo "library $build/libsmc_preload.so, built $(date -u -r "$lib" '+%Y-%m-%d %H:%M UTC') from ${src:-?}"
echo "rounds $rounds (TCP then SMC each round, fresh servers); workloads: $workloads"
for w in $workloads; do
  [ "$w" = syscalls ] && continue
  t0=$(date +%s)
  for ((r = 1; r <= rounds; r++)); do
    "wl_$w" tcp "$r"
    "wl_$w" smc "$r"
  done
  echo "  ($w: $(($(date +%s) - t0)) s)" >&2
done
for w in $workloads; do
  [ "$w" = syscalls ] || rows_for "$w"
done
case " $workloads " in
  *" syscalls "*) wl_syscalls ;;
esac
if [ ${#NOTES[@]} -gt 0 ]; then
  echo
  echo "notes:"
  printf '  %s\n' "${NOTES[@]}"
fi
exit 0
