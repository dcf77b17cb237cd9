// Unit tests for the CLC codec (clc.h, PROTOCOL.md section 2): round trips of
// every message kind, byte vectors pinned from real dumps, rejection of each
// malformed field, and a mutation loop run under ASan/UBSan.
#include <catch2/catch.hpp>

#include <cctype>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "test/unit/test_util.h"
#include "core/clc.h"

using namespace smc::core::clc;
using smc_test::bytes;
using smc_test::hex;

namespace {


uint16_t be16_at(const bytes& b, size_t off) {
  return static_cast<uint16_t>(b.at(off) << 8 | b.at(off + 1));
}

void set_be16(bytes& b, size_t off, uint16_t v) {
  b.at(off) = static_cast<uint8_t>(v >> 8);
  b.at(off + 1) = static_cast<uint8_t>(v);
}

template <size_t N>
std::array<uint8_t, N> filled(uint8_t first) {
  std::array<uint8_t, N> a{};
  for (size_t i = 0; i < N; ++i) {
    a[i] = static_cast<uint8_t>(first + i);
  }
  return a;
}

/// Blank-padded hostname the way Linux builds it (smc_clc_init).
std::array<uint8_t, 32> hostname(const char* s) {
  std::array<uint8_t, 32> h;
  h.fill(' ');
  std::memcpy(h.data(), s, std::min<size_t>(std::strlen(s), h.size()));
  return h;
}

// ---- sample messages ------------------------------------------------------

proposal proposal_v2_ipv4_r() {  // PROTOCOL.md worked example: R v1+v2, IPv4, one UEID
  proposal p;
  p.version = 2;
  p.typev1 = type_r;
  p.typev2 = type_r;
  p.peer_id = filled<8>(0xB1);
  p.gid = filled<16>(0x10);
  p.mac = filled<6>(0x90);
  p.ipv4_subnet = 0xC0A80100;  // 192.168.1.0/24
  p.ipv4_prefix_len = 24;
  p.ueids = {make_eid("SMC-TEST-EID")};
  p.release = 1;
  p.roce_v2_gid = filled<16>(0x40);
  p.max_conns = 255;
  p.max_links = 2;
  p.feature_mask = 0x0001;
  return p;
}

proposal proposal_v2_ipv6_b() {  // typev1 B, typev2 B: every part present
  proposal p;
  p.version = 2;
  p.typev1 = type_b;
  p.typev2 = type_b;
  p.peer_id = filled<8>(0x01);
  p.gid = filled<16>(0x20);
  p.mac = filled<6>(0x30);
  p.ism_gid = 0x1122334455667788;
  p.ism_chid = 0x0A0B;
  for (uint8_t i = 0; i < 8; ++i) {
    ipv6_prefix pf;
    pf.prefix = filled<16>(static_cast<uint8_t>(0x20 + i));
    pf.prefix_len = static_cast<uint8_t>(48 + i);
    p.ipv6_prefixes.push_back(pf);
  }
  for (int i = 0; i < 8; ++i) {
    p.ueids.push_back(make_eid(("UEID-" + std::to_string(i)).c_str()));
  }
  p.release = 1;
  p.seid_indicator = true;
  p.roce_v2_gid = filled<16>(0x70);
  p.max_conns = 16;
  p.max_links = 1;
  p.feature_mask = 1;
  p.seid = make_eid("IBM-SYSTEM-EID");
  for (uint16_t i = 0; i < 8; ++i) {
    p.ism_v2.push_back(ism_entry{0xAA00000000000000ULL + i, static_cast<uint16_t>(0xFFFF - i)});
  }
  return p;
}

proposal proposal_v2_nd() {  // typev1 N, typev2 D: the shm/loopback-ISM offer
  proposal p;
  p.version = 2;
  p.typev1 = type_n;
  p.typev2 = type_d;
  p.ueids = {make_eid("A"), make_eid("B")};
  p.release = 1;
  p.seid = make_eid("SEID");
  p.ism_v2 = {ism_entry{0x0102030405060708ULL, loopback_chid}};
  p.feature_mask = 1;
  return p;
}

proposal proposal_v1_r() {
  proposal p;
  p.version = 1;
  p.typev1 = type_r;
  p.typev2 = type_n;
  p.peer_id = filled<8>(0x25);
  p.gid = filled<16>(0xFE);
  p.mac = filled<6>(0x98);
  p.ipv4_subnet = 0x0A000000;
  p.ipv4_prefix_len = 8;
  return p;
}

accept_confirm_r accept_r_v1() {  // the fields of the real v1 Accept (PROTOCOL.md 2.4)
  accept_confirm_r a;
  a.type = msg_type::accept;
  a.version = 1;
  a.first_contact = true;
  a.peer_id = {0xB1, 0xA0, 0x98, 0x03, 0x9B, 0xAB, 0xCD, 0xEF};
  a.gid = {0xFE, 0x80, 0, 0, 0, 0, 0, 0, 0x9A, 0x03, 0x9B, 0xFF, 0xFE, 0xAB, 0xCD, 0xEF};
  a.mac = {0x98, 0x03, 0x9B, 0xAB, 0xCD, 0xEF};
  a.qpn = 228;
  a.rmb_rkey = 5501;
  a.rmbe_idx = 1;
  a.rmbe_alert_token = 5;
  a.rmbe_size_code = 2;
  a.qp_mtu = 3;
  a.rmb_dma_addr = 0xF0A60000;
  a.psn = 7534078;
  return a;
}

accept_confirm_r accept_confirm_r_v2(msg_type t, bool fc) {
  accept_confirm_r a = accept_r_v1();
  a.type = t;
  a.version = 2;
  a.first_contact = fc;
  a.qpn = 0xABCDEF;
  a.psn = 0x123456;
  a.rmbe_size_code = 15;
  a.qp_mtu = 5;
  a.rmb_dma_addr = 0x0123456789ABCDEFULL;
  a.eid = make_eid("SMC-TEST-EID");
  if (fc) {
    a.v2_direct = true;
    a.os_type = 2;
    a.fce_release = 1;
    a.hostname = hostname("host-a.example");
    a.max_conns = 255;
    a.max_links = 2;
    a.feature_mask = 1;
    a.vendor_exp_options = 0xDEADBEEF;
    if (t == msg_type::confirm) {
      a.gid_list = {filled<16>(0x50), filled<16>(0x60)};
    }
  }
  return a;
}

accept_confirm_d accept_confirm_d_msg(msg_type t, uint8_t version, bool fc) {
  accept_confirm_d d;
  d.type = t;
  d.version = version;
  d.first_contact = fc;
  d.gid = 0x8877665544332211ULL;
  d.token = 0x0102030405060708ULL;
  d.dmbe_idx = 0;
  d.dmbe_size_code = 6;
  d.link_id = 0xCAFEF00D;
  if (version == 2) {
    d.chid = loopback_chid;
    d.eid = make_eid("SEID");
    d.gid_ext = 0x1111222233334444ULL;
    if (fc) {
      d.os_type = 2;
      d.fce_release = 1;
      d.hostname = hostname("host-b");
      d.feature_mask = 1;
    }
  }
  return d;
}

decline decline_msg(uint8_t version) {
  decline d;
  d.version = version;
  d.out_of_sync = true;
  d.peer_id = filled<8>(0x42);
  d.diagnosis = 0x04000000;
  if (version == 2) {
    d.os_type = 2;
    d.diagnosis2 = {0x03030008, 0x03030004, 0, 0x09990000};
  }
  return d;
}

// ---- generic checks -------------------------------------------------------

/// Every strict prefix must be rejected (short_buffer once the header is in)
/// and must leave `out` untouched.
template <class M>
void check_prefixes_rejected(const bytes& b) {
  for (size_t n = 0; n < b.size(); ++n) {
    M out;
    const M before = out;
    const bytes cut(b.begin(), b.begin() + static_cast<long>(n));
    INFO("prefix length " << n);
    CHECK(decode(cut, out) == error::short_buffer);
    CHECK(out == before);
  }
}

template <class M>
bytes check_round_trip(const M& m) {
  const bytes b = encode(m);
  REQUIRE(b.size() >= header_len + trailer_len);
  CHECK(be16_at(b, 5) == b.size());
  header h;
  REQUIRE(peek_header(b, h) == error::ok);
  CHECK(h.length == b.size());
  M d;
  REQUIRE(decode(b, d) == error::ok);
  CHECK(d == m);
  CHECK(encode(d) == b);
  check_prefixes_rejected<M>(b);
  return b;
}

/// decode() must fail with `want` and leave `out` as it was.
template <class M>
void expect_reject(const bytes& b, error want) {
  M out;
  const M before = out;
  CHECK(to_string(decode(b, out)) == std::string(to_string(want)));
  CHECK(out == before);
}

/// The checks every CLC kind shares: eyecatcher, type, version, length field.
template <class M>
void check_common_rejections(const bytes& good) {
  SECTION("bad leading eyecatcher") {
    for (size_t i = 0; i < 4; ++i) {
      bytes b = good;
      b[i] ^= 0x01;
      expect_reject<M>(b, error::bad_eyecatcher);
    }
  }
  SECTION("bad type") {
    for (uint8_t t : {0, 5, 0xFE}) {
      bytes b = good;
      b[4] = t;
      expect_reject<M>(b, error::bad_type);
    }
  }
  SECTION("bad version") {
    for (uint8_t v : {0, 3, 15}) {
      bytes b = good;
      b[7] = static_cast<uint8_t>((b[7] & 0x0F) | v << 4);
      expect_reject<M>(b, error::bad_version);
    }
  }
  SECTION("length field below the minimum or above the maximum") {
    for (uint16_t len : {0, 1, 11, 1025, 0xFFFF}) {
      bytes b = good;
      set_be16(b, 5, len);
      expect_reject<M>(b, error::bad_length);
    }
  }
  SECTION("length field smaller than the buffer") {
    bytes b = good;
    set_be16(b, 5, static_cast<uint16_t>(b.size() - 1));
    expect_reject<M>(b, error::bad_length);
  }
  SECTION("length field larger than the buffer") {
    bytes b = good;
    set_be16(b, 5, static_cast<uint16_t>(b.size() + 1));
    expect_reject<M>(b, error::short_buffer);
  }
  SECTION("content longer than its parts (length grown, trailer moved)") {
    bytes b = good;
    b.insert(b.end() - 4, {0, 0, 0, 0});
    set_be16(b, 5, static_cast<uint16_t>(b.size()));
    expect_reject<M>(b, error::bad_length);
  }
  SECTION("content shorter than its parts (length shrunk, trailer moved)") {
    bytes b = good;
    b.erase(b.end() - 8, b.end() - 4);
    set_be16(b, 5, static_cast<uint16_t>(b.size()));
    expect_reject<M>(b, error::bad_length);
  }
}

template <class M>
void check_bad_trailer(const bytes& good) {
  for (size_t i = good.size() - 4; i < good.size(); ++i) {
    bytes b = good;
    b[i] ^= 0x40;
    expect_reject<M>(b, error::bad_trailer);
  }
  // Either eyecatcher is a valid trailer (Linux accepts both).
  bytes b = good;
  b[b.size() - 1] = b[b.size() - 1] == 0xD9 ? 0xC4 : 0xD9;
  M out;
  CHECK(decode(b, out) == error::ok);
}

}  // namespace

