// Unit tests for the SMC connection engine (core/conn) over the shm transport.
//
// Each test builds an in-process connected pair without any TCP: two
// rdma::shm::local_side RMBs (small rings, so that streams wrap many times)
// exchanged by hand through rdma::shm::peer_side, turned into data paths with
// make_path(), and wrapped in core::conn with one end of an AF_UNIX socketpair
// as the stand-in "TCP socket" (conn peeks at it for liveness, reads O_NONBLOCK
// and SO_RCVTIMEO/SO_SNDTIMEO from it, and polls it; it never carries data).
// The tests keep their own mapping of each RMB's control page to watch the
// doorbell state and to play a hostile peer.
//
// Synchronisation with a thread that is blocked inside the engine never uses
// sleeps: the test spins (bounded) until the control page shows the waiter
// (rx_waiters / tx_waiters). Every stand-in socket carries a generous
// SO_RCVTIMEO/SO_SNDTIMEO, so a lost wake-up ends as a failed check, not a hang.
// Races that no timing hits reliably are made deterministic through the
// engine's own seams: the sys() call table (a hook inside the doorbell's
// doorbell read) and the data_path interface (a wrapper that lets the peer act
// between two of the engine's reads of shared memory).
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdarg>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <future>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "core/cdc.h"
#include "core/conn.h"
#include "core/cursor.h"
#include "core/stats.h"
#include "rdma/shm/shm_transport.h"
#include "rdma/sys.h"

using smc::core::conn;
using smc::core::cursor;
using smc::core::curs_pack;
using smc::core::curs_unpack;
using smc::core::poll_mask;
using smc::core::io_result;
namespace shm = smc::rdma::shm;
namespace cdc = smc::core::cdc;

namespace {

constexpr uint32_t ring16k = 16 * 1024;
constexpr int safety_timeout_ms = 10000;  // bounds every blocking call of a test

int64_t elapsed_ms(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                               since)
      .count();
}

/// Bounded busy-wait for a state another thread produces (never a sleep).
template <class Pred>
bool spin_until(Pred pred, int max_ms = 5000) {
  const auto start = std::chrono::steady_clock::now();
  while (!pred()) {
    if (elapsed_ms(start) > max_ms) {
      return false;
    }
    std::this_thread::yield();
  }
  return true;
}

void set_sock_timeout(int fd, int opt, int ms) {
  timeval tv{};
  tv.tv_sec = ms / 1000;
  tv.tv_usec = (ms % 1000) * 1000;
  REQUIRE(setsockopt(fd, SOL_SOCKET, opt, &tv, sizeof(tv)) == 0);
}

struct fd_guard {
  int fd = -1;
  fd_guard() = default;
  fd_guard(const fd_guard&) = delete;
  fd_guard& operator=(const fd_guard&) = delete;
  ~fd_guard() { reset(); }
  void reset() {
    if (fd >= 0) {
      ::close(fd);
      fd = -1;
    }
  }
};

struct ctl_map {
  shm::control* ctl = nullptr;
  ctl_map() = default;
  ctl_map(const ctl_map&) = delete;
  ctl_map& operator=(const ctl_map&) = delete;
  ~ctl_map() {
    if (ctl != nullptr) {
      munmap(ctl, shm::control_bytes);
    }
  }
  void map(int fd) {
    void* p = mmap(nullptr, shm::control_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    REQUIRE(p != MAP_FAILED);
    ctl = static_cast<shm::control*>(p);
  }
};

/// A data_path that forwards to the real one and can run a test action right
/// before the engine's next look at the peer's connection flags: it stands
/// for the peer acting between two of the engine's reads of shared memory
/// (a reader preempted there), which no timing could hit reliably.
class hooked_path final : public smc::rdma::data_path {
 public:
  explicit hooked_path(std::unique_ptr<smc::rdma::data_path> inner) : in_(std::move(inner)) {}
  /// Runs once, before the next peer_conn_flags().
  mutable std::function<void()> before_flags;
  /// Run once, right after the next read of the peer's producer / consumer
  /// cursor (another thread acting between two of the engine's reads).
  mutable std::function<void()> after_peer_prod;
  mutable std::function<void()> after_peer_cons;

  smc::rdma::kind transport() const override { return in_->transport(); }
  uint32_t rx_size() const override { return in_->rx_size(); }
  const uint8_t* rx_data() const override { return in_->rx_data(); }
  uint64_t peer_prod() const override {
    uint64_t v = in_->peer_prod();
    run_once(after_peer_prod);
    return v;
  }
  uint8_t peer_conn_flags() const override {
    if (before_flags) {
      auto f = std::move(before_flags);
      before_flags = nullptr;
      f();
    }
    return in_->peer_conn_flags();
  }
  void publish_cons(uint64_t cons) override { in_->publish_cons(cons); }
  uint32_t tx_size() const override { return in_->tx_size(); }
  uint64_t peer_cons() const override {
    uint64_t v = in_->peer_cons();
    run_once(after_peer_cons);
    return v;
  }
  void put(uint32_t off, const void* src, size_t n) override { in_->put(off, src, n); }
  void publish_prod(uint64_t prod, uint8_t flags) override { in_->publish_prod(prod, flags); }
  void publish_prod_quiet(uint64_t prod, uint8_t flags) override {
    in_->publish_prod_quiet(prod, flags);
  }
  void ring_rx_now() override { in_->ring_rx_now(); }
  int rx_fd() const override { return in_->rx_fd(); }
  int tx_fd() const override { return in_->tx_fd(); }
  void arm_rx(int delta) override { in_->arm_rx(delta); }
  void arm_tx(int delta) override { in_->arm_tx(delta); }
  uint32_t rx_waiters() const override { return in_->rx_waiters(); }
  uint32_t tx_waiters() const override { return in_->tx_waiters(); }
  bool drain_rx() override { return in_->drain_rx(); }
  bool drain_tx() override { return in_->drain_tx(); }
  void kick_rx() override { in_->kick_rx(); }
  void kick_tx() override { in_->kick_tx(); }
  void settle_close() override {
    ++settles;
    in_->settle_close();
  }
  int settles = 0;  // settle_close() calls

 private:
  static void run_once(std::function<void()>& hook) {
    if (hook) {
      auto f = std::move(hook);
      hook = nullptr;
      f();
    }
  }
  std::unique_ptr<smc::rdma::data_path> in_;
};

/// Two connected conns, A and B. A's RMB (read by A, written by B) has
/// `a_ring` bytes, B's has `b_ring`. a_ctl / b_ctl are the control pages of
/// A's / B's RMB as the test sees them.
class conn_pair {
 public:
  explicit conn_pair(uint32_t spin_us = 0, uint32_t a_ring = ring16k, uint32_t b_ring = ring16k,
                     bool hook_b = false) {
    shm::local_side la;
    shm::local_side lb;
    REQUIRE(la.init(a_ring));
    REQUIRE(lb.init(b_ring));
    a_rmb_.fd = ::dup(la.rmb->fd());
    b_rmb_.fd = ::dup(lb.rmb->fd());
    REQUIRE(a_rmb_.fd >= 0);
    REQUIRE(b_rmb_.fd >= 0);
    a_map_.map(a_rmb_.fd);
    b_map_.map(b_rmb_.fd);
    a_ctl = a_map_.ctl;
    b_ctl = b_map_.ctl;

    shm::peer_side to_b;  // what A learns about B
    to_b.rmb_fd = ::dup(lb.rmb->fd());
    to_b.rx_ring = ::dup(lb.rx_bell_ring);
    to_b.tx_ring = ::dup(lb.tx_bell_ring);
    to_b.rmb_size = lb.rmb->size();
    to_b.token = lb.token;
    shm::peer_side to_a;  // what B learns about A
    to_a.rmb_fd = ::dup(la.rmb->fd());
    to_a.rx_ring = ::dup(la.rx_bell_ring);
    to_a.tx_ring = ::dup(la.tx_bell_ring);
    to_a.rmb_size = la.rmb->size();
    to_a.token = la.token;
    REQUIRE(to_b.rmb_fd >= 0);
    REQUIRE(to_a.rmb_fd >= 0);

    auto pa = shm::make_path(std::move(la), std::move(to_b));
    auto pb = shm::make_path(std::move(lb), std::move(to_a));
    REQUIRE(pa);
    REQUIRE(pb);
    REQUIRE(pa->rx_size() == a_ring);
    REQUIRE(pa->tx_size() == b_ring);

    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    a_tcp_.fd = sv[0];
    b_tcp_.fd = sv[1];
    for (int fd : sv) {
      set_sock_timeout(fd, SO_RCVTIMEO, safety_timeout_ms);
      set_sock_timeout(fd, SO_SNDTIMEO, safety_timeout_ms);
    }
    if (hook_b) {
      auto h = std::make_unique<hooked_path>(std::move(pb));
      b_hook = h.get();
      pb = std::move(h);
    }
    a = std::make_unique<conn>(std::move(pa), sv[0], spin_us);
    b = std::make_unique<conn>(std::move(pb), sv[1], spin_us);
  }

  /// B's recv of up to `max` bytes, run in another thread; returns once that
  /// recv is blocked waiting for A.
  std::future<io_result> b_recv_blocked(size_t max = 10);
  /// The same, returning what B read and how long its recv took (ms).
  std::future<std::pair<std::string, int64_t>> b_recv_timed(size_t max);

  int a_tcp() const { return a_tcp_.fd; }
  int b_tcp() const { return b_tcp_.fd; }
  /// A's process "dies": its TCP socket closes without any SMC close.
  void drop_a_tcp() { a_tcp_.reset(); }
  /// B's last TCP fd closes (every process holding B gone).
  void drop_b_tcp() { b_tcp_.reset(); }

  std::unique_ptr<conn> a;
  std::unique_ptr<conn> b;
  shm::control* a_ctl = nullptr;
  shm::control* b_ctl = nullptr;
  hooked_path* b_hook = nullptr;  // B's path, when built with hook_b

 private:
  fd_guard a_rmb_;
  fd_guard b_rmb_;
  ctl_map a_map_;
  ctl_map b_map_;
  fd_guard a_tcp_;
  fd_guard b_tcp_;
};

/// Byte `i` of test stream `seed`.
uint8_t pattern(uint64_t seed, uint64_t i) {
  uint64_t x = (i + seed * 0x1000193ULL) * 0x9E3779B97F4A7C15ULL;
  x ^= x >> 29;
  return static_cast<uint8_t>(x ^ (x >> 40));
}

std::vector<uint8_t> pattern_bytes(uint64_t seed, uint64_t from, size_t n) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) {
    v[i] = pattern(seed, from + i);
  }
  return v;
}

/// Index of the first byte of `got` that differs from stream `seed` at `from`, or -1.
long first_mismatch(const uint8_t* got, size_t n, uint64_t seed, uint64_t from) {
  for (size_t i = 0; i < n; ++i) {
    if (got[i] != pattern(seed, from + i)) {
      return static_cast<long>(i);
    }
  }
  return -1;
}

io_result send_bytes(conn& c, const void* p, size_t n, int flags = MSG_NOSIGNAL) {
  iovec v{const_cast<void*>(p), n};
  return c.send(&v, 1, flags);
}

io_result send_str(conn& c, const std::string& s, int flags = MSG_NOSIGNAL) {
  return send_bytes(c, s.data(), s.size(), flags);
}

io_result recv_bytes(conn& c, void* p, size_t n, int flags = 0) {
  iovec v{p, n};
  return c.recv(&v, 1, flags);
}

/// Receives up to `max` bytes; "" with r.n recorded on error/EOF.
std::string recv_str(conn& c, size_t max, int flags = 0, io_result* res = nullptr) {
  std::string s(max, '\0');
  io_result r = recv_bytes(c, s.data(), s.size(), flags);
  if (res != nullptr) {
    *res = r;
  }
  s.resize(r.n > 0 ? static_cast<size_t>(r.n) : 0);
  return s;
}

std::future<io_result> conn_pair::b_recv_blocked(size_t max) {
  auto fut = std::async(std::launch::async, [this, max] {
    io_result r{};
    recv_str(*b, max, 0, &r);
    return r;
  });
  REQUIRE(spin_until([&] { return b_ctl->rx_waiters.load() != 0; }));
  return fut;
}

std::future<std::pair<std::string, int64_t>> conn_pair::b_recv_timed(size_t max) {
  auto fut = std::async(std::launch::async, [this, max] {
    const auto t0 = std::chrono::steady_clock::now();
    std::string s = recv_str(*b, max);
    return std::make_pair(s, elapsed_ms(t0));
  });
  REQUIRE(spin_until([&] { return b_ctl->rx_waiters.load() != 0; }));
  return fut;
}

/// Splits [buf, buf + n) into iovecs at random points (with empty ones
/// sprinkled in) when `multi`, else one iovec.
std::vector<iovec> split_iov(uint8_t* buf, size_t n, std::mt19937& rng, bool multi) {
  std::vector<iovec> v;
  if (!multi) {
    v.push_back({buf, n});
    return v;
  }
  const int pieces = std::uniform_int_distribution<int>(1, 7)(rng);
  std::vector<size_t> cuts;
  for (int i = 1; i < pieces; ++i) {
    cuts.push_back(std::uniform_int_distribution<size_t>(0, n)(rng));
  }
  std::sort(cuts.begin(), cuts.end());
  size_t prev = 0;
  for (size_t c : cuts) {
    v.push_back({buf + prev, c - prev});  // may be empty
    prev = c;
  }
  v.push_back({buf + prev, n - prev});
  if (std::uniform_int_distribution<int>(0, 3)(rng) == 0) {
    v.insert(v.begin(), iovec{nullptr, 0});
  }
  return v;
}

struct stream_stats {
  uint64_t done = 0;
  ssize_t fail_n = 0;  // the failing call's return (0 = EOF, -1 = error)
  int fail_err = 0;
  bool failed = false;
  long mismatch_at = -1;  // stream offset of the first wrong byte
  uint64_t calls = 0;
};

void stream_writer(conn& c, uint64_t seed, uint64_t total, uint32_t max_chunk, bool multi,
                   uint32_t rng_seed, stream_stats& st) {
  std::mt19937 rng(rng_seed);
  std::vector<uint8_t> buf(max_chunk);
  while (st.done < total) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(
        std::uniform_int_distribution<uint32_t>(1, max_chunk)(rng), total - st.done));
    for (size_t j = 0; j < n; ++j) {
      buf[j] = pattern(seed, st.done + j);
    }
    auto iov = split_iov(buf.data(), n, rng, multi);
    io_result r = c.send(iov.data(), static_cast<int>(iov.size()), MSG_NOSIGNAL);
    ++st.calls;
    if (r.n <= 0) {
      st.failed = true;
      st.fail_n = r.n;
      st.fail_err = r.err;
      return;
    }
    st.done += static_cast<uint64_t>(r.n);
  }
}

void stream_reader(conn& c, uint64_t seed, uint64_t total, uint32_t max_chunk, bool multi,
                   uint32_t rng_seed, stream_stats& st) {
  std::mt19937 rng(rng_seed);
  std::vector<uint8_t> buf(max_chunk);
  while (st.done < total) {
    const size_t n = std::uniform_int_distribution<uint32_t>(1, max_chunk)(rng);
    // Poison with the complement of what is expected: a byte the engine does
    // not write can never pass the check.
    for (size_t j = 0; j < n; ++j) {
      buf[j] = static_cast<uint8_t>(~pattern(seed, st.done + j));
    }
    auto iov = split_iov(buf.data(), n, rng, multi);
    io_result r = c.recv(iov.data(), static_cast<int>(iov.size()), 0);
    ++st.calls;
    if (r.n <= 0) {
      st.failed = true;
      st.fail_n = r.n;
      st.fail_err = r.err;
      return;
    }
    if (static_cast<uint64_t>(r.n) > total - st.done || static_cast<size_t>(r.n) > n) {
      st.failed = true;  // more than was ever sent
      st.fail_n = r.n;
      return;
    }
    long bad = first_mismatch(buf.data(), static_cast<size_t>(r.n), seed, st.done);
    if (bad >= 0) {
      st.mismatch_at = static_cast<long>(st.done) + bad;
      st.failed = true;
      return;
    }
    st.done += static_cast<uint64_t>(r.n);
  }
}

void check_stream(const char* what, const stream_stats& st, uint64_t total) {
  INFO(what << ": done " << st.done << " of " << total << " in " << st.calls
            << " calls; failing call returned " << st.fail_n << " errno " << st.fail_err
            << " (" << std::strerror(st.fail_err) << "); first wrong byte at " << st.mismatch_at);
  CHECK_FALSE(st.failed);
  CHECK(st.mismatch_at == -1);
  CHECK(st.done == total);
}

/// Both directions at once: A -> B and B -> A, each with its own writer and
/// reader thread, random chunk sizes up to 3 rings, every byte verified.
void run_duplex(uint32_t spin_us, uint32_t a_ring, uint32_t b_ring, bool multi, uint64_t total,
                uint32_t seed) {
  conn_pair p(spin_us, a_ring, b_ring);
  const uint32_t max_chunk = 3 * std::max(a_ring, b_ring);
  stream_stats a_w, b_r, b_w, a_r;
  std::thread t1(stream_writer, std::ref(*p.a), 1, total, max_chunk, multi, seed + 1, std::ref(a_w));
  std::thread t2(stream_reader, std::ref(*p.b), 1, total, max_chunk, multi, seed + 2, std::ref(b_r));
  std::thread t3(stream_writer, std::ref(*p.b), 2, total, max_chunk, multi, seed + 3, std::ref(b_w));
  std::thread t4(stream_reader, std::ref(*p.a), 2, total, max_chunk, multi, seed + 4, std::ref(a_r));
  t1.join();
  t2.join();
  t3.join();
  t4.join();
  INFO("spin_us " << spin_us << " rings " << a_ring << "/" << b_ring << " multi " << multi
                  << " seed " << seed);
  check_stream("A writes", a_w, total);
  check_stream("B reads", b_r, total);
  check_stream("B writes", b_w, total);
  check_stream("A reads", a_r, total);
  CHECK(p.a->readable_bytes() == 0);
  CHECK(p.b->readable_bytes() == 0);
  CHECK(p.a->unsent_bytes() == 0);
  CHECK(p.b->unsent_bytes() == 0);
  // The published cursors are exactly `total` bytes around each ring.
  const cursor into_b = curs_unpack(p.b_ctl->prod.load());
  const cursor into_a = curs_unpack(p.a_ctl->prod.load());
  CHECK(into_b.count == total % b_ring);
  CHECK(into_b.wrap == static_cast<uint16_t>(total / b_ring));
  CHECK(into_a.count == total % a_ring);
  CHECK(into_a.wrap == static_cast<uint16_t>(total / a_ring));
  CHECK(curs_unpack(p.b_ctl->cons.load()) == into_b);
  CHECK(curs_unpack(p.a_ctl->cons.load()) == into_a);
  CHECK(p.a->take_error() == 0);
  CHECK(p.b->take_error() == 0);
}

std::vector<int> bell_fds(conn& c);

/// One ring on a doorbell through its ringing end, with nothing published:
/// what a stray (or hostile) ring looks like to the doorbell's owner.
void stray_ring(int ring) {
  const char one = 1;
  REQUIRE(::send(ring, &one, 1, MSG_DONTWAIT | MSG_NOSIGNAL) == 1);
}

/// Replaces one entry of the sys() table for the lifetime of the object.
/// The hook runs `action` once, right before the real read() or recvmmsg()
/// (a doorbell drain) of `fd`.
class read_hook {
 public:
  read_hook(int fd, std::function<void()> action) {
    fd_ = fd;
    action_ = std::move(action);
    fired_ = false;
    real_ = smc::rdma::sys().read;
    real_mmsg_ = smc::rdma::sys().recvmmsg;
    smc::rdma::sys().read = &hooked;
    smc::rdma::sys().recvmmsg = &hooked_mmsg;
  }
  ~read_hook() {
    smc::rdma::sys().read = real_;
    smc::rdma::sys().recvmmsg = real_mmsg_;
    action_ = nullptr;
    fd_ = -1;
  }
  read_hook(const read_hook&) = delete;
  read_hook& operator=(const read_hook&) = delete;
  bool fired() const { return fired_.load(); }

