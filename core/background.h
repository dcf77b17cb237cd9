// Background decisions: the blocking steps of a handshake (waiting for the
// rest of a Proposal, the peer's Confirm, the shm rendezvous, SMC-R link
// setup) run on threads of our own, so that an application thread that did
// not ask to block (a non-blocking socket, an event loop's poll or
// epoll_wait) never waits for a peer. A silent or slow peer then costs only
// its own connection.
//
// The threads start with the first job and stay for the next (at most
// max_threads; an idle one ends after a while). When all are busy a job is
// refused: the caller decides at once instead (declines SMC), as Linux's
// limit_smc_hs turns handshakes away under load rather than queue them.
#pragma once

#include <functional>
#include <mutex>

namespace smc::core::background {

inline constexpr int max_threads = 128;

/// Runs job on a background thread. false: all max_threads are busy (or no
/// thread can be started); the job was not taken.
bool run(std::function<void()> job);

/// Jobs publish their outcome under this lock, which fork() takes first
/// (so a child never inherits a half-published outcome or a lock a job held).
std::unique_lock<std::mutex> publishing();

/// Atfork: prepare takes the publish lock and the pool's lock, parent
/// releases them; the child has no background threads: it starts afresh.
void lock_for_fork();
void unlock_after_fork();
void forget_after_fork();

/// Jobs running now (for tests and the stats).
int busy();

}  // namespace smc::core::background
