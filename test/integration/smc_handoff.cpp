// smc_handoff: accepted connections that change process through SCM_RIGHTS,
// as in Node.js cluster (the primary accepts and hands each connection to a
// worker over a unix socket) and prefork servers. Plain POSIX, nothing about
// SMC: the same binary runs plain or under scripts/smc_run.
//
//   smc_handoff server [--addr A] [--port P] [--portfile F] --count N
//                      --mode undecided|established --worker fork|exec
//                      --reader blocking|epoll [--pass-delay-ms D] [--raw-close]
//                      [--timeout S]
//       The acceptor. Starts ONE worker first (fork: a child running the
//       worker loop; exec: fork + execv(/proc/self/exe, worker ...), a fresh
//       image that inherits only the unix socket), then listens. For each of
//       N connections: undecided = accept and hand the fd over at once;
//       established = accept, read the client's 64-byte hello record, hand
//       the fd over with those 64 bytes in the message. It closes its own
//       copy after each handoff, tells the worker "done, N connections",
//       waits for it and exits with its status. Prints "worker pid=P" first.
//       --pass-delay-ms D: a slow acceptor, which hands each connection
//       over D ms after accept() (undecided: touching nothing meanwhile).
//       --raw-close: it closes its copy with syscall(SYS_close), as Node.js
//       (libuv) closes every fd. --asm-close: with the system call
//       instruction itself (x86-64), which no interposer sees: the number's
//       next user may be the preload's own engine (its handoff listener's
//       accepted requests), which must not take it for the closed socket.
//   smc_handoff worker --sock FD --reader blocking|epoll [--timeout S]
//       Receives fds (SCM_RIGHTS, exactly one per message, no MSG_CTRUNC) and
//       echoes each connection: the 64-byte prefix (if handed one) first,
//       then every byte the client sends, until the client's EOF, which must
//       come exactly after the length its hello record announced; then
//       shutdown(SHUT_WR) and close. blocking: a thread per connection;
//       epoll: one thread, non-blocking sockets, edge-triggered
//       EPOLLIN|EPOLLOUT|EPOLLRDHUP, connections overlapping.
//   smc_handoff client --addr A --port P --conns C --bytes B[K|M|G]
//                      [--parallel K] [--seed S] [--expect ok|reset] [--timeout S]
//       C connections, K at a time (default 2). Each sends the hello record
//       and then B pseudo-random bytes while reading the echo (poll, so a
//       large B cannot deadlock), verifies every echoed byte, shuts down its
//       write side and expects EOF right after the last byte. --expect reset:
//       every connection must instead end in ECONNRESET (or EPIPE on write)
//       within 5 s without ever delivering a wrong byte (an established SMC-R
//       connection cannot follow its fd into another process).
//
// Every wait is bounded (poll timeouts, SO_RCVTIMEO/SO_SNDTIMEO of 20 s, and
// an alarm() watchdog of --timeout seconds, default 60). Exit 0 with one
// "ok ..." line on stdout, or 1 with "smc_handoff: FAIL why" on stderr.
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
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

constexpr size_t hello_size = 64;
constexpr int io_timeout_s = 20;        // one blocking step, or a stall
constexpr int64_t reset_within_ms = 5000;  // --expect reset

const char* g_role = "smc_handoff";

// Taken by the first failure and never released: a second failing thread
// blocks here instead of racing the first one through exit().
pthread_mutex_t g_die_lock = PTHREAD_MUTEX_INITIALIZER;

[[noreturn]] void die(const std::string& why) {
  ::pthread_mutex_lock(&g_die_lock);
  std::fflush(stdout);
  std::fprintf(stderr, "smc_handoff: FAIL %s: %s\n", g_role, why.c_str());
  std::fflush(stderr);
  // exit, not _exit: under the preload the process still writes its stats
  // file, which tells whether the failing connections were SMC. Should the
  // exit itself hang, the alarm() watchdog ends the process.
  std::exit(1);
}

