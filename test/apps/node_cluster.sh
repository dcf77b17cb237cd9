#!/usr/bin/env bash
# Node.js cluster (round-robin scheduling: the primary accepts every
# connection and hands the socket to a worker over IPC), once with 2 and once
# with 4 workers, an HTTP server whose bodies are derived from the URL (an
# echo of the path with its sha256, or deterministic bytes of a size given in
# the path). curl: one process fetching 10 URLs over one keep-alive
# connection, then 3 x workers requests each on its own connection
# (Connection: close), which round-robin must spread over every worker; every
# body compared. wrk for 2 s with keep-alive and with Connection: close: no
# socket error, no non-2xx response. All under smc_run in a fresh namespace.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
need node curl wrk sha256sum

app_begin node_cluster
PORT=8000
WRK_SECS=${NODE_WRK_SECS:-2}
cat >"$DIR/server.js" <<'EOF'
'use strict';
// node server.js PORT WORKERS: a cluster (round-robin) HTTP server.
//   /echo/<text>       "<path>\n<sha256 hex of path>\n"
//   /data/<n>/<tag>    n bytes: sha256("<tag>:0") sha256("<tag>:1") ... (detbytes.py)
// Every response names the worker (X-Worker: pid). SIGTERM: the primary
// stops the workers and every process exits normally (stats files).
const cluster = require('node:cluster');
const crypto = require('node:crypto');
const http = require('node:http');
const port = Number(process.argv[2]);
const nworkers = Number(process.argv[3]);
cluster.schedulingPolicy = cluster.SCHED_RR;

if (cluster.isPrimary) {
  if (cluster.schedulingPolicy !== cluster.SCHED_RR) {
    console.error('scheduling policy is not round-robin');
    process.exit(2);
  }
  let alive = 0;
  let listening = 0;
  let stopping = false;
  for (let i = 0; i < nworkers; i++) {
    cluster.fork();
    alive++;
  }
  cluster.on('listening', () => {
    if (++listening === nworkers) console.log(`primary ${process.pid}: ${nworkers} workers listening`);
  });
  cluster.on('exit', (w, code, signal) => {
    alive--;
    if (!stopping || code !== 0) {
      console.error(`worker ${w.process.pid} exited: code ${code} signal ${signal}`);
      process.exitCode = 1;
    }
    if (stopping && alive === 0) process.exit();
  });
  process.on('SIGTERM', () => {
    stopping = true;
    for (const w of Object.values(cluster.workers)) w.process.kill('SIGTERM');
    if (alive === 0) process.exit();
    setTimeout(() => {
      console.error('workers still running 5 s after SIGTERM');
      process.exit(1);
    }, 5000).unref();
  });
} else {
  process.on('SIGTERM', () => process.exit(0));
  const cache = new Map();
  const detbytes = (n, tag) => {
    const key = `${n}/${tag}`;
    let b = cache.get(key);
    if (!b) {
      const blocks = [];
      for (let i = 0; i * 32 < n; i++) blocks.push(crypto.createHash('sha256').update(`${tag}:${i}`).digest());
      b = Buffer.concat(blocks).subarray(0, n);
      cache.set(key, b);
    }
    return b;
  };
  http.createServer((req, res) => {
    let body;
    const m = /^\/data\/(\d{1,9})\/([\w.-]+)$/.exec(req.url);
    if (m) {
      body = detbytes(Number(m[1]), m[2]);
    } else if (req.url.startsWith('/echo/')) {
      body = Buffer.from(`${req.url}\n${crypto.createHash('sha256').update(req.url).digest('hex')}\n`);
    } else {
      res.writeHead(404);
      res.end();
      return;
    }
    res.writeHead(200, {
      'Content-Type': 'application/octet-stream',
      'Content-Length': body.length,
      'X-Worker': String(process.pid),
    });
    res.end(body);
  }).on('clientError', (err, sock) => {
    // As node's default handler (400 for a request it cannot parse), but
    // logged. A client resetting an idle connection (wrk at its end) is none.
    if (err.code === 'ECONNRESET' || !sock.writable) {
      sock.destroy();
      return;
    }
    const raw = err.rawPacket ? JSON.stringify(err.rawPacket.toString('latin1').slice(0, 80)) : '';
    console.error(`worker ${process.pid}: clientError ${err.code || ''} ${err.message} ${raw}`);
    sock.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
  }).listen(port, '127.0.0.1');
}
EOF

# expected NAME PATH: writes the body PATH must have to $DIR/want/NAME.
expected() {
  local path=$1 name=$2
  case "$path" in
    /data/*)
      local rest=${path#/data/}
      "$PYTHON" "$here/detbytes.py" "${rest%%/*}" "${rest#*/}" >"$DIR/want/$name"
      ;;
    *) printf '%s\n%s\n' "$path" "$(printf %s "$path" | sha256sum | cut -d' ' -f1)" >"$DIR/want/$name" ;;
  esac
}

# compare NAME: the download $DIR/dl/NAME equals $DIR/want/NAME.
compare() {
  cmp -s "$DIR/want/$1" "$DIR/dl/$1"
}

