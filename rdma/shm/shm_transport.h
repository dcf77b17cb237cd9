// The shm transport: same-host SMC in the style of the kernel's loopback ISM
// device. Each side's RMB is a sealed memfd (a 4 KiB control page followed by
// the ring); the two memfds and the doorbells' ringing ends are exchanged
// over an abstract unix socket whose use is authorised by per-connection
// nonces that travelled inside the TCP connection. Nothing is ever named in
// /dev/shm.
//
// A doorbell is a SOCK_SEQPACKET socketpair: its owner waits on one end
// (readable while it is rung) and hands the other, the ringing end, to the
// peer, keeping no copy: only the peer rings it (the owner's own waiters
// are woken through their wake fds, core/wake.h; when a direction ends for
// good the owner shuts its end for reading). Every ring and every drain names
// MSG_DONTWAIT, so a file description the peer shares cannot make us block
// whatever flags it sets on it, and a full queue means only that the bell
// rings already. (Eventfds, shared the same way, let a peer clear
// O_NONBLOCK and saturate the counter: our next write blocked for ever.)
// A third memfd per side, never given to the peer, holds the connection's
// own state (core::conn_shared), which forked children and processes the
// socket is passed to map as well (core/handoff).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "rdma/transport.h"

namespace smc::rdma::shm {

/// Control page at offset 0 of every RMB memfd. The owner reads the ring; the
/// peer writes it. Fields written by the peer are untrusted by the owner.
struct control {
  uint64_t magic;                           // owner, at creation
  uint32_t version;
  uint32_t size;                            // ring bytes
  alignas(64) std::atomic<uint64_t> prod;   // peer: producer cursor (packed)
  std::atomic<uint32_t> prod_flags;         // peer: cdc::conn_* flags
  alignas(64) std::atomic<uint64_t> cons;   // owner: consumer cursor (packed)
  alignas(64) std::atomic<uint32_t> rx_waiters;  // owner: waiters for data
  std::atomic<uint32_t> rx_rung;                 // owner's rx doorbell rung, not drained
  alignas(64) std::atomic<uint32_t> tx_waiters;  // peer: waiters for space
  std::atomic<uint32_t> tx_rung;                 // peer's tx doorbell rung, not drained
  // peer: its connection over this RMB ended, and it will never write here
  // or ring our doorbells again (a same-host link may then reuse the RMB).
  alignas(64) std::atomic<uint32_t> released;
  // owner: the server token of the connection a same-host link lends this
  // RMB to (shm_link.h): what the peer checks the CLC message naming it by.
  std::atomic<uint64_t> offer;
};
static_assert(std::atomic<uint64_t>::is_always_lock_free);
static_assert(sizeof(control) <= 4096);

inline constexpr uint64_t control_magic = 0x534d432d53484d31ULL;  // "SMC-SHM1"
inline constexpr size_t control_bytes = 4096;
/// Ring sizes an RMB may have (CLC's 4-bit size code: 16 KiB << 0..15).
inline constexpr uint32_t min_ring_bytes = 16 * 1024;
inline constexpr uint32_t max_ring_bytes = 512u * 1024 * 1024;

/// A memfd-backed RMB mapped into this process.
class segment {
 public:
  ~segment();
  segment(const segment&) = delete;
  segment& operator=(const segment&) = delete;

  /// A new sealed RMB of control_bytes + size over `fd`, a new memfd (made
  /// with MFD_ALLOW_SEALING, placed: rdma/sys.h) it owns from here on;
  /// nullptr and errno on failure.
  static std::unique_ptr<segment> create(uint32_t size, int fd);
  /// Maps a peer's memfd after checking seals and size; takes ownership of fd
  /// only on success. nullptr + errno (EPROTO for a bad segment) on failure.
  static std::unique_ptr<segment> attach(int fd, uint32_t size);

  control* ctl() const { return ctl_; }
  uint8_t* data() const { return data_; }
  uint32_t size() const { return size_; }
  int fd() const { return fd_; }

