#!/usr/bin/env bash
# Guest side of rxe-vm.sh: runs as root inside the VM, in the host's root file
# system (an overlay over the read-only 9p share, see initramfs-init.sh).
#
#   guest-run.sh SCRIPT [ARGS...]
#
# It is the guest's PID 1 (the initramfs switches root to it). Sets the guest
# up (modules, network, Soft-RoCE device rxe0), then runs SCRIPT with ARGS,
# writes its exit status to /run/smc-vm/ctl/status-<role> (which is how the
# host learns it) and powers the VM off. Environment from the host (boot-<role>):
#   SMC_VM_ROLE      one | a | b
#   SMC_VM_IP        this guest's IPv4 address (/24)
#   SMC_VM_PEER_IP   the other guest's address (two-VM runs only)
#   SMC_VM_NETDEV    d0 (a dummy device, one VM) | eth0 (virtio NIC, two VMs)
#   SMC_VM_KROOT     the unpacked kernel package (its lib/modules has modules.dep)
#   SMC_VM_CWD       the host's working directory when rxe-vm.sh was started
# SCRIPT additionally gets SMC_VM_RESULTS, SMC_VM_IBDEV and SMC_VM_GID_INDEX.
# Output goes to the serial console, which the host reads back.
set -uo pipefail

role=$SMC_VM_ROLE
ctl=/run/smc-vm/ctl
export SMC_VM_RESULTS=/run/smc-vm/results
export SMC_VM_IBDEV=rxe0

say() { echo "smc-vm[$role]: $*"; }
uptime() { local up _; read -r up _ < /proc/uptime; echo "${up}s"; }

# Reports STATUS to the host and powers the VM off (qemu then exits). This
# runs as PID 1: if it merely exited, the kernel would panic (which also ends
# qemu, through panic=-1 and -no-reboot, but reads like a crash).
finish() {
  echo "$1" > "$ctl/status-$role"
  say "exit status $1 (guest uptime $(uptime))"
  if [ "$$" -eq 1 ]; then
    sync
    echo o > /proc/sysrq-trigger # power off now; needs no init system
    sleep 10
  fi
  exit "$1"
}

# Setup failures get their own status (125) so they read differently from a
# failing test script.
setup_fail() {
  say "setup failed: $*"
  finish 125
}

# The host has no /lib/modules for this kernel: modprobe must look in the
# unpacked package. The kernel's own module autoload must go through the same
# wrapper (/proc/sys/kernel/modprobe), or rdma_rxe cannot load its crc32
# helper and `rdma link add` fails with ENOENT. The wrapper is also first in
# PATH so scripts (e.g. the kernel-SMC interop tests) can `modprobe smc`.
install_modprobe() {
  local real
  real=$(PATH=/usr/sbin:/sbin:/usr/bin:/bin command -v modprobe) || setup_fail "no modprobe (install kmod on the host)"
  mkdir -p /run/smc-vm/bin
  printf '#!/bin/sh\nexec %s -d %s "$@"\n' "$real" "$SMC_VM_KROOT" > /run/smc-vm/bin/modprobe
  chmod +x /run/smc-vm/bin/modprobe
  echo /run/smc-vm/bin/modprobe > /proc/sys/kernel/modprobe
  export PATH=/run/smc-vm/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
}

# PID 1 starts with almost no environment and the kernel's default limits.
setup_process_env() {
  export HOME=/root LANG=C.UTF-8
  # Registering memory for RDMA pins it: do not let the default 8 MiB
  # memlock limit get in the way of tests that drop privileges.
  ulimit -l unlimited
}

setup_network() {
  ip link set lo up || setup_fail "lo"
  if [ "$SMC_VM_NETDEV" = d0 ]; then
    modprobe dummy || setup_fail "modprobe dummy"
    ip link add d0 type dummy || setup_fail "ip link add d0"
  else
    modprobe virtio_net || setup_fail "modprobe virtio_net"
    local i
    for ((i = 0; i < 50; i++)); do
      [ -e "/sys/class/net/$SMC_VM_NETDEV" ] && break
      sleep 0.1
    done
  fi
  ip addr add "$SMC_VM_IP/24" dev "$SMC_VM_NETDEV" || setup_fail "address on $SMC_VM_NETDEV"
  ip link set "$SMC_VM_NETDEV" up || setup_fail "$SMC_VM_NETDEV up"
}

# The GID table is filled asynchronously after `rdma link add`: wait (bounded)
# until the port is ACTIVE and the RoCE v2 GID of our IPv4 address is there,
# so scripts can start right away. Sets SMC_VM_GID_INDEX to its index.
setup_rxe() {
  modprobe -a rdma_rxe ib_uverbs rdma_ucm || setup_fail "modprobe rdma_rxe"
  rdma link add rxe0 type rxe netdev "$SMC_VM_NETDEV" || setup_fail "rdma link add rxe0"
  local port=/sys/class/infiniband/rxe0/ports/1 want state gid type f i n a b c d
  # IPv4-mapped IPv6 address, as the kernel writes GIDs: ::ffff:a.b.c.d
  IFS=. read -r a b c d <<< "$SMC_VM_IP"
  printf -v want '0000:0000:0000:0000:0000:ffff:%02x%02x:%02x%02x' "$a" "$b" "$c" "$d"
  # The table has 1024 entries: the read builtin, not cat (a fork costs
  # about a tenth of a second under emulation).
  for ((i = 0; i < 100; i++)); do
    { read -r state < "$port/state"; } 2> /dev/null || state=""
    if [[ $state == *ACTIVE* ]]; then
      for f in "$port"/gids/*; do
        { read -r gid < "$f"; } 2> /dev/null || continue
        [ "$gid" = "$want" ] || continue
        n=${f##*/}
        { read -r type < "$port/gid_attrs/types/$n"; } 2> /dev/null || continue
        if [ "$type" = "RoCE v2" ]; then
          export SMC_VM_GID_INDEX=$n
          return 0
        fi
      done
    fi
    sleep 0.1
  done
  setup_fail "rxe0 did not become ACTIVE with a RoCE v2 GID for $SMC_VM_IP"
}

main() {
  [ "$#" -ge 1 ] || setup_fail "no script given"
  local script=$1 rc
  shift
  say "setup: kernel $(uname -r), $(nproc) vCPU, uptime $(uptime)"
  hostname "smc-vm-$role"
  setup_process_env
  install_modprobe
  setup_network
  setup_rxe
  say "rxe0 on $SMC_VM_NETDEV $SMC_VM_IP, RoCE v2 GID index $SMC_VM_GID_INDEX"

  cd "$SMC_VM_CWD" 2>/dev/null || cd /
  say "running$(printf ' %q' "$script" "$@") (uptime $(uptime))"
  # Run it by its #! line when executable; a plain file is a bash script.
  # stdin is the serial console, where nobody types: give it /dev/null.
  if [ -x "$script" ]; then
    "$script" "$@" < /dev/null
  else
    bash "$script" "$@" < /dev/null
  fi
  rc=$?
  finish "$rc"
}

main "$@"
