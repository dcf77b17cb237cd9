// shm transport: sealed memfd RMBs, socketpair doorbells, nonce-checked exchange
// over an abstract unix socket. See shm_transport.h.
#include "rdma/shm/shm_transport.h"

#include <fcntl.h>
#include <linux/memfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <new>
#include <utility>
#include <vector>

#include "rdma/sys.h"

namespace smc::rdma::shm {

namespace {

constexpr uint64_t hello_magic = 0x534d432d52445631ULL;  // "SMC-RDV1"
constexpr unsigned required_seals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;

// One message each way on the rendezvous socket, plus three fds.
struct hello {
  uint64_t magic;
  uint64_t to_token;    // the receiver's nonce: proves the sender saw our CLC message
  uint64_t from_token;  // the sender's own nonce
  uint32_t rmb_size;
  uint32_t kept_link;   // a server's: the id of the same-host link it keeps (else 0)
};

void close_fd(int& fd) {
  if (fd >= 0) {
    sys().close(fd);
    fd = -1;
  }
}

void rendezvous_name(sockaddr_un& sa, socklen_t& len, uint64_t host_id, uint32_t link_id) {
  std::memset(&sa, 0, sizeof(sa));
  sa.sun_family = AF_UNIX;
  // Abstract namespace (leading NUL): no file to clean up, gone with the socket.
  int n = std::snprintf(sa.sun_path + 1, sizeof(sa.sun_path) - 1, "smc-preload/%016llx/%08x",
                        static_cast<unsigned long long>(host_id), link_id);
  len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + n);
}

// Wait for `events` on fd (and optionally readability of abort_fd) until deadline.
// Returns 1 ready, 0 timeout, -1 error (errno), -2 abort_fd readable.
int wait_fd(int fd, short events, int64_t deadline_ms, int abort_fd) {
  for (;;) {
    int64_t left = deadline_ms - now_ms();
    if (left <= 0) {
      return 0;
    }
    pollfd p[2] = {{fd, events, 0}, {abort_fd, POLLIN, 0}};
    int n = sys().poll(p, abort_fd >= 0 ? 2 : 1, static_cast<int>(left));
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return -1;
    }
    if (n == 0) {
      return 0;
    }
    if (abort_fd >= 0 && p[1].revents != 0) {
      return -2;
    }
    if (p[0].revents != 0) {
      return 1;
    }
  }
}

bool send_hello(int sock, const hello& h, const int fds[3]) {
  return send_with_fds(sock, &h, sizeof(h), fds, 3);
}

// Receives one hello with exactly three fds; any other shape is rejected and
// every received fd closed.
bool recv_hello(int sock, int64_t deadline_ms, hello& h, int fds[3]) {
  if (wait_fd(sock, POLLIN, deadline_ms, -1) != 1) {
    if (errno == 0) {
      errno = ETIMEDOUT;
    }
    return false;
  }
  std::vector<int> got;
  bool truncated = false;
  const ssize_t n = recv_with_fds(sock, &h, sizeof(h), got, truncated);
  if (n != static_cast<ssize_t>(sizeof(h)) || truncated || got.size() != 3 || h.magic != hello_magic) {
    for (int fd : got) {
      close_untrusted(fd);
    }
    errno = EPROTO;
    return false;
  }
  std::memcpy(fds, got.data(), 3 * sizeof(int));
  return true;
}

// The peer's side, as its hello described it. Its ringing ends are shut
// for reading first: the peer holds their other ends and could otherwise
// queue fds on them, released on our thread when we close them (a socket
// whose close blocks, one that keeps the peer's connection alive). What it
// queued already is taken and closed now.
void take_peer(const int fds[3], const hello& h, peer_side& out) {
  tame_ring(fds[1]);
  tame_ring(fds[2]);
  out.rmb_fd = fds[0];
  out.rx_ring = fds[1];
  out.tx_ring = fds[2];
  out.rmb_size = h.rmb_size;
  out.token = h.from_token;
  out.kept_link = h.kept_link;
}

// ---- doorbells (see shm_transport.h) ----

// Whether this kernel lets a doorbell refuse fds (SO_PASSRIGHTS). Without
// it a peer can queue fds on our doorbells, and every drain and close of
// one takes and closes them itself (drain_untrusted) rather than let the
// kernel release them on our thread.
std::atomic<bool> g_bells_take_fds{false};

// A doorbell's two ends, not placed yet (local_side::init places a slot's
// fds at once).
bool bell_pair(int (&sv)[2]) {
  return ::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) == 0;
}

