// epoll over sets that hold SMC sockets.
//
// An SMC socket's own kernel readiness is that of an idle TCP socket, so
// what the application registered is not what the kernel watches. For each
// registration we put the connection's doorbells (and its TCP socket, for
// the peer's death) into the application's set ourselves, under data
// values of our own: the address of the registration (no application data
// can equal the address of an object of ours) with a tag in its low bits.
// epoll_wait() turns those events into the application's, with its own
// epoll_data and events computed from the connection state, and passes the
// kernel's other events through as they are, in the same call.
//
// A set learns readiness in one of two ways:
//
// - From memory (the default). The doorbells are watched edge-triggered;
//   a ring wakes the set once, the connection's state says what is ready,
//   and the doorbell is re-armed by clearing its rung flag (drained only
//   every few rings). Registrations just added or modified are on the
//   set's check list, ones that were reported are "hot" (edge-triggered
//   ones report again only when the connection moved since):
//   both are looked at in memory at the start of every epoll_wait(), before
//   the kernel; so a level that holds, an EPOLL_CTL_MOD, or the DEL and ADD
//   an event loop makes around every reply cost no system call. A hot
//   registration declares its waiters only while a thread sleeps on the
//   set (the peer rings nobody awake), and a wait busy-polls the hot ones
//   for SMC_SPIN_US before it sleeps. What memory finds is reported
//   without the kernel 8 times in a row at most; then the kernel's events
//   get their turn, so kernel fds in the set are never starved.
// - Truthful kernel levels ("classic"), for a set whose kernel readiness
//   somebody else reads: one nested in another epoll set, one given to
//   poll()/select(), and a set a forked child waits on. The doorbells are
//   watched with the application's own triggering and drained when their
//   condition is gone (by the reads and writes that end it, too), and each
//   registration has a level of its own, an eventfd in the set that the
//   connection's state sets and clears (level_make): ready at registration,
//   or after a drain elsewhere took the ring, without a ring of ours.
//
// Sockets that may still become SMC (fresh, not yet connected: nginx and
// twemproxy register their upstream sockets before connect(); connecting;
// accepted and undecided) are watched through their TCP socket, with the
// kernel's readiness reported as it is; when they settle on plain TCP (or
// become listeners) their registration becomes a normal kernel registration
// of the application's. So whatever the application did with the socket
// before the decision (ADD, MOD, DEL, ONESHOT, ET) keeps its meaning after
// it. Between the steps of its handshake (state::stepping) its TCP socket
// is watched for the peer's next message only, and nothing is reported;
// while the handshake runs in the background (state::deciding) a socket is
// not watched at all: the end of the decision re-installs it.
//
// A set also knows the receive channels of its SMC-R connections' link groups
// (data_path::channel). A blocking epoll_wait that finds nothing ready sleeps
// on the set and on those channels at once, and dispatches what a channel
// brings itself; the doorbells that dispatch rings make the set ready. So a
// message wakes the application's thread only, not the engine thread first
// (which the channel's begin/end keeps out of it while this thread sleeps).
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "core/busy_wait.h"
#include "core/log.h"
#include "core/stats.h"
#include "core/wait_policy.h"
#include "preload/preload.h"
#include "rdma/sys.h"
#include "rdma/transport.h"

using namespace smc::preload;