 private:
  static ssize_t hooked(int fd, void* buf, size_t n) {
    if (fd == fd_ && !fired_.exchange(true)) {
      action_();
    }
    return real_(fd, buf, n);
  }
  static int hooked_mmsg(int fd, mmsghdr* m, unsigned n, int flags, timespec* t) {
    if (fd == fd_ && !fired_.exchange(true)) {
      action_();
    }
    return real_mmsg_(fd, m, n, flags, t);
  }
  static inline int (*real_mmsg_)(int, mmsghdr*, unsigned, int, timespec*) = nullptr;
  static inline int fd_ = -1;
  static inline std::function<void()> action_;
  static inline std::atomic<bool> fired_{false};
  static inline ssize_t (*real_)(int, void*, size_t) = nullptr;
};

/// Counts sys().recv calls on one fd (conn::check_tcp peeks at the TCP socket
/// once per pass of the send/recv loop: a count of passes).
class recv_counter {
 public:
  explicit recv_counter(int fd) {
    fd_ = fd;
    count_ = 0;
    real_ = smc::rdma::sys().recv;
    smc::rdma::sys().recv = &hooked;
  }
  ~recv_counter() { smc::rdma::sys().recv = real_; }
  recv_counter(const recv_counter&) = delete;
  recv_counter& operator=(const recv_counter&) = delete;
  long count() const { return count_.load(); }

 private:
  static ssize_t hooked(int fd, void* buf, size_t n, int flags) {
    if (fd == fd_) {
      count_.fetch_add(1);
    }
    return real_(fd, buf, n, flags);
  }
  static inline int fd_ = -1;
  static inline std::atomic<long> count_{0};
  static inline ssize_t (*real_)(int, void*, size_t, int) = nullptr;
};

}  // namespace

// ---------------------------------------------------------------------------
// 1. The byte stream
// ---------------------------------------------------------------------------

TEST_CASE("duplex stream over 16 KiB rings, random chunk sizes, every byte verified",
          "[conn][stream]") {
  const uint64_t total = 4u << 20;
  SECTION("blocking waits (spin_us = 0)") { run_duplex(0, ring16k, ring16k, false, total, 11); }
  SECTION("with spinning (spin_us = 50)") { run_duplex(50, ring16k, ring16k, false, total, 21); }
  SECTION("different ring sizes per side") { run_duplex(0, ring16k, 4 * ring16k, false, total, 31); }
}

TEST_CASE("duplex stream with readv/writev-style iovec arrays", "[conn][stream]") {
  const uint64_t total = 3u << 20;
  SECTION("spin_us = 0") { run_duplex(0, ring16k, ring16k, true, total, 41); }
  SECTION("spin_us = 20, odd total") { run_duplex(20, 2 * ring16k, ring16k, true, total + 12345, 51); }
}

TEST_CASE("a send that crosses the end of the ring lands split, in order", "[conn][stream]") {
  conn_pair p;
  // Move both cursors to 100 bytes before the end of B's ring.
  auto lead = pattern_bytes(3, 0, ring16k - 100);
  REQUIRE(send_bytes(*p.a, lead.data(), lead.size()).n == static_cast<ssize_t>(lead.size()));
  std::vector<uint8_t> sink(ring16k);
  REQUIRE(recv_bytes(*p.b, sink.data(), lead.size()).n == static_cast<ssize_t>(lead.size()));
  // A 3-iovec message straddling the wrap, received into a 4-iovec array.
  auto msg = pattern_bytes(3, lead.size(), 1000);
  iovec out[3] = {{msg.data(), 60}, {msg.data() + 60, 80}, {msg.data() + 140, 860}};
  REQUIRE(p.a->send(out, 3, MSG_NOSIGNAL).n == 1000);
  CHECK(curs_unpack(p.b_ctl->prod.load()) == cursor{1, 900});
  std::vector<uint8_t> got(1000, 0);
  iovec in[4] = {{got.data(), 99}, {got.data() + 99, 0}, {got.data() + 99, 2}, {got.data() + 101, 899}};
  REQUIRE(p.b->recv(in, 4, 0).n == 1000);
  CHECK(got == msg);
  CHECK(curs_unpack(p.b_ctl->cons.load()) == cursor{1, 900});
}

TEST_CASE("zero-length send and recv return 0 and move nothing", "[conn]") {
  conn_pair p;
  char c = 0;
  CHECK(send_bytes(*p.a, &c, 0).n == 0);
  CHECK(p.a->send(nullptr, 0, 0).n == 0);
  CHECK(recv_bytes(*p.b, &c, 0, MSG_DONTWAIT).n == 0);
  CHECK(p.b->readable_bytes() == 0);
  CHECK(p.b_ctl->prod.load() == 0);
}

// ---------------------------------------------------------------------------
// 2. Flow control
// ---------------------------------------------------------------------------

