// Process-wide counters, written as one JSON object at exit when
// SMC_STATS_FILE is set (%p = pid). Lock-free increments on any thread.
#pragma once

#include <cstdint>
#include <string>

#include "core/reason.h"

namespace smc::core::stats {

void count_shm();
void count_rdma();
void count_fallback(reason r);
void add_tx(uint64_t n);
void add_rx(uint64_t n);
/// An SMC-R receive completion event (a notification that messages came)
/// taken by the engine thread, or by the application thread that was blocked
/// waiting for them.
void count_cq_event(bool by_engine);

/// SMC connections passed to or from another process with their socket
/// (SCM_RIGHTS, core/handoff): offered by this process, taken over by it,
/// and ones that could not move and ended as a reset.
enum class handoff { offered, taken, reset };
void count_handoff(handoff h);

/// A handshake that ran on a background thread (core/background) because
/// the call that found it ready to run must not wait for the peer.
void count_background();
/// A handshake that went on in steps, with no thread (core::hs_step),
/// because the call that started it must not wait for the peer.
void count_stepped();
/// A look at such a handshake that found it waiting still (a few per
/// handshake: the steps themselves, a prefix of a message).
void count_step_wait();
/// A look at an accepted socket that its application had not touched yet
/// (its first bytes decided for it).
void count_untouched_look();

/// Same-host links (rdma/shm/shm_link.h): one made by a first-contact
/// exchange (reused = false), or a connection that reused one (true).
void count_shm_link(bool reused);
/// A connection over a link lent it a slot of ours made for it (not one an
/// earlier connection released).
void count_shm_fresh_slot();

/// A connection over a same-host link whose server took the slot the
/// client lent in its Proposal: no Confirm (counted on both sides).
void count_shm_lent_first();
/// A registration in an epoll set took over the watch of a same-host
/// slot's doorbell left there idle (by the slot's last connection, or by
/// this one's last registration) instead of adding one.
void count_bell_watch_kept();

/// A poll(), ppoll(), select() or pselect() on same-host SMC sockets only
/// that their state in memory answered (no system call).
void count_poll_from_memory();
/// A connection woke a sleeper of this process for a change of its own or
/// a drain (core/wake.h): through the sleeper's wake_fd (`listed`), or by
/// ringing its own doorbell for waiters not on its list.
void count_wake(bool listed);

/// The JSON document for the current counters.
std::string to_json(int pid);
/// Writes to_json() to `path_template` (%p -> pid) via a temporary file and
/// rename, so readers never see half a file. The temporary is created with
/// an unpredictable name (mkostemp) in the target's directory, and a target
/// that exists but is not a regular file is left alone. Returns false on
/// failure.
bool write_file(const std::string& path_template, int pid);
/// Zeroes every counter (a forked child starts its own account).
void reset();

}  // namespace smc::core::stats
