// smc_fork: an established connection across fork(). Plain POSIX; run under
// the preload.
//
//   smc_fork server [--addr A] [--portfile F] [--count N] [--exec-listener]
//                                  echo server, one thread per connection;
//                                  exits 0 after N connections ended (0: never);
//                                  --exec-listener: after listen() it exec()s
//                                  itself and the new image accepts on the
//                                  inherited socket (socket activation, a
//                                  server re-executing itself)
//   smc_fork server ... --exec-conn  inetd style: accepts each connection
//                                  without reading, forks, and the child
//                                  exec()s `smc_fork server --serve-fd N`,
//                                  which echoes over the inherited socket
//   smc_fork client --addr A --port P
//                   [--child-expect reset|untouched|exec-reset|spawn-reset|closefrom]
//
// The client opens connection 1 and echoes 1 MiB over it (verified), then
// forks. The child, with its inherited copy of connection 1:
//   reset: a non-blocking read must fail with ECONNRESET at once, and poll
//          report the error (SMC-R: the QP and buffers are the parent's),
//   untouched: leaves it alone (shm: it would work, for one process at a time),
//   exec-reset: exec()s smc_fork again, and that new image must find the
//          connection reset (its buffers stayed in the image before exec),
//   spawn-reset: (no fork) the client posix_spawn()s smc_fork with connection
//          1 dup()ed onto fd 100, where the new program must find it reset,
//   closefrom: closes every fd from connection 1's up with closefrom(), as a
//          child does before exec; a pipe made next gets that number and must
//          work as a pipe, and the child exits there,
// then closes that copy, opens connection 2 of its own and echoes 1 MiB over
// it. After the child exited 0, the parent echoes 1 MiB more over connection
// 1 (the child's close must not have touched it) and 256 KiB over a new
// connection 3. Exit 0 with one "ok" line, or 1 with the reason on stderr.
#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "test/integration/net_util.h"

namespace {

[[noreturn]] void die(const std::string& why) {
  std::fprintf(stderr, "smc_fork: FAIL %s\n", why.c_str());
  std::exit(1);
}

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr,
               "smc_fork: %s\n"
               "usage: smc_fork server [--addr A] [--portfile F] [--count N] [--exec-listener|--exec-conn]\n"
               "       smc_fork client --addr A --port P "
               "[--child-expect reset|untouched|exec-reset|spawn-reset|closefrom]\n",
               why.c_str());
  std::exit(2);
}

void echo_conn(int fd) {
  std::vector<char> buf(65536);
  for (;;) {
    ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
    if (n <= 0 || !smc_test::send_all(fd, buf.data(), static_cast<size_t>(n))) {
      break;
    }
  }
  ::close(fd);
}

// inetd style: the parent never touches a connection; a child exec()s the
// handler on it.
int serve_inetd(int ls, uint64_t count) {
  std::vector<pid_t> kids;
  while (kids.size() < count) {
    int fd = ::accept(ls, nullptr, nullptr);
    if (fd < 0) {
      if (errno == EINTR) {
        continue;
      }
      die(std::string("accept: ") + std::strerror(errno));
    }
    pid_t pid = ::fork();
    if (pid < 0) {
      die(std::string("fork: ") + std::strerror(errno));
    }
    if (pid == 0) {
      ::close(ls);
      std::string n = std::to_string(fd);
      ::execl("/proc/self/exe", "smc_fork", "server", "--serve-fd", n.c_str(),
              static_cast<char*>(nullptr));
      std::fprintf(stderr, "smc_fork: FAIL exec: %s\n", std::strerror(errno));
      _exit(1);
    }
    ::close(fd);
    kids.push_back(pid);
  }
  for (pid_t k : kids) {
    int st = 0;
    if (::waitpid(k, &st, 0) != k || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      die("a handler failed");
    }
  }
  std::printf("ok served %zu\n", kids.size());
  return 0;
}