// The peer rings a doorbell through its other end: it must never park an
// fd on ours.
void refuse_fds_on_bell(int bell) {
  if (!refuse_passed_fds(bell)) {
    g_bells_take_fds.store(true, std::memory_order_relaxed);
  }
}

// Closes one of our doorbells' waiting ends (see g_bells_take_fds).
void close_bell(int& fd) {
  if (fd >= 0 && g_bells_take_fds.load(std::memory_order_relaxed)) {
    close_untrusted(fd);
    fd = -1;
  }
  close_fd(fd);
}

// Rings through a ringing end. `confined`: the process may no longer make
// the send() system call (sshd's sandbox allows write(), not sendto()):
// write() after poll() says there is room, a narrower guarantee (a peer
// that clears O_NONBLOCK on the description it shares and fills the queue
// in between could still hold the write).
void bell_ring(int ring, bool confined) {
  const char one = 1;
  ssize_t n;
  if (confined) {
    pollfd p{ring, POLLOUT, 0};
    if (sys().poll(&p, 1, 0) != 1 || (p.revents & POLLOUT) == 0 ||
        (p.revents & (POLLHUP | POLLERR)) != 0) {
      return;  // full (so it rings already), gone, or shut by its owner (end_rx)
    }
    do {
      n = sys().write(ring, &one, 1);
    } while (n < 0 && errno == EINTR);
    return;
  }
  do {
    n = sys().send(ring, &one, 1, MSG_DONTWAIT | MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  // EAGAIN: its queue is full, so it rings already. EPIPE: nobody waits
  // there any more (the peer is gone; its TCP end says so).
}

// Takes up to `max` (at most max_queued_rings + 1) of a doorbell's oldest
// rings in one recvmmsg (or, where the doorbell may hold fds,
// drain_untrusted); how many, -1 if none. An empty message, or the end of
// file (a doorbell shut for reading gives one for every message recvmmsg
// asks for once its rings are taken), is no ring: it sets `not_ring` and
// ends the take.
int bell_recv(int bell, int max, bool& not_ring) {
  if (g_bells_take_fds.load(std::memory_order_relaxed)) {
    const int n = drain_untrusted(bell, max, &not_ring);
    return n > 0 ? n : -1;
  }
  mmsghdr m[max_queued_rings + 1];
  char buf[max_queued_rings + 1][1];
  iovec v[max_queued_rings + 1];
  std::memset(m, 0, sizeof m);
  for (int i = 0; i < max; ++i) {
    v[i] = {buf[i], sizeof buf[i]};
    m[i].msg_hdr.msg_iov = &v[i];
    m[i].msg_hdr.msg_iovlen = 1;
  }
  int n;
  do {
    n = sys().recvmmsg(bell, m, static_cast<unsigned>(max), MSG_DONTWAIT, nullptr);
  } while (n < 0 && errno == EINTR);
  for (int i = 0; i < n; ++i) {
    if (m[i].msg_len == 0) {
      not_ring = true;
      return i > 0 ? i : -1;
    }
  }
  return n;
}

// Empties a doorbell; false if it held more rings than a peer that follows
// the protocol can have put there, or anything that is not a ring (an
// empty message; the end of file: the doorbell was shut, by us at an end,
// or by the peer through its end, or the peer's process is gone). (The
// waiting end's description is ours and our holders' alone, non-blocking
// from its creation.) One recvmmsg takes every queued ring at once; a
// confined process, which may be allowed read() only, reads them one by
// one.
bool bell_drain(int bell, bool confined) {
  if (!confined || g_bells_take_fds.load(std::memory_order_relaxed)) {
    bool not_ring = false;
    return bell_recv(bell, max_queued_rings + 1, not_ring) <= max_queued_rings &&  // (-1: empty)
           !not_ring;
  }
  char buf[8];
  for (int i = 0; i < max_queued_rings; ++i) {
    ssize_t n = sys().read(bell, buf, sizeof buf);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      return n < 0;  // empty (EAGAIN), or an error that leaves nothing to read; 0: no ring
    }
  }
  return false;
}

// How many rings a doorbell holds (each is one byte), -1 if it cannot say.
int bell_queued(int bell) {
  int n = 0;
  return sys().ioctl(bell, FIONREAD, &n) == 0 ? n : -1;
}

// Takes the `n` oldest rings off a doorbell; false if it held more than a
// peer that follows the protocol can have put there, or what is no ring
// (bell_recv).
bool bell_take(int bell, int n) {
  if (n > max_queued_rings) {
    return false;
  }
  bool not_ring = false;
  bell_recv(bell, n, not_ring);
  return !not_ring;
}

class shm_path final : public data_path {
 public:
  shm_path(std::unique_ptr<local_side> me, std::unique_ptr<remote_side> peer,
           std::shared_ptr<slot_home> home)
      : me_(std::move(me)), peer_(std::move(peer)), home_(std::move(home)) {}
  ~shm_path() override {
    if (home_) {
      // What our doorbells may hold now: what the slot carried in (unless
      // this path drained it), re-arms since the last drain, a flag up.
      me_->queued_rx = (drained_rx_.load() ? 0 : me_->queued_rx) + undrained_rx_.load() +
                       (mine()->ctl()->rx_rung.load() != 0 ? 1 : 0);
      me_->queued_tx = (drained_tx_.load() ? 0 : me_->queued_tx) + undrained_tx_.load() +
                       (theirs()->ctl()->tx_rung.load() != 0 ? 1 : 0);
      // (A doorbell shut for good serves no later connection.)
      home_->give_back(std::move(me_), std::move(peer_),
                       !exported_.load() && !shut_rx_.load() && !shut_tx_.load());
    }
  }

  kind transport() const override { return kind::shm; }
  void* shared_state() override { return me_->state->data(); }
  size_t shared_state_size() const override { return state_page::bytes; }
  // In export_fds() order (shm_transport.h). Once exported, another process
  // can reach both halves: the link never reuses them.
  bool export_fds(std::vector<int>& out, uint32_t& rx_size, uint32_t& tx_size) const override {
    exported_.store(true);
    out.insert(out.end(), {me_->state->fd(), me_->rmb->fd(), peer_->rmb->fd(), me_->rx_bell,
                           me_->tx_bell, peer_->rx_ring, peer_->tx_ring});
    rx_size = me_->rmb->size();
    tx_size = peer_->rmb->size();
    return true;
  }

  uint32_t rx_size() const override { return mine()->size(); }
  const uint8_t* rx_data() const override { return mine()->data(); }
  uint64_t peer_prod() const override { return mine()->ctl()->prod.load(std::memory_order_acquire); }
  uint8_t peer_conn_flags() const override {
    return static_cast<uint8_t>(mine()->ctl()->prod_flags.load(std::memory_order_acquire));
  }
  void publish_cons(uint64_t cons) override {
    control* c = mine()->ctl();
    c->cons.store(cons, std::memory_order_seq_cst);
    if (c->tx_waiters.load(std::memory_order_seq_cst) != 0 &&
        c->tx_rung.exchange(1, std::memory_order_seq_cst) == 0) {
      bell_ring(peer_->tx_ring, confined_.load(std::memory_order_relaxed));
    }
  }

  uint32_t tx_size() const override { return theirs()->size(); }
  uint64_t peer_cons() const override { return theirs()->ctl()->cons.load(std::memory_order_acquire); }
  void put(uint32_t off, const void* src, size_t n) override {
    std::memcpy(theirs()->data() + off, src, n);
  }
  void publish_prod(uint64_t prod, uint8_t conn_flags) override {
    publish_prod_quiet(prod, conn_flags);
    ring_rx_now();
  }
  void publish_prod_quiet(uint64_t prod, uint8_t conn_flags) override {
    control* c = theirs()->ctl();
    // Connection-state flags only accumulate (done, closed, abort): OR them,
    // so a publish racing an abort on another thread cannot clear the abort.
    c->prod_flags.fetch_or(conn_flags, std::memory_order_release);
    c->prod.store(prod, std::memory_order_seq_cst);
  }
  void ring_rx_now() override {
    control* c = theirs()->ctl();
    if (c->rx_waiters.load(std::memory_order_seq_cst) != 0 &&
        c->rx_rung.exchange(1, std::memory_order_seq_cst) == 0) {
      bell_ring(peer_->rx_ring, confined_.load(std::memory_order_relaxed));
    }
  }

  int rx_fd() const override { return me_->rx_bell; }
  int tx_fd() const override { return me_->tx_bell; }
  // A slot of a link, as long as only this process can reach it.
  uint64_t bells_id() const override { return home_ && !exported_.load() ? me_->bell_id : 0; }
  void arm_rx(int delta) override {
    mine()->ctl()->rx_waiters.fetch_add(static_cast<uint32_t>(delta), std::memory_order_seq_cst);
  }
  void arm_tx(int delta) override {
    theirs()->ctl()->tx_waiters.fetch_add(static_cast<uint32_t>(delta), std::memory_order_seq_cst);
  }
  uint32_t rx_waiters() const override {
    return mine()->ctl()->rx_waiters.load(std::memory_order_seq_cst);
  }
  uint32_t tx_waiters() const override {
    return theirs()->ctl()->tx_waiters.load(std::memory_order_seq_cst);
  }
  // Drain the doorbell first, then clear the flag. The other order loses a
  // ring that lands between the two: the drain swallows it while the flag
  // says "rung", and no further ring would ever come.
  bool drain_rx() override {
    const bool ok = bell_drain(me_->rx_bell, confined_.load(std::memory_order_relaxed));
    mine()->ctl()->rx_rung.store(0, std::memory_order_seq_cst);
    drained_rx_.store(true, std::memory_order_relaxed);
    return ok;
  }
  bool drain_tx() override {
    const bool ok = bell_drain(me_->tx_bell, confined_.load(std::memory_order_relaxed));
    theirs()->ctl()->tx_rung.store(0, std::memory_order_seq_cst);
    drained_tx_.store(true, std::memory_order_relaxed);
    return ok;
  }
  // Clearing the rung flag lets the next ring through; the ring that set it
  // stays queued. Between two drains at most rearm_drain_every rings queue
  // that way (one per flag cleared; each holder process counts its own),
  // far below what counts as a flood.
  int rearm_rx() override { return rearm(mine()->ctl()->rx_rung, undrained_rx_, true); }
  int rearm_tx() override { return rearm(theirs()->ctl()->tx_rung, undrained_tx_, false); }
  // Counted drains (data_path::counts_rings): not in a confined process,
  // whose filter may allow read() on a doorbell and nothing else.
  bool counts_rings() const override { return !confined_.load(std::memory_order_relaxed); }
  void unrung_rx() override { mine()->ctl()->rx_rung.store(0, std::memory_order_seq_cst); }
  void unrung_tx() override { theirs()->ctl()->tx_rung.store(0, std::memory_order_seq_cst); }
  int queued_rx() override { return bell_queued(me_->rx_bell); }
  int queued_tx() override { return bell_queued(me_->tx_bell); }
  // (What a take leaves, one ring at most, counts among the rings the slot
  // may carry into its next connection: undrained = 1.)
  bool take_rx(int n) override {
    undrained_rx_.store(1, std::memory_order_relaxed);
    return bell_take(me_->rx_bell, n);
  }
  bool take_tx(int n) override {
    undrained_tx_.store(1, std::memory_order_relaxed);
    return bell_take(me_->tx_bell, n);
  }
  // Nothing rings our doorbells but the peer: we keep no ringing end of
  // our own (each would be an fd per doorbell). This process's waiters are
  // woken through their wake fds (core::conn's list); a doorbell is made
  // readable by us only when its direction ends for good (end_rx).
  void kick_rx() override {}
  void kick_tx() override {}
  // Shut for reading: readable (end-of-file after the rings queued) for
  // every process that watches it, for good, and an edge for edge-triggered
  // watchers; the peer's rings fail from then on (EPIPE, no signal), which
  // no longer matters. Not in a confined process, whose filter may not
  // allow shutdown(): its waiters look every 100 ms instead.
  void end_rx() override { end_bell(me_->rx_bell, shut_rx_); }
  void end_tx() override { end_bell(me_->tx_bell, shut_tx_); }
  // A socket pair's end reads POLLHUP once the other end is closed; our
  // own shutdown(SHUT_RD) above does not make it.
  bool bell_hung_up(bool rx) override {
    const int saved = errno;
    pollfd p{rx ? me_->rx_bell : me_->tx_bell, POLLIN, 0};
    const bool hup = sys().poll(&p, 1, 0) == 1 && (p.revents & POLLHUP) != 0;
    errno = saved;
    return hup;
  }
  void confine() override { confined_.store(true); }

 private:
  static constexpr uint32_t rearm_drain_every = 8;
  void end_bell(int bell, std::atomic<bool>& shut) {
    if (!confined_.load(std::memory_order_relaxed) && !shut.exchange(true)) {
      const int saved = errno;
      sys().shutdown(bell, SHUT_RD);
      errno = saved;
    }
  }
  segment* mine() const { return me_->rmb.get(); }
  segment* theirs() const { return peer_->rmb.get(); }
  int rearm(std::atomic<uint32_t>& rung, std::atomic<uint32_t>& undrained, bool rx) {
    if (rung.exchange(0, std::memory_order_seq_cst) == 0 ||
        undrained.fetch_add(1, std::memory_order_relaxed) + 1 < rearm_drain_every) {
      return 0;
    }
    undrained.store(0, std::memory_order_relaxed);
    if (counts_rings()) {
      return 2;  // the caller drains, counted
    }
    return (rx ? drain_rx() : drain_tx()) ? 1 : -1;
  }
  std::atomic<uint32_t> undrained_rx_{0};
  std::atomic<uint32_t> undrained_tx_{0};
  std::atomic<bool> drained_rx_{false};  // emptied what the slot carried in
  std::atomic<bool> drained_tx_{false};
  std::unique_ptr<local_side> me_;
  std::unique_ptr<remote_side> peer_;
  std::shared_ptr<slot_home> home_;
  mutable std::atomic<bool> exported_{false};
  std::atomic<bool> confined_{false};
  std::atomic<bool> shut_rx_{false};  // end_rx() shut the doorbell
  std::atomic<bool> shut_tx_{false};
};

}  // namespace

