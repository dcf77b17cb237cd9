# shellcheck shell=bash
# lib.sh: helpers for the real-application tests (sourced by each
# test/apps/<app>.sh). Builds on test/integration/lib.sh (namespaces, JSON,
# bounded waits). Each app script:
#
#   app_begin NAME            fresh network namespace $NS, log dir $DIR
#   app_launch LOG ROLE cmd.. start cmd in $NS under smc_run (background, PID)
#   app_run LOG ROLE cmd..    the same in the foreground; returns its status
#   app_check LOG ROLE cmd..  app_run; a non-zero exit is a failure
#   wait_listen PORT [PID]    bounded wait until something listens on PORT in $NS
#   payload BYTES             the bytes the application moved (for the lo check)
#   wrk_check LOG ROLE SECS URL [opts]  wrk load; errors or non-2xx fail
#   note "why"                records a failed expectation
#   app_finish                checks stats + loopback, prints PASS/FAIL, exit status
#
# Every process runs under $SMC_RUN (scripts/smc_run unless SMC_RUN is set,
# e.g. to a stub that only execs, to see the checks fail) with SMC_PEERS
# pointing at the namespace's loopback address and its own SMC_STATS_FILE.
# A passing app's $DIR is removed unless APPS_KEEP is set.
set -u

APPS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$APPS_DIR/../.." && pwd)
# shellcheck source=../integration/lib.sh
. "$REPO/test/integration/lib.sh"

