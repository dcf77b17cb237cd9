#!/usr/bin/env bash
# nginx (a master and 2 workers, sendfile on, tcp_nopush on, keep-alive)
# serving files of 100 KB .. 32 MB to curl; every download's sha256 must
# match the file's. Both under smc_run in a fresh network namespace.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
need nginx curl sha256sum

app_begin nginx
PORT=8080
mkdir -p "$DIR/www" "$DIR/logs" "$DIR/tmp" "$DIR/dl"
declare -A SIZES=([small.bin]=100000 [medium.bin]=1048577 [large.bin]=33554432 [odd.bin]=7777777)
for f in "${!SIZES[@]}"; do
  head -c "${SIZES[$f]}" /dev/urandom >"$DIR/www/$f"
done
cat >"$DIR/nginx.conf" <<EOF
user root root;
worker_processes 2;
daemon off;
master_process on;
pid $DIR/nginx.pid;
error_log $DIR/logs/error.log warn;
events { worker_connections 256; }
http {
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_timeout 30;
  access_log off;
  default_type application/octet-stream;
  client_body_temp_path $DIR/tmp/body;
  proxy_temp_path $DIR/tmp/proxy;
  fastcgi_temp_path $DIR/tmp/fastcgi;
  uwsgi_temp_path $DIR/tmp/uwsgi;
  scgi_temp_path $DIR/tmp/scgi;
  server {
    listen 127.0.0.1:$PORT;
    root $DIR/www;
  }
}
EOF
app_launch server server nginx -p "$DIR" -c "$DIR/nginx.conf"
SPID=$PID
if wait_listen "$PORT" "$SPID"; then
  # Three curl processes at once, each fetching every file twice over one
  # keep-alive connection.
  pids=()
  for c in 1 2 3; do
    args=()
    for r in 1 2; do
      for f in "${!SIZES[@]}"; do
        args+=(-o "$DIR/dl/$c.$r.$f" "http://127.0.0.1:$PORT/$f")
        payload "${SIZES[$f]}"
      done
    done
    app_launch "curl$c" client curl -sS --fail "${args[@]}"
    pids+=("$PID")
  done
  for c in 1 2 3; do
    if ! wait "${pids[$((c - 1))]}"; then
      note "curl $c failed ($(tail -n 1 "$DIR/curl$c.err" 2>/dev/null))"
    fi
  done
  bad=0
  for c in 1 2 3; do
    for r in 1 2; do
      for f in "${!SIZES[@]}"; do
        want=$(sha256sum <"$DIR/www/$f")
        got=$({ sha256sum <"$DIR/dl/$c.$r.$f"; } 2>/dev/null)
        [ "$want" = "$got" ] || bad=$((bad + 1))
      done
    done
  done
  if [ "$bad" -ne 0 ]; then
    note "$bad of 24 downloads differ from the served files"
  fi
  APP_RESULT="24 downloads (3 curl x 2 rounds x 4 files, 100 KB..32 MB) by sha256"
else
  note "nginx did not listen ($(tail -n 1 "$DIR/logs/error.log" 2>/dev/null))"
fi
stop_app "$SPID" QUIT   # graceful: workers exit and write their stats
expect_smc server 3
expect_smc client 3
if grep -q '\[\(alert\|crit\|emerg\)\]' "$DIR/logs/error.log" 2>/dev/null; then
  note "nginx error.log: $(grep '\[\(alert\|crit\|emerg\)\]' "$DIR/logs/error.log" | head -n 1 | cut -c1-160)"
fi
app_finish
