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
//       With --expect-fallback: then reads, within the T ms, until the
//       client's bytes "fallback" arrive (after its Decline) and prints
//       "silent got fallback"; fails if they never do.
//   smc_stall client [--addr A] --port P --silent-port Q --loop poll|epoll [--count N]
//           [--await-silent]
//       an event-loop client (run under the preload, with 127.0.0.1 in
//       SMC_PEERS): one thread, non-blocking sockets; first a connect to
//       the silent server Q (its handshake then waits for an Accept that
//       never comes), then N rounds (default 3) of connect, 64 bytes out and
//       back verified, close against the echo server P, all in one poll()
//       or epoll set with the silent socket; each round must end within
//       500 ms ("client ok max_ms=X"). The silent connection must not
//       hold up the loop. With --await-silent: then waits, without a
//       timeout and without touching it otherwise, until the silent
//       connection is writable (its handshake gave up on its own, at its
//       deadline), sends "fallback" on it and prints "client silent fell
//       back".
//   smc_stall lazy [--addr A] [--port P] [--portfile F] [--hold-ms T]
//       run under the preload: a server that accepts one connection and
//       then touches nothing for T ms (default 3000; no read, poll or
//       option), then echoes 64 bytes back and exits 0 ("lazy echoed
//       after hold_ms=T"). Its client's handshake must not wait for it.
//   smc_stall quick [--addr A] --port P
//       run under the preload: a blocking connect ("quick connected
//       ms=X"), 64 bytes out, the 64 echoed bytes back and verified
//       ("quick ok").
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
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <string>
#include <vector>

#include "core/clc.h"
#include "test/integration/echo_loop.h"
#include "test/integration/net_util.h"

namespace {

namespace clc = smc::core::clc;
using smc_test::ep_ctl;
using smc_test::err_text;
using smc_test::now_ms;

constexpr const char* prog = "smc_stall";
constexpr int attack_io_ms = 10000;  // bound on the attack's own waits (its Accept)
constexpr smc_test::raw_role attacker{prog, "attack", attack_io_ms};

const char* const kinds[] = {"silent_proposal", "partial_proposal", "silent_confirm", "slow_rendezvous"};

[[noreturn]] void die(const std::string& why) { smc_test::fail(prog, why); }

constexpr const char* usage_text =
    "usage: smc_stall server [--addr A] [--port P] [--portfile F] --loop poll|epoll [--count N]\n"
    "       smc_stall attack [--addr A] --port P --kind KIND [--hold-ms T]\n"
    "       smc_stall probe [--addr A] --port P [--count N]\n"
    "       smc_stall silent [--addr A] [--port P] [--portfile F] [--hold-ms T] [--expect-fallback]\n"
    "       smc_stall client [--addr A] --port P --silent-port Q --loop poll|epoll [--count N]\n"
    "               [--await-silent]\n"
    "       smc_stall lazy [--addr A] [--port P] [--portfile F] [--hold-ms T]\n"
    "       smc_stall quick [--addr A] --port P\n";

[[noreturn]] void usage(const std::string& why) { smc_test::usage_exit(prog, why, usage_text, kinds); }

struct options : smc_test::loop_options {
  uint16_t silent_port = 0;
  bool expect_fallback = false;  // silent
  bool await_silent = false;     // client
};

// ---------------------------------------------------------------- server

// Echoes all; a read pass breaks off once more than 1 MiB waits to go out.
int server(const options& o) { return smc_test::echo_server(o, {prog, o.loop, o.count, 1u << 20, false}); }

// ---------------------------------------------------------------- attack

// The server's shm Accept (a Decline or anything else fails the attack).
clc::accept_confirm_d read_accept(int fd) {
  clc::header h;
  std::vector<uint8_t> msg = smc_test::read_answer(attacker, fd, h);
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

int attack(const options& o) {
  // A raw TCP socket: this role runs without the preload and speaks CLC
  // itself.
  int fd = smc_test::raw_dial(attacker, o, usage);
  const std::vector<uint8_t> prop = smc_test::shm_proposal();
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
      // Connects (and nothing more) to the server's shm rendezvous listener.
      unix_fd = smc_test::rendezvous_socket(attacker, acc);
      detail += " rendezvous connected";
    }
  }
  std::printf("attack %s: %s\n", o.kind.c_str(), detail.c_str());
  std::printf("attack %s in place\n", o.kind.c_str());
  std::fflush(stdout);
  // Hold: send nothing, read nothing.
  smc_test::hold_for(o.hold_ms);
  if (unix_fd >= 0) {
    ::close(unix_fd);
  }
  ::close(fd);
  std::printf("attack %s done after hold_ms=%d\n", o.kind.c_str(), o.hold_ms);
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
  smc_test::read_clc(attacker, c, h);  // the client's Proposal, whole
  std::printf("silent in place (got a CLC message of %u bytes)\n", static_cast<unsigned>(h.length));
  std::fflush(stdout);
  const int64_t until = now_ms() + o.hold_ms;
  std::string got;  // with --expect-fallback: what came after the Proposal
  const std::string want = "fallback";
  for (int64_t left; (left = until - now_ms()) > 0;) {
    pollfd p{c, static_cast<short>(o.expect_fallback ? POLLIN : 0), 0};  // else: wait out the hold
    if (::poll(&p, 1, static_cast<int>(left)) <= 0 || !o.expect_fallback) {
      continue;
    }
    char buf[256];
    const ssize_t n = ::recv(c, buf, sizeof buf, 0);
    if (n <= 0) {
      die(n == 0 ? "silent: EOF before the client's bytes" : err_text("silent: recv"));
    }
    got.append(buf, static_cast<size_t>(n));
    if (got.find(want) != std::string::npos) {
      std::printf("silent got fallback (%zu bytes after the Proposal)\n", got.size());
      break;
    }
  }
  if (o.expect_fallback && got.find(want) == std::string::npos) {
    die("silent: the client's bytes never came (" + std::to_string(got.size()) + " bytes)");
  }
  ::close(c);
  ::close(ls);
  return 0;
}

