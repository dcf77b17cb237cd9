// net_util.h: the small socket and command-line helpers that the integration
// test programs (smc_pair, smc_bench, smc_calls, smc_hostile, smc_cycles,
// verbs_floor, ...) share. Plain POSIX, nothing about SMC; every helper
// reports failure to its caller, which keeps its own messages and exit codes.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>

namespace smc_test {

// Parses an IPv4 or IPv6 address (optionally in [brackets]) and a port into
// `ss`/`len`. Returns false when the text is neither.
inline bool parse_addr(const std::string& text, uint16_t port, sockaddr_storage& ss, socklen_t& len) {
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

// A TCP socket (SOCK_CLOEXEC) of `family`. With TEST_AF_SMC=1 in the
// environment it is the Linux kernel's own SMC instead (AF_SMC, same
// addresses): the interop tests run the kernel's SMC-R as the peer of the
// preload with the very same programs.
inline int tcp_socket(int family) {
  const char* kernel_smc = std::getenv("TEST_AF_SMC");
  if (kernel_smc != nullptr && std::strcmp(kernel_smc, "1") == 0) {
    return ::socket(43 /* AF_SMC */, SOCK_STREAM | SOCK_CLOEXEC,
                    family == AF_INET6 ? 1 /* SMCPROTO_SMC6 */ : 0 /* SMCPROTO_SMC */);
  }
  return ::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
}

// Parses `addr` and `port` into ss/len (as parse_addr) and opens a
// tcp_socket() of that family. Returns the fd, or -1 with `error` set to
// "bad --addr ADDR" or "socket: <strerror>".
inline int open_tcp_socket(const std::string& addr, uint16_t port, sockaddr_storage& ss, socklen_t& len,
                           std::string& error) {
  if (!parse_addr(addr, port, ss, len)) {
    error = "bad --addr " + addr;
    return -1;
  }
  int fd = tcp_socket(ss.ss_family);
  if (fd < 0) {
    error = std::string("socket: ") + std::strerror(errno);
  }
  return fd;
}

// A non-negative decimal number with an optional K/M/G (or k/m/g) suffix,
// powers of 1024; nullopt when malformed or when it does not fit 64 bits.
inline std::optional<uint64_t> parse_size(const std::string& s) {
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
  if (v > UINT64_MAX / mul) {
    return std::nullopt;
  }
  return v * mul;
}

// The local port a socket is bound to (after bind/listen, e.g. for port 0),
// or -1 with errno set when getsockname fails.
inline int bound_port(int fd) {
  sockaddr_storage got;
  socklen_t gl = sizeof got;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&got), &gl) != 0) {
    return -1;
  }
  return ntohs(got.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&got)->sin6_port
                                         : reinterpret_cast<sockaddr_in*>(&got)->sin_port);
}

// Writes "PORT\n" to path + ".tmp" and renames it to `path`, so a reader
// never sees a partial file. Returns nullptr on success, or the step that
// failed ("open", "write" or "rename") with errno set.
inline const char* write_portfile(const std::string& path, uint16_t port) {
  std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "w");
  if (f == nullptr) {
    return "open";
  }
  if (std::fprintf(f, "%u\n", static_cast<unsigned>(port)) < 0) {
    int err = errno;
    std::fclose(f);
    errno = err;
    return "write";
  }
  if (std::fclose(f) != 0) {
    return "write";
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return "rename";
  }
  return nullptr;
}

// A listening tcp_socket() on addr:port (SO_REUSEADDR) whose bound port is
// written to `portfile` unless that is empty. Returns the fd, or -1 with
// `error` set to "<step>: <strerror>" (or as open_tcp_socket).
inline int open_listener(const std::string& addr, uint16_t port, int backlog,
                         const std::string& portfile, std::string& error) {
  sockaddr_storage ss;
  socklen_t len = 0;
  int fd = open_tcp_socket(addr, port, ss, len, error);
  if (fd < 0) {
    return -1;
  }
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  const char* step = nullptr;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 || ::listen(fd, backlog) != 0) {
    step = "bind/listen";
  } else if (!portfile.empty()) {
    int p = bound_port(fd);
    step = p < 0 ? "getsockname" : write_portfile(portfile, static_cast<uint16_t>(p));
  }
  if (step != nullptr) {
    error = std::string(step) + ": " + std::strerror(errno);
    ::close(fd);
    return -1;
  }
  return fd;
}