int serve(const smc_test::endpoint_options& o, uint64_t count, bool exec_listener, bool exec_conn,
          int listen_fd) {
  int ls = listen_fd;
  if (ls < 0) {
    sockaddr_storage ss;
    socklen_t len;
    std::string error;
    ls = smc_test::open_tcp_socket(o.addr, o.port, ss, len, error);
    if (ls < 0) {
      die(error);
    }
    int one = 1;
    ::setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(ls, reinterpret_cast<sockaddr*>(&ss), len) != 0 || ::listen(ls, 16) != 0) {
      die(std::string("bind/listen: ") + std::strerror(errno));
    }
    if (exec_listener) {
      // The new image learns the fd number from its arguments; the
      // portfile is written there, once it can accept.
      std::string fd = std::to_string(ls);
      std::string n = std::to_string(count);
      std::vector<const char*> argv = {"smc_fork", "server", "--listen-fd", fd.c_str(),
                                       "--count", n.c_str()};
      if (!o.portfile.empty()) {
        argv.push_back("--portfile");
        argv.push_back(o.portfile.c_str());
      }
      argv.push_back(nullptr);
      if (::fcntl(ls, F_SETFD, 0) != 0) {  // inherited: no FD_CLOEXEC
        die(std::string("fcntl: ") + std::strerror(errno));
      }
      ::execv("/proc/self/exe", const_cast<char* const*>(argv.data()));
      die(std::string("exec: ") + std::strerror(errno));
    }
  }
  if (!o.portfile.empty() && smc_test::write_portfile(o.portfile, static_cast<uint16_t>(
                                                                      smc_test::bound_port(ls))) != nullptr) {
    die("portfile");
  }
  if (exec_conn) {
    return serve_inetd(ls, count);
  }
  std::vector<std::thread> threads;
  while (count == 0 || threads.size() < count) {
    int fd = ::accept(ls, nullptr, nullptr);
    if (fd >= 0) {
      threads.emplace_back(echo_conn, fd);
    } else if (errno != EINTR) {
      die(std::string("accept: ") + std::strerror(errno));
    }
  }
  for (auto& t : threads) {
    t.join();
  }
  std::printf("ok served %zu\n", threads.size());
  return 0;
}

int dial(const smc_test::endpoint_options& o) {
  std::string error;
  int fd = smc_test::dial(o.addr, o.port, error);
  if (fd < 0) {
    die(error);
  }
  return fd;
}

// Sends `total` pattern bytes in 16 KiB pieces and reads each piece back.
void echo_check(int fd, size_t total, unsigned seed, const char* what) {
  std::vector<char> out(16384), in(16384);
  for (size_t done = 0; done < total; done += out.size()) {
    for (size_t i = 0; i < out.size(); ++i) {
      out[i] = static_cast<char>((done + i) * 131 + seed * 7 + (i >> 8));
    }
    if (!smc_test::send_all(fd, out.data(), out.size())) {
      die(std::string(what) + ": send: " + std::strerror(errno));
    }
    ssize_t got = smc_test::recv_full(fd, in.data(), in.size());
    if (got != static_cast<ssize_t>(in.size())) {
      die(std::string(what) + ": recv: " + (got < 0 ? std::strerror(errno) : "early EOF"));
    }
    if (in != out) {
      die(std::string(what) + ": echoed data differs");
    }
  }
}

// The child's part: with `check_reset`, the inherited connection 1 must read
// as reset; then it closes that copy and echoes over a connection of its own.
[[noreturn]] void child_part(const smc_test::endpoint_options& o, int c1, bool check_reset) {
  if (check_reset) {
    char b;
    ssize_t n = ::recv(c1, &b, 1, MSG_DONTWAIT);
    if (n != -1 || errno != ECONNRESET) {
      die("child: read on the inherited connection gave " + std::to_string(n) + " (" +
          std::strerror(errno) + "), want ECONNRESET");
    }
    pollfd p{c1, POLLIN | POLLOUT, 0};
    if (::poll(&p, 1, 0) != 1 || (p.revents & (POLLERR | POLLHUP)) == 0) {
      die("child: poll on the inherited connection does not report the error");
    }
  }
  ::close(c1);  // must not end the parent's connection
  int c2 = dial(o);
  echo_check(c2, 1 << 20, 3, "child on connection 2");
  ::close(c2);
  std::exit(0);  // not _exit: the library writes the child's statistics at exit
}