int64_t now_ms() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

uint64_t random64() {
  uint64_t v = 0;
  while (v == 0) {
    if (getrandom(&v, sizeof(v), 0) != static_cast<ssize_t>(sizeof(v))) {
      timespec ts{};
      clock_gettime(CLOCK_MONOTONIC, &ts);
      v ^= (static_cast<uint64_t>(ts.tv_nsec) << 20) ^ static_cast<uint64_t>(getpid()) ^
           reinterpret_cast<uintptr_t>(&v);
    }
  }
  return v;
}

namespace {

// A new memfd (`fd`, made and placed by the caller) of `bytes`, sealed
// against shrinking and growing, mapped shared into `map`. False + errno
// on failure (what was made is left in fd and map for the owner to
// release).
bool create_sealed(size_t bytes, int fd, void*& map) {
  if (fd < 0 || ftruncate(fd, static_cast<off_t>(bytes)) != 0 ||
      sys().fcntl(fd, F_ADD_SEALS, required_seals) != 0) {
    return false;
  }
  map = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (map == MAP_FAILED) {
    map = nullptr;
    return false;
  }
  return true;
}

}  // namespace

// Maps a memfd another process gave us, after checking that it is sealed
// and exactly `bytes` long: unsealed or wrongly sized memory could shrink
// under us (SIGBUS) or lie about its ring. nullptr + errno (EPROTO for a
// memfd that is not such) on failure.
void* map_sealed(int fd, size_t bytes) {
  struct stat st{};
  int seals = sys().fcntl(fd, F_GET_SEALS);
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || seals < 0 ||
      (static_cast<unsigned>(seals) & required_seals) != required_seals ||
      static_cast<uint64_t>(st.st_size) != bytes) {
    errno = EPROTO;
    return nullptr;
  }
  void* map = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  return map == MAP_FAILED ? nullptr : map;
}

