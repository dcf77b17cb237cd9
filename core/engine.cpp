// Engine thread on Boost.Asio. See engine.h.
#include "core/engine.h"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "core/log.h"
#include "rdma/sys.h"

namespace smc::core::engine {

namespace {

namespace asio = boost::asio;

struct state {
  asio::io_context io{1};
  std::unique_ptr<asio::executor_work_guard<asio::io_context::executor_type>> guard;
  std::thread thread;
  std::thread::id id;
};

std::mutex g_mu;
state* g_state = nullptr;  // leaked at exit on purpose: the thread may still run

// Every call into Asio runs under rdma::library_calls (see rdma/sys.h): the
// system calls it makes through libc are the engine's own, not the
// application's.
state* get() {
  std::lock_guard<std::mutex> lk(g_mu);
  if (g_state != nullptr) {
    return g_state;
  }
  rdma::library_calls own;
  auto* s = new (std::nothrow) state();
  if (s == nullptr) {
    return nullptr;
  }
  try {
    s->guard = std::make_unique<asio::executor_work_guard<asio::io_context::executor_type>>(
        s->io.get_executor());
    // The application's signal handlers must never run on our thread.
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    s->thread = std::thread([s] {
      ++rdma::t_library_calls;  // for the thread's life
      s->id = std::this_thread::get_id();
      for (;;) {
        try {
          s->io.run();
          break;
        } catch (...) {
          SMC_LOG(error, "engine: exception in a handler; continuing");
        }
      }
    });
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    s->thread.detach();
    SMC_LOG(debug, "engine thread started");
  } catch (...) {
    return nullptr;
  }
  g_state = s;
  return s;
}

class fd_watch final : public watch {
 public:
  fd_watch(state* s, int fd, std::function<void()> cb)
      : s_(s), sd_(std::make_shared<asio::posix::stream_descriptor>(s->io, fd)),
        cb_(std::make_shared<std::function<void()>>(std::move(cb))),
        alive_(std::make_shared<std::atomic<bool>>(true)) {
    arm(s_, sd_, cb_, alive_);
  }
  ~fd_watch() override {
    alive_->store(false);
    // Cancel and release on the engine thread (Asio objects are not
    // thread-safe); the fd stays owned by whoever created it.
    auto sd = sd_;
    if (on_engine_thread()) {
      sd->cancel();
      sd->release();
      return;
    }
    // What the engine thread signals through is shared with it: after the
    // 5 s bound this thread goes, and the handler may still run later.
    struct signal {
      std::mutex m;
      std::condition_variable cv;
      bool done = false;
    };
    try {
      auto sig = std::make_shared<signal>();
      rdma::library_calls own;
      asio::post(s_->io, [sd, sig] {
        sd->cancel();
        sd->release();
        std::lock_guard<std::mutex> lk(sig->m);
        sig->done = true;
        sig->cv.notify_one();
      });
      std::unique_lock<std::mutex> lk(sig->m);
      sig->cv.wait_for(lk, std::chrono::seconds(5), [&] { return sig->done; });
    } catch (...) {
      // Out of memory: the descriptor stays with Asio (the fd is the
      // creator's to close; Asio never closes it).
    }
  }

 private:
  static void arm(state* s, std::shared_ptr<asio::posix::stream_descriptor> sd,
                  std::shared_ptr<std::function<void()>> cb,
                  std::shared_ptr<std::atomic<bool>> alive) {
    sd->async_wait(asio::posix::stream_descriptor::wait_read,
                   [s, sd, cb, alive](const boost::system::error_code& ec) {
                     if (ec || !alive->load()) {
                       return;
                     }
                     (*cb)();
                     if (alive->load()) {
                       arm(s, sd, cb, alive);
                     }
                   });
  }

  state* s_;
  std::shared_ptr<asio::posix::stream_descriptor> sd_;
  std::shared_ptr<std::function<void()>> cb_;
  std::shared_ptr<std::atomic<bool>> alive_;
};

}  // namespace

std::unique_ptr<watch> watch_fd(int fd, std::function<void()> on_readable) {
  state* s = get();
  if (s == nullptr) {
    return nullptr;
  }
  try {
    rdma::library_calls own;
    return std::make_unique<fd_watch>(s, fd, std::move(on_readable));
  } catch (...) {
    return nullptr;
  }
}

bool post(std::function<void()> f, uint32_t ms) {
  state* s = get();
  if (s == nullptr) {
    return false;
  }
  try {
    rdma::library_calls own;
    if (ms == 0) {
      asio::post(s->io, std::move(f));
      return true;
    }
    auto t = std::make_shared<asio::steady_timer>(s->io, std::chrono::milliseconds(ms));
    t->async_wait([t, f = std::move(f)](const boost::system::error_code& ec) {
      if (!ec) {
        f();
      }
    });
    return true;
  } catch (...) {
    return false;
  }
}

bool on_engine_thread() {
  state* s = g_state;
  return s != nullptr && std::this_thread::get_id() == s->id;
}

void forget_after_fork() {
  // The child has the memory but not the thread: start afresh when needed.
  g_state = nullptr;
  new (&g_mu) std::mutex();
}

}  // namespace smc::core::engine
