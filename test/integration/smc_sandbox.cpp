// smc_sandbox: a process that sandboxes itself the way OpenSSH's sshd
// pre-auth child does, with a connection it opened before (or opens after).
// Plain POSIX and Linux seccomp, nothing about SMC: the same binary runs
// plain or under scripts/smc_run.
//
//   smc_sandbox server [--addr A] [--port P] [--portfile F] --count N
//       A plain echo server: a blocking thread per connection echoes until
//       EOF, then closes. Exits 0 ("ok served N") after N connections ended.
//   smc_sandbox client --addr A --port P [--bytes B[K|M|G]]
//                      [--mode ppoll|blocking|newconn|epoll] [--trap]
//       ppoll (default): connects (blocking), makes a first 64-byte round
//         trip, sets the socket O_NONBLOCK, then sandboxes like sshd:
//         RLIMIT_NOFILE 1, RLIMIT_FSIZE 0, PR_SET_NO_NEW_PRIVS and a seccomp
//         filter (below). Inside it, echoes B bytes (default 8 MiB) with
//         non-blocking read()/write() and ppoll() on the one socket fd,
//         verifying every byte, then shutdown(SHUT_WR) and expects EOF.
//       blocking: the same with a blocking socket (SO_RCVTIMEO/SO_SNDTIMEO
//         of 20 s set before the sandbox) and blocking read()/write(), in
//         alternating 64 KiB pieces.
//       newconn: sandboxes first (RLIMIT_NOFILE 8 only, a filter that also
//         lets the process make plain TCP connections: socket, connect,
//         fcntl, get/setsockopt, recvfrom, sendto, getpeername,
//         getsockname), then connects and echoes B bytes (default 1 MiB)
//         with send()/recv() and blocking read()/write().
//       epoll: the ppoll echo with epoll_wait() on a set made before the
//         sandbox (RLIMIT_NOFILE 16, the filter allowing epoll_create1,
//         epoll_ctl, epoll_wait and epoll_pwait too); then a set made
//         inside the sandbox (the library can make no fd for it any more)
//         sleeps while another thread, started before the sandbox, shuts
//         the socket down for reading: the set must report it (EPOLLIN,
//         then read() gives EOF), then shutdown(SHUT_WR) and EOF.
//       --trap: the filter traps (SIGSYS handler naming the system call)
//         instead of killing, to find out which call it was.
//
// The filter, modelled on sshd's sandbox-seccomp-filter.c: the architecture
// must be the build's (x86_64: AUDIT_ARCH_X86_64, no x32 numbers); allowed
// are read, write, poll, ppoll, select, pselect6, close, futex, getpid,
// gettid, clock_gettime, clock_nanosleep, nanosleep, brk, mmap, munmap,
// mremap, madvise, rt_sigprocmask, rt_sigreturn, restart_syscall,
// sigaltstack, exit, exit_group, getrandom, getuid, geteuid, shutdown;
// open, openat, stat, lstat, fstat and newfstatat fail with EACCES; any
// other system call kills the process (SECCOMP_RET_KILL_PROCESS).
//
// The sandboxed part runs in a child: with RLIMIT_FSIZE 0 it could not
// write to a log file, so its stdout and stderr are pipes to the parent,
// which passes them on, waits for it and exits with its status. A child
// killed by the filter (SIGSYS) or by a signal at all is a failure.
// The child ends with exit() (not _exit), so whatever runs at exit runs
// inside the sandbox too.
//
// Every wait is bounded (ppoll timeouts and socket timeouts of 20 s; the
// parent gives the child 100 s). Exit 0 with one "ok ..." line on stdout, or
// 1 with "smc_sandbox: FAIL why" on stderr.
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <fstream>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "test/integration/net_util.h"