// A tcp_socket() connected (blocking) to addr:port. Returns the fd, or -1
// with `error` set to "connect: <strerror>" (or as open_tcp_socket).
inline int dial(const std::string& addr, uint16_t port, std::string& error) {
  sockaddr_storage ss;
  socklen_t len = 0;
  int fd = open_tcp_socket(addr, port, ss, len, error);
  if (fd < 0) {
    return -1;
  }
  if (::connect(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    error = std::string("connect: ") + std::strerror(errno);
    ::close(fd);
    return -1;
  }
  return fd;
}

// Sends all n bytes (MSG_NOSIGNAL), retrying after EINTR and partial sends.
// Returns false with errno set on an error.
inline bool send_all(int fd, const void* buf, size_t n) {
  const auto* p = static_cast<const char*>(buf);
  while (n > 0) {
    ssize_t r = ::send(fd, p, n, MSG_NOSIGNAL);
    if (r < 0) {
      if (errno == EINTR) {
        continue;
      }
      return false;
    }
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

// Receives until n bytes arrived or EOF, retrying after EINTR. Returns the
// number of bytes received (less than n only at EOF), or -1 with errno set on
// an error.
inline ssize_t recv_full(int fd, void* buf, size_t n) {
  auto* p = static_cast<char*>(buf);
  size_t got = 0;
  while (got < n) {
    ssize_t r = ::recv(fd, p + got, n - got, 0);
    if (r < 0) {
      if (errno == EINTR) {
        continue;
      }
      return -1;
    }
    if (r == 0) {
      break;
    }
    got += static_cast<size_t>(r);
  }
  return static_cast<ssize_t>(got);
}

// The endpoint options of the server/client programs (--addr, --port,
// --portfile); their option structs derive from it.
struct endpoint_options {
  std::string addr = "127.0.0.1";
  uint16_t port = 0;
  bool port_given = false;
  std::string portfile;
};

// argv[1] must be "server" or "client"; returns true for "server". `usage`
// is called otherwise and must not return.
template <typename Usage>
bool server_role(int argc, char** argv, Usage usage) {
  if (argc < 2) {
    usage("missing role");
    std::abort();
  }
  std::string role = argv[1];
  if (role != "server" && role != "client") {
    usage("role must be server or client");
    std::abort();
  }
  return role == "server";
}

// Walks argv[first..] as "--name [value]" options. `usage` is called with a
// reason when a value is missing or malformed; it must not return.
template <typename Usage>
class arg_reader {
 public:
  arg_reader(int argc, char** argv, int first, Usage usage)
      : argc_(argc), argv_(argv), i_(first - 1), usage_(usage) {}

  // Moves to the next option; false when there are no more.
  bool next() {
    if (++i_ >= argc_) {
      return false;
    }
    name_ = argv_[i_];
    return true;
  }

  const std::string& name() const { return name_; }

  // The option's value (the next argument, which is consumed).
  std::string value() {
    if (i_ + 1 >= argc_) {
      usage_("missing value for " + name_);
      std::abort();
    }
    return argv_[++i_];
  }

  // Takes --addr, --port (a size_value() up to 65535) or --portfile into
  // `e`; false when the current option is none of them.
  bool endpoint_option(endpoint_options& e, const char* bad) {
    if (name_ == "--addr") {
      e.addr = value();
    } else if (name_ == "--port") {
      uint64_t p = size_value(bad);
      if (p > 65535) {
        usage_("bad --port");
        std::abort();
      }
      e.port = static_cast<uint16_t>(p);
      e.port_given = true;
    } else if (name_ == "--portfile") {
      e.portfile = value();
    } else {
      return false;
    }
    return true;
  }

  // Passes over the option's value, if there is one.
  void skip_value() {
    if (i_ + 1 < argc_) {
      ++i_;
    }
  }

  // The option's value as a parse_size() number; a malformed one is reported
  // as `bad` + name + ": " + value.
  uint64_t size_value(const char* bad) {
    std::string v = value();
    auto n = parse_size(v);
    if (!n) {
      usage_(bad + name_ + ": " + v);
      std::abort();
    }
    return *n;
  }

 private:
  int argc_;
  char** argv_;
  int i_;
  Usage usage_;
  std::string name_;
};

// ---------------------------------------------------------------- time, watchdog, modes

// CLOCK_MONOTONIC in milliseconds.
inline int64_t now_ms() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

// After `seconds`, whatever hangs, the process ends (exit 1) with
// "<prog>: FAIL watchdog: still running at --timeout" on stderr.
inline void arm_watchdog(const char* prog, unsigned seconds) {
  static char msg[128];
  std::snprintf(msg, sizeof msg, "%s: FAIL watchdog: still running at --timeout\n", prog);
  struct sigaction sa {};
  sa.sa_handler = [](int) {
    ssize_t ignored = ::write(2, msg, std::strlen(msg));
    (void)ignored;
    _exit(1);
  };
  ::sigaction(SIGALRM, &sa, nullptr);
  ::alarm(seconds);
}

// Sets O_NONBLOCK; false (errno) on failure.
// close(2) by the system call instruction, past every interposer (the
// preload cannot see it; Go-style raw system calls do the same). Elsewhere
// than x86-64: syscall(SYS_close), which it can.
inline long close_unseen(int fd) {
#if defined(__x86_64__)
  long r;
  asm volatile("syscall" : "=a"(r) : "a"(static_cast<long>(SYS_close)), "D"(static_cast<long>(fd))
               : "rcx", "r11", "memory");
  return r;
#else
  return ::syscall(SYS_close, fd);
#endif
}

inline bool set_nonblocking(int fd) {
  int fl = ::fcntl(fd, F_GETFL);
  return fl >= 0 && ::fcntl(fd, F_SETFL, fl | O_NONBLOCK) == 0;
}

// ---------------------------------------------------------------- reproducible byte streams

inline uint64_t splitmix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Bytes [off, off + n) of the stream named by `key`.
inline void pattern_fill(uint64_t key, uint64_t off, uint8_t* p, size_t n) {
  while (n > 0) {
    uint64_t w = splitmix(key ^ (off >> 3));
    unsigned b = off & 7;
    size_t k = std::min<size_t>(n, 8 - b);
    for (size_t i = 0; i < k; ++i) {
      p[i] = static_cast<uint8_t>(w >> ((b + i) * 8));
    }
    p += k;
    off += k;
    n -= k;
  }
}

// The stream offset of the first byte of p[0..n) (which holds the stream
// from offset `off`) that differs from what fill(off, buf, n) writes, or -1.
template <class Fill>
int64_t first_mismatch(const Fill& fill, uint64_t off, const uint8_t* p, size_t n) {
  uint8_t tmp[4096];
  for (size_t done = 0; done < n;) {
    size_t k = std::min(n - done, sizeof tmp);
    fill(off + done, tmp, k);
    if (std::memcmp(tmp, p + done, k) != 0) {
      for (size_t i = 0; i < k; ++i) {
        if (tmp[i] != p[done + i]) {
          return static_cast<int64_t>(off + done + i);
        }
      }
    }
    done += k;
  }
  return -1;
}

}  // namespace smc_test