namespace smc::preload {

// A receive channel some registrations of the set share (see above).
struct ep_chan {
  std::shared_ptr<rdma::direct_channel> ch;
  int fd = -1;
  int uses = 0;
};

// A set's watch of a same-host slot's doorbell, kept from one connection
// over the slot to the next (see bell_attach): a new connection with the
// same peer then costs the set no EPOLL_CTL_ADD and DEL for its doorbells.
struct ep_bell {
  ep_set* set = nullptr;
  int fd = -1;
  uint64_t id = 0;        // data_path::bells_id() of the doorbell watched; 0: none
  unsigned forks = 0;     // g_forks when its watch was last put in place
  ep_reg* reg = nullptr;  // the registration it serves now, or none (idle)
  uint32_t tag = 0;       // which of reg's watches it is (tag_rx, tag_tx)
  bool listed = false;    // in g_idle_bells
};

struct ep_set {
  int epfd = -1;
  bool classic = false;     // kernel levels kept true (see the top of the file)
  unsigned fork_gen = 0;    // the process generation that made it
  bool closing = false;     // the application's set is being closed: no DELs
  int sleepers = 0;         // threads in a kernel wait that may block
  core::memory_turns turns; // waits answered from memory alone in a row (the kernel's turn)
  uint64_t gen = 0;         // numbers each wait (one report per registration)
  std::vector<ep_reg*> regs;
  std::unordered_set<ep_reg*> live;  // pointers from the kernel are checked against this
  std::vector<ep_reg*> check;        // looked at in memory first (from memory only)
  std::vector<ep_reg*> hot;          // busy: looked at by every wait (from memory only)
  bool hot_armed = false;            // their waiters are declared (a thread sleeps)
  std::vector<ep_chan> chans;
  // Kept doorbell watches by fd (from memory only). Never freed before the
  // set: a watch the kernel may still hold (its file outlived our fd in a
  // forked child) can only ever report on whatever its object serves now.
  std::unordered_map<int, ep_bell*> bells;
  std::unordered_set<ep_bell*> bell_live;  // pointers from the kernel are checked against this
  // From memory: what connections wake the set with when they change by
  // themselves or a drain took a ring meant for it (core/wake.h), made with
  // the first registration that needs it, and its watch (edge-triggered,
  // under a tag_bell of its own). The registrations their connections
  // woke wait in `kicked` (its own lock: connections add to it while
  // kicking, under their locks) for the set's next look.
  std::unique_ptr<core::wake_fd> wake;
  bool wake_failed = false;
  ep_bell wake_bell;
  std::mutex kick_mu;
  std::vector<ep_reg*> kicked;
  std::atomic<bool> any_kicked{false};
  // Same-host registrations that declare waiters without being on their
  // connection's list (no wake or level fd could be made: a confined
  // process, or no fd left): nothing but the peer rings their doorbells,
  // so the set's waits look at them in memory every core::look_every_ms.
  int unlisted = 0;
};

struct ep_reg {
  ep_set* set = nullptr;
  entry* e = nullptr;  // holds a reference
  int fd = -1;
  epoll_event ev{};    // the application's events and data
  int items[3] = {-1, -1, -1};  // fds added to the set: tcp socket, rx doorbell, tx doorbell
  ep_bell* bell[3] = {nullptr, nullptr, nullptr};  // kept watches behind items (doorbells only)
  bool armed_rx = false;
  bool armed_tx = false;
  bool disabled = false;  // EPOLLONESHOT fired (until EPOLL_CTL_MOD), or parked
  bool in_check = false;  // on set->check
  bool parked = false;    // deleted by the application, watches kept for its next ADD
  bool hot = false;       // on set->hot
  uint16_t cold_looks = 0;  // looks in a row that found it not ready (while hot)
  uint64_t last_act = ~uint64_t{0};  // the connection's activity() when last reported
  bool level_watch = false;  // counted in its conn's watch_level (a classic set's)
  uint8_t idle_rings = 0; // rings in a row that found nothing ready (from memory)
  uint64_t seen_gen = 0;  // the last wait that reported it
  int chan_fd = -1;       // the set's ep_chan this registration uses
  int kept_sock = -1;     // reinstall: the socket's watch left in the set for install to MOD
  uint32_t sock_events = 0;  // what the socket's watch (items[tag_sock]) asks for
  uint32_t sock_seen = 0;    // what the kernel reported for that watch since it was put in place
  core::waiter hook;      // on its connection's list while armed (with a set wake, or a level)
  bool kicked = false;    // on set->kicked (under set->kick_mu)
  bool unlisted = false;  // counted in set->unlisted
  // A classic set's SMC registration: its level (see level_make), watched
  // with the application's triggering under level_bell, and the process
  // generation that made it.
  std::unique_ptr<core::wake_fd> level;
  ep_bell level_bell;
  unsigned level_gen = 0;
};

namespace {

std::mutex g_ep_mu;
constexpr uint32_t tag_sock = 0;
constexpr uint32_t tag_rx = 1;
constexpr uint32_t tag_tx = 2;
constexpr uint32_t tag_bell = 3;  // an ep_bell, not an ep_reg
// What a registration's level fired as (only among the tags of `fired`:
// its watch goes under tag_bell, with its ep_bell).
constexpr uint32_t tag_level = 3;
constexpr uintptr_t tag_mask = 3;
constexpr uint32_t in_bits = EPOLLIN | EPOLLRDNORM | EPOLLRDHUP | EPOLLPRI;
constexpr uint32_t out_bits = EPOLLOUT | EPOLLWRNORM;
using core::max_cold_looks;  // (how the waits spend their time: core/wait_policy.h)

// Which fds are epoll instances, and which of those were put into another
// epoll set (a set made before it held SMC sockets is nested before we know
// it). Fds beyond the bitmaps' range are taken for not nested.
constexpr int bit_fds = 1 << 20;
std::atomic<uint64_t> g_is_epoll[bit_fds / 64];
std::atomic<uint64_t> g_nested[bit_fds / 64];
// Bumped in every forked child: a set made before the fork is shared with
// the parent, whose waits take the kernel's edges too.
std::atomic<unsigned> g_fork_gen{0};
// Bumped by every fork, in parent and child: either may change the kernel
// set they share, so a kept doorbell watch is put in place again (ADD, or
// MOD where it is there) before it is trusted after one.
std::atomic<unsigned> g_forks{0};

void set_bit(std::atomic<uint64_t>* map, int fd, bool on) {
  if (fd >= 0 && fd < bit_fds) {
    const uint64_t m = uint64_t{1} << (fd % 64);
    if (on) {
      map[fd / 64].fetch_or(m, std::memory_order_relaxed);
    } else {
      map[fd / 64].fetch_and(~m, std::memory_order_relaxed);
    }
  }
}

bool get_bit(const std::atomic<uint64_t>* map, int fd) {
  return fd >= 0 && fd < bit_fds &&
         (map[fd / 64].load(std::memory_order_relaxed) & (uint64_t{1} << (fd % 64))) != 0;
}

// `as_is`: a socket watch reinstall kept that asks for these very events
// already stays as it is (no MOD, which would re-arm an edge-triggered
// watch for bytes the decision just consumed).
bool add_item(ep_reg* r, int slot, int fd, uint32_t events, bool as_is = false) {
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = reinterpret_cast<uintptr_t>(r) | static_cast<uintptr_t>(slot);
  const bool kept = slot == tag_sock && r->kept_sock == fd;
  r->kept_sock = kept ? -1 : r->kept_sock;
  const bool unchanged = kept && as_is && r->sock_events == events;
  if (!unchanged &&
      real.epoll_ctl(r->set->epfd, kept ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev) != 0) {
    return false;
  }
  r->items[slot] = fd;
  if (slot == tag_sock) {
    r->sock_events = events;
    r->sock_seen = unchanged ? r->sock_seen : 0;
  }
  return true;
}

// The idle kept watches of every set, by fd (under g_ep_mu). A slot whose
// next connection is registered in another set (haproxy's threads each
// wait on a set of their own) would otherwise wake this one with each of
// that connection's rings, for nothing: the watch goes when that happens.
std::unordered_map<int, std::vector<ep_bell*>> g_idle_bells;

void idle_list(ep_bell* b, bool on) {
  if (b->listed == on) {
    return;
  }
  b->listed = on;
  auto& v = g_idle_bells[b->fd];
  if (on) {
    v.push_back(b);
    return;
  }
  v.erase(std::remove(v.begin(), v.end(), b), v.end());
  if (v.empty()) {
    g_idle_bells.erase(b->fd);
  }
}

// Ends the idle watches of `fd` that other sets keep. One kept from
// before a fork is only forgotten: the set is the other process's too.
void evict_idle_elsewhere(ep_set* s, int fd) {
  auto it = g_idle_bells.find(fd);
  if (it == g_idle_bells.end()) {
    return;
  }
  std::vector<ep_bell*> v = it->second;
  for (ep_bell* b : v) {
    if (b->set != s) {
      if (b->forks == g_forks.load(std::memory_order_relaxed)) {
        real.epoll_ctl(b->set->epfd, EPOLL_CTL_DEL, fd, nullptr);
      }
      b->id = 0;
      idle_list(b, false);
    }
  }
}

// Watches a doorbell of an SMC registration (tag_rx or tag_tx) in a set
// from memory, edge-triggered. A slot of a same-host link serves one
// connection after another with the same doorbells (bells_id), and event
// loops register every new connection in the same set: the watch a closed
// connection left idle is taken over with no system call. Elsewhere (or
// for a doorbell of another connection of the same slot's registration in
// this set: one watch per fd) it is an ordinary item.
bool bell_attach(ep_reg* r, uint32_t tag, int fd, uint64_t id) {
  ep_set* s = r->set;
  if (id == 0) {
    return add_item(r, static_cast<int>(tag), fd, EPOLLIN | EPOLLET);
  }
  evict_idle_elsewhere(s, fd);
  ep_bell*& at = s->bells[fd];
  if (at == nullptr) {
    at = new ep_bell();
    at->set = s;
    at->fd = fd;
    s->bell_live.insert(at);
  }
  ep_bell* b = at;
  if (b->reg != nullptr && b->reg != r) {
    return false;  // (as a second ADD of one fd fails)
  }
  idle_list(b, false);
  const unsigned forks = g_forks.load(std::memory_order_relaxed);
  if (b->id == id && b->forks == forks) {
    core::stats::count_bell_watch_kept();
  } else {
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLET;
    ev.data.u64 = reinterpret_cast<uintptr_t>(b) | tag_bell;
    int rc = real.epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &ev);
    if (rc != 0 && errno == EEXIST) {
      rc = real.epoll_ctl(s->epfd, EPOLL_CTL_MOD, fd, &ev);
    }
    if (rc != 0) {
      b->id = 0;
      return false;
    }
    b->id = id;
    b->forks = forks;
  }
  b->reg = r;
  b->tag = tag;
  r->bell[tag] = b;
  r->items[tag] = fd;
  return true;
}

// The registration no longer watches the doorbell: the watch stays, idle,
// while the slot may serve another connection here (its rings meanwhile
// report nothing); otherwise it goes.
void bell_detach(ep_reg* r, int slot) {
  ep_bell* b = std::exchange(r->bell[slot], nullptr);
  r->items[slot] = -1;
  b->reg = nullptr;
  if (r->set->closing || b->id == 0) {
    return;
  }
  const bool keep = !r->set->classic && r->e->st.load() == state::smc && r->e->conn &&
                    r->e->conn->path().bells_id() == b->id &&
                    b->forks == g_forks.load(std::memory_order_relaxed);
  if (!keep) {
    real.epoll_ctl(r->set->epfd, EPOLL_CTL_DEL, b->fd, nullptr);
    b->id = 0;
    return;
  }
  idle_list(b, true);
}

// Idle kept watches go (the set turns classic: its kernel levels must be
// true). Not after a fork: the set is the parent's too, and its watches
// are put in place again before they are trusted (g_forks).
void drop_idle_bells(ep_set* s) {
  for (auto& [fd, b] : s->bells) {
    if (b->reg == nullptr && b->id != 0 && b->forks == g_forks.load(std::memory_order_relaxed)) {
      real.epoll_ctl(s->epfd, EPOLL_CTL_DEL, fd, nullptr);
      b->id = 0;
      idle_list(b, false);
    }
  }
}

// `released`: the socket is gone (its last close), and the kernel dropped
// its watch with it: nothing to delete (one epoll_ctl less per connection).
void del_item(ep_reg* r, int slot, bool released = false) {
  if (r->bell[slot] != nullptr) {
    bell_detach(r, slot);
    return;
  }
  if (r->items[slot] >= 0) {
    if (!r->set->closing && !(released && r->items[slot] == r->fd)) {
      real.epoll_ctl(r->set->epfd, EPOLL_CTL_DEL, r->items[slot], nullptr);
    }
    r->items[slot] = -1;
  }
}

void chan_hold(ep_reg* r, std::shared_ptr<rdma::direct_channel> ch) {
  if (!ch) {
    return;
  }
  auto& v = r->set->chans;
  const int fd = ch->fd();
  auto it = std::find_if(v.begin(), v.end(), [&](const ep_chan& c) { return c.fd == fd; });
  if (it != v.end()) {
    ++it->uses;
  } else {
    v.push_back({std::move(ch), fd, 1});
  }
  r->chan_fd = fd;
}

void chan_release(ep_reg* r) {
  if (r->chan_fd < 0) {
    return;
  }
  auto& v = r->set->chans;
  auto it = std::find_if(v.begin(), v.end(), [&](const ep_chan& c) { return c.fd == r->chan_fd; });
  if (it != v.end() && --it->uses == 0) {
    v.erase(it);
  }
  r->chan_fd = -1;
}

void check_add(ep_reg* r) {
  if (!r->in_check) {
    r->in_check = true;
    r->set->check.push_back(r);
  }
}

void check_drop(ep_reg* r) {
  if (r->in_check) {
    auto& v = r->set->check;
    v.erase(std::remove(v.begin(), v.end(), r), v.end());
    r->in_check = false;
  }
}

void hot_drop(ep_reg* r) {
  if (r->hot) {
    auto& v = r->set->hot;
    v.erase(std::remove(v.begin(), v.end(), r), v.end());
    r->hot = false;
  }
}

// The set's wake (see ep_set), made and put into the kernel's set when a
// registration first needs it; nullptr if it cannot be had (then its
// registrations are unlisted: set_unlisted).
core::wake_fd* set_wake(ep_set* s) {
  if (s->wake != nullptr || s->wake_failed) {
    return s->wake.get();
  }
  s->wake_failed = true;
  if (g_confined.load(std::memory_order_relaxed)) {
    return nullptr;  // (a confined process makes no new fds)
  }
  auto w = std::make_unique<core::wake_fd>();
  if (!w->ok()) {
    return nullptr;
  }
  s->wake_bell.set = s;
  s->wake_bell.fd = w->fd();
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLET;
  ev.data.u64 = reinterpret_cast<uintptr_t>(&s->wake_bell) | tag_bell;
  if (real.epoll_ctl(s->epfd, EPOLL_CTL_ADD, w->fd(), &ev) != 0) {
    return nullptr;
  }
  s->bell_live.insert(&s->wake_bell);
  s->wake = std::move(w);
  s->wake_failed = false;
  return s->wake.get();
}

// A connection woke the registration (core::waiter::on_kick, under the
// connection's waiter lock): the set's next look takes it.
void on_kick(core::waiter* w, uint32_t /*dirs*/) {
  auto* r = static_cast<ep_reg*>(w->owner);
  ep_set* s = r->set;
  std::lock_guard<std::mutex> lk(s->kick_mu);
  if (!r->kicked) {
    r->kicked = true;
    s->kicked.push_back(r);
  }
  s->any_kicked.store(true, std::memory_order_release);
}

void check_add(ep_reg* r);

// Moves the registrations connections woke onto the check list (under g_ep_mu).
void take_kicked(ep_set* s) {
  if (!s->any_kicked.load(std::memory_order_acquire)) {
    return;
  }
  std::vector<ep_reg*> v;
  {
    std::lock_guard<std::mutex> lk(s->kick_mu);
    v.swap(s->kicked);
    s->any_kicked.store(false, std::memory_order_relaxed);
    for (ep_reg* r : v) {
      r->kicked = false;
    }
  }
  for (ep_reg* r : v) {
    check_add(r);
  }
}

// The registration leaves its connection's list and the set's kicked ones.
void unlist(ep_reg* r) {
  if (r->hook.in != nullptr) {
    r->e->conn->set_waiter(&r->hook, 0);
  }
  std::lock_guard<std::mutex> lk(r->set->kick_mu);
  if (r->kicked) {
    auto& v = r->set->kicked;
    v.erase(std::remove(v.begin(), v.end(), r), v.end());
    r->kicked = false;
  }
}

void set_unlisted(ep_reg* r, bool on) {
  if (r->unlisted != on) {
    r->unlisted = on;
    r->set->unlisted += on ? 1 : -1;
  }
}

// Declares (or withdraws) the registration's waiters to match its interest.
// A hot registration declares them only while a thread sleeps on the set:
// awake, the set looks at it in every wait anyway, and the peer's rings
// would be system calls for nothing.
void arm_to_interest(ep_reg* r) {
  auto& c = *r->e->conn;
  auto& p = c.path();
  const bool on = !r->disabled && (!r->hot || r->set->hot_armed);
  const bool rx = on && (r->ev.events & in_bits) != 0;
  const bool tx = on && (r->ev.events & out_bits) != 0;
  // Listed with the connection for what it declares (core::conn::set_waiter):
  // directions added before arming them, dropped after disarming.
  // A classic set's registration is listed with its level: a wake sets it.
  ep_set* s = r->set;
  const bool listed = s->classic ? r->level != nullptr
                                 : ((rx || tx) ? set_wake(s) : s->wake.get()) != nullptr;
  const uint32_t dirs = listed ? (rx ? core::wait_rx : 0u) | (tx ? core::wait_tx : 0u) : 0u;
  if (listed && (dirs & ~r->hook.dirs) != 0) {
    r->hook.wake = s->classic ? r->level.get() : s->wake.get();
    r->hook.on_kick = s->classic ? nullptr : on_kick;
    r->hook.level = s->classic;
    r->hook.owner = r;
    c.set_waiter(&r->hook, r->hook.dirs | dirs);
  }
  if (rx != r->armed_rx) {
    p.arm_rx(rx ? 1 : -1);
    r->armed_rx = rx;
  }
  if (tx != r->armed_tx) {
    p.arm_tx(tx ? 1 : -1);
    r->armed_tx = tx;
  }
  if (r->hook.in != nullptr && r->hook.dirs != dirs) {
    c.set_waiter(&r->hook, dirs);
  }
  set_unlisted(r, (rx || tx) && r->hook.in == nullptr && p.transport() == rdma::kind::shm);
  // The receive channel (SMC-R) follows the interest, not the waiters: a
  // hot registration's wait busy-polls and dispatches it while awake too.
  const bool chan = !r->disabled && (r->ev.events & (in_bits | out_bits)) != 0;
  if (chan && r->chan_fd < 0) {
    chan_hold(r, p.channel());
  } else if (!chan) {
    chan_release(r);
  }
}

// A classic set's SMC registration gets a level of its own: an eventfd in
// the kernel's set, with the application's triggering, that is readable
// while the state it waits for holds and its doorbells may not say so
// (the state held before anything rang, or a drain elsewhere took the
// ring). level_to_truth and the connection's wakes set it; a look that
// finds nothing ready, and the connection's reads and writes that leave
// nothing ready (conn::drop_false_levels), clear it. So no ring of our own
// is ever kept on a doorbell to hold a level. False if it cannot be made (a
// confined process makes no new fds): then the registration is unlisted
// (set_unlisted).
bool level_make(ep_reg* r) {
  if (r->level != nullptr) {
    return true;
  }
  if (g_confined.load(std::memory_order_relaxed)) {
    return false;
  }
  auto w = std::make_unique<core::wake_fd>();
  if (!w->ok()) {
    return false;
  }
  r->level_bell.set = r->set;
  r->level_bell.fd = w->fd();
  r->level_bell.reg = r;
  r->level_bell.tag = tag_level;
  epoll_event ev{};
  ev.events = EPOLLIN | (r->ev.events & EPOLLET);
  ev.data.u64 = reinterpret_cast<uintptr_t>(&r->level_bell) | tag_bell;
  if (real.epoll_ctl(r->set->epfd, EPOLL_CTL_ADD, w->fd(), &ev) != 0) {
    return false;
  }
  r->set->bell_live.insert(&r->level_bell);
  r->level = std::move(w);
  r->level_gen = g_fork_gen.load(std::memory_order_relaxed);
  return true;
}

// The level goes (after its waiter left the connection's list). One made
// before a fork is the parent's too, in the set they share: left there,
// and its number left open (the child may have reused it).
void level_drop(ep_reg* r) {
  if (r->level == nullptr) {
    return;
  }
  r->set->bell_live.erase(&r->level_bell);
  if (r->level_gen != g_fork_gen.load(std::memory_order_relaxed)) {
    r->level->forget();
  } else if (!r->set->closing) {
    real.epoll_ctl(r->set->epfd, EPOLL_CTL_DEL, r->level->fd(), nullptr);
  }
  r->level.reset();
  r->hook.level = false;
}

void uninstall(ep_reg* r, bool released = false) {
  for (int slot = 0; slot < 3; ++slot) {
    del_item(r, slot, released);
  }
  check_drop(r);
  hot_drop(r);
  if (r->level_watch) {
    r->e->conn->watch_level(-1);
    r->level_watch = false;
  }
  if (r->e->st.load() == state::smc) {
    const bool was = r->disabled;
    r->disabled = true;
    arm_to_interest(r);
    r->disabled = was;
  }
  chan_release(r);
  unlist(r);
  level_drop(r);
  r->armed_rx = r->armed_tx = false;
  set_unlisted(r, false);
}

void unlink_reg(ep_reg* r) {
  set_unlisted(r, false);
  unlist(r);
  level_drop(r);
  auto& v = r->e->regs;
  v.erase(std::remove(v.begin(), v.end(), r), v.end());
  auto& s = r->set->regs;
  s.erase(std::remove(s.begin(), s.end(), r), s.end());
  r->set->live.erase(r);
  fd_put(r->e);
  delete r;
}

uint32_t app_events(ep_reg* r, uint32_t ev);

// After arming an SMC registration's doorbells, looks at the state (the
// doorbell protocol's Dekker order) and sets its level to the truth: its
// own (level_make), or else its doorbells', a doorbell the state says is
// ready being rung (no system call while one is queued already) where the
// transport can ring its own (SMC-R); a same-host registration without a
// level is unlisted, and its set's waits look at it by themselves.
void level_to_truth(ep_reg* r) {
  auto& c = *r->e->conn;
  const uint32_t ev = c.events();
  if (r->level != nullptr) {
    if (app_events(r, ev) != 0) {
      r->level->wake();
      core::stats::count_wake(true);
    } else {
      r->level->clear();
    }
    return;
  }
  if ((ev & EPOLLIN) != 0 && r->armed_rx) {
    c.path().kick_rx();
    core::stats::count_wake(false);
  }
  if ((ev & EPOLLOUT) != 0 && r->armed_tx) {
    c.path().kick_tx();
    core::stats::count_wake(false);
  }
}

// A registration whose readiness may have changed without a ring (added,
// modified, re-enabled): looked at in memory by the next wait; a thread
// asleep in the kernel on the set meanwhile is woken by its doorbell.
void note_changed(ep_reg* r) {
  if (r->set->classic) {
    level_to_truth(r);
    return;
  }
  check_add(r);
  if (r->set->sleepers > 0) {
    if (r->set->wake != nullptr) {
      r->set->wake->wake();  // the sleeper looks at the check list
      core::stats::count_wake(true);
    } else {
      level_to_truth(r);
    }
  }
}

// Puts the registration's watches in place for the socket's current state.
// Returns 0, or an errno. A socket that is plain TCP now leaves our
// bookkeeping: it becomes a normal registration in the application's set.
// The watches of a registration for its socket in state s (under g_ep_mu).
int install_watches(ep_reg* r, state s) {
  if (r->disabled) {
    return 0;
  }
  const uint32_t et = r->ev.events & EPOLLET;
  switch (s) {
    case state::smc: {
      auto& c = *r->e->conn;
      if (r->set->classic) {
        level_make(r);  // (before arming: the waiter is listed with it)
      }
      arm_to_interest(r);
      if (r->set->classic) {
        c.watch_level(1);
        r->level_watch = true;
        if (r->armed_rx) {
          add_item(r, tag_rx, c.path().rx_fd(), EPOLLIN | et);
        }
        if (r->armed_tx) {
          add_item(r, tag_tx, c.path().tx_fd(), EPOLLIN | et);
        }
      } else {
        // Both, whatever the interest: a later MOD then changes only memory.
        const uint64_t id = c.path().bells_id();
        bell_attach(r, tag_rx, c.path().rx_fd(), id);
        bell_attach(r, tag_tx, c.path().tx_fd(), id);
      }
      if (!c.finished()) {
        // The socket's watch only learns that the peer's TCP end went. An
        // edge-triggered one the handshake's last message came through
        // stays as it is (one epoll_ctl less per connection) over shm,
        // where the peer's close flags say the rest, unless the kernel
        // reported that end already: then a level-triggered one says it
        // again. (Over RDMA a FIN may overtake Linux's closing CDC: its
        // grace needs the level.)
        const bool edge = et != 0 && c.path().transport() == rdma::kind::shm &&
                          (r->sock_seen & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) == 0;
        add_item(r, tag_sock, r->fd, EPOLLIN | EPOLLRDHUP | (edge ? et : 0u), edge);
      }
      note_changed(r);
      return 0;
    }
    case state::undecided:
    case state::strip:
      add_item(r, tag_sock, r->fd, EPOLLIN | EPOLLRDHUP | (r->ev.events & out_bits) | et);
      return 0;
    case state::connecting:
      add_item(r, tag_sock, r->fd, EPOLLOUT | EPOLLIN | et);
      return 0;
    case state::stepping:
      // The peer's next CLC message moves it on; nothing to report before.
      // (From undecided, whose watch is most often the same: kept as it is.)
      add_item(r, tag_sock, r->fd, EPOLLIN | EPOLLRDHUP | et, true);
      return 0;
    case state::deciding:
      // Nothing to report until the background decision ends; it then
      // re-installs this registration for what the socket became.
      return 0;
    case state::fresh:
      // Not connected yet: the kernel's readiness is the answer (an
      // unconnected TCP socket reports EPOLLOUT | EPOLLHUP).
      add_item(r, tag_sock, r->fd, (r->ev.events & (in_bits | out_bits)) | et);
      return 0;
    default: {
      // The application's own registration from now on (over our watch of
      // the socket, if reinstall left it).
      epoll_event ev = r->ev;
      const bool kept = r->kept_sock == r->fd;
      int rc = real.epoll_ctl(r->set->epfd, kept ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, r->fd, &ev);
      int err = rc == 0 ? 0 : errno;
      unlink_reg(r);
      return err == EEXIST ? 0 : err;
    }
  }
}

// A socket watch reinstall left in the set that install did not take over.
void drop_kept(ep_reg* r) {
  if (r->kept_sock >= 0) {
    if (!r->set->closing) {
      real.epoll_ctl(r->set->epfd, EPOLL_CTL_DEL, r->kept_sock, nullptr);
    }
    r->kept_sock = -1;
  }
}

// Installs a registration's watches: 0 or an errno. A registration of a
// socket that is plain TCP (or a listener, or an epoll set) becomes the
// application's own kernel registration and is gone afterwards.
int install(ep_reg* r) {
  const state s = r->e->st.load(std::memory_order_acquire);
  const bool ours = r->disabled || s == state::smc || still_deciding(s) || s == state::fresh;
  const int rc = install_watches(r, s);
  if (ours) {
    drop_kept(r);
  }
  return rc;
}

// Puts a registration's watches in place afresh (its socket's state, or
// its set's way of learning readiness, changed); a parked one goes.
void reinstall(ep_reg* r) {
  // The socket's own watch stays in the set: where its new state watches
  // the socket too, one MOD replaces a DEL and an ADD.
  r->kept_sock = std::exchange(r->items[tag_sock], -1);
  uninstall(r);
  if (r->parked) {
    drop_kept(r);
    unlink_reg(r);
  } else {
    install(r);
  }
}

// Switches a set to truthful kernel levels (see the top of the file).
void make_classic(ep_set* s) {
  if (s->classic) {
    return;
  }
  s->classic = true;
  std::vector<ep_reg*> regs = s->regs;
  for (ep_reg* r : regs) {
    reinstall(r);
  }
  drop_idle_bells(s);
}

// A set made before this process was forked: the parent may wait on it too.
void check_forked(ep_set* s) {
  if (s->fork_gen != g_fork_gen.load(std::memory_order_relaxed)) {
    s->fork_gen = g_fork_gen.load(std::memory_order_relaxed);
    // The parent's kicks are not ours (its connections' waiter lists were
    // emptied in the child), and a thread of the parent's may have held
    // the lock at the fork.
    new (&s->kick_mu) std::mutex();
    s->kicked.clear();
    s->any_kicked.store(false, std::memory_order_relaxed);
    for (ep_reg* r : s->regs) {
      r->kicked = false;
      r->hook.in = nullptr;  // (the child's connection lists start empty)
      r->hook.dirs = 0;
    }
    make_classic(s);
    // Listed again, with the child's connections (a set classic already
    // was not reinstalled): their wakes set the levels the set shares.
    for (ep_reg* r : s->regs) {
      if (r->e->st.load() == state::smc && r->e->conn) {
        arm_to_interest(r);
      }
    }
  }
}

// EPOLL_CTL_MOD of a registration (under g_ep_mu): 0 or an errno. From
// memory, an SMC registration's MOD changes only memory; in a classic set a
// level-triggered one that stays level-triggered only adds or drops the
// doorbell whose interest changed. Anything else is installed afresh.
int modify(ep_reg* r, const epoll_event& nev) {
  const bool smc = r->e->st.load() == state::smc;
  if (smc && !r->set->classic && r->items[tag_rx] >= 0) {
    r->ev = nev;
    r->disabled = false;
    r->idle_rings = 0;
    arm_to_interest(r);
    note_changed(r);
    return 0;
  }
  const bool lt = ((r->ev.events | nev.events) & EPOLLET) == 0;
  if (r->disabled || !lt || !smc) {
    uninstall(r);
    r->ev = nev;
    r->disabled = false;
    return install(r);
  }
  r->ev = nev;
  arm_to_interest(r);
  auto& c = *r->e->conn;
  for (bool rx : {true, false}) {
    const bool armed = rx ? r->armed_rx : r->armed_tx;
    const int slot = rx ? tag_rx : tag_tx;
    if (armed && r->items[slot] < 0) {
      add_item(r, slot, rx ? c.path().rx_fd() : c.path().tx_fd(), EPOLLIN);
    } else if (!armed) {
      del_item(r, slot);
    }
  }
  level_to_truth(r);
  return 0;
}

// EPOLL_CTL_DEL of an SMC registration in a set that learns readiness from
// memory: the registration is parked rather than dropped, its waiters
// withdrawn and its watches left in the kernel's set (their rings are
// ignored), because event loops delete and re-add a socket around every
// reply (redis's ae: DEL, ADD(OUT), write, DEL, ADD(IN)). The next ADD of
// the same socket takes it up again without a system call. Parked, it is
// not registered as far as the application can tell. False if it cannot be.
bool park(ep_reg* r) {
  if (r->set->classic || r->e->st.load() != state::smc || r->items[tag_rx] < 0) {
    return false;
  }
  r->parked = true;
  r->disabled = true;
  check_drop(r);
  arm_to_interest(r);  // (a hot one stays hot: it is back with the next ADD)
  return true;
}

int unpark(ep_reg* r, const epoll_event& ev) {
  r->parked = false;
  return modify(r, ev);  // (disabled while parked: anything but the memory path reinstalls)
}

// A new registration of a socket we watch (under g_ep_mu): 0 or an errno.
int add_reg(ep_set* s, entry* e, int fd, const epoll_event& ev) {
  auto* r = new ep_reg();
  r->set = s;
  r->e = e;
  e->refs.fetch_add(1);
  r->fd = fd;
  r->ev = ev;
  s->regs.push_back(r);
  s->live.insert(r);
  e->regs.push_back(r);
  return install(r);
}

ep_set* set_for(entry* epe, int epfd) {
  if (epe->eps != nullptr) {
    return epe->eps;
  }
  auto* s = new ep_set();
  s->epfd = epfd;
  s->classic = get_bit(g_nested, epfd);
  s->fork_gen = g_fork_gen.load(std::memory_order_relaxed);
  epe->eps = s;
  epe->st.store(state::epoll, std::memory_order_release);
  return s;
}

ep_reg* find_reg(ep_set* s, int fd) {
  for (ep_reg* r : s->regs) {
    if (r->fd == fd) {
      return r;
    }
  }
  return nullptr;
}

// The application's events for an SMC registration: `ev` from the state,
// narrowed to what it asked for (and always errors and hangups).
uint32_t app_events(ep_reg* r, uint32_t ev) {
  ev &= r->ev.events | EPOLLERR | EPOLLHUP;
  if ((ev & EPOLLIN) != 0 && (r->ev.events & EPOLLRDNORM) != 0) {
    ev |= EPOLLRDNORM;
  }
  if ((ev & EPOLLOUT) != 0 && (r->ev.events & EPOLLWRNORM) != 0) {
    ev |= EPOLLWRNORM;
  }
  return ev;
}

// The connection's activity() in the directions the registration watches.
uint64_t activity(const ep_reg* r) {
  return r->e->conn->activity((r->ev.events & in_bits) != 0, (r->ev.events & out_bits) != 0);
}

// Records one report of `r` in `out[n]` (unless this wait reported it
// already, or there is no room); false if it was not reported.
bool report(ep_reg* r, uint32_t ev, uint64_t gen, epoll_event* out, int& n, int cap) {
  if (ev == 0 || r->seen_gen == gen || n >= cap) {
    return false;
  }
  r->seen_gen = gen;
  const bool smc = r->e->st.load() == state::smc;
  if (smc) {
    // What moved up to here is what this report covers: the state is read
    // again after the snapshot, so nothing that moved before it goes
    // unreported (an edge-triggered hot registration reports again only
    // when the connection moves past it).
    auto& c = *r->e->conn;
    r->last_act = activity(r);
    ev |= app_events(r, c.events());
  }
  out[n].events = ev;
  out[n].data = r->ev.data;
  ++n;
  if ((r->ev.events & EPOLLONESHOT) != 0) {
    r->disabled = true;
    check_drop(r);
    hot_drop(r);
    if (r->set->classic) {
      uninstall(r);
    } else {
      arm_to_interest(r);  // withdraws its waiters; the watches stay for the MOD
    }
  } else if (!r->set->classic && smc) {
    // Busy: looked at by every wait (level-triggered: reported while
    // ready; edge-triggered: when the connection moved since).
    r->cold_looks = 0;
    if (!r->hot) {
      r->hot = true;
      r->set->hot.push_back(r);
      arm_to_interest(r);
    }
  }
  return true;
}

// What a hot registration has to report now: level-triggered, what is
// ready; edge-triggered, the same, but only if the connection moved since
// its last report (the kernel reports an edge per arrival; an event loop
// that did not drain a socket is not woken again until something comes).
uint32_t hot_due(ep_reg* r) {
  auto& c = *r->e->conn;
  const uint32_t ev = app_events(r, c.events());
  if (ev == 0 || ((r->ev.events & EPOLLET) != 0 && activity(r) == r->last_act)) {
    return 0;
  }
  return ev;
}

// Its waiter on the connection's list, if it is there.
const core::waiter* self_of(const ep_reg* r) { return r->hook.in != nullptr ? &r->hook : nullptr; }

// Re-arms both of a registration's doorbells (conn::rearm_doorbell); the
// caller looks at the state afterwards.
void rearm_both(ep_reg* r) {
  r->e->conn->rearm_doorbell(true, r->armed_rx, self_of(r));
  r->e->conn->rearm_doorbell(false, r->armed_tx, self_of(r));
}

// Looks at the hot registrations (see arm_to_interest), reporting the
// ready ones; one found not ready max_cold_looks times in a row cools
// down: its waiters are declared again and only a ring tells from then on.
// The list turns so that each gets its turn when the buffer is small.
void look_hot(ep_set* s, epoll_event* out, int& n, int cap, uint64_t gen) {
  std::vector<ep_reg*> cool;
  const size_t count = s->hot.size();
  size_t next = 0;
  for (size_t i = 0; i < count && n < cap; ++i) {
    ep_reg* r = s->hot[i];
    next = i + 1;
    if (r->disabled) {
      continue;  // parked: looked at again once it is back
    }
    const uint32_t ev = hot_due(r);
    if (ev != 0) {
      report(r, ev, gen, out, n, cap);
    } else if (++r->cold_looks >= max_cold_looks) {
      cool.push_back(r);
    }
  }
  if (n >= cap && next < s->hot.size()) {
    std::rotate(s->hot.begin(), s->hot.begin() + static_cast<long>(next), s->hot.end());
  }
  for (ep_reg* r : cool) {
    hot_drop(r);
    arm_to_interest(r);
    rearm_both(r);
    report(r, app_events(r, r->e->conn->events()), gen, out, n, cap);
  }
}

// Whether a hot registration is not parked (worth spinning for), and
// whether one is ready.
bool hot_live(const ep_set* s) {
  return std::any_of(s->hot.begin(), s->hot.end(), [](const ep_reg* r) { return !r->disabled; });
}

bool hot_ready(const ep_set* s) {
  return std::any_of(s->hot.begin(), s->hot.end(),
                     [](ep_reg* r) { return !r->disabled && hot_due(r) != 0; });
}

// A thread is about to sleep on the set (first) or the last one woke:
// the hot registrations declare their waiters, or withdraw them. On the
// way in, true if one of them is ready (looked at after declaring: the
// doorbell protocol's Dekker order), and the thread must not sleep.
bool hot_sleep(ep_set* s, bool sleeping) {
  if (s->hot.empty() || s->hot_armed == sleeping) {
    return false;
  }
  s->hot_armed = sleeping;
  bool ready = false;
  for (ep_reg* r : s->hot) {
    arm_to_interest(r);
    if (sleeping && !r->disabled) {
      rearm_both(r);  // (a rung flag left up would keep the next ring back)
      ready = ready || hot_due(r) != 0;
    }
  }
  return ready;
}

// From memory (under g_ep_mu): reports the registrations on the check
// list that are ready (at most `cap`) and keeps the level-triggered ones
// among them there; the others leave it, their doorbells re-armed so that
// the next change rings.
int look_memory(ep_set* s, epoll_event* out, int cap, uint64_t gen) {
  int n = 0;
  std::vector<ep_reg*> list;
  list.swap(s->check);
  std::vector<ep_reg*> kept;  // not reported for want of room: keep their place
  for (ep_reg* r : list) {
    r->in_check = false;
  }
  for (ep_reg* r : list) {
    if (r->disabled || r->e->st.load() != state::smc) {
      continue;
    }
    if (n >= cap) {
      kept.push_back(r);
      continue;
    }
    auto& c = *r->e->conn;
    uint32_t ev = app_events(r, c.events());
    if (ev == 0) {
      // Not ready: from here on only a ring tells.
      if (r->armed_rx) {
        c.rearm_doorbell(true, true, self_of(r));
      }
      if (r->armed_tx) {
        c.rearm_doorbell(false, true, self_of(r));
      }
      ev = app_events(r, c.events());
    }
    if (!report(r, ev, gen, out, n, cap) && ev != 0 && r->seen_gen != gen) {
      kept.push_back(r);
    }
  }
  // Those not reached first, then the level-triggered ones just reported
  // (report() put them back): each gets its turn when the buffer is small.
  for (ep_reg* r : kept) {
    r->in_check = true;
  }
  kept.insert(kept.end(), s->check.begin(), s->check.end());
  s->check.swap(kept);
  look_hot(s, out, n, cap, gen);
  return n;
}

struct fired {
  ep_reg* r;
  uint32_t tags;
  bool driven = false;  // a decision was moved on for it in this round
};

struct to_drive_item {
  entry* e;
  int fd;
  uint32_t seen;  // what the kernel reported for the socket
};

// An SMC registration whose watches fired (under g_ep_mu): reports what
// its state says.
void smc_fired(ep_reg* r, uint32_t tags, uint64_t gen, epoll_event* out, int& n, int cap) {
  ep_set* s = r->set;
  auto& c = *r->e->conn;
  if ((tags & (1u << tag_sock)) != 0 && c.check_tcp() && c.finished()) {
    del_item(r, tag_sock);
  }
  const bool rx = (tags & (1u << tag_rx)) != 0;
  const bool tx = (tags & (1u << tag_tx)) != 0;
  if (!s->classic) {
    if (r->disabled) {
      return;  // its MOD looks at the state afresh
    }
    // From memory: re-arm what rang. A watch that keeps firing with nothing
    // ready (a level-triggered one another process of ours put in a set it
    // shares with us) is drained instead, so that it goes quiet.
    uint32_t ev = app_events(r, c.events());
    const bool idle = ev == 0 && ++r->idle_rings >= 2;
    if (ev != 0) {
      r->idle_rings = 0;
    }
    const core::waiter* self = self_of(r);
    if (rx) {
      idle ? static_cast<void>(c.reset_doorbell(true, true, self))
           : c.rearm_doorbell(true, r->armed_rx, self);
    }
    if (tx) {
      idle ? static_cast<void>(c.reset_doorbell(false, true, self))
           : c.rearm_doorbell(false, r->armed_tx, self);
    }
    // An edge-triggered registration reports a ring only for what its last
    // report did not cover: the ring of data a look in memory reported
    // already is no second edge (the kernel reports one per arrival).
    if ((r->ev.events & EPOLLET) == 0 || activity(r) != r->last_act) {
      report(r, app_events(r, c.events()), gen, out, n, cap);
    }
    return;
  }
  if (r->disabled) {
    return;
  }
  const bool et = (r->ev.events & EPOLLET) != 0;
  const core::waiter* self = self_of(r);
  if (rx && et) {
    c.reset_doorbell(true, true, self);  // edge-triggered: the next produce rings again
  }
  if (tx && et) {
    c.reset_doorbell(false, true, self);
  }
  uint32_t ev = c.events();
  if (!et) {
    // Level-triggered: a doorbell that fired for a state gone again is reset
    // so it does not keep the set ready; armed waiters re-ring it. If the
    // state came back meanwhile, the reset rings it again: the doorbell
    // must stay readable for as long as the application has not taken
    // all of it (it may read part and come back for the rest).
    if (rx && (app_events(r, ev) & EPOLLIN) == 0) {
      ev = c.reset_doorbell(true);
    }
    if (tx && (app_events(r, ev) & EPOLLOUT) == 0) {
      ev = c.reset_doorbell(false);
    }
  }
  if (r->level != nullptr && (et || app_events(r, ev) == 0)) {
    // Edge-triggered: its edge is taken (the next wake makes another);
    // level-triggered: it holds only while something is ready (looked at
    // again after clearing it: a wake it took meanwhile set it for a
    // state that has changed by then).
    r->level->clear();
    ev = c.events();
    if (!et && app_events(r, ev) != 0) {
      r->level->wake();
    }
  }
  report(r, app_events(r, ev), gen, out, n, cap);
}

// Turns the kernel's m events in `ev` into the application's: its own stay
// as they are, in front; ours become the events of the registrations they
// belong to. Returns how many there are now.
int translate(ep_set* s, epoll_event* ev, int m, uint64_t gen) {
  std::vector<fired> list;
  std::vector<to_drive_item> to_drive;
  int n = 0;
  {
    std::lock_guard<std::mutex> lk(g_ep_mu);
    for (int i = 0; i < m; ++i) {
      const uint64_t u = ev[i].data.u64;
      auto* r = reinterpret_cast<ep_reg*>(static_cast<uintptr_t>(u) & ~tag_mask);
      uint32_t tag = static_cast<uint32_t>(u & tag_mask);
      if (tag == tag_bell) {
        auto* b = reinterpret_cast<ep_bell*>(static_cast<uintptr_t>(u) & ~tag_mask);
        if (s->bell_live.count(b) == 0) {
          ev[n++] = ev[i];  // the application's
          continue;
        }
        if (b == &s->wake_bell) {
          // Connections woke the set: their registrations are looked at
          // next. (A forked child's copy of a set, classic, leaves the
          // wake to the parent's.)
          if (!s->classic && s->wake != nullptr) {
            s->wake->consume();
            take_kicked(s);
          }
          continue;
        }
        if (b->reg == nullptr) {
          continue;  // a kept watch, idle: a ring for nobody here
        }
        r = b->reg;
        tag = b->tag;
      } else if (s->live.count(r) == 0) {
        ev[n++] = ev[i];  // the application's
        continue;
      } else if (tag == tag_sock) {
        r->sock_seen |= ev[i].events;
      }
      auto it = std::find_if(list.begin(), list.end(), [&](const fired& f) { return f.r == r; });
      if (it != list.end()) {
        it->tags |= 1u << tag;
        continue;
      }
      list.push_back({r, 1u << tag});
      state st = r->e->st.load();
      if (st == state::undecided || st == state::strip || st == state::connecting ||
          st == state::stepping) {
        r->e->refs.fetch_add(1);
        to_drive.push_back({r->e, r->fd, tag == tag_sock ? ev[i].events : 0});
        list.back().driven = true;
      }
    }
  }
  if (list.empty()) {
    return n;
  }
  // Decisions may run a handshake and re-install registrations: not under the lock.
  for (const to_drive_item& d : to_drive) {
    drive(d.e, d.fd, d.seen);
    fd_put(d.e);
  }
  std::lock_guard<std::mutex> lk(g_ep_mu);
  for (const fired& f : list) {
    ep_reg* r = f.r;
    if (s->live.count(r) == 0 || r->disabled) {
      continue;
    }
    state st = r->e->st.load();
    if (st == state::smc) {
      // Just decided: what stirred its TCP socket was the handshake's last
      // message (anything after it reports again: an edge-triggered watch
      // stays only if this report did not carry the peer's end).
      smc_fired(r, f.driven ? f.tags & ~(1u << tag_sock) : f.tags, gen, ev, n, m);
      continue;
    }
    uint32_t out = 0;
    if (st == state::undecided || st == state::strip) {
      // Still deciding: nothing to read yet; writability is the kernel's.
      if ((r->ev.events & out_bits) != 0) {
        pollfd p{r->fd, POLLOUT, 0};
        if (real.poll(&p, 1, 0) > 0) {
          out = p.revents & (EPOLLOUT | EPOLLERR | EPOLLHUP);
        }
      }
    } else if (st == state::fresh) {
      pollfd p{r->fd, static_cast<short>(r->ev.events & (in_bits | out_bits)), 0};
      if (real.poll(&p, 1, 0) > 0) {
        out = static_cast<uint32_t>(p.revents) & (r->ev.events | EPOLLERR | EPOLLHUP);
      }
    }
    report(r, out, gen, ev, n, m);
  }
  return n;
}

int64_t mono_ms() { return core::mono_ns() / 1000000; }

using chan_list = std::array<std::shared_ptr<rdma::direct_channel>, max_direct>;

// Sleeps on the application's set and on the channels (k of them) at once,
// under the caller's signal mask, and dispatches what the channels bring.
// Returns ppoll's result: > 0 woken, 0 timed out, -1 with errno.
int sleep_direct(int epfd, chan_list& chans, size_t k, int64_t timeout_ms, const sigset_t* sigmask) {
  pollfd p[1 + max_direct];
  p[0] = {epfd, POLLIN, 0};
  begin_channels(chans.begin(), chans.begin() + k, p + 1);
  timespec ts{static_cast<time_t>(timeout_ms / 1000), static_cast<long>((timeout_ms % 1000) * 1000000)};
  int rc = real.ppoll(p, 1 + k, timeout_ms < 0 ? nullptr : &ts, sigmask);
  end_channels(chans.begin(), chans.begin() + k, p + 1, rc);
  return rc;
}

// The kernel's part of a wait: `wait(out, cap, ms)` is the real call. With
// channels to serve, looks first, spins (`spin` us), then sleeps on the set
// and the channels together. Returns the real call's result (-1 with errno).
template <typename Wait>
int kernel_wait(ep_set* s, epoll_event* out, int cap, int64_t left, uint32_t spin,
                const sigset_t* sigmask, Wait& wait) {
  chan_list chans;
  size_t k = 0;
  std::vector<std::shared_ptr<rdma::direct_channel>> many;  // too many to watch
  if (left != 0) {
    std::lock_guard<std::mutex> lk(g_ep_mu);
    if (s->chans.size() <= max_direct) {
      for (const ep_chan& c : s->chans) {
        chans[k++] = c.ch;
      }
    } else {
      for (const ep_chan& c : s->chans) {
        many.push_back(c.ch);
      }
    }
  }
  if (k == 0) {
    for (const auto& ch : many) {
      ch->arm();  // the engine rings the doorbells
    }
    return wait(out, cap, left);
  }
  // Look first; spin, then sleep (serving the channels) only while
  // nothing is ready.
  int n = wait(out, cap, 0);
  if (n == 0 && spin > 0) {
    const int64_t t0 = mono_ms();
    const uint32_t us = core::spin_budget_us(spin, false, core::ms_to_ns(left));
    spin_channels(chans.begin(), chans.begin() + k, us, [&] {
      n = wait(out, cap, 0);
      return n != 0;
    });
    if (n == 0 && left >= 0) {
      left = std::max<int64_t>(0, left - (mono_ms() - t0));  // what the spin left of it
    }
  }
  if (n != 0) {
    return n;
  }
  if (sleep_direct(s->epfd, chans, k, left, sigmask) < 0) {
    return -1;
  }
  return wait(out, cap, 0);
}

// The shared body of epoll_wait/epoll_pwait/epoll_pwait2: `wait(out, cap,
// ms)` is the real call, `sigmask` the one it applies.
template <typename Wait>
int wait_common(int epfd, epoll_event* events, int maxevents, int64_t timeout_ms,
                const sigset_t* sigmask, Wait&& wait) {
  entry_ref epe(epfd);
  ep_set* s = epe ? epe->eps : nullptr;
  if (s == nullptr || maxevents <= 0) {
    return wait(events, maxevents, timeout_ms);
  }
  int saved = errno;
  const core::wait_deadline deadline = core::wait_deadline::from_ms(timeout_ms);
  const bool confined = g_confined.load(std::memory_order_relaxed);
  const uint32_t spin_us = core::spin_budget_us(cfg().spin_us, confined, -1);
  bool spun = false;
  for (;;) {
    int64_t left = deadline.left_ms();
    int n = 0;
    uint64_t gen = 0;
    bool sleeper = false;
    bool spin = false;
    bool sliced = false;
    try {
      std::lock_guard<std::mutex> lk(g_ep_mu);
      check_forked(s);
      take_kicked(s);
      gen = ++s->gen;
      if (!s->check.empty() || !s->hot.empty()) {
        // What memory has is reported without the kernel, but not for
        // ever: on the kernel's turn room is kept for its events, so that
        // its fds in the set are never starved (core::memory_turns).
        const bool kernel_turn = s->turns.kernel_turn();
        const int cap = kernel_turn ? maxevents - 1 : maxevents;
        n = cap > 0 ? look_memory(s, events, cap, gen) : 0;
        if (n > 0 && !kernel_turn) {
          s->turns.from_memory();
          errno = saved;
          return n;
        }
        s->turns.from_kernel();
        if (n > 0 || cap == 0 || !s->check.empty()) {
          left = 0;  // something is ready (or may be, or was kept for want of room)
        }
      }
      if (left != 0 && !spun && spin_us > 0 && s->chans.empty() && hot_live(s)) {
        // Busy: the next request may be a few microseconds away. (A set
        // with SMC-R channels spins on those instead, dispatching what
        // they bring itself: kernel_wait.)
        spin = true;
      } else if (left != 0) {
        sleeper = true;
        if (s->sleepers++ == 0 && hot_sleep(s, true)) {
          left = 0;  // one of them is ready: the next look reports it
        }
      }
      // Unlisted registrations (hot ones too, armed just above): what
      // their connections change by themselves (an end, a level made
      // true) reaches them at the next look, not through a ring.
      const int64_t cut = core::sleep_slice(left, core::look_every_ms, left != 0 && s->unlisted > 0);
      sliced = cut != left;
      left = cut;
    } catch (...) {
    }
    if (spin) {
      // Before declaring waiters (which makes the peer ring) and sleeping:
      // look at the hot registrations in memory for up to SMC_SPIN_US. A
      // reply that comes meanwhile costs neither side a system call.
      spun = true;
      const uint32_t us = core::spin_budget_us(spin_us, confined, core::ms_to_ns(left));
      core::busy_wait(us, [] { return false; }, [&] {
        // (Not in the way of other threads' epoll calls: a round that
        // finds the lock taken only looks again.)
        std::unique_lock<std::mutex> lk(g_ep_mu, std::try_to_lock);
        return lk.owns_lock() && (!s->check.empty() || hot_ready(s));
      });
      continue;  // the next round reports what came, or sleeps
    }
    int m = kernel_wait(s, events + n, maxevents - n, left, spin_us, sigmask, wait);
    const int err = errno;
    if (sleeper) {
      std::lock_guard<std::mutex> lk(g_ep_mu);
      if (--s->sleepers == 0) {
        hot_sleep(s, false);
      }
    }
    if (m < 0) {
      if (n > 0) {
        errno = saved;
        return n;
      }
      errno = err;
      return -1;
    }
    try {
      n += translate(s, events + n, m, gen);
      if (sliced && m == 0) {
        std::lock_guard<std::mutex> lk(g_ep_mu);
        for (ep_reg* r : s->regs) {
          if (r->unlisted) {
            check_add(r);  // looked at in memory by the next round
          }
        }
      }
    } catch (...) {
    }
    if (n > 0) {
      errno = saved;
      return n;
    }
    if (deadline.passed()) {
      errno = saved;
      return 0;
    }
  }
}

}  // namespace

