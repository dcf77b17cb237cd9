#!/usr/bin/env bash
# Guest script (one VM, rxe0 on d0): SMC-R between processes under smc_run -t
# rdma over the guest's Soft-RoCE device, loopback. Run by test/vm/run.sh
# through scripts/vm/rxe-vm.sh, from the repository root.
#   - 32 MiB each way at once, random chunks, verified, per readiness API;
#     rxe0's sent_pkts grows by at least the payload's packet count
#   - 50 concurrent connections share one link group (one QP per process)
#   - 1000 connect/close cycles leave no QPs, MRs or fds behind
#   - an SMC-R connection across fork(): reset in the child, intact in the parent
#   - a ping-pong that sleeps (no spinning) in blocked reads, in epoll_wait
#     or in poll is woken by its own receive CQ events, not through the
#     engine thread (the stats' rdma_cq_events); one that busy-polls in
#     epoll_wait or poll takes its replies without CQ events
#   - 16 threads connect at once, and per connection one thread writes while
#     another reads, all blocking on one link group (smc_calls --mode threads)
#   - a peer killed mid-transfer: EOF or ECONNRESET within 2 s
set -u
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

rdma_guest_env
unset SMC_LOG_LEVEL


# pair NAME MODE BYTES: one verified transfer each way at once.
pair() {
  local name=$1 mode=$2 bytes=$3 d=$tmp/$1
  mkdir -p "$d"
  SMC_STATS_FILE=$d/server.json timeout 300 "$smc_run" "$build/smc_pair" server --addr "$ip" \
    --portfile "$d/port" --mode "$mode" --bytes "$bytes" > "$d/server.out" 2>&1 &
  local spid=$!
  retry_for 30 wait_port "$d/port" || { fail "$name: server did not start"; return; }
  SMC_STATS_FILE=$d/client.json timeout 300 "$smc_run" "$build/smc_pair" client --addr "$ip" \
    --port "$(cat "$d/port")" --mode "$mode" --bytes "$bytes" > "$d/client.out" 2>&1
  local crc=$?
  wait "$spid"
  local src=$?
  if [ "$crc" -ne 0 ] || [ "$src" -ne 0 ]; then
    fail "$name: client $crc / server $src: $(cat "$d/client.out" "$d/server.out" | tail -3)"
    return
  fi
  local cr sr
  cr=$(json_int "$d/client.json" smc_rdma)
  sr=$(json_int "$d/server.json" smc_rdma)
  if [ "${cr:-0}" -ge 1 ] && [ "${sr:-0}" -ge 1 ]; then
    pass "$name: $(cat "$d/client.out")"
  else
    fail "$name: not over SMC-R (client smc_rdma=$cr, server smc_rdma=$sr)"
  fi
}

mib=$((1024 * 1024))
mtu=$(ibv_devinfo -d "${SMC_VM_IBDEV:-rxe0}" | sed -n 's/.*active_mtu:[^0-9]*\([0-9]*\).*/\1/p' | head -1)
sent0=$(rxe_counter sent_pkts)
for mode in blocking poll select epoll epollet; do
  pair "bulk_$mode" "$mode" 32M
done
sent1=$(rxe_counter sent_pkts)
need=$((5 * 2 * 32 * mib / ${mtu:-4096}))
if [ $((sent1 - sent0)) -ge "$need" ]; then
  pass "rxe0 sent_pkts grew by $((sent1 - sent0)) (payload needs >= $need at MTU $mtu)"
else
  fail "rxe0 sent_pkts grew by only $((sent1 - sent0)); payload needs >= $need"
fi

# 50 concurrent connections: one link group, i.e. one RC QP per process.
d=$tmp/conc50
mkdir -p "$d"
timeout 300 "$smc_run" "$build/smc_cycles" server --addr "$ip" --portfile "$d/port" \
  --count 50 --parallel 50 > "$d/server.out" 2>&1 &
spid=$!
if retry_for 30 wait_port "$d/port"; then
  SMC_STATS_FILE=$d/client.json timeout 300 "$smc_run" "$build/smc_cycles" client --addr "$ip" \
    --port "$(cat "$d/port")" --count 50 --parallel 50 --hold-file "$d/hold" > "$d/client.out" 2>&1 &
  cpid=$!
  if retry_for 120 test -e "$d/hold"; then
    qps=$(rdma resource show qp 2> /dev/null | grep -c "comm smc_cycles")
    rdma resource show qp 2> /dev/null | grep "comm smc_cycles" | sed 's/^/  /'
    rm -f "$d/hold"
    # one RC QP in the client's link group, one in the server's
    if [ "$qps" -eq 2 ]; then
      pass "50 concurrent connections share one link group ($qps RC QPs in all)"
    else
      fail "50 concurrent connections used $qps RC QPs (want 2: one link group per side)"
    fi
  else
    fail "50 concurrent connections: client never held all 50 open"
  fi
  wait "$cpid" || fail "conc50 client: $(cat "$d/client.out")"
  wait "$spid" || fail "conc50 server: $(cat "$d/server.out")"
  r=$(json_int "$d/client.json" smc_rdma)
  [ "${r:-0}" -eq 50 ] && pass "all 50 over SMC-R" || fail "only ${r:-0} of 50 over SMC-R"