namespace {

constexpr size_t hello_size = 64;
constexpr size_t piece = 65536;
constexpr int io_timeout_s = 20;
constexpr int child_limit_s = 100;

// Output through write() alone: stdio may fstat() its stream first, which
// the filter refuses.
void put(int fd, const std::string& s) {
  const char* p = s.data();
  size_t n = s.size();
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) {
      continue;
    }
    if (w <= 0) {
      return;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
}

[[noreturn]] void die(const std::string& why) {
  put(2, "smc_sandbox: FAIL " + why + "\n");
  std::exit(1);
}

[[noreturn]] void die_errno(const std::string& what) { die(what + ": " + std::strerror(errno)); }

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr,
               "smc_sandbox: %s\n"
               "usage: smc_sandbox server [--addr A] [--port P] [--portfile F] --count N\n"
               "       smc_sandbox client --addr A --port P [--bytes B] [--mode ppoll|blocking|newconn|epoll] "
               "[--trap]\n",
               why.c_str());
  std::exit(2);
}

// ---------------------------------------------------------------- server

void echo_conn(int fd) {
  std::vector<char> buf(piece);
  for (;;) {
    ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0 || !smc_test::send_all(fd, buf.data(), static_cast<size_t>(n))) {
      break;
    }
  }
  ::close(fd);
}

int serve(const smc_test::endpoint_options& o, uint64_t count) {
  std::string error;
  int ls = smc_test::open_listener(o.addr, o.port, 16, o.portfile, error);
  if (ls < 0) {
    die(error);
  }
  std::vector<std::thread> threads;
  while (threads.size() < count) {
    int fd = ::accept(ls, nullptr, nullptr);
    if (fd >= 0) {
      threads.emplace_back(echo_conn, fd);
    } else if (errno != EINTR) {
      die_errno("accept");
    }
  }
  for (auto& t : threads) {
    t.join();
  }
  ::close(ls);
  std::printf("ok served %zu\n", threads.size());
  return 0;
}

// ---------------------------------------------------------------- the sandbox

#if defined(__x86_64__)
constexpr uint32_t audit_arch = AUDIT_ARCH_X86_64;
#elif defined(__aarch64__)
constexpr uint32_t audit_arch = AUDIT_ARCH_AARCH64;
#else
#error "smc_sandbox: add this architecture's AUDIT_ARCH_*"
#endif

bool g_trap = false;

std::vector<long> allowed_calls(bool sockets, bool epoll) {
  std::vector<long> v = {
      SYS_read, SYS_write, SYS_ppoll, SYS_pselect6, SYS_close, SYS_futex, SYS_getpid, SYS_gettid,
      SYS_clock_gettime, SYS_clock_nanosleep, SYS_nanosleep, SYS_brk, SYS_mmap, SYS_munmap,
      SYS_mremap, SYS_madvise, SYS_rt_sigprocmask, SYS_rt_sigreturn, SYS_restart_syscall,
      SYS_sigaltstack, SYS_exit, SYS_exit_group, SYS_getrandom, SYS_getuid, SYS_geteuid,
      SYS_shutdown,
#ifdef SYS_poll
      SYS_poll,
#endif
#ifdef SYS_select
      SYS_select,
#endif
  };
  if (epoll) {
    for (long nr : {SYS_epoll_create1, SYS_epoll_ctl, SYS_epoll_wait, SYS_epoll_pwait}) {
      v.push_back(nr);
    }
  }
  if (sockets) {
    for (long nr : {SYS_socket, SYS_connect, SYS_fcntl, SYS_getsockopt, SYS_setsockopt,
                    SYS_recvfrom, SYS_sendto, SYS_getpeername, SYS_getsockname}) {
      v.push_back(nr);
    }
  }
  return v;
}

std::vector<long> refused_calls() {
  return {
      SYS_openat, SYS_fstat, SYS_newfstatat,
#ifdef SYS_open
      SYS_open,
#endif
#ifdef SYS_stat
      SYS_stat,
#endif
#ifdef SYS_lstat
      SYS_lstat,
#endif
  };
}