TEST_CASE("flow control: a writer fills exactly the peer's ring, then EAGAIN", "[conn][flow]") {
  // A's RMB 16 KiB, B's RMB 32 KiB: A writes into the 32 KiB ring.
  const uint32_t peer_ring = 2 * ring16k;
  conn_pair p(0, ring16k, peer_ring);
  auto src = pattern_bytes(7, 0, 3 * peer_ring);

  CHECK((p.a->events() & POLLOUT) != 0);
  CHECK((p.b->events() & POLLIN) == 0);

  io_result r = send_bytes(*p.a, src.data(), src.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  REQUIRE(r.n == static_cast<ssize_t>(peer_ring));
  CHECK(p.a->unsent_bytes() == peer_ring);
  CHECK(p.b->readable_bytes() == peer_ring);
  CHECK((p.a->events() & POLLOUT) == 0);
  CHECK((p.b->events() & POLLIN) != 0);
  r = send_bytes(*p.a, src.data() + peer_ring, 1, MSG_DONTWAIT | MSG_NOSIGNAL);
  CHECK(r.n == -1);
  CHECK(r.err == EAGAIN);

  uint64_t sent = peer_ring;
  uint64_t consumed = 0;
  std::vector<uint8_t> buf(peer_ring);
  for (uint32_t k : {1u, 1000u, 4095u, 4096u, 20000u, peer_ring}) {
    INFO("peer reads " << k);
    r = recv_bytes(*p.b, buf.data(), k, MSG_DONTWAIT);
    REQUIRE(r.n == static_cast<ssize_t>(k));
    CHECK(first_mismatch(buf.data(), k, 7, consumed) == -1);
    consumed += k;
    CHECK((p.a->events() & POLLOUT) != 0);
    CHECK(p.a->unsent_bytes() == peer_ring - k);
    // Exactly k more bytes fit.
    r = send_bytes(*p.a, src.data() + sent, src.size() - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
    CHECK(r.n == static_cast<ssize_t>(k));
    sent += static_cast<uint64_t>(std::max<ssize_t>(r.n, 0));
    CHECK((p.a->events() & POLLOUT) == 0);
    r = send_bytes(*p.a, src.data() + sent, 1, MSG_DONTWAIT | MSG_NOSIGNAL);
    CHECK(r.n == -1);
    CHECK(r.err == EAGAIN);
    CHECK(p.b->readable_bytes() == peer_ring);
  }
  // Drain: the full ring holds the next peer_ring bytes of the stream, wrapped.
  r = recv_bytes(*p.b, buf.data(), buf.size(), MSG_DONTWAIT);
  REQUIRE(r.n == static_cast<ssize_t>(peer_ring));
  CHECK(first_mismatch(buf.data(), peer_ring, 7, consumed) == -1);
  consumed += peer_ring;
  CHECK(consumed == sent);
  CHECK(p.a->unsent_bytes() == 0);
  CHECK(recv_bytes(*p.b, buf.data(), 1, MSG_DONTWAIT).err == EAGAIN);

  // The other direction is limited by A's (16 KiB) ring.
  r = send_bytes(*p.b, src.data(), src.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  CHECK(r.n == static_cast<ssize_t>(ring16k));
  CHECK((p.b->events() & POLLOUT) == 0);
  CHECK(p.a->readable_bytes() == ring16k);
}

TEST_CASE("a blocking send with O_NONBLOCK on the socket writes what fits, then EAGAIN",
          "[conn][flow]") {
  conn_pair p;
  REQUIRE(fcntl(p.a_tcp(), F_SETFL, fcntl(p.a_tcp(), F_GETFL) | O_NONBLOCK) == 0);
  auto src = pattern_bytes(8, 0, 2 * ring16k);
  io_result r = send_bytes(*p.a, src.data(), src.size());
  CHECK(r.n == static_cast<ssize_t>(ring16k));
  r = send_bytes(*p.a, src.data(), 10);
  CHECK(r.n == -1);
  CHECK(r.err == EAGAIN);
}

// A blocking call spins before it asks the socket whether it may block at
// all, when the socket blocked last time. Made non-blocking since (fcntl on
// the socket, which the preload passes through), the next call must still
// end in EAGAIN: the spin is a hint, never the answer. Without the sockets'
// safety timeouts a call that wrongly waits would wait for good; the test
// gives it safety_timeout_ms, then fails.
template <class Call>
io_result returns_without_waiting(Call call, const std::function<void()>& unblock) {
  auto fut = std::async(std::launch::async, call);
  bool returned =
      fut.wait_for(std::chrono::milliseconds(safety_timeout_ms)) == std::future_status::ready;
  if (!returned) {
    unblock();  // let the call finish before failing
  }
  REQUIRE(returned);
  return fut.get();
}

TEST_CASE("a socket made non-blocking after a recv that waited: the next recv is EAGAIN",
          "[conn][flow]") {
  conn_pair p(50);
  auto first = std::async(std::launch::async, [&] { return recv_str(*p.b, 5); });
  REQUIRE(spin_until([&] { return p.b_ctl->rx_waiters.load() != 0; }));
  REQUIRE(send_str(*p.a, "hello").n == 5);
  CHECK(first.get() == "hello");
  set_sock_timeout(p.b_tcp(), SO_RCVTIMEO, 0);
  REQUIRE(fcntl(p.b_tcp(), F_SETFL, fcntl(p.b_tcp(), F_GETFL) | O_NONBLOCK) == 0);
  io_result r = returns_without_waiting(
      [&] {
        io_result res{};
        recv_str(*p.b, 5, 0, &res);
        return res;
      },
      [&] { send_str(*p.a, "x"); });
  CHECK(r.n == -1);
  CHECK(r.err == EAGAIN);
}

TEST_CASE("a socket made non-blocking after a send that waited: the next send is EAGAIN",
          "[conn][flow]") {
  conn_pair p(50);
  auto src = pattern_bytes(5, 0, 2 * ring16k);
  // 32 KiB into B's 16 KiB ring: A waits until B reads, and then fills it again.
  auto first = std::async(std::launch::async,
                          [&] { return send_bytes(*p.a, src.data(), src.size(), MSG_NOSIGNAL); });
  REQUIRE(spin_until([&] { return p.b_ctl->tx_waiters.load() != 0; }));
  std::vector<uint8_t> buf(ring16k);
  REQUIRE(recv_bytes(*p.b, buf.data(), buf.size(), MSG_WAITALL).n == ring16k);
  REQUIRE(first.get().n == static_cast<ssize_t>(src.size()));
  set_sock_timeout(p.a_tcp(), SO_SNDTIMEO, 0);
  REQUIRE(fcntl(p.a_tcp(), F_SETFL, fcntl(p.a_tcp(), F_GETFL) | O_NONBLOCK) == 0);
  io_result r = returns_without_waiting(
      [&] { return send_bytes(*p.a, src.data(), 10, MSG_NOSIGNAL); },
      [&] { recv_bytes(*p.b, buf.data(), buf.size(), MSG_DONTWAIT); });
  CHECK(r.n == -1);
  CHECK(r.err == EAGAIN);
}

// ---------------------------------------------------------------------------
// 3. MSG_PEEK and MSG_WAITALL
// ---------------------------------------------------------------------------

TEST_CASE("MSG_PEEK does not consume", "[conn][peek]") {
  conn_pair p;
  REQUIRE(send_str(*p.a, "hello, world").n == 12);
  CHECK(recv_str(*p.b, 5, MSG_PEEK) == "hello");
  CHECK(recv_str(*p.b, 5, MSG_PEEK | MSG_DONTWAIT) == "hello");
  CHECK(recv_str(*p.b, 100, MSG_PEEK) == "hello, world");
  CHECK(p.b->readable_bytes() == 12);
  CHECK(p.a->unsent_bytes() == 12);
  CHECK(curs_unpack(p.b_ctl->cons.load()) == cursor{0, 0});
  CHECK(recv_str(*p.b, 7) == "hello, ");
  CHECK(recv_str(*p.b, 100, MSG_PEEK) == "world");
  CHECK(recv_str(*p.b, 100) == "world");
  CHECK(p.b->readable_bytes() == 0);
  CHECK(p.a->unsent_bytes() == 0);
}

TEST_CASE("MSG_PEEK across the end of the ring into several iovecs", "[conn][peek]") {
  conn_pair p;
  auto lead = pattern_bytes(4, 0, ring16k - 3);
  REQUIRE(send_bytes(*p.a, lead.data(), lead.size()).n == static_cast<ssize_t>(lead.size()));
  std::vector<uint8_t> sink(ring16k);
  REQUIRE(recv_bytes(*p.b, sink.data(), lead.size()).n == static_cast<ssize_t>(lead.size()));
  REQUIRE(send_str(*p.a, "ABCDEFGH").n == 8);  // 3 bytes at the end, 5 at the start
  char x[2], y[3], z[10];
  iovec iov[3] = {{x, 2}, {y, 3}, {z, 10}};
  io_result r = p.b->recv(iov, 3, MSG_PEEK);
  REQUIRE(r.n == 8);
  CHECK(std::string(x, 2) + std::string(y, 3) + std::string(z, 3) == "ABCDEFGH");
  CHECK(recv_str(*p.b, 8) == "ABCDEFGH");
}

TEST_CASE("MSG_WAITALL returns the full amount once it arrived", "[conn][waitall]") {
  conn_pair p;
  const size_t want = 10000;
  const size_t piece = 1000;
  std::vector<uint8_t> got(want, 0);
  std::atomic<bool> done{false};
  auto fut = std::async(std::launch::async, [&] {
    io_result r = recv_bytes(*p.b, got.data(), got.size(), MSG_WAITALL);
    done = true;
    return r;
  });
  auto src = pattern_bytes(5, 0, want);
  for (size_t off = 0; off < want; off += piece) {
    // B sleeps waiting for more before every piece.
    REQUIRE(spin_until([&] { return p.b_ctl->rx_waiters.load() != 0; }));
    CHECK_FALSE(done.load());
    REQUIRE(send_bytes(*p.a, src.data() + off, piece).n == static_cast<ssize_t>(piece));
    if (off + piece < want) {
      // B takes the piece and goes back to sleep without returning.
      REQUIRE(spin_until([&] { return p.a->unsent_bytes() == 0 && p.b_ctl->rx_waiters.load() != 0; }));
    }
  }
  io_result r = fut.get();
  CHECK(r.n == static_cast<ssize_t>(want));
  CHECK(got == src);
}

TEST_CASE("MSG_PEEK|MSG_WAITALL sleeps until all is there, and consumes nothing", "[conn][peek]") {
  conn_pair p(0);
  REQUIRE(send_str(*p.a, "abc").n == 3);
  set_sock_timeout(p.b_tcp(), SO_RCVTIMEO, 300);
  {
    // Only 3 of 6 bytes: the call sleeps (one liveness peek per pass, not a
    // spin) and at the timeout returns what it could peek.
    recv_counter counter(p.b_tcp());
    io_result r{};
    std::string s = recv_str(*p.b, 6, MSG_PEEK | MSG_WAITALL, &r);
    CHECK(s == "abc");
    INFO("receive loop passes while waiting: " << counter.count());
    CHECK(counter.count() <= 4);
  }
  set_sock_timeout(p.b_tcp(), SO_RCVTIMEO, 5000);
  auto fut = std::async(std::launch::async, [&] { return recv_str(*p.b, 6, MSG_PEEK | MSG_WAITALL); });
  REQUIRE(spin_until([&] { return p.b_ctl->rx_waiters.load() != 0; }));
  REQUIRE(send_str(*p.a, "def").n == 3);
  CHECK(fut.get() == "abcdef");
  CHECK(recv_str(*p.b, 6) == "abcdef");  // the peeks consumed nothing
}

TEST_CASE("MSG_WAITALL into several iovecs across the ring end", "[conn][waitall]") {
  conn_pair p;
  const size_t want = ring16k + 5000;  // more than one ring: needs the writer to block too
  auto src = pattern_bytes(6, 0, want);
  std::vector<uint8_t> got(want, 0);
  auto fut = std::async(std::launch::async, [&] {
    iovec iov[3] = {{got.data(), 7}, {got.data() + 7, ring16k}, {got.data() + 7 + ring16k, want - 7 - ring16k}};
    return p.b->recv(iov, 3, MSG_WAITALL);
  });
  // The writer pushes in odd pieces.
  size_t off = 0;
  for (size_t n : {size_t{1}, size_t{4999}, size_t{12000}, want - 17000}) {
    REQUIRE(send_bytes(*p.a, src.data() + off, n).n == static_cast<ssize_t>(n));
    off += n;
  }
  io_result r = fut.get();
  CHECK(r.n == static_cast<ssize_t>(want));
  CHECK(got == src);
}

TEST_CASE("MSG_WAITALL returns short at end of stream", "[conn][waitall]") {
  conn_pair p;
  auto fut = std::async(std::launch::async, [&] { return recv_str(*p.b, 1000, MSG_WAITALL); });
  REQUIRE(send_str(*p.a, std::string(500, 'w')).n == 500);
  REQUIRE(spin_until([&] { return p.a->unsent_bytes() == 0 && p.b_ctl->rx_waiters.load() != 0; }));
  REQUIRE(p.a->shutdown(SHUT_WR) == 0);
  CHECK(fut.get() == std::string(500, 'w'));
  io_result r{};
  recv_str(*p.b, 10, 0, &r);
  CHECK(r.n == 0);
}

// ---------------------------------------------------------------------------
// 4. shutdown(SHUT_WR)
// ---------------------------------------------------------------------------

TEST_CASE("shutdown(SHUT_WR): the peer reads all data, then EOF", "[conn][close]") {
  conn_pair p;
  REQUIRE(send_str(*p.a, "last words").n == 10);
  REQUIRE(p.a->shutdown(SHUT_WR) == 0);
  const auto ev = p.b->events();
  CHECK((ev & POLLIN) != 0);
  CHECK((ev & POLLRDHUP) != 0);
  CHECK((ev & POLLERR) == 0);
  CHECK(recv_str(*p.b, 4) == "last");
  CHECK(recv_str(*p.b, 100) == " words");
  io_result r{};
  recv_str(*p.b, 100, 0, &r);
  CHECK(r.n == 0);
  recv_str(*p.b, 100, MSG_DONTWAIT, &r);
  CHECK(r.n == 0);  // EOF stays EOF
  CHECK(((p.b->events() & (POLLIN | POLLRDHUP)) == (POLLIN | POLLRDHUP)));

  // Writing after SHUT_WR is EPIPE.
  r = send_str(*p.a, "more", MSG_NOSIGNAL);
  CHECK(r.n == -1);
  CHECK(r.err == EPIPE);
  CHECK(p.b->readable_bytes() == 0);

  // Half close: the other direction still works.
  REQUIRE(send_str(*p.b, "reply").n == 5);
  CHECK(recv_str(*p.a, 100) == "reply");
  CHECK(p.a->take_error() == 0);
}

TEST_CASE("shutdown(SHUT_WR) wakes a peer blocked in recv", "[conn][close]") {
  conn_pair p;
  auto fut = p.b_recv_blocked();
  REQUIRE(p.a->shutdown(SHUT_WR) == 0);
  io_result r = fut.get();
  CHECK(r.n == 0);
}

// ---------------------------------------------------------------------------
// 5. close
// ---------------------------------------------------------------------------

TEST_CASE("close(false) with nothing unread: the peer reads the data, then EOF", "[conn][close]") {
  conn_pair p;
  REQUIRE(send_str(*p.a, "goodbye").n == 7);
  p.a->close(false);
  CHECK((p.b->events() & (POLLIN | POLLRDHUP)) == (POLLIN | POLLRDHUP));
  CHECK((p.b->events() & POLLERR) == 0);
  CHECK(recv_str(*p.b, 100) == "goodbye");
  io_result r{};
  recv_str(*p.b, 100, 0, &r);
  CHECK(r.n == 0);
  // Nobody will ever read what B writes now. TCP takes the bytes and hears
  // the peer's reset, which in CLOSE_WAIT is an EPIPE that the next write
  // reports (a read still sees the peer's EOF); then EPIPE for good.
  r = send_str(*p.b, "anyone?", MSG_NOSIGNAL);
  CHECK(r.n == 7);
  CHECK((p.b->events() & (POLLERR | POLLHUP | POLLOUT)) == (POLLERR | POLLHUP | POLLOUT));
  recv_str(*p.b, 100, 0, &r);
  CHECK(r.n == 0);
  r = send_str(*p.b, "anyone?", MSG_NOSIGNAL);
  CHECK(r.n == -1);
  CHECK(r.err == EPIPE);
  CHECK((p.b->events() & POLLERR) == 0);  // taken
  r = send_str(*p.b, "anyone?", MSG_NOSIGNAL);
  CHECK(r.n == -1);
  CHECK(r.err == EPIPE);
  CHECK((p.b->events() & POLLERR) == 0);  // taken
  CHECK((p.b->events() & POLLOUT) != 0);  // a write would not block
}

TEST_CASE("close waits for its closing state to settle only while the peer has not ended",
          "[conn][close]") {
  // The wait orders our close before our TCP FIN for a peer that still
  // reads; toward a peer that already closed (maybe exited, never to
  // acknowledge anything again) it would only stall the closing thread.
  SECTION("peer still open") {
    conn_pair p(0, ring16k, ring16k, true);
    REQUIRE(send_str(*p.b, "x").n == 1);
    p.b->close(false);
    CHECK(p.b_hook->settles == 1);
    CHECK(recv_str(*p.a, 10) == "x");
  }
  SECTION("peer closed first") {
    conn_pair p(0, ring16k, ring16k, true);
    p.a->close(false);
    io_result r{};
    recv_str(*p.b, 10, 0, &r);
    REQUIRE(r.n == 0);  // B saw A's end
    p.b->close(false);
    CHECK(p.b_hook->settles == 0);
  }
  SECTION("peer's TCP ended (its process died)") {
    conn_pair p(0, ring16k, ring16k, true);
    p.drop_a_tcp();
    io_result r{};
    recv_str(*p.b, 10, 0, &r);
    REQUIRE(r.n == 0);
    p.b->close(false);
    CHECK(p.b_hook->settles == 0);
  }
}

TEST_CASE("close(false) wakes a peer blocked in recv with EOF", "[conn][close]") {
  conn_pair p;
  auto fut = p.b_recv_blocked();
  p.a->close(false);
  CHECK(fut.get().n == 0);
}

TEST_CASE("close(false) with unread data is a reset for the peer", "[conn][close]") {
  conn_pair p;
  REQUIRE(send_str(*p.a, "for B").n == 5);
  REQUIRE(send_str(*p.b, "never read by A").n == 15);
  p.a->close(false);
  // What was already in B's ring is still delivered, then the reset.
  CHECK(recv_str(*p.b, 100) == "for B");
  io_result r{};
  recv_str(*p.b, 100, 0, &r);
  CHECK(r.n == -1);
  CHECK(r.err == ECONNRESET);
  // Reported once, as TCP reports a reset: then POLLHUP without POLLERR,
  // EOF for a reader, EPIPE for a writer.
  CHECK((p.b->events() & (POLLERR | POLLHUP)) == POLLHUP);
  recv_str(*p.b, 100, 0, &r);
  CHECK(r.n == 0);
  r = send_str(*p.b, "x", MSG_NOSIGNAL);
  CHECK(r.n == -1);
  CHECK(r.err == EPIPE);
}

TEST_CASE("close(false) with a full ring wakes the peer's blocked writer with a reset",
          "[conn][close]") {
  conn_pair p;
  auto src = pattern_bytes(9, 0, ring16k);
  REQUIRE(send_bytes(*p.b, src.data(), ring16k, MSG_DONTWAIT | MSG_NOSIGNAL).n == ring16k);
  auto fut = std::async(std::launch::async, [&] { return send_str(*p.b, "blocked", MSG_NOSIGNAL); });
  // B waits for space in A's ring: its waiter count sits in A's control page.
  REQUIRE(spin_until([&] { return p.a_ctl->tx_waiters.load() != 0; }));
  p.a->close(false);  // A never read B's data
  io_result r = fut.get();
  CHECK(r.n == -1);
  CHECK(r.err == ECONNRESET);
}

TEST_CASE("close(true) (SO_LINGER 0) is a reset for the peer", "[conn][close]") {
  conn_pair p;
  REQUIRE(send_str(*p.a, "data").n == 4);
  p.a->close(true);
  CHECK((p.b->events() & (POLLERR | POLLHUP | POLLIN)) == (POLLERR | POLLHUP | POLLIN));
  CHECK(recv_str(*p.b, 100) == "data");
  io_result r{};
  recv_str(*p.b, 100, 0, &r);
  CHECK(r.n == -1);
  CHECK(r.err == ECONNRESET);
}

TEST_CASE("close(true) wakes a peer blocked in recv with ECONNRESET", "[conn][close]") {
  conn_pair p;
  auto fut = p.b_recv_blocked();
  p.a->close(true);
  io_result r = fut.get();
  CHECK(r.n == -1);
  CHECK(r.err == ECONNRESET);
}

TEST_CASE("after a reset recv never reports EPIPE, even once send did", "[conn][close]") {
  conn_pair p;
  p.a->close(true);
  SECTION("send first") {
    io_result r = send_str(*p.b, "x", MSG_NOSIGNAL);
    CHECK(r.n == -1);
    CHECK(r.err == ECONNRESET);  // the reset is reported once ...
    r = send_str(*p.b, "x", MSG_NOSIGNAL);
    CHECK(r.n == -1);
    CHECK(r.err == EPIPE);  // ... then the pipe is broken
  }
  SECTION("recv, then send") {
    io_result r{};
    recv_str(*p.b, 10, MSG_DONTWAIT, &r);
    CHECK(r.n == -1);
    CHECK(r.err == ECONNRESET);
    r = send_str(*p.b, "x", MSG_NOSIGNAL);
    CHECK(r.n == -1);
    CHECK((r.err == ECONNRESET || r.err == EPIPE));
  }
  // recv(2) has no EPIPE: a reset connection reads as reset (or EOF).
  for (int flags : {0, int{MSG_DONTWAIT}, int{MSG_PEEK}}) {
    io_result r{};
    recv_str(*p.b, 10, flags, &r);
    INFO("flags " << flags << ": n " << r.n << " errno " << r.err);
    CHECK((r.n == 0 || (r.n == -1 && r.err == ECONNRESET)));
  }
}

TEST_CASE("the peer's last data before its end flags is never lost", "[conn][close][race]") {
  // B computes what is readable, then (before it looks at the peer's flags)
  // the peer sends its last bytes and ends the connection. B must not take
  // the end flags for "nothing more to read".
  const int flags = GENERATE(0, int{MSG_DONTWAIT});
  INFO("recv flags " << flags);
  conn_pair p(0, ring16k, ring16k, true);
  io_result end{};
  SECTION("SHUT_WR") {
    p.b_hook->before_flags = [&] {
      send_str(*p.a, "last");
      p.a->shutdown(SHUT_WR);
    };
    end = {0, 0};
  }
  SECTION("close(false)") {
    p.b_hook->before_flags = [&] {
      send_str(*p.a, "last");
      p.a->close(false);
    };
    end = {0, 0};
  }
  SECTION("close(true)") {
    p.b_hook->before_flags = [&] {
      send_str(*p.a, "last");
      p.a->close(true);
    };
    end = {-1, ECONNRESET};
  }
  SECTION("peer process died (TCP closed, no SMC close)") {
    p.b_hook->before_flags = [&] {
      send_str(*p.a, "last");
      p.drop_a_tcp();
      p.b->check_tcp();  // as the preload's poll would, from another thread
    };
    end = {0, 0};
  }
  io_result r{};
  std::string got = recv_str(*p.b, 100, flags, &r);
  INFO("first recv: n " << r.n << " errno " << r.err);
  CHECK(got == "last");
  recv_str(*p.b, 100, flags, &r);
  CHECK(r.n == end.n);
  CHECK(r.err == end.err);
}

TEST_CASE("after our SHUT_WR a full ring still polls writable (a write fails at once)",
          "[conn][close]") {
  conn_pair p;
  std::vector<uint8_t> fill(ring16k, 'w');
  REQUIRE(send_bytes(*p.a, fill.data(), ring16k, MSG_DONTWAIT | MSG_NOSIGNAL).n == ring16k);
  REQUIRE((p.a->events() & POLLOUT) == 0);
  REQUIRE(p.a->shutdown(SHUT_WR) == 0);
  // As for a TCP socket after SHUT_WR: POLLOUT, since send() no longer blocks.
  CHECK((p.a->events() & POLLOUT) != 0);
  io_result r = send_str(*p.a, "x", MSG_NOSIGNAL);
  CHECK(r.n == -1);
  CHECK(r.err == EPIPE);
}

// ---------------------------------------------------------------------------
// 6. Peer gone without an SMC close (its TCP socket closed)
// ---------------------------------------------------------------------------

TEST_CASE("peer's TCP closes after it read everything: EOF", "[conn][gone]") {
  conn_pair p;
  REQUIRE(send_str(*p.b, "seen").n == 4);
  REQUIRE(recv_str(*p.a, 10) == "seen");
  REQUIRE(send_str(*p.a, "tail").n == 4);

  SECTION("next recv") {
    p.drop_a_tcp();
    CHECK(recv_str(*p.b, 100) == "tail");  // data sent before the crash is still there
    io_result r{};
    recv_str(*p.b, 100, 0, &r);
    CHECK(r.n == 0);
    CHECK((p.b->events() & (POLLIN | POLLRDHUP)) == (POLLIN | POLLRDHUP));
  }
  SECTION("blocked recv") {
    CHECK(recv_str(*p.b, 100) == "tail");
    auto fut = p.b_recv_blocked();
    p.drop_a_tcp();
    CHECK(fut.get().n == 0);
  }
  // As over TCP to a peer that is gone: the first write is taken (its reset
  // comes back), the next one fails with that reset's EPIPE.
  io_result r = send_str(*p.b, "x", MSG_NOSIGNAL);
  CHECK(r.n == 1);
  r = send_str(*p.b, "x", MSG_NOSIGNAL);
  CHECK(r.n == -1);
  CHECK(r.err == EPIPE);
}

TEST_CASE("peer's TCP closes with our data unread: ECONNRESET", "[conn][gone]") {
  conn_pair p;
  REQUIRE(send_str(*p.b, "never read").n == 10);

  SECTION("next recv") {
    p.drop_a_tcp();
    io_result r{};
    recv_str(*p.b, 100, 0, &r);
    CHECK(r.n == -1);
    CHECK(r.err == ECONNRESET);
    CHECK((p.b->events() & (POLLERR | POLLHUP)) == POLLHUP);  // reported: taken
  }
  SECTION("blocked recv") {
    auto fut = p.b_recv_blocked();
    p.drop_a_tcp();
    io_result r = fut.get();
    CHECK(r.n == -1);
    CHECK(r.err == ECONNRESET);
  }
  SECTION("blocked send on the peer's full ring") {
    auto src = pattern_bytes(10, 0, ring16k);
    REQUIRE(send_bytes(*p.b, src.data(), ring16k, MSG_DONTWAIT | MSG_NOSIGNAL).n ==
            static_cast<ssize_t>(ring16k - 10));
    auto fut = std::async(std::launch::async, [&] { return send_str(*p.b, "blocked", MSG_NOSIGNAL); });
    REQUIRE(spin_until([&] { return p.a_ctl->tx_waiters.load() != 0; }));
    p.drop_a_tcp();
    io_result r = fut.get();
    CHECK(r.n == -1);
    CHECK(r.err == ECONNRESET);
  }
  io_result r = send_str(*p.b, "x", MSG_NOSIGNAL);
  CHECK(r.n == -1);
  CHECK((r.err == EPIPE || r.err == ECONNRESET));
}

TEST_CASE("data on the TCP socket of an SMC connection aborts it", "[conn][gone]") {
  conn_pair p;
  REQUIRE(::send(p.a_tcp(), "!", 1, MSG_NOSIGNAL) == 1);
  io_result r{};
  recv_str(*p.b, 10, MSG_DONTWAIT, &r);
  CHECK(r.n == -1);
  CHECK(r.err == ECONNRESET);
  // The peer is told: it sees the reset too.
  recv_str(*p.a, 10, MSG_DONTWAIT, &r);
  CHECK(r.n == -1);
  CHECK(r.err == ECONNRESET);
  CHECK(p.b->take_error() == 0);  // B's recv reported it already
  CHECK(p.a->take_error() == 0);
}

// ---------------------------------------------------------------------------
// 7. Hostile peer
// ---------------------------------------------------------------------------

TEST_CASE("a hostile producer cursor aborts the connection", "[conn][hostile]") {
  conn_pair p;
  REQUIRE(send_str(*p.a, std::string(100, 'p')).n == 100);
  REQUIRE(recv_str(*p.b, 50).size() == 50);  // B has seen prod {0,100}, consumed 50
  REQUIRE(p.b->readable_bytes() == 50);

  uint64_t bad = 0;
  SECTION("count beyond the ring") { bad = curs_pack(cursor{0, ring16k}); }
  SECTION("count far beyond the ring") { bad = curs_pack(cursor{0, 0xFFFFFFFFu}); }
  SECTION("more than one ring ahead of the consumer") { bad = curs_pack(cursor{1, 51}); }
  SECTION("two wraps ahead") { bad = curs_pack(cursor{2, 50}); }
  SECTION("moved backwards, still ahead of the consumer") { bad = curs_pack(cursor{0, 60}); }
  SECTION("moved behind the consumer") { bad = curs_pack(cursor{0, 10}); }
  SECTION("wrap went backwards") { bad = curs_pack(cursor{0xFFFF, 100}); }
  INFO("prod = 0x" << std::hex << bad);

  p.b_ctl->prod.store(bad);
  io_result r{};
  CHECK((p.b->events() & POLLERR) == 0);  // nothing known before the look
  recv_str(*p.b, 1000, 0, &r);
  CHECK(r.n == -1);
  CHECK(r.err == ECONNRESET);
  // It stays aborted: the reset was reported once; then EOF, as TCP.
  recv_str(*p.b, 1000, 0, &r);
  CHECK(r.n == 0);
  recv_str(*p.b, 1000, MSG_PEEK | MSG_DONTWAIT, &r);
  CHECK(r.n == 0);
  CHECK(p.b->readable_bytes() == 0);
  CHECK((p.b->events() & (POLLERR | POLLHUP)) == POLLHUP);
  CHECK(p.b->finished());
  // The peer learns about the abort.
  CHECK((p.a_ctl->prod_flags.load() & cdc::conn_abnormal) != 0);
  recv_str(*p.a, 10, MSG_DONTWAIT, &r);
  CHECK(r.n == -1);
  CHECK(r.err == ECONNRESET);
  r = send_str(*p.b, "x", MSG_NOSIGNAL);
  CHECK(r.n == -1);
  CHECK((r.err == ECONNRESET || r.err == EPIPE));
}

TEST_CASE("a full ring (exactly one lap ahead) is legal, one byte more is not", "[conn][hostile]") {
  conn_pair p;
  p.b_ctl->prod.store(curs_pack(cursor{1, 0}));
  CHECK(p.b->readable_bytes() == ring16k);
  p.b_ctl->prod.store(curs_pack(cursor{1, 1}));
  io_result r{};
  recv_str(*p.b, 10, MSG_DONTWAIT, &r);
  CHECK(r.n == -1);
  CHECK(r.err == ECONNRESET);
}

TEST_CASE("a hostile producer cursor wakes a blocked reader with ECONNRESET", "[conn][hostile]") {
  conn_pair p;
  auto fut = p.b_recv_blocked();
  // A hostile peer writes a bad cursor and rings the doorbell.
  p.b_ctl->prod.store(curs_pack(cursor{5, 7}));
  uint64_t one = 1;
  REQUIRE(::write(p.b->path().rx_fd(), &one, sizeof(one)) == 8);
  io_result r = fut.get();
  CHECK(r.n == -1);
  CHECK(r.err == ECONNRESET);
}

TEST_CASE("a hostile consumer cursor makes send fail with ECONNRESET", "[conn][hostile]") {
  conn_pair p;
  REQUIRE(send_str(*p.b, std::string(100, 'c')).n == 100);  // B -> A's RMB, prod {0,100}
  REQUIRE(recv_str(*p.a, 40).size() == 40);                  // A's cons {0,40}
  REQUIRE(send_str(*p.b, "k").n == 1);                       // B has seen cons {0,40}

  uint64_t bad = 0;
  SECTION("ahead of our producer cursor") { bad = curs_pack(cursor{0, 200}); }
  SECTION("a lap ahead of our producer cursor") { bad = curs_pack(cursor{1, 101}); }
  SECTION("count beyond the ring") { bad = curs_pack(cursor{0, ring16k + 5}); }
  SECTION("moved backwards") { bad = curs_pack(cursor{0, 20}); }
  SECTION("wrap behind") { bad = curs_pack(cursor{0xFFFF, 40}); }
  INFO("cons = 0x" << std::hex << bad);

  p.a_ctl->cons.store(bad);
  io_result r = send_str(*p.b, "more", MSG_NOSIGNAL);
  CHECK(r.n == -1);
  CHECK(r.err == ECONNRESET);
  CHECK((p.b->events() & (POLLERR | POLLHUP)) == POLLHUP);  // reported by send
  CHECK(p.b->take_error() == 0);
  r = send_str(*p.b, "more", MSG_NOSIGNAL);
  CHECK(r.n == -1);
  CHECK(r.err == EPIPE);
  CHECK((p.a_ctl->prod_flags.load() & cdc::conn_abnormal) != 0);  // A is told
  // Nothing was written past the validated state.
  CHECK(curs_unpack(p.a_ctl->prod.load()) == cursor{0, 101});
  CHECK(p.b->unsent_bytes() <= ring16k);  // SIOCOUTQ stays within the ring, whatever the peer writes
}

TEST_CASE("hostile cursors never make the engine touch memory outside the rings",
          "[conn][hostile]") {
  // Random cursor values into both control pages; the engine must reject or
  // accept each without crashing (ASan/UBSan watch the copies).
  std::mt19937_64 rng(12345);
  for (int round = 0; round < 200; ++round) {
    conn_pair p;
    REQUIRE(send_str(*p.a, "abc").n == 3);
    REQUIRE(send_str(*p.b, "xyz").n == 3);
    uint64_t v = rng();
    switch (round % 4) {
      case 0: v &= 0x0000FFFFFFFFFFFFULL; break;
      case 1: v = curs_pack(cursor{static_cast<uint16_t>(v >> 32), static_cast<uint32_t>(v % (2 * ring16k))}); break;
      case 2: v = curs_pack(cursor{static_cast<uint16_t>(v & 1), static_cast<uint32_t>(v % ring16k)}); break;
      default: break;
    }
    p.b_ctl->prod.store(v);
    p.a_ctl->cons.store(rng() & 0x0001FFFFFFFFFFFFULL);
    std::vector<uint8_t> buf(3 * ring16k);
    io_result r = recv_bytes(*p.b, buf.data(), buf.size(), MSG_DONTWAIT);
    CHECK(r.n <= static_cast<ssize_t>(ring16k));
    if (r.n < 0) {
      CHECK((r.err == ECONNRESET || r.err == EAGAIN));
    }
    r = send_bytes(*p.b, buf.data(), buf.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    CHECK(r.n <= static_cast<ssize_t>(ring16k));
    (void)p.b->events();
    (void)p.b->unsent_bytes();
    (void)p.b->readable_bytes();
  }
}

// ---------------------------------------------------------------------------
// 8. Blocking and wake-ups (spin_us = 0: every wait sleeps on a doorbell)
// ---------------------------------------------------------------------------

TEST_CASE("a reader blocked in recv wakes when the peer sends", "[conn][wake]") {
  conn_pair p(0);
  set_sock_timeout(p.b_tcp(), SO_RCVTIMEO, 5000);
  for (int round = 0; round < 20; ++round) {
    INFO("round " << round);
    auto fut = p.b_recv_timed(100);
    const std::string msg = "wake " + std::to_string(round);
    REQUIRE(send_str(*p.a, msg).n == static_cast<ssize_t>(msg.size()));
    auto [got, ms] = fut.get();
    CHECK(got == msg);
    CHECK(ms < 2500);  // woken by the doorbell, not by the 5 s receive timeout
  }
  CHECK(p.b_ctl->rx_waiters.load() == 0);
}

// Counts recv(MSG_PEEK | MSG_DONTWAIT) calls, the look check_tcp() takes at
// the TCP socket, while it is in scope.
struct tcp_look_counter {
  static inline std::atomic<int> looks{0};
  static inline ssize_t (*real)(int, void*, size_t, int) = nullptr;
  static ssize_t counting(int fd, void* b, size_t n, int flags) {
    if ((flags & (MSG_PEEK | MSG_DONTWAIT)) == (MSG_PEEK | MSG_DONTWAIT)) {
      looks.fetch_add(1);
    }
    return real(fd, b, n, flags);
  }
  tcp_look_counter() {
    real = smc::rdma::sys().recv;
    looks.store(0);
    smc::rdma::sys().recv = counting;
  }
  ~tcp_look_counter() { smc::rdma::sys().recv = real; }
};

TEST_CASE("a blocked recv looks at the TCP socket only when its poll saw it stir",
          "[conn][wake]") {
  // Every sleep's poll watches the TCP socket; asking it (a system call)
  // before each sleep as well costs a round trip's worth of latency on a
  // busy host. The first sleep of a connection still looks.
  conn_pair p(0);
  set_sock_timeout(p.b_tcp(), SO_RCVTIMEO, 5000);
  tcp_look_counter counter;
  constexpr int rounds = 10;
  for (int round = 0; round < rounds; ++round) {
    INFO("round " << round);
    auto fut = std::async(std::launch::async, [&] { return recv_str(*p.b, 100); });
    REQUIRE(spin_until([&] { return p.b_ctl->rx_waiters.load() != 0; }));
    REQUIRE(send_str(*p.a, "ping").n == 4);
    CHECK(fut.get() == "ping");
  }
  CHECK(tcp_look_counter::looks.load() <= 1);
  // The peer's TCP end still wakes a sleeping reader, which then looks.
  auto fut = p.b_recv_blocked();
  p.drop_a_tcp();
  io_result r = fut.get();
  CHECK(r.n == 0);
  CHECK(tcp_look_counter::looks.load() >= 2);
}

TEST_CASE("a writer blocked on a full ring wakes when the peer reads", "[conn][wake]") {
  conn_pair p(0);
  set_sock_timeout(p.a_tcp(), SO_SNDTIMEO, 5000);
  auto src = pattern_bytes(12, 0, 3 * ring16k);
  REQUIRE(send_bytes(*p.a, src.data(), ring16k, MSG_DONTWAIT | MSG_NOSIGNAL).n == ring16k);
  uint64_t sent = ring16k;
  uint64_t consumed = 0;
  std::vector<uint8_t> buf(ring16k);
  for (int round = 0; round < 10; ++round) {
    INFO("round " << round);
    const size_t n = 1500;
    auto fut = std::async(std::launch::async, [&] {
      const auto t0 = std::chrono::steady_clock::now();
      io_result r = send_bytes(*p.a, src.data() + sent, n);
      return std::make_pair(r, elapsed_ms(t0));
    });
    // A declares itself waiting for space in B's control page.
    REQUIRE(spin_until([&] { return p.b_ctl->tx_waiters.load() != 0; }));
    // Reading less than A wants wakes it, but it must wait once more.
    io_result r = recv_bytes(*p.b, buf.data(), 1000, MSG_DONTWAIT);
    REQUIRE(r.n == 1000);
    CHECK(first_mismatch(buf.data(), 1000, 12, consumed) == -1);
    consumed += 1000;
    REQUIRE(spin_until([&] { return p.b->readable_bytes() == ring16k && p.b_ctl->tx_waiters.load() != 0; }));
    r = recv_bytes(*p.b, buf.data(), 500, MSG_DONTWAIT);
    REQUIRE(r.n == 500);
    CHECK(first_mismatch(buf.data(), 500, 12, consumed) == -1);
    consumed += 500;
    auto [res, ms] = fut.get();
    CHECK(res.n == static_cast<ssize_t>(n));
    CHECK(ms < 2500);
    sent += n;
    CHECK(p.b->readable_bytes() == ring16k);
  }
  io_result r = recv_bytes(*p.b, buf.data(), buf.size(), MSG_DONTWAIT);
  REQUIRE(r.n == ring16k);
  CHECK(first_mismatch(buf.data(), ring16k, 12, consumed) == -1);
}

TEST_CASE("SO_RCVTIMEO / SO_SNDTIMEO bound a blocking call", "[conn][wake]") {
  conn_pair p(0);
  SECTION("recv") {
    set_sock_timeout(p.b_tcp(), SO_RCVTIMEO, 200);
    const auto t0 = std::chrono::steady_clock::now();
    io_result r{};
    recv_str(*p.b, 10, 0, &r);
    const auto ms = elapsed_ms(t0);
    CHECK(r.n == -1);
    CHECK(r.err == EAGAIN);
    CHECK(ms >= 190);
    CHECK(ms < 3000);
    CHECK(p.b_ctl->rx_waiters.load() == 0);
  }
  SECTION("send") {
    set_sock_timeout(p.a_tcp(), SO_SNDTIMEO, 200);
    std::vector<uint8_t> src(ring16k + 10, 's');
    const auto t0 = std::chrono::steady_clock::now();
    io_result r = send_bytes(*p.a, src.data(), ring16k, MSG_NOSIGNAL);
    REQUIRE(r.n == ring16k);
    r = send_bytes(*p.a, src.data(), 10, MSG_NOSIGNAL);
    const auto ms = elapsed_ms(t0);
    CHECK(r.n == -1);
    CHECK(r.err == EAGAIN);
    CHECK(ms >= 190);
    CHECK(ms < 3000);
    CHECK(p.b_ctl->tx_waiters.load() == 0);
  }
  SECTION("send that partly fits returns the partial count at the timeout") {
    set_sock_timeout(p.a_tcp(), SO_SNDTIMEO, 200);
    std::vector<uint8_t> src(ring16k + 10, 's');
    io_result r = send_bytes(*p.a, src.data(), src.size(), MSG_NOSIGNAL);
    CHECK(r.n == ring16k);
  }
}

TEST_CASE("O_NONBLOCK on the TCP socket makes recv return EAGAIN at once", "[conn][wake]") {
  conn_pair p(0);
  set_sock_timeout(p.b_tcp(), SO_RCVTIMEO, 5000);  // if O_NONBLOCK were ignored: a 5 s wait
  REQUIRE(fcntl(p.b_tcp(), F_SETFL, fcntl(p.b_tcp(), F_GETFL) | O_NONBLOCK) == 0);
  const auto t0 = std::chrono::steady_clock::now();
  io_result r{};
  recv_str(*p.b, 10, 0, &r);
  CHECK(r.n == -1);
  CHECK(r.err == EAGAIN);
  CHECK(elapsed_ms(t0) < 1000);
  CHECK(p.b_ctl->rx_waiters.load() == 0);
  // And MSG_DONTWAIT alone does the same on a blocking socket.
  REQUIRE(fcntl(p.b_tcp(), F_SETFL, fcntl(p.b_tcp(), F_GETFL) & ~O_NONBLOCK) == 0);
  recv_str(*p.b, 10, MSG_DONTWAIT, &r);
  CHECK(r.n == -1);
  CHECK(r.err == EAGAIN);
  REQUIRE(send_str(*p.a, "now").n == 3);
  CHECK(recv_str(*p.b, 10, MSG_DONTWAIT) == "now");
}

// A doorbell that was rung but not drained (the woken side found its data and
// returned) is reset later by a waiter that finds nothing. If the peer rings
// again exactly while that reset runs, the next wait must still be woken.
TEST_CASE("rx doorbell: a ring during the reset is not lost", "[conn][wake][race]") {
  conn_pair p(0);
  set_sock_timeout(p.b_tcp(), SO_RCVTIMEO, 5000);
  auto blocked_recv = [&] {
    return std::async(std::launch::async, [&] {
      const auto t0 = std::chrono::steady_clock::now();
      std::string s = recv_str(*p.b, 10);
      return std::make_pair(s, elapsed_ms(t0));
    });
  };
  // 1. B sleeps, A's send rings; B finds data and returns: doorbell left rung.
  auto f1 = blocked_recv();
  REQUIRE(spin_until([&] { return p.b_ctl->rx_waiters.load() != 0; }));
  REQUIRE(send_str(*p.a, "1").n == 1);
  CHECK(f1.get().first == "1");
  CHECK(p.b_ctl->rx_rung.load() == 1);
  // 2. B sleeps; a ring with nothing new wakes it, and it resets the
  //    doorbell; right then (inside its read of the doorbell) A sends and
  //    rings again.
  {
    read_hook hook(p.b->path().rx_fd(), [&] { send_str(*p.a, "2", MSG_DONTWAIT | MSG_NOSIGNAL); });
    auto f2 = blocked_recv();
    // (A thread's first wait finds step 1's ring still queued: that one
    // may be what wakes it.)
    REQUIRE(spin_until([&] { return p.b_ctl->rx_waiters.load() != 0 || hook.fired(); }));
    if (!hook.fired()) {
      stray_ring(bell_fds(*p.a)[5]);
    }
    CHECK(f2.get().first == "2");
    CHECK(hook.fired());
  }
  // 3. B sleeps again; A's next send must wake it.
  auto f3 = blocked_recv();
  REQUIRE(spin_until([&] { return p.b_ctl->rx_waiters.load() != 0; }));
  REQUIRE(send_str(*p.a, "3").n == 1);
  auto [got, ms] = f3.get();
  CHECK(got == "3");
  CHECK(ms < 2500);  // woken by the doorbell, not by the 5 s receive timeout
}

namespace {

// The fds of a connection's doorbells, from its export (shm_transport.h:
// [3] our rx doorbell, [4] our tx doorbell, [5] and [6] the ringing ends
// of the peer's rx and tx doorbells). Owned by the path: not to be closed.
std::vector<int> bell_fds(conn& c) {
  std::vector<int> fds;
  uint32_t rx = 0;
  uint32_t tx = 0;
  REQUIRE(c.path().export_fds(fds, rx, tx));
  REQUIRE(fds.size() == shm::export_fd_count);
  return fds;
}

// Fills a doorbell through one of its ringing ends until the kernel says
// its queue is full; the count of rings queued.
int fill_bell(int ring) {
  const char one = 1;
  int n = 0;
  while (::send(ring, &one, 1, MSG_DONTWAIT | MSG_NOSIGNAL) == 1) {
    ++n;
  }
  REQUIRE(errno == EAGAIN);
  return n;
}

}  // namespace

// The attack that froze a server for ever with eventfd doorbells: the peer
// shares the file description it rings us through, so it clears
// O_NONBLOCK on it, fills it, and makes us ring (its waiter flags live in
// pages it writes). Our ring must not block: every ring says MSG_DONTWAIT.
TEST_CASE("a peer that clears O_NONBLOCK on a doorbell it shares and fills it cannot block us",
          "[conn][wake][hostile]") {
  conn_pair p(0);
  // A (the hostile peer) fills its own rx doorbell through its ringing end,
  // whose description B rings it through (B's copy is the test's handle to
  // it: a hostile A keeps one), and makes it blocking.
  const std::vector<int> b = bell_fds(*p.b);
  const int rings = fill_bell(b[5]);
  CHECK(rings > 0);
  const int fl = ::fcntl(b[5], F_GETFL);
  REQUIRE(fl >= 0);
  REQUIRE(::fcntl(b[5], F_SETFL, fl & ~O_NONBLOCK) == 0);
  // A declares a waiter with the bell not rung: B's next send rings it.
  p.a_ctl->rx_waiters.store(1);
  p.a_ctl->rx_rung.store(0);
  auto fut = std::async(std::launch::async, [&] { return send_str(*p.b, "hello"); });
  REQUIRE(fut.wait_for(std::chrono::seconds(5)) == std::future_status::ready);
  CHECK(fut.get().n == 5);
  p.a_ctl->rx_waiters.store(0);
}

// Nothing of ours rings our doorbells: the connection keeps no ringing end
// of its own (the peer holds the only one), and a direction that ends shuts
// its doorbell for reading instead, for waiters on no list. A shut doorbell
// reads end-of-file for every drain after its last ring (an empty message
// each time recvmmsg asks): no flood then (taken for one, they reset a
// connection whose other direction was still in use).
TEST_CASE("a doorbell shut at an end is readable for good, and no flood", "[conn][wake]") {
  conn_pair p(0);
  std::vector<int> own;
  uint32_t rx = 0;
  uint32_t tx = 0;
  REQUIRE(p.b->path().export_fds(own, rx, tx));
  CHECK(own.size() == 7);  // state page, two RMBs, two doorbells, the peer's two ringing ends
  pollfd pb{p.b->path().tx_fd(), POLLIN, 0};
  CHECK(::poll(&pb, 1, 0) == 0);
  stray_ring(bell_fds(*p.a)[6]);  // the peer rang B's tx doorbell once
  p.b->path().arm_tx(1);  // a writer elsewhere: on no list of this process's
  REQUIRE(p.b->shutdown(SHUT_WR) == 0);
  p.b->path().arm_tx(-1);
  for (int i = 0; i < 3 * shm::max_queued_rings; ++i) {
    CHECK((p.b->reset_doorbell(false) & POLLOUT) != 0);
    p.b->path().drain_tx();
  }
  CHECK(::poll(&pb, 1, 0) == 1);
  // The other direction goes on; the peer reads B's end as EOF, no reset.
  REQUIRE(send_str(*p.a, "and back", MSG_DONTWAIT).n == 8);
  CHECK(recv_str(*p.b, 20, MSG_DONTWAIT) == "and back");
  io_result r{};
  recv_str(*p.a, 20, MSG_DONTWAIT, &r);
  CHECK(r.n == 0);
}

// A peer that rings without end costs itself the connection; we only pay
// the drain.
TEST_CASE("a peer that floods a doorbell loses the connection", "[conn][wake][hostile]") {
  conn_pair p(0);
  set_sock_timeout(p.b_tcp(), SO_RCVTIMEO, 5000);
  const std::vector<int> a = bell_fds(*p.a);
  const int rings = fill_bell(a[5]);  // A rings B's rx doorbell, many times over
  REQUIRE(rings > shm::max_queued_rings);
  const auto t0 = std::chrono::steady_clock::now();
  io_result r{};
  recv_str(*p.b, 10, 0, &r);
  CHECK(r.n == -1);
  CHECK(r.err == ECONNRESET);
  CHECK(elapsed_ms(t0) < 2500);  // at the first wake, not at the receive timeout
  // A reads the reset.
  recv_str(*p.a, 10, MSG_DONTWAIT, &r);
  CHECK(r.n == -1);
  CHECK(r.err == ECONNRESET);
}

// A doorbell readable with no ring in it (the peer shut its ringing end for
// writing, which reads as end of file here; or it sent an empty message)
// would keep every level-triggered watcher awake for good: that costs the
// peer its connection, as a flood does.
TEST_CASE("a peer that shuts its ringing end or sends empty messages loses the connection",
          "[conn][wake][hostile]") {
  conn_pair p(0);
  const std::vector<int> a = bell_fds(*p.a);  // A's ringing ends of B's doorbells
  const bool empty = GENERATE(false, true);
  INFO((empty ? "an empty message on B's rx doorbell" : "A shuts its end of B's rx doorbell"));
  if (empty) {
    REQUIRE(::send(a[5], "", 0, MSG_DONTWAIT | MSG_NOSIGNAL) == 0);
  } else {
    REQUIRE(::shutdown(a[5], SHUT_WR) == 0);
  }
  pollfd pb{p.b->path().rx_fd(), POLLIN, 0};
  REQUIRE(::poll(&pb, 1, 0) == 1);
  p.b->reset_doorbell(true);  // what a watcher that woke does
  io_result r{};
  recv_str(*p.b, 10, MSG_DONTWAIT, &r);
  CHECK(r.n == -1);
  CHECK(r.err == ECONNRESET);
  recv_str(*p.a, 10, MSG_DONTWAIT, &r);  // A reads the reset
  CHECK(r.n == -1);
  CHECK(r.err == ECONNRESET);
}

// A peer's process that ends closes its fds one by one: the ringing ends of
// our doorbells may go before its TCP socket does. That is the peer gone,
// as its TCP end would say: EOF, or a reset if it left data of ours unread.
TEST_CASE("a peer whose ringing ends close before its TCP end is gone, not a flood",
          "[conn][gone]") {
  conn_pair p(0);
  const std::vector<int> a = bell_fds(*p.a);  // A's ringing ends of B's doorbells
  io_result want{0, 0};
  SECTION("everything of ours read: EOF") {
    REQUIRE(send_str(*p.b, "seen").n == 4);
    REQUIRE(recv_str(*p.a, 10, MSG_DONTWAIT) == "seen");
  }
  SECTION("data of ours unread: a reset") {
    REQUIRE(send_str(*p.b, "never read").n == 10);
    want = {-1, ECONNRESET};
  }
  // The ends close (another socket takes their numbers, which A's path
  // closes later).
  for (int ring : {a[5], a[6]}) {
    const int other = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    REQUIRE(other >= 0);
    REQUIRE(::dup3(other, ring, O_CLOEXEC) == ring);
    ::close(other);
  }
  pollfd pb{p.b->path().rx_fd(), POLLIN, 0};
  REQUIRE(::poll(&pb, 1, 0) == 1);
  CHECK((pb.revents & POLLHUP) != 0);
  p.b->reset_doorbell(true);  // what a watcher that woke does
  io_result r{};
  recv_str(*p.b, 10, MSG_DONTWAIT, &r);
  CHECK(r.n == want.n);
  CHECK(r.err == want.err);
}

TEST_CASE("tx doorbell: a ring during the reset is not lost", "[conn][wake][race]") {
  conn_pair p(0);
  set_sock_timeout(p.a_tcp(), SO_SNDTIMEO, 5000);
  std::vector<uint8_t> fill(ring16k, 'f');
  REQUIRE(send_bytes(*p.a, fill.data(), ring16k, MSG_DONTWAIT | MSG_NOSIGNAL).n == ring16k);
  auto blocked_send = [&] {
    return std::async(std::launch::async, [&] {
      const auto t0 = std::chrono::steady_clock::now();
      io_result r = send_str(*p.a, "s");
      return std::make_pair(r, elapsed_ms(t0));
    });
  };
  char c;
  // 1. A sleeps on the full ring, B reads one byte and rings; A writes and returns.
  auto f1 = blocked_send();
  REQUIRE(spin_until([&] { return p.b_ctl->tx_waiters.load() != 0; }));
  REQUIRE(recv_bytes(*p.b, &c, 1, MSG_DONTWAIT).n == 1);
  CHECK(f1.get().first.n == 1);
  CHECK(p.b_ctl->tx_rung.load() == 1);
  // 2. A sleeps; a ring with nothing new wakes it, and it resets the
  //    doorbell; right then B reads.
  {
    read_hook hook(p.a->path().tx_fd(), [&] { recv_bytes(*p.b, &c, 1, MSG_DONTWAIT); });
    auto f2 = blocked_send();
    REQUIRE(spin_until([&] { return p.b_ctl->tx_waiters.load() != 0 || hook.fired(); }));
    if (!hook.fired()) {
      stray_ring(bell_fds(*p.b)[6]);
    }
    CHECK(f2.get().first.n == 1);
    CHECK(hook.fired());
  }
  // 3. A sleeps again; B's next read must wake it.
  auto f3 = blocked_send();
  REQUIRE(spin_until([&] { return p.b_ctl->tx_waiters.load() != 0; }));
  REQUIRE(recv_bytes(*p.b, &c, 1, MSG_DONTWAIT).n == 1);
  auto [r, ms] = f3.get();
  CHECK(r.n == 1);
  CHECK(ms < 2500);  // woken by the doorbell, not by the 5 s send timeout
}

namespace {
bool fd_readable(int fd) {
  pollfd pf{fd, POLLIN, 0};
  return ::poll(&pf, 1, 0) == 1 && (pf.revents & POLLIN) != 0;
}
}  // namespace

// A level-triggered epoll registration keeps the rx doorbell armed and counts
// on it being readable while data is there: the application may read part
// and come back for the rest. A reset that races the peer's next produce
// (the peer sees the doorbell still rung and does not ring) must leave it
// readable, or that data sits unseen until the peer sends again.
TEST_CASE("rx doorbell: a reset racing a produce leaves it readable while data waits",
          "[conn][wake][race]") {
  conn_pair p(0);
  p.b->path().arm_rx(1);  // as an armed level-triggered registration does
  REQUIRE(send_str(*p.a, "1").n == 1);
  REQUIRE(p.b_ctl->rx_rung.load() == 1);
  CHECK(recv_str(*p.b, 10, MSG_DONTWAIT) == "1");
  {
    read_hook hook(p.b->path().rx_fd(), [&] { send_str(*p.a, "23", MSG_DONTWAIT | MSG_NOSIGNAL); });
    poll_mask ev = p.b->reset_doorbell(true);
    CHECK(hook.fired());
    CHECK((ev & POLLIN) != 0);
  }
  CHECK(fd_readable(p.b->path().rx_fd()));
  CHECK(recv_str(*p.b, 1, MSG_DONTWAIT) == "2");  // a partial read...
  CHECK(fd_readable(p.b->path().rx_fd()));       // ...and the rest still shows
  CHECK(recv_str(*p.b, 10, MSG_DONTWAIT) == "3");
  // Nothing left: a reset now leaves the doorbell quiet, and the next produce rings.
  CHECK((p.b->reset_doorbell(true) & POLLIN) == 0);
  CHECK_FALSE(fd_readable(p.b->path().rx_fd()));
  REQUIRE(send_str(*p.a, "4").n == 1);
  CHECK(fd_readable(p.b->path().rx_fd()));
  p.b->path().arm_rx(-1);
}

TEST_CASE("a corked send wakes a sleeping peer only when the cork goes", "[conn][wake][cork]") {
  conn_pair p(0);
  p.b->path().arm_rx(1);  // B sleeps, waiting for data
  SECTION("uncorking rings") {
    p.a->set_cork(true);
    REQUIRE(send_str(*p.a, "head").n == 4);
    REQUIRE(send_str(*p.a, "body").n == 4);
    CHECK(p.a->cork_owed());
    CHECK_FALSE(fd_readable(p.b->path().rx_fd()));  // held back...
    CHECK((p.b->events() & POLLIN) != 0);            // ...yet there for a look
    p.a->set_cork(false);
    CHECK_FALSE(p.a->cork_owed());
    CHECK(fd_readable(p.b->path().rx_fd()));
  }
  SECTION("MSG_MORE holds one send back; the next without it rings") {
    REQUIRE(send_str(*p.a, "head", MSG_MORE).n == 4);
    CHECK(p.a->cork_owed());
    CHECK_FALSE(fd_readable(p.b->path().rx_fd()));
    REQUIRE(send_str(*p.a, "body").n == 4);
    CHECK_FALSE(p.a->cork_owed());
    CHECK(fd_readable(p.b->path().rx_fd()));
  }
  SECTION("a quarter ring held back rings at once, as TCP sends a full segment") {
    p.a->set_cork(true);
    std::vector<uint8_t> big(ring16k / 4 - 10, 'b');
    REQUIRE(send_bytes(*p.a, big.data(), big.size(), MSG_DONTWAIT).n ==
            static_cast<ssize_t>(big.size()));
    CHECK_FALSE(fd_readable(p.b->path().rx_fd()));
    REQUIRE(send_str(*p.a, "0123456789ab").n == 12);  // past the quarter
    CHECK_FALSE(p.a->cork_owed());
    CHECK(fd_readable(p.b->path().rx_fd()));
    std::vector<uint8_t> sink(ring16k);
    REQUIRE(recv_bytes(*p.b, sink.data(), sink.size(), MSG_DONTWAIT).n ==
            static_cast<ssize_t>(big.size() + 12));
  }
  SECTION("the deadline's flush rings") {
    p.a->set_cork(true);
    REQUIRE(send_str(*p.a, "head").n == 4);
    CHECK_FALSE(fd_readable(p.b->path().rx_fd()));
    p.a->flush_cork();
    CHECK(fd_readable(p.b->path().rx_fd()));
  }
  SECTION("close rings, corked or not") {
    p.a->set_cork(true);
    REQUIRE(send_str(*p.a, "last").n == 4);
    CHECK_FALSE(fd_readable(p.b->path().rx_fd()));
    p.a->close(false);
    CHECK(fd_readable(p.b->path().rx_fd()));
    CHECK(recv_str(*p.b, 10, MSG_DONTWAIT) == "last");
  }
  CHECK(recv_str(*p.b, 10, MSG_DONTWAIT).size() <= 8);
  p.b->path().arm_rx(-1);
}

TEST_CASE("a corked writer that must wait for space wakes its peer first", "[conn][wake][cork]") {
  conn_pair p(0);
  p.b->path().arm_rx(1);  // B sleeps, waiting for data
  std::vector<uint8_t> fill(ring16k - 10, 'f');
  REQUIRE(send_bytes(*p.a, fill.data(), fill.size(), MSG_DONTWAIT | MSG_NOSIGNAL).n ==
          static_cast<ssize_t>(fill.size()));
  REQUIRE(p.b->path().drain_rx());  // (B saw that ring)
  p.a->set_cork(true);
  REQUIRE(send_str(*p.a, "0123456789", MSG_DONTWAIT | MSG_NOSIGNAL).n == 10);  // the ring is full
  CHECK(p.a->cork_owed());
  CHECK_FALSE(fd_readable(p.b->path().rx_fd()));
  // A's next send finds no space and waits (50 ms, then EAGAIN): the wait
  // rings what the cork held back, or B would never make room.
  set_sock_timeout(p.a_tcp(), SO_SNDTIMEO, 50);
  io_result r = send_str(*p.a, "x");
  CHECK(r.n == -1);
  CHECK(r.err == EAGAIN);
  CHECK(fd_readable(p.b->path().rx_fd()));
  CHECK_FALSE(p.a->cork_owed());
  p.b->path().arm_rx(-1);
}

TEST_CASE("tx doorbell: a reset racing a consume leaves it readable while space is there",
          "[conn][wake][race]") {
  conn_pair p(0);
  std::vector<uint8_t> fill(ring16k, 'f');
  REQUIRE(send_bytes(*p.a, fill.data(), ring16k, MSG_DONTWAIT | MSG_NOSIGNAL).n == ring16k);
  p.a->path().arm_tx(1);
  char c;
  REQUIRE(recv_bytes(*p.b, &c, 1, MSG_DONTWAIT).n == 1);  // rings A's tx doorbell
  REQUIRE(send_str(*p.a, "x", MSG_DONTWAIT | MSG_NOSIGNAL).n == 1);  // full again
  {
    read_hook hook(p.a->path().tx_fd(), [&] { recv_bytes(*p.b, &c, 1, MSG_DONTWAIT); });
    poll_mask ev = p.a->reset_doorbell(false);
    CHECK(hook.fired());
    CHECK((ev & POLLOUT) != 0);
  }
  CHECK(fd_readable(p.a->path().tx_fd()));
  p.a->path().arm_tx(-1);
}

// A reset takes only the rings it counted, and leaves one while what the
// doorbell announces holds: a watcher elsewhere (another set, a poll in
// another thread, another process) whose wake-up is pending keeps it,
// with no ring put back. Once the data is read, a reset empties it.
TEST_CASE("rx doorbell: a reset leaves one ring while data waits, none once it is read",
          "[conn][wake]") {
  conn_pair p(0);
  p.b->path().arm_rx(1);
  REQUIRE(send_str(*p.a, "1").n == 1);
  CHECK((p.b->reset_doorbell(true, true) & POLLIN) != 0);
  CHECK(fd_readable(p.b->path().rx_fd()));
  REQUIRE(send_str(*p.a, "2").n == 1);  // rings again (the reset lowered the flag)
  CHECK((p.b->reset_doorbell(true, true) & POLLIN) != 0);
  int queued = -1;
  REQUIRE(::ioctl(p.b->path().rx_fd(), FIONREAD, &queued) == 0);
  CHECK(queued == 1);
  CHECK(recv_str(*p.b, 10, MSG_DONTWAIT) == "12");
  CHECK((p.b->reset_doorbell(true, true) & POLLIN) == 0);
  CHECK_FALSE(fd_readable(p.b->path().rx_fd()));
  REQUIRE(send_str(*p.a, "3").n == 1);
  CHECK(fd_readable(p.b->path().rx_fd()));
  p.b->path().arm_rx(-1);
}

// poll() in one thread looks at the cursors while another thread sends or
// receives on the same socket. The look must not change what the sender or
// receiver validates against: a reader of the peer's cursor that then found
// a newer one recorded by the look took the peer for moving backwards and
// reset the connection.
TEST_CASE("a look from another thread between a send's cursor reads resets nothing",
          "[conn][race]") {
  conn_pair p(0, ring16k, ring16k, true);
  REQUIRE(send_str(*p.b, "abcd").n == 4);
  char c;
  REQUIRE(recv_bytes(*p.a, &c, 1, MSG_DONTWAIT).n == 1);
  bool ran = false;
  p.b_hook->after_peer_cons = [&] {
    char d;
    recv_bytes(*p.a, &d, 1, MSG_DONTWAIT);  // the peer consumes one more byte...
    p.b->events();                          // ...and another thread's poll looks
    ran = true;
  };
  io_result r = send_str(*p.b, "e", MSG_DONTWAIT | MSG_NOSIGNAL);
  CHECK(ran);
  CHECK(r.n == 1);
  CHECK(p.b->take_error() == 0);
  CHECK(recv_str(*p.a, 10, MSG_DONTWAIT) == "cde");
}

TEST_CASE("a look from another thread between a recv's cursor reads resets nothing",
          "[conn][race]") {
  conn_pair p(0, ring16k, ring16k, true);
  REQUIRE(send_str(*p.a, "ab").n == 2);
  bool ran = false;
  p.b_hook->after_peer_prod = [&] {
    send_str(*p.a, "cd", MSG_DONTWAIT | MSG_NOSIGNAL);  // the peer produces more...
    p.b->events();                                     // ...and another thread looks
    ran = true;
  };
  io_result res{};
  std::string got = recv_str(*p.b, 10, MSG_DONTWAIT, &res);
  CHECK(ran);
  CHECK(res.n > 0);
  CHECK(p.b->take_error() == 0);
  got += recv_str(*p.b, 10, MSG_DONTWAIT);
  CHECK(got == "abcd");
  CHECK(send_str(*p.b, "x", MSG_DONTWAIT | MSG_NOSIGNAL).n == 1);
}

TEST_CASE("a writer blocked on a half-closed peer's full ring sleeps", "[conn][wake]") {
  // The peer is done writing (SHUT_WR) but still reads: our writer must wait
  // for space on the doorbell, not spin through the send loop.
  conn_pair p(0);
  REQUIRE(p.b->shutdown(SHUT_WR) == 0);
  set_sock_timeout(p.a_tcp(), SO_SNDTIMEO, 300);
  std::vector<uint8_t> fill(ring16k, 'h');
  REQUIRE(send_bytes(*p.a, fill.data(), ring16k, MSG_DONTWAIT | MSG_NOSIGNAL).n == ring16k);
  long passes = 0;
  io_result r{};
  {
    recv_counter counter(p.a_tcp());  // one TCP liveness peek per pass of the send loop
    r = send_str(*p.a, "x");
    passes = counter.count();
  }
  CHECK(r.n == -1);
  CHECK(r.err == EAGAIN);
  INFO("send loop passes while blocked: " << passes);
  CHECK(passes <= 4);
  // And it is woken when the half-closed peer reads.
  set_sock_timeout(p.a_tcp(), SO_SNDTIMEO, 5000);
  auto fut = std::async(std::launch::async, [&] {
    const auto t0 = std::chrono::steady_clock::now();
    io_result res = send_str(*p.a, "y");
    return std::make_pair(res, elapsed_ms(t0));
  });
  REQUIRE(spin_until([&] { return p.b_ctl->tx_waiters.load() != 0; }));
  char c;
  REQUIRE(recv_bytes(*p.b, &c, 1, MSG_DONTWAIT).n == 1);
  auto [res, ms] = fut.get();
  CHECK(res.n == 1);
  CHECK(ms < 2500);
}

// ---------------------------------------------------------------------------
// 9. readable_bytes() / unsent_bytes()
// ---------------------------------------------------------------------------

TEST_CASE("readable_bytes and unsent_bytes follow the cursors, across the wrap", "[conn]") {
  conn_pair p;
  CHECK(p.b->readable_bytes() == 0);
  CHECK(p.a->unsent_bytes() == 0);
  std::vector<uint8_t> buf(2 * ring16k, 'r');
  REQUIRE(send_bytes(*p.a, buf.data(), 1000).n == 1000);
  CHECK(p.b->readable_bytes() == 1000);
  CHECK(p.a->unsent_bytes() == 1000);
  CHECK(p.a->readable_bytes() == 0);
  CHECK(p.b->unsent_bytes() == 0);
  REQUIRE(recv_bytes(*p.b, buf.data(), 300).n == 300);
  CHECK(p.b->readable_bytes() == 700);
  CHECK(p.a->unsent_bytes() == 700);
  // Fill the ring: 16384 readable across the wrap.
  REQUIRE(send_bytes(*p.a, buf.data(), buf.size(), MSG_DONTWAIT | MSG_NOSIGNAL).n ==
          static_cast<ssize_t>(ring16k - 700));
  CHECK(p.b->readable_bytes() == ring16k);
  CHECK(p.a->unsent_bytes() == ring16k);
  CHECK(curs_unpack(p.b_ctl->prod.load()) == cursor{1, 300});
  REQUIRE(recv_bytes(*p.b, buf.data(), ring16k - 100).n == static_cast<ssize_t>(ring16k - 100));
  CHECK(p.b->readable_bytes() == 100);
  CHECK(p.a->unsent_bytes() == 100);
  REQUIRE(send_bytes(*p.a, buf.data(), 10000).n == 10000);
  CHECK(p.b->readable_bytes() == 10100);
  CHECK(p.a->unsent_bytes() == 10100);
  // PEEK changes neither.
  REQUIRE(recv_bytes(*p.b, buf.data(), 5000, MSG_PEEK).n == 5000);
  CHECK(p.b->readable_bytes() == 10100);
  CHECK(p.a->unsent_bytes() == 10100);
  REQUIRE(recv_bytes(*p.b, buf.data(), buf.size()).n == 10100);
  CHECK(p.b->readable_bytes() == 0);
  CHECK(p.a->unsent_bytes() == 0);
}

// ---------------------------------------------------------------------------
// 10. The state the processes holding a connection share: fork, handoff
//     (export_fds / import_path / attach), holders and the last close
// ---------------------------------------------------------------------------
//
// A connection's own state (cursors, flags, rx/tx locks, holders) lives in
// the transport's state page (data_path::shared_state), so a forked child or
// a process the socket was passed to reads and writes the same connection.
// A child never returns into Catch: it runs a body that reports through its
// exit status and _exits; the parent waits for it with a bound (a pipe that
// reads EOF once the child is gone), and kills it past the bound.

namespace {

using smc::core::conn_shared;

conn_shared* shared_of(conn& c) { return static_cast<conn_shared*>(c.path().shared_state()); }

/// A forked child, started under the protocol the preload's atfork handlers
/// follow: the registry lock before fork(), note_fork_child() in the child
/// (it counts the child as a holder of every connection, and unlocks),
/// conn_registry_unlock() in the parent.
class child_proc {
 public:
  explicit child_proc(const std::function<int()>& body) {
    int pfd[2];
    REQUIRE(::pipe2(pfd, O_CLOEXEC) == 0);
    smc::core::conn_registry_lock();
    pid_ = ::fork();
    if (pid_ == 0) {
      smc::core::note_fork_child();
      int rc = 97;
      try {
        rc = body();
      } catch (...) {
        rc = 98;
      }
      ::_exit(rc);  // the pipe's write end closes with the process
    }
    smc::core::conn_registry_unlock();
    ::close(pfd[1]);
    gone_.fd = pfd[0];
    REQUIRE(pid_ > 0);
  }
  ~child_proc() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  child_proc(const child_proc&) = delete;
  child_proc& operator=(const child_proc&) = delete;

  /// The child's exit status once it ended, 128 + signal if a signal ended
  /// it, or -1 if it was still running after max_ms (then it is killed).
  int wait(int max_ms = 15000) {
    pollfd p{gone_.fd, POLLIN, 0};
    const auto t0 = std::chrono::steady_clock::now();
    int n = 0;
    do {
      const int left = max_ms - static_cast<int>(elapsed_ms(t0));
      n = left > 0 ? ::poll(&p, 1, left) : 0;
    } while (n < 0 && errno == EINTR);
    if (n <= 0) {
      ::kill(pid_, SIGKILL);
    }
    int st = 0;
    const pid_t r = ::waitpid(pid_, &st, 0);
    pid_ = -1;
    if (n <= 0 || r < 0) {
      return -1;
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  }

 private:
  pid_t pid_ = -1;
  fd_guard gone_;  // reads EOF once the child is gone
};

using export_set = std::array<int, shm::export_fd_count>;

/// Dups of the fds c's path exports (export_fds hands out the path's own;
/// import_path takes ownership of what it is given).
export_set export_dups(conn& c, uint32_t& rx_size, uint32_t& tx_size) {
  std::vector<int> out;
  REQUIRE(c.path().export_fds(out, rx_size, tx_size));
  REQUIRE(out.size() == shm::export_fd_count);
  export_set d{};
  for (size_t i = 0; i < d.size(); ++i) {
    d[i] = ::fcntl(out[i], F_DUPFD_CLOEXEC, 0);
    REQUIRE(d[i] >= 0);
  }
  return d;
}

/// A memfd of `size` bytes (sealable if `sealable`), with `seals` added.
int make_memfd(size_t size, bool sealable, unsigned seals) {
  int fd = ::memfd_create("conn-test", MFD_CLOEXEC | (sealable ? MFD_ALLOW_SEALING : 0u));
  REQUIRE(fd >= 0);
  REQUIRE(::ftruncate(fd, static_cast<off_t>(size)) == 0);
  if (seals != 0) {
    REQUIRE(::fcntl(fd, F_ADD_SEALS, seals) == 0);
  }
  return fd;
}

constexpr unsigned all_seals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;

/// import_path() on `fds` must fail with `want_err` and leave none of the
/// fds it was given open. Looked at right after the call, before anything
/// could reuse the numbers (nothing in between creates an fd).
void expect_import_rejected(const export_set& fds, uint32_t rx_size, uint32_t tx_size,
                            int want_err = EPROTO) {
  errno = 0;
  auto path = shm::import_path(fds.data(), rx_size, tx_size);
  const int err = errno;
  std::array<bool, shm::export_fd_count> open_after{};
  for (size_t i = 0; i < fds.size(); ++i) {
    errno = 0;
    open_after[i] = !(::fcntl(fds[i], F_GETFD) == -1 && errno == EBADF);
  }
  INFO("rx_size " << rx_size << " tx_size " << tx_size << " errno " << err << " ("
                  << std::strerror(err) << ")");
  CHECK(path == nullptr);
  CHECK(err == want_err);
  for (size_t i = 0; i < fds.size(); ++i) {
    INFO("fd #" << i << " (" << fds[i] << ") still open after a rejected import");
    CHECK_FALSE(open_after[i]);
    if (open_after[i] && path == nullptr) {
      ::close(fds[i]);
    }
  }
}

size_t count_conns() {
  size_t n = 0;
  smc::core::for_each_conn([&](conn&) { ++n; });
  return n;
}

// The rx lock is held around block_timeout_ms()'s fcntl(F_GETFL): a child
// that installs this dies inside a call, holding the connection's lock.
[[noreturn]] int die_in_fcntl(int, int, ...) { ::_exit(42); }

/// Runs f in a detached thread and waits for it up to max_ms: a call that
/// might never return (a lock a dead process left taken) fails the test
/// instead of hanging it.
template <class T>
bool run_bounded(std::function<T()> f, T& out, int max_ms = 5000) {
  auto pr = std::make_shared<std::promise<T>>();
  auto fut = pr->get_future();
  std::thread([pr, f = std::move(f)] { pr->set_value(f()); }).detach();
  if (fut.wait_for(std::chrono::milliseconds(max_ms)) != std::future_status::ready) {
    return false;
  }
  out = fut.get();
  return true;
}

}  // namespace

TEST_CASE("a forked child shares the connection: cursors move for both, replies go out",
          "[conn][shared]") {
  conn_pair p(0);
  conn_shared* shb = shared_of(*p.b);
  REQUIRE(shb != nullptr);
  REQUIRE(shb->magic == conn_shared::magic_value);
  CHECK(shared_of(*p.a) != shb);  // each end has its own
  CHECK(shb->holders.load() == 1);
  constexpr size_t total = 3000;
  constexpr size_t parent_first = 100;
  constexpr size_t child_part = 1000;
  auto data = pattern_bytes(7, 0, total);
  REQUIRE(send_bytes(*p.a, data.data(), total).n == static_cast<ssize_t>(total));
  std::vector<uint8_t> buf(total);
  REQUIRE(recv_bytes(*p.b, buf.data(), parent_first).n == static_cast<ssize_t>(parent_first));

  child_proc child([&]() -> int {
    int bad = 0;
    if (shb->holders.load() != 2) {
      bad |= 1;  // the child holds it too
    }
    std::vector<uint8_t> mine(child_part);
    io_result r = recv_bytes(*p.b, mine.data(), child_part, MSG_DONTWAIT);
    if (r.n != static_cast<ssize_t>(child_part) ||
        first_mismatch(mine.data(), child_part, 7, parent_first) != -1) {
      bad |= 2;  // not where the parent left off
    }
    if (send_str(*p.b, "from the child").n != 14) {
      bad |= 4;
    }
    p.b->close(false);  // not the last holder: the peer is told nothing
    if (shb->holders.load() != 1) {
      bad |= 8;
    }
    if (p.a_ctl->prod_flags.load() != 0) {
      bad |= 16;
    }
    return bad;
  });
  const int status = child.wait();
  INFO("child status " << status
                       << " (bits: 1 holders after fork, 2 its read, 4 its send, 8 holders after "
                          "its close, 16 its close told the peer)");
  CHECK(status == 0);

  CHECK(shb->holders.load() == 1);
  // The child's close told A nothing.
  CHECK(p.a_ctl->prod_flags.load() == 0);
  CHECK((p.a->events() & (POLLRDHUP | POLLHUP | POLLERR)) == 0);
  // A has the child's reply, once.
  CHECK(recv_str(*p.a, 100, MSG_DONTWAIT) == "from the child");
  io_result r{};
  recv_str(*p.a, 100, MSG_DONTWAIT, &r);
  CHECK(r.n == -1);
  CHECK(r.err == EAGAIN);
  // B's cursors moved in the child: the parent reads exactly the rest.
  const size_t rest = total - parent_first - child_part;
  CHECK(p.b->readable_bytes() == rest);
  io_result got = recv_bytes(*p.b, buf.data(), total, MSG_DONTWAIT);
  REQUIRE(got.n == static_cast<ssize_t>(rest));
  CHECK(first_mismatch(buf.data(), rest, 7, parent_first + child_part) == -1);
  CHECK(p.a->unsent_bytes() == 0);
  // B carries on both ways in the parent.
  REQUIRE(send_str(*p.b, "from the parent").n == 15);
  CHECK(recv_str(*p.a, 100) == "from the parent");
  REQUIRE(send_str(*p.a, "to the parent").n == 13);
  CHECK(recv_str(*p.b, 100) == "to the parent");
  // The parent's close is the last one: A reads EOF.
  p.b->close(false);
  CHECK(shb->holders.load() == 0);
  CHECK((p.a_ctl->prod_flags.load() & cdc::conn_closed) != 0);
  recv_str(*p.a, 100, 0, &r);
  CHECK(r.n == 0);
}

TEST_CASE("doorbells ring across processes: a forked child blocked in recv is woken",
          "[conn][shared]") {
  conn_pair p(0);
  child_proc child([&]() -> int {
    io_result r{};
    const std::string s = recv_str(*p.b, 100, 0, &r);  // blocks: nothing sent yet
    if (s != "to the child") {
      return 1;
    }
    return send_str(*p.b, "ack").n == 3 ? 0 : 2;
  });
  REQUIRE(spin_until([&] { return p.b_ctl->rx_waiters.load() != 0; }));
  REQUIRE(send_str(*p.a, "to the child").n == 12);
  CHECK(recv_str(*p.a, 10) == "ack");  // blocking here: woken by the child's send
  CHECK(child.wait() == 0);
  CHECK(p.b_ctl->rx_waiters.load() == 0);
  CHECK(shared_of(*p.b)->holders.load() == 2);  // the child exited without closing
}

// Nothing of ours rings our own doorbells (we keep no ringing end): a
// waiter in another process, which is on no list of ours, learns of an end
// we made from the doorbell shut for reading, readable for good.
TEST_CASE("an end reaches a waiter in another process: its doorbell is shut for good",
          "[conn][shared]") {
  conn_pair p(0, ring16k, ring16k);
  set_sock_timeout(p.b_tcp(), SO_RCVTIMEO, 5000);
  set_sock_timeout(p.b_tcp(), SO_SNDTIMEO, 5000);
  const bool rx = GENERATE(true, false);
  INFO((rx ? "a blocked recv, and our SHUT_RD" : "a blocked send, and our SHUT_WR"));
  if (!rx) {
    std::vector<uint8_t> fill(ring16k, 'f');
    REQUIRE(send_bytes(*p.b, fill.data(), ring16k, MSG_DONTWAIT | MSG_NOSIGNAL).n == ring16k);
  }
  child_proc child([&]() -> int {
    const auto t0 = std::chrono::steady_clock::now();
    io_result r{};
    if (rx) {
      recv_str(*p.b, 100, 0, &r);  // blocks: nothing sent
      if (r.n != 0) {
        return 1;
      }
    } else {
      r = send_str(*p.b, "x", MSG_NOSIGNAL);  // blocks: A's ring is full
      if (r.n != -1 || r.err != EPIPE) {
        return 2;
      }
    }
    return elapsed_ms(t0) < 2500 ? 0 : 3;  // woken, not timed out
  });
  auto& waiters = rx ? p.b_ctl->rx_waiters : p.a_ctl->tx_waiters;
  REQUIRE(spin_until([&] { return waiters.load() != 0; }));
  REQUIRE(p.b->shutdown(rx ? SHUT_RD : SHUT_WR) == 0);
  CHECK(child.wait() == 0);
  pollfd pb{rx ? p.b->path().rx_fd() : p.b->path().tx_fd(), POLLIN, 0};
  CHECK(::poll(&pb, 1, 0) == 1);  // and stays so
  CHECK((p.b->reset_doorbell(rx) & (rx ? POLLIN : POLLOUT)) != 0);
  CHECK(::poll(&pb, 1, 0) == 1);
}

TEST_CASE("a child that exits without closing still holds it: the peer learns from TCP",
          "[conn][shared]") {
  // A process that ends without closing is never subtracted: the parent's
  // close is not the last, and the peer reads EOF once the last copy of the
  // TCP socket is gone (the kernel's FIN), not from the SMC flags.
  conn_pair p(0);
  child_proc child([&] { return shared_of(*p.b)->holders.load() == 2 ? 0 : 1; });
  CHECK(child.wait() == 0);
  CHECK(shared_of(*p.b)->holders.load() == 2);
  p.b->close(false);
  CHECK(shared_of(*p.b)->holders.load() == 1);
  CHECK(p.a_ctl->prod_flags.load() == 0);
  io_result r{};
  recv_str(*p.a, 10, MSG_DONTWAIT, &r);
  CHECK(r.n == -1);
  CHECK(r.err == EAGAIN);
  p.drop_b_tcp();
  recv_str(*p.a, 10, 0, &r);
  CHECK(r.n == 0);
}

TEST_CASE("a holder killed inside a call leaves no lock behind (robust mutexes)",
          "[conn][shared]") {
  conn_pair p(0);
  SECTION("the rx lock") {
    child_proc child([&]() -> int {
      smc::rdma::sys().fcntl = &die_in_fcntl;  // the child's own copy of the table
      char c;
      recv_bytes(*p.b, &c, 1);  // nothing there: asks the socket's mode, lock held, and dies
      return 1;
    });
    REQUIRE(child.wait() == 42);
    REQUIRE(send_str(*p.a, "after").n == 5);
    std::string got;
    REQUIRE(run_bounded<std::string>([b = p.b.get()] { return recv_str(*b, 100, MSG_DONTWAIT); },
                                     got));
    CHECK(got == "after");
  }
  SECTION("the tx lock") {
    std::vector<uint8_t> fill(ring16k, 'f');
    REQUIRE(send_bytes(*p.b, fill.data(), ring16k, MSG_DONTWAIT | MSG_NOSIGNAL).n == ring16k);
    child_proc child([&]() -> int {
      smc::rdma::sys().fcntl = &die_in_fcntl;
      send_str(*p.b, "x");  // the peer's ring is full: asks the socket's mode, and dies
      return 1;
    });
    REQUIRE(child.wait() == 42);
    std::vector<uint8_t> sink(ring16k);
    REQUIRE(recv_bytes(*p.a, sink.data(), ring16k).n == ring16k);
    io_result r{};
    REQUIRE(run_bounded<io_result>(
        [b = p.b.get()] { return send_str(*b, "y", MSG_DONTWAIT | MSG_NOSIGNAL); }, r));
    CHECK(r.n == 1);
    CHECK(recv_str(*p.a, 10) == "y");
  }
}

TEST_CASE("handoff in one process: an imported path attaches to the same connection",
          "[conn][handoff]") {
  conn_pair p(0, ring16k, 2 * ring16k);
  // The export: the path's own fds, in the documented order.
  std::vector<int> own;
  uint32_t rx = 0;
  uint32_t tx = 0;
  REQUIRE(p.b->path().export_fds(own, rx, tx));
  REQUIRE(own.size() == shm::export_fd_count);
  CHECK(rx == 2 * ring16k);  // B's RMB
  CHECK(tx == ring16k);      // A's RMB
  CHECK(own[3] == p.b->path().rx_fd());
  CHECK(own[4] == p.b->path().tx_fd());

  export_set fds = export_dups(*p.b, rx, tx);
  auto path = shm::import_path(fds.data(), rx, tx);
  REQUIRE(path);
  CHECK(path->rx_size() == 2 * ring16k);
  CHECK(path->tx_size() == ring16k);
  CHECK(path->shared_state() != p.b->path().shared_state());  // its own mapping
  fd_guard b2_tcp;
  b2_tcp.fd = ::fcntl(p.b_tcp(), F_DUPFD_CLOEXEC, 0);
  REQUIRE(b2_tcp.fd >= 0);
  const size_t conns_before = count_conns();
  auto b2 = std::make_unique<conn>(conn::attach_t{}, std::move(path), b2_tcp.fd, 0, true);
  REQUIRE(b2->valid());
  CHECK(count_conns() == conns_before + 1);
  CHECK(shared_of(*b2)->holders.load() == 2);
  CHECK(shared_of(*p.b)->holders.load() == 2);  // one state, two mappings

  // One stream, read through both, in order, exactly once.
  constexpr size_t total = 5000;
  auto data = pattern_bytes(9, 0, total);
  REQUIRE(send_bytes(*p.a, data.data(), total).n == static_cast<ssize_t>(total));
  CHECK(b2->readable_bytes() == total);
  std::vector<uint8_t> buf(total);
  REQUIRE(recv_bytes(*b2, buf.data(), 1234).n == 1234);
  CHECK(first_mismatch(buf.data(), 1234, 9, 0) == -1);
  CHECK(p.b->readable_bytes() == total - 1234);
  io_result r = recv_bytes(*p.b, buf.data(), total, MSG_DONTWAIT);
  REQUIRE(r.n == static_cast<ssize_t>(total - 1234));
  CHECK(first_mismatch(buf.data(), total - 1234, 9, 1234) == -1);
  recv_str(*b2, 10, MSG_DONTWAIT, &r);
  CHECK(r.n == -1);
  CHECK(r.err == EAGAIN);
  CHECK(p.a->unsent_bytes() == 0);

  // Writes through B2 reach A; A's writes wake a reader blocked in B2.
  REQUIRE(send_str(*b2, "via b2").n == 6);
  CHECK(recv_str(*p.a, 10) == "via b2");
  {
    auto fut = std::async(std::launch::async, [&] { return recv_str(*b2, 100); });
    REQUIRE(spin_until([&] { return p.b_ctl->rx_waiters.load() != 0; }));
    REQUIRE(send_str(*p.a, "wake b2").n == 7);
    CHECK(fut.get() == "wake b2");
  }

  SECTION("the original closes first: only the second close tells the peer") {
    p.b->close(false);
    CHECK(shared_of(*b2)->holders.load() == 1);
    CHECK(p.a_ctl->prod_flags.load() == 0);
    CHECK((p.a->events() & (POLLRDHUP | POLLHUP | POLLERR)) == 0);
    REQUIRE(send_str(*b2, "still").n == 5);
    CHECK(recv_str(*p.a, 10) == "still");
    b2->close(false);
    CHECK(shared_of(*b2)->holders.load() == 0);
  }
  SECTION("the imported one closes first, even abortively: nothing for the peer") {
    b2->close(true);
    CHECK(shared_of(*p.b)->holders.load() == 1);
    CHECK(p.a_ctl->prod_flags.load() == 0);
    REQUIRE(send_str(*p.b, "still").n == 5);
    CHECK(recv_str(*p.a, 10) == "still");
    p.b->close(false);
  }
  CHECK(p.a_ctl->prod_flags.load() == (cdc::conn_closed | cdc::conn_done_writing));
  recv_str(*p.a, 10, 0, &r);
  CHECK(r.n == 0);
  b2.reset();
  CHECK(count_conns() == conns_before);
}

TEST_CASE("an offer holds the connection: add_holder, release_holder, attach without join",
          "[conn][handoff]") {
  conn_pair p(0);
  conn_shared* sh = shared_of(*p.b);
  p.b->add_holder();  // offered to another process
  CHECK(sh->holders.load() == 2);
  SECTION("nobody takes it: releasing the offer tells the peer nothing, the last close does") {
    p.b->release_holder();
    CHECK(sh->holders.load() == 1);
    CHECK(p.a_ctl->prod_flags.load() == 0);
    p.b->close(false);
    CHECK(sh->holders.load() == 0);
  }
  SECTION("the receiver attaches without joining: it takes over the offer's holder") {
    uint32_t rx = 0;
    uint32_t tx = 0;
    export_set fds = export_dups(*p.b, rx, tx);
    auto path = shm::import_path(fds.data(), rx, tx);
    REQUIRE(path);
    fd_guard tcp2;
    tcp2.fd = ::fcntl(p.b_tcp(), F_DUPFD_CLOEXEC, 0);
    conn b2(conn::attach_t{}, std::move(path), tcp2.fd, 0, false);
    REQUIRE(b2.valid());
    CHECK(sh->holders.load() == 2);  // counted already
    p.b->close(false);  // the sender closes its copy as the socket leaves
    CHECK(p.a_ctl->prod_flags.load() == 0);
    REQUIRE(send_str(*p.a, "for b2").n == 6);
    CHECK(recv_str(b2, 10) == "for b2");
    b2.close(false);
    CHECK(sh->holders.load() == 0);
  }
  CHECK((p.a_ctl->prod_flags.load() & cdc::conn_closed) != 0);
  io_result r{};
  recv_str(*p.a, 10, 0, &r);
  CHECK(r.n == 0);
}

TEST_CASE("import_path rejects what is not an exported shm connection and closes every fd",
          "[conn][handoff]") {
  // B's RMB (its rx ring) is 32 KiB, A's (B's tx ring) 16 KiB.
  conn_pair p(0, ring16k, 2 * ring16k);
  uint32_t rx = 0;
  uint32_t tx = 0;
  export_set fds = export_dups(*p.b, rx, tx);
  REQUIRE(rx == 2 * ring16k);
  REQUIRE(tx == ring16k);
  auto replace = [&](size_t i, int fd) {
    ::close(fds[i]);
    fds[i] = fd;
  };

  SECTION("control: the untouched fds import") {
    auto path = shm::import_path(fds.data(), rx, tx);
    CHECK(path != nullptr);
  }
  SECTION("an rx ring size that is not a power of two") {
    expect_import_rejected(fds, rx + 4096, tx);
  }
  SECTION("a tx ring size that is not a power of two") {
    expect_import_rejected(fds, rx, 3 * ring16k);
  }
  SECTION("a ring size below 16 KiB") { expect_import_rejected(fds, rx, ring16k / 2); }
  SECTION("a ring size of 0") { expect_import_rejected(fds, 0, tx); }
  SECTION("an rx ring size that is not its memfd's") { expect_import_rejected(fds, 2 * rx, tx); }
  SECTION("a tx ring size that is not its memfd's") { expect_import_rejected(fds, rx, 2 * tx); }
  SECTION("the ring sizes swapped") { expect_import_rejected(fds, tx, rx); }
  SECTION("a pipe where a doorbell belongs") {
    for (size_t i = 3; i < shm::export_fd_count; ++i) {
      INFO("doorbell #" << i);
      if (i > 3) {
        fds = export_dups(*p.b, rx, tx);
      }
      int pp[2];
      REQUIRE(::pipe2(pp, O_CLOEXEC) == 0);
      fd_guard write_end;
      write_end.fd = pp[1];
      replace(i, pp[0]);
      expect_import_rejected(fds, rx, tx);
    }
  }
  SECTION("an unsealed memfd as the state page") {
    replace(0, make_memfd(shm::state_page::bytes, false, 0));
    expect_import_rejected(fds, rx, tx);
  }
  SECTION("a sealable memfd that was never sealed as the state page") {
    replace(0, make_memfd(shm::state_page::bytes, true, 0));
    expect_import_rejected(fds, rx, tx);
  }
  SECTION("a sealed memfd of the wrong size as the state page") {
    replace(0, make_memfd(2 * shm::state_page::bytes, true, all_seals));
    expect_import_rejected(fds, rx, tx);
  }
  SECTION("a socket as the state page") {
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    fd_guard other;
    other.fd = sv[1];
    replace(0, sv[0]);
    expect_import_rejected(fds, rx, tx);
  }
  SECTION("an unsealed memfd as an RMB") {
    replace(2, make_memfd(shm::control_bytes + tx, false, 0));
    expect_import_rejected(fds, rx, tx);
  }
  SECTION("a sealed RMB of the right size without the control page's magic") {
    replace(1, make_memfd(shm::control_bytes + rx, true, all_seals));
    expect_import_rejected(fds, rx, tx);
  }
  // Whatever was rejected, B's own path is untouched.
  REQUIRE(send_str(*p.a, "still here").n == 10);
  CHECK(recv_str(*p.b, 20) == "still here");
}

TEST_CASE("attaching to a state page that holds no connection is not valid", "[conn][handoff]") {
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  fd_guard t0;
  fd_guard t1;
  t0.fd = sv[0];
  t1.fd = sv[1];
  const size_t conns_before = count_conns();

  SECTION("a fresh page, never given to a connection") {
    shm::local_side fresh;
    shm::local_side other;
    REQUIRE(fresh.init(ring16k));
    REQUIRE(other.init(ring16k));
    export_set fds = {::dup(fresh.state->fd()), ::dup(fresh.rmb->fd()), ::dup(other.rmb->fd()),
                      ::dup(fresh.rx_bell), ::dup(fresh.tx_bell), ::dup(other.rx_bell_ring),
                      ::dup(other.tx_bell_ring)};
    for (int fd : fds) {
      REQUIRE(fd >= 0);
    }
    auto path = shm::import_path(fds.data(), ring16k, ring16k);
    REQUIRE(path);  // well-formed fds: only the page's content is wrong
    {
      conn c(conn::attach_t{}, std::move(path), t0.fd, 0, true);
      CHECK_FALSE(c.valid());
      CHECK(count_conns() == conns_before);
    }
    // Nothing was written into the page (no holder counted on it).
    const auto* page = static_cast<const uint8_t*>(fresh.state->data());
    CHECK(std::all_of(page, page + shm::state_page::bytes, [](uint8_t b) { return b == 0; }));
  }
  SECTION("a connection's page of another version") {
    conn_pair p(0);
    uint32_t rx = 0;
    uint32_t tx = 0;
    export_set fds = export_dups(*p.b, rx, tx);
    auto path = shm::import_path(fds.data(), rx, tx);
    REQUIRE(path);
    conn_shared* sh = shared_of(*p.b);
    const size_t with_pair = count_conns();
    sh->version = 3;
    {
      conn c(conn::attach_t{}, std::move(path), t0.fd, 0, true);
      CHECK_FALSE(c.valid());
      CHECK(count_conns() == with_pair);
    }
    sh->version = 2;
    CHECK(sh->holders.load() == 1);
  }
  CHECK(count_conns() == conns_before);
}

// ---------------------------------------------------------------------------
// 11. Confinement (conn::confine): one waiter fd, cached socket mode and
//     timeouts, no system call but poll/read/write while waiting
// ---------------------------------------------------------------------------

namespace {

using smc::rdma::sys_calls;

/// Counts every call through the sys() table, per entry, while in scope (all
/// threads). Installed and removed while no other thread uses the table.
class sys_tally {
 public:
  sys_tally() {
    real = smc::rdma::sys();
    for (auto& c : counts) {
      c.store(0);
    }
    auto& s = smc::rdma::sys();
#define SMC_TEST_TALLY(name, idx) s.name = &counted<decltype(&sys_calls::name), &sys_calls::name, idx>::fn;
    SMC_TEST_TALLY(socket, 0)
    SMC_TEST_TALLY(connect, 1)
    SMC_TEST_TALLY(bind, 2)
    SMC_TEST_TALLY(listen, 3)
    SMC_TEST_TALLY(accept4, 4)
    SMC_TEST_TALLY(recv, 5)
    SMC_TEST_TALLY(send, 6)
    SMC_TEST_TALLY(recvmsg, 7)
    SMC_TEST_TALLY(sendmsg, 8)
    SMC_TEST_TALLY(read, 9)
    SMC_TEST_TALLY(write, 10)
    SMC_TEST_TALLY(close, 11)
    SMC_TEST_TALLY(poll, 12)
    SMC_TEST_TALLY(getsockopt, 14)
    SMC_TEST_TALLY(setsockopt, 15)
    SMC_TEST_TALLY(epoll_create1, 16)
    SMC_TEST_TALLY(epoll_ctl, 17)
    SMC_TEST_TALLY(epoll_wait, 18)
#undef SMC_TEST_TALLY
    s.fcntl = &fcntl_fn;
  }
  ~sys_tally() { smc::rdma::sys() = real; }
  sys_tally(const sys_tally&) = delete;
  sys_tally& operator=(const sys_tally&) = delete;

  static constexpr size_t n_entries = 19;
  static constexpr const char* names[n_entries] = {
      "socket", "connect", "bind",  "listen",     "accept4",    "recv",          "send",
      "recvmsg", "sendmsg", "read", "write",      "close",      "poll",          "fcntl",
      "getsockopt", "setsockopt", "epoll_create1", "epoll_ctl", "epoll_wait"};
  long of(const char* name) const {
    for (size_t i = 0; i < n_entries; ++i) {
      if (std::strcmp(names[i], name) == 0) {
        return counts[i].load();
      }
    }
    FAIL("no sys() entry " << name);
    return -1;
  }
  /// "name count, ..." of every entry called but poll, read and write.
  std::string others() const {
    std::string s;
    for (size_t i = 0; i < n_entries; ++i) {
      const std::string n = names[i];
      if (n != "poll" && n != "read" && n != "write" && counts[i].load() != 0) {
        s += n + " " + std::to_string(counts[i].load()) + " ";
      }
    }
    return s;
  }

 private:
  template <class T, T M, size_t I>
  struct counted;
  template <class R, class... A, R (*sys_calls::*M)(A...), size_t I>
  struct counted<R (*sys_calls::*)(A...), M, I> {
    static R fn(A... a) {
      counts[I].fetch_add(1);
      return (real.*M)(a...);
    }
  };
  static int fcntl_fn(int fd, int cmd, ...) {
    counts[13].fetch_add(1);
    va_list ap;
    va_start(ap, cmd);
    void* arg = va_arg(ap, void*);  // every command the engine uses takes at most one
    va_end(ap);
    return real.fcntl(fd, cmd, arg);
  }
  static inline sys_calls real{};
  static inline std::atomic<long> counts[n_entries];
};

/// Makes the engine's poll fail with EINVAL (as RLIMIT_NOFILE below nfds
/// does) for a wait whose first fd is `fd`, the connection's own wait. It
/// gives up after 100 failures: an engine that retried forever would end at
/// the socket's safety timeout instead of spinning on.
class poll_fail_hook {
 public:
  explicit poll_fail_hook(int fd) {
    fd_ = fd;
    hits_.store(0);
    real_ = smc::rdma::sys().poll;
    smc::rdma::sys().poll = &hooked;
    real_ep_ = smc::rdma::sys().epoll_wait;
    smc::rdma::sys().epoll_wait = &hooked_ep;
  }
  ~poll_fail_hook() {
    smc::rdma::sys().poll = real_;
    smc::rdma::sys().epoll_wait = real_ep_;
  }
  poll_fail_hook(const poll_fail_hook&) = delete;
  poll_fail_hook& operator=(const poll_fail_hook&) = delete;
  long hits() const { return hits_.load(); }

 private:
  static int hooked(pollfd* p, nfds_t n, int timeout) {
    if (n >= 1 && p[0].fd == fd_ && hits_.fetch_add(1) < 100) {
      errno = EINVAL;
      return -1;
    }
    return real_(p, n, timeout);
  }
  // A blocked call that is not confined waits on its thread's wait set
  // (core/wake.h), an epoll instance: its waits fail as a filter refuses
  // them (EBADF and EINVAL mean that the application closed the set's
  // number: the thread makes another).
  static int hooked_ep(int ep, epoll_event* ev, int n, int timeout) {
    if (hits_.fetch_add(1) < 100) {
      errno = EPERM;
      return -1;
    }
    return real_ep_(ep, ev, n, timeout);
  }
  static inline int fd_ = -1;
  static inline std::atomic<long> hits_{0};
  static inline int (*real_)(pollfd*, nfds_t, int) = nullptr;
  static inline int (*real_ep_)(int, epoll_event*, int, int) = nullptr;
};

}  // namespace

// A thread blocked in recv sleeps on its wait set (core/wake.h), where the
// doorbell is watched edge-triggered: the ring that woke its last wait,
// still queued, does not wake its next one (a level-triggered poll() of
// the doorbell did, and drained it: two system calls more per wait).
TEST_CASE("a blocked recv's next wait is not woken by the ring its last one woke on",
          "[conn][wake]") {
  conn_pair p(0);
  set_sock_timeout(p.b_tcp(), SO_RCVTIMEO, 5000);
  std::atomic<int> stage{0};
  std::string got1;
  std::string got2;
  std::thread t([&] {
    got1 = recv_str(*p.b, 10);
    stage.store(1);
    REQUIRE(spin_until([&] { return stage.load() == 2; }));
    got2 = recv_str(*p.b, 10);
  });
  REQUIRE(spin_until([&] { return p.b_ctl->rx_waiters.load() != 0; }));
  REQUIRE(send_str(*p.a, "1").n == 1);
  REQUIRE(spin_until([&] { return stage.load() == 1; }));
  CHECK(got1 == "1");
  CHECK(p.b_ctl->rx_rung.load() == 1);  // the ring that woke it, still queued
  {
    read_hook drained(p.b->path().rx_fd(), [] {});  // (fires on a drain of the doorbell)
    sys_tally tally;
    stage.store(2);
    REQUIRE(spin_until([&] { return p.b_ctl->rx_waiters.load() != 0; }));
    CHECK(p.b_ctl->rx_rung.load() == 0);  // lowered for the next ring, nothing drained
    REQUIRE(send_str(*p.a, "2").n == 1);
    t.join();
    CHECK(got2 == "2");
    CHECK_FALSE(drained.fired());
    CHECK(tally.of("epoll_wait") >= 1);
  }
}

// closefrom() or close_range() in the application can close the thread's
// wait set under it: the next blocked call makes another and carries on,
// and the connection is not ended for a wait that could not be made.
// A poll() call on many same-host connections: an entry of the thread's
// wait set for each (not only the first 16), kept from one call to the
// next, and what rings names the connection's entry.
TEST_CASE("a wait set watches as many connections as a poll() call has, up to its limit",
          "[wake]") {
  using smc::core::wait_set;
  wait_set ws;
  REQUIRE(ws.ok());
  constexpr size_t n = 40;
  struct fake {
    int bell[2];  // rx doorbell: [0] watched, [1] rings
    int txb[2];
    int tcp[2];
  };
  std::vector<fake> c(n);
  for (auto& f : c) {
    REQUIRE(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, f.bell) == 0);
    REQUIRE(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, f.txb) == 0);
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, f.tcp) == 0);
  }
  auto round = [&](size_t from, size_t to, std::vector<int>& got) {
    ws.begin_round();
    got.clear();
    for (size_t i = from; i < to; ++i) {
      bool twice = false;
      got.push_back(ws.watch_any(1000 + i, c[i].bell[0], c[i].txb[0], 5000 + i, c[i].tcp[0], twice));
      CHECK_FALSE(twice);
    }
  };
  std::vector<int> first;
  round(0, n, first);
  std::set<int> distinct(first.begin(), first.end());
  CHECK(distinct.size() == n);
  CHECK(distinct.count(-1) == 0);
  for (int j : first) {
    CHECK(ws.taken(static_cast<size_t>(j)));
  }
  // The same connections again: the same entries (their watches kept).
  std::vector<int> second;
  round(0, n, second);
  CHECK(second == first);
  // A connection listed twice in one round gets its entry once more.
  bool twice = false;
  CHECK(ws.watch_any(1000 + 7, c[7].bell[0], c[7].txb[0], 5000 + 7, c[7].tcp[0], twice) == first[7]);
  CHECK(twice);
  // A ring on connection 33's rx doorbell wakes the set with its entry.
  const char one = 1;
  REQUIRE(::send(c[33].bell[1], &one, 1, MSG_DONTWAIT) == 1);
  epoll_event ev[8];
  const int k = ::epoll_wait(ws.fd(), ev, 8, 0);
  REQUIRE(k == 1);
  CHECK(wait_set::entry_of(ev[0].data.u64) == static_cast<size_t>(first[33]));
  CHECK(wait_set::kind_of(ev[0].data.u64) == wait_set::tag_rx);
  // A round of other connections takes entries over only when it needs
  // them: a round of the first 10 leaves the others' entries untaken.
  std::vector<int> few;
  round(0, 10, few);
  CHECK(few == std::vector<int>(first.begin(), first.begin() + 10));
  CHECK_FALSE(ws.taken(static_cast<size_t>(first[20])));
  // At its limit, a set gives a new connection the entry of one this round
  // did not take, and a round that needs more than the limit gets -1.
  wait_set small(8);
  REQUIRE(small.ok());
  small.begin_round();
  for (size_t i = 0; i < 8; ++i) {
    CHECK(small.watch_any(1000 + i, c[i].bell[0], c[i].txb[0], 5000 + i, c[i].tcp[0], twice) ==
          static_cast<int>(i));
  }
  CHECK(small.watch_any(1008, c[8].bell[0], c[8].txb[0], 5008, c[8].tcp[0], twice) == -1);
  small.begin_round();
  const int j9 = small.watch_any(1009, c[9].bell[0], c[9].txb[0], 5009, c[9].tcp[0], twice);
  REQUIRE(j9 >= 0);
  REQUIRE(::send(c[9].bell[1], &one, 1, MSG_DONTWAIT) == 1);
  REQUIRE(::epoll_wait(small.fd(), ev, 8, 0) == 1);
  CHECK(wait_set::entry_of(ev[0].data.u64) == static_cast<size_t>(j9));
  // The connection whose entry it took is watched no more.
  const int old = static_cast<int>(j9);  // (entries 0-7 were connections 0-7)
  REQUIRE(::send(c[static_cast<size_t>(old)].bell[1], &one, 1, MSG_DONTWAIT) == 1);
  CHECK(::epoll_wait(small.fd(), ev, 8, 0) == 0);
  for (auto& f : c) {
    for (int fd : {f.bell[0], f.bell[1], f.txb[0], f.txb[1], f.tcp[0], f.tcp[1]}) {
      ::close(fd);
    }
  }
}

TEST_CASE("a blocked recv whose thread's wait set was closed under it makes another",
          "[conn][wake]") {
  conn_pair p(0);
  set_sock_timeout(p.b_tcp(), SO_RCVTIMEO, 5000);
  auto send_when_waited = [&](const char* what) {
    return std::async(std::launch::async, [&p, what] {
      REQUIRE(spin_until([&] { return p.b_ctl->rx_waiters.load() != 0; }));
      REQUIRE(send_str(*p.a, what).n == 1);
    });
  };
  auto s1 = send_when_waited("1");
  CHECK(recv_str(*p.b, 10) == "1");  // (on this thread's wait set)
  s1.get();
  smc::core::wait_set* ws = smc::core::thread_wait_set();
  REQUIRE(ws != nullptr);
  REQUIRE(::close(ws->fd()) == 0);
  auto s2 = send_when_waited("2");
  io_result r{};
  CHECK(recv_str(*p.b, 10, 0, &r) == "2");
  s2.get();
  CHECK(p.b->take_error() == 0);
  smc::core::wait_set* again = smc::core::thread_wait_set();
  REQUIRE(again != nullptr);
  pollfd pf{again->fd(), POLLIN, 0};
  CHECK(::poll(&pf, 1, 0) >= 0);
  CHECK((pf.revents & POLLNVAL) == 0);
}

// A confined connection's blocked call waits listed with a wake fd the
// waiter holds (made by confine()): what the connection changes by itself
// wakes it through that, not by a ring of its doorbell.
TEST_CASE("a confined blocked recv is woken through its own wake fd and no ring", "[conn][confine][wake]") {
  conn_pair p(0);
  set_sock_timeout(p.b_tcp(), SO_RCVTIMEO, 5000);
  REQUIRE(p.b->confine());
  smc::core::stats::reset();
  auto f = std::async(std::launch::async, [&] {
    const auto t0 = std::chrono::steady_clock::now();
    io_result r{};
    recv_str(*p.b, 10, 0, &r);
    return std::make_pair(r, elapsed_ms(t0));
  });
  REQUIRE(spin_until([&] { return p.b_ctl->rx_waiters.load() != 0; }));
  REQUIRE(p.b->shutdown(SHUT_RD) == 0);
  auto [r, ms] = f.get();
  CHECK(r.n == 0);  // EOF after SHUT_RD
  CHECK(ms < 2500);
  const std::string stats = smc::core::stats::to_json(1);
  INFO(stats);
  CHECK(stats.find("\"wakes_rung\": 0") != std::string::npos);
  CHECK(stats.find("\"wakes_listed\": 0") == std::string::npos);
}

TEST_CASE("confined: one waiter, and blocking calls still wake for data, space, the peer's end",
          "[conn][confine]") {
  conn_pair p(0);
  set_sock_timeout(p.b_tcp(), SO_RCVTIMEO, 5000);
  set_sock_timeout(p.b_tcp(), SO_SNDTIMEO, 5000);
  CHECK_FALSE(p.b->confined());
  CHECK(p.b->waiter_fd() == -1);
  REQUIRE(p.a->confine());
  REQUIRE(p.b->confine());
  CHECK(p.b->confined());
  const int w = p.b->waiter_fd();
  REQUIRE(w >= 0);
  CHECK(p.a->waiter_fd() >= 0);
  CHECK(p.a->waiter_fd() != w);
  CHECK(p.b->confine());  // once is enough: the same waiter
  CHECK(p.b->waiter_fd() == w);
  // The waiter watches both doorbells.
  pollfd pw{w, POLLIN, 0};
  CHECK(::poll(&pw, 1, 0) == 0);
  const std::vector<int> a = bell_fds(*p.a);  // A's ringing ends of B's doorbells
  stray_ring(a[5]);
  CHECK(::poll(&pw, 1, 0) == 1);
  p.b->path().drain_rx();
  CHECK(::poll(&pw, 1, 0) == 0);
  stray_ring(a[6]);
  CHECK(::poll(&pw, 1, 0) == 1);
  p.b->path().drain_tx();
  CHECK(::poll(&pw, 1, 0) == 0);

  for (int round = 0; round < 5; ++round) {
    INFO("round " << round);
    auto fut = p.b_recv_timed(100);
    const std::string msg = "confined " + std::to_string(round);
    REQUIRE(send_str(*p.a, msg).n == static_cast<ssize_t>(msg.size()));
    auto [got, ms] = fut.get();
    CHECK(got == msg);
    CHECK(ms < 2500);  // the doorbell, not the 5 s timeout
  }
  {
    // A writer on a full ring wakes when the peer reads.
    std::vector<uint8_t> fill(ring16k, 'w');
    REQUIRE(send_bytes(*p.b, fill.data(), ring16k, MSG_DONTWAIT | MSG_NOSIGNAL).n == ring16k);
    auto fut = std::async(std::launch::async, [&] {
      const auto t0 = std::chrono::steady_clock::now();
      io_result r = send_str(*p.b, "more");
      return std::make_pair(r, elapsed_ms(t0));
    });
    REQUIRE(spin_until([&] { return p.a_ctl->tx_waiters.load() != 0; }));
    std::vector<uint8_t> sink(ring16k + 4);
    REQUIRE(recv_bytes(*p.a, sink.data(), 100).n == 100);
    auto [r, ms] = fut.get();
    CHECK(r.n == 4);
    CHECK(ms < 2500);
    REQUIRE(recv_bytes(*p.a, sink.data(), sink.size()).n == static_cast<ssize_t>(ring16k - 100 + 4));
  }
  SECTION("the peer dies: a blocked recv reads EOF") {
    auto fut = p.b_recv_blocked();
    const auto t0 = std::chrono::steady_clock::now();
    p.drop_a_tcp();
    io_result r = fut.get();
    CHECK(r.n == 0);
    CHECK(elapsed_ms(t0) < 2500);
  }
  SECTION("the peer dies with our data unread: a blocked recv reads ECONNRESET") {
    REQUIRE(send_str(*p.b, "never read").n == 10);
    auto fut = p.b_recv_blocked();
    const auto t0 = std::chrono::steady_clock::now();
    p.drop_a_tcp();
    io_result r = fut.get();
    CHECK(r.n == -1);
    CHECK(r.err == ECONNRESET);
    CHECK(elapsed_ms(t0) < 2500);
  }
}

TEST_CASE("confined: the socket's mode and timeouts stay as confine() found them until noted",
          "[conn][confine]") {
  conn_pair p(0);
  set_sock_timeout(p.b_tcp(), SO_RCVTIMEO, 5000);
  set_sock_timeout(p.b_tcp(), SO_SNDTIMEO, 5000);
  REQUIRE(p.b->confine());
  const int fl = ::fcntl(p.b_tcp(), F_GETFL);
  REQUIRE(fl >= 0);

  // O_NONBLOCK set behind the engine's back is not seen: recv still blocks
  // (it declares a waiter) until data comes.
  REQUIRE(::fcntl(p.b_tcp(), F_SETFL, fl | O_NONBLOCK) == 0);
  {
    auto fut = p.b_recv_blocked();
    REQUIRE(send_str(*p.a, "late").n == 4);
    io_result r = fut.get();
    CHECK(r.n == 4);
  }
  // Told: EAGAIN at once, without declaring a waiter.
  p.b->note_nonblock(true);
  {
    const auto t0 = std::chrono::steady_clock::now();
    io_result r{};
    recv_str(*p.b, 10, 0, &r);
    CHECK(r.n == -1);
    CHECK(r.err == EAGAIN);
    CHECK(elapsed_ms(t0) < 1000);
    CHECK(p.b_ctl->rx_waiters.load() == 0);
  }
  REQUIRE(::fcntl(p.b_tcp(), F_SETFL, fl) == 0);
  p.b->note_nonblock(false);

  // A receive timeout told through note_timeout bounds the wait...
  set_sock_timeout(p.b_tcp(), SO_RCVTIMEO, 60);
  p.b->note_timeout(true, 60);
  {
    const auto t0 = std::chrono::steady_clock::now();
    io_result r{};
    recv_str(*p.b, 10, 0, &r);
    const int64_t ms = elapsed_ms(t0);
    CHECK(r.n == -1);
    CHECK(r.err == EAGAIN);
    CHECK(ms >= 50);
    CHECK(ms < 2500);
  }
  // ...and one set behind its back is not seen (60 ms, not 5 s).
  set_sock_timeout(p.b_tcp(), SO_RCVTIMEO, 5000);
  {
    const auto t0 = std::chrono::steady_clock::now();
    io_result r{};
    recv_str(*p.b, 10, 0, &r);
    const int64_t ms = elapsed_ms(t0);
    CHECK(r.n == -1);
    CHECK(r.err == EAGAIN);
    CHECK(ms >= 50);
    CHECK(ms < 2500);
  }
  // The send timeout likewise.
  std::vector<uint8_t> fill(ring16k, 's');
  REQUIRE(send_bytes(*p.b, fill.data(), ring16k, MSG_DONTWAIT | MSG_NOSIGNAL).n == ring16k);
  p.b->note_timeout(false, 60);
  {
    const auto t0 = std::chrono::steady_clock::now();
    io_result r = send_str(*p.b, "x");
    const int64_t ms = elapsed_ms(t0);
    CHECK(r.n == -1);
    CHECK(r.err == EAGAIN);
    CHECK(ms >= 50);
    CHECK(ms < 2500);
  }
  p.b->note_nonblock(true);
  {
    io_result r = send_str(*p.b, "x");
    CHECK(r.n == -1);
    CHECK(r.err == EAGAIN);
    CHECK(p.a_ctl->tx_waiters.load() == 0);
  }
}

TEST_CASE("confined: a blocking wait makes no system call but poll, read and write",
          "[conn][confine]") {
  conn_pair p(0);
  set_sock_timeout(p.b_tcp(), SO_RCVTIMEO, 5000);
  set_sock_timeout(p.b_tcp(), SO_SNDTIMEO, 5000);
  // B blocks in recv until A sends, then in send until A reads, then in recv
  // until A's process dies.
  auto scenario = [&] {
    auto fut = p.b_recv_blocked();
    REQUIRE(send_str(*p.a, "data").n == 4);
    CHECK(fut.get().n == 4);
    std::vector<uint8_t> fill(ring16k, 'n');
    REQUIRE(send_bytes(*p.b, fill.data(), ring16k, MSG_DONTWAIT | MSG_NOSIGNAL).n == ring16k);
    auto sent = std::async(std::launch::async, [&] { return send_str(*p.b, "more"); });
    REQUIRE(spin_until([&] { return p.a_ctl->tx_waiters.load() != 0; }));
    std::vector<uint8_t> sink(2 * ring16k);
    REQUIRE(recv_bytes(*p.a, sink.data(), 100).n == 100);
    CHECK(sent.get().n == 4);
    REQUIRE(recv_bytes(*p.a, sink.data(), sink.size()).n == static_cast<ssize_t>(ring16k - 100 + 4));
    auto last = p.b_recv_blocked();
    p.drop_a_tcp();
    CHECK(last.get().n == 0);
  };
  SECTION("not confined: the waits ask the socket (fcntl, getsockopt, recv)") {
    // The control: the counter sees what confine() is there to avoid.
    sys_tally tally;
    scenario();
    CHECK(tally.of("fcntl") > 0);
    CHECK(tally.of("getsockopt") > 0);
    CHECK(tally.of("recv") > 0);
  }
  SECTION("confined") {
    REQUIRE(p.a->confine());
    REQUIRE(p.b->confine());
    sys_tally tally;
    scenario();
    INFO("calls other than poll/read/write: " << tally.others());
    CHECK(tally.of("fcntl") == 0);
    CHECK(tally.of("getsockopt") == 0);
    CHECK(tally.of("recv") == 0);
    CHECK(tally.others().empty());
    CHECK(tally.of("poll") > 0);  // it did wait
  }
}

namespace {

/// B blocks in recv (or, `sending`, in send on A's full ring) while its
/// wait's poll fails with EINVAL (confined: the waiter's poll; else the
/// doorbell's). The call must end the connection as a reset at once: B's
/// call and A read ECONNRESET.
void check_failing_wait_resets(bool confined, bool sending) {
  conn_pair p(0);
  set_sock_timeout(p.b_tcp(), SO_RCVTIMEO, 300);
  set_sock_timeout(p.b_tcp(), SO_SNDTIMEO, 300);
  INFO((confined ? "confined " : "not confined ") << (sending ? "send" : "recv"));
  if (confined) {
    REQUIRE(p.b->confine());
  }
  if (sending) {
    std::vector<uint8_t> fill(ring16k, 'r');
    REQUIRE(send_bytes(*p.b, fill.data(), ring16k, MSG_DONTWAIT | MSG_NOSIGNAL).n == ring16k);
  }
  const int target = confined  ? p.b->waiter_fd()
                     : sending ? p.b->path().tx_fd()
                               : p.b->path().rx_fd();
  REQUIRE(target >= 0);
  io_result r{};
  long hits = 0;
  int64_t ms = 0;
  {
    poll_fail_hook hook(target);
    const auto t0 = std::chrono::steady_clock::now();
    if (sending) {
      r = send_str(*p.b, "x");
    } else {
      recv_str(*p.b, 10, 0, &r);
    }
    ms = elapsed_ms(t0);
    hits = hook.hits();
  }
  INFO("failed polls " << hits << "; the call returned " << r.n << " errno " << r.err << " ("
                       << std::strerror(r.err) << ") after " << ms << " ms");
  CHECK(hits >= 1);
  CHECK(r.n == -1);
  CHECK(r.err == ECONNRESET);  // not the wait's EINVAL, nor a timeout
  CHECK(ms < 250);
  CHECK(p.b->take_error() == 0);  // reported by the call, once
  // The peer sees the abnormal close.
  CHECK((p.a_ctl->prod_flags.load() & cdc::conn_abnormal) != 0);
  CHECK((p.a->events() & POLLERR) != 0);
  if (sending) {
    std::vector<uint8_t> sink(ring16k);
    CHECK(recv_bytes(*p.a, sink.data(), sink.size()).n == ring16k);  // what came before the reset
  }
  recv_str(*p.a, 10, 0, &r);
  CHECK(r.n == -1);
  CHECK(r.err == ECONNRESET);
}

}  // namespace

TEST_CASE("a wait that cannot be made ends the connection as a reset (recv)",
          "[conn][confine]") {
  SECTION("not confined") { check_failing_wait_resets(false, false); }
  SECTION("confined") { check_failing_wait_resets(true, false); }
}

// conn::send() once looked at the connection's own error only on entry:
// aborted while a send waited (its own wait failed, or reset_connection() /
// an abort from another thread), wait() returned at once (ready() is true
// on error) and the loop spun at full CPU until SO_SNDTIMEO (then EAGAIN),
// or forever without one.
TEST_CASE("a blocked send ends with ECONNRESET when the connection is aborted while it waits",
          "[conn][confine]") {
  SECTION("its own wait fails, not confined") { check_failing_wait_resets(false, true); }
  SECTION("its own wait fails, confined") { check_failing_wait_resets(true, true); }
  SECTION("another thread resets the connection") {
    conn_pair p(0);
    set_sock_timeout(p.b_tcp(), SO_SNDTIMEO, 300);
    std::vector<uint8_t> fill(ring16k, 'r');
    REQUIRE(send_bytes(*p.b, fill.data(), ring16k, MSG_DONTWAIT | MSG_NOSIGNAL).n == ring16k);
    auto fut = std::async(std::launch::async, [&] {
      const auto t0 = std::chrono::steady_clock::now();
      io_result r = send_str(*p.b, "x");
      return std::make_pair(r, elapsed_ms(t0));
    });
    REQUIRE(spin_until([&] { return p.a_ctl->tx_waiters.load() != 0; }));
    const auto t0 = std::chrono::steady_clock::now();
    p.b->reset_connection();
    auto [r, ms] = fut.get();
    const int64_t after_reset = elapsed_ms(t0);
    INFO("send returned " << r.n << " errno " << r.err << " after " << ms << " ms, "
                          << after_reset << " ms after the reset");
    CHECK(r.n == -1);
    CHECK(r.err == ECONNRESET);
    CHECK(after_reset < 250);
  }
}

// The polls a blocked recv on `c` makes until its receive timeout (nothing
// comes): a wait that sleeps makes a few; one kept awake, thousands.
namespace {
long polls_in_timed_out_recv(conn& c) {
  io_result r{};
  long polls = 0;
  {
    sys_tally tally;
    recv_str(c, 10, 0, &r);
    polls = tally.of("poll");
  }
  INFO("polls during a blocked recv until its timeout: " << polls);
  CHECK(r.err == EAGAIN);
  return polls;
}
}  // namespace

// A confined wait polls one waiter for both doorbells. When the doorbell it
// does not wait on is held readable for another declared waiter (a
// level-triggered epoll registration: EPOLLOUT on a writable socket,
// EPOLLIN with data left unread), polling the waiter would return at once
// every time (it once did: tens of thousands of polls, reads and writes
// per 100 ms); the wait must poll its own doorbell instead and sleep, as
// the unconfined wait does.
TEST_CASE("a confined wait sleeps while the other doorbell is held for another waiter",
          "[conn][confine]") {
  conn_pair p(0);
  set_sock_timeout(p.b_tcp(), SO_RCVTIMEO, 100);
  set_sock_timeout(p.b_tcp(), SO_SNDTIMEO, 100);
  const bool confined = GENERATE(false, true);
  INFO((confined ? "confined" : "not confined (the control)"));
  if (confined) {
    REQUIRE(p.b->confine());
  }
  SECTION("a recv, while an EPOLLOUT registration holds the tx doorbell") {
    p.b->path().arm_tx(1);  // what the preload's epoll does for EPOLLOUT
    stray_ring(bell_fds(*p.a)[6]);  // the peer rang it (it consumed)
    REQUIRE((p.b->reset_doorbell(false) & POLLOUT) != 0);  // space: it stays rung
    CHECK(polls_in_timed_out_recv(*p.b) < 10);
    p.b->path().arm_tx(-1);
  }
  SECTION("a send, while an EPOLLIN registration holds the rx doorbell over unread data") {
    p.b->path().arm_rx(1);  // what the preload's epoll does for EPOLLIN
    REQUIRE(send_str(*p.a, "unread").n == 6);  // rings B's rx doorbell
    std::vector<uint8_t> fill(ring16k, 'r');
    REQUIRE(send_bytes(*p.b, fill.data(), ring16k, MSG_DONTWAIT | MSG_NOSIGNAL).n == ring16k);
    io_result r{};
    long polls = 0;
    {
      sys_tally tally;
      r = send_str(*p.b, "x");
      polls = tally.of("poll");
    }
    INFO("polls during a 100 ms blocked send: " << polls);
    CHECK(r.err == EAGAIN);
    CHECK(polls < 10);
    p.b->path().arm_rx(-1);
  }
}

namespace {

/// Makes epoll_create1 fail (EMFILE) while in scope: confine() gets no waiter.
class no_epoll {
 public:
  no_epoll() {
    real_ = smc::rdma::sys().epoll_create1;
    smc::rdma::sys().epoll_create1 = [](int) -> int {
      errno = EMFILE;
      return -1;
    };
  }
  ~no_epoll() { smc::rdma::sys().epoll_create1 = real_; }
  no_epoll(const no_epoll&) = delete;
  no_epoll& operator=(const no_epoll&) = delete;

 private:
  int (*real_)(int) = nullptr;
};

}  // namespace

// The other direction's end may have shut its doorbell for reading (an
// end with a waiter in another process): readable for good. A confined
// wait that polled the waiter, which watches both doorbells, would wake at
// once every time; it polls its own doorbell instead.
TEST_CASE("a confined wait is not held awake by the other direction's shut doorbell",
          "[conn][confine]") {
  conn_pair p(0);
  set_sock_timeout(p.b_tcp(), SO_RCVTIMEO, 100);
  p.b->path().arm_tx(1);  // a writer elsewhere: on no list of this process's
  REQUIRE(p.b->shutdown(SHUT_WR) == 0);
  p.b->path().arm_tx(-1);
  pollfd pt{p.b->path().tx_fd(), POLLIN, 0};
  REQUIRE(::poll(&pt, 1, 0) == 1);  // shut for good
  REQUIRE(p.b->confine());
  CHECK(polls_in_timed_out_recv(*p.b) < 10);
  // And it still wakes for data.
  set_sock_timeout(p.b_tcp(), SO_RCVTIMEO, 5000);
  auto fut = p.b_recv_timed(100);
  REQUIRE(send_str(*p.a, "data").n == 4);
  auto [got, ms] = fut.get();
  CHECK(got == "data");
  CHECK(ms < 2500);
}

TEST_CASE("confined without a waiter: waits poll the doorbell and look at TCP every 100 ms",
          "[conn][confine]") {
  conn_pair p(0);
  set_sock_timeout(p.b_tcp(), SO_RCVTIMEO, 5000);
  {
    no_epoll hook;
    CHECK_FALSE(p.b->confine());  // no waiter...
  }
  CHECK(p.b->confined());  // ...but confined all the same
  CHECK(p.b->waiter_fd() == -1);
  auto fut = p.b_recv_blocked();
  REQUIRE(send_str(*p.a, "woken").n == 5);
  CHECK(fut.get().n == 5);
  // The peer's death is seen by the periodic look.
  auto last = p.b_recv_blocked();
  const auto t0 = std::chrono::steady_clock::now();
  p.drop_a_tcp();
  CHECK(last.get().n == 0);
  CHECK(elapsed_ms(t0) < 2500);
}

TEST_CASE("under RLIMIT_NOFILE 1 a confined connection still waits, an unconfined one resets",
          "[conn][confine]") {
  // The real thing behind the seam above: poll() with more fds than
  // RLIMIT_NOFILE fails with EINVAL. A confined wait polls one fd.
  conn_pair p(0);
  auto lower_limit = [] {
    rlimit rl{};
    if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) {
      return false;
    }
    rl.rlim_cur = 1;
    return ::setrlimit(RLIMIT_NOFILE, &rl) == 0;
  };
  SECTION("confined") {
    REQUIRE(p.b->confine());
    child_proc child([&]() -> int {
      if (!lower_limit()) {
        return 10;
      }
      io_result r{};
      const std::string s = recv_str(*p.b, 100, 0, &r);
      if (s != "under the limit") {
        return r.n < 0 && r.err == ECONNRESET ? 2 : 1;
      }
      return 0;
    });
    REQUIRE(spin_until([&] { return p.b_ctl->rx_waiters.load() != 0; }));
    REQUIRE(send_str(*p.a, "under the limit").n == 15);
    CHECK(child.wait() == 0);
    CHECK(p.a_ctl->prod_flags.load() == 0);
  }
  SECTION("not confined") {
    child_proc child([&]() -> int {
      if (!lower_limit()) {
        return 10;
      }
      io_result r{};
      recv_str(*p.b, 100, 0, &r);
      return r.n == -1 && r.err == ECONNRESET ? 0 : 1;
    });
    CHECK(child.wait() == 0);
    CHECK((p.a_ctl->prod_flags.load() & cdc::conn_abnormal) != 0);
    io_result r{};
    recv_str(*p.a, 10, 0, &r);
    CHECK(r.n == -1);
    CHECK(r.err == ECONNRESET);
  }
}

