// smc_epoll_reg: epoll registrations that an application makes before or
// while its connection is being set up, and changes afterwards. nginx adds
// its upstream socket to epoll before connect(), twemproxy too; servers add
// an accepted socket before its first byte arrived. Whatever the application
// registered must keep its meaning across whatever happens underneath:
// epoll_ctl never fails for a registered socket (and fails exactly like the
// kernel's for an unregistered one), every due readiness edge is delivered,
// none that is not due, and epoll_data comes back unchanged. Plain POSIX,
// nothing about SMC: the same binary runs plain or under scripts/smc_run.
//
//   smc_epoll_reg server [--addr A] [--port P] [--portfile F] --count N [--epoll]
//       keep-alive echo server; exits 0 after N connections ended.
//       Default: a thread per connection, blocking. --epoll: one thread; each
//       accepted socket is ADDed (EPOLLIN|EPOLLRDHUP|EPOLLET) right after
//       accept, before its first byte; after one byte of the first request
//       it is DELeted and ADDed again (the rest must be reported), after the
//       first request it is MODed to EPOLLONESHOT and re-armed per event.
//   smc_epoll_reg client --addr A --port P --case NAME|all [--rounds R]
//       cases (each on a fresh connection, R request/response rounds, 100 by
//       default, with a non-blocking socket):
//       add_before_connect   ADD(IN|OUT|ET|RDHUP) before connect(); EPOLLOUT,
//                            SO_ERROR == 0, then each reply's EPOLLIN edge
//       add_then_mod         connect, ADD(OUT), MOD(IN), MOD(IN|OUT) twice
//                            per round; the reported events follow the mask
//       mod_before_connect   ADD(IN) and MOD(IN|OUT|ET|RDHUP) before connect()
//       del_during_decision  ADD, connect, DEL at once, poll() for the
//                            connect, ADD again; after the rounds DEL works
//                            once and then fails with ENOENT (MOD too)
//       oneshot              ADD(OUT|ONESHOT) before connect; every report
//                            disarms, nothing is reported until re-armed
//       et_first_edge        connect, then ADD(IN|OUT|ET): the first EPOLLOUT
//                            edge and each reply's EPOLLIN edge arrive
//       sets_take_turns      20 connections one after another (one round
//                            each, then close), ADDed before connect() to
//                            two epoll sets by turns; the set not in use
//                            reports nothing (same-host slots serve the
//                            connections in turn, and each set keeps
//                            watches of the doorbells of some of them)
//
// Every wait is bounded (5 s for a due event, an alarm() watchdog of
// --timeout seconds, default 60). Exit 0 with one "ok ..." line per case
// (client) or "ok served N" (server), or 1 with "smc_epoll_reg: FAIL why" on
// stderr (naming the case, the epoll_ctl op and errno).
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "test/integration/net_util.h"

namespace {

constexpr int due_ms = 5000;  // a due event must come within this

// Taken by the first failure and never released: a second failing thread
// blocks here instead of racing the first one through exit().
pthread_mutex_t g_die_lock = PTHREAD_MUTEX_INITIALIZER;

[[noreturn]] void die(const std::string& why) {
  ::pthread_mutex_lock(&g_die_lock);
  std::fflush(stdout);
  std::fprintf(stderr, "smc_epoll_reg: FAIL %s\n", why.c_str());
  std::fflush(stderr);
  // exit, not _exit: under the preload the process still writes its stats
  // file; should the exit itself hang, the alarm() watchdog ends it.
  std::exit(1);
}

std::string err_text(const std::string& what) { return what + ": " + std::strerror(errno); }

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr,
               "smc_epoll_reg: %s\n"
               "usage: smc_epoll_reg server [--addr A] [--port P] [--portfile F] --count N [--epoll]\n"
               "       smc_epoll_reg client --addr A --port P --case NAME|all [--rounds R]\n"
               "cases: add_before_connect add_then_mod mod_before_connect del_during_decision\n"
               "       oneshot et_first_edge sets_take_turns\n",
               why.c_str());
  std::exit(2);
}

using smc_test::now_ms;

