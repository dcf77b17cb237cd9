// smc_pair: process-pair data-integrity test program. A plain POSIX socket
// client/server that knows nothing about SMC, so the same binary runs plain
// or under the preload (scripts/smc_run). Each direction carries a
// deterministic pseudo-random byte stream that the receiver verifies byte by
// byte; the readiness API (blocking threads, poll, select, epoll, epoll ET),
// chunk sizes, half-close, sink/source and concurrency are selectable.
//
//   smc_pair server [--addr A] [--port P] [--portfile F] [--conns K]
//                   [--lenient] [--concurrent] [--source] [common options]
//   smc_pair client --addr A --port P [--sink] [--repeat N] [common options]
//     (--repeat: N connections one after another, each carrying the whole
//     transfer; the server needs --conns N)
//   common: --mode blocking|poll|select|epoll|epollet --bytes N[K|M|G]
//           --seed S --max-chunk C --half-close --io send|rw|msg --idle-ms T
//
// Exit 0 on success (one "ok ..." line on stdout), 1 on failure (one line on
// stderr saying why).
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "test/integration/net_util.h"

namespace {

constexpr uint64_t unlimited = UINT64_MAX;
constexpr uint64_t dir_c2s = 0;  // stream id: client -> server
constexpr uint64_t dir_s2c = 1;  // stream id: server -> client
constexpr uint64_t sink_start_bytes = 1 << 20;

enum class io_mode { blocking, poll, select, epoll, epollet };
enum class io_call { send, rw, msg };

struct options : smc_test::endpoint_options {
  bool server = false;
  uint64_t conns = 1;
  uint64_t repeat = 1;  // client: connections one after another
  bool lenient = false;
  bool concurrent = false;
  io_mode mode = io_mode::blocking;
  io_call call = io_call::send;
  uint64_t bytes = 1 << 20;
  uint64_t seed = 1;
  size_t max_chunk = 262144;
  bool half_close = false;
  bool sink = false;
  bool source = false;
  int idle_ms = 60000;
};

const char* mode_name(io_mode m) {
  switch (m) {
    case io_mode::blocking: return "blocking";
    case io_mode::poll: return "poll";
    case io_mode::select: return "select";
    case io_mode::epoll: return "epoll";
    case io_mode::epollet: return "epollet";
  }
  return "?";
}

int64_t now_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(steady_clock::now().time_since_epoch()).count();
}

std::string errno_text(const char* what, int err) {
  return std::string(what) + ": " + std::strerror(err);
}

// Prints the one-line failure reason and leaves at once: other threads may
// still be blocked in socket calls, so no destructors run.
[[noreturn]] void fail_exit(const std::string& reason) {
  std::fflush(stdout);
  std::fprintf(stderr, "smc_pair: FAIL %s\n", reason.c_str());
  std::fflush(stderr);
  _exit(1);
}

// ---------------------------------------------------------------- progress
// A watchdog turns a hang into a diagnosable failure before the driver's
// `timeout` kills us: if transfers are active and no byte moved for idle_ms.
std::atomic<int64_t> g_last_progress_ms{0};
std::atomic<int> g_active{0};
std::atomic<uint64_t> g_tx_total{0};
std::atomic<uint64_t> g_rx_total{0};
// Where the threads are when a stall is reported (for the library's authors).
std::atomic<int> g_in_send{0};
std::atomic<int> g_in_recv{0};
std::atomic<int> g_in_wait{0};
std::atomic<unsigned> g_wait_for{0};  // last wait: 1 = read, 2 = write, 4 = EOF seen, 8 = tx done

void note_progress() { g_last_progress_ms.store(now_ms(), std::memory_order_relaxed); }

void start_watchdog(int idle_ms) {
  if (idle_ms <= 0) {
    return;
  }
  std::thread([idle_ms] {
    for (;;) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      if (g_active.load() <= 0) {
        continue;
      }
      int64_t idle = now_ms() - g_last_progress_ms.load();
      if (idle > idle_ms) {
        unsigned w = g_wait_for.load();
        fail_exit("stalled: no data moved for " + std::to_string(idle) + " ms (tx_total=" +
                  std::to_string(g_tx_total.load()) + " rx_total=" + std::to_string(g_rx_total.load()) +
                  "; threads in send=" + std::to_string(g_in_send.load()) +
                  " recv=" + std::to_string(g_in_recv.load()) + " readiness-wait=" +
                  std::to_string(g_in_wait.load()) + "; last wait for read=" + std::to_string(w & 1) +
                  " write=" + std::to_string((w >> 1) & 1) + " eof_seen=" + std::to_string((w >> 2) & 1) +
                  " tx_done=" + std::to_string((w >> 3) & 1) + ")");
      }
    }
  }).detach();
}

