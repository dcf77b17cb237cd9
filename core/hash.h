// FNV-1a, 64 bits: the host id (boot id, network namespace) and the
// client's destination keys (core::dest_key) hash their bytes with it.
#pragma once

#include <cstddef>
#include <cstdint>

namespace smc::core {

inline constexpr uint64_t fnv1a_basis = 14695981039346656037ULL;

/// h (fnv1a_basis to start) with the n bytes at p mixed in.
inline uint64_t fnv1a(uint64_t h, const void* p, size_t n) {
  const auto* b = static_cast<const unsigned char*>(p);
  for (size_t i = 0; i < n; ++i) {
    h ^= b[i];
    h *= 1099511628211ULL;
  }
  return h;
}

}  // namespace smc::core
