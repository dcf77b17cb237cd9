// Host identity for the same-host (shm) path: peers whose ids match share a
// kernel and a network namespace, so the abstract-socket rendezvous reaches them.
#pragma once

#include <cstdint>

namespace smc::core {

/// FNV-1a of the kernel boot id and the network-namespace inode; never 0.
/// Computed once per process (and again in a forked child: same value).
uint64_t host_id();

}  // namespace smc::core