std::string err_text(const std::string& what) { return what + ": " + std::strerror(errno); }

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr,
               "smc_handoff: %s\n"
               "usage: smc_handoff server [--addr A] [--port P] [--portfile F] --count N\n"
               "                          --mode undecided|established --worker fork|exec\n"
               "                          --reader blocking|epoll [--pass-delay-ms D]\n"
               "                          [--raw-close|--asm-close]\n"
               "                          [--timeout S]\n"
               "       smc_handoff worker --sock FD --reader blocking|epoll [--timeout S]\n"
               "       smc_handoff client --addr A --port P --conns C --bytes B [--parallel K]\n"
               "                          [--seed S] [--expect ok|reset] [--timeout S]\n",
               why.c_str());
  std::exit(2);
}

using smc_test::now_ms;
using smc_test::splitmix;

void set_io_timeouts(int fd) {
  timeval tv{io_timeout_s, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

void set_nonblock(int fd) {
  if (!smc_test::set_nonblocking(fd)) {
    die(err_text("fcntl O_NONBLOCK"));
  }
}

// ---------------------------------------------------------------- the stream

void put_le(unsigned char* p, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) {
    p[i] = static_cast<unsigned char>(v >> (8 * i));
  }
}

uint64_t get_le(const unsigned char* p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) {
    v = (v << 8) | p[i];
  }
  return v;
}

// What connection `index` of a client sends: the 64-byte hello record
// ("SMCHOFF1", index, the number of data bytes that follow, a per-connection
// pattern), then `bytes` bytes of a stream seeded per connection. The echo
// must be the same bytes.
struct conn_stream {
  uint32_t index;
  uint64_t bytes;
  uint64_t key;
  unsigned char hello[hello_size];

  conn_stream(uint64_t seed, uint32_t idx, uint64_t n)
      : index(idx), bytes(n), key(splitmix(seed * 1000003 + idx)) {
    std::memcpy(hello, "SMCHOFF1", 8);
    put_le(hello + 8, idx, 4);
    put_le(hello + 12, n, 8);
    for (size_t i = 20; i < hello_size; ++i) {
      hello[i] = static_cast<unsigned char>(idx * 29 + i * 7);
    }
  }

  uint64_t total() const { return hello_size + bytes; }

  // Bytes [off, off + n) of the whole stream (hello, then data).
  void fill(uint64_t off, unsigned char* p, size_t n) const {
    while (n > 0 && off < hello_size) {
      *p++ = hello[off++];
      --n;
    }
    smc_test::pattern_fill(key, off - hello_size, p, n);
  }

  // Stream offset of the first byte of p[0..n) (at offset off) that
  // differs, or -1.
  int64_t check(uint64_t off, const unsigned char* p, size_t n) const {
    return smc_test::first_mismatch([this](uint64_t o, uint8_t* q, size_t k) { fill(o, q, k); }, off,
                                    p, n);
  }
};

// ---------------------------------------------------------------- handoff messages
// One SEQPACKET message per handoff: "CONN" with the fd attached (and the
// bytes the acceptor already read, if any), or "DONE" with the count.
struct handoff_msg {
  char kind[4];
  uint32_t count;
  uint32_t prefix_len;
  unsigned char prefix[hello_size];
};

// Returns false when the worker is gone (EPIPE/ECONNRESET).
bool send_handoff(int sock, const handoff_msg& m, int fd) {
  iovec iov{const_cast<handoff_msg*>(&m), sizeof m};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))];
  if (fd >= 0) {
    std::memset(cbuf, 0, sizeof cbuf);
    mh.msg_control = cbuf;
    mh.msg_controllen = sizeof cbuf;
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
  }
  for (;;) {
    ssize_t n = ::sendmsg(sock, &mh, MSG_NOSIGNAL);
    if (n == static_cast<ssize_t>(sizeof m)) {
      return true;
    }
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0 && (errno == EPIPE || errno == ECONNRESET)) {
      return false;
    }
    die(n < 0 ? err_text("sendmsg to the worker") : "sendmsg to the worker: short message");
  }
}

