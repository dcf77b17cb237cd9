// LLC message codec (PROTOCOL.md section 4; layouts checked field by field
// against Linux net/smc/smc_llc.c: struct smc_llc_hdr, smc_llc_msg_confirm_link,
// smc_llc_msg_add_link, smc_llc_msg_add_link_cont, smc_llc_msg_del_link,
// smc_llc_msg_confirm_rkey, smc_llc_msg_delete_rkey(_v2), smc_llc_msg_test_link,
// and against the hwipl/smc-go LLC parsers and test dumps).
//
// Every field is read and written at an explicit offset with the byteorder.h
// helpers; multi-byte fields are big-endian (the kernel uses htonl/cpu_to_be64/
// hton24), except the v2 length described below.
//
// ---- The v2 length field: byte order -----------------------------------------
// Decision: we WRITE the v2 length little-endian (low byte at offset 1, high
// byte at offset 2), which is what Linux on x86-64/arm64 puts on the wire, and
// we READ it little-endian first, falling back to big-endian (what s390 Linux
// sends) when only that reading is a plausible length.
// Evidence, all from net/smc/smc_llc.c (mainline 2025):
//  * struct smc_llc_hdr declares `union { struct { u8 length; u8 reserved:4,
//    add_link_rej_rsn:4; }; u16 length_v2; }`: a plain u16, where the same
//    file types every big-endian wire field as __be16/__be32/__be64 (e.g.
//    smc_llc_msg_del_link.reason, smc_rmb_rtoken.rmb_key) for sparse to check.
//  * smc_llc_init_msg_hdr() stores `hdr->length_v2 = len;` without htons().
//  * smc_llc_rx_handler() compares `llc->raw.hdr.length_v2 < sizeof(*llc)` in
//    host order and checks nothing else; no receive path uses the value as a
//    bound (ADD LINK v2 rkeys are counted by num_rkeys, DELETE RKEY v2 by
//    num_rkeys). So an x86 and an s390 kernel interoperate although they put
//    the field on the wire in opposite orders (44 is `2C 00` from x86, `00 2C`
//    from s390; the latter reads 11264 on x86, which still passes ">= 44").
//  * Side effect worth knowing: smc_llc_cli_add_link_reject() sets the reject
//    reason nibble and then calls smc_llc_init_msg_hdr(), which overwrites
//    byte 2 with the length's high byte. A v2 ADD LINK reject from x86 Linux
//    therefore carries reason 0; we encode and decode v2 the same way.
// The two readings of a 44-byte message cannot be confused: `2C 00` is 44
// little-endian, `00 2C` is 11264 little-endian (> 8192) and 44 big-endian.
#include "core/llc.h"

#include <cstring>
#include <optional>

#include "core/byteorder.h"
#include "core/cdc.h"

