// The SMC connection engine: cursors, flow control, close protocol, readiness.
// See conn.h. Cursor rules follow Linux net/smc (smc_tx.c, smc_rx.c,
// smc_cdc.c); the doorbell protocol is described in rdma/transport.h.
#include "core/conn.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <functional>
#include <mutex>
#include <new>
#include <unordered_set>

#include "core/busy_wait.h"
#include "core/wait_policy.h"
#include "core/cdc.h"
#include "core/log.h"
#include "core/stats.h"
#include "rdma/sys.h"

namespace smc::core {

namespace {
// conn_shared::err besides an errno: a reset's EPIPE not reported yet (the
// peer had closed when we wrote: TCP's CLOSE_WAIT reset). Plain EPIPE there
// means "reported already": the connection is just broken now.
constexpr int err_pending_epipe = -EPIPE;
}  // namespace

namespace {

using rdma::sys;

constexpr uint8_t peer_eof_flags = cdc::conn_done_writing | cdc::conn_closed;
// How long a TCP FIN may precede the peer's SMC close flags before the peer
// counts as gone (see check_tcp()).
constexpr int64_t fin_grace_ms = 500;

int64_t mono_ms() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

size_t iov_total(const iovec* iov, int iovcnt) {
  size_t t = 0;
  for (int i = 0; i < iovcnt; ++i) {
    t += iov[i].iov_len;
    if (t > static_cast<size_t>(SSIZE_MAX)) {
      return static_cast<size_t>(SSIZE_MAX);
    }
  }
  return t;
}

// Walks n bytes of a ring (from offset `pos`, wrapping at `size`) side by
// side with the iovecs (after their first `skip` bytes), calling
// piece(ring_offset, iovec_pointer, length) once per contiguous piece.
template <typename Piece>
void walk_ring_iov(uint32_t size, uint32_t pos, size_t n, const iovec* iov, int iovcnt,
                   size_t skip, Piece&& piece) {
  int i = 0;
  while (i < iovcnt && skip >= iov[i].iov_len) {
    skip -= iov[i].iov_len;
    ++i;
  }
  while (n > 0 && i < iovcnt) {
    size_t room = iov[i].iov_len - skip;
    size_t k = std::min({n, room, static_cast<size_t>(size - pos)});
    piece(pos, static_cast<uint8_t*>(iov[i].iov_base) + skip, k);
    n -= k;
    pos = (pos + static_cast<uint32_t>(k)) % size;
    skip += k;
    if (skip == iov[i].iov_len) {
      skip = 0;
      ++i;
    }
  }
}

// Ring -> iovecs (a read).
void ring_to_iov(const uint8_t* ring, uint32_t size, uint32_t pos, size_t n, const iovec* iov,
                 int iovcnt, size_t skip) {
  walk_ring_iov(size, pos, n, iov, iovcnt, skip,
                [&](uint32_t off, uint8_t* p, size_t k) { std::memcpy(p, ring + off, k); });
}

// Iovecs -> the peer's ring (a write), one put() per contiguous piece.
void iov_to_ring(rdma::data_path& path, uint32_t size, uint32_t pos, size_t n, const iovec* iov,
                 int iovcnt, size_t skip) {
  walk_ring_iov(size, pos, n, iov, iovcnt, skip,
                [&](uint32_t off, const uint8_t* p, size_t k) { path.put(off, p, k); });
}

}  // namespace

namespace {
std::atomic<int> g_self{0};
}  // namespace

int self_pid() {
  int p = g_self.load(std::memory_order_relaxed);
  if (p == 0) {
    p = static_cast<int>(::getpid());
    g_self.store(p, std::memory_order_relaxed);
  }
  return p;
}

namespace {

// Every connection of this process: for note_fork_child() (those whose
// state other processes may share) and for_each_conn().
std::mutex g_registry_mu;
std::unordered_set<conn*>* g_registry = nullptr;  // leaked: lives to the last close

void registry_add(conn* s) {
  std::lock_guard<std::mutex> lk(g_registry_mu);
  if (g_registry == nullptr) {
    g_registry = new std::unordered_set<conn*>();
  }
  g_registry->insert(s);
}

void registry_remove(conn* s) {
  std::lock_guard<std::mutex> lk(g_registry_mu);
  if (g_registry != nullptr) {
    g_registry->erase(s);
  }
}

}  // namespace

void conn_registry_lock() { g_registry_mu.lock(); }
void conn_registry_unlock() { g_registry_mu.unlock(); }

void note_fork_child() {
  g_self.store(static_cast<int>(::getpid()), std::memory_order_relaxed);
  note_fork_for_wakes();
  // The child holds what the parent held (the lock is still taken from the
  // parent's prepare handler, and no other thread exists here).
  if (g_registry != nullptr) {
    for (conn* c : *g_registry) {
      c->note_forked();
    }
  }
  g_registry_mu.unlock();
}

void for_each_conn(const std::function<void(conn&)>& f) {
  std::lock_guard<std::mutex> lk(g_registry_mu);
  if (g_registry != nullptr) {
    for (conn* c : *g_registry) {
      f(*c);
    }
  }
}

void conn::note_forked() {
  if (own_ == nullptr) {
    sh_->holders.fetch_add(1);  // shared with the parent: the child holds it too
  }
  // The parent's sleepers are not the child's (its one thread is not
  // waiting); their entries stay as memory nobody lists. The lock may have
  // been held by another thread of the parent's at the fork.
  new (&wmu_) std::mutex();
  for (waiter* w = waiters_; w != nullptr; w = w->next) {
    w->in = nullptr;
  }
  waiters_ = nullptr;
  listed_rx_.store(0);
  listed_tx_.store(0);
  listed_levels_.store(0);
}

namespace {
std::atomic<bool> g_restart{true};
}  // namespace

void set_signals_restart(bool yes) { g_restart.store(yes, std::memory_order_relaxed); }
bool signals_restart() { return g_restart.load(std::memory_order_relaxed); }

void robust_mutex::init() {
  pthread_mutexattr_t a;
  pthread_mutexattr_init(&a);
  pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
  pthread_mutex_init(&m_, &a);
  pthread_mutexattr_destroy(&a);
}

void robust_mutex::lock() {
  if (pthread_mutex_lock(&m_) == EOWNERDEAD) {
    // A holder died inside a call (killed): the state it guarded is cursors
    // and flags stored one at a time, each consistent on its own.
    pthread_mutex_consistent(&m_);
  }
}

void robust_mutex::unlock() { pthread_mutex_unlock(&m_); }

namespace {
std::atomic<uint64_t> g_serial{0};
}  // namespace

conn::conn(std::unique_ptr<rdma::data_path> path, int tcp_fd, uint32_t spin_us)
    : path_(std::move(path)), tcp_fd_(tcp_fd), serial_(g_serial.fetch_add(1) + 1), spin_us_(spin_us) {
  init_shared(true, false);
}

conn::conn(attach_t, std::unique_ptr<rdma::data_path> path, int tcp_fd, uint32_t spin_us,
           bool join)
    : path_(std::move(path)), tcp_fd_(tcp_fd), serial_(g_serial.fetch_add(1) + 1), spin_us_(spin_us) {
  init_shared(false, join);
}

void conn::init_shared(bool fresh, bool join) {
  void* mem = path_->shared_state();
  if (mem == nullptr) {
    own_ = std::make_unique<conn_shared>();
    mem = own_.get();
    fresh = true;
  } else if (path_->shared_state_size() < sizeof(conn_shared)) {
    return;  // sh_ stays null: not valid()
  }
  if (fresh) {
    auto* s = new (mem) conn_shared();
    s->magic = conn_shared::magic_value;
    s->version = 2;
    s->holders.store(1);
    s->rx_mu.init();
    s->tx_mu.init();
    s->bell_mu.init();
    sh_ = s;
  } else {
    auto* s = static_cast<conn_shared*>(mem);
    if (s->magic != conn_shared::magic_value || s->version != 2) {
      return;
    }
    if (join) {
      s->holders.fetch_add(1);
    }
    sh_ = s;
  }
  registry_add(this);
}

conn::~conn() {
  if (sh_ != nullptr) {
    registry_remove(this);
  }
  if (waiter_ >= 0) {
    sys().close(waiter_);
  }
}

static_assert(sizeof(conn_shared) <= 4096, "conn_shared must fit the shm state page");

void conn::add_holder() { sh_->holders.fetch_add(1); }

// Reads of the cursors, in an order that concurrent readers cannot make
// fail: first the last validated peer cursor (every value it ever held was
// read from the peer before our read below, and the peer only moves
// forward), then our own cursor, then the peer's. Only the owner (the
// caller holding the rx / tx lock) records what it validated; a look from
// another thread (events(), FIONREAD, SIOCOUTQ) changes nothing, so it can
// never make the owner see the peer's cursor move backwards.
bool conn::rx_available(uint32_t& avail, bool owner) {
  const uint32_t size = path_->rx_size();
  cursor last = curs_unpack(sh_->rx_prod.load(std::memory_order_acquire));
  cursor cons = curs_unpack(sh_->rx_cons.load(std::memory_order_acquire));
  cursor prod = curs_unpack(path_->peer_prod());
  // The peer may only move its producer cursor forward, and never further than
  // one ring ahead of what we consumed (it would overwrite unread data).
  if (!curs_ahead_within(size, cons, prod) || !curs_ahead_within(size, last, prod)) {
    avail = 0;
    return false;
  }
  if (owner) {
    sh_->rx_prod.store(curs_pack(prod), std::memory_order_release);
  }
  avail = curs_diff(size, cons, prod);
  return true;
}

bool conn::tx_space(uint32_t& space, bool owner) {
  const uint32_t size = path_->tx_size();
  cursor last = curs_unpack(sh_->tx_cons.load(std::memory_order_acquire));
  cursor cons = curs_unpack(path_->peer_cons());
  // Ours after the peer's: sh_->tx_prod is stored before it is published, so it
  // is never behind what the peer consumed.
  cursor prod = curs_unpack(sh_->tx_prod.load(std::memory_order_acquire));
  // The peer's consumer cursor moves forward and never past what we produced.
  if (!curs_ahead_within(size, last, cons) || !curs_ahead_within(size, cons, prod)) {
    space = 0;
    return false;
  }
  if (owner) {
    sh_->tx_cons.store(curs_pack(cons), std::memory_order_release);
  }
  space = size - curs_diff(size, cons, prod);
  return true;
}

bool conn::rx_look(uint32_t& avail) {
  // Unlocked, our consumer cursor may move between the reads: a failure
  // that does not hold on a second look is such a race, not the peer.
  for (int i = 0; i < 3; ++i) {
    if (rx_available(avail, false)) {
      return true;
    }
  }
  return false;
}

bool conn::tx_look(uint32_t& space) {
  for (int i = 0; i < 3; ++i) {
    if (tx_space(space, false)) {
      return true;
    }
  }
  return false;
}

void conn::abort_locally(int err) {
  int expected = 0;
  if (sh_->err.compare_exchange_strong(expected, err)) {
    sh_->so_error.store(err);
    SMC_LOG(warn, "fd %d: connection aborted (%s)", tcp_fd_, std::strerror(err));
    uint8_t f = sh_->my_flags.fetch_or(cdc::conn_abnormal) | cdc::conn_abnormal;
    path_->publish_prod(sh_->tx_prod.load(), f);
  }
  kick(true, true);
}

int conn::block_timeout_ms(bool rx, int flags) {
  if ((flags & MSG_DONTWAIT) != 0) {
    return 0;
  }
  if (confined_.load(std::memory_order_relaxed)) {
    // No fcntl or getsockopt here any more: what the socket said when the
    // process confined itself, kept current by the application's own calls.
    const bool nb = c_nonblock_.load(std::memory_order_relaxed);
    blocking_hint_.store(!nb, std::memory_order_relaxed);
    return nb ? 0 : (rx ? c_rcvtimeo_ : c_sndtimeo_).load(std::memory_order_relaxed);
  }
  int fl = sys().fcntl(tcp_fd_, F_GETFL);
  const bool nonblock = fl >= 0 && (fl & O_NONBLOCK) != 0;
  blocking_hint_.store(!nonblock, std::memory_order_relaxed);
  if (nonblock) {
    return 0;
  }
  timeval tv{};
  socklen_t len = sizeof(tv);
  if (sys().getsockopt(tcp_fd_, SOL_SOCKET, rx ? SO_RCVTIMEO : SO_SNDTIMEO, &tv, &len) == 0 &&
      (tv.tv_sec != 0 || tv.tv_usec != 0)) {
    int64_t ms = static_cast<int64_t>(tv.tv_sec) * 1000 + (tv.tv_usec + 999) / 1000;
    return static_cast<int>(std::clamp<int64_t>(ms, 1, INT_MAX));
  }
  return -1;
}

namespace {

// Busy-waits up to spin_us for done(), dispatching the transport's arrivals
// as it goes (busy_wait).
template <class Done>
bool spin_until(rdma::data_path& path, uint32_t spin_us, Done done) {
  if (spin_us == 0) {
    return false;
  }
  path.spin(true);
  const bool ok = busy_wait(spin_us, [&] { return path.poll_progress(); }, done);
  path.spin(false);
  return ok || done();
}

}  // namespace

uint32_t conn::spin_budget_us() const {
  return core::spin_budget_us(spin_us_, confined_.load(std::memory_order_relaxed), -1);
}

bool conn::spin_rx(uint8_t pf) {
  // Against what we know (the producer cursor we last validated), so data
  // that arrived since is seen at once.
  const uint64_t before = sh_->rx_prod.load(std::memory_order_relaxed);
  return spin_until(*path_, spin_budget_us(), [&] {
    return path_->peer_prod() != before || path_->peer_conn_flags() != pf;
  });
}

bool conn::spin_tx() {
  const uint64_t before = sh_->tx_cons.load(std::memory_order_relaxed);
  return spin_until(*path_, spin_budget_us(), [&] { return path_->peer_cons() != before; });
}

template <class Ready>
int conn::wait_poll(bool rx, int timeout_ms, Ready& ready, waiter* self) {
  pollfd p[4] = {{rx ? path_->rx_fd() : path_->tx_fd(), POLLIN, 0},
                 {tcp_fd_, POLLIN | POLLRDHUP, 0},
                 {-1, POLLIN, 0},
                 {-1, POLLIN, 0}};
  // After the peer's FIN the TCP socket stays readable: stop watching it,
  // and while its meaning is open (check_tcp()) look again every few ms.
  const bool fin = sh_->fin_ms.load() != 0;
  timeout_ms = static_cast<int>(sleep_slice(timeout_ms, 10, fin && !finished()));
  // Without a wake fd (none could be made) nothing reaches a same-host
  // wait but the peer's rings: what the connection changes by itself is
  // looked at every 100 ms.
  timeout_ms = static_cast<int>(sleep_slice(
      timeout_ms, look_every_ms, self == nullptr && path_->transport() == rdma::kind::shm));
  nfds_t nfds = fin ? 1 : 2;
  // Our own state changes and others' drains wake us through the thread's
  // wake_fd (core/wake.h).
  const nfds_t wi = self != nullptr ? nfds++ : 0;
  if (self != nullptr) {
    p[wi] = {self->wake->fd(), POLLIN, 0};
  }
  // What we wait for may come through the transport's own queue: wait on
  // it too, and dispatch it here (data_path::begin_direct_wait).
  const int direct = path_->begin_direct_wait();
  if (direct >= 0) {
    p[nfds++] = {direct, POLLIN, 0};
  }
  int n = sys().poll(p, nfds, timeout_ms);
  const int err = errno;
  if (direct >= 0) {
    path_->end_direct_wait(n > 0 && p[nfds - 1].revents != 0);
  }
  if (self != nullptr && n > 0 && p[wi].revents != 0) {
    self->wake->consume();  // (before the caller looks at the state again)
  }
  if (n > 0 && !fin && p[1].revents != 0) {
    tcp_stirred_.store(true);
  }
  if (n < 0) {
    return err;
  }
  if (n == 0) {
    return EAGAIN;
  }
  if (p[0].revents != 0 && !ready()) {
    // A doorbell rung for a state that is gone again: reset it (the caller
    // looks once more).
    reset_doorbell(rx, false, self);
  }
  return 0;
}

bool conn::watch_on(wait_set& ws, int wake) {
  return ws.watch(bells_name(), path_->rx_fd(), path_->tx_fd(), serial_, tcp_fd_, wake);
}

int conn::watch_among(wait_set& ws, bool& again) {
  return ws.watch_any(bells_name(), path_->rx_fd(), path_->tx_fd(), serial_, tcp_fd_, again);
}

uint64_t conn::bells_name() const {
  // (Doorbells that serve this connection only are named by it.)
  return path_->bells_id() != 0 ? path_->bells_id() : serial_ | uint64_t{1} << 63;
}

template <class Ready>
int conn::wait_edge(bool rx, int timeout_ms, Ready& ready, waiter& self, wait_set& ws) {
  // After the peer's FIN its TCP socket reports no further edge: while
  // its meaning is open (check_tcp()), look again every few ms.
  if (sh_->fin_ms.load() != 0 && !finished() && (timeout_ms < 0 || timeout_ms > 10)) {
    timeout_ms = 10;
  }
  epoll_event ev[4];
  const int n = sys().epoll_wait(ws.fd(), ev, 4, timeout_ms);
  if (n < 0 && (errno == EBADF || errno == EINVAL)) {
    // The application closed the set's number behind our back (closefrom,
    // close_range), perhaps reused it: the thread makes a new set, and
    // the caller looks and waits again.
    lose_thread_wait_set();
    return 0;
  }
  if (n < 0) {
    return errno;
  }
  if (n == 0) {
    return EAGAIN;
  }
  bool bell = false;
  for (int i = 0; i < n; ++i) {
    if (ev[i].data.u64 == wait_set::tag_wake) {
      self.wake->consume();  // (before the caller looks at the state again)
    } else if (ev[i].data.u64 == wait_set::tag_tcp) {
      tcp_stirred_.store(true);
    } else if (ev[i].data.u64 == (rx ? wait_set::tag_rx : wait_set::tag_tx)) {
      bell = true;
    }
  }
  // A ring that brought nothing we wait for (a partial MSG_WAITALL, the
  // peer's stray rings): emptied, so that a peer that floods the doorbell
  // is caught here. (A ring for what we wait for stays queued: the next
  // wait re-arms the doorbell without a system call.)
  if (bell && !ready()) {
    reset_doorbell(rx, false, &self);
  }
  return 0;
}

bool conn::ended(bool rx) const {
  if (finished()) {
    return true;
  }
  const uint8_t pf = path_->peer_conn_flags();
  if (rx) {
    return sh_->shut_rd.load() || (pf & (peer_eof_flags | cdc::conn_abnormal)) != 0;
  }
  return (sh_->my_flags.load() & (cdc::conn_done_writing | cdc::conn_closed)) != 0 ||
         (pf & (cdc::conn_closed | cdc::conn_abnormal)) != 0;
}

template <class Ready>
int conn::wait_confined(bool rx, int timeout_ms, Ready& ready, waiter& self) {
  // One fd: the waiter (both doorbells and the TCP socket), or, without
  // one (or once the TCP socket's end is known and it would stay readable),
  // the doorbell alone, with a look at the TCP socket every 100 ms.
  // Not the waiter while the other doorbell has a waiter of its own (its
  // level must hold for that one), or once the other direction ended (its
  // doorbell may be shut, readable for good): either would keep the
  // waiter readable.
  const bool whole = waiter_ >= 0 && !finished() && sh_->fin_ms.load() == 0 &&
                     (rx ? path_->tx_waiters() : path_->rx_waiters()) == 0 && !ended(!rx);
  if (!whole && self.in == this) {
    // The doorbell alone: off the list (a wake made before went with a
    // change that the look below sees); what the connection changes by
    // itself is seen at the next 100 ms slice.
    set_waiter(&self, 0);
    if (ready()) {
      return 0;
    }
  }
  pollfd p{whole ? waiter_ : (rx ? path_->rx_fd() : path_->tx_fd()), POLLIN, 0};
  timeout_ms = static_cast<int>(sleep_slice(timeout_ms, look_every_ms, !whole && !finished()));
  int n = sys().poll(&p, 1, timeout_ms);
  const int err = errno;
  if (n < 0) {
    return err;
  }
  if (whole && self.wake != nullptr) {
    self.wake->clear();  // (before the caller looks at the state again)
  }
  tcp_stirred_.store(true);  // the TCP socket may be what woke us, or time passed
  if (n == 0) {
    return EAGAIN;
  }
  if (!ready()) {
    // Whatever rang is not what we wait for: reset both doorbells (ours
    // rings again if its condition holds, the other if someone waits on
    // it), so the waiter is quiet again.
    reset_doorbell(rx);
    if (whole) {
      quiet_doorbell(!rx);
    }
  }
  return 0;
}

void conn::set_cork(bool on) {
  corked_.store(on, std::memory_order_relaxed);
  if (!on) {
    flush_cork();
  }
}

void conn::flush_cork() {
  if (cork_owed_.exchange(false, std::memory_order_relaxed)) {
    path_->ring_rx_now();
  }
}


int conn::wait(bool rx, int timeout_ms, uint32_t need) {
  flush_cork();  // (a peer we hold a wake-up from may be what this waits for)
  auto ready = [&] {
    // A reader is done waiting once the peer stopped writing in any way; a
    // writer waits for space, which the peer's SHUT_WR (done_writing) does not
    // change: only its close or abort ends that wait. (Counting done_writing
    // here made a writer blocked on a half-closed peer's full ring spin
    // through the send loop at full CPU instead of sleeping on the doorbell.)
    // A writer is done too once this side was shut down for writing.
    const bool peer_end =
        rx ? peer_done()
           : (path_->peer_conn_flags() & (cdc::conn_closed | cdc::conn_abnormal)) != 0 ||
                 (sh_->my_flags.load() & (cdc::conn_done_writing | cdc::conn_closed)) != 0;
    if (sh_->err.load() != 0 || sh_->gone.load() || peer_end) {
      return true;
    }
    // Only a look: the caller sleeps without the lock (recv, send).
    uint32_t n = 0;
    bool ok = rx ? rx_look(n) : tx_look(n);
    return !ok || n >= (rx ? need : 1) || (rx && sh_->shut_rd.load());
  };
  // Listed before arming (see set_waiter), with the thread's wake fd, or a
  // confined connection's own (made by confine(): a confined process makes
  // no new fds).
  const bool confined = confined_.load(std::memory_order_relaxed);
  waiter self;
  self.wake = confined ? confined_wake_.get() : thread_wake_fd();
  if (self.wake != nullptr) {
    set_waiter(&self, rx ? wait_rx : wait_tx);
  }
  // Over shm, on the thread's wait set (core/wake.h): its watches are in
  // place before the look below, so a ring after it is an edge there.
  wait_set* ws = nullptr;
  if (!confined && self.wake != nullptr && path_->transport() == rdma::kind::shm) {
    ws = thread_wait_set();
    if (ws != nullptr && !watch_on(*ws, self.wake->fd())) {
      ws = nullptr;
    }
  }
  if (rx) {
    path_->arm_rx(1);
  } else {
    path_->arm_tx(1);
  }
  if (ws != nullptr) {
    // A ring whose edge an earlier wait took may still hold the rung flag
    // up: down with it, so that the peer rings for what comes next.
    rearm_doorbell(rx, true, &self);
  }
  int rc = 0;
  if (!ready()) {  // re-check after arming: the peer rings only for declared waiters
    rc = confined      ? wait_confined(rx, timeout_ms, ready, self)
         : ws != nullptr ? wait_edge(rx, timeout_ms, ready, self, *ws)
                         : wait_poll(rx, timeout_ms, ready, self.wake != nullptr ? &self : nullptr);
    if (rc != 0 && rc != EAGAIN && rc != EINTR) {
      // Our own wait failed (the process's limits or filter refuse it):
      // that is no error of the application's call. The connection cannot
      // be waited on any more: it ends, as a reset, and says why.
      SMC_LOG(warn, "fd %d: cannot wait for the connection (%s): it ends as reset", tcp_fd_,
              std::strerror(rc));
      abort_locally(ECONNRESET);
      rc = 0;  // the caller looks again and finds the reset
    }
  }
  if (rx) {
    path_->arm_rx(-1);
  } else {
    path_->arm_tx(-1);
  }
  if (self.wake != nullptr) {
    set_waiter(&self, 0);
  }
  return rc;
}

io_result conn::recv(const iovec* iov, int iovcnt, int flags) {
  const size_t want = iov_total(iov, iovcnt);
  if (want == 0) {
    return {0, 0};
  }
  std::unique_lock<robust_mutex> lk(sh_->rx_mu);
  const bool peek = (flags & MSG_PEEK) != 0;
  const bool waitall = (flags & MSG_WAITALL) != 0;
  size_t got = 0;
  uint32_t peek_need = 1;  // MSG_PEEK|MSG_WAITALL: wait for more than is there
  int timeout = -2;  // not yet computed
  int64_t deadline = 0;
  bool looked = false;  // non-blocking: the transport's queue was looked at
  // SO_RCVLOWAT: a read that may block waits until that much is there (at
  // most what it asked for), its timeout passes or the stream ends, and
  // then takes what there is; one that may not takes what there is.
  const uint32_t lowat = static_cast<uint32_t>(
      std::min<size_t>(std::max<uint32_t>(sh_->rcvlowat.load(std::memory_order_relaxed), 1), want));
  uint32_t lowat_need = 0;  // waiting for `lowat` bytes
  bool lowat_done = false;  // gave up waiting: take what is there
  for (;;) {
    uint32_t avail = 0;
    if (!rx_available(avail, true)) {
      abort_locally(ECONNRESET);
    }
    if (avail == 0 && sh_->shut_rd.load()) {
      // After SHUT_RD what is there is still read (as TCP does), then EOF.
      return {static_cast<ssize_t>(got), 0};
    }
    if (int e = sh_->err.load(); e != 0 && avail == 0) {
      if (got > 0) {
        return {static_cast<ssize_t>(got), 0};
      }
      // EPIPE: the error was reported already (by send, recv or SO_ERROR);
      // then a reset connection reads as EOF, as a TCP socket does once its
      // error was taken. A pending EPIPE (our bytes to a peer that had
      // closed) is a writer's error: the reader sees the peer's EOF.
      return e == EPIPE || e == err_pending_epipe ? io_result{0, 0} : report_error();
    }
    const uint32_t size = path_->rx_size();
    cursor cons = curs_unpack(sh_->rx_cons.load(std::memory_order_relaxed));
    // MSG_PEEK copies without consuming; with MSG_WAITALL it waits for the
    // whole amount, and a timeout or signal returns what is there.
    auto peek_now = [&]() -> io_result {
      size_t n = std::min<size_t>(avail, want);
      ring_to_iov(path_->rx_data(), size, cons.count, n, iov, iovcnt, 0);
      return {static_cast<ssize_t>(n), 0};
    };
    if (avail > 0 && peek) {
      if (!waitall || avail >= want || peer_done() || sh_->gone.load()) {
        return peek_now();
      }
      peek_need = avail + 1;
    } else if (avail > 0 && got == 0 && avail < lowat && !lowat_done && !peer_done() &&
               !sh_->gone.load() && sh_->err.load() == 0) {
      lowat_need = lowat;  // wait below, as for nothing at all
    } else if (avail > 0) {
      size_t n = std::min<size_t>(avail, want - got);
      ring_to_iov(path_->rx_data(), size, cons.count, n, iov, iovcnt, got);
      cons = curs_add(size, cons, static_cast<uint32_t>(n));
      sh_->rx_cons.store(curs_pack(cons), std::memory_order_release);
      path_->publish_cons(curs_pack(cons));
      drop_false_levels();
      stats::add_rx(n);
      got += n;
      if (got == want || !waitall) {
        return {static_cast<ssize_t>(got), 0};
      }
      continue;
    }
    // Nothing (more) to read: end of stream, error, or wait.
    uint8_t pf = path_->peer_conn_flags();
    if ((pf & (peer_eof_flags | cdc::conn_abnormal)) != 0 || sh_->gone.load()) {
      // `avail` predates this look at the peer's state: the peer may have
      // produced its last bytes and ended the connection in between (its
      // flags are published after its final cursor). Look once more, or that
      // data would be lost behind a premature EOF / reset.
      uint32_t again = 0;
      if (!rx_available(again, true) || again > 0) {
        continue;
      }
    }
    if ((pf & cdc::conn_abnormal) != 0 || (sh_->gone.load() && sh_->gone_reset.load())) {
      if (got > 0) {
        return {static_cast<ssize_t>(got), 0};
      }
      note_error(ECONNRESET);
      continue;  // reported (once) above
    }
    if ((pf & peer_eof_flags) != 0 || sh_->gone.load()) {
      return {static_cast<ssize_t>(got), 0};
    }
    bool spun = false;
    if (timeout == -2) {
      // A socket that blocked last time most likely still does: spin first,
      // ask the kernel (fcntl, getsockopt) only before going to sleep. If it
      // became non-blocking meanwhile, the spin only delays its EAGAIN.
      const int64_t t0 = mono_ms();
      if ((flags & MSG_DONTWAIT) == 0 && blocking_hint_.load(std::memory_order_relaxed)) {
        if (spin_rx(pf)) {
          continue;
        }
        spun = true;
      }
      timeout = block_timeout_ms(true, flags);
      deadline = timeout > 0 ? t0 + timeout : 0;
    }
    if (timeout == 0) {
      if (!looked) {
        // Nothing here: dispatch what the transport received meanwhile
        // (nobody may be watching its completion queue just now; see
        // data_path::spin), then look once more before saying EAGAIN.
        looked = true;
        path_->poll_progress();
        continue;
      }
      if (check_tcp()) {
        continue;
      }
      if (peek_need > 1) {
        return peek_now();
      }
      if (lowat_need > 0) {
        lowat_done = true;
        continue;
      }
      return got > 0 ? io_result{static_cast<ssize_t>(got), 0} : io_result{-1, EAGAIN};
    }
    if (!spun && spin_rx(pf)) {
      continue;
    }
    if (tcp_needs_look() && check_tcp()) {
      continue;
    }
    int left = -1;
    if (timeout > 0) {
      int64_t l = deadline - mono_ms();
      if (l <= 0) {
        if (peek_need > 1) {
          return peek_now();
        }
        if (lowat_need > 0) {
          lowat_done = true;
          continue;
        }
        return got > 0 ? io_result{static_cast<ssize_t>(got), 0} : io_result{-1, EAGAIN};
      }
      left = static_cast<int>(l);
    }
    // Asleep without the lock, as the kernel sleeps without the socket's:
    // another reader (in this process or another holding the connection)
    // is not held up behind us, and everything is looked at again after.
    lk.unlock();
    int w = wait(true, left, std::max(peek_need, lowat_need));
    lk.lock();
    if (w == EINTR && got == 0 && timeout < 0 && signals_restart()) {
      // An SA_RESTART handler ran: the kernel restarts a recv that had
      // nothing yet (with bytes, it returns them).
      continue;
    }
    if (w != 0 && w != EAGAIN && w != EINTR && sh_->err.load() != 0) {
      continue;  // the wait ended the connection: reported (once) above
    }
    if (w == EINTR && lowat_need > 0) {
      lowat_done = true;  // a signal: what is there is returned, as TCP does
      continue;
    }
    if (w == EINTR || (w != 0 && w != EAGAIN)) {
      if (peek_need > 1) {
        return peek_now();
      }
      return got > 0 ? io_result{static_cast<ssize_t>(got), 0} : io_result{-1, w};
    }
  }
}

io_result conn::send(const iovec* iov, int iovcnt, int flags) {
  const size_t want = iov_total(iov, iovcnt);
  std::unique_lock<robust_mutex> lk(sh_->tx_mu);
  auto epipe = [&]() -> io_result {
    if ((flags & MSG_NOSIGNAL) == 0) {
      ::raise(SIGPIPE);  // as the kernel does for a TCP socket, to the calling thread
    }
    return {-1, EPIPE};
  };
  // A reset (the peer's, or our own abort): reported once, by whichever
  // call comes first; afterwards the pipe is just broken.
  auto aborted = [&]() -> io_result {
    if (sh_->err.load() == EPIPE) {
      return epipe();
    }
    const io_result r = report_error();
    return r.err == EPIPE ? epipe() : r;
  };
  if (sh_->err.load() != 0) {
    return aborted();
  }
  if ((sh_->my_flags.load() & (cdc::conn_done_writing | cdc::conn_closed)) != 0) {
    return epipe();
  }
  if (want == 0) {
    return {0, 0};
  }
  const uint32_t size = path_->tx_size();
  // Publish in pieces of at most a quarter ring so the reader can start
  // copying while we fill the rest.
  const uint32_t piece = std::max<uint32_t>(size / 4, 1);
  size_t sent = 0;
  int timeout = -2;
  int64_t deadline = 0;
  bool looked = false;  // as in recv
  for (;;) {
    if (sh_->err.load() != 0) {  // aborted while we waited
      return sent > 0 ? io_result{static_cast<ssize_t>(sent), 0} : aborted();
    }
    if ((sh_->my_flags.load() & (cdc::conn_done_writing | cdc::conn_closed)) != 0) {
      // Another thread shut the connection down for writing while this one
      // waited for space: as on TCP, what went is returned, else EPIPE.
      return sent > 0 ? io_result{static_cast<ssize_t>(sent), 0} : epipe();
    }
    uint8_t pf = path_->peer_conn_flags();
    if ((pf & cdc::conn_abnormal) != 0 || (sh_->gone.load() && sh_->gone_reset.load())) {
      if (sent > 0) {
        return {static_cast<ssize_t>(sent), 0};
      }
      note_error(ECONNRESET);
      return aborted();
    }
    if ((pf & cdc::conn_closed) != 0 || sh_->gone.load()) {
      // The peer closed: nobody will ever read this. TCP takes the bytes and
      // learns so from the peer's reset, which in CLOSE_WAIT is an EPIPE for
      // the next write (or SO_ERROR) to report; the same here, without the
      // round trip.
      if (sent > 0) {
        return {static_cast<ssize_t>(sent), 0};
      }
      note_error(err_pending_epipe);
      kick(true, true);
      return {static_cast<ssize_t>(want), 0};
    }
    uint32_t space = 0;
    if (!tx_space(space, true)) {
      abort_locally(ECONNRESET);
      return sent > 0 ? io_result{static_cast<ssize_t>(sent), 0} : aborted();
    }
    if (space > 0) {
      uint32_t n = static_cast<uint32_t>(std::min<size_t>({space, want - sent, piece}));
      cursor prod = curs_unpack(sh_->tx_prod.load(std::memory_order_relaxed));
      iov_to_ring(*path_, size, prod.count, n, iov, iovcnt, sent);
      prod = curs_add(size, prod, n);
      sh_->tx_prod.store(curs_pack(prod), std::memory_order_release);
      // Corked, a wake-up is held back for less than a piece in all (TCP
      // holds back only a partial segment: a full one goes out at once).
      held_ = corked_.load(std::memory_order_relaxed) || (flags & MSG_MORE) != 0
                  ? held_ + n
                  : piece;
      if (held_ < piece) {
        path_->publish_prod_quiet(curs_pack(prod), sh_->my_flags.load());
        cork_owed_.store(true, std::memory_order_relaxed);
      } else {
        path_->publish_prod(curs_pack(prod), sh_->my_flags.load());
        cork_owed_.store(false, std::memory_order_relaxed);
        held_ = 0;
      }
      drop_false_levels();
      stats::add_tx(n);
      sent += n;
      if (sent == want) {
        return {static_cast<ssize_t>(sent), 0};
      }
      continue;
    }
    bool spun = false;
    if (timeout == -2) {
      const int64_t t0 = mono_ms();  // as recv: spin before asking the kernel
      if ((flags & MSG_DONTWAIT) == 0 && blocking_hint_.load(std::memory_order_relaxed)) {
        if (spin_tx()) {
          continue;
        }
        spun = true;
      }
      timeout = block_timeout_ms(false, flags);
      deadline = timeout > 0 ? t0 + timeout : 0;
    }
    if (timeout == 0) {
      if (!looked) {
        looked = true;  // as recv: the peer's consumer cursor may be waiting in a queue
        path_->poll_progress();
        continue;
      }
      if (check_tcp()) {
        continue;
      }
      return sent > 0 ? io_result{static_cast<ssize_t>(sent), 0} : io_result{-1, EAGAIN};
    }
    if (!spun && spin_tx()) {
      continue;
    }
    if (tcp_needs_look() && check_tcp()) {
      continue;
    }
    int left = -1;
    if (timeout > 0) {
      int64_t l = deadline - mono_ms();
      if (l <= 0) {
        return sent > 0 ? io_result{static_cast<ssize_t>(sent), 0} : io_result{-1, EAGAIN};
      }
      left = static_cast<int>(l);
    }
    lk.unlock();  // as recv
    int w = wait(false, left);
    lk.lock();
    if (w == EINTR && sent == 0 && timeout < 0 && signals_restart()) {
      continue;  // as recv
    }
    if (w != 0 && w != EAGAIN && w != EINTR && sh_->err.load() != 0) {
      return sent > 0 ? io_result{static_cast<ssize_t>(sent), 0} : aborted();
    }
    if (w == EINTR || (w != 0 && w != EAGAIN)) {
      return sent > 0 ? io_result{static_cast<ssize_t>(sent), 0} : io_result{-1, w};
    }
  }
}

int conn::shutdown(int how) {
  if (how == SHUT_RD || how == SHUT_RDWR) {
    sh_->shut_rd.store(true);
    kick(true, false);
  }
  if (how == SHUT_WR || how == SHUT_RDWR) {
    std::lock_guard<robust_mutex> lk(sh_->tx_mu);
    uint8_t f = sh_->my_flags.fetch_or(cdc::conn_done_writing) | cdc::conn_done_writing;
    path_->publish_prod(sh_->tx_prod.load(), f);
    kick(false, true);
  }
  return 0;
}

void conn::close(bool abort) {
  flush_cork();  // (the close's own publish below rings too; nothing is owed after)
  if (sh_->holders.fetch_sub(1) > 1) {
    // Another process holds it (a forked relative, or one the socket was
    // passed to): closing our copy must not end it for that one, as closing
    // one copy of a TCP socket does not.
    SMC_LOG(debug, "fd %d: closed here; another process still holds the connection", tcp_fd_);
    return;
  }
  if (sh_->err.load() != 0) {
    // Reset. If we never said so ourselves (the peer's reset, seen by a
    // reader), say it now: this last message goes out signalled over
    // SMC-R, and its completion is what tells the link group that the
    // staging buffer is idle. Without it, the buffer was freed under RDMA
    // WRITEs still queued unsignalled; the device failed the QP and took
    // every other connection of the link group with it.
    if ((sh_->my_flags.load() & cdc::conn_abnormal) == 0) {
      const uint8_t f = sh_->my_flags.fetch_or(cdc::conn_abnormal) | cdc::conn_abnormal;
      path_->publish_prod(sh_->tx_prod.load(), f);
    }
    return;
  }
  uint32_t unread = 0;
  rx_look(unread);
  // Unread data (or SO_LINGER 0) makes it a reset, exactly as TCP does.
  uint8_t add = (abort || unread > 0) ? cdc::conn_abnormal
                                      : static_cast<uint8_t>(cdc::conn_closed | cdc::conn_done_writing);
  uint8_t f = sh_->my_flags.fetch_or(add) | add;
  path_->publish_prod(sh_->tx_prod.load(), f);
  path_->publish_cons(sh_->rx_cons.load());  // wakes a peer writer blocked on our full RMB
  // Our closing state must reach the peer before our TCP FIN can. A peer
  // that ended its side already (its SMC close, or its TCP end taken as its
  // end) reads neither, and its process may be gone: then the message is
  // never acknowledged, and waiting for it stalled each such close for the
  // transport's bound (an event-loop server closing the connections of a
  // client that had exited stalled a second per connection).
  const bool peer_ended =
      (path_->peer_conn_flags() & (cdc::conn_closed | cdc::conn_abnormal)) != 0 || sh_->gone.load();
  if (!peer_ended) {
    path_->settle_close();
  }
  SMC_LOG(debug, "fd %d: SMC close (%s)", tcp_fd_, (add & cdc::conn_abnormal) != 0 ? "abort" : "orderly");
}

poll_mask conn::events() {
  poll_mask ev = 0;
  uint32_t avail = 0;
  bool rx_ok = rx_look(avail);
  uint32_t space = 0;
  bool tx_ok = tx_look(space);
  uint8_t pf = path_->peer_conn_flags();
  // Readable once SO_RCVLOWAT bytes are there (tcp_epollin_ready()).
  if (avail >= std::max<uint32_t>(sh_->rcvlowat.load(std::memory_order_relaxed), 1) || !rx_ok) {
    ev |= POLLIN;
  }
  if (sh_->shut_rd.load()) {
    ev |= POLLIN | POLLRDHUP;  // as tcp_poll() for RCV_SHUTDOWN
  }
  if ((pf & (peer_eof_flags | cdc::conn_abnormal)) != 0 || sh_->gone.load()) {
    ev |= POLLIN | POLLRDHUP;
  }
  if (space > 0 || !tx_ok) {
    ev |= POLLOUT;
  }
  bool wr_shut = (sh_->my_flags.load() & cdc::conn_done_writing) != 0;
  bool peer_hup = (pf & (peer_eof_flags | cdc::conn_abnormal)) != 0 || sh_->gone.load();
  const int err = sh_->err.load();
  if (err == EPIPE) {
    // Reset, and the error taken already: no POLLERR any more, as tcp_poll()
    // once sk_err was read.
    ev |= POLLHUP | POLLIN | POLLOUT | POLLRDHUP;
  } else if ((pf & cdc::conn_abnormal) != 0 || sh_->gone_reset.load() || err != 0) {
    ev |= POLLERR | POLLHUP | POLLIN | POLLOUT;
  } else if (sh_->gone.load() || (pf & cdc::conn_closed) != 0 || wr_shut) {
    // A write would fail at once (EPIPE): not blocking. After our own
    // SHUT_WR too, as tcp_poll() reports EPOLLOUT once SEND_SHUTDOWN is set.
    ev |= POLLOUT;
  }
  if (peer_hup && wr_shut) {
    ev |= POLLHUP;
  }
  return ev;
}

void conn::drain_doorbell(bool rx) {
  if (!(rx ? path_->drain_rx() : path_->drain_tx())) {
    flooded(rx);
  }
}

void conn::flooded(bool rx) {
  // Rung far more than the protocol lets a peer, or readable with no ring
  // (an empty message; the end of file). A doorbell shut at an end (ours,
  // or another holder's) is readable for good, which is the truth then;
  // so is the doorbell of a peer whose process ended, which its TCP end
  // says (then that decides between EOF and a reset). Anything else costs
  // that peer its connection, and us nothing more than the drain (a
  // doorbell left readable for good would keep every level-triggered
  // watcher awake).
  if (ended(rx) || (check_tcp() && ended(rx))) {
    return;
  }
  if (path_->bell_hung_up(rx)) {
    // The peer's processes let go of the ringing end: they ended, their
    // TCP end still on its way (a process's fds close one by one), or
    // they threw the connection away. Either way the peer is gone, as a
    // TCP end without its SMC close would say: EOF, or a reset if it left
    // data of ours unread.
    SMC_LOG(info, "fd %d: the peer let go of the connection's %s doorbell: it is gone", tcp_fd_,
            rx ? "rx" : "tx");
    path_->sync_rx();  // the peer's SMC close flags may still be on their way
    peer_gone(false, path_->peer_conn_flags());
    return;
  }
  SMC_LOG(warn, "fd %d: the peer floods the connection's %s doorbell, or sent no ring", tcp_fd_,
          rx ? "rx" : "tx");
  abort_locally(ECONNRESET);
}

void conn::rearm_doorbell(bool rx, bool armed, const waiter* self) {
  if (level_watchers_.load(std::memory_order_relaxed) > 0) {
    reset_doorbell(rx, true, self);  // its level must hold for a watcher that reads it
    return;
  }
  const int r = rx ? path_->rearm_rx() : path_->rearm_tx();
  if (r < 0) {
    flooded(rx);
    return;
  }
  if (r == 2) {
    settle_doorbell(rx, false, armed ? 1 : 0, self);  // (a drain is due)
  } else if (r > 0) {
    ring_if_due(rx, events(), armed ? 1 : 0, self);
  }
}

bool conn::counted_drain(bool rx, bool fired, poll_mask& ev) {
  if (!path_->counts_rings()) {
    return false;
  }
  // One at a time (in every process that holds the connection): two that
  // counted the same rings would take twice as many.
  std::lock_guard<robust_mutex> lk(sh_->bell_mu);
  // The flag first, then the count, then the state: a ring that lands
  // after the flag went down is either counted, and then what it
  // announces is seen below (the peer publishes before it rings), or not
  // counted, and then it is not taken.
  rx ? path_->unrung_rx() : path_->unrung_tx();
  const int n = rx ? path_->queued_rx() : path_->queued_tx();
  ev = events();
  if (n < 0 || (n == 0 && fired)) {
    return false;
  }
  // What it announces holds: one ring stays, so that a watcher whose
  // edge-triggered event is pending still finds it readable (epoll drops
  // such an event at harvest otherwise), and a level-triggered one wakes.
  const int take = (ev & (rx ? POLLIN : POLLOUT)) != 0 ? n - 1 : n;
  if (take > 0) {
    if (!(rx ? path_->take_rx(take) : path_->take_tx(take))) {
      flooded(rx);
    }
    ev = events();  // (what came meanwhile rang, and is reported now too)
  }
  return true;
}

void conn::set_waiter(waiter* w, uint32_t dirs) {
  std::lock_guard<std::mutex> lk(wmu_);
  const uint32_t was = w->in == this ? w->dirs : 0;
  if (dirs != 0 && w->in != this) {
    w->in = this;
    w->prev = nullptr;
    w->next = waiters_;
    if (waiters_ != nullptr) {
      waiters_->prev = w;
    }
    waiters_ = w;
  } else if (dirs == 0 && w->in == this) {
    (w->prev != nullptr ? w->prev->next : waiters_) = w->next;
    if (w->next != nullptr) {
      w->next->prev = w->prev;
    }
    w->in = nullptr;
    w->prev = w->next = nullptr;
  }
  w->dirs = dirs;
  listed_rx_.fetch_add(((dirs & wait_rx) != 0 ? 1 : 0) - ((was & wait_rx) != 0 ? 1 : 0));
  listed_tx_.fetch_add(((dirs & wait_tx) != 0 ? 1 : 0) - ((was & wait_tx) != 0 ? 1 : 0));
  if (w->level) {
    listed_levels_.fetch_add((dirs != 0 ? 1 : 0) - (was != 0 ? 1 : 0));
  }
}

void conn::drop_false_levels() {
  if (listed_levels_.load(std::memory_order_relaxed) == 0) {
    return;
  }
  bool quiet_rx = false;
  bool quiet_tx = false;
  {
    // The state is looked at under the lock that wakes take: a wake made
    // before is for a change seen here, one made after sets the level again.
    std::lock_guard<std::mutex> lk(wmu_);
    const poll_mask ev = events();
    for (waiter* w = waiters_; w != nullptr; w = w->next) {
      if (!w->level) {
        continue;
      }
      const bool rx = (w->dirs & wait_rx) != 0;
      const bool tx = (w->dirs & wait_tx) != 0;
      if (!((rx && (ev & POLLIN) != 0) || (tx && (ev & POLLOUT) != 0))) {
        w->wake->clear();
      }
      quiet_rx = quiet_rx || (rx && (ev & POLLIN) == 0);
      quiet_tx = quiet_tx || (tx && (ev & POLLOUT) == 0);
    }
  }
  // Such a waiter watches the doorbells too, level-triggered: a ring left
  // queued while the state held would keep it ready.
  if (quiet_rx) {
    quiet_doorbell(true);
  }
  if (quiet_tx) {
    quiet_doorbell(false);
  }
}

void conn::wake_listed(uint32_t dirs, const waiter* except) {
  if (listed_rx_.load() + listed_tx_.load() == 0) {
    return;
  }
  const wake_fd* mine = own_wake_fd();
  std::lock_guard<std::mutex> lk(wmu_);
  for (waiter* w = waiters_; w != nullptr; w = w->next) {
    const uint32_t d = w->dirs & dirs;
    if (w == except || d == 0 || w->wake == mine) {
      continue;
    }
    if (w->on_kick != nullptr) {
      w->on_kick(w, d);
    }
    w->wake->wake();
    stats::count_wake(true);
  }
}

void conn::ring_for_unlisted(bool rx, int above, bool end) {
  // (After the state change that the waiters must see: a waiter declares
  // itself, then looks at the state; this looks at the declarations after
  // changing it.)
  std::atomic_thread_fence(std::memory_order_seq_cst);
  const int64_t declared = rx ? path_->rx_waiters() : path_->tx_waiters();
  const int64_t listed = (rx ? listed_rx_ : listed_tx_).load();
  if (declared - listed > above) {
    if (end) {
      rx ? path_->end_rx() : path_->end_tx();
    } else {
      rx ? path_->kick_rx() : path_->kick_tx();
    }
    stats::count_wake(false);
  }
}

void conn::kick(bool rx, bool tx) {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  wake_listed((rx ? wait_rx : 0u) | (tx ? wait_tx : 0u), nullptr);
  if (rx) {
    ring_for_unlisted(true, 0, true);
  }
  if (tx) {
    ring_for_unlisted(false, 0, true);
  }
}

void conn::ring_if_due(bool rx, poll_mask ev, int above, const waiter* self) {
  if ((ev & (rx ? POLLIN : POLLOUT)) == 0) {
    return;
  }
  wake_listed(rx ? wait_rx : wait_tx, self);
  // `above`: how many declarations are the caller's own (-1: it needs the
  // doorbell's level itself). A caller on the list is woken through its
  // wake_fd and looks at the state again by itself: only unlisted
  // waiters need the ring then.
  const bool listed_self = self != nullptr && self->in == this &&
                           (self->dirs & (rx ? wait_rx : wait_tx)) != 0;
  ring_for_unlisted(rx, listed_self ? 0 : above);
}

poll_mask conn::settle_doorbell(bool rx, bool fired, int above, const waiter* self) {
  poll_mask ev = 0;
  if (counted_drain(rx, fired, ev)) {
    return ev;  // (no ring taken that anyone needs: none to put back)
  }
  drain_doorbell(rx);
  ev = events();
  ring_if_due(rx, ev, above, self);
  return ev;
}

poll_mask conn::reset_doorbell(bool rx, bool edge, const waiter* self) {
  return settle_doorbell(rx, true, edge ? 1 : -1, self);
}

void conn::quiet_doorbell(bool rx) { settle_doorbell(rx, false, 0, nullptr); }

uint32_t conn::readable_bytes() {
  uint32_t avail = 0;
  rx_look(avail);
  return avail;
}

uint32_t conn::unsent_bytes() {
  const uint32_t size = path_->tx_size();
  const cursor prod = curs_unpack(sh_->tx_prod.load());
  cursor cons = curs_unpack(path_->peer_cons());
  // The peer's cursor is untrusted: one that is not at most a ring behind our
  // producer cursor made curs_diff() report up to twice the ring size
  // (SIOCOUTQ beyond the buffer). Use the last validated one instead.
  if (!curs_ahead_within(size, cons, prod)) {
    cons = curs_unpack(sh_->tx_cons.load());
  }
  return curs_diff(size, cons, prod);
}

void conn::note_error(int e) {
  int none = 0;
  sh_->err.compare_exchange_strong(none, e);
}

io_result conn::report_error() {
  int e = sh_->err.load();
  while (e != 0 && e != EPIPE && !sh_->err.compare_exchange_weak(e, EPIPE)) {
  }
  sh_->so_error.store(0);
  if (e == err_pending_epipe) {
    return {-1, EPIPE};
  }
  return e == 0 || e == EPIPE ? io_result{0, 0} : io_result{-1, e};
}

int conn::take_error() {
  // A reset not reported yet is reported here, once (SO_ERROR takes the
  // socket's error as the kernel's sock_error() does).
  int e = sh_->err.load();
  if (e == 0 && ((path_->peer_conn_flags() & cdc::conn_abnormal) != 0 ||
                 (sh_->gone.load() && sh_->gone_reset.load()))) {
    note_error(ECONNRESET);
    e = sh_->err.load();
  }
  if (e != 0 && e != EPIPE) {
    io_result r = report_error();
    return r.n < 0 ? r.err : 0;
  }
  return sh_->so_error.exchange(0);
}

bool conn::tcp_needs_look() {
  // Before a blocking wait: the wait's poll watches the TCP socket (level-
  // triggered), so what the socket holds now wakes it at once and is looked
  // at after. A look (a system call) is due only when the last poll saw the
  // socket stir, or after the peer's FIN, whose meaning the look settles.
  return sh_->fin_ms.load() != 0 || tcp_stirred_.exchange(false);
}

ssize_t conn::peek_tcp() {
  if (!confined_.load(std::memory_order_relaxed)) {
    char b;
    ssize_t n = sys().recv(tcp_fd_, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
      return -2;
    }
    return n < 0 ? -1 : n;
  }
  // Confined: what poll() says of it (one fd, no timeout).
  pollfd p{tcp_fd_, POLLIN | POLLRDHUP, 0};
  if (sys().poll(&p, 1, 0) <= 0) {
    return -2;
  }
  if ((p.revents & (POLLERR | POLLNVAL)) != 0) {
    return -1;
  }
  if ((p.revents & (POLLRDHUP | POLLHUP)) != 0) {
    return 0;
  }
  return (p.revents & POLLIN) != 0 ? 1 : -2;
}

bool conn::confine() {
  if (confined_.load()) {
    return true;
  }
  int fl = sys().fcntl(tcp_fd_, F_GETFL);
  c_nonblock_.store(fl >= 0 && (fl & O_NONBLOCK) != 0);
  for (bool rx : {true, false}) {
    timeval tv{};
    socklen_t len = sizeof(tv);
    int ms = -1;
    if (sys().getsockopt(tcp_fd_, SOL_SOCKET, rx ? SO_RCVTIMEO : SO_SNDTIMEO, &tv, &len) == 0 &&
        (tv.tv_sec != 0 || tv.tv_usec != 0)) {
      ms = static_cast<int>(std::clamp<int64_t>(
          static_cast<int64_t>(tv.tv_sec) * 1000 + (tv.tv_usec + 999) / 1000, 1, INT_MAX));
    }
    (rx ? c_rcvtimeo_ : c_sndtimeo_).store(ms);
  }
  // The waiter: one fd for a wait to poll, readable when either doorbell
  // rings or the TCP socket stirs. Without it, waits poll the doorbell.
  int w = sys().epoll_create1(EPOLL_CLOEXEC);
  if (w >= 0) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    bool ok = sys().epoll_ctl(w, EPOLL_CTL_ADD, path_->rx_fd(), &ev) == 0;
    if (ok && path_->tx_fd() != path_->rx_fd()) {
      ok = sys().epoll_ctl(w, EPOLL_CTL_ADD, path_->tx_fd(), &ev) == 0;
    }
    ev.events = EPOLLIN | EPOLLRDHUP;
    ok = ok && sys().epoll_ctl(w, EPOLL_CTL_ADD, tcp_fd_, &ev) == 0;
    if (!ok) {
      sys().close(w);
      w = -1;
    }
  }
  if (w >= 0) {
    auto wf = std::make_unique<wake_fd>();
    epoll_event ev{};
    ev.events = EPOLLIN;
    if (wf->ok() && sys().epoll_ctl(w, EPOLL_CTL_ADD, wf->fd(), &ev) == 0) {
      confined_wake_ = std::move(wf);
    }
  }
  waiter_ = w;
  path_->confine();
  confined_.store(true);
  return w >= 0;
}

