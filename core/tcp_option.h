// RFC 7609 capability detection through the host's cgroup eBPF programs
// (bpf/smc_option.bpf.c, installed by scripts/smc-bpf): the preload marks a
// socket before connect()/listen() so its SYN (a listener: its SYN-ACKs)
// carries SMC's TCP option, and asks after the handshake whether the peer's
// SYN-ACK (accepted: its SYN) carried it. Plain socket options on a private
// level; without the programs the kernel answers ENOPROTOOPT and nothing
// changes. errno is preserved by both calls.
#pragma once

namespace smc::core::tcp_option {

/// Marks fd; true when the programs are installed for this process's cgroup.
/// After a refusal the next calls skip the system call for a while (the
/// programs may be installed later: it is asked again every 10 s).
bool advertise(int fd);

enum class peer { unknown, smc, not_smc };

/// What the peer's handshake packet said (unknown: no programs, or fd was
/// not marked).
peer peer_said(int fd);

}  // namespace smc::core::tcp_option