// ---------------------------------------------------------------------------
// Socket semantics a TCP socket has (checked against TCP by smc_diff.py)
// ---------------------------------------------------------------------------

TEST_CASE("SO_RCVLOWAT: readable once that much is there; a blocking recv waits for it",
          "[conn][tcp]") {
  conn_pair p;
  p.b->set_rcvlowat(10);
  REQUIRE(send_str(*p.a, "12345").n == 5);
  CHECK((p.b->events() & POLLIN) == 0);
  // A non-blocking read takes what there is.
  CHECK(recv_str(*p.b, 100, MSG_DONTWAIT) == "12345");
  // A blocking one waits for 10 bytes, then returns them together.
  REQUIRE(send_str(*p.a, "abcde").n == 5);
  auto fut = p.b_recv_timed(100);
  REQUIRE(spin_until([&] { return p.b_ctl->rx_waiters.load() != 0; }));  // asleep with 5 there
  REQUIRE(send_str(*p.a, "fghij").n == 5);
  CHECK(fut.get().first == "abcdefghij");
  // Asking for less than the mark waits only for that much.
  REQUIRE(send_str(*p.a, "xy").n == 2);
  CHECK(recv_str(*p.b, 2) == "xy");
  // The stream's end returns what is there.
  REQUIRE(send_str(*p.a, "last").n == 4);
  p.a->close(false);
  CHECK((p.b->events() & POLLIN) != 0);
  CHECK(recv_str(*p.b, 100) == "last");
}

