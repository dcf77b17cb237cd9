// sendfile and splice with an SMC socket at one end. The kernel would move
// the bytes through the idle TCP socket behind the SMC connection's back, so
// these calls are served here: the other end (a file or a pipe) is read or
// written with ordinary calls and the socket end goes through core::conn.
// Offsets, short counts and errors follow sendfile(2) and splice(2); calls
// that involve no SMC socket go straight to the kernel after one table load
// per fd.
//
// copy_file_range, tee and vmsplice need no interposition: the kernel refuses
// sockets there (EINVAL/EBADF) without touching the stream.
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <memory>

#include "preload/preload.h"

using namespace smc::preload;

namespace {

// The kernel caps one sendfile/splice at MAX_RW_COUNT.
constexpr size_t max_rw = 0x7ffff000;
constexpr size_t scratch_size = 256 * 1024;

// A per-thread bounce buffer (one copy into it, one into the peer's RMB).
uint8_t* scratch() {
  thread_local std::unique_ptr<uint8_t[]> buf;
  if (!buf) {
    buf.reset(new (std::nothrow) uint8_t[scratch_size]);
  }
  return buf.get();
}

bool is_fifo(int fd) {
  struct stat st{};
  return fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode);
}

bool nonblocking(int fd) {
  int fl = real.fcntl(fd, F_GETFL);
  return fl >= 0 && (fl & O_NONBLOCK) != 0;
}

// Room in the peer's RMB right now (what a non-blocking send would take).
size_t tx_room(smc::core::conn& c) {
  uint32_t size = c.path().tx_size();
  uint32_t used = c.unsent_bytes();
  return used >= size ? 0 : size - used;
}

// Sends all n bytes of buf, blocking while the ring is full even on a
// non-blocking socket: the bytes were already taken from their source and
// cannot be put back. Returns bytes sent (< n only on an error, in `err`).
size_t send_all_taken(int fd, smc::core::conn& c, const uint8_t* buf, size_t n, int& err) {
  size_t done = 0;
  while (done < n) {
    iovec v{const_cast<uint8_t*>(buf + done), n - done};
    auto r = c.send(&v, 1, 0);
    if (r.n > 0) {
      done += static_cast<size_t>(r.n);
      continue;
    }
    if (r.n < 0 && (r.err == EAGAIN || r.err == EINTR)) {
      pollfd p{fd, POLLOUT, 0};
      ::poll(&p, 1, 1000);  // ours: SMC readiness
      continue;
    }
    err = r.n < 0 ? r.err : EIO;
    break;
  }
  return done;
}

// Source (a file or a pipe) -> SMC socket, the body of sendfile and of splice
// from a pipe. `pos`: read at this offset (pread) and advance it, or read the
// file position when null. Returns bytes sent, or -1 with errno.
ssize_t to_smc(int out_fd, entry* e, int in_fd, off64_t* pos, size_t count) {
  uint8_t* buf = scratch();
  if (buf == nullptr) {
    errno = ENOMEM;
    return -1;
  }
  auto& c = *e->conn;
  count = std::min(count, max_rw);
  // Asked of the kernel only when it matters (the ring has less room than
  // the next piece), once: a response that fits costs no F_GETFL.
  int nb = -1;
  size_t done = 0;
  int err = 0;
  while (done < count) {
    size_t want = std::min(count - done, scratch_size);
    size_t room = tx_room(c);
    if (room < want && nb < 0) {
      nb = nonblocking(out_fd) ? 1 : 0;
    }
    if (room < want && nb == 1) {
      // Take from the source only what the socket accepts now.
      if (room == 0) {
        if (done > 0) {
          break;
        }
        if ((c.events() & POLLOUT) == 0) {
          // The kernel reads the file before it finds the socket full: at
          // the end of the file that is 0, not EAGAIN.
          uint8_t probe;
          if (pos != nullptr && pread64(in_fd, &probe, 1, *pos) == 0) {
            break;
          }
          err = EAGAIN;
          break;
        }
        // Writable with a full ring: the connection ended or failed. One byte
        // makes the send below report it (EPIPE, ECONNRESET) as a write would.
        room = 1;
      }
      want = std::min(want, room);
    }
    ssize_t n = pos != nullptr ? pread64(in_fd, buf, want, *pos) : real.read(in_fd, buf, want);
    if (n < 0) {
      err = errno;
      break;
    }
    if (n == 0) {
      break;  // end of the file / all writers of the pipe gone
    }
    int serr = 0;
    size_t sent = send_all_taken(out_fd, c, buf, static_cast<size_t>(n), serr);
    done += sent;
    if (pos != nullptr) {
      *pos += static_cast<off64_t>(sent);
    }
    if (sent < static_cast<size_t>(n)) {
      err = serr;
      break;
    }
    if (pos == nullptr || static_cast<size_t>(n) < want) {
      // A stream source (a pipe) returns after what it had, as splice does;
      // a short read of a file is its end.
      break;
    }
  }
  if (c.cork_owed()) {
    cork_deadline(e, out_fd);
  }
  if (done == 0 && err != 0) {
    errno = err;
    return -1;
  }
  return static_cast<ssize_t>(done);
}

