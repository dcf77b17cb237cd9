#!/usr/bin/env bash
# Guest script (one VM, rxe0 on d0): accepted connections passed to a worker
# process over a unix socket (SCM_RIGHTS, build/smc_handoff) under smc_run
# -t rdma, i.e. over SMC-R on the guest's Soft-RoCE device, loopback. Run by
# test/vm/run.sh through scripts/vm/rxe-vm.sh, from the repository root.
#   - undecided (passed right after accept, before any byte): the worker
#     decides the connection itself, over SMC-R, and echoes every byte
#     (forked worker with blocking reads; exec'd worker with an epoll loop),
#     also from a slow acceptor that passes each socket 60 ms after accept():
#     the library's own looks at an untouched socket answer an SMC-R
#     Proposal only from about 150 ms on, so the socket moves undecided
#   - established (the acceptor read the first record, so the SMC-R
#     handshake ran in the acceptor): an SMC-R connection cannot follow its
#     fd into another process (its QP is the acceptor's link group), so the
#     library resets it when it is passed: the client reads ECONNRESET/EPIPE
#     within 5 s and never a wrong byte, the acceptor counts the resets, and
#     nothing hangs
#
# ARGS (optional): the cases to run, each MODE:WORKER:READER:EXPECT[:DELAY_MS]
# (default the four above), e.g. established:fork:blocking:ok to see the
# check fail.
# SMC_LOG_LEVEL from the host's environment applies (logs to server.log and
# client.log of each case, in the results dir).
set -u
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

rdma_guest_env

conns=2
bytes=256K
bytes_n=$((256 * 1024))


# wait_exit PID SECONDS: waits for PID (a child) at most SECONDS; its exit
# status, or 124 after killing it if it still ran then.
wait_exit() {
  local pid=$1 deadline=$((SECONDS + $2))
  while kill -0 "$pid" 2> /dev/null && [ "$SECONDS" -lt "$deadline" ]; do
    sleep 0.2
  done
  if kill -0 "$pid" 2> /dev/null; then
    # PID is a timeout(1): it passes TERM on, and KILLs 5 s later (-k 5).
    kill -TERM "$pid" 2> /dev/null
    wait "$pid" 2> /dev/null
    return 124
  fi
  wait "$pid"
}

# stat_of FILE KEY: the integer KEY of a stats file, "-" if there is none.
stat_of() {
  local v=""
  [ -f "$1" ] && v=$(json_int "$1" "$2")
  echo "${v:--}"
}

