// spdlog_app: an application that links its OWN spdlog/fmt (Debian's shared
// libspdlog), logs to stdout, and moves 1 MiB each way over a TCP connection
// to itself, verified. Run under `smc_run -d` it proves that the preload's
// hidden, header-only spdlog/fmt never clash with the application's copies:
// this program must exit 0 and its own log lines must appear on stdout.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr size_t payload_bytes = 1 << 20;

uint8_t pattern(size_t i, uint8_t salt) { return static_cast<uint8_t>((i * 131 + (i >> 9) + salt) & 0xFF); }

std::string errno_text(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

bool send_all(int fd, const uint8_t* p, size_t n, std::string& error) {
  while (n > 0) {
    ssize_t r = ::send(fd, p, std::min<size_t>(n, 70001), MSG_NOSIGNAL);  // odd-sized pieces
    if (r < 0) {
      if (errno == EINTR) {
        continue;
      }
      error = errno_text("send");
      return false;
    }
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

// Reads to EOF; the stream must be exactly payload_bytes of pattern(salt).
bool recv_verified(int fd, uint8_t salt, std::string& error) {
  std::vector<uint8_t> buf(65536);
  size_t got = 0;
  for (;;) {
    ssize_t r = ::recv(fd, buf.data(), buf.size(), 0);
    if (r < 0) {
      if (errno == EINTR) {
        continue;
      }
      error = errno_text("recv");
      return false;
    }
    if (r == 0) {
      break;
    }
    for (ssize_t k = 0; k < r; ++k) {
      if (got + static_cast<size_t>(k) >= payload_bytes || buf[static_cast<size_t>(k)] != pattern(got + static_cast<size_t>(k), salt)) {
        error = "mismatch or extra data at offset " + std::to_string(got + static_cast<size_t>(k));
        return false;
      }
    }
    got += static_cast<size_t>(r);
  }
  if (got != payload_bytes) {
    error = "EOF after " + std::to_string(got) + " of " + std::to_string(payload_bytes) + " bytes";
    return false;
  }
  return true;
}

std::vector<uint8_t> make_payload(uint8_t salt) {
  std::vector<uint8_t> v(payload_bytes);
  for (size_t i = 0; i < v.size(); ++i) {
    v[i] = pattern(i, salt);
  }
  return v;
}

int run() {
  auto log = spdlog::stdout_logger_mt("spdlog_app");
  log->set_pattern("[%H:%M:%S.%e] [%n] [%l] %v");
  log->set_level(spdlog::level::info);
  log->info("spdlog_app starting: spdlog {}.{}.{}, own logger on stdout", SPDLOG_VER_MAJOR, SPDLOG_VER_MINOR,
            SPDLOG_VER_PATCH);

  int lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sa.sin_port = 0;
  socklen_t sl = sizeof sa;
  if (lfd < 0 || ::bind(lfd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || ::listen(lfd, 4) != 0 ||
      ::getsockname(lfd, reinterpret_cast<sockaddr*>(&sa), &sl) != 0) {
    log->error("spdlog_app listener failed: {}", std::strerror(errno));
    return 1;
  }
  log->info("spdlog_app listening on 127.0.0.1:{}", ntohs(sa.sin_port));

  // Client thread: send 1 MiB, half-close, read the server's 1 MiB to EOF.
  std::string client_error;
  bool client_ok = false;
  std::thread client([&] {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
      client_error = errno_text("connect");
    } else {
      auto out = make_payload(1);
      client_ok = send_all(fd, out.data(), out.size(), client_error) && ::shutdown(fd, SHUT_WR) == 0 &&
                  recv_verified(fd, 2, client_error);
    }
    if (fd >= 0) {
      ::close(fd);
    }
  });

  bool server_ok = false;
  std::string server_error;
  int cfd;
  do {
    cfd = ::accept(lfd, nullptr, nullptr);
  } while (cfd < 0 && errno == EINTR);
  if (cfd < 0) {
    server_error = errno_text("accept");
  } else {
    log->info("spdlog_app accepted a connection");
    auto out = make_payload(2);
    server_ok = recv_verified(cfd, 1, server_error) && send_all(cfd, out.data(), out.size(), server_error);
    ::close(cfd);
  }
  client.join();
  ::close(lfd);

  if (!server_ok || !client_ok) {
    log->error("spdlog_app transfer failed: server: {} client: {}", server_ok ? "ok" : server_error,
               client_ok ? "ok" : client_error);
    return 1;
  }
  log->info("spdlog_app exchanged {} bytes each way, verified", payload_bytes);
  log->info("spdlog_app done");
  log->flush();
  spdlog::shutdown();
  return 0;
}

}  // namespace

int main() {
  try {
    ::signal(SIGPIPE, SIG_IGN);
    return run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "spdlog_app: FAIL exception: %s\n", e.what());
  } catch (...) {
    std::fprintf(stderr, "spdlog_app: FAIL unknown exception\n");
  }
  return 1;
}
