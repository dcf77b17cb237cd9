// One interface for every transport: what the connection engine (core/conn)
// needs from the thing that moves bytes and cursors between the two RMBs.
//
// Vocabulary (RFC 7609): each side owns an RMB that the *peer* writes into.
// "prod" is the producer cursor (how far the writer has written into the
// reader's RMB), "cons" the consumer cursor (how far the reader has consumed).
// Cursors are packed (wrap << 32 | count), see core/cursor.h. Everything that
// comes from the peer is untrusted: the engine validates it before use.
//
// Doorbells: each side has two, fds that are readable while received data
// (or a close) may be pending (rx_fd), or while a blocked writer may continue
// (tx_fd). A side rings the peer's doorbell only when the peer has declared a
// waiter (arm), and each doorbell is written at most once until its owner
// drains it, so a busy connection makes no doorbell syscalls at all.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace smc::rdma {

enum class kind : uint8_t { shm, rdma };

/// A transport's receive queue that an event loop's wait may serve itself:
/// the same begin/end pair as data_path::begin_direct_wait, held apart from
/// any one connection (it keeps what it names alive). fd() identifies the
/// queue: connections that share it return equal fds.
class direct_channel {
 public:
  virtual ~direct_channel() = default;
  virtual int fd() const = 0;
  /// The fd to wait on (readable when there is news to dispatch), or -1;
  /// an fd returned is paired with end(readable).
  virtual int begin() = 0;
  virtual void end(bool readable) = 0;
  /// For a wait that busy-polls first: dispatch what arrived (returns how
  /// many messages), between spin(true) and spin(false) (data_path::spin).
  virtual int poll() = 0;
  virtual void spin(bool on) = 0;
  /// For a wait that sleeps without begin() (too many channels to watch):
  /// make sure the engine is notified of the next message.
  virtual void arm() = 0;
};

class data_path {
 public:
  virtual ~data_path() = default;
  data_path() = default;
  data_path(const data_path&) = delete;
  data_path& operator=(const data_path&) = delete;

  virtual kind transport() const = 0;

  // ---- receive side: our RMB, written by the peer ----
  virtual uint32_t rx_size() const = 0;
  virtual const uint8_t* rx_data() const = 0;
  /// The peer's producer cursor into our RMB and its connection-state flags
  /// (cdc::conn_* bits). Acquire semantics: data before the cursor is visible.
  virtual uint64_t peer_prod() const = 0;
  virtual uint8_t peer_conn_flags() const = 0;
  /// Publish our consumer cursor (release), and ring the peer's tx doorbell if
  /// the peer waits for space.
  virtual void publish_cons(uint64_t cons) = 0;

  // ---- send side: the peer's RMB, written by us ----
  virtual uint32_t tx_size() const = 0;
  /// The peer's consumer cursor of its RMB (how much of what we wrote it read).
  virtual uint64_t peer_cons() const = 0;
  /// Copy n bytes to offset `off` of the peer's RMB (off + n <= tx_size()).
  virtual void put(uint32_t off, const void* src, size_t n) = 0;
  /// Publish our producer cursor and our connection-state flags (release), and
  /// ring the peer's rx doorbell if the peer waits for data.
  virtual void publish_prod(uint64_t prod, uint8_t conn_flags) = 0;
  /// The same without waking the peer: the application holds more back
  /// (TCP_CORK, MSG_MORE) and ring_rx_now() follows. A transport whose
  /// publish is itself the notification (SMC-R's CDC message) publishes.
  virtual void publish_prod_quiet(uint64_t prod, uint8_t conn_flags) {
    publish_prod(prod, conn_flags);
  }
  /// Rings the peer's rx doorbell if the peer waits for data (what quiet
  /// publishes held back).
  virtual void ring_rx_now() {}

