// Wake-ups dispatched from memory (docs/ARCHITECTURE.md, "The fd budget",
// step 1). Whatever sleeps in the kernel for an SMC connection of this
// process (a thread blocked in recv or send, a poll() call, an epoll set
// that learns readiness from memory) sleeps on a wake_fd of its own as well
// as on the connection's doorbells, and registers a `waiter` with the
// connection for the directions it waits for. A change the connection
// makes itself (an abort, a shutdown, the peer's TCP end seen, a drain that
// took a ring another waiter had pending) then wakes those waiters through
// their wake_fds, without touching the doorbells; the doorbell is rung
// only for waiters that are not registered (another process's, a confined
// process's poll() calls and classic sets). A registration of a set whose
// kernel level others read registers with a wake_fd that is its level
// (waiter::level); a confined connection's blocked call with one its
// waiter holds.
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

/// A thread's wait set: the epoll instance its blocked calls on same-host
/// connections (and its poll() calls on one such connection) sleep on. It
/// watches, edge-triggered, the doorbells and TCP
/// socket of the connection the thread last waited for (kept from one wait
/// to the next), and the thread's wake_fd (level-triggered). Edge-triggered,
/// a ring already queued wakes nobody again, so a waiter never drains a
/// doorbell to sleep (a level-triggered poll() of it had to, and a drain
/// may take a ring that others wait for).
class wait_set {
 public:
  /// What woke a wait (epoll_event::data.u64).
  static constexpr uint64_t tag_rx = 1;
  static constexpr uint64_t tag_tx = 2;
  static constexpr uint64_t tag_tcp = 3;
  static constexpr uint64_t tag_wake = 4;
  /// Makes the epoll instance (placed as the library's fds are); check ok().
  wait_set();
  ~wait_set();
  wait_set(const wait_set&) = delete;
  wait_set& operator=(const wait_set&) = delete;
  bool ok() const { return ep_ >= 0; }
  int fd() const { return ep_; }
  /// Watches doorbells `rx` and `tx` (kept while `bells` is the same
  /// non-zero value: a same-host link's slot serves one connection after
  /// another with them, data_path::bells_id; other doorbells are named by
  /// their connection), the TCP socket `tcp` of connection `serial`, and
  /// the wake_fd `wake`. False if a watch cannot be put in place: then the
  /// caller waits another way.
  bool watch(uint64_t bells, int rx, int tx, uint64_t serial, int tcp, int wake);
  /// In a forked child: the instance is the parent's too; forget it (not closed).
  void forget() { ep_ = -1; }

 private:
  bool put(int fd, uint64_t tag, uint32_t events);
  void drop(int& fd);
  int ep_ = -1;
  uint64_t bells_ = 0;
  uint64_t serial_ = 0;
  int rx_ = -1;
  int tx_ = -1;
  int tcp_ = -1;
  int wake_ = -1;
};

/// This thread's wait_set, made when it first needs one (a new one in a
/// forked child); nullptr if none can be made.
wait_set* thread_wait_set();
/// Its number is no longer the set's (the application closed it): the
/// next thread_wait_set() makes another, leaving that number alone.
void lose_thread_wait_set();

/// Bumped in every forked child (conn's note_fork_child): thread wake_fds
/// and wait sets made before are the parent's too.
void note_fork_for_wakes();

}  // namespace smc::core
