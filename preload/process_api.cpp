// Process-level hooks: fork(), pidfd_getfd(), and what happens at exit.
// glibc 2.36's header declares it without C linkage.
extern "C" {
#include <sys/pidfd.h>
}
#include <sys/syscall.h>
#include <unistd.h>

#include "core/handoff.h"
#include "core/log.h"
#include "core/stats.h"
#include "preload/preload.h"

namespace smc::preload {

void write_stats_at_exit() {
  if (g_init_state.load() != 2 || !g_enabled) {
    return;
  }
  // An acceptor that passed its last connections and exits: their receivers
  // are about to take them over (bounded: a receiver that never comes does
  // not hold the exit for longer).
  core::handoff::wait_pending(2000);
  const std::string& path = cfg().stats_file;
  if (!path.empty()) {
    int saved = errno;
    if (!core::stats::write_file(path, static_cast<int>(getpid()))) {
      SMC_LOG(warn, "cannot write stats file %s", path.c_str());
    }
    errno = saved;
  }
  core::log::flush();
}

}  // namespace smc::preload

extern "C" {

// fork() itself needs nothing beyond the pthread_atfork handlers registered at
// init (locks made consistent, the child's counters reset); it is interposed
// so that the library is initialised before a child can exist.
__attribute__((visibility("default"))) pid_t fork() {
  smc::preload::ensure_init();
  return smc::preload::real.fork();
}

// Another process's fd, taken: a socket of ours to know, as one received in
// an SCM_RIGHTS message (the other process did not offer an SMC connection
// it holds, so such a one reads as reset here).
__attribute__((visibility("default"))) int pidfd_getfd(int pidfd, int targetfd,
                                                       unsigned int flags) noexcept {
  smc::preload::ensure_init();
  int fd = static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd, targetfd, flags));
  if (fd >= 0 && smc::preload::g_enabled) {
    int saved = errno;
    try {
      smc::preload::fd_fresh(fd);
      smc::preload::adopt_socket(fd, true);
    } catch (...) {
    }
    errno = saved;
  }
  return fd;
}

}  // extern "C"
