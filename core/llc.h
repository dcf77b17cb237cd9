// LLC (link layer control) messages: CONFIRM LINK, ADD LINK, ADD LINK CONT,
// DELETE LINK, CONFIRM RKEY, DELETE RKEY, TEST LINK (PROTOCOL.md section 4,
// the LLC message formats of RFC 7609). They travel in the same 44-byte RDMA
// SEND slots as CDC messages; byte 0 tells them apart (classify()).
//
// Host-order structs and an explicit byte codec, as in cdc.h and clc.h.
// decode() validates type, version, length and every count/enum field before
// anything is written to `out`; encode() writes the bytes Linux net/smc writes
// for the same content (layouts checked against net/smc/smc_llc.c).
//
// Versions. v1 (SMC-Rv1): byte 0 is the plain type, byte 1 the length (44).
// v2 (SMC-Rv2): byte 0 carries version 2 in its high nibble (0x21 ...), and
// bytes 1-2 are a 16-bit length; see llc.cpp for the byte order of that field
// (little-endian on the wire, what x86/arm64 Linux sends) and the evidence.
//
// Not covered (documented limits):
//  * v2 messages longer than 44 bytes: ADD LINK v2 with its rkey extension,
//    DELETE RKEY v2 with more than 8 rkeys, REQUEST ADD LINK v2 with its GID
//    list. peek() accepts them (their header is valid) and the decoders answer
//    error::unsupported for them.
//  * REQUEST ADD LINK (0x25, v2 only) and CONFIRM RKEY CONT (0x08, v1 only)
//    have no decoder: Linux never sends CONFIRM RKEY CONT and ignores it;
//    REQUEST ADD LINK is an SMC-Rv2 multi-link feature we do not use yet.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

