// epoll over sets that hold SMC sockets.
//
// An SMC socket is never put into the application's epoll set directly (its
// kernel readiness is that of an idle TCP socket). Instead each such set gets
// a private "shadow" epoll instance, itself a member of the application's set
// under a marker value (the address of our bookkeeping object, which no
// application data can equal). The shadow watches the sockets' doorbells and
// TCP sockets; when epoll_wait() on the application's set reports the marker,
// the shadow is harvested and each ready registration is reported with the
// application's own epoll_data, and events computed from the connection
// state. Nested epoll, poll() on an epoll fd and multiple waiters keep
// working, because the shadow is an ordinary member of the set.
//
// Sockets that may still become SMC (fresh, not yet connected: nginx and
// twemproxy register their upstream sockets before connect(); connecting;
// accepted and undecided) are watched through their TCP socket, with the
// kernel's readiness reported as it is; when they settle on plain TCP (or
// become listeners) their registration moves into the application's set as
// a normal kernel registration. So whatever the application did with the
// socket before the decision (ADD, MOD, DEL, ONESHOT, ET) keeps its meaning
// after it. While its handshake runs in the background (state::deciding) a
// socket is not watched at all: the end of the decision re-installs it.
//
// A set also knows the receive channels of its SMC-R connections' link groups
// (data_path::channel). A blocking epoll_wait that finds nothing ready sleeps
// on the set and on those channels at once, and dispatches what a channel
// brings itself; the doorbells that dispatch rings make the set ready. So a
// message wakes the application's thread only, not the engine thread first
// (which the channel's begin/end keeps out of it while this thread sleeps).
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <unordered_set>
#include <vector>

#include "core/log.h"
#include "preload/preload.h"
#include "rdma/transport.h"

using namespace smc::preload;