// ---------------------------------------------------------------- lazy, quick

int lazy(const options& o) {
  std::string error;
  int ls = smc_test::open_listener(o.addr, o.port, 4, o.portfile, error);
  if (ls < 0) {
    die("lazy: " + error);
  }
  const int c = ::accept(ls, nullptr, nullptr);
  if (c < 0) {
    die(err_text("lazy: accept"));
  }
  smc_test::hold_for(o.hold_ms);  // the accepted socket untouched
  uint8_t buf[smc_test::probe_bytes];
  if (smc_test::recv_full(c, buf, sizeof buf) != static_cast<ssize_t>(sizeof buf) ||
      !smc_test::send_all(c, buf, sizeof buf)) {
    die(err_text("lazy: echo"));
  }
  std::printf("lazy echoed after hold_ms=%d\n", o.hold_ms);
  ::close(c);
  ::close(ls);
  return 0;
}

int quick(const options& o) {
  sockaddr_storage ss;
  socklen_t len = 0;
  std::string error;
  const int fd = smc_test::open_tcp_socket(o.addr, o.port, ss, len, error);
  if (fd < 0) {
    die("quick: " + error);
  }
  const int64_t t0 = now_ms();
  if (::connect(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    die(err_text("quick: connect"));
  }
  std::printf("quick connected ms=%lld\n", static_cast<long long>(now_ms() - t0));
  std::fflush(stdout);
  uint8_t out[smc_test::probe_bytes];
  uint8_t in[smc_test::probe_bytes];
  smc_test::pattern_fill(0x9a1c, 0, out, sizeof out);
  if (!smc_test::send_all(fd, out, sizeof out) ||
      smc_test::recv_full(fd, in, sizeof in) != static_cast<ssize_t>(sizeof in)) {
    die(err_text("quick: echo"));
  }
  if (std::memcmp(in, out, sizeof in) != 0) {
    die("quick: echo differs");
  }
  std::printf("quick ok\n");
  ::close(fd);
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
  uint8_t out[smc_test::probe_bytes];
  uint8_t in[smc_test::probe_bytes];
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
    ep_ctl(prog, ep, EPOLL_CTL_ADD, quiet, EPOLLIN | EPOLLOUT);
  }
  smc_test::round_clock clock(prog, "client");
  for (uint64_t round = 0; round < o.count; ++round) {
    round_state r;
    smc_test::pattern_fill(0xc11e47 + round, 0, r.out, sizeof r.out);
    const int64_t t0 = now_ms();
    r.fd = connect_nb(o.addr, o.port, "client round=" + std::to_string(round));
    if (ep >= 0) {
      ep_ctl(prog, ep, EPOLL_CTL_ADD, r.fd, EPOLLIN | EPOLLOUT);
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
      ep_ctl(prog, ep, EPOLL_CTL_DEL, r.fd, 0);
    }
    ::close(r.fd);
    clock.done(round, ms);
  }
  if (o.await_silent) {
    // Nothing but the wait itself touches the silent connection: only its
    // handshake's own deadline can end it.
    for (bool writable = false; !writable;) {
      if (ep < 0) {
        pollfd p{quiet, POLLOUT, 0};
        if (::poll(&p, 1, -1) < 0 && errno != EINTR) {
          die(err_text("client: poll"));
        }
        writable = (p.revents & POLLOUT) != 0;
      } else {
        epoll_event ev{};
        const int n = ::epoll_wait(ep, &ev, 1, -1);
        if (n < 0 && errno != EINTR) {
          die(err_text("client: epoll_wait"));
        }
        writable = n == 1 && (ev.events & EPOLLOUT) != 0;
      }
    }
    if (::send(quiet, "fallback", 8, MSG_NOSIGNAL) != 8) {
      die(err_text("client: send on the silent connection"));
    }
    std::printf("client silent fell back\n");
  }
  ::close(quiet);
  return clock.finish();
}

