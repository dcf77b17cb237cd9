// smc_stall: a single-threaded event-loop server must keep serving while one
// client stalls its CLC handshake (the acceptance criterion "a silent
// Proposal, a partial Proposal, a silent Confirm, a slow rendezvous: an
// ordinary client of the same single-threaded server is answered within
// 0.5 s each time"). The server side of the handshake must never run inside
// the application's poll/epoll_wait/read where that call must not block.
//
//   smc_stall server [--addr A] [--port P] [--portfile F] --loop poll|epoll [--count N]
//       one thread, a non-blocking listener; accepts everything and echoes
//       every byte back on its connection (closing it at EOF or an error),
//       watching all sockets with poll() or a level-triggered epoll set.
//       Plain socket calls only: run under the preload. With --count N it
//       exits 0 ("ok served N") once N connections have ended.
//   smc_stall attack [--addr A] --port P --kind KIND [--hold-ms T]
//       run WITHOUT the preload: a raw TCP client speaking CLC through the
//       project's own codec (a same-host shm Proposal, exactly as
//       client_handshake builds it) that then misbehaves:
//         silent_proposal   the whole Proposal, then nothing
//         partial_proposal  the first half of the Proposal, then nothing
//         silent_confirm    the Proposal, reads the Accept, then nothing
//                           (no rendezvous, no Confirm)
//         slow_rendezvous   the Proposal, reads the Accept, connects to the
//                           server's shm rendezvous socket, sends nothing
//       prints "attack KIND in place", holds everything open for T ms
//       (default 3000) without sending or reading, and exits 0.
//   smc_stall silent [--addr A] [--port P] [--portfile F] [--hold-ms T]
//       run WITHOUT the preload: a server that accepts one connection,
//       reads a whole CLC message from it (the client's Proposal), prints
//       "silent in place", then answers nothing for T ms and exits 0.
//   smc_stall client [--addr A] --port P --silent-port Q --loop poll|epoll [--count N]
//       an event-loop client (run under the preload, with 127.0.0.1 in
//       SMC_PEERS): one thread, non-blocking sockets; first a connect to
//       the silent server Q (its handshake then waits for an Accept that
//       never comes), then N rounds (default 3) of connect, 64 bytes out and
//       back verified, close against the echo server P, all in one poll()
//       or epoll set with the silent socket; each round must end within
//       500 ms ("client ok max_ms=X"). The silent connection must not
//       hold up the loop.
//   smc_stall probe [--addr A] --port P [--count N]
//       an ordinary client (run under the preload): N rounds (default 3) of
//       connect, 64 bytes out, the 64 echoed bytes back and verified, close;
//       prints "probe round=I ms=X" per round (connect to last byte) and
//       "probe ok max_ms=X", or fails if a round took over 500 ms.
//
// Every role is bounded by an alarm() watchdog (--timeout seconds, default
// 60). Exit 0 on success; 1 with "smc_stall: FAIL why" on stderr; 2 on a
// usage error.
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <string>
#include <vector>

#include "core/clc.h"
#include "core/handshake.h"
#include "core/host_id.h"
#include "test/integration/net_util.h"

namespace {

namespace clc = smc::core::clc;
using smc_test::now_ms;

constexpr int64_t probe_limit_ms = 500;  // the acceptance criterion
constexpr size_t probe_bytes = 64;
constexpr int attack_io_ms = 10000;      // bound on the attack's own waits (its Accept)

[[noreturn]] void die(const std::string& why) {
  std::fflush(stdout);
  std::fprintf(stderr, "smc_stall: FAIL %s\n", why.c_str());
  std::fflush(stderr);
  // exit, not _exit: under the preload the process still writes its stats
  // file; should the exit itself hang, the alarm() watchdog ends it.
  std::exit(1);
}

std::string err_text(const std::string& what) { return what + ": " + std::strerror(errno); }

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr,
               "smc_stall: %s\n"
               "usage: smc_stall server [--addr A] [--port P] [--portfile F] --loop poll|epoll [--count N]\n"
               "       smc_stall attack [--addr A] --port P --kind KIND [--hold-ms T]\n"
               "       smc_stall probe [--addr A] --port P [--count N]\n"
               "       smc_stall silent [--addr A] [--port P] [--portfile F] [--hold-ms T]\n"
               "       smc_stall client [--addr A] --port P --silent-port Q --loop poll|epoll [--count N]\n"
               "       (all: [--timeout S], default 60)\n"
               "kinds: silent_proposal partial_proposal silent_confirm slow_rendezvous\n",
               why.c_str());
  std::exit(2);
}