else
  fail "conc50: server did not start"
fi

# 1000 connect/close cycles: the long-lived server ends with what it started with.
d=$tmp/cycles
mkdir -p "$d"
timeout 600 "$smc_run" "$build/smc_cycles" server --addr "$ip" --portfile "$d/port" \
  --count 1000 --hold-file "$d/hold" > "$d/server.out" 2>&1 &
spid=$!
if retry_for 30 wait_port "$d/port"; then
  fds0=$(ls /proc/$spid/fd 2> /dev/null | wc -l)
  SMC_STATS_FILE=$d/client.json timeout 600 "$smc_run" "$build/smc_cycles" client --addr "$ip" \
    --port "$(cat "$d/port")" --count 1000 > "$d/client.out" 2>&1 ||
    fail "cycles client: $(cat "$d/client.out")"
  if retry_for 60 test -e "$d/hold"; then
    # Slots are freed once both closes crossed; give the engine its moment
    # by polling the resource counts, bounded.
    settled() {
      local mrs
      mrs=$(rdma resource show mr 2> /dev/null | grep -c "comm smc_cycles")
      [ "$mrs" -le 1 ]
    }
    retry_for 20 settled
    qps=$(rdma resource show qp 2> /dev/null | grep -c "comm smc_cycles")
    mrs=$(rdma resource show mr 2> /dev/null | grep -c "comm smc_cycles")
    fds1=$(ls /proc/$spid/fd 2> /dev/null | wc -l)
    echo "  after 1000 cycles: server QPs $qps, MRs $mrs, fds $fds0 -> $fds1"
    rm -f "$d/hold"
    [ "$qps" -le 1 ] && [ "$mrs" -le 1 ] && [ "$fds1" -le $((fds0 + 4)) ] &&
      pass "1000 cycles: no QP, MR or fd leaked (QPs $qps, MRs $mrs, fds $fds0 -> $fds1)" ||
      fail "1000 cycles leaked: QPs $qps, MRs $mrs, fds $fds0 -> $fds1"
  else
    fail "cycles: server never finished"
  fi
  wait "$spid" || fail "cycles server: $(cat "$d/server.out")"
  r=$(json_int "$d/client.json" smc_rdma)
  [ "${r:-0}" -eq 1000 ] && pass "all 1000 cycles over SMC-R" || fail "only ${r:-0} of 1000 cycles over SMC-R"
else
  fail "cycles: server did not start"
fi

# An SMC-R connection across fork(): in the child it reads as reset (its QP
# is the parent's), the child's close leaves the parent's connection and link
# group alone, and the child's own connection gets a link group of its own.
d=$tmp/fork
mkdir -p "$d"
SMC_STATS_FILE=$d/server.json timeout 300 "$smc_run" "$build/smc_fork" server --addr "$ip" \
  --portfile "$d/port" --count 3 > "$d/server.out" 2>&1 &
spid=$!
if retry_for 30 wait_port "$d/port"; then
  SMC_STATS_FILE=$d/client.%p.json timeout 300 "$smc_run" "$build/smc_fork" client --addr "$ip" \
    --port "$(cat "$d/port")" --child-expect reset > "$d/client.out" 2>&1 &&
    pass "fork: $(cat "$d/client.out")" || fail "fork: $(cat "$d/client.out")"
  wait "$spid" || fail "fork server: $(cat "$d/server.out")"
  r=$(json_int "$d/server.json" smc_rdma)
  [ "${r:-0}" -eq 3 ] && pass "fork: all 3 connections over SMC-R" ||
    fail "fork: ${r:-0} of 3 connections over SMC-R"
else
  fail "fork: server did not start"
fi

# cq_pingpong NAME SPIN HOW ITERS: an smc_bench ping-pong of ITERS round trips
# under SMC_SPIN_US=SPIN, both ends waiting with --wait HOW; sets by_caller
# and by_engine from the client's stats (rdma_cq_events). Fails NAME and
# returns 1 if it could not run.
cq_pingpong() {
  local name=$1 spin=$2 how=$3 iters=$4 d=$tmp/cq-$3-$2 spid
  mkdir -p "$d"
  SMC_SPIN_US=$spin timeout 300 "$smc_run" "$build/smc_bench" server --addr "$ip" --port 0 \
    --portfile "$d/port" --test pingpong --wait "$how" > "$d/server.out" 2>&1 &
  spid=$!
  if ! retry_for 30 wait_port "$d/port"; then
    fail "$name: server did not start"
    return 1
  fi
  if ! SMC_SPIN_US=$spin SMC_STATS_FILE=$d/client.json timeout 300 "$smc_run" "$build/smc_bench" \
    client --addr "$ip" --port "$(cat "$d/port")" --test pingpong --wait "$how" \
    --iters "$iters" > "$d/client.out" 2>&1; then
    fail "$name: $(cat "$d/client.out")"
    wait "$spid"
    return 1
  fi
  wait "$spid"
  by_caller=$(json_int "$d/client.json" caller)
  by_engine=$(json_int "$d/client.json" engine)
  result=$(cat "$d/client.out")
}