// A ringing end from the peer must be what we ring: a unix seqpacket socket.
// (Anything else would be written to, or would fail; never blocks either way.)
bool check_ring(int fd) {
  int domain = 0;
  int type = 0;
  socklen_t l = sizeof domain;
  if (sys().getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &l) != 0 || domain != AF_UNIX) {
    return false;
  }
  l = sizeof type;
  return sys().getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l) == 0 && type == SOCK_SEQPACKET;
}

void tame_ring(int fd) {
  sys().shutdown(fd, SHUT_RD);
  drain_untrusted(fd, 1 << 12);
}

bool ring_size_ok(uint32_t n) {
  return n >= min_ring_bytes && n <= max_ring_bytes && (n & (n - 1)) == 0;
}

segment::~segment() {
  if (map_ != nullptr) {
    munmap(map_, map_len_);
  }
  close_fd(fd_);
}

std::unique_ptr<segment> segment::create(uint32_t size, int fd) {
  std::unique_ptr<segment> s(new (std::nothrow) segment());
  if (!s) {
    close_fd(fd);
    errno = ENOMEM;
    return nullptr;
  }
  s->fd_ = fd;
  s->map_len_ = control_bytes + size;
  if (!create_sealed(s->map_len_, s->fd_, s->map_)) {
    return nullptr;
  }
  s->ctl_ = new (s->map_) control{};
  s->ctl_->magic = control_magic;
  s->ctl_->version = 1;
  s->ctl_->size = size;
  s->data_ = static_cast<uint8_t*>(s->map_) + control_bytes;
  s->size_ = size;
  return s;
}

