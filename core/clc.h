// CLC (connection layer control) messages: Proposal, Accept, Confirm, Decline,
// exchanged inside the freshly connected TCP stream (PROTOCOL.md section 2).
//
// Host-order structs and an explicit byte codec. decode() validates everything
// (eyecatchers, type, version, exact lengths, offsets, counts, trailer) before a
// field is trusted; encode() produces the bytes Linux produces for the same
// content. SMC-R fields are byte-exact with Linux net/smc (v2 as Linux sends
// today); the same-host shm path rides on the SMC-D v2 fields the way the
// kernel's loopback ISM device does.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

namespace smc::core::clc {

enum class msg_type : uint8_t { proposal = 1, accept = 2, confirm = 3, decline = 4 };

// SMC path types (byte 7: typev2 mask 0x0C >> 2, typev1 mask 0x03).
inline constexpr uint8_t type_r = 0;
inline constexpr uint8_t type_d = 1;
inline constexpr uint8_t type_n = 2;
inline constexpr uint8_t type_b = 3;

inline constexpr std::array<uint8_t, 4> eyecatcher_smcr{0xE2, 0xD4, 0xC3, 0xD9};  // "SMCR" EBCDIC
inline constexpr std::array<uint8_t, 4> eyecatcher_smcd{0xE2, 0xD4, 0xC3, 0xC4};  // "SMCD" EBCDIC

inline constexpr size_t header_len = 8;
inline constexpr size_t trailer_len = 4;
/// Largest CLC message we accept (a v2 Proposal with 8 IPv6 prefixes, 8 UEIDs,
/// 8 ISM entries is well below this).
inline constexpr size_t max_msg_len = 1024;

/// Reserved CHID of the loopback ISM device (kernel smc_loopback: 0xFFFF).
inline constexpr uint16_t loopback_chid = 0xFFFF;
/// CHID of the Proposal's extra ISM entry that carries a same-host client's
/// link key (this project's, rdma/shm/shm_link.h; no ISM device has it).
inline constexpr uint16_t link_key_chid = 0xFFFE;
/// CHIDs of the two extra entries with which a same-host client lends a slot
/// of a link it has in its Proposal (core/handshake: the server that owns
/// that link takes it, and no Confirm follows): (link id << 32 | slot), and
/// the token the slot's control page offers itself for.
inline constexpr uint16_t lend_slot_chid = 0xFFFD;
inline constexpr uint16_t lend_token_chid = 0xFFFC;
/// In an shm Accept's extended GID above the server's slot number: the
/// server took the slot the client's Proposal lent.
inline constexpr uint64_t took_lent_slot = uint64_t{1} << 32;

using eid_t = std::array<uint8_t, 32>;    // EBCDIC-free ASCII, blank padded
using gid_t = std::array<uint8_t, 16>;
using mac_t = std::array<uint8_t, 6>;
using peer_id_t = std::array<uint8_t, 8>;

enum class error {
  ok,
  short_buffer,     // fewer bytes than the header's length field says
  bad_eyecatcher,   // leading eyecatcher is neither SMCR nor SMCD
  bad_type,         // type not 1..4, or not the type the caller expected
  bad_version,      // version not 1 or 2, or not supported for this type
  bad_length,       // length field inconsistent with the content
  bad_trailer,      // trailing eyecatcher missing
  bad_field,        // a count, offset or enum value out of range
};
const char* to_string(error e);

/// Fixed 8-byte header, decoded.
struct header {
  msg_type type = msg_type::proposal;
  uint16_t length = 0;
  uint8_t version = 2;
  uint8_t typev2 = type_n;   // Proposal: v2 paths offered
  uint8_t typev1 = type_n;   // Proposal: v1 paths; Accept/Confirm: 0 = R, 1 = D
  bool flag = false;         // Accept/Confirm: first contact; Decline: out of sync
  bool smcd_eyecatcher = false;
};

/// Validates eyecatcher, type (1..4) and version (1..2) and that length is in
/// [header_len + trailer_len, max_msg_len]. `in` needs at least header_len bytes.
error peek_header(std::span<const uint8_t> in, header& out);

struct ipv6_prefix {
  std::array<uint8_t, 16> prefix{};
  uint8_t prefix_len = 0;
  friend bool operator==(const ipv6_prefix&, const ipv6_prefix&) = default;
};

struct ism_entry {        // SMC-Dv2 extension entry
  uint64_t gid = 0;
  uint16_t chid = 0;
  friend bool operator==(const ism_entry&, const ism_entry&) = default;
};

/// Proposal (type 1). Encoded as Linux does for header version 2: SMC-D area
/// always present; IP prefix area only when typev1 != N; v2 extension only when
/// typev2 != N; SMC-Dv2 extension only when typev2 is D or B.
struct proposal {
  uint8_t version = 2;
  uint8_t typev1 = type_n;
  uint8_t typev2 = type_n;
  // local block (SMC-R v1 identity)
  peer_id_t peer_id{};
  gid_t gid{};
  mac_t mac{};
  // SMC-D v1 area (ISM GID/CHID are sent and read only when typev1 is D or B)
  uint64_t ism_gid = 0;
  uint16_t ism_chid = 0;
  // IP prefix area (present when typev1 != N)
  uint32_t ipv4_subnet = 0;  // host order
  uint8_t ipv4_prefix_len = 0;
  std::vector<ipv6_prefix> ipv6_prefixes;  // at most 8
  // v2 extension (present when typev2 != N)
  std::vector<eid_t> ueids;  // at most 8
  uint8_t release = 1;       // 0 = v2.0, 1 = v2.1
  bool seid_indicator = false;
  gid_t roce_v2_gid{};
  uint8_t max_conns = 0;
  uint8_t max_links = 0;
  uint16_t feature_mask = 0;
  // SMC-Dv2 extension (present when typev2 is D or B)
  eid_t seid{};
  std::vector<ism_entry> ism_v2;  // at most 8
  friend bool operator==(const proposal&, const proposal&) = default;
};

/// Accept (type 2) / Confirm (type 3) for SMC-R (PROTOCOL.md 2.4), v1 (68 bytes)
/// or v2 (>= 108 bytes, with the first-contact extension when first_contact,
/// and in a first-contact v2 Confirm the GID list).
struct accept_confirm_r {
  msg_type type = msg_type::accept;
  uint8_t version = 2;
  bool first_contact = false;
  peer_id_t peer_id{};
  gid_t gid{};
  mac_t mac{};
  uint32_t qpn = 0;          // 24 bits
  uint32_t rmb_rkey = 0;
  uint8_t rmbe_idx = 1;
  uint32_t rmbe_alert_token = 0;
  uint8_t rmbe_size_code = 0;  // 4 bits
  uint8_t qp_mtu = 0;          // 4 bits, ib_mtu enum
  uint64_t rmb_dma_addr = 0;
  uint32_t psn = 0;            // 24 bits
  // v2
  eid_t eid{};
  // first-contact extension (v2 with first_contact)
  bool v2_direct = false;
  uint8_t os_type = 2;         // Linux
  uint8_t fce_release = 1;
  std::array<uint8_t, 32> hostname{};
  uint8_t max_conns = 0;
  uint8_t max_links = 0;
  uint16_t feature_mask = 0;
  uint32_t vendor_exp_options = 0;
  // GID list (v2 Confirm with first_contact), at most 8
  std::vector<gid_t> gid_list;
  friend bool operator==(const accept_confirm_r&, const accept_confirm_r&) = default;
};

/// Accept / Confirm for SMC-D (eyecatcher SMCD, path D), v1 (48 bytes) or v2
/// (with CHID, EID, extended GID; first-contact extension when first_contact).
/// The shm transport uses it as the kernel's loopback ISM does: gid = host id,
/// token = per-connection nonce, link_id = rendezvous id.
struct accept_confirm_d {
  msg_type type = msg_type::accept;
  uint8_t version = 2;
  bool first_contact = false;
  uint64_t gid = 0;
  uint64_t token = 0;
  uint8_t dmbe_idx = 0;
  uint8_t dmbe_size_code = 0;  // 4 bits
  uint32_t link_id = 0;
  // v2
  uint16_t chid = 0;
  eid_t eid{};
  uint64_t gid_ext = 0;
  // first-contact extension (v2 with first_contact): 36 bytes when fce_release
  // is 0, else the 52-byte v2.1 form carrying feature_mask (Linux
  // smc_clc_fill_fce_v2x; bit 0 = emulated-ISM/loopback support).
  uint8_t os_type = 2;
  uint8_t fce_release = 1;
  std::array<uint8_t, 32> hostname{};
  uint16_t feature_mask = 0;
  friend bool operator==(const accept_confirm_d&, const accept_confirm_d&) = default;
};

/// Decline (type 4): v1 28 bytes, v2 44 bytes.
struct decline {
  uint8_t version = 2;
  bool out_of_sync = false;
  peer_id_t peer_id{};
  uint32_t diagnosis = 0;
  uint8_t os_type = 2;                   // v2 only
  std::array<uint32_t, 4> diagnosis2{};  // v2 only
  friend bool operator==(const decline&, const decline&) = default;
};

std::vector<uint8_t> encode(const proposal& m);
std::vector<uint8_t> encode(const accept_confirm_r& m);
std::vector<uint8_t> encode(const accept_confirm_d& m);
std::vector<uint8_t> encode(const decline& m);

/// Each decode takes exactly one whole message (in.size() == header length
/// field) and validates it completely before filling `out`.
error decode(std::span<const uint8_t> in, proposal& out);
error decode(std::span<const uint8_t> in, accept_confirm_r& out);
error decode(std::span<const uint8_t> in, accept_confirm_d& out);
error decode(std::span<const uint8_t> in, decline& out);

/// Blank-padded 32-byte EID from a string (upper-cased, truncated to 32).
eid_t make_eid(const char* s);

}  // namespace smc::core::clc
