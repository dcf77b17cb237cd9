#!/usr/bin/env bash
# memcached (4 threads, daemonised with -d: it forks, the parent exits and
# the daemon carries on in a new session) with kvcheck.py: 2000 binary values
# up to 300 KB set over 4 connections, read back in another order and
# compared byte for byte; a second kvcheck process at once. Both under
# smc_run in a fresh namespace.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
need memcached

app_begin memcached
PORT=11211
PIDFILE=$DIR/memcached.pid
app_launch server server memcached -d -P "$PIDFILE" -u root -l 127.0.0.1 -p "$PORT" -U 0 -t 4 \
  -m 1024 -I 1m -c 256
if ! wait "$PID"; then
  note "memcached -d exited non-zero ($(tail -n 1 "$DIR/server.err" 2>/dev/null))"
fi
SPID=""
if wait_listen "$PORT" && SPID=$(cat "$PIDFILE" 2>/dev/null) && [ -n "$SPID" ]; then
  app_launch kv2 client "$PYTHON" "$here/kvcheck.py" memcached 127.0.0.1 "$PORT" --keys 2000 \
    --max-size 300000 --seed 2
  kv2=$PID
  app_check kv1 client "$PYTHON" "$here/kvcheck.py" memcached 127.0.0.1 "$PORT" --keys 2000 \
    --max-size 300000 --seed 1
  if ! wait "$kv2"; then
    note "kv2 failed ($(tail -n 1 "$DIR/kv2.err" 2>/dev/null))"
  fi
  for k in kv1 kv2; do
    b=$(sed -n 's/^ok keys=[0-9]* bytes=\([0-9]*\)$/\1/p' "$DIR/$k.out")
    payload $((2 * ${b:-0}))
  done
  APP_RESULT="2 clients x 2000 values (1 B..300 KB) set and read back: $(cat "$DIR/kv1.out" "$DIR/kv2.out" 2>/dev/null | tr '\n' ' ')"
else
  note "memcached did not listen ($(tail -n 1 "$DIR/server.err" 2>/dev/null))"
fi
# The daemon is no child of ours: signal it and wait for it to go (it
# writes its stats file on the way out).
if [ -n "$SPID" ] && pid_alive "$SPID"; then
  kill -TERM "$SPID" 2>/dev/null
  if ! wait_exit_within "$SPID" 10000; then
    note "memcached daemon still running 10 s after SIGTERM"
    kill -9 "$SPID" 2>/dev/null
  fi
fi
expect_smc server 8
expect_smc client 8
app_finish
