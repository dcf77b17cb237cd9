// Unit tests for where the library's own fds go (rdma::place_fd): at or
// above the soft RLIMIT_NOFILE, which is raised only for the move and
// restored, so the application keeps every number below its limit. Each
// case runs in a forked child: it lowers the child's soft limit.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <vector>

#include "rdma/sys.h"

namespace {

constexpr rlim_t soft = 64;

// Runs `body` in a child whose soft RLIMIT_NOFILE is `soft`; returns what
// body returned there (0: every check held; else the failed check's number).
template <class Body>
int in_child(Body body) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    rlimit rl{};
    if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) {
      ::_exit(100);
    }
    rl.rlim_cur = soft;
    if (::setrlimit(RLIMIT_NOFILE, &rl) != 0) {
      ::_exit(101);
    }
    ::_exit(body());
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  return WEXITSTATUS(status);
}

rlim_t soft_now() {
  rlimit rl{};
  return ::getrlimit(RLIMIT_NOFILE, &rl) == 0 ? rl.rlim_cur : 0;
}

}  // namespace

TEST_CASE("place_fd: our fd goes above the soft limit, which stays as it was", "[fds]") {
  rlimit rl{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &rl) == 0);
  REQUIRE(rl.rlim_max >= 4 * soft);  // room above the soft limit the child sets
  const int rc = in_child([] {
    const int e = ::eventfd(0, EFD_CLOEXEC);
    if (e < 0 || static_cast<rlim_t>(e) >= soft) {
      return 1;
    }
    const int h = smc::rdma::place_fd(e);
    if (h < 0 || static_cast<rlim_t>(h) < soft) {
      return 2;  // not above the limit
    }
    if (soft_now() != soft) {
      return 3;  // the limit was not restored
    }
    if (::fcntl(h, F_GETFD) != FD_CLOEXEC) {
      return 4;
    }
    // The number it had is the application's again: its next fd gets it.
    const int next = ::eventfd(0, EFD_CLOEXEC);
    if (next != e) {
      return 5;
    }
    // And the moved copy is the same eventfd.
    uint64_t v = 7;
    if (::write(h, &v, sizeof v) != sizeof v || ::read(h, &v, sizeof v) != sizeof v || v != 7) {
      return 6;
    }
    return 0;
  });
  CHECK(rc == 0);
}

TEST_CASE("recv_with_fds: fds that came with a message go above the soft limit", "[fds]") {
  const int rc = in_child([] {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
      return 1;
    }
    const int e = ::eventfd(0, EFD_CLOEXEC);
    const char msg = 'x';
    if (!smc::rdma::send_with_fds(sv[0], &msg, 1, &e, 1)) {
      return 2;
    }
    char got = 0;
    std::vector<int> fds;
    bool truncated = true;
    if (smc::rdma::recv_with_fds(sv[1], &got, 1, fds, truncated) != 1 || truncated || got != 'x') {
      return 3;
    }
    if (fds.size() != 1 || static_cast<rlim_t>(fds[0]) < soft) {
      return 4;
    }
    if (soft_now() != soft) {
      return 5;
    }
    return 0;
  });
  CHECK(rc == 0);
}

TEST_CASE("place_fds: many fds placed at once, above the soft limit, each its own", "[fds]") {
  rlimit rl{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &rl) == 0);
  REQUIRE(rl.rlim_max >= 4 * soft);
  const int rc = in_child([] {
    // More than one batch (16), with a hole (-1) passed through.
    constexpr int n = 21;
    int fds[n];
    int low[n];
    for (int i = 0; i < n; ++i) {
      fds[i] = i == 5 ? -1 : ::eventfd(static_cast<unsigned>(i), EFD_CLOEXEC | EFD_NONBLOCK);
      low[i] = fds[i];
      if (i != 5 && (fds[i] < 0 || static_cast<rlim_t>(fds[i]) >= soft)) {
        return 1;
      }
    }
    if (!smc::rdma::place_fds(fds, n)) {
      return 2;
    }
    if (soft_now() != soft) {
      return 3;  // the limit was not restored
    }
    for (int i = 0; i < n; ++i) {
      if (i == 5) {
        if (fds[i] != -1) {
          return 4;
        }
        continue;
      }
      if (static_cast<rlim_t>(fds[i]) < soft || ::fcntl(fds[i], F_GETFD) != FD_CLOEXEC) {
        return 5;
      }
      // The copy is the same eventfd (its counter says which), and the
      // number it had is closed (the application's again).
      uint64_t v = 0;
      if (::read(fds[i], &v, sizeof v) != (i == 0 ? -1 : static_cast<ssize_t>(sizeof v)) ||
          (i != 0 && v != static_cast<uint64_t>(i))) {
        return 6;
      }
      if (::fcntl(low[i], F_GETFD) != -1 || errno != EBADF) {
        return 7;
      }
    }
    return 0;
  });
  CHECK(rc == 0);
}
