# shellcheck shell=bash
# lib.sh: bash helpers for the process-pair integration suite (sourced by
# run_pairs.sh). Network namespaces (one fresh namespace per scenario, all
# removed on exit), loopback byte counters, bounded waits for processes to
# become ready, a tiny JSON reader for the stats files (no python3 needed),
# and PASS/FAIL bookkeeping ending in the line "N passed, M failed".
# Needs root (ip netns), bash >= 4.4, awk.

SMCT_PASSED=0
SMCT_FAILED=0
SMCT_NS_SEQ=0
SMCT_NS_LIST=()
SMCT_TRAP_SET=0
NS=""

# ---------------------------------------------------------------- results
pass() {
  SMCT_PASSED=$((SMCT_PASSED + 1))
  echo "PASS $*"
}

# fail "name: reason"
fail() {
  SMCT_FAILED=$((SMCT_FAILED + 1))
  echo "FAIL $*"
}

# Prints the summary line exactly as "N passed, M failed"; returns 1 if any
# scenario failed (or none ran).
summary() {
  echo "${SMCT_PASSED} passed, ${SMCT_FAILED} failed"
  [ "$SMCT_FAILED" -eq 0 ] && [ "$SMCT_PASSED" -gt 0 ]
}

# ---------------------------------------------------------------- processes
now_ms() {
  if [ -n "${EPOCHREALTIME:-}" ]; then
    local t=${EPOCHREALTIME/[.,]/}
    echo $((t / 1000))
  else
    date +%s%3N
  fi
}

