// The CLC handshake over the freshly connected TCP socket (PROTOCOL.md 2, 5.1,
// 5.2): the client proposes, the server accepts or declines, the client
// confirms or declines. Any failure before the switch leaves both sides on
// plain TCP with the stream intact: CLC messages are consumed exactly, and
// bytes that are not a valid CLC message are never consumed.
#pragma once

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
};

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

/// Active side, before the TCP connect: gathers what the Proposal needs
/// (the RDMA devices' GIDs) so it can follow the TCP handshake at once.
void client_warm_up(const hs_params& p);

/// Active side: called once the TCP connection is established with a peer
/// believed SMC-capable. Blocks at most about 2 x timeout.
hs_outcome client_handshake(int fd, const hs_params& p);

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
