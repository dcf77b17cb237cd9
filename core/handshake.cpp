// CLC handshake flows for the shm (same-host, SMC-D v2 loopback style) path.
// See handshake.h; wire formats in clc.h.
#include "core/handshake.h"

#include <poll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <new>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/clc.h"
#include "core/cursor.h"
#include "core/hash.h"
#include "core/host_id.h"
#include "core/log.h"
#include "core/smcr.h"
#include "core/stats.h"
#include "rdma/shm/shm_link.h"
#include "rdma/shm/shm_transport.h"
#include "rdma/sys.h"

namespace smc::core {

namespace {

using rdma::sys;
using rdma::shm::now_ms;

// Waits until fd has `events` or the deadline passes. true = ready.
bool wait_for(int fd, short events, int64_t deadline) {
  for (;;) {
    int64_t left = deadline - now_ms();
    if (left <= 0) {
      return false;
    }
    pollfd p{fd, events, 0};
    int n = sys().poll(&p, 1, static_cast<int>(left));
    if (n > 0) {
      return true;
    }
    if (n == 0 || errno != EINTR) {
      return false;
    }
  }
}

bool send_all(int fd, const std::vector<uint8_t>& b, int64_t deadline) {
  size_t off = 0;
  while (off < b.size()) {
    ssize_t n = sys().send(fd, b.data() + off, b.size() - off, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n > 0) {
      off += static_cast<size_t>(n);
    } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      if (!wait_for(fd, POLLOUT, deadline)) {
        return false;
      }
    } else {
      return false;
    }
  }
  return true;
}

bool recv_exact(int fd, uint8_t* buf, size_t len, int64_t deadline) {
  size_t off = 0;
  while (off < len) {
    ssize_t n = sys().recv(fd, buf + off, len - off, MSG_DONTWAIT);
    if (n > 0) {
      off += static_cast<size_t>(n);
    } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      if (!wait_for(fd, POLLIN, deadline)) {
        return false;
      }
    } else {
      return false;
    }
  }
  return true;
}

// Waits for more of a CLC message a peek found partial: until the socket
// is readable, or, while a prefix of it sits unread (poll stays ready for
// it), a moment. false once the deadline has passed.
bool wait_more(int fd, bool prefix, int64_t deadline) {
  if (now_ms() >= deadline) {
    return false;
  }
  if (prefix) {
    pollfd none{-1, 0, 0};
    sys().poll(&none, 0, 1);
    return true;
  }
  wait_for(fd, POLLIN, deadline);
  return true;
}

clc::eid_t our_eid(const hs_params& p) { return clc::make_eid(p.ueid.c_str()); }

void send_decline(int fd, reason r, int64_t deadline) {
  clc::decline d;
  d.version = 2;
  d.diagnosis = to_decline_code(r);
  send_all(fd, clc::encode(d), deadline);
}

hs_outcome fallback(reason r, uint32_t diag = 0) {
  hs_outcome o;
  o.why = r;
  o.peer_diagnosis = diag;
  return o;
}

// The stream is in an unknown state: the connection must be reset.
hs_outcome broken(reason r) {
  hs_outcome o = fallback(r);
  o.broken = true;
  return o;
}

hs_outcome smc(std::unique_ptr<rdma::data_path> path) {
  hs_outcome o;
  o.path = std::move(path);
  return o;
}

bool eid_in(const std::vector<clc::eid_t>& list, const clc::eid_t& e) {
  for (const auto& x : list) {
    if (x == e) {
      return true;
    }
  }
  return false;
}


// Client, SMC-R chosen by the server: join or create the link group, confirm,
// and on first contact bring the link up (CONFIRM LINK).
hs_outcome client_rdma(int fd, const std::vector<uint8_t>& msg,
                       const std::optional<rdma::verbs::gid_choice>& gid, const hs_params& p,
                       int64_t deadline) {
  clc::accept_confirm_r acc;
  if (clc::decode(msg, acc) != clc::error::ok || acc.type != clc::msg_type::accept) {
    send_decline(fd, reason::clc_malformed, deadline);
    return fallback(reason::clc_malformed);
  }
  if (!gid) {
    send_decline(fd, reason::no_smc_dev, deadline);
    return fallback(reason::no_smc_dev);
  }
  if (acc.version >= 2 && acc.eid != our_eid(p)) {
    send_decline(fd, reason::no_ueid, deadline);
    return fallback(reason::no_ueid);
  }
  bool sync_error = false;
  auto pend = smcr::client_prepare(*gid, acc, p.rmb_size, &sync_error);
  if (!pend) {
    if (sync_error) {
      // The server reuses a link group we do not know: out of sync (PROTOCOL.md 2.4).
      clc::decline d;
      d.version = 2;
      d.out_of_sync = true;
      d.diagnosis = 0x04000000;  // SYNCERR
      send_all(fd, clc::encode(d), deadline);
      return fallback(reason::out_of_sync);
    }
    send_decline(fd, reason::out_of_memory, deadline);
    return fallback(reason::out_of_memory);
  }
  clc::accept_confirm_r conf;
  conf.type = clc::msg_type::confirm;
  smcr::fill_accept_confirm(*pend, conf);
  conf.qp_mtu = std::min(conf.qp_mtu, acc.qp_mtu);
  conf.eid = our_eid(p);
  if (!send_all(fd, clc::encode(conf), deadline)) {
    smcr::abandon(*pend);
    return broken(reason::internal);
  }
  if (!smcr::client_complete(*pend, 2 * p.timeout_ms)) {
    // The server believes in the link; neither side can go back to TCP now.
    smcr::abandon(*pend);
    return broken(reason::clc_timeout);
  }
  return smc(smcr::make_path(std::move(*pend)));
}


