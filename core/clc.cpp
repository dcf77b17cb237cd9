// CLC message codec: Proposal, Accept/Confirm (SMC-R and SMC-D), Decline
// (PROTOCOL.md section 2; layouts checked against Linux net/smc smc_clc.h/.c).
//
// Every field is read and written at an explicit byte offset with the
// byteorder.h helpers. Decoders check the frame (eyecatcher, type, version,
// length == buffer size, trailer), then walk the variable parts with bounds
// checks, and only when the whole message is known to be consistent build the
// result in a local and assign it to `out`.
#include "core/clc.h"

#include <algorithm>
#include <cstring>

#include "core/byteorder.h"

namespace smc::core::clc {

namespace {

// ---- sizes ----------------------------------------------------------------
constexpr size_t max_entries = 8;          // IPv6 prefixes, UEIDs, ISM entries, GIDs
constexpr size_t eid_len = 32;
constexpr size_t gid_len = 16;
constexpr size_t ipv6_prefix_len = 17;     // packed: 16-byte prefix + length byte
constexpr size_t prefix_area_len = 8;      // smc_clc_msg_proposal_prefix
constexpr size_t smcd_area_len = 40;       // smc_clc_msg_smcd
constexpr size_t v2_ext_fixed_len = 40;    // smc_clc_v2_extension_fixed
constexpr size_t smcd_v2_ext_fixed_len = 48;  // smc_clc_smcd_v2_extension_fixed
constexpr size_t ism_entry_len = 10;       // smc_clc_smcd_gid_chid (packed)
constexpr size_t fce_len_v20 = 36;         // smc_clc_first_contact_ext
constexpr size_t fce_len_v21 = 52;         // smc_clc_first_contact_ext_v2x
constexpr size_t gle_hdr_len = 4;          // smc_clc_fce_gid_ext without GIDs

constexpr size_t smcr_len_v1 = 68;   // SMCR_CLC_ACCEPT_CONFIRM_LEN
constexpr size_t smcr_len_v2 = 108;  // SMCR_CLC_ACCEPT_CONFIRM_LEN_V2
constexpr size_t smcd_len_v1 = 48;   // SMCD_CLC_ACCEPT_CONFIRM_LEN
constexpr size_t smcd_len_v2 = 78;   // SMCD_CLC_ACCEPT_CONFIRM_LEN_V2
constexpr size_t decline_len_v1 = 28;
constexpr size_t decline_len_v2 = 44;
constexpr size_t diag2_count = 4;

// ---- offsets (from the first header byte) ----------------------------------
constexpr size_t off_type = 4;
constexpr size_t off_length = 5;
constexpr size_t off_vers = 7;
constexpr size_t off_peer_id = 8;     // local block: peer id, GID, MAC
constexpr size_t off_gid = 16;
constexpr size_t off_mac = 32;

// Proposal
constexpr size_t off_iparea = 38;
constexpr size_t off_smcd_area = 40;  // right behind iparea_offset
constexpr size_t off_ism_gid = 40;
constexpr size_t off_ism_chid = 48;
constexpr size_t off_v2_ext_offset = 50;
constexpr size_t v2_ext_base = 52;    // v2_ext_offset counts from the end of its field
constexpr size_t off_after_smcd = off_smcd_area + smcd_area_len;  // 80
// inside the prefix area
constexpr size_t pfx_subnet = 0;
constexpr size_t pfx_len = 4;
constexpr size_t pfx_v6_cnt = 7;
// inside the v2 extension
constexpr size_t v2_eid_cnt = 0;
constexpr size_t v2_ism_cnt = 1;
constexpr size_t v2_flags = 3;
constexpr size_t v2_smcd_off = 6;
constexpr size_t v2_smcd_base = 8;  // smcd_v2_ext_offset counts from the end of its field
constexpr size_t v2_roce_gid = 8;
constexpr size_t v2_max_conns = 24;
constexpr size_t v2_max_links = 25;
constexpr size_t v2_feature_mask = 26;

// SMC-R Accept/Confirm
constexpr size_t r_qpn = 38;
constexpr size_t r_rkey = 41;
constexpr size_t r_rmbe_idx = 45;
constexpr size_t r_token = 46;
constexpr size_t r_size_mtu = 50;
constexpr size_t r_dma_addr = 52;
constexpr size_t r_psn = 61;
constexpr size_t r_eid = 64;
constexpr size_t r_fce = 104;  // offsetofend(r1)

// SMC-D Accept/Confirm
constexpr size_t d_gid = 8;
constexpr size_t d_token = 16;
constexpr size_t d_dmbe_idx = 24;
constexpr size_t d_dmbe_size = 25;
constexpr size_t d_link_id = 28;
constexpr size_t d_chid = 32;
constexpr size_t d_eid = 34;
constexpr size_t d_gid_ext = 66;
constexpr size_t d_fce = 74;  // offsetofend(d1)

// first-contact extension
constexpr size_t fce_direct = 0;
constexpr size_t fce_os_rel = 1;
constexpr size_t fce_hostname = 4;
constexpr size_t fce_max_conns = 36;
constexpr size_t fce_max_links = 37;
constexpr size_t fce_feature_mask = 38;
constexpr size_t fce_vendor_exp = 40;

// Decline
constexpr size_t dcl_diag = 16;
constexpr size_t dcl_os = 20;
constexpr size_t dcl_diag2 = 24;

constexpr uint8_t first_contact_bit = 0x08;  // SMC_FIRST_CONTACT_MASK in byte 7

bool smcd_indicated(uint8_t t) { return t == type_d || t == type_b; }

bool is_eyecatcher(const uint8_t* p) {
  return std::equal(eyecatcher_smcr.begin(), eyecatcher_smcr.end(), p) ||
         std::equal(eyecatcher_smcd.begin(), eyecatcher_smcd.end(), p);
}

/// [off, off + n) lies inside [0, end): overflow-safe.
bool fits(size_t off, size_t n, size_t end) { return off <= end && n <= end - off; }

template <size_t N>
void put_bytes(uint8_t* p, const std::array<uint8_t, N>& a) {
  std::memcpy(p, a.data(), N);
}

template <size_t N>
void get_bytes(const uint8_t* p, std::array<uint8_t, N>& a) {
  std::memcpy(a.data(), p, N);
}

/// Zero-filled message of `len` bytes with header and trailer in place.
std::vector<uint8_t> make_frame(const std::array<uint8_t, 4>& eye, msg_type type, size_t len,
                                uint8_t byte7) {
  std::vector<uint8_t> b(len, 0);
  put_bytes(b.data(), eye);
  b[off_type] = static_cast<uint8_t>(type);
  put_be16(b.data() + off_length, static_cast<uint16_t>(len));
  b[off_vers] = byte7;
  put_bytes(b.data() + len - trailer_len, eye);
  return b;
}

/// Common frame checks for one whole message: header fields, expected type,
/// buffer size == length field, trailer (if check_trailer).
error check_frame(std::span<const uint8_t> in, header& h, bool check_trailer) {
  if (auto e = peek_header(in, h); e != error::ok) {
    return e;
  }
  if (in.size() < h.length) {
    return error::short_buffer;
  }
  if (in.size() > h.length) {
    return error::bad_length;
  }
  if (check_trailer && !is_eyecatcher(in.data() + h.length - trailer_len)) {
    return error::bad_trailer;
  }
  return error::ok;
}

/// Accept/Confirm header checks shared by the R and D decoders.
error check_accept_confirm(std::span<const uint8_t> in, header& h, uint8_t want_path) {
  if (auto e = check_frame(in, h, true); e != error::ok) {
    return e;
  }
  if (h.type != msg_type::accept && h.type != msg_type::confirm) {
    return error::bad_type;
  }
  // Accept/Confirm name exactly one path: R or D (smc_clc_msg_acc_conf_valid).
  if (h.typev1 != type_r && h.typev1 != type_d) {
    return error::bad_field;
  }
  if (h.typev1 != want_path) {
    return error::bad_type;  // the other path's message: the caller asked for the wrong decoder
  }
  return error::ok;
}

size_t clamp_count(size_t n) { return std::min(n, max_entries); }

}  // namespace

const char* to_string(error e) {
  switch (e) {
    case error::ok:
      return "ok";
    case error::short_buffer:
      return "short buffer";
    case error::bad_eyecatcher:
      return "bad eyecatcher";
    case error::bad_type:
      return "bad type";
    case error::bad_version:
      return "bad version";
    case error::bad_length:
      return "bad length";
    case error::bad_trailer:
      return "bad trailer";
    case error::bad_field:
      return "bad field";
  }
  return "unknown";
}

error peek_header(std::span<const uint8_t> in, header& out) {
  if (in.size() < header_len) {
    return error::short_buffer;
  }
  const uint8_t* p = in.data();
  if (!is_eyecatcher(p)) {
    return error::bad_eyecatcher;
  }
  const uint8_t type = p[off_type];
  if (type < static_cast<uint8_t>(msg_type::proposal) ||
      type > static_cast<uint8_t>(msg_type::decline)) {
    return error::bad_type;
  }
  const uint8_t version = p[off_vers] >> 4;
  if (version < 1 || version > 2) {
    return error::bad_version;
  }
  const uint16_t length = get_be16(p + off_length);
  if (length < header_len + trailer_len || length > max_msg_len) {
    return error::bad_length;
  }
  header h;
  h.type = static_cast<msg_type>(type);
  h.length = length;
  h.version = version;
  h.typev2 = (p[off_vers] >> 2) & 0x03;
  h.typev1 = p[off_vers] & 0x03;
  h.flag = (p[off_vers] & first_contact_bit) != 0;
  h.smcd_eyecatcher = std::equal(eyecatcher_smcd.begin(), eyecatcher_smcd.end(), p);
  out = h;
  return error::ok;
}

// ---- Proposal ---------------------------------------------------------------
//
// v2 (what Linux sends today):
//   0 header | 8 local block (30) | 38 iparea_offset | 40 SMC-D area (40):
//   40 ISM GID, 48 ISM CHID, 50 v2_ext_offset (from 52), 52 OUI/options/reserved
//   80 IP prefix area (8 + 17n)                  if typev1 != N (iparea_offset 40)
//   X  v2 extension (40) + 32 * eid_cnt UEIDs    if typev2 != N (X = 52 + v2_ext_offset)
//   Y  SMC-Dv2 extension (48) + 10 * k entries   if typev2 is D/B
//      (Y = X + 8 + smcd_v2_ext_offset)
//   trailer
// v1: local block, iparea_offset o (<= 40; SMC-D area at 40 when o == 40),
//   prefix area at 40 + o, trailer.

std::vector<uint8_t> encode(const proposal& m) {
  const bool v1 = m.version == 1;
  const size_t n6 = clamp_count(m.ipv6_prefixes.size());
  const size_t ne = clamp_count(m.ueids.size());
  const size_t nd = clamp_count(m.ism_v2.size());

  // v1 carries an IP prefix area always and the SMC-D area only when it offers
  // SMC-D; v2 always carries the SMC-D area and the prefix area only if typev1 != N.
  const bool has_smcd_area = !v1 || smcd_indicated(m.typev1);
  const bool has_prefix = v1 || m.typev1 != type_n;
  const bool has_v2_ext = !v1 && m.typev2 != type_n;
  const bool has_smcd_v2_ext = has_v2_ext && smcd_indicated(m.typev2);

  const size_t prefix_off = has_smcd_area ? off_after_smcd : off_smcd_area;
  const size_t v2_off = prefix_off + (has_prefix ? prefix_area_len + ipv6_prefix_len * n6 : 0);
  const size_t smcd_v2_off = v2_off + (has_v2_ext ? v2_ext_fixed_len + eid_len * ne : 0);
  const size_t body_end = smcd_v2_off + (has_smcd_v2_ext ? smcd_v2_ext_fixed_len + ism_entry_len * nd : 0);
  const size_t len = body_end + trailer_len;

  // typev2 bits are reserved in a v1 header.
  const auto byte7 = static_cast<uint8_t>(((m.version & 0x0F) << 4) |
                                          (v1 ? 0 : (m.typev2 & 0x03) << 2) | (m.typev1 & 0x03));
  std::vector<uint8_t> b = make_frame(eyecatcher_smcr, msg_type::proposal, len, byte7);
  uint8_t* p = b.data();
  put_bytes(p + off_peer_id, m.peer_id);
  put_bytes(p + off_gid, m.gid);
  put_bytes(p + off_mac, m.mac);

  if (has_smcd_area) {
    // iparea_offset skips the SMC-D area only when a prefix area follows it
    // (Linux sends 0 with typev1 == N: the prefix area is absent then).
    put_be16(p + off_iparea, has_prefix ? static_cast<uint16_t>(smcd_area_len) : 0);
    // ISM GID/CHID only when typev1 offers SMC-D, as Linux fills them. This
    // matters: with typev1 == N Linux still checks the "IPv6 count" at
    // 40 + iparea_offset + 7 = byte 47, the ISM GID's low byte, against 8.
    if (smcd_indicated(m.typev1)) {
      put_be64(p + off_ism_gid, m.ism_gid);
      put_be16(p + off_ism_chid, m.ism_chid);
    }
    put_be16(p + off_v2_ext_offset, has_v2_ext ? static_cast<uint16_t>(v2_off - v2_ext_base) : 0);
  }
  if (has_prefix) {
    uint8_t* q = p + prefix_off;
    put_be32(q + pfx_subnet, m.ipv4_subnet);
    q[pfx_len] = m.ipv4_prefix_len;
    q[pfx_v6_cnt] = static_cast<uint8_t>(n6);
    q += prefix_area_len;
    for (size_t i = 0; i < n6; ++i, q += ipv6_prefix_len) {
      put_bytes(q, m.ipv6_prefixes[i].prefix);
      q[16] = m.ipv6_prefixes[i].prefix_len;
    }
  }
  if (has_v2_ext) {
    uint8_t* x = p + v2_off;
    x[v2_eid_cnt] = static_cast<uint8_t>(ne);
    x[v2_ism_cnt] = has_smcd_v2_ext ? static_cast<uint8_t>(nd) : 0;
    x[v2_flags] = static_cast<uint8_t>(((m.release & 0x0F) << 4) | (m.seid_indicator ? 1 : 0));
    if (has_smcd_v2_ext) {
      put_be16(x + v2_smcd_off, static_cast<uint16_t>(smcd_v2_off - (v2_off + v2_smcd_base)));
    }
    put_bytes(x + v2_roce_gid, m.roce_v2_gid);
    x[v2_max_conns] = m.max_conns;
    x[v2_max_links] = m.max_links;
    put_be16(x + v2_feature_mask, m.feature_mask);
    for (size_t i = 0; i < ne; ++i) {
      put_bytes(x + v2_ext_fixed_len + eid_len * i, m.ueids[i]);
    }
  }
  if (has_smcd_v2_ext) {
    uint8_t* y = p + smcd_v2_off;
    put_bytes(y, m.seid);
    y += smcd_v2_ext_fixed_len;
    for (size_t i = 0; i < nd; ++i, y += ism_entry_len) {
      put_be64(y, m.ism_v2[i].gid);
      put_be16(y + 8, m.ism_v2[i].chid);
    }
  }
  return b;
}

error decode(std::span<const uint8_t> in, proposal& out) {
  header h;
  if (auto e = check_frame(in, h, true); e != error::ok) {
    return e;
  }
  if (h.type != msg_type::proposal) {
    return error::bad_type;
  }
  const uint8_t* p = in.data();
  const size_t body_end = h.length - trailer_len;
  if (!fits(0, off_smcd_area, body_end)) {
    return error::bad_length;
  }
  const uint16_t iparea = get_be16(p + off_iparea);
  // Linux locates the prefix area at 40 + iparea_offset and rejects anything
  // beyond the 40-byte SMC-D area (smc_clc_proposal_get_prefix).
  if (iparea > smcd_area_len) {
    return error::bad_field;
  }

  proposal r;
  r.version = h.version;
  r.typev1 = h.typev1;
  r.typev2 = h.version == 1 ? type_n : h.typev2;

  // First pass: walk the layout with bounds checks only.
  size_t prefix_off = 0;
  size_t n6 = 0;
  size_t v2_off = 0;
  size_t ne = 0;
  size_t smcd_v2_off = 0;
  size_t nd = 0;
  bool has_smcd_area = false;
  bool has_prefix = false;
  bool has_v2_ext = false;
  bool has_smcd_v2_ext = false;
  size_t pos = 0;

  if (h.version == 1) {
    if (h.typev1 == type_n) {
      return error::bad_field;  // a v1 Proposal offering nothing (Linux rejects it)
    }
    // Old Linux put the SMC-D area in the "future growth" gap when it offered
    // SMC-D; otherwise the gap is skipped unread.
    has_smcd_area = iparea == smcd_area_len;
    has_prefix = true;
    pos = off_smcd_area + iparea;
  } else {
    has_smcd_area = true;
    has_prefix = h.typev1 != type_n;
    has_v2_ext = h.typev2 != type_n;
    has_smcd_v2_ext = smcd_indicated(h.typev2);
    // The prefix area must directly follow the SMC-D area: Linux finds it via
    // iparea_offset but sizes the message as if it were at 80.
    if (has_prefix && iparea != smcd_area_len) {
      return error::bad_field;
    }
    pos = off_after_smcd;
  }
  if (!fits(0, pos, body_end)) {
    return error::bad_length;
  }
  if (has_prefix) {
    prefix_off = pos;
    if (!fits(pos, prefix_area_len, body_end)) {
      return error::bad_length;
    }
    n6 = p[pos + pfx_v6_cnt];
    if (n6 > max_entries) {
      return error::bad_field;
    }
    pos += prefix_area_len;
    if (!fits(pos, ipv6_prefix_len * n6, body_end)) {
      return error::bad_length;
    }
    pos += ipv6_prefix_len * n6;
  }
  if (has_v2_ext) {
    // Offsets must point exactly at the next part: the length check below is
    // an exact sum, so a gap or overlap cannot be a valid message.
    if (get_be16(p + off_v2_ext_offset) != pos - v2_ext_base) {
      return error::bad_field;
    }
    v2_off = pos;
    if (!fits(pos, v2_ext_fixed_len, body_end)) {
      return error::bad_length;
    }
    ne = p[pos + v2_eid_cnt];
    if (ne > max_entries) {
      return error::bad_field;
    }
    if (has_smcd_v2_ext) {
      nd = p[pos + v2_ism_cnt];
      if (nd > max_entries) {
        return error::bad_field;
      }
    }
    pos += v2_ext_fixed_len;
    if (!fits(pos, eid_len * ne, body_end)) {
      return error::bad_length;
    }
    pos += eid_len * ne;
  }
  if (has_smcd_v2_ext) {
    if (get_be16(p + v2_off + v2_smcd_off) != pos - (v2_off + v2_smcd_base)) {
      return error::bad_field;
    }
    smcd_v2_off = pos;
    if (!fits(pos, smcd_v2_ext_fixed_len + ism_entry_len * nd, body_end)) {
      return error::bad_length;
    }
    pos += smcd_v2_ext_fixed_len + ism_entry_len * nd;
  }
  if (pos != body_end) {
    return error::bad_length;
  }

  // Second pass: everything is in bounds; fill the result.
  get_bytes(p + off_peer_id, r.peer_id);
  get_bytes(p + off_gid, r.gid);
  get_bytes(p + off_mac, r.mac);
  if (has_smcd_area && smcd_indicated(r.typev1)) {
    r.ism_gid = get_be64(p + off_ism_gid);
    r.ism_chid = get_be16(p + off_ism_chid);
  }
  if (has_prefix) {
    const uint8_t* q = p + prefix_off;
    r.ipv4_subnet = get_be32(q + pfx_subnet);
    r.ipv4_prefix_len = q[pfx_len];
    q += prefix_area_len;
    r.ipv6_prefixes.resize(n6);
    for (size_t i = 0; i < n6; ++i, q += ipv6_prefix_len) {
      get_bytes(q, r.ipv6_prefixes[i].prefix);
      r.ipv6_prefixes[i].prefix_len = q[16];
    }
  }
  if (has_v2_ext) {
    const uint8_t* x = p + v2_off;
    r.release = x[v2_flags] >> 4;
    r.seid_indicator = (x[v2_flags] & 0x01) != 0;
    get_bytes(x + v2_roce_gid, r.roce_v2_gid);
    r.max_conns = x[v2_max_conns];
    r.max_links = x[v2_max_links];
    r.feature_mask = get_be16(x + v2_feature_mask);
    r.ueids.resize(ne);
    for (size_t i = 0; i < ne; ++i) {
      get_bytes(x + v2_ext_fixed_len + eid_len * i, r.ueids[i]);
    }
  }
  if (has_smcd_v2_ext) {
    const uint8_t* y = p + smcd_v2_off;
    get_bytes(y, r.seid);
    y += smcd_v2_ext_fixed_len;
    r.ism_v2.resize(nd);
    for (size_t i = 0; i < nd; ++i, y += ism_entry_len) {
      r.ism_v2[i].gid = get_be64(y);
      r.ism_v2[i].chid = get_be16(y + 8);
    }
  }
  out = std::move(r);
  return error::ok;
}

// ---- SMC-R Accept / Confirm -------------------------------------------------
//
//   0 header | 8 peer id | 16 GID | 32 MAC | 38 QPN (3) | 41 rkey | 45 RMBE idx
//   46 alert token | 50 size<<4|mtu | 51 rsvd | 52 RMB address | 60 rsvd | 61 PSN (3)
//   v1: 64 trailer (68)
//   v2: 64 EID (32) | 96 rsvd (8) | 104 first-contact ext (52; 36 from v2.0 kernels)
//       | Confirm only: GID list ext (4 + 16 g) | trailer

std::vector<uint8_t> encode(const accept_confirm_r& m) {
  const bool v1 = m.version == 1;
  const bool fce = !v1 && m.first_contact;
  const bool gle = fce && m.type == msg_type::confirm;
  const size_t ng = clamp_count(m.gid_list.size());
  // Linux (v2.1 code) sends the 52-byte extension for SMC-R whatever the release.
  const size_t len = v1 ? smcr_len_v1
                        : smcr_len_v2 + (fce ? fce_len_v21 : 0) + (gle ? gle_hdr_len + gid_len * ng : 0);
  const auto byte7 = static_cast<uint8_t>(((m.version & 0x0F) << 4) |
                                          (m.first_contact ? first_contact_bit : 0) | type_r);
  std::vector<uint8_t> b = make_frame(eyecatcher_smcr, m.type, len, byte7);
  uint8_t* p = b.data();
  put_bytes(p + off_peer_id, m.peer_id);
  put_bytes(p + off_gid, m.gid);
  put_bytes(p + off_mac, m.mac);
  put_be24(p + r_qpn, m.qpn);
  put_be32(p + r_rkey, m.rmb_rkey);
  p[r_rmbe_idx] = m.rmbe_idx;
  put_be32(p + r_token, m.rmbe_alert_token);
  p[r_size_mtu] = static_cast<uint8_t>(((m.rmbe_size_code & 0x0F) << 4) | (m.qp_mtu & 0x0F));
  put_be64(p + r_dma_addr, m.rmb_dma_addr);
  put_be24(p + r_psn, m.psn);
  if (v1) {
    return b;
  }
  put_bytes(p + r_eid, m.eid);
  if (fce) {
    uint8_t* f = p + r_fce;
    f[fce_direct] = m.v2_direct ? 0x80 : 0;
    f[fce_os_rel] = static_cast<uint8_t>(((m.os_type & 0x0F) << 4) | (m.fce_release & 0x0F));
    put_bytes(f + fce_hostname, m.hostname);
    // Like smc_clc_fill_fce_v2x: the v2.1 tail stays zero for release 0.
    if (m.fce_release >= 1) {
      f[fce_max_conns] = m.max_conns;
      f[fce_max_links] = m.max_links;
      put_be16(f + fce_feature_mask, m.feature_mask);
      put_be32(f + fce_vendor_exp, m.vendor_exp_options);
    }
  }
  if (gle) {
    uint8_t* g = p + r_fce + fce_len_v21;
    g[0] = static_cast<uint8_t>(ng);
    for (size_t i = 0; i < ng; ++i) {
      put_bytes(g + gle_hdr_len + gid_len * i, m.gid_list[i]);
    }
  }
  return b;
}

namespace {

/// Checks a GID list extension at `gle` that must end right before the trailer.
error check_gid_list(std::span<const uint8_t> in, size_t gle, size_t body_end) {
  if (!fits(gle, gle_hdr_len, body_end)) {
    return error::bad_length;
  }
  const size_t n = in[gle];
  if (body_end - gle - gle_hdr_len != gid_len * n) {
    return error::bad_length;
  }
  if (n > max_entries) {
    return error::bad_field;
  }
  return error::ok;
}

}  // namespace

error decode(std::span<const uint8_t> in, accept_confirm_r& out) {
  header h;
  if (auto e = check_accept_confirm(in, h, type_r); e != error::ok) {
    return e;
  }
  const uint8_t* p = in.data();
  const size_t len = h.length;
  const size_t body_end = len - trailer_len;
  size_t fce_len = 0;
  bool gle = false;

  if (h.version == 1) {
    if (len != smcr_len_v1) {
      return error::bad_length;
    }
  } else if (!h.flag) {
    if (len != smcr_len_v2) {
      return error::bad_length;
    }
  } else {
    // First contact: the extension is 52 bytes from v2.1 Linux, 36 bytes from
    // pre-v2.1 kernels, which always send release 0.
    if (len < smcr_len_v2 + fce_len_v20) {
      return error::bad_length;
    }
    const bool release0 = (p[r_fce + fce_os_rel] & 0x0F) == 0;
    if (h.type == msg_type::accept) {
      if (len == smcr_len_v2 + fce_len_v21) {
        fce_len = fce_len_v21;
      } else if (len == smcr_len_v2 + fce_len_v20 && release0) {
        fce_len = fce_len_v20;
      } else {
        return error::bad_length;
      }
    } else {
      // Confirm: the GID list follows the extension, so the length alone is
      // ambiguous. With release 0 try the short form first: a v2.1 kernel
      // speaking release 0 zeroes the long form's v2.1 tail, whose first byte
      // would then be a GID count of 0 with GIDs still following, so the short
      // reading can never fit its messages by accident.
      const error e52 = check_gid_list(in, r_fce + fce_len_v21, body_end);
      if (release0 && check_gid_list(in, r_fce + fce_len_v20, body_end) == error::ok) {
        fce_len = fce_len_v20;
      } else if (e52 == error::ok) {
        fce_len = fce_len_v21;
      } else {
        return e52;
      }
      gle = true;
    }
  }

  accept_confirm_r r;
  r.type = h.type;
  r.version = h.version;
  r.first_contact = h.flag;
  get_bytes(p + off_peer_id, r.peer_id);
  get_bytes(p + off_gid, r.gid);
  get_bytes(p + off_mac, r.mac);
  r.qpn = get_be24(p + r_qpn);
  r.rmb_rkey = get_be32(p + r_rkey);
  r.rmbe_idx = p[r_rmbe_idx];
  r.rmbe_alert_token = get_be32(p + r_token);
  r.rmbe_size_code = p[r_size_mtu] >> 4;
  r.qp_mtu = p[r_size_mtu] & 0x0F;
  r.rmb_dma_addr = get_be64(p + r_dma_addr);
  r.psn = get_be24(p + r_psn);
  if (h.version >= 2) {
    get_bytes(p + r_eid, r.eid);
  }
  if (fce_len != 0) {
    const uint8_t* f = p + r_fce;
    r.v2_direct = (f[fce_direct] & 0x80) != 0;
    r.os_type = f[fce_os_rel] >> 4;
    r.fce_release = f[fce_os_rel] & 0x0F;
    get_bytes(f + fce_hostname, r.hostname);
    // The v2.1 fields mean nothing from a release-0 peer (Linux ignores them too).
    if (fce_len == fce_len_v21 && r.fce_release >= 1) {
      r.max_conns = f[fce_max_conns];
      r.max_links = f[fce_max_links];
      r.feature_mask = get_be16(f + fce_feature_mask);
      r.vendor_exp_options = get_be32(f + fce_vendor_exp);
    }
  }
  if (gle) {
    const uint8_t* g = p + r_fce + fce_len;
    r.gid_list.resize(g[0]);
    for (size_t i = 0; i < r.gid_list.size(); ++i) {
      get_bytes(g + gle_hdr_len + gid_len * i, r.gid_list[i]);
    }
  }
  out = std::move(r);
  return error::ok;
}

// ---- SMC-D Accept / Confirm -------------------------------------------------
//
//   0 header | 8 GID | 16 DMB token | 24 DMBE idx | 25 size<<4 | 26 rsvd (2) | 28 link id
//   v1: 32 reserved (12) | 44 trailer (48)
//   v2: 32 CHID | 34 EID (32) | 66 extended GID | 74 trailer (78)
//       first contact: 74 first-contact ext (36 if release 0, else 52) | trailer (114 / 130)

std::vector<uint8_t> encode(const accept_confirm_d& m) {
  const bool v1 = m.version == 1;
  const bool fce = !v1 && m.first_contact;
  // smc_clc_fill_fce_v2x: SMC-D sends the short form only for release 0.
  const size_t fce_len = m.fce_release == 0 ? fce_len_v20 : fce_len_v21;
  const size_t len = v1 ? smcd_len_v1 : smcd_len_v2 + (fce ? fce_len : 0);
  const auto byte7 = static_cast<uint8_t>(((m.version & 0x0F) << 4) |
                                          (m.first_contact ? first_contact_bit : 0) | type_d);
  std::vector<uint8_t> b = make_frame(eyecatcher_smcd, m.type, len, byte7);
  uint8_t* p = b.data();
  put_be64(p + d_gid, m.gid);
  put_be64(p + d_token, m.token);
  p[d_dmbe_idx] = m.dmbe_idx;
  p[d_dmbe_size] = static_cast<uint8_t>((m.dmbe_size_code & 0x0F) << 4);
  put_be32(p + d_link_id, m.link_id);
  if (v1) {
    return b;
  }
  put_be16(p + d_chid, m.chid);
  put_bytes(p + d_eid, m.eid);
  put_be64(p + d_gid_ext, m.gid_ext);
  if (fce) {
    uint8_t* f = p + d_fce;
    f[fce_os_rel] = static_cast<uint8_t>(((m.os_type & 0x0F) << 4) | (m.fce_release & 0x0F));
    put_bytes(f + fce_hostname, m.hostname);
    if (fce_len == fce_len_v21) {  // implies release >= 1
      // max_conns/max_links are SMC-R only; reserved for SMC-D.
      put_be16(f + fce_feature_mask, m.feature_mask);
    }
  }
  return b;
}

error decode(std::span<const uint8_t> in, accept_confirm_d& out) {
  header h;
  if (auto e = check_accept_confirm(in, h, type_d); e != error::ok) {
    return e;
  }
  const uint8_t* p = in.data();
  const size_t len = h.length;
  size_t fce_len = 0;
  if (h.version == 1) {
    if (len != smcd_len_v1) {
      return error::bad_length;
    }
  } else if (!h.flag) {
    if (len != smcd_len_v2) {
      return error::bad_length;
    }
  } else if (len == smcd_len_v2 + fce_len_v21) {
    fce_len = fce_len_v21;
  } else if (len == smcd_len_v2 + fce_len_v20 && (p[d_fce + fce_os_rel] & 0x0F) == 0) {
    fce_len = fce_len_v20;  // a v2.1 sender always uses the long form
  } else {
    return error::bad_length;
  }

  accept_confirm_d r;
  r.type = h.type;
  r.version = h.version;
  r.first_contact = h.flag;
  r.gid = get_be64(p + d_gid);
  r.token = get_be64(p + d_token);
  r.dmbe_idx = p[d_dmbe_idx];
  r.dmbe_size_code = p[d_dmbe_size] >> 4;
  r.link_id = get_be32(p + d_link_id);
  if (h.version >= 2) {
    r.chid = get_be16(p + d_chid);
    get_bytes(p + d_eid, r.eid);
    r.gid_ext = get_be64(p + d_gid_ext);
  }
  if (fce_len != 0) {
    const uint8_t* f = p + d_fce;
    r.os_type = f[fce_os_rel] >> 4;
    r.fce_release = f[fce_os_rel] & 0x0F;
    get_bytes(f + fce_hostname, r.hostname);
    // The v2.1 fields mean nothing from a release-0 peer (Linux ignores them too).
    if (fce_len == fce_len_v21 && r.fce_release >= 1) {
      r.feature_mask = get_be16(f + fce_feature_mask);
    }
  }
  out = r;
  return error::ok;
}

// ---- Decline ----------------------------------------------------------------
//
//   0 header (0x08 in byte 7 = out of sync) | 8 peer id | 16 diagnosis | 20 os<<4
//   21 rsvd (3) | v1: 24 trailer (28) | v2: 24 four more diagnoses | 40 trailer (44)

std::vector<uint8_t> encode(const decline& m) {
  const bool v1 = m.version == 1;
  const auto byte7 = static_cast<uint8_t>(((m.version & 0x0F) << 4) |
                                          (m.out_of_sync ? first_contact_bit : 0));
  // Linux uses the SMCR eyecatcher on every Decline, SMC-D included.
  std::vector<uint8_t> b = make_frame(eyecatcher_smcr, msg_type::decline,
                                      v1 ? decline_len_v1 : decline_len_v2, byte7);
  uint8_t* p = b.data();
  put_bytes(p + off_peer_id, m.peer_id);
  put_be32(p + dcl_diag, m.diagnosis);
  if (v1) {
    return b;  // os_type is a v2 field; Linux sends 0 in v1
  }
  p[dcl_os] = static_cast<uint8_t>((m.os_type & 0x0F) << 4);
  for (size_t i = 0; i < diag2_count; ++i) {
    put_be32(p + dcl_diag2 + 4 * i, m.diagnosis2[i]);
  }
  return b;
}

error decode(std::span<const uint8_t> in, decline& out) {
  header h;
  // Like Linux (smc_clc_msg_hdr_valid), the Decline trailer is not checked: a
  // Decline only ever leads to TCP fallback, so a sloppy peer's Decline should
  // still be understood rather than turned into a hard handshake error.
  if (auto e = check_frame(in, h, false); e != error::ok) {
    return e;
  }
  if (h.type != msg_type::decline) {
    return error::bad_type;
  }
  if (h.length != (h.version == 1 ? decline_len_v1 : decline_len_v2)) {
    return error::bad_length;
  }
  const uint8_t* p = in.data();
  decline r;
  r.version = h.version;
  r.out_of_sync = h.flag;
  get_bytes(p + off_peer_id, r.peer_id);
  r.diagnosis = get_be32(p + dcl_diag);
  if (h.version >= 2) {
    r.os_type = p[dcl_os] >> 4;
    for (size_t i = 0; i < diag2_count; ++i) {
      r.diagnosis2[i] = get_be32(p + dcl_diag2 + 4 * i);
    }
  }
  out = r;
  return error::ok;
}

eid_t make_eid(const char* s) {
  eid_t e;
  e.fill(' ');
  if (s == nullptr) {
    return e;
  }
  // ASCII upper-casing by hand: std::toupper would depend on the host's locale.
  for (size_t i = 0; i < e.size() && s[i] != '\0'; ++i) {
    const auto c = static_cast<uint8_t>(s[i]);
    e[i] = (c >= 'a' && c <= 'z') ? static_cast<uint8_t>(c - ('a' - 'A')) : c;
  }
  return e;
}

}  // namespace smc::core::clc
