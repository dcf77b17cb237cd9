// The busy-wait loop shared by blocked calls (core/conn) and event-loop
// waits (preload's epoll_wait): look at a transport's queue, test for the
// awaited state, give the CPU away now and then, give up after a while.
#pragma once

#include <sched.h>
#include <time.h>

#include <cstdint>

namespace smc::core {

/// How often a busy-waiting thread gives its CPU away (sched_yield).
constexpr int64_t yield_every_us = 20;

inline int64_t busy_clock_us() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000 + ts.tv_nsec / 1000;
}

/// Busy-waits up to spin_us for done(), calling poll() every round first
/// (it dispatches what a transport received; it returns true if it looked
/// at a device queue). Returns whether done() became true. It yields the CPU
/// every yield_every_us: what it waits for may need this very CPU first (a
/// software RDMA device's worker woken by the send just posted, the peer
/// process on a busy host), and a woken task does not always preempt a
/// spinner. Not at once: an answer that comes within microseconds (shared
/// memory, RDMA hardware) costs no system call.
template <class Poll, class Done>
bool busy_wait(uint32_t spin_us, Poll&& poll, Done&& done) {
  const int64_t start = busy_clock_us();
  const int64_t until = start + spin_us;
  int64_t next_yield = start + yield_every_us;
  for (unsigned i = 0;; ++i) {
    // Every round: a look at an RDMA completion queue costs a few loads, and
    // under emulation a round is slow enough that looking every 16th added
    // tens of microseconds per message. That look (a lock and a few loads)
    // paces the loop by itself; a PAUSE on top only slowed it down under
    // QEMU's TCG, where each PAUSE leaves the translated code (a Soft-RoCE
    // round trip took 15-20% longer). Shared memory has nothing to look at:
    // there the PAUSE keeps the loop polite to a sibling hyperthread.
    const bool looked = poll();
    if (done()) {
      return true;
    }
    if ((i & 63) == 0) {
      const int64_t now = busy_clock_us();
      if (now >= until) {
        return false;
      }
      if (now >= next_yield) {
        sched_yield();
        next_yield = now + yield_every_us;
      }
    }
    if (!looked) {
      __builtin_ia32_pause();
    }
  }
}

}  // namespace smc::core