// SMC socket -> pipe (splice, and sendfile to a pipe). The bytes are peeked,
// written to the pipe, and only what the pipe took is consumed, so a full or
// non-blocking pipe never loses data.
ssize_t smc_to_pipe(entry* e, int pipe_fd, size_t count, unsigned flags) {
  uint8_t* buf = scratch();
  if (buf == nullptr) {
    errno = ENOMEM;
    return -1;
  }
  auto& c = *e->conn;
  size_t want = std::min({count, max_rw, scratch_size});
  if (want == 0) {
    return 0;
  }
  const bool pipe_nb = (flags & SPLICE_F_NONBLOCK) != 0 || nonblocking(pipe_fd);
  if (pipe_nb) {
    pollfd p{pipe_fd, POLLOUT, 0};
    if (real.poll(&p, 1, 0) == 0) {
      errno = EAGAIN;
      return -1;
    }
    if ((p.revents & POLLERR) != 0) {
      // No reader: the write below reports EPIPE (and SIGPIPE) as the kernel does.
      want = std::min<size_t>(want, 1);
    } else if (!nonblocking(pipe_fd)) {
      // A blocking pipe with SPLICE_F_NONBLOCK: one page always fits once the
      // pipe polls writable.
      want = std::min<size_t>(want, PIPE_BUF);
    }
  }
  iovec v{buf, want};
  auto r = c.recv(&v, 1, MSG_PEEK);
  if (r.n <= 0) {
    errno = r.n < 0 ? r.err : errno;
    return r.n;
  }
  ssize_t w = real.write(pipe_fd, buf, static_cast<size_t>(r.n));
  if (w <= 0) {
    return w;  // errno from the pipe (EAGAIN, EPIPE, EINTR)
  }
  iovec d{buf, static_cast<size_t>(w)};
  auto k = c.recv(&d, 1, MSG_DONTWAIT);  // consumes exactly what the pipe took
  if (k.n != w) {
    errno = k.n < 0 ? k.err : EIO;
    return -1;
  }
  return w;
}

// The SMC entry behind fd if its state, settled for this direction, is smc.
// Returns 1 (SMC; `e` holds it), 0 (not SMC: the kernel serves the call), or
// -1 with errno set.
int smc_end(int fd, bool write, entry_ref& e) {
  if (!e) {
    return 0;
  }
  state s;
  if (int err = settle_io(e.get(), fd, write, 0, s); err != 0) {
    errno = err;
    return -1;
  }
  return s == state::smc ? 1 : 0;
}

ssize_t sendfile_common(int out_fd, int in_fd, off64_t* offset, size_t count, bool& handled) {
  handled = true;
  int saved = errno;
  entry_ref out(out_fd);
  int so = smc_end(out_fd, true, out);
  if (so < 0) {
    return -1;
  }
  if (so == 1) {
    if (offset != nullptr && *offset < 0) {
      errno = EINVAL;
      return -1;
    }
    off64_t pos = 0;
    off64_t* pp = offset;
    bool restore = false;
    if (pp == nullptr) {
      // Read from the file position and leave it after the bytes sent; an
      // unseekable source (a pipe) is read as a stream.
      pos = lseek64(in_fd, 0, SEEK_CUR);
      if (pos >= 0) {
        pp = &pos;
        restore = true;
      }
    }
    errno = saved;
    ssize_t n = to_smc(out_fd, out.get(), in_fd, pp, count);
    if (restore) {
      int e = errno;
      lseek64(in_fd, pos, SEEK_SET);
      errno = e;
    }
    if (n >= 0) {
      errno = saved;
    }
    return n;
  }
  entry_ref in(in_fd);
  int si = smc_end(in_fd, false, in);
  if (si < 0) {
    return -1;
  }
  if (si == 1) {
    // From a socket the kernel only sendfiles into a pipe, without offset.
    if (offset != nullptr) {
      errno = ESPIPE;
      return -1;
    }
    if (!is_fifo(out_fd)) {
      errno = EINVAL;
      return -1;
    }
    errno = saved;
    ssize_t n = smc_to_pipe(in.get(), out_fd, count, 0);
    if (n >= 0) {
      errno = saved;
    }
    return n;
  }
  handled = false;
  errno = saved;
  return 0;
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) ssize_t sendfile(int out_fd, int in_fd, off_t* offset,
                                                        size_t count) {
  ensure_init();
  if (!g_enabled || (!fd_maybe(out_fd) && !fd_maybe(in_fd))) {
    return real.sendfile(out_fd, in_fd, offset, count);
  }
  try {
    bool handled = false;
    off64_t o = offset != nullptr ? *offset : 0;
    ssize_t n = sendfile_common(out_fd, in_fd, offset != nullptr ? &o : nullptr, count, handled);
    if (!handled) {
      return real.sendfile(out_fd, in_fd, offset, count);
    }
    if (offset != nullptr) {
      *offset = static_cast<off_t>(o);
    }
    return n;
  } catch (...) {
    errno = EIO;
    return -1;
  }
}