# handoff MODE WORKER READER EXPECT [DELAY_MS]: one acceptor (under smc_run -t rdma)
# handing $conns connections to its one worker, and a client sending $bytes
# on each and verifying the echo (EXPECT ok) or a reset (EXPECT reset).
handoff() {
  local mode=$1 worker=$2 reader=$3 expect=$4 delay=${5:-0}
  local name="handoff ${mode} x ${worker} x ${reader}${5:+ x passed after ${delay} ms} (expect $expect)"
  ncase=$((ncase + 1))
  local d=$tmp/handoff$ncase-$mode-$worker-$reader-$expect t0=$SECONDS spid crc src wpid acc wk n0
  mkdir -p "$d"
  SMC_STATS_FILE=$d/server.%p.json SMC_LOG_FILE=$d/server.log timeout -k 5 150 "$smc_run" \
    "$build/smc_handoff" server --addr "$ip" --portfile "$d/port" --count "$conns" \
    --mode "$mode" --worker "$worker" --reader "$reader" --pass-delay-ms "$delay" --timeout 120 \
    > "$d/server.out" 2>&1 &
  spid=$!
  if ! retry_for 30 wait_port "$d/port"; then
    fail "$name: server did not start: $(tail -3 "$d/server.out")"
    wait_exit "$spid" 5
    return
  fi
  SMC_STATS_FILE=$d/client.json SMC_LOG_FILE=$d/client.log timeout -k 5 150 "$smc_run" \
    "$build/smc_handoff" client --addr "$ip" --port "$(cat "$d/port")" --conns "$conns" \
    --bytes "$bytes" --expect "$expect" --timeout 120 > "$d/client.out" 2>&1
  crc=$?
  # The acceptor ends once its worker did; that is bounded too (resets
  # included): 30 s after the client at most.
  wait_exit "$spid" 30
  src=$?
  local secs=$((SECONDS - t0))
  wpid=$(sed -n 's/^worker pid=\([0-9][0-9]*\)$/\1/p' "$d/server.out")
  wk=$d/server.${wpid:-none}.json
  # The acceptor's stats file: the other one (the server side writes two).
  acc=$(find "$d" -maxdepth 1 -name 'server.[0-9]*.json' ! -name "$(basename "$wk")" | head -2)
  if [ "$(echo "$acc" | grep -c .)" -ne 1 ]; then
    fail "$name: want one acceptor stats file besides the worker's, found: $(ls "$d")"
    acc=$d/none
  fi
  echo "  $name: ${secs} s; client $crc, server $src;" \
    "acceptor smc_rdma=$(stat_of "$acc" smc_rdma) offered=$(stat_of "$acc" offered)" \
    "reset=$(stat_of "$acc" reset); worker ${wpid:-?} smc_rdma=$(stat_of "$wk" smc_rdma)" \
    "smc_tx=$(stat_of "$wk" smc_tx) taken=$(stat_of "$wk" taken) reset=$(stat_of "$wk" reset);" \
    "client smc_rdma=$(stat_of "$d/client.json" smc_rdma) fallback=$(stat_of "$d/client.json" fallback)"
  if grep -q watchdog "$d/client.out" "$d/server.out"; then
    fail "$name: hung (watchdog): $(grep -h watchdog "$d/client.out" "$d/server.out" | head -2)"
  fi
  if [ "$src" -eq 124 ] || [ "$src" -eq 137 ]; then
    fail "$name: the acceptor still ran 30 s after the client ended (killed): $(tail -3 "$d/server.out")"
  fi
  if [ "$crc" -ne 0 ] || ! grep -q "^ok conns=$conns bytes=$bytes_n expect=$expect\$" "$d/client.out"; then
    fail "$name: client exit status $crc: $(tail -3 "$d/client.out")"
  else
    pass "$name: client: $(cat "$d/client.out")"
  fi
  if [ -z "$wpid" ]; then
    fail "$name: the acceptor printed no worker pid: $(tail -3 "$d/server.out")"
    return
  fi
  if [ "$expect" = ok ]; then
    if [ "$src" -eq 0 ] &&
      grep -q "^ok mode=$mode worker=$worker reader=$reader conns=$conns\$" "$d/server.out"; then
      pass "$name: server: $(grep '^ok ' "$d/server.out")"
    else
      fail "$name: server exit status $src: $(tail -3 "$d/server.out")"
    fi
    # Decided in the worker, over SMC-R, and every byte echoed there.
    n0=$(stat_of "$wk" smc_rdma)
    if [ "$n0" != - ] && [ "$n0" -ge "$conns" ]; then
      pass "$name: the worker's connections are SMC-R (smc_rdma=$n0)"
    else
      fail "$name: worker smc_rdma=$n0, want >= $conns ($(basename "$wk"))"
    fi
    n0=$(stat_of "$wk" smc_tx)
    if [ "$n0" != - ] && [ "$n0" -ge $((conns * bytes_n)) ]; then
      pass "$name: the worker echoed over SMC-R (smc_tx=$n0)"
    else
      fail "$name: worker smc_tx=$n0, want >= $((conns * bytes_n))"
    fi
    n0=$(stat_of "$d/client.json" smc_rdma)
    [ "$n0" != - ] && [ "$n0" -ge "$conns" ] || fail "$name: client smc_rdma=$n0, want >= $conns"
    [ "$(stat_of "$acc" reset)" = 0 ] || fail "$name: acceptor counted handoff resets: $(stat_of "$acc" reset)"
  else
    # The acceptor decided the connections (SMC-R) and reset each one it
    # passed, offering none (an SMC-R connection cannot be taken over).
    # The worker then reads resets and fails (smc_handoff has no way to
    # tell it to expect them), and the acceptor with it: their exit status
    # is not asserted on, only that the acceptor ended (above).
    local ar ao
    n0=$(stat_of "$acc" smc_rdma)
    ar=$(stat_of "$acc" reset)
    ao=$(stat_of "$acc" offered)
    # Fewer than $conns connections reach the acceptor when the worker,
    # failing on its first reset, is gone before the next accept. But every
    # connection that became SMC-R in the acceptor had its hello read and
    # was passed, i.e. reset: only if it broke before could it end
    # otherwise, and none may (the reset of another connection must leave
    # their link group alone).
    if [ "$n0" != - ] && [ "$n0" -ge 1 ] && [ "$ar" != - ] && [ "$ar" -ge "$n0" ] && [ "$ao" = 0 ]; then
      pass "$name: the acceptor reset every SMC-R connection it passed (smc_rdma=$n0, handoffs.reset=$ar, offered=$ao)"
    else
      fail "$name: acceptor smc_rdma=$n0 handoffs.reset=$ar offered=$ao (want smc_rdma >= 1, reset >= smc_rdma, offered 0): $(grep -h 'FAIL acceptor' "$d/server.out" | head -1)"
    fi
    n0=$(stat_of "$wk" smc_tx)
    if [ "$n0" = - ] || [ "$n0" -eq 0 ]; then
      pass "$name: the worker sent nothing over SMC (smc_tx=$n0); the acceptor ended with $src: $(grep -h 'FAIL' "$d/server.out" | head -1)"
    else
      fail "$name: the worker sent $n0 bytes over SMC on connections that were reset"
    fi
  fi
}

ncase=0
cases=("$@")
if [ "${#cases[@]}" -eq 0 ]; then
  cases=(undecided:fork:blocking:ok undecided:exec:epoll:ok undecided:fork:epoll:ok:60
    established:fork:blocking:reset)
fi
for c in "${cases[@]}"; do
  IFS=: read -r mode worker reader expect delay <<< "$c"
  handoff "$mode" "$worker" "$reader" "$expect" ${delay:+"$delay"}
done
wait 2> /dev/null

cp -r "$tmp"/* "$res"/ 2> /dev/null
rm -rf "$tmp"
summary