int client(const smc_test::endpoint_options& o, const std::string& expect) {
  int c1 = dial(o);
  echo_check(c1, 1 << 20, 1, "connection 1");
  std::fflush(nullptr);
  pid_t pid = -1;
  if (expect == "spawn-reset") {
    // A program started by posix_spawn (no fork() of ours: glibc clones
    // and execs inside), the connection passed by its file actions.
    constexpr int child_fd = 100;
    std::string port = std::to_string(o.port);
    std::string fd = std::to_string(child_fd);
    const char* argv[] = {"smc_fork", "client", "--addr", o.addr.c_str(), "--port", port.c_str(),
                          "--inherited-fd", fd.c_str(), nullptr};
    posix_spawn_file_actions_t fa;
    if (::posix_spawn_file_actions_init(&fa) != 0 ||
        ::posix_spawn_file_actions_adddup2(&fa, c1, child_fd) != 0) {
      die("posix_spawn_file_actions");
    }
    const int rc = ::posix_spawn(&pid, "/proc/self/exe", &fa, nullptr,
                                 const_cast<char* const*>(argv), environ);
    ::posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
      die(std::string("posix_spawn: ") + std::strerror(rc));
    }
  } else {
    pid = ::fork();
  }
  if (pid < 0) {
    die(std::string("fork: ") + std::strerror(errno));
  }
  if (pid == 0) {
    if (expect == "exec-reset") {
      // A new program image on the inherited connection: its buffers stayed
      // behind, so it must read as reset there too (never hang).
      std::string fd = std::to_string(c1);
      std::string port = std::to_string(o.port);
      if (::fcntl(c1, F_SETFD, 0) != 0) {
        die(std::string("fcntl: ") + std::strerror(errno));
      }
      ::execl("/proc/self/exe", "smc_fork", "client", "--addr", o.addr.c_str(), "--port",
              port.c_str(), "--inherited-fd", fd.c_str(), static_cast<char*>(nullptr));
      die(std::string("exec: ") + std::strerror(errno));
    }
    if (expect == "closefrom") {
      // The library's own fds (above the soft limit) go too: the child
      // makes no further connection, and leaves without its exit handlers.
      ::closefrom(c1);
      int p[2];
      if (::pipe(p) != 0) {
        die(std::string("child: pipe: ") + std::strerror(errno));
      }
      if (p[0] != c1) {
        die("child: the pipe did not get connection 1's number (test setup)");
      }
      const char msg[] = "pipe-after-closefrom";
      char back[sizeof msg] = {};
      if (::write(p[1], msg, sizeof msg) != static_cast<ssize_t>(sizeof msg) ||
          ::read(p[0], back, sizeof back) != static_cast<ssize_t>(sizeof msg) ||
          std::memcmp(msg, back, sizeof msg) != 0) {
        die("child: the pipe on connection 1's number after closefrom() does not work as a pipe");
      }
      ::_exit(0);
    }
    child_part(o, c1, expect == "reset");
  }
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    die("the child failed (status " + std::to_string(status) + ")");
  }
  echo_check(c1, 1 << 20, 4, "parent on connection 1 after the child");
  int c3 = dial(o);
  echo_check(c3, 1 << 18, 5, "parent on connection 3");
  ::close(c3);
  ::close(c1);
  std::printf("ok child-expect=%s\n", expect.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  bool server = smc_test::server_role(argc, argv, usage);
  smc_test::endpoint_options o;
  std::string expect = "reset";
  uint64_t count = 0;
  bool exec_listener = false;
  bool exec_conn = false;
  int listen_fd = -1;
  int serve_fd = -1;
  int inherited_fd = -1;
  smc_test::arg_reader args(argc, argv, 2, usage);
  while (args.next()) {
    if (args.endpoint_option(o, "bad value for ")) {
      continue;
    }
    if (args.name() == "--count") {
      count = args.size_value("bad value for ");
    } else if (args.name() == "--exec-listener" && server) {
      exec_listener = true;
    } else if (args.name() == "--exec-conn" && server) {
      exec_conn = true;
    } else if (args.name() == "--serve-fd" && server) {
      serve_fd = static_cast<int>(args.size_value("bad value for "));
    } else if (args.name() == "--listen-fd" && server) {
      listen_fd = static_cast<int>(args.size_value("bad value for "));
    } else if (args.name() == "--inherited-fd" && !server) {
      inherited_fd = static_cast<int>(args.size_value("bad value for "));
    } else if (args.name() == "--child-expect") {
      expect = args.value();
      if (expect != "reset" && expect != "untouched" && expect != "exec-reset" &&
          expect != "spawn-reset" && expect != "closefrom") {
        usage("--child-expect must be reset, untouched, exec-reset, spawn-reset or closefrom");
      }
    } else {
      usage("unknown option " + args.name());
    }
  }
  if (server) {
    if (serve_fd >= 0) {
      echo_conn(serve_fd);  // the exec()d handler of --exec-conn
      return 0;
    }
    return serve(o, count, exec_listener, exec_conn, listen_fd);
  }
  if (!o.port_given) {
    usage("client needs --port");
  }
  if (inherited_fd >= 0) {
    child_part(o, inherited_fd, true);  // the exec()d child of --child-expect exec-reset
  }
  return client(o, expect);
}