TEST_CASE("shutdown(SHUT_RD): what arrives is still read, then EOF; POLLRDHUP", "[conn][tcp]") {
  conn_pair p;
  REQUIRE(p.b->shutdown(SHUT_RD) == 0);
  CHECK((p.b->events() & (POLLIN | POLLRDHUP)) == (POLLIN | POLLRDHUP));
  io_result r{};
  recv_str(*p.b, 100, 0, &r);
  CHECK(r.n == 0);
  REQUIRE(send_str(*p.a, "late").n == 4);
  CHECK(recv_str(*p.b, 100) == "late");
  recv_str(*p.b, 100, 0, &r);
  CHECK(r.n == 0);
}

TEST_CASE("a reset is reported once, by SO_ERROR first if asked: then EOF and EPIPE",
          "[conn][tcp]") {
  conn_pair p;
  REQUIRE(send_str(*p.b, "never read").n == 10);
  p.a->close(false);  // with unread data: a reset
  CHECK((p.b->events() & POLLERR) != 0);
  CHECK(p.b->take_error() == ECONNRESET);
  CHECK(p.b->take_error() == 0);
  CHECK((p.b->events() & (POLLERR | POLLHUP)) == POLLHUP);
  io_result r{};
  recv_str(*p.b, 100, 0, &r);
  CHECK(r.n == 0);
  r = send_str(*p.b, "x", MSG_NOSIGNAL);
  CHECK(r.n == -1);
  CHECK(r.err == EPIPE);
}

