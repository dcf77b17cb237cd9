#include "core/wake.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>

#include <algorithm>
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

wait_set::wait_set(size_t limit)
    : ep_(rdma::place_fd(rdma::sys().epoll_create1(EPOLL_CLOEXEC))),
      limit_(std::clamp<size_t>(limit, 1, max_entries)) {}

wait_set::~wait_set() {
  if (ep_ >= 0) {
    rdma::sys().close(ep_);
  }
}

int wait_set::recorder(int fd) const {
  auto it = by_fd_.find(fd);
  return it == by_fd_.end() ? -1 : static_cast<int>(it->second);
}

bool wait_set::add_or_mod(int fd, uint64_t data, uint32_t events) {
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = data;
  if (rdma::sys().epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev) == 0) {
    return true;
  }
  // (The same open file under the same number: watched already.)
  return errno == EEXIST && rdma::sys().epoll_ctl(ep_, EPOLL_CTL_MOD, fd, &ev) == 0;
}

void wait_set::forget_serial(size_t j) {
  auto it = by_serial_.find(e_[j].serial);
  if (it != by_serial_.end() && it->second == j) {
    by_serial_.erase(it);
  }
  e_[j].serial = 0;
}

bool wait_set::put(size_t j, int fd, uint64_t kind, uint32_t events) {
  // Another entry that recorded this number forgets it (and what it
  // watched): the watch is j's from now on.
  const int k = recorder(fd);
  if (k >= 0 && static_cast<size_t>(k) != j) {
    entry& o = e_[static_cast<size_t>(k)];
    if (o.tcp == fd) {
      o.tcp = -1;
      forget_serial(static_cast<size_t>(k));
    } else {
      (o.rx == fd ? o.rx : o.tx) = -1;
      o.bells = 0;
    }
  }
  if (!add_or_mod(fd, tag_of(j, kind), events)) {
    if (k >= 0) {
      by_fd_.erase(fd);  // (nobody watches it now)
    }
    return false;
  }
  by_fd_[fd] = static_cast<uint32_t>(j);
  return true;
}

void wait_set::drop(size_t j, int& fd) {
  // The number may name another file by now (the kernel dropped the watch
  // when the old one closed): then this finds nothing, harmlessly, unless
  // another entry watches that file (then it is left alone).
  if (fd < 0) {
    return;
  }
  const int k = recorder(fd);
  if (k < 0 || static_cast<size_t>(k) == j) {
    by_fd_.erase(fd);
    (void)rdma::sys().epoll_ctl(ep_, EPOLL_CTL_DEL, fd, nullptr);
  }
  fd = -1;
}

bool wait_set::watch_entry(size_t j, uint64_t bells, int rx, int tx, uint64_t serial, int tcp) {
  try {
    entry& e = e_[j];
    const bool same_bells = bells != 0 && bells == e.bells && rx == e.rx && tx == e.tx;
    const bool same_tcp = serial == e.serial && tcp == e.tcp;
    if (!same_bells) {
      drop(j, e.rx);
      drop(j, e.tx);
      e.bells = 0;
    }
    if (!same_tcp) {
      drop(j, e.tcp);
      forget_serial(j);
    }
    // Every number not kept was dropped above, before any is added: one that
    // changed hands since (the last connection's TCP socket closed, its
    // number reused by this one's) is added afresh.
    if (!same_bells) {
      if (!put(j, rx, tag_rx, EPOLLIN | EPOLLET) || !put(j, tx, tag_tx, EPOLLIN | EPOLLET)) {
        e.rx = rx;
        e.tx = tx;
        drop(j, e.rx);
        drop(j, e.tx);
        return false;
      }
      e.rx = rx;
      e.tx = tx;
      e.bells = bells;
    }
    if (!same_tcp) {
      if (!put(j, tcp, tag_tcp, EPOLLIN | EPOLLRDHUP | EPOLLET)) {
        return false;
      }
      e.tcp = tcp;
      e.serial = serial;
      by_serial_[serial] = static_cast<uint32_t>(j);
    }
    return true;
  } catch (...) {
    return false;  // (out of memory for a table entry: the caller waits another way)
  }
}

bool wait_set::watch(uint64_t bells, int rx, int tx, uint64_t serial, int tcp, int wake) {
  if (e_.empty()) {
    try {
      e_.emplace_back();
    } catch (...) {
      return false;
    }
  }
  return watch_entry(0, bells, rx, tx, serial, tcp) && watch_wake(wake);
}

int wait_set::watch_any(uint64_t bells, int rx, int tx, uint64_t serial, int tcp, bool& again) {
  again = false;
  size_t j = e_.size();
  auto it = by_serial_.find(serial);
  if (it != by_serial_.end()) {
    j = it->second;
    const entry& e = e_[j];
    if (bells != 0 && e.bells == bells && e.rx == rx && e.tx == tx && e.tcp == tcp) {
      again = e.round == round_;
      e_[j].round = round_;
      return static_cast<int>(j);  // watched already (by an earlier call, or this one's)
    }
    if (e.round == round_) {
      j = e_.size();  // (taken by another connection of this round)
    }
  }
  if (j == e_.size()) {
    if (e_.size() < limit_) {
      try {
        e_.emplace_back();
      } catch (...) {
        return -1;
      }
    } else {
      // Every entry in use: one that no connection of this round took
      // (round robin), its watches given over.
      size_t n = 0;
      for (; n < e_.size() && e_[evict_].round == round_; ++n) {
        evict_ = (evict_ + 1) % e_.size();
      }
      if (n == e_.size()) {
        return -1;
      }
      j = evict_;
      evict_ = (evict_ + 1) % e_.size();
    }
  }
  if (!watch_entry(j, bells, rx, tx, serial, tcp)) {
    return -1;
  }
  e_[j].round = round_;
  return static_cast<int>(j);
}

bool wait_set::watch_wake(int wake) {
  if (wake == wake_) {
    return true;
  }
  if (wake_ >= 0) {
    (void)rdma::sys().epoll_ctl(ep_, EPOLL_CTL_DEL, wake_, nullptr);
    wake_ = -1;
  }
  if (!add_or_mod(wake, tag_wake, EPOLLIN)) {
    return false;
  }
  wake_ = wake;
  return true;
}

void lose_thread_wait_set() { t_wait.drop(true); }

wait_set* thread_wait_set() { return t_wait.get(); }

void note_fork_for_wakes() { g_wake_gen.fetch_add(1, std::memory_order_relaxed); }

}  // namespace smc::core
