#!/usr/bin/env bash
# Guest script (one VM, rxe0 on d0): unmodified real applications over SMC-R,
# both ends under smc_run -t rdma on the guest's Soft-RoCE device, loopback.
# Run by test/vm/run.sh through scripts/vm/rxe-vm.sh, from the repository
# root (the guest's root is the host's: the Debian packages installed by
# scripts/setup.sh run here unchanged).
#   - redis-server + redis-benchmark (SET/GET, 1 KiB values, 10 connections),
#     200 keys set and read back with redis-cli, and kvcheck.py (binary
#     values up to 64 KiB stored and read back)
#   - iperf3: 64 MiB client -> server, then reversed (-R); both ends' JSON
#     reports agree, the sender sent exactly 64 MiB
# Each: both sides' stats count SMC-R connections (none fell back to TCP),
# and rxe0's sent_pkts grows by at least the payload's packet count (the
# bytes crossed the RDMA device, not TCP).
# Small sizes on purpose: the guest is emulated (TCG), ~50-100x slower.
set -u
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

python=$(command -v /usr/bin/python3 || command -v python3)
ip=$SMC_VM_IP
tmp=$(mktemp -d)
res=${SMC_VM_RESULTS:-$tmp}
export SMC_PEERS=$ip SMC_TRANSPORT=rdma
unset SMC_LOG_LEVEL SMC_CONFIG

for c in redis-server redis-benchmark redis-cli iperf3; do
  command -v "$c" > /dev/null || { fail "$c not installed (run scripts/setup.sh)"; summary; exit 1; }
done

# conn_count DIR ROLE KIND: KIND (smc_rdma, fallback) connections over
# ROLE's stats files (ROLE.<pid>.json, one per process).
conn_count() {
  "$python" -c 'import glob,json,sys
print(sum(json.load(open(f))["connections"][sys.argv[2]] for f in glob.glob(sys.argv[1])))' \
    "$1/$2.*.json" "$3" 2> /dev/null
}

# json_num FILE PATH: a number from iperf3's JSON report (end.sum_sent.bytes).
json_num() {
  "$python" -c 'import json,sys
d=json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."):
    d=d[k]
print(int(d) if float(d).is_integer() else d)' "$1" "$2" 2> /dev/null
}

listening() { ss -Hltn "sport = :$1" 2> /dev/null | grep -q .; }
gone() { ! kill -0 "$1" 2> /dev/null; }

# stop PID: SIGTERM, then a bounded wait for the exit (SIGKILL after 30 s).
stop() {
  kill -TERM "$1" 2> /dev/null
  retry_for 30 gone "$1" || kill -KILL "$1" 2> /dev/null
  wait "$1" 2> /dev/null
}

# expect_rdma NAME DIR MIN: server and client processes of DIR each made at
# least MIN SMC-R connections, and none fell back to TCP.
expect_rdma() {
  local s c sf cf
  s=$(conn_count "$2" server smc_rdma)
  c=$(conn_count "$2" client smc_rdma)
  sf=$(conn_count "$2" server fallback)
  cf=$(conn_count "$2" client fallback)
  if [ "${s:-0}" -ge "$3" ] && [ "${c:-0}" -ge "$3" ] && [ "${sf:-1}" -eq 0 ] && [ "${cf:-1}" -eq 0 ]; then
    pass "$1: over SMC-R (smc_rdma: server $s, client $c; no fallback)"
  else
    fail "$1: not all over SMC-R (smc_rdma: server ${s:-none}, client ${c:-none}, want >= $3 each; fallback: server ${sf:-none}, client ${cf:-none})"
  fi
}

# expect_pkts NAME SENT0 PAYLOAD: rxe0's sent_pkts grew by PAYLOAD/MTU at least.
expect_pkts() {
  local grew need
  grew=$(($(rxe_counter sent_pkts) - $2))
  need=$(($3 / ${mtu:-4096}))
  if [ "$grew" -ge "$need" ]; then
    pass "$1: rxe0 sent_pkts grew by $grew (payload $3 B needs >= $need at MTU $mtu)"
  else
    fail "$1: rxe0 sent_pkts grew by only $grew; payload $3 B needs >= $need at MTU $mtu"
  fi
}