void set_nonblock(int fd) {
  if (!smc_test::set_nonblocking(fd)) {
    die(err_text("fcntl O_NONBLOCK"));
  }
}

std::string events_text(uint32_t ev) {
  static const struct {
    uint32_t bit;
    const char* name;
  } names[] = {{EPOLLIN, "IN"},       {EPOLLOUT, "OUT"},         {EPOLLRDHUP, "RDHUP"}, {EPOLLPRI, "PRI"},
               {EPOLLERR, "ERR"},     {EPOLLHUP, "HUP"},         {EPOLLET, "ET"},       {EPOLLONESHOT, "ONESHOT"},
               {EPOLLEXCLUSIVE, "EXCLUSIVE"}};
  std::string s;
  for (const auto& n : names) {
    if ((ev & n.bit) != 0) {
      s += s.empty() ? "" : "|";
      s += n.name;
      ev &= ~n.bit;
    }
  }
  if (ev != 0) {
    s += (s.empty() ? "" : "|") + std::to_string(ev);
  }
  return s.empty() ? "0" : s;
}

const char* op_text(int op) {
  switch (op) {
    case EPOLL_CTL_ADD:
      return "ADD";
    case EPOLL_CTL_MOD:
      return "MOD";
    case EPOLL_CTL_DEL:
      return "DEL";
    default:
      return "?";
  }
}

// ---------------------------------------------------------------- servers
struct server_options : smc_test::endpoint_options {
  uint64_t count = 0;
  bool epoll = false;
};

void echo_thread(int fd, std::atomic<uint64_t>* ended) {
  // A keep-alive client may think between requests; 30 s bounds a hang.
  timeval tv{30, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  std::vector<char> buf(65536);
  for (;;) {
    ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      die(err_text("server: recv"));
    }
    if (n == 0) {
      break;
    }
    if (!smc_test::send_all(fd, buf.data(), static_cast<size_t>(n))) {
      die(err_text("server: send"));
    }
  }
  ::close(fd);
  ++*ended;
}

int accept_one(int ls) {
  for (;;) {
    int fd = ::accept4(ls, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd >= 0 || errno != EINTR) {
      return fd;
    }
  }
}

int serve_threads(int ls, uint64_t count) {
  std::atomic<uint64_t> ended{0};
  std::vector<std::thread> threads;
  while (threads.size() < count) {
    pollfd p{ls, POLLIN, 0};
    int r = ::poll(&p, 1, 30000);
    if (r < 0 && errno == EINTR) {
      continue;
    }
    if (r <= 0) {
      die(r == 0 ? "server: no connection for 30 s" : err_text("server: poll"));
    }
    int fd = accept_one(ls);
    if (fd < 0) {
      die(err_text("server: accept"));
    }
    threads.emplace_back(echo_thread, fd, &ended);
  }
  for (auto& t : threads) {
    t.join();
  }
  std::printf("ok served %llu\n", static_cast<unsigned long long>(ended.load()));
  return 0;
}

// One connection of the epoll server.
struct ep_conn {
  int fd = -1;
  int stage = 0;        // 0: nothing read, 1: DEL/ADD done (ET), 2: ONESHOT
  bool out_armed = false;  // stage 1: EPOLLOUT added for a pending echo
  std::string out;      // echo not yet sent
};

void ep_ctl(int ep, int op, ep_conn* c, uint32_t events) {
  epoll_event ev{};
  ev.events = events;
  ev.data.ptr = c;
  if (::epoll_ctl(ep, op, c->fd, op == EPOLL_CTL_DEL ? nullptr : &ev) != 0) {
    die(err_text(std::string("server --epoll: epoll_ctl ") + op_text(op) + " " + events_text(events)));
  }
}

void flush(ep_conn& c) {
  while (!c.out.empty()) {
    ssize_t n = ::send(c.fd, c.out.data(), c.out.size(), MSG_NOSIGNAL);
    if (n > 0) {
      c.out.erase(0, static_cast<size_t>(n));
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      return;
    } else {
      die(err_text("server --epoll: send"));
    }
  }
}