// The SIGSYS handler of --trap: names the call, ends the process.
void on_sigsys(int, siginfo_t* si, void*) {
  char msg[96] = "smc_sandbox: FAIL the filter forbids system call ";
  size_t n = std::strlen(msg);
  int nr = si->si_syscall;
  char digits[16];
  size_t d = 0;
  do {
    digits[d++] = static_cast<char>('0' + nr % 10);
    nr /= 10;
  } while (nr > 0 && d < sizeof(digits));
  while (d > 0 && n + 2 < sizeof(msg)) {
    msg[n++] = digits[--d];
  }
  msg[n++] = '\n';
  ssize_t ignored = ::write(2, msg, n);
  (void)ignored;
  ::_exit(1);
}

// sshd's order: the limits, no new privileges, the filter.
void sandbox(rlim_t nofile, bool fsize0, bool sockets, bool epoll = false) {
  const uint32_t deny = g_trap ? SECCOMP_RET_TRAP : SECCOMP_RET_KILL_PROCESS;
  std::vector<sock_filter> f;
  f.push_back(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)));
  f.push_back(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, audit_arch, 1, 0));
  f.push_back(BPF_STMT(BPF_RET | BPF_K, deny));
  f.push_back(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)));
#ifdef __x86_64__
  f.push_back(BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000u /* __X32_SYSCALL_BIT */, 0, 1));
  f.push_back(BPF_STMT(BPF_RET | BPF_K, deny));
#endif
  for (long nr : refused_calls()) {
    f.push_back(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, static_cast<uint32_t>(nr), 0, 1));
    f.push_back(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EACCES & SECCOMP_RET_DATA)));
  }
  for (long nr : allowed_calls(sockets, epoll)) {
    f.push_back(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, static_cast<uint32_t>(nr), 0, 1));
    f.push_back(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
  }
  f.push_back(BPF_STMT(BPF_RET | BPF_K, deny));
  sock_fprog prog{};
  prog.len = static_cast<unsigned short>(f.size());
  prog.filter = f.data();

  if (g_trap) {
    struct sigaction sa{};
    sa.sa_sigaction = on_sigsys;
    sa.sa_flags = SA_SIGINFO;
    if (::sigaction(SIGSYS, &sa, nullptr) != 0) {
      die_errno("sigaction(SIGSYS)");
    }
  }
  const rlimit none{0, 0};
  if (::setrlimit(RLIMIT_CORE, &none) != 0) {  // no core file when the filter kills
    die_errno("setrlimit(RLIMIT_CORE)");
  }
  const rlimit files{nofile, nofile};
  if (::setrlimit(RLIMIT_NOFILE, &files) != 0) {
    die_errno("setrlimit(RLIMIT_NOFILE)");
  }
  if (fsize0 && ::setrlimit(RLIMIT_FSIZE, &none) != 0) {
    die_errno("setrlimit(RLIMIT_FSIZE)");
  }
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
    die_errno("prctl(PR_SET_NO_NEW_PRIVS)");
  }
  if (::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
    die_errno("prctl(PR_SET_SECCOMP)");
  }
}

// ---------------------------------------------------------------- client

uint8_t pattern(uint64_t i) { return static_cast<uint8_t>((i * 131) ^ (i >> 9) ^ (i >> 17)); }

void fill(std::vector<char>& buf, uint64_t off, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    buf[i] = static_cast<char>(pattern(off + i));
  }
}

void verify(const char* p, uint64_t off, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (static_cast<uint8_t>(p[i]) != pattern(off + i)) {
      die("echoed byte " + std::to_string(off + i) + " differs");
    }
  }
}

void set_timeouts(int fd) {
  timeval tv{io_timeout_s, 0};
  if (::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
      ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0) {
    die_errno("setsockopt(SO_RCVTIMEO/SO_SNDTIMEO)");
  }
}

