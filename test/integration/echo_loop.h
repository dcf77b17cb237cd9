// echo_loop.h: what the integration programs that put a single-threaded
// event-loop server under attack (smc_stall, smc_evil_peer) share: failing
// with "<prog>: FAIL why", the echo server the scenarios watch (poll or
// level-triggered epoll, "ok served N LOOP"), the probe client that times
// echo rounds against the 0.5 s criterion, and the CLC steps of their raw
// roles (those run without the preload and speak CLC through the project's
// own codec). Each program keeps its own usage text and role-specific code;
// the helpers here that fail end the process as the program's die() would,
// given its name (`prog`), so every message and exit code stays its own.
#pragma once

#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "core/clc.h"
#include "core/handshake.h"
#include "core/host_id.h"
#include "test/integration/net_util.h"

namespace smc_test {

// ---------------------------------------------------------------- failing, printing, waiting

// "<prog>: FAIL <why>" on stderr (stdout flushed first) and exit 1.
[[noreturn]] inline void fail(const char* prog, const std::string& why) {
  std::fflush(stdout);
  std::fprintf(stderr, "%s: FAIL %s\n", prog, why.c_str());
  std::fflush(stderr);
  // exit, not _exit: under the preload the process still writes its stats
  // file; should the exit itself hang, the alarm() watchdog ends it.
  std::exit(1);
}

// "<what>: <strerror(errno)>".
inline std::string err_text(const std::string& what) { return what + ": " + std::strerror(errno); }

// printf() of one line (the newline added) to stdout, flushed at once.
inline void say(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
inline void say(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::vprintf(fmt, ap);
  va_end(ap);
  std::fputc('\n', stdout);
  std::fflush(stdout);
}

inline void sleep_ms(int ms) { ::poll(nullptr, 0, ms); }

// Sleeps `ms` milliseconds in all, however often the sleep is cut short.
inline void hold_for(int ms) {
  const int64_t until = now_ms() + ms;
  for (int64_t left = ms; left > 0; left = until - now_ms()) {
    sleep_ms(static_cast<int>(left));
  }
}

// main() of such a program: SIGPIPE ignored, then run(argc, argv); an
// exception that escapes it is "<prog>: FAIL exception: what", exit 1.
template <typename Run>
int guarded_main(const char* prog, int argc, char** argv, Run run) {
  try {
    ::signal(SIGPIPE, SIG_IGN);
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: FAIL exception: %s\n", prog, e.what());
  } catch (...) {
    std::fprintf(stderr, "%s: FAIL unknown exception\n", prog);
  }
  return 1;
}

// ---------------------------------------------------------------- options

// The options of these programs (each role takes some of them).
struct loop_options : endpoint_options {
  std::string role;
  std::string loop;  // "poll" or "epoll"
  std::string kind;
  uint64_t count = 0;
  int hold_ms = 3000;
  unsigned timeout = 60;
};

// A usage error: "<prog>: <why>", the usage `text` (a line a role), the
// options all roles have, then "kinds:" and each of `kinds` on stderr; exit 2.
template <typename Kinds>
[[noreturn]] void usage_exit(const char* prog, const std::string& why, const char* text, const Kinds& kinds) {
  std::fprintf(stderr, "%s: %s\n%s       (all: [--timeout S], default 60)\nkinds:", prog, why.c_str(), text);
  for (const char* k : kinds) {
    std::fprintf(stderr, " %s", k);
  }
  std::fprintf(stderr, "\n");
  std::exit(2);
}

// argv[1], the role, which must be one of `roles` (else usage("missing
// role") or usage("role must be A, B or C"); `usage` must not return).
template <typename Usage>
std::string loop_role(int argc, char** argv, const std::vector<std::string>& roles, Usage usage) {
  if (argc < 2) {
    usage("missing role");
    std::abort();
  }
  std::string role = argv[1];
  if (std::find(roles.begin(), roles.end(), role) == roles.end()) {
    std::string list;
    for (size_t i = 0; i < roles.size(); ++i) {
      list += (i == 0 ? "" : i + 1 == roles.size() ? " or " : ", ") + roles[i];
    }
    usage("role must be " + list);
    std::abort();
  }
  return role;
}

// Takes the current option of `args` into `o` if it is one all these
// programs have: --addr, --port, --portfile, --timeout S, and --loop
// poll|epoll, --count N, --kind K (one of `kinds`) and --hold-ms T where
// takes(name) says that o.role has it. False when it is none of these.
template <typename Reader, typename Kinds, typename Takes, typename Usage>
bool loop_option(Reader& args, loop_options& o, const Kinds& kinds, Takes takes, Usage usage) {
  if (args.endpoint_option(o, "bad value for ")) {
    return true;
  }
  const std::string& n = args.name();
  if (n == "--timeout") {
    o.timeout = static_cast<unsigned>(std::max<uint64_t>(1, args.size_value("bad value for ")));
  } else if (n == "--loop" && takes(n)) {
    o.loop = args.value();
    if (o.loop != "poll" && o.loop != "epoll") {
      usage("--loop must be poll or epoll");
      std::abort();
    }
  } else if (n == "--count" && takes(n)) {
    o.count = args.size_value("bad value for ");
  } else if (n == "--kind" && takes(n)) {
    o.kind = args.value();
    if (std::find_if(std::begin(kinds), std::end(kinds), [&](const char* k) { return o.kind == k; }) ==
        std::end(kinds)) {
      usage("unknown --kind " + o.kind);
      std::abort();
    }
  } else if (n == "--hold-ms" && takes(n)) {
    o.hold_ms = static_cast<int>(std::min<uint64_t>(args.size_value("bad value for "), 3600 * 1000));
  } else {
    return false;
  }
  return true;
}

// Reads the options after the role (o.role, already set) into `o`: each
// one loop_option() takes, or else own(args), the program's own options,
// takes (true); any other is usage("unknown option N for ROLE"). `usage`
// must not return.
template <typename Kinds, typename Takes, typename Own, typename Usage>
void read_loop_options(int argc, char** argv, loop_options& o, const Kinds& kinds, Takes takes, Own own,
                       Usage usage) {
  arg_reader<Usage> args(argc, argv, 2, usage);
  while (args.next()) {
    if (!loop_option(args, o, kinds, takes, usage) && !own(args)) {
      usage("unknown option " + args.name() + " for " + o.role);
      std::abort();
    }
  }
}

// ---------------------------------------------------------------- the echo server

// What the server does with a peer that does not take its echo.
struct echo_server_options {
  const char* prog = "";  // for fail()
  std::string loop;       // "poll" or "epoll"
  uint64_t count = 0;     // ends ("ok served N LOOP") once this many connections ended; 0: never
  // At most about this much waits to go out on one connection. With
  // hold_reads the server stops reading a connection (and watches it for
  // writability only) while that much waits, so a peer that never consumes
  // makes it stop reading, not grow; a hang-up is then found by a send.
  // Without, it reads on regardless, each read pass breaking off once more
  // than out_cap waits (so the send side gets its turn), and a read finds a
  // hang-up.
  size_t out_cap = 1u << 20;
  bool hold_reads = false;
};

// One accepted connection: bytes read but not yet echoed.
struct echo_conn {
  int fd = -1;
  std::string out;
  uint64_t echoed = 0;
  int64_t since_ms = 0;
};

// Sends what is pending until EAGAIN; false when the connection failed.
inline bool flush(echo_conn& c) {
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

// Reads until EAGAIN and echoes, but no more once `stop_at` bytes wait to go
// out; false when the connection ended (EOF or an error, `how` says which).
inline bool serve_readable(echo_conn& c, size_t stop_at, std::string& how) {
  char buf[65536];
  for (;;) {
    ssize_t n = ::recv(c.fd, buf, sizeof buf, 0);
    if (n > 0) {
      c.out.append(buf, static_cast<size_t>(n));
      if (!flush(c)) {
        how = err_text("send");
        return false;
      }
      if (c.out.size() >= stop_at) {
        return true;  // the peer does not take what we send: its turn first
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

// Whether the loop watches `c` for reading.
inline bool wants_in(const echo_server_options& o, const echo_conn& c) {
  return !o.hold_reads || c.out.size() < o.out_cap;
}

// One pass over a connection that the loop found writable (`out`), readable
// or half-closed (`in`), hung up or failed (`err`); false when it ended.
inline bool serve_ready(const echo_server_options& o, echo_conn& c, bool out, bool in, bool err,
                        std::string& how) {
  if ((out || (o.hold_reads && err)) && !flush(c)) {
    how = err_text("send");
    return false;
  }
  if ((in || err) && wants_in(o, c) && !serve_readable(c, o.hold_reads ? o.out_cap : o.out_cap + 1, how)) {
    return false;
  }
  if (o.hold_reads && err && c.out.size() >= o.out_cap && !flush(c)) {
    // Hung up or failed while we wait to send: one more try said which.
    how = err_text("send");
    return false;
  }
  return true;
}

// Accepts all pending connections (non-blocking); returns their fds.
inline std::vector<int> accept_all(const char* prog, int ls) {
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
    fail(prog, err_text("server: accept4"));
  }
}

inline void report_end(const echo_conn& c, const std::string& how) {
  say("server ended fd=%d echoed=%llu after_ms=%lld (%s)", c.fd, static_cast<unsigned long long>(c.echoed),
      static_cast<long long>(now_ms() - c.since_ms), how.c_str());
}

inline int serve_poll(const echo_server_options& o, int ls) {
  std::map<int, echo_conn> conns;
  uint64_t ended = 0;
  while (o.count == 0 || ended < o.count) {
    std::vector<pollfd> pfds;
    pfds.push_back({ls, POLLIN, 0});
    for (const auto& [fd, c] : conns) {
      short ev = static_cast<short>((wants_in(o, c) ? POLLIN | POLLRDHUP : 0) | (c.out.empty() ? 0 : POLLOUT));
      pfds.push_back({fd, ev, 0});
    }
    int n = ::poll(pfds.data(), pfds.size(), 1000);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      fail(o.prog, err_text("server --loop poll: poll"));
    }
    for (const pollfd& p : pfds) {
      if (p.revents == 0) {
        continue;
      }
      if (p.fd == ls) {
        for (int fd : accept_all(o.prog, ls)) {
          conns[fd] = echo_conn{fd, {}, 0, now_ms()};
        }
        continue;
      }
      if ((p.revents & POLLNVAL) != 0) {
        fail(o.prog, "server --loop poll: POLLNVAL on fd " + std::to_string(p.fd));
      }
      echo_conn& c = conns[p.fd];
      std::string how;
      if (!serve_ready(o, c, (p.revents & POLLOUT) != 0, (p.revents & (POLLIN | POLLRDHUP)) != 0,
                       (p.revents & (POLLHUP | POLLERR)) != 0, how)) {
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

// epoll_ctl(), failing with "server --loop epoll: epoll_ctl op OP fd FD".
inline void ep_ctl(const char* prog, int ep, int op, int fd, uint32_t events) {
  epoll_event ev{};
  ev.events = events;
  ev.data.fd = fd;
  if (::epoll_ctl(ep, op, fd, op == EPOLL_CTL_DEL ? nullptr : &ev) != 0) {
    fail(prog, err_text("server --loop epoll: epoll_ctl op " + std::to_string(op) + " fd " + std::to_string(fd)));
  }
}

// Level-triggered: EPOLLIN while we read, EPOLLOUT while an echo is pending.
inline int serve_epoll(const echo_server_options& o, int ls) {
  int ep = ::epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) {
    fail(o.prog, err_text("server --loop epoll: epoll_create1"));
  }
  ep_ctl(o.prog, ep, EPOLL_CTL_ADD, ls, EPOLLIN);
  std::map<int, echo_conn> conns;
  std::map<int, uint32_t> armed;
  uint64_t ended = 0;
  while (o.count == 0 || ended < o.count) {
    epoll_event evs[64];
    int n = ::epoll_wait(ep, evs, 64, 1000);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      fail(o.prog, err_text("server --loop epoll: epoll_wait"));
    }
    for (int i = 0; i < n; ++i) {
      int fd = evs[i].data.fd;
      uint32_t ev = evs[i].events;
      if (fd == ls) {
        for (int cfd : accept_all(o.prog, ls)) {
          conns[cfd] = echo_conn{cfd, {}, 0, now_ms()};
          armed[cfd] = EPOLLIN | EPOLLRDHUP;
          ep_ctl(o.prog, ep, EPOLL_CTL_ADD, cfd, armed[cfd]);
        }
        continue;
      }
      auto it = conns.find(fd);
      if (it == conns.end()) {
        continue;  // closed earlier in this batch
      }
      echo_conn& c = it->second;
      std::string how;
      if (!serve_ready(o, c, (ev & EPOLLOUT) != 0, (ev & (EPOLLIN | EPOLLRDHUP)) != 0,
                       (ev & (EPOLLHUP | EPOLLERR)) != 0, how)) {
        report_end(c, how);
        ep_ctl(o.prog, ep, EPOLL_CTL_DEL, fd, 0);
        ::close(fd);
        conns.erase(it);
        armed.erase(fd);
        ++ended;
        continue;
      }
      const uint32_t want = (wants_in(o, c) ? static_cast<uint32_t>(EPOLLIN | EPOLLRDHUP) : 0u) |
                            (c.out.empty() ? 0u : static_cast<uint32_t>(EPOLLOUT));
      if (want != armed[fd]) {
        ep_ctl(o.prog, ep, EPOLL_CTL_MOD, fd, want);
        armed[fd] = want;
      }
    }
  }
  ::close(ep);
  std::printf("ok served %llu epoll\n", static_cast<unsigned long long>(ended));
  return 0;
}

// The server role: one thread, a non-blocking listener on e (its port
// written to e.portfile), "server listening port=P loop=LOOP", then every
// connection echoed until o.count of them ended.
inline int echo_server(const endpoint_options& e, const echo_server_options& o) {
  std::string error;
  int ls = open_listener(e.addr, e.port, 64, e.portfile, error);
  if (ls < 0) {
    fail(o.prog, "server: " + error);
  }
  if (!set_nonblocking(ls)) {
    fail(o.prog, err_text("server: fcntl O_NONBLOCK"));
  }
  say("server listening port=%d loop=%s", bound_port(ls), o.loop.c_str());
  return o.loop == "epoll" ? serve_epoll(o, ls) : serve_poll(o, ls);
}

// ---------------------------------------------------------------- echo rounds, the probe

constexpr int64_t probe_limit_ms = 500;  // the acceptance criterion
constexpr size_t probe_bytes = 64;

// The rounds of a client (`who`: "probe", "client") held to probe_limit_ms:
// each one's time is printed ("<who> round=I ms=X"); finish() fails ("<who>:
// not answered within 500 ms: round I took X ms, ...") if any was slow, or
// prints "<who> ok max_ms=X".
class round_clock {
 public:
  round_clock(const char* prog, const char* who) : prog_(prog), who_(who) {}

  void done(uint64_t round, int64_t ms) {
    say("%s round=%llu ms=%lld", who_, static_cast<unsigned long long>(round), static_cast<long long>(ms));
    max_ms_ = std::max(max_ms_, ms);
    if (ms > probe_limit_ms) {
      slow_.push_back("round " + std::to_string(round) + " took " + std::to_string(ms) + " ms");
    }
  }

  int finish() const {
    if (!slow_.empty()) {
      std::string why;
      for (const auto& s : slow_) {
        why += (why.empty() ? "" : ", ") + s;
      }
      fail(prog_, std::string(who_) + ": not answered within " + std::to_string(probe_limit_ms) + " ms: " + why);
    }
    say("%s ok max_ms=%lld", who_, static_cast<long long>(max_ms_));
    return 0;
  }

 private:
  const char* prog_;
  const char* who_;
  int64_t max_ms_ = 0;
  std::vector<std::string> slow_;
};

// The probe role, an ordinary client (run under the preload): `count` rounds,
// `gap_ms` apart, of connect, probe_bytes of the stream `key` + round out,
// the echo back and verified, close; "probe round=I ms=X" per round (connect
// to last byte), then "probe ok max_ms=X", or it fails if a round took over
// probe_limit_ms.
inline int probe(const char* prog, const endpoint_options& e, uint64_t count, int gap_ms, uint64_t key) {
  uint8_t out[probe_bytes];
  uint8_t in[probe_bytes];
  round_clock clock(prog, "probe");
  for (uint64_t round = 0; round < count; ++round) {
    if (round > 0 && gap_ms > 0) {
      sleep_ms(gap_ms);
    }
    pattern_fill(key + round, 0, out, sizeof out);
    std::memset(in, 0, sizeof in);
    sockaddr_storage ss;
    socklen_t len = 0;
    std::string error;
    int fd = open_tcp_socket(e.addr, e.port, ss, len, error);
    if (fd < 0) {
      fail(prog, "probe: " + error);
    }
    // Bounds a hung round (the watchdog bounds everything else).
    timeval tv{20, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    const std::string at = "probe round=" + std::to_string(round);
    const int64_t t0 = now_ms();
    int rc;
    do {
      rc = ::connect(fd, reinterpret_cast<sockaddr*>(&ss), len);
    } while (rc != 0 && errno == EINTR);
    if (rc != 0) {
      fail(prog, err_text(at + ": connect"));
    }
    if (!send_all(fd, out, sizeof out)) {
      fail(prog, err_text(at + ": send"));
    }
    ssize_t got = recv_full(fd, in, sizeof in);
    const int64_t ms = now_ms() - t0;
    if (got < 0) {
      fail(prog, err_text(at + ": recv after " + std::to_string(ms) + " ms"));
    }
    if (static_cast<size_t>(got) != sizeof in) {
      fail(prog, at + ": EOF after " + std::to_string(got) + " of " + std::to_string(sizeof in) + " echoed bytes");
    }
    if (std::memcmp(in, out, sizeof in) != 0) {
      size_t i = 0;
      while (i < sizeof in && in[i] == out[i]) {
        ++i;
      }
      fail(prog, at + ": echo differs at byte " + std::to_string(i));
    }
    ::close(fd);
    clock.done(round, ms);
  }
  // All rounds run even after a slow one, so the server sees every
  // connection it counts on and can end normally.
  return clock.finish();
}

// ---------------------------------------------------------------- raw CLC roles

namespace clc = smc::core::clc;

// A role that speaks CLC itself (no preload): its messages start "<who>: "
// and each of its reads of the server's answers waits at most io_ms.
struct raw_role {
  const char* prog;
  const char* who;
  int io_ms;

  [[noreturn]] void die(const std::string& why) const { fail(prog, std::string(who) + ": " + why); }
  [[noreturn]] void die_errno(const std::string& what) const { die(err_text(what)); }
};

// A plain TCP socket (never AF_SMC) connected (blocking) to e's address
// (a bad one is usage("bad --addr A"), which must not return).
template <typename Usage>
int raw_dial(const raw_role& r, const endpoint_options& e, Usage usage) {
  sockaddr_storage ss;
  socklen_t len = 0;
  if (!parse_addr(e.addr, e.port, ss, len)) {
    usage("bad --addr " + e.addr);
    std::abort();
  }
  int fd = ::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    r.die_errno("socket");
  }
  int rc;
  do {
    rc = ::connect(fd, reinterpret_cast<sockaddr*>(&ss), len);
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    r.die_errno("connect");
  }
  return fd;
}

// A same-host Proposal exactly as client_handshake() builds it for shm.
inline std::vector<uint8_t> shm_proposal() {
  clc::proposal prop;
  prop.version = 2;
  prop.typev1 = clc::type_n;
  prop.typev2 = clc::type_d;
  prop.ueids.push_back(clc::make_eid(smc::core::default_ueid()));
  prop.ism_v2.push_back({smc::core::host_id(), clc::loopback_chid});
  return clc::encode(prop);
}

// Reads one whole CLC message (header, then the rest) within r.io_ms.
inline std::vector<uint8_t> read_clc(const raw_role& r, int fd, clc::header& h) {
  timeval tv{r.io_ms / 1000, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::vector<uint8_t> msg(clc::header_len);
  ssize_t n = recv_full(fd, msg.data(), msg.size());
  if (n < 0) {
    r.die_errno("reading the server's CLC header (after the Proposal)");
  }
  if (static_cast<size_t>(n) < msg.size()) {
    r.die("the server closed after " + std::to_string(n) + " bytes instead of answering the Proposal");
  }
  if (clc::error e = clc::peek_header(msg, h); e != clc::error::ok) {
    r.die(std::string("the server's answer is no CLC header: ") + clc::to_string(e));
  }
  msg.resize(h.length);
  n = recv_full(fd, msg.data() + clc::header_len, msg.size() - clc::header_len);
  if (n < 0) {
    r.die_errno("reading the rest of the server's CLC message");
  }
  if (static_cast<size_t>(n) != msg.size() - clc::header_len) {
    r.die("the server closed inside its CLC message");
  }
  return msg;
}

// The server's answer to the Proposal, read_clc(); a Decline fails the role.
inline std::vector<uint8_t> read_answer(const raw_role& r, int fd, clc::header& h) {
  std::vector<uint8_t> msg = read_clc(r, fd, h);
  if (h.type == clc::msg_type::decline) {
    clc::decline d;
    unsigned diag = clc::decode(msg, d) == clc::error::ok ? d.diagnosis : 0;
    char text[96];
    std::snprintf(text, sizeof text, "the server declined the Proposal (diagnosis 0x%08x)", diag);
    r.die(text);
  }
  return msg;
}

// A unix socket connected to the server's shm rendezvous listener, the
// abstract name its Accept names (rdma/shm/shm_transport.cpp,
// rendezvous_name: "smc-preload/<host id %016llx>/<link id %08x>").
inline int rendezvous_socket(const raw_role& r, const clc::accept_confirm_d& acc) {
  int s = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (s < 0) {
    r.die_errno("socket(AF_UNIX)");
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
    r.die_errno("connect to the rendezvous @" + std::string(sa.sun_path + 1));
  }
  return s;
}

}  // namespace smc_test