struct active_guard {
  active_guard() {
    note_progress();
    ++g_active;
  }
  ~active_guard() { --g_active; }
  active_guard(const active_guard&) = delete;
  active_guard& operator=(const active_guard&) = delete;
};

// ---------------------------------------------------------------- random
uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

class xorshift {
 public:
  explicit xorshift(uint64_t seed) {
    uint64_t s = seed;
    state_ = splitmix64(s);
    if (state_ == 0) {
      state_ = 1;
    }
  }
  uint64_t next() {
    state_ ^= state_ >> 12;
    state_ ^= state_ << 25;
    state_ ^= state_ >> 27;
    return state_ * 0x2545F4914F6CDD1Dull;
  }
  // Uniform enough in [lo, hi] for chunk sizes.
  uint64_t range(uint64_t lo, uint64_t hi) { return lo + next() % (hi - lo + 1); }

 private:
  uint64_t state_;
};

// The payload of one direction: an endless byte stream, identical on the
// sender and the receiver, so every received byte is checked.
class byte_stream {
 public:
  byte_stream(uint64_t seed, uint64_t dir) : rng_(seed * 0x100000001B3ull ^ (dir + 1) * 0xD6E8FEB86659FD93ull) {}
  void fill(uint8_t* p, size_t n) {
    while (n > 0 && left_ > 0) {
      *p++ = static_cast<uint8_t>(word_);
      word_ >>= 8;
      --left_;
      --n;
    }
    while (n >= 8) {
      uint64_t w = rng_.next();
      for (int i = 0; i < 8; ++i) {
        p[i] = static_cast<uint8_t>(w >> (8 * i));
      }
      p += 8;
      n -= 8;
    }
    if (n > 0) {
      word_ = rng_.next();
      left_ = 8;
      fill(p, n);
    }
  }

 private:
  xorshift rng_;
  uint64_t word_ = 0;
  unsigned left_ = 0;
};

// ---------------------------------------------------------------- io calls
struct busy_count {
  explicit busy_count(std::atomic<int>& c) : c_(c) { ++c_; }
  ~busy_count() { --c_; }
  busy_count(const busy_count&) = delete;
  busy_count& operator=(const busy_count&) = delete;

 private:
  std::atomic<int>& c_;
};

ssize_t io_send(int fd, io_call call, const uint8_t* p, size_t n) {
  busy_count busy(g_in_send);
  switch (call) {
    case io_call::send: return ::send(fd, p, n, MSG_NOSIGNAL);
    case io_call::rw: return ::write(fd, p, n);
    case io_call::msg: {
      iovec iov[2];
      size_t half = n / 2;
      iov[0] = {const_cast<uint8_t*>(p), half};
      iov[1] = {const_cast<uint8_t*>(p + half), n - half};
      msghdr mh{};
      mh.msg_iov = half > 0 ? iov : iov + 1;
      mh.msg_iovlen = half > 0 ? 2 : 1;
      return ::sendmsg(fd, &mh, MSG_NOSIGNAL);
    }
  }
  errno = EINVAL;
  return -1;
}

ssize_t io_recv(int fd, io_call call, uint8_t* p, size_t n) {
  busy_count busy(g_in_recv);
  switch (call) {
    case io_call::send: return ::recv(fd, p, n, 0);
    case io_call::rw: return ::read(fd, p, n);
    case io_call::msg: {
      iovec iov[2];
      size_t half = n / 2;
      iov[0] = {p, half};
      iov[1] = {p + half, n - half};
      msghdr mh{};
      mh.msg_iov = half > 0 ? iov : iov + 1;
      mh.msg_iovlen = half > 0 ? 2 : 1;
      return ::recvmsg(fd, &mh, 0);
    }
  }
  errno = EINVAL;
  return -1;
}

// ---------------------------------------------------------------- transfer
enum class step { progress, again, done, failed };

// What one side of one connection does.
struct plan {
  bool tx_enabled = true;
  uint64_t tx_bytes = 0;         // `unlimited` for --source
  bool rx_enabled = true;
  uint64_t rx_bytes = 0;         // `unlimited` for --sink
  bool tx_after_rx_eof = false;  // half-close server: send only after reading EOF
  bool rx_after_tx = false;      // half-close client: read only after sending
  bool peer_gone_ok = false;     // sink/source: EOF/ECONNRESET/EPIPE is a normal end
  bool announce_sink_start = false;
  uint64_t tx_dir = dir_c2s;
  uint64_t rx_dir = dir_s2c;
  uint64_t chunk_seed = 0;
};

class tx_side {
 public:
  tx_side(const options& o, const plan& p)
      : call_(o.call), max_chunk_(o.max_chunk), limit_(p.tx_bytes), peer_gone_ok_(p.peer_gone_ok),
        gen_(o.seed, p.tx_dir), chunk_(p.chunk_seed ^ 0x7478u), buf_(o.max_chunk) {}

