// smc_bench: latency and throughput micro-benchmark over plain blocking
// sockets with TCP_NODELAY, run side by side plain and under smc_run (it
// knows nothing about SMC). Not a timed test: it reports numbers.
//
//   smc_bench server [--addr A] [--port P] [--portfile F] --test pingpong|stream|connrr
//                    [--size S] [--conns K] [--wait read|epoll|poll]
//   smc_bench client --addr A --port P --test pingpong|stream|connrr [--size S]
//                    [--iters N] [--seconds T] [--bytes N] [--wait read|epoll|poll]
//
// --wait epoll|poll: each ping-pong message is awaited as an event loop
//   does, epoll_wait() or poll() until the socket is readable, then read
//   (default: a blocking read).
//
// pingpong: the client sends S bytes (default 64), the server echoes them,
//   N times (default 20000, after a short warm-up); prints
//   "pingpong size=S iters=N avg_us=X p50_us=Y p99_us=Z".
// stream: the client sends S-byte writes (default 64K) for T seconds
//   (default 3) or --bytes N in total, then shuts down writing; the server
//   counts until EOF and answers with the count (BE64), which the client
//   checks; prints "stream size=S MBps=X bytes=N secs=T" (MB = 10^6 bytes).
// connrr: N times (default 20000; no warm-up) in sequence, the client
//   connects a new socket, sends S bytes (default 1), reads the server's echo
//   and closes; the server (--conns N) echoes each connection until EOF, like
//   pingpong; prints "connrr size=S conns=N per_sec=X avg_us=Y p50_us=Z
//   p99_us=W" (connect to close, per connection).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "test/integration/net_util.h"

namespace {

enum class bench_test { pingpong, stream, connrr };

struct options : smc_test::endpoint_options {
  bool server = false;
  bench_test test = bench_test::pingpong;
  bool test_given = false;
  uint64_t size = 0;  // 0 = the test's default
  uint64_t iters = 20000;
  double seconds = 3.0;
  uint64_t bytes = 0;  // stream: total bytes instead of seconds when > 0
  uint64_t conns = 1;
  std::string wait = "read";  // --wait
};

[[noreturn]] void fail_exit(const std::string& reason) {
  std::fflush(stdout);
  std::fprintf(stderr, "smc_bench: FAIL %s\n", reason.c_str());
  std::exit(1);
}

std::string errno_text(const char* what, int err) { return std::string(what) + ": " + std::strerror(err); }

using clock_type = std::chrono::steady_clock;

void set_nodelay(int fd) {
  int one = 1;
  if (::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) {
    fail_exit(errno_text("setsockopt(TCP_NODELAY)", errno));
  }
}

void send_all(int fd, const uint8_t* p, size_t n) {
  if (!smc_test::send_all(fd, p, n)) {
    fail_exit(errno_text("send", errno));
  }
}

// Reads exactly n bytes. Returns false on EOF before the first byte (a clean
// end at a message boundary); EOF in the middle is a failure.
bool recv_full(int fd, uint8_t* p, size_t n) {
  ssize_t got = smc_test::recv_full(fd, p, n);
  if (got < 0) {
    fail_exit(errno_text("recv", errno));
  }
  if (static_cast<size_t>(got) == n) {
    return true;
  }
  if (got == 0) {
    return false;
  }
  fail_exit("EOF inside a message (" + std::to_string(got) + " of " + std::to_string(n) + " bytes)");
}

uint64_t default_size(const options& o) {
  if (o.size > 0) {
    return o.size;
  }
  if (o.test == bench_test::connrr) {
    return 1;
  }
  return o.test == bench_test::pingpong ? 64 : 64 * 1024;
}

// With --wait epoll: an epoll set holding fd (level-triggered, readable);
// with --wait poll: fd itself; else -1.
int make_waiter(int fd, const options& o) {
  if (o.wait != "epoll") {
    return o.wait == "poll" ? fd : -1;
  }
  int ep = ::epoll_create1(EPOLL_CLOEXEC);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = fd;
  if (ep < 0 || ::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
    fail_exit(errno_text("epoll", errno));
  }
  return ep;
}

// Blocks in epoll_wait or poll until the socket is readable (ep from
// make_waiter).
void await_readable(int ep, int fd) {
  if (ep < 0) {
    return;
  }
  if (ep == fd) {
    pollfd p{fd, POLLIN, 0};
    while (::poll(&p, 1, -1) != 1) {
      if (errno != EINTR) {
        fail_exit(errno_text("poll", errno));
      }
    }
    return;
  }
  epoll_event ev{};
  for (;;) {
    int n = ::epoll_wait(ep, &ev, 1, -1);
    if (n == 1 && ev.data.fd == fd) {
      return;
    }
    if (n < 0 && errno != EINTR) {
      fail_exit(errno_text("epoll_wait", errno));
    }
  }
}

void serve_pingpong(int fd, const options& o) {
  std::vector<uint8_t> buf(default_size(o));
  int ep = make_waiter(fd, o);
  for (;;) {
    await_readable(ep, fd);
    if (!recv_full(fd, buf.data(), buf.size())) {
      break;
    }
    send_all(fd, buf.data(), buf.size());
  }
  if (ep >= 0 && ep != fd) {
    ::close(ep);
  }
}

void serve_stream(int fd, const options& o) {
  std::vector<uint8_t> buf(std::max<uint64_t>(default_size(o), 256 * 1024));
  uint64_t total = 0;
  for (;;) {
    ssize_t r = ::recv(fd, buf.data(), buf.size(), 0);
    if (r < 0) {
      if (errno == EINTR) {
        continue;
      }
      fail_exit(errno_text("recv", errno));
    }
    if (r == 0) {
      break;
    }
    total += static_cast<uint64_t>(r);
  }
  uint8_t count[8];
  for (int i = 0; i < 8; ++i) {
    count[i] = static_cast<uint8_t>(total >> (56 - 8 * i));
  }
  send_all(fd, count, sizeof count);
}

int run_server(const options& o) {
  std::string error;
  int lfd = smc_test::open_listener(o.addr, o.port, 16, o.portfile, error);
  if (lfd < 0) {
    fail_exit(error);
  }
  for (uint64_t i = 0; i < o.conns; ++i) {
    int fd;
    do {
      fd = ::accept(lfd, nullptr, nullptr);
    } while (fd < 0 && (errno == EINTR || errno == ECONNABORTED));
    if (fd < 0) {
      fail_exit(errno_text("accept", errno));
    }
    set_nodelay(fd);
    if (o.test != bench_test::stream) {
      serve_pingpong(fd, o);
    } else {
      serve_stream(fd, o);
    }
    ::close(fd);
  }
  ::close(lfd);
  return 0;
}

int connect_client(const options& o) {
  sockaddr_storage ss;
  socklen_t len = 0;
  std::string error;
  int fd = smc_test::open_tcp_socket(o.addr, o.port, ss, len, error);
  if (fd < 0) {
    fail_exit(error);
  }
  set_nodelay(fd);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    fail_exit(errno_text("connect", errno));
  }
  return fd;
}