namespace smc::core::llc {

namespace {

// ---- header (struct smc_llc_hdr, 4 bytes) -------------------------------------
constexpr size_t off_type = 0;
constexpr size_t off_len = 1;    // v1: u8 length; v2: u16 length_v2 at 1..2
constexpr size_t off_byte2 = 2;  // v1: low nibble = ADD LINK reject reason
constexpr size_t off_flags = 3;
constexpr size_t hdr_len = 4;

// ---- CONFIRM LINK (smc_llc_msg_confirm_link) ----------------------------------
constexpr size_t cl_mac = 4;
constexpr size_t cl_gid = 10;
constexpr size_t cl_qpn = 26;
constexpr size_t cl_link_num = 29;
constexpr size_t cl_link_uid = 30;
constexpr size_t cl_max_links = 34;
constexpr size_t cl_max_conns = 35;
constexpr size_t cl_reserved = 36;  // 8 bytes
static_assert(cl_mac + 6 == cl_gid && cl_gid + 16 == cl_qpn && cl_qpn + 3 == cl_link_num);
static_assert(cl_link_uid + 4 == cl_max_links && cl_reserved + 8 == msg_len);

// ---- ADD LINK (smc_llc_msg_add_link) ------------------------------------------
constexpr size_t al_mac = 4;        // 10..11 reserved2
constexpr size_t al_gid = 12;
constexpr size_t al_qpn = 28;
constexpr size_t al_link_num = 31;
constexpr size_t al_mtu = 32;       // low nibble qp_mtu, high nibble reserved
constexpr size_t al_psn = 33;
constexpr size_t al_reserved = 36;  // 8 bytes
static_assert(al_mac + 6 + 2 == al_gid && al_gid + 16 == al_qpn && al_qpn + 3 == al_link_num);
static_assert(al_psn + 3 == al_reserved && al_reserved + 8 == msg_len);

// ---- ADD LINK CONT (smc_llc_msg_add_link_cont, __packed) -----------------------
constexpr size_t alc_link_num = 4;
constexpr size_t alc_num_rkeys = 5;  // 6..7 reserved2
constexpr size_t alc_rt = 8;
constexpr size_t alc_rt_len = 16;    // smc_llc_msg_add_link_cont_rt
constexpr size_t alc_reserved = 40;  // 4 bytes
static_assert(alc_rt + add_link_cont_max_rt * alc_rt_len == alc_reserved);
static_assert(alc_reserved + 4 == msg_len);

// ---- DELETE LINK (smc_llc_msg_del_link, __packed: reason is unaligned) ----------
constexpr size_t dl_link_num = 4;
constexpr size_t dl_reason = 5;
constexpr size_t dl_reserved = 9;  // 35 bytes
static_assert(dl_reserved + 35 == msg_len);

// ---- CONFIRM RKEY (smc_llc_msg_confirm_rkey; smc_rmb_rtoken is __packed, 13) ---
constexpr size_t cr_num = 4;        // rtoken[0].num_rkeys
constexpr size_t cr_rkey = 5;       // rtoken[0].rmb_key
constexpr size_t cr_vaddr = 9;      // rtoken[0].rmb_vaddr
constexpr size_t cr_others = 17;    // rtoken[1..2]: link_id, rmb_key, rmb_vaddr
constexpr size_t rtoken_len = 13;
constexpr size_t cr_reserved = 43;  // 1 byte
static_assert(cr_num + rtoken_len == cr_others);
static_assert(cr_others + confirm_rkey_max_others * rtoken_len == cr_reserved);
static_assert(cr_reserved + 1 == msg_len);

// ---- DELETE RKEY (smc_llc_msg_delete_rkey) ------------------------------------
constexpr size_t dr_num = 4;
constexpr size_t dr_err_mask = 5;   // 6..7 reserved
constexpr size_t dr_rkeys = 8;
constexpr size_t dr_reserved = 40;  // 4 bytes (v2: would be a 9th rkey)
static_assert(dr_rkeys + delete_rkey_max * 4 == dr_reserved && dr_reserved + 4 == msg_len);

// ---- TEST LINK (smc_llc_msg_test_link) ----------------------------------------
constexpr size_t tl_user_data = 4;
constexpr size_t tl_reserved = 20;  // 24 bytes
static_assert(tl_user_data + 16 == tl_reserved && tl_reserved + 24 == msg_len);

template <size_t N>
void put_bytes(uint8_t* p, const std::array<uint8_t, N>& a) {
  std::memcpy(p, a.data(), N);
}

template <size_t N>
void get_bytes(const uint8_t* p, std::array<uint8_t, N>& a) {
  std::memcpy(a.data(), p, N);
}

/// The v2 length at bytes 1..2 (see the file comment for the byte order).
std::optional<uint16_t> read_length_v2(const uint8_t* p) {
  const auto lo = p[off_len];
  const auto hi = p[off_len + 1];
  const auto le = static_cast<uint16_t>(lo | hi << 8);
  if (le >= msg_len && le <= max_len_v2) {
    return le;
  }
  const auto be = static_cast<uint16_t>(lo << 8 | hi);  // an s390 (big-endian) sender
  if (be >= msg_len && be <= max_len_v2) {
    return be;
  }
  return std::nullopt;
}

/// A zeroed 44-byte message with type, length and flags in place.
std::array<uint8_t, msg_len> frame(uint8_t type, uint8_t version, uint8_t flags) {
  std::array<uint8_t, msg_len> b{};  // reserved bytes must be zero
  if (version == 2) {
    b[off_type] = v2_type(type);
    // Little-endian, as x86/arm64 Linux writes its host-order u16.
    b[off_len] = static_cast<uint8_t>(msg_len & 0xFF);
    b[off_len + 1] = static_cast<uint8_t>(msg_len >> 8);
  } else {
    b[off_type] = type;
    b[off_len] = static_cast<uint8_t>(msg_len);
  }
  b[off_flags] = flags;
  return b;
}

/// peek() plus the decoder's own expectations: the type, and a 44-byte length.
/// `has_long_v2_form`: a longer v2 form exists that this codec leaves out, so a
/// v2 length above 44 is `unsupported` rather than `bad_length`.
error check(std::span<const uint8_t> in, uint8_t type, bool has_long_v2_form, header& h) {
  if (auto e = peek(in, h); e != error::ok) {
    return e;
  }
  if (h.type != type) {
    return error::bad_type;
  }
  if (h.length != msg_len) {  // only v2 can get here
    return has_long_v2_form ? error::unsupported : error::bad_length;
  }
  return error::ok;
}

}  // namespace

bool is_known_delete_reason(uint32_t reason) {
  switch (reason) {
    case 0:
    case del_lost_path:
    case del_op_init_term:
    case del_prog_init_term:
    case del_prot_viol:
    case del_no_asym_needed:
    case del_no_link:
    case del_no_lgr:
      return true;
    default:
      return false;
  }
}

kind classify(uint8_t first_byte) {
  switch (first_byte) {
    case cdc::type_cdc:
      return kind::cdc;
    case type_confirm_link:
    case type_add_link:
    case type_add_link_cont:
    case type_delete_link:
    case type_confirm_rkey:
    case type_test_link:
    case type_confirm_rkey_cont:
    case type_delete_rkey:
      return kind::llc_v1;
    case type_confirm_link_v2:
    case type_add_link_v2:
    case type_delete_link_v2:
    case type_req_add_link_v2:
    case type_confirm_rkey_v2:
    case type_test_link_v2:
    case type_delete_rkey_v2:
      return kind::llc_v2;
    default:
      // Includes 0x05 (REQUEST ADD LINK exists only as v2), 0x23 and 0x28
      // (ADD LINK CONT / CONFIRM RKEY CONT exist only as v1): Linux has no
      // handler for them and drops them.
      return kind::unknown;
  }
}

bool is_llc(uint8_t first_byte) { return is_llc(classify(first_byte)); }

const char* to_string(error e) {
  switch (e) {
    case error::ok:
      return "ok";
    case error::short_buffer:
      return "short buffer";
    case error::bad_type:
      return "bad type";
    case error::bad_length:
      return "bad length";
    case error::bad_field:
      return "bad field";
    case error::unsupported:
      return "unsupported (v2 message longer than 44 bytes)";
  }
  return "unknown error";
}

error peek(std::span<const uint8_t> in, header& out) {
  if (in.empty()) {
    return error::short_buffer;
  }
  const kind k = classify(in[off_type]);
  if (!is_llc(k)) {
    return error::bad_type;
  }
  if (in.size() < hdr_len) {
    return error::short_buffer;
  }
  header h;
  h.type = static_cast<uint8_t>(in[off_type] & 0x0F);
  h.version = k == kind::llc_v2 ? 2 : 1;
  h.flags = in[off_flags];
  if (h.version == 1) {
    // Linux drops a v1 LLC whose length byte is not 44 (smc_llc_rx_handler).
    if (in[off_len] != msg_len) {
      return error::bad_length;
    }
    h.length = msg_len;
  } else {
    const auto len = read_length_v2(in.data());
    if (!len) {
      return error::bad_length;
    }
    h.length = *len;
  }
  // Linux drops completions shorter than 44 bytes whatever the length says.
  if (in.size() < msg_len) {
    return error::short_buffer;
  }
  out = h;
  return error::ok;
}

// ---- CONFIRM LINK ---------------------------------------------------------------

std::array<uint8_t, msg_len> encode(const confirm_link& m) {
  auto b = frame(type_confirm_link, m.version, m.flags);
  uint8_t* p = b.data();
  put_bytes(p + cl_mac, m.sender_mac);
  put_bytes(p + cl_gid, m.sender_gid);
  put_be24(p + cl_qpn, m.sender_qpn);
  p[cl_link_num] = m.link_num;
  put_be32(p + cl_link_uid, m.link_uid);
  p[cl_max_links] = m.max_links;
  p[cl_max_conns] = m.max_conns;
  return b;
}

error decode(std::span<const uint8_t> in, confirm_link& out) {
  header h;
  if (auto e = check(in, type_confirm_link, false, h); e != error::ok) {
    return e;
  }
  const uint8_t* p = in.data();
  confirm_link m;
  m.version = h.version;
  m.flags = h.flags;
  get_bytes(p + cl_mac, m.sender_mac);
  get_bytes(p + cl_gid, m.sender_gid);
  m.sender_qpn = get_be24(p + cl_qpn);
  m.link_num = p[cl_link_num];
  m.link_uid = get_be32(p + cl_link_uid);
  // max_links / max_conns are not range-checked: Linux does not read them
  // from CONFIRM LINK (the negotiated values come from the CLC handshake).
  m.max_links = p[cl_max_links];
  m.max_conns = p[cl_max_conns];
  out = m;
  return error::ok;
}

// ---- ADD LINK -------------------------------------------------------------------

std::array<uint8_t, msg_len> encode(const add_link& m) {
  auto b = frame(type_add_link, m.version, m.flags);
  uint8_t* p = b.data();
  if (m.version != 2) {
    p[off_byte2] = static_cast<uint8_t>(m.reject_reason & 0x0F);
  }  // v2: byte 2 is the length's high byte; the reason does not travel (file comment)
  put_bytes(p + al_mac, m.sender_mac);
  put_bytes(p + al_gid, m.sender_gid);
  put_be24(p + al_qpn, m.sender_qpn);
  p[al_link_num] = m.link_num;
  p[al_mtu] = static_cast<uint8_t>(m.qp_mtu & 0x0F);
  put_be24(p + al_psn, m.initial_psn);
  return b;
}

error decode(std::span<const uint8_t> in, add_link& out) {
  header h;
  if (auto e = check(in, type_add_link, true, h); e != error::ok) {
    return e;
  }
  const uint8_t* p = in.data();
  add_link m;
  m.version = h.version;
  m.flags = h.flags;
  m.reject_reason = h.version == 2 ? 0 : static_cast<uint8_t>(p[off_byte2] & 0x0F);
  get_bytes(p + al_mac, m.sender_mac);
  get_bytes(p + al_gid, m.sender_gid);
  m.sender_qpn = get_be24(p + al_qpn);
  m.link_num = p[al_link_num];
  m.qp_mtu = static_cast<uint8_t>(p[al_mtu] & 0x0F);
  if (m.qp_mtu > mtu_max) {
    return error::bad_field;  // not an enum ib_mtu value
  }
  m.initial_psn = get_be24(p + al_psn);
  out = m;
  return error::ok;
}

// ---- ADD LINK CONT --------------------------------------------------------------

std::array<uint8_t, msg_len> encode(const add_link_cont& m) {
  auto b = frame(type_add_link_cont, 1, m.flags);
  uint8_t* p = b.data();
  p[alc_link_num] = m.link_num;
  p[alc_num_rkeys] = m.num_rkeys;
  for (size_t i = 0; i < add_link_cont_max_rt; ++i) {
    uint8_t* e = p + alc_rt + i * alc_rt_len;
    put_be32(e, m.rt[i].rkey);
    put_be32(e + 4, m.rt[i].rkey_new);
    put_be64(e + 8, m.rt[i].vaddr_new);
  }
  return b;
}

error decode(std::span<const uint8_t> in, add_link_cont& out) {
  header h;
  if (auto e = check(in, type_add_link_cont, false, h); e != error::ok) {
    return e;
  }
  const uint8_t* p = in.data();
  add_link_cont m;
  m.flags = h.flags;
  m.link_num = p[alc_link_num];
  // Not bounded: the count of rkeys still to come may exceed the 2 carried
  // here (smc_llc_add_link_cont); min(num_rkeys, 2) entries are meaningful.
  m.num_rkeys = p[alc_num_rkeys];
  for (size_t i = 0; i < add_link_cont_max_rt; ++i) {
    const uint8_t* e = p + alc_rt + i * alc_rt_len;
    m.rt[i] = add_link_rt{get_be32(e), get_be32(e + 4), get_be64(e + 8)};
  }
  out = m;
  return error::ok;
}

// ---- DELETE LINK ----------------------------------------------------------------

std::array<uint8_t, msg_len> encode(const delete_link& m) {
  auto b = frame(type_delete_link, m.version, m.flags);
  uint8_t* p = b.data();
  p[dl_link_num] = m.link_num;
  put_be32(p + dl_reason, m.reason);
  return b;
}

error decode(std::span<const uint8_t> in, delete_link& out) {
  header h;
  if (auto e = check(in, type_delete_link, false, h); e != error::ok) {
    return e;
  }
  const uint8_t* p = in.data();
  delete_link m;
  m.version = h.version;
  m.flags = h.flags;
  m.link_num = p[dl_link_num];
  m.reason = get_be32(p + dl_reason);  // any value: see is_known_delete_reason()
  out = m;
  return error::ok;
}

// ---- CONFIRM RKEY ---------------------------------------------------------------

std::array<uint8_t, msg_len> encode(const confirm_rkey& m) {
  auto b = frame(type_confirm_rkey, m.version, m.flags);
  uint8_t* p = b.data();
  p[cr_num] = m.num_others;
  put_be32(p + cr_rkey, m.rkey);
  put_be64(p + cr_vaddr, m.vaddr);
  for (size_t i = 0; i < confirm_rkey_max_others; ++i) {
    uint8_t* e = p + cr_others + i * rtoken_len;
    e[0] = m.others[i].link_id;
    put_be32(e + 1, m.others[i].rkey);
    put_be64(e + 5, m.others[i].vaddr);
  }
  return b;
}

error decode(std::span<const uint8_t> in, confirm_rkey& out) {
  header h;
  if (auto e = check(in, type_confirm_rkey, false, h); e != error::ok) {
    return e;
  }
  const uint8_t* p = in.data();
  confirm_rkey m;
  m.version = h.version;
  m.flags = h.flags;
  m.num_others = p[cr_num];
  // Only 2 other-link entries fit. (Linux's smc_llc_rmt_conf_rkey lets 3
  // through and then reads 2; nothing sends 3, as a group has at most 3 links.)
  if (m.num_others > confirm_rkey_max_others) {
    return error::bad_field;
  }
  m.rkey = get_be32(p + cr_rkey);
  m.vaddr = get_be64(p + cr_vaddr);
  for (size_t i = 0; i < confirm_rkey_max_others; ++i) {
    const uint8_t* e = p + cr_others + i * rtoken_len;
    m.others[i] = rkey_entry{e[0], get_be32(e + 1), get_be64(e + 5)};
  }
  out = m;
  return error::ok;
}

// ---- DELETE RKEY ----------------------------------------------------------------

std::array<uint8_t, msg_len> encode(const delete_rkey& m) {
  auto b = frame(type_delete_rkey, m.version, m.flags);
  uint8_t* p = b.data();
  p[dr_num] = m.num_rkeys;
  p[dr_err_mask] = m.err_mask;
  for (size_t i = 0; i < delete_rkey_max; ++i) {
    put_be32(p + dr_rkeys + 4 * i, m.rkeys[i]);
  }
  return b;
}

error decode(std::span<const uint8_t> in, delete_rkey& out) {
  header h;
  if (auto e = check(in, type_delete_rkey, true, h); e != error::ok) {
    return e;
  }
  const uint8_t* p = in.data();
  delete_rkey m;
  m.version = h.version;
  m.flags = h.flags;
  m.num_rkeys = p[dr_num];
  m.err_mask = p[dr_err_mask];
  // 1..8 in the 44-byte form (Linux sends 1; it clamps larger counts to 8
  // on receive, we refuse them).
  if (m.num_rkeys == 0 || m.num_rkeys > delete_rkey_max) {
    return error::bad_field;
  }
  if (h.version == 2) {
    if (m.err_mask > m.num_rkeys) {  // v2: a count of unknown rkeys
      return error::bad_field;
    }
  } else if ((m.err_mask & (0xFFu >> m.num_rkeys)) != 0) {
    return error::bad_field;  // v1: a bit for an rkey the message does not carry
  }
  for (size_t i = 0; i < delete_rkey_max; ++i) {
    m.rkeys[i] = get_be32(p + dr_rkeys + 4 * i);
  }
  out = m;
  return error::ok;
}

// ---- TEST LINK ------------------------------------------------------------------

std::array<uint8_t, msg_len> encode(const test_link& m) {
  auto b = frame(type_test_link, m.version, m.flags);
  put_bytes(b.data() + tl_user_data, m.user_data);
  return b;
}

error decode(std::span<const uint8_t> in, test_link& out) {
  header h;
  if (auto e = check(in, type_test_link, false, h); e != error::ok) {
    return e;
  }
  test_link m;
  m.version = h.version;
  m.flags = h.flags;
  get_bytes(in.data() + tl_user_data, m.user_data);
  out = m;
  return error::ok;
}

}  // namespace smc::core::llc
