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

wait_set::entry* wait_set::other_entry(int fd, size_t j) {
  for (size_t k = 0; k < max_entries; ++k) {
    entry& o = e_[k];
    if (k != j && (o.rx == fd || o.tx == fd || o.tcp == fd)) {
      return &o;  // (the only one: see entry)
    }
  }
  return nullptr;
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

bool wait_set::put(size_t j, int fd, uint64_t kind, uint32_t events) {
  // Another entry that recorded this number forgets it (and what it
  // watched): the watch is j's from now on.
  if (entry* o = other_entry(fd, j)) {
    if (o->tcp == fd) {
      o->tcp = -1;
      o->serial = 0;
    } else {
      (o->rx == fd ? o->rx : o->tx) = -1;
      o->bells = 0;
    }
  }
  return add_or_mod(fd, tag_of(j, kind), events);
}

void wait_set::drop(size_t j, int& fd) {
  // The number may name another file by now (the kernel dropped the watch
  // when the old one closed): then this finds nothing, harmlessly, unless
  // another entry watches that file (then it is left alone).
  if (fd < 0) {
    return;
  }
  if (other_entry(fd, j) == nullptr) {
    (void)rdma::sys().epoll_ctl(ep_, EPOLL_CTL_DEL, fd, nullptr);
  }
  fd = -1;
}

bool wait_set::watch_entry(size_t j, uint64_t bells, int rx, int tx, uint64_t serial, int tcp) {
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
    e.serial = 0;
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
  }
  return true;
}

int wait_set::watch_any(uint64_t bells, int rx, int tx, uint64_t serial, int tcp, uint32_t taken) {
  int free = -1;
  for (size_t j = 0; j < max_entries; ++j) {
    const entry& e = e_[j];
    if (bells != 0 && e.bells == bells && e.rx == rx && e.tx == tx && e.serial == serial &&
        e.tcp == tcp) {
      return static_cast<int>(j);  // watched already (by an earlier call, or this one's)
    }
    if ((taken & (1u << j)) == 0 &&
        (free < 0 || (e.rx < 0 && e.tcp < 0 && e_[static_cast<size_t>(free)].rx >= 0))) {
      free = static_cast<int>(j);  // (an empty entry rather than one in use)
    }
  }
  if (free < 0 || !watch_entry(static_cast<size_t>(free), bells, rx, tx, serial, tcp)) {
    return -1;
  }
  return free;
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