// ===========================================================================
// Header
// ===========================================================================

TEST_CASE("peek_header decodes byte 7", "[clc]") {
  header h;
  const bytes acc = hex("E2D4C3D9 02 0044 18");
  REQUIRE(peek_header(acc, h) == error::ok);
  CHECK(h.type == msg_type::accept);
  CHECK(h.length == 68);
  CHECK(h.version == 1);
  CHECK(h.flag);
  CHECK(h.typev1 == type_r);
  CHECK_FALSE(h.smcd_eyecatcher);

  const bytes prop = hex("E2D4C3C4 01 00A4 2E");  // v2, typev2 B, typev1 N
  REQUIRE(peek_header(prop, h) == error::ok);
  CHECK(h.type == msg_type::proposal);
  CHECK(h.version == 2);
  CHECK(h.typev2 == type_b);
  CHECK(h.typev1 == type_n);
  CHECK(h.smcd_eyecatcher);

  CHECK(peek_header(bytes(acc.begin(), acc.begin() + 7), h) == error::short_buffer);
  CHECK(peek_header(hex("E2D4C3D8 02 0044 18"), h) == error::bad_eyecatcher);
  CHECK(peek_header(hex("E2D4C3D9 00 0044 18"), h) == error::bad_type);
  CHECK(peek_header(hex("E2D4C3D9 02 0044 38"), h) == error::bad_version);
  CHECK(peek_header(hex("E2D4C3D9 02 000B 18"), h) == error::bad_length);
  CHECK(peek_header(hex("E2D4C3D9 02 0401 18"), h) == error::bad_length);
  CHECK(peek_header(hex("E2D4C3D9 02 0400 18"), h) == error::ok);
}

