// Processes that restrict themselves: a seccomp filter (sshd's pre-auth
// child, browsers, services that sandbox after start-up), a small
// RLIMIT_NOFILE (sshd sets 1: a poll() may then watch one fd). The library's
// own system calls for a connection must stay within what the application
// can still do, so the calls that install a restriction are interposed, and
// right before the restriction takes effect the process is confined:
//  - its SMC connections carry on confined (core::conn::confine): no fcntl,
//    getsockopt or recv of ours any more, waits poll one fd (the
//    connection's waiter, made here while fds can still be made);
//  - sockets still deciding settle now, or stay TCP;
//  - new connections stay TCP (fallback reason "sandboxed"): making one
//    takes calls (memfd_create, eventfd, a unix socket, peeking at the
//    stream) that such a process may no longer make.
// chroot() needs no confinement, only the host identity read before it.
// A filter installed before the program started (systemd's
// SystemCallFilter=, a container runtime's profile) cannot be seen; the
// library assumes it permits what networking needs.
#include <dlfcn.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <vector>

#include "core/host_id.h"
#include "core/log.h"
#include "preload/preload.h"
#include "rdma/sys.h"

namespace smc::preload {

std::atomic<bool> g_confined{false};

namespace {

// Below this many fds, our poll sets (a doorbell and the TCP socket per SMC
// connection, next to the application's own fds) may not fit any more.
constexpr rlim_t low_nofile = 64;

std::mutex g_confine_mu;

void confine_process(const char* why) {
  if (!g_enabled) {
    return;
  }
  std::lock_guard<std::mutex> lk(g_confine_mu);
  if (g_confined.load()) {
    return;
  }
  const int saved = errno;
  try {
    std::vector<std::pair<int, entry*>> list;
    fd_for_each([&](int fd, entry* e) {
      e->refs.fetch_add(1);
      list.emplace_back(fd, e);
    });
    size_t smc = 0;
    size_t waiters = 0;
    for (auto& [fd, e] : list) {
      state s = e->st.load();
      if (still_deciding(s)) {
        settle_before_confinement(e, fd);
        s = e->st.load();
      }
      if (s == state::smc && e->conn) {
        ++smc;
        waiters += e->conn->confine() ? 1 : 0;
      } else if (s == state::epoll) {
        ep_confine(e);
      }
      fd_put(e);
    }
    // Connections no fd of ours names (held by an offer to another process).
    core::for_each_conn([](core::conn& c) { c.confine(); });
    g_confined.store(true);
    SMC_LOG(info, "the process confines itself (%s): %zu SMC connections carry on confined "
                  "(%zu with a waiter), new connections stay TCP; logging stops here",
            why, smc, waiters);
  } catch (...) {
    g_confined.store(true);
  }
  core::log::stop();
  errno = saved;
}

void before_limit(int res, const rlimit* rl) {
  if (rl == nullptr) {
    return;
  }
  if (res == RLIMIT_NOFILE && rl->rlim_cur < low_nofile) {
    char why[64];
    std::snprintf(why, sizeof(why), "RLIMIT_NOFILE %llu",
                  static_cast<unsigned long long>(rl->rlim_cur));
    confine_process(why);
  } else if (res == RLIMIT_FSIZE && rl->rlim_cur == 0) {
    // Writing a log line to a file would raise SIGXFSZ, which kills.
    SMC_LOG(info, "RLIMIT_FSIZE 0: logging stops here");
    core::log::stop();
  }
}

// The real call of an application's getrlimit/setrlimit/prlimit. A change
// of RLIMIT_NOFILE waits for a placement of one of our fds under way
// (rdma::place_fd raises and restores the soft limit around it), so the
// restore cannot undo it, and a read waits too, so it never sees the
// raised value. Not instrumented: ASan's own start-up sets limits before
// it can run instrumented code.
template <class Fn, class... Args>
__attribute__((no_sanitize_address)) int limit_call(bool nofile, Fn fn, Args... args) {
  if (!nofile) {
    return fn(args...);
  }
  rdma::nofile_lock();
  const int rc = fn(args...);
  const int saved = errno;
  rdma::nofile_unlock();
  errno = saved;
  return rc;
}

void before_limit64(int res, const rlimit64* rl) {
  if (rl != nullptr) {
    rlimit r{static_cast<rlim_t>(rl->rlim_cur), static_cast<rlim_t>(rl->rlim_max)};
    before_limit(res, &r);
  }
}

}  // namespace

}  // namespace smc::preload

using namespace smc::preload;

namespace {

// These are called by the sanitizer runtimes and other libraries very
// early (AddressSanitizer sets RLIMIT_CORE while it starts, before its
// shadow memory exists): the paths that only pass a call on touch nothing
// instrumented and need no initialisation of ours.
template <class F>
__attribute__((no_sanitize_address)) F next_fn(F known, const char* name) {
  return known != nullptr ? known : reinterpret_cast<F>(dlsym(RTLD_NEXT, name));
}

}  // namespace