int run(int argc, char** argv) {
  options o;
  o.role = smc_test::loop_role(argc, argv, {"server", "attack", "probe", "silent", "client", "lazy", "quick"},
                               usage);
  if (o.role == "probe" || o.role == "client") {
    o.count = 3;
  }
  auto takes = [&o](const std::string& n) {  // which role has which shared option
    const std::string& r = o.role;
    if (n == "--loop") {
      return r == "server" || r == "client";
    }
    if (n == "--count") {
      return r == "server" || r == "probe" || r == "client";
    }
    if (n == "--kind") {
      return r == "attack";
    }
    return n == "--hold-ms" && (r == "attack" || r == "silent" || r == "lazy");
  };
  auto own = [&o](auto& args) {
    if (args.name() == "--expect-fallback" && o.role == "silent") {
      o.expect_fallback = true;
      return true;
    }
    if (args.name() == "--await-silent" && o.role == "client") {
      o.await_silent = true;
      return true;
    }
    if (args.name() != "--silent-port" || o.role != "client") {
      return false;
    }
    o.silent_port = static_cast<uint16_t>(std::min<uint64_t>(args.size_value("bad value for "), 65535));
    return true;
  };
  smc_test::read_loop_options(argc, argv, o, kinds, takes, own, usage);
  if ((o.role == "server" || o.role == "client") && o.loop.empty()) {
    usage(o.role + " needs --loop poll|epoll");
  }
  if (o.role == "client" && o.silent_port == 0) {
    usage("client needs --silent-port");
  }
  if (o.role != "server" && o.role != "silent" && o.role != "lazy" && !o.port_given) {
    usage(o.role + " needs --port");
  }
  if (o.role == "attack" && o.kind.empty()) {
    usage("attack needs --kind");
  }
  if (o.role == "probe" && o.count == 0) {
    usage("probe needs --count >= 1");
  }
  if (o.role == "attack" || o.role == "silent" || o.role == "lazy") {
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
  if (o.role == "lazy") {
    return lazy(o);
  }
  if (o.role == "quick") {
    return quick(o);
  }
  return smc_test::probe(prog, o, o.count, 0, 0x57a11);
}

}  // namespace

int main(int argc, char** argv) { return smc_test::guarded_main(prog, argc, argv, run); }
