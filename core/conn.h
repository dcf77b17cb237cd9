// One SMC connection after the handshake: the byte stream served from the two
// RMB rings of an rdma::data_path, with RFC 7609 cursor semantics, flow
// control, the close protocol and readiness. The application's fd is still
// the kernel TCP socket (`tcp_fd`): it stays open, idle, as the liveness
// signal (a peer process that dies closes it) and for getsockname & co.
//
// The connection's own state (cursors, flags, locks) lives in a conn_shared
// that every process holding the connection maps (data_path::shared_state):
// a forked child, or a process the socket was passed to with SCM_RIGHTS,
// reads and writes the same connection, as with a kernel socket.
//
// Threading: one reader and one writer may run at once, in any threads of
// any processes that hold the connection (rx and tx are locked separately,
// with process-shared robust mutexes, released while a call sleeps);
// readiness queries take no lock.
#pragma once

#include <pthread.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>

#include "core/cursor.h"
#include "core/wake.h"
#include "rdma/transport.h"

namespace smc::core {

/// Readiness bits, POLL* values (POLLIN, POLLOUT, POLLRDHUP, POLLHUP, POLLERR).
using poll_mask = uint32_t;

struct io_result {
  ssize_t n;  // bytes, or -1
  int err;    // errno when n < 0
};

/// This process's id (kept across fork by note_fork_child(), without a
/// system call per use).
int self_pid();
/// Around fork(): conn_registry_lock() before it (the parent's atfork
/// prepare handler), conn_registry_unlock() after it in the parent, and
/// note_fork_child() in the child, which then holds every connection whose
/// state it shares with the parent (conn_shared::holders).
void conn_registry_lock();
void conn_registry_unlock();
void note_fork_child();
class conn;
/// Runs f on every connection of this process (under the registry's lock:
/// f must not create or destroy connections).
void for_each_conn(const std::function<void(conn&)>& f);

/// Whether a blocking send/recv that a signal handler interrupted carries
/// on, as the kernel restarts a socket call for an SA_RESTART handler when
/// no SO_RCVTIMEO/SO_SNDTIMEO is set. The engine cannot tell which signal
/// interrupted its wait, so the preload, which sees every handler installed,
/// keeps this true while no handler lacks SA_RESTART (then only such a
/// handler can have run). Default: true.
void set_signals_restart(bool yes);
bool signals_restart();

/// The path of a connection whose buffers stayed in another program image
/// (an SMC connection inherited across exec()): it reads as reset, with both
/// doorbells readable, and tells the peer nothing. nullptr if out of fds.
std::unique_ptr<rdma::data_path> make_foreign_path();

/// A mutex in memory that several processes may map (PTHREAD_PROCESS_SHARED)
/// and that outlives a holder's death (PTHREAD_MUTEX_ROBUST: the next locker
/// takes it over). BasicLockable, for std::unique_lock.
class robust_mutex {
 public:
  /// On fresh memory, once, before any process uses it.
  void init();
  void lock();
  void unlock();

 private:
  pthread_mutex_t m_;
};

/// The state of a connection that every process holding it shares (never
/// the peer: nothing in here is the peer's to write). Plain memory, placed by
/// the connection that creates it and attached to by the ones that take it
/// over.
struct conn_shared {
  static constexpr uint64_t magic_value = 0x534d432d434f4e31ULL;  // "SMC-CON1"
  uint64_t magic;
  uint32_t version;
  /// Processes that hold the connection: its creator, each forked child
  /// that inherited it, each process it was passed to. The last one to
  /// close it tells the peer. A process that ends without closing (exit,
  /// kill) is never subtracted: then the peer learns of the end from the TCP
  /// connection's, which it reads as EOF, as after a close.
  std::atomic<uint32_t> holders;
  robust_mutex rx_mu;
  robust_mutex tx_mu;
  std::atomic<uint64_t> rx_cons;   // our consumer cursor (packed)
  std::atomic<uint64_t> rx_prod;   // last validated peer producer cursor
  std::atomic<uint64_t> tx_prod;   // our producer cursor into the peer RMB
  std::atomic<uint64_t> tx_cons;   // last validated peer consumer cursor
  std::atomic<uint8_t> my_flags;   // cdc::conn_* flags we published
  std::atomic<bool> shut_rd;
  std::atomic<bool> gone;          // peer's TCP closed
  std::atomic<bool> tcp_half;      // that FIN is the peer's SHUT_WR, not its end
  std::atomic<bool> gone_reset;
  std::atomic<int64_t> fin_ms;     // when the peer's TCP FIN was seen (0: not yet)
  std::atomic<int> err;            // sticky error (ECONNRESET, ...)
  std::atomic<int> so_error;       // reported once through SO_ERROR
  std::atomic<uint32_t> notsent_lowat;  // the application's TCP_NOTSENT_LOWAT
  std::atomic<uint32_t> notsent_lowat_set;  // 0: it never set one (the system default)
  std::atomic<uint32_t> rcvlowat;       // the application's SO_RCVLOWAT (0, 1: none)
  robust_mutex bell_mu;  // one counted drain of the doorbells at a time (conn::counted_drain)
};

class conn {
 public:
  /// A new connection (the handshake's outcome): its shared state starts
  /// here, held by this process alone.
  conn(std::unique_ptr<rdma::data_path> path, int tcp_fd, uint32_t spin_us);
  /// A connection another process made and holds (an SCM_RIGHTS handoff):
  /// `path` maps the same buffers and the same shared state, which this
  /// process joins as a holder if `join` (else the holder it takes over was
  /// counted already). Check valid() after.
  struct attach_t {};
  conn(attach_t, std::unique_ptr<rdma::data_path> path, int tcp_fd, uint32_t spin_us, bool join);
  /// False when an attached state is not a connection's (never for new ones).
  bool valid() const { return sh_ != nullptr; }
  ~conn();
  conn(const conn&) = delete;
  conn& operator=(const conn&) = delete;

