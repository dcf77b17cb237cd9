// Unit tests for core/background: the threads that run handshakes an
// application call must not wait for. Every job gets a thread of its own (a
// job blocked on a silent peer never holds up the next), at most
// max_threads at once, then run() refuses; a forked child starts afresh.
#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "core/background.h"

namespace bg = smc::core::background;

namespace {

/// A gate jobs wait at until the test opens it, counting who arrived.
struct gate {
  std::mutex mu;
  std::condition_variable cv;
  int arrived = 0;
  bool open = false;

  void pass() {
    std::unique_lock<std::mutex> lk(mu);
    ++arrived;
    cv.notify_all();
    cv.wait(lk, [this] { return open; });
  }
  bool wait_arrived(int n) {
    std::unique_lock<std::mutex> lk(mu);
    return cv.wait_for(lk, std::chrono::seconds(10), [&] { return arrived >= n; });
  }
  void release() {
    std::lock_guard<std::mutex> lk(mu);
    open = true;
    cv.notify_all();
  }
};

bool wait_idle() {
  for (int i = 0; i < 10000 && bg::busy() != 0; ++i) {
    std::this_thread::yield();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return bg::busy() == 0;
}

}  // namespace

TEST_CASE("background jobs run at once, each on a thread of its own, up to the limit",
          "[background]") {
  REQUIRE(wait_idle());
  gate g;
  const auto caller = std::this_thread::get_id();
  std::atomic<bool> on_caller{false};
  for (int i = 0; i < bg::max_threads; ++i) {
    REQUIRE(bg::run([&] {
      on_caller = on_caller || std::this_thread::get_id() == caller;
      g.pass();
    }));
  }
  // All of them are blocked at the same time: none waits for another.
  REQUIRE(g.wait_arrived(bg::max_threads));
  CHECK_FALSE(on_caller);
  CHECK(bg::busy() == bg::max_threads);
  // One more is refused, not queued behind the blocked ones.
  bool ran = false;
  CHECK_FALSE(bg::run([&] { ran = true; }));
  g.release();
  REQUIRE(wait_idle());
  CHECK_FALSE(ran);
  // Threads are there again for the next.
  gate g2;
  REQUIRE(bg::run([&] { g2.pass(); }));
  REQUIRE(g2.wait_arrived(1));
  g2.release();
  REQUIRE(wait_idle());
}

TEST_CASE("a forked child has no background threads and starts its own", "[background]") {
  REQUIRE(wait_idle());
  gate g;
  REQUIRE(bg::run([&] { g.pass(); }));  // busy in the parent across the fork
  REQUIRE(g.wait_arrived(1));
  bg::lock_for_fork();
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    bg::forget_after_fork();
    int status = bg::busy() == 0 ? 0 : 1;
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    if (!bg::run([&] {
          std::lock_guard<std::mutex> lk(mu);
          done = true;
          cv.notify_all();
        })) {
      status = 2;
    } else {
      std::unique_lock<std::mutex> lk(mu);
      if (!cv.wait_for(lk, std::chrono::seconds(10), [&] { return done; })) {
        status = 3;
      }
    }
    // The publish lock is usable in the child.
    { auto pub = bg::publishing(); }
    ::_exit(status);
  }
  bg::unlock_after_fork();
  int status = -1;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK(bg::busy() == 1);  // the parent's job is still its own
  g.release();
  REQUIRE(wait_idle());
}
