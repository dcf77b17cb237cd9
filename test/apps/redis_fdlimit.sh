#!/usr/bin/env bash
# redis-server under a soft RLIMIT_NOFILE of 1024 (systemd's default; the
# hard limit above it) with 900 clients held open at once, each storing and
# reading back 32 KiB: every client is served over SMC, and the library's
# fds take none of the application's numbers (redis-server keeps under 1024
# fds of its own: 900 clients and its own few), as on TCP. Before the
# library's fds went above the soft limit, redis-server refused clients
# ("Too many open files") after about 100 SMC connections.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
need redis-server

app_begin redis_fdlimit
PORT=6379
N=900
SOFT=1024
hard=$(ulimit -H -n)
if [ "$hard" != unlimited ] && [ "$hard" -lt $((SOFT + 16 * N)) ]; then
  note "the hard RLIMIT_NOFILE ($hard) leaves no room above the soft limit for $N connections' fds (needs $((SOFT + 16 * N)))"
fi
ulimit -S -n "$SOFT"
# maxclients + redis's 32 reserved fds stay under the soft limit: redis
# keeps the limit as it is.
app_launch server server redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$DIR" --daemonize no --protected-mode no --maxclients 960
SPID=$PID
if wait_listen "$PORT" "$SPID"; then
  app_launch client client "$PYTHON" "$here/idle_clients.py" 127.0.0.1 "$PORT" "$N" "$DIR/ready" "$DIR/release"
  CPID=$PID
  for ((i = 0; i < 1200; i++)); do
    [ -f "$DIR/ready" ] || ! pid_alive "$CPID" && break
    sleep 0.05
  done
  rpid=""
  for p in $(descendant_pids "$SPID"); do
    [ "$(cat "/proc/$p/comm" 2>/dev/null)" = redis-server ] && rpid=$p
  done
  if [ ! -f "$DIR/ready" ]; then
    note "the clients did not all connect ($(tail -n 1 "$DIR/client.err" 2>/dev/null))"
  elif [ -z "$rpid" ]; then
    note "no redis-server process"
  else
    below=0
    total=0
    for f in /proc/"$rpid"/fd/*; do
      total=$((total + 1))
      [ "${f##*/}" -lt "$SOFT" ] && below=$((below + 1))
    done
    soft_now=$(awk '/^Max open files/ { print $4 }' "/proc/$rpid/limits")
    APP_RESULT="$N clients held; redis-server: $below fds below $SOFT, $total in all, soft limit $soft_now"
    [ "$below" -le $((N + 40)) ] || note "redis-server holds $below fds below $SOFT for $N clients"
    # The fd budget so far: the TCP socket and 7 of ours per connection
    # (docs/ARCHITECTURE.md, "The fd budget").
    [ "$total" -le $((8 * N + 40)) ] || note "redis-server holds $total fds for $N clients: more than 8 per connection"
    [ "$soft_now" = "$SOFT" ] || note "redis-server's soft RLIMIT_NOFILE is $soft_now, not $SOFT"
    payload $((2 * N * 32 * 1024))
  fi
  touch "$DIR/release"
  wait "$CPID" 2>/dev/null || note "the client failed ($(tail -n 1 "$DIR/client.err" 2>/dev/null))"
else
  note "redis-server did not listen ($(tail -n 1 "$DIR/server.out" 2>/dev/null))"
fi
if grep -q 'Too many open files' "$DIR/server.out" 2>/dev/null; then
  note "redis-server ran out of fds: $(grep -c 'Too many open files' "$DIR/server.out") accept failures"
fi
stop_app "$SPID" TERM
expect_smc server "$N"
expect_smc client "$N"
app_finish
