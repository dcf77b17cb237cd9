#!/usr/bin/env bash
# memcached (4 threads) with kvcheck.py: 2000 binary values up to 300 KB set
# over 4 connections, read back in another order and compared byte for byte;
# a second kvcheck process at once. Both under smc_run in a fresh namespace.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
need memcached

app_begin memcached
PORT=11211
app_launch server server memcached -u root -l 127.0.0.1 -p "$PORT" -U 0 -t 4 -m 1024 -I 1m -c 256
SPID=$PID
if wait_listen "$PORT" "$SPID"; then
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
stop_app "$SPID" TERM
expect_smc server 8
expect_smc client 8
app_finish
