# shellcheck shell=bash
# Helpers for guest scripts run by scripts/vm/rxe-vm.sh (sourced, bash).
# A script calls `check` for each assertion and ends with `summary`, which
# exits non-zero if any check failed.

passes=0
failures=0

pass() {
  passes=$((passes + 1))
  echo "PASS: $*"
}

fail() {
  failures=$((failures + 1))
  echo "FAIL: $*"
}

# check DESCRIPTION COMMAND...: runs COMMAND, PASS if it succeeds.
check() {
  local desc=$1
  shift
  if "$@"; then
    pass "$desc"
  else
    fail "$desc (exit status $?)"
  fi
}

# retry_for SECONDS COMMAND...: runs COMMAND until it succeeds, for at most
# SECONDS (plus the last attempt's own duration), half a second apart. For
# waiting on a peer that is still starting, instead of a blind sleep.
retry_for() {
  local deadline=$((SECONDS + $1)) attempt=1
  shift
  until "$@"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "retry_for: giving up after $attempt attempts: $*"
      return 1
    fi
    attempt=$((attempt + 1))
    sleep 0.5
  done
  [ "$attempt" -eq 1 ] || echo "retry_for: succeeded on attempt $attempt: $*"
}

# Port 1 of the guest's rxe device.
rxe_port() { echo "/sys/class/infiniband/${SMC_VM_IBDEV:-rxe0}/ports/1"; }

# rxe_counter NAME: one of rxe0's hardware counters (sent_pkts, rcvd_pkts...).
rxe_counter() { cat "$(rxe_port)/hw_counters/$1"; }

# Prints rxe0's GID table (non-empty entries): index, GID, type, netdev.
# The GID table has 1024 entries: read them with the read builtin, not cat
# (each fork costs about a tenth of a second under emulation).
print_gids() {
  local port f n gid type ndev
  port=$(rxe_port)
  for f in "$port"/gids/*; do
    n=${f##*/}
    { read -r gid < "$f"; } 2> /dev/null || continue
    [ "$gid" != 0000:0000:0000:0000:0000:0000:0000:0000 ] || continue
    { read -r type < "$port/gid_attrs/types/$n"; } 2> /dev/null || type="?"
    { read -r ndev < "$port/gid_attrs/ndevs/$n"; } 2> /dev/null || ndev="?"
    printf '  gid[%s] %s  %s  %s\n' "$n" "$gid" "$type" "$ndev"
  done
}

# has_roce_v2_gid IPV4: the table holds the IPv4-mapped RoCE v2 GID of IPV4.
has_roce_v2_gid() {
  local a b c d want port f n gid type
  IFS=. read -r a b c d <<< "$1"
  printf -v want '0000:0000:0000:0000:0000:ffff:%02x%02x:%02x%02x' "$a" "$b" "$c" "$d"
  port=$(rxe_port)
  for f in "$port"/gids/*; do
    n=${f##*/}
    { read -r gid < "$f"; } 2> /dev/null || continue
    [ "$gid" = "$want" ] || continue
    { read -r type < "$port/gid_attrs/types/$n"; } 2> /dev/null || continue
    if [ "$type" = "RoCE v2" ]; then
      echo "  RoCE v2 GID for $1: index $n ($want)"
      return 0
    fi
  done
  echo "  no RoCE v2 GID $want for $1"
  return 1
}

summary() {
  echo "$(basename "$0") ($SMC_VM_ROLE): $passes checks passed, $failures failed"
  [ "$failures" -eq 0 ]
}