// Reads until EAGAIN (appending the echo); returns false at EOF.
bool drain(ep_conn& c) {
  char buf[65536];
  for (;;) {
    ssize_t n = ::recv(c.fd, buf, sizeof buf, 0);
    if (n > 0) {
      c.out.append(buf, static_cast<size_t>(n));
      continue;
    }
    if (n == 0) {
      return false;
    }
    if (errno == EINTR) {
      continue;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      return true;
    }
    die(err_text("server --epoll: recv"));
  }
}

// Handles one event; returns true when the connection ended.
bool ep_event(int ep, ep_conn& c) {
  const uint32_t oneshot = EPOLLIN | EPOLLRDHUP | EPOLLONESHOT;
  if (c.stage == 0) {
    // In the middle of the first request: one byte, then DEL and ADD
    // again. The rest of the request is pending, so the new registration
    // must report it.
    char b;
    ssize_t n = ::recv(c.fd, &b, 1, 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
      return false;
    }
    if (n < 0) {
      die(err_text("server --epoll: recv of the first byte"));
    }
    if (n == 0) {
      return true;
    }
    c.out.push_back(b);
    flush(c);
    ep_ctl(ep, EPOLL_CTL_DEL, &c, 0);
    ep_ctl(ep, EPOLL_CTL_ADD, &c, EPOLLIN | EPOLLRDHUP | EPOLLET);
    c.stage = 1;
    return false;
  }
  bool open = drain(c);
  bool first_line_done = c.out.find('\n') != std::string::npos;
  flush(c);
  if (!open) {
    return true;
  }
  if (c.stage == 1) {
    if (first_line_done) {
      // From edge-triggered to one-shot, re-armed after every event.
      ep_ctl(ep, EPOLL_CTL_MOD, &c, oneshot | (c.out.empty() ? 0u : static_cast<uint32_t>(EPOLLOUT)));
      c.stage = 2;
    } else if (!c.out.empty() && !c.out_armed) {
      ep_ctl(ep, EPOLL_CTL_MOD, &c, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET);
      c.out_armed = true;
    }
    return false;
  }
  ep_ctl(ep, EPOLL_CTL_MOD, &c, oneshot | (c.out.empty() ? 0u : static_cast<uint32_t>(EPOLLOUT)));
  return false;
}

int serve_epoll(int ls, uint64_t count) {
  set_nonblock(ls);
  int ep = ::epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) {
    die(err_text("server --epoll: epoll_create1"));
  }
  epoll_event lev{};
  lev.events = EPOLLIN;
  lev.data.ptr = nullptr;  // the listener
  if (::epoll_ctl(ep, EPOLL_CTL_ADD, ls, &lev) != 0) {
    die(err_text("server --epoll: epoll_ctl ADD listener"));
  }
  std::map<ep_conn*, std::unique_ptr<ep_conn>> conns;
  uint64_t accepted = 0, ended = 0;
  int64_t last_event = now_ms();
  while (ended < count) {
    epoll_event evs[64];
    int n = ::epoll_wait(ep, evs, 64, 1000);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      die(err_text("server --epoll: epoll_wait"));
    }
    if (n > 0) {
      last_event = now_ms();
    } else if (now_ms() - last_event > 30000) {
      die("server --epoll: no event for 30 s with " + std::to_string(conns.size()) +
          " connections open (a readiness edge was lost?)");
    }
    for (int i = 0; i < n; ++i) {
      if (evs[i].data.ptr == nullptr) {
        for (;;) {
          int fd = accept_one(ls);
          if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
              break;
            }
            die(err_text("server --epoll: accept"));
          }
          set_nonblock(fd);
          auto c = std::make_unique<ep_conn>();
          c->fd = fd;
          // Registered before any byte arrived.
          ep_ctl(ep, EPOLL_CTL_ADD, c.get(), EPOLLIN | EPOLLRDHUP | EPOLLET);
          ep_conn* key = c.get();
          conns.emplace(key, std::move(c));
          ++accepted;
        }
        continue;
      }
      auto it = conns.find(static_cast<ep_conn*>(evs[i].data.ptr));
      if (it == conns.end()) {
        die("server --epoll: epoll_wait returned data of no registered connection");
      }
      if (ep_event(ep, *it->second)) {
        ep_ctl(ep, EPOLL_CTL_DEL, it->second.get(), 0);
        ::close(it->second->fd);
        conns.erase(it);
        ++ended;
      }
    }
  }
  ::close(ep);
  std::printf("ok served %llu epoll\n", static_cast<unsigned long long>(ended));
  return 0;
}

