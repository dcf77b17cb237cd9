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
#include <pthread.h>
#include <sys/sendfile.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/engine.h"
#include "core/smcr.h"
#include "core/log.h"
#include "core/stats.h"
#include "core/tcp_option.h"
#include "preload/preload.h"
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
}

core::log::level to_log_level(config::log_level l) {
  return static_cast<core::log::level>(static_cast<int>(l));
}

void atfork_prepare() {
  ep_lock();
  fd_table_lock_all();
}
void atfork_parent() {
  fd_table_unlock_all();
  ep_unlock();
}
void atfork_child();

}  // namespace

const config::config& cfg() { return *g_cfg; }

core::hs_params hs_params() {
  core::hs_params p;
  p.transport = g_cfg->transport;
  p.rmb_size = g_cfg->rmb_size;
  p.devices = g_cfg->devices;
  p.ueid = g_cfg->ueid;
  return p;
}

namespace {

// TCP sockets this process got across exec(), recorded as if this image had
// made them, so that they negotiate SMC like any other:
// - listeners (socket activation, a supervisor that binds for the server, a
//   server re-executing itself): without this, a client that believes the
//   server proposes, and the application reads the Proposal as its first
//   request bytes;
// - connected sockets nobody has read from yet (inetd style: the parent
//   accepts, the child execs the handler on the socket) start undecided, as
//   accepted ones do: a Proposal at the head of the stream is answered,
//   anything else is plain TCP. An SMC connection already running in the
//   parent cannot continue here (its buffers stay there): it reads as an
//   idle TCP socket, as without the preload's help.
void adopt_socket(int fd) {
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode) || fd_maybe(fd)) {
    return;
  }
  int domain = 0;
  int type = 0;
  int proto = 0;
  int listening = 0;
  socklen_t l = sizeof domain;
  if (real.getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &l) != 0 ||
      (domain != AF_INET && domain != AF_INET6)) {
    return;
  }
  l = sizeof type;
  if (real.getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l) != 0 || type != SOCK_STREAM) {
    return;
  }
  l = sizeof proto;
  if (real.getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &l) != 0 || proto != IPPROTO_TCP) {
    return;
  }
  l = sizeof listening;
  if (real.getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &l) != 0) {
    return;
  }
  sockaddr_storage peer{};
  socklen_t pl = sizeof peer;
  if (listening == 0 && getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &pl) != 0) {
    return;  // neither listening nor connected: nothing to take over
  }
  auto* e = new (std::nothrow) entry();
  if (e == nullptr) {
    return;
  }
  e->family = domain;
  unsigned mark = 0;
  l = sizeof mark;
  const bool was_smc = listening == 0 &&
                       real.getsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &mark, &l) == 0 &&
                       mark == smc_socket_mark;
  std::unique_ptr<rdma::data_path> foreign = was_smc ? core::make_foreign_path() : nullptr;
  if (listening != 0) {
    e->st.store(state::listener, std::memory_order_release);
  } else if (foreign) {
    // An SMC connection of the image before exec(): its buffers stayed
    // there. It reads as reset here, rather than as a TCP socket on which
    // nothing ever arrives.
    e->conn = std::make_unique<core::conn>(std::move(foreign), fd, 0);
    e->st.store(state::smc, std::memory_order_release);
    SMC_LOG(warn, "fd %d: an SMC connection inherited across exec() cannot be used in this "
                  "program image (its buffers stayed in the previous one): it reads as reset", fd);
  } else {
    // Not believed, whatever SMC_PEERS says: this side may well be the
    // client of the connection, and a first write must not wait for a
    // Proposal that only a client sends.
    e->st.store(state::undecided, std::memory_order_release);
  }
  if (entry* old = fd_install(fd, e); old != nullptr) {
    fd_put(old);
  }
  if (listening != 0 && g_cfg->transport != config::transport_mode::tcp) {
    core::tcp_option::advertise(fd);
  }
  SMC_LOG(debug, "fd %d: inherited TCP %s, recorded", fd, listening != 0 ? "listener" : "connection");
}

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
  for (int fd : fds) {
    adopt_socket(fd);
  }
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
  fd_table_unlock_all();
  ep_unlock();
  // The child keeps its own account from here on, and has no engine thread.
  core::stats::reset();
  core::engine::forget_after_fork();
  core::smcr::forget_after_fork();
  core::note_fork_child();
}

__attribute__((constructor)) void on_load() { ensure_init(); }
__attribute__((destructor)) void on_unload() { write_stats_at_exit(); }

}  // namespace

}  // namespace smc::preload