TEST_CASE("to_string names every error", "[clc]") {
  for (auto e : {error::ok, error::short_buffer, error::bad_eyecatcher, error::bad_type,
                 error::bad_version, error::bad_length, error::bad_trailer, error::bad_field}) {
    CHECK(std::string(to_string(e)) != "unknown");
  }
}

TEST_CASE("make_eid upper-cases, blank-pads and truncates", "[clc]") {
  const eid_t e = make_eid("smc-eid.1");
  CHECK(std::string(e.begin(), e.begin() + 9) == "SMC-EID.1");
  for (size_t i = 9; i < e.size(); ++i) {
    CHECK(e[i] == ' ');
  }
  const eid_t longer = make_eid("0123456789abcdefghijklmnopqrstuvwxyz");
  CHECK(std::string(longer.begin(), longer.end()) == "0123456789ABCDEFGHIJKLMNOPQRSTUV");
  const eid_t none = make_eid(nullptr);
  CHECK(std::count(none.begin(), none.end(), ' ') == 32);
}

// ===========================================================================
// Proposal
// ===========================================================================

TEST_CASE("Proposal: PROTOCOL.md worked example (IPv4, R v1+v2, one UEID)", "[clc][proposal]") {
  const bytes b = check_round_trip(proposal_v2_ipv4_r());
  CHECK(b.size() == 164);
  CHECK(b[4] == 0x01);
  CHECK(b[7] == 0x20);                // version 2, typev2 R, typev1 R
  CHECK(be16_at(b, 38) == 40);        // iparea_offset = SMC-D area
  CHECK(be16_at(b, 50) == 36);        // v2_ext_offset: 52 + 36 = 88
  CHECK(b[80 + 4] == 24);             // IPv4 prefix length
  CHECK(b[80 + 7] == 0);              // no IPv6 prefixes
  CHECK(b[88] == 1);                  // eid_cnt
  CHECK(b[88 + 3] == 0x10);           // release 1, no SEID
  CHECK(be16_at(b, 88 + 6) == 0);     // no SMC-Dv2 extension
  CHECK(b[88 + 24] == 255);           // max_conns
  CHECK(std::string(b.begin() + 128, b.begin() + 140) == "SMC-TEST-EID");  // UEID at 128
  CHECK(bytes(b.begin() + 160, b.end()) == hex("E2D4C3D9"));                 // trailer at 160
}

TEST_CASE("Proposal: IPv6 prefixes, typev1/typev2 B, UEIDs and ISM v2 entries", "[clc][proposal]") {
  const proposal p = proposal_v2_ipv6_b();
  const bytes b = check_round_trip(p);
  const size_t v2 = 80 + 8 + 17 * 8;             // 224
  const size_t smcd_v2 = v2 + 40 + 32 * 8;       // 520
  CHECK(b.size() == smcd_v2 + 48 + 10 * 8 + 4);  // 652
  CHECK(b[7] == 0x2F);
  CHECK(be16_at(b, 40) == 0x1122);               // ISM GID
  CHECK(be16_at(b, 48) == 0x0A0B);               // ISM CHID
  CHECK(be16_at(b, 50) == v2 - 52);
  CHECK(b[87] == 8);                             // IPv6 count
  CHECK(b[88 + 16] == 48);                       // first prefix length, packed
  CHECK(b[88 + 17] == 0x21);                     // second prefix starts 17 bytes on
  CHECK(b[v2] == 8);                             // eid_cnt
  CHECK(b[v2 + 1] == 8);                         // ism_gid_cnt
  CHECK(b[v2 + 3] == 0x11);                      // release 1 + SEID
  CHECK(be16_at(b, v2 + 6) == smcd_v2 - (v2 + 8));
  CHECK(std::string(b.begin() + smcd_v2, b.begin() + smcd_v2 + 14) == "IBM-SYSTEM-EID");
  CHECK(b[smcd_v2 + 48] == 0xAA);                // first ISM entry GID
  CHECK(be16_at(b, smcd_v2 + 48 + 8) == 0xFFFF); // its CHID
}

TEST_CASE("Proposal: typev1 N, typev2 D (no prefix area)", "[clc][proposal]") {
  const bytes b = check_round_trip(proposal_v2_nd());
  CHECK(b[7] == 0x26);
  CHECK(be16_at(b, 38) == 0);        // Linux sends 0 without a prefix area
  CHECK(be16_at(b, 50) == 80 - 52);  // v2 extension right behind the SMC-D area
  CHECK(be16_at(b, 80 + 6) == 32 + 2 * 32);
  CHECK(b.size() == 80 + 40 + 64 + 48 + 10 + 4);
}

TEST_CASE("Proposal: the ISM GID/CHID travel only when typev1 offers SMC-D", "[clc][proposal]") {
  // Linux reads byte 47 (the ISM GID's low byte) as an IPv6 count when
  // typev1 == N and iparea_offset == 0, and rejects counts over 8.
  for (uint8_t t1 : {type_r, type_n}) {
    proposal p = proposal_v2_nd();
    p.typev1 = t1;
    p.ism_gid = 0x00000000000000FFULL;
    p.ism_chid = 0x1234;
    const bytes b = encode(p);
    for (size_t i = 40; i < 50; ++i) {
      CHECK(b[i] == 0);
    }
    bytes forged = b;
    forged[47] = 0xFF;  // a peer that fills it anyway: ignored, not an error
    proposal d;
    REQUIRE(decode(forged, d) == error::ok);
    CHECK(d.ism_gid == 0);
  }
}

