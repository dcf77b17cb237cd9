// Symbol resolution and one-time initialisation. Every exported function
// calls ensure_init() first, because applications (and other libraries'
// constructors) may call socket functions before our constructor runs.
#include <dirent.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <pthread.h>
#include <sys/sendfile.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/background.h"
#include "core/engine.h"
#include "core/handoff.h"
#include "core/smcr.h"
#include "core/log.h"
#include "core/stats.h"
#include "core/tcp_option.h"
#include "preload/preload.h"
#include "rdma/shm/shm_link.h"
#include "rdma/sys.h"

namespace smc::preload {

real_fns real{};
std::atomic<int> g_init_state{0};
bool g_enabled = false;

namespace {

config::config* g_cfg = nullptr;  // leaked: needed until the very last call
pthread_mutex_t g_init_mu = PTHREAD_MUTEX_INITIALIZER;
thread_local bool t_initialising = false;

[[noreturn]] void die_self_resolution(const char* name) {
  // Resolving to ourselves would recurse forever; nothing sensible can follow.
  char msg[128];
  int n = std::snprintf(msg, sizeof(msg), "smc-preload: cannot resolve %s\n", name);
  if (n > 0) {
    ssize_t w = ::syscall(1 /* write */, 2, msg, static_cast<size_t>(n));
    (void)w;
  }
  std::abort();
}

template <typename F>
void resolve(F& slot, const char* name, void* self, bool optional = false) {
  dlerror();
  void* p = dlsym(RTLD_NEXT, name);
  if (p == nullptr && !optional) {
    die_self_resolution(name);
  }
  if (p == self && p != nullptr) {
    die_self_resolution(name);
  }
  slot = reinterpret_cast<F>(p);
}

// Optional symbols fall back to a stub that fails with ENOSYS.
int enosys_epoll_pwait2(int, epoll_event*, int, const timespec*, const sigset_t*) {
  errno = ENOSYS;
  return -1;
}

int enosys_close_range(unsigned, unsigned, int) {
  errno = ENOSYS;
  return -1;
}

// glibc < 2.34 has no closefrom (so nothing calls it).
void no_closefrom(int lowfd) {
  if (lowfd >= 0) {
    real.close_range(static_cast<unsigned>(lowfd), ~0U, 0);
  }
}

void resolve_all() {
#define SMC_RESOLVE(field, sym) resolve(real.field, #sym, reinterpret_cast<void*>(&::sym))
  SMC_RESOLVE(socket, socket);
  SMC_RESOLVE(connect, connect);
  SMC_RESOLVE(listen, listen);
  SMC_RESOLVE(accept, accept);
  SMC_RESOLVE(accept4, accept4);
  resolve(real.bind, "bind", nullptr);  // not interposed
  SMC_RESOLVE(read, read);
  SMC_RESOLVE(write, write);
  SMC_RESOLVE(readv, readv);
  SMC_RESOLVE(writev, writev);
  SMC_RESOLVE(recv, recv);
  SMC_RESOLVE(recvfrom, recvfrom);
  SMC_RESOLVE(recvmsg, recvmsg);
  SMC_RESOLVE(send, send);
  SMC_RESOLVE(sendto, sendto);
  SMC_RESOLVE(sendmsg, sendmsg);
  SMC_RESOLVE(close, close);
  SMC_RESOLVE(shutdown, shutdown);
  SMC_RESOLVE(poll, poll);
  SMC_RESOLVE(ppoll, ppoll);
  SMC_RESOLVE(select, select);
  SMC_RESOLVE(pselect, pselect);
  SMC_RESOLVE(epoll_create, epoll_create);
  SMC_RESOLVE(epoll_create1, epoll_create1);
  SMC_RESOLVE(epoll_ctl, epoll_ctl);
  SMC_RESOLVE(epoll_wait, epoll_wait);
  SMC_RESOLVE(epoll_pwait, epoll_pwait);
  SMC_RESOLVE(dup, dup);
  SMC_RESOLVE(dup2, dup2);
  SMC_RESOLVE(dup3, dup3);
  SMC_RESOLVE(fcntl, fcntl);
  SMC_RESOLVE(ioctl, ioctl);
  SMC_RESOLVE(getsockopt, getsockopt);
  SMC_RESOLVE(setsockopt, setsockopt);
  SMC_RESOLVE(fork, fork);
  SMC_RESOLVE(execve, execve);
  SMC_RESOLVE(execv, execv);
  SMC_RESOLVE(execvp, execvp);
  SMC_RESOLVE(execvpe, execvpe);
  SMC_RESOLVE(fexecve, fexecve);
  resolve(real.execveat, "execveat", nullptr, true);  // glibc >= 2.34
  SMC_RESOLVE(posix_spawn, posix_spawn);
  SMC_RESOLVE(posix_spawnp, posix_spawnp);
  resolve(real.epoll_pwait2, "epoll_pwait2", nullptr, true);
  if (real.epoll_pwait2 == nullptr) {
    real.epoll_pwait2 = enosys_epoll_pwait2;
  }
  SMC_RESOLVE(sendfile, sendfile);
  SMC_RESOLVE(sendfile64, sendfile64);
  SMC_RESOLVE(splice, splice);
  SMC_RESOLVE(sendmmsg, sendmmsg);
  SMC_RESOLVE(recvmmsg, recvmmsg);
  SMC_RESOLVE(preadv2, preadv2);
  SMC_RESOLVE(pwritev2, pwritev2);
  resolve(real.close_range, "close_range", reinterpret_cast<void*>(&::close_range), true);
  if (real.close_range == nullptr) {
    real.close_range = enosys_close_range;  // glibc < 2.34
  }
  resolve(real.closefrom, "closefrom", reinterpret_cast<void*>(&::closefrom), true);
  if (real.closefrom == nullptr) {
    real.closefrom = no_closefrom;
  }
  SMC_RESOLVE(prctl, prctl);
  SMC_RESOLVE(syscall, syscall);
  SMC_RESOLVE(getrlimit, getrlimit);
  SMC_RESOLVE(getrlimit64, getrlimit64);
  SMC_RESOLVE(setrlimit, setrlimit);
  SMC_RESOLVE(setrlimit64, setrlimit64);
  SMC_RESOLVE(prlimit, prlimit);
  SMC_RESOLVE(prlimit64, prlimit64);
  SMC_RESOLVE(chroot, chroot);
#undef SMC_RESOLVE
  resolve(real.fcntl64, "fcntl64", nullptr, true);
  if (real.fcntl64 == nullptr) {
    real.fcntl64 = real.fcntl;
  }
  resolve(real.read_chk, "__read_chk", nullptr);
  resolve(real.recv_chk, "__recv_chk", nullptr);
  resolve(real.recvfrom_chk, "__recvfrom_chk", nullptr);
  resolve(real.poll_chk, "__poll_chk", nullptr);

  // The engine's OS-call seam goes straight to the real functions.
  rdma::sys_calls& s = rdma::sys();
  s.socket = real.socket;
  s.connect = real.connect;
  s.bind = real.bind;
  s.listen = real.listen;
  s.accept4 = real.accept4;
  s.recv = real.recv;
  s.send = real.send;
  s.recvmsg = real.recvmsg;
  s.recvmmsg = real.recvmmsg;
  s.sendmsg = real.sendmsg;
  s.read = real.read;
  s.write = real.write;
  s.close = real.close;
  s.poll = real.poll;
  s.fcntl = real.fcntl;
  s.getsockopt = real.getsockopt;
  s.setsockopt = real.setsockopt;
  s.epoll_create1 = real.epoll_create1;
  s.epoll_ctl = real.epoll_ctl;
  s.epoll_wait = real.epoll_wait;
  s.shutdown = real.shutdown;
  s.ioctl = real.ioctl;
}

core::log::level to_log_level(config::log_level l) {
  return static_cast<core::log::level>(static_cast<int>(l));
}

void atfork_prepare() {
  marks_lock();  // (first: an offer under it may take the locks below)
  core::background::lock_for_fork();
  ep_lock();
  fd_table_lock_all();
  core::conn_registry_lock();
  rdma::shm::lock_for_fork();
  core::deadlines::lock_for_fork();  // (its holders take no other lock)
  rdma::nofile_lock();               // (nor do this one's)
}
void atfork_parent() {
  rdma::nofile_unlock();
  core::deadlines::unlock_after_fork();
  untouched_after_fork();
  ep_note_fork_parent();
  rdma::shm::after_fork(false);
  core::conn_registry_unlock();
  fd_table_unlock_all();
  ep_unlock();
  core::background::unlock_after_fork();
  marks_unlock();
}
void atfork_child();

}  // namespace

const config::config& cfg() { return *g_cfg; }

const core::hs_params& hs_params() {
  // Made once, at the first handshake (after init): the configuration does
  // not change afterwards, and a copy per handshake step allocated.
  static const core::hs_params p = [] {
    core::hs_params q;
    q.transport = g_cfg->transport;
    q.rmb_size = g_cfg->rmb_size;
    q.devices = g_cfg->devices;
    q.ueid = g_cfg->ueid;
    return q;
  }();
  return p;
}

namespace {

// TCP sockets this process got across exec() (socket activation, a
// supervisor that binds for the server, a server re-executing itself, inetd
// style handlers): recorded as if this image had made them (adopt_socket).
void adopt_inherited_sockets() {
  DIR* d = opendir("/proc/self/fd");
  if (d == nullptr) {
    return;  // no /proc: sockets inherited across exec stay plain TCP
  }
  const int own = dirfd(d);
  std::vector<int> fds;
  while (dirent* de = readdir(d)) {
    char* end = nullptr;
    long fd = std::strtol(de->d_name, &end, 10);
    if (end != de->d_name && *end == 0 && fd >= 0 && fd != own && fd <= INT_MAX) {
      fds.push_back(static_cast<int>(fd));
    }
  }
  closedir(d);
  adopt_sockets(fds);
}

}  // namespace

void init_slow() {
  if (t_initialising) {
    return;  // a call made by our own initialisation: symbols are resolved already
  }
  int saved = errno;
  pthread_mutex_lock(&g_init_mu);
  if (g_init_state.load(std::memory_order_acquire) != 2) {
    t_initialising = true;
    resolve_all();
    g_init_state.store(1, std::memory_order_release);
    auto* c = new config::config();
    std::vector<std::string> warnings;
    try {
      warnings = config::load(*c);
    } catch (...) {
      *c = config::config();
    }
    g_cfg = c;
    if (c->enable) {
      core::log::init(to_log_level(c->level), c->log_file);
      for (const auto& w : warnings) {
        SMC_LOG(warn, "config: %s", w.c_str());
      }
      SMC_LOG(info, "enabled: transport=%s rmb=%u peers=%zu", config::to_string(c->transport),
              c->rmb_size, c->peers.size());
      pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
    }
    g_enabled = c->enable;
    if (g_enabled) {
      try {
        adopt_inherited_sockets();
      } catch (...) {
      }
    }
    t_initialising = false;
    g_init_state.store(2, std::memory_order_release);
  }
  pthread_mutex_unlock(&g_init_mu);
  errno = saved;
}

namespace {

void atfork_child() {
  marks_unlock();
  rdma::nofile_unlock();
  core::deadlines::forget_after_fork();
  rdma::shm::after_fork(true);
  fd_table_unlock_all();
  ep_unlock();
  // The child keeps its own account from here on, and has no engine thread.
  core::stats::reset();
  core::engine::forget_after_fork();
  core::smcr::forget_after_fork();
  core::handoff::forget_after_fork();
  core::background::forget_after_fork();
  core::note_fork_child();
  ep_note_fork_child();
  try {
    forget_decisions_after_fork();
  } catch (...) {
  }
}

__attribute__((constructor)) void on_load() { ensure_init(); }
__attribute__((destructor)) void on_unload() { write_stats_at_exit(); }

}  // namespace

}  // namespace smc::preload
