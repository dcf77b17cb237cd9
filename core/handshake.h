// The CLC handshake over the freshly connected TCP socket (PROTOCOL.md 2, 5.1,
// 5.2): the client proposes, the server accepts or declines, the client
// confirms or declines. Any failure before the switch leaves both sides on
// plain TCP with the stream intact: CLC messages are consumed exactly, and
// bytes that are not a valid CLC message are never consumed.
#pragma once

#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "config/config.h"
#include "core/reason.h"
#include "rdma/transport.h"

namespace smc::core {

/// The UEID both sides must share unless SMC_UEID says otherwise (SMC v2
/// requires one common EID).
inline const char* default_ueid() { return "SMC-PRELOAD-V1"; }

struct hs_params {
  config::transport_mode transport = config::transport_mode::auto_;
  uint32_t rmb_size = 256 * 1024;
  int timeout_ms = 5000;  // for each wait on the peer
  std::vector<std::string> devices;  // SMC_DEVICES (empty = any RDMA device)
  std::string ueid = default_ueid();  // SMC_UEID: the EID both sides must share
  /// Client: the server's address and port (dest_key()), 0 if unknown. A
  /// same-host link that served this destination last gets a slot of ours
  /// lent in the Proposal.
  uint64_t dest = 0;
};

/// A hash of a socket address (family, address, port) for hs_params::dest.
uint64_t dest_key(const sockaddr* addr, socklen_t len);

struct hs_outcome {
  std::unique_ptr<rdma::data_path> path;  // set: the connection is SMC
  reason why = reason::none;              // otherwise: why it stays TCP
  uint32_t peer_diagnosis = 0;            // from a received Decline
  /// Client gave up waiting and declined: the server's late Accept/Decline
  /// may still arrive first in the stream and must be stripped.
  bool strip_reply = false;
  /// The stream is in an unknown state (peer broke the protocol after the
  /// exchange): the connection must be reset rather than used as TCP.
  bool broken = false;
};

/// The error the handshake's last look at a TCP socket on this thread took
/// from it, if that socket is `fd`'s (0 if none), and forgets it either
/// way: the caller that applies `fd`'s outcome owes it to the application.
/// The kernel reports a socket's pending error once, to whichever call
/// reads first, a MSG_PEEK too: a reset that ends a handshake would
/// otherwise never reach the application, whose first read sees it on TCP
/// (it would read EOF).
int take_tcp_error(int fd);

/// Active side, before the TCP connect: gathers what the Proposal needs
/// (the RDMA devices' GIDs) so it can follow the TCP handshake at once.
void client_warm_up(const hs_params& p);

/// Active side: called once the TCP connection is established with a peer
/// believed SMC-capable. Blocks at most about 2 x timeout.
hs_outcome client_handshake(int fd, const hs_params& p);

/// A handshake between two steps, with no thread of its own: it waits for
/// the peer's next CLC message, and the TCP socket becomes readable when
/// that comes. Destroying it abandons the handshake (a same-host slot it
/// holds goes back to its link, not reusable). Event loops run their
/// handshakes this way: a connection over a same-host link is decided by
/// the calls that touch the socket, and only first contact and SMC-R (which
/// wait for a rendezvous or a link) need a thread (core/background).
struct hs_step;
struct hs_step_free {
  void operator()(hs_step* s) const noexcept;
};
using hs_step_ptr = std::unique_ptr<hs_step, hs_step_free>;

enum class step_result {
  wait,      // nothing to do until the socket is readable or the deadline passes
  done,      // the handshake ended: see the outcome
  blocking,  // what remains waits for the peer: hs_finish() on a thread that may block
};

/// Client: sends the Proposal, never waiting for the server. nullptr when
/// the handshake ended at once (`out` says how).
hs_step_ptr client_propose(int fd, const hs_params& p, hs_outcome& out);
/// Server: consumes the complete Proposal of `msg_len` bytes (peek_clc
/// matched) and checks it. nullptr when the answer was a Decline (`out`).
hs_step_ptr server_begin(int fd, size_t msg_len, const hs_params& p, hs_outcome& out);
/// Server: whether answering the complete Proposal of `msg_len` bytes at
/// the start of the stream (peek_clc matched; nothing is consumed) would
/// make the connection SMC-R, which cannot follow its socket to another
/// process (a same-host shm connection can: core/handoff).
bool proposal_wants_rdma(int fd, size_t msg_len, const hs_params& p);
/// Moves a step on as far as it goes without waiting for the peer: a same-
/// host link's Accept or Confirm is sent at once, a reply that is there is
/// taken. With `may_block`, first contact and SMC-R run here too (and
/// `blocking` is never the answer).
step_result hs_advance(hs_step& s, int fd, const hs_params& p, bool may_block, hs_outcome& out);
/// The rest of a step, on a thread that may block (bounded by the timeouts).
hs_outcome hs_finish(hs_step& s, int fd, const hs_params& p);
/// When the step gives up waiting (CLOCK_MONOTONIC ms): hs_advance() after
/// it ends the handshake (a client declines, a server's stream is broken).
int64_t hs_deadline(const hs_step& s);
/// Ends a step that may not wait any longer and cannot get a thread (all
/// are busy): declined where the protocol still allows it, broken otherwise.
hs_outcome hs_abandon(hs_step& s, int fd, reason why);

/// What the start of a stream holds (never consumes anything).
enum class start_kind {
  need_more,  // a prefix of a CLC message (or nothing yet): wait for more
  eof,        // the peer closed before sending anything
  match,      // a complete, valid CLC message of an expected type
  not_clc,    // application data
};
/// `type_mask`: bit (1 << msg_type) for each CLC type that counts as a match.
start_kind peek_clc(int fd, unsigned type_mask, size_t& msg_len);

inline constexpr unsigned mask_proposal = 1u << 1;
inline constexpr unsigned mask_reply = (1u << 2) | (1u << 4);  // Accept or Decline

/// Passive side: a complete Proposal of `msg_len` bytes is at the start of
/// the stream (peek_clc matched); consume it and answer.
hs_outcome server_handshake(int fd, size_t msg_len, const hs_params& p);

/// peek_clc until the answer is not need_more, or until `deadline_ms`
/// (CLOCK_MONOTONIC ms) passes with only a prefix there (then not_clc:
/// bytes that stay a fragment are application data). Waits on fd.
start_kind await_clc(int fd, unsigned type_mask, size_t& msg_len, int64_t deadline_ms);

/// Passive side, turning a complete Proposal away at once (too many
/// handshakes in flight): consume it and answer with a Decline. Never waits
/// for the peer.
hs_outcome server_decline(int fd, size_t msg_len, reason why);

/// Consume a complete CLC message known to be at the start of the stream.
bool discard_clc(int fd, size_t msg_len);

}  // namespace smc::core
