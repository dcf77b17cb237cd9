// RMB ring cursors: (wrap, count) pairs as in RFC 7609 and Linux smc_curs_*.
//
// count is a byte offset 0..size-1 inside the receiver's RMB element; wrap
// counts how often count has passed the end of the ring (16 bits, wraps at
// 0xFFFF). All helpers are pure; a peer-supplied cursor is validated with
// curs_ahead_within() before anything uses it.
#pragma once

#include <cstdint>

namespace smc::core {

struct cursor {
  uint16_t wrap = 0;
  uint32_t count = 0;
  friend bool operator==(const cursor&, const cursor&) = default;
};

/// Pack into one 64-bit word (wrap in bits 32..47) for atomic publication.
constexpr uint64_t curs_pack(cursor c) { return (uint64_t{c.wrap} << 32) | c.count; }
constexpr cursor curs_unpack(uint64_t v) {
  return cursor{static_cast<uint16_t>(v >> 32), static_cast<uint32_t>(v)};
}

/// c advanced by n bytes on a ring of `size` bytes (n <= size).
cursor curs_add(uint32_t size, cursor c, uint32_t n);

/// Bytes from old to neu, assuming at most one wrap between them (smc_curs_diff):
/// 0 when neu is not ahead of old.
uint32_t curs_diff(uint32_t size, cursor old_c, cursor neu);

/// -1, 0, 1 as a is behind, equal to, ahead of b (smc_curs_comp, wrap-aware).
int curs_comp(uint32_t size, cursor a, cursor b);

/// True when `to` is a well-formed cursor on a ring of `size` that is equal to
/// `from` or ahead of it by at most `size` bytes (same wrap and count >= from.count,
/// or wrap one further and count <= from.count). Used to validate peer cursors.
bool curs_ahead_within(uint32_t size, cursor from, cursor to);

/// RMB sizes on the wire: 4-bit code, size = 16 KiB << code (PROTOCOL.md section 6).
/// Encoding rounds up to a power of two and clamps to max_code (Linux smc_compress_bufsize).
uint8_t rmb_size_to_code(uint32_t size, uint8_t max_code = 15);
constexpr uint32_t rmb_code_to_size(uint8_t code) { return uint32_t{16384} << (code & 0x0F); }

}  // namespace smc::core
