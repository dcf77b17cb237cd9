// Unit tests for how the library's waits spend a caller's time
// (core/wait_policy.h): the spin budget, the sleep slices, the kernel's
// turn among answers from memory, and the caller's deadline.
#include <catch2/catch.hpp>

#include <limits>

#include "core/wait_policy.h"

using namespace smc::core;

TEST_CASE("spin budget: SMC_SPIN_US, none when confined or not waiting, never past the timeout",
          "[wait]") {
  CHECK(spin_budget_us(20, false, -1) == 20);        // no timeout: the whole spin
  CHECK(spin_budget_us(20, true, -1) == 0);          // a confined process never spins
  CHECK(spin_budget_us(20, false, 0) == 0);          // the caller does not wait
  CHECK(spin_budget_us(20, false, 5000) == 5);       // 5 us left of its timeout
  CHECK(spin_budget_us(20, false, 1000000) == 20);   // 1 ms left: the whole spin
  CHECK(spin_budget_us(0, false, -1) == 0);          // SMC_SPIN_US=0
}

TEST_CASE("sleep slice: cut only when the wait must look by itself", "[wait]") {
  CHECK(sleep_slice(-1, 100, true) == 100);   // no end: looks every slice
  CHECK(sleep_slice(-1, 100, false) == -1);   // nothing to look at: sleeps on
  CHECK(sleep_slice(500, 100, true) == 100);
  CHECK(sleep_slice(50, 100, true) == 50);    // less left than a slice
  CHECK(sleep_slice(0, 100, true) == 0);      // not waiting at all
  CHECK(sleep_slice(500, 100, false) == 500);
}

TEST_CASE("memory turns: the kernel gets a turn after max_streak answers from memory", "[wait]") {
  memory_turns t;
  for (unsigned i = 0; i < memory_turns::max_streak; ++i) {
    REQUIRE_FALSE(t.kernel_turn());
    t.from_memory();
  }
  CHECK(t.kernel_turn());  // the next wait asks the kernel too
  t.from_kernel();
  CHECK_FALSE(t.kernel_turn());
  // A wait that asked the kernel in between starts the count again.
  for (unsigned i = 0; i + 1 < memory_turns::max_streak; ++i) {
    t.from_memory();
  }
  t.from_kernel();
  t.from_memory();
  CHECK_FALSE(t.kernel_turn());
}

TEST_CASE("wait deadline: none, zero, and one still ahead", "[wait]") {
  const wait_deadline none(-1);
  CHECK(none.left_ns() == -1);
  CHECK(none.left_ms() == -1);
  CHECK_FALSE(none.passed());
  const wait_deadline zero(0);
  CHECK(zero.left_ns() == 0);
  CHECK(zero.left_ms() == 0);
  CHECK(zero.passed());
  const wait_deadline ahead(int64_t{3600} * 1000000000);  // an hour
  CHECK(ahead.left_ns() > 0);
  CHECK(ahead.left_ms() > 3599000);
  CHECK(ahead.left_ms() <= 3600000);
  CHECK_FALSE(ahead.passed());
  // Rounded up: a sleep of what is left never ends before the deadline.
  const wait_deadline sub_ms(1500);  // 1.5 us
  CHECK(sub_ms.left_ms() <= 1);
  // A timeout of centuries saturates: no end in sight, never wrapped round.
  const wait_deadline far(std::numeric_limits<int64_t>::max());
  CHECK(far.left_ns() > int64_t{1} << 62);
  CHECK(far.left_ms() > int64_t{1} << 42);
  CHECK_FALSE(far.passed());
  const wait_deadline far_ms = wait_deadline::from_ms(std::numeric_limits<int64_t>::max());
  CHECK(far_ms.left_ms() > int64_t{1} << 42);
  CHECK_FALSE(far_ms.passed());
  CHECK(wait_deadline::from_ms(-1).left_ms() == -1);
  CHECK(wait_deadline::from_ms(0).passed());
}

TEST_CASE("timeouts converted: none stays none, centuries saturate, milliseconds round up",
          "[wait]") {
  CHECK(ms_to_ns(-1) == -1);
  CHECK(ms_to_ns(0) == 0);
  CHECK(ms_to_ns(1500) == 1500000000);
  CHECK(ms_to_ns(std::numeric_limits<int64_t>::max()) > int64_t{1} << 62);  // not wrapped round
  CHECK(timespec_ns(nullptr) == -1);
  const timespec t{2, 5};
  CHECK(timespec_ns(&t) == 2000000005);
  const timespec forever{std::numeric_limits<time_t>::max(), 0};
  CHECK(timespec_ns(&forever) == std::numeric_limits<int64_t>::max());
  CHECK(ns_to_ms_up(-1) == -1);
  CHECK(ns_to_ms_up(0) == 0);
  CHECK(ns_to_ms_up(1) == 1);
  CHECK(ns_to_ms_up(2000000) == 2);
  CHECK(ns_to_ms_up(std::numeric_limits<int64_t>::max()) > int64_t{1} << 42);
}