// The first round trip, with send()/recv(): afterwards the connection is
// established (and, under the preload, decided).
void hello(int fd) {
  std::vector<char> out(hello_size), in(hello_size);
  for (size_t i = 0; i < hello_size; ++i) {
    out[i] = static_cast<char>('A' + i % 26);
  }
  if (!smc_test::send_all(fd, out.data(), out.size())) {
    die_errno("hello: send");
  }
  ssize_t got = smc_test::recv_full(fd, in.data(), in.size());
  if (got != static_cast<ssize_t>(in.size())) {
    die(std::string("hello: recv: ") + (got < 0 ? std::strerror(errno) : "early EOF"));
  }
  if (in != out) {
    die("hello: echoed data differs");
  }
}

// ppoll() on the one fd for `events`; dies after io_timeout_s.
short wait_for(int fd, short events, const char* what) {
  for (;;) {
    pollfd p{fd, events, 0};
    timespec ts{io_timeout_s, 0};
    int n = ::ppoll(&p, 1, &ts, nullptr);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      die_errno(std::string(what) + ": ppoll");
    }
    if (n == 0) {
      die(std::string(what) + ": nothing happened for " + std::to_string(io_timeout_s) + " s");
    }
    if ((p.revents & POLLNVAL) != 0) {
      die(std::string(what) + ": ppoll: POLLNVAL");
    }
    return p.revents;
  }
}

// epoll_wait() on `ep` (which holds fd) for `events` (poll bits, which
// are epoll's too); dies after io_timeout_s.
short wait_epoll(int ep, int fd, short events, const char* what) {
  epoll_event want{};
  want.events = static_cast<uint32_t>(events);
  want.data.fd = fd;
  if (::epoll_ctl(ep, EPOLL_CTL_MOD, fd, &want) != 0) {
    die_errno(std::string(what) + ": epoll_ctl(MOD)");
  }
  for (;;) {
    epoll_event got{};
    int n = ::epoll_wait(ep, &got, 1, io_timeout_s * 1000);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      die_errno(std::string(what) + ": epoll_wait");
    }
    if (n == 0) {
      die(std::string(what) + ": nothing happened for " + std::to_string(io_timeout_s) + " s");
    }
    if (got.data.fd != fd) {
      die(std::string(what) + ": epoll_wait reported data " + std::to_string(got.data.fd));
    }
    return static_cast<short>(got.events & 0xffff);
  }
}

// Non-blocking socket: sends while it has bytes and the socket takes them,
// reads whatever came back, verifies it; waits with ppoll(), or on the
// epoll set `ep`. With `finish`, then shutdown(SHUT_WR) and EOF.
void echo_ppoll(int fd, uint64_t total, int ep = -1, bool finish = true) {
  auto wait_for = [&](int f, short events, const char* what) {
    return ep >= 0 ? wait_epoll(ep, f, events, what) : ::wait_for(f, events, what);
  };
  std::vector<char> out(piece), in(piece);
  uint64_t sent = 0;
  uint64_t got = 0;
  size_t out_len = 0;  // bytes of `out` (starting at `sent`) not yet sent
  while (got < total) {
    short ev = POLLIN;
    if (sent < total) {
      ev |= POLLOUT;
    }
    short re = wait_for(fd, ev, "echo");
    if ((re & POLLERR) != 0 && (re & POLLIN) == 0) {
      die("echo: ppoll reports POLLERR after " + std::to_string(got) + " bytes back");
    }
    if ((re & POLLOUT) != 0 && sent < total) {
      if (out_len == 0) {
        out_len = static_cast<size_t>(std::min<uint64_t>(piece, total - sent));
        fill(out, sent, out_len);
      }
      ssize_t w = ::write(fd, out.data(), out_len);
      if (w > 0) {
        sent += static_cast<uint64_t>(w);
        out_len -= static_cast<size_t>(w);
        std::memmove(out.data(), out.data() + w, out_len);
      } else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        die_errno("echo: write at " + std::to_string(sent));
      }
    }
    if ((re & (POLLIN | POLLHUP | POLLERR)) != 0) {
      ssize_t r = ::read(fd, in.data(), in.size());
      if (r > 0) {
        if (got + static_cast<uint64_t>(r) > sent) {
          die("echo: more bytes back than sent");
        }
        verify(in.data(), got, static_cast<size_t>(r));
        got += static_cast<uint64_t>(r);
      } else if (r == 0) {
        die("echo: EOF after " + std::to_string(got) + " of " + std::to_string(total) + " bytes back");
      } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        die_errno("echo: read at " + std::to_string(got));
      }
    }
  }
  if (!finish) {
    return;
  }
  if (::shutdown(fd, SHUT_WR) != 0) {
    die_errno("shutdown(SHUT_WR)");
  }
  for (;;) {
    wait_for(fd, POLLIN, "waiting for EOF");
    char b;
    ssize_t r = ::read(fd, &b, 1);
    if (r == 0) {
      return;
    }
    if (r > 0) {
      die("a byte after the echo, where EOF was due");
    }
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      die_errno("read after shutdown(SHUT_WR)");
    }
  }
}

