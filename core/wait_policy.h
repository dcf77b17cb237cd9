// How the library's waits spend a caller's time, the same for blocked calls
// (core/conn), poll/select and epoll_wait (preload, which only translates
// the calls): look at the connections' state in memory; when nothing is
// ready and the caller would wait, busy-poll that memory for a while
// (SMC_SPIN_US), since a request-response peer's answer often comes within
// microseconds; then sleep in the kernel, looking again by itself every
// look_every_ms where nothing of ours can wake it for a change. In a set
// that can answer from memory without the kernel, the kernel's own fds get
// a turn after max_streak such answers in a row.
#pragma once

#include <time.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "core/wake.h"

namespace smc::core {

/// CLOCK_MONOTONIC in nanoseconds.
inline int64_t mono_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

/// A caller's timeout in milliseconds as nanoseconds (< 0: none, -1); one
/// too long to count saturates rather than wrap round.
inline int64_t ms_to_ns(int64_t ms) {
  constexpr int64_t max_ms = std::numeric_limits<int64_t>::max() / 1000000;
  return ms < 0 ? -1 : std::min(ms, max_ms) * 1000000;
}

/// The same for a timespec (nullptr: none, -1), such as {LONG_MAX, 0},
/// which some programs pass for "no end".
inline int64_t timespec_ns(const timespec* ts) {
  if (ts == nullptr) {
    return -1;
  }
  constexpr int64_t max_s = std::numeric_limits<int64_t>::max() / 1000000000 - 1;
  return ts->tv_sec > max_s ? std::numeric_limits<int64_t>::max()
                            : static_cast<int64_t>(ts->tv_sec) * 1000000000 + ts->tv_nsec;
}

/// Nanoseconds (< 0: none, -1) in milliseconds, rounded up: a sleep of it
/// never ends early.
inline int64_t ns_to_ms_up(int64_t ns) {
  return ns < 0 ? -1 : ns / 1000000 + (ns % 1000000 != 0 ? 1 : 0);
}

/// A caller's timeout, counted from when its wait began.
class wait_deadline {
 public:
  /// `timeout_ns` < 0: no end. One too far to count ends at the end of
  /// the clock (saturated, never wrapped round).
  explicit wait_deadline(int64_t timeout_ns) : end_(-1) {
    if (timeout_ns >= 0) {
      const int64_t now = mono_ns();
      end_ = timeout_ns > std::numeric_limits<int64_t>::max() - now ? std::numeric_limits<int64_t>::max()
                                                                     : now + timeout_ns;
    }
  }
  /// The same from milliseconds (< 0: no end).
  static wait_deadline from_ms(int64_t ms) { return wait_deadline(ms_to_ns(ms)); }
  /// What is left of it: -1 for no end, else >= 0.
  int64_t left_ns() const { return end_ < 0 ? -1 : std::max<int64_t>(0, end_ - mono_ns()); }
  /// The same in milliseconds, rounded up (a sleep of it never ends early).
  int64_t left_ms() const { return ns_to_ms_up(left_ns()); }
  /// Whether it ended (never, without one).
  bool passed() const { return end_ >= 0 && mono_ns() >= end_; }

 private:
  int64_t end_;
};

/// How long a wait that would sleep busy-polls memory first, in
/// microseconds: the process's SMC_SPIN_US (`spin_us`), none in a confined
/// process (a spin yields the CPU now and then, which a sandbox's filter may
/// forbid: sshd's does), and never past what is left of the caller's
/// timeout (`left_ns`, -1: none; 0: the caller does not wait).
inline uint32_t spin_budget_us(uint32_t spin_us, bool confined, int64_t left_ns) {
  if (confined || left_ns == 0) {
    return 0;
  }
  return left_ns < 0 ? spin_us : static_cast<uint32_t>(std::min<int64_t>(spin_us, left_ns / 1000));
}

/// A sleep of `left` (-1: no end) cut to `slice` (the same unit) when the
/// wait must look at something by itself meanwhile (`must_look`: nothing
/// of ours can wake it for that).
inline int64_t sleep_slice(int64_t left, int64_t slice, bool must_look) {
  return must_look && (left < 0 || left > slice) ? slice : left;
}

/// Fairness in a set that reports what memory finds ready without asking
/// the kernel: memory answers at most max_streak waits in a row; the next
/// wait keeps room for the kernel's events and asks it too, so that the
/// kernel fds in the set are never starved by busy connections.
class memory_turns {
 public:
  static constexpr unsigned max_streak = 8;
  /// Whether this wait is the kernel's turn (it keeps a slot of the
  /// caller's buffer for the kernel's events).
  bool kernel_turn() const { return streak_ >= max_streak; }
  /// This wait was answered from memory alone.
  void from_memory() { ++streak_; }
  /// This wait asked the kernel.
  void from_kernel() { streak_ = 0; }

 private:
  unsigned streak_ = 0;
};

/// A registration that was reported ("hot") is looked at in memory by
/// every wait of its set, and its waiters declared only while a thread
/// sleeps there (the peer rings nobody awake); found not ready this many
/// looks in a row, it cools down and waits for rings again.
inline constexpr uint16_t max_cold_looks = 64;

}  // namespace smc::core