TEST_CASE("Proposal: v2 with typev2 N (v1-only capability, as Linux sends it)", "[clc][proposal]") {
  proposal p = proposal_v2_ipv4_r();
  p.typev2 = type_n;
  p.ueids.clear();
  p.roce_v2_gid = {};
  p.max_conns = 0;
  p.max_links = 0;
  p.feature_mask = 0;
  const bytes b = check_round_trip(p);
  CHECK(b.size() == 92);
  CHECK(b[7] == 0x28);
  CHECK(be16_at(b, 50) == 0);
}

TEST_CASE("Proposal: v1 layouts", "[clc][proposal]") {
  SECTION("SMC-R, IPv4: 52 bytes, prefix area at 40") {
    const bytes b = check_round_trip(proposal_v1_r());
    CHECK(b.size() == 52);
    CHECK(b[7] == 0x10);
    CHECK(be16_at(b, 38) == 0);
    CHECK(b[44] == 8);
  }
  SECTION("SMC-R, IPv6 prefixes") {
    proposal p = proposal_v1_r();
    p.ipv4_subnet = 0;
    p.ipv4_prefix_len = 0;
    p.ipv6_prefixes = {ipv6_prefix{filled<16>(0x20), 64}, ipv6_prefix{filled<16>(0x30), 56}};
    const bytes b = check_round_trip(p);
    CHECK(b.size() == 52 + 2 * 17);
    CHECK(b[47] == 2);
  }
  SECTION("SMC-D (old Linux): SMC-D area in the iparea gap") {
    proposal p = proposal_v1_r();
    p.typev1 = type_b;
    p.ism_gid = 0x0102030405060708ULL;
    p.ism_chid = 0x0304;
    const bytes b = check_round_trip(p);
    CHECK(b.size() == 92);
    CHECK(be16_at(b, 38) == 40);
    CHECK(b[40] == 0x01);
    CHECK(b[80 + 4] == 8);
  }
  SECTION("hand-made v1 Proposal bytes") {
    // header, peer id "%%%%%%%\0", GID, MAC, iparea_offset 0, 10.0.0.0/8, 0 IPv6, trailer
    const bytes b = hex(
        "E2D4C3D9 01 0034 10 | 2525252525252500 | FE800000000000009A039BFFFEABCDEF |"
        " 98039BABCDEF | 0000 | 0A000000 08 0000 00 | E2D4C3D9");
    REQUIRE(b.size() == 52);
    proposal p;
    REQUIRE(decode(b, p) == error::ok);
    CHECK(p.version == 1);
    CHECK(p.typev1 == type_r);
    CHECK(p.typev2 == type_n);
    CHECK(p.peer_id[0] == 0x25);
    CHECK(p.mac[5] == 0xEF);
    CHECK(p.ipv4_subnet == 0x0A000000);
    CHECK(p.ipv4_prefix_len == 8);
    CHECK(p.ipv6_prefixes.empty());
    CHECK(encode(p) == b);
  }
  SECTION("v1 iparea_offset gap that is not an SMC-D area is skipped") {
    bytes b = encode(proposal_v1_r());
    b.insert(b.begin() + 40, {0xEE, 0xEE, 0xEE, 0xEE});
    set_be16(b, 5, static_cast<uint16_t>(b.size()));
    set_be16(b, 38, 4);
    proposal p;
    REQUIRE(decode(b, p) == error::ok);
    CHECK(p == proposal_v1_r());
  }
  SECTION("v1 SMC-R only: a 40-byte gap is not read as an SMC-D area") {
    bytes b = encode(proposal_v1_r());
    b.insert(b.begin() + 40, 40, 0x5A);
    set_be16(b, 5, static_cast<uint16_t>(b.size()));
    set_be16(b, 38, 40);
    proposal p;
    REQUIRE(decode(b, p) == error::ok);
    CHECK(p.ism_gid == 0);
    CHECK(p.ism_chid == 0);
    CHECK(p == proposal_v1_r());
  }
}