results=()
# The dot in the roles: sum_stat server / client (app_finish) covers both
# runs, server.wN / client.wN one of them.
run_cluster() {
  local nw=$1 srv=server.w$1 cli=client.w$1 spid
  rm -rf "$DIR/dl" "$DIR/want"
  mkdir -p "$DIR/dl" "$DIR/want"
  app_launch "node-w$nw" "$srv" env NODE_CLUSTER_SCHED_POLICY=rr node "$DIR/server.js" "$PORT" "$nw"
  spid=$PID
  if ! wait_line "$DIR/node-w$nw.out" "workers listening" "$spid" 15 || ! wait_listen "$PORT" "$spid"; then
    note "w$nw: node cluster did not listen ($(tail -n 1 "$DIR/node-w$nw.err" 2>/dev/null))"
    stop_app "$spid" TERM
    return
  fi
  # One curl, 10 URLs over one keep-alive connection.
  local paths=(/echo/a /data/1/k1 /echo/hello/world?x=1 /data/1000/k2 /data/65536/k3
    /echo/keep-alive /data/1048579/k4 /data/3000000/k5 /echo/last /data/100/k6) args=() i
  for i in "${!paths[@]}"; do
    expected "${paths[$i]}" "ka$i"
    args+=(-o "$DIR/dl/ka$i" "http://127.0.0.1:$PORT${paths[$i]}")
    payload "$(stat -c %s "$DIR/want/ka$i")"
  done
  local bad=0 conns
  if app_run "curl-ka-w$nw" "$cli" curl -sS --fail --fail-early --max-time 15 \
    -w '%{num_connects}\n' "${args[@]}"; then
    conns=$(awk '{ s += $1 } END { print s + 0 }' "$DIR/curl-ka-w$nw.out")
    [ "$conns" = 1 ] || note "w$nw: keep-alive curl made $conns connections for ${#paths[@]} requests, not 1"
  else
    note "w$nw: keep-alive curl failed ($(tail -n 1 "$DIR/curl-ka-w$nw.err" 2>/dev/null))"
  fi
  for i in "${!paths[@]}"; do
    compare "ka$i" || bad=$((bad + 1))
  done
  local ka_ok=$((${#paths[@]} - bad))
  [ "$bad" -eq 0 ] || note "w$nw: $bad of ${#paths[@]} keep-alive bodies differ"
  # 3 x workers curls, one request (own connection, Connection: close) each;
  # after 2 failed ones the rest is skipped (each may take --max-time).
  local nclose=$((3 * nw)) path workers=() failed=0 done_=0
  bad=0
  for ((i = 0; i < nclose && failed < 2; i++)); do
    if [ $((i % 2)) -eq 0 ]; then path=/echo/close/$i; else path=/data/$((100000 + i))/c$i; fi
    expected "$path" "cl$i"
    payload "$(stat -c %s "$DIR/want/cl$i")"
    done_=$((done_ + 1))
    if app_run "curl-cl$i-w$nw" "$cli" curl -sS --fail --max-time 15 -H 'Connection: close' \
      -D "$DIR/dl/cl$i.hdr" -o "$DIR/dl/cl$i" "http://127.0.0.1:$PORT$path"; then
      workers+=("$(tr -d '\r' <"$DIR/dl/cl$i.hdr" | sed -n 's/^[Xx]-[Ww]orker: //p')")
      compare "cl$i" || bad=$((bad + 1))
    else
      failed=$((failed + 1))
      note "w$nw: curl $path (Connection: close) failed ($(tail -n 1 "$DIR/curl-cl$i-w$nw.err" 2>/dev/null))"
    fi
  done
  [ "$done_" -eq "$nclose" ] || note "w$nw: $((nclose - done_)) of $nclose Connection: close requests skipped"
  [ "$bad" -eq 0 ] || note "w$nw: $bad of $nclose Connection: close bodies differ"
  local cl_ok=$((done_ - failed - bad))
  local distinct
  distinct=$(printf '%s\n' "${workers[@]}" | grep . | sort -u | wc -l)
  if [ "$failed" -eq 0 ] && [ "$distinct" -ne "$nw" ]; then
    note "w$nw: $nclose connections went to $distinct workers, not all $nw (round-robin)"
  fi
  # wrk: keep-alive, then a new connection per request.
  local ka="?" cl="?" cl_n=0
  if wrk_check "wrk-ka-w$nw" "$cli" "$WRK_SECS" "http://127.0.0.1:$PORT/data/16384/wrk"; then
    ka=$WRK_RPS
  fi
  payload "$WRK_BYTES"
  if wrk_check "wrk-cl-w$nw" "$cli" "$WRK_SECS" "http://127.0.0.1:$PORT/data/65536/wrk" -H 'Connection: close'; then
    cl=$WRK_RPS cl_n=$WRK_REQS
  fi
  payload "$WRK_BYTES"
  stop_app "$spid" TERM
  if grep -q 'exited: code\|clientError\|still running' "$DIR/node-w$nw.err" 2>/dev/null; then
    note "w$nw: node: $(grep -m1 'exited: code\|clientError\|still running' "$DIR/node-w$nw.err" | cut -c1-160)"
  fi
  # Every connection: the keep-alive curl, the close curls, wrk's.
  expect_smc "$srv" $((1 + nclose + 10 + ${cl_n:-0}))
  expect_smc "$cli" $((1 + nclose + 10 + ${cl_n:-0}))
  results+=("${results:+; }$nw workers: $ka_ok/${#paths[@]} keep-alive + $cl_ok/$nclose close bodies right, wrk keep-alive $ka req/s, close $cl req/s")
}

run_cluster 2
run_cluster 4
APP_RESULT=$(printf %s "${results[@]}")
app_finish