void ep_state_changed(entry* e) {
  std::lock_guard<std::mutex> lk(g_ep_mu);
  std::vector<ep_reg*> regs = e->regs;
  for (ep_reg* r : regs) {
    reinstall(r);
  }
}

void ep_forget_entry(entry* e, bool released) {
  std::lock_guard<std::mutex> lk(g_ep_mu);
  std::vector<ep_reg*> regs = e->regs;
  for (ep_reg* r : regs) {
    uninstall(r, released);
    unlink_reg(r);
  }
}

void ep_destroy_set(entry* epe) {
  std::lock_guard<std::mutex> lk(g_ep_mu);
  ep_set* s = epe->eps;
  if (s == nullptr) {
    return;
  }
  // The kernel drops the set's watches with it (or keeps them for a forked
  // child that shares the set, and that has its own copy of this).
  s->closing = true;
  std::vector<ep_reg*> regs = s->regs;
  for (ep_reg* r : regs) {
    uninstall(r);
    unlink_reg(r);
  }
  for (auto& [fd, b] : s->bells) {
    idle_list(b, false);
    delete b;
  }
  delete s;
  epe->eps = nullptr;
}

void ep_expose(entry* epe) {
  std::lock_guard<std::mutex> lk(g_ep_mu);
  if (epe->eps != nullptr) {
    make_classic(epe->eps);
  }
}

