// Same-host links: slots reused between two processes. See shm_link.h.
#include "rdma/shm/shm_link.h"

#include <poll.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <deque>
#include <mutex>
#include <new>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "rdma/sys.h"

namespace smc::rdma::shm {

namespace {

// One fixed-size message per seqpacket record.
constexpr uint32_t msg_magic = 0x534d4c4bu;  // "SMLK"
enum : uint32_t {
  m_new_slot = 1,   // owner -> peer: slot `slot` of `size` bytes; fds: RMB, rx ring, tx ring
                    // (2: not used)
  m_drop_own = 3,   // owner -> peer: I destroyed my slot `slot`: unmap it
  m_drop_peer = 4,  // peer -> owner: I unmapped your slot `slot` (never released to you)
};
struct link_msg {
  uint32_t magic;
  uint32_t kind;
  uint64_t token;
  uint32_t slot;
  uint32_t size;
};

constexpr size_t max_links = 64;        // per process; the least recently used goes
constexpr size_t max_fresh = 64;        // peer slots announced, not yet used (one per
                                        // handshake in flight)
constexpr int max_fresh_all = 512;      // the same, on all links of the process
constexpr size_t max_own_slots = 512;    // our slots on one link (lent, idle, closing)
constexpr size_t max_peer_slots = 1024;  // peer slots known on one link (its own bound,
                                         // and slots it destroyed while lent)
constexpr size_t max_closing = 256;     // our slots ended here, not released yet
constexpr int pump_batch = 256;         // messages taken in one look
constexpr uint32_t pump_every = 8;      // connections between two looks at the link
                                        // when nothing is missing (its drops)
constexpr int own_fds = 4;              // state page, RMB, two doorbells
constexpr int peer_fds = 3;             // the peer's RMB and two ringing ends

std::atomic<uint32_t> g_gen{1};
std::atomic<int> g_fresh{0};

// fds held by idle slots of every link, against a share of RLIMIT_NOFILE.
std::atomic<int> g_idle_fds{0};
int idle_budget() {
  static const int b = [] {
    const long soft = nofile_soft_limit();
    return static_cast<int>(std::clamp((soft < 0 ? 1024L : soft) / 8, 48L, 8192L));
  }();
  return b;
}
bool charge(int n) {
  int cur = g_idle_fds.load(std::memory_order_relaxed);
  do {
    if (cur + n > idle_budget()) {
      return false;
    }
  } while (!g_idle_fds.compare_exchange_weak(cur, cur + n, std::memory_order_relaxed));
  return true;
}
void refund(int n) { g_idle_fds.fetch_sub(n, std::memory_order_relaxed); }

}  // namespace

struct link::state {
  std::mutex mu;
  int fd = -1;  // -1 once dead
  const char* why = nullptr;  // what ended it, and the errno then
  int why_errno = 0;
  uint32_t next_slot = 2;
  std::vector<std::unique_ptr<local_side>> free;     // released by the peer (charged)
  std::deque<std::unique_ptr<local_side>> closing;   // ended here, not released yet (charged)
  std::unordered_set<uint32_t> own_lent;
  std::unordered_set<uint32_t> own_doomed;  // the peer unmapped them while lent
  struct peer_entry {
    std::unique_ptr<remote_side> half;
    bool charged = false;  // idle after a connection (else fresh: announced, unused)
  };
  std::unordered_map<uint32_t, peer_entry> peer_idle;
  std::unordered_set<uint32_t> peer_lent;
  std::unordered_set<uint32_t> peer_doomed;  // the owner destroyed them while lent
  uint32_t lookups = 0;

  bool send(uint32_t kind, uint64_t token, uint32_t slot, uint32_t size, const int* fds = nullptr,
            size_t nfds = 0) {
    if (fd < 0) {
      return false;
    }
    link_msg m{msg_magic, kind, token, slot, size};
    if (!send_with_fds(fd, &m, sizeof m, fds, nfds)) {
      kill("a message to the peer failed", errno);  // gone, or reads nothing any more
      return false;
    }
    return true;
  }

  void kill(const char* cause, int err = 0) {
    if (fd >= 0) {
      why = cause;
      why_errno = err;
      close_shared_unix(fd);
      fd = -1;
    }
    refund(static_cast<int>(free.size() + closing.size()) * own_fds);
    free.clear();
    closing.clear();
    for (auto& [slot, e] : peer_idle) {
      uncount(e);
    }
    peer_idle.clear();
  }

