// The OS-call seam. Every socket call the engine and the transports make goes
// through this table: inside the preload it holds the next definitions in the
// symbol chain (dlsym RTLD_NEXT), so the library never re-enters its own
// interposed functions; in unit tests it holds libc's.
#pragma once

#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <cstddef>
#include <vector>

namespace smc::rdma {

struct sys_calls {
  int (*socket)(int, int, int);
  int (*connect)(int, const sockaddr*, socklen_t);
  int (*bind)(int, const sockaddr*, socklen_t);
  int (*listen)(int, int);
  int (*accept4)(int, sockaddr*, socklen_t*, int);
  ssize_t (*recv)(int, void*, size_t, int);
  ssize_t (*send)(int, const void*, size_t, int);
  ssize_t (*recvmsg)(int, msghdr*, int);
  ssize_t (*sendmsg)(int, const msghdr*, int);
  ssize_t (*read)(int, void*, size_t);
  ssize_t (*write)(int, const void*, size_t);
  int (*close)(int);
  int (*poll)(pollfd*, nfds_t, int);
  int (*fcntl)(int, int, ...);
  int (*getsockopt)(int, int, int, void*, socklen_t*);
  int (*setsockopt)(int, int, int, const void*, socklen_t);
  int (*epoll_create1)(int);
  int (*epoll_ctl)(int, int, int, epoll_event*);
  int (*epoll_wait)(int, epoll_event*, int, int);
  int (*recvmmsg)(int, mmsghdr*, unsigned, int, timespec*);
  int (*shutdown)(int, int);
  int (*ioctl)(int, unsigned long, ...);
};

/// The table in use. Defaults to libc's functions; the preload replaces every
/// entry before the first socket is handled.
sys_calls& sys();

/// Non-zero on a thread while the library's own code calls, without going
/// through sys(), libc functions the preload interposes: Boost.Asio inside
/// core/engine.cpp (epoll_create1, epoll_ctl, epoll_wait, read, write) and
/// rdma-core's libibverbs (write, read and ioctl on the device's fds, in
/// commands and in a software provider's post_send). The interposers then
/// pass every call through untouched: those fds are never the
/// application's sockets, even when one takes a number the application
/// closed behind the preload's back (an fd table entry not forgotten yet).
/// Set for good on the engine thread, and around each call into Asio or
/// libibverbs from other threads (library_calls).
extern thread_local unsigned t_library_calls __attribute__((tls_model("initial-exec")));

class library_calls {
 public:
  library_calls() { ++t_library_calls; }
  ~library_calls() { --t_library_calls; }
  library_calls(const library_calls&) = delete;
  library_calls& operator=(const library_calls&) = delete;
};

// ---- where our own fds go ----

/// Fds the transports make or receive that outlive the call (a link's
/// socket, a slot's memfds and doorbells, a received peer's, SMC-R's
/// eventfds) never take a number the application could get:
///
/// - Where the hard RLIMIT_NOFILE allows, they go at or above the soft
///   limit, which is raised for the one fcntl(F_DUPFD_CLOEXEC) that moves
///   them there and restored right after. The application keeps every
///   number below its limit, as on TCP: its next socket gets the number it
///   would have got, and it runs out of fds exactly when it would have
///   (redis-server under a soft limit of 1024 refused clients after 104
///   SMC connections when the library's fds took its numbers).
/// - Otherwise (soft = hard, and no CAP_SYS_RESOURCE) in the upper half
///   below the soft limit (high_fd_base() and up), and never lower: when
///   none is free there, the fd is closed and the caller fails with
///   EMFILE (the connection stays TCP). Fds a peer sent
///   (recv_with_fds) stay where they came when nothing higher is free: a
///   connection the peer already made SMC cannot fall back.
///
/// Event loops size their tables by the fd numbers they expect too (wrk:
/// 10 + 3 per connection). Paid when a link or a slot is made, not per
/// connection: for n fds placed at once (place_fds) three prlimit64 (read,
/// raise, restore), then a dup and a close each. The application's own changes of
/// the limit (setrlimit, prlimit), and its reads of it (getrlimit too),
/// wait for a placement under way (nofile_lock()): none sees the raised
/// value.
///
/// Half the soft RLIMIT_NOFILE (512 if unlimited or unknown), read once.
int high_fd_base();
/// The soft RLIMIT_NOFILE as the process set it (never a placement's
/// raised one), or -1 if unlimited or unknown.
long nofile_soft_limit();
/// fd renumbered as above (close-on-exec), or -1 with errno EMFILE (fd
/// closed); fd < 0 is passed through.
int place_fd(int fd);
/// place_fd() for each of n fds at once (one raise of the limit for all):
/// each fds[i] >= 0 becomes its placed copy, or -1 (closed; errno EMFILE).
/// False if any became -1.
bool place_fds(int* fds, size_t n);
/// Held while the soft RLIMIT_NOFILE is raised for a placement: the
/// preload's getrlimit/setrlimit/prlimit of RLIMIT_NOFILE take it too, so
/// the restore never undoes the application's own change, and no read sees
/// the raised value. Taken last of the
/// library's locks before fork(), released in parent and child.
void nofile_lock();
void nofile_unlock();

// ---- fds a peer can reach ----

/// The unix socket refuses SCM_RIGHTS from now on (SO_PASSRIGHTS 0, Linux
/// 6.16 and later): a sender's fds are turned away (EPERM) instead of being
/// queued on a socket of ours, where their last reference would be released
/// on whatever thread of ours empties or closes it. False where the kernel
/// lacks the option (then only drain_untrusted() keeps that from blocking).
bool refuse_passed_fds(int sock);
/// Closes an fd a peer gave us (or a socket a peer could queue fds on)
/// without letting the close block the caller: a socket's lingering is
/// turned off first (a TCP socket with unsent data to a peer that does not
/// read holds close() for its linger time), and a unix socket's queue is
/// emptied first (drain_untrusted), to a bounded depth. Never for a socket
/// the application may still use (SO_LINGER is the socket's, not the fd's).
void close_untrusted(int fd);
/// Closes a unix socket of our own that a peer was connected to (the
/// rendezvous): shut for reading, emptied (drain_untrusted), closed.
void close_shared_unix(int sock);
/// Empties a unix socket's receive queue without blocking; fds that came
/// with the messages are closed with close_untrusted(). Returns how many
/// messages it took (at most `max`), up to the first empty one or the end
/// of file, which sets `*empty_seen` (if given).
int drain_untrusted(int sock, int max, bool* empty_seen = nullptr);

/// Doorbells are non-blocking eventfds: ring adds one, drain empties it.
void doorbell_ring(int efd);
void doorbell_drain(int efd);

// ---- fds passed over unix sockets (SCM_RIGHTS) ----

/// Calls f(fd) for each fd of a message's SCM_RIGHTS control data.
template <class F>
void for_each_passed_fd(const msghdr* msg, F&& f) {
  if (msg == nullptr || msg->msg_control == nullptr || msg->msg_controllen < sizeof(cmsghdr)) {
    return;
  }
  for (const cmsghdr* c = CMSG_FIRSTHDR(msg); c != nullptr;
       c = CMSG_NXTHDR(const_cast<msghdr*>(msg), const_cast<cmsghdr*>(c))) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS || c->cmsg_len < CMSG_LEN(0)) {
      continue;
    }
    const size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < n; ++i) {
      int fd;
      __builtin_memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      f(fd);
    }
  }
}

/// The most fds send_with_fds / recv_with_fds carry in one message.
inline constexpr size_t max_passed_fds = 16;

/// Sends `len` bytes with `nfds` fds (at most max_passed_fds) as one
/// message, without blocking or SIGPIPE. True if it left whole.
bool send_with_fds(int sock, const void* data, size_t len, const int* fds, size_t nfds);

/// Receives one message of up to `len` bytes without blocking; every fd it
/// brought is appended to `fds` (close-on-exec; the caller owns them, also
/// on failure). `truncated`: the message or its fds did not fit. Returns
/// the byte count, or -1 with errno.
ssize_t recv_with_fds(int sock, void* data, size_t len, std::vector<int>& fds, bool& truncated);

}  // namespace smc::rdma
