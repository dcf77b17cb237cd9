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
mkdir -p "$DIR/www" "$DIR/dl" "$DIR/proxy/logs" "$DIR/proxy/tmp" "$DIR/origin/logs" "$DIR/origin/tmp"
declare -A SIZES=([one.bin]=1 [small.bin]=1000 [page.bin]=16384 [medium.bin]=200000 [big.bin]=3145728
  [large.bin]=5242883)
for f in "${!SIZES[@]}"; do
  head -c "${SIZES[$f]}" /dev/urandom >"$DIR/www/$f"
done

# nginx_conf PREFIX SERVER-BLOCK-AND-MORE: an nginx.conf (1 worker, no daemon)
# for the instance under $DIR/PREFIX.
nginx_conf() {
  local p=$DIR/$1
  cat >"$p/nginx.conf" <<EOF
user root root;
worker_processes 1;
daemon off;
master_process on;
pid $p/nginx.pid;
error_log $p/logs/error.log info;
events { worker_connections 256; }
http {
  sendfile on;
  tcp_nodelay on;
  keepalive_timeout 30;
  keepalive_requests 10000;
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
nginx_conf origin "  server {
    listen 127.0.0.1:$ORIGIN_PORT;
    root $DIR/www;
  }"
nginx_conf proxy "  upstream backend {
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
ok=0
NREQ=$((2 * 2 * ${#SIZES[@]} + 10))
bad_list=()
# check NAME FILE: the download $DIR/dl/NAME has FILE's sha256.
check() {
  if [ "$(sha256sum <"$DIR/www/$2")" = "$({ sha256sum <"$DIR/dl/$1"; } 2>/dev/null)" ]; then
    ok=$((ok + 1))
  else
    bad_list+=("$1")
  fi
}
if wait_listen "$ORIGIN_PORT" "$OPID" && wait_listen "$PORT" "$PPID_"; then
  # Two curl processes at once, each fetching every file twice over one
  # keep-alive connection (stopping at the first failure: each may take
  # --max-time).
  pids=()
  for c in 1 2; do
    args=()
    for r in 1 2; do
      for f in "${!SIZES[@]}"; do
        args+=(-o "$DIR/dl/ka$c.$r.$f" "http://127.0.0.1:$PORT/$f")
        payload $((2 * ${SIZES[$f]}))  # origin -> proxy -> client
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
        check "ka$c.$r.$f" "$f"
      done
    done
  done
  # 10 requests, each on its own client connection; the proxy serves them
  # from the upstream connections it kept. After a failure the rest is
  # skipped (each may take proxy_read_timeout).
  failed=0 i=0
  for f in one.bin medium.bin big.bin small.bin large.bin page.bin one.bin medium.bin big.bin small.bin; do
    [ "$failed" -lt 1 ] || break
    i=$((i + 1))
    payload $((2 * ${SIZES[$f]}))
    if app_run "curl-cl$i" client curl -sS --fail --max-time 15 -H 'Connection: close' \
      -o "$DIR/dl/cl$i.$f" "http://127.0.0.1:$PORT/$f"; then
      check "cl$i.$f" "$f"
    else
      failed=$((failed + 1))
      note "curl $i /$f (Connection: close) failed ($(tail -n 1 "$DIR/curl-cl$i.err" 2>/dev/null))"
    fi
  done
  [ "$i" -eq 10 ] || note "$((10 - i)) of 10 Connection: close requests skipped"
  if [ "${#bad_list[@]}" -ne 0 ]; then
    note "${#bad_list[@]} downloads differ from the served files (${bad_list[*]:0:4})"
  fi
  APP_RESULT="$ok/$NREQ downloads through the proxy (keep-alive upstream) match by sha256"
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
if [ "$ok" -eq "$NREQ" ] && [ $((2 * oconn)) -gt "$oreq" ]; then
  note "the origin served $oreq requests over $oconn connections: the proxy did not reuse them"
fi
APP_RESULT="${APP_RESULT:-}; the origin served ${oreq:-0} requests over $oconn connections"
# The proxy: its client connections and at least one upstream connection.
expect_smc client 12
expect_smc proxy 13
expect_smc origin 1
app_finish