extern "C" {

__attribute__((visibility("default"), no_sanitize_address)) int prctl(int option, ...) {
  va_list ap;
  va_start(ap, option);
  unsigned long a2 = va_arg(ap, unsigned long);
  unsigned long a3 = va_arg(ap, unsigned long);
  unsigned long a4 = va_arg(ap, unsigned long);
  unsigned long a5 = va_arg(ap, unsigned long);
  va_end(ap);
  if (option == PR_SET_SECCOMP) {
    ensure_init();
    confine_process(a2 == SECCOMP_MODE_STRICT ? "seccomp strict mode" : "a seccomp filter");
  }
  return next_fn(real.prctl, "prctl")(option, a2, a3, a4, a5);
}

// libseccomp and others install filters through syscall(SYS_seccomp, ...);
// libuv (node) closes every fd with syscall(SYS_close, fd), past close():
// what we recorded for the number must go with it, as close() lets it go
// (otherwise the next pipe, file or eventfd on that number would be served
// as the closed socket).
__attribute__((visibility("default"), no_sanitize_address)) long syscall(long number, ...) {
  va_list ap;
  va_start(ap, number);
  long a1 = va_arg(ap, long);
  long a2 = va_arg(ap, long);
  long a3 = va_arg(ap, long);
  long a4 = va_arg(ap, long);
  long a5 = va_arg(ap, long);
  long a6 = va_arg(ap, long);
  va_end(ap);
  if (number == SYS_seccomp &&
      (a1 == SECCOMP_SET_MODE_FILTER || a1 == SECCOMP_SET_MODE_STRICT)) {
    ensure_init();
    confine_process(a1 == SECCOMP_SET_MODE_STRICT ? "seccomp strict mode" : "a seccomp filter");
  }
  if (number == SYS_close || number == SYS_close_range) {
    // No ensure_init() here: jemalloc closes with syscall(SYS_close) while
    // it initialises under its own lock, which ours would need (a
    // deadlock). Before our init nothing is recorded anyway.
    const bool one = number == SYS_close;
    forget_closed(static_cast<unsigned>(a1), static_cast<unsigned>(one ? a1 : a2),
                  one ? 0 : static_cast<int>(a3));
  }
  return next_fn(real.syscall, "syscall")(number, a1, a2, a3, a4, a5, a6);
}

__attribute__((visibility("default"), no_sanitize_address)) int getrlimit(__rlimit_resource_t res,
                                                                          rlimit* rl) {
  return limit_call(res == RLIMIT_NOFILE, next_fn(real.getrlimit, "getrlimit"), res, rl);
}

__attribute__((visibility("default"), no_sanitize_address)) int getrlimit64(
    __rlimit_resource_t res, rlimit64* rl) {
  return limit_call(res == RLIMIT_NOFILE, next_fn(real.getrlimit64, "getrlimit64"), res, rl);
}

__attribute__((visibility("default"), no_sanitize_address)) int setrlimit(__rlimit_resource_t res,
                                                                          const rlimit* rl) {
  if (res == RLIMIT_NOFILE || res == RLIMIT_FSIZE) {
    ensure_init();
    before_limit(res, rl);
  }
  return limit_call(res == RLIMIT_NOFILE, next_fn(real.setrlimit, "setrlimit"), res, rl);
}

__attribute__((visibility("default"), no_sanitize_address)) int setrlimit64(
    __rlimit_resource_t res, const rlimit64* rl) {
  if (res == RLIMIT_NOFILE || res == RLIMIT_FSIZE) {
    ensure_init();
    before_limit64(res, rl);
  }
  return limit_call(res == RLIMIT_NOFILE, next_fn(real.setrlimit64, "setrlimit64"), res, rl);
}

__attribute__((visibility("default"), no_sanitize_address)) int prlimit(
    pid_t pid, enum __rlimit_resource res, const rlimit* rl, rlimit* old) {
  if ((res == RLIMIT_NOFILE || res == RLIMIT_FSIZE) && (pid == 0 || pid == getpid())) {
    ensure_init();
    before_limit(res, rl);
  }
  return limit_call(res == RLIMIT_NOFILE && (pid == 0 || pid == getpid()),
                    next_fn(real.prlimit, "prlimit"), pid, res, rl, old);
}

__attribute__((visibility("default"), no_sanitize_address)) int prlimit64(
    pid_t pid, enum __rlimit_resource res, const rlimit64* rl, rlimit64* old) {
  if ((res == RLIMIT_NOFILE || res == RLIMIT_FSIZE) && (pid == 0 || pid == getpid())) {
    ensure_init();
    before_limit64(res, rl);
  }
  return limit_call(res == RLIMIT_NOFILE && (pid == 0 || pid == getpid()),
                    next_fn(real.prlimit64, "prlimit64"), pid, res, rl, old);
}

// After chroot() the host's identity (boot id, network namespace: read from
// /proc) may be out of reach: read it before, so same-host peers still know
// each other.
__attribute__((visibility("default"))) int chroot(const char* path) {
  ensure_init();
  if (g_enabled) {
    int saved = errno;
    smc::core::host_id();
    errno = saved;
  }
  return real.chroot(path);
}

}  // extern "C"