 private:
  segment() = default;
  int fd_ = -1;
  void* map_ = nullptr;
  size_t map_len_ = 0;
  control* ctl_ = nullptr;
  uint8_t* data_ = nullptr;
  uint32_t size_ = 0;
};

/// A page of memory behind a sealed memfd: the connection's own state,
/// mapped by every process that holds the connection, never by the peer.
class state_page {
 public:
  ~state_page();
  state_page(const state_page&) = delete;
  state_page& operator=(const state_page&) = delete;
  static constexpr size_t bytes = 4096;
  /// A new zeroed page over `fd`, as segment::create's; nullptr + errno
  /// on failure.
  static std::unique_ptr<state_page> create(int fd);
  /// Maps a received page after checking its seals and size; owns fd on
  /// success only. nullptr + errno (EPROTO for a bad page) on failure.
  static std::unique_ptr<state_page> attach(int fd);
  void* data() const { return map_; }
  int fd() const { return fd_; }

 private:
  state_page() = default;
  int fd_ = -1;
  void* map_ = nullptr;
};

/// Our half of a connection: our RMB and our doorbells (and the
/// connection's own state page). On a same-host link (shm_link.h) it is a
/// slot the link reuses for later connections with the same peer process.
struct local_side {
  std::unique_ptr<state_page> state;  // the connection's own state (not exchanged)
  std::unique_ptr<segment> rmb;
  int rx_bell = -1;       // we wait here; rung by the peer when it produced into our RMB
  int rx_bell_ring = -1;  // its ringing end, until the peer has it (make_path closes ours)
  int tx_bell = -1;       // rung by the peer when it consumed from its RMB
  int tx_bell_ring = -1;
  uint64_t token = 0;  // our nonce (travels in our CLC Accept/Confirm)
  uint32_t slot = 1;   // its number on a link (the first connection's is 1)
  // Names its doorbells for as long as they stay open (new ones, a new
  // number; never 0): what an epoll set that keeps watching them across
  // the connections the slot serves checks (data_path::bells_id).
  uint64_t bell_id = 0;
  // At most this many rings may be queued on each doorbell (what its last
  // paths left there: rung flags up and re-arms since their last drain).
  // reset_for_reuse drains a doorbell only once it may hold more than
  // max_carried_rings, and every 32nd reuse: a drain is a system call per
  // connection otherwise, and a ring left queued only makes a level
  // watcher look once for nothing (then it drains).
  uint32_t queued_rx = 0;
  uint32_t queued_tx = 0;
  uint32_t reuses = 0;
  local_side() = default;
  local_side(local_side&& o) noexcept;  // takes o's fds
  local_side& operator=(local_side&&) = delete;
  ~local_side();
  /// Creates RMB + doorbells; false + errno on failure.
  bool init(uint32_t rmb_size);
  /// Readies a slot the peer released for its next connection: doorbells
  /// emptied (when the last paths may have left more than max_carried_rings
  /// there, and every 32nd time regardless), control page and state page
  /// cleared, a new token
  /// (the next number, after a random first: a reused slot's token travels
  /// only to its peer). False if a doorbell held more rings than a peer that
  /// follows the protocol leaves.
  bool reset_for_reuse();
};

/// What the exchange brought from the peer.
struct peer_side {
  int rmb_fd = -1;
  int rx_ring = -1;  // rings the peer's rx doorbell
  int tx_ring = -1;  // rings the peer's tx doorbell
  uint32_t rmb_size = 0;
  uint64_t token = 0;  // the peer's nonce (must match its CLC Accept/Confirm)
  uint32_t kept_link = 0;  // a server's hello: the id of the link it keeps (shm_link.h)
  ~peer_side();
};

/// The peer's half, mapped: its RMB and the ringing ends of its doorbells.
struct remote_side {
  std::unique_ptr<segment> rmb;
  int rx_ring = -1;
  int tx_ring = -1;
  uint32_t slot = 1;  // the peer's number for it on a link
  ~remote_side();
  /// Maps what an exchange brought (its fds are owned by the result, or
  /// closed). nullptr + errno (EPROTO for a bad segment) on failure.
  static std::unique_ptr<remote_side> take(peer_side&& p);
};

/// Where a connection's halves go when its path ends: a same-host link
/// that may reuse them (shm_link.h). `reusable`: the path never left this
/// process (no fork since the link was made, never exported), so no other
/// process can still reach either half.
class slot_home {
 public:
  virtual ~slot_home() = default;
  virtual void give_back(std::unique_ptr<local_side> me, std::unique_ptr<remote_side> peer,
                         bool reusable) noexcept = 0;
};

/// More rings than this queued on one doorbell between two drains mean a
/// peer that rings without end (ours rings once until drained): the
/// connection ends.
inline constexpr int max_queued_rings = 64;
/// What a reused slot's doorbell may carry into its next connection
/// undrained (local_side::queued_rx): with a connection's own (a rung flag,
/// re-arms until every 8th drains) far below max_queued_rings.
inline constexpr uint32_t max_carried_rings = 16;

/// Server end of the rendezvous: an abstract unix listener named after the
/// host id and a random link id (both go into the CLC Accept).
class rendezvous {
 public:
  ~rendezvous();
  /// Binds a fresh listener; false + errno on failure.
  bool open(uint64_t host_id);
  uint32_t link_id() const { return link_id_; }
  int fd() const { return fd_; }
  /// Waits until `deadline_ms` (CLOCK_MONOTONIC ms) for the client that knows
  /// our token, hands it our side, and receives its side. `abort_fd` (the TCP
  /// socket) is watched too: if it becomes readable the client gave up (it sent
  /// a Decline) and the call fails with ECONNABORTED. With `keep`, the
  /// exchange's socket is not closed but left there (to become a same-host
  /// link), and our hello names `kept_link` (the link's id).
  bool serve(const local_side& me, int64_t deadline_ms, int abort_fd, peer_side& out,
             int* keep = nullptr, uint32_t kept_link = 0);