  // ---- waiting ----
  virtual int rx_fd() const = 0;
  virtual int tx_fd() const = 0;
  /// Non-zero while rx_fd() and tx_fd() are doorbells that outlive this
  /// path and may serve later connections with the same peer (a same-host
  /// link's slot): equal values, the same open files under the same
  /// numbers. An epoll set may then keep its watches of them for the next
  /// connection. 0: they close with the path, or the connection was passed
  /// to another process, which holds them too. (A forked child inherits
  /// them whatever this says.)
  virtual uint64_t bells_id() const { return 0; }
  /// Declare (+1) or withdraw (-1) a waiter for data / for space. After arming,
  /// the caller must re-check the condition before sleeping (Dekker order).
  virtual void arm_rx(int delta) = 0;
  virtual void arm_tx(int delta) = 0;
  /// How many waiters are declared now (this side, every process sharing it).
  virtual uint32_t rx_waiters() const = 0;
  virtual uint32_t tx_waiters() const = 0;
  /// Reset a doorbell that was rung; the caller re-checks its condition after.
  /// False when the peer rang it far more than the protocol lets it (a
  /// peer that floods it): the caller ends the connection.
  virtual bool drain_rx() = 0;
  virtual bool drain_tx() = 0;
  /// For a waiter that learns readiness from the connection's state and
  /// only needs the next ring to wake it (an edge-triggered watch of the
  /// doorbell): lets the peer ring again without emptying the doorbell,
  /// which is drained only every so often. Returns 0 (not drained), 1
  /// (drained: an edge other watchers had pending is gone), -1 (drained,
  /// and flooded: as drain_rx() returning false). The doorbell stays
  /// readable meanwhile: level watchers must drain instead.
  virtual int rearm_rx() { return drain_rx() ? 1 : -1; }
  virtual int rearm_tx() { return drain_tx() ? 1 : -1; }
  /// Counted drains, for a transport whose doorbells can say how many
  /// rings they hold (counts_rings()): rearm_rx/rearm_tx return 2 instead
  /// of draining themselves when a drain is due, and the caller drains
  /// with these (core::conn's counted drain): lower the rung flag, count
  /// what is queued (-1: cannot), look at the state, and take the oldest
  /// `n` rings (false: the peer rang far more than the protocol lets it).
  virtual bool counts_rings() const { return false; }
  virtual void unrung_rx() {}
  virtual void unrung_tx() {}
  virtual int queued_rx() { return -1; }
  virtual int queued_tx() { return -1; }
  virtual bool take_rx(int /*n*/) { return drain_rx(); }
  virtual bool take_tx(int /*n*/) { return drain_tx(); }
  /// Make our own doorbell readable once for the waiters that are not on
  /// the connection's list (core/wake.h): a local change they must see,
  /// e.g. a ring a drain took from them. A transport whose doorbells only
  /// the peer rings (shm) does nothing: there, such waiters are in another
  /// process (which no drain of ours robs: drains are counted) or look by
  /// themselves every so often (a confined process's).
  virtual void kick_rx() = 0;
  virtual void kick_tx() = 0;
  /// The direction ended for good (an abort, a shutdown, the peer gone):
  /// our doorbell readable from now on, for waiters that are not listed
  /// (another process's, which may watch it edge-triggered).
  virtual void end_rx() { kick_rx(); }
  virtual void end_tx() { kick_tx(); }
  /// Our doorbell's other end is closed: every holder of it in the peer's
  /// processes let it go (the peer is gone, or threw it away). Asked only
  /// after a drain found no ring where one was due.
  virtual bool bell_hung_up(bool /*rx*/) { return false; }

  /// Called while a reader or writer busy-waits: a transport whose peer's
  /// messages need dispatching (SMC-R's receive queue) does it right here
  /// instead of waiting for another thread to. True if it looked at a
  /// device queue: that look paces a busy-wait by itself.
  virtual bool poll_progress() { return false; }
  /// Around such a busy-wait: while a thread polls by itself, a transport
  /// may stop waking its own thread for what arrives (spin(true)). After
  /// spin(false) it may stay quiet a little longer (the spinner most likely
  /// comes back), but never toward a thread waiting on a doorbell (arm_rx,
  /// arm_tx): that one is woken for what arrives, including what arrived
  /// while nobody was woken. A non-blocking call that finds nothing calls
  /// poll_progress() once itself.
  virtual void spin(bool /*on*/) {}
  /// A blocked reader or writer about to sleep on its doorbell may also wait
  /// on the returned fd (-1: none): readable when the transport has news to
  /// dispatch, which the waiting thread then does itself instead of another
  /// thread dispatching and ringing the doorbell. A call that returned an fd
  /// is paired with end_direct_wait(readable) once the wait is over.
  virtual int begin_direct_wait() { return -1; }
  virtual void end_direct_wait(bool /*readable*/) {}
  /// The same for a wait that is not this connection's own (an epoll set
  /// holding it): null when the transport has no such queue.
  virtual std::shared_ptr<direct_channel> channel() { return nullptr; }

  // ---- ordering against the TCP socket ----
  /// After publishing our close: returns once the peer has our closing
  /// state (so the TCP close that follows cannot overtake it).
  virtual void settle_close() {}
  /// Before judging the TCP socket's end: take in everything the peer sent
  /// us on the transport up to now.
  virtual void sync_rx() {}

  /// The process confined itself (core::conn::confine): from now on the
  /// transport makes no system call but read, write and a one-fd poll.
  virtual void confine() {}

  // ---- the connection's own state, shared by the processes holding it ----
  /// Memory for core::conn_shared that every process holding this
  /// connection maps (a forked child, a process the socket was passed to),
  /// and the peer never does; nullptr when the transport has none (its
  /// connections stay in their process: SMC-R's QP is the process's).
  virtual void* shared_state() { return nullptr; }
  virtual size_t shared_state_size() const { return 0; }
  /// The fds another process needs to map this connection (core/handoff):
  /// appended to `out`, with the ring sizes; false if it cannot move.
  virtual bool export_fds(std::vector<int>& /*out*/, uint32_t& /*rx_size*/,
                          uint32_t& /*tx_size*/) const {
    return false;
  }
};

}  // namespace smc::rdma
