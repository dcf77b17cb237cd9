// The background pool. See background.h.
#include "core/background.h"

#include <pthread.h>
#include <signal.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <new>
#include <thread>

#include "core/log.h"

namespace smc::core::background {

namespace {

// An idle thread ends after this long without a job.
constexpr auto idle_linger = std::chrono::seconds(30);
// Each thread's stack (virtual: what a handshake touches is a few pages).
constexpr size_t thread_stack_bytes = 512 * 1024;

struct pool {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::function<void()>> jobs;
  int threads = 0;  // started and not ended
  int idle = 0;     // of those, waiting for a job
  int running = 0;  // jobs taken and not finished
};

// Leaked on purpose: threads may outlive static destruction at exit.
pool* g_pool = new pool();
std::mutex* g_publish = new std::mutex();

void worker(pool* p) {
  std::unique_lock<std::mutex> lk(p->mu);
  for (;;) {
    ++p->idle;
    const bool got = p->cv.wait_for(lk, idle_linger, [p] { return !p->jobs.empty(); });
    --p->idle;
    if (!got) {
      --p->threads;
      return;
    }
    auto job = std::move(p->jobs.front());
    p->jobs.pop_front();
    lk.unlock();
    try {
      job();
    } catch (...) {
      SMC_LOG(error, "background: exception in a job");
    }
    job = nullptr;  // what it holds is released before the thread waits again
    lk.lock();
    --p->running;
  }
}

void* worker_main(void* arg) {
  worker(static_cast<pool*>(arg));
  return nullptr;
}

}  // namespace

bool run(std::function<void()> job) {
  pool* p = g_pool;
  std::unique_lock<std::mutex> lk(p->mu);
  // Every job needs a thread of its own: one that blocks for a silent peer
  // must not hold up the next.
  if (p->running >= max_threads) {
    return false;
  }
  if (p->idle <= static_cast<int>(p->jobs.size())) {
    if (p->threads >= max_threads) {
      return false;  // (threads that just ended a job and are about to wait)
    }
    // The application's signal handlers never run on our threads; a small
    // stack each (a handshake needs little), detached.
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, thread_stack_bytes);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t t;
    const int rc = pthread_create(&t, &attr, worker_main, p);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    if (rc != 0) {
      return false;
    }
    ++p->threads;
  }
  try {
    p->jobs.push_back(std::move(job));
  } catch (...) {
    return false;
  }
  ++p->running;
  lk.unlock();
  p->cv.notify_one();
  return true;
}

std::unique_lock<std::mutex> publishing() { return std::unique_lock<std::mutex>(*g_publish); }

void lock_for_fork() {
  g_publish->lock();
  g_pool->mu.lock();
}

void unlock_after_fork() {
  g_pool->mu.unlock();
  g_publish->unlock();
}

void forget_after_fork() {
  // The parent's threads do not exist here; their jobs are the parent's.
  // (Leaked: the old objects may hold state no destructor should touch.)
  if (auto* p = new (std::nothrow) pool()) {
    g_pool = p;
  }
  if (auto* m = new (std::nothrow) std::mutex()) {
    g_publish = m;
  }
}

int busy() {
  std::lock_guard<std::mutex> lk(g_pool->mu);
  return g_pool->running;
}

}  // namespace smc::core::background