  // What an idle entry held against the bounds, given back as it goes.
  static void uncount(const peer_entry& e) {
    if (e.charged) {
      refund(peer_fds);
    } else {
      g_fresh.fetch_sub(1, std::memory_order_relaxed);
    }
  }

  size_t fresh_count() const {
    size_t n = 0;
    for (const auto& [slot, e] : peer_idle) {
      n += e.charged ? 0 : 1;
    }
    return n;
  }

  // A slot the peer announces: mapped and checked as a rendezvous's hello.
  bool take_new_slot(const link_msg& m, std::vector<int>& fds) {
    if (fds.size() != 3 || m.slot == 0 || peer_idle.count(m.slot) != 0 ||
        peer_lent.count(m.slot) != 0 || peer_idle.size() + peer_lent.size() >= max_peer_slots ||
        fresh_count() >= max_fresh || g_fresh.load(std::memory_order_relaxed) >= max_fresh_all ||
        !ring_size_ok(m.size) || !check_ring(fds[1]) || !check_ring(fds[2])) {
      return false;
    }
    tame_ring(fds[1]);
    tame_ring(fds[2]);
    peer_side p;
    p.rmb_fd = fds[0];
    p.rx_ring = fds[1];
    p.tx_ring = fds[2];
    p.rmb_size = m.size;
    fds.clear();  // owned by p (and then by the half) from here
    auto half = remote_side::take(std::move(p));
    if (!half || half->rmb->ctl()->magic != control_magic) {
      return false;
    }
    half->slot = m.slot;
    peer_idle[m.slot] = peer_entry{std::move(half), false};
    g_fresh.fetch_add(1, std::memory_order_relaxed);
    return true;
  }

  // The owner destroyed its slot.
  void drop_peer_slot(uint32_t slot) {
    auto it = peer_idle.find(slot);
    if (it != peer_idle.end()) {
      uncount(it->second);
      peer_idle.erase(it);
    } else if (peer_lent.count(slot) != 0) {
      peer_doomed.insert(slot);
    }
  }

  // The peer unmapped our slot, which it never released to us (so we never
  // lent it since): destroyed now, or when its connection here ends.
  void drop_own_slot(uint32_t slot) {
    auto match = [slot](const std::unique_ptr<local_side>& s) { return s->slot == slot; };
    if (auto it = std::find_if(free.begin(), free.end(), match); it != free.end()) {
      free.erase(it);
      refund(own_fds);
    } else if (auto c = std::find_if(closing.begin(), closing.end(), match); c != closing.end()) {
      closing.erase(c);
      refund(own_fds);
    } else if (own_lent.count(slot) != 0) {
      own_doomed.insert(slot);
    }
  }

  // Our slot back from a connection: idle again if it may be reused, on
  // `free` when the peer never had it or released it, else on `closing`
  // until it does; otherwise (or out of memory for the list entry)
  // destroyed and the peer told, unless it unmapped it already.
  void return_own(std::unique_ptr<local_side> me, bool reusable, bool released) noexcept {
    const uint32_t slot = me->slot;
    own_lent.erase(slot);
    const bool doomed = own_doomed.erase(slot) != 0;  // the peer unmapped it
    bool kept = false;
    if (reusable && fd >= 0 && !doomed && charge(own_fds)) {
      try {
        if (released) {
          free.push_back(std::move(me));
        } else {
          closing.push_back(std::move(me));
        }
        kept = true;
      } catch (...) {
        refund(own_fds);
      }
    }
    if (kept) {
      if (!released && closing.size() > max_closing) {
        const uint32_t old = closing.front()->slot;
        closing.pop_front();
        refund(own_fds);
        send(m_drop_own, 0, old, 0);
      }
      return;
    }
    const bool tell = fd >= 0 && !doomed;
    me.reset();
    if (tell) {
      send(m_drop_own, 0, slot, 0);
    }
  }

  // A well-formed announcement of a new slot (whose take may still fail).
  static bool is_announcement(const link_msg& m) { return m.magic == msg_magic && m.kind == m_new_slot; }