// Receives one message; returns its fd (-1 for DONE). Returns false at EOF.
bool recv_handoff(int sock, handoff_msg& m, int& fd) {
  iovec iov{&m, sizeof m};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  // Room for several fds, so that "more than one" is seen as such rather
  // than as a truncation.
  alignas(cmsghdr) char cbuf[CMSG_SPACE(4 * sizeof(int))];
  mh.msg_control = cbuf;
  mh.msg_controllen = sizeof cbuf;
  ssize_t n;
  do {
    n = ::recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    die(err_text("recvmsg from the acceptor"));
  }
  if (n == 0) {
    return false;
  }
  if ((mh.msg_flags & MSG_CTRUNC) != 0) {
    die("recvmsg: MSG_CTRUNC (control data truncated)");
  }
  if ((mh.msg_flags & MSG_TRUNC) != 0 || n != static_cast<ssize_t>(sizeof m)) {
    die("recvmsg: message of " + std::to_string(n) + " bytes, want " + std::to_string(sizeof m));
  }
  std::vector<int> fds;
  for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c != nullptr; c = CMSG_NXTHDR(&mh, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) {
      die("recvmsg: unexpected control message level " + std::to_string(c->cmsg_level) + " type " +
          std::to_string(c->cmsg_type));
    }
    size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < k; ++i) {
      int x;
      std::memcpy(&x, CMSG_DATA(c) + i * sizeof(int), sizeof x);
      fds.push_back(x);
    }
  }
  bool conn = std::memcmp(m.kind, "CONN", 4) == 0;
  bool done = std::memcmp(m.kind, "DONE", 4) == 0;
  if (!conn && !done) {
    die("recvmsg: unknown message kind");
  }
  if (fds.size() != (conn ? 1u : 0u)) {
    die("recvmsg: " + std::to_string(fds.size()) + " fds with a " + (conn ? "CONN" : "DONE") + " message");
  }
  if (conn && m.prefix_len != 0 && m.prefix_len != hello_size) {
    die("recvmsg: bad prefix length " + std::to_string(m.prefix_len));
  }
  fd = conn ? fds[0] : -1;
  if (conn) {
    // It must arrive as what was sent: a TCP stream socket.
    struct stat st;
    int type = 0;
    socklen_t tl = sizeof type;
    if (::fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode) ||
        ::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) != 0 || type != SOCK_STREAM) {
      die("the received fd is not a stream socket");
    }
  }
  return true;
}

// ---------------------------------------------------------------- worker
// Follows the bytes a worker sees on one connection: parses the hello record
// and checks that EOF comes exactly at the length it announced.
struct stream_tracker {
  unsigned char hdr[hello_size];
  uint64_t seen = 0;
  uint64_t want = 0;  // hello + data, known once the hello is complete
  uint32_t index = 0;

  void feed(const unsigned char* p, size_t n) {
    for (size_t i = 0; i < n && seen + i < hello_size; ++i) {
      hdr[seen + i] = p[i];
    }
    bool had_hello = seen >= hello_size;
    seen += n;
    if (!had_hello && seen >= hello_size) {
      if (std::memcmp(hdr, "SMCHOFF1", 8) != 0) {
        die("connection does not start with a hello record");
      }
      index = static_cast<uint32_t>(get_le(hdr + 8, 4));
      want = hello_size + get_le(hdr + 12, 8);
    }
    if (seen >= hello_size && seen > want) {
      die("connection " + std::to_string(index) + ": more bytes than the hello announced (" +
          std::to_string(seen) + " > " + std::to_string(want) + ")");
    }
  }

  void at_eof() const {
    if (seen < hello_size || seen != want) {
      die("connection " + std::to_string(index) + ": EOF after " + std::to_string(seen) + " of " +
          (seen < hello_size ? std::string("?") : std::to_string(want)) + " bytes");
    }
  }
};