std::unique_ptr<segment> segment::attach(int fd, uint32_t size) {
  std::unique_ptr<segment> s(new (std::nothrow) segment());
  if (!s) {
    errno = ENOMEM;
    return nullptr;
  }
  s->map_len_ = control_bytes + size;
  s->map_ = map_sealed(fd, s->map_len_);
  if (s->map_ == nullptr) {
    return nullptr;
  }
  s->fd_ = fd;
  s->ctl_ = static_cast<control*>(s->map_);
  s->data_ = static_cast<uint8_t*>(s->map_) + control_bytes;
  s->size_ = size;
  return s;
}

state_page::~state_page() {
  if (map_ != nullptr) {
    munmap(map_, bytes);
  }
  close_fd(fd_);
}

std::unique_ptr<state_page> state_page::create(int fd) {
  std::unique_ptr<state_page> s(new (std::nothrow) state_page());
  if (!s) {
    close_fd(fd);
    errno = ENOMEM;
    return nullptr;
  }
  s->fd_ = fd;
  if (!create_sealed(bytes, s->fd_, s->map_)) {
    return nullptr;
  }
  return s;
}

std::unique_ptr<state_page> state_page::attach(int fd) {
  std::unique_ptr<state_page> s(new (std::nothrow) state_page());
  if (!s) {
    errno = ENOMEM;
    return nullptr;
  }
  s->map_ = map_sealed(fd, bytes);
  if (s->map_ == nullptr) {
    return nullptr;
  }
  s->fd_ = fd;
  return s;
}