TEST_CASE("Proposal: rejections", "[clc][proposal]") {
  const bytes good = encode(proposal_v2_ipv6_b());
  check_common_rejections<proposal>(good);

  SECTION("bad trailer") { check_bad_trailer<proposal>(good); }
  SECTION("another message type") {
    expect_reject<proposal>(encode(decline_msg(2)), error::bad_type);
    expect_reject<proposal>(encode(accept_r_v1()), error::bad_type);
  }
  SECTION("iparea_offset > 40") {
    for (uint16_t o : {41, 80, 0xFFFF}) {
      bytes b = good;
      set_be16(b, 38, o);
      expect_reject<proposal>(b, error::bad_field);
      bytes b1 = encode(proposal_v1_r());
      set_be16(b1, 38, o);
      expect_reject<proposal>(b1, error::bad_field);
    }
  }
  SECTION("v2 prefix area not right behind the SMC-D area") {
    bytes b = good;
    set_be16(b, 38, 0);
    expect_reject<proposal>(b, error::bad_field);
  }
  SECTION("IPv6 prefix count over 8") {
    bytes b = good;
    b[87] = 9;
    expect_reject<proposal>(b, error::bad_field);
    b[87] = 0xFF;
    expect_reject<proposal>(b, error::bad_field);
  }
  SECTION("IPv6 prefix count over 8 with length and offsets consistent") {
    // Nine packed prefixes where everything else lines up: only the count
    // limit can reject this.
    bytes b = good;
    b.insert(b.begin() + 88 + 8 * 17, 17, 0x2F);
    b[87] = 9;
    set_be16(b, 50, static_cast<uint16_t>(be16_at(b, 50) + 17));
    set_be16(b, 5, static_cast<uint16_t>(b.size()));
    expect_reject<proposal>(b, error::bad_field);

    proposal p1 = proposal_v1_r();
    p1.ipv6_prefixes.assign(8, ipv6_prefix{filled<16>(0x20), 64});
    bytes b1 = encode(p1);
    b1.insert(b1.begin() + 48 + 8 * 17, 17, 0x2F);
    b1[47] = 9;
    set_be16(b1, 5, static_cast<uint16_t>(b1.size()));
    expect_reject<proposal>(b1, error::bad_field);
  }
  SECTION("UEID count over 8 with length and offsets consistent") {
    proposal p = proposal_v2_ipv4_r();  // typev2 R: nothing follows the UEIDs
    p.ueids.assign(8, make_eid("X"));
    bytes b = encode(p);
    b.insert(b.begin() + 128 + 8 * 32, 32, ' ');
    b[88] = 9;
    set_be16(b, 5, static_cast<uint16_t>(b.size()));
    expect_reject<proposal>(b, error::bad_field);

    bytes bd = good;  // typev2 B: the SMC-Dv2 offset moves with the UEIDs
    bd.insert(bd.begin() + 264 + 8 * 32, 32, ' ');
    bd[224] = 9;
    set_be16(bd, 224 + 6, static_cast<uint16_t>(be16_at(bd, 224 + 6) + 32));
    set_be16(bd, 5, static_cast<uint16_t>(bd.size()));
    expect_reject<proposal>(bd, error::bad_field);
  }
  SECTION("ISM v2 entry count over 8 with length consistent") {
    bytes b = good;
    b.insert(b.end() - 4, 10, 0x01);
    b[225] = 9;
    set_be16(b, 5, static_cast<uint16_t>(b.size()));
    expect_reject<proposal>(b, error::bad_field);
  }
  SECTION("IPv6 prefix count not matching the length") {
    bytes b = good;
    b[87] = 7;
    expect_reject<proposal>(b, error::bad_field);  // v2_ext_offset no longer lines up
    bytes b1 = encode(proposal_v1_r());
    b1[47] = 1;
    expect_reject<proposal>(b1, error::bad_length);
  }
  SECTION("UEID count over 8") {
    bytes b = good;
    b[224] = 9;
    expect_reject<proposal>(b, error::bad_field);
  }
  SECTION("ISM v2 entry count over 8") {
    bytes b = good;
    b[225] = 9;
    expect_reject<proposal>(b, error::bad_field);
  }
  SECTION("ISM v2 entry count not matching the length") {
    bytes b = good;
    b[225] = 7;
    expect_reject<proposal>(b, error::bad_length);
  }
  SECTION("v2_ext_offset pointing elsewhere or outside the message") {
    for (uint16_t o : {0, 1, 171, 173, 0x0400, 0xFFFF}) {
      bytes b = good;
      set_be16(b, 50, o);
      expect_reject<proposal>(b, error::bad_field);
    }
  }
  SECTION("smcd_v2_ext_offset pointing elsewhere or outside the message") {
    for (uint16_t o : {0, 287, 289, 0xFFFF}) {
      bytes b = good;
      set_be16(b, 224 + 6, o);
      expect_reject<proposal>(b, error::bad_field);
    }
  }
  SECTION("v2 extension cut short") {
    bytes b = encode(proposal_v2_nd());  // 80 + 40 + 64 + 48 + 10 + 4
    b.resize(80 + 20 + 4);
    std::copy(eyecatcher_smcr.begin(), eyecatcher_smcr.end(), b.end() - 4);
    set_be16(b, 5, static_cast<uint16_t>(b.size()));
    expect_reject<proposal>(b, error::bad_length);
  }
  SECTION("v1 Proposal offering nothing") {
    bytes b = encode(proposal_v1_r());
    b[7] = 0x12;
    expect_reject<proposal>(b, error::bad_field);
  }
  SECTION("v2 Proposal shorter than the SMC-D area") {
    bytes b = hex("E2D4C3D9 01 0030 2A");
    b.resize(0x30 - 4, 0);
    b.insert(b.end(), eyecatcher_smcr.begin(), eyecatcher_smcr.end());
    expect_reject<proposal>(b, error::bad_length);
  }
}

// ===========================================================================
// SMC-R Accept / Confirm
// ===========================================================================

TEST_CASE("Accept: the real v1 SMC-R Accept from PROTOCOL.md", "[clc][accept]") {
  const bytes wire = hex(
      "E2D4C3D9 02 0044 18 | B1A0 98039BABCDEF | FE800000000000009A039BFFFEABCDEF |"
      " 98039BABCDEF | 0000E4 | 0000157D | 01 | 00000005 | 23 | 00 | 00000000F0A60000 | 00 |"
      " 72F5FE | E2D4C3D9");
  REQUIRE(wire.size() == 68);
  accept_confirm_r a;
  REQUIRE(decode(wire, a) == error::ok);
  CHECK(a.type == msg_type::accept);
  CHECK(a.version == 1);
  CHECK(a.first_contact);
  CHECK(a.peer_id == peer_id_t{0xB1, 0xA0, 0x98, 0x03, 0x9B, 0xAB, 0xCD, 0xEF});
  CHECK(a.mac == mac_t{0x98, 0x03, 0x9B, 0xAB, 0xCD, 0xEF});
  CHECK(a.gid[0] == 0xFE);
  CHECK(a.gid[15] == 0xEF);
  CHECK(a.qpn == 228);
  CHECK(a.rmb_rkey == 5501);
  CHECK(a.rmbe_idx == 1);
  CHECK(a.rmbe_alert_token == 5);
  CHECK(a.rmbe_size_code == 2);
  CHECK(a.qp_mtu == 3);
  CHECK(a.rmb_dma_addr == 0xF0A60000);
  CHECK(a.psn == 7534078);
  CHECK(a == accept_r_v1());
  CHECK(encode(a) == wire);  // byte-identical
  check_prefixes_rejected<accept_confirm_r>(wire);
}

