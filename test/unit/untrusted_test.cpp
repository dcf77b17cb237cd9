// Unit tests for the fds a peer can reach (rdma/sys.h): a peer may pass any
// fd it likes over the unix sockets we share with it, or queue one on them.
// Releasing such an fd must never block the thread that does it: a TCP
// socket with unsent data to a reader that never reads, and SO_LINGER set,
// holds its last close for the linger time.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <future>
#include <vector>

#include "rdma/sys.h"

namespace {

// A TCP socket whose close would linger `secs`: data it cannot send (the
// accepted end, returned in `peer`, never reads and its buffer is full).
int lingering_socket(int& peer, int& listener, int secs) {
  listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(listener >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(listener, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  REQUIRE(::listen(listener, 1) == 0);
  socklen_t l = sizeof a;
  REQUIRE(::getsockname(listener, reinterpret_cast<sockaddr*>(&a), &l) == 0);
  const int c = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(::connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  peer = ::accept(listener, nullptr, nullptr);
  REQUIRE(peer >= 0);
  const int small = 4096;
  ::setsockopt(peer, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  ::setsockopt(c, SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
  REQUIRE(::fcntl(c, F_SETFL, O_NONBLOCK) == 0);
  std::vector<char> junk(1 << 16, 'j');
  while (::send(c, junk.data(), junk.size(), MSG_NOSIGNAL) > 0) {
  }
  const linger lg{1, secs};
  REQUIRE(::setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0);
  REQUIRE(::fcntl(c, F_SETFL, 0) == 0);  // a blocking close waits out the linger
  return c;
}

bool send_fd(int sock, int fd) {
  const char one = 1;
  return smc::rdma::send_with_fds(sock, &one, 1, &fd, 1);
}

// What the peer of a reset TCP connection reads.
int read_error(int fd) {
  pollfd p{fd, POLLIN, 0};
  REQUIRE(::poll(&p, 1, 10000) == 1);
  char b[64];
  ssize_t n;
  while ((n = ::recv(fd, b, sizeof b, MSG_DONTWAIT)) > 0) {
  }
  return n < 0 ? errno : 0;
}

}  // namespace

TEST_CASE("close_untrusted: a unix socket carrying a lingering TCP socket closes at once",
          "[untrusted]") {
  int peer = -1;
  int ls = -1;
  const int lingering = lingering_socket(peer, ls, 60);
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0);
  REQUIRE(send_fd(sv[0], lingering));  // queued on sv[1]
  ::close(lingering);                  // the queued copy is the last one now
  ::close(sv[0]);
  // Closing sv[1] releases the queued socket: with its linger, 60 s.
  auto done = std::async(std::launch::async, [&] { smc::rdma::close_untrusted(sv[1]); });
  REQUIRE(done.wait_for(std::chrono::seconds(20)) == std::future_status::ready);
  // It went without its linger: the reader sees the reset, not a FIN after a wait.
  CHECK(read_error(peer) == ECONNRESET);
  ::close(peer);
  ::close(ls);
}

TEST_CASE("drain_untrusted takes every queued message and closes the fds that came with it",
          "[untrusted]") {
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0);
  int p[3][2];
  for (auto& pp : p) {
    REQUIRE(::pipe(pp) == 0);
    REQUIRE(send_fd(sv[0], pp[0]));
    ::close(pp[0]);  // the queued read end is the last one
  }
  REQUIRE(::send(sv[0], "x", 1, 0) == 1);  // and one without
  CHECK(smc::rdma::drain_untrusted(sv[1], 100) == 4);
  CHECK(smc::rdma::drain_untrusted(sv[1], 100) == 0);
  struct sigaction ign {}, old {};
  ign.sa_handler = SIG_IGN;
  ::sigaction(SIGPIPE, &ign, &old);
  for (auto& pp : p) {
    // The read end is gone: the writer sees EPIPE.
    CHECK(::write(pp[1], "y", 1) == -1);
    CHECK(errno == EPIPE);
    ::close(pp[1]);
  }
  ::sigaction(SIGPIPE, &old, nullptr);
  ::close(sv[0]);
  ::close(sv[1]);
}

TEST_CASE("refuse_passed_fds: fds sent to the socket are turned away, plain messages are not",
          "[untrusted]") {
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0);
  const bool refused = smc::rdma::refuse_passed_fds(sv[1]);
  INFO("SO_PASSRIGHTS " << (refused ? "supported" : "not supported by this kernel"));
  int pp[2];
  REQUIRE(::pipe(pp) == 0);
  if (refused) {
    CHECK_FALSE(send_fd(sv[0], pp[0]));
    CHECK(errno == EPERM);
  } else {
    // Without the option the fd is queued; drain_untrusted takes it.
    CHECK(send_fd(sv[0], pp[0]));
    CHECK(smc::rdma::drain_untrusted(sv[1], 10) == 1);
  }
  CHECK(::send(sv[0], "r", 1, 0) == 1);
  char c = 0;
  CHECK(::recv(sv[1], &c, 1, MSG_DONTWAIT) == 1);
  CHECK(c == 'r');
  for (int fd : {pp[0], pp[1], sv[0], sv[1]}) {
    ::close(fd);
  }
}