local_side::~local_side() {
  close_bell(rx_bell);
  close_fd(rx_bell_ring);
  close_bell(tx_bell);
  close_fd(tx_bell_ring);
}

bool local_side::init(uint32_t rmb_size) {
  // Every fd of the slot first, then all placed at once (one raise of the
  // soft limit for the six: rdma/sys.h).
  int fds[6] = {memfd_create("smc-conn", MFD_CLOEXEC | MFD_ALLOW_SEALING),
                memfd_create("smc-rmb", MFD_CLOEXEC | MFD_ALLOW_SEALING), -1, -1, -1, -1};
  int rx[2] = {-1, -1};
  int tx[2] = {-1, -1};
  bool made = fds[0] >= 0 && fds[1] >= 0 && bell_pair(rx) && bell_pair(tx);
  fds[2] = rx[0];
  fds[3] = rx[1];
  fds[4] = tx[0];
  fds[5] = tx[1];
  if (made && !place_fds(fds, 6)) {
    made = false;  // (no fd number left that is not the application's: EMFILE)
  }
  if (!made) {
    const int why = errno;
    for (int& fd : fds) {
      close_fd(fd);
    }
    errno = why;
    return false;
  }
  rx_bell = fds[2];
  rx_bell_ring = fds[3];
  tx_bell = fds[4];
  tx_bell_ring = fds[5];
  refuse_fds_on_bell(rx_bell);
  refuse_fds_on_bell(tx_bell);
  state = state_page::create(fds[0]);
  rmb = segment::create(rmb_size, fds[1]);
  if (!state || !rmb) {
    return false;
  }
  token = random64();
  static std::atomic<uint64_t> next_bell_id{0};
  bell_id = next_bell_id.fetch_add(1, std::memory_order_relaxed) + 1;
  return true;
}

local_side::local_side(local_side&& o) noexcept
    : state(std::move(o.state)),
      rmb(std::move(o.rmb)),
      rx_bell(std::exchange(o.rx_bell, -1)),
      rx_bell_ring(std::exchange(o.rx_bell_ring, -1)),
      tx_bell(std::exchange(o.tx_bell, -1)),
      tx_bell_ring(std::exchange(o.tx_bell_ring, -1)),
      token(o.token),
      slot(o.slot),
      bell_id(o.bell_id),
      queued_rx(o.queued_rx),
      queued_tx(o.queued_tx),
      reuses(o.reuses) {}

bool local_side::reset_for_reuse() {
  // Empty (when due) first, then clear the flags (drain_rx's order): a
  // peer that released the slot rings no more, so nothing lands in
  // between. Rings left queued are counted (queued_rx, queued_tx) and
  // drained before they could ever add up to a flood.
  ++reuses;
  // A ring may have come after the last path's count: the peer's rx ring
  // shows in our flag; its tx ring's flag is in its own page, so one is
  // assumed.
  queued_rx += rmb->ctl()->rx_rung.load(std::memory_order_seq_cst) != 0 ? 1 : 0;
  queued_tx += 1;
  const bool every = reuses % 32 == 0;
  const bool drain_rx = every || queued_rx > max_carried_rings;
  const bool drain_tx = every || queued_tx > max_carried_rings;
  const bool rx_ok = !drain_rx || bell_drain(rx_bell, false);
  const bool tx_ok = !drain_tx || bell_drain(tx_bell, false);
  queued_rx = drain_rx ? 0 : queued_rx;
  queued_tx = drain_tx ? 0 : queued_tx;
  control* c = rmb->ctl();
  c->prod.store(0, std::memory_order_relaxed);
  c->prod_flags.store(0, std::memory_order_relaxed);
  c->cons.store(0, std::memory_order_relaxed);
  c->rx_waiters.store(0, std::memory_order_relaxed);
  c->rx_rung.store(0, std::memory_order_relaxed);
  c->tx_waiters.store(0, std::memory_order_relaxed);
  c->tx_rung.store(0, std::memory_order_relaxed);
  c->offer.store(0, std::memory_order_relaxed);
  c->released.store(0, std::memory_order_seq_cst);
  std::memset(state->data(), 0, state_page::bytes);
  token = token + 1 != 0 ? token + 1 : 1;
  return rx_ok && tx_ok;
}