  step send_some(int fd) {
    if (off_ == len_) {
      if (generated_ == limit_) {
        return step::done;
      }
      uint64_t want = std::min<uint64_t>(chunk_.range(1, max_chunk_), limit_ - generated_);
      gen_.fill(buf_.data(), want);
      off_ = 0;
      len_ = want;
      generated_ += want;
    }
    ssize_t n = io_send(fd, call_, buf_.data() + off_, len_ - off_);
    if (n < 0) {
      int e = errno;
      if (e == EINTR) {
        return step::progress;
      }
      if (e == EAGAIN || e == EWOULDBLOCK) {
        return step::again;
      }
      if (peer_gone_ok_ && (e == EPIPE || e == ECONNRESET)) {
        peer_gone = true;
        return step::done;
      }
      error = errno_text("send", e) + " after " + std::to_string(sent_) + " bytes";
      return step::failed;
    }
    if (n == 0) {
      error = "send returned 0 after " + std::to_string(sent_) + " bytes";
      return step::failed;
    }
    off_ += static_cast<size_t>(n);
    sent_ += static_cast<uint64_t>(n);
    g_tx_total += static_cast<uint64_t>(n);
    note_progress();
    if (off_ == len_ && generated_ == limit_) {
      return step::done;
    }
    return step::progress;
  }

  uint64_t sent() const { return sent_; }
  std::string error;
  bool peer_gone = false;

 private:
  io_call call_;
  size_t max_chunk_;
  uint64_t limit_;
  bool peer_gone_ok_;
  byte_stream gen_;
  xorshift chunk_;
  std::vector<uint8_t> buf_;
  size_t off_ = 0;
  size_t len_ = 0;
  uint64_t generated_ = 0;
  uint64_t sent_ = 0;
};

class rx_side {
 public:
  rx_side(const options& o, const plan& p)
      : call_(o.call), max_chunk_(o.max_chunk), limit_(p.rx_bytes), peer_gone_ok_(p.peer_gone_ok),
        announce_(p.announce_sink_start), gen_(o.seed, p.rx_dir), chunk_(p.chunk_seed ^ 0x7278u),
        buf_(o.max_chunk), expect_(o.max_chunk), last_read_ms_(now_ms()) {}

  step recv_some(int fd) {
    // Never clamp to the bytes still expected: extra bytes must be seen.
    size_t want = chunk_.range(1, max_chunk_);
    ssize_t n = io_recv(fd, call_, buf_.data(), want);
    if (n < 0) {
      int e = errno;
      if (e == EINTR) {
        return step::progress;
      }
      if (e == EAGAIN || e == EWOULDBLOCK) {
        return step::again;
      }
      if (peer_gone_ok_ && (e == ECONNRESET || e == EPIPE)) {
        end = "reset";
        end_after_ms = now_ms() - last_read_ms_;
        return step::done;
      }
      error = errno_text("recv", e) + " after " + std::to_string(received_) + " bytes";
      return step::failed;
    }
    if (n == 0) {
      if (limit_ != unlimited && received_ != limit_) {
        error = "early EOF after " + std::to_string(received_) + " of " + std::to_string(limit_) + " bytes";
        return step::failed;
      }
      end = "eof";
      end_after_ms = now_ms() - last_read_ms_;
      return step::done;
    }
    auto got = static_cast<uint64_t>(n);
    if (limit_ != unlimited && received_ + got > limit_) {
      error = "received " + std::to_string(received_ + got - limit_) + " bytes beyond the expected " +
              std::to_string(limit_) + " (EOF must follow the payload)";
      return step::failed;
    }
    gen_.fill(expect_.data(), got);
    if (std::memcmp(buf_.data(), expect_.data(), got) != 0) {
      size_t i = 0;
      while (buf_[i] == expect_[i]) {
        ++i;
      }
      char text[160];
      std::snprintf(text, sizeof text, "data mismatch at stream offset %llu: got 0x%02x, expected 0x%02x",
                    static_cast<unsigned long long>(received_ + i), buf_[i], expect_[i]);
      error = text;
      return step::failed;
    }
    bool was_below = received_ < sink_start_bytes;
    received_ += got;
    g_rx_total += got;
    last_read_ms_ = now_ms();
    note_progress();
    if (announce_ && was_below && received_ >= sink_start_bytes) {
      std::printf("sink-start bytes=%llu\n", static_cast<unsigned long long>(received_));
      std::fflush(stdout);
    }
    return step::progress;
  }

  uint64_t received() const { return received_; }
  std::string error;
  std::string end;  // "eof" or "reset" once done
  int64_t end_after_ms = -1;

 private:
  io_call call_;
  size_t max_chunk_;
  uint64_t limit_;
  bool peer_gone_ok_;
  bool announce_;
  byte_stream gen_;
  xorshift chunk_;
  std::vector<uint8_t> buf_;
  std::vector<uint8_t> expect_;
  uint64_t received_ = 0;
  int64_t last_read_ms_;
};

