// The OS-call seam. Every socket call the engine and the transports make goes
// through this table: inside the preload it holds the next definitions in the
// symbol chain (dlsym RTLD_NEXT), so the library never re-enters its own
// interposed functions; in unit tests it holds libc's.
#pragma once

#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/types.h>

namespace smc::rdma {

struct sys_calls {
  int (*socket)(int, int, int);
  int (*connect)(int, const sockaddr*, socklen_t);
  int (*bind)(int, const sockaddr*, socklen_t);
  int (*listen)(int, int);
  int (*accept4)(int, sockaddr*, socklen_t*, int);
  ssize_t (*recv)(int, void*, size_t, int);
  ssize_t (*send)(int, const void*, size_t, int);
  ssize_t (*recvmsg)(int, msghdr*, int);
  ssize_t (*sendmsg)(int, const msghdr*, int);
  ssize_t (*read)(int, void*, size_t);
  ssize_t (*write)(int, const void*, size_t);
  int (*close)(int);
  int (*poll)(pollfd*, nfds_t, int);
  int (*fcntl)(int, int, ...);
  int (*getsockopt)(int, int, int, void*, socklen_t*);
  int (*setsockopt)(int, int, int, const void*, socklen_t);
  int (*epoll_create1)(int);
  int (*epoll_ctl)(int, int, int, epoll_event*);
  int (*epoll_wait)(int, epoll_event*, int, int);
};

/// The table in use. Defaults to libc's functions; the preload replaces every
/// entry before the first socket is handled.
sys_calls& sys();

/// Doorbells are non-blocking eventfds: ring adds one, drain empties it.
void doorbell_ring(int efd);
void doorbell_drain(int efd);

}  // namespace smc::rdma