__attribute__((visibility("default"))) ssize_t sendfile64(int out_fd, int in_fd, off64_t* offset,
                                                          size_t count) {
  ensure_init();
  if (!g_enabled || (!fd_maybe(out_fd) && !fd_maybe(in_fd))) {
    return real.sendfile64(out_fd, in_fd, offset, count);
  }
  try {
    bool handled = false;
    ssize_t n = sendfile_common(out_fd, in_fd, offset, count, handled);
    return handled ? n : real.sendfile64(out_fd, in_fd, offset, count);
  } catch (...) {
    errno = EIO;
    return -1;
  }
}

__attribute__((visibility("default"))) ssize_t splice(int fd_in, loff_t* off_in, int fd_out,
                                                      loff_t* off_out, size_t len,
                                                      unsigned flags) {
  ensure_init();
  if (!g_enabled || (!fd_maybe(fd_out) && !fd_maybe(fd_in))) {
    return real.splice(fd_in, off_in, fd_out, off_out, len, flags);
  }
  try {
    int saved = errno;
    entry_ref out(fd_out);
    int so = smc_end(fd_out, true, out);
    if (so < 0) {
      return -1;
    }
    if (so == 1 && is_fifo(fd_in)) {
      // pipe -> SMC socket. Neither end takes an offset (the kernel: ESPIPE).
      if (off_in != nullptr || off_out != nullptr) {
        errno = ESPIPE;
        return -1;
      }
      if (len == 0) {
        return 0;
      }
      // One read of the pipe, of at most what it holds (splice returns once
      // the pipe is drained); an empty pipe blocks unless SPLICE_F_NONBLOCK
      // or O_NONBLOCK says not to, and gives 0 once no writer is left.
      bool pipe_blocks = (flags & SPLICE_F_NONBLOCK) == 0 && !nonblocking(fd_in);
      size_t want = len;
      if (pipe_blocks) {
        int avail = 0;
        if (real.ioctl(fd_in, FIONREAD, &avail) == 0 && avail > 0) {
          want = std::min<size_t>(len, static_cast<size_t>(avail));
        }
      } else {
        // Do not block on an empty pipe.
        int avail = 0;
        if (real.ioctl(fd_in, FIONREAD, &avail) == 0) {
          if (avail == 0) {
            pollfd p{fd_in, POLLIN, 0};
            if (real.poll(&p, 1, 0) == 1 && (p.revents & POLLHUP) != 0 && (p.revents & POLLIN) == 0) {
              return 0;  // no writers left: end of the pipe
            }
            errno = EAGAIN;
            return -1;
          }
          want = std::min<size_t>(len, static_cast<size_t>(avail));
        }
      }
      errno = saved;
      // SPLICE_F_NONBLOCK is about the pipe; the socket blocks per O_NONBLOCK.
      ssize_t n = to_smc(fd_out, out.get(), fd_in, nullptr, want);
      if (n >= 0) {
        errno = saved;
      }
      return n;
    }
    entry_ref in(fd_in);
    int si = so == 1 ? 0 : smc_end(fd_in, false, in);
    if (si < 0) {
      return -1;
    }
    if (si == 1 && is_fifo(fd_out)) {
      if (off_in != nullptr || off_out != nullptr) {
        errno = ESPIPE;
        return -1;
      }
      errno = saved;
      ssize_t n = smc_to_pipe(in.get(), fd_out, len, flags);
      if (n >= 0) {
        errno = saved;
      }
      return n;
    }
    errno = saved;
    // No pipe at the other end (the kernel refuses: EINVAL) or no SMC socket.
    return real.splice(fd_in, off_in, fd_out, off_out, len, flags);
  } catch (...) {
    errno = EIO;
    return -1;
  }
}

}  // extern "C"