struct result {
  bool ok = false;
  std::string reason;
  uint64_t tx = 0;
  uint64_t rx = 0;
  std::string end;  // sink: eof/reset; source: peer_gone
  int64_t end_after_ms = -1;
};

// A fully-sent stream is closed for writing; the peer must then see EOF
// exactly after the payload.
bool shutdown_wr(int fd, const plan& p, std::string& error) {
  if (::shutdown(fd, SHUT_WR) != 0 && !p.peer_gone_ok) {
    error = errno_text("shutdown(SHUT_WR)", errno);
    return false;
  }
  return true;
}

void finish(result& r, const plan& p, tx_side& tx, rx_side& rx) {
  r.tx = tx.sent();
  r.rx = rx.received();
  if (!tx.error.empty() || !rx.error.empty()) {
    r.ok = false;
    r.reason = !rx.error.empty() ? rx.error : tx.error;
    if (!rx.error.empty() && !tx.error.empty()) {
      r.reason += "; " + tx.error;
    }
    return;
  }
  r.ok = true;
  if (p.peer_gone_ok) {
    r.end = !rx.end.empty() ? rx.end : (tx.peer_gone ? "peer_gone" : "");
    r.end_after_ms = rx.end_after_ms;
  }
}

// ---- blocking mode: one thread writes, one reads, plain blocking calls.
bool blocking_tx(int fd, const plan& p, tx_side& tx) {
  for (;;) {
    step s = tx.send_some(fd);
    if (s == step::failed) {
      return false;
    }
    if (s == step::again) {
      tx.error = "send: EAGAIN on a blocking socket";
      return false;
    }
    if (s == step::done) {
      return tx.peer_gone || shutdown_wr(fd, p, tx.error);
    }
  }
}

bool blocking_rx(int fd, rx_side& rx) {
  for (;;) {
    step s = rx.recv_some(fd);
    if (s == step::failed) {
      return false;
    }
    if (s == step::again) {
      rx.error = "recv: EAGAIN on a blocking socket";
      return false;
    }
    if (s == step::done) {
      return true;
    }
  }
}

result run_blocking(int fd, const options& o, const plan& p) {
  tx_side tx(o, p);
  rx_side rx(o, p);
  result r;
  if (!p.tx_enabled) {
    blocking_rx(fd, rx);
  } else if (!p.rx_enabled) {
    blocking_tx(fd, p, tx);
  } else if (p.tx_after_rx_eof) {
    if (blocking_rx(fd, rx)) {
      blocking_tx(fd, p, tx);
    }
  } else if (p.rx_after_tx) {
    if (blocking_tx(fd, p, tx)) {
      blocking_rx(fd, rx);
    }
  } else {
    std::thread writer([&] {
      if (!blocking_tx(fd, p, tx)) {
        ::shutdown(fd, SHUT_RDWR);  // wake the reader
      }
    });
    if (!blocking_rx(fd, rx)) {
      ::shutdown(fd, SHUT_RDWR);  // wake the writer
    }
    writer.join();
  }
  finish(r, p, tx, rx);
  return r;
}

// ---- event-loop modes: one thread, non-blocking socket, one readiness API.
struct readiness {
  bool rd = false;
  bool wr = false;
};

class waiter {
 public:
  virtual ~waiter() = default;
  // Waits until fd is ready for what is wanted (or errored). Returns 0 with
  // `out` filled (both false on timeout), or -1 with an error text.
  virtual int wait(int fd, bool want_rd, bool want_wr, int timeout_ms, readiness& out, std::string& error) = 0;
};

class poll_waiter final : public waiter {
 public:
  int wait(int fd, bool want_rd, bool want_wr, int timeout_ms, readiness& out, std::string& error) override {
    pollfd pfd{fd, static_cast<short>((want_rd ? POLLIN : 0) | (want_wr ? POLLOUT : 0)), 0};
    int n = ::poll(&pfd, 1, timeout_ms);
    if (n < 0) {
      if (errno == EINTR) {
        out = {};
        return 0;
      }
      error = errno_text("poll", errno);
      return -1;
    }
    if (pfd.revents & POLLNVAL) {
      error = "poll: POLLNVAL";
      return -1;
    }
    bool err = (pfd.revents & POLLERR) != 0;
    out.rd = (pfd.revents & (POLLIN | POLLHUP)) != 0 || err;
    out.wr = (pfd.revents & POLLOUT) != 0 || err;
    return 0;
  }
};