mtu=$(ibv_devinfo -d "${SMC_VM_IBDEV:-rxe0}" | sed -n 's/.*active_mtu:[^0-9]*\([0-9]*\).*/\1/p' | head -1)

# --- redis ---------------------------------------------------------------
d=$tmp/redis
mkdir -p "$d"
port=6379
requests=2000
size=1024
sent0=$(rxe_counter sent_pkts)
t0=$SECONDS
SMC_STATS_FILE=$d/server.%p.json timeout 170 "$smc_run" redis-server --port "$port" --bind "$ip" \
  --save '' --appendonly no --dir "$d" --daemonize no --protected-mode no \
  > "$d/server.out" 2>&1 &
spid=$!
if retry_for 30 listening "$port"; then
  payload=0
  if SMC_STATS_FILE=$d/client.%p.json timeout 120 "$smc_run" redis-benchmark -h "$ip" -p "$port" \
    -t set,get -n "$requests" -c 10 -d "$size" -q > "$d/bench.out" 2>&1; then
    tr '\r' '\n' < "$d/bench.out" | grep 'requests per second' > "$d/bench.sum"
    sps=$(sed -n 's/^SET: \([0-9.]*\) requests per second.*/\1/p' "$d/bench.sum")
    gps=$(sed -n 's/^GET: \([0-9.]*\) requests per second.*/\1/p' "$d/bench.sum")
    if [ -n "$sps" ] && [ -n "$gps" ]; then
      pass "redis-benchmark: SET $sps, GET $gps requests/s ($requests each, $size B, 10 conns)"
    else
      fail "redis-benchmark did not complete SET and GET: $(tail -c 300 "$d/bench.sum")"
    fi
    payload=$((payload + 2 * requests * size))
  else
    fail "redis-benchmark: $(tr '\r' '\n' < "$d/bench.out" | tail -3)"
  fi

  # 200 keys with known values, set and read back by one redis-cli process.
  : > "$d/cmds"
  : > "$d/expect"
  fill=abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ
  for i in $(seq 1 200); do
    val="v$i-${fill:$((i % 62))}${fill}${fill}"
    echo "SET vmkey:$i $val" >> "$d/cmds"
    echo OK >> "$d/expect"
  done
  for i in $(seq 1 200); do
    val="v$i-${fill:$((i % 62))}${fill}${fill}"
    echo "GET vmkey:$i" >> "$d/cmds"
    echo "$val" >> "$d/expect"
    payload=$((payload + 2 * ${#val}))
  done
  if SMC_STATS_FILE=$d/client.%p.json timeout 60 "$smc_run" redis-cli -h "$ip" -p "$port" \
    < "$d/cmds" > "$d/cli.out" 2>&1 && cmp -s "$d/expect" "$d/cli.out"; then
    pass "redis-cli: 200 keys set and read back, all equal"
  else
    fail "redis-cli: replies differ from the values set: $(diff "$d/expect" "$d/cli.out" | head -4 | tr '\n' ' ')"
  fi

  # Binary values of 1 B..64 KiB over 2 connections, compared byte for byte.
  if SMC_STATS_FILE=$d/client.%p.json timeout 90 "$smc_run" "$python" "$repo/test/apps/kvcheck.py" \
    redis "$ip" "$port" --keys 200 --max-size 65536 --conns 2 > "$d/kv.out" 2>&1; then
    pass "kvcheck: $(cat "$d/kv.out")"
    kvbytes=$(sed -n 's/^ok keys=[0-9]* bytes=\([0-9]*\)$/\1/p' "$d/kv.out")
    payload=$((payload + 2 * ${kvbytes:-0}))
  else
    fail "kvcheck: $(tail -3 "$d/kv.out")"
  fi
else
  fail "redis-server did not listen on $ip:$port: $(tail -3 "$d/server.out")"
fi
stop "$spid"
echo "  redis: $((SECONDS - t0)) s"
# Every connection: redis-benchmark's 2 x 10 and its CONFIG GET, redis-cli's
# one and kvcheck's 2 (24 on each side, as measured).
expect_rdma redis "$d" 24
expect_pkts redis "$sent0" "$payload"

# --- iperf3 --------------------------------------------------------------
port=5201
bytes=$((64 * 1024 * 1024))
# run_iperf LABEL [ARGS...]: one iperf3 -s -1 and one client run.
run_iperf() {
  local label=$1 d=$tmp/iperf3-$1 sent0 spid
  shift
  mkdir -p "$d"
  sent0=$(rxe_counter sent_pkts)
  t0=$SECONDS
  SMC_STATS_FILE=$d/server.%p.json timeout 150 "$smc_run" iperf3 -s -1 -B "$ip" -p "$port" -J \
    > "$d/server.out" 2> "$d/server.err" &
  spid=$!
  if ! retry_for 30 listening "$port"; then
    fail "iperf3 $label: the server did not listen: $(tail -3 "$d/server.err")"
    stop "$spid"
    return
  fi
  if ! SMC_STATS_FILE=$d/client.%p.json timeout 120 "$smc_run" iperf3 -c "$ip" -p "$port" \
    -n "$bytes" -J "$@" > "$d/client.out" 2> "$d/client.err"; then
    fail "iperf3 $label: the client failed: $(tail -c 300 "$d/client.out") $(tail -3 "$d/client.err")"
  fi
  retry_for 30 gone "$spid" || fail "iperf3 $label: the server did not end after the test"
  stop "$spid"
  local cs cr ss sr bps sent recv
  cs=$(json_num "$d/client.out" end.sum_sent.bytes)
  cr=$(json_num "$d/client.out" end.sum_received.bytes)
  ss=$(json_num "$d/server.out" end.sum_sent.bytes)
  sr=$(json_num "$d/server.out" end.sum_received.bytes)
  bps=$(json_num "$d/client.out" end.sum_received.bits_per_second)
  # The sender sends exactly $bytes; iperf3 stops counting at the receiver
  # when TEST_END arrives, so the receiver's count may be a little short
  # (on TCP too), never more. Both reports agree on the receiver's count
  # (normal) or the sender's (-R).
  if [ "$label" = reverse ]; then
    sent=$ss recv=$cr
    if [ -z "$cs" ] || [ "$cs" != "$ss" ]; then
      fail "iperf3 $label: client and server disagree on bytes sent (${cs:-?}, ${ss:-?})"
    fi
  else
    sent=$cs recv=$sr
    if [ -z "$cr" ] || [ "$cr" != "$sr" ]; then
      fail "iperf3 $label: client and server disagree on bytes received (${cr:-?}, ${sr:-?})"
    fi
  fi
  if [ -n "$sent" ] && [ -n "$recv" ] && [ "$sent" -eq "$bytes" ] && [ "$recv" -le "$sent" ] &&
    [ $((recv * 100)) -ge $((sent * 98)) ]; then
    pass "iperf3 $label: sent $sent, received $recv, $(awk -v b="${bps:-0}" 'BEGIN { printf "%.2f Gbit/s", b / 1e9 }') ($((SECONDS - t0)) s)"
  else
    fail "iperf3 $label: sent ${sent:-?} (asked $bytes), received ${recv:-?}"
  fi
  # The control connection and the data connection.
  expect_rdma "iperf3 $label" "$d" 2
  expect_pkts "iperf3 $label" "$sent0" "$bytes"
}
run_iperf forward
run_iperf reverse -R

cp -r "$tmp"/* "$res"/ 2> /dev/null
rm -rf "$tmp"
summary