// An shm Accept or Confirm: ours, with our token, ring size and slot (0 on
// first contact), naming the server's rendezvous (first contact) or link.
clc::accept_confirm_d shm_message(clc::msg_type type, bool first_contact, uint64_t me_id,
                                  uint64_t token, uint32_t rmb_size, uint32_t link_id,
                                  uint32_t slot, const hs_params& p) {
  clc::accept_confirm_d m;
  m.type = type;
  m.version = 2;
  m.first_contact = first_contact;
  m.gid = me_id;
  m.token = token;
  m.dmbe_idx = 1;
  m.dmbe_size_code = rmb_size_to_code(rmb_size);
  m.link_id = link_id;
  m.chid = clc::loopback_chid;
  m.eid = our_eid(p);
  m.gid_ext = slot;
  return m;
}

using rdma::shm::link_end;

// A socket a first-contact exchange kept for a link, closed unless taken.
struct kept_socket {
  int fd = -1;
  ~kept_socket() {
    if (fd >= 0) {
      rdma::close_shared_unix(fd);
    }
  }
  int take() { return std::exchange(fd, -1); }
};

// The path over halves a first-contact exchange made: lent by a new link
// when the exchange's socket was kept (and the peer keeps its end), else
// owned by the path alone.
std::unique_ptr<rdma::data_path> first_contact_path(rdma::shm::local_side&& me,
                                                     rdma::shm::peer_side&& peer,
                                                     kept_socket& kept, link_end end,
                                                     uint64_t key, uint32_t id) {
  if (kept.fd < 0 || key == 0 || id == 0) {
    return rdma::shm::make_path(std::move(me), std::move(peer));
  }
  auto theirs = rdma::shm::remote_side::take(std::move(peer));
  auto mine = std::unique_ptr<rdma::shm::local_side>(new (std::nothrow)
                                                         rdma::shm::local_side(std::move(me)));
  if (!theirs || !mine) {
    return nullptr;
  }
  auto l = rdma::shm::add_link(end, key, kept.take(), id);
  if (!l) {
    return rdma::shm::make_path(std::move(mine), std::move(theirs), nullptr);
  }
  stats::count_shm_link(false);
  return rdma::shm::make_path(std::move(mine), std::move(theirs), std::move(l));
}

// What a failure to make a connection's buffers is: `otherwise`, or no_fds
// when the fd numbers left to the library ran out (errno EMFILE).
reason short_of(reason otherwise) { return errno == EMFILE ? reason::no_fds : otherwise; }

// Our slot for a connection over link `l` (link::take_own), counted when
// it was made for it rather than released by an earlier connection.
std::unique_ptr<rdma::shm::local_side> take_own(rdma::shm::link& l, uint32_t rmb_size) {
  auto me = l.take_own(rmb_size);
  if (me && me->reuses == 0) {
    stats::count_shm_fresh_slot();
  }
  return me;
}

// A slot number from a CLC message's extended GID (0: none).
uint32_t slot_of(uint64_t gid_ext) {
  return gid_ext <= UINT32_MAX ? static_cast<uint32_t>(gid_ext) : 0;
}

// Client: which same-host link served a destination last (dest_key ->
// link id), so that the next Proposal to it can lend a slot of that link.
// Bounded: forgotten all at once when full.
std::mutex g_hint_mu;
std::unordered_map<uint64_t, uint32_t> g_hints;
constexpr size_t max_hints = 1024;

void remember_link(uint64_t dest, uint32_t link_id) {
  if (dest == 0) {
    return;
  }
  std::lock_guard<std::mutex> g(g_hint_mu);
  try {
    if (g_hints.size() >= max_hints) {
      g_hints.clear();
    }
    g_hints[dest] = link_id;
  } catch (...) {
  }
}

uint32_t link_for(uint64_t dest) {
  std::lock_guard<std::mutex> g(g_hint_mu);
  auto it = g_hints.find(dest);
  return it == g_hints.end() ? 0 : it->second;
}

// The token a lent slot offers itself for: random (a server that saw it
// could otherwise guess the next), its top bit set (never 0, never the
// claimed mark). getrandom once per 32.
uint64_t lend_token() {
  static std::mutex mu;
  static std::array<uint64_t, 32> pool;
  static size_t left = 0;
  std::lock_guard<std::mutex> g(mu);
  if (left == 0) {
    if (getrandom(pool.data(), sizeof pool, 0) == static_cast<ssize_t>(sizeof pool)) {
      left = pool.size();
    } else {
      return rdma::shm::random64() | (uint64_t{1} << 63);
    }
  }
  return pool[--left] | (uint64_t{1} << 63);
}

// Client: a slot of ours lent in the Proposal, on the link that served the
// same destination last (docs/ARCHITECTURE.md, "Same-host links"). The
// server that owns that link takes it (link::take_peer with `claim`) and
// says so in its Accept; then no Confirm follows.
struct lent_slot {
  std::shared_ptr<rdma::shm::link> l;
  std::unique_ptr<rdma::shm::local_side> me;
  uint64_t token = 0;

  // Takes the offer back: true (and the slot idle again) if it was still
  // there; false if the peer took the slot.
  bool withdraw() noexcept {
    if (!rdma::shm::link::withdraw(*me, token)) {
      return false;
    }
    l->put_back(std::move(me));
    l.reset();
    return true;
  }
  // Not taken by this connection: idle again if the offer was still there,
  // else the peer's until it releases it (a server that saw the Proposal
  // elsewhere may have made the link's owner take it).
  void abandon() noexcept {
    if (l && me && !withdraw()) {
      l->give_back(std::move(me), nullptr, true);
    }
    me.reset();
    l.reset();
  }
  ~lent_slot() { abandon(); }
};

// Client, before the Proposal: lends a slot of the link that served `dest`
// last, if there is one alive.
void lend_first(lent_slot& lend, const hs_params& p) {
  const uint32_t id = p.dest != 0 ? link_for(p.dest) : 0;
  auto l = id != 0 ? rdma::shm::find_link(link_end::client, id) : nullptr;
  if (!l) {
    return;
  }
  auto me = take_own(*l, p.rmb_size);
  if (!me) {
    return;
  }
  lend.token = lend_token();
  rdma::shm::link::offer(*me, lend.token);
  lend.me = std::move(me);
  lend.l = std::move(l);
}