SMC_RUN=${SMC_RUN:-$REPO/scripts/smc_run}
case "$SMC_RUN" in
  /*) ;;
  *) SMC_RUN="$(cd "$(dirname "$SMC_RUN")" && pwd)/$(basename "$SMC_RUN")" ;;
esac
# The share of the payload the namespace's loopback may carry (percent): the
# TCP handshakes, CLC messages and idle TCP connections, not the data.
LO_MAX_PCT=${LO_MAX_PCT:-5}
APP_TIMEOUT=${APP_TIMEOUT:-90}   # every process is bounded by this (seconds)
PYTHON=${PYTHON:-$(command -v /usr/bin/python3 || command -v python3)}

APP=""
DIR=""
WHY=""
LO0=""
PAYLOAD=0
APP_PIDS=()

note() {
  if [ -z "$WHY" ]; then
    WHY="$*"
  else
    WHY="$WHY; $*"
  fi
}

need() {
  local c
  for c in "$@"; do
    if ! command -v "$c" >/dev/null 2>&1; then
      echo "FAIL $APP: $c not installed (run scripts/setup.sh)"
      exit 1
    fi
  done
}

app_begin() {
  APP=$1
  WHY=""
  PAYLOAD=0
  if [ "$(id -u)" -ne 0 ]; then
    echo "FAIL $APP: needs root (ip netns)"
    exit 1
  fi
  DIR=$(mktemp -d "/tmp/smc-app-$APP.XXXXXX") || exit 1
  chmod 755 "$DIR"
  if ! ns_new; then
    echo "FAIL $APP: cannot create a network namespace"
    exit 1
  fi
  LO0=$(lo_bytes "$NS")
}

# The environment every process gets: nothing SMC_* leaks in from the caller
# or /etc; SMC_PRELOAD_LIB and SMC_LOG_* pass through. Without SMC_LOG_LEVEL
# from the caller, warnings go to $DIR/smc.log, shown when the app fails.
app_env() {
  local role=$1 logs=()
  [ -n "${SMC_LOG_LEVEL:-}" ] || logs=(SMC_LOG_LEVEL=warn "SMC_LOG_FILE=$DIR/smc.log")
  echo env -u SMC_ENABLE -u SMC_TRANSPORT -u SMC_RMB_SIZE -u SMC_DEVICES -u SMC_SPIN_US \
    SMC_CONFIG= SMC_PEERS=127.0.0.1 "SMC_STATS_FILE=$DIR/stats.$role.%p.json" "${logs[@]}"
}

# app_launch LOG ROLE cmd...: background, stdout/stderr to $DIR/LOG.{out,err}; sets PID.
app_launch() {
  local log=$1 role=$2
  shift 2
  # shellcheck disable=SC2046
  { timeout "$APP_TIMEOUT" ip netns exec "$NS" $(app_env "$role") "$SMC_RUN" "$@" \
      >"$DIR/$log.out" 2>"$DIR/$log.err"; } 2>/dev/null &
  PID=$!
  APP_PIDS+=("$PID")
}

# app_run LOG ROLE cmd...: foreground; returns the command's status (124: timeout).
app_run() {
  local log=$1 role=$2
  shift 2
  # shellcheck disable=SC2046
  timeout "$APP_TIMEOUT" ip netns exec "$NS" $(app_env "$role") "$SMC_RUN" "$@" \
    >"$DIR/$log.out" 2>"$DIR/$log.err"
}

# app_check LOG ROLE cmd...: app_run, noting a failure (with the last line of
# stderr) unless the command exits 0.
app_check() {
  local log=$1 rc
  app_run "$@"
  rc=$?
  if [ "$rc" -ne 0 ]; then
    note "$log exited $rc ($(grep -v '^$' "$DIR/$log.err" 2>/dev/null | tail -n 1 | cut -c1-200))"
  fi
  return "$rc"
}

# wait_listen PORT [PID]: bounded (15 s) wait for a TCP listener on PORT in $NS.
wait_listen() {
  local port=$1 pid=${2:-} i
  for ((i = 0; i < 300; i++)); do
    if ip netns exec "$NS" ss -Hltn "sport = :$port" 2>/dev/null | grep -q .; then
      return 0
    fi
    if [ -n "$pid" ] && ! pid_alive "$pid"; then
      return 1
    fi
    sleep 0.05
  done
  return 1
}

payload() { PAYLOAD=$((PAYLOAD + $1)); }

# wrk_check LOG ROLE SECS URL [wrk options]: wrk (1 thread, 10 connections,
# --timeout 5s) for SECS seconds. A failure unless wrk exits 0, completed
# requests, and printed neither "Socket errors" (connect, read, write,
# timeout) nor "Non-2xx or 3xx responses". Sets WRK_REQS, WRK_BYTES (the
# bytes wrk read, headers included; to 1%: wrk prints 3 digits) and WRK_RPS;
# the caller adds the payload (once per hop the bytes crossed).
wrk_check() {
  local log=$1 role=$2 secs=$3 url=$4 rc
  shift 4
  WRK_REQS=0 WRK_BYTES=0 WRK_RPS="?"
  app_run "$log" "$role" wrk -t 1 -c 10 -d "${secs}s" --timeout 5s --latency "$@" "$url"
  rc=$?
  if [ "$rc" -ne 0 ]; then
    note "$log: wrk exited $rc ($(grep -v '^$' "$DIR/$log.err" 2>/dev/null | tail -n 1 | cut -c1-200))"
    return 1
  fi
  # "  12345 requests in 2.00s, 1.40GB read"
  read -r WRK_REQS WRK_BYTES <<<"$(awk '/ requests in .* read$/ {
      n = $1; v = $(NF - 1); u = v; sub(/^[0-9.]+/, "", u); sub(/B$/, "", u); v += 0
      m = 1
      if (u == "K") m = 1024; else if (u == "M") m = 1048576
      else if (u == "G") m = 1073741824; else if (u == "T") m = 1099511627776
      printf "%d %.0f\n", n, v * m }' "$DIR/$log.out")"
  WRK_REQS=${WRK_REQS:-0} WRK_BYTES=${WRK_BYTES:-0}
  # shellcheck disable=SC2034  # a result, read by the caller
  WRK_RPS=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$DIR/$log.out")
  local bad=0
  if [ "$WRK_REQS" -le 0 ]; then
    note "$log: wrk completed no request"
    bad=1
  fi
  if grep -q 'Socket errors' "$DIR/$log.out"; then
    note "$log: wrk $(grep -m1 'Socket errors' "$DIR/$log.out" | sed 's/^ *//')"
    bad=1
  fi
  if grep -q 'Non-2xx or 3xx responses' "$DIR/$log.out"; then
    note "$log: wrk $(grep -m1 'Non-2xx or 3xx responses' "$DIR/$log.out" | sed 's/^ *//') of $WRK_REQS"
    bad=1
  fi
  return "$bad"
}

