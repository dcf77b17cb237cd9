// One SMC connection after the handshake: the byte stream served from the two
// RMB rings of an rdma::data_path, with RFC 7609 cursor semantics, flow
// control, the close protocol and readiness. The application's fd is still
// the kernel TCP socket (`tcp_fd`): it stays open, idle, as the liveness
// signal (a peer process that dies closes it) and for getsockname & co.
//
// Threading: one reader and one writer may run at once (rx and tx are locked
// separately); readiness queries take no lock.
#pragma once

#include <sys/types.h>
#include <sys/uio.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>

#include "core/cursor.h"
#include "rdma/transport.h"

namespace smc::core {

/// Readiness bits, POLL* values (POLLIN, POLLOUT, POLLRDHUP, POLLHUP, POLLERR).
using poll_mask = uint32_t;

struct io_result {
  ssize_t n;  // bytes, or -1
  int err;    // errno when n < 0
};

/// This process's id, as the connections record their users (kept across
/// fork by note_fork_child(), without a system call per use).
int self_pid();
/// From a forked child's atfork handler.
void note_fork_child();

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

class conn {
 public:
  conn(std::unique_ptr<rdma::data_path> path, int tcp_fd, uint32_t spin_us);
  ~conn();
  conn(const conn&) = delete;
  conn& operator=(const conn&) = delete;

  /// recv semantics: MSG_PEEK, MSG_WAITALL, MSG_DONTWAIT honoured; blocking
  /// follows O_NONBLOCK and SO_RCVTIMEO of the TCP socket.
  io_result recv(const iovec* iov, int iovcnt, int flags);
  /// send semantics: MSG_DONTWAIT, MSG_NOSIGNAL honoured; blocking follows
  /// O_NONBLOCK and SO_SNDTIMEO; EPIPE (+SIGPIPE) after shutdown or peer close.
  io_result send(const iovec* iov, int iovcnt, int flags);
  /// SHUT_RD / SHUT_WR / SHUT_RDWR. SHUT_WR tells the peer "done writing":
  /// it reads EOF after all data.
  int shutdown(int how);
  /// The last fd of the connection is gone: orderly close (peer reads EOF after
  /// all data), or abortive (peer gets ECONNRESET) if we leave unread data or
  /// `abort` is set (SO_LINGER 0).
  void close(bool abort);

  /// Current readiness (no waiting, no arming).
  poll_mask events();
  /// Bytes readable now (FIONREAD).
  uint32_t readable_bytes();
  /// Bytes written but not yet consumed by the peer (SIOCOUTQ).
  uint32_t unsent_bytes();
  /// Pending error for SO_ERROR (cleared by reading), 0 if none.
  int take_error();
  /// Resets a doorbell (`rx`: data, else space) that fired, and returns the
  /// current readiness. If what the doorbell signals holds after the reset
  /// (the peer moved between a caller's check and the reset, and saw the
  /// doorbell still rung), rings it again: a doorbell is readable whenever
  /// its condition holds, which level-triggered epoll registrations (in this
  /// or another set, or another thread's poll) rely on. `edge`: the caller
  /// is an edge-triggered registration that reports the state itself; ring
  /// again only if someone else waits on the doorbell too.
  poll_mask reset_doorbell(bool rx, bool edge = false);

  // ---- waiting, for poll/select/epoll ----
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
    return gone_.load(std::memory_order_acquire) || err_.load() != 0 || tcp_half_.load();
  }

 private:
  // Validated view of the peer's cursors; on a violation the connection
  // aborts. `owner`: the caller holds rx_mu_ (tx_mu_) and records the cursor
  // it validated; anyone else only looks (rx_look/tx_look).
  bool rx_available(uint32_t& avail, bool owner);
  bool tx_space(uint32_t& space, bool owner);
  bool rx_look(uint32_t& avail);
  bool tx_look(uint32_t& space);
  void abort_locally(int err);
  int block_timeout_ms(bool rx, int flags);
  // Before a blocking wait: whether check_tcp() is worth its system call.
  bool tcp_needs_look();
  // Busy-wait up to spin_us_ for the peer's producer cursor or flags (rx) or
  // its consumer cursor (tx) to move; true if it did.
  bool spin_rx(uint8_t pf);
  bool spin_tx();
  // Sleeps until the doorbell (`rx`: data, else space) or the TCP socket
  // fires, or timeout. Returns 0, or an errno (EAGAIN on timeout, EINTR).
  // `need`: for a reader, how many readable bytes end the wait.
  int wait(bool rx, int timeout_ms, uint32_t need = 1);
  bool peer_done() { return (path_->peer_conn_flags() & 0xE0) != 0; }

  std::unique_ptr<rdma::data_path> path_;
  int tcp_fd_;
  uint32_t spin_us_;
  // Whether the socket was blocking when last asked (block_timeout_ms): a
  // hint for spinning before asking again, never the answer itself.
  std::atomic<bool> blocking_hint_{false};
  std::mutex rx_mu_;
  std::mutex tx_mu_;
  std::atomic<uint64_t> rx_cons_{0};   // our consumer cursor (packed)
  std::atomic<uint64_t> rx_prod_{0};   // last validated peer producer cursor
  std::atomic<uint64_t> tx_prod_{0};   // our producer cursor into the peer RMB
  std::atomic<uint64_t> tx_cons_{0};   // last validated peer consumer cursor
  std::atomic<uint8_t> my_flags_{0};   // cdc::conn_* flags we published
  std::atomic<bool> shut_rd_{false};
  std::atomic<bool> gone_{false};      // peer's TCP closed
  std::atomic<int64_t> fin_ms_{0};     // when the peer's TCP FIN was seen (0: not yet)
  // The TCP socket showed something (readable, hung up, error) to a wait's
  // poll since check_tcp() last looked; true at first.
  std::atomic<bool> tcp_stirred_{true};
  std::atomic<bool> tcp_half_{false};  // that FIN is the peer's SHUT_WR, not its end
  std::atomic<bool> gone_reset_{false};
  std::atomic<int> err_{0};            // sticky error (ECONNRESET, ...)
  std::atomic<int> so_error_{0};       // reported once through SO_ERROR
};

}  // namespace smc::core