class select_waiter final : public waiter {
 public:
  int wait(int fd, bool want_rd, bool want_wr, int timeout_ms, readiness& out, std::string& error) override {
    if (fd >= FD_SETSIZE) {
      error = "select: fd " + std::to_string(fd) + " >= FD_SETSIZE";
      return -1;
    }
    fd_set rs;
    fd_set ws;
    FD_ZERO(&rs);
    FD_ZERO(&ws);
    if (want_rd) {
      FD_SET(fd, &rs);
    }
    if (want_wr) {
      FD_SET(fd, &ws);
    }
    timeval tv{timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    int n = ::select(fd + 1, &rs, &ws, nullptr, &tv);
    if (n < 0) {
      if (errno == EINTR) {
        out = {};
        return 0;
      }
      error = errno_text("select", errno);
      return -1;
    }
    out.rd = FD_ISSET(fd, &rs);
    out.wr = FD_ISSET(fd, &ws);
    return 0;
  }
};

class epoll_waiter final : public waiter {
 public:
  explicit epoll_waiter(bool edge) : edge_(edge), epfd_(::epoll_create1(EPOLL_CLOEXEC)) {}
  ~epoll_waiter() override {
    if (epfd_ >= 0) {
      ::close(epfd_);
    }
  }
  epoll_waiter(const epoll_waiter&) = delete;
  epoll_waiter& operator=(const epoll_waiter&) = delete;

  int wait(int fd, bool want_rd, bool want_wr, int timeout_ms, readiness& out, std::string& error) override {
    if (epfd_ < 0) {
      error = errno_text("epoll_create1", errno);
      return -1;
    }
    // Edge-triggered: registered once for everything; the caller keeps
    // reading/writing until EAGAIN. Level-triggered: interest follows want.
    uint32_t events = edge_ ? (EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET)
                            : ((want_rd ? EPOLLIN | EPOLLRDHUP : 0u) | (want_wr ? EPOLLOUT : 0u));
    if (!registered_ || events != events_) {
      epoll_event ev{};
      ev.events = events;
      ev.data.u64 = 0x5EC0DEull;  // must come back untouched
      if (::epoll_ctl(epfd_, registered_ ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev) != 0) {
        error = errno_text("epoll_ctl", errno);
        return -1;
      }
      registered_ = true;
      events_ = events;
    }
    epoll_event got[4];
    int n = ::epoll_wait(epfd_, got, 4, timeout_ms);
    if (n < 0) {
      if (errno == EINTR) {
        out = {};
        return 0;
      }
      error = errno_text("epoll_wait", errno);
      return -1;
    }
    out = {};
    for (int i = 0; i < n; ++i) {
      if (got[i].data.u64 != 0x5EC0DEull) {
        error = "epoll_wait: epoll_data not returned untouched";
        return -1;
      }
      bool err = (got[i].events & EPOLLERR) != 0;
      out.rd = out.rd || (got[i].events & (EPOLLIN | EPOLLHUP | EPOLLRDHUP)) != 0 || err;
      out.wr = out.wr || (got[i].events & EPOLLOUT) != 0 || err;
    }
    return 0;
  }

