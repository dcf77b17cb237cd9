// Interposed data calls: read/write families, recv/send families and the
// FORTIFY (_chk) variants. A socket we do not handle costs one load and one
// branch; an SMC socket is served by core::conn; a socket still deciding
// settles its state first.
#include <limits.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <utility>

#include "preload/preload.h"

using namespace smc::preload;

// glibc's FORTIFY entry points (declared by its headers only under FORTIFY).
extern "C" {
ssize_t __read_chk(int fd, void* buf, size_t n, size_t buflen);
ssize_t __recv_chk(int fd, void* buf, size_t n, size_t buflen, int flags);
ssize_t __recvfrom_chk(int fd, void* buf, size_t n, size_t buflen, int flags, sockaddr* addr,
                       socklen_t* alen);
}

namespace {

// One body for both directions: settle the socket's state as far as this
// call needs, then serve it from the SMC connection or hand it to the kernel.
template <bool Write, typename Fallback>
ssize_t smc_io(int fd, const iovec* iov, int iovcnt, int flags, Fallback&& fb) {
  entry_ref e(fd);
  if (!e) {
    return fb();
  }
  int saved = errno;
  try {
    state s = e->st.load(std::memory_order_acquire);
    if (s == state::tcp) {
      fd_forget_if(fd, e.get());
      return fb();
    }
    if constexpr (Write) {
      if (s == state::undecided) {
        prepare_write(e.get(), fd);
      } else if (s == state::connecting) {
        finish_connect(e.get(), fd);
      }
    } else if (s == state::undecided || s == state::strip || s == state::connecting) {
      if (int err = prepare_read(e.get(), fd, flags); err != 0) {
        errno = err;
        return -1;
      }
    }
    s = e->st.load(std::memory_order_acquire);
    if (s == state::smc) {
      if ((flags & MSG_OOB) != 0 || iovcnt < 0 || iovcnt > IOV_MAX) {
        errno = EINVAL;  // no urgent data on SMC connections
        return -1;
      }
      auto r = Write ? e->conn->send(iov, iovcnt, flags) : e->conn->recv(iov, iovcnt, flags);
      return finish_io({r.n, r.err}, saved);
    }
  } catch (...) {
    errno = EIO;
    return -1;
  }
  errno = saved;
  return fb();
}

template <typename Fallback>
ssize_t smc_read(int fd, const iovec* iov, int iovcnt, int flags, Fallback&& fb) {
  return smc_io<false>(fd, iov, iovcnt, flags, std::forward<Fallback>(fb));
}

template <typename Fallback>
ssize_t smc_write(int fd, const iovec* iov, int iovcnt, int flags, Fallback&& fb) {
  return smc_io<true>(fd, iov, iovcnt, flags, std::forward<Fallback>(fb));
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) ssize_t read(int fd, void* buf, size_t n) {
  ensure_init();
  if (!g_enabled || !fd_maybe(fd)) {
    return real.read(fd, buf, n);
  }
  iovec v{buf, n};
  return smc_read(fd, &v, 1, 0, [&] { return real.read(fd, buf, n); });
}

__attribute__((visibility("default"))) ssize_t __read_chk(int fd, void* buf, size_t n,
                                                          size_t buflen) {
  ensure_init();
  if (!g_enabled || !fd_maybe(fd) || n > buflen) {
    return real.read_chk(fd, buf, n, buflen);  // the real one reports the overflow
  }
  iovec v{buf, n};
  return smc_read(fd, &v, 1, 0, [&] { return real.read_chk(fd, buf, n, buflen); });
}

__attribute__((visibility("default"))) ssize_t readv(int fd, const iovec* iov, int iovcnt) {
  ensure_init();
  if (!g_enabled || !fd_maybe(fd)) {
    return real.readv(fd, iov, iovcnt);
  }
  return smc_read(fd, iov, iovcnt, 0, [&] { return real.readv(fd, iov, iovcnt); });
}

__attribute__((visibility("default"))) ssize_t recv(int fd, void* buf, size_t n, int flags) {
  ensure_init();
  if (!g_enabled || !fd_maybe(fd)) {
    return real.recv(fd, buf, n, flags);
  }
  iovec v{buf, n};
  return smc_read(fd, &v, 1, flags, [&] { return real.recv(fd, buf, n, flags); });
}

__attribute__((visibility("default"))) ssize_t __recv_chk(int fd, void* buf, size_t n,
                                                          size_t buflen, int flags) {
  ensure_init();
  if (!g_enabled || !fd_maybe(fd) || n > buflen) {
    return real.recv_chk(fd, buf, n, buflen, flags);
  }
  iovec v{buf, n};
  return smc_read(fd, &v, 1, flags, [&] { return real.recv_chk(fd, buf, n, buflen, flags); });
}

__attribute__((visibility("default"))) ssize_t recvfrom(int fd, void* buf, size_t n, int flags,
                                                        sockaddr* addr, socklen_t* alen) {
  ensure_init();
  if (!g_enabled || !fd_maybe(fd)) {
    return real.recvfrom(fd, buf, n, flags, addr, alen);
  }
  iovec v{buf, n};
  // A connected TCP socket reports no source address; neither do we.
  return smc_read(fd, &v, 1, flags, [&] { return real.recvfrom(fd, buf, n, flags, addr, alen); });
}

__attribute__((visibility("default"))) ssize_t __recvfrom_chk(int fd, void* buf, size_t n,
                                                              size_t buflen, int flags,
                                                              sockaddr* addr, socklen_t* alen) {
  ensure_init();
  if (!g_enabled || !fd_maybe(fd) || n > buflen) {
    return real.recvfrom_chk(fd, buf, n, buflen, flags, addr, alen);
  }
  iovec v{buf, n};
  return smc_read(fd, &v, 1, flags,
                  [&] { return real.recvfrom_chk(fd, buf, n, buflen, flags, addr, alen); });
}

__attribute__((visibility("default"))) ssize_t recvmsg(int fd, msghdr* msg, int flags) {
  ensure_init();
  if (!g_enabled || !fd_maybe(fd) || msg == nullptr) {
    return real.recvmsg(fd, msg, flags);
  }
  ssize_t n = smc_read(fd, msg->msg_iov, static_cast<int>(msg->msg_iovlen), flags,
                       [&] { return real.recvmsg(fd, msg, flags); });
  entry_ref e(fd);
  if (n >= 0 && e && e->st.load() == state::smc) {
    msg->msg_namelen = 0;
    msg->msg_controllen = 0;
    msg->msg_flags = 0;
  }
  return n;
}

__attribute__((visibility("default"))) ssize_t write(int fd, const void* buf, size_t n) {
  ensure_init();
  if (!g_enabled || !fd_maybe(fd)) {
    return real.write(fd, buf, n);
  }
  iovec v{const_cast<void*>(buf), n};
  return smc_write(fd, &v, 1, 0, [&] { return real.write(fd, buf, n); });
}

__attribute__((visibility("default"))) ssize_t writev(int fd, const iovec* iov, int iovcnt) {
  ensure_init();
  if (!g_enabled || !fd_maybe(fd)) {
    return real.writev(fd, iov, iovcnt);
  }
  return smc_write(fd, iov, iovcnt, 0, [&] { return real.writev(fd, iov, iovcnt); });
}

__attribute__((visibility("default"))) ssize_t send(int fd, const void* buf, size_t n, int flags) {
  ensure_init();
  if (!g_enabled || !fd_maybe(fd)) {
    return real.send(fd, buf, n, flags);
  }
  iovec v{const_cast<void*>(buf), n};
  return smc_write(fd, &v, 1, flags, [&] { return real.send(fd, buf, n, flags); });
}

__attribute__((visibility("default"))) ssize_t sendto(int fd, const void* buf, size_t n, int flags,
                                                      const sockaddr* addr, socklen_t alen) {
  ensure_init();
  if (!g_enabled || !fd_maybe(fd)) {
    return real.sendto(fd, buf, n, flags, addr, alen);
  }
  iovec v{const_cast<void*>(buf), n};
  return smc_write(fd, &v, 1, flags, [&] { return real.sendto(fd, buf, n, flags, addr, alen); });
}

__attribute__((visibility("default"))) ssize_t sendmsg(int fd, const msghdr* msg, int flags) {
  ensure_init();
  if (!g_enabled || !fd_maybe(fd) || msg == nullptr) {
    return real.sendmsg(fd, msg, flags);
  }
  return smc_write(fd, msg->msg_iov, static_cast<int>(msg->msg_iovlen), flags,
                   [&] { return real.sendmsg(fd, msg, flags); });
}

}  // extern "C"
