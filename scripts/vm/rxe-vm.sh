#!/usr/bin/env bash
# Soft-RoCE VM harness: runs scripts as root inside qemu guests that have a
# real RDMA device, the Linux kernel's Soft-RoCE driver (rdma_rxe).
#
# The host has no RDMA hardware and its kernel no InfiniBand support, so the
# guest boots Debian's bookworm-backports 6.12 kernel (unpacked, not
# installed), under TCG (KVM does not work on these machines). The guest's
# root is the host's root file system (read-only 9p, under a private writable
# overlay), so binaries built on the host and rdma-core's userspace (librxe)
# run in the guest unchanged, at the same paths.
#
# Usage (as root):
#   rxe-vm.sh prepare
#       Caches the guest kernel, its modules.dep and the initramfs in the work
#       dir. Idempotent. Adds bookworm-backports to apt's sources if missing.
#   rxe-vm.sh one SCRIPT [ARGS...]
#       One VM (2 vCPUs). rxe0 on a dummy netdev d0 with 10.9.0.1/24.
#       Exit status: SCRIPT's.
#   rxe-vm.sh two SCRIPT_A SCRIPT_B [ARGS...]
#       Two VMs (1 vCPU each) joined by a qemu stream socket (unix): A is
#       10.9.0.1/24, B 10.9.0.2/24, each with rxe0 on eth0. SCRIPT_A runs in
#       A, SCRIPT_B in B, both with ARGS. Exit status: non-zero if either failed.
#       Exit status 75: a guest kernel crashed (not a test result).
#   rxe-vm.sh clean
#       Removes kept results and leftover run dirs (not the cached kernel).
#
# SCRIPT runs as root in the guest, in the directory rxe-vm.sh was started
# from, with stdin from /dev/null, and with:
#   SMC_VM_ROLE      one | a | b
#   SMC_VM_IP        this guest's IPv4 address; SMC_VM_PEER_IP the peer's (two)
#   SMC_VM_NETDEV    d0 | eth0;  SMC_VM_IBDEV rxe0
#   SMC_VM_GID_INDEX index of rxe0's RoCE v2 GID for SMC_VM_IP
#   SMC_VM_RESULTS   a writable dir shared with the host (the two VMs of a
#                    pair share one: name files by SMC_VM_ROLE)
#   SMC_VM_KROOT     the unpacked kernel; `modprobe` (first in PATH, and the
#                    kernel's autoloader) loads any of its modules, e.g. smc
#   SMC_*            every other SMC_* variable of the host's environment
# The whole file system is writable in the guest (changes stay in the guest);
# /run and /dev/shm are fresh tmpfs.
#
# The guest's output (its console without the boot noise) goes to stdout
# (prefixed [a]/[b] for two VMs); the harness's own messages go to stderr.
#
# Environment:
#   SMC_VM_WORK          work dir (default <repo>/vm-work, git-ignored)
#   SMC_VM_TIMEOUT       seconds per VM before it is killed (default 300)
#   SMC_VM_MEM           MiB of memory per VM (default 1536)
#   SMC_VM_CPU           qemu CPU model (default qemu64)
#   SMC_VM_TCG_THREAD    single or multi: TCG's threading (default: single
#                        for a 2-vCPU guest, multi for a 1-vCPU one). With
#                        multi and 2 vCPUs, guest kernels were seen to oops
#                        (int3) while live-patching their own text; single
#                        interleaves the vCPUs on one host thread
#   SMC_VM_RESULTS_HOST  host dir for SMC_VM_RESULTS (default: a new dir
#                        under <work>/results/, printed at the end)
#   SMC_VM_KPKG          kernel package to use instead of the newest
#                        linux-image-6.12.*+deb12-amd64-unsigned
#   SMC_VM_KERNEL_ARGS   more kernel parameters (e.g. loglevel=7 to see the boot)
#   SMC_VM_KEEP_RUN=1    keep the run dir (console logs, boot files)
set -euo pipefail

