#!/usr/bin/env bash
# Installs the Debian packages the Soft-RoCE VM harness (scripts/vm/rxe-vm.sh)
# needs, then caches the guest kernel and initramfs with `rxe-vm.sh prepare`.
# Idempotent: installs only what is missing, and `prepare` reuses its cache.
# Run as root. Called from scripts/setup.sh; safe to run on its own.
set -euo pipefail

here=$(dirname "$(readlink -f "$0")")

# Why each package:
#   qemu-system-x86    the VMs (TCG; KVM does not work on these machines)
#   busybox-static     the initramfs userland (must be static: the initramfs has no libc)
#   kmod               depmod for the unpacked kernel; modprobe inside the guest
#   xz-utils           6.12's modules are .ko.xz; busybox insmod needs them plain
#   rdma-core, ibverbs-providers, ibverbs-utils
#                      the verbs userspace and rxe's provider, run in the guest
#                      straight from the host root file system
#   perftest           ib_write_lat/ib_write_bw for the smoke tests
#   iproute2           ip and rdma (guest network and `rdma link add`), ss (host)
packages=(
  qemu-system-x86 busybox-static kmod xz-utils
  rdma-core ibverbs-providers ibverbs-utils perftest iproute2
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup-vm.sh: missing packages (${missing[*]}); run as root to install them" >&2
    exit 1
  fi
  echo "setup-vm.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "setup-vm.sh: packages already installed"
fi

"$here/rxe-vm.sh" prepare
