#include "core/wake.h"

#include <sys/eventfd.h>

#include <cstdint>
#include <new>

#include "rdma/sys.h"

namespace smc::core {

namespace {
std::atomic<unsigned> g_wake_gen{0};
}  // namespace

wake_fd::wake_fd() : fd_(rdma::place_fd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC))) {}

wake_fd::~wake_fd() {
  if (fd_ >= 0) {
    rdma::sys().close(fd_);
  }
}

void wake_fd::wake() {
  if (fd_ < 0 || pending_.exchange(true)) {
    return;  // pending already: its owner looks at memory after taking it
  }
  const uint64_t one = 1;
  (void)rdma::sys().write(fd_, &one, sizeof one);
}

void wake_fd::consume() {
  if (fd_ < 0) {
    return;
  }
  uint64_t v = 0;
  (void)rdma::sys().read(fd_, &v, sizeof v);
  // Cleared after the read: a wake between the two was not written, and
  // what it announces is in memory, which the owner looks at next.
  pending_.store(false);
}

namespace {

struct thread_wake {
  wake_fd* w = nullptr;
  unsigned gen = 0;
  // Made before a fork, the eventfd is the parent's thread's too: it is
  // left open, not closed, since the child may have closed that number
  // itself (closefrom before exec) and reused it for something of its own.
  void drop() {
    if (w != nullptr && gen != g_wake_gen.load(std::memory_order_relaxed)) {
      w->forget();
    }
    delete w;
    w = nullptr;
  }
  ~thread_wake() { drop(); }
};

thread_local thread_wake t_wake;

}  // namespace

wake_fd* thread_wake_fd() {
  thread_wake& t = t_wake;
  const unsigned gen = g_wake_gen.load(std::memory_order_relaxed);
  if (t.w != nullptr && t.gen != gen) {
    t.drop();  // made before a fork: the parent's
  }
  if (t.w == nullptr) {
    auto* w = new (std::nothrow) wake_fd();
    if (w == nullptr || !w->ok()) {
      delete w;
      return nullptr;
    }
    t.w = w;
    t.gen = gen;
  }
  return t.w;
}

const wake_fd* own_wake_fd() { return t_wake.w; }

void note_fork_for_wakes() { g_wake_gen.fetch_add(1, std::memory_order_relaxed); }

}  // namespace smc::core
