// Default OS-call table: libc's own functions (the preload overrides it).
#include "rdma/sys.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <utility>

namespace smc::rdma {

sys_calls& sys() {
  static sys_calls table{
      ::socket, ::connect, ::bind, ::listen, ::accept4, ::recv, ::send, ::recvmsg, ::sendmsg,
      ::read, ::write, ::close, ::poll, ::fcntl, ::getsockopt, ::setsockopt,
      ::epoll_create1, ::epoll_ctl, ::epoll_wait, ::recvmmsg, ::shutdown, ::ioctl,
  };
  return table;
}

void doorbell_ring(int efd) {
  uint64_t one = 1;
  ssize_t n;
  do {
    n = sys().write(efd, &one, sizeof(one));
  } while (n < 0 && errno == EINTR);
}

void doorbell_drain(int efd) {
  uint64_t v;
  ssize_t n;
  do {
    n = sys().read(efd, &v, sizeof(v));
  } while (n < 0 && errno == EINTR);
}

bool send_with_fds(int sock, const void* data, size_t len, const int* fds, size_t nfds) {
  if (nfds > max_passed_fds) {
    errno = EINVAL;
    return false;
  }
  iovec iov{const_cast<void*>(data), len};
  alignas(cmsghdr) char buf[CMSG_SPACE(max_passed_fds * sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (nfds > 0) {
    msg.msg_control = buf;
    msg.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
    std::memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
  }
  ssize_t n;
  do {
    n = sys().sendmsg(sock, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  return n == static_cast<ssize_t>(len);
}

thread_local unsigned t_library_calls __attribute__((tls_model("initial-exec"))) = 0;

int high_fd_base() {
  static const int base = [] {
    const long soft = nofile_soft_limit();
    return soft < 0 ? 512 : static_cast<int>(std::min<long>(soft / 2, 1 << 20));
  }();
  return base;
}

namespace {

std::mutex g_nofile_mu;

// The soft and hard RLIMIT_NOFILE, or set them: the raw system call, past
// the preload's own setrlimit/prlimit (which would take g_nofile_mu).
bool nofile_limit(const rlimit* set, rlimit* get) {
  return ::syscall(SYS_prlimit64, 0, RLIMIT_NOFILE, set, get) == 0;
}

static_assert(sizeof(rlimit) == 16, "prlimit64 takes two 64-bit limits");

// How far above the soft limit the library's fds may go.
constexpr rlim_t own_span = 1 << 16;

// Copies of the n fds numbered as place_fd() says: high[i] a copy of
// fds[i] (fds[i] < 0: -1), or -1 (fds[i] untouched). One raise of the soft
// limit serves them all.
void move_high(const int* fds, int* high, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    high[i] = -1;
  }
  {
    std::lock_guard<std::mutex> lk(g_nofile_mu);
    rlimit rl{};
    if (nofile_limit(nullptr, &rl) && rl.rlim_cur != RLIM_INFINITY &&
        rl.rlim_cur <= static_cast<rlim_t>(INT32_MAX)) {
      bool any = false;
      for (size_t i = 0; i < n; ++i) {
        any = any || (fds[i] >= 0 && static_cast<rlim_t>(fds[i]) < rl.rlim_cur);
      }
      // Up to the hard limit; past it where the process may raise that too
      // (CAP_SYS_RESOURCE: a server started as root; restored as well).
      rlimit up = rl;
      up.rlim_cur = rl.rlim_max > rl.rlim_cur ? std::min<rlim_t>(rl.rlim_max, rl.rlim_cur + own_span)
                                              : rl.rlim_cur + own_span;
      up.rlim_max = std::max(rl.rlim_max, up.rlim_cur);
      if (any && nofile_limit(&up, nullptr)) {
        for (size_t i = 0; i < n; ++i) {
          if (fds[i] >= 0 && static_cast<rlim_t>(fds[i]) < rl.rlim_cur) {
            high[i] = sys().fcntl(fds[i], F_DUPFD_CLOEXEC, static_cast<int>(rl.rlim_cur));
          }
        }
        nofile_limit(&rl, nullptr);
      }
    }
  }
  for (size_t i = 0; i < n; ++i) {
    if (fds[i] >= 0 && high[i] < 0) {
      high[i] = sys().fcntl(fds[i], F_DUPFD_CLOEXEC, high_fd_base());
    }
  }
}

}  // namespace

long nofile_soft_limit() {
  rlimit rl{};
  std::lock_guard<std::mutex> lk(g_nofile_mu);
  if (!nofile_limit(nullptr, &rl) || rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > LONG_MAX) {
    return -1;
  }
  return static_cast<long>(rl.rlim_cur);
}

void nofile_lock() { g_nofile_mu.lock(); }
void nofile_unlock() { g_nofile_mu.unlock(); }

int place_fd(int fd) {
  return place_fds(&fd, 1) ? fd : -1;
}

bool place_fds(int* fds, size_t n) {
  constexpr size_t batch = 16;
  bool ok = true;
  for (size_t first = 0; first < n; first += batch) {
    const size_t k = std::min(batch, n - first);
    int* f = fds + first;
    int high[batch];
    const int saved = errno;
    move_high(f, high, k);
    for (size_t i = 0; i < k; ++i) {
      if (f[i] < 0 || (high[i] < 0 && f[i] >= high_fd_base())) {
        continue;  // (nothing to place, or in our half already, nothing higher free)
      }
      sys().close(f[i]);
      f[i] = high[i];
      ok = ok && high[i] >= 0;
    }
    errno = ok ? saved : EMFILE;
  }
  return ok;
}

namespace {

// The most fds one message can carry (the kernel's SCM_MAX_FD): a control
// buffer this large takes them all, so the kernel never releases the
// excess on our thread.
constexpr size_t scm_max_fd = 253;
// How deep close_untrusted() follows unix sockets passed in unix sockets
// (the kernel itself bounds such nesting).
constexpr int untrusted_depth = 4;
#ifndef SO_PASSRIGHTS
constexpr int so_passrights = 83;  // <asm-generic/socket.h>, Linux 6.16
#else
constexpr int so_passrights = SO_PASSRIGHTS;
#endif

void close_untrusted_at(int fd, int depth);
int drain_untrusted_at(int sock, int max, int depth, bool* empty_seen = nullptr);

// A unix socket a peer can queue on: shut for reading (nothing more can be
// queued), then emptied, its passed fds closed untrusted.
void shut_and_drain(int sock, int depth) {
  sys().shutdown(sock, SHUT_RD);
  drain_untrusted_at(sock, 1 << 12, depth);
}

int drain_untrusted_at(int sock, int max, int depth, bool* empty_seen) {
  int taken = 0;
  while (taken < max) {
    char data[64];
    iovec iov{data, sizeof data};
    alignas(cmsghdr) char buf[CMSG_SPACE(scm_max_fd * sizeof(int))];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = buf;
    msg.msg_controllen = sizeof(buf);
    const ssize_t n = sys().recvmsg(sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n == 0 && empty_seen != nullptr) {
      *empty_seen = true;  // an empty message, or the end of file
    }
    if (n <= 0) {
      break;  // empty, closed, or not a socket to read
    }
    ++taken;
    for_each_passed_fd(&msg, [&](int fd) { close_untrusted_at(fd, depth + 1); });
  }
  return taken;
}

void close_untrusted_at(int fd, int depth) {
  if (fd < 0) {
    return;
  }
  struct stat st {};
  if (::fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode)) {
    const linger off{1, 0};
    sys().setsockopt(fd, SOL_SOCKET, SO_LINGER, &off, sizeof off);
    int domain = 0;
    socklen_t l = sizeof domain;
    if (depth < untrusted_depth && sys().getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &l) == 0 &&
        domain == AF_UNIX) {
      shut_and_drain(fd, depth);
    }
  }
  sys().close(fd);
}

}  // namespace

bool refuse_passed_fds(int sock) {
  const int off = 0;
  return sys().setsockopt(sock, SOL_SOCKET, so_passrights, &off, sizeof off) == 0;
}

void close_untrusted(int fd) {
  const int saved = errno;
  close_untrusted_at(fd, 0);
  errno = saved;
}

void close_shared_unix(int sock) {
  if (sock < 0) {
    return;
  }
  const int saved = errno;
  shut_and_drain(sock, 0);
  sys().close(sock);
  errno = saved;
}

int drain_untrusted(int sock, int max, bool* empty_seen) {
  const int saved = errno;
  const int n = drain_untrusted_at(sock, max, 0, empty_seen);
  errno = saved;
  return n;
}

ssize_t recv_with_fds(int sock, void* data, size_t len, std::vector<int>& fds, bool& truncated) {
  iovec iov{data, len};
  alignas(cmsghdr) char buf[CMSG_SPACE(scm_max_fd * sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = buf;
  msg.msg_controllen = sizeof(buf);
  ssize_t n;
  do {
    n = sys().recvmsg(sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    return n;
  }
  truncated = (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0;
  int got[scm_max_fd] = {};
  size_t k = 0;
  for_each_passed_fd(&msg, [&](int fd) {
    if (k < scm_max_fd) {
      got[k++] = fd;
    }
  });
  // Where no number out of the application's way is free, an fd stays
  // where it came: a message refused here would end a connection that is
  // already SMC at the peer (its slot announced, its Confirm sent).
  int high[scm_max_fd] = {};
  move_high(got, high, k);
  for (size_t i = 0; i < k; ++i) {
    if (high[i] >= 0) {
      sys().close(got[i]);  // (its copy keeps the file)
    }
    fds.push_back(high[i] >= 0 ? high[i] : got[i]);
  }
  return n;
}

}  // namespace smc::rdma