void serve_blocking(int fd, handoff_msg m) {
  set_io_timeouts(fd);
  stream_tracker t;
  if (m.prefix_len > 0) {
    t.feed(m.prefix, m.prefix_len);
    if (!smc_test::send_all(fd, m.prefix, m.prefix_len)) {
      die(err_text("connection " + std::to_string(t.index) + ": send of the prefix"));
    }
  }
  std::vector<unsigned char> buf(65536);
  for (;;) {
    ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        die("connection " + std::to_string(t.index) + ": recv timed out after " + std::to_string(io_timeout_s) +
            " s at byte " + std::to_string(t.seen));
      }
      die(err_text("connection " + std::to_string(t.index) + ": recv at byte " + std::to_string(t.seen)));
    }
    if (n == 0) {
      break;
    }
    t.feed(buf.data(), static_cast<size_t>(n));
    if (!smc_test::send_all(fd, buf.data(), static_cast<size_t>(n))) {
      die(err_text("connection " + std::to_string(t.index) + ": send at byte " + std::to_string(t.seen)));
    }
  }
  t.at_eof();
  if (::shutdown(fd, SHUT_WR) != 0) {
    die(err_text("connection " + std::to_string(t.index) + ": shutdown"));
  }
  ::close(fd);
}

int worker_blocking(int sock) {
  std::vector<std::thread> threads;
  for (;;) {
    pollfd p{sock, POLLIN, 0};
    int r = ::poll(&p, 1, 60000);
    if (r < 0 && errno == EINTR) {
      continue;
    }
    if (r <= 0) {
      die(r == 0 ? "nothing from the acceptor for 60 s" : err_text("poll on the unix socket"));
    }
    handoff_msg m{};
    int fd = -1;
    if (!recv_handoff(sock, m, fd)) {
      die("the acceptor closed the unix socket without DONE");
    }
    if (fd < 0) {
      for (auto& t : threads) {
        t.join();
      }
      if (threads.size() != m.count) {
        die("served " + std::to_string(threads.size()) + " connections, the acceptor handed " +
            std::to_string(m.count));
      }
      return 0;
    }
    threads.emplace_back(serve_blocking, fd, m);
  }
}

// One connection of the epoll worker.
struct ep_conn {
  int fd = -1;
  stream_tracker t;
  std::vector<unsigned char> out;  // echo not yet sent, from out_off
  size_t out_off = 0;
  bool eof = false;
  int64_t last_progress = 0;
};

// Moves bytes until both directions would block (edge-triggered: the next
// edge comes only after an EAGAIN). Returns true when the connection ended.
bool pump(ep_conn& c) {
  constexpr size_t cap = 1 << 20;  // echo buffered per connection at most
  unsigned char buf[65536];
  for (;;) {
    bool progress = false;
    while (c.out_off < c.out.size()) {
      ssize_t n = ::send(c.fd, c.out.data() + c.out_off, c.out.size() - c.out_off, MSG_NOSIGNAL);
      if (n > 0) {
        c.out_off += static_cast<size_t>(n);
        progress = true;
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        break;
      } else {
        die(err_text("connection " + std::to_string(c.t.index) + ": send at byte " + std::to_string(c.t.seen)));
      }
    }
    if (c.out_off == c.out.size()) {
      c.out.clear();
      c.out_off = 0;
    }
    // Reading stops while too much echo waits; then the send above hit
    // EAGAIN and an EPOLLOUT edge will resume it.
    size_t pending = c.out.size() - c.out_off;
    if (!c.eof && pending < cap) {
      ssize_t n = ::recv(c.fd, buf, std::min(sizeof buf, cap - pending), 0);
      if (n > 0) {
        c.t.feed(buf, static_cast<size_t>(n));
        c.out.insert(c.out.end(), buf, buf + n);
        progress = true;
      } else if (n == 0) {
        c.t.at_eof();
        c.eof = true;
        progress = true;
      } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        die(err_text("connection " + std::to_string(c.t.index) + ": recv at byte " + std::to_string(c.t.seen)));
      }
    }
    if (progress) {
      c.last_progress = now_ms();
    }
    if (c.eof && c.out.empty()) {
      if (::shutdown(c.fd, SHUT_WR) != 0) {
        die(err_text("connection " + std::to_string(c.t.index) + ": shutdown"));
      }
      return true;
    }
    if (!progress) {
      return false;
    }
  }
}