# ---- files served through a proxy (nginx_proxy.sh, haproxy.sh) ----
# The caller declares SIZES (file name -> bytes) and makes $DIR/www and $DIR/dl.

# make_files: random files of SIZES under $DIR/www.
make_files() {
  local f
  for f in "${!SIZES[@]}"; do
    head -c "${SIZES[$f]}" /dev/urandom >"$DIR/www/$f"
  done
}

# nginx_conf PREFIX HTTP_EXTRA: PREFIX/nginx.conf for one nginx (1 worker,
# not a daemon; logs and temporary files under PREFIX; one access log line
# per request: connection, its request count, status, bytes, request), with
# HTTP_EXTRA (its upstream and server blocks) inside http {}.
nginx_conf() {
  local p=$1
  mkdir -p "$p/logs" "$p/tmp"
  cat >"$p/nginx.conf" <<EOF
user root root;
worker_processes 1;
daemon off;
master_process on;
pid $p/nginx.pid;
error_log $p/logs/error.log info;
events { worker_connections 512; }
http {
  sendfile on;
  tcp_nodelay on;
  keepalive_timeout 30;
  keepalive_requests 100000;
  log_format conn '\$connection \$connection_requests \$status \$body_bytes_sent \$request';
  access_log $p/logs/access.log conn;
  default_type application/octet-stream;
  client_body_temp_path $p/tmp/body;
  proxy_temp_path $p/tmp/proxy;
  fastcgi_temp_path $p/tmp/fastcgi;
  uwsgi_temp_path $p/tmp/uwsgi;
  scgi_temp_path $p/tmp/scgi;
$2
}
EOF
}

