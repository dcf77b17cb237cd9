// Moving an SMC connection to another process along with its socket
// (SCM_RIGHTS): Node.js cluster's primary, prefork servers and acceptor
// processes pass accepted sockets to workers.
//
// A passed socket is the same kernel TCP socket in the receiving process,
// but an SMC connection's buffers and state are mappings that only the
// processes holding them have. So the sender *offers* the connection as the
// socket leaves: it keeps the connection (as one of its holders, see
// core::conn_shared::holders) for up to offer_ms, serves its offers from an
// abstract unix listener on its engine thread, and marks the TCP socket
// with that listener's id (in TCP_NOTSENT_LOWAT, where an SMC connection's
// socket carries our mark: preload.h, mark_smc). The receiver, finding the mark on a
// socket it just received, asks that listener for the connection and proves
// it holds the socket by passing it along; the sender proves the same by
// answering with its own copy of the socket, together with the fds that map
// the connection (shm: its state page, both RMBs, the doorbells). From then
// on both processes hold one connection, as a forked child does, and the
// last of them to close it tells the peer.
//
// Only processes that hold the TCP socket can take the connection, and a
// receiver only maps what a holder of the socket gave it. An SMC-R
// connection cannot move (its QP and memory registrations are its process's
// own): passing one ends it for everyone as a reset, with a log line.
#pragma once

#include <cstdint>
#include <memory>

namespace smc::core {
class conn;
}

namespace smc::core::handoff {

/// The mark in an SMC connection's TCP_NOTSENT_LOWAT: mark_base, with the
/// listener id of the process that offered it last in the low 24 bits (0:
/// never offered). Inert on a socket that sends nothing: the value is over
/// 3 GiB, more than any send buffer, and the application reads its own.
inline constexpr uint32_t mark_base = 0xC3000000u;
inline constexpr uint32_t mark_mask = 0xFF000000u;
inline constexpr bool is_mark(uint32_t v) { return (v & mark_mask) == mark_base; }

/// How long an offer waits for its receiver.
inline constexpr int offer_ms = 10000;

/// Sender: the SMC connection `c` on `tcp_fd` is about to leave in an
/// SCM_RIGHTS message. Returns an offer id (withdraw() it if the message
/// does not leave after all), or 0 if the connection cannot move; then it
/// has been reset (the receiver and the peer read ECONNRESET), logged and
/// counted, as nothing the receiver could read would be right.
uint64_t offer(const std::shared_ptr<conn>& c, int tcp_fd);
/// The message carrying an offered socket was not sent.
void withdraw(uint64_t id);

/// Receiver: `tcp_fd` arrived carrying the mark. Takes the connection over
/// from the process that offered it; nullptr when that cannot be done (the
/// reason logged and counted): the caller makes it read as reset.
std::shared_ptr<conn> take(int tcp_fd, uint32_t spin_us);

/// At exit: waits up to max_ms for offers still pending to be taken (an
/// acceptor that passes its last connection and exits).
void wait_pending(int max_ms);

/// In a forked child: the parent's offers and listener are the parent's.
void forget_after_fork();

}  // namespace smc::core::handoff