  // Takes what the peer sent so far. False when the link is (now) dead.
  bool pump() {
    for (int i = 0; i < pump_batch && fd >= 0; ++i) {
      link_msg m{};
      std::vector<int> fds;
      bool truncated = false;
      const ssize_t n = recv_with_fds(fd, &m, sizeof m, fds, truncated);
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        return true;
      }
      if (n < 0 && errno == EINTR) {
        continue;
      }
      bool ok = n == static_cast<ssize_t>(sizeof m) && !truncated && m.magic == msg_magic;
      if (ok) {
        switch (m.kind) {
          case m_new_slot:
            ok = take_new_slot(m, fds);
            break;
          case m_drop_own:
            ok = fds.empty();
            drop_peer_slot(m.slot);
            break;
          case m_drop_peer:
            ok = fds.empty();
            drop_own_slot(m.slot);
            break;
          default:
            ok = false;
        }
      }
      const int err = n < 0 ? errno : 0;
      for (int f : fds) {
        close_untrusted(f);
      }
      if (!ok) {  // gone (0 bytes: end of file), failed, or broke the protocol
        const char* cause = n == 0                ? "the peer hung up"
                            : n < 0               ? "reading the link failed"
                            : is_announcement(m) ? "the peer announced a slot we cannot take"
                                                  : "the peer broke the link protocol";
        kill(cause, err);
        return false;
      }
    }
    return fd >= 0;
  }
};

link::link(int sock, uint32_t id)
    : st_(new state()), gen_(g_gen.load(std::memory_order_relaxed)), id_(id) {
  st_->fd = sock;
  st_->own_lent.insert(1);
  st_->peer_lent.insert(1);
}

link::~link() { st_->kill("ended"); }

bool link::alive() {
  std::lock_guard<std::mutex> g(st_->mu);
  return st_->fd >= 0 && gen_ == g_gen.load(std::memory_order_relaxed);
}

void link::retire() {
  std::lock_guard<std::mutex> g(st_->mu);
  st_->kill("retired");
}

std::string link::why_dead() const {
  std::lock_guard<std::mutex> g(st_->mu);
  if (st_->fd >= 0) {
    return gen_ == g_gen.load(std::memory_order_relaxed) ? "" : "a fork retired it";
  }
  std::string w = st_->why != nullptr ? st_->why : "ended";
  if (st_->why_errno != 0) {
    w += std::string(": ") + std::strerror(st_->why_errno);
  }
  return w;
}

int link::fd_for_poll() const {
  std::lock_guard<std::mutex> g(st_->mu);
  return st_->fd;
}

std::unique_ptr<local_side> link::take_own(uint32_t rmb_size) {
  std::lock_guard<std::mutex> g(st_->mu);
  state& s = *st_;
  if (gen_ != g_gen.load(std::memory_order_relaxed) || s.fd < 0) {
    errno = ENOTCONN;
    return nullptr;
  }
  for (auto it = s.closing.begin(); it != s.closing.end();) {
    if ((*it)->rmb->ctl()->released.load(std::memory_order_acquire) != 0) {
      s.free.push_back(std::move(*it));
      it = s.closing.erase(it);
    } else {
      ++it;
    }
  }
  while (!s.free.empty()) {
    auto it = std::find_if(s.free.begin(), s.free.end(), [rmb_size](const auto& f) {
      return f->rmb->size() == rmb_size;
    });
    if (it == s.free.end()) {
      break;
    }
    std::unique_ptr<local_side> me = std::move(*it);
    s.free.erase(it);
    refund(own_fds);
    if (!me->reset_for_reuse()) {
      s.send(m_drop_own, 0, me->slot, 0);  // its doorbell was flooded: never again
      continue;
    }
    s.own_lent.insert(me->slot);
    return me;
  }
  // More would break the peer's bound on the slots it knows (the link
  // would be dropped): this connection goes without the link instead.
  if (s.own_lent.size() + s.free.size() + s.closing.size() >= max_own_slots) {
    errno = ENOSPC;
    return nullptr;
  }
  std::unique_ptr<local_side> me(new (std::nothrow) local_side());
  if (!me) {
    errno = ENOMEM;
    return nullptr;
  }
  if (!me->init(rmb_size)) {
    return nullptr;
  }
  me->slot = s.next_slot++;
  const int fds[3] = {me->rmb->fd(), me->rx_bell_ring, me->tx_bell_ring};
  if (!s.send(m_new_slot, 0, me->slot, rmb_size, fds, 3)) {
    errno = ENOTCONN;
    return nullptr;
  }
  // The peer has the ringing ends now; nothing else rings our doorbells.
  for (int* ring : {&me->rx_bell_ring, &me->tx_bell_ring}) {
    sys().close(std::exchange(*ring, -1));
  }
  s.own_lent.insert(me->slot);
  return me;
}