namespace smc::core::llc {

inline constexpr size_t msg_len = 44;          // SMC_WR_TX_SIZE; every v1 message
inline constexpr size_t max_len_v2 = 8192;     // SMC_WR_BUF_V2_SIZE, v2 length upper bound

// ---- message types (byte 0, low nibble; smc_llc.h enum smc_llc_msg_type) ----
inline constexpr uint8_t type_confirm_link = 0x01;
inline constexpr uint8_t type_add_link = 0x02;
inline constexpr uint8_t type_add_link_cont = 0x03;      // v1 only
inline constexpr uint8_t type_delete_link = 0x04;
inline constexpr uint8_t type_req_add_link = 0x05;       // v2 only
inline constexpr uint8_t type_confirm_rkey = 0x06;
inline constexpr uint8_t type_test_link = 0x07;
inline constexpr uint8_t type_confirm_rkey_cont = 0x08;  // v1 only, ignored by Linux
inline constexpr uint8_t type_delete_rkey = 0x09;

/// Byte 0 of a v2 message: version 2 in the high nibble (smc_wr_rx_hdr
/// llc_version:4 / llc_type:4), e.g. v2_type(type_confirm_link) == 0x21.
constexpr uint8_t v2_type(uint8_t type) { return static_cast<uint8_t>(0x20 | type); }
inline constexpr uint8_t type_confirm_link_v2 = v2_type(type_confirm_link);  // 0x21
inline constexpr uint8_t type_add_link_v2 = v2_type(type_add_link);          // 0x22
inline constexpr uint8_t type_delete_link_v2 = v2_type(type_delete_link);    // 0x24
inline constexpr uint8_t type_req_add_link_v2 = v2_type(type_req_add_link);  // 0x25
inline constexpr uint8_t type_confirm_rkey_v2 = v2_type(type_confirm_rkey);  // 0x26
inline constexpr uint8_t type_test_link_v2 = v2_type(type_test_link);        // 0x27
inline constexpr uint8_t type_delete_rkey_v2 = v2_type(type_delete_rkey);    // 0x29

// ---- flags (byte 3) --------------------------------------------------------
inline constexpr uint8_t flag_response = 0x80;          // SMC_LLC_FLAG_RESP, every type
// CONFIRM LINK: "no RMBE eyecatcher". Linux always sets both bits and refuses
// the link (-ENOTSUPP) when neither is set (smc_llc_eval_conf_link).
inline constexpr uint8_t flag_no_rmbe_eyec = 0x03;
// ADD LINK response: rejected; the reason is the low nibble of byte 2 (v1).
inline constexpr uint8_t flag_add_link_reject = 0x40;
inline constexpr uint8_t reject_no_alt_path = 1;        // SMC_LLC_REJ_RSN_NO_ALT_PATH
// DELETE LINK
inline constexpr uint8_t flag_delete_all = 0x40;        // terminate the link group, link_num 0
inline constexpr uint8_t flag_delete_orderly = 0x20;
// CONFIRM RKEY / DELETE RKEY response
inline constexpr uint8_t flag_rkey_negative = 0x20;     // SMC_LLC_FLAG_RKEY_NEG
inline constexpr uint8_t flag_rkey_retry = 0x10;        // CONFIRM RKEY only: retry rkey set

// ---- DELETE LINK reason codes (smc_llc.h SMC_LLC_DEL_*) ---------------------
inline constexpr uint32_t del_lost_path = 0x00010000;       // request: path lost
inline constexpr uint32_t del_op_init_term = 0x00020000;    // request: operator termination
inline constexpr uint32_t del_prog_init_term = 0x00030000;  // request: program termination
inline constexpr uint32_t del_prot_viol = 0x00040000;       // request: LLC protocol violation
inline constexpr uint32_t del_no_asym_needed = 0x00050000;  // request: asymmetric link unneeded
inline constexpr uint32_t del_no_link = 0x00100000;         // response: unknown link id
inline constexpr uint32_t del_no_lgr = 0x00200000;          // response: unknown link group
/// True for the codes above and for 0 (Linux answers a successful delete with 0).
/// decode() does not reject other codes: a DELETE LINK must be honoured whatever
/// its reason says.
bool is_known_delete_reason(uint32_t reason);

/// QP MTU codes (enum ib_mtu) allowed in ADD LINK byte 32; 0 = no QP data (a
/// client's invitation, or the request Linux enqueues locally).
inline constexpr uint8_t mtu_none = 0;
inline constexpr uint8_t mtu_max = 5;  // IB_MTU_4096

inline constexpr size_t confirm_rkey_max_others = 2;  // SMC_LLC_RKEYS_PER_MSG - 1
inline constexpr size_t add_link_cont_max_rt = 2;     // SMC_LLC_RKEYS_PER_CONT_MSG
inline constexpr size_t delete_rkey_max = 8;          // SMC_LLC_DEL_RKEY_MAX

using gid_t = std::array<uint8_t, 16>;
using mac_t = std::array<uint8_t, 6>;

constexpr bool is_response(uint8_t flags) { return (flags & flag_response) != 0; }

// ---- receive demultiplexing ---------------------------------------------------

enum class kind : uint8_t {
  cdc,      // 0xFE: a CDC message (cdc.h)
  llc_v1,   // an LLC v1 type Linux registers a handler for
  llc_v2,   // an LLC v2 type Linux registers a handler for
  unknown,  // anything else: Linux drops it silently (smc_wr_rx_demultiplex)
};
/// Classifies byte 0 of a received message. The LLC sets are exactly the types
/// in Linux's smc_llc_rx_handlers[]: v1 0x01-0x04, 0x06-0x09; v2 0x21, 0x22,
/// 0x24-0x27, 0x29.
kind classify(uint8_t first_byte);
constexpr bool is_llc(kind k) { return k == kind::llc_v1 || k == kind::llc_v2; }
bool is_llc(uint8_t first_byte);

// ---- common header ------------------------------------------------------------

enum class error {
  ok,
  short_buffer,  // fewer than 44 bytes (or fewer than the header needs)
  bad_type,      // byte 0 is not an LLC type Linux knows (type and version
                 // nibble together), or not the type the decoder wants
  bad_length,    // v1 length byte != 44; v2 length outside 44..8192 (either byte
                 // order), or != 44 for a message that has no longer form
  bad_field,     // a count or enum value out of range
  unsupported,   // a valid v2 message longer than 44 bytes (see the file comment)
};
const char* to_string(error e);

/// The first four bytes, decoded.
struct header {
  uint8_t type = 0;      // low nibble of byte 0 (type_* above)
  uint8_t version = 1;   // 1 or 2 (wire nibble 0 means v1)
  uint16_t length = 0;   // v1: byte 1; v2: the 16-bit length
  uint8_t flags = 0;     // byte 3
  friend bool operator==(const header&, const header&) = default;
};

/// Validates byte 0 (classify() must say llc_v1/llc_v2), the length field
/// (v1: exactly 44; v2: 44..8192, read little-endian, or big-endian when only
/// that reading fits, as an s390 sender writes it), and that `in` holds at
/// least 44 bytes (a receive slot may be larger; bytes past 44 are not looked
/// at). `out` is written only on success.
error peek(std::span<const uint8_t> in, header& out);

// ---- messages -----------------------------------------------------------------
// `version` selects the wire form on encode (2 -> v2, anything else -> v1) and
// is set by decode. `flags` is byte 3 as is (flag_* constants); reserved bits
// are kept, so a decoded request re-encodes byte for byte (Linux answers
// several requests by echoing them with flag_response added).

/// CONFIRM LINK (0x01 / 0x21), PROTOCOL.md 4.2.
struct confirm_link {
  uint8_t version = 1;
  uint8_t flags = flag_no_rmbe_eyec;
  mac_t sender_mac{};
  gid_t sender_gid{};
  uint32_t sender_qpn = 0;  // 24 bits
  uint8_t link_num = 0;     // link id, assigned by the server
  uint32_t link_uid = 0;    // diagnostic "link user id" (4 bytes, BE)
  uint8_t max_links = 0;    // Linux: 2 (v1), the negotiated value with a v2.1 peer
  uint8_t max_conns = 0;    // v2.1; 0 otherwise
  friend bool operator==(const confirm_link&, const confirm_link&) = default;
};

/// ADD LINK (0x02 / 0x22), PROTOCOL.md 4.2. Also the reject response
/// (flag_response | flag_add_link_reject, reason in reject_reason).
/// v2: only the 44-byte form (Linux's reject response) is supported; a v2 ADD
/// LINK request or accepting response carries the rkey extension and is longer.
struct add_link {
  uint8_t version = 1;
  uint8_t flags = 0;
  uint8_t reject_reason = 0;  // 4 bits, byte 2, v1 only (see llc.cpp on v2)
  mac_t sender_mac{};
  gid_t sender_gid{};
  uint32_t sender_qpn = 0;    // 24 bits
  uint8_t link_num = 0;
  uint8_t qp_mtu = mtu_none;  // 4 bits, 0..5
  uint32_t initial_psn = 0;   // 24 bits
  friend bool operator==(const add_link&, const add_link&) = default;
};

/// One rkey triple of ADD LINK CONT: an RMB's rkey on the existing link, its
/// rkey on the new link and its address on the new link.
struct add_link_rt {
  uint32_t rkey = 0;
  uint32_t rkey_new = 0;
  uint64_t vaddr_new = 0;
  friend bool operator==(const add_link_rt&, const add_link_rt&) = default;
};

/// ADD LINK CONTINUATION (0x03, v1 only), PROTOCOL.md 4.2.
/// num_rkeys counts the rkeys still to be transferred including this message
/// and may exceed 2; the first min(num_rkeys, 2) entries of rt are meaningful
/// (rt_in_message()). Both entries are always encoded and decoded as they are.
struct add_link_cont {
  uint8_t flags = 0;
  uint8_t link_num = 0;   // the new link
  uint8_t num_rkeys = 0;
  std::array<add_link_rt, add_link_cont_max_rt> rt{};
  size_t rt_in_message() const {
    return num_rkeys < add_link_cont_max_rt ? num_rkeys : add_link_cont_max_rt;
  }
  friend bool operator==(const add_link_cont&, const add_link_cont&) = default;
};

/// DELETE LINK (0x04 / 0x24), PROTOCOL.md 4.2.
struct delete_link {
  uint8_t version = 1;
  uint8_t flags = 0;
  uint8_t link_num = 0;   // 0 with flag_delete_all
  uint32_t reason = 0;    // del_* codes
  friend bool operator==(const delete_link&, const delete_link&) = default;
};

/// One additional CONFIRM RKEY entry: the RMB's rkey and address on another link.
struct rkey_entry {
  uint8_t link_id = 0;
  uint32_t rkey = 0;
  uint64_t vaddr = 0;
  friend bool operator==(const rkey_entry&, const rkey_entry&) = default;
};

/// CONFIRM RKEY (0x06 / 0x26), PROTOCOL.md 4.2: one RMB, its rkey/address on
/// the link the message travels on, plus up to 2 other links. Entries past
/// num_others are encoded and decoded as they are (Linux sends them zero).
struct confirm_rkey {
  uint8_t version = 1;
  uint8_t flags = 0;
  uint8_t num_others = 0;  // 0..2
  uint32_t rkey = 0;
  uint64_t vaddr = 0;
  std::array<rkey_entry, confirm_rkey_max_others> others{};
  friend bool operator==(const confirm_rkey&, const confirm_rkey&) = default;
};

/// DELETE RKEY (0x09 / 0x29), PROTOCOL.md 4.2.
struct delete_rkey {
  uint8_t version = 1;
  uint8_t flags = 0;
  uint8_t num_rkeys = 1;  // 1..8
  // Response only. v1: bit (0x80 >> i) set when rkey i was unknown. v2: the
  // number of unknown rkeys (Linux stores num_inval_rkeys here).
  uint8_t err_mask = 0;
  std::array<uint32_t, delete_rkey_max> rkeys{};  // entries past num_rkeys as they are
  friend bool operator==(const delete_rkey&, const delete_rkey&) = default;
};

/// TEST LINK (0x07 / 0x27), PROTOCOL.md 4.2. The peer echoes it with flag_response.
struct test_link {
  uint8_t version = 1;
  uint8_t flags = 0;
  std::array<uint8_t, 16> user_data{};
  friend bool operator==(const test_link&, const test_link&) = default;
};

std::array<uint8_t, msg_len> encode(const confirm_link& m);
std::array<uint8_t, msg_len> encode(const add_link& m);
std::array<uint8_t, msg_len> encode(const add_link_cont& m);
std::array<uint8_t, msg_len> encode(const delete_link& m);
std::array<uint8_t, msg_len> encode(const confirm_rkey& m);
std::array<uint8_t, msg_len> encode(const delete_rkey& m);
std::array<uint8_t, msg_len> encode(const test_link& m);

error decode(std::span<const uint8_t> in, confirm_link& out);
error decode(std::span<const uint8_t> in, add_link& out);
error decode(std::span<const uint8_t> in, add_link_cont& out);
error decode(std::span<const uint8_t> in, delete_link& out);
error decode(std::span<const uint8_t> in, confirm_rkey& out);
error decode(std::span<const uint8_t> in, delete_rkey& out);
error decode(std::span<const uint8_t> in, test_link& out);

}  // namespace smc::core::llc