void conn::note_nonblock(bool on) { c_nonblock_.store(on); }

void conn::note_timeout(bool rx, int ms) { (rx ? c_rcvtimeo_ : c_sndtimeo_).store(ms); }

bool conn::check_tcp() {
  if (finished()) {
    return false;
  }
  ssize_t n = 0;
  if (sh_->fin_ms.load() == 0) {
    n = peek_tcp();
    if (n == -2) {
      return false;
    }
    if (n > 0) {
      // After the switch nothing may travel on TCP: a peer that sends is broken.
      SMC_LOG(warn, "fd %d: data on the TCP socket of an SMC connection", tcp_fd_);
      abort_locally(ECONNRESET);
      return true;
    }
    if (n == 0) {
      sh_->fin_ms.store(std::max<int64_t>(1, mono_ms()));
    }
  }
  path_->sync_rx();  // the peer's SMC close flags may still be on their way
  uint8_t pf = path_->peer_conn_flags();
  // Over RDMA the peer may be Linux's SMC, which shuts its TCP socket down
  // with the SMC one. Over shm the peer is always the preload, which keeps
  // TCP open until its close and publishes its flags before: a FIN is its end.
  if (n == 0 && path_->transport() == rdma::kind::rdma &&
      (pf & (cdc::conn_closed | cdc::conn_abnormal)) == 0) {
    if ((pf & cdc::conn_done_writing) != 0) {
      // This FIN is the peer's SHUT_WR, and it still reads. Its SMC flags
      // say the rest (and the link, should it die now).
      sh_->tcp_half.store(true);
      SMC_LOG(debug, "fd %d: peer TCP half-closed with its SMC SHUT_WR", tcp_fd_);
      return true;
    }
    if (mono_ms() - sh_->fin_ms.load() < fin_grace_ms) {
      // Linux's SMC sends its closing CDC, then shuts TCP down: the FIN may
      // overtake the CDC. Its absence past the grace means the peer died.
      return false;
    }
  }
  // The TCP connection ended.
  peer_gone(n < 0, pf);
  SMC_LOG(debug, "fd %d: peer TCP closed (%s)", tcp_fd_, sh_->gone_reset.load() ? "reset" : "eof");
  return true;
}

void conn::peer_gone(bool reset, uint8_t pf) {
  // Without the peer's SMC close flags its process died: a reset if it left
  // data of ours unread (as TCP would send RST), else EOF.
  const bool orderly = (pf & peer_eof_flags) != 0;
  const bool unread_by_peer = curs_unpack(path_->peer_cons()) != curs_unpack(sh_->tx_prod.load());
  sh_->gone_reset.store(reset || (!orderly && unread_by_peer) || (pf & cdc::conn_abnormal) != 0);
  sh_->gone.store(true, std::memory_order_release);
  kick(true, true);
}

}  // namespace smc::core
