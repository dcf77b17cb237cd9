// The engine thread: one Boost.Asio io_context serving RDMA completion
// channels and timers. It exists only once something needs it (the first
// SMC-R link); plain TCP and shm connections never start it. Only engine.cpp
// includes Asio.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

namespace smc::core::engine {

/// A readiness watch on a file descriptor (e.g. a completion channel): the
/// callback runs on the engine thread each time fd becomes readable, until
/// the watch is destroyed. Destroying it from any thread is safe; after the
/// destructor returns the callback no longer runs.
class watch {
 public:
  virtual ~watch() = default;
};

/// Starts the engine if needed; nullptr if the thread cannot be started.
std::unique_ptr<watch> watch_fd(int fd, std::function<void()> on_readable);

/// Runs f on the engine thread after `ms` milliseconds (0 = as soon as possible).
bool post(std::function<void()> f, uint32_t ms = 0);

/// True on the engine thread.
bool on_engine_thread();

/// In a forked child the engine thread does not exist; call from the child's
/// atfork handler so nothing waits for it.
void forget_after_fork();

}  // namespace smc::core::engine