// Client, the server reuses the link between our two processes (its Accept
// is not first contact): both sides lend slots; no rendezvous. If it took
// the slot our Proposal lent, that is all; else ours is named in a Confirm.
hs_outcome client_shm_link(int fd, const clc::accept_confirm_d& acc, const hs_params& p,
                           int64_t deadline, uint64_t me_id, lent_slot& lend, uint64_t dest) {
  if ((acc.gid_ext & clc::took_lent_slot) != 0) {
    // The server believes the connection is SMC already: what goes wrong
    // from here cannot go back to TCP.
    const uint64_t rest = acc.gid_ext & ~clc::took_lent_slot;
    if (!lend.me || acc.link_id != lend.l->id() || rest == 0 || rest > UINT32_MAX) {
      return broken(reason::clc_malformed);
    }
    auto l = lend.l;
    auto peer = l->take_peer(acc.token, static_cast<uint32_t>(rest), rmb_code_to_size(acc.dmbe_size_code));
    if (!peer) {
      const std::string dead = l->why_dead();
      SMC_LOG(warn, "fd %d: the server's slot %u on link %08x cannot be had (%s%s%s)", fd,
              static_cast<unsigned>(rest), l->id(), std::strerror(errno),
              dead.empty() ? "" : "; the link: ", dead.c_str());
      return broken(reason::rendezvous_failed);
    }
    lend.l.reset();
    auto path = rdma::shm::make_path(std::move(lend.me), std::move(peer), l);
    if (!path) {
      return broken(reason::out_of_memory);
    }
    stats::count_shm_link(true);
    stats::count_shm_lent_first();
    remember_link(dest, acc.link_id);
    return smc(std::move(path));
  }
  lend.abandon();
  auto fail = [&](reason r) {
    SMC_LOG(info, "fd %d: shm link not usable (%s)", fd, std::strerror(errno));
    send_decline(fd, r, deadline);
    return fallback(r);
  };
  auto l = rdma::shm::find_link(link_end::client, acc.link_id);
  if (!l) {
    errno = ENOENT;
    return fail(reason::rendezvous_failed);
  }
  auto peer = l->take_peer(acc.token, slot_of(acc.gid_ext), rmb_code_to_size(acc.dmbe_size_code));
  if (!peer) {
    return fail(reason::rendezvous_failed);
  }
  auto me = take_own(*l, p.rmb_size);
  if (!me) {
    const reason r = short_of(reason::rendezvous_failed);
    l->discard(nullptr, std::move(peer));
    return fail(r);
  }
  rdma::shm::link::offer(*me, acc.token);
  const clc::accept_confirm_d conf = shm_message(clc::msg_type::confirm, false, me_id, me->token,
                                                 me->rmb->size(), acc.link_id, me->slot, p);
  auto path = rdma::shm::make_path(std::move(me), std::move(peer), l);
  if (!path) {
    return fail(short_of(reason::out_of_memory));
  }
  if (!send_all(fd, clc::encode(conf), deadline)) {
    return broken(reason::internal);
  }
  stats::count_shm_link(true);
  remember_link(dest, acc.link_id);
  return smc(std::move(path));
}

// The socket's error a look below took (take_tcp_error), and which socket
// it was (its inode: a background job looks through a copy of the fd).
thread_local int t_tcp_err = 0;
thread_local ino_t t_tcp_ino = 0;

ino_t socket_ino(int fd) {
  struct stat st {};
  return fstat(fd, &st) == 0 ? st.st_ino : 0;
}

// What the start of the stream holds, looked at as a CLC message of a type
// in `type_mask` (never consumes anything).
enum class peeked {
  partial,  // nothing yet, or a prefix of such a message (`prefix` says which)
  whole,    // all of it: its bytes in buf, its header in h
  eof,      // the peer closed (or reset) first
  other,    // bytes that are not such a message
};
peeked peek_message(int fd, uint8_t (&buf)[clc::max_msg_len], clc::header& h,
                    unsigned type_mask, bool& prefix) {
  prefix = false;
  // One look takes what a whole message can be (the bytes after it stay
  // where they are, unread).
  ssize_t n = sys().recv(fd, buf, sizeof buf, MSG_PEEK | MSG_DONTWAIT);
  if (n < 0 && errno != EAGAIN && errno != EINTR) {
    // Taken from the socket: owed to the application.
    const int err = errno;
    t_tcp_err = err;
    t_tcp_ino = socket_ino(fd);
    errno = err;
  }
  if (n == 0 || (n < 0 && (errno == ECONNRESET || errno == EPIPE))) {
    return peeked::eof;  // closed, or reset
  }
  if (n < 0) {
    return (errno == EAGAIN || errno == EINTR) ? peeked::partial : peeked::other;
  }
  size_t k = std::min<size_t>(static_cast<size_t>(n), 4);
  if (std::memcmp(buf, clc::eyecatcher_smcr.data(), k) != 0 &&
      std::memcmp(buf, clc::eyecatcher_smcd.data(), k) != 0) {
    return peeked::other;
  }
  prefix = true;
  if (n < static_cast<ssize_t>(clc::header_len)) {
    return peeked::partial;
  }
  if (clc::peek_header({buf, clc::header_len}, h) != clc::error::ok ||
      (type_mask & (1u << static_cast<unsigned>(h.type))) == 0) {
    return peeked::other;
  }
  return n < static_cast<ssize_t>(h.length) ? peeked::partial : peeked::whole;
}

// Consumes the `len` bytes a peek found whole.
bool consume(int fd, size_t len) {
  uint8_t buf[clc::max_msg_len];
  return len <= sizeof(buf) && recv_exact(fd, buf, len, now_ms() + 1000);
}

// Reads one whole CLC message of any type, waiting until `deadline`:
// reason::none, or why there is none (clc_timeout, peer_closed,
// clc_malformed for bytes that are not a CLC message, internal).
reason read_message(int fd, std::vector<uint8_t>& out, clc::header& h, int64_t deadline) {
  uint8_t buf[clc::max_msg_len];
  constexpr unsigned any = (1u << 1) | (1u << 2) | (1u << 3) | (1u << 4);
  for (bool prefix = false;;) {
    switch (peek_message(fd, buf, h, any, prefix)) {
      case peeked::whole:
        out.assign(buf, buf + h.length);
        return consume(fd, h.length) ? reason::none : reason::internal;
      case peeked::eof:
        return reason::peer_closed;
      case peeked::other:
        return reason::clc_malformed;
      case peeked::partial:
        break;
    }
    if (!wait_more(fd, prefix, deadline)) {
      return reason::clc_timeout;
    }
  }
}

}  // namespace