 private:
  bool edge_;
  int epfd_;
  bool registered_ = false;
  uint32_t events_ = 0;
};

std::unique_ptr<waiter> make_waiter(io_mode m) {
  switch (m) {
    case io_mode::select: return std::make_unique<select_waiter>();
    case io_mode::epoll: return std::make_unique<epoll_waiter>(false);
    case io_mode::epollet: return std::make_unique<epoll_waiter>(true);
    case io_mode::poll:
    case io_mode::blocking: break;
  }
  return std::make_unique<poll_waiter>();
}

// Level-triggered: one call per readiness report. Edge-triggered: until
// EAGAIN (or the end), since no new report comes otherwise.
step pump_rx(int fd, rx_side& rx, bool edge, bool& can_rd) {
  for (;;) {
    step s = rx.recv_some(fd);
    if (s == step::failed || s == step::done) {
      return s;
    }
    if (s == step::again || !edge) {
      can_rd = false;
      return step::progress;
    }
  }
}

step pump_tx(int fd, tx_side& tx, bool edge, bool& can_wr) {
  for (;;) {
    step s = tx.send_some(fd);
    if (s == step::failed || s == step::done) {
      return s;
    }
    if (s == step::again || !edge) {
      can_wr = false;
      return step::progress;
    }
  }
}

result run_event_loop(int fd, const options& o, const plan& p, waiter& w) {
  tx_side tx(o, p);
  rx_side rx(o, p);
  result r;
  const bool edge = o.mode == io_mode::epollet;
  bool tx_done = !p.tx_enabled;
  bool rx_done = !p.rx_enabled;
  // Edge-triggered: start optimistic (try until EAGAIN before waiting).
  bool can_rd = edge;
  bool can_wr = edge;
  std::string error;
  bool failed = false;
  while (!failed && !(tx_done && rx_done)) {
    bool want_rd = !rx_done && !(p.rx_after_tx && !tx_done);
    bool want_wr = !tx_done && !(p.tx_after_rx_eof && !rx_done);
    if (!want_rd && !want_wr) {
      error = "internal: nothing to wait for";
      break;
    }
    if (!((want_rd && can_rd) || (want_wr && can_wr))) {
      readiness ev;
      g_wait_for = (want_rd ? 1u : 0u) | (want_wr ? 2u : 0u) | (rx_done ? 4u : 0u) | (tx_done ? 8u : 0u);
      busy_count busy(g_in_wait);
      if (w.wait(fd, want_rd, want_wr, 1000, ev, error) != 0) {
        break;
      }
      if (edge) {  // edges are remembered until EAGAIN consumes them
        can_rd = can_rd || ev.rd;
        can_wr = can_wr || ev.wr;
      } else {
        can_rd = ev.rd;
        can_wr = ev.wr;
      }
    }
    if (want_rd && can_rd) {
      step s = pump_rx(fd, rx, edge, can_rd);
      failed = s == step::failed;
      rx_done = rx_done || s == step::done;
    }
    want_wr = !tx_done && !(p.tx_after_rx_eof && !rx_done);
    if (!failed && want_wr && can_wr) {
      step s = pump_tx(fd, tx, edge, can_wr);
      failed = s == step::failed;
      if (s == step::done) {
        tx_done = true;
        if (tx.peer_gone) {
          rx_done = true;  // source: the peer went away, nothing more to do
        } else if (!shutdown_wr(fd, p, tx.error)) {
          failed = true;
        }
      }
    }
  }
  if (!error.empty() && tx.error.empty() && rx.error.empty()) {
    rx.error = error;
  }
  finish(r, p, tx, rx);
  return r;
}

result run_transfer(int fd, const options& o, const plan& p, waiter* w) {
  active_guard guard;
  if (o.mode == io_mode::blocking) {
    return run_blocking(fd, o, p);
  }
  std::unique_ptr<waiter> own;
  if (w == nullptr) {
    own = make_waiter(o.mode);
    w = own.get();
  }
  return run_event_loop(fd, o, p, *w);
}

// ---------------------------------------------------------------- sockets
bool set_nonblocking(int fd, std::string& error) {
  int fl = ::fcntl(fd, F_GETFL);
  if (fl < 0 || ::fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0) {
    error = errno_text("fcntl(O_NONBLOCK)", errno);
    return false;
  }
  return true;
}

void write_portfile(const std::string& path, uint16_t port) {
  if (const char* step = smc_test::write_portfile(path, port)) {
    int err = errno;
    fail_exit(errno_text((std::string(step) + " " + path + ".tmp").c_str(), err));
  }
}

// Connects; in event-loop modes with a non-blocking connect completed through
// the mode's own readiness API (EINPROGRESS, writable, SO_ERROR).
int connect_to(const options& o, waiter* w) {
  sockaddr_storage ss;
  socklen_t len = 0;
  std::string error;
  int fd = smc_test::open_tcp_socket(o.addr, o.port, ss, len, error);
  if (fd < 0) {
    fail_exit(error);
  }
  if (o.mode != io_mode::blocking && !set_nonblocking(fd, error)) {
    fail_exit(error);
  }
  if (::connect(fd, reinterpret_cast<sockaddr*>(&ss), len) == 0) {
    return fd;
  }
  if (errno != EINPROGRESS && errno != EINTR) {
    fail_exit(errno_text("connect", errno));
  }
  poll_waiter fallback_waiter;
  waiter& cw = (w != nullptr) ? *w : fallback_waiter;
  int64_t deadline = now_ms() + 30000;
  for (;;) {
    readiness ev;
    if (cw.wait(fd, false, true, 1000, ev, error) != 0) {
      fail_exit("waiting for connect: " + error);
    }
    if (ev.wr) {
      break;
    }
    if (now_ms() > deadline) {
      fail_exit("connect: not writable after 30 s");
    }
  }
  int soerr = 0;
  socklen_t sl = sizeof soerr;
  if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0) {
    fail_exit(errno_text("getsockopt(SO_ERROR)", errno));
  }
  if (soerr != 0) {
    fail_exit(errno_text("connect (SO_ERROR)", soerr));
  }
  return fd;
}

int make_listener(const options& o, uint16_t& bound_port) {
  sockaddr_storage ss;
  socklen_t len = 0;
  std::string error;
  int fd = smc_test::open_tcp_socket(o.addr, o.port, ss, len, error);
  if (fd < 0) {
    fail_exit(error);
  }
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    fail_exit(errno_text("bind", errno));
  }
  if (::listen(fd, 128) != 0) {
    fail_exit(errno_text("listen", errno));
  }
  int port = smc_test::bound_port(fd);
  if (port < 0) {
    fail_exit(errno_text("getsockname", errno));
  }
  bound_port = static_cast<uint16_t>(port);
  if (!set_nonblocking(fd, error)) {  // accept loop polls, so a stop flag is honoured
    fail_exit(error);
  }
  return fd;
}

