// Deadlines for what no call may be there to look at in time: handshakes
// between their steps (core::hs_step) and accepted sockets nobody touched
// yet. An item armed here is handed back once its deadline passes (at most
// a tick, 10 ms, late), unless it was disarmed before. One background
// thread (core/background) looks at the list every tick while anything is
// armed and for a second after; arming and disarming make no system call.
#pragma once

#include <atomic>
#include <cstdint>

namespace smc::core::deadlines {

/// Embedded in what it times (intrusive: arming allocates nothing). The
/// owner stays alive while the item is armed: hold() runs (under the list's
/// lock) when it becomes armed, and release() when disarm() takes it out;
/// an item whose deadline passed is taken out and given to fire() instead
/// (on the deadline thread, not under the lock), which releases it.
struct item {
  void (*hold)(item*) = nullptr;
  void (*release)(item*) = nullptr;
  void (*fire)(item*) = nullptr;
  void* owner = nullptr;  // for those functions
  int64_t at_ms = 0;
  item* prev = nullptr;
  item* next = nullptr;
  // Written under the list's lock; its owner may read it without that.
  std::atomic<bool> linked{false};
};

/// Arms `it` (its functions set) for `at_ms` (CLOCK_MONOTONIC ms), or moves
/// its deadline if armed already. false: no thread could be had to watch it
/// (then it is not armed).
bool arm(item* it, int64_t at_ms);
/// Disarms `it` if armed (after this returns, its fire() never starts).
void disarm(item* it);

/// Armed items (for tests and the stats).
int armed();

/// Atfork: prepare takes the lock, parent releases it; the child forgets
/// every item (they time handshakes of the parent's) and has no thread:
/// nothing is released, the owners see their items still `linked` and
/// clear them.
void lock_for_fork();
void unlock_after_fork();
void forget_after_fork();

}  // namespace smc::core::deadlines