struct hs_step {
  enum class phase : uint8_t {
    proposed,   // client: our Proposal is out; the server's answer comes next
    begun,      // server: the Proposal is taken and acceptable
    confirming  // server: our Accept over a same-host link is out; the Confirm comes next
  };
  phase ph = phase::proposed;
  int64_t deadline = 0;    // the handshake's own (the first wait's end)
  int64_t wait_until = 0;  // the current wait's end
  bool prefix = false;     // the last look found part of the message it waits for
  uint64_t me_id = 0;
  std::optional<rdma::verbs::gid_choice> gid;  // ours, for SMC-R
  bool want_shm = false;                       // client: shm proposed
  clc::proposal prop;                          // server: the client's
  uint64_t client_key = 0;                     // server: the client's process link key
  bool want_link = false;                      // server: keep a first contact as a link
  std::shared_ptr<rdma::shm::link> l;          // server: the link our Accept names
  std::unique_ptr<rdma::shm::local_side> me;   //   and the slot it lends
  uint64_t token = 0;                          //   (its server token)
  lent_slot lend;                              // client: the slot our Proposal lends
  uint64_t dest = 0;                           //   and where to (hs_params::dest)
  bool lend_waited = false;                    //   it was taken: waited once more
  uint64_t lent_link_slot = 0;                 // server: (link id << 32 | slot) the
  uint64_t lent_token = 0;                     //   client's Proposal lends, and its token
  ~hs_step() {
    if (l && me) {
      l->discard(std::move(me), nullptr);
    }
  }
};

void hs_step_free::operator()(hs_step* s) const noexcept { delete s; }

int64_t hs_deadline(const hs_step& s) { return s.wait_until; }

namespace {

// Server, the client's Proposal names a link we have with its process: lend
// a slot and name it in a (not first contact) Accept. false with `out`
// unset when no slot could be had (a first contact follows instead).
bool link_accept(hs_step& s, int fd, std::shared_ptr<rdma::shm::link> l, const hs_params& p,
                 std::optional<hs_outcome>& out) {
  auto me = take_own(*l, p.rmb_size);
  if (!me) {
    return false;
  }
  // The slot the client lent in its Proposal, if it is one of this link's
  // and still offered for that Proposal's token: then this Accept ends the
  // handshake.
  std::unique_ptr<rdma::shm::remote_side> lent;
  if (s.lent_token != 0 && (s.lent_link_slot >> 32) == l->id()) {
    lent = l->take_peer(s.lent_token, static_cast<uint32_t>(s.lent_link_slot), 0, true);
  }
  rdma::shm::link::offer(*me, me->token);
  const clc::accept_confirm_d acc =
      shm_message(clc::msg_type::accept, false, s.me_id, me->token, me->rmb->size(), l->id(),
                  me->slot, p);
  clc::accept_confirm_d sent = acc;
  if (lent) {
    sent.gid_ext |= clc::took_lent_slot;
  }
  if (!send_all(fd, clc::encode(sent), s.deadline)) {
    l->discard(std::move(me), std::move(lent));
    out = broken(reason::internal);
    return true;
  }
  if (lent) {
    auto path = rdma::shm::make_path(std::move(me), std::move(lent), l);
    if (!path) {
      out = broken(reason::out_of_memory);  // the client believes it is SMC
      return true;
    }
    stats::count_shm_link(true);
    stats::count_shm_lent_first();
    out = smc(std::move(path));
    return true;
  }
  s.token = me->token;
  s.me = std::move(me);
  s.l = std::move(l);
  s.ph = hs_step::phase::confirming;
  s.wait_until = s.deadline + p.timeout_ms;
  return true;
}

// Server, the client's answer to a link's Accept (consumed): its Confirm
// naming the slot it lends, or a Decline.
hs_outcome link_confirm(hs_step& s, int fd, std::span<const uint8_t> reply, const clc::header& h) {
  auto l = std::move(s.l);
  auto me = std::move(s.me);
  if (h.type == clc::msg_type::decline) {
    l->discard(std::move(me), nullptr);
    clc::decline d;
    uint32_t diag = clc::decode(reply, d) == clc::error::ok ? d.diagnosis : 0;
    SMC_LOG(info, "fd %d: client declined after Accept (%s)", fd, decline_code_name(diag));
    return fallback(reason::peer_declined, diag);
  }
  clc::accept_confirm_d conf;
  std::unique_ptr<rdma::shm::remote_side> peer;
  if (h.type == clc::msg_type::confirm && clc::decode(reply, conf) == clc::error::ok &&
      !conf.first_contact && conf.gid == s.me_id && conf.link_id == l->id()) {
    peer = l->take_peer(s.token, slot_of(conf.gid_ext), rmb_code_to_size(conf.dmbe_size_code));
  }
  if (!peer) {
    const std::string dead = l->why_dead();
    SMC_LOG(warn, "fd %d: the client's answer names no slot of link %08x we can have (%s)", fd,
            l->id(), dead.empty() ? "the link lives" : dead.c_str());
    l->discard(std::move(me), nullptr);
    return broken(reason::clc_malformed);  // the client believes it is SMC; we cannot follow
  }
  auto path = rdma::shm::make_path(std::move(me), std::move(peer), l);
  if (!path) {
    return broken(reason::rendezvous_failed);
  }
  stats::count_shm_link(true);
  return smc(std::move(path));
}

}  // namespace

void client_warm_up(const hs_params& p) {
  if (p.transport == config::transport_mode::auto_ || p.transport == config::transport_mode::rdma) {
    smcr::warm_up(p.devices);
  }
}

