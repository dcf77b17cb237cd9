#!/usr/bin/env bash
# nginx in front of PHP-FPM (php-fpm8.2, 4 static children) over FastCGI on
# TCP, twice: with fastcgi_keep_conn on and an upstream keep-alive pool
# (nginx keeps its FastCGI connections open across requests), and without
# (a connection per request). PHP scripts whose output derives from the
# request: the sha256 of the query string, deterministic bytes of a size
# given in the query (detbytes.py), the sha256 of a POSTed body. curl: one
# process fetching 8 URLs over one keep-alive connection, 6 requests each on
# its own connection, 2 POSTs of 1 and 3 MB; every body compared. Also one
# request straight to PHP-FPM with cgi-fcgi (libfcgi), no nginx between.
# fastcgi_read_timeout 5s: a stuck FastCGI connection shows as a 504. Every
# hop (client, nginx, php-fpm) under smc_run in a fresh network namespace.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
PHPFPM=${PHPFPM:-php-fpm8.2}
need nginx "$PHPFPM" curl sha256sum cgi-fcgi

app_begin nginx_php
PORT=8080
FCGI_PORT=9000
mkdir -p "$DIR/www"
cat >"$DIR/www/echo.php" <<'EOF'
<?php
$q = $_SERVER['QUERY_STRING'] ?? '';
header('Content-Type: text/plain');
echo "q=$q\nsha256=" . hash('sha256', $q) . "\n";
EOF
cat >"$DIR/www/data.php" <<'EOF'
<?php
// n bytes: sha256("tag:0") sha256("tag:1") ... (test/apps/detbytes.py)
$n = (int)($_GET['n'] ?? 0);
$tag = $_GET['tag'] ?? '';
$out = '';
for ($i = 0; strlen($out) < $n; $i++) {
    $out .= hash('sha256', "$tag:$i", true);
}
header('Content-Type: application/octet-stream');
header('Content-Length: ' . $n);
echo substr($out, 0, $n);
EOF
cat >"$DIR/www/post.php" <<'EOF'
<?php
$body = file_get_contents('php://input');
header('Content-Type: text/plain');
echo "len=" . strlen($body) . "\nsha256=" . hash('sha256', $body) . "\n";
EOF
head -c 1048576 /dev/urandom >"$DIR/post1.bin"
head -c 3145731 /dev/urandom >"$DIR/post2.bin"

# want NAME URI: the body URI must have, to $DIR/want/NAME.
want() {
  local uri=$1 name=$2 q
  q=${uri#*\?}
  case "$uri" in
    /echo.php*) printf 'q=%s\nsha256=%s\n' "$q" "$(printf %s "$q" | sha256sum | cut -d' ' -f1)" ;;
    /data.php*)
      local n tag
      n=$(sed -n 's/.*[?&]n=\([0-9]*\).*/\1/p' <<<"$uri")
      tag=$(sed -n 's/.*[?&]tag=\([^&]*\).*/\1/p' <<<"$uri")
      "$PYTHON" "$here/detbytes.py" "$n" "$tag"
      ;;
  esac >"$DIR/want/$name"
}