// ---------------------------------------------------------------- roles
plan client_plan(const options& o) {
  plan p;
  p.tx_dir = dir_c2s;
  p.rx_dir = dir_s2c;
  p.chunk_seed = o.seed * 31 + 1;
  if (o.sink) {
    p.tx_enabled = false;
    p.rx_bytes = unlimited;
    p.peer_gone_ok = true;
    p.announce_sink_start = true;
    return p;
  }
  p.tx_bytes = o.bytes;
  p.rx_bytes = o.bytes;
  p.rx_after_tx = o.half_close;
  return p;
}

plan server_plan(const options& o, uint64_t conn_id) {
  plan p;
  p.tx_dir = dir_s2c;
  p.rx_dir = dir_c2s;
  p.chunk_seed = o.seed * 37 + 2 + conn_id * 0x9E37;
  if (o.source) {
    p.rx_enabled = false;
    p.tx_bytes = unlimited;
    p.peer_gone_ok = true;
    return p;
  }
  p.tx_bytes = o.bytes;
  p.rx_bytes = o.bytes;
  p.tx_after_rx_eof = o.half_close;
  return p;
}

int run_client(const options& o) {
  int64_t t0 = now_ms();
  result r;
  for (uint64_t k = 0; k < o.repeat; ++k) {
    std::unique_ptr<waiter> w;
    if (o.mode != io_mode::blocking) {
      w = make_waiter(o.mode);
    }
    int fd = connect_to(o, w.get());
    r = run_transfer(fd, o, client_plan(o), w.get());
    ::close(fd);
    if (!r.ok) {
      fail_exit("client: connection " + std::to_string(k) + ": " + r.reason +
                " (tx=" + std::to_string(r.tx) + " rx=" + std::to_string(r.rx) + ")");
    }
  }
  if (o.sink) {
    std::printf("sink-end: %s after_ms=%lld bytes_rx=%llu\n", r.end.c_str(), static_cast<long long>(r.end_after_ms),
                static_cast<unsigned long long>(r.rx));
  } else {
    std::printf("ok mode=%s bytes_tx=%llu bytes_rx=%llu ms=%lld\n", mode_name(o.mode),
                static_cast<unsigned long long>(r.tx), static_cast<unsigned long long>(r.rx),
                static_cast<long long>(now_ms() - t0));
  }
  std::fflush(stdout);
  return 0;
}

struct server_state {
  std::mutex m;
  uint64_t good = 0;
  uint64_t bad = 0;
  uint64_t accepted = 0;
  uint64_t tx = 0;
  uint64_t rx = 0;
};

void serve_one(int fd, uint64_t conn_id, const options& o, server_state& st) {
  std::string error;
  result r;
  if (o.mode != io_mode::blocking && !set_nonblocking(fd, error)) {
    r.reason = error;
  } else {
    r = run_transfer(fd, o, server_plan(o, conn_id), nullptr);
  }
  ::close(fd);
  std::lock_guard lock(st.m);
  st.tx += r.tx;
  st.rx += r.rx;
  if (r.ok) {
    ++st.good;
    if (o.source) {
      std::printf("source-end: %s bytes_tx=%llu\n", r.end.empty() ? "?" : r.end.c_str(),
                  static_cast<unsigned long long>(r.tx));
      std::fflush(stdout);
    }
    return;
  }
  ++st.bad;
  std::string what = "server conn " + std::to_string(conn_id) + ": " + r.reason + " (tx=" + std::to_string(r.tx) +
                     " rx=" + std::to_string(r.rx) + ")";
  if (!o.lenient) {
    fail_exit(what);
  }
  std::fprintf(stderr, "smc_pair: bad connection (lenient): %s\n", what.c_str());
}

// Returns an accepted fd, or -1 when `stop` became true while waiting.
int accept_one(int lfd, const std::function<bool()>& stop) {
  for (;;) {
    if (stop()) {
      return -1;
    }
    pollfd pfd{lfd, POLLIN, 0};
    int n = ::poll(&pfd, 1, 200);
    if (n < 0 && errno != EINTR) {
      fail_exit(errno_text("poll(listener)", errno));
    }
    if (n <= 0) {
      continue;
    }
    int fd = ::accept(lfd, nullptr, nullptr);
    if (fd >= 0) {
      return fd;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED) {
      continue;
    }
    fail_exit(errno_text("accept", errno));
  }
}

