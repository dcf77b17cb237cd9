// CDC (connection data control) messages: 44 bytes, type 0xFE (PROTOCOL.md section 3).
// Host-order struct + explicit codec; the cursor arithmetic lives in cursor.h.
#pragma once

#include <array>
#include <cstdint>
#include <span>

#include "core/cursor.h"

namespace smc::core::cdc {

inline constexpr uint8_t type_cdc = 0xFE;
inline constexpr size_t msg_len = 44;

// producer flags (byte 24)
inline constexpr uint8_t prod_write_blocked = 0x80;
inline constexpr uint8_t prod_urg_pending = 0x40;
inline constexpr uint8_t prod_urg_present = 0x20;
inline constexpr uint8_t prod_cons_update_req = 0x10;
inline constexpr uint8_t prod_failover = 0x08;
// connection state flags (byte 25)
inline constexpr uint8_t conn_done_writing = 0x80;
inline constexpr uint8_t conn_closed = 0x40;
inline constexpr uint8_t conn_abnormal = 0x20;

struct message {
  uint16_t seqno = 0;
  uint32_t token = 0;   // the receiver's alert token
  cursor prod;
  cursor cons;
  uint8_t prod_flags = 0;
  uint8_t conn_flags = 0;
  friend bool operator==(const message&, const message&) = default;
};

enum class error { ok, short_buffer, bad_type, bad_length };

std::array<uint8_t, msg_len> encode(const message& m);
/// Validates type and length byte before reading any field.
error decode(std::span<const uint8_t> in, message& out);

/// Signed 16-bit sequence comparison: true when `rx` is older than `last`.
constexpr bool seq_older(uint16_t rx, uint16_t last) {
  return static_cast<int16_t>(static_cast<uint16_t>(rx - last)) < 0;
}

}  // namespace smc::core::cdc
