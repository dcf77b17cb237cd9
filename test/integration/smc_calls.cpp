// smc_calls: moves a verified byte stream each way over one TCP connection
// with the less common data calls, the ones a preload must serve itself on an
// SMC socket or the kernel would write into the idle TCP socket behind SMC's
// back: sendfile/sendfile64 (offset pointer and file position), splice
// (pipe -> socket, socket -> pipe), sendfile from a socket into a pipe,
// sendmmsg/recvmmsg with many iovecs, writev/readv with IOV_MAX iovecs,
// MSG_MORE, TCP_CORK, FIONREAD, SIOCOUTQ; the connection is closed with
// close_range() (mode sendfile) or syscall(SYS_close) (mmsg, iov: libuv's
// way) and the fd number reused by a pipe must then work as a pipe; in mode
// splice it is closed by the system call instruction, which the preload
// cannot see, right before exit (its stats file, which may get the number,
// must come out right).
// Mode linger0: the client closes with SO_LINGER 0 and the server must see
// ECONNRESET. Mode eintr: signals hit the client's blocking recv; with
// SA_RESTART handlers (signal(), sigaction) it carries on and returns the
// data, without SA_RESTART or with SO_RCVTIMEO set it fails with EINTR, as
// the kernel does for TCP. Mode epoll_sets: the client's socket is in three
// epoll sets at once (level-triggered, edge-triggered, and a set nested in a
// third), each must report what the socket's state says; then, with data
// left unread in a level-triggered set that also holds an eventfd,
// epoll_wait with room for one event must still report the eventfd (a
// kernel fd is never starved by a socket that stays ready); then two
// edge-triggered sets must each report every round's data, and a thread
// asleep in epoll_wait must wake when another one's EPOLL_CTL_MOD makes the
// socket's registration ready. Mode threads
// (client only, against an echo server such as smc_fork's): 16 threads each
// create and connect a socket at once, then one thread writes 1 MiB while
// another reads the echo back on the same fd; meanwhile another thread
// keeps reading RLIMIT_NOFILE (getrlimit, prlimit), which must never read
// other than what the process set. Mode kicks: on four connections, a thread
// asleep in a blocking recv, a poll and an epoll_wait must wake when another
// thread shuts the socket down for reading, and one asleep in a blocking send
// must come back (a short count or EPIPE) when another shuts it down for
// writing; on a fifth, a forked child's blocking recv must return EOF when
// the parent shuts the connection they share down for reading. Plain POSIX, nothing about SMC: the same binary runs plain or
// under scripts/smc_run.
//
//   smc_calls server [--addr A] [--port P] [--portfile F] --mode M [opts]
//   smc_calls client --port P --mode M [opts]
//   modes: sendfile splice mmsg iov linger0 eintr epoll_sets threads kicks
//   opts: --bytes N[K|M|G] --seed S --nonblock
//
// Exit 0 with one "ok ..." line on stdout, or 1 with "smc_calls: FAIL why"
// on stderr.
#include <fcntl.h>
#include <linux/close_range.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "test/integration/net_util.h"

namespace {

struct options : smc_test::endpoint_options {
  bool server = false;
  std::string mode = "sendfile";
  uint64_t bytes = 8 << 20;
  uint64_t seed = 1;
  bool nonblock = false;
};

[[noreturn]] void fail_exit(const std::string& why) {
  std::fflush(stdout);
  std::fprintf(stderr, "smc_calls: FAIL %s\n", why.c_str());
  std::fflush(stderr);
  _exit(1);
}

std::string err_text(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr,
               "smc_calls: %s\nusage: smc_calls server|client [--addr A] [--port P] [--portfile F]"
               " --mode sendfile|splice|mmsg|iov|linger0|eintr|epoll_sets|threads [--bytes N] [--seed S] [--nonblock]\n",
               why.c_str());
  std::exit(2);
}

// ---------------------------------------------------------------- the stream
using smc_test::splitmix;

// Stream `dir` (0: client -> server, 1: server -> client): byte at offset o.
struct stream {
  uint64_t key;
  stream(uint64_t seed, int dir) : key(splitmix(seed * 2 + static_cast<uint64_t>(dir))) {}
  void fill(uint64_t off, uint8_t* p, size_t n) const { smc_test::pattern_fill(key, off, p, n); }
  // Offset of the first mismatch in p[0..n) (at stream offset off), or -1.
  int64_t check(uint64_t off, const uint8_t* p, size_t n) const {
    return smc_test::first_mismatch([this](uint64_t o, uint8_t* q, size_t k) { fill(o, q, k); }, off,
                                    p, n);
  }
};

struct rng {
  uint64_t s;
  uint64_t next() { return s = splitmix(s); }
  size_t upto(size_t n) { return 1 + static_cast<size_t>(next() % n); }
};

void wait_fd(int fd, short ev) {
  pollfd p{fd, ev, 0};
  if (::poll(&p, 1, 30000) <= 0) {
    fail_exit(std::string("poll for ") + (ev == POLLIN ? "input" : "output") + " timed out");
  }
}

// ---------------------------------------------------------------- senders
// Each sends bytes [0, n) of `s` on fd, then shuts down writing.
void send_sendfile(int fd, const options& o, const stream& s) {
  char path[] = "/tmp/smc_calls.XXXXXX";
  int file = ::mkstemp(path);
  if (file < 0) {
    fail_exit(err_text("mkstemp"));
  }
  ::unlink(path);
  std::vector<uint8_t> buf(1 << 20);
  for (uint64_t off = 0; off < o.bytes;) {
    size_t k = std::min<uint64_t>(buf.size(), o.bytes - off);
    s.fill(off, buf.data(), k);
    if (::pwrite(file, buf.data(), k, static_cast<off_t>(off)) != static_cast<ssize_t>(k)) {
      fail_exit(err_text("pwrite"));
    }
    off += k;
  }
  rng r{o.seed ^ 0x5f};
  uint64_t pos = 0;
  unsigned round = 0;
  while (pos < o.bytes) {
    size_t chunk = std::min<uint64_t>(r.upto(1 << 20), o.bytes - pos);
    ssize_t n;
    const int how = static_cast<int>(round++ % 3);
    if (how == 0) {  // offset pointer: the file position must not move
      ::lseek(file, 12345, SEEK_SET);
      off_t at = static_cast<off_t>(pos);
      n = ::sendfile(fd, file, &at, chunk);
      if (n >= 0 && (at != static_cast<off_t>(pos + static_cast<uint64_t>(n)) ||
                     ::lseek(file, 0, SEEK_CUR) != 12345)) {
        fail_exit("sendfile with an offset pointer: offset/file position wrong");
      }
    } else if (how == 1) {  // NULL offset: the file position moves
      ::lseek(file, static_cast<off_t>(pos), SEEK_SET);
      n = ::sendfile(fd, file, nullptr, chunk);
      if (n >= 0 && ::lseek(file, 0, SEEK_CUR) != static_cast<off_t>(pos + static_cast<uint64_t>(n))) {
        fail_exit("sendfile without offset: file position wrong");
      }
    } else {
      off64_t at = static_cast<off64_t>(pos);
      n = ::sendfile64(fd, file, &at, chunk);
      if (n >= 0 && at != static_cast<off64_t>(pos + static_cast<uint64_t>(n))) {
        fail_exit("sendfile64: offset wrong");
      }
    }
    if (n < 0) {
      if (errno == EAGAIN) {
        wait_fd(fd, POLLOUT);
        continue;
      }
      if (errno == EINTR) {
        continue;
      }
      fail_exit(err_text("sendfile"));
    }
    if (n == 0) {
      fail_exit("sendfile returned 0 before the end of the file");
    }
    pos += static_cast<uint64_t>(n);
  }
  // Past the end of the file: 0, offset unchanged.
  off_t at = static_cast<off_t>(o.bytes);
  if (::sendfile(fd, file, &at, 100) != 0 || at != static_cast<off_t>(o.bytes)) {
    fail_exit("sendfile at the end of the file did not return 0");
  }
  ::close(file);
}