int run_server(const options& o) {
  uint16_t port = 0;
  int lfd = make_listener(o, port);
  if (!o.portfile.empty()) {
    write_portfile(o.portfile, port);
  }
  int64_t t0 = now_ms();
  server_state st;
  // Lenient: keep accepting until K good connections; strict: exactly K.
  auto enough = [&] {
    std::lock_guard lock(st.m);
    return o.lenient ? st.good >= o.conns : st.accepted >= o.conns;
  };
  std::vector<std::thread> threads;
  uint64_t conn_id = 0;
  for (;;) {
    int fd = accept_one(lfd, enough);
    if (fd < 0) {
      break;
    }
    {
      std::lock_guard lock(st.m);
      ++st.accepted;
    }
    ++conn_id;
    if (o.concurrent) {
      threads.emplace_back(serve_one, fd, conn_id, std::cref(o), std::ref(st));
    } else {
      serve_one(fd, conn_id, o, st);
    }
  }
  for (auto& t : threads) {
    t.join();
  }
  ::close(lfd);
  std::printf("ok mode=%s conns=%llu bad=%llu bytes_tx=%llu bytes_rx=%llu ms=%lld\n", mode_name(o.mode),
              static_cast<unsigned long long>(st.good), static_cast<unsigned long long>(st.bad),
              static_cast<unsigned long long>(st.tx), static_cast<unsigned long long>(st.rx),
              static_cast<long long>(now_ms() - t0));
  std::fflush(stdout);
  return 0;
}

// ---------------------------------------------------------------- options
[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr,
               "smc_pair: %s\n"
               "usage: smc_pair server [--addr A] [--port P] [--portfile F] [--conns K] [--lenient]\n"
               "                       [--concurrent] [--source] [common]\n"
               "       smc_pair client --addr A --port P [--sink] [--repeat N] [common]\n"
               "common: --mode blocking|poll|select|epoll|epollet --bytes N[K|M|G] --seed S\n"
               "        --max-chunk C --half-close --io send|rw|msg --idle-ms T (0 = no watchdog)\n",
               why.c_str());
  _exit(1);
}

options parse_options(int argc, char** argv) {
  options o;
  o.server = smc_test::server_role(argc, argv, usage);
  smc_test::arg_reader args(argc, argv, 2, usage);
  while (args.next()) {
    const std::string& a = args.name();
    if (args.endpoint_option(o, "bad size for ")) {
      continue;
    }
    if (a == "--conns") {
      o.conns = args.size_value("bad size for ");
      if (o.conns == 0) {
        usage("--conns must be >= 1");
      }
    } else if (a == "--repeat") {
      o.repeat = args.size_value("bad size for ");
      if (o.repeat == 0) {
        usage("--repeat must be >= 1");
      }
    } else if (a == "--lenient") {
      o.lenient = true;
    } else if (a == "--concurrent") {
      o.concurrent = true;
    } else if (a == "--mode") {
      std::string m = args.value();
      if (m == "blocking") {
        o.mode = io_mode::blocking;
      } else if (m == "poll") {
        o.mode = io_mode::poll;
      } else if (m == "select") {
        o.mode = io_mode::select;
      } else if (m == "epoll") {
        o.mode = io_mode::epoll;
      } else if (m == "epollet") {
        o.mode = io_mode::epollet;
      } else {
        usage("bad --mode " + m);
      }
    } else if (a == "--io") {
      std::string m = args.value();
      if (m == "send") {
        o.call = io_call::send;
      } else if (m == "rw") {
        o.call = io_call::rw;
      } else if (m == "msg") {
        o.call = io_call::msg;
      } else {
        usage("bad --io " + m);
      }
    } else if (a == "--bytes") {
      o.bytes = args.size_value("bad size for ");
    } else if (a == "--seed") {
      o.seed = args.size_value("bad size for ");
    } else if (a == "--max-chunk") {
      uint64_t c = args.size_value("bad size for ");
      if (c == 0 || c > (1ull << 30)) {
        usage("--max-chunk must be in [1, 1G]");
      }
      o.max_chunk = static_cast<size_t>(c);
    } else if (a == "--half-close") {
      o.half_close = true;
    } else if (a == "--sink") {
      o.sink = true;
    } else if (a == "--source") {
      o.source = true;
    } else if (a == "--idle-ms") {
      o.idle_ms = static_cast<int>(std::min<uint64_t>(args.size_value("bad size for "), INT32_MAX));
    } else {
      usage("unknown option " + a);
    }
  }
  if (!o.server && !o.port_given) {
    usage("client needs --port");
  }
  if (o.sink && o.server) {
    usage("--sink is a client option");
  }
  if (o.source && !o.server) {
    usage("--source is a server option");
  }
  if ((o.sink || o.source) && o.half_close) {
    usage("--half-close cannot be combined with --sink/--source");
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    ::signal(SIGPIPE, SIG_IGN);  // write() in --io rw has no MSG_NOSIGNAL
    options o = parse_options(argc, argv);
    start_watchdog(o.idle_ms);
    return o.server ? run_server(o) : run_client(o);
  } catch (const std::exception& e) {
    fail_exit(std::string("exception: ") + e.what());
  } catch (...) {
    fail_exit("unknown exception");
  }
}
