// Interposed data calls: read/write families, recv/send families and the
// FORTIFY (_chk) variants. A socket we do not handle costs one load and one
// branch; an SMC socket is served by core::conn; a socket still deciding
// settles its state first.
#include <limits.h>
#include <sys/socket.h>
#include <time.h>
#include <sys/uio.h>
#include <unistd.h>

#include <utility>
#include <vector>

#include "preload/preload.h"

using namespace smc::preload;

// glibc's FORTIFY entry points (declared by its headers only under FORTIFY).
extern "C" {
ssize_t __read_chk(int fd, void* buf, size_t n, size_t buflen);
ssize_t __recv_chk(int fd, void* buf, size_t n, size_t buflen, int flags);
ssize_t __recvfrom_chk(int fd, void* buf, size_t n, size_t buflen, int flags, sockaddr* addr,
                       socklen_t* alen);
}

namespace smc::preload {

int settle_io(entry* e, int fd, bool write, int flags, state& st) {
  state s = e->st.load(std::memory_order_acquire);
  if (s == state::tcp) {
    fd_forget_if(fd, e);
    st = s;
    return e->tcp_err.exchange(0, std::memory_order_relaxed);  // (owed: reported once)
  }
  if (write) {
    if (s == state::undecided) {
      prepare_write(e, fd);
    } else if (s == state::connecting || s == state::stepping) {
      drive(e, fd);
    }
    if (in_handshake(e->st.load(std::memory_order_acquire))) {
      // Where the bytes go (RMB or TCP) is not known yet.
      if (nonblocking(fd, flags)) {
        return EAGAIN;
      }
      if (int err = await_decision(e, fd, timeout_deadline(fd, SO_SNDTIMEO)); err != 0) {
        return err;
      }
    }
  } else if (still_deciding(s)) {
    if (int err = prepare_read(e, fd, flags); err != 0) {
      return err;
    }
  }
  st = e->st.load(std::memory_order_acquire);
  return 0;
}

}  // namespace smc::preload

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
    state s;
    if (int err = settle_io(e.get(), fd, Write, flags, s); err != 0) {
      errno = err;
      return -1;
    }
    if (s == state::smc) {
      if ((flags & MSG_OOB) != 0 || iovcnt < 0 || iovcnt > IOV_MAX) {
        errno = EINVAL;  // no urgent data on SMC connections
        return -1;
      }
      auto r = Write ? e->conn->send(iov, iovcnt, flags) : e->conn->recv(iov, iovcnt, flags);
      if (Write && e->conn->cork_owed()) {
        cork_deadline(e.get(), fd);
      }
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
  // A connected TCP socket reports no source address (the kernel sets the
  // length to 0); neither do we.
  const ssize_t r =
      smc_read(fd, &v, 1, flags, [&] { return real.recvfrom(fd, buf, n, flags, addr, alen); });
  if (r >= 0 && alen != nullptr) {
    *alen = 0;
  }
  return r;
}

__attribute__((visibility("default"))) ssize_t __recvfrom_chk(int fd, void* buf, size_t n,
                                                              size_t buflen, int flags,
                                                              sockaddr* addr, socklen_t* alen) {
  ensure_init();
  if (!g_enabled || !fd_maybe(fd) || n > buflen) {
    return real.recvfrom_chk(fd, buf, n, buflen, flags, addr, alen);
  }
  iovec v{buf, n};
  const ssize_t r = smc_read(
      fd, &v, 1, flags, [&] { return real.recvfrom_chk(fd, buf, n, buflen, flags, addr, alen); });
  if (r >= 0 && alen != nullptr) {
    *alen = 0;  // as recvfrom
  }
  return r;
}

}  // extern "C"

