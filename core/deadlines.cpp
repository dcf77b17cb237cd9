// Deadlines. See deadlines.h.
#include "core/deadlines.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <new>

#include "core/background.h"

namespace smc::core::deadlines {

namespace {

// The thread looks at the list this often while anything is armed (an item
// fires at most this late), and for linger_ms after the list emptied, so
// that arming never has to wake it (no system call on the arming thread).
constexpr int64_t tick_ms = 10;
constexpr int64_t linger_ms = 1000;

struct list {
  std::mutex mu;
  std::condition_variable cv;  // (only the thread's sleep: nobody signals it)
  item* head = nullptr;  // earliest first
  item* tail = nullptr;
  int count = 0;
  bool watching = false;  // a thread looks at the list
};

// Leaked on purpose: the thread may outlive static destruction at exit.
list* g = new list();

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void unlink_item(list& l, item* it) {
  (it->prev != nullptr ? it->prev->next : l.head) = it->next;
  (it->next != nullptr ? it->next->prev : l.tail) = it->prev;
  it->prev = it->next = nullptr;
  it->linked = false;
  --l.count;
}

// The deadline thread: fires what is due, looks again a tick later, and
// ends once nothing was armed for linger_ms.
void watch() {
  list& l = *g;
  std::unique_lock<std::mutex> lk(l.mu);
  int64_t idle_since = 0;
  for (;;) {
    const int64_t now = now_ms();
    item* it = l.head;
    if (it != nullptr && it->at_ms <= now) {
      unlink_item(l, it);
      lk.unlock();
      it->fire(it);
      lk.lock();
      continue;
    }
    if (it == nullptr) {
      idle_since = idle_since != 0 ? idle_since : now;
      if (now - idle_since >= linger_ms) {
        l.watching = false;
        return;
      }
    } else {
      idle_since = 0;
    }
    const int64_t next = it != nullptr ? std::min(it->at_ms, now + tick_ms) : now + tick_ms;
    l.cv.wait_until(lk, std::chrono::steady_clock::time_point(std::chrono::milliseconds(next)));
  }
}

}  // namespace

bool arm(item* it, int64_t at_ms) {
  list& l = *g;
  std::unique_lock<std::mutex> lk(l.mu);
  if (it->linked) {
    unlink_item(l, it);
  } else {
    it->hold(it);
  }
  it->at_ms = at_ms;
  // From the tail: later handshakes have later deadlines.
  item* after = l.tail;
  while (after != nullptr && after->at_ms > at_ms) {
    after = after->prev;
  }
  it->prev = after;
  it->next = after != nullptr ? after->next : l.head;
  (it->next != nullptr ? it->next->prev : l.tail) = it;
  (after != nullptr ? after->next : l.head) = it;
  it->linked = true;
  ++l.count;
  if (!l.watching) {
    l.watching = true;
    lk.unlock();
    if (background::run(watch)) {
      return true;
    }
    lk.lock();
    l.watching = false;
    const bool was = it->linked;
    if (was) {
      unlink_item(l, it);
    }
    lk.unlock();
    if (was) {
      it->release(it);
    }
    return false;
  }
  return true;  // (the thread looks within a tick)
}

void disarm(item* it) {
  list& l = *g;
  std::unique_lock<std::mutex> lk(l.mu);
  if (!it->linked) {
    return;
  }
  unlink_item(l, it);
  lk.unlock();
  it->release(it);
}

int armed() {
  list& l = *g;
  std::lock_guard<std::mutex> lk(l.mu);
  return l.count;
}

void lock_for_fork() { g->mu.lock(); }
void unlock_after_fork() { g->mu.unlock(); }

void forget_after_fork() {
  // (The lock is ours since the prepare handler.) The child has no thread,
  // and the parent's handshakes are not its own: their owners drop them.
  list& l = *g;
  l.head = l.tail = nullptr;
  l.count = 0;
  l.watching = false;
  new (&l.cv) std::condition_variable();  // whatever waiters it counted are the parent's
  l.mu.unlock();
}

}  // namespace smc::core::deadlines
