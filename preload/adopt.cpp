// Sockets that come from elsewhere: inherited across exec(), received in an
// SCM_RIGHTS message, taken with pidfd_getfd(); and the SMC connections a
// message passes to another process (core/handoff).
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "core/handoff.h"
#include "core/log.h"
#include "core/stats.h"
#include "core/tcp_option.h"
#include "preload/preload.h"
#include "rdma/sys.h"

namespace smc::preload {

namespace {

void adopt_socket(int fd, bool received, const struct stat& st);

}  // namespace

void adopt_socket(int fd, bool received) {
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode) || fd_maybe(fd)) {
    return;
  }
  adopt_socket(fd, received, st);
}

void adopt_sockets(const std::vector<int>& fds) {
  // One socket may come on several fds (inetd style: the connection on 0
  // and 1): they share one entry, as dup()s do.
  std::vector<std::pair<struct stat, int>> seen;
  for (int fd : fds) {
    struct stat st {};
    if (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode) || fd_maybe(fd)) {
      continue;
    }
    auto same = std::find_if(seen.begin(), seen.end(), [&](const auto& p) {
      return p.first.st_dev == st.st_dev && p.first.st_ino == st.st_ino;
    });
    if (same == seen.end()) {
      adopt_socket(fd, false, st);
      if (fd_maybe(fd)) {
        seen.emplace_back(st, fd);
      }
      continue;
    }
    if (entry* e = fd_get(same->second); e != nullptr) {
      e->nfds.fetch_add(1);
      if (entry* old = fd_install(fd, e); old != nullptr) {
        fd_put(old);
      }
    }
  }
}

namespace {

void adopt_socket(int fd, bool received, const struct stat&) {
  int domain = 0;
  int type = 0;
  int proto = 0;
  int listening = 0;
  socklen_t l = sizeof domain;
  if (real.getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &l) != 0 ||
      (domain != AF_INET && domain != AF_INET6)) {
    return;
  }
  l = sizeof type;
  if (real.getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l) != 0 || type != SOCK_STREAM) {
    return;
  }
  l = sizeof proto;
  if (real.getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &l) != 0 || proto != IPPROTO_TCP) {
    return;
  }
  l = sizeof listening;
  if (real.getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &l) != 0) {
    return;
  }
  sockaddr_storage peer{};
  socklen_t pl = sizeof peer;
  if (listening == 0 && getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &pl) != 0) {
    return;  // neither listening nor connected: nothing to take over
  }
  auto* e = new (std::nothrow) entry();
  if (e == nullptr) {
    return;
  }
  e->family = domain;
  e->passed.store(true);  // (another process holds it, or did)
  e->marked = true;       // (if it is SMC: by the process it came from)
  uint32_t mark = 0;
  l = sizeof mark;
  const bool was_smc = listening == 0 &&
                       real.getsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &mark, &l) == 0 &&
                       core::handoff::is_mark(mark);
  if (listening != 0) {
    e->st.store(state::listener, std::memory_order_release);
  } else if (was_smc) {
    linger lg{};
    l = sizeof lg;
    e->linger0 = real.getsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, &l) == 0 && lg.l_onoff != 0 &&
                 lg.l_linger == 0;
    try {
      if (received) {
        e->conn = core::handoff::take(fd, cfg().spin_us);
      } else {
        SMC_LOG(warn, "fd %d: an SMC connection inherited across exec() cannot be used in this "
                      "program image (its buffers stayed in the previous one): it reads as reset",
                fd);
        core::stats::count_handoff(core::stats::handoff::reset);
      }
      if (!e->conn) {
        // It reads as reset here, rather than as a TCP socket on which
        // nothing ever arrives (or the peer's SMC bytes never meant for TCP).
        if (auto foreign = core::make_foreign_path()) {
          e->conn = std::make_shared<core::conn>(std::move(foreign), fd, 0);
        }
      }
    } catch (...) {
      e->conn.reset();
    }
    if (!e->conn) {
      delete e;
      return;
    }
    e->st.store(state::smc, std::memory_order_release);
  } else {
    // Not believed, whatever SMC_PEERS says: this side may well be the
    // client of the connection, and a first write must not wait for a
    // Proposal that only a client sends.
    e->st.store(state::undecided, std::memory_order_release);
  }
  if (entry* old = fd_install(fd, e); old != nullptr) {
    fd_put(old);
  }
  if (listening != 0 && cfg().transport != config::transport_mode::tcp) {
    core::tcp_option::advertise(fd);
  }
  SMC_LOG(debug, "fd %d: %s TCP %s, recorded", fd, received ? "received" : "inherited",
          listening != 0 ? "listener" : "connection");
}

}  // namespace

void adopt_received(const msghdr* msg) {
  rdma::for_each_passed_fd(msg, [](int fd) {
    // A new fd number: whatever we recorded for it was closed behind our back.
    fd_fresh(fd);
    adopt_socket(fd, true);
  });
}

void offer_passed(const msghdr* msg, std::vector<uint64_t>& offers) {
  rdma::for_each_passed_fd(msg, [&](int fd) {
    if (!fd_maybe(fd)) {
      return;
    }
    entry_ref e(fd);
    if (e) {
      e->passed.store(true);  // (it may live on in the receiver)
      leave_untouched(e.get());  // (a look under way ends first: then it is deciding)
    }
    if (e && in_handshake(e->st.load(std::memory_order_acquire))) {
      // The receiver must find it decided: SMC (offered) or TCP.
      await_decision(e.get(), fd, -1);  // bounded by the handshake's own timeouts
    }
    if (!e || e->st.load(std::memory_order_acquire) != state::smc || !e->conn) {
      return;
    }
    marked_by(e.get(), [&] {
      if (uint64_t id = core::handoff::offer(e->conn, fd); id != 0) {
        offers.push_back(id);
      }
    });
  });
}

namespace {

// Marks are rare (a pass, a program started): one lock for all of them,
// so that a mark of ours never lands over an offer's.
std::mutex g_mark_mu;
std::atomic<bool> g_mark_all{false};

}  // namespace

void mark_smc(entry* e, int fd) {
  std::lock_guard<std::mutex> lk(g_mark_mu);
  if (!e->marked) {
    const uint32_t mark = core::handoff::mark_base;
    real.setsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &mark, sizeof mark);
    e->marked = true;
  }
}

bool marking_all() { return g_mark_all.load(std::memory_order_seq_cst); }

void mark_for_exec() {
  if (!g_enabled || g_mark_all.exchange(true, std::memory_order_seq_cst)) {
    return;  // (from the first one on, every connection marks itself)
  }
  const int saved = errno;
  fd_for_each([](int fd, entry* e) {
    if (e->st.load(std::memory_order_seq_cst) == state::smc) {
      mark_smc(e, fd);
    }
  });
  errno = saved;
}

void marked_by(entry* e, const std::function<void()>& f) {
  std::lock_guard<std::mutex> lk(g_mark_mu);
  f();
  e->marked = true;
}

void marks_lock() { g_mark_mu.lock(); }
void marks_unlock() { g_mark_mu.unlock(); }

void withdraw_offers(const std::vector<uint64_t>& offers) {
  for (uint64_t id : offers) {
    core::handoff::withdraw(id);
  }
}

}  // namespace smc::preload
