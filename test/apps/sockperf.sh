#!/usr/bin/env bash
# sockperf over TCP: ping-pong (64 B, latency; no message dropped, duplicated
# or out of order) and throughput (1400 B messages), 3 s each, against one
# sockperf server. Both under smc_run in a fresh network namespace.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
need sockperf

app_begin sockperf
PORT=11111
SECS=${SOCKPERF_SECS:-3}
# --mps: sockperf sizes its table of sent messages for a default rate (about
# 600k round trips a second) and stops with "_seqN > m_maxSequenceNo" when
# the connection is faster than that, as shm round trips well under 1 us
# are; a higher cap than any connection reaches keeps ping-pong unpaced.
app_launch server server sockperf server --tcp -i 127.0.0.1 -p "$PORT"
SPID=$PID
if wait_listen "$PORT" "$SPID"; then
  lat="?" bw="?"
  if app_check pp client sockperf ping-pong --tcp -i 127.0.0.1 -p "$PORT" -t "$SECS" -m 64 --mps 4000000; then
    out=$(sed 's/\x1b\[[0-9;]*m//g' "$DIR/pp.out")
    valid=$(sed -n 's/.*\[Valid Duration\].*SentMessages=\([0-9]*\); ReceivedMessages=\([0-9]*\).*/\1 \2/p' <<<"$out")
    read -r vs vr <<<"$valid"
    if [ -z "$vs" ] || [ "$vs" != "$vr" ] || [ "$vs" -lt 1000 ]; then
      note "ping-pong: sent/received in the valid period: '${valid:-none}'"
    fi
    if ! grep -q '# dropped messages = 0; # duplicated messages = 0; # out-of-order messages = 0' <<<"$out"; then
      note "ping-pong: $(grep -m1 'dropped messages' <<<"$out" || echo 'no message statistics')"
    fi
    total=$(sed -n 's/.*\[Total Run\].*SentMessages=\([0-9]*\);.*/\1/p' <<<"$out")
    payload $((2 * 64 * ${total:-0}))
    lat=$(sed -n 's/.*Summary: Latency is \([0-9.]*\) usec.*/\1/p' <<<"$out")
    p50=$(sed -n 's/.*percentile 50.000 = *\([0-9.]*\).*/\1/p' <<<"$out")
  fi
  if app_check tp client sockperf throughput --tcp -i 127.0.0.1 -p "$PORT" -t "$SECS" -m 1400; then
    out=$(sed 's/\x1b\[[0-9;]*m//g' "$DIR/tp.out")
    msgs=$(sed -n 's/.*Total of \([0-9]*\) messages sent.*/\1/p' <<<"$out")
    if [ -z "$msgs" ] || [ "$msgs" -lt 1000 ]; then
      note "throughput: '${msgs:-no}' messages sent"
    fi
    payload $((1400 * ${msgs:-0}))
    bw=$(sed -n 's/.*Summary: BandWidth is \([0-9.]*\) MBps.*/\1/p' <<<"$out")
  fi
  APP_RESULT="ping-pong 64 B: avg ${lat} us, p50 ${p50:-?} us; throughput 1400 B: ${bw} MB/s"
else
  note "sockperf server did not listen ($(tail -n 1 "$DIR/server.err" 2>/dev/null))"
fi
stop_app "$SPID" INT
expect_smc server 2
expect_smc client 2
app_finish