results=()
# run_mode keep|plain: php-fpm and nginx (roles php-fpm.MODE, nginx.MODE,
# client.MODE: sum_stat nginx etc. cover both modes), the requests, both
# stopped gracefully, the connections checked.
run_mode() {
  local mode=$1 d=$DIR/$1 fpass keepconn upstream
  mkdir -p "$d/logs" "$d/tmp" "$d/dl" "$DIR/want"
  if [ "$mode" = keep ]; then
    upstream="upstream php { server 127.0.0.1:$FCGI_PORT; keepalive 2; }"
    fpass=php keepconn=on
  else
    upstream="" fpass=127.0.0.1:$FCGI_PORT keepconn=off
  fi
  # 4 children: more than the 2 connections nginx keeps (each idle kept
  # connection holds a child).
  cat >"$d/php-fpm.conf" <<EOF
[global]
pid = $d/php-fpm.pid
error_log = $d/logs/php-fpm.log
log_level = notice
daemonize = no
; SIGQUIT (graceful) asks the children to finish; only after this long are
; they sent SIGTERM (default 0: at once), which kills them (no stats file).
process_control_timeout = 10s

[www]
user = root
group = root
listen = 127.0.0.1:$FCGI_PORT
pm = static
pm.max_children = 4
request_terminate_timeout = 30s
catch_workers_output = yes
access.log = $d/logs/php-access.log
EOF
  cat >"$d/nginx.conf" <<EOF
user root root;
worker_processes 1;
daemon off;
master_process on;
pid $d/nginx.pid;
error_log $d/logs/error.log info;
events { worker_connections 256; }
http {
  tcp_nodelay on;
  keepalive_timeout 30;
  access_log $d/logs/access.log;
  default_type application/octet-stream;
  client_max_body_size 8m;
  client_body_temp_path $d/tmp/body;
  proxy_temp_path $d/tmp/proxy;
  fastcgi_temp_path $d/tmp/fastcgi;
  uwsgi_temp_path $d/tmp/uwsgi;
  scgi_temp_path $d/tmp/scgi;
  $upstream
  server {
    listen 127.0.0.1:$PORT;
    root $DIR/www;
    location ~ \.php\$ {
      include /etc/nginx/fastcgi_params;
      fastcgi_param SCRIPT_FILENAME \$document_root\$fastcgi_script_name;
      fastcgi_pass $fpass;
      fastcgi_keep_conn $keepconn;
      fastcgi_connect_timeout 5s;
      fastcgi_read_timeout 5s;
      fastcgi_send_timeout 10s;
    }
  }
}
EOF
  local fpid npid
  app_launch "php-fpm-$mode" "php-fpm.$mode" "$PHPFPM" -F -R -y "$d/php-fpm.conf"
  fpid=$PID
  app_launch "nginx-$mode" "nginx.$mode" nginx -p "$d" -c "$d/nginx.conf"
  npid=$PID
  local ok=0 n=0 failed=0 i uri
  if wait_listen "$FCGI_PORT" "$fpid" && wait_listen "$PORT" "$npid"; then
    # One curl, 8 URLs over one keep-alive connection (stops at the first
    # failure: each may take --max-time).
    local uris=("/echo.php?a=1" "/data.php?n=1&tag=k1" "/echo.php?hello=world&x=%20y"
      "/data.php?n=65536&tag=k2" "/data.php?n=1048579&tag=k3" "/echo.php?" "/data.php?n=2000000&tag=k4"
      "/data.php?n=100&tag=k5") args=()
    for i in "${!uris[@]}"; do
      want "${uris[$i]}" "$mode.ka$i"
      args+=(-o "$d/dl/ka$i" "http://127.0.0.1:$PORT${uris[$i]}")
      payload $((2 * $(stat -c %s "$DIR/want/$mode.ka$i")))  # php-fpm -> nginx -> client
    done
    app_run "curl-ka-$mode" "client.$mode" curl -sS --fail --fail-early --max-time 15 "${args[@]}" ||
      note "$mode: keep-alive curl failed ($(tail -n 1 "$DIR/curl-ka-$mode.err" 2>/dev/null))"
    for i in "${!uris[@]}"; do
      n=$((n + 1))
      cmp -s "$DIR/want/$mode.ka$i" "$d/dl/ka$i" && ok=$((ok + 1))
    done
    # 6 requests, each on its own connection; after a failure the rest is
    # skipped (each may take the read timeout), as for the POSTs.
    uris=("/echo.php?close=1" "/data.php?n=300000&tag=c2" "/echo.php?close=3"
      "/data.php?n=3000000&tag=c4" "/echo.php?close=5" "/data.php?n=7&tag=c6")
    for i in "${!uris[@]}"; do
      [ "$failed" -lt 1 ] || break
      n=$((n + 1))
      uri=${uris[$i]}
      want "$uri" "$mode.cl$i"
      payload $((2 * $(stat -c %s "$DIR/want/$mode.cl$i")))
      if app_run "curl-cl$i-$mode" "client.$mode" curl -sS --fail --max-time 15 -H 'Connection: close' \
        -o "$d/dl/cl$i" "http://127.0.0.1:$PORT$uri"; then
        cmp -s "$DIR/want/$mode.cl$i" "$d/dl/cl$i" && ok=$((ok + 1))
      else
        failed=$((failed + 1))
        note "$mode: curl $uri (Connection: close) failed ($(tail -n 1 "$DIR/curl-cl$i-$mode.err" 2>/dev/null))"
      fi
    done
    # 2 POSTs (client -> nginx -> php-fpm), the sha256 echoed back.
    failed=0
    for i in 1 2; do
      [ "$failed" -lt 1 ] || break
      n=$((n + 1))
      local f=$DIR/post$i.bin
      printf 'len=%s\nsha256=%s\n' "$(stat -c %s "$f")" "$(sha256sum <"$f" | cut -d' ' -f1)" >"$DIR/want/$mode.post$i"
      payload $((2 * $(stat -c %s "$f")))
      if app_run "curl-post$i-$mode" "client.$mode" curl -sS --fail --max-time 15 \
        -H 'Content-Type: application/octet-stream' --data-binary "@$f" \
        -o "$d/dl/post$i" "http://127.0.0.1:$PORT/post.php"; then
        cmp -s "$DIR/want/$mode.post$i" "$d/dl/post$i" && ok=$((ok + 1))
      else
        failed=$((failed + 1))
        note "$mode: POST $(stat -c %s "$f") bytes failed ($(tail -n 1 "$DIR/curl-post$i-$mode.err" 2>/dev/null))"
      fi
    done
    # Straight to PHP-FPM: cgi-fcgi sends the request's CGI environment; the
    # output is PHP's headers, a blank line, the body.
    n=$((n + 1))
    want "/echo.php?direct=$mode" "$mode.fcgi"
    if app_run "fcgi-$mode" "client.$mode" timeout 15 env REQUEST_METHOD=GET \
      SCRIPT_FILENAME="$DIR/www/echo.php" SCRIPT_NAME=/echo.php QUERY_STRING="direct=$mode" \
      SERVER_PROTOCOL=HTTP/1.1 cgi-fcgi -bind -connect "127.0.0.1:$FCGI_PORT"; then
      if cmp -s "$DIR/want/$mode.fcgi" <(tr -d '\r' <"$DIR/fcgi-$mode.out" | sed '1,/^$/d'); then
        ok=$((ok + 1))
      else
        note "$mode: cgi-fcgi got '$(tr -d '\r' <"$DIR/fcgi-$mode.out" | tr '\n' ' ' | cut -c1-160)'"
      fi
    else
      note "$mode: cgi-fcgi failed ($(tail -n 1 "$DIR/fcgi-$mode.err" 2>/dev/null))"
    fi
    [ "$n" -eq 17 ] || note "$mode: $((17 - n)) of 17 requests skipped"
    [ "$ok" -eq "$n" ] || note "$mode: $((n - ok)) of $n bodies wrong or missing"
  else
    note "$mode: not listening (php-fpm: $(tail -n 1 "$d/logs/php-fpm.log" 2>/dev/null); nginx: $(tail -n 1 "$d/logs/error.log" 2>/dev/null))"
  fi
  stop_app "$npid" QUIT  # graceful: the worker exits and writes its stats
  stop_app "$fpid" QUIT  # graceful: the children finish and exit, then the master
  local re='\[\(alert\|crit\|emerg\)\]\|upstream timed out\|upstream prematurely\|recv() failed\|readv() failed'
  if grep -q "$re" "$d/logs/error.log" 2>/dev/null; then
    note "$mode: nginx error.log: $(grep -m1 "$re" "$d/logs/error.log" | cut -c1-200)"
  fi
  if grep -q 'WARNING\|ERROR' "$d/logs/php-fpm.log" 2>/dev/null; then
    note "$mode: php-fpm.log: $(grep -m1 'WARNING\|ERROR' "$d/logs/php-fpm.log" | cut -c1-200)"
  fi
  # Client connections: 1 keep-alive, 6 close, 2 POSTs (nginx), cgi-fcgi's
  # (php-fpm). nginx: its 9 and at least one FastCGI connection (keep) or
  # one per request (plain). php-fpm: nginx's and cgi-fcgi's.
  expect_smc "client.$mode" 10
  if [ "$mode" = keep ]; then
    expect_smc "nginx.$mode" 10
    expect_smc "php-fpm.$mode" 2
  else
    expect_smc "nginx.$mode" 25
    expect_smc "php-fpm.$mode" 17
  fi
  results+=("${results:+; }$mode: $ok/17 bodies right")
}

run_mode plain
run_mode keep
APP_RESULT=$(printf %s "${results[@]}")
app_finish
