// Deadlines. See deadlines.h.
#include "core/deadlines.h"

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <new>

#include "core/background.h"

namespace smc::core::deadlines {

namespace {

struct list {
  std::mutex mu;
  std::condition_variable cv;
  item* head = nullptr;  // earliest first
  item* tail = nullptr;
  int count = 0;
  bool watching = false;      // a thread sleeps until the head's deadline
  int64_t waking_at = 0;      // when it wakes up (0: it is not asleep)
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

// The deadline thread: fires what is due, sleeps until the next, and ends
// when nothing is armed.
void watch() {
  list& l = *g;
  std::unique_lock<std::mutex> lk(l.mu);
  for (;;) {
    if (l.head == nullptr) {
      l.watching = false;
      return;
    }
    const int64_t now = now_ms();
    item* it = l.head;
    if (it->at_ms <= now) {
      unlink_item(l, it);
      lk.unlock();
      it->fire(it);
      lk.lock();
      continue;
    }
    l.waking_at = it->at_ms;
    l.cv.wait_until(lk, std::chrono::steady_clock::time_point(std::chrono::milliseconds(it->at_ms)));
    l.waking_at = 0;
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
  if (l.head == it && l.waking_at != 0 && at_ms < l.waking_at) {
    l.cv.notify_one();  // earlier than the thread's next look
  }
  return true;
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
  l.waking_at = 0;
  new (&l.cv) std::condition_variable();  // whatever waiters it counted are the parent's
  l.mu.unlock();
}

}  // namespace smc::core::deadlines