hs_step_ptr client_propose(int fd, const hs_params& p, hs_outcome& out) {
  const int64_t deadline = now_ms() + p.timeout_ms;
  if (p.transport == config::transport_mode::tcp) {
    out = fallback(reason::transport_tcp);
    return nullptr;
  }
  hs_step_ptr s(new (std::nothrow) hs_step());
  if (!s) {
    out = fallback(reason::out_of_memory);
    return nullptr;
  }
  s->ph = hs_step::phase::proposed;
  s->deadline = s->wait_until = deadline;
  s->me_id = host_id();
  s->want_shm = p.transport != config::transport_mode::rdma;
  s->dest = p.dest;
  if (p.transport != config::transport_mode::shm) {
    s->gid = smcr::local_gid(fd, p.devices);
  }
  if (!s->want_shm && !s->gid) {
    out = fallback(reason::no_smc_dev);  // RDMA asked for, no usable device: no Proposal
    return nullptr;
  }
  clc::proposal prop;
  prop.version = 2;
  prop.typev1 = clc::type_n;
  prop.typev2 = s->want_shm && s->gid ? clc::type_b : (s->gid ? clc::type_r : clc::type_d);
  prop.ueids.push_back(our_eid(p));
  if (s->want_shm) {
    prop.ism_v2.push_back({s->me_id, clc::loopback_chid});
    prop.ism_v2.push_back({rdma::shm::link_key(), clc::link_key_chid});
    lend_first(s->lend, p);
    if (s->lend.me) {
      prop.ism_v2.push_back({(uint64_t{s->lend.l->id()} << 32) | s->lend.me->slot, clc::lend_slot_chid});
      prop.ism_v2.push_back({s->lend.token, clc::lend_token_chid});
    }
  }
  if (s->gid) {
    // Our peer id names this process (its own link groups): the server
    // keys link groups by it, as Linux does.
    prop.peer_id = smcr::system_id(*s->gid);
    prop.mac = s->gid->mac;
    prop.roce_v2_gid = s->gid->gid;
    prop.release = 1;
    prop.max_conns = 255;
    prop.max_links = 1;
  }
  if (!send_all(fd, clc::encode(prop), deadline)) {
    out = broken(reason::internal);  // part of a Proposal may be in the stream
    return nullptr;
  }
  return s;
}

int take_tcp_error(int fd) {
  const int err = std::exchange(t_tcp_err, 0);
  if (err == 0) {
    return 0;
  }
  const int saved = errno;
  const bool same = t_tcp_ino != 0 && socket_ino(fd) == t_tcp_ino;
  errno = saved;
  return same ? err : 0;  // (another socket's, whose outcome went nowhere: dropped)
}

hs_outcome client_handshake(int fd, const hs_params& p) {
  hs_outcome out;
  hs_step_ptr s = client_propose(fd, p, out);
  return s ? hs_finish(*s, fd, p) : std::move(out);
}

namespace {

// Client: the server's answer, if it is there.
step_result client_answer(hs_step& s, int fd, const hs_params& p, bool may_block,
                          hs_outcome& out) {
  uint8_t buf[clc::max_msg_len];
  clc::header h;
  bool prefix = false;
  switch (peek_message(fd, buf, h, mask_reply, prefix)) {
    case peeked::partial:
      if (now_ms() < s.wait_until) {
        s.prefix = prefix;
        return step_result::wait;
      }
      if (s.lend.me && !prefix) {
        if (!s.lend.withdraw()) {
          // The server took the slot we lent: it is SMC already, and its
          // Accept says so. A Decline now would break the connection;
          // wait as long once more, then give up on it.
          if (s.lend_waited) {
            out = broken(reason::clc_timeout);
            return step_result::done;
          }
          s.lend_waited = true;
          s.wait_until = now_ms() + p.timeout_ms;
          return step_result::wait;
        }
      }
      if (prefix) {
        out = broken(reason::clc_timeout);
      } else {
        // No answer at all: tell the server we gave up; its answer may still come.
        send_decline(fd, reason::clc_timeout, now_ms() + p.timeout_ms);
        out = fallback(reason::clc_timeout);
        out.strip_reply = true;
      }
      return step_result::done;
    case peeked::eof:
      out = fallback(reason::peer_closed);  // the application reads the end as on TCP
      return step_result::done;
    case peeked::other:
      out = fallback(reason::no_clc_reply);  // application bytes: leave them for the app
      return step_result::done;
    case peeked::whole:
      break;
  }
  std::span<const uint8_t> msg(buf, h.length);
  clc::accept_confirm_d acc;
  const bool shm_ok = h.type == clc::msg_type::accept && h.typev1 != clc::type_r &&
                      s.want_shm && clc::decode(msg, acc) == clc::error::ok &&
                      acc.type == clc::msg_type::accept;
  if (!may_block && h.type == clc::msg_type::accept &&
      (h.typev1 == clc::type_r || (shm_ok && acc.first_contact))) {
    return step_result::blocking;  // a link or a rendezvous to wait for
  }
  if (!consume(fd, h.length)) {
    out = broken(reason::internal);  // cannot happen after a whole peek, but never guess
    return step_result::done;
  }
  const int64_t deadline = s.deadline;
  auto decline = [&](reason r) {
    send_decline(fd, r, deadline);
    out = fallback(r);
    return step_result::done;
  };
  if (h.type == clc::msg_type::decline) {
    clc::decline d;
    if (clc::decode(msg, d) != clc::error::ok) {
      out = fallback(reason::clc_malformed);
      return step_result::done;
    }
    SMC_LOG(info, "fd %d: server declined SMC (%s 0x%08x)", fd, decline_code_name(d.diagnosis),
            d.diagnosis);
    out = fallback(reason::peer_declined, d.diagnosis);
    return step_result::done;
  }
  if (h.typev1 == clc::type_r) {
    out = client_rdma(fd, std::vector<uint8_t>(msg.begin(), msg.end()), s.gid, p, deadline);
    return step_result::done;
  }
  if (!shm_ok) {
    return decline(reason::clc_malformed);
  }
  if (acc.chid != clc::loopback_chid || acc.gid != s.me_id || acc.token == 0) {
    return decline(reason::no_smc_dev);
  }
  if (acc.eid != our_eid(p)) {
    return decline(reason::no_ueid);
  }
  if (!acc.first_contact) {
    out = client_shm_link(fd, acc, p, deadline, s.me_id, s.lend, s.dest);
    return step_result::done;
  }
  rdma::shm::local_side me;
  if (!me.init(p.rmb_size)) {
    return decline(short_of(reason::out_of_memory));
  }
  const uint64_t my_token = me.token;
  const uint32_t my_size = me.rmb->size();
  rdma::shm::peer_side peer;
  kept_socket kept;
  if (!rdma::shm::rendezvous_connect(acc.gid, acc.link_id, acc.token, me, deadline, peer,
                                     &kept.fd) ||
      peer.rmb_size != rmb_code_to_size(acc.dmbe_size_code) || peer.token != acc.token) {
    SMC_LOG(info, "fd %d: shm rendezvous failed: %s", fd, std::strerror(errno));
    return decline(reason::rendezvous_failed);
  }
  const uint32_t link_id = peer.kept_link;  // the server's id for the link
  auto path = first_contact_path(std::move(me), std::move(peer), kept, link_end::client, link_id,
                                 link_id);
  if (!path) {
    return decline(reason::rendezvous_failed);
  }
  const clc::accept_confirm_d conf = shm_message(clc::msg_type::confirm, acc.first_contact,
                                                 s.me_id, my_token, my_size, acc.link_id, 0, p);
  if (!send_all(fd, clc::encode(conf), deadline)) {
    out = broken(reason::internal);
  } else {
    if (link_id != 0) {
      remember_link(s.dest, link_id);  // (if it did not become a link, nothing finds it)
    }
    out = smc(std::move(path));
  }
  return step_result::done;
}

}  // namespace