namespace {

// A message that brought fds (SCM_RIGHTS): its sockets are ours to know
// before the application sees them.
void after_recvmsg(ssize_t n, const msghdr* msg) {
  if (n >= 0 && msg != nullptr && msg->msg_controllen > 0) {
    int saved = errno;
    try {
      adopt_received(msg);
    } catch (...) {
    }
    errno = saved;
  }
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) ssize_t recvmsg(int fd, msghdr* msg, int flags) {
  ensure_init();
  if (!g_enabled) {
    return real.recvmsg(fd, msg, flags);
  }
  if (!fd_maybe(fd) || msg == nullptr) {
    ssize_t n = real.recvmsg(fd, msg, flags);
    after_recvmsg(n, msg);
    return n;
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

}  // extern "C"

namespace {

// Sends a message that may pass fds (SCM_RIGHTS): the SMC connections among
// them are offered to the receiver first (core/handoff), and withdrawn if
// the message does not leave.
template <typename Send>
auto send_passing(const msghdr* msg, Send&& send) {
  std::vector<uint64_t> offers;
  if (msg != nullptr && msg->msg_controllen > 0) {
    int saved = errno;
    try {
      offer_passed(msg, offers);
    } catch (...) {
    }
    errno = saved;
  }
  auto n = send();
  if (n < 0 && !offers.empty()) {
    int saved = errno;
    withdraw_offers(offers);
    errno = saved;
  }
  return n;
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) ssize_t sendmsg(int fd, const msghdr* msg, int flags) {
  ensure_init();
  if (!g_enabled) {
    return real.sendmsg(fd, msg, flags);
  }
  if (!fd_maybe(fd) || msg == nullptr) {
    return send_passing(msg, [&] { return real.sendmsg(fd, msg, flags); });
  }
  return smc_write(fd, msg->msg_iov, static_cast<int>(msg->msg_iovlen), flags,
                   [&] { return real.sendmsg(fd, msg, flags); });
}

// preadv2/pwritev2 with offset -1 use the file position: on a socket they
// are readv/writev with per-call flags (RWF_NOWAIT = MSG_DONTWAIT). With any
// other offset the kernel answers ESPIPE without touching the stream.
static int rwf_to_msg(int rwf) { return (rwf & RWF_NOWAIT) != 0 ? MSG_DONTWAIT : 0; }

__attribute__((visibility("default"))) ssize_t preadv2(int fd, const iovec* iov, int iovcnt,
                                                       off_t off, int rwf) {
  ensure_init();
  if (!g_enabled || off != -1 || !fd_maybe(fd)) {
    return real.preadv2(fd, iov, iovcnt, off, rwf);
  }
  return smc_read(fd, iov, iovcnt, rwf_to_msg(rwf),
                  [&] { return real.preadv2(fd, iov, iovcnt, off, rwf); });
}

__attribute__((visibility("default"))) ssize_t pwritev2(int fd, const iovec* iov, int iovcnt,
                                                        off_t off, int rwf) {
  ensure_init();
  if (!g_enabled || off != -1 || !fd_maybe(fd)) {
    return real.pwritev2(fd, iov, iovcnt, off, rwf);
  }
  return smc_write(fd, iov, iovcnt, rwf_to_msg(rwf),
                   [&] { return real.pwritev2(fd, iov, iovcnt, off, rwf); });
}

// On LP64 glibc the 64-bit names are aliases of the same functions.
__attribute__((visibility("default"))) ssize_t preadv64v2(int fd, const iovec* iov, int iovcnt,
                                                          off_t off, int rwf) {
  return preadv2(fd, iov, iovcnt, off, rwf);
}

__attribute__((visibility("default"))) ssize_t pwritev64v2(int fd, const iovec* iov, int iovcnt,
                                                           off_t off, int rwf) {
  return pwritev2(fd, iov, iovcnt, off, rwf);
}

// sendmmsg/recvmmsg on an SMC socket: the per-message path in a loop, with
// the kernel's return rules (the number of messages done; an error only if
// the first one failed; at most UIO_MAXIOV messages).
__attribute__((visibility("default"))) int sendmmsg(int fd, mmsghdr* vec, unsigned vlen,
                                                    int flags) {
  ensure_init();
  if (!g_enabled) {
    return real.sendmmsg(fd, vec, vlen, flags);
  }
  if (!fd_maybe(fd)) {
    // Messages that pass fds: offered as sendmsg() does; offers for messages
    // that did not leave are withdrawn.
    std::vector<std::vector<uint64_t>> offers;
    bool any = false;
    for (unsigned i = 0; vec != nullptr && i < vlen && i < UIO_MAXIOV; ++i) {
      if (vec[i].msg_hdr.msg_controllen > 0) {
        offers.resize(vlen);
        any = true;
        break;
      }
    }
    if (!any) {
      return real.sendmmsg(fd, vec, vlen, flags);
    }
    int saved = errno;
    for (unsigned i = 0; i < vlen && i < UIO_MAXIOV; ++i) {
      try {
        offer_passed(&vec[i].msg_hdr, offers[i]);
      } catch (...) {
      }
    }
    errno = saved;
    int n = real.sendmmsg(fd, vec, vlen, flags);
    saved = errno;
    for (unsigned i = n < 0 ? 0 : static_cast<unsigned>(n); i < offers.size(); ++i) {
      withdraw_offers(offers[i]);
    }
    errno = saved;
    return n;
  }
  entry_ref e(fd);
  if (!e) {
    return real.sendmmsg(fd, vec, vlen, flags);
  }
  int saved = errno;
  try {
    state s;
    if (int err = settle_io(e.get(), fd, true, flags, s); err != 0) {
      errno = err;
      return -1;
    }
    if (s != state::smc) {
      errno = saved;
      return real.sendmmsg(fd, vec, vlen, flags);
    }
    if (vlen > UIO_MAXIOV) {
      vlen = UIO_MAXIOV;
    }
    if (vlen > 0 && vec == nullptr) {
      errno = EFAULT;
      return -1;
    }
    unsigned done = 0;
    int err = 0;
    for (; done < vlen; ++done) {
      const msghdr& m = vec[done].msg_hdr;
      if ((flags & MSG_OOB) != 0 || m.msg_iovlen > IOV_MAX) {
        err = EINVAL;
        break;
      }
      size_t want = 0;
      for (size_t i = 0; i < m.msg_iovlen; ++i) {
        want += m.msg_iov[i].iov_len;
      }
      auto r = e->conn->send(m.msg_iov, static_cast<int>(m.msg_iovlen), flags);
      if (r.n < 0) {
        err = r.err;
        break;
      }
      vec[done].msg_len = static_cast<unsigned>(r.n);
      if (static_cast<size_t>(r.n) < want) {
        // A short write (non-blocking, ring full): the next message must not
        // follow a gap in the stream, so this is the last one sent.
        ++done;
        break;
      }
    }
    if (e->conn->cork_owed()) {
      cork_deadline(e.get(), fd);
    }
    if (done == 0 && err != 0) {
      errno = err;
      return -1;
    }
    errno = saved;
    return static_cast<int>(done);
  } catch (...) {
    errno = EIO;
    return -1;
  }
}

__attribute__((visibility("default"))) int recvmmsg(int fd, mmsghdr* vec, unsigned vlen,
                                                    int flags, timespec* timeout) {
  ensure_init();
  if (!g_enabled) {
    return real.recvmmsg(fd, vec, vlen, flags, timeout);
  }
  if (!fd_maybe(fd)) {
    int n = real.recvmmsg(fd, vec, vlen, flags, timeout);
    for (int i = 0; i < n; ++i) {
      after_recvmsg(0, &vec[i].msg_hdr);
    }
    return n;
  }
  entry_ref e(fd);
  if (!e) {
    return real.recvmmsg(fd, vec, vlen, flags, timeout);
  }
  int saved = errno;
  try {
    if (timeout != nullptr &&
        (timeout->tv_sec < 0 || timeout->tv_nsec < 0 || timeout->tv_nsec >= 1000000000L)) {
      errno = EINVAL;
      return -1;
    }
    state s;
    if (int err = settle_io(e.get(), fd, false, flags & ~MSG_WAITFORONE, s); err != 0) {
      errno = err;
      return -1;
    }
    if (s != state::smc) {
      errno = saved;
      return real.recvmmsg(fd, vec, vlen, flags, timeout);
    }
    if (vlen > UIO_MAXIOV) {
      vlen = UIO_MAXIOV;
    }
    if (vlen > 0 && vec == nullptr) {
      errno = EFAULT;
      return -1;
    }
    timespec end{};
    if (timeout != nullptr) {
      clock_gettime(CLOCK_MONOTONIC, &end);
      end.tv_sec += timeout->tv_sec;
      end.tv_nsec += timeout->tv_nsec;
      if (end.tv_nsec >= 1000000000L) {
        end.tv_sec += 1;
        end.tv_nsec -= 1000000000L;
      }
    }
    int f = flags & ~MSG_WAITFORONE;
    unsigned done = 0;
    int err = 0;
    while (done < vlen) {
      msghdr& m = vec[done].msg_hdr;
      if ((f & MSG_OOB) != 0 || m.msg_iovlen > IOV_MAX) {
        err = EINVAL;
        break;
      }
      auto r = e->conn->recv(m.msg_iov, static_cast<int>(m.msg_iovlen), f);
      if (r.n < 0) {
        err = r.err;
        break;
      }
      vec[done].msg_len = static_cast<unsigned>(r.n);
      m.msg_namelen = 0;
      m.msg_controllen = 0;
      m.msg_flags = 0;
      ++done;
      if ((flags & MSG_WAITFORONE) != 0) {
        f |= MSG_DONTWAIT;
      }
      if (timeout != nullptr) {
        // As the kernel: the timeout is looked at only after each message.
        timespec now{};
        clock_gettime(CLOCK_MONOTONIC, &now);
        int64_t left = (end.tv_sec - now.tv_sec) * 1000000000LL + (end.tv_nsec - now.tv_nsec);
        if (left < 0) {
          left = 0;
        }
        timeout->tv_sec = static_cast<time_t>(left / 1000000000LL);
        timeout->tv_nsec = static_cast<long>(left % 1000000000LL);
        if (left == 0) {
          break;
        }
      }
    }
    if (done == 0 && err != 0) {
      errno = err;
      return -1;
    }
    errno = saved;
    return static_cast<int>(done);
  } catch (...) {
    errno = EIO;
    return -1;
  }
}

}  // extern "C"
