#!/usr/bin/env bash
# redis-server with redis-benchmark (SET/GET, 1 KiB values, 50 connections)
# and kvcheck.py (2000 binary values up to 200 KB stored and read back), all
# under smc_run in a fresh network namespace.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
need redis-server redis-benchmark redis-cli

app_begin redis
PORT=6379
N=${REDIS_REQUESTS:-50000}
SIZE=1024
app_launch server server redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$DIR" --daemonize no --protected-mode no
SPID=$PID
if wait_listen "$PORT" "$SPID"; then
  if app_check bench client redis-benchmark -h 127.0.0.1 -p "$PORT" -t set,get -n "$N" -d "$SIZE" -c 50 -q; then
    tr '\r' '\n' <"$DIR/bench.out" | grep 'requests per second' >"$DIR/bench.sum"
    sets=$(grep -c '^SET: .* requests per second' "$DIR/bench.sum")
    gets=$(grep -c '^GET: .* requests per second' "$DIR/bench.sum")
    if [ "$sets" != 1 ] || [ "$gets" != 1 ]; then
      note "redis-benchmark did not complete both SET and GET ($(tail -n 2 "$DIR/bench.sum" | tr '\n' ' '))"
    fi
    payload $((2 * N * SIZE))  # SET values in, GET values out
    # The benchmark's key holds its last value: SIZE (random) bytes.
    if app_check cli client redis-cli -h 127.0.0.1 -p "$PORT" STRLEN key:__rand_int__; then
      if [ "$(cat "$DIR/cli.out")" != "$SIZE" ]; then
        note "STRLEN key:__rand_int__ is $(cat "$DIR/cli.out"), not $SIZE"
      fi
    fi
  fi
  if app_check kv client "$PYTHON" "$here/kvcheck.py" redis 127.0.0.1 "$PORT" --keys 2000; then
    kvbytes=$(sed -n 's/^ok keys=[0-9]* bytes=\([0-9]*\)$/\1/p' "$DIR/kv.out")
    payload $((2 * ${kvbytes:-0}))
  fi
  sps=$(sed -n 's/^SET: \([0-9.]*\) requests per second.*/\1/p' "$DIR/bench.sum" 2>/dev/null)
  gps=$(sed -n 's/^GET: \([0-9.]*\) requests per second.*/\1/p' "$DIR/bench.sum" 2>/dev/null)
  APP_RESULT="SET ${sps:-?} rps, GET ${gps:-?} rps ($N each, ${SIZE} B, 50 conns); kvcheck $(cat "$DIR/kv.out" 2>/dev/null)"
else
  note "redis-server did not listen ($(tail -n 1 "$DIR/server.out" 2>/dev/null))"
fi
stop_app "$SPID" TERM
expect_smc server 50
expect_smc client 50
app_finish