namespace {

// peek_clc, also saying whether a need_more has a prefix of a message there.
start_kind peek_clc_prefix(int fd, unsigned type_mask, size_t& msg_len, bool& prefix) {
  uint8_t buf[clc::max_msg_len];
  clc::header h;
  switch (peek_message(fd, buf, h, type_mask, prefix)) {
    case peeked::partial:
      return start_kind::need_more;
    case peeked::eof:
      return start_kind::eof;
    case peeked::other:
      return start_kind::not_clc;
    case peeked::whole:
      break;
  }
  std::span<const uint8_t> m(buf, h.length);
  bool ok = false;
  switch (h.type) {
    case clc::msg_type::proposal: {
      clc::proposal pr;
      ok = clc::decode(m, pr) == clc::error::ok;
      break;
    }
    case clc::msg_type::accept:
    case clc::msg_type::confirm: {
      clc::accept_confirm_d d;
      clc::accept_confirm_r r;
      ok = clc::decode(m, d) == clc::error::ok || clc::decode(m, r) == clc::error::ok;
      break;
    }
    case clc::msg_type::decline: {
      clc::decline d;
      ok = clc::decode(m, d) == clc::error::ok;
      break;
    }
  }
  if (!ok) {
    return start_kind::not_clc;
  }
  msg_len = h.length;
  return start_kind::match;
}

}  // namespace

start_kind peek_clc(int fd, unsigned type_mask, size_t& msg_len) {
  bool prefix = false;
  return peek_clc_prefix(fd, type_mask, msg_len, prefix);
}

start_kind await_clc(int fd, unsigned type_mask, size_t& msg_len, int64_t deadline_ms) {
  for (;;) {
    bool prefix = false;
    start_kind k = peek_clc_prefix(fd, type_mask, msg_len, prefix);
    if (k != start_kind::need_more) {
      return k;
    }
    if (!wait_more(fd, prefix, deadline_ms)) {
      return prefix ? start_kind::not_clc : start_kind::need_more;
    }
  }
}

hs_outcome server_decline(int fd, size_t msg_len, reason why) {
  const int64_t deadline = now_ms() + 1000;
  std::vector<uint8_t> msg(msg_len);
  if (!recv_exact(fd, msg.data(), msg.size(), deadline)) {
    return broken(reason::internal);  // cannot happen after peek_clc matched, but never guess
  }
  SMC_LOG(info, "fd %d: declining SMC (%s)", fd, to_name(why));
  send_decline(fd, why, deadline);
  return fallback(why);
}

bool discard_clc(int fd, size_t msg_len) {
  uint8_t buf[clc::max_msg_len];
  if (msg_len > sizeof(buf)) {
    return false;
  }
  return recv_exact(fd, buf, msg_len, now_ms() + 1000);
}

namespace {

// Server, SMC-R: Accept with our link and buffer, then Confirm, then (first
// contact) the link comes up with CONFIRM LINK.
hs_outcome server_rdma(int fd, const clc::proposal& prop, const rdma::verbs::gid_choice& gid,
                       const hs_params& p, int64_t deadline) {
  auto pend = smcr::server_prepare(gid, prop.peer_id, prop.roce_v2_gid, p.rmb_size);
  if (!pend) {
    send_decline(fd, reason::out_of_memory, deadline);
    return fallback(reason::out_of_memory);
  }
  clc::accept_confirm_r acc;
  acc.type = clc::msg_type::accept;
  smcr::fill_accept_confirm(*pend, acc);
  acc.eid = our_eid(p);
  if (!send_all(fd, clc::encode(acc), deadline)) {
    smcr::abandon(*pend);
    return broken(reason::internal);
  }
  std::vector<uint8_t> reply;
  clc::header h;
  if (const reason r = read_message(fd, reply, h, deadline + p.timeout_ms); r != reason::none) {
    smcr::abandon(*pend);
    return broken(r);
  }
  if (h.type == clc::msg_type::decline) {
    clc::decline d;
    bool ok = clc::decode(reply, d) == clc::error::ok;
    uint32_t diag = ok ? d.diagnosis : 0;
    if (ok && d.out_of_sync) {
      smcr::out_of_sync(*pend);
    } else {
      smcr::abandon(*pend);
    }
    SMC_LOG(info, "fd %d: client declined after Accept (%s)", fd, decline_code_name(diag));
    return fallback(reason::peer_declined, diag);
  }
  clc::accept_confirm_r conf;
  if (h.type != clc::msg_type::confirm || clc::decode(reply, conf) != clc::error::ok ||
      conf.first_contact != acc.first_contact ||
      !smcr::server_complete(*pend, conf, 2 * p.timeout_ms)) {
    smcr::abandon(*pend);
    return broken(reason::clc_malformed);  // the client believes it is SMC; we cannot follow
  }
  return smc(smcr::make_path(std::move(*pend)));
}

}  // namespace