struct options : smc_test::endpoint_options {
  std::string role;
  std::string loop;
  std::string kind;
  uint64_t count = 0;
  bool count_given = false;
  int hold_ms = 3000;
  unsigned timeout = 60;
  uint16_t silent_port = 0;
};

// ---------------------------------------------------------------- server

// One accepted connection: bytes read but not yet echoed.
struct echo_conn {
  int fd = -1;
  std::string out;
  uint64_t echoed = 0;
  int64_t since_ms = 0;
};

// Sends what is pending until EAGAIN; false when the connection failed.
bool flush(echo_conn& c) {
  while (!c.out.empty()) {
    ssize_t n = ::send(c.fd, c.out.data(), c.out.size(), MSG_NOSIGNAL);
    if (n > 0) {
      c.out.erase(0, static_cast<size_t>(n));
      c.echoed += static_cast<uint64_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      return true;
    } else {
      return false;
    }
  }
  return true;
}

// Reads until EAGAIN and echoes; false when the connection ended (EOF or an
// error, `how` says which).
bool serve_readable(echo_conn& c, std::string& how) {
  char buf[65536];
  for (;;) {
    ssize_t n = ::recv(c.fd, buf, sizeof buf, 0);
    if (n > 0) {
      c.out.append(buf, static_cast<size_t>(n));
      if (!flush(c)) {
        how = err_text("send");
        return false;
      }
      if (c.out.size() > (1u << 20)) {
        return true;  // the peer does not read: wait for POLLOUT first
      }
      continue;
    }
    if (n == 0) {
      how = "eof";
      return false;
    }
    if (errno == EINTR) {
      continue;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      return true;
    }
    how = err_text("recv");
    return false;
  }
}

// Accepts all pending connections (non-blocking); returns their fds.
std::vector<int> accept_all(int ls) {
  std::vector<int> fds;
  for (;;) {
    int fd = ::accept4(ls, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      fds.push_back(fd);
      continue;
    }
    if (errno == EINTR || errno == ECONNABORTED) {
      continue;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      return fds;
    }
    die(err_text("server: accept4"));
  }
}

void report_end(const echo_conn& c, const std::string& how) {
  std::printf("server ended fd=%d echoed=%llu after_ms=%lld (%s)\n", c.fd,
              static_cast<unsigned long long>(c.echoed), static_cast<long long>(now_ms() - c.since_ms),
              how.c_str());
  std::fflush(stdout);
}

// Ends when `count` connections ended (count 0: never).
int serve_poll(int ls, uint64_t count) {
  std::map<int, echo_conn> conns;
  uint64_t ended = 0;
  while (count == 0 || ended < count) {
    std::vector<pollfd> pfds;
    pfds.push_back({ls, POLLIN, 0});
    for (const auto& [fd, c] : conns) {
      pfds.push_back({fd, static_cast<short>(POLLIN | (c.out.empty() ? 0 : POLLOUT)), 0});
    }
    int n = ::poll(pfds.data(), pfds.size(), 1000);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      die(err_text("server --loop poll: poll"));
    }
    for (const pollfd& p : pfds) {
      if (p.revents == 0) {
        continue;
      }
      if (p.fd == ls) {
        for (int fd : accept_all(ls)) {
          conns[fd] = echo_conn{fd, {}, 0, now_ms()};
        }
        continue;
      }
      echo_conn& c = conns[p.fd];
      std::string how;
      bool open = true;
      if ((p.revents & POLLOUT) != 0 && !flush(c)) {
        how = err_text("send");
        open = false;
      }
      if (open && (p.revents & (POLLIN | POLLHUP | POLLERR | POLLRDHUP)) != 0) {
        open = serve_readable(c, how);
      }
      if ((p.revents & POLLNVAL) != 0) {
        die("server --loop poll: POLLNVAL on fd " + std::to_string(p.fd));
      }
      if (!open) {
        report_end(c, how);
        ::close(c.fd);
        conns.erase(p.fd);
        ++ended;
      }
    }
  }
  std::printf("ok served %llu poll\n", static_cast<unsigned long long>(ended));
  return 0;
}