namespace smc::preload {

// A receive channel some registrations of the set share (see above).
struct ep_chan {
  std::shared_ptr<rdma::direct_channel> ch;
  int fd = -1;
  int uses = 0;
};

struct ep_set {
  int epfd = -1;
  int shadow = -1;
  std::vector<ep_reg*> regs;
  std::unordered_set<ep_reg*> live;  // harvested pointers are checked against this
  std::vector<ep_chan> chans;
};

struct ep_reg {
  ep_set* set = nullptr;
  entry* e = nullptr;  // holds a reference
  int fd = -1;
  epoll_event ev{};    // the application's events and data
  int items[3] = {-1, -1, -1};  // fds added to the shadow: tcp socket, rx doorbell, tx doorbell
  bool armed_rx = false;
  bool armed_tx = false;
  bool disabled = false;  // EPOLLONESHOT fired, until EPOLL_CTL_MOD
  int chan_fd = -1;       // the set's ep_chan this registration uses
};

namespace {

std::mutex g_ep_mu;
constexpr uint32_t tag_sock = 0;
constexpr uint32_t tag_rx = 1;
constexpr uint32_t tag_tx = 2;
constexpr uint32_t in_bits = EPOLLIN | EPOLLRDNORM | EPOLLRDHUP | EPOLLPRI;
constexpr uint32_t out_bits = EPOLLOUT | EPOLLWRNORM;

uint64_t marker(const ep_set* s) { return reinterpret_cast<uintptr_t>(s); }

bool shadow_add(ep_reg* r, int slot, int fd, uint32_t events) {
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = reinterpret_cast<uintptr_t>(r) | static_cast<uintptr_t>(slot);
  if (real.epoll_ctl(r->set->shadow, EPOLL_CTL_ADD, fd, &ev) != 0) {
    return false;
  }
  r->items[slot] = fd;
  return true;
}

void chan_hold(ep_reg* r, std::shared_ptr<rdma::direct_channel> ch) {
  if (!ch) {
    return;
  }
  auto& v = r->set->chans;
  const int fd = ch->fd();
  auto it = std::find_if(v.begin(), v.end(), [&](const ep_chan& c) { return c.fd == fd; });
  if (it != v.end()) {
    ++it->uses;
  } else {
    v.push_back({std::move(ch), fd, 1});
  }
  r->chan_fd = fd;
}

void chan_release(ep_reg* r) {
  if (r->chan_fd < 0) {
    return;
  }
  auto& v = r->set->chans;
  auto it = std::find_if(v.begin(), v.end(), [&](const ep_chan& c) { return c.fd == r->chan_fd; });
  if (it != v.end() && --it->uses == 0) {
    v.erase(it);
  }
  r->chan_fd = -1;
}

void uninstall(ep_reg* r) {
  chan_release(r);
  for (int& fd : r->items) {
    if (fd >= 0) {
      real.epoll_ctl(r->set->shadow, EPOLL_CTL_DEL, fd, nullptr);
      fd = -1;
    }
  }
  if (r->e->st.load() == state::smc) {
    if (r->armed_rx) {
      r->e->conn->path().arm_rx(-1);
    }
    if (r->armed_tx) {
      r->e->conn->path().arm_tx(-1);
    }
  }
  r->armed_rx = r->armed_tx = false;
}

void unlink_reg(ep_reg* r) {
  auto& v = r->e->regs;
  v.erase(std::remove(v.begin(), v.end(), r), v.end());
  auto& s = r->set->regs;
  s.erase(std::remove(s.begin(), s.end(), r), s.end());
  r->set->live.erase(r);
  fd_put(r->e);
  delete r;
}

// After arming an SMC registration's doorbells, looks at the state (the
// doorbell protocol's Dekker order) and sets their level to its truth: a
// doorbell the state says is ready is rung (no system call while one is
// queued already).
void level_to_truth(ep_reg* r) {
  auto& c = *r->e->conn;
  const uint32_t ev = c.events();
  if ((ev & EPOLLIN) != 0 && r->armed_rx) {
    c.path().kick_rx();
  }
  if ((ev & EPOLLOUT) != 0 && r->armed_tx) {
    c.path().kick_tx();
  }
}

// Puts the registration's watches in place for the socket's current state.
// Returns 0, or an errno. A socket that is plain TCP now leaves our
// bookkeeping: it becomes a normal registration in the application's set.
int install(ep_reg* r) {
  state s = r->e->st.load(std::memory_order_acquire);
  if (r->disabled) {
    return 0;
  }
  const uint32_t et = r->ev.events & EPOLLET;
  switch (s) {
    case state::smc: {
      auto& c = *r->e->conn;
      if ((r->ev.events & in_bits) != 0) {
        c.path().arm_rx(1);
        r->armed_rx = true;
        shadow_add(r, tag_rx, c.path().rx_fd(), EPOLLIN | et);
      }
      if ((r->ev.events & out_bits) != 0) {
        c.path().arm_tx(1);
        r->armed_tx = true;
        shadow_add(r, tag_tx, c.path().tx_fd(), EPOLLIN | et);
      }
      if (!c.finished()) {
        shadow_add(r, tag_sock, r->fd, EPOLLIN | EPOLLRDHUP);
      }
      if (r->armed_rx || r->armed_tx) {
        chan_hold(r, c.path().channel());
      }
      level_to_truth(r);
      return 0;
    }
    case state::undecided:
    case state::strip:
      shadow_add(r, tag_sock, r->fd, EPOLLIN | EPOLLRDHUP | (r->ev.events & out_bits) | et);
      return 0;
    case state::connecting:
      shadow_add(r, tag_sock, r->fd, EPOLLOUT | EPOLLIN | et);
      return 0;
    case state::deciding:
      // Nothing to report until the background decision ends; it then
      // re-installs this registration for what the socket became.
      return 0;
    case state::fresh:
      // Not connected yet: the kernel's readiness is the answer (an
      // unconnected TCP socket reports EPOLLOUT | EPOLLHUP).
      shadow_add(r, tag_sock, r->fd, (r->ev.events & (in_bits | out_bits)) | et);
      return 0;
    default: {
      epoll_event ev = r->ev;
      int rc = real.epoll_ctl(r->set->epfd, EPOLL_CTL_ADD, r->fd, &ev);
      int err = rc == 0 ? 0 : errno;
      unlink_reg(r);
      return err == EEXIST ? 0 : err;
    }
  }
}

// EPOLL_CTL_MOD of a registration (under g_ep_mu): 0 or an errno. A
// level-triggered SMC registration that stays level-triggered only adds or
// drops the doorbell whose interest changed (event loops flip EPOLLOUT on
// and off around every reply: two shadow changes per flip before, one now);
// anything else is installed afresh.
int modify(ep_reg* r, const epoll_event& nev) {
  const bool lt = ((r->ev.events | nev.events) & EPOLLET) == 0;
  if (r->disabled || !lt || r->e->st.load() != state::smc) {
    uninstall(r);
    r->ev = nev;
    r->disabled = false;
    return install(r);
  }
  r->ev = nev;
  auto& c = *r->e->conn;
  for (bool rx : {true, false}) {
    bool& armed = rx ? r->armed_rx : r->armed_tx;
    const bool want = (nev.events & (rx ? in_bits : out_bits)) != 0;
    const int slot = rx ? tag_rx : tag_tx;
    if (want && !armed) {
      rx ? c.path().arm_rx(1) : c.path().arm_tx(1);
      armed = true;
      shadow_add(r, slot, rx ? c.path().rx_fd() : c.path().tx_fd(), EPOLLIN);
    } else if (!want && armed) {
      if (r->items[slot] >= 0) {
        real.epoll_ctl(r->set->shadow, EPOLL_CTL_DEL, r->items[slot], nullptr);
        r->items[slot] = -1;
      }
      rx ? c.path().arm_rx(-1) : c.path().arm_tx(-1);
      armed = false;
    }
  }
  if ((r->armed_rx || r->armed_tx) && r->chan_fd < 0) {
    chan_hold(r, c.path().channel());
  } else if (!r->armed_rx && !r->armed_tx) {
    chan_release(r);
  }
  level_to_truth(r);
  return 0;
}

// A new registration of a socket we watch (under g_ep_mu): 0 or an errno.
int add_reg(ep_set* s, entry* e, int fd, const epoll_event& ev) {
  auto* r = new ep_reg();
  r->set = s;
  r->e = e;
  e->refs.fetch_add(1);
  r->fd = fd;
  r->ev = ev;
  s->regs.push_back(r);
  s->live.insert(r);
  e->regs.push_back(r);
  return install(r);
}

ep_set* set_for(entry* epe, int epfd) {
  if (epe->eps != nullptr) {
    return epe->eps;
  }
  auto* s = new ep_set();
  s->epfd = epfd;
  s->shadow = real.epoll_create1(EPOLL_CLOEXEC);
  if (s->shadow < 0) {
    delete s;
    return nullptr;
  }
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = marker(s);
  if (real.epoll_ctl(epfd, EPOLL_CTL_ADD, s->shadow, &ev) != 0) {
    real.close(s->shadow);
    delete s;
    return nullptr;
  }
  epe->eps = s;
  epe->st.store(state::epoll, std::memory_order_release);
  return s;
}

ep_reg* find_reg(ep_set* s, int fd) {
  for (ep_reg* r : s->regs) {
    if (r->fd == fd) {
      return r;
    }
  }
  return nullptr;
}

struct fired {
  ep_reg* r;
  uint32_t tags;
};

// Turns the shadow's ready list into application events (at most `cap`).
int harvest(ep_set* s, epoll_event* out, int cap) {
  if (cap <= 0) {
    return 0;
  }
  epoll_event buf[64];
  int m = real.epoll_wait(s->shadow, buf, std::min(cap, 64), 0);
  if (m <= 0) {
    return 0;
  }
  std::vector<fired> list;
  std::vector<std::pair<entry*, int>> to_drive;
  {
    std::lock_guard<std::mutex> lk(g_ep_mu);
    for (int i = 0; i < m; ++i) {
      auto* r = reinterpret_cast<ep_reg*>(buf[i].data.u64 & ~uintptr_t{3});
      uint32_t tag = static_cast<uint32_t>(buf[i].data.u64 & 3);
      if (s->live.count(r) == 0) {
        continue;  // deleted meanwhile
      }
      auto it = std::find_if(list.begin(), list.end(), [&](const fired& f) { return f.r == r; });
      if (it == list.end()) {
        list.push_back({r, 1u << tag});
        state st = r->e->st.load();
        if (st == state::undecided || st == state::strip || st == state::connecting) {
          r->e->refs.fetch_add(1);
          to_drive.push_back({r->e, r->fd});
        }
      } else {
        it->tags |= 1u << tag;
      }
    }
  }
  // Decisions may run a handshake and re-install registrations: not under the lock.
  for (auto& [e, fd] : to_drive) {
    drive(e, fd);
    fd_put(e);
  }
  int n = 0;
  std::lock_guard<std::mutex> lk(g_ep_mu);
  for (const fired& f : list) {
    ep_reg* r = f.r;
    if (s->live.count(r) == 0 || r->disabled || n >= cap) {
      continue;
    }
    state st = r->e->st.load();
    uint32_t ev = 0;
    if (st == state::smc) {
      auto& c = *r->e->conn;
      if ((f.tags & (1u << tag_sock)) != 0 && c.check_tcp() && c.finished() &&
          r->items[tag_sock] >= 0) {
        real.epoll_ctl(s->shadow, EPOLL_CTL_DEL, r->items[tag_sock], nullptr);
        r->items[tag_sock] = -1;
      }
      bool et = (r->ev.events & EPOLLET) != 0;
      if ((f.tags & (1u << tag_rx)) != 0 && et) {
        c.reset_doorbell(true, true);  // edge-triggered: the next produce rings again
      }
      if ((f.tags & (1u << tag_tx)) != 0 && et) {
        c.reset_doorbell(false, true);
      }
      ev = c.events() & (r->ev.events | EPOLLERR | EPOLLHUP);
      if (!et) {
        // Level-triggered: a doorbell that fired for a state gone again is reset
        // so it does not keep the set ready; armed waiters re-ring it. If the
        // state came back meanwhile, the reset rings it again: the doorbell
        // must stay readable for as long as the application has not taken
        // all of it (it may read part and come back for the rest).
        if ((f.tags & (1u << tag_rx)) != 0 && (ev & EPOLLIN) == 0) {
          ev = c.reset_doorbell(true) & (r->ev.events | EPOLLERR | EPOLLHUP);
        }
        if ((f.tags & (1u << tag_tx)) != 0 && (ev & EPOLLOUT) == 0) {
          ev = c.reset_doorbell(false) & (r->ev.events | EPOLLERR | EPOLLHUP);
        }
      }
      if ((ev & EPOLLIN) != 0 && (r->ev.events & EPOLLRDNORM) != 0) {
        ev |= EPOLLRDNORM;
      }
      if ((ev & EPOLLOUT) != 0 && (r->ev.events & EPOLLWRNORM) != 0) {
        ev |= EPOLLWRNORM;
      }
    } else if (st == state::undecided || st == state::strip) {
      // Still deciding: nothing to read yet; writability is the kernel's.
      if ((r->ev.events & out_bits) != 0) {
        pollfd p{r->fd, POLLOUT, 0};
        if (real.poll(&p, 1, 0) > 0) {
          ev = p.revents & (EPOLLOUT | EPOLLERR | EPOLLHUP);
        }
      }
    } else if (st == state::fresh) {
      pollfd p{r->fd, static_cast<short>(r->ev.events & (in_bits | out_bits)), 0};
      if (real.poll(&p, 1, 0) > 0) {
        ev = static_cast<uint32_t>(p.revents) & (r->ev.events | EPOLLERR | EPOLLHUP);
      }
    }
    if (ev != 0) {
      out[n].events = ev;
      out[n].data = r->ev.data;
      ++n;
      if ((r->ev.events & EPOLLONESHOT) != 0) {
        uninstall(r);
        r->disabled = true;
      }
    }
  }
  return n;
}

int64_t mono_ms() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

using chan_list = std::array<std::shared_ptr<rdma::direct_channel>, max_direct>;

// Sleeps on the application's set and on the channels (k of them) at once,
// under the caller's signal mask, and dispatches what the channels bring.
// Returns ppoll's result: > 0 woken, 0 timed out, -1 with errno.
int sleep_direct(int epfd, chan_list& chans, size_t k, int64_t timeout_ms, const sigset_t* sigmask) {
  pollfd p[1 + max_direct];
  p[0] = {epfd, POLLIN, 0};
  begin_channels(chans.begin(), chans.begin() + k, p + 1);
  timespec ts{static_cast<time_t>(timeout_ms / 1000), static_cast<long>((timeout_ms % 1000) * 1000000)};
  int rc = real.ppoll(p, 1 + k, timeout_ms < 0 ? nullptr : &ts, sigmask);
  end_channels(chans.begin(), chans.begin() + k, p + 1, rc);
  return rc;
}

// The shared body of epoll_wait/epoll_pwait/epoll_pwait2: `wait(ms)` is the
// real call, `sigmask` the one it applies.
template <typename Wait>
int wait_common(int epfd, epoll_event* events, int maxevents, int64_t timeout_ms,
                const sigset_t* sigmask, Wait&& wait) {
  entry_ref epe(epfd);
  ep_set* s = epe ? epe->eps : nullptr;
  if (s == nullptr || maxevents <= 0) {
    return wait(timeout_ms);
  }
  int saved = errno;
  const int64_t deadline = timeout_ms < 0 ? 0 : mono_ms() + timeout_ms;
  for (;;) {
    int64_t left = timeout_ms < 0 ? -1 : std::max<int64_t>(0, deadline - mono_ms());
    chan_list chans;
    size_t k = 0;
    std::vector<std::shared_ptr<rdma::direct_channel>> many;  // too many to watch
    if (left != 0) {
      std::lock_guard<std::mutex> lk(g_ep_mu);
      if (s->chans.size() <= max_direct) {
        for (const ep_chan& c : s->chans) {
          chans[k++] = c.ch;
        }
      } else {
        for (const ep_chan& c : s->chans) {
          many.push_back(c.ch);
        }
      }
    }
    int n;
    if (k == 0) {
      for (const auto& ch : many) {
        ch->arm();  // the engine rings the doorbells
      }
      n = wait(left);
    } else {
      // Look first; spin, then sleep (serving the channels) only while
      // nothing is ready.
      n = wait(0);
      const uint32_t spin = g_confined.load(std::memory_order_relaxed) ? 0 : cfg().spin_us;
      if (n == 0 && spin > 0) {
        const uint32_t us = left < 0 ? spin : static_cast<uint32_t>(std::min<int64_t>(spin, left * 1000));
        spin_channels(chans.begin(), chans.begin() + k, us, [&] {
          n = wait(0);
          return n != 0;
        });
        if (n == 0 && timeout_ms >= 0) {
          left = std::max<int64_t>(0, deadline - mono_ms());  // what the spin left of it
        }
      }
      if (n == 0) {
        int woke = sleep_direct(epfd, chans, k, left, sigmask);
        if (woke < 0) {
          return -1;
        }
        n = wait(0);
        if (n == 0 && woke > 0) {
          continue;  // a channel's news was for connections outside this set
        }
      }
    }
    if (n <= 0) {
      return n;
    }
    int mark = -1;
    for (int i = 0; i < n; ++i) {
      if (events[i].data.u64 == marker(s)) {
        mark = i;
        break;
      }
    }
    if (mark < 0) {
      return n;
    }
    events[mark] = events[n - 1];
    --n;
    try {
      n += harvest(s, events + n, maxevents - n);
    } catch (...) {
    }
    if (n > 0) {
      errno = saved;
      return n;
    }
    if (timeout_ms >= 0 && mono_ms() >= deadline) {
      errno = saved;
      return 0;
    }
  }
}

}  // namespace

void ep_state_changed(entry* e) {
  std::lock_guard<std::mutex> lk(g_ep_mu);
  std::vector<ep_reg*> regs = e->regs;
  for (ep_reg* r : regs) {
    uninstall(r);
    install(r);
  }
}

void ep_forget_entry(entry* e) {
  std::lock_guard<std::mutex> lk(g_ep_mu);
  std::vector<ep_reg*> regs = e->regs;
  for (ep_reg* r : regs) {
    uninstall(r);
    unlink_reg(r);
  }
}

void ep_destroy_set(entry* epe) {
  std::lock_guard<std::mutex> lk(g_ep_mu);
  ep_set* s = epe->eps;
  if (s == nullptr) {
    return;
  }
  std::vector<ep_reg*> regs = s->regs;
  for (ep_reg* r : regs) {
    uninstall(r);
    unlink_reg(r);
  }
  real.close(s->shadow);
  delete s;
  epe->eps = nullptr;
}

void ep_lock() { g_ep_mu.lock(); }
void ep_unlock() { g_ep_mu.unlock(); }

}  // namespace smc::preload