// core/wake.h: a change the connection makes itself (here a shutdown) wakes
// the waiters listed with it through their wake fds and leaves its doorbell
// alone; the doorbell is rung only for a declared waiter that is not listed
// (another process's, a classic set's, a confined wait's).
TEST_CASE("a connection's own changes wake listed waiters through their wake fds",
          "[conn][wake]") {
  conn_pair p(0);
  smc::core::wake_fd w;
  REQUIRE(w.ok());
  smc::core::waiter hook;
  hook.wake = &w;
  p.b->set_waiter(&hook, smc::core::wait_rx);  // listed, then declared
  p.b->path().arm_rx(1);
  CHECK_FALSE(fd_readable(w.fd()));
  SECTION("every waiter listed: the wake fd, not the doorbell") {
    REQUIRE(p.b->shutdown(SHUT_RD) == 0);
    CHECK(fd_readable(w.fd()));
    CHECK_FALSE(fd_readable(p.b->path().rx_fd()));
    w.consume();
    CHECK_FALSE(fd_readable(w.fd()));
  }
  SECTION("a waiter that is not listed: the doorbell too") {
    p.b->path().arm_rx(1);  // declared, not listed
    REQUIRE(p.b->shutdown(SHUT_RD) == 0);
    CHECK(fd_readable(w.fd()));
    CHECK(fd_readable(p.b->path().rx_fd()));
    p.b->path().arm_rx(-1);
  }
  SECTION("a waiter for the other direction only is left asleep") {
    p.b->set_waiter(&hook, smc::core::wait_tx);
    p.b->path().arm_rx(-1);
    p.b->path().arm_tx(1);
    REQUIRE(p.b->shutdown(SHUT_RD) == 0);
    CHECK_FALSE(fd_readable(w.fd()));
    p.b->path().arm_tx(-1);
    p.b->path().arm_rx(1);
  }
  p.b->path().arm_rx(-1);
  p.b->set_waiter(&hook, 0);
}