  /// recv semantics: MSG_PEEK, MSG_WAITALL, MSG_DONTWAIT honoured; blocking
  /// follows O_NONBLOCK and SO_RCVTIMEO of the TCP socket.
  io_result recv(const iovec* iov, int iovcnt, int flags);
  /// send semantics: MSG_DONTWAIT, MSG_NOSIGNAL honoured; blocking follows
  /// O_NONBLOCK and SO_SNDTIMEO; EPIPE (+SIGPIPE) after shutdown or peer close.
  io_result send(const iovec* iov, int iovcnt, int flags);
  /// TCP_CORK as this process's application set it on the socket (or
  /// MSG_MORE on one send): while corked, sends publish their data without
  /// waking a peer that sleeps, as long as less than a quarter of the
  /// peer's ring waits (TCP holds back only a partial segment); the
  /// wake-up is owed until uncorking, a send
  /// that is not corked, a wait of this connection's own, close, or the
  /// caller's 200 ms bound (flush_cork()), as TCP holds a partial segment
  /// back. nginx writes a response's header and body corked: the peer then
  /// wakes once for both.
  void set_cork(bool on);
  bool corked() const { return corked_.load(std::memory_order_relaxed); }
  /// Rings what a corked send held back (nothing if nothing is owed).
  void flush_cork();
  /// A corked send held a wake-up back.
  bool cork_owed() const { return cork_owed_.load(std::memory_order_relaxed); }
  /// SHUT_RD / SHUT_WR / SHUT_RDWR. SHUT_WR tells the peer "done writing":
  /// it reads EOF after all data.
  int shutdown(int how);
  /// This process's last fd of the connection is gone. If no other process
  /// holds it: orderly close (peer reads EOF after all data), or abortive
  /// (peer gets ECONNRESET) if we leave unread data or `abort` is set
  /// (SO_LINGER 0). Otherwise the connection stays theirs, untouched.
  void close(bool abort);
  /// A holder other than this process's fds went away (an SCM_RIGHTS offer
  /// that nobody took): as close(false) for that holder.
  void release_holder() { close(false); }
  /// One more holder (an offer to another process, see core/handoff).
  void add_holder();
  /// Ends the connection as a reset: the peer and every holder read
  /// ECONNRESET (what cannot be carried on must not be read as if it were).
  void reset_connection() { abort_locally(ECONNRESET); }
  /// The process restricts itself (it installs a seccomp filter, or
  /// lowers RLIMIT_NOFILE below what our waits need): from now on the
  /// connection makes no system call but read/write on its doorbells and
  /// its wake fd, and a poll on one fd. Called before the restriction is in
  /// place: it takes the socket's blocking mode and timeouts now (kept
  /// current after by note_nonblock/note_timeout from the application's own
  /// calls) and makes the waiter, one epoll fd that is readable when either
  /// doorbell rings or the TCP socket stirs, or its own wake_fd is woken (a
  /// blocked call waits listed with it). Returns whether the waiter exists
  /// (without one a wait polls the doorbell and looks at the TCP socket
  /// every 100 ms).
  bool confine();
  bool confined() const { return confined_.load(std::memory_order_relaxed); }
  /// The waiter (-1: none): the one fd a confined poll() watches for this
  /// connection.
  int waiter_fd() const { return waiter_; }
  /// The wake fd in the waiter (nullptr: none): what a confined wait that
  /// polls the waiter is listed with (set_waiter).
  wake_fd* confined_wake() const { return confined_wake_.get(); }
  void note_nonblock(bool on);
  void note_timeout(bool rx, int ms);
  /// In a forked child (note_fork_child): the child holds what it shares.
  void note_forked();