// Round-trip times in microseconds, summarised (sorts `us`).
struct latency {
  size_t n = 0;
  double avg = 0;
  double p50 = 0;
  double p99 = 0;
};

latency summarize(std::vector<double>& us) {
  latency l;
  l.n = us.size();
  if (l.n == 0) {
    return l;
  }
  double sum = 0;
  for (double v : us) {
    sum += v;
  }
  std::sort(us.begin(), us.end());
  l.avg = sum / static_cast<double>(l.n);
  l.p50 = us[l.n / 2];
  l.p99 = us[std::min(l.n - 1, static_cast<size_t>(static_cast<double>(l.n) * 0.99))];
  return l;
}

void client_pingpong(int fd, const options& o) {
  const uint64_t size = default_size(o);
  std::vector<uint8_t> out(size);
  std::vector<uint8_t> in(size);
  const uint64_t warmup = std::min<uint64_t>(1000, o.iters / 10);
  std::vector<double> lat_us;
  lat_us.reserve(o.iters);
  int ep = make_waiter(fd, o);
  for (uint64_t i = 0; i < warmup + o.iters; ++i) {
    // Stamp the iteration number so a stale or mixed-up echo is caught.
    for (size_t k = 0; k < out.size(); ++k) {
      out[k] = static_cast<uint8_t>((i >> (8 * (k % 8))) + k);
    }
    auto t0 = clock_type::now();
    send_all(fd, out.data(), out.size());
    await_readable(ep, fd);
    if (!recv_full(fd, in.data(), in.size())) {
      fail_exit("server closed during ping-pong");
    }
    auto t1 = clock_type::now();
    if (in != out) {
      fail_exit("echo mismatch at iteration " + std::to_string(i));
    }
    if (i >= warmup) {
      lat_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    }
  }
  ::shutdown(fd, SHUT_WR);
  if (ep >= 0 && ep != fd) {
    ::close(ep);
  }
  const latency lat = summarize(lat_us);
  std::printf("pingpong size=%llu iters=%llu avg_us=%.2f p50_us=%.2f p99_us=%.2f\n",
              static_cast<unsigned long long>(size), static_cast<unsigned long long>(lat.n), lat.avg,
              lat.p50, lat.p99);
}