void send_splice(int fd, const options& o, const stream& s) {
  int p[2];
  if (::pipe(p) != 0) {
    fail_exit(err_text("pipe"));
  }
  rng r{o.seed ^ 0x77};
  std::vector<uint8_t> buf(65536);
  for (uint64_t pos = 0; pos < o.bytes;) {
    size_t k = std::min<uint64_t>(r.upto(buf.size()), o.bytes - pos);
    s.fill(pos, buf.data(), k);
    if (::write(p[1], buf.data(), k) != static_cast<ssize_t>(k)) {
      fail_exit(err_text("write to the pipe"));
    }
    size_t left = k;
    while (left > 0) {
      unsigned fl = (r.next() & 1) != 0 ? SPLICE_F_MORE : 0;
      ssize_t n = ::splice(p[0], nullptr, fd, nullptr, left, fl | SPLICE_F_MOVE);
      if (n < 0) {
        if (errno == EAGAIN) {
          wait_fd(fd, POLLOUT);
          continue;
        }
        if (errno == EINTR) {
          continue;
        }
        fail_exit(err_text("splice pipe -> socket"));
      }
      if (n == 0 || static_cast<size_t>(n) > left) {
        fail_exit("splice pipe -> socket: bad count " + std::to_string(n));
      }
      left -= static_cast<size_t>(n);
    }
    pos += k;
  }
  ::close(p[0]);
  ::close(p[1]);
}

void send_mmsg(int fd, const options& o, const stream& s) {
  rng r{o.seed ^ 0x33};
  std::vector<uint8_t> buf(1 << 18);
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_CORK, &one, sizeof one);
  uint64_t pos = 0;
  while (pos < o.bytes) {
    // Up to 16 messages of up to 8 iovecs each over the next bytes.
    size_t total = std::min<uint64_t>(r.upto(buf.size()), o.bytes - pos);
    s.fill(pos, buf.data(), total);
    std::vector<iovec> iov;
    std::vector<mmsghdr> msgs;
    std::vector<size_t> iov_first;
    size_t at = 0;
    while (at < total && msgs.size() < 16) {
      size_t nio = r.upto(8);
      iov_first.push_back(iov.size());
      for (size_t i = 0; i < nio && at < total; ++i) {
        size_t k = std::min(total - at, r.upto(total / 4 + 1));
        iov.push_back({buf.data() + at, k});
        at += k;
      }
      msgs.push_back({});
    }
    for (size_t m = 0; m < msgs.size(); ++m) {
      size_t end = m + 1 < msgs.size() ? iov_first[m + 1] : iov.size();
      msgs[m].msg_hdr.msg_iov = &iov[iov_first[m]];
      msgs[m].msg_hdr.msg_iovlen = end - iov_first[m];
    }
    // Send the messages (their bytes: buf[0, at)); a partial message ends a call.
    size_t sent = 0;
    size_t m0 = 0;
    while (m0 < msgs.size()) {
      int flags = MSG_NOSIGNAL | ((r.next() & 1) != 0 ? MSG_MORE : 0);
      int n = ::sendmmsg(fd, &msgs[m0], static_cast<unsigned>(msgs.size() - m0), flags);
      if (n < 0) {
        if (errno == EAGAIN) {
          wait_fd(fd, POLLOUT);
          continue;
        }
        if (errno == EINTR) {
          continue;
        }
        fail_exit(err_text("sendmmsg"));
      }
      if (n == 0) {
        fail_exit("sendmmsg returned 0");
      }
      for (int i = 0; i < n; ++i) {
        msghdr& h = msgs[m0 + static_cast<size_t>(i)].msg_hdr;
        size_t want = 0;
        for (size_t j = 0; j < h.msg_iovlen; ++j) {
          want += h.msg_iov[j].iov_len;
        }
        size_t got = msgs[m0 + static_cast<size_t>(i)].msg_len;
        sent += got;
        if (got < want) {
          if (i != n - 1) {
            fail_exit("sendmmsg went on after a short message");
          }
          // Resend the rest of this message: trim its iovecs.
          size_t skip = got;
          size_t j = 0;
          while (skip >= h.msg_iov[j].iov_len) {
            skip -= h.msg_iov[j].iov_len;
            ++j;
          }
          h.msg_iov += j;
          h.msg_iovlen -= j;
          h.msg_iov[0].iov_base = static_cast<uint8_t*>(h.msg_iov[0].iov_base) + skip;
          h.msg_iov[0].iov_len -= skip;
          --n;  // this message again
        }
      }
      m0 += static_cast<size_t>(n);
    }
    if (sent != at) {
      fail_exit("sendmmsg: counts do not add up");
    }
    pos += at;
  }
  int zero = 0;
  ::setsockopt(fd, IPPROTO_TCP, TCP_CORK, &zero, sizeof zero);
}

void send_iov(int fd, const options& o, const stream& s) {
  rng r{o.seed ^ 0x99};
  std::vector<uint8_t> buf(IOV_MAX * 300);
  std::vector<iovec> iov(IOV_MAX);
  uint64_t pos = 0;
  while (pos < o.bytes) {
    size_t total = 0;
    int cnt = 0;
    int want_cnt = (r.next() & 1) != 0 ? IOV_MAX : static_cast<int>(r.upto(IOV_MAX));
    while (cnt < want_cnt && pos + total < o.bytes) {
      size_t k = std::min<uint64_t>(r.upto(300) - 1, o.bytes - pos - total);  // 0-byte iovecs too
      iov[static_cast<size_t>(cnt)] = {buf.data() + total, k};
      total += k;
      ++cnt;
    }
    s.fill(pos, buf.data(), total);
    size_t done = 0;
    while (done < total) {
      // Skip what went out already.
      int first = 0;
      size_t skip = done;
      while (first < cnt && skip >= iov[static_cast<size_t>(first)].iov_len) {
        skip -= iov[static_cast<size_t>(first)].iov_len;
        ++first;
      }
      iovec save = iov[static_cast<size_t>(first)];
      iov[static_cast<size_t>(first)].iov_base = static_cast<uint8_t*>(save.iov_base) + skip;
      iov[static_cast<size_t>(first)].iov_len -= skip;
      ssize_t n = ::writev(fd, &iov[static_cast<size_t>(first)], cnt - first);
      iov[static_cast<size_t>(first)] = save;
      if (n < 0) {
        if (errno == EAGAIN) {
          wait_fd(fd, POLLOUT);
          continue;
        }
        if (errno == EINTR) {
          continue;
        }
        fail_exit(err_text("writev"));
      }
      done += static_cast<size_t>(n);
    }
    // Unsent bytes: the call must work and stay within what was written.
    int outq = -1;
    if (::ioctl(fd, SIOCOUTQ, &outq) != 0 || outq < 0 ||
        static_cast<uint64_t>(outq) > pos + total) {
      fail_exit("ioctl SIOCOUTQ: " + std::to_string(outq) + " (" + std::strerror(errno) + ")");
    }
    pos += total;
  }
}

