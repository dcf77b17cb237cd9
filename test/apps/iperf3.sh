#!/usr/bin/env bash
# iperf3: 1 GiB client -> server with write(), then with -Z (sendfile), then
# reversed (-R, server -> client). The sender must send 1 GiB (with -Z up to
# one block more: iperf3 checks -n between sends), both
# ends' JSON reports must agree, and the receiver's count must be within 2%
# below it (iperf3 stops counting at TEST_END, on TCP too). Both under smc_run.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
need iperf3

app_begin iperf3
PORT=5201
BYTES=${IPERF_BYTES:-1073741824}
results=()
# json_num FILE JQPATH-ish: end.sum_sent.bytes etc. without jq: python.
json_num() {
  "$PYTHON" -c 'import json,sys
d=json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."):
    d=d[k]
print(int(d) if float(d).is_integer() else d)' "$1" "$2" 2>/dev/null
}
run_iperf() {
  local label=$1
  shift
  app_launch "srv-$label" server iperf3 -s -1 -p "$PORT" -J
  local spid=$PID
  if ! wait_listen "$PORT" "$spid"; then
    note "$label: iperf3 -s did not listen"
    return
  fi
  app_check "cli-$label" client iperf3 -c 127.0.0.1 -p "$PORT" -n "$BYTES" -J "$@"
  if ! wait_exit_within "$spid" 20000; then
    note "$label: iperf3 -s did not end after the test"
    stop_app "$spid" TERM
  fi
  wait "$spid" 2>/dev/null
  local cs cr ss sr bps sent recv
  cs=$(json_num "$DIR/cli-$label.out" end.sum_sent.bytes)
  cr=$(json_num "$DIR/cli-$label.out" end.sum_received.bytes)
  ss=$(json_num "$DIR/srv-$label.out" end.sum_sent.bytes)
  sr=$(json_num "$DIR/srv-$label.out" end.sum_received.bytes)
  bps=$(json_num "$DIR/cli-$label.out" end.sum_received.bits_per_second)
  # The sender sends exactly BYTES. iperf3 stops counting at the receiver
  # when the sender's TEST_END arrives, so the receiver's count may be a
  # little short even on TCP (megabytes on loopback); it must never exceed
  # what was sent. Both JSON reports must agree on the receiver's (normal)
  # or the sender's (-R) count.
  if [ "$label" = reverse ]; then
    sent=$ss recv=$cr
    [ -n "$cs" ] && [ "$cs" = "$ss" ] || note "$label: client and server disagree on bytes sent ($cs, $ss)"
  else
    sent=$cs recv=$sr
    [ -n "$cr" ] && [ "$cr" = "$sr" ] || note "$label: client and server disagree on bytes received ($cr, $sr)"
  fi
  # iperf3 checks -n between sends, so with -Z (sendfile, partial sends) it
  # may send up to one more 128 KiB block than asked, on TCP as well.
  if [ -z "$sent" ] || [ -z "$recv" ] || [ "$sent" -lt "$BYTES" ] ||
    [ "$sent" -gt $((BYTES + 131072)) ] || [ "$recv" -gt "$sent" ] ||
    [ $((recv * 100)) -lt $((sent * 98)) ]; then
    note "$label: sent ${sent:-?} (asked $BYTES), received ${recv:-?}"
  fi
  payload "$BYTES"
  results+=("$label $(awk -v b="${bps:-0}" 'BEGIN { printf "%.1f Gbit/s", b / 1e9 }')")
}
run_iperf write
run_iperf sendfile -Z
run_iperf reverse -R
APP_RESULT="3 x $BYTES bytes, counts agree on both ends: ${results[*]}"
expect_smc server 6
expect_smc client 6
app_finish