namespace {

// Whether the Proposal offers our own host's shm device (a same-host peer).
bool offers_our_host(const clc::proposal& prop, uint64_t me_id) {
  bool same_host = false;
  if (prop.typev2 == clc::type_d || prop.typev2 == clc::type_b) {
    for (const auto& e : prop.ism_v2) {
      same_host = same_host || (e.chid == clc::loopback_chid && e.gid == me_id);
    }
  }
  return same_host;
}

}  // namespace

bool proposal_wants_rdma(int fd, size_t msg_len, const hs_params& p) {
  std::vector<uint8_t> msg(msg_len);
  clc::proposal prop;
  const ssize_t n = sys().recv(fd, msg.data(), msg.size(), MSG_PEEK | MSG_DONTWAIT);
  if (n != static_cast<ssize_t>(msg.size()) || clc::decode(msg, prop) != clc::error::ok) {
    return false;  // (server_begin finds out and declines)
  }
  return p.transport == config::transport_mode::rdma ||
         (p.transport == config::transport_mode::auto_ && !offers_our_host(prop, host_id()));
}

hs_step_ptr server_begin(int fd, size_t msg_len, const hs_params& p, hs_outcome& out) {
  const int64_t deadline = now_ms() + p.timeout_ms;
  std::vector<uint8_t> msg(msg_len);
  hs_step_ptr s(new (std::nothrow) hs_step());
  if (!s) {
    out = server_decline(fd, msg_len, reason::out_of_memory);
    return nullptr;
  }
  clc::proposal& prop = s->prop;
  if (!recv_exact(fd, msg.data(), msg.size(), deadline) ||
      clc::decode(msg, prop) != clc::error::ok) {
    out = broken(reason::clc_malformed);  // cannot happen after peek_clc matched, but never guess
    return nullptr;
  }
  auto decline = [&](reason r) {
    SMC_LOG(info, "fd %d: declining SMC (%s)", fd, to_name(r));
    send_decline(fd, r, deadline);
    out = fallback(r);
    return nullptr;
  };
  if (p.transport == config::transport_mode::tcp) {
    return decline(reason::transport_tcp);
  }
  s->ph = hs_step::phase::begun;
  s->deadline = s->wait_until = deadline;
  s->me_id = host_id();
  const bool same_host = offers_our_host(prop, s->me_id);
  if (!eid_in(prop.ueids, our_eid(p))) {
    return decline(reason::no_ueid);
  }
  const bool offers_r = (prop.typev2 == clc::type_r || prop.typev2 == clc::type_b) &&
                        prop.roce_v2_gid != clc::gid_t{};
  if (!same_host || p.transport == config::transport_mode::rdma) {
    if (offers_r && p.transport != config::transport_mode::shm) {
      s->gid = smcr::local_gid(fd, p.devices);
    }
    if (!s->gid) {
      return decline(reason::no_smc_dev);
    }
    return s;
  }
  // The client's link key: a link to its process lets us skip the rendezvous.
  // Without one, this first contact's exchange becomes the link (with one
  // that could lend no slot, it stays this connection's own).
  for (const auto& e : prop.ism_v2) {
    s->client_key = e.chid == clc::link_key_chid ? e.gid : s->client_key;
    s->lent_link_slot = e.chid == clc::lend_slot_chid ? e.gid : s->lent_link_slot;
    s->lent_token = e.chid == clc::lend_token_chid ? e.gid : s->lent_token;
  }
  s->want_link = s->client_key != 0;
  return s;
}

hs_outcome server_handshake(int fd, size_t msg_len, const hs_params& p) {
  hs_outcome out;
  hs_step_ptr s = server_begin(fd, msg_len, p, out);
  return s ? hs_finish(*s, fd, p) : std::move(out);
}