int server(const server_options& o) {
  std::string error;
  int ls = smc_test::open_listener(o.addr, o.port, 64, o.portfile, error);
  if (ls < 0) {
    die("server: " + error);
  }
  return o.epoll ? serve_epoll(ls, o.count) : serve_threads(ls, o.count);
}

// ---------------------------------------------------------------- client
struct client_options : smc_test::endpoint_options {
  std::string which = "all";
  uint64_t rounds = 100;
};

// One case's connection and epoll set.
struct tcase {
  std::string name;
  const client_options* o = nullptr;
  int ep = -1;
  int fd = -1;
  uint64_t tag = 0;  // the epoll_data registered; must come back unchanged
  sockaddr_storage ss{};
  socklen_t len = 0;

  [[noreturn]] void fail(const std::string& why) const { die("case " + name + ": " + why); }

  // socket() and O_NONBLOCK, not connected yet.
  void open() {
    std::string error;
    fd = smc_test::open_tcp_socket(o->addr, o->port, ss, len, error);
    if (fd < 0) {
      fail(error);
    }
    set_nonblock(fd);
    ep = ::epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) {
      fail(err_text("epoll_create1"));
    }
    tag = 0x5eed000000000000ULL | (static_cast<uint64_t>(fd) << 16) | 0xabcd;
  }

  void close_all() {
    ::close(fd);
    ::close(ep);
    fd = ep = -1;
  }

  void start_connect() {
    if (::connect(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 && errno != EINPROGRESS) {
      fail(err_text("connect"));
    }
  }

  void ctl(int op, uint32_t events) {
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = tag;
    if (::epoll_ctl(ep, op, fd, op == EPOLL_CTL_DEL ? nullptr : &ev) != 0) {
      fail(err_text(std::string("epoll_ctl ") + op_text(op) + " " + events_text(events)));
    }
  }

  // epoll_ctl must fail with `want` (what the kernel does).
  void ctl_fails(int op, uint32_t events, int want) {
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = tag;
    int rc = ::epoll_ctl(ep, op, fd, op == EPOLL_CTL_DEL ? nullptr : &ev);
    if (rc == 0) {
      fail(std::string("epoll_ctl ") + op_text(op) + " succeeded, want " + std::strerror(want));
    }
    if (errno != want) {
      fail(err_text(std::string("epoll_ctl ") + op_text(op) + " failed with the wrong errno (want " +
                    std::strerror(want) + ")"));
    }
  }

  // One epoll_wait of up to `ms` (0 = report nothing): the events for our
  // socket, 0 when none.
  uint32_t wait_once(int ms) {
    int64_t end = now_ms() + ms;
    for (;;) {
      epoll_event evs[8];
      int n = ::epoll_wait(ep, evs, 8, static_cast<int>(std::max<int64_t>(0, end - now_ms())));
      if (n < 0 && errno == EINTR) {
        continue;
      }
      if (n < 0) {
        fail(err_text("epoll_wait"));
      }
      if (n > 1) {
        fail("epoll_wait reported " + std::to_string(n) + " events for one socket");
      }
      if (n == 0) {
        return 0;
      }
      if (evs[0].data.u64 != tag) {
        fail("epoll_wait returned epoll_data " + std::to_string(evs[0].data.u64) + ", registered " +
             std::to_string(tag));
      }
      if (evs[0].events == 0) {
        fail("epoll_wait reported an event with no bits");
      }
      return evs[0].events;
    }
  }

  int so_error() const {
    int e = 0;
    socklen_t l = sizeof e;
    if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &l) != 0) {
      fail(err_text("getsockopt SO_ERROR"));
    }
    return e;
  }

  // Waits (up to due_ms) until an event has a bit of `want`; events without
  // one are passed over. An error or hangup is a failure.
  uint32_t wait_for(uint32_t want, const std::string& what) {
    int64_t end = now_ms() + due_ms;
    for (;;) {
      int64_t left = end - now_ms();
      uint32_t ev = left > 0 ? wait_once(static_cast<int>(left)) : 0;
      if (ev == 0) {
        fail(what + ": no " + events_text(want) + " within " + std::to_string(due_ms) + " ms");
      }
      if ((ev & (EPOLLERR | EPOLLHUP | EPOLLRDHUP)) != 0) {
        int e = so_error();
        fail(what + ": epoll_wait reported " + events_text(ev) + " (SO_ERROR " + std::strerror(e) + ")");
      }
      if ((ev & want) != 0) {
        return ev;
      }
    }
  }

  // After EPOLLOUT (or poll's POLLOUT) of a non-blocking connect.
  void check_connected() {
    int e = so_error();
    if (e != 0) {
      fail(std::string("connect failed: SO_ERROR ") + std::strerror(e));
    }
  }

  std::string request(uint64_t round) const {
    std::string r = "req " + name + " " + std::to_string(round) + " ";
    size_t pad = 1 + (round * 37 + name.size() * 11) % 1400;
    for (size_t i = 0; i < pad; ++i) {
      r.push_back(static_cast<char>('a' + (i * 7 + round) % 26));
    }
    r.push_back('\n');
    return r;
  }

  void send_request(const std::string& r) {
    size_t off = 0;
    while (off < r.size()) {
      ssize_t n = ::send(fd, r.data() + off, r.size() - off, MSG_NOSIGNAL);
      if (n > 0) {
        off += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) {
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        // poll() is independent of the epoll registration.
        pollfd p{fd, POLLOUT, 0};
        if (::poll(&p, 1, due_ms) != 1) {
          fail("send: socket not writable within " + std::to_string(due_ms) + " ms");
        }
        continue;
      }
      fail(err_text("send"));
    }
  }

  // Reads until EAGAIN (what an edge-triggered reader must do), appending to
  // `got`, which must stay a prefix of `want`.
  void read_available(std::string& got, const std::string& want) {
    char buf[4096];
    for (;;) {
      ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n > 0) {
        got.append(buf, static_cast<size_t>(n));
        if (got.size() > want.size() || want.compare(0, got.size(), got) != 0) {
          fail("reply differs from the request (" + std::to_string(got.size()) + " bytes read, " +
               std::to_string(want.size()) + " sent)");
        }
        continue;
      }
      if (n == 0) {
        fail("EOF from the server after " + std::to_string(got.size()) + " of " + std::to_string(want.size()) +
             " reply bytes");
      }
      if (errno == EINTR) {
        continue;
      }
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        return;
      }
      fail(err_text("recv"));
    }
  }

  // A request, then EPOLLIN reports (edges, or level) until the whole reply
  // was read.
  void round_trip(uint64_t round) {
    std::string req = request(round);
    send_request(req);
    std::string got;
    while (got.size() < req.size()) {
      wait_for(EPOLLIN, "round " + std::to_string(round) + " reply");
      read_available(got, req);
    }
  }

  // The same with poll() instead of epoll (after the socket left the set).
  void round_trip_poll(uint64_t round) {
    std::string req = request(round);
    send_request(req);
    std::string got;
    while (got.size() < req.size()) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, due_ms) != 1) {
        fail("round " + std::to_string(round) + ": poll reported no reply within " + std::to_string(due_ms) + " ms");
      }
      read_available(got, req);
    }
  }

  void ok() const {
    std::printf("ok case=%s rounds=%llu\n", name.c_str(), static_cast<unsigned long long>(o->rounds));
    std::fflush(stdout);
  }
};