// Blocking socket with 20 s timeouts: 64 KiB out, 64 KiB back, repeat.
void echo_blocking(int fd, uint64_t total) {
  std::vector<char> out(piece), in(piece);
  for (uint64_t off = 0; off < total;) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(piece, total - off));
    fill(out, off, n);
    for (size_t done = 0; done < n;) {
      ssize_t w = ::write(fd, out.data() + done, n - done);
      if (w > 0) {
        done += static_cast<size_t>(w);
      } else if (w < 0 && errno == EINTR) {
        continue;
      } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        die("echo: write blocked for " + std::to_string(io_timeout_s) + " s at " +
            std::to_string(off + done));
      } else {
        die_errno("echo: write at " + std::to_string(off + done));
      }
    }
    for (size_t done = 0; done < n;) {
      ssize_t r = ::read(fd, in.data() + done, n - done);
      if (r > 0) {
        done += static_cast<size_t>(r);
      } else if (r == 0) {
        die("echo: EOF after " + std::to_string(off + done) + " of " + std::to_string(total) +
            " bytes back");
      } else if (errno == EINTR) {
        continue;
      } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
        die("echo: read blocked for " + std::to_string(io_timeout_s) + " s at " +
            std::to_string(off + done));
      } else {
        die_errno("echo: read at " + std::to_string(off + done));
      }
    }
    verify(in.data(), off, n);
    off += n;
  }
  if (::shutdown(fd, SHUT_WR) != 0) {
    die_errno("shutdown(SHUT_WR)");
  }
  for (;;) {
    char b;
    ssize_t r = ::read(fd, &b, 1);
    if (r == 0) {
      return;
    }
    if (r > 0) {
      die("a byte after the echo, where EOF was due");
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      die("no EOF within " + std::to_string(io_timeout_s) + " s after shutdown(SHUT_WR)");
    }
    if (errno != EINTR) {
      die_errno("read after shutdown(SHUT_WR)");
    }
  }
}

// Whether thread `tid` of this process is blocked in an epoll wait (what
// /proc/self/task/TID/syscall names while it is in one).
bool in_epoll_wait(pid_t tid) {
  std::ifstream f("/proc/self/task/" + std::to_string(tid) + "/syscall");
  long nr = -1;
  if (!(f >> nr)) {
    return false;  // "running"
  }
  return nr == SYS_epoll_wait || nr == SYS_epoll_pwait
#ifdef SYS_epoll_pwait2
         || nr == SYS_epoll_pwait2
#endif
      ;
}