void link::offer(local_side& me, uint64_t token) {
  me.rmb->ctl()->offer.store(token, std::memory_order_release);
}

namespace {
// What a claimed offer reads (no token is 1: shm_link's lent tokens have
// their top bit set, server tokens are random or counted from a random
// start, and a collision only costs that connection its slot).
constexpr uint64_t offer_claimed = 1;
}  // namespace

bool link::withdraw(local_side& me, uint64_t token) {
  return me.rmb->ctl()->offer.compare_exchange_strong(token, 0, std::memory_order_acq_rel);
}

void link::put_back(std::unique_ptr<local_side> me) noexcept {
  if (!me || gen_ != g_gen.load(std::memory_order_relaxed)) {
    return;  // (a fork retired the link: the slot is simply destroyed)
  }
  std::lock_guard<std::mutex> g(st_->mu);
  st_->return_own(std::move(me), true, true);
}

std::unique_ptr<remote_side> link::take_peer(uint64_t token, uint32_t slot, uint32_t rmb_size,
                                             bool claim) {
  std::lock_guard<std::mutex> g(st_->mu);
  state& s = *st_;
  auto it = s.peer_idle.find(slot);
  // A slot we do not know yet came over the link before the CLC message
  // that names it; and the link is looked at now and then anyway (drops).
  const bool look = it == s.peer_idle.end() || ++s.lookups % pump_every == 0;
  if (gen_ != g_gen.load(std::memory_order_relaxed) || s.fd < 0 || (look && !s.pump())) {
    errno = ENOTCONN;
    return nullptr;
  }
  it = s.peer_idle.find(slot);
  // The offer is in the slot's own control page, which only its owner and
  // we can write: a third process that names the slot gets nothing.
  if (it == s.peer_idle.end() || (rmb_size != 0 && it->second.half->rmb->size() != rmb_size)) {
    errno = EPROTO;
    return nullptr;
  }
  auto& offer = it->second.half->rmb->ctl()->offer;
  uint64_t expected = token;
  if (claim ? !offer.compare_exchange_strong(expected, offer_claimed, std::memory_order_acq_rel)
            : offer.load(std::memory_order_acquire) != token) {
    errno = EPROTO;
    return nullptr;
  }
  state::uncount(it->second);
  std::unique_ptr<remote_side> half = std::move(it->second.half);
  s.peer_idle.erase(it);
  s.peer_lent.insert(slot);
  return half;
}

void link::discard(std::unique_ptr<local_side> me, std::unique_ptr<remote_side> peer) noexcept {
  give_back(std::move(me), std::move(peer), false);
}

void link::give_back(std::unique_ptr<local_side> me, std::unique_ptr<remote_side> peer,
                     bool reusable) noexcept {
  if (gen_ != g_gen.load(std::memory_order_relaxed)) {
    return;  // a fork retired the link: the halves are simply destroyed
  }
  std::lock_guard<std::mutex> g(st_->mu);
  state& s = *st_;
  const bool live = s.fd >= 0;
  try {
    if (peer) {
      const uint32_t slot = peer->slot;
      s.peer_lent.erase(slot);
      const bool doomed = s.peer_doomed.erase(slot) != 0;
      if (reusable && live && !doomed && charge(peer_fds)) {
        // We never write its RMB or ring its doorbells again: its owner may
        // lend it to our next connection.
        peer->rmb->ctl()->released.store(1, std::memory_order_release);
        s.peer_idle[slot] = state::peer_entry{std::move(peer), true};
      } else {
        // Not released, so its owner never lends it again: unmapped now,
        // and the owner told to destroy it.
        peer.reset();
        if (live && !doomed) {
          s.send(m_drop_peer, 0, slot, 0);
        }
      }
    }
    if (me) {
      s.return_own(std::move(me), reusable, false);
    }
  } catch (...) {
    // Out of memory for a table entry: the halves are destroyed below.
  }
}

// ---- the process's links ----