SELF=$(readlink -f "$0")
VM_DIR=$(dirname "$SELF")
REPO=$(cd "$VM_DIR/../.." && pwd)
WORK=${SMC_VM_WORK:-$REPO/vm-work}
TIMEOUT=${SMC_VM_TIMEOUT:-300}
MEM=${SMC_VM_MEM:-1536}
# qemu64 (plain x86-64), not max: with max, glibc picks its AVX2 routines,
# which TCG emulates slowly; the guest's setup took about 40% longer.
CPU=${SMC_VM_CPU:-qemu64}
TCG_THREAD=${SMC_VM_TCG_THREAD:-}

# Modules the initramfs needs to reach the root file system (the rest load
# from the root later); their dependencies come along via modules.dep.
INITRD_MODULES=(virtio_pci 9pnet_virtio 9p overlay)
KPKG_REGEX='^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$'

say() { echo "rxe-vm: $*" >&2; }
die() {
  echo "rxe-vm: error: $*" >&2
  exit 1
}

usage() { # usage [EXIT_CODE]
  sed -n '/^# Usage/,/^# Environment/p' "$SELF" | sed '$d; s/^# \{0,1\}//' >&2
  exit "${1:-2}"
}

need_root() {
  [ "$(id -u)" -eq 0 ] || die "must run as root"
}

# require_tools CMD:PACKAGE... -- fails naming the Debian package to install.
require_tools() {
  local spec missing=()
  for spec in "$@"; do
    command -v "${spec%%:*}" > /dev/null 2>&1 || missing+=("${spec#*:}")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    die "missing packages: ${missing[*]} (scripts/vm/setup-vm.sh installs them)"
  fi
}

# --- the cache (prepare) -----------------------------------------------------

kroot() { echo "$WORK/kroot"; }

