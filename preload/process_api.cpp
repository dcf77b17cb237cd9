// Process-level hooks: fork(), pidfd_getfd(), starting a program (exec,
// posix_spawn), and what happens at exit.
// glibc 2.36's header declares it without C linkage.
extern "C" {
#include <sys/pidfd.h>
}
#include <spawn.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <alloca.h>
#include <cstdarg>

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

// Starting a program: the connections this process holds may live on in
// it (an fd without FD_CLOEXEC, one a spawn's file actions dup): their
// sockets must carry our mark there (preload.h, mark_smc). The execl
// family takes its arguments as execv does (glibc's own call execve from
// inside, where no interposer sees it).
__attribute__((visibility("default"))) int execve(const char* path, char* const argv[],
                                                  char* const envp[]) {
  smc::preload::ensure_init();
  smc::preload::mark_for_exec();
  return smc::preload::real.execve(path, argv, envp);
}

__attribute__((visibility("default"))) int execv(const char* path, char* const argv[]) {
  smc::preload::ensure_init();
  smc::preload::mark_for_exec();
  return smc::preload::real.execv(path, argv);
}

__attribute__((visibility("default"))) int execvp(const char* file, char* const argv[]) {
  smc::preload::ensure_init();
  smc::preload::mark_for_exec();
  return smc::preload::real.execvp(file, argv);
}

__attribute__((visibility("default"))) int execvpe(const char* file, char* const argv[],
                                                   char* const envp[]) {
  smc::preload::ensure_init();
  smc::preload::mark_for_exec();
  return smc::preload::real.execvpe(file, argv, envp);
}

__attribute__((visibility("default"))) int fexecve(int fd, char* const argv[], char* const envp[]) {
  smc::preload::ensure_init();
  smc::preload::mark_for_exec();
  return smc::preload::real.fexecve(fd, argv, envp);
}

__attribute__((visibility("default"))) int execveat(int dirfd, const char* path, char* const argv[],
                                                    char* const envp[], int flags) {
  smc::preload::ensure_init();
  smc::preload::mark_for_exec();
  if (smc::preload::real.execveat == nullptr) {
    return static_cast<int>(::syscall(SYS_execveat, dirfd, path, argv, envp, flags));
  }
  return smc::preload::real.execveat(dirfd, path, argv, envp, flags);
}

__attribute__((visibility("default"))) int posix_spawn(pid_t* pid, const char* path,
                                                       const posix_spawn_file_actions_t* fa,
                                                       const posix_spawnattr_t* attr,
                                                       char* const argv[], char* const envp[]) {
  smc::preload::ensure_init();
  smc::preload::mark_for_exec();
  return smc::preload::real.posix_spawn(pid, path, fa, attr, argv, envp);
}

__attribute__((visibility("default"))) int posix_spawnp(pid_t* pid, const char* file,
                                                        const posix_spawn_file_actions_t* fa,
                                                        const posix_spawnattr_t* attr,
                                                        char* const argv[], char* const envp[]) {
  smc::preload::ensure_init();
  smc::preload::mark_for_exec();
  return smc::preload::real.posix_spawnp(pid, file, fa, attr, argv, envp);
}

}  // extern "C"

namespace {

// The arguments of an execl-family call after `arg0`, up to its NULL, in
// `out` (room for `n` + 1 pointers); `envp` gets the pointer after the NULL
// when asked for (execle).
void collect_args(const char* arg0, va_list ap, char** out, char*** envp) {
  size_t i = 0;
  out[i++] = const_cast<char*>(arg0);
  while (arg0 != nullptr && (out[i++] = va_arg(ap, char*)) != nullptr) {
  }
  if (envp != nullptr) {
    *envp = va_arg(ap, char**);
  }
}

size_t count_args(const char* arg0, va_list ap) {
  size_t n = 0;
  if (arg0 != nullptr) {
    while (va_arg(ap, char*) != nullptr) {
      ++n;
    }
    ++n;
  }
  return n;
}

// An execl-family call: its argument vector (and, `with_envp`, the
// environment after it) from `ap`, then run(argv, envp). The vector lives
// on this frame's stack (no allocation: the caller may be a vfork child).
template <class Run>
int exec_with_args(const char* arg0, va_list ap, bool with_envp, Run run) {
  va_list count;
  va_copy(count, ap);
  const size_t n = count_args(arg0, count);
  va_end(count);
  auto** argv = static_cast<char**>(alloca((n + 2) * sizeof(char*)));
  char** envp = nullptr;
  collect_args(arg0, ap, argv, with_envp ? &envp : nullptr);
  return run(argv, envp);
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) int execl(const char* path, const char* arg, ...) {
  va_list ap;
  va_start(ap, arg);
  const int rc = exec_with_args(arg, ap, false, [&](char** argv, char**) { return execv(path, argv); });
  va_end(ap);
  return rc;
}

__attribute__((visibility("default"))) int execlp(const char* file, const char* arg, ...) {
  va_list ap;
  va_start(ap, arg);
  const int rc = exec_with_args(arg, ap, false, [&](char** argv, char**) { return execvp(file, argv); });
  va_end(ap);
  return rc;
}

__attribute__((visibility("default"))) int execle(const char* path, const char* arg, ...) {
  va_list ap;
  va_start(ap, arg);
  const int rc = exec_with_args(arg, ap, true,
                                [&](char** argv, char** envp) { return execve(path, argv, envp); });
  va_end(ap);
  return rc;
}

}  // extern "C"