// ---------------------------------------------------------------- receivers
// Each reads until EOF, verifying every byte; returns the count.
uint64_t recv_read(int fd, const stream& s, const char* how) {
  std::vector<uint8_t> buf(1 << 18);
  uint64_t got = 0;
  for (;;) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EAGAIN) {
        wait_fd(fd, POLLIN);
        continue;
      }
      if (errno == EINTR) {
        continue;
      }
      fail_exit(err_text(how));
    }
    if (n == 0) {
      return got;
    }
    if (int64_t bad = s.check(got, buf.data(), static_cast<size_t>(n)); bad >= 0) {
      fail_exit(std::string(how) + ": wrong byte at offset " + std::to_string(bad));
    }
    got += static_cast<uint64_t>(n);
  }
}

// Socket -> pipe with splice (or sendfile, which the kernel allows into a
// pipe from a socket), then read the pipe.
uint64_t recv_via_pipe(int fd, const stream& s, bool use_sendfile, const options& o) {
  int p[2];
  if (::pipe(p) != 0) {
    fail_exit(err_text("pipe"));
  }
  rng r{o.seed ^ 0x11};
  std::vector<uint8_t> buf(1 << 16);
  uint64_t got = 0;
  for (;;) {
    size_t want = r.upto(buf.size());
    ssize_t n = use_sendfile ? ::sendfile(p[1], fd, nullptr, want)
                             : ::splice(fd, nullptr, p[1], nullptr, want, SPLICE_F_MOVE);
    if (n < 0) {
      if (errno == EAGAIN) {
        wait_fd(fd, POLLIN);
        continue;
      }
      if (errno == EINTR) {
        continue;
      }
      fail_exit(err_text(use_sendfile ? "sendfile socket -> pipe" : "splice socket -> pipe"));
    }
    if (n == 0) {
      break;
    }
    if (static_cast<size_t>(n) > want) {
      fail_exit("socket -> pipe: more than asked");
    }
    size_t have = 0;
    while (have < static_cast<size_t>(n)) {
      ssize_t k = ::read(p[0], buf.data() + have, static_cast<size_t>(n) - have);
      if (k <= 0) {
        fail_exit(err_text("read from the pipe"));
      }
      have += static_cast<size_t>(k);
    }
    if (int64_t bad = s.check(got, buf.data(), have); bad >= 0) {
      fail_exit("socket -> pipe: wrong byte at offset " + std::to_string(bad));
    }
    got += have;
  }
  ::close(p[0]);
  ::close(p[1]);
  return got;
}

uint64_t recv_mmsg(int fd, const stream& s, const options& o) {
  rng r{o.seed ^ 0x44};
  constexpr size_t nmsg = 8;
  constexpr size_t per = 4;
  std::vector<uint8_t> buf(nmsg * per * 8192);
  uint64_t got = 0;
  for (;;) {
    std::vector<iovec> iov(nmsg * per);
    std::vector<mmsghdr> msgs(nmsg);
    for (size_t m = 0; m < nmsg; ++m) {
      for (size_t i = 0; i < per; ++i) {
        size_t idx = m * per + i;
        iov[idx] = {buf.data() + idx * 8192, r.upto(8192)};
      }
      msgs[m].msg_hdr.msg_iov = &iov[m * per];
      msgs[m].msg_hdr.msg_iovlen = per;
    }
    int n = ::recvmmsg(fd, msgs.data(), nmsg, MSG_WAITFORONE, nullptr);
    if (n < 0) {
      if (errno == EAGAIN) {
        wait_fd(fd, POLLIN);
        continue;
      }
      if (errno == EINTR) {
        continue;
      }
      fail_exit(err_text("recvmmsg"));
    }
    bool eof = false;
    for (int m = 0; m < n; ++m) {
      size_t len = msgs[static_cast<size_t>(m)].msg_len;
      if (len == 0) {
        eof = true;
        break;
      }
      for (size_t i = 0; i < per && len > 0; ++i) {
        const iovec& v = iov[static_cast<size_t>(m) * per + i];
        size_t k = std::min(len, v.iov_len);
        if (int64_t bad = s.check(got, static_cast<uint8_t*>(v.iov_base), k); bad >= 0) {
          fail_exit("recvmmsg: wrong byte at offset " + std::to_string(bad));
        }
        got += k;
        len -= k;
      }
    }
    if (eof || n == 0) {
      return got;
    }
  }
}

uint64_t recv_iov(int fd, const stream& s, const options& o) {
  rng r{o.seed ^ 0x66};
  std::vector<uint8_t> buf(IOV_MAX * 64);
  std::vector<iovec> iov(IOV_MAX);
  uint64_t got = 0;
  bool fionread_ok = false;
  for (;;) {
    wait_fd(fd, POLLIN);
    int avail = -1;
    if (::ioctl(fd, FIONREAD, &avail) != 0) {
      fail_exit(err_text("ioctl FIONREAD"));
    }
    fionread_ok = fionread_ok || avail > 0;
    int cnt = static_cast<int>(r.upto(IOV_MAX));
    for (int i = 0; i < cnt; ++i) {
      iov[static_cast<size_t>(i)] = {buf.data() + static_cast<size_t>(i) * 64, r.upto(64)};
    }
    ssize_t n = ::readv(fd, iov.data(), cnt);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) {
        continue;
      }
      fail_exit(err_text("readv"));
    }
    if (n == 0) {
      break;
    }
    size_t left = static_cast<size_t>(n);
    for (int i = 0; i < cnt && left > 0; ++i) {
      size_t k = std::min(left, iov[static_cast<size_t>(i)].iov_len);
      if (int64_t bad = s.check(got, static_cast<uint8_t*>(iov[static_cast<size_t>(i)].iov_base), k);
          bad >= 0) {
        fail_exit("readv: wrong byte at offset " + std::to_string(bad));
      }
      got += k;
      left -= k;
    }
  }
  if (got > 0 && !fionread_ok) {
    fail_exit("FIONREAD never reported readable bytes");
  }
  return got;
}

// ---------------------------------------------------------------- the run
void set_nonblock(int fd) {
  if (!smc_test::set_nonblocking(fd)) {
    fail_exit(err_text("fcntl O_NONBLOCK"));
  }
}

// Closes the connection with close_range(), or as libuv (node) closes every
// fd, with syscall(SYS_close), then checks that the fd number, reused by a
// pipe, behaves as that pipe (stale per-fd state would make the preload
// serve it as the old connection).
void close_and_reuse(int fd, bool raw) {
  const char* how = raw ? "syscall(SYS_close)" : "close_range";
  const long rc = raw ? ::syscall(SYS_close, fd)
                      : ::close_range(static_cast<unsigned>(fd), static_cast<unsigned>(fd), 0);
  if (rc != 0) {
    fail_exit(err_text(how));
  }
  int p[2];
  if (::pipe(p) != 0) {
    fail_exit(err_text("pipe"));
  }
  if (p[0] != fd && p[1] != fd) {
    fail_exit(std::string(how) + ": the closed fd number was not reused (test setup)");
  }
  const char msg[] = "pipe-after-close";
  if (::write(p[1], msg, sizeof msg) != static_cast<ssize_t>(sizeof msg)) {
    fail_exit(err_text("write to the pipe on the reused fd"));
  }
  char back[sizeof msg] = {};
  if (::read(p[0], back, sizeof back) != static_cast<ssize_t>(sizeof msg) ||
      std::memcmp(msg, back, sizeof msg) != 0) {
    fail_exit("the pipe on the closed socket's fd number does not work as a pipe");
  }
  ::close(p[0]);
  ::close(p[1]);
}