void ep_confine(entry* epe) {
  std::lock_guard<std::mutex> lk(g_ep_mu);
  ep_set* s = epe->eps;
  if (s == nullptr) {
    return;
  }
  set_wake(s);
  for (ep_reg* r : s->regs) {
    if (r->e->st.load() != state::smc || r->disabled) {
      continue;
    }
    if (s->classic && level_make(r)) {
      arm_to_interest(r);
      level_to_truth(r);
    } else if (!s->classic) {
      arm_to_interest(r);
    }
  }
}

void ep_note_fork_child() {
  g_fork_gen.fetch_add(1, std::memory_order_relaxed);
  g_forks.fetch_add(1, std::memory_order_relaxed);
}
void ep_note_fork_parent() { g_forks.fetch_add(1, std::memory_order_relaxed); }

unsigned fork_generation() { return g_forks.load(std::memory_order_relaxed); }

void ep_note_added(int fd) {
  if (!get_bit(g_is_epoll, fd)) {
    return;
  }
  set_bit(g_nested, fd, true);
  entry_ref e(fd);
  if (e && e->st.load() == state::epoll) {
    ep_expose(e.get());
  }
}

void ep_note_created(int epfd) {
  set_bit(g_is_epoll, epfd, true);
  set_bit(g_nested, epfd, false);
}