int worker_epoll(int sock) {
  int ep = ::epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) {
    die(err_text("epoll_create1"));
  }
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = nullptr;  // the unix socket
  if (::epoll_ctl(ep, EPOLL_CTL_ADD, sock, &ev) != 0) {
    die(err_text("epoll_ctl ADD unix socket"));
  }
  std::map<ep_conn*, std::unique_ptr<ep_conn>> conns;
  size_t served = 0;
  bool done = false;
  uint32_t count = 0;
  int64_t last_msg = now_ms();
  while (!(done && conns.empty())) {
    epoll_event evs[64];
    int n = ::epoll_wait(ep, evs, 64, 1000);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      die(err_text("epoll_wait"));
    }
    for (int i = 0; i < n; ++i) {
      if (evs[i].data.ptr == nullptr) {
        handoff_msg m{};
        int fd = -1;
        if (!recv_handoff(sock, m, fd)) {
          die("the acceptor closed the unix socket without DONE");
        }
        last_msg = now_ms();
        if (fd < 0) {
          done = true;
          count = m.count;
          if (::epoll_ctl(ep, EPOLL_CTL_DEL, sock, nullptr) != 0) {
            die(err_text("epoll_ctl DEL unix socket"));
          }
          continue;
        }
        auto c = std::make_unique<ep_conn>();
        c->fd = fd;
        c->last_progress = now_ms();
        set_nonblock(fd);
        if (m.prefix_len > 0) {
          c->t.feed(m.prefix, m.prefix_len);
          c->out.assign(m.prefix, m.prefix + m.prefix_len);
        }
        epoll_event cev{};
        cev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
        cev.data.ptr = c.get();
        if (::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev) != 0) {
          die(err_text("epoll_ctl ADD connection"));
        }
        ep_conn* key = c.get();
        conns.emplace(key, std::move(c));
        ++served;
        continue;
      }
      auto it = conns.find(static_cast<ep_conn*>(evs[i].data.ptr));
      if (it == conns.end()) {
        continue;  // ended earlier in this batch
      }
      if (pump(*it->second)) {
        if (::epoll_ctl(ep, EPOLL_CTL_DEL, it->second->fd, nullptr) != 0) {
          die(err_text("epoll_ctl DEL connection"));
        }
        ::close(it->second->fd);
        conns.erase(it);
      }
    }
    int64_t t = now_ms();
    for (auto& [key, c] : conns) {
      if (t - c->last_progress > io_timeout_s * 1000) {
        die("connection " + std::to_string(c->t.index) + ": no progress for " + std::to_string(io_timeout_s) +
            " s at byte " + std::to_string(c->t.seen) + " (an edge was lost?)");
      }
    }
    if (!done && t - last_msg > 60000) {
      die("nothing from the acceptor for 60 s");
    }
  }
  if (served != count) {
    die("served " + std::to_string(served) + " connections, the acceptor handed " + std::to_string(count));
  }
  ::close(ep);
  return 0;
}

int worker_main(int sock, const std::string& reader, unsigned timeout) {
  g_role = "worker";
  smc_test::arm_watchdog("smc_handoff", timeout);
  return reader == "epoll" ? worker_epoll(sock) : worker_blocking(sock);
}

// ---------------------------------------------------------------- acceptor
struct server_options : smc_test::endpoint_options {
  uint64_t count = 0;
  std::string mode;
  std::string worker;
  std::string reader;
  uint64_t pass_delay_ms = 0;
  bool raw_close = false;
  bool asm_close = false;
};

// Waits for the worker; returns its exit code (it printed its own reason
// when that is not 0).
int wait_worker(pid_t pid) {
  int st = 0;
  pid_t w;
  do {
    w = ::waitpid(pid, &st, 0);
  } while (w < 0 && errno == EINTR);
  if (w != pid) {
    die(err_text("waitpid"));
  }
  if (WIFSIGNALED(st)) {
    die("the worker was killed by signal " + std::to_string(WTERMSIG(st)));
  }
  return WEXITSTATUS(st);
}