TEST_CASE("Accept/Confirm SMC-R round trips", "[clc][accept]") {
  SECTION("v1 Confirm, not first contact") {
    accept_confirm_r c = accept_r_v1();
    c.type = msg_type::confirm;
    c.first_contact = false;
    const bytes b = check_round_trip(c);
    CHECK(b.size() == 68);
    CHECK(b[4] == 3);
    CHECK(b[7] == 0x10);
  }
  SECTION("v2 Accept without first contact: 108 bytes") {
    const bytes b = check_round_trip(accept_confirm_r_v2(msg_type::accept, false));
    CHECK(b.size() == 108);
    CHECK(b[7] == 0x20);
    CHECK(b[50] == 0xF5);
    CHECK(std::string(b.begin() + 64, b.begin() + 76) == "SMC-TEST-EID");
  }
  SECTION("v2 Accept with first contact: 52-byte extension at 104") {
    const bytes b = check_round_trip(accept_confirm_r_v2(msg_type::accept, true));
    CHECK(b.size() == 108 + 52);
    CHECK(b[7] == 0x28);
    CHECK(b[104] == 0x80);  // v2_direct
    CHECK(b[105] == 0x21);  // Linux, release 1
    CHECK(std::string(b.begin() + 108, b.begin() + 122) == "host-a.example");
    CHECK(b[140] == 255);
    CHECK(b[141] == 2);
    CHECK(be16_at(b, 142) == 1);
    CHECK(be16_at(b, 144) == 0xDEAD);
  }
  SECTION("v2 Confirm with first contact and a GID list") {
    const bytes b = check_round_trip(accept_confirm_r_v2(msg_type::confirm, true));
    CHECK(b.size() == 108 + 52 + 4 + 2 * 16);
    CHECK(b[156] == 2);
    CHECK(b[160] == 0x50);
    CHECK(b[176] == 0x60);
  }
  SECTION("v2 Confirm with first contact and an empty GID list") {
    accept_confirm_r c = accept_confirm_r_v2(msg_type::confirm, true);
    c.gid_list.clear();
    const bytes b = check_round_trip(c);
    CHECK(b.size() == 108 + 52 + 4);
  }
  SECTION("v2 Confirm with eight GIDs") {
    accept_confirm_r c = accept_confirm_r_v2(msg_type::confirm, true);
    c.gid_list.assign(8, filled<16>(0x77));
    check_round_trip(c);
  }
  SECTION("v2 Confirm without first contact carries no GID list") {
    const bytes b = check_round_trip(accept_confirm_r_v2(msg_type::confirm, false));
    CHECK(b.size() == 108);
  }
}

TEST_CASE("Accept/Confirm SMC-R: v2.0 peers' 36-byte first-contact extension", "[clc][accept]") {
  // Linux before v2.1 (e.g. 6.1) sends the short extension with release 0.
  accept_confirm_r want = accept_confirm_r_v2(msg_type::accept, true);
  want.fce_release = 0;
  want.max_conns = 0;
  want.max_links = 0;
  want.feature_mask = 0;
  want.vendor_exp_options = 0;
  bytes b = encode(want);
  b.erase(b.begin() + 104 + 36, b.begin() + 104 + 52);  // drop the v2.1 tail
  set_be16(b, 5, static_cast<uint16_t>(b.size()));
  REQUIRE(b.size() == 144);
  accept_confirm_r a;
  REQUIRE(decode(b, a) == error::ok);
  CHECK(a == want);

  SECTION("a release-1 sender must use the long form") {
    b[105] = 0x21;
    expect_reject<accept_confirm_r>(b, error::bad_length);
  }
  SECTION("Confirm with a GID list after the short extension") {
    accept_confirm_r wc = want;
    wc.type = msg_type::confirm;
    wc.gid_list = {filled<16>(0x33)};
    bytes c = encode(wc);
    c.erase(c.begin() + 104 + 36, c.begin() + 104 + 52);
    set_be16(c, 5, static_cast<uint16_t>(c.size()));
    REQUIRE(c.size() == 108 + 36 + 4 + 16);
    accept_confirm_r d;
    REQUIRE(decode(c, d) == error::ok);
    CHECK(d == wc);
  }
}

TEST_CASE("Accept/Confirm SMC-R: release 0 in the long form (v2.1 Linux to a v2.0 peer)",
          "[clc][accept]") {
  accept_confirm_r c = accept_confirm_r_v2(msg_type::confirm, true);
  c.fce_release = 0;
  c.max_conns = 0;
  c.max_links = 0;
  c.feature_mask = 0;
  c.vendor_exp_options = 0;
  for (size_t g = 0; g <= 8; ++g) {
    c.gid_list.assign(g, filled<16>(static_cast<uint8_t>(0x10 * g + 1)));
    const bytes b = check_round_trip(c);
    CHECK(b.size() == 108 + 52 + 4 + 16 * g);
  }
  SECTION("the v2.1 tail is neither sent nor read for release 0") {
    accept_confirm_r a = accept_confirm_r_v2(msg_type::accept, true);
    a.fce_release = 0;
    bytes b = encode(a);
    for (size_t i = 104 + 36; i < 104 + 52; ++i) {
      CHECK(b[i] == 0);
    }
    b[104 + 36] = 0x10;  // a max_conns from a release-0 peer is meaningless
    accept_confirm_r d;
    REQUIRE(decode(b, d) == error::ok);
    CHECK(d.max_conns == 0);
  }
}

