// Internal interface of the preload layer: real symbols, the fd table, the
// per-socket entry, and the decisions that move a socket between states.
// Only preload/ includes this; the exported symbols live in *_api.cpp.
#pragma once

#include <poll.h>
#include <spawn.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "config/config.h"
#include "core/busy_wait.h"
#include "core/conn.h"
#include "core/deadlines.h"
#include "core/handshake.h"

namespace smc::preload {

/// The next definition of every interposed function (dlsym RTLD_NEXT).
struct real_fns {
  int (*socket)(int, int, int);
  int (*connect)(int, const sockaddr*, socklen_t);
  int (*listen)(int, int);
  int (*accept)(int, sockaddr*, socklen_t*);
  int (*accept4)(int, sockaddr*, socklen_t*, int);
  int (*bind)(int, const sockaddr*, socklen_t);
  ssize_t (*read)(int, void*, size_t);
  ssize_t (*write)(int, const void*, size_t);
  ssize_t (*readv)(int, const iovec*, int);
  ssize_t (*writev)(int, const iovec*, int);
  ssize_t (*recv)(int, void*, size_t, int);
  ssize_t (*recvfrom)(int, void*, size_t, int, sockaddr*, socklen_t*);
  ssize_t (*recvmsg)(int, msghdr*, int);
  ssize_t (*send)(int, const void*, size_t, int);
  ssize_t (*sendto)(int, const void*, size_t, int, const sockaddr*, socklen_t);
  ssize_t (*sendmsg)(int, const msghdr*, int);
  int (*close)(int);
  int (*shutdown)(int, int);
  int (*poll)(pollfd*, nfds_t, int);
  int (*ppoll)(pollfd*, nfds_t, const timespec*, const sigset_t*);
  int (*select)(int, fd_set*, fd_set*, fd_set*, timeval*);
  int (*pselect)(int, fd_set*, fd_set*, fd_set*, const timespec*, const sigset_t*);
  int (*epoll_create)(int);
  int (*epoll_create1)(int);
  int (*epoll_ctl)(int, int, int, epoll_event*);
  int (*epoll_wait)(int, epoll_event*, int, int);
  int (*epoll_pwait)(int, epoll_event*, int, int, const sigset_t*);
  int (*epoll_pwait2)(int, epoll_event*, int, const timespec*, const sigset_t*);
  int (*dup)(int);
  int (*dup2)(int, int);
  int (*dup3)(int, int, int);
  int (*fcntl)(int, int, ...);
  int (*fcntl64)(int, int, ...);
  int (*ioctl)(int, unsigned long, ...);
  int (*getsockopt)(int, int, int, void*, socklen_t*);
  int (*setsockopt)(int, int, int, const void*, socklen_t);
  pid_t (*fork)();
  int (*execve)(const char*, char* const[], char* const[]);
  int (*execv)(const char*, char* const[]);
  int (*execvp)(const char*, char* const[]);
  int (*execvpe)(const char*, char* const[], char* const[]);
  int (*fexecve)(int, char* const[], char* const[]);
  int (*execveat)(int, const char*, char* const[], char* const[], int);
  int (*posix_spawn)(pid_t*, const char*, const posix_spawn_file_actions_t*,
                     const posix_spawnattr_t*, char* const[], char* const[]);
  int (*posix_spawnp)(pid_t*, const char*, const posix_spawn_file_actions_t*,
                      const posix_spawnattr_t*, char* const[], char* const[]);
  ssize_t (*read_chk)(int, void*, size_t, size_t);
  ssize_t (*recv_chk)(int, void*, size_t, size_t, int);
  ssize_t (*recvfrom_chk)(int, void*, size_t, size_t, int, sockaddr*, socklen_t*);
  int (*poll_chk)(pollfd*, nfds_t, int, size_t);
  ssize_t (*sendfile)(int, int, off_t*, size_t);
  ssize_t (*sendfile64)(int, int, off64_t*, size_t);
  ssize_t (*splice)(int, loff_t*, int, loff_t*, size_t, unsigned);
  int (*sendmmsg)(int, mmsghdr*, unsigned, int);
  int (*recvmmsg)(int, mmsghdr*, unsigned, int, timespec*);
  ssize_t (*preadv2)(int, const iovec*, int, off_t, int);
  ssize_t (*pwritev2)(int, const iovec*, int, off_t, int);
  int (*close_range)(unsigned, unsigned, int);
  void (*closefrom)(int);
  int (*prctl)(int, ...);
  long (*syscall)(long, ...);
  int (*getrlimit)(__rlimit_resource_t, rlimit*);
  int (*getrlimit64)(__rlimit_resource_t, rlimit64*);
  int (*setrlimit)(__rlimit_resource_t, const rlimit*);
  int (*setrlimit64)(__rlimit_resource_t, const rlimit64*);
  int (*prlimit)(pid_t, enum __rlimit_resource, const rlimit*, rlimit*);
  int (*prlimit64)(pid_t, enum __rlimit_resource, const rlimit64*, rlimit64*);
  int (*chroot)(const char*);
};
extern real_fns real;

/// Resolves symbols and reads the configuration once; safe before
/// constructors, from any thread, and re-entrantly (then it returns at once).
void init_slow();
extern std::atomic<int> g_init_state;  // 2 = done
inline void ensure_init() {
  if (__builtin_expect(g_init_state.load(std::memory_order_acquire) != 2, 0)) {
    init_slow();
  }
}
extern bool g_enabled;
/// The process restricted itself (sandbox_api.cpp): its SMC connections
/// carry on confined (core::conn::confine), new ones stay TCP.
extern std::atomic<bool> g_confined;
const config::config& cfg();
const core::hs_params& hs_params();

enum class state : uint8_t {
  fresh,       // socket() done, not yet connected or listening
  connecting,  // non-blocking connect to a believed peer in progress
  listener,    // accepted sockets start undecided
  undecided,   // accepted; the first bytes decide (Proposal or application data)
  strip,       // plain TCP, but a late CLC message may lead the stream: strip it
  deciding,    // a handshake runs in the background (core::background): calls
               // wait for its end (decided_fd) or fail with EAGAIN
  stepping,    // a handshake waits for the peer's next CLC message with no
               // thread (entry::step): the calls that touch the socket move
               // it on when its TCP socket is readable, the step's deadline
               // (core/deadlines) when nothing does
  smc,         // data served by conn
  tcp,         // plain TCP for good: entry dropped lazily from the table
  epoll,       // an epoll instance that holds SMC sockets
};

struct ep_set;
struct ep_reg;

/// How many forks this process made or came from (bumped in the parent
/// and in the child).
unsigned fork_generation();

/// Per-socket state, shared by every fd that dup() made of the socket.
struct entry {
  std::atomic<int> refs{1};  // table slots + in-flight calls
  std::atomic<int> nfds{1};  // fds referring to it
  // Whether the application's last close releases the socket (and the
  // kernel drops its epoll watches with it): not while the library holds
  // a copy of its own (a background decision's fd), nor when the socket
  // may live on elsewhere: it came from or went to another process
  // (SCM_RIGHTS, exec, pidfd_getfd: `passed`), or a fork made since it
  // was made holds it (and perhaps a copy of ours).
  std::atomic<int> own_copies{0};
  std::atomic<bool> passed{false};
  const unsigned fork_gen = fork_generation();
  std::mutex mu;             // serialises state transitions (handshakes)
  std::atomic<state> st{state::fresh};
  int family = 0;
  bool believed = false;          // the peer is in SMC_PEERS or sent SMC's TCP option
  uint64_t dest = 0;              // connect()'s address (core::dest_key), 0: none
  unsigned strip_mask = 0;        // state::strip: CLC types to strip
  int64_t partial_since_ms = 0;   // undecided: when a CLC prefix was first seen
  bool linger0 = false;           // SO_LINGER with l_linger 0: close resets
  uint32_t rcvlowat = 0;          // SO_RCVLOWAT as the application set it
  std::atomic<bool> lowat_default{false};  // made by our socket() (or accepted from such a
                                           // listener), TCP_NOTSENT_LOWAT never set
  bool marked = false;  // (under the marks' lock) its TCP socket carries our mark (mark_smc)
  // TCP for good: the socket's error (ECONNRESET) a look of the handshake
  // took from the kernel, owed to the application's next read or write
  // (settle_io; poll adds POLLERR until then).
  std::atomic<int> tcp_err{0};
  std::shared_ptr<core::conn> conn;  // state::smc (shared with an SCM_RIGHTS offer)
  ep_set* eps = nullptr;          // state::epoll
  std::vector<ep_reg*> regs;      // epoll registrations (under the epoll mutex)
  bool ended = false;             // (under mu) the SMC connection's last-close protocol ran
  int decided_fd = -1;            // deciding: an eventfd, readable once the decision ended
                                  // (made for the first poll or blocking wait that needs it)
  core::hs_step_ptr step;         // stepping (under mu): the handshake between its steps
  // (Under mu.) The socket's deadline, armed while stepping (the step's),
  // while an accepted socket nobody touched yet is undecided (when to look
  // at it ourselves), and while an SMC socket's corked send owes its peer a
  // wake-up; it holds a reference. timer_fd: the fd number it was
  // armed for; untouched_looks: looks taken at an untouched socket.
  core::deadlines::item timer;
  int timer_fd = -1;
  uint8_t untouched_looks = 0;
  unsigned untouched_gen = 0;  // the fork generation it was accepted in

