// smc_cycles: many short connections, for resource-leak and link-group tests.
//
//   smc_cycles server --addr A [--port P] --portfile F --count N [--hold-file H]
//       Serves N connections one after another: reads 8 bytes, echoes them,
//       reads to EOF, closes. Then, with --hold-file, creates H and waits
//       (at most 120 s) until it is removed, so a test can inspect the
//       still-running process.
//   smc_cycles client --addr A --port P --count N [--parallel K] [--hold-file H]
//       N connections, each exchanging 8 bytes; with --parallel K they are
//       opened K at a time and all held open before any is closed (with
//       --hold-file: H is created while the K are open and the client waits
//       for its removal).
// Prints "ok role=... count=N" and exits 0, or one line on stderr and exit 1.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "test/integration/net_util.h"

namespace {

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "smc_cycles: FAIL %s: %s\n", what.c_str(), std::strerror(errno));
  std::exit(1);
}

// True when all n bytes arrived (false on an error or an early EOF).
bool recv_exact(int fd, void* buf, size_t n) { return smc_test::recv_full(fd, buf, n) == static_cast<ssize_t>(n); }

sockaddr_storage make_addr(const std::string& host, int port, socklen_t& len) {
  sockaddr_storage ss{};
  if (!smc_test::parse_addr(host, static_cast<uint16_t>(port), ss, len)) {
    errno = EINVAL;
    die("address " + host);
  }
  return ss;
}

void hold(const std::string& file) {
  if (file.empty()) {
    return;
  }
  FILE* f = std::fopen(file.c_str(), "w");
  if (f == nullptr) {
    die("create " + file);
  }
  std::fclose(f);
  // Waiting for the test to inspect us: bounded, so a broken test cannot hang.
  for (int i = 0; i < 12000; ++i) {
    struct stat st;
    if (::stat(file.c_str(), &st) != 0) {
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  errno = ETIMEDOUT;
  die("hold file never removed");
}

void exchange(int fd, uint64_t id) {
  uint64_t back = 0;
  if (!smc_test::send_all(fd, &id, sizeof(id)) || !recv_exact(fd, &back, sizeof(back))) {
    die("exchange on connection " + std::to_string(id));
  }
  if (back != id) {
    errno = EPROTO;
    die("echo mismatch on connection " + std::to_string(id));
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: smc_cycles server|client --addr A [--port P] [--portfile F] "
                         "--count N [--parallel K] [--hold-file H]\n");
    return 2;
  }
  std::string role = argv[1];
  std::string addr = "127.0.0.1";
  std::string portfile;
  std::string holdfile;
  int port = 0;
  long count = 1;
  long parallel = 1;
  for (int i = 2; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    std::string v = argv[i + 1];
    if (k == "--addr") {
      addr = v;
    } else if (k == "--port") {
      port = std::atoi(v.c_str());
    } else if (k == "--portfile") {
      portfile = v;
    } else if (k == "--count") {
      count = std::atol(v.c_str());
    } else if (k == "--parallel") {
      parallel = std::max(1L, std::atol(v.c_str()));
    } else if (k == "--hold-file") {
      holdfile = v;
    } else {
      std::fprintf(stderr, "smc_cycles: unknown option %s\n", k.c_str());
      return 2;
    }
  }
  socklen_t len = 0;
  sockaddr_storage sa = make_addr(addr, port, len);
  if (role == "server") {
    int ls = smc_test::tcp_socket(sa.ss_family);
    int one = 1;
    ::setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (ls < 0 || ::bind(ls, reinterpret_cast<sockaddr*>(&sa), len) != 0 || ::listen(ls, 128) != 0) {
      die("listen");
    }
    int p = smc_test::bound_port(ls);
    if (!portfile.empty() && smc_test::write_portfile(portfile, static_cast<uint16_t>(p)) != nullptr) {
      die("portfile");
    }
    // Each connection is answered as soon as it is accepted (a client's
    // connect() completes its SMC handshake only when the server reads), and
    // kept open until the batch of K is complete.
    long served = 0;
    std::vector<int> open;
    while (served < count) {
      int c = ::accept(ls, nullptr, nullptr);
      if (c < 0) {
        if (errno == EINTR) {
          continue;
        }
        die("accept");
      }
      uint64_t id = 0;
      if (!recv_exact(c, &id, sizeof(id)) || !smc_test::send_all(c, &id, sizeof(id))) {
        die("serve");
      }
      open.push_back(c);
      if (static_cast<long>(open.size()) < std::min(parallel, count - served)) {
        continue;
      }
      for (int fd : open) {
        char b;
        while (::recv(fd, &b, 1, 0) > 0) {
        }
        ::close(fd);
        ++served;
      }
      open.clear();
    }
    hold(holdfile);
    ::close(ls);
    std::printf("ok role=server count=%ld\n", served);
    return 0;
  }
  if (role != "client") {
    std::fprintf(stderr, "smc_cycles: role must be server or client\n");
    return 2;
  }
  long done = 0;
  while (done < count) {
    long k = std::min(parallel, count - done);
    std::vector<int> fds;
    for (long i = 0; i < k; ++i) {
      int fd = smc_test::tcp_socket(sa.ss_family);
      if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&sa), len) != 0) {
        die("connect " + std::to_string(done + i));
      }
      exchange(fd, static_cast<uint64_t>(done + i));
      fds.push_back(fd);
    }
    if (k > 1) {
      hold(holdfile);  // all K open at once
    }
    for (int fd : fds) {
      ::close(fd);
    }
    done += k;
  }
  std::printf("ok role=client count=%ld\n", done);
  return 0;
}