constexpr uint32_t et_all = EPOLLIN | EPOLLOUT | EPOLLET | EPOLLRDHUP;

// The connection is up: EPOLLOUT reported, SO_ERROR 0, no data pending.
void connected_by_epoll(tcase& c) {
  uint32_t ev = c.wait_for(EPOLLOUT, "connect");
  if ((ev & EPOLLIN) != 0) {
    c.fail("EPOLLIN reported before anything was sent (" + events_text(ev) + ")");
  }
  c.check_connected();
}

void case_add_before_connect(tcase& c) {
  c.open();
  c.ctl(EPOLL_CTL_ADD, et_all);
  c.start_connect();
  connected_by_epoll(c);
  for (uint64_t r = 0; r < c.o->rounds; ++r) {
    c.round_trip(r);
  }
}

void case_add_then_mod(tcase& c) {
  c.open();
  c.start_connect();
  c.ctl(EPOLL_CTL_ADD, EPOLLOUT);
  connected_by_epoll(c);
  for (uint64_t r = 0; r < c.o->rounds; ++r) {
    c.ctl(EPOLL_CTL_MOD, EPOLLIN);
    std::string req = c.request(r);
    c.send_request(req);
    std::string got;
    while (got.size() < req.size()) {
      uint32_t ev = c.wait_for(EPOLLIN, "round " + std::to_string(r) + " reply");
      if ((ev & EPOLLOUT) != 0) {
        c.fail("EPOLLOUT reported while registered for EPOLLIN only (" + events_text(ev) + ")");
      }
      c.read_available(got, req);
    }
    // Level-triggered EPOLLOUT is due at once, EPOLLIN is not (all read).
    c.ctl(EPOLL_CTL_MOD, EPOLLIN | EPOLLOUT);
    uint32_t ev = c.wait_for(EPOLLOUT, "round " + std::to_string(r) + " after MOD IN|OUT");
    if ((ev & EPOLLIN) != 0) {
      c.fail("EPOLLIN reported with nothing to read (" + events_text(ev) + ")");
    }
    c.ctl(EPOLL_CTL_MOD, EPOLLIN | EPOLLOUT);
  }
}