// ---------------------------------------------------------------- eintr
std::atomic<bool> g_in_recv{false};
std::atomic<int> g_hits{0};  // signals handled while the main thread was in recv

void on_usr1(int) {
  if (g_in_recv.load()) {
    g_hits.fetch_add(1);
  }
}

// One blocking recv of `want` bytes by the main thread while another thread
// keeps signalling it (SIGUSR1, every 2 ms). Once `hits` signals landed
// during the call, the other thread sends `ask` to the server, which answers
// with `want` bytes. Returns recv's result (errno kept).
ssize_t recv_under_signals(int fd, char* buf, size_t want, char ask, int hits) {
  const pthread_t target = pthread_self();
  std::atomic<bool> done{false};
  g_hits = 0;
  std::thread t([&] {
    bool asked = false;
    while (!done.load()) {
      pthread_kill(target, SIGUSR1);
      if (!asked && g_hits.load() >= hits) {
        asked = true;
        if (::send(fd, &ask, 1, MSG_NOSIGNAL) != 1) {
          fail_exit(err_text("send from the signalling thread"));
        }
      }
      timespec ts{0, 2000000};
      nanosleep(&ts, nullptr);
    }
  });
  g_in_recv = true;
  ssize_t n = ::recv(fd, buf, want, 0);
  int err = errno;
  g_in_recv = false;
  done = true;
  t.join();
  errno = err;
  return n;
}

void install_usr1(bool restart) {
  struct sigaction sa {};
  sa.sa_handler = on_usr1;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = restart ? SA_RESTART : 0;
  if (::sigaction(SIGUSR1, &sa, nullptr) != 0) {
    fail_exit(err_text("sigaction"));
  }
}

void expect_reply(int fd, char* buf, const char* what) {
  if (smc_test::recv_full(fd, buf, 4) != 4 || std::memcmp(buf, what, 4) != 0) {
    fail_exit(std::string("expected the server's '") + what + "'");
  }
}

// The signals must end the blocking recv with EINTR, losing nothing: then
// `ask` brings the server's `reply`.
void expect_eintr(int fd, const char* with, char ask, const char* reply) {
  char buf[4];
  ssize_t n = recv_under_signals(fd, buf, 4, 'x', 1 << 30);
  if (n >= 0 || errno != EINTR) {
    fail_exit(std::string("recv with ") + with + ": " +
              (n >= 0 ? std::to_string(n) + " bytes" : err_text("error")) + ", expected EINTR");
  }
  if (!smc_test::send_all(fd, &ask, 1)) {
    fail_exit(err_text("send"));
  }
  expect_reply(fd, buf, reply);
}

int run_eintr_client(int fd) {
  char buf[4];
  // 1. signal() installs a BSD-style (SA_RESTART) handler: recv carries on.
  if (::signal(SIGUSR1, on_usr1) == SIG_ERR) {
    fail_exit(err_text("signal"));
  }
  ssize_t n = recv_under_signals(fd, buf, 4, 'A', 10);
  if (n < 0) {
    fail_exit(err_text("recv with SA_RESTART handlers (signal())"));
  }
  if (n != 4 && smc_test::recv_full(fd, buf + n, static_cast<size_t>(4 - n)) != 4 - n) {
    fail_exit(err_text("recv rest"));
  }
  if (std::memcmp(buf, "data", 4) != 0) {
    fail_exit("wrong reply after the signals");
  }
  const int hits1 = g_hits.load();
  // 2. A handler without SA_RESTART: EINTR, nothing lost.
  install_usr1(false);
  expect_eintr(fd, "a handler without SA_RESTART", 'B', "more");
  // 3. SA_RESTART again (sigaction), but SO_RCVTIMEO set: EINTR.
  install_usr1(true);
  timeval tv{30, 0};
  if (::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0) {
    fail_exit(err_text("SO_RCVTIMEO"));
  }
  expect_eintr(fd, "SO_RCVTIMEO and SA_RESTART", 'C', "last");
  ::signal(SIGUSR1, SIG_IGN);
  ::shutdown(fd, SHUT_WR);
  if (::recv(fd, buf, 1, 0) != 0) {
    fail_exit("expected EOF from the server");
  }
  ::close(fd);
  std::printf("ok mode=eintr client restarted_over=%d signals\n", hits1);
  return 0;
}

int run_eintr_server(int fd) {
  char c;
  const struct {
    char ask;
    const char* reply;
  } steps[] = {{'A', "data"}, {'B', "more"}, {'C', "last"}};
  for (const auto& st : steps) {
    if (smc_test::recv_full(fd, &c, 1) != 1 || c != st.ask) {
      fail_exit(std::string("expected the client's '") + st.ask + "'");
    }
    if (!smc_test::send_all(fd, st.reply, 4)) {
      fail_exit(err_text("send reply"));
    }
  }
  if (::recv(fd, &c, 1, 0) != 0) {
    fail_exit("expected EOF from the client");
  }
  ::close(fd);
  std::printf("ok mode=eintr server\n");
  return 0;
}

// ---------------------------------------------------------------- epoll_sets
// Which of `want` the set reports for its one registration (0: none), after
// waiting up to timeout_ms.
// Until thread `tid` (0: not started yet) of process `pid` (0: this one)
// sleeps in one of the system calls `nrs` (as /proc/PID/task/TID/syscall
// says), or `done` is set. False if it was never seen there.
bool wait_asleep(const std::atomic<pid_t>& tid, const std::vector<long>& nrs,
                 const std::atomic<uint32_t>& done, pid_t pid = 0) {
  for (int i = 0; i < 100000 && done.load() == 0; ++i) {
    const pid_t t = tid.load();
    if (t != 0) {
      char path[64];
      std::snprintf(path, sizeof path, "/proc/%d/task/%d/syscall",
                    static_cast<int>(pid != 0 ? pid : ::getpid()), static_cast<int>(t));
      FILE* f = std::fopen(path, "r");
      long nr = -1;
      if (f != nullptr) {
        if (std::fscanf(f, "%ld", &nr) != 1) {
          nr = -1;
        }
        std::fclose(f);
      }
      if (std::find(nrs.begin(), nrs.end(), nr) != nrs.end()) {
        return true;
      }
    }
    std::this_thread::yield();
  }
  return false;
}

uint32_t ep_events(int ep, int timeout_ms) {
  epoll_event ev[4];
  int n;
  do {
    n = ::epoll_wait(ep, ev, 4, timeout_ms);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    fail_exit(err_text("epoll_wait"));
  }
  if (n > 1) {
    fail_exit("epoll_wait: more events than registrations");
  }
  return n == 0 ? 0 : ev[0].events;
}

int ep_with(int fd, uint32_t events, uint64_t data) {
  int ep = ::epoll_create1(EPOLL_CLOEXEC);
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = data;
  if (ep < 0 || ::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
    fail_exit(err_text("epoll_create1/epoll_ctl"));
  }
  return ep;
}