# fetch_through PORT: through the proxy on PORT, two curl processes at once,
# each fetching every file twice over one keep-alive connection (stopping
# at its first failure: each may take --max-time), then 10 requests each on
# its own connection (Connection: close; after a failure the rest is
# skipped, each may take the proxy's timeout). Every body's sha256 must be
# its file's. Sets FETCH_OK (bodies right), FETCH_NREQ (requests meant) and
# FETCH_CONNS (client connections made); counts the payload twice (origin
# -> proxy -> client).
fetch_through() {
  local port=$1 c r f i=0 failed=0 pids=() args bad=()
  FETCH_OK=0
  FETCH_NREQ=$((2 * 2 * ${#SIZES[@]} + 10))
  fetched() {  # fetched NAME FILE: the download $DIR/dl/NAME has FILE's sha256
    if [ "$(sha256sum <"$DIR/www/$2")" = "$({ sha256sum <"$DIR/dl/$1"; } 2>/dev/null)" ]; then
      FETCH_OK=$((FETCH_OK + 1))
    else
      bad+=("$1")
    fi
  }
  for c in 1 2; do
    args=()
    for r in 1 2; do
      for f in "${!SIZES[@]}"; do
        args+=(-o "$DIR/dl/ka$c.$r.$f" "http://127.0.0.1:$port/$f")
        payload $((2 * ${SIZES[$f]}))
      done
    done
    app_launch "curl-ka$c" client curl -sS --fail --fail-early --max-time 15 "${args[@]}"
    pids+=("$PID")
  done
  for c in 1 2; do
    if ! wait "${pids[$((c - 1))]}"; then
      note "keep-alive curl $c failed ($(tail -n 1 "$DIR/curl-ka$c.err" 2>/dev/null))"
    fi
    for r in 1 2; do
      for f in "${!SIZES[@]}"; do
        fetched "ka$c.$r.$f" "$f"
      done
    done
  done
  for f in one.bin medium.bin big.bin small.bin large.bin page.bin one.bin medium.bin big.bin small.bin; do
    [ "$failed" -lt 1 ] || break
    i=$((i + 1))
    payload $((2 * ${SIZES[$f]}))
    if app_run "curl-cl$i" client curl -sS --fail --max-time 15 -H 'Connection: close' \
      -o "$DIR/dl/cl$i.$f" "http://127.0.0.1:$port/$f"; then
      fetched "cl$i.$f" "$f"
    else
      failed=$((failed + 1))
      note "curl $i /$f (Connection: close) failed ($(tail -n 1 "$DIR/curl-cl$i.err" 2>/dev/null))"
    fi
  done
  FETCH_CONNS=$((2 + i))
  [ "$i" -eq 10 ] || note "$((10 - i)) of 10 Connection: close requests skipped"
  if [ "${#bad[@]}" -ne 0 ]; then
    note "${#bad[@]} downloads differ from the served files (${bad[*]:0:4})"
  fi
}

# sum_stat ROLE KEY: the sum of KEY over every stats file ROLE's processes wrote.
sum_stat() {
  local role=$1 key=$2 f v total=0
  for f in "$DIR"/stats."$role".*.json; do
    [ -f "$f" ] || continue
    v=$(json_get "$f" "$key") || continue
    total=$((total + v))
  done
  echo "$total"
}

# expect_smc ROLE MIN: ROLE's processes made at least MIN shm connections.
expect_smc() {
  local n
  n=$(sum_stat "$1" connections.smc_shm)
  if [ "$n" -lt "$2" ]; then
    note "$1: $n SMC (shm) connections, expected >= $2 (stats: $(ls "$DIR" | grep -c "^stats\.$1\.") files)"
  fi
}

# stop_app PID [SIGNAL]: asks a server to exit (default TERM) and waits (10 s)
# so that it writes its stats file; then kills what is left.
stop_app() {
  local pid=$1 sig=${2:-TERM} p
  for p in $(descendant_pids "$pid"); do
    case "$(cat "/proc/$p/comm" 2>/dev/null)" in
      timeout) ;;
      *) kill "-$sig" "$p" 2>/dev/null; break ;;
    esac
  done
  if ! wait_exit_within "$pid" 10000; then
    note "server still running 10 s after SIG$sig"
    # shellcheck disable=SC2046
    kill -9 $(descendant_pids "$pid") 2>/dev/null
  fi
  wait "$pid" 2>/dev/null
}

app_finish() {
  local lo1 used pct_x100
  lo1=$(lo_bytes "$NS")
  for p in "${APP_PIDS[@]}"; do
    if pid_alive "$p"; then
      # shellcheck disable=SC2046
      kill -9 $(descendant_pids "$p") 2>/dev/null
    fi
  done
  ns_del "$NS"
  if [ "$PAYLOAD" -le 0 ]; then
    note "no payload recorded"
  elif [ -z "$LO0" ] || [ -z "$lo1" ]; then
    note "cannot read lo tx_bytes"
  else
    used=$((lo1 - LO0))
    pct_x100=$((used * 10000 / PAYLOAD))
    LO_LINE="lo carried $used bytes for $PAYLOAD payload bytes ($((pct_x100 / 100)).$(printf %02d $((pct_x100 % 100)))%)"
    if [ $((used * 100)) -ge $((PAYLOAD * LO_MAX_PCT)) ]; then
      note "$LO_LINE, >= ${LO_MAX_PCT}%: the data went over TCP"
    fi
  fi
  local smc_tx
  smc_tx=$(( $(sum_stat server bytes.smc_tx) + $(sum_stat client bytes.smc_tx) ))
  if [ -z "$WHY" ]; then
    echo "PASS $APP: ${APP_RESULT:-ok}; ${LO_LINE:-}; smc_tx=$smc_tx"
    [ -n "${APPS_KEEP:-}" ] || rm -rf "$DIR"
    return 0
  fi
  echo "FAIL $APP: $WHY (logs: $DIR)${APP_RESULT:+ [results: $APP_RESULT]}"
  if [ -s "$DIR/smc.log" ]; then
    echo "  the library's warnings (the last 20 of $(wc -l <"$DIR/smc.log")):"
    tail -n 20 "$DIR/smc.log" | sed 's/^/    /'
  fi
  return 1
}
