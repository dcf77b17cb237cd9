// smc_bench: latency and throughput micro-benchmark over plain blocking
// sockets with TCP_NODELAY, run side by side plain and under smc_run (it
// knows nothing about SMC). Not a timed test: it reports numbers.
//
//   smc_bench server [--addr A] [--port P] [--portfile F] --test pingpong|stream
//                    [--size S] [--conns K]
//   smc_bench client --addr A --port P --test pingpong|stream [--size S]
//                    [--iters N] [--seconds T] [--bytes N]
//
// pingpong: the client sends S bytes (default 64), the server echoes them,
//   N times (default 20000, after a short warm-up); prints
//   "pingpong size=S iters=N avg_us=X p50_us=Y p99_us=Z".
// stream: the client sends S-byte writes (default 64K) for T seconds
//   (default 3) or --bytes N in total, then shuts down writing; the server
//   counts until EOF and answers with the count (BE64), which the client
//   checks; prints "stream size=S MBps=X bytes=N secs=T" (MB = 10^6 bytes).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
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
#include <optional>
#include <string>
#include <vector>

namespace {

enum class bench_test { pingpong, stream };

struct options {
  bool server = false;
  std::string addr = "127.0.0.1";
  uint16_t port = 0;
  bool port_given = false;
  std::string portfile;
  bench_test test = bench_test::pingpong;
  bool test_given = false;
  uint64_t size = 0;  // 0 = the test's default
  uint64_t iters = 20000;
  double seconds = 3.0;
  uint64_t bytes = 0;  // stream: total bytes instead of seconds when > 0
  uint64_t conns = 1;
};

[[noreturn]] void fail_exit(const std::string& reason) {
  std::fflush(stdout);
  std::fprintf(stderr, "smc_bench: FAIL %s\n", reason.c_str());
  std::exit(1);
}

std::string errno_text(const char* what, int err) { return std::string(what) + ": " + std::strerror(err); }

using clock_type = std::chrono::steady_clock;

bool parse_addr(const std::string& text, uint16_t port, sockaddr_storage& ss, socklen_t& len) {
  std::string a = text;
  if (a.size() >= 2 && a.front() == '[' && a.back() == ']') {
    a = a.substr(1, a.size() - 2);
  }
  std::memset(&ss, 0, sizeof ss);
  auto* v4 = reinterpret_cast<sockaddr_in*>(&ss);
  if (::inet_pton(AF_INET, a.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    len = sizeof(sockaddr_in);
    return true;
  }
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&ss);
  if (::inet_pton(AF_INET6, a.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    len = sizeof(sockaddr_in6);
    return true;
  }
  return false;
}

void set_nodelay(int fd) {
  int one = 1;
  if (::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) {
    fail_exit(errno_text("setsockopt(TCP_NODELAY)", errno));
  }
}

void send_all(int fd, const uint8_t* p, size_t n) {
  while (n > 0) {
    ssize_t r = ::send(fd, p, n, MSG_NOSIGNAL);
    if (r < 0) {
      if (errno == EINTR) {
        continue;
      }
      fail_exit(errno_text("send", errno));
    }
    p += r;
    n -= static_cast<size_t>(r);
  }
}

// Reads exactly n bytes. Returns false on EOF before the first byte (a clean
// end at a message boundary); EOF in the middle is a failure.
bool recv_full(int fd, uint8_t* p, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = ::recv(fd, p + got, n - got, 0);
    if (r < 0) {
      if (errno == EINTR) {
        continue;
      }
      fail_exit(errno_text("recv", errno));
    }
    if (r == 0) {
      if (got == 0) {
        return false;
      }
      fail_exit("EOF inside a message (" + std::to_string(got) + " of " + std::to_string(n) + " bytes)");
    }
    got += static_cast<size_t>(r);
  }
  return true;
}

uint64_t default_size(const options& o) {
  if (o.size > 0) {
    return o.size;
  }
  return o.test == bench_test::pingpong ? 64 : 64 * 1024;
}

void serve_pingpong(int fd, const options& o) {
  std::vector<uint8_t> buf(default_size(o));
  while (recv_full(fd, buf.data(), buf.size())) {
    send_all(fd, buf.data(), buf.size());
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
  sockaddr_storage ss;
  socklen_t len = 0;
  if (!parse_addr(o.addr, o.port, ss, len)) {
    fail_exit("bad --addr " + o.addr);
  }
  int lfd = ::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (lfd < 0) {
    fail_exit(errno_text("socket", errno));
  }
  int one = 1;
  ::setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(lfd, reinterpret_cast<sockaddr*>(&ss), len) != 0 || ::listen(lfd, 16) != 0) {
    fail_exit(errno_text("bind/listen", errno));
  }
  sockaddr_storage got;
  socklen_t gl = sizeof got;
  ::getsockname(lfd, reinterpret_cast<sockaddr*>(&got), &gl);
  uint16_t port = ntohs(got.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&got)->sin6_port
                                                  : reinterpret_cast<sockaddr_in*>(&got)->sin_port);
  if (!o.portfile.empty()) {
    std::string tmp = o.portfile + ".tmp";
    FILE* f = std::fopen(tmp.c_str(), "w");
    if (f == nullptr || std::fprintf(f, "%u\n", static_cast<unsigned>(port)) < 0 || std::fclose(f) != 0 ||
        std::rename(tmp.c_str(), o.portfile.c_str()) != 0) {
      fail_exit(errno_text("portfile", errno));
    }
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
    if (o.test == bench_test::pingpong) {
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
  if (!parse_addr(o.addr, o.port, ss, len)) {
    fail_exit("bad --addr " + o.addr);
  }
  int fd = ::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    fail_exit(errno_text("socket", errno));
  }
  set_nodelay(fd);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    fail_exit(errno_text("connect", errno));
  }
  return fd;
}

