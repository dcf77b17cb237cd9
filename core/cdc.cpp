// CDC message codec (PROTOCOL.md section 3.2) and the RMB ring cursor helpers
// declared in cursor.h (section 3.3, section 6). CMake builds both from this
// file; there is deliberately no cursor.cpp.
#include "core/cdc.h"

#include <algorithm>
#include <bit>

#include "core/byteorder.h"
#include "core/cursor.h"

namespace smc::core {

cursor curs_add(uint32_t size, cursor c, uint32_t n) {
  // 64-bit sum: count + n cannot overflow even for a bogus count near 2^32.
  uint64_t count = uint64_t{c.count} + n;
  if (count >= size) {
    count -= size;
    c.wrap = static_cast<uint16_t>(c.wrap + 1);  // 0xFFFF -> 0 is intended
  }
  c.count = static_cast<uint32_t>(count);
  return c;
}

int curs_comp(uint32_t /*size*/, cursor a, cursor b) {
  if (a.wrap == b.wrap) {
    if (a.count == b.count) {
      return 0;
    }
    return a.count < b.count ? -1 : 1;
  }
  // Linux compares wraps with a plain '>', which misorders 0xFFFF vs 0. The
  // signed 16-bit difference (as for sequence numbers) keeps the order across
  // the wrap of the wrap counter; count < size makes the wrap decisive.
  return static_cast<int16_t>(static_cast<uint16_t>(a.wrap - b.wrap)) > 0 ? 1 : -1;
}

uint32_t curs_diff(uint32_t size, cursor old_c, cursor neu) {
  if (curs_comp(size, neu, old_c) <= 0) {
    return 0;
  }
  if (old_c.wrap == neu.wrap) {
    return neu.count - old_c.count;
  }
  // One wrap in between (the caller's contract); 64-bit so that unvalidated
  // counts cannot wrap the arithmetic around.
  const uint64_t d = (uint64_t{size} - std::min<uint64_t>(old_c.count, size)) + neu.count;
  return static_cast<uint32_t>(std::min<uint64_t>(d, UINT32_MAX));
}

bool curs_ahead_within(uint32_t size, cursor from, cursor to) {
  if (size == 0 || to.count >= size || from.count >= size) {
    return false;
  }
  if (to.wrap == from.wrap) {
    return to.count >= from.count;
  }
  if (to.wrap == static_cast<uint16_t>(from.wrap + 1)) {
    // At most one full ring ahead: to.count <= from.count.
    return to.count <= from.count;
  }
  return false;
}

uint8_t rmb_size_to_code(uint32_t size, uint8_t max_code) {
  max_code = std::min<uint8_t>(max_code, 15);
  if (size <= 16384) {
    return 0;
  }
  // smc_compress_bufsize: floor(log2((size - 1) >> 14)) + 1, i.e. the code of
  // the next power of two >= size. bit_width(q) == floor(log2(q)) + 1 for q >= 1.
  const auto code = static_cast<uint8_t>(std::bit_width((size - 1) >> 14));
  return std::min(code, max_code);
}

}  // namespace smc::core

namespace smc::core::cdc {

namespace {

// Byte offsets inside the 44-byte message (struct smc_cdc_msg).
constexpr size_t off_type = 0;
constexpr size_t off_len = 1;
constexpr size_t off_seqno = 2;
constexpr size_t off_token = 4;
constexpr size_t off_prod_wrap = 10;  // 8..9 reserved
constexpr size_t off_prod_count = 12;
constexpr size_t off_cons_wrap = 18;  // 16..17 reserved
constexpr size_t off_cons_count = 20;
constexpr size_t off_prod_flags = 24;
constexpr size_t off_conn_flags = 25;  // 26..43 reserved

}  // namespace

std::array<uint8_t, msg_len> encode(const message& m) {
  std::array<uint8_t, msg_len> b{};  // reserved bytes must be zero
  uint8_t* p = b.data();
  p[off_type] = type_cdc;
  p[off_len] = static_cast<uint8_t>(msg_len);
  put_be16(p + off_seqno, m.seqno);
  put_be32(p + off_token, m.token);
  put_be16(p + off_prod_wrap, m.prod.wrap);
  put_be32(p + off_prod_count, m.prod.count);
  put_be16(p + off_cons_wrap, m.cons.wrap);
  put_be32(p + off_cons_count, m.cons.count);
  p[off_prod_flags] = m.prod_flags;
  p[off_conn_flags] = m.conn_flags;
  return b;
}

error decode(std::span<const uint8_t> in, message& out) {
  if (in.empty()) {
    return error::short_buffer;
  }
  if (in[off_type] != type_cdc) {
    return error::bad_type;
  }
  if (in.size() <= off_len) {
    return error::short_buffer;
  }
  // Linux drops a CDC whose length byte is not 44 (smc_cdc_rx_handler).
  if (in[off_len] != msg_len) {
    return error::bad_length;
  }
  // A receive slot may be larger than the message; bytes past 44 are ignored.
  if (in.size() < msg_len) {
    return error::short_buffer;
  }
  const uint8_t* p = in.data();
  message m;
  m.seqno = get_be16(p + off_seqno);
  m.token = get_be32(p + off_token);
  m.prod = cursor{get_be16(p + off_prod_wrap), get_be32(p + off_prod_count)};
  m.cons = cursor{get_be16(p + off_cons_wrap), get_be32(p + off_cons_count)};
  m.prod_flags = p[off_prod_flags];
  m.conn_flags = p[off_conn_flags];
  out = m;
  return error::ok;
}

}  // namespace smc::core::cdc