  entry() = default;
  entry(const entry&) = delete;
  entry& operator=(const entry&) = delete;
  ~entry();
};

/// An SMC connection's TCP socket carries a mark in TCP_NOTSENT_LOWAT
/// (core::handoff::mark_base; inert on a socket that sends nothing; the
/// application still sees its own value), so that a process that receives
/// the socket (SCM_RIGHTS) or a program image that inherits it (exec)
/// knows it for an SMC connection, and where to ask for it.

/// A TCP socket this process got from elsewhere (inherited across exec,
/// received with SCM_RIGHTS, pidfd_getfd): recorded as if this process had
/// made it, so it negotiates or continues SMC like any other. A listener
/// stays a listener; a connected socket nobody decided yet starts undecided,
/// as an accepted one does; an SMC connection is taken over from the process
/// that passed it (core::handoff), or reads as reset if it cannot be.
/// `received`: it came in a message (the sender may have offered it).
void adopt_socket(int fd, bool received);
/// adopt_socket(fd, false) for each inherited fd; fds of one socket share
/// one entry.
void adopt_sockets(const std::vector<int>& fds);
/// The fds of a received message's SCM_RIGHTS control data: adopted.
void adopt_received(const msghdr* msg);
/// Before a message with SCM_RIGHTS control data leaves: offers the SMC
/// connections among its fds to the receiver (ids appended to `offers`).
void offer_passed(const msghdr* msg, std::vector<uint64_t>& offers);
/// An SMC connection's TCP socket carries our mark (core::handoff::mark_base
/// in TCP_NOTSENT_LOWAT) only where a process that does not share our
/// memory may find it: one passed in an SCM_RIGHTS message (its offer marks
/// it) and, from the first time this process starts a program on,
/// every one (mark_for_exec): the new program image then tells an
/// inherited SMC connection from a TCP one. Not at the switch otherwise: a
/// system call per connection saved. Marks `e`'s socket unless it is
/// marked already.
void mark_smc(entry* e, int fd);
/// Whether connections mark their sockets when they become SMC.
bool marking_all();
/// Before this process starts a program (exec, posix_spawn): every SMC
/// connection's socket is marked from now on, and those there already now.
void mark_for_exec();
/// Runs `f` (an offer that marks the socket itself) under the marks' lock,
/// the socket counted as marked.
void marked_by(entry* e, const std::function<void()>& f);
/// Around fork(): the marks' lock, taken first in the prepare handler and
/// released in parent and child.
void marks_lock();
void marks_unlock();
/// The message did not leave: withdraws those offers.
void withdraw_offers(const std::vector<uint64_t>& offers);

// ---- fd table ----
bool fd_maybe(int fd);                 // one atomic load: is anything recorded?
entry* fd_get(int fd);                 // +1 ref, or nullptr
void fd_put(entry* e);                 // -1 ref; frees at 0
entry* fd_install(int fd, entry* e);       // installs (consumes a ref); returns the old one
entry* fd_take(int fd);                // removes; the caller owns the returned ref
void fd_forget_if(int fd, entry* e);   // drops the slot if it still holds e
/// The fd is going away (close, dup2 target): run the last-close protocol if
/// it was the socket's last fd.
void fd_release(int fd);
/// A new fd number appeared from a call we do not track (stale slot cleanup).
void fd_fresh(int fd);
/// fd_release for every recorded fd in [first, last] (close_range).
void fd_release_range(unsigned first, unsigned last);
/// close(), close_range() and their syscall() forms: what we recorded for
/// the fds they close goes first (close_range's flags as it takes them).
void forget_closed(unsigned first, unsigned last, int flags);
/// f(fd, entry) for every recorded fd (each entry referenced during its call).
void fd_for_each(const std::function<void(int, entry*)>& f);
/// Atfork hooks for the table's locks.
void fd_table_lock_all();
void fd_table_unlock_all();

/// RAII reference from fd_get.
class entry_ref {
 public:
  explicit entry_ref(int fd) : e_(g_enabled && fd_maybe(fd) ? fd_get(fd) : nullptr) {}
  ~entry_ref() {
    if (e_ != nullptr) {
      fd_put(e_);
    }
  }
  entry_ref(const entry_ref&) = delete;
  entry_ref& operator=(const entry_ref&) = delete;
  entry* get() const { return e_; }
  entry* operator->() const { return e_; }
  explicit operator bool() const { return e_ != nullptr; }