// The worker ended before taking every connection: its status is the
// result (it printed the reason); a clean exit there is a failure too.
[[noreturn]] void worker_gone(pid_t pid) {
  int rc = wait_worker(pid);
  if (rc == 0) {
    die("the worker exited 0 before the acceptor handed it every connection");
  }
  std::exit(rc);
}

int acceptor(const server_options& o, unsigned timeout) {
  g_role = "acceptor";
  smc_test::arm_watchdog("smc_handoff", timeout);
  int sp[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) != 0) {
    die(err_text("socketpair"));
  }
  std::fflush(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) {
    die(err_text("fork"));
  }
  if (pid == 0) {
    ::close(sp[0]);
    if (o.worker == "exec") {
      if (::fcntl(sp[1], F_SETFD, 0) != 0) {  // the one fd the new image inherits
        die(err_text("fcntl"));
      }
      std::string fd = std::to_string(sp[1]);
      std::string t = std::to_string(timeout);
      const char* argv[] = {"smc_handoff", "worker", "--sock", fd.c_str(), "--reader", o.reader.c_str(),
                            "--timeout", t.c_str(), nullptr};
      ::execv("/proc/self/exe", const_cast<char* const*>(argv));
      die(err_text("exec"));
    }
    int rc = worker_main(sp[1], o.reader, timeout);
    std::exit(rc);  // not _exit: the preload writes the worker's statistics at exit
  }
  ::close(sp[1]);
  std::printf("worker pid=%d\n", static_cast<int>(pid));
  std::fflush(stdout);

  std::string error;
  int ls = smc_test::open_listener(o.addr, o.port, 64, o.portfile, error);
  if (ls < 0) {
    die(error);
  }
  for (uint64_t i = 0; i < o.count; ++i) {
    // The unix socket too: when the worker dies (POLLHUP), its status is
    // the result at once, rather than waiting for connections that its
    // failed client will never make.
    pollfd p[2] = {{ls, POLLIN, 0}, {sp[0], 0, 0}};
    int r = ::poll(p, 2, 30000);
    if (r < 0 && errno == EINTR) {
      --i;
      continue;
    }
    if (r <= 0) {
      die(r == 0 ? "no connection for 30 s" : err_text("poll on the listener"));
    }
    if ((p[1].revents & (POLLHUP | POLLERR)) != 0) {
      worker_gone(pid);
    }
    if ((p[0].revents & POLLIN) == 0) {
      die("poll on the listener: revents " + std::to_string(p[0].revents));
    }
    int fd = ::accept4(ls, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      die(err_text("accept"));
    }
    if (o.pass_delay_ms > 0) {
      // What is under test is this pause (a slow acceptor), not a wait for
      // anything: nothing else happens meanwhile.
      timespec ts{static_cast<time_t>(o.pass_delay_ms / 1000),
                  static_cast<long>(o.pass_delay_ms % 1000) * 1000000L};
      while (::nanosleep(&ts, &ts) != 0 && errno == EINTR) {
      }
    }
    handoff_msg m{};
    std::memcpy(m.kind, "CONN", 4);
    if (o.mode == "established") {
      // The first request read here makes the connection decided (and, over
      // SMC, established) in this process before it moves.
      set_io_timeouts(fd);
      ssize_t got = smc_test::recv_full(fd, m.prefix, hello_size);
      if (got != static_cast<ssize_t>(hello_size)) {
        die(got < 0 ? err_text("recv of the hello record") : "EOF inside the hello record");
      }
      m.prefix_len = hello_size;
    }
    if (!send_handoff(sp[0], m, fd)) {
      worker_gone(pid);
    }
    if (o.asm_close) {
      smc_test::close_unseen(fd);
    } else if (o.raw_close) {
      ::syscall(SYS_close, fd);
    } else {
      ::close(fd);
    }
  }
  ::close(ls);
  handoff_msg d{};
  std::memcpy(d.kind, "DONE", 4);
  d.count = static_cast<uint32_t>(o.count);
  if (!send_handoff(sp[0], d, -1)) {
    worker_gone(pid);
  }
  ::close(sp[0]);
  if (int rc = wait_worker(pid); rc != 0) {
    return rc;
  }
  std::printf("ok mode=%s worker=%s reader=%s conns=%llu\n", o.mode.c_str(), o.worker.c_str(), o.reader.c_str(),
              static_cast<unsigned long long>(o.count));
  return 0;
}