int run_epoll_sets_client(int fd, const options& o) {
  set_nonblock(fd);
  const uint64_t tag_lt = 0x1111222233334444ULL;
  const uint64_t tag_et = 0x5555666677778888ULL;
  int lt = ep_with(fd, EPOLLIN | EPOLLRDHUP, tag_lt);
  int et = ep_with(fd, EPOLLIN | EPOLLET, tag_et);
  int inner = ep_with(fd, EPOLLIN, 0x9999);
  int outer = ep_with(inner, EPOLLIN, 0xAAAA);
  // EPOLLEXCLUSIVE: ADD only, with no bits beyond in/out/err/hup/et.
  int excl = ::epoll_create1(EPOLL_CLOEXEC);
  epoll_event xev{};
  xev.events = EPOLLIN | EPOLLRDHUP | EPOLLEXCLUSIVE;
  if (::epoll_ctl(excl, EPOLL_CTL_ADD, fd, &xev) == 0 || errno != EINVAL) {
    fail_exit("EPOLLEXCLUSIVE with EPOLLRDHUP was not refused with EINVAL");
  }
  xev.events = EPOLLIN | EPOLLEXCLUSIVE;
  xev.data.u64 = 0xBBBB;
  if (::epoll_ctl(excl, EPOLL_CTL_ADD, fd, &xev) != 0) {
    fail_exit(err_text("EPOLL_CTL_ADD with EPOLLEXCLUSIVE"));
  }
  if (::epoll_ctl(excl, EPOLL_CTL_MOD, fd, &xev) == 0 || errno != EINVAL) {
    fail_exit("EPOLL_CTL_MOD of an EPOLLEXCLUSIVE registration was not refused with EINVAL");
  }
  std::vector<uint8_t> buf(4096);
  const stream in(o.seed, 1);
  uint64_t got = 0;
  const int rounds = 50;
  for (int r = 0; r < rounds; ++r) {
    if (!smc_test::send_all(fd, "n", 1)) {  // ask for the next 3000 bytes
      fail_exit(err_text("send ask"));
    }
    // Every set sees the data (blocking waits: they must wake).
    if ((ep_events(outer, 10000) & EPOLLIN) == 0) {
      fail_exit("round " + std::to_string(r) + ": the nested set did not report");
    }
    if ((ep_events(lt, 10000) & EPOLLIN) == 0) {
      fail_exit("round " + std::to_string(r) + ": the level-triggered set did not report");
    }
    if ((ep_events(et, 10000) & EPOLLIN) == 0) {
      fail_exit("round " + std::to_string(r) + ": the edge-triggered set did not report");
    }
    if ((ep_events(excl, 10000) & EPOLLIN) == 0) {  // the only exclusive waiter: woken
      fail_exit("round " + std::to_string(r) + ": the EPOLLEXCLUSIVE set did not report");
    }
    // Level-triggered: still readable, after the other sets looked and after
    // a partial read, until everything is read.
    if ((ep_events(lt, 0) & EPOLLIN) == 0) {
      fail_exit("round " + std::to_string(r) + ": level-triggered set lost the level");
    }
    size_t part = 1 + static_cast<size_t>(r) * 37 % 1000;
    ssize_t n = ::recv(fd, buf.data(), part, 0);
    if (n <= 0) {
      fail_exit(err_text("recv part"));
    }
    if (int64_t bad = in.check(got, buf.data(), static_cast<size_t>(n)); bad >= 0) {
      fail_exit("wrong byte at offset " + std::to_string(bad));
    }
    got += static_cast<uint64_t>(n);
    uint64_t round_end = static_cast<uint64_t>(r + 1) * 3000;
    while (got < round_end) {
      if ((ep_events(lt, 10000) & EPOLLIN) == 0) {
        fail_exit("round " + std::to_string(r) + ": level-triggered set lost data still unread");
      }
      n = ::recv(fd, buf.data(), std::min<uint64_t>(buf.size(), round_end - got), 0);
      if (n < 0 && errno == EAGAIN) {
        continue;
      }
      if (n <= 0) {
        fail_exit(err_text("recv rest"));
      }
      if (int64_t bad = in.check(got, buf.data(), static_cast<size_t>(n)); bad >= 0) {
        fail_exit("wrong byte at offset " + std::to_string(bad));
      }
      got += static_cast<uint64_t>(n);
    }
    // All read: the level-triggered sets go quiet.
    if (ep_events(lt, 0) != 0 || ep_events(outer, 0) != 0 || ep_events(excl, 0) != 0) {
      fail_exit("round " + std::to_string(r) + ": level-triggered set ready with nothing to read");
    }
    ep_events(et, 0);  // an edge-triggered set may repeat an edge: not asserted
  }
  // The server's next 3000 bytes, checked (waiting on the level-triggered
  // set whenever there is nothing to read yet).
  auto read_chunk = [&](const char* what) {
    const uint64_t end = got + 3000;
    while (got < end) {
      ssize_t n = ::recv(fd, buf.data(), std::min<uint64_t>(buf.size(), end - got), 0);
      if (n < 0 && errno == EAGAIN) {
        ep_events(lt, 10000);
        continue;
      }
      if (n <= 0) {
        fail_exit(err_text(what));
      }
      if (int64_t bad = in.check(got, buf.data(), static_cast<size_t>(n)); bad >= 0) {
        fail_exit("wrong byte at offset " + std::to_string(bad));
      }
      got += static_cast<uint64_t>(n);
    }
  };
  // A socket that stays readable (nothing is read) and an eventfd in one
  // level-triggered set, waited on with room for one event: both come.
  {
    int mix = ep_with(fd, EPOLLIN, 0x1212);
    int efd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    epoll_event eev{};
    eev.events = EPOLLIN;
    eev.data.u64 = 0x3434;
    if (efd < 0 || ::epoll_ctl(mix, EPOLL_CTL_ADD, efd, &eev) != 0) {
      fail_exit(err_text("eventfd in the mixed set"));
    }
    if (!smc_test::send_all(fd, "n", 1)) {
      fail_exit(err_text("send ask"));
    }
    if ((ep_events(lt, 10000) & EPOLLIN) == 0) {
      fail_exit("mixed set: the data did not come");
    }
    const uint64_t one = 1;
    if (::write(efd, &one, sizeof one) != static_cast<ssize_t>(sizeof one)) {
      fail_exit(err_text("eventfd write"));
    }
    int seen_sock = 0;
    int seen_efd = 0;
    for (int i = 0; i < 32; ++i) {
      epoll_event ev;
      int n = ::epoll_wait(mix, &ev, 1, 10000);
      if (n != 1) {
        fail_exit(err_text("mixed set: epoll_wait"));
      }
      seen_sock += ev.data.u64 == 0x1212 ? 1 : 0;
      seen_efd += ev.data.u64 == 0x3434 ? 1 : 0;
    }
    if (seen_sock == 0 || seen_efd == 0) {
      fail_exit("mixed set with room for one event: socket reported " + std::to_string(seen_sock) +
                " times, eventfd " + std::to_string(seen_efd) + " times in 32 waits");
    }
    read_chunk("recv mixed");
    ::close(efd);
    ::close(mix);
  }
  // Two edge-triggered sets and no other watcher: each reports each
  // round's data, however the other takes its edges.
  ::close(outer);
  ::close(inner);
  {
    int et2 = ep_with(fd, EPOLLIN | EPOLLET, 0x5656);
    for (int r = 0; r < 20; ++r) {
      if (!smc_test::send_all(fd, "n", 1)) {
        fail_exit(err_text("send ask"));
      }
      if ((ep_events(et, 10000) & EPOLLIN) == 0 || (ep_events(et2, 10000) & EPOLLIN) == 0) {
        fail_exit("two edge-triggered sets, round " + std::to_string(r) +
                  ": one did not report the data");
      }
      read_chunk("recv two sets");
    }
    ::close(et2);
  }
  // One thread asleep in epoll_wait on a set where the socket waits for
  // input only; another adds EPOLLOUT (the socket is writable): the
  // sleeper wakes with it, as the kernel wakes waiters on EPOLL_CTL_MOD.
  {
    int ws = ep_with(fd, EPOLLIN, 0x7878);
    std::atomic<pid_t> tid{0};
    std::atomic<uint32_t> woke{0};
    std::thread sleeper([&] {
      tid.store(static_cast<pid_t>(::syscall(SYS_gettid)));
      woke.store(ep_events(ws, 10000) | 0x80000000u);
    });
    // Until the sleeper is in the system call (epoll_wait, epoll_pwait).
    const bool asleep = wait_asleep(tid, {SYS_epoll_wait, SYS_epoll_pwait}, woke);
    epoll_event mev{};
    mev.events = EPOLLIN | EPOLLOUT;
    mev.data.u64 = 0x7878;
    if (::epoll_ctl(ws, EPOLL_CTL_MOD, fd, &mev) != 0) {
      fail_exit(err_text("EPOLL_CTL_MOD for the sleeper"));
    }
    sleeper.join();
    if ((woke.load() & EPOLLOUT) == 0) {
      fail_exit(std::string("a thread asleep in epoll_wait was not woken by EPOLL_CTL_MOD to a ready "
                            "state") + (asleep ? "" : " (it was never seen asleep)"));
    }
    ::close(ws);
  }
  // Data that came while no set watched the socket, then a set nested in
  // another one (level-triggered, and edge-triggered): the outer set is
  // ready at once, a poll() of the inner one too, and both go quiet once
  // everything is read. (Their readiness is the registration's level,
  // set from the connection's state: client stat waits.wakes_rung stays
  // 0, no ring of our own on the connection's doorbell.)
  for (const bool edge : {false, true}) {
    if (!smc_test::send_all(fd, "n", 1)) {
      fail_exit(err_text("send ask"));
    }
    if ((ep_events(lt, 10000) & EPOLLIN) == 0) {
      fail_exit("late nested set: the data did not come");
    }
    // (All 3000 bytes: the server sends them in one write.)
    for (int i = 0; i < 100; ++i) {
      int avail = 0;
      if (::ioctl(fd, FIONREAD, &avail) != 0) {
        fail_exit(err_text("FIONREAD"));
      }
      if (avail >= 3000) {
        break;
      }
      ep_events(et, 100);  // (the next arrival)
    }
    const std::string what = std::string(edge ? "edge" : "level") + "-triggered set nested late";
    int in2 = ep_with(fd, EPOLLIN | (edge ? EPOLLET : 0u), 0xC0C0);
    int out2 = ep_with(in2, EPOLLIN, 0xD0D0);
    if ((ep_events(out2, 0) & EPOLLIN) == 0) {
      fail_exit(what + ": the outer set is not ready with data unread");
    }
    pollfd pf{in2, POLLIN, 0};
    if (::poll(&pf, 1, 0) != 1 || (pf.revents & POLLIN) == 0) {
      fail_exit(what + ": poll() of the inner set is not ready with data unread");
    }
    if ((ep_events(in2, 0) & EPOLLIN) == 0) {
      fail_exit(what + ": the inner set does not report the data");
    }
    if (edge && ep_events(in2, 0) != 0) {
      fail_exit(what + ": reported twice for one arrival");
    }
    read_chunk("recv late nested");
    pf.revents = 0;
    if (ep_events(out2, 0) != 0 || ::poll(&pf, 1, 0) != 0) {
      fail_exit(what + ": still ready with nothing to read");
    }
    ::close(out2);
    ::close(in2);
  }
  ::shutdown(fd, SHUT_WR);
  // The server's EOF: every set reports it.
  if ((ep_events(lt, 10000) & (EPOLLIN | EPOLLRDHUP)) != (EPOLLIN | EPOLLRDHUP)) {
    fail_exit("level-triggered set: no EPOLLIN|EPOLLRDHUP at the peer's end");
  }
  if (::recv(fd, buf.data(), 1, 0) != 0) {
    fail_exit("expected EOF");
  }
  ::close(excl);
  ::close(et);
  ::close(lt);
  ::close(fd);
  std::printf("ok mode=epoll_sets client rounds=%d bytes=%llu\n", rounds,
              static_cast<unsigned long long>(got));
  return 0;
}