void case_mod_before_connect(tcase& c) {
  c.open();
  c.ctl(EPOLL_CTL_ADD, EPOLLIN);
  c.ctl(EPOLL_CTL_MOD, et_all);
  c.start_connect();
  connected_by_epoll(c);
  for (uint64_t r = 0; r < c.o->rounds; ++r) {
    c.round_trip(r);
  }
}

void case_del_during_decision(tcase& c) {
  c.open();
  c.ctl(EPOLL_CTL_ADD, et_all);
  c.start_connect();
  c.ctl(EPOLL_CTL_DEL, 0);
  pollfd p{c.fd, POLLOUT, 0};
  int r = ::poll(&p, 1, due_ms);
  if (r != 1 || (p.revents & POLLOUT) == 0 || (p.revents & (POLLERR | POLLHUP)) != 0) {
    c.fail("poll for the connect: " + std::to_string(r) + " revents " + std::to_string(p.revents));
  }
  c.check_connected();
  c.ctl(EPOLL_CTL_ADD, et_all);
  connected_by_epoll(c);  // ADD of a writable socket reports it
  for (uint64_t i = 0; i < c.o->rounds; ++i) {
    c.round_trip(i);
  }
  c.ctl(EPOLL_CTL_DEL, 0);
  c.ctl_fails(EPOLL_CTL_DEL, 0, ENOENT);
  c.ctl_fails(EPOLL_CTL_MOD, EPOLLIN, ENOENT);
  if (c.wait_once(50) != 0) {
    c.fail("epoll_wait reported the socket after DEL");
  }
  c.round_trip_poll(c.o->rounds);  // the connection outlives its registration
}

void case_oneshot(tcase& c) {
  c.open();
  c.ctl(EPOLL_CTL_ADD, EPOLLOUT | EPOLLONESHOT);
  c.start_connect();
  connected_by_epoll(c);
  if (uint32_t ev = c.wait_once(100); ev != 0) {
    c.fail("one-shot EPOLLOUT reported again without a re-arm (" + events_text(ev) + ")");
  }
  for (uint64_t r = 0; r < c.o->rounds; ++r) {
    std::string req = c.request(r);
    c.send_request(req);
    // Disarmed: the reply arrives but must not be reported. 100 ms every
    // tenth round, 10 ms otherwise, to keep the case short.
    if (uint32_t ev = c.wait_once(r % 10 == 0 ? 100 : 10); ev != 0) {
      c.fail("round " + std::to_string(r) + ": " + events_text(ev) + " reported while disarmed");
    }
    std::string got;
    while (got.size() < req.size()) {
      c.ctl(EPOLL_CTL_MOD, EPOLLIN | EPOLLONESHOT);
      c.wait_for(EPOLLIN, "round " + std::to_string(r) + " reply after re-arm");
      c.read_available(got, req);
    }
  }
}

