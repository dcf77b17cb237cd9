#!/usr/bin/env bash
# twemproxy (nutcracker, one redis pool, one server connection) in front of
# redis-server: redis-benchmark through the proxy (SET/GET, 1 KiB values, 20
# connections; twemproxy supports no PING/CONFIG, so only set,get), a
# redis-cli SET/GET round trip of a 100 KB binary value compared byte for
# byte, and kvcheck.py (500 binary values up to 200 KB stored and read
# back). Every hop (client, proxy, server) under smc_run in a fresh network
# namespace.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
need nutcracker redis-server redis-benchmark redis-cli

app_begin twemproxy
PORT=22121       # nutcracker
REDIS_PORT=6379
N=${TWEMPROXY_REQUESTS:-2000}
SIZE=1024
cat >"$DIR/nutcracker.yml" <<EOF
alpha:
  listen: 127.0.0.1:$PORT
  hash: fnv1a_64
  distribution: ketama
  redis: true
  auto_eject_hosts: false
  server_connections: 1
  timeout: 5000
  servers:
   - 127.0.0.1:$REDIS_PORT:1
EOF
app_launch server server redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$DIR" --daemonize no --protected-mode no
SPID=$PID
# -s/-a: its stats port on loopback (nothing connects to it).
app_launch proxy proxy nutcracker -c "$DIR/nutcracker.yml" -o "$DIR/nutcracker.log" -v 6 \
  -p "$DIR/nutcracker.pid" -a 127.0.0.1 -s 22222
PPID_=$PID
if wait_listen "$REDIS_PORT" "$SPID" && wait_listen "$PORT" "$PPID_"; then
  # redis-cli: SET a 100 KB binary value through the proxy, GET it back
  # (--raw: the bytes and a newline).
  head -c 100000 /dev/urandom >"$DIR/value.bin"
  if app_check cli-set client redis-cli -h 127.0.0.1 -p "$PORT" -x SET twem:value <"$DIR/value.bin"; then
    [ "$(cat "$DIR/cli-set.out")" = OK ] || note "redis-cli SET answered '$(head -c 200 "$DIR/cli-set.out")'"
  fi
  if app_check cli-get client redis-cli -h 127.0.0.1 -p "$PORT" --raw GET twem:value; then
    if ! cmp -s <(cat "$DIR/value.bin"; echo) "$DIR/cli-get.out"; then
      note "redis-cli GET: $(stat -c %s "$DIR/cli-get.out") bytes, not the 100000 stored (+ newline) ($(head -c 100 "$DIR/cli-get.out" | tr -cd '[:print:]'))"
    fi
  fi
  payload $((2 * 2 * 100000))  # in and out, client -> proxy -> server
  if app_check bench client redis-benchmark -h 127.0.0.1 -p "$PORT" -t set,get -n "$N" -d "$SIZE" -c 20 -q; then
    tr '\r' '\n' <"$DIR/bench.out" | grep 'requests per second' >"$DIR/bench.sum"
    sets=$(grep -c '^SET: .* requests per second' "$DIR/bench.sum")
    gets=$(grep -c '^GET: .* requests per second' "$DIR/bench.sum")
    if [ "$sets" != 1 ] || [ "$gets" != 1 ]; then
      note "redis-benchmark did not complete both SET and GET ($(tr '\r' '\n' <"$DIR/bench.out" | grep -v '^ *$' | tail -n 2 | tr '\n' ' ' | cut -c1-200))"
    fi
    payload $((2 * 2 * N * SIZE))  # SET values in, GET values out; two hops
  fi
  # redis-benchmark prints an error reply ("Error from server: ERR ...") and
  # goes on.
  re='(^|[^[:alpha:]])(ERR|Error|error)([^[:alpha:]]|$)'
  if tr '\r' '\n' <"$DIR/bench.out" | cat - "$DIR/bench.err" 2>/dev/null | grep -Eq "$re"; then
    note "redis-benchmark: $(tr '\r' '\n' <"$DIR/bench.out" | cat - "$DIR/bench.err" | grep -E -m1 "$re" | cut -c1-200)"
  fi
  # The benchmark's key holds its last value: SIZE bytes, through the proxy.
  if app_check strlen client redis-cli -h 127.0.0.1 -p "$PORT" STRLEN key:__rand_int__; then
    [ "$(cat "$DIR/strlen.out")" = "$SIZE" ] || note "STRLEN key:__rand_int__ is '$(head -c 200 "$DIR/strlen.out")', not $SIZE"
  fi
  if app_check kv client "$PYTHON" "$here/kvcheck.py" redis 127.0.0.1 "$PORT" --keys 500; then
    kvbytes=$(sed -n 's/^ok keys=[0-9]* bytes=\([0-9]*\)$/\1/p' "$DIR/kv.out")
    payload $((2 * 2 * ${kvbytes:-0}))
  fi
  sps=$(sed -n 's/^SET: \([0-9.]*\) requests per second.*/\1/p' "$DIR/bench.sum" 2>/dev/null)
  gps=$(sed -n 's/^GET: \([0-9.]*\) requests per second.*/\1/p' "$DIR/bench.sum" 2>/dev/null)
  APP_RESULT="through twemproxy: SET ${sps:-?} rps, GET ${gps:-?} rps ($N each, ${SIZE} B, 20 conns); 100 KB redis-cli round trip; kvcheck $(cat "$DIR/kv.out" 2>/dev/null)"
else
  note "not listening (redis: $(tail -n 1 "$DIR/server.out" 2>/dev/null); nutcracker: $(tail -n 1 "$DIR/nutcracker.log" 2>/dev/null))"
fi
stop_app "$PPID_" INT  # nutcracker exits (exit()) on SIGINT; SIGTERM would kill it
stop_app "$SPID" TERM
if grep -q '\[.*\] .*\(error\|failed\|closed\)' "$DIR/nutcracker.log" 2>/dev/null; then
  note "nutcracker.log: $(grep -m1 '\[.*\] .*\(error\|failed\|closed\)' "$DIR/nutcracker.log" | cut -c1-200)"
fi
# Clients: 2 redis-cli + STRLEN, 20 benchmark connections, kvcheck's.
# The proxy: those and its one server connection. redis: that one.
expect_smc client 24
expect_smc proxy 25
expect_smc server 1
app_finish
