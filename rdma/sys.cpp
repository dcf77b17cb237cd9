// Default OS-call table: libc's own functions (the preload overrides it).
#include "rdma/sys.h"

#include <fcntl.h>
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

}  // namespace smc::rdma