  /// The application's TCP_NOTSENT_LOWAT (the socket carries our mark).
  /// The application's TCP_NOTSENT_LOWAT while our mark holds the socket's:
  /// false when it never set one (then the system default applies).
  bool app_notsent_lowat(uint32_t& v) const {
    v = sh_->notsent_lowat.load();
    return sh_->notsent_lowat_set.load() != 0;
  }
  void set_app_notsent_lowat(uint32_t v) {
    sh_->notsent_lowat.store(v);
    sh_->notsent_lowat_set.store(1);
  }
  /// SO_RCVLOWAT: readable (poll) once that many bytes are there; a blocking
  /// recv waits for that many (at most what it asks for).
  void set_rcvlowat(uint32_t v) { sh_->rcvlowat.store(v); }

  /// Current readiness (no waiting, no arming).
  poll_mask events();
  /// A value that changes whenever the peer moves its producer cursor
  /// (`rx`: data came) or its consumer cursor (`tx`: space came), or its
  /// flags, or this side its own error or shutdown state: a watcher that
  /// saw it before knows whether an edge is due (edge-triggered epoll from
  /// memory). The kernel's edges are per direction too: room freed by the
  /// peer's reading is no edge for a registration that waits for input.
  uint64_t activity(bool rx, bool tx) const {
    return (rx ? path_->peer_prod() : 0) + (tx ? 3 * path_->peer_cons() : 0) +
           (uint64_t{path_->peer_conn_flags()} << 56) +
           (static_cast<uint64_t>(sh_->err.load(std::memory_order_relaxed)) << 40) +
           (uint64_t{sh_->shut_rd.load(std::memory_order_relaxed)} << 62) +
           (uint64_t{sh_->gone.load(std::memory_order_relaxed)} << 63) +
           (uint64_t{sh_->my_flags.load(std::memory_order_relaxed)} << 48);
  }
  /// Bytes readable now (FIONREAD).
  uint32_t readable_bytes();
  /// Bytes written but not yet consumed by the peer (SIOCOUTQ).
  uint32_t unsent_bytes();
  /// Pending error for SO_ERROR (cleared by reading), 0 if none. A reset
  /// is reported once, by SO_ERROR, recv or send, whichever comes first;
  /// afterwards reads see EOF and writes EPIPE, as on a TCP socket.
  int take_error();
  /// Resets a doorbell (`rx`: data, else space) that fired, and returns the
  /// current readiness. Over shm (but in a confined process) the drain is
  /// counted (counted_drain): it takes only the rings it counted, and
  /// leaves one while what the doorbell signals holds. Elsewhere it empties
  /// the doorbell, and if what it signals holds after the reset (the peer
  /// moved between a caller's check and the reset, and saw the doorbell
  /// still rung), rings it again: a doorbell is readable whenever its
  /// condition holds, which level-triggered watchers (in this or another
  /// set, or another thread's poll) rely on. `edge`: the caller is an
  /// edge-triggered registration that reports the state itself; ring again
  /// only if someone else waits on the doorbell too.
  poll_mask reset_doorbell(bool rx, bool edge = false, const waiter* self = nullptr);
  /// Resets a doorbell the caller does not wait on (a confined wait polls
  /// both through one waiter): rung again only if what it signals holds
  /// and someone declared a waiter for it.
  void quiet_doorbell(bool rx);
  /// A doorbell whose ring an edge-triggered watch delivered: lets the peer
  /// ring it again (data_path::rearm_rx), without a system call most times.
  /// The caller looks at the state afterwards. `armed`: the caller counts
  /// among the doorbell's declared waiters; `self`: its waiter, if it is on
  /// the connection's list. When the doorbell had to be drained and others
  /// wait on it too (another epoll set, a poll, a blocked call, another
  /// process), they are woken if what it signals holds, so that the edge
  /// they had pending is not lost to them: this process's listed waiters
  /// through their wake_fds, any others by ringing the doorbell again
  /// where the transport can (data_path::kick_rx; over shm the drain is
  /// counted and takes nothing they need).
  void rearm_doorbell(bool rx, bool armed, const waiter* self = nullptr);
  /// A watcher in this process that needs the doorbells' levels true (a
  /// level-triggered watch of them that others read: a nested epoll set)
  /// comes (+1) or goes (-1); while there is one, rearm_doorbell drains.
  void watch_level(int delta) { level_watchers_.fetch_add(delta, std::memory_order_relaxed); }