kernel_version() {
  local dirs=("$(kroot)"/lib/modules/*)
  [ "${#dirs[@]}" -eq 1 ] && [ -d "${dirs[0]}" ] || return 1
  basename "${dirs[0]}"
}

# Debian's 6.12 kernel is in bookworm-backports. Add that suite only if apt
# does not know it yet, from the same mirror apt already uses for bookworm.
# (Backports are pinned low by default: nothing else gets upgraded from it.)
ensure_backports() {
  # $(...) in --format are apt's field names, not shell expansions.
  # shellcheck disable=SC2016
  if apt-get indextargets --format '$(RELEASE)' | grep -qx bookworm-backports ||
    grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    return 0
  fi
  local uri file=/etc/apt/sources.list.d/bookworm-backports.sources
  # shellcheck disable=SC2016
  uri=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' | awk '$2 == "bookworm" { print $1; exit }')
  [ -n "$uri" ] || die "apt has no bookworm source to take the mirror from"
  printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$uri" > "$file"
  say "apt: added bookworm-backports from $uri ($file)"
  apt-get update -q > /dev/null || die "apt-get update failed"
}

newest_kernel_package() {
  apt-cache search --names-only "$KPKG_REGEX" | cut -d' ' -f1 | sort -V | tail -n 1
}

# Downloads and unpacks the kernel package into <work>/kroot (replacing any
# older one only once the new one is complete), then runs depmod on it.
fetch_kernel() {
  local pkg=$1 tmp deb out
  tmp=$(mktemp -d "$WORK/.fetch.XXXXXX")
  if ! out=$(cd "$tmp" && apt-get download "$pkg" 2>&1); then
    rm -rf "$tmp"
    die "apt-get download $pkg failed: $out"
  fi
  deb=$(echo "$tmp"/*.deb)
  dpkg-deb -x "$deb" "$tmp/kroot"
  local dirs=("$tmp"/kroot/lib/modules/*)
  depmod -b "$tmp/kroot" "$(basename "${dirs[0]}")"
  rm -rf "$(kroot)"
  mv "$tmp/kroot" "$(kroot)"
  printf '%s %s\n' "$(dpkg-deb -f "$deb" Package)" "$(dpkg-deb -f "$deb" Version)" > "$WORK/kernel.pkg"
  rm -rf "$tmp"
}

prepare_kernel() {
  local want=${SMC_VM_KPKG:-} have=""
  [ -f "$WORK/kernel.pkg" ] && have=$(< "$WORK/kernel.pkg")
  if [ -n "$have" ] && kernel_version > /dev/null &&
    { [ -z "$want" ] || [ "${have%% *}" = "$want" ]; }; then
    say "kernel: cached $have (delete $(kroot) to fetch the newest)"
  else
    ensure_backports
    if [ -z "$want" ]; then
      want=$(newest_kernel_package)
      if [ -z "$want" ]; then # lists missing or stale
        apt-get update -q > /dev/null || die "apt-get update failed"
        want=$(newest_kernel_package)
      fi
      [ -n "$want" ] || die "no package matches $KPKG_REGEX in apt's lists (is bookworm-backports reachable?)"
    fi
    say "kernel: fetching $want"
    fetch_kernel "$want"
    say "kernel: unpacked $(< "$WORK/kernel.pkg") into $(kroot)"
  fi
  local kver
  kver=$(kernel_version) || die "$(kroot)/lib/modules does not hold exactly one kernel"
  [ -f "$(kroot)/boot/vmlinuz-$kver" ] || die "$(kroot)/boot/vmlinuz-$kver missing"
  if [ ! -s "$(kroot)/lib/modules/$kver/modules.dep" ]; then
    depmod -b "$(kroot)" "$kver"
    say "kernel: ran depmod"
  fi
}

# Everything the initramfs is made of: if this changes, it is rebuilt.
initrd_stamp() {
  {
    sha256sum < "$VM_DIR/initramfs-init.sh"
    sha256sum < /bin/busybox
    declare -f prepare_initrd # how it is built
    echo "$(kernel_version) ${INITRD_MODULES[*]}"
  } | sha256sum | cut -d' ' -f1
}

# A tiny initramfs: static busybox, /init (initramfs-init.sh) and the modules
# needed to mount the host's root over 9p. Busybox's insmod cannot read the
# xz-compressed modules of 6.12, so they are stored uncompressed, in the
# dependency order modprobe reports (built-in ones are skipped).
prepare_initrd() {
  local stamp kver tmp line path name n=0
  stamp=$(initrd_stamp)
  if [ -f "$WORK/initrd.gz" ] && [ "$(cat "$WORK/initrd.stamp" 2>/dev/null)" = "$stamp" ]; then
    say "initramfs: cached ($WORK/initrd.gz)"
    return 0
  fi
  if ldd /bin/busybox > /dev/null 2>&1; then
    die "/bin/busybox is dynamically linked: install busybox-static"
  fi
  kver=$(kernel_version)
  tmp=$(mktemp -d "$WORK/.initrd.XXXXXX")
  mkdir -p "$tmp"/root/{bin,dev,proc,sys,mods}
  cp /bin/busybox "$tmp/root/bin/busybox"
  ln -s busybox "$tmp/root/bin/sh" # for /init's #!; init installs the other applets
  # The kernel opens /dev/console for init before anything is mounted.
  mknod -m 600 "$tmp/root/dev/console" c 5 1
  : > "$tmp/root/mods/order"
  while read -r line; do
    case $line in
      insmod\ *)
        path=${line#insmod }
        path=${path%% *}
        name=$(basename "$path")
        name=${name%.xz}
        grep -qx "$name" "$tmp/root/mods/order" && continue
        case $path in
          *.ko.xz) xz -dc "$path" > "$tmp/root/mods/$name" ;;
          *.ko) cp "$path" "$tmp/root/mods/$name" ;;
          *) die "unexpected module file $path" ;;
        esac
        echo "$name" >> "$tmp/root/mods/order"
        n=$((n + 1))
        ;;
      builtin\ *) ;;
      *) die "modprobe --show-depends: unexpected '$line'" ;;
    esac
  done < <(for m in "${INITRD_MODULES[@]}"; do
    modprobe -d "$(kroot)" -S "$kver" --show-depends "$m" || die "module $m not found in $kver"
  done)
  install -m 755 "$VM_DIR/initramfs-init.sh" "$tmp/root/init"
  cp "$tmp/root/mods/order" "$WORK/.initrd.order"
  (cd "$tmp/root" && find . | busybox cpio -o -H newc 2> /dev/null) | gzip -1 > "$tmp/initrd.gz"
  mv "$tmp/initrd.gz" "$WORK/initrd.gz"
  echo "$stamp" > "$WORK/initrd.stamp"
  rm -rf "$tmp"
  say "initramfs: built $WORK/initrd.gz ($n modules: $(paste -sd' ' "$WORK/.initrd.order"))"
}

# Serializes prepare against runs using the cache (flock on <work>/.lock):
# prepare takes it exclusively, runs shared.
lock_work() {
  mkdir -p "$WORK"
  exec 9>> "$WORK/.lock"
  flock "$1" -w 900 9 || die "timed out waiting for the lock on $WORK"
}

cmd_prepare() {
  need_root
  require_tools apt-get:apt dpkg-deb:dpkg depmod:kmod modprobe:kmod xz:xz-utils \
    busybox:busybox-static gzip:gzip flock:util-linux
  lock_work -x
  local t0=$SECONDS
  # Left by an interrupted prepare (none can be running: we hold the lock).
  rm -rf "$WORK"/.fetch.* "$WORK"/.initrd.*
  prepare_kernel
  prepare_initrd
  say "ready: kernel $(kernel_version), work dir $WORK ($((SECONDS - t0)) s)"
}

check_prepared() {
  local kver
  if ! kver=$(kernel_version 2> /dev/null) || [ ! -f "$(kroot)/boot/vmlinuz-$kver" ] ||
    [ ! -s "$(kroot)/lib/modules/$kver/modules.dep" ] || [ ! -f "$WORK/initrd.gz" ]; then
    die "no guest kernel/initramfs in $WORK: run scripts/vm/setup-vm.sh (or rxe-vm.sh prepare) first"
  fi
  [ "$(cat "$WORK/initrd.stamp" 2>/dev/null)" = "$(initrd_stamp)" ] ||
    die "the initramfs in $WORK is out of date: run rxe-vm.sh prepare"
}

# --- runs --------------------------------------------------------------------

RUN_DIR=""
RESULTS=""
declare -A VM_PID=() VM_T0=() VM_RC=() VM_SECS=()
VM_ROLES=()

# Kills whatever VM still runs and removes the run dir (EXIT trap).
cleanup() {
  local role pid
  for role in "${VM_ROLES[@]}"; do
    pid=${VM_PID[$role]}
    if [ -z "${VM_RC[$role]:-}" ] && kill -0 "$pid" 2> /dev/null; then
      kill -TERM "$pid" 2> /dev/null || true # timeout(1) passes it on to qemu
      wait "$pid" 2> /dev/null || true
    fi
  done
  if [ -n "$RUN_DIR" ] && [ -d "$RUN_DIR" ]; then
    if [ "${SMC_VM_KEEP_RUN:-0}" = 1 ]; then
      say "run dir kept: $RUN_DIR"
    else
      rm -rf "$RUN_DIR"
    fi
  fi
}

on_signal() { # on_signal NAME CODE
  say "interrupted (SIG$1): stopping the VMs"
  exit "$2"
}

start_run() { # start_run MODE
  need_root
  require_tools qemu-system-x86_64:qemu-system-x86 timeout:coreutils setpriv:util-linux \
    flock:util-linux ss:iproute2 ip:iproute2 rdma:iproute2 modprobe:kmod
  if ! [[ $TIMEOUT =~ ^[1-9][0-9]*$ ]]; then
    die "SMC_VM_TIMEOUT must be a positive number of seconds"
  fi
  lock_work -s
  check_prepared
  trap cleanup EXIT
  trap 'on_signal INT 130' INT
  trap 'on_signal TERM 143' TERM
  mkdir -p "$WORK/runs"
  RUN_DIR=$(mktemp -d "$WORK/runs/$1.XXXXXX")
  RESULTS=${SMC_VM_RESULTS_HOST:-$WORK/results/$1-$(date +%Y%m%d-%H%M%S)-$$}
  mkdir -p "$RESULTS"
  RESULTS=$(readlink -f "$RESULTS")
}

# The guest sees the host's file system at the same paths: pass scripts by
# absolute path.
guest_script() {
  if [ ! -f "$1" ] || [ ! -r "$1" ]; then
    die "no such script: $1"
  fi
  readlink -f "$1"
}

# write_boot ROLE IP PEER_IP NETDEV SCRIPT [ARGS...]: the file the guest's
# init runs (with bash, in the guest's root): environment, then guest-run.sh.
write_boot() {
  local role=$1 ip=$2 peer=$3 netdev=$4 name
  shift 4
  {
    echo "# written by rxe-vm.sh for VM $role"
    printf 'export SMC_VM_ROLE=%q SMC_VM_IP=%q SMC_VM_NETDEV=%q\n' "$role" "$ip" "$netdev"
    printf 'export SMC_VM_KROOT=%q SMC_VM_CWD=%q\n' "$(kroot)" "$PWD"
    [ -z "$peer" ] || printf 'export SMC_VM_PEER_IP=%q\n' "$peer"
    # The host's SMC_* settings (e.g. SMC_PRELOAD_LIB) apply in the guest too.
    while read -r name; do
      case $name in SMC_VM_*) continue ;; esac
      printf 'export %s=%q\n' "$name" "${!name}"
    done < <(compgen -e | grep '^SMC_' || true)
    printf 'exec /bin/bash %q' "$VM_DIR/guest-run.sh"
    printf ' %q' "$@"
    echo
  } > "$RUN_DIR/boot-$role"
}

# qemu takes ',' as an option separator: a literal one is written ',,'.
qemu_path() { echo "${1//,/,,}"; }

# launch ROLE VCPUS [QEMU ARGS...]: starts a VM in the background.
# timeout(1) bounds it (TERM, then KILL 10 s later); setpriv makes timeout,
# and with it qemu, go away if this script dies without running its traps.
# oops=panic: a guest kernel oops (seen in rxe's workers under emulation)
# otherwise left the guest running without that worker, its script hung
# until SMC_VM_TIMEOUT; panicking ends the VM at once, as a crash.
launch() {
  local role=$1 cpus=$2 kver tcg=$TCG_THREAD
  shift 2
  kver=$(kernel_version)
  if [ -z "$tcg" ]; then
    if [ "$cpus" -gt 1 ]; then tcg=single; else tcg=multi; fi
  fi
  setpriv --pdeathsig TERM -- timeout -k 10 "$TIMEOUT" \
    qemu-system-x86_64 -accel "tcg,thread=$tcg" -cpu "$CPU" -smp "$cpus" -m "$MEM" \
    -nodefaults -no-user-config -display none -monitor none -no-reboot \
    -serial "file:$(qemu_path "$RUN_DIR/console-$role.log")" \
    -kernel "$(qemu_path "$(kroot)/boot/vmlinuz-$kver")" -initrd "$(qemu_path "$WORK/initrd.gz")" \
    -append "console=ttyS0 quiet panic=-1 oops=panic smcvm.role=$role ${SMC_VM_KERNEL_ARGS:-}" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    -virtfs "local,path=$(qemu_path "$RUN_DIR"),mount_tag=ctl,security_model=none" \
    -virtfs "local,path=$(qemu_path "$RESULTS"),mount_tag=results,security_model=none" \
    "$@" < /dev/null > "$RUN_DIR/qemu-$role.log" 2>&1 &
  VM_PID[$role]=$!
  VM_T0[$role]=$SECONDS
  VM_ROLES+=("$role")
}

# Waits for a VM's qemu (each is bounded by its own timeout).
wait_vm() {
  local role=$1 rc=0
  wait "${VM_PID[$role]}" || rc=$?
  VM_RC[$role]=$rc
  VM_SECS[$role]=$((SECONDS - VM_T0[$role]))
}

# guest_crashed CONSOLE_LOG: the guest kernel panicked or oopsed.
guest_crashed() { tr -d '\r' < "$1" 2> /dev/null | grep -qE 'Kernel panic|Oops: |BUG: kernel'; }

# wait_pair: waits for both VMs of a pair. A guest whose kernel crashed
# leaves its peer waiting for it until its timeout (up to SMC_VM_TIMEOUT):
# the peer is stopped at once instead.
wait_pair() {
  local done_pid="" rc=0 role=a other=b
  wait -n -p done_pid "${VM_PID[a]}" "${VM_PID[b]}" || rc=$?
  if [ "$done_pid" = "${VM_PID[b]}" ]; then
    role=b other=a
  fi
  VM_RC[$role]=$rc
  VM_SECS[$role]=$((SECONDS - VM_T0[$role]))
  if [ ! -f "$RUN_DIR/status-$role" ] && guest_crashed "$RUN_DIR/console-$role.log"; then
    say "VM $role: the guest kernel crashed; stopping VM $other"
    kill -TERM "${VM_PID[$other]}" 2> /dev/null
  fi
  wait_vm "$other"
}

alive() { # alive PID: exists and is not a zombie (kill -0 succeeds on those)
  local state
  state=$(awk '/^State:/ { print $2 }' "/proc/$1/status" 2> /dev/null)
  [ -n "$state" ] && [ "$state" != Z ]
}

# The guest console without the boot noise: from the guest's first own line
# (setup, or an init error) to the line reporting the exit status.
guest_output() {
  tr -d '\r' < "$1" | sed -n '/^smc-vm\(\[[a-z]*\]\|-init\): /,$p' | sed '/^smc-vm\[[a-z]*\]: exit status /q'
}

# report ROLE PREFIX: prints the guest's output, returns its script's status
# (or non-zero with an explanation if it reported none).
report() {
  local role=$1 prefix=$2 console="$RUN_DIR/console-$1.log" status="$RUN_DIR/status-$1" rc
  touch "$console"
  cp "$console" "$RESULTS/console-$role.log"
  guest_output "$console" | sed "s/^/$prefix/"
  if [ -f "$status" ] && rc=$(< "$status") && [[ $rc =~ ^[0-9]+$ ]]; then
    say "VM $role: exit status $rc after ${VM_SECS[$role]} s"
    return "$rc"
  fi
  local crashed=0
  if guest_crashed "$console"; then
    crashed=1
  fi
  case ${VM_RC[$role]} in
    124 | 137) say "VM $role: FAILED: no exit status within SMC_VM_TIMEOUT=$TIMEOUT s (killed)" ;;
    *) say "VM $role: FAILED: qemu exited (code ${VM_RC[$role]}) after ${VM_SECS[$role]} s without an exit status from the guest" ;;
  esac
  [ "$crashed" -eq 0 ] || say "VM $role: the guest KERNEL crashed (see its console below)"
  {
    echo "--- last lines of VM $role's console ($RESULTS/console-$role.log):"
    tr -d '\r' < "$console" | tail -n 25
    if [ -s "$RUN_DIR/qemu-$role.log" ]; then
      echo "--- qemu's messages:"
      tail -n 10 "$RUN_DIR/qemu-$role.log"
    fi
  } | sed "s/^/$prefix/" >&2
  # 75 (EX_TEMPFAIL): the guest kernel died, which no guest script can cause
  # by itself; the caller may run the test again (test/vm/run.sh does, once).
  [ "$crashed" -eq 0 ] || return 75
  return 1
}

cmd_one() {
  [ "$#" -ge 1 ] || usage
  local script rc=0
  script=$(guest_script "$1")
  shift
  start_run one
  write_boot one 10.9.0.1 "" d0 "$script" "$@"
  launch one 2
  wait_vm one
  report one "" || rc=$?
  say "results: $RESULTS"
  return "$rc"
}

# The VMs' network: a unix stream socket between the two qemus, in the
# abstract namespace (no file to clean up, no path length limit). Not a TCP
# connection (qemu's `socket,listen=` / `connect=`): qemu does not set
# TCP_NODELAY on it, so a frame that followed another in the same direction
# (a Soft-RoCE ACK, then the reply) waited for the host's delayed ACK, and
# every RDMA hop between the VMs took ~22 ms while the guests' TCP, whose
# frames alternate, did not notice.
NET_SOCK=""
# start_listener: starts VM a serving the network socket, sets NET_SOCK.
# Waits until that qemu listens. Not to be called in a subshell: the VM must
# be this shell's child.
start_listener() {
  local i
  NET_SOCK="smc-vm-$(basename "$RUN_DIR")-$$"
  launch a 1 -netdev "stream,id=n0,server=on,addr.type=unix,addr.path=$NET_SOCK,addr.abstract=on" \
    -device virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01,romfile=
  for ((i = 0; i < 200; i++)); do
    if ss -Hxl | grep -qF "@$NET_SOCK "; then
      return 0
    fi
    alive "${VM_PID[a]}" || break
    sleep 0.05
  done
  wait_vm a
  cat "$RUN_DIR/qemu-a.log" >&2
  die "VM a did not start listening on @$NET_SOCK"
}

cmd_two() {
  [ "$#" -ge 2 ] || usage
  local script_a script_b rc=0 rc_a=0 rc_b=0
  script_a=$(guest_script "$1")
  script_b=$(guest_script "$2")
  shift 2
  start_run two
  write_boot a 10.9.0.1 10.9.0.2 eth0 "$script_a" "$@"
  write_boot b 10.9.0.2 10.9.0.1 eth0 "$script_b" "$@"
  start_listener
  say "VMs a and b on @$NET_SOCK"
  launch b 1 -netdev "stream,id=n0,server=off,addr.type=unix,addr.path=$NET_SOCK,addr.abstract=on" \
    -device virtio-net-pci,netdev=n0,mac=52:54:00:00:00:02,romfile=
  wait_pair
  report a "[a] " || rc_a=$?
  report b "[b] " || rc_b=$?
  say "results: $RESULTS"
  [ "$rc_a" -eq 0 ] || rc=$rc_a
  [ "$rc" -ne 0 ] || rc=$rc_b
  # A crashed guest kernel explains its peer's failure too.
  if [ "$rc_a" -eq 75 ] || [ "$rc_b" -eq 75 ]; then
    rc=75
  fi
  return "$rc"
}

cmd_clean() {
  lock_work -x
  rm -rf "$WORK/runs" "$WORK/results"
  say "removed $WORK/runs and $WORK/results"
}

main() {
  [ "$#" -ge 1 ] || usage
  local cmd=$1
  shift
  case $cmd in
    prepare) cmd_prepare "$@" ;;
    one) cmd_one "$@" ;;
    two) cmd_two "$@" ;;
    clean) cmd_clean "$@" ;;
    -h | --help | help) usage 0 ;;
    *) usage ;;
  esac
}

main "$@"