# pid_alive PID: true while PID runs (a zombie awaiting `wait` counts as
# exited, unlike with kill -0).
pid_alive() {
  local line rest
  { read -r line <"/proc/$1/stat"; } 2>/dev/null || return 1
  rest=${line##*) }
  [ "${rest%% *}" != Z ]
}

# Direct children of PID (scans /proc; procps not needed).
child_pids() {
  local parent=$1 f line state ppid
  for f in /proc/[0-9]*/stat; do
    { read -r line <"$f"; } 2>/dev/null || continue
    # after "pid (comm) " come "state ppid ..."
    read -r state ppid _ <<<"${line##*) }"
    if [ "$ppid" = "$parent" ] && [ "$state" != Z ]; then
      f=${f#/proc/}
      echo "${f%/stat}"
    fi
  done
}

# PID's descendants, deepest last.
descendant_pids() {
  local c
  for c in $(child_pids "$1"); do
    echo "$c"
    descendant_pids "$c"
  done
}

# ---------------------------------------------------------------- namespaces
smct_cleanup() {
  local ns
  for ns in "${SMCT_NS_LIST[@]}"; do
    ns_del "$ns"
  done
  SMCT_NS_LIST=()
}

# Creates a fresh network namespace smct-<pid>-<n> with lo up and sets NS to
# its name. Every namespace is removed (its processes killed) on exit.
ns_new() {
  SMCT_NS_SEQ=$((SMCT_NS_SEQ + 1))
  local ns="smct-$$-${SMCT_NS_SEQ}"
  if [ "$SMCT_TRAP_SET" -eq 0 ]; then
    trap smct_cleanup EXIT
    trap 'smct_cleanup; exit 130' INT TERM
    SMCT_TRAP_SET=1
  fi
  ip netns add "$ns" || return 1
  SMCT_NS_LIST+=("$ns")
  if ! ip netns exec "$ns" ip link set lo up; then
    ns_del "$ns"
    return 1
  fi
  # shellcheck disable=SC2034  # NS is the result, read by the caller
  NS=$ns
}

# Kills what still runs inside NS (only our own processes live there) and
# deletes it.
ns_del() {
  local ns=$1 pid
  ip netns list 2>/dev/null | grep -q "^${ns}\( \|$\)" || return 0
  for pid in $(ip netns pids "$ns" 2>/dev/null); do
    kill -9 "$pid" 2>/dev/null
  done
  ip netns del "$ns" 2>/dev/null
  local keep=() n
  for n in "${SMCT_NS_LIST[@]}"; do
    [ "$n" = "$ns" ] || keep+=("$n")
  done
  SMCT_NS_LIST=("${keep[@]}")
}

# ns_exec NS cmd...
ns_exec() {
  local ns=$1
  shift
  ip netns exec "$ns" "$@"
}

# Bytes sent on lo inside NS (sysfs as seen from inside the namespace).
lo_bytes() {
  ip netns exec "$1" cat /sys/class/net/lo/statistics/tx_bytes
}

# ---------------------------------------------------------------- waiting
# wait_portfile FILE [PID]: waits (bounded, 10 s in total) for a server to
# write its port file; gives up early if PID exited. This waits for a process
# to become ready; it is not how any assertion is synchronised.
wait_portfile() {
  local f=$1 pid=${2:-} i
  for ((i = 0; i < 200; i++)); do
    [ -s "$f" ] && return 0
    if [ -n "$pid" ] && ! pid_alive "$pid"; then
      [ -s "$f" ] && return 0
      return 1
    fi
    sleep 0.05
  done
  return 1
}

# wait_line FILE REGEX [PID] [TIMEOUT_S]: waits (bounded) until FILE has a
# line matching REGEX; gives up early if PID exited.
wait_line() {
  local f=$1 re=$2 pid=${3:-} limit=${4:-10} i
  for ((i = 0; i < limit * 20; i++)); do
    grep -Eq -- "$re" "$f" 2>/dev/null && return 0
    if [ -n "$pid" ] && ! pid_alive "$pid"; then
      grep -Eq -- "$re" "$f" 2>/dev/null
      return
    fi
    sleep 0.05
  done
  return 1
}

# wait_exit_within PID MS: polls until PID exited or MS elapsed; 0 if exited.
wait_exit_within() {
  local pid=$1 limit=$2 t0
  t0=$(now_ms)
  while pid_alive "$pid"; do
    if [ $(($(now_ms) - t0)) -ge "$limit" ]; then
      return 1
    fi
    sleep 0.02
  done
  return 0
}

# ---------------------------------------------------------------- JSON
# json_get FILE key.path: prints the integer at key.path (e.g.
# connections.smc_shm, fallback_reasons.transport_tcp) of the stats JSON;
# returns 1 if the file or the key is missing. Handles nested objects,
# strings with escapes and numbers; enough for the stats format.
json_get() {
  [ -r "$1" ] || return 1
  awk -v target="$2" -v want=value -f <(smct_json_awk) "$1"
}

# json_keys FILE key.path: prints the keys of the object at key.path, one
# per line (e.g. json_keys f fallback_reasons); returns 1 if none.
json_keys() {
  [ -r "$1" ] || return 1
  awk -v target="$2" -v want=keys -f <(smct_json_awk) "$1"
}

smct_json_awk() {
  cat <<'AWK'
function path_of(k,    p, d) {
  p = ""
  for (d = 1; d < depth; d++) {
    p = p stack[d] "."
  }
  return p k
}
function parent_path(    p, d) {
  p = ""
  for (d = 1; d < depth; d++) {
    p = (d == 1) ? stack[d] : p "." stack[d]
  }
  return p
}
{ text = text $0 "\n" }
END {
  n = length(text); i = 1; depth = 0; key = ""; expect_key = 0; found = 0
  while (i <= n) {
    c = substr(text, i, 1)
    if (c == "{") {
      stack[depth] = key; depth++; key = ""; expect_key = 1; i++; continue
    }
    if (c == "}") {
      depth--; key = ""; expect_key = 0; i++; continue
    }
    if (c == ",") { expect_key = 1; i++; continue }
    if (c == ":") { expect_key = 0; i++; continue }
    if (c == "\"") {
      s = ""; j = i + 1
      while (j <= n) {
        d = substr(text, j, 1)
        if (d == "\\") { s = s substr(text, j + 1, 1); j += 2; continue }
        if (d == "\"") break
        s = s d; j++
      }
      i = j + 1
      if (expect_key) {
        key = s
        if (want == "keys" && parent_path() == target) { print s; found = 1 }
      }
      continue
    }
    if (c ~ /[-0-9]/) {
      j = i
      while (j <= n && substr(text, j, 1) ~ /[-+0-9.eE]/) j++
      v = substr(text, i, j - i)
      if (want == "value" && path_of(key) == target) { print v; found = 1; exit 0 }
      i = j; continue
    }
    i++
  }
  exit (found ? 0 : 1)
}
AWK
}