 private:
  int fd_ = -1;
  uint32_t link_id_ = 0;
  uint64_t host_id_ = 0;
};

/// Client end: connects to the server's rendezvous and swaps sides (with
/// `keep`, leaving the socket there, as serve() does).
bool rendezvous_connect(uint64_t host_id, uint32_t link_id, uint64_t server_token,
                        const local_side& me, int64_t deadline_ms, peer_side& out,
                        int* keep = nullptr);

/// The data path over two mapped RMBs (implements rdma::data_path).
std::unique_ptr<data_path> make_path(local_side&& me, peer_side&& peer);
/// The same over halves a same-host link lent (given back to `home` when the
/// path ends). nullptr + errno on failure (the halves are then given back,
/// not reusable).
std::unique_ptr<data_path> make_path(std::unique_ptr<local_side> me,
                                     std::unique_ptr<remote_side> peer,
                                     std::shared_ptr<slot_home> home);

/// How many fds data_path::export_fds() gives for an shm connection, in
/// this order: state page, our RMB, the peer's RMB, our rx doorbell, our tx
/// doorbell, the ringing ends of the peer's rx and tx doorbells.
inline constexpr size_t export_fd_count = 7;
/// The data path of a connection another process of ours exported (an
/// SCM_RIGHTS handoff): the fds as export_fds() ordered them, and the ring
/// sizes. Takes ownership of every fd (closed on failure: nullptr + errno,
/// EPROTO for anything that is not such a connection).
std::unique_ptr<data_path> import_path(const int fds[export_fd_count], uint32_t rx_size,
                                       uint32_t tx_size);

/// CLOCK_MONOTONIC in milliseconds.
int64_t now_ms();
/// 64 random bits from getrandom(); never 0.
uint64_t random64();

// Helpers the same-host link shares (shm_transport.cpp).
/// Maps a peer's sealed memfd of exactly `bytes`; nullptr + errno.
void* map_sealed(int fd, size_t bytes);
/// Whether fd is a unix seqpacket socket (all a ringing end may be).
bool check_ring(int fd);
/// A ringing end from the peer, shut for reading and emptied (the peer
/// holds its other end and could queue fds on it).
void tame_ring(int fd);
/// Whether `n` is a ring size an RMB may have.
bool ring_size_ok(uint32_t n);

}  // namespace smc::rdma::shm
