#include "core/wake.h"

#include <sys/epoll.h>
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

// A thread's own wake_fd or wait_set: made when it is first needed (a new
// one in a forked child). One made before a fork is the parent's thread's
// too: it is left open, not closed, since the child may have closed that
// number itself (closefrom before exec) and reused it for something of
// its own.
template <class T>
struct thread_owned {
  T* w = nullptr;
  unsigned gen = 0;
  void drop(bool forget) {
    if (w != nullptr && forget) {
      w->forget();
    }
    delete w;
    w = nullptr;
  }
  ~thread_owned() { drop(w != nullptr && gen != g_wake_gen.load(std::memory_order_relaxed)); }
  T* get() {
    const unsigned now = g_wake_gen.load(std::memory_order_relaxed);
    if (w != nullptr && gen != now) {
      drop(true);  // made before a fork: the parent's
    }
    if (w == nullptr) {
      auto* made = new (std::nothrow) T();
      if (made == nullptr || !made->ok()) {
        delete made;
        return nullptr;
      }
      w = made;
      gen = now;
    }
    return w;
  }
};

thread_local thread_owned<wake_fd> t_wake;
thread_local thread_owned<wait_set> t_wait;

}  // namespace

wake_fd* thread_wake_fd() { return t_wake.get(); }

const wake_fd* own_wake_fd() { return t_wake.w; }

wait_set::wait_set() : ep_(rdma::place_fd(rdma::sys().epoll_create1(EPOLL_CLOEXEC))) {}

wait_set::~wait_set() {
  if (ep_ >= 0) {
    rdma::sys().close(ep_);
  }
}

bool wait_set::put(int fd, uint64_t tag, uint32_t events) {
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = tag;
  if (rdma::sys().epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev) == 0) {
    return true;
  }
  // (The same open file under the same number: watched already.)
  return errno == EEXIST && rdma::sys().epoll_ctl(ep_, EPOLL_CTL_MOD, fd, &ev) == 0;
}

void wait_set::drop(int& fd) {
  // The number may name another file by now (the kernel dropped the watch
  // when the old one closed): then this finds nothing, harmlessly.
  if (fd >= 0) {
    (void)rdma::sys().epoll_ctl(ep_, EPOLL_CTL_DEL, fd, nullptr);
    fd = -1;
  }
}

bool wait_set::watch(uint64_t bells, int rx, int tx, uint64_t serial, int tcp, int wake) {
  const bool same_bells = bells != 0 && bells == bells_ && rx == rx_ && tx == tx_;
  const bool same_tcp = serial == serial_ && tcp == tcp_;
  if (!same_bells) {
    drop(rx_);
    drop(tx_);
    bells_ = 0;
  }
  if (!same_tcp) {
    drop(tcp_);
    serial_ = 0;
  }
  if (wake != wake_) {
    drop(wake_);
  }
  // Every number not kept was dropped above, before any is added: one that
  // changed hands since (the last connection's TCP socket closed, its
  // number reused by this one's) is added afresh.
  if (!same_bells) {
    if (!put(rx, tag_rx, EPOLLIN | EPOLLET) || !put(tx, tag_tx, EPOLLIN | EPOLLET)) {
      rx_ = rx;
      tx_ = tx;
      drop(rx_);
      drop(tx_);
      return false;
    }
    rx_ = rx;
    tx_ = tx;
    bells_ = bells;
  }
  if (!same_tcp) {
    if (!put(tcp, tag_tcp, EPOLLIN | EPOLLRDHUP | EPOLLET)) {
      return false;
    }
    tcp_ = tcp;
    serial_ = serial;
  }
  if (wake != wake_) {
    if (!put(wake, tag_wake, EPOLLIN)) {
      return false;
    }
    wake_ = wake;
  }
  return true;
}

void lose_thread_wait_set() { t_wait.drop(true); }

wait_set* thread_wait_set() { return t_wait.get(); }

void note_fork_for_wakes() { g_wake_gen.fetch_add(1, std::memory_order_relaxed); }

}  // namespace smc::core
