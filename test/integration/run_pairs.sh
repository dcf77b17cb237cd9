#!/usr/bin/env bash
# run_pairs.sh: the process-pair integration suite. Runs smc_pair,
# smc_hostile, spdlog_app, smc_calls, smc_fork, smc_handoff, smc_epoll_reg,
# smc_sandbox, smc_stall and smc_evil_peer under scripts/smc_run (and plain)
# inside fresh network namespaces, verifies every byte, and checks the library's stats
# files (SMC_STATS_FILE) and the loopback byte counter to prove the data went
# through shared memory, or that a fallback happened where it must. The diff
# scenario runs smc_diff.py (python3) plainly and under smc_run and requires
# the same output: socket semantics on SMC as on TCP.
#
# usage (as root): run_pairs.sh BUILD_DIR SMC_RUN
#   BUILD_DIR  has smc_pair, smc_hostile, spdlog_app, smc_calls, smc_fork,
#              smc_handoff, smc_epoll_reg, smc_sandbox, smc_stall, smc_evil_peer
#   SMC_RUN    path to scripts/smc_run; the environment variable SMC_RUN
#              overrides it (e.g. a stub that just execs, for a dry run)
#   SMCT_ONLY  optional regex: run only scenarios whose name matches
#   SMCT_KEEP  set to 1 to keep the logs directory even when all passed
#
# Prints "PASS name" / "FAIL name: reason" per scenario, then
# "N passed, M failed"; exits non-zero if anything failed.
set -u

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

