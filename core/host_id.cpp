// Host identity: boot id + network namespace (see host_id.h).
#include "core/host_id.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>

#include "core/hash.h"
#include "rdma/sys.h"

namespace smc::core {

namespace {

uint64_t compute() {
  uint64_t h = fnv1a_basis;
  char boot[64] = {};
  int fd = ::open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    ssize_t n = rdma::sys().read(fd, boot, sizeof(boot));
    rdma::sys().close(fd);
    if (n > 0) {
      h = fnv1a(h, boot, static_cast<size_t>(n));
    }
  }
  struct stat st{};
  if (::stat("/proc/self/ns/net", &st) == 0) {
    h = fnv1a(h, &st.st_ino, sizeof(st.st_ino));
    h = fnv1a(h, &st.st_dev, sizeof(st.st_dev));
  }
  return h == 0 ? 1 : h;
}

}  // namespace

uint64_t host_id() {
  static std::atomic<uint64_t> cached{0};
  uint64_t v = cached.load(std::memory_order_relaxed);
  if (v == 0) {
    v = compute();
    cached.store(v, std::memory_order_relaxed);
  }
  return v;
}

}  // namespace smc::core