void ep_ctl(int ep, int op, int fd, uint32_t events) {
  epoll_event ev{};
  ev.events = events;
  ev.data.fd = fd;
  if (::epoll_ctl(ep, op, fd, op == EPOLL_CTL_DEL ? nullptr : &ev) != 0) {
    die(err_text("server --loop epoll: epoll_ctl op " + std::to_string(op) + " fd " + std::to_string(fd)));
  }
}

// Level-triggered: EPOLLIN always, EPOLLOUT while an echo is pending.
int serve_epoll(int ls, uint64_t count) {
  int ep = ::epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) {
    die(err_text("server --loop epoll: epoll_create1"));
  }
  ep_ctl(ep, EPOLL_CTL_ADD, ls, EPOLLIN);
  std::map<int, echo_conn> conns;
  std::map<int, bool> out_armed;
  uint64_t ended = 0;
  while (count == 0 || ended < count) {
    epoll_event evs[64];
    int n = ::epoll_wait(ep, evs, 64, 1000);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      die(err_text("server --loop epoll: epoll_wait"));
    }
    for (int i = 0; i < n; ++i) {
      int fd = evs[i].data.fd;
      uint32_t ev = evs[i].events;
      if (fd == ls) {
        for (int cfd : accept_all(ls)) {
          conns[cfd] = echo_conn{cfd, {}, 0, now_ms()};
          out_armed[cfd] = false;
          ep_ctl(ep, EPOLL_CTL_ADD, cfd, EPOLLIN | EPOLLRDHUP);
        }
        continue;
      }
      auto it = conns.find(fd);
      if (it == conns.end()) {
        continue;  // closed earlier in this batch
      }
      echo_conn& c = it->second;
      std::string how;
      bool open = true;
      if ((ev & EPOLLOUT) != 0 && !flush(c)) {
        how = err_text("send");
        open = false;
      }
      if (open && (ev & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP)) != 0) {
        open = serve_readable(c, how);
      }
      if (!open) {
        report_end(c, how);
        ep_ctl(ep, EPOLL_CTL_DEL, fd, 0);
        ::close(fd);
        conns.erase(it);
        out_armed.erase(fd);
        ++ended;
        continue;
      }
      bool want_out = !c.out.empty();
      if (want_out != out_armed[fd]) {
        ep_ctl(ep, EPOLL_CTL_MOD, fd, EPOLLIN | EPOLLRDHUP | (want_out ? static_cast<uint32_t>(EPOLLOUT) : 0u));
        out_armed[fd] = want_out;
      }
    }
  }
  ::close(ep);
  std::printf("ok served %llu epoll\n", static_cast<unsigned long long>(ended));
  return 0;
}

int server(const options& o) {
  std::string error;
  int ls = smc_test::open_listener(o.addr, o.port, 64, o.portfile, error);
  if (ls < 0) {
    die("server: " + error);
  }
  if (!smc_test::set_nonblocking(ls)) {
    die(err_text("server: fcntl O_NONBLOCK"));
  }
  std::printf("server listening port=%d loop=%s\n", smc_test::bound_port(ls), o.loop.c_str());
  std::fflush(stdout);
  return o.loop == "epoll" ? serve_epoll(ls, o.count) : serve_poll(ls, o.count);
}

// ---------------------------------------------------------------- attack

// A same-host Proposal exactly as client_handshake() builds it for shm.
std::vector<uint8_t> shm_proposal() {
  clc::proposal prop;
  prop.version = 2;
  prop.typev1 = clc::type_n;
  prop.typev2 = clc::type_d;
  prop.ueids.push_back(clc::make_eid(smc::core::default_ueid()));
  prop.ism_v2.push_back({smc::core::host_id(), clc::loopback_chid});
  return clc::encode(prop);
}

