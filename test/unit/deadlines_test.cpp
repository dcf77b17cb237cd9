// Unit tests for core/deadlines: items armed there are handed to their
// fire() once their deadline passes (in deadline order, each once), never
// after a disarm; the owner's hold and release balance in every path.
#include <catch2/catch.hpp>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <vector>

#include "core/deadlines.h"

namespace dl = smc::core::deadlines;

namespace {

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// What the items of one test did, in order.
struct record {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<int> fired;
  int holds = 0;
  int releases = 0;

  bool wait_fired(size_t n) {
    std::unique_lock<std::mutex> lk(mu);
    return cv.wait_for(lk, std::chrono::seconds(10), [&] { return fired.size() >= n; });
  }
};

struct timed : dl::item {
  record* rec = nullptr;
  int id = 0;
  timed(record& r, int i) : rec(&r), id(i) {
    owner = this;
    hold = [](dl::item* it) {
      std::lock_guard<std::mutex> lk(static_cast<timed*>(it->owner)->rec->mu);
      ++static_cast<timed*>(it->owner)->rec->holds;
    };
    release = [](dl::item* it) {
      std::lock_guard<std::mutex> lk(static_cast<timed*>(it->owner)->rec->mu);
      ++static_cast<timed*>(it->owner)->rec->releases;
    };
    fire = [](dl::item* it) {
      auto* t = static_cast<timed*>(it->owner);
      std::lock_guard<std::mutex> lk(t->rec->mu);
      t->rec->fired.push_back(t->id);
      ++t->rec->releases;  // fire() releases what arming held
      t->rec->cv.notify_all();
    };
  }
};

}  // namespace

TEST_CASE("deadlines fire in their order, each once", "[deadlines]") {
  record r;
  timed a(r, 1), b(r, 2), c(r, 3);
  const int64_t t = now_ms();
  REQUIRE(dl::arm(&a, t + 60));
  REQUIRE(dl::arm(&b, t + 20));
  REQUIRE(dl::arm(&c, t + 40));
  REQUIRE(r.wait_fired(3));
  std::lock_guard<std::mutex> lk(r.mu);
  CHECK(r.fired == std::vector<int>{2, 3, 1});
  CHECK(r.holds == 3);
  CHECK(r.releases == 3);
  CHECK_FALSE(a.linked);
}

TEST_CASE("a disarmed deadline never fires; re-arming moves it", "[deadlines]") {
  record r;
  timed gone(r, 1), moved(r, 2), last(r, 3);
  const int64_t t = now_ms();
  REQUIRE(dl::arm(&gone, t + 20));
  dl::disarm(&gone);
  dl::disarm(&gone);  // (twice: nothing more)
  REQUIRE(dl::arm(&moved, t + 600000));
  REQUIRE(dl::arm(&moved, t + 30));  // earlier than the thread's next look
  REQUIRE(dl::arm(&last, t + 80));
  REQUIRE(r.wait_fired(2));
  std::lock_guard<std::mutex> lk(r.mu);
  CHECK(r.fired == std::vector<int>{2, 3});
  CHECK(r.holds == 3);  // one per item that became armed, not per arm()
  CHECK(r.releases == 3);
}

TEST_CASE("an earlier deadline armed while the thread sleeps is not held up", "[deadlines]") {
  record r;
  timed far(r, 1), near(r, 2);
  REQUIRE(dl::arm(&far, now_ms() + 600000));
  REQUIRE(dl::arm(&near, now_ms() + 10));
  REQUIRE(r.wait_fired(1));  // (waits 10 s at most; the far one is 10 minutes away)
  dl::disarm(&far);
  std::lock_guard<std::mutex> lk(r.mu);
  CHECK(r.fired == std::vector<int>{2});
  CHECK(r.holds == 2);
  CHECK(r.releases == 2);
}
