// Same-host links: what two processes talking SMC over shm set up once and
// reuse for every later connection between them, as SMC-R's link groups do.
//
// The first connection between two processes exchanges its halves over a
// rendezvous (shm_transport.h, "first contact"); the rendezvous socket then
// stays open as the link. A later connection between the same two
// processes makes no rendezvous, no memfd, no mapping and no doorbell: each
// side lends it a slot (an RMB with its control page, two doorbells and a
// state page) that an earlier connection released, and the CLC Accept and
// Confirm name the slots (docs/ARCHITECTURE.md, "Same-host links").
//
// Trust: a slot is only ever lent to connections with the process at the
// other end of its link, so whatever that peer can write or read is its own
// connections' memory. A slot named in a CLC message counts only if its own
// control page, which only the two ends of the link map, offers it for that
// connection's server token (control::offer), so a third process that
// repeats a key or a slot number it saw gets nothing but a fallback to TCP. Everything a link receives is
// validated as the rendezvous's hello is; a link that breaks the protocol
// is dropped, and later connections with that peer make a new one.
//
// Halves go back to their link when their connection ends, and are reused
// only once the peer said it is done with them (control::released), only in
// the process generation that made the link (a fork retires every link in
// parent and child), and never after the connection was passed to another
// process. What the links keep idle is bounded by a share of RLIMIT_NOFILE.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "rdma/shm/shm_transport.h"

namespace smc::rdma::shm {

/// This process's link key: random, new after a fork. A client sends it in
/// its Proposal; the server finds its link to the client's process by it.
uint64_t link_key();
/// A new link's id (random, not 0): the server picks it, its first-contact
/// hello and every later Accept over the link name it.
uint32_t new_link_id();

/// Which end of the links a table holds: as a server, links are found by
/// the client's key; as a client, by the link id the server chose.
enum class link_end : uint8_t { client, server };

class link;

/// The live link of this process generation with `key`, or null.
std::shared_ptr<link> find_link(link_end end, uint64_t key);

/// Turns the socket a first-contact exchange kept into link `id` (owns
/// `sock` from here on), found later by `key` (a server's: the client's
/// link key; a client's: the id). The exchange's own halves are slot 1 on
/// both sides and count as lent. Registered for later connections unless a
/// live link has that key already (two first contacts at once: the second
/// serves its own connection only; the server names the one it registered,
/// by id). nullptr (and `sock` closed) when out of memory.
std::shared_ptr<link> add_link(link_end end, uint64_t key, int sock, uint32_t id);

class link final : public slot_home {
 public:
  link(int sock, uint32_t id);
  ~link() override;
  link(const link&) = delete;
  link& operator=(const link&) = delete;

  /// Our slot for a new connection: one the peer released, reset, or a new
  /// one whose fds go to the peer first. nullptr + errno on failure.
  std::unique_ptr<local_side> take_own(uint32_t rmb_size);
  /// Offers our slot to the connection whose server token is `token` (in its
  /// control page, before the CLC message that names the slot is sent).
  static void offer(local_side& me, uint64_t token);
  /// Takes back an offer nobody claimed (take_peer with `claim`): true if
  /// it was still there, false if the peer took the slot meanwhile (it is
  /// then the peer's until it releases it: give_back).
  static bool withdraw(local_side& me, uint64_t token);
  /// The peer's slot `slot` of `rmb_size` bytes (0: any size) for the
  /// connection with server token `token`: only if the slot came over this
  /// link, offers itself for that token, and is not lent already. With
  /// `claim` the offer is taken in the same step (a client's slot lent in
  /// its Proposal, which the client may withdraw meanwhile). nullptr +
  /// errno (EPROTO).
  std::unique_ptr<remote_side> take_peer(uint64_t token, uint32_t slot, uint32_t rmb_size,
                                         bool claim = false);
  /// A slot of ours taken for a connection that did not use it, and that
  /// the peer never had: idle again, as one the peer released.
  void put_back(std::unique_ptr<local_side> me) noexcept;
  /// A half taken above that no path got (the handshake failed): destroyed,
  /// and the peer told not to reuse it.
  void discard(std::unique_ptr<local_side> me, std::unique_ptr<remote_side> peer) noexcept;

  void give_back(std::unique_ptr<local_side> me, std::unique_ptr<remote_side> peer,
                 bool reusable) noexcept override;

  /// False once the peer went away, broke the protocol, or a fork retired it.
  bool alive();
  /// Why the link ended ("" while it lives): for the log line of a
  /// connection it fails.
  std::string why_dead() const;
  /// Ends the link (nothing of it is reused any more).
  void retire();
  int fd_for_poll() const;
  uint32_t id() const { return id_; }

 private:
  struct state;
  std::unique_ptr<state> st_;
  const uint32_t gen_;
  const uint32_t id_;
};

/// Around fork(): lock_for_fork() in the prepare handler, then
/// after_fork(false) in the parent and after_fork(true) in the child. Both
/// forget every link (their slots are reachable from the other process now).
void lock_for_fork();
void after_fork(bool child);

}  // namespace smc::rdma::shm