// Reads one whole CLC message (header, then the rest) within attack_io_ms.
std::vector<uint8_t> read_clc(int fd, clc::header& h) {
  timeval tv{attack_io_ms / 1000, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::vector<uint8_t> msg(clc::header_len);
  ssize_t n = smc_test::recv_full(fd, msg.data(), msg.size());
  if (n < 0) {
    die(err_text("attack: reading the server's CLC header (after the Proposal)"));
  }
  if (static_cast<size_t>(n) < msg.size()) {
    die("attack: the server closed after " + std::to_string(n) + " bytes instead of answering the Proposal");
  }
  if (clc::error e = clc::peek_header(msg, h); e != clc::error::ok) {
    die(std::string("attack: the server's answer is no CLC header: ") + clc::to_string(e));
  }
  msg.resize(h.length);
  n = smc_test::recv_full(fd, msg.data() + clc::header_len, msg.size() - clc::header_len);
  if (n < 0 || static_cast<size_t>(n) != msg.size() - clc::header_len) {
    die(n < 0 ? err_text("attack: reading the rest of the server's CLC message")
              : std::string("attack: the server closed inside its CLC message"));
  }
  return msg;
}

// The server's shm Accept (a Decline or anything else fails the attack).
clc::accept_confirm_d read_accept(int fd) {
  clc::header h;
  std::vector<uint8_t> msg = read_clc(fd, h);
  if (h.type == clc::msg_type::decline) {
    clc::decline d;
    unsigned diag = clc::decode(msg, d) == clc::error::ok ? d.diagnosis : 0;
    char text[96];
    std::snprintf(text, sizeof text, "attack: the server declined the Proposal (diagnosis 0x%08x)", diag);
    die(text);
  }
  clc::accept_confirm_d acc;
  if (h.type != clc::msg_type::accept) {
    die("attack: the server answered with CLC type " + std::to_string(static_cast<int>(h.type)) +
        ", not an Accept");
  }
  if (clc::error e = clc::decode(msg, acc); e != clc::error::ok) {
    die(std::string("attack: the server's Accept is no SMC-D Accept: ") + clc::to_string(e));
  }
  return acc;
}

// Connects (and nothing more) to the server's shm rendezvous listener, the
// abstract unix socket its Accept names (rdma/shm/shm_transport.cpp,
// rendezvous_name: "smc-preload/<host id %016llx>/<link id %08x>").
int rendezvous_connect_only(const clc::accept_confirm_d& acc) {
  int s = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (s < 0) {
    die(err_text("attack: socket(AF_UNIX)"));
  }
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  int n = std::snprintf(sa.sun_path + 1, sizeof(sa.sun_path) - 1, "smc-preload/%016llx/%08x",
                        static_cast<unsigned long long>(acc.gid), static_cast<unsigned>(acc.link_id));
  auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + n);
  int rc;
  do {
    rc = ::connect(s, reinterpret_cast<sockaddr*>(&sa), len);
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    die(err_text("attack: connect to the rendezvous @" + std::string(sa.sun_path + 1)));
  }
  return s;
}

int attack(const options& o) {
  sockaddr_storage ss;
  socklen_t len = 0;
  if (!smc_test::parse_addr(o.addr, o.port, ss, len)) {
    usage("bad --addr " + o.addr);
  }
  // A raw TCP socket: this role runs without the preload and speaks CLC
  // itself.
  int fd = ::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    die(err_text("attack: socket"));
  }
  int rc;
  do {
    rc = ::connect(fd, reinterpret_cast<sockaddr*>(&ss), len);
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    die(err_text("attack: connect"));
  }
  const std::vector<uint8_t> prop = shm_proposal();
  size_t send_len = o.kind == "partial_proposal" ? prop.size() / 2 : prop.size();
  if (!smc_test::send_all(fd, prop.data(), send_len)) {
    die(err_text("attack: send of the Proposal"));
  }
  int unix_fd = -1;
  std::string detail = "sent=" + std::to_string(send_len) + "/" + std::to_string(prop.size());
  if (o.kind == "silent_confirm" || o.kind == "slow_rendezvous") {
    clc::accept_confirm_d acc = read_accept(fd);
    char text[96];
    std::snprintf(text, sizeof text, " accept link_id=%08x", static_cast<unsigned>(acc.link_id));
    detail += text;
    if (o.kind == "slow_rendezvous") {
      unix_fd = rendezvous_connect_only(acc);
      detail += " rendezvous connected";
    }
  }
  std::printf("attack %s: %s\n", o.kind.c_str(), detail.c_str());
  std::printf("attack %s in place\n", o.kind.c_str());
  std::fflush(stdout);
  // Hold: send nothing, read nothing.
  int64_t until = now_ms() + o.hold_ms;
  for (int64_t left = o.hold_ms; left > 0; left = until - now_ms()) {
    ::poll(nullptr, 0, static_cast<int>(left));
  }
  if (unix_fd >= 0) {
    ::close(unix_fd);
  }
  ::close(fd);
  std::printf("attack %s done after hold_ms=%d\n", o.kind.c_str(), o.hold_ms);
  return 0;
}