  /// This process's sleepers on the connection (core/wake.h). `w` (its
  /// wake_fd set) is listed for the directions `dirs` it declared waiters
  /// for, or taken off the list when `dirs` is 0. List it before arming
  /// and take directions off after disarming: the connection rings its
  /// doorbells only for declared waiters beyond the listed ones.
  void set_waiter(waiter* w, uint32_t dirs);
  /// Own state changes that end those directions for good (abort,
  /// shutdown, the peer gone, a write that found the peer closed): wakes
  /// their listed waiters, and makes the doorbells readable for good for
  /// any others (data_path::end_rx).
  void kick(bool rx, bool tx);

  // ---- waiting, for poll/select/epoll ----
  /// Puts this connection's doorbells and TCP socket into a thread's wait
  /// set (edge-triggered, core/wake.h), with the thread's wake fd `wake`;
  /// false if it cannot (the caller waits another way).
  bool watch_on(wait_set& ws, int wake);
  /// The same as one of several connections (a poll() call's round): the
  /// entry of the set that watches it (wait_set::watch_any), -1 if none.
  int watch_among(wait_set& ws, bool& again);
  rdma::data_path& path() { return *path_; }
  int tcp_fd() const { return tcp_fd_; }
  /// Checks the TCP socket without blocking: EOF/RST without the peer's SMC
  /// close flags means the peer is gone, data means a protocol violation.
  /// Returns true if the state changed.
  bool check_tcp();
  /// True once the TCP socket need not be watched any longer: the peer is
  /// known gone, the connection aborted, or the peer's TCP FIN came with its
  /// SMC SHUT_WR (Linux's SMC shuts its TCP socket down along with the SMC one).
  bool finished() const {
    return sh_->gone.load(std::memory_order_acquire) || sh_->err.load() != 0 ||
           sh_->tcp_half.load();
  }
  /// The direction (`rx`: reading, else writing) ended for good: an end
  /// that may have shut its doorbell for reading (data_path::end_rx), in
  /// this process or another holding the connection, which then stays
  /// readable. A level-triggered watch of that doorbell for the other
  /// direction's sake would wake at once, every time.
  bool ended(bool rx) const;

 private:
  // Validated view of the peer's cursors; on a violation the connection
  // aborts. `owner`: the caller holds the rx (tx) lock and records the cursor
  // it validated; anyone else only looks (rx_look/tx_look).
  bool rx_available(uint32_t& avail, bool owner);
  bool tx_space(uint32_t& space, bool owner);
  bool rx_look(uint32_t& avail);
  bool tx_look(uint32_t& space);
  /// Records `e` as the pending error unless one is there already.
  void note_error(int e);
  /// Reports the pending error once (then err is EPIPE: taken) and clears
  /// so_error; {0, 0} if none is pending.
  io_result report_error();
  void abort_locally(int err);
  // Drains a doorbell; a peer that flooded it loses the connection.
  void drain_doorbell(bool rx);
  // A drain that takes only rings whose news is looked at, and leaves one
  // if what the doorbell announces holds: no waiter anywhere loses a
  // wake-up to it, so no ring is ever put back. `ev` gets the state after.
  // False if the transport cannot count its rings (nothing was done), or
  // `fired` (a waiter woke on the doorbell) and none was counted: a ring
  // that is not one byte (a peer's stray message) is drained whole then.
  bool counted_drain(bool rx, bool fired, poll_mask& ev);
  // A drain, counted where the transport can count, else whole and then
  // ring_if_due(rx, state, above, self) for the waiters it may have taken
  // a ring from; the readiness after. `fired`: as counted_drain's.
  poll_mask settle_doorbell(bool rx, bool fired, int above, const waiter* self);
  void flooded(bool rx);
  /// Rings our own doorbell (`rx`, else the tx one) if what it signals
  /// holds in `ev` and more than `above` waiters are declared on it.
  void ring_if_due(bool rx, poll_mask ev, int above, const waiter* self = nullptr);
  /// Wakes the listed waiters of `dirs` (but `except`).
  void wake_listed(uint32_t dirs, const waiter* except);
  /// Clears the levels of listed waiters (waiter::level) none of whose
  /// directions is ready now: after a read or a write, so that a set whose
  /// readiness others read follows the reads, as a kernel socket's does.
  void drop_false_levels();
  /// Rings our own doorbell (`rx`, else the tx one) if more than `above`
  /// of its declared waiters are not on the list (another process's, a
  /// confined process's poll() or classic set's, a confined call that polls
  /// the doorbell alone): data_path::kick_rx, or with `end` (the direction
  /// ended for good) data_path::end_rx.
  void ring_for_unlisted(bool rx, int above, bool end = false);
  int block_timeout_ms(bool rx, int flags);
  // Before a blocking wait: whether check_tcp() is worth its system call.
  bool tcp_needs_look();
  // Busy-wait up to spin_us_ for the peer's producer cursor or flags (rx) or
  // its consumer cursor (tx) to move; true if it did.
  bool spin_rx(uint8_t pf);
  bool spin_tx();
  uint32_t spin_budget_us() const;
  // Sleeps until the doorbell (`rx`: data, else space) or the TCP socket
  // fires, or timeout. Returns 0, or an errno (EAGAIN on timeout, EINTR).
  // `need`: for a reader, how many readable bytes end the wait.
  int wait(bool rx, int timeout_ms, uint32_t need = 1);
  bool peer_done() { return (path_->peer_conn_flags() & 0xE0) != 0; }