// ---------------------------------------------------------------- client
struct client_options : smc_test::endpoint_options {
  uint64_t conns = 1;
  uint64_t bytes = 1 << 20;
  uint64_t parallel = 2;
  uint64_t seed = 1;
  bool expect_reset = false;
};

// One connection; dies on any failure of its expectation.
void client_conn(const client_options& o, uint32_t index) {
  conn_stream s(o.seed, index, o.bytes);
  std::string what = "connection " + std::to_string(index);
  std::string error;
  int64_t start = now_ms();
  int fd = smc_test::dial(o.addr, o.port, error);
  if (fd < 0) {
    die(what + ": " + error);
  }
  set_nonblock(fd);
  std::vector<unsigned char> out(65536), in(65536);
  uint64_t sent = 0, got = 0;
  bool shut = false;
  int64_t last_progress = now_ms();
  auto reset_seen = [&](const char* how) {
    if (!o.expect_reset) {
      die(what + ": " + how + " after sending " + std::to_string(sent) + " and receiving " + std::to_string(got) +
          " of " + std::to_string(s.total()) + " bytes");
    }
  };
  for (;;) {
    pollfd p{fd, static_cast<short>(POLLIN | (sent < s.total() ? POLLOUT : 0)), 0};
    if (::poll(&p, 1, 200) < 0 && errno != EINTR) {
      die(err_text(what + ": poll"));
    }
    if (sent < s.total()) {
      size_t k = static_cast<size_t>(std::min<uint64_t>(out.size(), s.total() - sent));
      s.fill(sent, out.data(), k);
      ssize_t n = ::send(fd, out.data(), k, MSG_NOSIGNAL);
      if (n > 0) {
        sent += static_cast<uint64_t>(n);
        last_progress = now_ms();
      } else if (n < 0 && (errno == ECONNRESET || errno == EPIPE)) {
        reset_seen(errno == EPIPE ? "EPIPE on send" : "ECONNRESET on send");
        break;
      } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        die(err_text(what + ": send at byte " + std::to_string(sent)));
      }
    }
    if (sent == s.total() && !shut) {
      if (::shutdown(fd, SHUT_WR) != 0) {
        if (errno == ENOTCONN || errno == ECONNRESET) {
          reset_seen("shutdown failed (reset)");
          break;
        }
        die(err_text(what + ": shutdown"));
      }
      shut = true;
    }
    ssize_t n = ::recv(fd, in.data(), in.size(), 0);
    if (n > 0) {
      if (got + static_cast<uint64_t>(n) > s.total()) {
        die(what + ": more bytes echoed than sent (" + std::to_string(got + static_cast<uint64_t>(n)) + " > " +
            std::to_string(s.total()) + ")");
      }
      int64_t bad = s.check(got, in.data(), static_cast<size_t>(n));
      if (bad >= 0) {
        die(what + ": echoed byte " + std::to_string(bad) + " differs" +
            (bad < static_cast<int64_t>(hello_size) ? " (in the hello record)" : ""));
      }
      got += static_cast<uint64_t>(n);
      last_progress = now_ms();
    } else if (n == 0) {
      if (o.expect_reset) {
        die(what + ": EOF after " + std::to_string(got) + " of " + std::to_string(s.total()) +
            " bytes, expected a reset");
      }
      if (got != s.total() || !shut) {
        die(what + ": early EOF after " + std::to_string(got) + " of " + std::to_string(s.total()) + " bytes");
      }
      break;
    } else if (errno == ECONNRESET) {
      reset_seen("ECONNRESET on recv");
      break;
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      die(err_text(what + ": recv at byte " + std::to_string(got)));
    }
    int64_t t = now_ms();
    if (o.expect_reset && t - start > reset_within_ms) {
      die(what + ": no reset within " + std::to_string(reset_within_ms) + " ms (sent " + std::to_string(sent) +
          ", received " + std::to_string(got) + " bytes)");
    }
    if (t - last_progress > io_timeout_s * 1000) {
      die(what + ": no progress for " + std::to_string(io_timeout_s) + " s (sent " + std::to_string(sent) +
          ", received " + std::to_string(got) + " of " + std::to_string(s.total()) + " bytes)");
    }
  }
  ::close(fd);
}