remote_side::~remote_side() {
  // Shut for reading when we got them (tame_ring): a plain close.
  close_fd(rx_ring);
  close_fd(tx_ring);
}

std::unique_ptr<remote_side> remote_side::take(peer_side&& p) {
  std::unique_ptr<remote_side> r(new (std::nothrow) remote_side());
  if (!r) {
    errno = ENOMEM;
    return nullptr;
  }
  r->rmb = segment::attach(p.rmb_fd, p.rmb_size);
  if (!r->rmb) {
    return nullptr;
  }
  p.rmb_fd = -1;  // owned by the segment now
  r->rx_ring = p.rx_ring;
  r->tx_ring = p.tx_ring;
  p.rx_ring = p.tx_ring = -1;
  return r;
}

peer_side::~peer_side() {
  // What the peer passed and we did not take (make_path failed): any kind
  // of fd a peer chose, closed so that it cannot block us.
  for (int* fd : {&rmb_fd, &rx_ring, &tx_ring}) {
    close_untrusted(*fd);
    *fd = -1;
  }
}

rendezvous::~rendezvous() { close_fd(fd_); }

bool rendezvous::open(uint64_t host_id) {
  host_id_ = host_id;
  for (int attempt = 0; attempt < 8; ++attempt) {
    link_id_ = static_cast<uint32_t>(random64());
    int fd = place_fd(sys().socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (fd < 0) {
      return false;
    }
    sockaddr_un sa;
    socklen_t len;
    rendezvous_name(sa, len, host_id, link_id_);
    if (sys().bind(fd, reinterpret_cast<sockaddr*>(&sa), len) == 0 && sys().listen(fd, 4) == 0) {
      fd_ = fd;
      return true;
    }
    int e = errno;
    sys().close(fd);
    if (e != EADDRINUSE) {
      errno = e;
      return false;
    }
  }
  return false;
}

bool rendezvous::serve(const local_side& me, int64_t deadline_ms, int abort_fd, peer_side& out,
                       int* keep, uint32_t kept_link) {
  // Anyone on the host can see the abstract name in /proc/net/unix and connect;
  // only the client that read our token from the TCP stream passes the check.
  for (;;) {
    int w = wait_fd(fd_, POLLIN, deadline_ms, abort_fd);
    if (w == -2) {
      errno = ECONNABORTED;
      return false;
    }
    if (w != 1) {
      if (w == 0) {
        errno = ETIMEDOUT;
      }
      return false;
    }
    int c = place_fd(sys().accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (c < 0) {
      if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED) {
        continue;
      }
      return false;
    }
    // `c` is shared with whoever connected: fds it queued there after its
    // hello must not be released on our thread (close_shared_unix).
    hello h{};
    int fds[3];
    if (!recv_hello(c, deadline_ms, h, fds)) {
      close_shared_unix(c);
      continue;
    }
    if (h.to_token != me.token) {
      for (int fd : fds) {
        close_untrusted(fd);
      }
      close_shared_unix(c);
      continue;
    }
    hello reply{hello_magic, h.from_token, me.token, me.rmb->size(), keep ? kept_link : 0};
    int mine[3] = {me.rmb->fd(), me.rx_bell_ring, me.tx_bell_ring};
    bool sent = send_hello(c, reply, mine);
    if (!sent || !check_ring(fds[1]) || !check_ring(fds[2])) {
      close_shared_unix(c);
      for (int fd : fds) {
        close_untrusted(fd);
      }
      errno = EPROTO;
      return false;
    }
    if (keep != nullptr) {
      *keep = c;
    } else {
      close_shared_unix(c);
    }
    take_peer(fds, h, out);
    return true;
  }
}

bool rendezvous_connect(uint64_t host_id, uint32_t link_id, uint64_t server_token,
                        const local_side& me, int64_t deadline_ms, peer_side& out, int* keep) {
  int s = place_fd(sys().socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (s < 0) {
    return false;
  }
  sockaddr_un sa;
  socklen_t len;
  rendezvous_name(sa, len, host_id, link_id);
  int rc = sys().connect(s, reinterpret_cast<sockaddr*>(&sa), len);
  if (rc != 0 && errno == EINPROGRESS) {
    rc = wait_fd(s, POLLOUT, deadline_ms, -1) == 1 ? 0 : -1;
  }
  hello h{hello_magic, server_token, me.token, me.rmb->size(), 0};
  int mine[3] = {me.rmb->fd(), me.rx_bell_ring, me.tx_bell_ring};
  int fds[3];
  if (rc != 0 || !send_hello(s, h, mine) || !recv_hello(s, deadline_ms, h, fds)) {
    int e = errno;
    close_shared_unix(s);
    errno = e;
    return false;
  }
  if (h.to_token != me.token || h.from_token != server_token || !check_ring(fds[1]) ||
      !check_ring(fds[2])) {
    close_shared_unix(s);
    for (int fd : fds) {
      close_untrusted(fd);
    }
    errno = EPROTO;
    return false;
  }
  if (keep != nullptr) {
    *keep = s;
  } else {
    close_shared_unix(s);
  }
  take_peer(fds, h, out);
  return true;
}

std::unique_ptr<data_path> make_path(local_side&& me, peer_side&& peer) {
  std::unique_ptr<remote_side> theirs = remote_side::take(std::move(peer));
  std::unique_ptr<local_side> mine(new (std::nothrow) local_side(std::move(me)));
  if (!theirs || !mine) {
    if (!mine) {
      errno = ENOMEM;
    }
    return nullptr;
  }
  return make_path(std::move(mine), std::move(theirs), nullptr);
}

std::unique_ptr<data_path> make_path(std::unique_ptr<local_side> me,
                                     std::unique_ptr<remote_side> peer,
                                     std::shared_ptr<slot_home> home) {
  // The peer has the ringing ends of our doorbells (the exchange or the
  // link that made the slot gave them): ours go, nothing but the peer rings.
  if (me) {
    close_fd(me->rx_bell_ring);
    close_fd(me->tx_bell_ring);
  }
  auto* p = new (std::nothrow) shm_path(std::move(me), std::move(peer), std::move(home));
  if (p == nullptr) {
    if (home) {
      home->give_back(std::move(me), std::move(peer), false);
    }
    errno = ENOMEM;
  }
  return std::unique_ptr<data_path>(p);
}

std::unique_ptr<data_path> import_path(const int fds[export_fd_count], uint32_t rx_size,
                                       uint32_t tx_size) {
  int own[export_fd_count];
  std::memcpy(own, fds, sizeof(own));
  auto fail = [&](int err) -> std::unique_ptr<data_path> {
    for (int& fd : own) {
      close_fd(fd);
    }
    errno = err;
    return nullptr;
  };
  // The ring sizes come from another process of ours, over a channel only
  // holders of the TCP socket reach; still, nothing is mapped on its word
  // alone: attach() checks each memfd's seals and size against them.
  if (!ring_size_ok(rx_size) || !ring_size_ok(tx_size)) {
    return fail(EPROTO);
  }
  for (size_t i = 3; i < export_fd_count; ++i) {
    if (!check_ring(own[i])) {
      return fail(EPROTO);
    }
  }
  auto state = state_page::attach(own[0]);
  if (!state) {
    return fail(errno);
  }
  own[0] = -1;
  auto mine = segment::attach(own[1], rx_size);
  if (!mine) {
    return fail(errno);
  }
  own[1] = -1;
  auto theirs = segment::attach(own[2], tx_size);
  if (!theirs) {
    return fail(errno);
  }
  own[2] = -1;
  if (mine->ctl()->magic != control_magic || theirs->ctl()->magic != control_magic) {
    return fail(EPROTO);
  }
  auto me = std::unique_ptr<local_side>(new (std::nothrow) local_side());
  auto peer = std::unique_ptr<remote_side>(new (std::nothrow) remote_side());
  if (!me || !peer) {
    return fail(ENOMEM);
  }
  me->state = std::move(state);
  me->rmb = std::move(mine);
  peer->rmb = std::move(theirs);
  int* dest[4] = {&me->rx_bell, &me->tx_bell, &peer->rx_ring, &peer->tx_ring};
  for (size_t i = 0; i < 4; ++i) {
    *dest[i] = own[3 + i];
    own[3 + i] = -1;
  }
  return make_path(std::move(me), std::move(peer), nullptr);
}

}  // namespace smc::rdma::shm
