// See tcp_option.h.
#include "core/tcp_option.h"

#include <cerrno>
#include <chrono>
#include <atomic>
#include <cstdint>

#include "bpf/smc_bpf.h"
#include "rdma/sys.h"

namespace smc::core::tcp_option {

namespace {

constexpr int64_t recheck_ms = 10000;
// When the programs were last found missing (0: never); steady clock ms.
std::atomic<int64_t> g_absent_since{0};

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

bool advertise(int fd) {
  int64_t absent = g_absent_since.load(std::memory_order_relaxed);
  if (absent != 0 && now_ms() - absent < recheck_ms) {
    return false;
  }
  int saved = errno;
  int one = 1;
  bool ok = rdma::sys().setsockopt(fd, SMC_BPF_SOL, SMC_BPF_ADVERTISE, &one, sizeof(one)) == 0;
  g_absent_since.store(ok ? 0 : now_ms(), std::memory_order_relaxed);
  errno = saved;
  return ok;
}

peer peer_said(int fd) {
  if (g_absent_since.load(std::memory_order_relaxed) != 0) {
    return peer::unknown;
  }
  int saved = errno;
  int v = 0;
  socklen_t len = sizeof(v);
  int rc = rdma::sys().getsockopt(fd, SMC_BPF_SOL, SMC_BPF_PEER, &v, &len);
  errno = saved;
  if (rc != 0 || len != sizeof(v) || (v & SMC_BPF_PEER_KNOWN) == 0) {
    return peer::unknown;
  }
  return (v & SMC_BPF_PEER_SMC) != 0 ? peer::smc : peer::not_smc;
}

}  // namespace smc::core::tcp_option