namespace {

struct entry {
  link_end end;
  uint64_t key;
  std::shared_ptr<link> l;
  uint64_t used;
};

std::mutex g_mu;
uint64_t g_key = 0;
uint64_t g_tick = 0;
// Never destroyed (links may be given back to from exit-time destructors).
std::vector<entry>& links() {
  static auto* v = new std::vector<entry>();
  return *v;
}

// Drops links that are dead, retired by a fork, or whose peer hung up.
void sweep_locked() {
  auto& v = links();
  std::vector<pollfd> p;
  p.reserve(v.size());
  for (const auto& e : v) {
    p.push_back({e.l->fd_for_poll(), 0, 0});
  }
  if (!p.empty()) {
    sys().poll(p.data(), p.size(), 0);
  }
  size_t k = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    const bool hung_up = p[i].fd < 0 || (p[i].revents & (POLLHUP | POLLERR | POLLNVAL)) != 0;
    if (hung_up || !v[i].l->alive()) {
      v[i].l->retire();
      continue;
    }
    v[k++] = std::move(v[i]);
  }
  v.resize(k);
}

}  // namespace

// 64 bits that need be unpredictable only to processes that see none of
// our Proposals, and must never wait: getrandom() without blocking (a freshly
// booted host may not have its pool ready, and a Proposal that waits for it
// comes too late), else the clock, our pid and an address, mixed.
namespace {
uint64_t quick_random() {
  uint64_t v = 0;
  if (getrandom(&v, sizeof v, GRND_NONBLOCK) != static_cast<ssize_t>(sizeof v)) {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    v = static_cast<uint64_t>(ts.tv_nsec) ^ (static_cast<uint64_t>(ts.tv_sec) << 30) ^
        (static_cast<uint64_t>(getpid()) << 40) ^ reinterpret_cast<uintptr_t>(&v);
    v ^= v >> 30;  // splitmix64's finaliser
    v *= 0xbf58476d1ce4e5b9ULL;
    v ^= v >> 27;
    v *= 0x94d049bb133111ebULL;
    v ^= v >> 31;
  }
  return v;
}
}  // namespace

uint64_t link_key() {
  std::lock_guard<std::mutex> g(g_mu);
  while (g_key == 0 || static_cast<uint32_t>(g_key) == 0) {
    g_key = quick_random();
  }
  return g_key;
}

std::shared_ptr<link> find_link(link_end end, uint64_t key) {
  std::lock_guard<std::mutex> g(g_mu);
  auto& v = links();
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i].end != end || v[i].key != key) {
      continue;
    }
    if (!v[i].l->alive()) {
      v[i].l->retire();
      v.erase(v.begin() + static_cast<long>(i));
      return nullptr;
    }
    v[i].used = ++g_tick;
    return v[i].l;
  }
  return nullptr;
}

uint32_t new_link_id() {
  uint32_t id = 0;
  while (id == 0) {
    id = static_cast<uint32_t>(quick_random());
  }
  return id;
}

std::shared_ptr<link> add_link(link_end end, uint64_t key, int sock, uint32_t id) {
  std::shared_ptr<link> l;
  try {
    l = std::make_shared<link>(sock, id);
  } catch (...) {
    close_shared_unix(sock);
    return nullptr;
  }
  std::lock_guard<std::mutex> g(g_mu);
  try {
    sweep_locked();
    auto& v = links();
    for (const auto& e : v) {
      if (e.end == end && e.key == key) {
        return l;  // a live link has the key: this one serves its first connection only
      }
    }
    if (v.size() >= max_links) {
      auto lru = std::min_element(v.begin(), v.end(),
                                  [](const entry& a, const entry& b) { return a.used < b.used; });
      lru->l->retire();
      v.erase(lru);
    }
    v.push_back(entry{end, key, l, ++g_tick});
  } catch (...) {
  }
  return l;
}

void lock_for_fork() { g_mu.lock(); }

void after_fork(bool child) {
  g_gen.fetch_add(1, std::memory_order_relaxed);
  g_key = 0;
  std::vector<entry> old;
  old.swap(links());
  g_mu.unlock();
  if (child) {
    // Their sockets are shared with the parent: the child only lets go of
    // its copies (a link nobody else holds is closed by its destructor).
    for (auto& e : old) {
      e.l.reset();
    }
  }
  // The parent's old links end once their last connection does.
}

}  // namespace smc::rdma::shm