 private:
  entry* e_;
};

// ---- decisions (socket_api.cpp) ----
/// Passive side: resolve an undecided/strip socket if its first bytes allow.
/// `may_block` (a blocking call on the socket itself): the handshake runs
/// here, bounded by its timeouts; otherwise it runs in the background and
/// the socket is state::deciding meanwhile. Returns the state afterwards.
state decide_passive(entry* e, int fd, bool may_block);
/// Active side: complete a non-blocking connect's handshake if the TCP
/// connection is up. Returns the state afterwards.
/// `seen`: the readiness (POLL* bits, which EPOLL* share) a poll or
/// epoll_wait just reported for the socket, or 0.
state finish_connect(entry* e, int fd, uint32_t seen);
/// What a poll or blocking wait sleeps on while the socket is
/// state::deciding (readable once decided); -1 if it is not deciding (any
/// more) or no eventfd could be made (then: poll again shortly).
int decided_wait_fd(entry* e);
/// Waits until a handshake under way (state::deciding or stepping) has
/// ended: 0, EAGAIN (deadline_ms, a CLOCK_MONOTONIC time in ms, passed; -1 =
/// none) or EINTR. A step is moved on here, on the caller's thread.
int await_decision(entry* e, int fd, int64_t deadline_ms);
/// The socket's last fd is closing: its deadline goes, and a handshake
/// between steps is abandoned (a same-host slot it held goes back).
void abandon_step(entry* e);
/// An accepted socket: if nobody touches it, its first bytes are looked at
/// for it, so that the client's handshake never waits for the server
/// application (Linux finishes SMC before accept() returns).
void watch_untouched(entry* e, int fd);
/// The socket is passed to another process (SCM_RIGHTS): its first bytes
/// are the receiver's to look at, never ours any more.
void leave_untouched(entry* e);
/// After fork(), in the parent: accepted sockets nobody touched may be the
/// child's to serve; neither process looks at them on its own any more.
void untouched_after_fork();
/// A corked send on an SMC socket held its peer's wake-up back: it is rung
/// 200 ms later at the latest (the socket's deadline).
void cork_deadline(entry* e, int fd);
/// In a forked child: the parent's handshakes under way are the parent's;
/// the child sees those sockets as plain TCP.
void forget_decisions_after_fork();
/// A call with recv/send `flags` on fd does not block (MSG_DONTWAIT, O_NONBLOCK).
bool nonblocking(int fd, int flags);
/// The socket's SO_RCVTIMEO or SO_SNDTIMEO (`name`) as a deadline from now
/// (CLOCK_MONOTONIC ms), or -1 if it has none.
int64_t timeout_deadline(int fd, int name);
/// Before a read: decide as far as needed. 0, or an errno (EAGAIN ...).
int prepare_read(entry* e, int fd, int flags);
/// Before a write on an undecided socket (server writes first).
void prepare_write(entry* e, int fd);
/// Before any data call on a recorded socket: settles its state as far as a
/// read (`write` false, with recv `flags`) or a write needs. Returns 0 with
/// `st` set (state::smc: serve the call from e->conn; anything else: the
/// kernel serves it, and a socket that is TCP for good leaves the table), or
/// an errno the call fails with (a read on a socket still deciding: EAGAIN,
/// EINTR).
int settle_io(entry* e, int fd, bool write, int flags, state& st);
/// Drive any pending decision without blocking (poll/epoll saw activity).
/// `seen` as for finish_connect.
state drive(entry* e, int fd, uint32_t seen = 0);
/// A handshake is under way: on a thread of ours, or between its steps.
inline bool in_handshake(state s) { return s == state::deciding || s == state::stepping; }
/// What a socket still deciding is in: undecided, strip, connecting, or a
/// handshake under way.
inline bool still_deciding(state s) {
  return s == state::undecided || s == state::strip || s == state::connecting ||
         in_handshake(s);
}
/// The process is confining itself: a socket still deciding settles now,
/// as far as what already arrived allows, and otherwise stays TCP (its
/// decision would need calls the process may no longer make).
void settle_before_confinement(entry* e, int fd);

// ---- epoll (epoll_api.cpp) ----
/// The socket changed state: move its epoll registrations accordingly.
void ep_state_changed(entry* e);
/// The socket's last fd is gone: drop its registrations. `released`: the
/// socket went with it (no copy of ours left), and with it the kernel's
/// watches of it.
void ep_forget_entry(entry* e, bool released = false);
/// An epoll instance's last fd is gone.
void ep_destroy_set(entry* e);
/// An epoll set whose kernel readiness another waiter reads (poll() on it):
/// from now on its readiness is kept true in the kernel (epoll_api.cpp).
void ep_expose(entry* epe);
/// The process is confining itself (it will make no new fds): the set
/// gets its wake fd, and a classic set's SMC registrations their levels,
/// now, so that its registrations are on their connections' lists.
void ep_confine(entry* epe);
/// epoll bookkeeping: an epoll fd was made; `fd` is being added to a set
/// (EPOLL_CTL_ADD); this process is a forked child.
void ep_note_created(int epfd);
void ep_note_added(int fd);
void ep_note_fork_child();
void ep_note_fork_parent();
void ep_lock();
void ep_unlock();

// ---- receive channels an event-loop wait serves itself (epoll, poll) ----
/// More link groups than this in one wait: it leaves them to the engine.
constexpr size_t max_direct = 8;

/// Busy-waits up to spin_us on the channels [first, last), as a blocked
/// call does before it sleeps (core::busy_wait): each round dispatches what
/// they received; look() (is anything ready now?) runs whenever a channel
/// brought something, and every 64 rounds for the rest. Returns whether
/// look() said yes.
template <class It, class Look>
bool spin_channels(It first, It last, uint32_t spin_us, Look&& look) {
  for (It c = first; c != last; ++c) {
    (*c)->spin(true);
  }
  int moved = 0;
  unsigned round = 0;
  const bool ready = core::busy_wait(
      spin_us,
      [&] {
        moved = 0;
        for (It c = first; c != last; ++c) {
          moved += (*c)->poll();
        }
        return true;
      },
      [&] {
        if (moved == 0 && (++round & 63) != 0) {
          return false;
        }
        return look();
      });
  for (It c = first; c != last; ++c) {
    (*c)->spin(false);
  }
  return ready;
}

/// Before sleeping: out[i] watches the i-th channel of [first, last) (fd
/// -1, ignored by poll, for one that has none now).
template <class It>
void begin_channels(It first, It last, pollfd* out) {
  for (It c = first; c != last; ++c) {
    *out++ = {(*c)->begin(), POLLIN, 0};
  }
}

/// After the sleep (poll's result rc): each channel begun is ended, and
/// dispatches what it brought. errno is kept.
template <class It>
void end_channels(It first, It last, const pollfd* in, int rc) {
  const int err = errno;
  for (It c = first; c != last; ++c, ++in) {
    if (in->fd >= 0) {
      (*c)->end(rc > 0 && in->revents != 0);
    }
  }
  errno = err;
}

// ---- helpers ----
/// Runs f() and returns its result with errno preserved on success and set
/// from `err` on failure; exceptions never cross into the application.
struct io_status {
  ssize_t n;
  int err;
};
ssize_t finish_io(io_status s, int saved_errno);
/// Writes SMC_STATS_FILE (at exit).
void write_stats_at_exit();

}  // namespace smc::preload