// The epoll mode's end: a set made inside the sandbox, where the library
// can make no fd for it (no wake fd: nothing of ours wakes it), sleeps;
// `go` lets the thread that shuts the socket down for reading run once
// it is asleep. The set must report it.
void end_on_new_set(int fd, int go) {
  const int ep = ::epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) {
    die_errno("epoll_create1 inside the sandbox");
  }
  epoll_event want{};
  want.events = EPOLLIN | EPOLLRDHUP;
  want.data.fd = fd;
  if (::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &want) != 0) {
    die_errno("epoll_ctl(ADD) inside the sandbox");
  }
  if (::write(go, "g", 1) != 1) {
    die_errno("write to the shutting thread");
  }
  const short re = wait_epoll(ep, fd, EPOLLIN | EPOLLRDHUP, "the end, on a set made in the sandbox");
  if ((re & POLLIN) == 0) {
    die("the set made in the sandbox reported " + std::to_string(re) + ", not EPOLLIN");
  }
  char b;
  ssize_t r = ::read(fd, &b, 1);
  if (r != 0) {
    die(r > 0 ? std::string("a byte after shutdown(SHUT_RD)")
              : "read after shutdown(SHUT_RD): " + std::string(std::strerror(errno)));
  }
  ::close(ep);
}

int dial(const smc_test::endpoint_options& o) {
  std::string error;
  int fd = smc_test::dial(o.addr, o.port, error);
  if (fd < 0) {
    die(error);
  }
  return fd;
}

// The sandboxed process (the child): never returns.
[[noreturn]] void client(const smc_test::endpoint_options& o, const std::string& mode, uint64_t bytes) {
  int fd = -1;
  if (mode == "newconn") {
    sandbox(8, false, true);
    fd = dial(o);
    set_timeouts(fd);
    hello(fd);
    echo_blocking(fd, bytes);
  } else {
    // One connection opened and closed first: whatever runs for a first
    // connection's close only once per process (the sanitizer runtimes'
    // first type checks call pipe2() and readlink(), which the filter
    // kills) has run before the sandbox.
    int warm = dial(o);
    hello(warm);
    ::close(warm);
    fd = dial(o);
    if (mode == "blocking") {
      set_timeouts(fd);
    }
    hello(fd);
    if (mode == "ppoll" || mode == "epoll") {
      int fl = ::fcntl(fd, F_GETFL);
      if (fl < 0 || ::fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0) {
        die_errno("fcntl(O_NONBLOCK)");
      }
    }
    if (mode == "epoll") {
      const int ep = ::epoll_create1(EPOLL_CLOEXEC);
      epoll_event want{};
      want.events = EPOLLIN;
      want.data.fd = fd;
      if (ep < 0 || ::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &want) != 0) {
        die_errno("epoll set before the sandbox");
      }
      int go[2];
      if (::pipe2(go, O_CLOEXEC) != 0) {
        die_errno("pipe2");
      }
      const pid_t main_tid = static_cast<pid_t>(::syscall(SYS_gettid));
      // Started before the sandbox (the filter is the main thread's).
      std::thread shutter([fd, main_tid, rd = go[0]] {
        char c;
        if (::read(rd, &c, 1) != 1) {
          die_errno("read from the main thread");
        }
        while (!in_epoll_wait(main_tid)) {
          std::this_thread::yield();
        }
        if (::shutdown(fd, SHUT_RD) != 0) {
          die_errno("shutdown(SHUT_RD)");
        }
      });
      shutter.detach();
      sandbox(16, true, false, true);
      echo_ppoll(fd, bytes, ep, false);
      end_on_new_set(fd, go[1]);
      if (::shutdown(fd, SHUT_WR) != 0) {
        die_errno("shutdown(SHUT_WR)");
      }
    } else {
      sandbox(1, true, false);
      if (mode == "ppoll") {
        echo_ppoll(fd, bytes);
      } else {
        echo_blocking(fd, bytes);
      }
    }
  }
  if (::close(fd) != 0) {
    die_errno("close");
  }
  put(1, "ok mode=" + mode + " bytes=" + std::to_string(bytes) + " sandboxed\n");
  std::exit(0);  // not _exit: what runs at exit runs inside the sandbox too
}