int run_epoll_sets_server(int fd, const options& o) {
  const stream out(o.seed, 1);
  std::vector<uint8_t> chunk(3000);
  uint64_t sent = 0;
  char c;
  for (;;) {
    ssize_t n = ::recv(fd, &c, 1, 0);
    if (n == 0) {
      break;
    }
    if (n < 0) {
      fail_exit(err_text("recv ask"));
    }
    out.fill(sent, chunk.data(), chunk.size());
    if (!smc_test::send_all(fd, chunk.data(), chunk.size())) {
      fail_exit(err_text("send"));
    }
    sent += chunk.size();
  }
  ::close(fd);
  std::printf("ok mode=epoll_sets server bytes=%llu\n", static_cast<unsigned long long>(sent));
  return 0;
}

// ---------------------------------------------------------------- kicks
// Every system call a thread of ours may sleep in while blocked on a socket:
// the kernel's own (plain TCP), or the library's waits.
const std::vector<long> blocking_calls = {
#ifdef SYS_poll
    SYS_poll,
#endif
#ifdef SYS_epoll_pwait2
    SYS_epoll_pwait2,  // (a poll on one same-host connection sleeps on the thread's wait set)
#endif
    SYS_ppoll, SYS_epoll_wait, SYS_epoll_pwait, SYS_recvfrom, SYS_sendto, SYS_read, SYS_write};

// The server: takes `conns` connections, then reads each, in order, to
// its end, throwing away what came (the client's blocked send needs the
// server not to read that connection while the first is open; TCP's FIN
// only comes after the data queued before it).
int run_kicks_server(int listener, int conns) {
  std::vector<int> fds;
  for (int i = 0; i < conns; ++i) {
    int fd = ::accept(listener, nullptr, nullptr);
    if (fd < 0) {
      fail_exit(err_text("accept"));
    }
    fds.push_back(fd);
  }
  std::vector<char> buf(65536);
  for (int fd : fds) {
    ssize_t n;
    do {
      n = ::recv(fd, buf.data(), buf.size(), 0);
    } while (n > 0 || (n < 0 && errno == EINTR));
    ::close(fd);
  }
  std::printf("ok mode=kicks server conns=%d\n", conns);
  return 0;
}

// One thread blocks in `op` (which returns what it saw, | 0x80000000) on a
// socket of its own; once it sleeps, this thread calls `kick`: the sleeper
// must wake and `op` come back (a sleeper that never does ends the process
// by its alarm).
template <typename Op, typename Kick>
uint32_t kicked(const char* what, Op op, Kick kick) {
  std::atomic<pid_t> tid{0};
  std::atomic<uint32_t> out{0};
  std::thread t([&] {
    tid.store(static_cast<pid_t>(::syscall(SYS_gettid)));
    out.store(op() | 0x80000000u);
  });
  const bool asleep = wait_asleep(tid, blocking_calls, out);
  kick();
  t.join();
  if (!asleep) {
    fail_exit(std::string(what) + ": the thread was never seen asleep");
  }
  return out.load() & 0x7fffffffu;
}

