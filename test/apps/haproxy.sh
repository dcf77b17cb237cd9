#!/usr/bin/env bash
# haproxy (mode http, http-reuse always: idle server connections are shared
# by every client connection) in front of nginx serving files of 1 B .. 5 MB.
# curl through haproxy: 2 processes fetching every file twice over one
# keep-alive connection each, then 10 requests each on its own connection
# (Connection: close); every body's sha256 must match the file's. wrk for 2 s
# with keep-alive and with Connection: close: no socket error, no non-2xx
# response. The origin must have served the requests over reused
# connections. timeout server 10s: a stuck server connection shows as a 504.
# Every hop (client, proxy, origin) under smc_run in a fresh namespace.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
need haproxy nginx curl wrk sha256sum

app_begin haproxy
PORT=8000        # haproxy
ORIGIN_PORT=8080 # nginx
WRK_SECS=${HAPROXY_WRK_SECS:-2}
mkdir -p "$DIR/www" "$DIR/dl"
declare -A SIZES=([one.bin]=1 [small.bin]=1000 [page.bin]=16384 [wrk.bin]=65536 [medium.bin]=200000
  [big.bin]=3145728 [large.bin]=5242883)
make_files
nginx_conf "$DIR" "  server {
    listen 127.0.0.1:$ORIGIN_PORT;
    root $DIR/www;
  }"
cat >"$DIR/haproxy.cfg" <<EOF
global
  maxconn 1000
  pidfile $DIR/haproxy.pid
  log stdout format raw local0 info

defaults
  mode http
  log global
  option httplog
  option dontlog-normal
  option dontlognull
  timeout connect 5s
  timeout client 15s
  timeout server 10s
  timeout http-keep-alive 15s

frontend fe
  bind 127.0.0.1:$PORT
  default_backend origin

backend origin
  http-reuse always
  server nginx 127.0.0.1:$ORIGIN_PORT
EOF

app_launch origin origin nginx -p "$DIR" -c "$DIR/nginx.conf"
OPID=$PID
app_launch haproxy proxy haproxy -db -f "$DIR/haproxy.cfg"
HPID=$PID
nclient=0
if wait_listen "$ORIGIN_PORT" "$OPID" && wait_listen "$PORT" "$HPID"; then
  fetch_through "$PORT"
  nclient=$FETCH_CONNS
  # wrk: keep-alive, then a new client connection per request.
  ka="?" cl="?" cl_n=0
  if wrk_check wrk-ka client "$WRK_SECS" "http://127.0.0.1:$PORT/wrk.bin"; then
    ka=$WRK_RPS
  fi
  payload $((2 * WRK_BYTES))
  if wrk_check wrk-cl client "$WRK_SECS" "http://127.0.0.1:$PORT/wrk.bin" -H 'Connection: close'; then
    cl=$WRK_RPS cl_n=$WRK_REQS
  fi
  payload $((2 * WRK_BYTES))
  nclient=$((nclient + 10 + cl_n))
  APP_RESULT="$FETCH_OK/$FETCH_NREQ downloads through haproxy match by sha256; wrk (64 KiB) keep-alive $ka req/s, close $cl req/s"
else
  note "not listening (nginx: $(tail -n 1 "$DIR/logs/error.log" 2>/dev/null); haproxy: $(tail -n 1 "$DIR/haproxy.err" 2>/dev/null))"
fi
stop_app "$HPID" USR1  # soft stop: haproxy finishes and exits normally
stop_app "$OPID" QUIT  # graceful: the worker exits and writes its stats
if grep -q '\[\(alert\|crit\|emerg\)\]' "$DIR/logs/error.log" 2>/dev/null; then
  note "nginx error.log: $(grep -m1 '\[\(alert\|crit\|emerg\)\]' "$DIR/logs/error.log" | cut -c1-200)"
fi
if grep -q '^\[\(ALERT\|EMERG\)\]' "$DIR/haproxy.err" "$DIR/haproxy.out" 2>/dev/null; then
  note "haproxy: $(grep -h -m1 '^\[\(ALERT\|EMERG\)\]' "$DIR/haproxy.err" "$DIR/haproxy.out" | cut -c1-200)"
fi
# dontlog-normal, dontlognull: haproxy logs only failed requests (an error
# status, a server or client abort, a timeout). A client abort (termination
# state C...) is the client's own doing: wrk closes the connections it has
# in flight when its run ends; a client that saw a failure says so itself
# (curl's and wrk's checks above).
failed() { grep '^[0-9.:]* \[[^]]*\] fe ' "$DIR/haproxy.out" 2>/dev/null | grep -v ' - - C[-A-Z]'; }
nabn=$(failed | grep -c .)
if [ "${nabn:-0}" -gt 0 ]; then
  note "haproxy logged $nabn failed requests ($(failed | head -n 1 | cut -c1-200))"
fi
# http-reuse always at work: the origin served the requests over far fewer
# connections than requests (only if every request succeeded: a failed
# server connection is closed).
oreq=$(grep -c . "$DIR/logs/access.log" 2>/dev/null)
oconn=$(cut -d' ' -f1 "$DIR/logs/access.log" 2>/dev/null | sort -u | wc -l)
if [ -z "$WHY" ] && [ $((2 * oconn)) -gt "${oreq:-0}" ]; then
  note "the origin served ${oreq:-0} requests over $oconn connections: haproxy did not reuse them"
fi
APP_RESULT="${APP_RESULT:-}; the origin served ${oreq:-0} requests over $oconn connections"
# haproxy: its client connections and at least one server connection.
expect_smc client "$nclient"
expect_smc proxy $((nclient + 1))
expect_smc origin 1
app_finish
