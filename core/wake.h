// Wake-ups dispatched from memory (docs/ARCHITECTURE.md, "The fd budget",
// step 1). Whatever sleeps in the kernel for an SMC connection of this
// process (a thread blocked in recv or send, a poll() call, an epoll set
// that learns readiness from memory) sleeps on a wake_fd of its own as well
// as on the connection's doorbells, and registers a `waiter` with the
// connection for the directions it waits for. A change the connection
// makes itself (an abort, a shutdown, the peer's TCP end seen, a drain that
// took a ring another waiter had pending) then wakes those waiters through
// their wake_fds, without touching the doorbells. Waiters that are not
// registered (another process's; those no wake_fd could be made for) learn
// of an end from the doorbell, shut for reading for good (same-host), or
// rung (SMC-R's eventfds); over shm the second kind looks at the state
// every 100 ms as well. A registration of a set whose
// kernel level others read registers with a wake_fd that is its level
// (waiter::level); a confined connection's blocked call with one its
// waiter holds.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <unordered_map>
#include <vector>

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

/// How long a wait that nothing of ours can wake (no wake_fd could be made
/// for it, or it polls a confined connection's doorbell alone) sleeps at
/// most before it looks at the state by itself.
inline constexpr int look_every_ms = 100;

/// Directions a waiter waits for.
inline constexpr uint32_t wait_rx = 1;
inline constexpr uint32_t wait_tx = 2;

/// A sleeper's entry in a connection's list (conn::set_waiter). `dirs`
/// are the directions it has declared waiters for on the connection
/// (data_path::arm_rx/arm_tx), kept equal to them by its owner: what is
/// registered here is what the connection need not ring (or shut) its
/// doorbells for.
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
/// connections and its poll() calls on such connections sleep on. It
/// watches, edge-triggered, the doorbells and TCP sockets of the
/// connections the thread last waited for (an entry each, up to
/// max_entries, kept from one wait to the next), and the thread's wake_fd
/// (level-triggered).
/// Edge-triggered, a ring already queued wakes nobody again, so a waiter
/// never drains a doorbell to sleep (a level-triggered poll() of it had
/// to, and a drain may take a ring that others wait for).
class wait_set {
 public:
  /// What woke a wait (epoll_event::data.u64): kind_of() of a
  /// connection's watch, for the connection entry_of() names (a blocked
  /// call's is entry 0, whose tags are the kinds themselves), or tag_wake.
  static constexpr uint64_t tag_rx = 1;
  static constexpr uint64_t tag_tx = 2;
  static constexpr uint64_t tag_tcp = 3;
  static constexpr uint64_t tag_wake = 4;
  static constexpr size_t max_entries = 1024;
  static constexpr uint64_t tag_of(size_t entry, uint64_t kind) {
    return (uint64_t{entry} << 3) | kind;
  }
  static constexpr size_t entry_of(uint64_t tag) { return static_cast<size_t>(tag >> 3); }
  static constexpr uint64_t kind_of(uint64_t tag) { return tag & 7; }
  /// Makes the epoll instance (placed as the library's fds are); check ok().
  /// `limit`: entries at most (max_entries; fewer in tests).
  explicit wait_set(size_t limit = max_entries);
  ~wait_set();
  wait_set(const wait_set&) = delete;
  wait_set& operator=(const wait_set&) = delete;
  bool ok() const { return ep_ >= 0; }
  int fd() const { return ep_; }
  /// Watches doorbells `rx` and `tx` (kept while `bells` is the same
  /// non-zero value: a same-host link's slot serves one connection after
  /// another with them, data_path::bells_id; other doorbells are named by
  /// their connection), the TCP socket `tcp` of connection `serial`, and
  /// the wake_fd `wake`, as entry 0. False if a watch cannot be put in
  /// place: then the caller waits another way.
  bool watch(uint64_t bells, int rx, int tx, uint64_t serial, int tcp, int wake);
  /// The same for several connections at once (a poll() call), each
  /// call of it one round: begin_round(), then watch_any() for each
  /// connection, which returns the entry that watches it already, else
  /// one no connection of this round has taken (a new one while there are
  /// fewer than max_entries), which it joins; -1 if none is left or a watch
  /// cannot be put in place. `again`: this round had taken it already (the
  /// connection is listed twice).
  void begin_round() { ++round_; }
  int watch_any(uint64_t bells, int rx, int tx, uint64_t serial, int tcp, bool& again);
  /// Entry j watches a connection of this round (what woke the wait is
  /// then for that connection; else a watch kept from an earlier round).
  bool taken(size_t j) const { return j < e_.size() && e_[j].round == round_; }
  bool watch_wake(int wake);
  /// In a forked child: the instance is the parent's too; forget it (not closed).
  void forget() { ep_ = -1; }

 private:
  // What an entry watches. Each fd number is recorded by one entry at most:
  // an ADD that finds the number watched re-tags that watch (the entry
  // that recorded it forgets it), and a number another entry records is
  // never deleted for an entry that drops its own (a closed file's watch
  // is gone with it; the number may name a new file another entry watches).
  struct entry {
    uint64_t bells = 0;
    uint64_t serial = 0;
    int rx = -1;
    int tx = -1;
    int tcp = -1;
    uint64_t round = 0;  // the poll() round that took it last
  };
  bool watch_entry(size_t j, uint64_t bells, int rx, int tx, uint64_t serial, int tcp);
  // The entry that records fd (by_fd_), or -1.
  int recorder(int fd) const;
  // Watches fd with `data` (or changes its watch to it).
  bool add_or_mod(int fd, uint64_t data, uint32_t events);
  bool put(size_t j, int fd, uint64_t kind, uint32_t events);
  void drop(size_t j, int& fd);
  // Entry j no longer watches the TCP socket of connection `serial`.
  void forget_serial(size_t j);
  int ep_ = -1;
  std::vector<entry> e_;  // (entry 0 is also a blocked call's)
  // Which entry records an fd number, and which watches a connection's
  // TCP socket (by its serial): a poll() call on many connections finds
  // its entries without looking at each.
  std::unordered_map<int, uint32_t> by_fd_;
  std::unordered_map<uint64_t, uint32_t> by_serial_;
  uint64_t round_ = 1;
  size_t limit_;
  size_t evict_ = 0;  // where the next look for an entry to take over starts
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
