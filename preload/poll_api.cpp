// poll/ppoll/select/pselect over sets that may hold SMC sockets. Sets without
// any recorded fd go straight to the kernel. Otherwise an SMC fd is watched
// through its doorbells (and its TCP socket, for the peer's death), sockets
// still deciding through their TCP socket, and revents are computed from the
// connection state. A wait that sleeps also watches the receive channels of
// its SMC-R connections' link groups and dispatches what they bring itself
// (data_path::channel), as epoll_wait does.
#include <sys/select.h>
#include <time.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <vector>

#include "core/busy_wait.h"
#include "core/wait_policy.h"
#include "core/log.h"
#include "core/stats.h"
#include "preload/preload.h"
#include "rdma/transport.h"

using namespace smc::preload;

extern "C" int __poll_chk(pollfd* fds, nfds_t n, int timeout, size_t fdslen);

namespace {

// epoll_pwait2 failed with ENOSYS or EPERM once (an older kernel, a
// filter that does not know it): not tried again.
std::atomic<bool> g_no_pwait2{false};


struct slot_map {
  entry* e = nullptr;
  int rx = -1;   // index in the kernel set of the rx doorbell
  int tx = -1;   // ... of the tx doorbell
  int sock = -1; // ... of the TCP socket itself
  int one = -1;  // ... of a confined connection's one fd (core::conn::confine)
  int dec = -1;  // ... of a deciding socket's decided_fd
  bool armed_rx = false;
  bool armed_tx = false;
  bool chan_seen = false;  // its channel is in the call's list (or none)
  bool edge = false;       // watched on the thread's wait set (edge-triggered)
  bool fired_rx = false;   // what the wait set reported for it
  bool fired_tx = false;
  bool fired_tcp = false;
  bool whole = false;      // confined: its one fd is the connection's waiter
  // Listed with the connection for the directions armed (core/wake.h),
  // when the call has a wake_fd.
  smc::core::waiter hook;
};

// Arms the directions `rx`/`tx` of m's connection that are not yet, listing
// its hook before (core::conn::set_waiter).
void arm_slot(slot_map& m, bool rx, bool tx, smc::core::wake_fd* wf) {
  auto& c = *m.e->conn;
  rx = rx && !m.armed_rx;
  tx = tx && !m.armed_tx;
  if (!rx && !tx) {
    return;
  }
  if (wf != nullptr) {
    m.hook.wake = wf;
    c.set_waiter(&m.hook, (m.armed_rx || rx ? smc::core::wait_rx : 0u) |
                              (m.armed_tx || tx ? smc::core::wait_tx : 0u));
  }
  if (rx) {
    c.path().arm_rx(1);
    m.armed_rx = true;
  }
  if (tx) {
    c.path().arm_tx(1);
    m.armed_tx = true;
  }
}


// The distinct receive channels of a call's SMC-R connections: `v` the ones
// the call serves itself (none if there are more than max_direct), `all`.
struct chan_list {
  std::vector<std::shared_ptr<smc::rdma::direct_channel>> v;
  std::vector<std::shared_ptr<smc::rdma::direct_channel>> all;