TEST_CASE("Accept/Confirm SMC-R: rejections", "[clc][accept]") {
  const bytes good = encode(accept_confirm_r_v2(msg_type::confirm, true));
  check_common_rejections<accept_confirm_r>(good);

  SECTION("bad trailer") {
    check_bad_trailer<accept_confirm_r>(good);
    check_bad_trailer<accept_confirm_r>(encode(accept_r_v1()));
  }
  SECTION("Proposal or Decline is not an Accept/Confirm") {
    expect_reject<accept_confirm_r>(encode(proposal_v2_ipv4_r()), error::bad_type);
    expect_reject<accept_confirm_r>(encode(decline_msg(1)), error::bad_type);
  }
  SECTION("path N or B") {
    for (uint8_t path : {type_n, type_b}) {
      bytes b = good;
      b[7] = static_cast<uint8_t>((b[7] & 0xFC) | path);
      expect_reject<accept_confirm_r>(b, error::bad_field);
    }
  }
  SECTION("an SMC-D message") {
    expect_reject<accept_confirm_r>(encode(accept_confirm_d_msg(msg_type::accept, 2, false)),
                                    error::bad_type);
  }
  SECTION("v1 with a length other than 68") {
    bytes b = encode(accept_r_v1());
    b.insert(b.end() - 4, 4, 0);
    set_be16(b, 5, 72);
    expect_reject<accept_confirm_r>(b, error::bad_length);
  }
  SECTION("v2 without first contact but with extra bytes") {
    bytes b = encode(accept_confirm_r_v2(msg_type::accept, true));
    b[7] = 0x20;  // clear first contact: 160 bytes is now wrong
    expect_reject<accept_confirm_r>(b, error::bad_length);
  }
  SECTION("v2 first contact but only 108 bytes") {
    bytes b = encode(accept_confirm_r_v2(msg_type::accept, false));
    b[7] = 0x28;
    expect_reject<accept_confirm_r>(b, error::bad_length);
  }
  SECTION("v2 Accept with first contact: odd extension length") {
    bytes b = encode(accept_confirm_r_v2(msg_type::accept, true));
    b.insert(b.end() - 4, 16, 0);  // looks like a GID list, but Accepts have none
    set_be16(b, 5, static_cast<uint16_t>(b.size()));
    expect_reject<accept_confirm_r>(b, error::bad_length);
  }
  SECTION("GID list count over 8 (length consistent)") {
    accept_confirm_r c = accept_confirm_r_v2(msg_type::confirm, true);
    c.gid_list.assign(8, filled<16>(0x10));
    bytes b = encode(c);
    b.insert(b.end() - 4, 16, 0x11);
    b[156] = 9;
    set_be16(b, 5, static_cast<uint16_t>(b.size()));
    expect_reject<accept_confirm_r>(b, error::bad_field);
  }
  SECTION("GID list count not matching the length") {
    for (uint8_t n : {0, 1, 3, 0xFF}) {
      bytes b = good;
      b[156] = n;
      expect_reject<accept_confirm_r>(b, error::bad_length);
    }
  }
}

// ===========================================================================
// SMC-D Accept / Confirm
// ===========================================================================

TEST_CASE("Accept/Confirm SMC-D round trips", "[clc][smcd]") {
  SECTION("v1: 48 bytes") {
    const bytes b = check_round_trip(accept_confirm_d_msg(msg_type::accept, 1, true));
    CHECK(b.size() == 48);
    CHECK(bytes(b.begin(), b.begin() + 4) == hex("E2D4C3C4"));
    CHECK(bytes(b.end() - 4, b.end()) == hex("E2D4C3C4"));
    CHECK(b[7] == 0x19);
    CHECK(b[8] == 0x88);   // GID at 8
    CHECK(b[16] == 0x01);  // token at 16
    CHECK(b[24] == 0);     // DMBE index
    CHECK(b[25] == 0x60);  // size code in the high nibble
    CHECK(be16_at(b, 28) == 0xCAFE);
    for (size_t i = 32; i < 44; ++i) {
      CHECK(b[i] == 0);  // reserved in v1
    }
  }
  SECTION("v2 without first contact: 78 bytes") {
    const bytes b = check_round_trip(accept_confirm_d_msg(msg_type::confirm, 2, false));
    CHECK(b.size() == 78);
    CHECK(b[7] == 0x21);
    CHECK(be16_at(b, 32) == 0xFFFF);  // CHID
    CHECK(std::string(b.begin() + 34, b.begin() + 38) == "SEID");
    CHECK(be16_at(b, 66) == 0x1111);  // extended GID
  }
  SECTION("v2 with first contact, release 1: 130 bytes") {
    const bytes b = check_round_trip(accept_confirm_d_msg(msg_type::accept, 2, true));
    CHECK(b.size() == 78 + 52);
    CHECK(b[7] == 0x29);
    CHECK(b[74] == 0);     // no v2_direct for SMC-D
    CHECK(b[75] == 0x21);  // Linux, release 1
    CHECK(std::string(b.begin() + 78, b.begin() + 84) == "host-b");
    CHECK(b[74 + 36] == 0);  // max_conns/max_links reserved for SMC-D
    CHECK(be16_at(b, 74 + 38) == 1);
  }
  SECTION("v2 with first contact, release 0: 114 bytes") {
    accept_confirm_d d = accept_confirm_d_msg(msg_type::confirm, 2, true);
    d.fce_release = 0;
    d.feature_mask = 0;
    const bytes b = check_round_trip(d);
    CHECK(b.size() == 78 + 36);
  }
}

TEST_CASE("Accept/Confirm SMC-D: rejections", "[clc][smcd]") {
  const bytes good = encode(accept_confirm_d_msg(msg_type::accept, 2, true));
  check_common_rejections<accept_confirm_d>(good);

  SECTION("bad trailer") { check_bad_trailer<accept_confirm_d>(good); }
  SECTION("an SMC-R message") {
    expect_reject<accept_confirm_d>(encode(accept_r_v1()), error::bad_type);
  }
  SECTION("path N or B") {
    for (uint8_t path : {type_n, type_b}) {
      bytes b = good;
      b[7] = static_cast<uint8_t>((b[7] & 0xFC) | path);
      expect_reject<accept_confirm_d>(b, error::bad_field);
    }
  }
  SECTION("v1 with the v2 length") {
    bytes b = encode(accept_confirm_d_msg(msg_type::accept, 2, false));
    b[7] = 0x11;
    expect_reject<accept_confirm_d>(b, error::bad_length);
  }
  SECTION("v2 first contact without an extension") {
    bytes b = encode(accept_confirm_d_msg(msg_type::accept, 2, false));
    b[7] = 0x29;
    expect_reject<accept_confirm_d>(b, error::bad_length);
  }
  SECTION("short extension from a release-1 sender") {
    accept_confirm_d d = accept_confirm_d_msg(msg_type::accept, 2, true);
    d.fce_release = 0;
    bytes b = encode(d);
    b[75] = 0x21;
    expect_reject<accept_confirm_d>(b, error::bad_length);
  }
}