void ep_lock() { g_ep_mu.lock(); }
void ep_unlock() { g_ep_mu.unlock(); }

}  // namespace smc::preload

extern "C" {

__attribute__((visibility("default"))) int epoll_create(int size) {
  ensure_init();
  int fd = real.epoll_create(size);
  if (fd >= 0 && g_enabled) {
    int saved = errno;
    fd_fresh(fd);
    if (smc::rdma::t_library_calls == 0) {  // (the engine's own set is never the application's)
      ep_note_created(fd);
    }
    errno = saved;
  }
  return fd;
}

__attribute__((visibility("default"))) int epoll_create1(int flags) {
  ensure_init();
  int fd = real.epoll_create1(flags);
  if (fd >= 0 && g_enabled) {
    int saved = errno;
    fd_fresh(fd);
    if (smc::rdma::t_library_calls == 0) {  // (the engine's own set is never the application's)
      ep_note_created(fd);
    }
    errno = saved;
  }
  return fd;
}

__attribute__((visibility("default"))) int epoll_ctl(int epfd, int op, int fd,
                                                     epoll_event* event) noexcept {
  ensure_init();
  if (g_enabled && op == EPOLL_CTL_ADD && smc::rdma::t_library_calls == 0) {
    ep_note_added(fd);  // an epoll set put into another one: see ep_set::classic
  }
  if (!g_enabled || !fd_maybe(fd)) {
    return real.epoll_ctl(epfd, op, fd, event);
  }
  entry_ref e(fd);
  state st = e ? e->st.load() : state::tcp;
  bool managed = st == state::smc || still_deciding(st) || st == state::fresh;
  int saved = errno;
  try {
    entry* epe = fd_maybe(epfd) ? fd_get(epfd) : nullptr;
    ep_set* s = epe != nullptr ? epe->eps : nullptr;
    if (!managed && (s == nullptr || op == EPOLL_CTL_ADD)) {
      if (epe != nullptr) {
        fd_put(epe);
      }
      return real.epoll_ctl(epfd, op, fd, event);
    }
    // EPOLLEXCLUSIVE as the kernel takes it: on ADD only, with no other
    // bits than these (we wake every set that waits, which it allows: "one
    // or more").
    constexpr uint32_t exclusive_ok = EPOLLIN | EPOLLOUT | EPOLLERR | EPOLLHUP | EPOLLWAKEUP |
                                      EPOLLET | EPOLLEXCLUSIVE;
    const bool bad_exclusive =
        op != EPOLL_CTL_DEL && event != nullptr && (event->events & EPOLLEXCLUSIVE) != 0 &&
        (op == EPOLL_CTL_MOD || (event->events & ~exclusive_ok) != 0);
    if (epfd == fd || (op != EPOLL_CTL_DEL && event == nullptr) || bad_exclusive) {
      if (epe != nullptr) {
        fd_put(epe);
      }
      errno = EINVAL;
      return -1;
    }
    if (s == nullptr) {
      if (op != EPOLL_CTL_ADD) {
        if (epe != nullptr) {
          fd_put(epe);
        }
        return real.epoll_ctl(epfd, op, fd, event);
      }
      if (epe == nullptr) {
        // First SMC socket in this set: record the epoll fd itself.
        epe = new entry();
        epe->st.store(state::epoll);
        epe->refs.fetch_add(1);  // one for the table, one for us
        entry* old = fd_install(epfd, epe);
        if (old != nullptr) {
          fd_put(old);
        }
      }
      std::lock_guard<std::mutex> lk(g_ep_mu);
      s = set_for(epe, epfd);
    }
    if (s == nullptr) {
      fd_put(epe);
      return real.epoll_ctl(epfd, op, fd, event);
    }
    int err = 0;
    {
      std::lock_guard<std::mutex> lk(g_ep_mu);
      check_forked(s);
      ep_reg* r = find_reg(s, fd);
      if (r == nullptr && !managed) {
        err = -1;  // a plain socket in a set we also use: the kernel decides
      } else if (op == EPOLL_CTL_ADD) {
        if (r != nullptr && r->parked && r->e == e.get()) {
          err = unpark(r, *event);
        } else if (r != nullptr && r->parked) {
          uninstall(r);
          unlink_reg(r);
          err = add_reg(s, e.get(), fd, *event);
        } else if (r != nullptr) {
          err = EEXIST;
        } else {
          err = add_reg(s, e.get(), fd, *event);
        }
      } else if (r != nullptr && r->parked) {
        err = op == EPOLL_CTL_MOD || op == EPOLL_CTL_DEL ? ENOENT : EINVAL;  // not registered
      } else if (op == EPOLL_CTL_MOD) {
        if (r == nullptr) {
          // Registered in the kernel's set before we knew the socket (or
          // through a path we did not see): take the registration over.
          if (real.epoll_ctl(epfd, EPOLL_CTL_DEL, fd, nullptr) != 0) {
            err = ENOENT;
          } else {
            err = add_reg(s, e.get(), fd, *event);
          }
        } else if ((r->ev.events & EPOLLEXCLUSIVE) != 0) {
          err = EINVAL;  // an exclusive registration cannot be modified
        } else {
          err = modify(r, *event);
        }
      } else if (op == EPOLL_CTL_DEL) {
        if (r == nullptr) {
          err = -1;  // the kernel's, if anyone's
        } else if (!park(r)) {
          uninstall(r);
          unlink_reg(r);
        }
      } else {
        err = EINVAL;
      }
    }
    fd_put(epe);
    if (err == -1) {
      return real.epoll_ctl(epfd, op, fd, event);
    }
    if (err != 0) {
      errno = err;
      return -1;
    }
    errno = saved;
    return 0;
  } catch (...) {
    errno = ENOMEM;
    return -1;
  }
}

__attribute__((visibility("default"))) int epoll_wait(int epfd, epoll_event* events, int maxevents,
                                                      int timeout) {
  ensure_init();
  if (!g_enabled || !fd_maybe(epfd)) {
    return real.epoll_wait(epfd, events, maxevents, timeout);
  }
  return wait_common(epfd, events, maxevents, timeout, nullptr,
                     [&](epoll_event* out, int cap, int64_t t) {
                       return real.epoll_wait(epfd, out, cap, static_cast<int>(t));
                     });
}

__attribute__((visibility("default"))) int epoll_pwait(int epfd, epoll_event* events,
                                                       int maxevents, int timeout,
                                                       const sigset_t* sigmask) {
  ensure_init();
  if (!g_enabled || !fd_maybe(epfd)) {
    return real.epoll_pwait(epfd, events, maxevents, timeout, sigmask);
  }
  return wait_common(epfd, events, maxevents, timeout, sigmask,
                     [&](epoll_event* out, int cap, int64_t t) {
                       return real.epoll_pwait(epfd, out, cap, static_cast<int>(t), sigmask);
                     });
}

__attribute__((visibility("default"))) int epoll_pwait2(int epfd, epoll_event* events,
                                                        int maxevents, const timespec* ts,
                                                        const sigset_t* sigmask) {
  ensure_init();
  if (!g_enabled || !fd_maybe(epfd)) {
    return real.epoll_pwait2(epfd, events, maxevents, ts, sigmask);
  }
  const int64_t ms = smc::core::ns_to_ms_up(smc::core::timespec_ns(ts));
  return wait_common(epfd, events, maxevents, ms, sigmask,
                     [&](epoll_event* out, int cap, int64_t t) {
                       timespec left{static_cast<time_t>(t / 1000),
                                     static_cast<long>((t % 1000) * 1000000)};
                       return real.epoll_pwait2(epfd, out, cap, t < 0 ? nullptr : &left, sigmask);
                     });
}

}  // extern "C"