void client_pingpong(int fd, const options& o) {
  const uint64_t size = default_size(o);
  std::vector<uint8_t> out(size);
  std::vector<uint8_t> in(size);
  const uint64_t warmup = std::min<uint64_t>(1000, o.iters / 10);
  std::vector<double> lat_us;
  lat_us.reserve(o.iters);
  for (uint64_t i = 0; i < warmup + o.iters; ++i) {
    // Stamp the iteration number so a stale or mixed-up echo is caught.
    for (size_t k = 0; k < out.size(); ++k) {
      out[k] = static_cast<uint8_t>((i >> (8 * (k % 8))) + k);
    }
    auto t0 = clock_type::now();
    send_all(fd, out.data(), out.size());
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
  double sum = 0;
  for (double v : lat_us) {
    sum += v;
  }
  std::sort(lat_us.begin(), lat_us.end());
  size_t n = lat_us.size();
  double avg = n > 0 ? sum / static_cast<double>(n) : 0;
  double p50 = n > 0 ? lat_us[n / 2] : 0;
  double p99 = n > 0 ? lat_us[std::min(n - 1, static_cast<size_t>(static_cast<double>(n) * 0.99))] : 0;
  std::printf("pingpong size=%llu iters=%llu avg_us=%.2f p50_us=%.2f p99_us=%.2f\n",
              static_cast<unsigned long long>(size), static_cast<unsigned long long>(n), avg, p50, p99);
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

int run_client(const options& o) {
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

std::optional<uint64_t> parse_size(const std::string& s) {
  if (s.empty() || s[0] == '-') {
    return std::nullopt;
  }
  char* end = nullptr;
  errno = 0;
  unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  if (errno != 0 || end == s.c_str()) {
    return std::nullopt;
  }
  std::string suffix(end);
  uint64_t mul = 1;
  if (suffix == "K" || suffix == "k") {
    mul = 1ull << 10;
  } else if (suffix == "M" || suffix == "m") {
    mul = 1ull << 20;
  } else if (suffix == "G" || suffix == "g") {
    mul = 1ull << 30;
  } else if (!suffix.empty()) {
    return std::nullopt;
  }
  return v * mul;
}

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr,
               "smc_bench: %s\n"
               "usage: smc_bench server|client --addr A --port P [--portfile F] --test pingpong|stream\n"
               "                 [--size S] [--iters N] [--seconds T] [--bytes N] [--conns K]\n",
               why.c_str());
  std::exit(1);
}

options parse_options(int argc, char** argv) {
  options o;
  if (argc < 2) {
    usage("missing role");
  }
  std::string role = argv[1];
  if (role == "server") {
    o.server = true;
  } else if (role != "client") {
    usage("role must be server or client");
  }
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        usage("missing value for " + a);
      }
      return argv[++i];
    };
    auto size_value = [&]() -> uint64_t {
      std::string v = value();
      auto n = parse_size(v);
      if (!n) {
        usage("bad number for " + a + ": " + v);
      }
      return *n;
    };
    if (a == "--addr") {
      o.addr = value();
    } else if (a == "--port") {
      uint64_t p = size_value();
      if (p > 65535) {
        usage("bad --port");
      }
      o.port = static_cast<uint16_t>(p);
      o.port_given = true;
    } else if (a == "--portfile") {
      o.portfile = value();
    } else if (a == "--test") {
      std::string t = value();
      if (t == "pingpong") {
        o.test = bench_test::pingpong;
      } else if (t == "stream") {
        o.test = bench_test::stream;
      } else {
        usage("bad --test " + t);
      }
      o.test_given = true;
    } else if (a == "--size") {
      o.size = size_value();
      if (o.size == 0 || o.size > (1ull << 30)) {
        usage("--size must be in [1, 1G]");
      }
    } else if (a == "--iters") {
      o.iters = size_value();
    } else if (a == "--seconds") {
      std::string v = value();
      o.seconds = std::atof(v.c_str());
      if (!(o.seconds > 0)) {
        usage("bad --seconds " + v);
      }
    } else if (a == "--bytes") {
      o.bytes = size_value();
    } else if (a == "--conns") {
      o.conns = size_value();
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
