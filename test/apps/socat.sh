#!/usr/bin/env bash
# A fork-per-connection server: socat TCP-LISTEN:...,fork with an echo (cat)
# behind each connection. The accepted socket is handed to the forked child,
# which negotiates SMC itself. Four echo_check.py clients at once, 16 MiB each,
# every byte compared. Both under smc_run in a fresh network namespace.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
need socat

app_begin socat_fork
PORT=7000
BYTES=$((16 * 1024 * 1024))
app_launch server server socat "TCP-LISTEN:$PORT,bind=127.0.0.1,reuseaddr,fork" EXEC:cat
SPID=$PID
if wait_listen "$PORT" "$SPID"; then
  pids=()
  for c in 1 2 3 4; do
    app_launch "echo$c" client "$PYTHON" "$here/echo_check.py" 127.0.0.1 "$PORT" "$BYTES" "$c"
    pids+=("$PID")
  done
  for c in 1 2 3 4; do
    if ! wait "${pids[$((c - 1))]}"; then
      note "echo client $c failed ($(tail -n 1 "$DIR/echo$c.err" 2>/dev/null))"
    fi
    payload $((2 * BYTES))
  done
  APP_RESULT="4 concurrent connections (one forked socat each), 16 MiB echoed and compared each"
else
  note "socat did not listen ($(tail -n 1 "$DIR/server.err" 2>/dev/null))"
fi
stop_app "$SPID" TERM
expect_smc server 4
expect_smc client 4
app_finish