# A thread that sleeps waits on the receive CQ's channel itself, in a blocked
# call (--wait read) as in epoll_wait or poll (--wait epoll|poll, as event
# loops wait): with no spinning, every reply of a ping-pong wakes the
# client's own thread, and the engine thread takes (almost) none of those
# events.
iters=500
for how in read epoll poll; do
  cq_pingpong "direct wait ($how)" 0 "$how" "$iters" || continue
  if [ "${by_caller:-0}" -ge $((iters * 9 / 10)) ] && [ "${by_engine:-0}" -le $((iters / 10)) ]; then
    pass "direct wait ($how): $iters sleeping round trips, receive CQ events taken by the caller $by_caller, by the engine $by_engine ($result)"
  else
    fail "direct wait ($how): receive CQ events taken by the caller ${by_caller:-?}, by the engine ${by_engine:-?} over $iters sleeping round trips"
  fi
done

# An event loop busy-polls in epoll_wait or poll as a blocked call does
# (SMC_SPIN_US, here the longest, 10 ms: this guest's two vCPUs share one
# host thread, and two spinners make a round trip take milliseconds), and
# keeps the receive CQ quiet meanwhile: the replies are taken without CQ
# events, so the engine thread is not woken for each message.
iters=300
for how in epoll poll; do
  cq_pingpong "$how spin" 10000 "$how" "$iters" || continue
  if [ -n "$by_engine" ] && [ "$((by_caller + by_engine))" -le $((iters / 10)) ]; then
    pass "$how spin: $iters round trips busy-polled, receive CQ events: caller $by_caller, engine $by_engine ($result)"
  else
    fail "$how spin: receive CQ events taken by the caller ${by_caller:-?}, by the engine ${by_engine:-?} over $iters busy-polled round trips"
  fi
done

# Many threads blocked at once on one link group: 16 connections made at the
# same moment, on each one thread writing while another reads, 1 MiB echoed
# and verified per connection (these blocked calls wait on the receive
# channel themselves, and dispatch for each other).
d=$tmp/threads
mkdir -p "$d"
SMC_STATS_FILE=$d/server.json timeout 300 "$smc_run" "$build/smc_fork" server --addr "$ip" \
  --portfile "$d/port" --count 17 > "$d/server.out" 2>&1 &
spid=$!
if retry_for 30 wait_port "$d/port"; then
  SMC_SPIN_US=0 SMC_STATS_FILE=$d/client.json timeout 300 "$smc_run" "$build/smc_calls" client \
    --addr "$ip" --port "$(cat "$d/port")" --mode threads --bytes 1M > "$d/client.out" 2>&1 &&
    grep -q '^ok mode=threads client conns=17 ' "$d/client.out" &&
    pass "threads: $(cat "$d/client.out")" || fail "threads: $(tail -3 "$d/client.out")"
  wait "$spid" || fail "threads server: $(tail -3 "$d/server.out")"
  r=$(json_int "$d/client.json" smc_rdma)
  [ "${r:-0}" -eq 17 ] && pass "threads: all 17 connections over SMC-R" ||
    fail "threads: ${r:-0} of 17 connections over SMC-R"
else
  fail "threads: server did not start"
fi

# A peer killed mid-transfer: the survivor sees EOF or ECONNRESET within 2 s.
d=$tmp/killed
mkdir -p "$d"
timeout 300 "$smc_run" "$build/smc_pair" server --addr "$ip" --portfile "$d/port" --source \
  > "$d/server.out" 2>&1 &
spid=$!
if retry_for 30 wait_port "$d/port"; then
  timeout 300 "$smc_run" "$build/smc_pair" client --addr "$ip" --port "$(cat "$d/port")" --sink \
    > "$d/client.out" 2>&1 &
  cpid=$!
  if retry_for 60 grep -q sink-start "$d/client.out"; then
    victim=$(pgrep -P "$spid" smc_pair || echo "$spid")
    kill -9 "$victim" "$spid" 2> /dev/null
    t0=$(date +%s%N)
    while kill -0 "$cpid" 2> /dev/null && [ $(( ($(date +%s%N) - t0) / 1000000 )) -lt 2000 ]; do
      sleep 0.05
    done
    if kill -0 "$cpid" 2> /dev/null; then
      fail "peer killed: the survivor still runs 2 s later"
      kill -9 "$cpid"
    else
      wait "$cpid"
      grep -qE "sink-end: (eof|reset)" "$d/client.out" &&
        pass "peer killed: $(grep sink-end "$d/client.out") within 2 s" ||
        fail "peer killed: $(cat "$d/client.out")"
    fi
  else
    fail "peer killed: no data before the kill"
  fi
else
  fail "killed: server did not start"
fi
wait 2> /dev/null

cp -r "$tmp"/* "$res"/ 2> /dev/null
rm -rf "$tmp"
summary
