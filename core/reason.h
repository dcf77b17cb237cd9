// Why a connection is not (or no longer) SMC: one enum for the local
// fallback reasons and the CLC Decline diagnosis codes (PROTOCOL.md 2.5).
// Names are stable: they are the keys of "fallback_reasons" in the stats file.
#pragma once

#include <cstdint>

namespace smc::core {

enum class reason : uint8_t {
  none,
  peer_not_configured,  // client: peer not in SMC_PEERS / config (no Proposal sent)
  transport_tcp,        // SMC_TRANSPORT=tcp on this side
  no_proposal,          // server: stream did not start with a CLC Proposal
  server_wrote_first,   // server sent before the client's first bytes arrived
  peer_declined,        // the peer sent a CLC Decline
  no_clc_reply,         // client: the server answered with non-CLC bytes
  clc_timeout,          // no CLC answer within the handshake timeout
  clc_malformed,        // a CLC message failed validation
  no_smc_dev,           // no transport usable for this peer (not same host, no RDMA)
  no_ueid,              // no common UEID
  rendezvous_failed,    // shm: memfd/eventfd exchange failed
  out_of_sync,          // SMC-R: the server chose a link group we no longer have
  sandboxed,            // the process restricted its own system calls (seccomp) or fds
  out_of_memory,        // buffers could not be created
  internal,             // anything else
  busy,                 // server: too many handshakes in flight; declined at once
  no_fds,               // no fd number left that is not the application's (rdma::place_fd)
  peer_closed,          // the peer closed the TCP connection before the handshake ended
  count_,
};

const char* to_name(reason r);
/// The CLC Decline peer diagnosis code we send for a local reason.
uint32_t to_decline_code(reason r);
/// Name of a received Decline diagnosis code ("NOSMCDEV", ... or "0x........").
const char* decline_code_name(uint32_t code);

}  // namespace smc::core