namespace {

// Server, shm first contact: Accept naming a rendezvous, the halves swapped
// there, then the client's Confirm (or Decline).
hs_outcome server_first_contact(hs_step& s, int fd, const hs_params& p) {
  const int64_t deadline = s.deadline;
  rdma::shm::local_side me;
  rdma::shm::rendezvous rv;
  auto decline = [&](reason r) {
    SMC_LOG(info, "fd %d: declining SMC (%s)", fd, to_name(r));
    send_decline(fd, r, deadline);
    return fallback(r);
  };
  if (!me.init(p.rmb_size)) {
    return decline(short_of(reason::out_of_memory));
  }
  if (!rv.open(s.me_id)) {
    return decline(reason::rendezvous_failed);
  }
  const clc::accept_confirm_d acc = shm_message(clc::msg_type::accept, true, s.me_id, me.token,
                                                me.rmb->size(), rv.link_id(), 0, p);
  if (!send_all(fd, clc::encode(acc), deadline)) {
    return broken(reason::internal);
  }
  rdma::shm::peer_side peer;
  kept_socket kept;
  const uint32_t link_id = rdma::shm::new_link_id();
  bool exchanged = rv.serve(me, deadline, fd, peer, s.want_link ? &kept.fd : nullptr, link_id);
  // After our Accept exactly one more CLC message comes: Confirm or Decline.
  std::vector<uint8_t> reply;
  clc::header h;
  if (const reason r = read_message(fd, reply, h, deadline + p.timeout_ms); r != reason::none) {
    return broken(r);
  }
  if (h.type == clc::msg_type::decline) {
    clc::decline d;
    uint32_t diag = clc::decode(reply, d) == clc::error::ok ? d.diagnosis : 0;
    SMC_LOG(info, "fd %d: client declined after Accept (%s)", fd, decline_code_name(diag));
    return fallback(reason::peer_declined, diag);
  }
  clc::accept_confirm_d conf;
  if (h.type != clc::msg_type::confirm || clc::decode(reply, conf) != clc::error::ok ||
      !exchanged || conf.gid != s.me_id || conf.token != peer.token ||
      conf.link_id != acc.link_id || rmb_code_to_size(conf.dmbe_size_code) != peer.rmb_size) {
    return broken(reason::clc_malformed);  // the client believes it is SMC; we cannot follow
  }
  auto path = first_contact_path(std::move(me), std::move(peer), kept, link_end::server,
                                 s.client_key, link_id);
  if (!path) {
    return broken(reason::rendezvous_failed);
  }
  return smc(std::move(path));
}

// Server, after a link's Accept: the client's Confirm or Decline, if it is there.
step_result server_confirm(hs_step& s, int fd, hs_outcome& out) {
  uint8_t buf[clc::max_msg_len];
  clc::header h;
  bool prefix = false;
  const unsigned mask = (1u << static_cast<unsigned>(clc::msg_type::confirm)) |
                        (1u << static_cast<unsigned>(clc::msg_type::decline));
  switch (peek_message(fd, buf, h, mask, prefix)) {
    case peeked::partial:
      if (now_ms() < s.wait_until) {
        s.prefix = prefix;
        return step_result::wait;
      }
      s.l->discard(std::move(s.me), nullptr);
      out = broken(reason::clc_timeout);
      return step_result::done;
    case peeked::eof:
      s.l->discard(std::move(s.me), nullptr);
      out = broken(reason::peer_closed);  // what it had sent is nobody's any more
      return step_result::done;
    case peeked::other:
      s.l->discard(std::move(s.me), nullptr);
      out = broken(reason::clc_malformed);  // the client believes it is SMC; we cannot follow
      return step_result::done;
    case peeked::whole:
      break;
  }
  if (!consume(fd, h.length)) {
    s.l->discard(std::move(s.me), nullptr);
    out = broken(reason::internal);
    return step_result::done;
  }
  out = link_confirm(s, fd, {buf, h.length}, h);
  return step_result::done;
}

}  // namespace

step_result hs_advance(hs_step& s, int fd, const hs_params& p, bool may_block, hs_outcome& out) {
  switch (s.ph) {
    case hs_step::phase::proposed:
      return client_answer(s, fd, p, may_block, out);
    case hs_step::phase::confirming:
      return server_confirm(s, fd, out);
    case hs_step::phase::begun:
      break;
  }
  if (s.gid) {
    if (!may_block) {
      return step_result::blocking;
    }
    out = server_rdma(fd, s.prop, *s.gid, p, s.deadline);
    return step_result::done;
  }
  if (s.want_link) {
    if (auto l = rdma::shm::find_link(link_end::server, s.client_key)) {
      std::optional<hs_outcome> failed;
      if (link_accept(s, fd, std::move(l), p, failed)) {
        if (failed) {
          out = std::move(*failed);
          return step_result::done;
        }
        return step_result::wait;
      }
      s.want_link = false;  // it could lend no slot: this first contact stays our own
    }
  }
  if (!may_block) {
    return step_result::blocking;
  }
  out = server_first_contact(s, fd, p);
  return step_result::done;
}

hs_outcome hs_finish(hs_step& s, int fd, const hs_params& p) {
  for (;;) {
    hs_outcome out;
    s.prefix = false;
    if (hs_advance(s, fd, p, true, out) == step_result::done) {
      return out;
    }
    wait_more(fd, s.prefix, s.wait_until);  // (past it, the next look ends the step)
  }
}

uint64_t dest_key(const sockaddr* addr, socklen_t len) {
  if (addr == nullptr || len <= 0) {
    return 0;
  }
  // FNV-1a over the family, address and port (not sin6's flow info).
  uint64_t h = fnv1a_basis;
  auto mix = [&h](const void* p, size_t n) { h = fnv1a(h, p, n); };
  if (addr->sa_family == AF_INET && len >= static_cast<socklen_t>(sizeof(sockaddr_in))) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(addr);
    mix(&a->sin_family, sizeof a->sin_family);
    mix(&a->sin_addr, sizeof a->sin_addr);
    mix(&a->sin_port, sizeof a->sin_port);
  } else if (addr->sa_family == AF_INET6 && len >= static_cast<socklen_t>(sizeof(sockaddr_in6))) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(addr);
    mix(&a->sin6_family, sizeof a->sin6_family);
    mix(&a->sin6_addr, sizeof a->sin6_addr);
    mix(&a->sin6_port, sizeof a->sin6_port);
    mix(&a->sin6_scope_id, sizeof a->sin6_scope_id);
  } else {
    return 0;
  }
  return h == 0 ? 1 : h;
}

hs_outcome hs_abandon(hs_step& s, int fd, reason why) {
  const int64_t deadline = now_ms() + 1000;
  if (s.ph == hs_step::phase::confirming) {
    return broken(why);  // (our Accept is out: never the case, no thread is asked for then)
  }
  if (s.ph == hs_step::phase::proposed) {
    // The server's Accept waits for us: take it, then decline.
    uint8_t buf[clc::max_msg_len];
    clc::header h;
    bool prefix = false;
    if (peek_message(fd, buf, h, mask_reply, prefix) != peeked::whole || !consume(fd, h.length)) {
      return broken(why);
    }
    clc::accept_confirm_d acc;
    if (h.type == clc::msg_type::accept && h.typev1 != clc::type_r &&
        clc::decode({buf, h.length}, acc) == clc::error::ok &&
        (acc.gid_ext & clc::took_lent_slot) != 0) {
      return broken(why);  // the server took the slot we lent: it is SMC already
    }
  }
  SMC_LOG(info, "fd %d: declining SMC (%s)", fd, to_name(why));
  send_decline(fd, why, deadline);
  return fallback(why);
}

}  // namespace smc::core