  void init_shared(bool fresh, bool join);
  // What names this connection's doorbells in a wait_set.
  uint64_t bells_name() const;
  // The peer is gone without (all of) its SMC close: EOF, or a reset when
  // `reset`, its close was abnormal (`pf`: its flags, read after
  // data_path::sync_rx), or it left data of ours unread.
  void peer_gone(bool reset, uint8_t pf);
  template <class Ready>
  int wait_poll(bool rx, int timeout_ms, Ready& ready, waiter* self);
  template <class Ready>
  int wait_confined(bool rx, int timeout_ms, Ready& ready, waiter& self);
  // On the thread's wait_set (core/wake.h), edge-triggered.
  template <class Ready>
  int wait_edge(bool rx, int timeout_ms, Ready& ready, waiter& self, wait_set& ws);
  // What the TCP socket holds, without consuming it: -2 nothing (yet), -1
  // an error, 0 end of stream, 1 data.
  ssize_t peek_tcp();

  std::unique_ptr<rdma::data_path> path_;
  int tcp_fd_;
  uint64_t serial_ = 0;  // this process's number for it (a thread's wait_set keeps its watches by it)
  uint32_t spin_us_;
  std::unique_ptr<conn_shared> own_;  // the state, when the transport keeps none
  conn_shared* sh_ = nullptr;
  // Whether the socket was blocking when last asked (block_timeout_ms): a
  // hint for spinning before asking again, never the answer itself.
  std::atomic<bool> blocking_hint_{false};
  std::atomic<bool> corked_{false};     // TCP_CORK (this process's view)
  std::atomic<bool> cork_owed_{false};  // a corked send did not ring
  uint32_t held_ = 0;  // bytes published since the last ring, corked (under tx_mu)
  // The TCP socket showed something (readable, hung up, error) to a wait's
  // poll since check_tcp() last looked; true at first. (Per process: a hint.)
  std::atomic<bool> tcp_stirred_{true};
  std::atomic<int> level_watchers_{0};
  // This process's sleepers (set_waiter), and how many of them declared
  // each direction.
  std::mutex wmu_;
  waiter* waiters_ = nullptr;
  std::atomic<int> listed_rx_{0};
  std::atomic<int> listed_tx_{0};
  std::atomic<int> listed_levels_{0};  // listed waiters that are levels
  // Confined (see confine()): what the socket's blocking mode and timeouts
  // are, as this process last knew them, and the waiter.
  std::atomic<bool> confined_{false};
  std::atomic<bool> c_nonblock_{false};
  std::atomic<int> c_rcvtimeo_{-1};
  std::atomic<int> c_sndtimeo_{-1};
  int waiter_ = -1;
  // In the waiter too: what a confined wait is listed with (set_waiter),
  // made with it, since a confined process makes no new fds.
  std::unique_ptr<wake_fd> confined_wake_;
};

}  // namespace smc::core