// The client: five connections, on each one thread asleep and another that
// changes the connection under it, as TCP wakes its sleepers: shutdown
// (SHUT_RD) under a blocking recv, a poll and an epoll_wait for input, and
// shutdown (SHUT_WR) under a blocking send that fills the server's buffers;
// then a forked child asleep in a blocking recv on the connection both
// hold, which the parent shuts down for reading.
int run_kicks_client(int first, const options& o) {
  std::vector<int> fds{first};
  std::string error;
  while (fds.size() < 5) {
    int fd = smc_test::dial(o.addr, o.port, error);
    if (fd < 0) {
      fail_exit(error);
    }
    fds.push_back(fd);
  }
  // A blocking call that is never woken fails the test by this (no
  // timeouts on the sockets: a send that timed out would return a short
  // count too).
  ::alarm(120);
  const uint32_t rd = kicked(
      "recv", [&] {
        char c;
        const ssize_t n = ::recv(fds[0], &c, 1, 0);
        return n == 0 ? 1u : (n < 0 ? 2u : 3u);
      },
      [&] { ::shutdown(fds[0], SHUT_RD); });
  if (rd != 1) {
    fail_exit(std::string("shutdown(SHUT_RD) under a blocking recv: ") +
              (rd == 2 ? "it failed" : "it read data") + ", not EOF");
  }
  const uint32_t pl = kicked(
      "poll", [&] {
        pollfd p{fds[1], POLLIN, 0};
        return ::poll(&p, 1, 10000) > 0 ? static_cast<uint32_t>(p.revents) : 0u;
      },
      [&] { ::shutdown(fds[1], SHUT_RD); });
  if ((pl & POLLIN) == 0) {
    fail_exit("shutdown(SHUT_RD) under poll: no POLLIN");
  }
  const int ep = ep_with(fds[2], EPOLLIN, 0x4b4b);
  const uint32_t ew = kicked(
      "epoll_wait", [&] { return ep_events(ep, 10000); }, [&] { ::shutdown(fds[2], SHUT_RD); });
  if ((ew & EPOLLIN) == 0) {
    fail_exit("shutdown(SHUT_RD) under epoll_wait: no EPOLLIN");
  }
  ::close(ep);
  // 64 MiB: more than the server's receive buffer and our send buffer hold.
  std::vector<uint8_t> big(64 << 20, 0x6b);
  std::atomic<ssize_t> sent{0};
  std::atomic<int> send_err{0};
  const uint32_t wr = kicked(
      "send", [&] {
        const ssize_t n = ::send(fds[3], big.data(), big.size(), MSG_NOSIGNAL);
        sent.store(n);
        send_err.store(errno);
        return n < 0 && errno == EPIPE ? 1u : (n > 0 && static_cast<size_t>(n) < big.size() ? 2u : 3u);
      },
      [&] { ::shutdown(fds[3], SHUT_WR); });
  if (wr != 1 && wr != 2) {
    fail_exit("shutdown(SHUT_WR) under a blocking send: it returned " + std::to_string(sent.load()) +
              (sent.load() < 0 ? std::string(" (") + std::strerror(send_err.load()) + ")"
                               : std::string()) +
              ", not a short count or EPIPE");
  }
  std::fflush(nullptr);
  const pid_t child = ::fork();
  if (child < 0) {
    fail_exit(err_text("fork"));
  }
  if (child == 0) {
    char c;
    const ssize_t n = ::recv(fds[4], &c, 1, 0);
    ::_exit(n == 0 ? 0 : 3);  // (no statistics of the child's: one file)
  }
  std::atomic<pid_t> ctid{child};
  const std::atomic<uint32_t> never{0};
  const bool child_asleep = wait_asleep(ctid, blocking_calls, never, child);
  ::shutdown(fds[4], SHUT_RD);
  int status = 0;
  if (::waitpid(child, &status, 0) != child) {
    fail_exit(err_text("waitpid"));
  }
  if (!child_asleep) {
    fail_exit("the forked child was never seen asleep in its recv");
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    fail_exit("shutdown(SHUT_RD) in the parent under the child's blocking recv: the child's recv "
              "did not return EOF (status " + std::to_string(status) + ")");
  }
  ::alarm(0);
  for (int fd : fds) {
    ::close(fd);
  }
  std::printf("ok mode=kicks client conns=5\n");
  return 0;
}

// ---------------------------------------------------------------- threads
void echo_both_ways(int fd, uint64_t seed, uint64_t bytes) {
  const stream s(seed, 0);
  std::thread writer([&] {
    rng r{seed};
    std::vector<uint8_t> buf(65536);
    for (uint64_t off = 0; off < bytes;) {
      size_t n = std::min<uint64_t>(r.upto(buf.size()), bytes - off);
      s.fill(off, buf.data(), n);
      if (!smc_test::send_all(fd, buf.data(), n)) {
        fail_exit(err_text("send (writer thread)"));
      }
      off += n;
    }
  });
  std::vector<uint8_t> buf(65536);
  rng r{seed ^ 0x77};
  for (uint64_t got = 0; got < bytes;) {
    ssize_t n = ::recv(fd, buf.data(), std::min<uint64_t>(r.upto(buf.size()), bytes - got), 0);
    if (n <= 0) {
      fail_exit(n == 0 ? std::string("early EOF from the echo server") : err_text("recv (reader)"));
    }
    if (int64_t bad = s.check(got, buf.data(), static_cast<size_t>(n)); bad >= 0) {
      fail_exit("echo: wrong byte at offset " + std::to_string(got + static_cast<uint64_t>(bad)));
    }
    got += static_cast<uint64_t>(n);
  }
  writer.join();
}

int run_threads_client(int first, const options& o) {
  const int nthreads = 16;
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::atomic<bool> done{false};
  // Meanwhile one more thread keeps reading RLIMIT_NOFILE: it must always
  // be what the process set (whatever a library does with it meanwhile).
  // A soft limit below the hard one, as systemd starts services with
  // (1024:524288): what a library may raise for a moment.
  rlimit base{};
  if (::getrlimit(RLIMIT_NOFILE, &base) != 0) {
    fail_exit(err_text("getrlimit"));
  }
  if (base.rlim_max == RLIM_INFINITY || base.rlim_max > 4096) {
    base.rlim_cur = std::min<rlim_t>(base.rlim_cur, 4096);
    if (::setrlimit(RLIMIT_NOFILE, &base) != 0) {
      fail_exit(err_text("setrlimit"));
    }
  }
  uint64_t looks = 0;
  std::string limit_seen;
  std::thread limits([&] {
    while (!done.load() && limit_seen.empty()) {
      rlimit a{};
      rlimit b{};
      if (::getrlimit(RLIMIT_NOFILE, &a) != 0 || ::prlimit(0, RLIMIT_NOFILE, nullptr, &b) != 0) {
        limit_seen = err_text("getrlimit/prlimit");
      } else if (a.rlim_cur != base.rlim_cur || b.rlim_cur != base.rlim_cur ||
                 a.rlim_max != base.rlim_max || b.rlim_max != base.rlim_max) {
        limit_seen = "RLIMIT_NOFILE read as " + std::to_string(a.rlim_cur) + ":" +
                     std::to_string(a.rlim_max) + " / " + std::to_string(b.rlim_cur) + ":" +
                     std::to_string(b.rlim_max) + ", set to " + std::to_string(base.rlim_cur) +
                     ":" + std::to_string(base.rlim_max);
      }
      ++looks;
    }
  });
  std::vector<std::thread> ts;
  for (int i = 0; i < nthreads; ++i) {
    ts.emplace_back([&, i] {
      // All threads create and connect their sockets at the same moment.
      ready.fetch_add(1);
      while (!go.load()) {
        std::this_thread::yield();
      }
      std::string error;
      int fd = smc_test::dial(o.addr, o.port, error);
      if (fd < 0) {
        fail_exit("a thread: " + error);
      }
      echo_both_ways(fd, o.seed + static_cast<uint64_t>(i) + 1, o.bytes);
      ::close(fd);
    });
  }
  while (ready.load() < nthreads) {
    std::this_thread::yield();
  }
  go = true;
  echo_both_ways(first, o.seed, o.bytes);  // the main thread's connection too
  for (auto& t : ts) {
    t.join();
  }
  done = true;
  limits.join();
  if (!limit_seen.empty()) {
    fail_exit(limit_seen + " (after " + std::to_string(looks) + " looks)");
  }
  ::close(first);
  std::printf("ok mode=threads client conns=%d bytes=%llu each way, verified\n", nthreads + 1,
              static_cast<unsigned long long>(o.bytes));
  return 0;
}