void case_et_first_edge(tcase& c) {
  c.open();
  c.start_connect();
  c.ctl(EPOLL_CTL_ADD, EPOLLIN | EPOLLOUT | EPOLLET);
  connected_by_epoll(c);
  for (uint64_t r = 0; r < c.o->rounds; ++r) {
    c.round_trip(r);
  }
}

constexpr uint64_t take_turns_conns = 20;

void case_sets_take_turns(tcase& c) {
  const int sets[2] = {::epoll_create1(EPOLL_CLOEXEC), ::epoll_create1(EPOLL_CLOEXEC)};
  if (sets[0] < 0 || sets[1] < 0) {
    c.fail(err_text("epoll_create1"));
  }
  for (uint64_t i = 0; i < take_turns_conns; ++i) {
    c.open();
    ::close(c.ep);
    c.ep = sets[i % 2];
    c.ctl(EPOLL_CTL_ADD, et_all);
    c.start_connect();
    connected_by_epoll(c);
    c.round_trip(i);
    epoll_event ev[4];
    if (int n = ::epoll_wait(sets[(i + 1) % 2], ev, 4, 0); n != 0) {
      c.fail("connection " + std::to_string(i) + ": the set it is not in reported " + std::to_string(n) +
             " events (errno " + std::strerror(errno) + ")");
    }
    ::close(c.fd);  // (its registration goes with it)
    c.fd = -1;
  }
  c.ep = sets[0];
  ::close(sets[1]);
}

int client(const client_options& o) {
  static const struct {
    const char* name;
    void (*run)(tcase&);
  } cases[] = {{"add_before_connect", case_add_before_connect},
               {"add_then_mod", case_add_then_mod},
               {"mod_before_connect", case_mod_before_connect},
               {"del_during_decision", case_del_during_decision},
               {"oneshot", case_oneshot},
               {"et_first_edge", case_et_first_edge},
               {"sets_take_turns", case_sets_take_turns}};
  int ran = 0;
  for (const auto& k : cases) {
    if (o.which != "all" && o.which != k.name) {
      continue;
    }
    tcase c;
    c.name = k.name;
    c.o = &o;
    k.run(c);
    c.close_all();
    c.ok();
    ++ran;
  }
  if (ran == 0) {
    usage("unknown case " + o.which);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  bool is_server = smc_test::server_role(argc, argv, usage);
  server_options so;
  client_options co;
  unsigned timeout = 60;
  bool count_given = false;
  smc_test::arg_reader args(argc, argv, 2, usage);
  while (args.next()) {
    if (args.endpoint_option(is_server ? static_cast<smc_test::endpoint_options&>(so)
                                       : static_cast<smc_test::endpoint_options&>(co),
                             "bad value for ")) {
      continue;
    }
    const std::string& n = args.name();
    if (n == "--timeout") {
      timeout = static_cast<unsigned>(std::max<uint64_t>(1, args.size_value("bad value for ")));
    } else if (n == "--count" && is_server) {
      so.count = args.size_value("bad value for ");
      count_given = true;
    } else if (n == "--epoll" && is_server) {
      so.epoll = true;
    } else if (n == "--case" && !is_server) {
      co.which = args.value();
    } else if (n == "--rounds" && !is_server) {
      co.rounds = args.size_value("bad value for ");
    } else {
      usage("unknown option " + n);
    }
  }
  smc_test::arm_watchdog("smc_epoll_reg", timeout);
  if (is_server) {
    if (!count_given) {
      usage("server needs --count");
    }
    return server(so);
  }
  if (!co.port_given) {
    usage("client needs --port");
  }
  return client(co);
}