// The parent: passes the child's stdout and stderr on, waits for it (at
// most child_limit_s), exits with its status.
int watch(pid_t child, int out_fd, int err_fd) {
  pollfd p[2] = {{out_fd, POLLIN, 0}, {err_fd, POLLIN, 0}};
  const int to[2] = {1, 2};
  int open_pipes = 2;
  timespec t0{};
  ::clock_gettime(CLOCK_MONOTONIC, &t0);
  char buf[4096];
  while (open_pipes > 0) {
    timespec now{};
    ::clock_gettime(CLOCK_MONOTONIC, &now);
    long left_ms = child_limit_s * 1000L - ((now.tv_sec - t0.tv_sec) * 1000L +
                                            (now.tv_nsec - t0.tv_nsec) / 1000000L);
    if (left_ms <= 0) {
      ::kill(child, SIGKILL);
      ::waitpid(child, nullptr, 0);
      die("the sandboxed client still ran after " + std::to_string(child_limit_s) + " s");
    }
    int n = ::poll(p, 2, static_cast<int>(left_ms));
    if (n < 0 && errno != EINTR) {
      die_errno("poll on the child's output");
    }
    for (int i = 0; i < 2 && n > 0; ++i) {
      if (p[i].fd < 0 || p[i].revents == 0) {
        continue;
      }
      ssize_t r = ::read(p[i].fd, buf, sizeof buf);
      if (r > 0) {
        put(to[i], std::string(buf, static_cast<size_t>(r)));
      } else if (r == 0 || (errno != EINTR && errno != EAGAIN)) {
        ::close(p[i].fd);
        p[i].fd = -1;
        --open_pipes;
      }
    }
  }
  int st = 0;
  while (::waitpid(child, &st, 0) < 0) {
    if (errno != EINTR) {
      die_errno("waitpid");
    }
  }
  if (WIFSIGNALED(st)) {
    const int sig = WTERMSIG(st);
    die("the sandboxed client was killed by signal " + std::to_string(sig) + " (" + strsignal(sig) +
        (sig == SIGSYS ? ": a system call its seccomp filter forbids" : "") + ")");
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : 1;
}

int run_client(const smc_test::endpoint_options& o, const std::string& mode, uint64_t bytes) {
  int out[2];
  int err[2];
  if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) {
    die_errno("pipe2");
  }
  std::fflush(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) {
    die_errno("fork");
  }
  if (pid == 0) {
    if (::dup2(out[1], 1) < 0 || ::dup2(err[1], 2) < 0) {
      die_errno("dup2");
    }
    for (int fd : {out[0], out[1], err[0], err[1]}) {
      ::close(fd);
    }
    client(o, mode, bytes);
  }
  ::close(out[1]);
  ::close(err[1]);
  return watch(pid, out[0], err[0]);
}

}  // namespace

int main(int argc, char** argv) {
  bool server = smc_test::server_role(argc, argv, usage);
  smc_test::endpoint_options o;
  std::string mode = "ppoll";
  uint64_t count = 0;
  uint64_t bytes = 0;
  bool bytes_given = false;
  smc_test::arg_reader args(argc, argv, 2, usage);
  while (args.next()) {
    if (args.endpoint_option(o, "bad value for ")) {
      continue;
    }
    if (args.name() == "--count" && server) {
      count = args.size_value("bad value for ");
    } else if (args.name() == "--bytes" && !server) {
      bytes = args.size_value("bad value for ");
      bytes_given = true;
    } else if (args.name() == "--mode" && !server) {
      mode = args.value();
      if (mode != "ppoll" && mode != "blocking" && mode != "newconn" && mode != "epoll") {
        usage("--mode must be ppoll, blocking, newconn or epoll");
      }
    } else if (args.name() == "--trap" && !server) {
      g_trap = true;
    } else {
      usage("unknown option " + args.name());
    }
  }
  if (server) {
    if (count == 0) {
      usage("server needs --count N (N > 0)");
    }
    return serve(o, count);
  }
  if (!o.port_given) {
    usage("client needs --port");
  }
  if (!bytes_given) {
    bytes = mode == "newconn" ? (1u << 20) : (8u << 20);
  }
  return run_client(o, mode, bytes);
}
