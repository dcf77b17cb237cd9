#!/usr/bin/env bash
# Installs what smc-preload needs (Debian 12 packages only) and builds it:
#   build/       the library, tools and tests (RelWithDebInfo)
#   build-asan/  the same under AddressSanitizer + UndefinedBehaviorSanitizer
# Idempotent; run as root on a fresh machine or again after changes.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

packages=(
  build-essential cmake pkg-config
  libibverbs-dev ibverbs-providers rdma-core
  libboost-dev libspdlog-dev libfmt-dev catch2
  iproute2 procps psmisc gdb
  clang llvm libbpf-dev bpftool
  # real applications for test/apps/ (each runs its own instance in a namespace)
  redis-server redis-tools nginx-light memcached iperf3 sockperf curl socat python3
  nodejs php-fpm nutcracker haproxy openssh-server openssh-client wrk libfcgi-bin
)
# Services those packages would start (service:package): the tests never use
# them. Only a service whose package this run installed is stopped; one the
# machine already had (its own sshd, say) is left as it is.
app_services=(redis-server:redis-server nginx:nginx-light memcached:memcached iperf3:iperf3
  php8.2-fpm:php-fpm haproxy:haproxy ssh:openssh-server)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: missing packages (${missing[*]}); run as root to install them" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  # Keep apt from starting the applications' services (a policy-rc.d that
  # denies every start, only if the host has none of its own).
  own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  rc=0
  apt-get install -y -q --no-install-recommends "${missing[@]}" || rc=$?
  if [ "$own_policy" -eq 1 ]; then
    rm -f /usr/sbin/policy-rc.d
  fi
  [ "$rc" -eq 0 ] || exit "$rc"
  for sp in "${app_services[@]}"; do
    s=${sp%%:*}
    case " ${missing[*]} " in
      *" ${sp#*:} "*) ;;
      *) continue ;;
    esac
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
      systemctl disable --now "$s" >/dev/null 2>&1 || true
    elif command -v service >/dev/null 2>&1; then
      service "$s" stop >/dev/null 2>&1 || true
    fi
  done
fi

jobs=$(nproc)
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSMCR_WERROR=ON >/dev/null
cmake --build build -j"$jobs"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DSMCR_SANITIZE=ON -DSMCR_WERROR=ON >/dev/null
cmake --build build-asan -j"$jobs"
# The Soft-RoCE VM harness (qemu, Debian's backports kernel) for the RDMA tests.
scripts/vm/setup-vm.sh
echo "setup.sh: built build/ and build-asan/, prepared the RDMA test VMs"