// ---------------------------------------------------------------- probe

int probe(const options& o) {
  uint8_t out[probe_bytes];
  uint8_t in[probe_bytes];
  int64_t max_ms = 0;
  std::vector<std::string> slow;
  for (uint64_t round = 0; round < o.count; ++round) {
    smc_test::pattern_fill(0x57a11 + round, 0, out, sizeof out);
    std::memset(in, 0, sizeof in);
    sockaddr_storage ss;
    socklen_t len = 0;
    std::string error;
    int fd = smc_test::open_tcp_socket(o.addr, o.port, ss, len, error);
    if (fd < 0) {
      die("probe: " + error);
    }
    // Bounds a hung round (the watchdog bounds everything else).
    timeval tv{20, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    const int64_t t0 = now_ms();
    int rc;
    do {
      rc = ::connect(fd, reinterpret_cast<sockaddr*>(&ss), len);
    } while (rc != 0 && errno == EINTR);
    if (rc != 0) {
      die(err_text("probe round=" + std::to_string(round) + ": connect"));
    }
    if (!smc_test::send_all(fd, out, sizeof out)) {
      die(err_text("probe round=" + std::to_string(round) + ": send"));
    }
    ssize_t got = smc_test::recv_full(fd, in, sizeof in);
    const int64_t ms = now_ms() - t0;
    if (got < 0) {
      die(err_text("probe round=" + std::to_string(round) + ": recv after " + std::to_string(ms) + " ms"));
    }
    if (static_cast<size_t>(got) != sizeof in) {
      die("probe round=" + std::to_string(round) + ": EOF after " + std::to_string(got) + " of " +
          std::to_string(sizeof in) + " echoed bytes");
    }
    if (std::memcmp(in, out, sizeof in) != 0) {
      size_t i = 0;
      while (i < sizeof in && in[i] == out[i]) {
        ++i;
      }
      die("probe round=" + std::to_string(round) + ": echo differs at byte " + std::to_string(i));
    }
    ::close(fd);
    std::printf("probe round=%llu ms=%lld\n", static_cast<unsigned long long>(round), static_cast<long long>(ms));
    std::fflush(stdout);
    max_ms = std::max(max_ms, ms);
    if (ms > probe_limit_ms) {
      slow.push_back("round " + std::to_string(round) + " took " + std::to_string(ms) + " ms");
    }
  }
  // All rounds run even after a slow one, so the server sees every
  // connection it counts on and can end normally.
  if (!slow.empty()) {
    std::string why;
    for (const auto& s : slow) {
      why += (why.empty() ? "" : ", ") + s;
    }
    die("probe: not answered within " + std::to_string(probe_limit_ms) + " ms: " + why);
  }
  std::printf("probe ok max_ms=%lld\n", static_cast<long long>(max_ms));
  return 0;
}

// ---------------------------------------------------------------- silent, client

int silent(const options& o) {
  std::string error;
  int ls = smc_test::open_listener(o.addr, o.port, 4, o.portfile, error);
  if (ls < 0) {
    die("silent: " + error);
  }
  const int c = ::accept(ls, nullptr, nullptr);
  if (c < 0) {
    die(err_text("silent: accept"));
  }
  clc::header h;
  read_clc(c, h);  // the client's Proposal, whole
  std::printf("silent in place (got a CLC message of %u bytes)\n", static_cast<unsigned>(h.length));
  std::fflush(stdout);
  const int64_t until = now_ms() + o.hold_ms;
  for (int64_t left; (left = until - now_ms()) > 0;) {
    pollfd p{c, 0, 0};  // no events: just wait out the hold
    ::poll(&p, 1, static_cast<int>(left));
  }
  ::close(c);
  ::close(ls);
  return 0;
}

// A non-blocking connect to addr:port (EINPROGRESS is fine).
int connect_nb(const std::string& addr, uint16_t port, const std::string& what) {
  sockaddr_storage ss;
  socklen_t len = 0;
  std::string error;
  int fd = smc_test::open_tcp_socket(addr, port, ss, len, error);
  if (fd < 0) {
    die(what + ": " + error);
  }
  if (!smc_test::set_nonblocking(fd)) {
    die(err_text(what + ": fcntl O_NONBLOCK"));
  }
  if (::connect(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 && errno != EINPROGRESS) {
    die(err_text(what + ": connect"));
  }
  return fd;
}

// One echo round driven by readiness: connect, send 64 B, read them back.
struct round_state {
  int fd = -1;
  enum { connecting, reading } step = connecting;
  uint8_t out[probe_bytes];
  uint8_t in[probe_bytes];
  size_t got = 0;
};

// Advances the round on readiness `ev` (POLL* bits); true when it is done.
bool advance(round_state& r, short ev, uint64_t round) {
  const std::string at = "client round=" + std::to_string(round);
  if (r.step == round_state::connecting) {
    if ((ev & (POLLOUT | POLLERR | POLLHUP)) == 0) {
      return false;
    }
    int err = 0;
    socklen_t l = sizeof err;
    if (::getsockopt(r.fd, SOL_SOCKET, SO_ERROR, &err, &l) != 0 || err != 0) {
      errno = err;
      die(err_text(at + ": connect"));
    }
    ssize_t n = ::send(r.fd, r.out, sizeof r.out, MSG_NOSIGNAL);
    if (n != static_cast<ssize_t>(sizeof r.out)) {
      if (n < 0 && errno == EAGAIN) {
        return false;  // not decided yet: writable again once it is
      }
      die(err_text(at + ": send"));
    }
    r.step = round_state::reading;
    return false;
  }
  if ((ev & (POLLIN | POLLERR | POLLHUP)) == 0) {
    return false;
  }
  ssize_t n = ::recv(r.fd, r.in + r.got, sizeof r.in - r.got, 0);
  if (n < 0 && errno == EAGAIN) {
    return false;
  }
  if (n <= 0) {
    die(n == 0 ? at + ": EOF" : err_text(at + ": recv"));
  }
  r.got += static_cast<size_t>(n);
  if (r.got < sizeof r.in) {
    return false;
  }
  if (std::memcmp(r.in, r.out, sizeof r.in) != 0) {
    die(at + ": echo differs");
  }
  return true;
}

int client(const options& o) {
  // The silent server's connection first: its handshake starts with the
  // loop's first look at it and then waits for an Accept that never comes.
  const int quiet = connect_nb(o.addr, o.silent_port, "client (silent)");
  int ep = -1;
  if (o.loop == "epoll") {
    ep = ::epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) {
      die(err_text("client: epoll_create1"));
    }
    ep_ctl(ep, EPOLL_CTL_ADD, quiet, EPOLLIN | EPOLLOUT);
  }
  int64_t max_ms = 0;
  std::vector<std::string> slow;
  for (uint64_t round = 0; round < o.count; ++round) {
    round_state r;
    smc_test::pattern_fill(0xc11e47 + round, 0, r.out, sizeof r.out);
    const int64_t t0 = now_ms();
    r.fd = connect_nb(o.addr, o.port, "client round=" + std::to_string(round));
    if (ep >= 0) {
      ep_ctl(ep, EPOLL_CTL_ADD, r.fd, EPOLLIN | EPOLLOUT);
    }
    bool done = false;
    while (!done) {
      if (now_ms() - t0 > 20000) {
        die("client round=" + std::to_string(round) + ": not done after 20 s");
      }
      short rev = 0;
      if (ep < 0) {
        pollfd p[2] = {{quiet, POLLIN | POLLOUT, 0}, {r.fd, POLLIN | POLLOUT, 0}};
        if (::poll(p, 2, 1000) < 0 && errno != EINTR) {
          die(err_text("client: poll"));
        }
        rev = p[1].revents;
      } else {
        epoll_event evs[4];
        int n = ::epoll_wait(ep, evs, 4, 1000);
        if (n < 0 && errno != EINTR) {
          die(err_text("client: epoll_wait"));
        }
        for (int i = 0; i < n; ++i) {
          if (evs[i].data.fd == r.fd) {
            rev = static_cast<short>(evs[i].events);
          }
        }
      }
      done = advance(r, rev, round);
    }
    const int64_t ms = now_ms() - t0;
    if (ep >= 0) {
      ep_ctl(ep, EPOLL_CTL_DEL, r.fd, 0);
    }
    ::close(r.fd);
    std::printf("client round=%llu ms=%lld\n", static_cast<unsigned long long>(round),
                static_cast<long long>(ms));
    std::fflush(stdout);
    max_ms = std::max(max_ms, ms);
    if (ms > probe_limit_ms) {
      slow.push_back("round " + std::to_string(round) + " took " + std::to_string(ms) + " ms");
    }
  }
  ::close(quiet);
  if (!slow.empty()) {
    std::string why;
    for (const auto& x : slow) {
      why += (why.empty() ? "" : ", ") + x;
    }
    die("client: not answered within " + std::to_string(probe_limit_ms) + " ms: " + why);
  }
  std::printf("client ok max_ms=%lld\n", static_cast<long long>(max_ms));
  return 0;
}

int run(int argc, char** argv) {
  if (argc < 2) {
    usage("missing role");
  }
  options o;
  o.role = argv[1];
  if (o.role != "server" && o.role != "attack" && o.role != "probe" && o.role != "silent" &&
      o.role != "client") {
    usage("role must be server, attack, probe, silent or client");
  }
  if (o.role == "probe" || o.role == "client") {
    o.count = 3;
  }
  smc_test::arg_reader args(argc, argv, 2, usage);
  while (args.next()) {
    if (args.endpoint_option(o, "bad value for ")) {
      continue;
    }
    const std::string& n = args.name();
    if (n == "--timeout") {
      o.timeout = static_cast<unsigned>(std::max<uint64_t>(1, args.size_value("bad value for ")));
    } else if (n == "--silent-port" && o.role == "client") {
      o.silent_port = static_cast<uint16_t>(std::min<uint64_t>(args.size_value("bad value for "), 65535));
    } else if (n == "--loop" && (o.role == "server" || o.role == "client")) {
      o.loop = args.value();
      if (o.loop != "poll" && o.loop != "epoll") {
        usage("--loop must be poll or epoll");
      }
    } else if (n == "--count" && (o.role == "server" || o.role == "probe" || o.role == "client")) {
      o.count = args.size_value("bad value for ");
      o.count_given = true;
    } else if (n == "--kind" && o.role == "attack") {
      o.kind = args.value();
      if (o.kind != "silent_proposal" && o.kind != "partial_proposal" && o.kind != "silent_confirm" &&
          o.kind != "slow_rendezvous") {
        usage("unknown --kind " + o.kind);
      }
    } else if (n == "--hold-ms" && (o.role == "attack" || o.role == "silent")) {
      o.hold_ms = static_cast<int>(std::min<uint64_t>(args.size_value("bad value for "), 3600 * 1000));
    } else {
      usage("unknown option " + n + " for " + o.role);
    }
  }
  if ((o.role == "server" || o.role == "client") && o.loop.empty()) {
    usage(o.role + " needs --loop poll|epoll");
  }
  if (o.role == "client" && o.silent_port == 0) {
    usage("client needs --silent-port");
  }
  if (o.role != "server" && o.role != "silent" && !o.port_given) {
    usage(o.role + " needs --port");
  }
  if (o.role == "attack" && o.kind.empty()) {
    usage("attack needs --kind");
  }
  if (o.role == "probe" && o.count == 0) {
    usage("probe needs --count >= 1");
  }
  if (o.role == "attack" || o.role == "silent") {
    // The watchdog must not fire while the attack holds on purpose.
    o.timeout = std::max<unsigned>(o.timeout, static_cast<unsigned>(o.hold_ms / 1000) + attack_io_ms / 1000 + 10);
  }
  smc_test::arm_watchdog(("smc_stall " + o.role).c_str(), o.timeout);
  if (o.role == "server") {
    return server(o);
  }
  if (o.role == "attack") {
    return attack(o);
  }
  if (o.role == "silent") {
    return silent(o);
  }
  if (o.role == "client") {
    return client(o);
  }
  return probe(o);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    ::signal(SIGPIPE, SIG_IGN);
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "smc_stall: FAIL exception: %s\n", e.what());
  } catch (...) {
    std::fprintf(stderr, "smc_stall: FAIL unknown exception\n");
  }
  return 1;
}
