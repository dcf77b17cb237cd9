#!/bin/sh
# /init of the guest initramfs built by `rxe-vm.sh prepare` (busybox sh, PID 1).
#
# Builds the guest's root file system and hands over to scripts/vm/guest-run.sh:
#   - the host's root file system arrives read-only over 9p (tag hostroot);
#     an overlay with a tmpfs upper layer on top of it makes it writable for
#     the guest alone, so every host path (the repository, its build trees,
#     rdma-core, perftest, the unpacked kernel's modules) is visible at the same
#     path, including paths under /tmp, and nothing the guest writes reaches
#     the host;
#   - the run's control dir (tag ctl) and results dir (tag results) are
#     writable 9p shares with the host, mounted at /run/smc-vm/{ctl,results};
#   - the kernel command line carries smcvm.role=<role>; the host wrote
#     /run/smc-vm/ctl/boot-<role> (environment + runner) for that role.
# Then switch_root makes the overlay the real root, with boot-<role> as PID 1.
# A real switch (not just chroot) matters: the kernel runs its module
# autoloader (/proc/sys/kernel/modprobe) relative to the root PID 1 started
# in, so only then does it find the guest's modprobe wrapper.
# On any error here the VM powers off so qemu exits.
/bin/busybox --install -s /bin
export PATH=/bin

fail() {
  echo "smc-vm-init: $*"
  poweroff -f
}

mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev

role=$(sed -n 's/.*smcvm\.role=\([a-z]*\).*/\1/p' /proc/cmdline)
[ -n "$role" ] || fail "no smcvm.role= on the kernel command line"

# Modules needed before the root exists (virtio PCI, 9p, overlay), in
# dependency order; the rest of the kernel's modules load later through
# modprobe from the host's copy of the unpacked kernel package.
while read -r m; do
  insmod "/mods/$m" || fail "insmod $m failed"
done < /mods/order

# msize: 9p's per-message payload; the default (8 KiB) makes every file read slow.
opts=trans=virtio,version=9p2000.L,msize=512000
mkdir -p /lower /rw /newroot
mount -t 9p -o "$opts,ro,cache=loose" hostroot /lower || fail "cannot mount the host root over 9p"
mount -t tmpfs -o mode=0755 rw /rw
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot ||
  fail "cannot mount the overlay root"

for d in proc sys dev; do
  mount --move "/$d" "/newroot/$d"
done
mkdir -p /newroot/dev/shm /newroot/dev/pts
mount -t tmpfs -o mode=1777 shm /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
# A fresh /run: the host's /run (sockets, pid files of host daemons) means nothing here.
mount -t tmpfs -o mode=0755 run /newroot/run
mkdir -p /newroot/run/smc-vm/ctl /newroot/run/smc-vm/results
mount -t 9p -o "$opts" ctl /newroot/run/smc-vm/ctl || fail "cannot mount the control share"
mount -t 9p -o "$opts" results /newroot/run/smc-vm/results || fail "cannot mount the results share"

[ -f "/newroot/run/smc-vm/ctl/boot-$role" ] || fail "no boot-$role in the control share"
[ -x /newroot/bin/bash ] || fail "no /bin/bash on the host"
exec switch_root /newroot /bin/bash "/run/smc-vm/ctl/boot-$role"