int run(int fd, const options& o) {
  if (o.mode == "threads") {
    if (o.server) {
      fail_exit("mode threads is client-only (use an echo server)");
    }
    return run_threads_client(fd, o);
  }
  if (o.mode == "epoll_sets") {
    return o.server ? run_epoll_sets_server(fd, o) : run_epoll_sets_client(fd, o);
  }
  if (o.mode == "eintr") {
    return o.server ? run_eintr_server(fd) : run_eintr_client(fd);
  }
  if (o.mode == "kicks" && !o.server) {
    return run_kicks_client(fd, o);
  }
  const stream out(o.seed, o.server ? 1 : 0);
  const stream in(o.seed, o.server ? 0 : 1);
  if (o.nonblock) {
    set_nonblock(fd);
  }
  if (o.mode == "linger0") {
    if (o.server) {
      std::vector<uint8_t> buf(65536);
      uint64_t got = 0;
      for (;;) {
        ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
        if (n < 0 && errno == EAGAIN) {
          wait_fd(fd, POLLIN);
          continue;
        }
        if (n < 0 && errno == ECONNRESET) {
          std::printf("ok mode=linger0 got=%llu reset\n", static_cast<unsigned long long>(got));
          ::close(fd);
          return 0;
        }
        if (n < 0) {
          fail_exit(err_text("recv"));
        }
        if (n == 0) {
          fail_exit("EOF instead of ECONNRESET after the peer's SO_LINGER 0 close");
        }
        got += static_cast<uint64_t>(n);
      }
    }
    std::vector<uint8_t> buf(4096);
    out.fill(0, buf.data(), buf.size());
    if (!smc_test::send_all(fd, buf.data(), buf.size())) {
      fail_exit(err_text("send"));
    }
    // Wait for the server's go (one byte) so it is reading when we reset.
    char go;
    wait_fd(fd, POLLIN);
    if (::recv(fd, &go, 1, 0) != 1) {
      fail_exit(err_text("recv go"));
    }
    linger lg{1, 0};
    if (::setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) != 0) {
      fail_exit(err_text("SO_LINGER"));
    }
    ::close(fd);
    std::printf("ok mode=linger0 client\n");
    return 0;
  }

  uint64_t got = 0;
  std::thread rx([&] {
    if (o.mode == "sendfile") {
      // The server reads a sendfile()d stream through sendfile into a pipe,
      // the client with read().
      got = o.server ? recv_via_pipe(fd, in, true, o) : recv_read(fd, in, "read");
    } else if (o.mode == "splice") {
      got = recv_via_pipe(fd, in, false, o);
    } else if (o.mode == "mmsg") {
      got = recv_mmsg(fd, in, o);
    } else {
      got = recv_iov(fd, in, o);
    }
  });
  if (o.mode == "sendfile") {
    send_sendfile(fd, o, out);
  } else if (o.mode == "splice") {
    send_splice(fd, o, out);
  } else if (o.mode == "mmsg") {
    send_mmsg(fd, o, out);
  } else {
    send_iov(fd, o, out);
  }
  if (::shutdown(fd, SHUT_WR) != 0) {
    fail_exit(err_text("shutdown"));
  }
  rx.join();
  if (got != o.bytes) {
    fail_exit("received " + std::to_string(got) + " bytes, expected " + std::to_string(o.bytes));
  }
  if (o.mode == "splice") {
    // Closed where the library cannot see it (the system call
    // instruction), right before exit: the number may then come to the
    // library's own stats file, which must still be written right.
    if (smc_test::close_unseen(fd) != 0) {
      fail_exit("close by the system call instruction failed");
    }
  } else {
    // (mmsg and iov close as libuv does)
    close_and_reuse(fd, o.mode == "mmsg" || o.mode == "iov");
  }
  std::printf("ok mode=%s bytes=%llu each way, verified\n", o.mode.c_str(),
              static_cast<unsigned long long>(o.bytes));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  options o;
  o.server = smc_test::server_role(argc, argv, usage);
  smc_test::arg_reader args(argc, argv, 2, usage);
  while (args.next()) {
    if (args.endpoint_option(o, "bad ")) {
      continue;
    }
    if (args.name() == "--mode") {
      o.mode = args.value();
    } else if (args.name() == "--bytes") {
      o.bytes = args.size_value("bad ");
    } else if (args.name() == "--seed") {
      o.seed = args.size_value("bad ");
    } else if (args.name() == "--nonblock") {
      o.nonblock = true;
    } else {
      usage("unknown option " + args.name());
    }
  }
  if (o.mode != "sendfile" && o.mode != "splice" && o.mode != "mmsg" && o.mode != "iov" &&
      o.mode != "linger0" && o.mode != "eintr" && o.mode != "epoll_sets" &&
      o.mode != "threads" && o.mode != "kicks") {
    usage("bad --mode " + o.mode);
  }
  ::signal(SIGPIPE, SIG_IGN);
  std::string error;
  int fd;
  if (o.server) {
    int s = smc_test::open_listener(o.addr, o.port, 4, o.portfile, error);
    if (s < 0) {
      fail_exit(error);
    }
    if (o.mode == "kicks") {
      return run_kicks_server(s, 5);
    }
    fd = ::accept(s, nullptr, nullptr);
    if (fd < 0) {
      fail_exit(err_text("accept"));
    }
    ::close(s);
    if (o.mode == "linger0") {
      // Read the client's first bytes, then give it the go.
      std::vector<uint8_t> buf(4096);
      if (smc_test::recv_full(fd, buf.data(), buf.size()) != 4096) {
        fail_exit(err_text("recv"));
      }
      if (!smc_test::send_all(fd, "g", 1)) {
        fail_exit(err_text("send go"));
      }
    }
  } else {
    if (!o.port_given) {
      usage("client needs --port");
    }
    fd = smc_test::dial(o.addr, o.port, error);
    if (fd < 0) {
      fail_exit(error);
    }
  }
  return run(fd, o);
}