  void add(std::shared_ptr<smc::rdma::direct_channel> ch) {
    if (!ch) {
      return;
    }
    const int fd = ch->fd();
    for (const auto& c : all) {
      if (c->fd() == fd) {
        return;
      }
    }
    all.push_back(std::move(ch));
    if (all.size() <= max_direct) {
      v = all;
    } else {
      v.clear();
    }
  }
};

constexpr short in_mask = POLLIN | POLLRDNORM | POLLRDHUP | POLLPRI;
constexpr short out_mask = POLLOUT | POLLWRNORM;

short smc_revents(entry* e, short want) {
  auto ev = static_cast<short>(e->conn->events());
  short r = static_cast<short>(ev & (want | POLLERR | POLLHUP));
  if ((ev & POLLIN) && (want & POLLRDNORM)) {
    r |= POLLRDNORM;
  }
  if ((ev & POLLOUT) && (want & POLLWRNORM)) {
    r |= POLLWRNORM;
  }
  return r;
}

// A call on same-host SMC sockets only: what their state in memory says,
// busy-polled for up to SMC_SPIN_US when nothing is ready and the caller
// would wait (a request-response peer's answer often comes within
// microseconds). The number of fds ready, 0 if none: then the kernel is
// asked (declared waiters, doorbells, and the TCP sockets, which are what
// tell a dead peer).
int from_memory(pollfd* fds, nfds_t n, const std::vector<slot_map>& map, int64_t timeout_ns) {
  for (nfds_t i = 0; i < n; ++i) {
    const entry* e = map[i].e;
    if (e == nullptr || e->st.load(std::memory_order_acquire) != state::smc ||
        e->conn->path().transport() != smc::rdma::kind::shm) {
      return 0;
    }
  }
  auto look = [&] {
    int ready = 0;
    for (nfds_t i = 0; i < n; ++i) {
      fds[i].revents = smc_revents(map[i].e, fds[i].events);
      ready += fds[i].revents != 0 ? 1 : 0;
    }
    return ready;
  };
  int ready = look();
  const uint32_t us = smc::core::spin_budget_us(
      cfg().spin_us, g_confined.load(std::memory_order_relaxed), timeout_ns);
  if (ready == 0 && us > 0) {
    smc::core::busy_wait(us, [] { return false; }, [&] { return (ready = look()) > 0; });
  }
  return ready;
}

// A table of `n` entries, made once per thread; false if there is no
// memory for it (nothing thrown: a wait in progress has waiters listed).
bool slot_table(std::vector<nfds_t>& t, size_t n) noexcept {
  try {
    if (t.size() < n) {
      t.resize(n);
    }
    return true;
  } catch (...) {
    return false;
  }
}

// The core loop. timeout_ns < 0 = infinite.
int poll_slow(pollfd* fds, nfds_t n, int64_t timeout_ns, const sigset_t* sigmask) {
  std::vector<slot_map> map(n);
  std::vector<pollfd> k;
  k.reserve(n + 8);
  chan_list chans;
  for (nfds_t i = 0; i < n; ++i) {
    if (fd_maybe(fds[i].fd)) {
      map[i].e = fd_get(fds[i].fd);
      if (map[i].e != nullptr && map[i].e->st.load() == state::epoll) {
        ep_expose(map[i].e);  // its kernel readiness is read here: keep it true
      }
    }
  }
  if (const int ready = from_memory(fds, n, map, timeout_ns); ready > 0) {
    smc::core::stats::count_poll_from_memory();
    for (auto& m : map) {
      fd_put(m.e);
    }
    return ready;
  }
  const smc::core::wait_deadline deadline(timeout_ns);
  int result = 0;
  // The thread's wake_fd, for the state changes connections make themselves
  // (core/wake.h): made when a wait first needs it, never in a confined
  // process (it makes no new fds).
  smc::core::wake_fd* wf = nullptr;
  bool wf_tried = g_confined.load(std::memory_order_relaxed);
  // A call on same-host connections (up to wait_set::max_entries, and any
  // kernel fds) sleeps on the thread's wait set (core/wake.h) for them,
  // an entry of it for each:
  // their doorbells are watched edge-triggered there, so a ring that woke
  // an earlier wait, still queued, wakes this one no more (nor has to be
  // drained for it to sleep).
  smc::core::wait_set* ws = nullptr;
  bool ws_tried = false;
  constexpr size_t max_edge = smc::core::wait_set::max_entries;
  // The slot of each entry of this round (its first, for a connection
  // listed twice).
  static thread_local std::vector<nfds_t> slot_of;
  // (Not a confined connection's, which may not make the calls.)
  auto on_wait_set = [](const entry* e) {
    return e != nullptr && e->st.load(std::memory_order_acquire) == state::smc &&
           !e->conn->confined() && e->conn->path().transport() == smc::rdma::kind::shm;
  };
  for (;;) {
    k.clear();
    int ready = 0;
    bool deciding = false;
    bool sliced = false;
    bool again = false;
    size_t eligible = 0;
    for (nfds_t i = 0; i < n && !g_confined.load(std::memory_order_relaxed); ++i) {
      eligible += on_wait_set(map[i].e) ? 1 : 0;
    }
    const bool use_ws = eligible > 0 && eligible <= max_edge;
    bool ws_ready = false;  // the wait set watches the wake fd this round
    bool edge = false;      // any slot on it
    if (ws != nullptr) {
      ws->begin_round();
    }
    for (nfds_t i = 0; i < n; ++i) {
      slot_map& m = map[i];
      m.rx = m.tx = m.sock = m.dec = -1;
      fds[i].revents = 0;
      state s = m.e != nullptr ? m.e->st.load(std::memory_order_acquire) : state::tcp;
      if (s == state::undecided || s == state::strip || s == state::connecting ||
          s == state::stepping) {
        s = drive(m.e, fds[i].fd);
      }
      if (s == state::smc) {
        auto& c = *m.e->conn;
        m.one = -1;
        m.whole = false;
        if (!wf_tried && !c.confined()) {
          wf_tried = true;
          wf = smc::core::thread_wake_fd();
        }
        arm_slot(m, (fds[i].events & in_mask) != 0, (fds[i].events & out_mask) != 0,
                 c.confined() ? c.confined_wake() : wf);
        m.edge = false;
        if (use_ws && wf != nullptr && on_wait_set(m.e)) {
          if (!ws_tried) {
            ws_tried = true;
            ws = smc::core::thread_wait_set();
            if (ws != nullptr) {
              ws->begin_round();
            }
          }
          if (!ws_ready && ws != nullptr && slot_table(slot_of, max_edge) &&
              ws->watch_wake(wf->fd())) {
            ws_ready = true;
          }
          bool listed_twice = false;
          const int j = ws_ready ? c.watch_among(*ws, listed_twice) : -1;
          if (j >= 0) {
            if (!listed_twice) {
              slot_of[static_cast<size_t>(j)] = i;
            }
            m.edge = edge = true;
          }
        }
        if (m.edge) {
          // Its watches were kept from an earlier wait: a rung flag still
          // up would hold the next ring back. (Down before the look below.)
          const smc::core::waiter* self = m.hook.in != nullptr ? &m.hook : nullptr;
          if (m.armed_rx) {
            c.rearm_doorbell(true, true, self);
          }
          if (m.armed_tx) {
            c.rearm_doorbell(false, true, self);
          }
        } else {
          if ((fds[i].events & in_mask) != 0) {
            m.rx = static_cast<int>(k.size());
            k.push_back({c.path().rx_fd(), POLLIN, 0});
          }
          if ((fds[i].events & out_mask) != 0) {
            m.tx = static_cast<int>(k.size());
            k.push_back({c.path().tx_fd(), POLLIN, 0});
          }
          if (!c.finished()) {
            m.sock = static_cast<int>(k.size());
            k.push_back({fds[i].fd, POLLIN | POLLRDHUP, 0});
          }
        }
        if (c.confined()) {
          // One fd for the connection, as the application has one here (its
          // limits may allow no more): the waiter, or a doorbell, with a
          // look at the TCP socket every 100 ms.
          const int first = m.rx >= 0 ? m.rx : (m.tx >= 0 ? m.tx : m.sock);
          // Not the waiter while a doorbell the call does not watch has a
          // waiter of its own (its level must hold for that one), or its
          // direction ended (it may be shut, readable for good): either
          // would keep the waiter readable.
          const bool whole = c.waiter_fd() >= 0 && !c.finished() &&
                             (m.armed_rx || (c.path().rx_waiters() == 0 && !c.ended(true))) &&
                             (m.armed_tx || (c.path().tx_waiters() == 0 && !c.ended(false)));
          const pollfd one{whole ? c.waiter_fd() : k[first].fd, POLLIN, 0};
          k.resize(static_cast<size_t>(first));
          m.rx = m.tx = m.sock = -1;
          m.one = static_cast<int>(k.size());
          m.whole = whole;
          k.push_back(one);
          sliced = sliced || !whole;
          // Listed with the connection's own wake fd, which its waiter
          // watches, while the call polls the waiter; off the list while it
          // polls a doorbell alone (what the look below sees, or the next
          // slice).
          const uint32_t dirs = whole ? (m.armed_rx ? smc::core::wait_rx : 0u) |
                                            (m.armed_tx ? smc::core::wait_tx : 0u)
                                      : 0u;
          if (c.confined_wake() != nullptr && m.hook.dirs != dirs) {
            m.hook.wake = c.confined_wake();
            c.set_waiter(&m.hook, dirs);
          }
          m.chan_seen = true;  // a confined wait serves no channel itself
        }
        if ((m.armed_rx || m.armed_tx) && m.hook.in == nullptr &&
            c.path().transport() == smc::rdma::kind::shm) {
          // Not listed (no wake fd could be had): nothing but the peer
          // rings its doorbells, so what it changes by itself (an end, a
          // drain's news) is looked at every 100 ms.
          sliced = true;
        }
        if (!m.chan_seen && (m.armed_rx || m.armed_tx)) {
          m.chan_seen = true;
          chans.add(c.path().channel());
        }
        // Checked after arming: a peer that moved before it saw our waiter
        // is seen here (the doorbell protocol's Dekker order).
        fds[i].revents = smc_revents(m.e, fds[i].events);
      } else if (s == state::deciding) {
        // Nothing to report until the background decision ends; then the
        // next round looks at the socket as what it became.
        const int wfd = decided_wait_fd(m.e);
        m.dec = static_cast<int>(k.size());
        k.push_back({wfd, POLLIN, 0});
        if (wfd < 0) {
          // Decided just now: look again at once; no eventfd: in a while.
          (m.e->st.load() == state::deciding ? sliced : again) = true;
        }
      } else if (s == state::undecided || s == state::strip || s == state::connecting ||
                 s == state::stepping) {
        // Readable TCP means the deciding bytes arrived; writes are plain TCP
        // (between the steps of a handshake, not yet: only its bytes count).
        deciding = true;
        m.sock = static_cast<int>(k.size());
        short extra = s == state::connecting ? POLLOUT : POLLIN;  // what moves the decision on
        k.push_back({fds[i].fd,
                     static_cast<short>((s == state::stepping ? 0 : fds[i].events) | extra), 0});
      } else {
        m.sock = static_cast<int>(k.size());
        k.push_back({fds[i].fd, fds[i].events, 0});
      }
      if (fds[i].revents != 0) {
        ++ready;
      }
    }
    // Another thread may settle a deciding socket (and consume the bytes
    // that made it readable), a confined connection without a waiter has
    // its TCP socket looked at, an unlisted one its state: again at least
    // every 100 ms.
    constexpr int64_t look_ns = int64_t{smc::core::look_every_ms} * 1000000;
    int64_t left_ns = smc::core::sleep_slice(ready > 0 || again ? 0 : deadline.left_ns(), look_ns,
                                             deciding || sliced);
    int kn = 0;
    // (What does not fit stays with the wait set for the next look.)
    constexpr int max_hev = 3 * 64 + 1;
    epoll_event hev[max_hev];
    int hn = -2;  // the wait set's events, if they were taken while sleeping
    bool lost = false;
    // The wake fd, or the wait set that watches it (and the edge slots).
    const size_t wi = k.size();
    if (edge) {
      k.push_back({ws->fd(), POLLIN, 0});
    } else if (wf != nullptr) {
      k.push_back({wf->fd(), POLLIN, 0});
    }
    const size_t base = k.size();
    const uint32_t us = smc::core::spin_budget_us(
        cfg().spin_us, g_confined.load(std::memory_order_relaxed), left_ns);
    if (us > 0 && !chans.v.empty()) {
      // Busy-poll the receive channels first; the doorbells they ring are in
      // the kernel set.
      timespec zero{0, 0};
      spin_channels(chans.v.begin(), chans.v.end(), us, [&] {
        kn = real.ppoll(k.data(), base, &zero, sigmask);
        return kn != 0;
      });
      if (kn == 0 && left_ns > 0 && timeout_ns >= 0) {
        // What the spin left of the caller's timeout.
        left_ns = std::min(left_ns, deadline.left_ns());
      }
    }
    if (kn == 0) {
      // Sleeping: on the receive channels too, served right after (-1: ignored).
      if (left_ns != 0) {
        k.resize(base + chans.v.size());
        begin_channels(chans.v.begin(), chans.v.end(), k.data() + base);
        if (chans.v.empty()) {
          for (const auto& ch : chans.all) {
            ch->arm();  // too many to watch: the engine rings the doorbells
          }
        }
      }
      timespec ts{static_cast<time_t>(left_ns / 1000000000), static_cast<long>(left_ns % 1000000000)};
      if (edge && wi == 0 && k.size() == 1) {
        // The wait set alone: sleep on it, and take its events in the same
        // call (epoll_pwait2 keeps the caller's nanoseconds; a kernel or a
        // filter without it gets epoll_pwait, in milliseconds rounded up).
        hn = -1;
        errno = ENOSYS;
        if (real.epoll_pwait2 != nullptr && !g_no_pwait2.load(std::memory_order_relaxed)) {
          hn = real.epoll_pwait2(ws->fd(), hev, max_hev, left_ns < 0 ? nullptr : &ts, sigmask);
          if (hn < 0 && (errno == ENOSYS || errno == EPERM)) {
            g_no_pwait2.store(true, std::memory_order_relaxed);
          }
        }
        if (hn < 0 && (errno == ENOSYS || errno == EPERM)) {
          const int ms = left_ns < 0 ? -1
                                     : static_cast<int>(std::min<int64_t>((left_ns + 999999) / 1000000,
                                                                          INT_MAX));
          hn = real.epoll_pwait(ws->fd(), hev, max_hev, ms, sigmask);
        }
        if (hn < 0 && (errno == EBADF || errno == EINVAL)) {
          lost = true;  // (closed under us: another one next time)
          hn = 0;
        }
        kn = hn;
        if (hn > 0 || lost) {
          kn = 1;
          k[wi].revents = POLLIN;
        }
      } else {
        kn = real.ppoll(k.data(), k.size(), left_ns < 0 ? nullptr : &ts, sigmask);
      }
    }
    if (k.size() > base) {
      end_channels(chans.v.begin(), chans.v.end(), k.data() + base, kn);
    }
    if (kn < 0) {
      result = -1;
      break;
    }
    for (auto& m : map) {
      m.fired_rx = m.fired_tx = m.fired_tcp = false;
    }
    if (edge && kn > 0 && k[wi].revents != 0) {
      // What the wait set has (taken, so that it is quiet again).
      if (hn == -2) {
        hn = real.epoll_wait(ws->fd(), hev, max_hev, 0);
        lost = hn < 0 && (errno == EBADF || errno == EINVAL);
      }
      if (lost) {
        smc::core::lose_thread_wait_set();  // (closed under us: another one next time)
        ws = nullptr;
        ws_tried = false;
        for (auto& m : map) {
          m.fired_rx = m.fired_tx = m.fired_tcp = m.edge;  // (look at everything)
        }
      }
      using smc::core::wait_set;
      for (int j = 0; j < hn; ++j) {
        const uint64_t tag = hev[j].data.u64;
        if (tag == wait_set::tag_wake) {
          wf->consume();  // (before the states are looked at below)
          continue;
        }
        const size_t e = wait_set::entry_of(tag);
        if (ws == nullptr || !ws->taken(e)) {
          continue;  // a watch kept from an earlier call, for another connection
        }
        slot_map& m = map[slot_of[e]];
        switch (wait_set::kind_of(tag)) {
          case wait_set::tag_rx:
            m.fired_rx = true;
            break;
          case wait_set::tag_tx:
            m.fired_tx = true;
            break;
          default:
            m.fired_tcp = true;
            break;
        }
      }
    } else if (!edge && wf != nullptr && kn > 0 && k[wi].revents != 0) {
      wf->consume();  // (before the states are looked at below)
    }
    ready = 0;
    bool decided = false;
    for (nfds_t i = 0; i < n; ++i) {
      slot_map& m = map[i];
      state s = m.e != nullptr ? m.e->st.load(std::memory_order_acquire) : state::tcp;
      if (m.dec >= 0) {
        // Decided meanwhile or not: nothing to report for it this round.
      } else if (s == state::smc) {
        auto& c = *m.e->conn;
        if ((m.sock >= 0 && k[m.sock].revents != 0) || m.one >= 0 || (m.edge && m.fired_tcp)) {
          c.check_tcp();  // the peer's TCP end closed: it is gone
        }
        fds[i].revents = smc_revents(m.e, fds[i].events);
        if (m.edge) {
          // A ring that brought nothing the call waits for is drained (a
          // peer that floods is caught here); one that did stays queued.
          const smc::core::waiter* self = m.hook.in != nullptr ? &m.hook : nullptr;
          if (m.fired_rx && m.armed_rx && (fds[i].revents & POLLIN) == 0) {
            c.reset_doorbell(true, false, self);
          }
          if (m.fired_tx && m.armed_tx && (fds[i].revents & POLLOUT) == 0) {
            c.reset_doorbell(false, false, self);
          }
          fds[i].revents = smc_revents(m.e, fds[i].events);
        }
        if (m.one >= 0 && m.whole && k[m.one].revents != 0 && c.confined_wake() != nullptr) {
          c.confined_wake()->clear();  // (looked at again just below)
          fds[i].revents = smc_revents(m.e, fds[i].events);
        }
        if (m.one >= 0 && k[m.one].revents != 0 && fds[i].revents == 0) {
          // What rang is nothing the caller waits for: quiet the doorbells
          // (one it waits on rings again if its condition holds, another if
          // someone else waits on it).
          for (bool rx : {true, false}) {
            if (rx ? m.armed_rx : m.armed_tx) {
              c.reset_doorbell(rx);
            } else {
              c.quiet_doorbell(rx);
            }
          }
          fds[i].revents = smc_revents(m.e, fds[i].events);
        }
        // A doorbell that fired for a state already gone again: reset it.
        const smc::core::waiter* self = m.hook.in != nullptr ? &m.hook : nullptr;
        if (m.rx >= 0 && k[m.rx].revents != 0 && (fds[i].revents & POLLIN) == 0) {
          c.reset_doorbell(true, false, self);
          fds[i].revents = smc_revents(m.e, fds[i].events);
        }
        if (m.tx >= 0 && k[m.tx].revents != 0 && (fds[i].revents & POLLOUT) == 0) {
          c.reset_doorbell(false, false, self);
          fds[i].revents = smc_revents(m.e, fds[i].events);
        }
      } else if (m.sock >= 0) {
        short kr = k[m.sock].revents;
        if (s == state::undecided || s == state::strip || s == state::connecting ||
            in_handshake(s)) {
          if (kr != 0) {
            s = drive(m.e, fds[i].fd, static_cast<uint16_t>(kr));
          }
          if (s == state::smc) {
            fds[i].revents = smc_revents(m.e, fds[i].events);
          } else if (s == state::undecided || s == state::strip) {
            // Still waiting for the rest of a CLC message: only writability counts.
            fds[i].revents = static_cast<short>(kr & (fds[i].events & out_mask));
          } else if (s == state::connecting || in_handshake(s)) {
            // (Deciding now: the next round waits for the decision; the
            // kernel's readiness is the handshake's bytes, not the caller's.)
            fds[i].revents = 0;
          } else {
            fds[i].revents = static_cast<short>(kr & (fds[i].events | POLLERR | POLLHUP | POLLNVAL));
          }
        } else {
          fds[i].revents = kr;
        }
        if (fds[i].revents != 0 && m.e != nullptr && s == state::tcp && m.e->tcp_err.load() != 0) {
          fds[i].revents |= POLLERR;  // the error owed to the application (entry::tcp_err)
        }
      }
      if (fds[i].revents != 0) {
        ++ready;
      }
      if (m.dec >= 0 && s != state::deciding) {
        decided = true;
      }
    }
    if (ready > 0) {
      result = ready;
      break;
    }
    if (decided) {
      // A socket changed what it is: look again (its readiness is the new
      // state's), within the caller's timeout.
      continue;
    }
    if (deadline.passed()) {
      result = 0;
      break;
    }
  }
  int saved = errno;
  for (auto& m : map) {
    if (m.e != nullptr) {
      if (m.armed_rx) {
        m.e->conn->path().arm_rx(-1);
      }
      if (m.armed_tx) {
        m.e->conn->path().arm_tx(-1);
      }
      if (m.hook.in != nullptr) {
        m.e->conn->set_waiter(&m.hook, 0);
      }
      fd_put(m.e);
    }
  }
  errno = saved;
  return result;
}

bool any_recorded(const pollfd* fds, nfds_t n) {
  for (nfds_t i = 0; i < n; ++i) {
    if (fd_maybe(fds[i].fd)) {
      return true;
    }
  }
  return false;
}

using smc::core::ms_to_ns;
using smc::core::timespec_ns;

int poll_entry(pollfd* fds, nfds_t n, int64_t timeout_ns, const sigset_t* sigmask) {
  int saved = errno;
  try {
    int r = poll_slow(fds, n, timeout_ns, sigmask);
    if (r >= 0) {
      errno = saved;
    }
    return r;
  } catch (...) {
    errno = ENOMEM;
    return -1;
  }
}

// select() in terms of poll: only when a recorded fd is in one of the sets.
int select_common(int nfds, fd_set* r, fd_set* w, fd_set* x, int64_t timeout_ns,
                  const sigset_t* sigmask, bool* handled) {
  *handled = false;
  if (nfds <= 0 || nfds > FD_SETSIZE) {
    return 0;
  }
  bool any = false;
  for (int fd = 0; fd < nfds && !any; ++fd) {
    if ((r && FD_ISSET(fd, r)) || (w && FD_ISSET(fd, w)) || (x && FD_ISSET(fd, x))) {
      any = fd_maybe(fd);
    }
  }
  if (!any) {
    return 0;
  }
  *handled = true;
  std::vector<pollfd> p;
  for (int fd = 0; fd < nfds; ++fd) {
    short ev = 0;
    if (r && FD_ISSET(fd, r)) {
      ev |= POLLIN;
    }
    if (w && FD_ISSET(fd, w)) {
      ev |= POLLOUT;
    }
    if (x && FD_ISSET(fd, x)) {
      ev |= POLLPRI;
    }
    if (ev != 0) {
      p.push_back({fd, ev, 0});
    }
  }
  int rc = poll_entry(p.data(), p.size(), timeout_ns, sigmask);
  if (rc < 0) {
    return rc;
  }
  for (const auto& q : p) {
    if ((q.revents & POLLNVAL) != 0) {
      errno = EBADF;
      return -1;
    }
  }
  if (r) FD_ZERO(r);
  if (w) FD_ZERO(w);
  if (x) FD_ZERO(x);
  int count = 0;
  for (const auto& q : p) {
    if (r && (q.events & POLLIN) && (q.revents & (POLLIN | POLLHUP | POLLERR))) {
      FD_SET(q.fd, r);
      ++count;
    }
    if (w && (q.events & POLLOUT) && (q.revents & (POLLOUT | POLLERR))) {
      FD_SET(q.fd, w);
      ++count;
    }
    if (x && (q.events & POLLPRI) && (q.revents & POLLPRI)) {
      FD_SET(q.fd, x);
      ++count;
    }
  }
  return count;
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) int poll(pollfd* fds, nfds_t n, int timeout) {
  ensure_init();
  if (!g_enabled || !any_recorded(fds, n)) {
    return real.poll(fds, n, timeout);
  }
  return poll_entry(fds, n, ms_to_ns(timeout), nullptr);
}

__attribute__((visibility("default"))) int __poll_chk(pollfd* fds, nfds_t n, int timeout,
                                                      size_t fdslen) {
  ensure_init();
  if (!g_enabled || fdslen / sizeof(pollfd) < n || !any_recorded(fds, n)) {
    return real.poll_chk(fds, n, timeout, fdslen);
  }
  return poll_entry(fds, n, ms_to_ns(timeout), nullptr);
}

__attribute__((visibility("default"))) int ppoll(pollfd* fds, nfds_t n, const timespec* ts,
                                                 const sigset_t* sigmask) {
  ensure_init();
  if (!g_enabled || !any_recorded(fds, n)) {
    return real.ppoll(fds, n, ts, sigmask);
  }
  return poll_entry(fds, n, timespec_ns(ts), sigmask);
}

__attribute__((visibility("default"))) int select(int nfds, fd_set* r, fd_set* w, fd_set* x,
                                                  timeval* tv) {
  ensure_init();
  if (g_enabled) {
    bool handled = false;
    timespec ts{};
    if (tv != nullptr) {
      ts = {tv->tv_sec, static_cast<long>(tv->tv_usec) * 1000};
    }
    const int64_t ns = timespec_ns(tv == nullptr ? nullptr : &ts);
    const smc::core::wait_deadline deadline(ns);
    int rc = select_common(nfds, r, w, x, ns, nullptr, &handled);
    if (handled) {
      if (tv != nullptr && rc >= 0) {  // Linux select reports the time left
        const int64_t left = deadline.left_ns();
        tv->tv_sec = static_cast<time_t>(left / 1000000000);
        tv->tv_usec = static_cast<suseconds_t>((left % 1000000000) / 1000);
      }
      return rc;
    }
  }
  return real.select(nfds, r, w, x, tv);
}

__attribute__((visibility("default"))) int pselect(int nfds, fd_set* r, fd_set* w, fd_set* x,
                                                   const timespec* ts, const sigset_t* sigmask) {
  ensure_init();
  if (g_enabled) {
    bool handled = false;
    int rc = select_common(nfds, r, w, x, timespec_ns(ts), sigmask, &handled);
    if (handled) {
      return rc;
    }
  }
  return real.pselect(nfds, r, w, x, ts, sigmask);
}

}  // extern "C"
