#!/usr/bin/env bash
# nginx as a reverse proxy with an upstream keep-alive pool (keepalive 32,
# HTTP/1.1 to the upstream, Connection ""), in front of a second nginx (the
# origin) serving files of 1 B .. 5 MB. curl through the proxy: 2 processes
# fetching every file twice over one keep-alive connection each, then 10
# requests each on its own connection (Connection: close); every body's
# sha256 must match the file's. The proxy reuses its upstream connections
# across client connections. proxy_read_timeout 10s: a stuck upstream
# connection shows as a 504. Every hop (client, proxy, origin) under smc_run
# in a fresh network namespace.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
need nginx curl sha256sum

app_begin nginx_proxy
PORT=8080        # the proxy
ORIGIN_PORT=8081 # the origin
mkdir -p "$DIR/www" "$DIR/dl"
declare -A SIZES=([one.bin]=1 [small.bin]=1000 [page.bin]=16384 [medium.bin]=200000 [big.bin]=3145728
  [large.bin]=5242883)
make_files
nginx_conf "$DIR/origin" "  server {
    listen 127.0.0.1:$ORIGIN_PORT;
    root $DIR/www;
  }"
nginx_conf "$DIR/proxy" "  upstream backend {
    server 127.0.0.1:$ORIGIN_PORT;
    keepalive 32;
  }
  server {
    listen 127.0.0.1:$PORT;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_connect_timeout 5s;
      proxy_read_timeout 10s;
      proxy_send_timeout 10s;
      proxy_buffering on;
    }
  }"

app_launch origin origin nginx -p "$DIR/origin" -c "$DIR/origin/nginx.conf"
OPID=$PID
app_launch proxy proxy nginx -p "$DIR/proxy" -c "$DIR/proxy/nginx.conf"
PPID_=$PID
if wait_listen "$ORIGIN_PORT" "$OPID" && wait_listen "$PORT" "$PPID_"; then
  # The proxy serves the Connection: close requests from the upstream
  # connections it kept.
  fetch_through "$PORT"
  APP_RESULT="$FETCH_OK/$FETCH_NREQ downloads through the proxy (keep-alive upstream) match by sha256"
else
  note "nginx did not listen (origin: $(tail -n 1 "$DIR/origin/logs/error.log" 2>/dev/null); proxy: $(tail -n 1 "$DIR/proxy/logs/error.log" 2>/dev/null))"
fi
stop_app "$PPID_" QUIT   # graceful: the workers exit and write their stats
stop_app "$OPID" QUIT
for r in proxy origin; do
  if grep -q '\[\(alert\|crit\|emerg\)\]\|upstream timed out\|upstream prematurely' "$DIR/$r/logs/error.log" 2>/dev/null; then
    note "$r error.log: $(grep -m1 '\[\(alert\|crit\|emerg\)\]\|upstream timed out\|upstream prematurely' "$DIR/$r/logs/error.log" | cut -c1-200)"
  fi
done
# The keep-alive pool at work: the origin served the requests over fewer
# connections than there were requests (the proxy reused them; an upstream
# connection that failed is closed, so only if every request succeeded).
oreq=$(grep -c . "$DIR/origin/logs/access.log" 2>/dev/null)
oconn=$(cut -d' ' -f1 "$DIR/origin/logs/access.log" 2>/dev/null | sort -u | wc -l)
if [ "${FETCH_OK:-0}" -eq "${FETCH_NREQ:-1}" ] && [ $((2 * oconn)) -gt "$oreq" ]; then
  note "the origin served $oreq requests over $oconn connections: the proxy did not reuse them"
fi
APP_RESULT="${APP_RESULT:-}; the origin served ${oreq:-0} requests over $oconn connections"
# The proxy: its client connections and at least one upstream connection.
expect_smc client 12
expect_smc proxy 13
expect_smc origin 1
app_finish