// ===========================================================================
// Decline
// ===========================================================================

TEST_CASE("Decline: the real v1 Decline from PROTOCOL.md", "[clc][decline]") {
  const bytes wire = hex("E2D4C3D9 04 001C 10 2525252525252500 03030000 00000000 E2D4C3D9");
  REQUIRE(wire.size() == 28);
  decline d;
  REQUIRE(decode(wire, d) == error::ok);
  CHECK(d.version == 1);
  CHECK_FALSE(d.out_of_sync);
  CHECK(d.peer_id == peer_id_t{0x25, 0x25, 0x25, 0x25, 0x25, 0x25, 0x25, 0x00});
  CHECK(d.diagnosis == 0x03030000);
  CHECK(d.diagnosis2 == std::array<uint32_t, 4>{});
  CHECK(encode(d) == wire);
  check_prefixes_rejected<decline>(wire);
}

TEST_CASE("Decline round trips", "[clc][decline]") {
  SECTION("v1 with out of sync") {
    decline d = decline_msg(1);
    const bytes b = check_round_trip(d);
    CHECK(b.size() == 28);
    CHECK(b[7] == 0x18);
    CHECK(b[20] == 0);  // no OS type in v1
  }
  SECTION("v2") {
    const bytes b = check_round_trip(decline_msg(2));
    CHECK(b.size() == 44);
    CHECK(b[7] == 0x28);
    CHECK(b[20] == 0x20);
    CHECK(be16_at(b, 24) == 0x0303);
    CHECK(be16_at(b, 38) == 0x0000);
    CHECK(bytes(b.end() - 4, b.end()) == hex("E2D4C3D9"));
  }
}

TEST_CASE("Decline: rejections", "[clc][decline]") {
  const bytes good = encode(decline_msg(2));
  check_common_rejections<decline>(good);

  SECTION("wrong length for the version") {
    bytes b = good;
    b[7] = 0x18;  // v1 header on a 44-byte Decline
    expect_reject<decline>(b, error::bad_length);
    bytes b1 = encode(decline_msg(1));
    b1[7] = 0x28;  // v2 header on a 28-byte Decline
    expect_reject<decline>(b1, error::bad_length);
  }
  SECTION("other message types") {
    expect_reject<decline>(encode(accept_r_v1()), error::bad_type);
    expect_reject<decline>(encode(proposal_v1_r()), error::bad_type);
  }
  SECTION("the trailer is not checked, as in Linux") {
    bytes b = good;
    b[b.size() - 1] = 0x00;
    decline d;
    CHECK(decode(b, d) == error::ok);
    CHECK(d == decline_msg(2));
  }
}

// ===========================================================================
// Mutation loop: decode() must never read out of bounds or crash
// ===========================================================================

namespace {

/// Runs every decoder on `b`. Whenever one accepts, its re-encoding must
/// decode to the same value (decode output is always encodable).
template <class M>
int try_decode(const bytes& b) {
  M m;
  const error e = decode(b, m);
  if (e != error::ok) {
    CHECK(std::string(to_string(e)) != "unknown");
    return 0;
  }
  M again;
  REQUIRE(decode(encode(m), again) == error::ok);
  CHECK(again == m);
  return 1;
}

}  // namespace

TEST_CASE("CLC decoders survive random mutations", "[clc][fuzz]") {
  std::vector<bytes> seeds = {
      encode(proposal_v2_ipv4_r()),
      encode(proposal_v2_ipv6_b()),
      encode(proposal_v2_nd()),
      encode(proposal_v1_r()),
      encode(accept_r_v1()),
      encode(accept_confirm_r_v2(msg_type::accept, true)),
      encode(accept_confirm_r_v2(msg_type::confirm, true)),
      encode(accept_confirm_r_v2(msg_type::confirm, false)),
      encode(accept_confirm_d_msg(msg_type::accept, 1, false)),
      encode(accept_confirm_d_msg(msg_type::accept, 2, true)),
      encode(accept_confirm_d_msg(msg_type::confirm, 2, false)),
      encode(decline_msg(1)),
      encode(decline_msg(2)),
  };
  std::mt19937 rng(20240607);
  int accepted = 0;
  for (int iter = 0; iter < 6000; ++iter) {
    bytes b = seeds[rng() % seeds.size()];
    const int mutations = 1 + static_cast<int>(rng() % 4);
    for (int i = 0; i < mutations; ++i) {
      switch (rng() % 6) {
        case 0:  // random byte anywhere
          b[rng() % b.size()] = static_cast<uint8_t>(rng());
          break;
        case 1:  // flip a bit in the header or a count/offset-heavy region
          b[rng() % std::min<size_t>(b.size(), 96)] ^= static_cast<uint8_t>(1u << (rng() % 8));
          break;
        case 2:  // truncate
          b.resize(rng() % (b.size() + 1));
          break;
        case 3:  // grow with junk
          b.resize(b.size() + rng() % 64, static_cast<uint8_t>(rng()));
          break;
        case 4:  // small counts where counts live (force deeper paths)
          b[rng() % b.size()] = static_cast<uint8_t>(rng() % 10);
          break;
        default:
          break;
      }
      if (b.empty()) {
        b.push_back(0xE2);
      }
    }
    // Usually keep the length field and trailer consistent so the decoders get
    // past the frame checks and exercise the inner bounds checks.
    if (rng() % 4 != 0 && b.size() >= header_len + trailer_len) {
      set_be16(b, 5, static_cast<uint16_t>(b.size()));
      std::copy(eyecatcher_smcr.begin(), eyecatcher_smcr.end(), b.end() - 4);
    }
    header h;
    (void)peek_header(b, h);
    accepted += try_decode<proposal>(b);
    accepted += try_decode<accept_confirm_r>(b);
    accepted += try_decode<accept_confirm_d>(b);
    accepted += try_decode<decline>(b);
  }
  CHECK(accepted > 0);
}