extern "C" {

__attribute__((visibility("default"))) int epoll_create(int size) {
  ensure_init();
  int fd = real.epoll_create(size);
  if (fd >= 0 && g_enabled) {
    int saved = errno;
    fd_fresh(fd);
    errno = saved;
  }
  return fd;
}

__attribute__((visibility("default"))) int epoll_create1(int flags) {
  ensure_init();
  int fd = real.epoll_create1(flags);
  if (fd >= 0 && g_enabled) {
    int saved = errno;
    fd_fresh(fd);
    errno = saved;
  }
  return fd;
}

__attribute__((visibility("default"))) int epoll_ctl(int epfd, int op, int fd,
                                                     epoll_event* event) noexcept {
  ensure_init();
  if (!g_enabled || !fd_maybe(fd)) {
    return real.epoll_ctl(epfd, op, fd, event);
  }
  entry_ref e(fd);
  state st = e ? e->st.load() : state::tcp;
  bool managed = st == state::smc || still_deciding(st) || st == state::fresh;
  int saved = errno;
  try {
    entry* epe = fd_maybe(epfd) ? fd_get(epfd) : nullptr;
    ep_set* s = epe != nullptr ? epe->eps : nullptr;
    if (!managed && (s == nullptr || op == EPOLL_CTL_ADD)) {
      if (epe != nullptr) {
        fd_put(epe);
      }
      return real.epoll_ctl(epfd, op, fd, event);
    }
    // EPOLLEXCLUSIVE as the kernel takes it: on ADD only, with no other
    // bits than these (we wake every set that waits, which it allows: "one
    // or more").
    constexpr uint32_t exclusive_ok = EPOLLIN | EPOLLOUT | EPOLLERR | EPOLLHUP | EPOLLWAKEUP |
                                      EPOLLET | EPOLLEXCLUSIVE;
    const bool bad_exclusive =
        op != EPOLL_CTL_DEL && event != nullptr && (event->events & EPOLLEXCLUSIVE) != 0 &&
        (op == EPOLL_CTL_MOD || (event->events & ~exclusive_ok) != 0);
    if (epfd == fd || (op != EPOLL_CTL_DEL && event == nullptr) || bad_exclusive) {
      if (epe != nullptr) {
        fd_put(epe);
      }
      errno = EINVAL;
      return -1;
    }
    if (s == nullptr) {
      if (op != EPOLL_CTL_ADD) {
        if (epe != nullptr) {
          fd_put(epe);
        }
        return real.epoll_ctl(epfd, op, fd, event);
      }
      if (epe == nullptr) {
        // First SMC socket in this set: record the epoll fd itself.
        epe = new entry();
        epe->st.store(state::epoll);
        epe->refs.fetch_add(1);  // one for the table, one for us
        entry* old = fd_install(epfd, epe);
        if (old != nullptr) {
          fd_put(old);
        }
      }
      std::lock_guard<std::mutex> lk(g_ep_mu);
      s = set_for(epe, epfd);
    }
    if (s == nullptr) {
      fd_put(epe);
      return real.epoll_ctl(epfd, op, fd, event);
    }
    int err = 0;
    {
      std::lock_guard<std::mutex> lk(g_ep_mu);
      ep_reg* r = find_reg(s, fd);
      if (r == nullptr && !managed) {
        err = -1;  // a plain socket in a set we also use: the kernel decides
      } else if (op == EPOLL_CTL_ADD) {
        if (r != nullptr) {
          err = EEXIST;
        } else {
          err = add_reg(s, e.get(), fd, *event);
        }
      } else if (op == EPOLL_CTL_MOD) {
        if (r == nullptr) {
          // Registered in the kernel's set before we knew the socket (or
          // through a path we did not see): take the registration over.
          if (real.epoll_ctl(epfd, EPOLL_CTL_DEL, fd, nullptr) != 0) {
            err = ENOENT;
          } else {
            err = add_reg(s, e.get(), fd, *event);
          }
        } else if ((r->ev.events & EPOLLEXCLUSIVE) != 0) {
          err = EINVAL;  // an exclusive registration cannot be modified
        } else {
          err = modify(r, *event);
        }
      } else if (op == EPOLL_CTL_DEL) {
        if (r == nullptr) {
          err = -1;  // the kernel's, if anyone's
        } else {
          uninstall(r);
          unlink_reg(r);
        }
      } else {
        err = EINVAL;
      }
    }
    fd_put(epe);
    if (err == -1) {
      return real.epoll_ctl(epfd, op, fd, event);
    }
    if (err != 0) {
      errno = err;
      return -1;
    }
    errno = saved;
    return 0;
  } catch (...) {
    errno = ENOMEM;
    return -1;
  }
}

__attribute__((visibility("default"))) int epoll_wait(int epfd, epoll_event* events, int maxevents,
                                                      int timeout) {
  ensure_init();
  if (!g_enabled || !fd_maybe(epfd)) {
    return real.epoll_wait(epfd, events, maxevents, timeout);
  }
  return wait_common(epfd, events, maxevents, timeout, nullptr, [&](int64_t t) {
    return real.epoll_wait(epfd, events, maxevents, static_cast<int>(t));
  });
}

__attribute__((visibility("default"))) int epoll_pwait(int epfd, epoll_event* events,
                                                       int maxevents, int timeout,
                                                       const sigset_t* sigmask) {
  ensure_init();
  if (!g_enabled || !fd_maybe(epfd)) {
    return real.epoll_pwait(epfd, events, maxevents, timeout, sigmask);
  }
  return wait_common(epfd, events, maxevents, timeout, sigmask, [&](int64_t t) {
    return real.epoll_pwait(epfd, events, maxevents, static_cast<int>(t), sigmask);
  });
}

__attribute__((visibility("default"))) int epoll_pwait2(int epfd, epoll_event* events,
                                                        int maxevents, const timespec* ts,
                                                        const sigset_t* sigmask) {
  ensure_init();
  if (!g_enabled || !fd_maybe(epfd)) {
    return real.epoll_pwait2(epfd, events, maxevents, ts, sigmask);
  }
  int64_t ms = ts == nullptr ? -1 : ts->tv_sec * 1000 + (ts->tv_nsec + 999999) / 1000000;
  return wait_common(epfd, events, maxevents, ms, sigmask, [&](int64_t t) {
    timespec left{static_cast<time_t>(t / 1000), static_cast<long>((t % 1000) * 1000000)};
    return real.epoll_pwait2(epfd, events, maxevents, t < 0 ? nullptr : &left, sigmask);
  });
}

}  // extern "C"