void client_stream(int fd, const options& o) {
  const uint64_t size = default_size(o);
  std::vector<uint8_t> buf(size);
  for (size_t k = 0; k < buf.size(); ++k) {
    buf[k] = static_cast<uint8_t>(k * 7);
  }
  auto t0 = clock_type::now();
  auto deadline = t0 + std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(o.seconds));
  uint64_t sent = 0;
  for (;;) {
    if (o.bytes > 0) {
      if (sent >= o.bytes) {
        break;
      }
    } else if ((sent / size) % 16 == 0 && clock_type::now() >= deadline) {
      break;
    }
    size_t n = o.bytes > 0 ? static_cast<size_t>(std::min<uint64_t>(size, o.bytes - sent)) : size;
    send_all(fd, buf.data(), n);
    sent += n;
  }
  if (::shutdown(fd, SHUT_WR) != 0) {
    fail_exit(errno_text("shutdown", errno));
  }
  uint8_t count[8];
  if (!recv_full(fd, count, sizeof count)) {
    fail_exit("server closed without reporting its byte count");
  }
  auto t1 = clock_type::now();
  uint64_t counted = 0;
  for (uint8_t b : count) {
    counted = (counted << 8) | b;
  }
  if (counted != sent) {
    fail_exit("server counted " + std::to_string(counted) + " bytes, client sent " + std::to_string(sent));
  }
  double secs = std::chrono::duration<double>(t1 - t0).count();
  std::printf("stream size=%llu MBps=%.1f bytes=%llu secs=%.3f\n", static_cast<unsigned long long>(size),
              secs > 0 ? static_cast<double>(sent) / secs / 1e6 : 0.0, static_cast<unsigned long long>(sent), secs);
}

void client_connrr(const options& o) {
  const uint64_t size = default_size(o);
  std::vector<uint8_t> out(size);
  std::vector<uint8_t> in(size);
  std::vector<double> lat_us;
  lat_us.reserve(o.iters);
  auto start = clock_type::now();
  for (uint64_t i = 0; i < o.iters; ++i) {
    for (size_t k = 0; k < out.size(); ++k) {
      out[k] = static_cast<uint8_t>((i >> (8 * (k % 8))) + k);
    }
    auto t0 = clock_type::now();
    int fd = connect_client(o);
    send_all(fd, out.data(), out.size());
    if (!recv_full(fd, in.data(), in.size())) {
      fail_exit("server closed connection " + std::to_string(i) + " before answering");
    }
    if (in != out) {
      fail_exit("echo mismatch on connection " + std::to_string(i));
    }
    ::close(fd);
    lat_us.push_back(std::chrono::duration<double, std::micro>(clock_type::now() - t0).count());
  }
  double secs = std::chrono::duration<double>(clock_type::now() - start).count();
  const latency lat = summarize(lat_us);
  std::printf("connrr size=%llu conns=%llu per_sec=%.0f avg_us=%.2f p50_us=%.2f p99_us=%.2f\n",
              static_cast<unsigned long long>(size), static_cast<unsigned long long>(lat.n),
              secs > 0 ? static_cast<double>(lat.n) / secs : 0.0, lat.avg, lat.p50, lat.p99);
}

int run_client(const options& o) {
  if (o.test == bench_test::connrr) {
    client_connrr(o);
    std::fflush(stdout);
    return 0;
  }
  int fd = connect_client(o);
  if (o.test == bench_test::pingpong) {
    client_pingpong(fd, o);
  } else {
    client_stream(fd, o);
  }
  ::close(fd);
  std::fflush(stdout);
  return 0;
}

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr,
               "smc_bench: %s\n"
               "usage: smc_bench server|client --addr A --port P [--portfile F] --test pingpong|stream|connrr\n"
               "                 [--size S] [--iters N] [--seconds T] [--bytes N] [--conns K]\n"
               "                 [--wait read|epoll|poll]\n",
               why.c_str());
  std::exit(1);
}

options parse_options(int argc, char** argv) {
  options o;
  o.server = smc_test::server_role(argc, argv, usage);
  smc_test::arg_reader args(argc, argv, 2, usage);
  while (args.next()) {
    const std::string& a = args.name();
    if (args.endpoint_option(o, "bad number for ")) {
      continue;
    }
    if (a == "--test") {
      std::string t = args.value();
      if (t == "pingpong") {
        o.test = bench_test::pingpong;
      } else if (t == "stream") {
        o.test = bench_test::stream;
      } else if (t == "connrr") {
        o.test = bench_test::connrr;
      } else {
        usage("bad --test " + t);
      }
      o.test_given = true;
    } else if (a == "--size") {
      o.size = args.size_value("bad number for ");
      if (o.size == 0 || o.size > (1ull << 30)) {
        usage("--size must be in [1, 1G]");
      }
    } else if (a == "--iters") {
      o.iters = args.size_value("bad number for ");
    } else if (a == "--seconds") {
      std::string v = args.value();
      o.seconds = std::atof(v.c_str());
      if (!(o.seconds > 0)) {
        usage("bad --seconds " + v);
      }
    } else if (a == "--bytes") {
      o.bytes = args.size_value("bad number for ");
    } else if (a == "--conns") {
      o.conns = args.size_value("bad number for ");
    } else if (a == "--wait") {
      std::string w = args.value();
      if (w != "read" && w != "epoll" && w != "poll") {
        usage("bad --wait " + w);
      }
      o.wait = w;
    } else {
      usage("unknown option " + a);
    }
  }
  if (!o.test_given) {
    usage("--test is required");
  }
  if (!o.server && !o.port_given) {
    usage("client needs --port");
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    ::signal(SIGPIPE, SIG_IGN);
    options o = parse_options(argc, argv);
    return o.server ? run_server(o) : run_client(o);
  } catch (const std::exception& e) {
    fail_exit(std::string("exception: ") + e.what());
  } catch (...) {
    fail_exit("unknown exception");
  }
}