int client(const client_options& o, unsigned timeout) {
  g_role = "client";
  smc_test::arm_watchdog("smc_handoff", timeout);
  std::atomic<uint64_t> next{0};
  std::vector<std::thread> threads;
  for (uint64_t k = 0; k < std::max<uint64_t>(1, std::min(o.parallel, o.conns)); ++k) {
    threads.emplace_back([&] {
      for (uint64_t i = next++; i < o.conns; i = next++) {
        client_conn(o, static_cast<uint32_t>(i));
      }
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  std::printf("ok conns=%llu bytes=%llu expect=%s\n", static_cast<unsigned long long>(o.conns),
              static_cast<unsigned long long>(o.bytes), o.expect_reset ? "reset" : "ok");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    usage("missing role");
  }
  std::string role = argv[1];
  if (role != "server" && role != "worker" && role != "client") {
    usage("role must be server, worker or client");
  }
  server_options so;
  client_options co;
  unsigned timeout = 60;
  int sock = -1;
  std::string reader = "blocking";
  bool count_given = false;
  smc_test::arg_reader args(argc, argv, 2, usage);
  while (args.next()) {
    if (role != "worker" && args.endpoint_option(role == "server" ? static_cast<smc_test::endpoint_options&>(so)
                                                                 : static_cast<smc_test::endpoint_options&>(co),
                                                 "bad value for ")) {
      continue;
    }
    const std::string& n = args.name();
    if (n == "--timeout") {
      timeout = static_cast<unsigned>(std::max<uint64_t>(1, args.size_value("bad value for ")));
    } else if (n == "--reader" && role != "client") {
      reader = args.value();
      if (reader != "blocking" && reader != "epoll") {
        usage("--reader must be blocking or epoll");
      }
    } else if (n == "--sock" && role == "worker") {
      sock = static_cast<int>(args.size_value("bad value for "));
    } else if (n == "--count" && role == "server") {
      so.count = args.size_value("bad value for ");
      count_given = true;
    } else if (n == "--mode" && role == "server") {
      so.mode = args.value();
      if (so.mode != "undecided" && so.mode != "established") {
        usage("--mode must be undecided or established");
      }
    } else if (n == "--pass-delay-ms" && role == "server") {
      so.pass_delay_ms = args.size_value("bad value for ");
    } else if (n == "--raw-close" && role == "server") {
      so.raw_close = true;
    } else if (n == "--asm-close" && role == "server") {
      so.asm_close = true;
    } else if (n == "--worker" && role == "server") {
      so.worker = args.value();
      if (so.worker != "fork" && so.worker != "exec") {
        usage("--worker must be fork or exec");
      }
    } else if (n == "--conns" && role == "client") {
      co.conns = args.size_value("bad value for ");
    } else if (n == "--bytes" && role == "client") {
      co.bytes = args.size_value("bad value for ");
    } else if (n == "--parallel" && role == "client") {
      co.parallel = args.size_value("bad value for ");
    } else if (n == "--seed" && role == "client") {
      co.seed = args.size_value("bad value for ");
    } else if (n == "--expect" && role == "client") {
      std::string e = args.value();
      if (e != "ok" && e != "reset") {
        usage("--expect must be ok or reset");
      }
      co.expect_reset = e == "reset";
    } else {
      usage("unknown option " + n);
    }
  }
  if (role == "worker") {
    if (sock < 0) {
      usage("worker needs --sock");
    }
    return worker_main(sock, reader, timeout);
  }
  if (role == "server") {
    if (!count_given || so.mode.empty() || so.worker.empty()) {
      usage("server needs --count, --mode and --worker");
    }
    so.reader = reader;
    return acceptor(so, timeout);
  }
  if (!co.port_given) {
    usage("client needs --port");
  }
  return client(co, timeout);
}