if [ $# -lt 2 ]; then
  echo "usage: $0 BUILD_DIR SMC_RUN" >&2
  exit 2
fi
BUILD=$(cd "$1" && pwd) || exit 2
SMC_RUN=${SMC_RUN:-$2}
case "$SMC_RUN" in
  /*) ;;
  *) SMC_RUN="$(cd "$(dirname "$SMC_RUN")" && pwd)/$(basename "$SMC_RUN")" ;;
esac
if [ "$(id -u)" -ne 0 ]; then
  echo "run_pairs.sh: needs root (ip netns)" >&2
  exit 2
fi
for b in smc_pair smc_hostile spdlog_app smc_calls smc_handoff smc_epoll_reg smc_sandbox smc_stall smc_evil_peer; do
  if [ ! -x "$BUILD/$b" ]; then
    echo "run_pairs.sh: $BUILD/$b not built" >&2
    exit 2
  fi
done
if [ ! -x "$SMC_RUN" ]; then
  echo "run_pairs.sh: $SMC_RUN is not executable" >&2
  exit 2
fi

PAIR=$BUILD/smc_pair
SMCT_UNSET=(-u SMC_ENABLE -u SMC_PEERS -u SMC_TRANSPORT -u SMC_STATS_FILE -u SMC_RMB_SIZE -u SMC_DEVICES
  -u SMC_SPIN_US)
PROC_TIMEOUT=120               # every process is bounded by this
MIB=$((1024 * 1024))
TMPD=$(mktemp -d /tmp/smct.XXXXXX) || exit 2

# ---------------------------------------------------------------- scenario frame
NAME=""
DIR=""
WHY=""

# note REASON: records a failed expectation of the current scenario.
note() {
  if [[ "; $WHY; " == *"; $*; "* ]]; then
    return 0
  fi
  if [ -z "$WHY" ]; then
    WHY="$*"
  else
    WHY="$WHY; $*"
  fi
}

# begin NAME: returns 1 (skip) if SMCT_ONLY excludes it or its namespace
# cannot be made (reported as FAIL); otherwise creates the scenario's
# namespace ($NS) and log directory ($DIR).
begin() {
  NAME=$1
  WHY=""
  if [ -n "${SMCT_ONLY:-}" ] && ! [[ "$NAME" =~ $SMCT_ONLY ]]; then
    return 1
  fi
  DIR=$TMPD/$NAME
  mkdir -p "$DIR"
  if ! ns_new; then
    NS=""
    fail "$NAME: cannot create a network namespace"
    return 1
  fi
  return 0
}

# finish: PASS/FAIL line for the current scenario; removes its namespace.
finish() {
  if [ -n "$NS" ]; then
    ns_del "$NS"
    NS=""
  fi
  if [ -z "$WHY" ]; then
    pass "$NAME"
  else
    fail "$NAME: $WHY"
  fi
}

# launch LOG HOW [VAR=VALUE...] -- cmd args...
#   Starts cmd in the background inside $NS under `timeout`, with the given
#   environment; HOW = plain | smc (under $SMC_RUN) | smc-d ($SMC_RUN -d).
#   stdout -> LOG.out, stderr -> LOG.err; sets PID (a subshell whose exit
#   status is the command's; it keeps bash's "Killed" job notices quiet).
launch() {
  local log=$1 how=$2
  shift 2
  local envs=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    envs+=("$1")
    shift
  done
  shift
  local wrap=()
  case "$how" in
    plain) ;;
    smc) wrap=("$SMC_RUN") ;;
    smc-d) wrap=("$SMC_RUN" -d) ;;
    *) note "internal: bad launch mode $how" ;;
  esac
  # Hermetic: no SMC_* settings leak in from the caller or /etc (SMC_CONFIG
  # empty = no config file); SMC_PRELOAD_LIB and SMC_LOG_* pass through.
  {
    timeout "$PROC_TIMEOUT" ip netns exec "$NS" env "${SMCT_UNSET[@]}" SMC_CONFIG= "${envs[@]}" "${wrap[@]}" "$@" \
      >"$log.out" 2>"$log.err"
  } 2>/dev/null &
  PID=$!
}

# expect_exit PID LOG LABEL [RC]: waits for PID; notes a failure unless it
# exited with RC (default 0).
expect_exit() {
  local pid=$1 log=$2 label=$3 want=${4:-0} rc
  wait "$pid"
  rc=$?
  if [ "$rc" -eq 124 ]; then
    note "$label timed out after ${PROC_TIMEOUT} s"
  elif [ "$rc" -ne "$want" ]; then
    local why
    why=$(grep -v '^$' "$log.err" 2>/dev/null | tail -n 1)
    note "$label exited $rc${why:+ ($why)}"
  fi
  return 0
}

# expect_server_exit PID LOG: like expect_exit for a server, but once the
# scenario has already failed (a client died) the server gets only 5 s to
# finish before it is stopped, instead of idling until its timeout.
expect_server_exit() {
  local pid=$1 log=$2
  if [ -n "$WHY" ] && ! wait_exit_within "$pid" 5000; then
    # shellcheck disable=SC2046
    kill -TERM $(descendant_pids "$pid") 2>/dev/null
    note "server stopped: still running after the failure above"
  fi
  expect_exit "$pid" "$log" server
}

# start_server LOG HOW ENV... -- args...: launches smc_pair server with a
# port file, waits until it is listening; sets SPID and PORT (empty on failure).
start_server() {
  local log=$1
  rm -f "$log.port"
  launch "$@" --portfile "$log.port"
  SPID=$PID
  PORT=""
  if wait_portfile "$log.port" "$SPID"; then
    PORT=$(cat "$log.port")
  else
    note "server did not start ($(grep -v '^$' "$log.err" 2>/dev/null | tail -n 1))"
  fi
}

# stats_file ROLE: the one stats file a process wrote as $DIR/ROLE.<pid>.json.
stats_file() {
  local files=("$DIR/$1".[0-9]*.json)
  if [ ! -f "${files[0]}" ]; then
    return 1
  fi
  if [ "${#files[@]}" -ne 1 ]; then
    return 1
  fi
  echo "${files[0]}"
}

stats_env() {
  echo "SMC_STATS_FILE=$DIR/$1.%p.json"
}

# expect_stat ROLE KEY OP VALUE: e.g. expect_stat server connections.smc_shm -ge 1
expect_stat() {
  local role=$1 key=$2 op=$3 want=$4 f v
  if ! f=$(stats_file "$role"); then
    note "$role wrote no (or more than one) stats file"
    return 0
  fi
  if ! v=$(json_get "$f" "$key") || [ -z "$v" ]; then
    note "$role stats: no $key"
    return 0
  fi
  if ! test "$v" "$op" "$want"; then
    note "$role stats: $key=$v, expected $op $want"
  fi
  return 0
}

# expect_reason ROLE: the stats name at least one fallback reason.
expect_reason() {
  local role=$1 f
  if ! f=$(stats_file "$role"); then
    note "$role wrote no (or more than one) stats file"
    return 0
  fi
  if ! json_keys "$f" fallback_reasons >/dev/null; then
    note "$role stats: fallback_reasons is empty"
  fi
  return 0
}

# expect_line LOG.out REGEX LABEL
expect_line() {
  if ! grep -Eq -- "$2" "$1" 2>/dev/null; then
    note "$3: no line matching '$2'"
  fi
}

# run_pair HOW_S ENV_S HOW_C ENV_C SERVER_ARGS CLIENT_ARGS: one server, one
# client, both must exit 0 (the arg strings are split on blanks).
run_pair() {
  local how_s=$1 env_s=$2 how_c=$3 env_c=$4 sargs=$5 cargs=$6
  # shellcheck disable=SC2086
  start_server "$DIR/server" "$how_s" $env_s "$(stats_env server)" -- "$PAIR" server $sargs
  if [ -n "$PORT" ]; then
    # shellcheck disable=SC2086
    launch "$DIR/client" "$how_c" $env_c "$(stats_env client)" -- "$PAIR" client --port "$PORT" $cargs
    expect_exit "$PID" "$DIR/client" client
  fi
  expect_server_exit "$SPID" "$DIR/server"
}

# ---------------------------------------------------------------- scenarios
PEERS_OK="SMC_PEERS=127.0.0.1"
PEERS_OTHER="SMC_PEERS=10.99.0.0/16"

# Sanity: the programs themselves work on plain TCP in a namespace.
scenario_plain_baseline() {
  begin plain_baseline || return 0
  run_pair plain "" plain "" "--mode epoll --bytes 8M" "--mode epoll --bytes 8M"
  finish
}

# a. 64 MiB each way at once per readiness API, through shared memory.
scenario_bulk() {
  local mode lo0 lo1
  for mode in blocking poll select epoll epollet; do
    begin "bulk_$mode" || continue
    lo0=$(lo_bytes "$NS")
    run_pair smc "$PEERS_OK" smc "$PEERS_OK" "--mode $mode --bytes 64M" "--mode $mode --bytes 64M --seed 1"
    lo1=$(lo_bytes "$NS")
    local limit=$((128 * MIB / 100))
    if [ -n "$lo0" ] && [ -n "$lo1" ]; then
      if [ $((lo1 - lo0)) -ge "$limit" ]; then
        note "lo carried $((lo1 - lo0)) bytes (>= 1% of the 128 MiB payload: data went over TCP)"
      fi
    else
      note "cannot read lo tx_bytes"
    fi
    local role
    for role in server client; do
      expect_stat "$role" connections.smc_shm -ge 1
      expect_stat "$role" bytes.smc_tx -ge $((64 * MIB))
    done
    finish
  done
}

# b. half-close: client sends, shuts down writing; server answers after EOF.
scenario_half_close() {
  local mode
  for mode in blocking epoll; do
    begin "half_close_$mode" || continue
    run_pair smc "$PEERS_OK" smc "$PEERS_OK" "--mode $mode --half-close --bytes 8M" \
      "--mode $mode --half-close --bytes 8M"
    expect_stat server connections.smc_shm -ge 1
    expect_stat client connections.smc_shm -ge 1
    expect_stat server bytes.smc_tx -ge $((8 * MIB))
    expect_stat client bytes.smc_tx -ge $((8 * MIB))
    finish
  done
}

# c. peer killed mid-transfer: the reader must see EOF/ECONNRESET within 2 s.
scenario_peer_killed() {
  local mode
  for mode in blocking epoll epollet; do
    begin "peer_killed_$mode" || continue
    start_server "$DIR/server" smc "$PEERS_OK" "$(stats_env server)" -- "$PAIR" server --source --mode "$mode"
    if [ -n "$PORT" ]; then
      launch "$DIR/client" smc "$PEERS_OK" "$(stats_env client)" -- "$PAIR" client --sink --mode "$mode" --port "$PORT"
      local cpid=$PID
      if wait_line "$DIR/client.out" '^sink-start' "$cpid" 20; then
        # Kill the server process itself (and its timeout/smc_run wrappers).
        local victims
        victims=$(descendant_pids "$SPID")
        if [ -z "$victims" ]; then
          note "cannot find the server process"
        else
          # shellcheck disable=SC2086
          kill -9 $victims 2>/dev/null
          if ! wait_exit_within "$cpid" 2000; then
            note "client still running 2 s after the server was killed"
            # shellcheck disable=SC2046
            kill -TERM $(descendant_pids "$cpid") 2>/dev/null
          fi
        fi
      else
        note "client never reported sink-start ($(tail -n 1 "$DIR/client.err" 2>/dev/null))"
      fi
      expect_exit "$cpid" "$DIR/client" client
      expect_line "$DIR/client.out" '^sink-end: (eof|reset) after_ms=[0-9]+' client
      expect_stat client connections.smc_shm -ge 1
    fi
    wait "$SPID" 2>/dev/null
    finish
  done
}

# d. fallback: data still verified, the right side counts a fallback.
scenario_fallback() {
  # (1) plain client, server under smc_run.
  if begin fallback_plain_client; then
    run_pair smc "$PEERS_OK" plain "" "--mode blocking --bytes 8M" "--mode blocking --bytes 8M"
    expect_stat server connections.fallback -ge 1
    expect_stat server connections.smc_shm -eq 0
    finish
  fi
  # (2) plain server; client under smc_run, server address not in SMC_PEERS.
  if begin fallback_plain_server_peer_not_listed; then
    run_pair plain "" smc "$PEERS_OTHER" "--mode poll --bytes 8M" "--mode poll --bytes 8M"
    expect_stat client connections.fallback -ge 1
    expect_stat client connections.smc_shm -eq 0
    expect_reason client
    finish
  fi
  # (3) both under smc_run; the server is configured for TCP only (declines).
  if begin fallback_server_declines; then
    run_pair smc "$PEERS_OK SMC_TRANSPORT=tcp" smc "$PEERS_OK" "--mode epoll --bytes 8M" "--mode epoll --bytes 8M"
    local role
    for role in server client; do
      expect_stat "$role" connections.fallback -ge 1
      expect_stat "$role" connections.smc_shm -eq 0
      expect_reason "$role"
    done
    finish
  fi
  # (4) both under smc_run; the peer is not in SMC_PEERS.
  if begin fallback_peer_not_listed; then
    run_pair smc "$PEERS_OTHER" smc "$PEERS_OTHER" "--mode epollet --bytes 8M" "--mode epollet --bytes 8M"
    expect_stat client connections.fallback -ge 1
    expect_stat client connections.smc_shm -eq 0
    expect_reason client
    expect_stat server connections.smc_shm -eq 0
    finish
  fi
}

# e. hostile bytes at the start of streams; the server keeps working.
scenario_hostile() {
  begin hostile || return 0
  start_server "$DIR/server" smc "$PEERS_OK" "$(stats_env server)" -- \
    "$PAIR" server --lenient --conns 1 --concurrent --bytes 8M
  if [ -n "$PORT" ]; then
    launch "$DIR/hostile" plain -- "$BUILD/smc_hostile" --port "$PORT" --case all
    expect_exit "$PID" "$DIR/hostile" smc_hostile
    launch "$DIR/client" smc "$PEERS_OK" "$(stats_env client)" -- "$PAIR" client --port "$PORT" --bytes 8M
    expect_exit "$PID" "$DIR/client" client
    expect_server_exit "$SPID" "$DIR/server"
    # Every hostile connection must have reached the application (as bytes
    # or EOF) and been rejected by it: none swallowed, none accepted.
    local connected bad
    connected=$(sed -n 's/^hostile cases=[0-9]* connected=\([0-9]*\)$/\1/p' "$DIR/hostile.out")
    bad=$(sed -n 's/^ok .* bad=\([0-9]*\) .*$/\1/p' "$DIR/server.out")
    if [ -z "$connected" ] || [ -z "$bad" ] || [ "$connected" != "$bad" ]; then
      note "server counted bad=${bad:-?} connections, smc_hostile made ${connected:-?}"
    fi
    expect_stat client connections.smc_shm -ge 1
  else
    wait "$SPID" 2>/dev/null
  fi
  finish
}

# f. an application with its own spdlog/fmt under smc_run -d.
scenario_spdlog() {
  begin spdlog_app || return 0
  launch "$DIR/app" smc-d "$PEERS_OK" "$(stats_env app)" -- "$BUILD/spdlog_app"
  expect_exit "$PID" "$DIR/app" spdlog_app
  expect_line "$DIR/app.out" '\[spdlog_app\] \[info\] spdlog_app starting' "spdlog_app stdout"
  expect_line "$DIR/app.out" '\[spdlog_app\] \[info\] spdlog_app exchanged 1048576 bytes each way, verified' \
    "spdlog_app stdout"
  if [ ! -s "$DIR/app.err" ]; then
    note "smc_run -d produced no log output on stderr"
  fi
  expect_stat app connections.smc_shm -ge 1
  finish
}

# g. 8 concurrent connections (epoll), 4 MiB each way each.
scenario_concurrent() {
  begin concurrent_8 || return 0
  start_server "$DIR/server" smc "$PEERS_OK" "$(stats_env server)" -- \
    "$PAIR" server --conns 8 --concurrent --mode epoll --bytes 4M
  if [ -n "$PORT" ]; then
    local i pids=()
    for i in 1 2 3 4 5 6 7 8; do
      launch "$DIR/client$i" smc "$PEERS_OK" "$(stats_env "client$i")" -- \
        "$PAIR" client --port "$PORT" --mode epoll --bytes 4M
      pids+=("$PID")
    done
    for i in 1 2 3 4 5 6 7 8; do
      expect_exit "${pids[$((i - 1))]}" "$DIR/client$i" "client$i"
      expect_stat "client$i" connections.smc_shm -ge 1
    done
  fi
  expect_server_exit "$SPID" "$DIR/server"
  expect_stat server connections.smc_shm -ge 8
  finish
}

# calls_pair NAME "SERVER_PROG ARGS" "CLIENT_PROG ARGS" ROLE REGEX OP N
# ["STAT OP N"]: one scenario of a server and a client program from $BUILD,
# both under the preload; ROLE's output must match REGEX, both sides' stats
# must count shm SMC connections OP N, and the client's STAT OP N if given.
calls_pair() {
  local name=$1 role=$4 regex=$5 op=$6 n=$7 extra=${8:-} extra2=${9:-}
  local -a srv cli
  read -r -a srv <<<"$2"
  read -r -a cli <<<"$3"
  begin "$name" || return 0
  start_server "$DIR/server" smc "$PEERS_OK" "$(stats_env server)" -- "$BUILD/${srv[0]}" "${srv[@]:1}"
  if [ -n "$PORT" ]; then
    launch "$DIR/client" smc "$PEERS_OK" "$(stats_env client)" -- \
      "$BUILD/${cli[0]}" "${cli[1]}" --port "$PORT" "${cli[@]:2}"
    expect_exit "$PID" "$DIR/client" client
  fi
  expect_server_exit "$SPID" "$DIR/server"
  expect_line "$DIR/$role.out" "$regex" "$role"
  expect_stat server connections.smc_shm "$op" "$n"
  expect_stat client connections.smc_shm "$op" "$n"
  if [ -n "$extra" ]; then
    # shellcheck disable=SC2086  # (a stat, an operator and a number)
    expect_stat client $extra
  fi
  if [ -n "$extra2" ]; then
    # shellcheck disable=SC2086
    expect_stat client $extra2
  fi
  finish
}

# Same-host links: one client process makes 40 connections one after
# another (every byte verified both ways); the first makes the link between
# the two processes, the other 39 reuse it and the slots their predecessors
# released (rdma/shm/shm_link.h), with no rendezvous and no new memfd.
scenario_links() {
  local mode
  for mode in blocking epoll; do
    begin "links_$mode" || continue
    run_pair smc "$PEERS_OK" smc "$PEERS_OK" "--mode $mode --conns 40 --bytes 1M" \
      "--mode $mode --repeat 40 --bytes 1M"
    local role
    for role in server client; do
      expect_stat "$role" connections.smc_shm -eq 40
      expect_stat "$role" shm_links.made -eq 1
      expect_stat "$role" shm_links.connections_reusing -eq 39
      # The client lends a slot in its Proposal (the link served the same
      # address last), the server takes it: no Confirm.
      expect_stat "$role" shm_links.lent_first -ge 30
    done
    finish
  done
  # An event loop (one epoll set for every connection, as nginx and redis
  # run) keeps its watches of a slot's doorbells for the next connection
  # over that slot: no EPOLL_CTL_ADD or DEL for them once slots are reused.
  begin links_event_loop || return 0
  start_server "$DIR/server" smc "$PEERS_OK" "$(stats_env server)" -- "$BUILD/smc_stall" server \
    --loop epoll --count 40
  if [ -n "$PORT" ]; then
    launch "$DIR/probe" smc "$PEERS_OK" "$(stats_env probe)" -- "$BUILD/smc_stall" probe \
      --port "$PORT" --count 40
    expect_exit "$PID" "$DIR/probe" probe
  fi
  expect_server_exit "$SPID" "$DIR/server"
  expect_line "$DIR/server.out" "^ok served 40 epoll" server
  expect_stat server connections.smc_shm -eq 40
  expect_stat server shm_links.connections_reusing -eq 39
  expect_stat server shm_links.bell_watches_kept -ge 40
  finish
}

# h. the calls the preload serves itself on SMC sockets (sendfile, splice,
# sendmmsg/recvmmsg, IOV_MAX writev/readv, close_range, SO_LINGER 0): 16 MiB
# each way, every byte verified, lo carrying under 1% of it; blocking and
# non-blocking sockets.
scenario_calls() {
  local mode nb lo0 lo1 label
  for mode in sendfile splice mmsg iov; do
    for nb in "" --nonblock; do
      label="calls_${mode}${nb:+_nonblock}"
      begin "$label" || continue
      lo0=$(lo_bytes "$NS")
      start_server "$DIR/server" smc "$PEERS_OK" "$(stats_env server)" -- \
        "$BUILD/smc_calls" server --mode "$mode" --bytes 16M $nb
      if [ -n "$PORT" ]; then
        launch "$DIR/client" smc "$PEERS_OK" "$(stats_env client)" -- \
          "$BUILD/smc_calls" client --port "$PORT" --mode "$mode" --bytes 16M $nb
        expect_exit "$PID" "$DIR/client" client
      fi
      expect_server_exit "$SPID" "$DIR/server"
      lo1=$(lo_bytes "$NS")
      if [ -n "$lo0" ] && [ -n "$lo1" ]; then
        if [ $((lo1 - lo0)) -ge $((32 * MIB / 100)) ]; then
          note "lo carried $((lo1 - lo0)) bytes (>= 1% of the 32 MiB payload: data went over TCP)"
        fi
      else
        note "cannot read lo tx_bytes"
      fi
      expect_line "$DIR/server.out" "^ok mode=$mode " server
      expect_line "$DIR/client.out" "^ok mode=$mode " client
      local role
      for role in server client; do
        expect_stat "$role" connections.smc_shm -ge 1
        expect_stat "$role" bytes.smc_tx -ge $((16 * MIB))
        expect_stat "$role" bytes.smc_rx -ge $((16 * MIB))
      done
      finish
    done
  done
  # SO_LINGER 0: the server must see the reset.
  calls_pair calls_linger0 "smc_calls server --mode linger0" "smc_calls client --mode linger0" \
    server '^ok mode=linger0 .* reset' -ge 1
  # One socket in several epoll sets at once: level-triggered, edge-triggered,
  # nested and exclusive; each reports what the connection's state says; a
  # kernel fd in a set with a socket that stays readable is not starved;
  # two edge-triggered sets both see every edge; an EPOLL_CTL_MOD wakes a
  # thread asleep on the set.
  # The EPOLL_CTL_MOD wakes the sleeper through the set's wake fd
  # (core/wake.h): waits.wakes_listed counts it.
  # Sets nested late, with data unread, are ready from their registrations'
  # levels: no ring of our own (waits.wakes_rung).
  calls_pair calls_epoll_sets "smc_calls server --mode epoll_sets" \
    "smc_calls client --mode epoll_sets" client '^ok mode=epoll_sets client rounds=50 bytes=219000' -ge 1 \
    "waits.wakes_listed -ge 1" "waits.wakes_rung -eq 0"
  # Sockets created and connected by 16 threads at once; on each, one thread
  # writes while another reads the echo (smc_fork's echo server).
  calls_pair calls_threads "smc_fork server --count 17" "smc_calls client --mode threads --bytes 1M" \
    client '^ok mode=threads client conns=17 ' -eq 17
  # Signals hitting a blocking recv: SA_RESTART handlers (signal(), sigaction)
  # must not surface as EINTR; without SA_RESTART, or with SO_RCVTIMEO, EINTR.
  calls_pair calls_eintr "smc_calls server --mode eintr" "smc_calls client --mode eintr" \
    client '^ok mode=eintr client ' -ge 1
  # Threads asleep on a connection (a blocking recv, poll, epoll_wait, a
  # blocking send) wake when another thread shuts it down: through their
  # own wake fds (core/wake.h), the connection's doorbells never rung for a
  # change of its own while every waiter is this process's; a forked
  # child's blocking recv on the connection it shares with its parent
  # (a waiter the parent has no wake fd of) through the doorbell, once.
  begin calls_kicks || return 0
  start_server "$DIR/server" smc "$PEERS_OK" "$(stats_env server)" -- "$BUILD/smc_calls" server \
    --mode kicks
  if [ -n "$PORT" ]; then
    launch "$DIR/client" smc "$PEERS_OK" "$(stats_env client)" -- "$BUILD/smc_calls" client \
      --port "$PORT" --mode kicks
    expect_exit "$PID" "$DIR/client" client
  fi
  expect_server_exit "$SPID" "$DIR/server"
  expect_line "$DIR/client.out" '^ok mode=kicks client conns=5' client
  expect_line "$DIR/server.out" '^ok mode=kicks server conns=5' server
  expect_stat client connections.smc_shm -eq 5
  expect_stat client waits.wakes_listed -ge 4
  expect_stat client waits.wakes_rung -eq 1
  finish
}

# fork_exec_pair CHILD_EXPECT [SERVER_FLAG]: smc_fork's echo server for 3
# connections (with the flag, if any) against smc_fork's client, whose child
# does CHILD_EXPECT with its inherited copy of connection 1 and makes its own.
fork_exec_pair() {
  local expect=$1
  shift
  start_server "$DIR/server" smc "$(stats_env server)" -- "$BUILD/smc_fork" server --count 3 "$@"
  if [ -n "$PORT" ]; then
    launch "$DIR/client" smc "$PEERS_OK" -- "$BUILD/smc_fork" client --port "$PORT" \
      --child-expect "$expect"
    expect_exit "$PID" "$DIR/client" client
  fi
  expect_server_exit "$SPID" "$DIR/server"
  expect_line "$DIR/client.out" "^ok child-expect=$expect" client
  expect_line "$DIR/server.out" '^ok served 3' server
}

# i. an SMC connection across fork(): the child closes its inherited copy
# (untouched) and makes its own connection; the parent's keeps working.
scenario_fork() {
  begin fork_inherited || return 0
  fork_exec_pair untouched
  expect_stat server connections.smc_shm -eq 3
  finish
}

# i2. the child of a fork closes every fd from its inherited connection's up
# with closefrom(), as before an exec (glibc closes them behind close()'s and
# close_range()'s back): the library forgets the connection there, so a
# pipe that gets its number works as a pipe; the parent's copy is untouched.
scenario_fork_closefrom() {
  begin fork_closefrom || return 0
  start_server "$DIR/server" smc "$(stats_env server)" -- "$BUILD/smc_fork" server --count 2
  if [ -n "$PORT" ]; then
    launch "$DIR/client" smc "$PEERS_OK" -- "$BUILD/smc_fork" client --port "$PORT" \
      --child-expect closefrom
    expect_exit "$PID" "$DIR/client" client
  fi
  expect_server_exit "$SPID" "$DIR/server"
  expect_line "$DIR/client.out" '^ok child-expect=closefrom' client
  expect_line "$DIR/server.out" '^ok served 2' server
  expect_stat server connections.smc_shm -eq 2
  finish
}

# j. a listener inherited across exec() (socket activation, a server that
# re-executes itself): the new image's connections negotiate SMC too, instead
# of reading the client's Proposal as data.
scenario_exec_listener() {
  begin exec_listener || return 0
  fork_exec_pair untouched --exec-listener
  expect_stat server connections.smc_shm -eq 3
  finish
}

# k. inetd style: the server accepts, forks, and the child exec()s a handler
# on the untouched connection; the handler negotiates SMC (4 stats files: the
# acceptor's, with none, and one SMC connection per handler).
scenario_exec_conn() {
  begin exec_conn || return 0
  fork_exec_pair untouched --exec-conn
  local f v files=0 smc=0
  for f in "$DIR"/server.[0-9]*.json; do
    [ -f "$f" ] || continue
    files=$((files + 1))
    v=$(json_get "$f" connections.smc_shm) || v=0
    smc=$((smc + ${v:-0}))
  done
  if [ "$files" -ne 4 ] || [ "$smc" -ne 3 ]; then
    note "server side: $files stats files with $smc shm SMC connections (expected 4 files, 3 connections)"
  fi
  finish
}

# l. an SMC connection inherited across exec(): its buffers stayed in the
# image before, so in the new one it must read as reset at once (never as a
# TCP socket on which nothing arrives), and the parent's keeps working.
scenario_exec_inherited() {
  begin exec_inherited || return 0
  fork_exec_pair exec-reset
  expect_stat server connections.smc_shm -eq 3
  finish
}

# l2. the same for a program posix_spawn() starts (glibc clones and execs
# inside it, where no exec() of the application's is seen), the connection
# passed in its file actions.
scenario_spawn_inherited() {
  begin spawn_inherited || return 0
  fork_exec_pair spawn-reset
  expect_stat server connections.smc_shm -eq 3
  finish
}

# stats_sum ROLE KEY: the sum of KEY over all of ROLE's stats files (a
# process and its forked or exec'd children each write one); empty if none.
stats_sum() {
  local f v sum=""
  for f in "$DIR/$1".[0-9]*.json; do
    [ -f "$f" ] || continue
    v=$(json_get "$f" "$2") || v=0
    sum=$((${sum:-0} + ${v:-0}))
  done
  echo "$sum"
}

# expect_stat_of FILE LABEL KEY OP VALUE: expect_stat for one given file.
expect_stat_of() {
  local f=$1 label=$2 key=$3 op=$4 want=$5 v
  if [ ! -f "$f" ]; then
    note "$label wrote no stats file ($(basename "$f"))"
    return 0
  fi
  if ! v=$(json_get "$f" "$key") || [ -z "$v" ]; then
    note "$label stats: no $key"
    return 0
  fi
  if ! test "$v" "$op" "$want"; then
    note "$label stats: $key=$v, expected $op $want"
  fi
  return 0
}

# m. accepted connections handed to one worker process over a unix socket
# (SCM_RIGHTS), as Node.js cluster and prefork servers do. undecided: the
# acceptor never reads, the worker's process decides the connection;
# established: the acceptor reads the 64-byte first request (deciding it in
# its own process), passes it along, closes its copy, and the connection
# must carry on in the worker. The worker is a fork()ed child or a freshly
# exec()d image; it echoes with a thread per connection or one edge-triggered
# epoll loop. Every byte is verified by the client, the payload must go
# through shared memory (lo carrying under 1% of it) and the worker, which
# writes its own stats file, must have sent the echo over SMC.
scenario_handoff() {
  local mode worker reader closing parallel lo0 lo1 wpid nfiles sum conns=4
  local payload=$((2 * conns * 4 * MIB))
  for mode in undecided established; do
    for worker in fork exec; do
      for reader in blocking epoll; do
        begin "handoff_${mode}_${worker}_${reader}" || continue
        lo0=$(lo_bytes "$NS")
        # An exec'd worker's acceptor closes its copies behind close()'s
        # back: as Node.js does (syscall(SYS_close)), or by the system call
        # instruction, which nothing sees. One connection at a time for the
        # latter: the next user of the closed number is then the library's
        # own engine (the worker's request to take the connection over),
        # not the acceptor's next accept().
        closing=""
        parallel=2
        if [ "$worker" = exec ]; then
          closing=$([ "$reader" = blocking ] && echo --raw-close || echo --asm-close)
          [ "$closing" = --asm-close ] && parallel=1
        fi
        start_server "$DIR/server" smc "$PEERS_OK" "$(stats_env server)" -- "$BUILD/smc_handoff" server \
          --count "$conns" --mode "$mode" --worker "$worker" --reader "$reader" ${closing:+"$closing"}
        if [ -n "$PORT" ]; then
          launch "$DIR/client" smc "$PEERS_OK" "$(stats_env client)" -- "$BUILD/smc_handoff" client \
            --port "$PORT" --conns "$conns" --parallel "$parallel" --bytes 4M
          expect_exit "$PID" "$DIR/client" client
        fi
        expect_server_exit "$SPID" "$DIR/server"
        lo1=$(lo_bytes "$NS")
        if [ -n "$lo0" ] && [ -n "$lo1" ]; then
          if [ $((lo1 - lo0)) -ge $((payload / 100)) ]; then
            note "lo carried $((lo1 - lo0)) bytes (>= 1% of the $((payload / MIB)) MiB payload: data went over TCP)"
          fi
        else
          note "cannot read lo tx_bytes"
        fi
        expect_line "$DIR/client.out" "^ok conns=$conns " client
        expect_line "$DIR/server.out" "^ok mode=$mode worker=$worker reader=$reader conns=$conns\$" server
        expect_stat client connections.smc_shm -ge "$conns"
        # Server side: the acceptor's stats file and the worker's.
        wpid=$(sed -n 's/^worker pid=\([0-9][0-9]*\)$/\1/p' "$DIR/server.out")
        nfiles=$(find "$DIR" -maxdepth 1 -name 'server.[0-9]*.json' | wc -l)
        if [ "$nfiles" -ne 2 ]; then
          note "server side wrote $nfiles stats files (expected 2: acceptor and worker)"
        fi
        if [ -z "$wpid" ]; then
          note "server printed no worker pid"
        else
          if [ "$mode" = undecided ]; then
            # The worker decided each connection itself; nothing was offered.
            expect_stat_of "$DIR/server.$wpid.json" worker connections.smc_shm -ge "$conns"
            expect_stat_of "$DIR/server.$wpid.json" worker handoffs.taken -eq 0
          else
            # Each connection was offered by the acceptor and taken over by
            # the worker, none reset.
            expect_stat_of "$DIR/server.$wpid.json" worker handoffs.taken -ge "$conns"
            expect_stat_of "$DIR/server.$wpid.json" worker handoffs.reset -eq 0
            if [ "$(stats_sum server handoffs.offered)" -lt "$conns" ]; then
              note "the acceptor offered $(stats_sum server handoffs.offered) connections, expected >= $conns"
            fi
          fi
          expect_stat_of "$DIR/server.$wpid.json" worker bytes.smc_tx -ge $((conns * 4 * MIB))
        fi
        sum=$(stats_sum server connections.smc_shm)
        if [ -n "$sum" ] && [ "$sum" -lt "$conns" ]; then
          note "server side (acceptor + worker) counted $sum shm SMC connections, expected >= $conns"
        fi
        finish
      done
    done
  done
}

# n. epoll registrations made before or while a connection is decided and
# changed afterwards (nginx and twemproxy ADD before connect(); servers ADD
# an accepted socket before its first byte): epoll_ctl never fails on a
# registered socket, due edges arrive, one-shot and DEL behave as the
# kernel's; against a threaded echo server and a single-threaded epoll one
# that DELs/re-ADDs and re-arms one-shot registrations on the server side.
# The client's last case registers its connections in two sets by turns
# (slots then serve connections in both, and each set keeps watches of
# some): nothing is reported where a connection is not registered.
scenario_epoll_reg() {
  local flavour flag
  for flavour in threads epoll; do
    flag=""
    [ "$flavour" = epoll ] && flag=--epoll
    calls_pair "epoll_reg_$flavour" "smc_epoll_reg server --count 26 $flag" "smc_epoll_reg client --case all" \
      client '^ok case=sets_take_turns rounds=100' -ge 26
  done
}

# o. a process that sandboxes itself as sshd's pre-auth child does
# (RLIMIT_NOFILE 1, RLIMIT_FSIZE 0, a seccomp filter allowing little beyond
# read/write/poll and killing on anything else). ppoll, blocking: an SMC
# connection made before carries on inside the sandbox, every byte verified;
# a call of the library's own that the filter forbids kills the client
# (SIGSYS), which its parent reports. newconn: a connection made inside a
# sandbox that permits plain sockets stays TCP (the server, never seeing a
# Proposal, counts no_proposal). The sandboxed client cannot write its stats
# file (open refused, RLIMIT_FSIZE 0): the evidence is the server's stats
# and the loopback counter. epoll: the echo on an epoll set made before the
# sandbox, then a set made inside it (no fd of ours can be made for it:
# only its own looks every 100 ms can see what the connection changes by
# itself) must report another thread's shutdown(SHUT_RD).
scenario_sandbox() {
  local mode name bytes lo0 lo1 conns spin
  for name in ppoll blocking blocking_spin newconn epoll; do
    begin "sandbox_$name" || continue
    mode=${name%_spin}
    # blocking_spin: reads that busy-wait first (SMC_SPIN_US above the 20 us
    # after which a spinner yields the CPU): no sched_yield() in a sandbox.
    spin=""
    [ "$name" = blocking_spin ] && spin=SMC_SPIN_US=200
    bytes=$((8 * MIB))
    conns=2  # a first connection opened and closed before the sandbox
    if [ "$mode" = newconn ]; then
      bytes=$MIB
      conns=1
    fi
    lo0=$(lo_bytes "$NS")
    start_server "$DIR/server" smc "$PEERS_OK" "$(stats_env server)" -- "$BUILD/smc_sandbox" server --count "$conns"
    if [ -n "$PORT" ]; then
      launch "$DIR/client" smc "$PEERS_OK" "$(stats_env client)" $spin -- "$BUILD/smc_sandbox" client \
        --port "$PORT" --mode "$mode" --bytes "$bytes"
      expect_exit "$PID" "$DIR/client" client
    fi
    expect_server_exit "$SPID" "$DIR/server"
    lo1=$(lo_bytes "$NS")
    expect_line "$DIR/client.out" "^ok mode=$mode bytes=$bytes sandboxed\$" client
    expect_line "$DIR/server.out" "^ok served $conns\$" server
    if [ -z "$lo0" ] || [ -z "$lo1" ]; then
      note "cannot read lo tx_bytes"
    elif [ "$mode" = newconn ]; then
      # Both directions over TCP: lo carried the payload twice, at least.
      if [ $((lo1 - lo0)) -lt $((2 * bytes)) ]; then
        note "lo carried only $((lo1 - lo0)) bytes (< the $((2 * bytes / MIB)) MiB payload: not TCP?)"
      fi
    elif [ $((lo1 - lo0)) -ge $((2 * bytes / 100)) ]; then
      note "lo carried $((lo1 - lo0)) bytes (>= 1% of the $((2 * bytes / MIB)) MiB payload: data went over TCP)"
    fi
    if [ "$mode" = newconn ]; then
      expect_stat server connections.smc_shm -eq 0
      expect_stat server connections.fallback -ge 1
      expect_stat server fallback_reasons.no_proposal -ge 1
    else
      expect_stat server connections.smc_shm -ge 1
      expect_stat server bytes.smc_tx -ge "$bytes"
      expect_stat server bytes.smc_rx -ge "$bytes"
    fi
    finish
  done
}

# p. a client that stalls its CLC handshake must cost only its own
# connection: while a raw client (no preload) holds a silent Proposal, half a
# Proposal, a silent Confirm (Accept read, nothing more) or a rendezvous
# connected and silent, an ordinary client of the same single-threaded
# server (poll, level-triggered epoll) under the preload is answered within
# 0.5 s each round, over SMC.
scenario_stall() {
  local loop kind apid hold=2000
  for loop in poll epoll; do
    for kind in silent_proposal partial_proposal silent_confirm slow_rendezvous; do
      begin "stall_${loop}_${kind}" || continue
      # 4 connections: the attack's and the probe's 3.
      start_server "$DIR/server" smc "$PEERS_OK" "$(stats_env server)" -- "$BUILD/smc_stall" server \
        --loop "$loop" --count 4
      if [ -n "$PORT" ]; then
        launch "$DIR/attack" plain -- "$BUILD/smc_stall" attack --port "$PORT" --kind "$kind" --hold-ms "$hold"
        apid=$PID
        if wait_line "$DIR/attack.out" "^attack $kind in place\$" "$apid" 10; then
          launch "$DIR/probe" smc "$PEERS_OK" "$(stats_env probe)" -- "$BUILD/smc_stall" probe \
            --port "$PORT" --count 3
          expect_exit "$PID" "$DIR/probe" probe
          expect_line "$DIR/probe.out" '^probe ok max_ms=[0-9]+$' probe
          # A pass counts only if the attack was still in place throughout.
          if grep -q '^probe ok' "$DIR/probe.out" 2>/dev/null && ! pid_alive "$apid"; then
            note "the attack ended before the probe did (its --hold-ms $hold is too short here)"
          fi
          expect_stat probe connections.smc_shm -ge 3
        else
          note "attack never in place ($(grep -v '^$' "$DIR/attack.err" 2>/dev/null | tail -n 1))"
        fi
        expect_exit "$apid" "$DIR/attack" attack
      fi
      expect_server_exit "$SPID" "$DIR/server"
      expect_line "$DIR/server.out" "^ok served 4 $loop\$" server
      expect_stat server connections.smc_shm -ge 1
      finish
    done
  done
}

# p2. the same for the client side: an event-loop client (poll, epoll)
# whose non-blocking connect reaches a silent server (it reads the Proposal,
# answers nothing) keeps serving its other connections: 3 echo rounds
# against an ordinary server, each within 0.5 s, over SMC.
scenario_stall_client() {
  local loop qpid qport
  for loop in poll epoll; do
    begin "stall_client_${loop}" || continue
    start_server "$DIR/server" smc "$PEERS_OK" "$(stats_env server)" -- "$BUILD/smc_stall" server \
      --loop epoll --count 3
    local sport=$PORT epid=$SPID
    start_server "$DIR/silent" plain -- "$BUILD/smc_stall" silent --hold-ms 3000
    qpid=$SPID qport=$PORT
    if [ -n "$sport" ] && [ -n "$qport" ]; then
      launch "$DIR/client" smc "$PEERS_OK" "$(stats_env client)" -- "$BUILD/smc_stall" client \
        --loop "$loop" --port "$sport" --silent-port "$qport"
      expect_exit "$PID" "$DIR/client" client
      expect_line "$DIR/client.out" '^client ok max_ms=[0-9]+$' client
      expect_line "$DIR/silent.out" '^silent in place' silent
      # Only the echo rounds are SMC; the silent server's connection never is.
      expect_stat client connections.smc_shm -ge 3
    fi
    expect_exit "$qpid" "$DIR/silent" silent
    expect_server_exit "$epid" "$DIR/server"
    expect_line "$DIR/server.out" '^ok served 3 epoll$' server
    finish
  done
}

# p3. a step's deadline ends it with nobody touching the socket: an
# event-loop client (poll, epoll) whose non-blocking connect reaches a
# silent server waits on that socket alone without a timeout; its handshake
# gives up at its own deadline (the Proposal answered by nothing for 5 s),
# the socket becomes writable as plain TCP, and the client's bytes reach the
# server after its Decline.
scenario_stall_deadline() {
  local loop qpid qport
  for loop in poll epoll; do
    begin "stall_deadline_${loop}" || continue
    start_server "$DIR/silent" plain -- "$BUILD/smc_stall" silent --hold-ms 20000 --expect-fallback
    qpid=$SPID qport=$PORT
    if [ -n "$qport" ]; then
      # No echo rounds (--count 0): the silent connection is all there is.
      launch "$DIR/client" smc "$PEERS_OK" "$(stats_env client)" -- "$BUILD/smc_stall" client \
        --loop "$loop" --port "$qport" --silent-port "$qport" --count 0 --await-silent
      expect_exit "$PID" "$DIR/client" client
      expect_line "$DIR/client.out" '^client silent fell back$' client
      expect_stat client fallback_reasons.clc_timeout -eq 1
      expect_stat client handshakes.stepped -eq 1
      # Waiting is not spinning: poll() looks again every 100 ms (50 looks
      # in the 5 s), epoll_wait() only when something came; a wait that
      # spun would count tens of thousands.
      expect_stat client handshakes.step_waits -le 60
    fi
    expect_exit "$qpid" "$DIR/silent" silent
    expect_line "$DIR/silent.out" '^silent got fallback' silent
    finish
  done
}

# p4. an accepted socket decides without its application: a server that
# accepts and then touches nothing for 6 s (longer than a client's 5 s wait
# for the Accept) still has its client's blocking connect() answered over
# SMC at once, its first bytes looked at for it (untouched_looks), and the
# 64 bytes echoed over SMC once it reads.
scenario_untouched() {
  begin untouched || return 0
  start_server "$DIR/server" smc "$PEERS_OK" "$(stats_env server)" -- "$BUILD/smc_stall" lazy \
    --hold-ms 6000
  if [ -n "$PORT" ]; then
    launch "$DIR/client" smc "$PEERS_OK" "$(stats_env client)" -- "$BUILD/smc_stall" quick \
      --port "$PORT"
    expect_exit "$PID" "$DIR/client" client
    expect_line "$DIR/client.out" '^quick ok$' client
    expect_stat client connections.smc_shm -eq 1
    expect_stat client connections.fallback -eq 0
  fi
  expect_server_exit "$SPID" "$DIR/server"
  expect_line "$DIR/server.out" '^lazy echoed after hold_ms=6000$' server
  expect_stat server handshakes.untouched_looks -ge 1
  expect_stat server connections.smc_shm -eq 1
  finish
}

# q. differential: smc_diff.py, one script of small server/client cases
# (non-blocking connect and SO_ERROR, MSG_PEEK, MSG_WAITALL, FIONREAD,
# half-close both ways, close with unread data, SO_RCVTIMEO, readiness through
# select/poll/epoll, ...) printing one fact per line, run on plain TCP and
# under the preload, must print the same lines; the SMC run must have made
# its connections over shm (the script's 44 connections, less the few whose
# server never touches the accepted socket, which stay TCP by design).
scenario_diff() {
  begin diff || return 0
  local py=/usr/bin/python3 script=$here/smc_diff.py
  [ -x "$py" ] || py=$(command -v python3 2>/dev/null)
  if [ -z "$py" ]; then
    note "python3 not found"
    finish
    return 0
  fi
  launch "$DIR/plain" plain -- "$py" "$script"
  expect_exit "$PID" "$DIR/plain" "smc_diff.py (plain)"
  launch "$DIR/smc" smc "$PEERS_OK" "$(stats_env smc)" -- "$py" "$script"
  expect_exit "$PID" "$DIR/smc" "smc_diff.py (smc_run)"
  if grep -Eq ': (EXCEPTION|KILLED)' "$DIR/plain.out"; then
    note "plain run: $(grep -E ': (EXCEPTION|KILLED)' "$DIR/plain.out" | head -n 3 | tr '\n' ';')"
  fi
  local cases
  cases=$("$py" "$script" --list | wc -l)
  if [ "$(cut -d' ' -f1 "$DIR/plain.out" | sort -u | wc -l)" -ne "$cases" ]; then
    note "plain run printed facts for fewer than the script's $cases cases"
  fi
  # Known differences (smc_diff.known: each a limit in README.md) are left
  # out of both sides; every other fact must be the same.
  grep -v '^#' "$here/smc_diff.known" | cut -f1 | sed '/^$/d' >"$DIR/known.txt"
  grep -v -F -f "$DIR/known.txt" "$DIR/plain.out" >"$DIR/plain.cmp"
  grep -v -F -f "$DIR/known.txt" "$DIR/smc.out" >"$DIR/smc.cmp"
  if ! diff "$DIR/plain.cmp" "$DIR/smc.cmp" >"$DIR/diff.txt"; then
    note "output under smc_run differs from plain TCP ($(grep -c '^>' "$DIR/diff.txt") lines; < plain, > smc; $DIR/diff.txt):
$(head -n 20 "$DIR/diff.txt")"
  fi
  expect_stat smc connections.smc_shm -ge 40
  # select() and poll() on SMC sockets only, data there: answered from
  # memory (the script's readable() checks, python's waits with a timeout).
  expect_stat smc waits.poll_from_memory -ge 10
  finish
}

# r. a hostile same-host peer (smc_evil_peer evil, no preload: the real shm
# handshake through the project's own code, then misbehaviour with
# everything it holds: doorbells flooded or rung without end, garbage over
# every shared page, waiter counts, rung flags, close flags and cursors
# flipped, never consuming, closing in the middle of a write, wrong fds in
# the rendezvous (also on as many connections as the server has handshake
# threads), fds sent through the doorbells, its ends of the server's
# doorbells shut (which the server must answer by ending that connection))
# must cost only its own
# connections: while it holds, an ordinary client of the same
# single-threaded server (poll, level-triggered epoll) under the preload is
# answered within 0.5 s in each of 3 rounds, over SMC; the server ends every
# connection of the peer once the peer exited (within 5 s), never crashes,
# and the ASan+UBSan preload finds nothing.
scenario_evil() {
  local loop kind epid conns hold=1500 bad
  for loop in poll epoll; do
    for kind in flood_doorbells ring_storm garbage_pages flip_flags never_consume close_mid_write bad_fds \
      bad_fds_pool bad_fds_bell bad_fds_bell_tcp bad_fds_bell_linger bad_fds_ring_linger shut_rings; do
      begin "evil_${loop}_${kind}" || continue
      case $kind in  # the evil peer's connections (smc_evil_peer.cpp, "Kinds")
        flip_flags) conns=4 ;;
        bad_fds) conns=12 ;;
        bad_fds_pool) conns=32 ;;
        *) conns=1 ;;
      esac
      start_server "$DIR/server" smc "$PEERS_OK" "$(stats_env server)" -- "$BUILD/smc_evil_peer" server \
        --loop "$loop" --count $((conns + 3))
      if [ -n "$PORT" ]; then
        launch "$DIR/evil" plain -- "$BUILD/smc_evil_peer" evil --port "$PORT" --kind "$kind" --hold-ms "$hold"
        epid=$PID
        if wait_line "$DIR/evil.out" "^evil $kind in place\$" "$epid" 20; then
          launch "$DIR/probe" smc "$PEERS_OK" "$(stats_env probe)" -- "$BUILD/smc_evil_peer" probe \
            --port "$PORT" --count 3 --gap-ms 250
          expect_exit "$PID" "$DIR/probe" probe
          expect_line "$DIR/probe.out" '^probe ok max_ms=[0-9]+$' probe
          # A pass counts only if the peer still misbehaved throughout.
          if grep -q '^probe ok' "$DIR/probe.out" 2>/dev/null && ! pid_alive "$epid"; then
            note "the evil peer ended before the probe did (its --hold-ms $hold is too short here)"
          fi
          expect_stat probe connections.smc_shm -ge 3
          if [ "$kind" = shut_rings ] && [ "$loop" = poll ]; then
            # poll watches the doorbell level-triggered: it must end that
            # connection rather than wake for it again and again.
            expect_line "$DIR/evil.out" "^evil shut_rings: the server ended the connection\$" "evil peer"
          fi
        else
          note "evil peer never in place ($(grep -v '^$' "$DIR/evil.err" 2>/dev/null | tail -n 1))"
        fi
        expect_exit "$epid" "$DIR/evil" "evil peer"
        # Its connections end with its process: the server sees them end.
        if ! wait_exit_within "$SPID" 5000; then
          note "server still running 5 s after the evil peer exited ($(grep -c '^server ended' "$DIR/server.out" 2>/dev/null) of $((conns + 3)) connections ended)"
          # shellcheck disable=SC2046
          kill -TERM $(descendant_pids "$SPID") 2>/dev/null
        fi
      fi
      expect_server_exit "$SPID" "$DIR/server"
      expect_line "$DIR/server.out" "^ok served $((conns + 3)) $loop\$" server
      expect_stat server connections.smc_shm -ge 3
      bad=$(grep -hE 'AddressSanitizer|runtime error' "$DIR/server.err" "$DIR/probe.err" 2>/dev/null | head -n 1)
      if [ -n "$bad" ]; then
        note "sanitizer: $bad"
      fi
      finish
    done
  done
}

# ---------------------------------------------------------------- main
scenario_plain_baseline
scenario_bulk
scenario_half_close
scenario_peer_killed
scenario_fallback
scenario_hostile
scenario_spdlog
scenario_concurrent
scenario_links
scenario_calls
scenario_fork
scenario_fork_closefrom
scenario_exec_listener
scenario_exec_conn
scenario_exec_inherited
scenario_spawn_inherited
scenario_handoff
scenario_epoll_reg
scenario_sandbox
scenario_stall
scenario_stall_client
scenario_stall_deadline
scenario_untouched
scenario_diff
scenario_evil

smct_cleanup
if summary; then
  if [ "${SMCT_KEEP:-0}" = 1 ]; then
    echo "logs: $TMPD"
  else
    rm -rf "$TMPD"
  fi
  exit 0
fi
echo "logs: $TMPD"
exit 1
