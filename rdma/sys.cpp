// Default OS-call table: libc's own functions (the preload overrides it).
#include "rdma/sys.h"

#include <fcntl.h>

#include <cerrno>
#include <cstdint>
#include <unistd.h>

namespace smc::rdma {

sys_calls& sys() {
  static sys_calls table{
      ::socket, ::connect, ::bind, ::listen, ::accept4, ::recv, ::send, ::recvmsg, ::sendmsg,
      ::read, ::write, ::close, ::poll, ::fcntl, ::getsockopt, ::setsockopt,
      ::epoll_create1, ::epoll_ctl, ::epoll_wait,
  };
  return table;
}

void doorbell_ring(int efd) {
  uint64_t one = 1;
  ssize_t n;
  do {
    n = sys().write(efd, &one, sizeof(one));
  } while (n < 0 && errno == EINTR);
}

void doorbell_drain(int efd) {
  uint64_t v;
  ssize_t n;
  do {
    n = sys().read(efd, &v, sizeof(v));
  } while (n < 0 && errno == EINTR);
}

}  // namespace smc::rdma
