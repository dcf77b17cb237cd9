// Wake-ups dispatched from memory (docs/ARCHITECTURE.md, "The fd budget",
// step 1). Whatever sleeps in the kernel for an SMC connection of this
// process (a thread blocked in recv or send, a poll() call, an epoll set
// that learns readiness from memory) sleeps on a wake_fd of its own as well
// as on the connection's doorbells, and registers a `waiter` with the
// connection for the directions it waits for. A change the connection
// makes itself (an abort, a shutdown, the peer's TCP end seen, a drain that
// took a ring another waiter had pending) then wakes those waiters through
// their wake_fds, without touching the doorbells; the doorbell is rung
// only for waiters that are not registered (another process's, a set whose
// kernel level others read, a confined connection's).
#pragma once

#include <atomic>
#include <cstdint>

namespace smc::core {

/// An eventfd that one sleeper watches and anyone wakes: written once until
/// its owner consumes it.
class wake_fd {
 public:
  /// Makes the eventfd (placed as the library's fds are); check ok().
  wake_fd();
  ~wake_fd();
  wake_fd(const wake_fd&) = delete;
  wake_fd& operator=(const wake_fd&) = delete;
  bool ok() const { return fd_ >= 0; }
  int fd() const { return fd_; }
  /// Makes it readable (no system call while a wake is pending).
  void wake();
  /// Takes a pending wake (after the fd was found readable, or any time).
  void consume();
  /// Takes a pending wake, without a system call when none is pending: a
  /// level (waiter::level) that what it held for no longer holds.
  void clear() {
    if (pending_.load(std::memory_order_relaxed)) {
      consume();
    }
  }
  /// In a forked child: the fd is the parent's too; forget it (not closed).
  void forget() { fd_ = -1; }

 private:
  int fd_ = -1;
  std::atomic<bool> pending_{false};
};

/// This thread's wake_fd, made when it first waits (a new one in a forked
/// child); nullptr if none can be made (no fd left).
wake_fd* thread_wake_fd();
/// This thread's wake_fd if it has one, without making it: a thread that
/// is running needs no wake-up (its own poll() lists its wake_fd while it
/// looks at the connections it polls).
const wake_fd* own_wake_fd();

/// Directions a waiter waits for.
inline constexpr uint32_t wait_rx = 1;
inline constexpr uint32_t wait_tx = 2;

/// A sleeper's entry in a connection's list (conn::set_waiter). `dirs`
/// are the directions it has declared waiters for on the connection
/// (data_path::arm_rx/arm_tx), kept equal to them by its owner: what is
/// registered here is what the connection need not ring its doorbells
/// for.
struct waiter {
  wake_fd* wake = nullptr;
  uint32_t dirs = 0;
  /// Called (under the connection's waiter lock, before the wake) with the
  /// directions that woke it: an epoll set notes which registration to
  /// look at. Must not take locks that are held while kicking.
  void (*on_kick)(waiter*, uint32_t dirs) = nullptr;
  void* owner = nullptr;
  /// Its wake_fd is a level that others read (a registration of an epoll
  /// set nested in another one, or given to poll()): set by the wakes,
  /// and cleared by the connection's own reads and writes once none of
  /// its directions is ready any more (conn::drop_false_levels).
  bool level = false;
  // The connection's list (intrusive; `in` is the list it is on, or none).
  const void* in = nullptr;
  waiter* prev = nullptr;
  waiter* next = nullptr;
};

/// Bumped in every forked child (conn's note_fork_child): thread wake_fds
/// made before are the parent's too.
void note_fork_for_wakes();

}  // namespace smc::core
