// Unit tests for the LLC codec (llc.h, PROTOCOL.md section 4): the CONFIRM LINK
// dump pinned in PROTOCOL.md 4.2 and the other hwipl/smc-go LLC test dumps,
// round trips of every message in v1 and v2 form with byte offsets checked,
// the v2 length byte order, rejection of each malformed field and of every
// truncation, and a mutation loop over every decoder (run under ASan/UBSan).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cctype>
#include <random>
#include <string>
#include <vector>

#include "test/unit/test_util.h"
#include "core/cdc.h"
#include "core/llc.h"

namespace llc = smc::core::llc;
using smc_test::bytes;
using smc_test::hex;

namespace {


template <size_t N>
bytes to_bytes(const std::array<uint8_t, N>& a) {
  return bytes(a.begin(), a.end());
}

template <size_t N>
std::array<uint8_t, N> filled(uint8_t first) {
  std::array<uint8_t, N> a{};
  for (size_t i = 0; i < N; ++i) {
    a[i] = static_cast<uint8_t>(first + i);
  }
  return a;
}

uint32_t be32_at(const bytes& b, size_t off) {
  return uint32_t{b.at(off)} << 24 | uint32_t{b.at(off + 1)} << 16 | uint32_t{b.at(off + 2)} << 8 |
         b.at(off + 3);
}

/// Writes a v2 length little-endian, as x86 Linux does.
void set_len_v2(bytes& b, uint16_t len) {
  b.at(1) = static_cast<uint8_t>(len & 0xFF);
  b.at(2) = static_cast<uint8_t>(len >> 8);
}

bool all_zero(const bytes& b, size_t from, size_t to) {
  for (size_t i = from; i < to; ++i) {
    if (b.at(i) != 0) {
      return false;
    }
  }
  return true;
}

// ---- the hwipl/smc-go pkg/llc test dumps ----------------------------------------

// PROTOCOL.md 4.2 pins this CONFIRM LINK (hwipl llc_confirmlink_test.go) with the
// GID abbreviated; the full dump has GID fe80::9a03:9bff:feab:cdef.
const bytes pinned_confirm_link = hex(
    "01 2c 00 03 98 03 9b ab  cd ef fe 80 00 00 00 00"
    "00 00 9a 03 9b ff fe ab  cd ef 00 01 07 00 00 01"
    "00 00 02 00 00 00 00 00  00 00 00 00");

// A v1 client invitation: MAC and GID of the alternate device, no QP data.
const bytes hwipl_add_link = hex(
    "02 2c 00 00 98 03 9b ab  cd ef 00 00 fe 80 00 00"
    "00 00 00 00 9a 03 9b ff  fe ab cd ef 00 00 00 00"
    "00 00 00 00 00 00 00 00  00 00 00 00");

// A made-up ADD LINK CONT (hwipl says "fake"): count 1, yet a second entry.
const bytes hwipl_add_link_cont = hex(
    "03 2c 00 80 01 01 00 00  00 00 00 01 00 00 00 02"
    "00 00 00 00 00 00 00 03  00 00 00 04 00 00 00 05"
    "00 00 00 00 00 00 00 06  00 00 00 00");

const bytes hwipl_delete_link = hex(
    "04 2c 00 60 00 00 00 00  00 00 00 00 00 00 00 00"
    "00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00"
    "00 00 00 00 00 00 00 00  00 00 00 00");

const bytes hwipl_confirm_rkey = hex(
    "06 2c 00 00 00 00 00 15  5d 00 00 00 0e ef 4d 00"
    "00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00"
    "00 00 00 00 00 00 00 00  00 00 00 00");

const bytes hwipl_delete_rkey = hex(
    "09 2c 00 00 01 00 00 00  00 00 15 5d 00 00 00 00"
    "00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00"
    "00 00 00 00 00 00 00 00  00 00 00 00");

// hwipl's TEST LINK dump is a made-up 21-byte prefix; padded to 44 with zeros.
bytes hwipl_test_link() {
  bytes b = hex("07 2c 00 80 00 00 00 00  00 00 00 00 00 00 00 00 00 00 00 00 00");
  b.resize(llc::msg_len, 0);
  return b;
}

// ---- sample messages with every field set ---------------------------------------

llc::confirm_link sample_confirm_link(uint8_t version) {
  llc::confirm_link m;
  m.version = version;
  m.flags = llc::flag_response | llc::flag_no_rmbe_eyec;
  m.sender_mac = filled<6>(0x11);
  m.sender_gid = filled<16>(0x20);
  m.sender_qpn = 0xABCDEF;
  m.link_num = 7;
  m.link_uid = 0xDEADBEEF;
  m.max_links = 3;
  m.max_conns = 255;
  return m;
}

llc::add_link sample_add_link(uint8_t version) {
  llc::add_link m;
  m.version = version;
  m.flags = llc::flag_response;
  m.sender_mac = filled<6>(0x31);
  m.sender_gid = filled<16>(0x40);
  m.sender_qpn = 0x123456;
  m.link_num = 2;
  m.qp_mtu = llc::mtu_max;
  m.initial_psn = 0x654321;
  return m;
}

llc::add_link sample_add_link_reject() {
  llc::add_link m;
  m.flags = llc::flag_response | llc::flag_add_link_reject;
  m.reject_reason = llc::reject_no_alt_path;
  m.sender_mac = filled<6>(0x31);
  m.sender_gid = filled<16>(0x40);
  return m;
}

llc::add_link_cont sample_add_link_cont() {
  llc::add_link_cont m;
  m.flags = llc::flag_response;
  m.link_num = 2;
  m.num_rkeys = 3;
  m.rt[0] = {0x01020304, 0x05060708, 0x1122334455667788};
  m.rt[1] = {0x090A0B0C, 0x0D0E0F10, 0x99AABBCCDDEEFF00};
  return m;
}

llc::delete_link sample_delete_link(uint8_t version) {
  llc::delete_link m;
  m.version = version;
  m.flags = llc::flag_delete_orderly;
  m.link_num = 3;
  m.reason = llc::del_no_asym_needed;
  return m;
}

llc::confirm_rkey sample_confirm_rkey(uint8_t version) {
  llc::confirm_rkey m;
  m.version = version;
  m.flags = llc::flag_response | llc::flag_rkey_negative | llc::flag_rkey_retry;
  m.num_others = 2;
  m.rkey = 0x0A0B0C0D;
  m.vaddr = 0x1122334455667788;
  m.others[0] = {2, 0xA1A2A3A4, 0xB1B2B3B4B5B6B7B8};
  m.others[1] = {3, 0xC1C2C3C4, 0xD1D2D3D4D5D6D7D8};
  return m;
}

llc::delete_rkey sample_delete_rkey(uint8_t version) {
  llc::delete_rkey m;
  m.version = version;
  m.flags = llc::flag_response | llc::flag_rkey_negative;
  m.num_rkeys = 8;
  m.err_mask = version == 2 ? 2 : 0x81;  // v2: a count; v1: rkeys 0 and 7
  for (size_t i = 0; i < m.rkeys.size(); ++i) {
    m.rkeys[i] = static_cast<uint32_t>(0x1000 + i);
  }
  return m;
}

llc::test_link sample_test_link(uint8_t version) {
  llc::test_link m;
  m.version = version;
  m.flags = 0;
  m.user_data = filled<16>(0xE0);
  return m;
}

/// encode, decode back, compare; returns the wire bytes.
template <typename M>
bytes round_trip(const M& m) {
  const auto enc = llc::encode(m);
  M d;
  REQUIRE(llc::decode(enc, d) == llc::error::ok);
  CHECK(d == m);
  return to_bytes(enc);
}

/// Every prefix shorter than 44 bytes is short_buffer and leaves `out` alone.
template <typename M>
void check_truncations(const bytes& full) {
  REQUIRE(full.size() >= llc::msg_len);
  for (size_t n = 0; n < llc::msg_len; ++n) {
    const bytes b(full.begin(), full.begin() + static_cast<long>(n));
    M m;
    const M before = m;
    INFO("prefix length " << n);
    CHECK(llc::decode(b, m) == llc::error::short_buffer);
    CHECK(m == before);
    llc::header h;
    CHECK(llc::peek(b, h) == llc::error::short_buffer);
  }
}

/// `b` is rejected with `want` and `out` is untouched.
template <typename M>
void check_rejected(const bytes& b, llc::error want) {
  M m;
  const M before = m;
  CHECK(llc::decode(b, m) == want);
  CHECK(m == before);
}

}  // namespace

// ---- demultiplexing and the header ----------------------------------------------

TEST_CASE("classify mirrors Linux's receive handler table", "[llc]") {
  for (int v = 0; v < 256; ++v) {
    const auto b = static_cast<uint8_t>(v);
    llc::kind want = llc::kind::unknown;
    if (b == 0xFE) {
      want = llc::kind::cdc;
    } else if ((b >= 0x01 && b <= 0x04) || (b >= 0x06 && b <= 0x09)) {
      want = llc::kind::llc_v1;
    } else if (b == 0x21 || b == 0x22 || (b >= 0x24 && b <= 0x27) || b == 0x29) {
      want = llc::kind::llc_v2;
    }
    INFO("byte 0x" << std::hex << v);
    CHECK(llc::classify(b) == want);
    CHECK(llc::is_llc(b) == (want == llc::kind::llc_v1 || want == llc::kind::llc_v2));
  }
  CHECK(llc::classify(smc::core::cdc::type_cdc) == llc::kind::cdc);
  CHECK(llc::v2_type(llc::type_test_link) == 0x27);
  CHECK(llc::type_req_add_link_v2 == 0x25);
}

TEST_CASE("peek reads v1 and v2 headers", "[llc]") {
  llc::header h;
  REQUIRE(llc::peek(pinned_confirm_link, h) == llc::error::ok);
  CHECK(h == llc::header{llc::type_confirm_link, 1, 44, 0x03});

  const bytes v2 = to_bytes(llc::encode(sample_delete_link(2)));
  REQUIRE(llc::peek(v2, h) == llc::error::ok);
  CHECK(h == llc::header{llc::type_delete_link, 2, 44, llc::flag_delete_orderly});

  SECTION("v2 lengths up to 8192 (the long forms) are valid headers") {
    bytes b = v2;
    for (uint16_t len : {45, 72, 300, 4096, 8192}) {
      set_len_v2(b, len);
      REQUIRE(llc::peek(b, h) == llc::error::ok);
      CHECK(h.length == len);
    }
  }
  SECTION("REQUEST ADD LINK v2 has a valid header but no decoder") {
    bytes b = v2;
    b[0] = llc::type_req_add_link_v2;
    set_len_v2(b, 28 + 2 * 16);
    REQUIRE(llc::peek(b, h) == llc::error::ok);
    CHECK(h.type == llc::type_req_add_link);
    CHECK(h.length == 60);
  }
  SECTION("a receive slot larger than 44 bytes is fine") {
    bytes b = pinned_confirm_link;
    b.resize(48, 0xAA);  // Linux v1 receive slots are 48 bytes
    CHECK(llc::peek(b, h) == llc::error::ok);
    llc::confirm_link m;
    CHECK(llc::decode(b, m) == llc::error::ok);
    CHECK(m.sender_qpn == 263);
  }
}

TEST_CASE("peek rejects bad type bytes and lengths", "[llc]") {
  llc::header h{0x0F, 9, 9, 9};
  const llc::header before = h;

  SECTION("type bytes Linux has no LLC handler for") {
    for (uint8_t t :
         {0x00, 0x05, 0x0A, 0x0F, 0x10, 0x20, 0x23, 0x28, 0x2A, 0x31, 0x80, 0x8A, 0xFE, 0xFF}) {
      bytes b = pinned_confirm_link;
      b[0] = t;
      CHECK(llc::peek(b, h) == llc::error::bad_type);
    }
  }
  SECTION("v1 length byte other than 44") {
    for (uint8_t len : {0, 1, 43, 45, 48, 0x80, 0xFF}) {
      bytes b = pinned_confirm_link;
      b[1] = len;
      CHECK(llc::peek(b, h) == llc::error::bad_length);
    }
  }
  SECTION("v2 length outside 44..8192 in either byte order") {
    const bytes v2 = to_bytes(llc::encode(sample_test_link(2)));
    // (1..32 little-endian would read as a big-endian 256..8192, so not here.)
    for (uint16_t len : {0, 33, 43, 0x2B00, 0xFFFF, 0x2C2C}) {
      bytes b = v2;
      set_len_v2(b, len);
      INFO("length bytes " << int{b[1]} << " " << int{b[2]});
      CHECK(llc::peek(b, h) == llc::error::bad_length);
    }
  }
  CHECK(h == before);
}

TEST_CASE("v2 length: little-endian on the wire, big-endian (s390) accepted", "[llc]") {
  // x86 Linux: smc_llc_init_msg_hdr stores 44 in a host-order u16.
  const bytes b = to_bytes(llc::encode(sample_confirm_link(2)));
  CHECK(b[0] == 0x21);
  CHECK(b[1] == 0x2C);
  CHECK(b[2] == 0x00);

  // s390 Linux puts the same u16 on the wire as 00 2C.
  bytes s390 = b;
  s390[1] = 0x00;
  s390[2] = 0x2C;
  llc::header h;
  REQUIRE(llc::peek(s390, h) == llc::error::ok);
  CHECK(h.length == 44);
  llc::confirm_link m;
  REQUIRE(llc::decode(s390, m) == llc::error::ok);
  CHECK(m == sample_confirm_link(2));
  CHECK(to_bytes(llc::encode(m)) == b);  // we answer in little-endian
}

// ---- the pinned dumps -------------------------------------------------------------

TEST_CASE("CONFIRM LINK pinned in PROTOCOL.md 4.2 decodes and re-encodes", "[llc][vector]") {
  REQUIRE(pinned_confirm_link.size() == llc::msg_len);
  llc::confirm_link m;
  REQUIRE(llc::decode(pinned_confirm_link, m) == llc::error::ok);
  CHECK(m.version == 1);
  CHECK(m.flags == llc::flag_no_rmbe_eyec);
  CHECK_FALSE(llc::is_response(m.flags));
  CHECK(m.sender_mac == llc::mac_t{0x98, 0x03, 0x9B, 0xAB, 0xCD, 0xEF});
  CHECK(m.sender_gid == llc::gid_t{0xFE, 0x80, 0, 0, 0, 0, 0, 0, 0x9A, 0x03, 0x9B, 0xFF, 0xFE, 0xAB,
                                   0xCD, 0xEF});
  CHECK(m.sender_qpn == 0x000107);  // 263
  CHECK(m.link_num == 0);
  CHECK(m.link_uid == 0x00010000);  // 65536
  CHECK(m.max_links == 2);
  CHECK(m.max_conns == 0);
  CHECK(to_bytes(llc::encode(m)) == pinned_confirm_link);
}

TEST_CASE("the other hwipl LLC dumps decode and re-encode", "[llc][vector]") {
  SECTION("ADD LINK invitation") {
    llc::add_link m;
    REQUIRE(llc::decode(hwipl_add_link, m) == llc::error::ok);
    CHECK(m.version == 1);
    CHECK(m.flags == 0);
    CHECK(m.reject_reason == 0);
    CHECK(m.sender_mac == llc::mac_t{0x98, 0x03, 0x9B, 0xAB, 0xCD, 0xEF});
    CHECK(m.sender_gid[0] == 0xFE);
    CHECK(m.sender_gid[15] == 0xEF);
    CHECK(m.sender_qpn == 0);
    CHECK(m.qp_mtu == llc::mtu_none);
    CHECK(to_bytes(llc::encode(m)) == hwipl_add_link);
  }
  SECTION("ADD LINK CONT") {
    llc::add_link_cont m;
    REQUIRE(llc::decode(hwipl_add_link_cont, m) == llc::error::ok);
    CHECK(m.flags == llc::flag_response);
    CHECK(m.link_num == 1);
    CHECK(m.num_rkeys == 1);
    CHECK(m.rt_in_message() == 1);
    CHECK(m.rt[0] == llc::add_link_rt{1, 2, 3});
    CHECK(m.rt[1] == llc::add_link_rt{4, 5, 6});  // past the count, still kept
    CHECK(to_bytes(llc::encode(m)) == hwipl_add_link_cont);
  }
  SECTION("DELETE LINK all, orderly") {
    llc::delete_link m;
    REQUIRE(llc::decode(hwipl_delete_link, m) == llc::error::ok);
    CHECK(m.flags == (llc::flag_delete_all | llc::flag_delete_orderly));
    CHECK(m.link_num == 0);
    CHECK(m.reason == 0);
    CHECK(to_bytes(llc::encode(m)) == hwipl_delete_link);
  }
  SECTION("CONFIRM RKEY") {
    llc::confirm_rkey m;
    REQUIRE(llc::decode(hwipl_confirm_rkey, m) == llc::error::ok);
    CHECK(m.flags == 0);
    CHECK(m.num_others == 0);
    CHECK(m.rkey == 5469);
    CHECK(m.vaddr == 0xEEF4D0000);
    CHECK(m.others[0] == llc::rkey_entry{});
    CHECK(to_bytes(llc::encode(m)) == hwipl_confirm_rkey);
  }
  SECTION("DELETE RKEY") {
    llc::delete_rkey m;
    REQUIRE(llc::decode(hwipl_delete_rkey, m) == llc::error::ok);
    CHECK(m.num_rkeys == 1);
    CHECK(m.err_mask == 0);
    CHECK(m.rkeys[0] == 5469);
    CHECK(m.rkeys[1] == 0);
    CHECK(to_bytes(llc::encode(m)) == hwipl_delete_rkey);
  }
  SECTION("TEST LINK response") {
    const bytes b = hwipl_test_link();
    llc::test_link m;
    REQUIRE(llc::decode(b, m) == llc::error::ok);
    CHECK(llc::is_response(m.flags));
    CHECK(m.user_data == std::array<uint8_t, 16>{});
    CHECK(to_bytes(llc::encode(m)) == b);
  }
}

// ---- round trips with offsets ----------------------------------------------------------

TEST_CASE("CONFIRM LINK round trips (v1, v2)", "[llc]") {
  for (uint8_t v : {1, 2}) {
    const bytes b = round_trip(sample_confirm_link(v));
    CHECK(b[0] == (v == 2 ? 0x21 : 0x01));
    CHECK(b[1] == 44);
    CHECK(b[2] == 0);
    CHECK(b[3] == 0x83);
    CHECK(b[4] == 0x11);
    CHECK(b[9] == 0x16);
    CHECK(b[10] == 0x20);
    CHECK(b[25] == 0x2F);
    CHECK(b[26] == 0xAB);
    CHECK(b[28] == 0xEF);
    CHECK(b[29] == 7);
    CHECK(be32_at(b, 30) == 0xDEADBEEF);
    CHECK(b[34] == 3);
    CHECK(b[35] == 255);
    CHECK(all_zero(b, 36, 44));
  }
  SECTION("QP numbers keep their low 24 bits") {
    auto m = sample_confirm_link(1);
    m.sender_qpn = 0xFF123456;
    llc::confirm_link d;
    REQUIRE(llc::decode(llc::encode(m), d) == llc::error::ok);
    CHECK(d.sender_qpn == 0x123456);
  }
}

TEST_CASE("ADD LINK round trips, and the reject response", "[llc]") {
  for (uint8_t v : {1, 2}) {
    const bytes b = round_trip(sample_add_link(v));
    CHECK(b[0] == (v == 2 ? 0x22 : 0x02));
    CHECK(b[3] == 0x80);
    CHECK(b[4] == 0x31);
    CHECK(b[10] == 0);
    CHECK(b[11] == 0);
    CHECK(b[12] == 0x40);
    CHECK(b[27] == 0x4F);
    CHECK(b[28] == 0x12);
    CHECK(b[30] == 0x56);
    CHECK(b[31] == 2);
    CHECK(b[32] == 5);
    CHECK(b[33] == 0x65);
    CHECK(b[35] == 0x21);
    CHECK(all_zero(b, 36, 44));
  }
  SECTION("v1 reject: reason in the low nibble of byte 2") {
    const bytes b = round_trip(sample_add_link_reject());
    CHECK(b[2] == 0x01);
    CHECK(b[3] == 0xC0);
  }
  SECTION("v1: reserved nibbles of bytes 2 and 32 are ignored") {
    bytes b = to_bytes(llc::encode(sample_add_link(1)));
    b[2] = 0xF3;
    b[32] = 0xA4;
    llc::add_link m;
    REQUIRE(llc::decode(b, m) == llc::error::ok);
    CHECK(m.reject_reason == 3);
    CHECK(m.qp_mtu == 4);
  }
  SECTION("v2 reject: byte 2 is the length's high byte, the reason does not travel") {
    auto m = sample_add_link_reject();
    m.version = 2;
    const auto b = llc::encode(m);
    CHECK(b[0] == 0x22);
    CHECK(b[1] == 0x2C);
    CHECK(b[2] == 0x00);
    CHECK(b[3] == 0xC0);
    llc::add_link d;
    REQUIRE(llc::decode(b, d) == llc::error::ok);
    CHECK(d.reject_reason == 0);
    m.reject_reason = 0;
    CHECK(d == m);
  }
}

TEST_CASE("ADD LINK CONT round trip", "[llc]") {
  const bytes b = round_trip(sample_add_link_cont());
  CHECK(b[0] == 0x03);
  CHECK(b[3] == 0x80);
  CHECK(b[4] == 2);
  CHECK(b[5] == 3);
  CHECK(b[6] == 0);
  CHECK(b[7] == 0);
  CHECK(be32_at(b, 8) == 0x01020304);
  CHECK(be32_at(b, 12) == 0x05060708);
  CHECK(be32_at(b, 16) == 0x11223344);
  CHECK(be32_at(b, 20) == 0x55667788);
  CHECK(be32_at(b, 24) == 0x090A0B0C);
  CHECK(be32_at(b, 36) == 0xDDEEFF00);
  CHECK(all_zero(b, 40, 44));
  auto m = sample_add_link_cont();
  CHECK(m.rt_in_message() == 2);
  m.num_rkeys = 0;
  CHECK(m.rt_in_message() == 0);
  m.num_rkeys = 255;  // many rkeys still to come is fine
  round_trip(m);
}

TEST_CASE("DELETE LINK round trips (v1, v2)", "[llc]") {
  for (uint8_t v : {1, 2}) {
    const bytes b = round_trip(sample_delete_link(v));
    CHECK(b[0] == (v == 2 ? 0x24 : 0x04));
    CHECK(b[3] == 0x20);
    CHECK(b[4] == 3);
    CHECK(be32_at(b, 5) == 0x00050000);  // packed: unaligned at offset 5
    CHECK(all_zero(b, 9, 44));
  }
  SECTION("unknown reason codes are carried, not rejected") {
    auto m = sample_delete_link(1);
    m.reason = 0x12345678;
    round_trip(m);
    CHECK_FALSE(llc::is_known_delete_reason(m.reason));
  }
  for (uint32_t r : {0u, llc::del_lost_path, llc::del_op_init_term, llc::del_prog_init_term,
                     llc::del_prot_viol, llc::del_no_asym_needed, llc::del_no_link,
                     llc::del_no_lgr}) {
    CHECK(llc::is_known_delete_reason(r));
  }
}

TEST_CASE("CONFIRM RKEY round trips (v1, v2)", "[llc]") {
  for (uint8_t v : {1, 2}) {
    const bytes b = round_trip(sample_confirm_rkey(v));
    CHECK(b[0] == (v == 2 ? 0x26 : 0x06));
    CHECK(b[3] == 0xB0);
    CHECK(b[4] == 2);
    CHECK(be32_at(b, 5) == 0x0A0B0C0D);
    CHECK(be32_at(b, 9) == 0x11223344);
    CHECK(be32_at(b, 13) == 0x55667788);
    CHECK(b[17] == 2);
    CHECK(be32_at(b, 18) == 0xA1A2A3A4);
    CHECK(be32_at(b, 22) == 0xB1B2B3B4);
    CHECK(b[30] == 3);
    CHECK(be32_at(b, 31) == 0xC1C2C3C4);
    CHECK(be32_at(b, 39) == 0xD5D6D7D8);
    CHECK(b[43] == 0);
  }
}

TEST_CASE("DELETE RKEY round trips (v1, v2)", "[llc]") {
  for (uint8_t v : {1, 2}) {
    const bytes b = round_trip(sample_delete_rkey(v));
    CHECK(b[0] == (v == 2 ? 0x29 : 0x09));
    CHECK(b[3] == 0xA0);
    CHECK(b[4] == 8);
    CHECK(b[5] == (v == 2 ? 2 : 0x81));
    CHECK(b[6] == 0);
    CHECK(b[7] == 0);
    CHECK(be32_at(b, 8) == 0x1000);
    CHECK(be32_at(b, 36) == 0x1007);
    CHECK(all_zero(b, 40, 44));
  }
  SECTION("Linux's request: one rkey") {
    llc::delete_rkey m;
    m.rkeys[0] = 0xCAFE;
    round_trip(m);
  }
}

TEST_CASE("TEST LINK round trips (v1, v2)", "[llc]") {
  for (uint8_t v : {1, 2}) {
    auto m = sample_test_link(v);
    bytes b = round_trip(m);
    CHECK(b[0] == (v == 2 ? 0x27 : 0x07));
    CHECK(b[4] == 0xE0);
    CHECK(b[19] == 0xEF);
    CHECK(all_zero(b, 20, 44));
    // The echo Linux sends back: the same message with the response flag.
    m.flags |= llc::flag_response;
    b[3] |= llc::flag_response;
    CHECK(to_bytes(llc::encode(m)) == b);
  }
}

// ---- rejections ----------------------------------------------------------------------

TEST_CASE("every decoder rejects other types", "[llc]") {
  const std::vector<bytes> others = {
      to_bytes(llc::encode(sample_confirm_link(1))), to_bytes(llc::encode(sample_add_link(1))),
      to_bytes(llc::encode(sample_add_link_cont())), to_bytes(llc::encode(sample_delete_link(2))),
      to_bytes(llc::encode(sample_confirm_rkey(1))), to_bytes(llc::encode(sample_delete_rkey(2))),
      to_bytes(llc::encode(sample_test_link(1)))};
  // Each decoder accepts exactly one of the seven messages.
  for (size_t i = 0; i < others.size(); ++i) {
    const bytes& b = others[i];
    int ok = 0;
    llc::confirm_link cl;
    llc::add_link al;
    llc::add_link_cont alc;
    llc::delete_link dl;
    llc::confirm_rkey cr;
    llc::delete_rkey dr;
    llc::test_link tl;
    for (auto e : {llc::decode(b, cl), llc::decode(b, al), llc::decode(b, alc), llc::decode(b, dl),
                   llc::decode(b, cr), llc::decode(b, dr), llc::decode(b, tl)}) {
      if (e == llc::error::ok) {
        ++ok;
      } else {
        CHECK(e == llc::error::bad_type);
      }
    }
    CHECK(ok == 1);
  }
  SECTION("CDC, unknown and wrong-version type bytes") {
    for (uint8_t t : {0x00, 0x05, 0x23, 0x28, 0x25, 0x08, 0xFE, 0x81}) {
      bytes b = pinned_confirm_link;
      b[0] = t;
      check_rejected<llc::confirm_link>(b, llc::error::bad_type);
      check_rejected<llc::add_link_cont>(b, llc::error::bad_type);
      check_rejected<llc::test_link>(b, llc::error::bad_type);
    }
  }
}

TEST_CASE("every decoder rejects a wrong length", "[llc]") {
  const bytes v1s[] = {pinned_confirm_link,
                       to_bytes(llc::encode(sample_add_link(1))),
                       to_bytes(llc::encode(sample_add_link_cont())),
                       to_bytes(llc::encode(sample_delete_link(1))),
                       to_bytes(llc::encode(sample_confirm_rkey(1))),
                       to_bytes(llc::encode(sample_delete_rkey(1))),
                       to_bytes(llc::encode(sample_test_link(1)))};
  for (uint8_t len : {0, 43, 45, 0xFF}) {
    bytes b[7];
    for (size_t i = 0; i < 7; ++i) {
      b[i] = v1s[i];
      b[i][1] = len;
    }
    check_rejected<llc::confirm_link>(b[0], llc::error::bad_length);
    check_rejected<llc::add_link>(b[1], llc::error::bad_length);
    check_rejected<llc::add_link_cont>(b[2], llc::error::bad_length);
    check_rejected<llc::delete_link>(b[3], llc::error::bad_length);
    check_rejected<llc::confirm_rkey>(b[4], llc::error::bad_length);
    check_rejected<llc::delete_rkey>(b[5], llc::error::bad_length);
    check_rejected<llc::test_link>(b[6], llc::error::bad_length);
  }
  SECTION("v2: fixed-size messages must say 44") {
    for (uint16_t len : {43, 45, 60, 8192}) {
      bytes cl = to_bytes(llc::encode(sample_confirm_link(2)));
      bytes dl = to_bytes(llc::encode(sample_delete_link(2)));
      bytes cr = to_bytes(llc::encode(sample_confirm_rkey(2)));
      bytes tl = to_bytes(llc::encode(sample_test_link(2)));
      for (bytes* b : {&cl, &dl, &cr, &tl}) {
        set_len_v2(*b, len);
      }
      check_rejected<llc::confirm_link>(cl, llc::error::bad_length);
      check_rejected<llc::delete_link>(dl, llc::error::bad_length);
      check_rejected<llc::confirm_rkey>(cr, llc::error::bad_length);
      check_rejected<llc::test_link>(tl, llc::error::bad_length);
    }
  }
  SECTION("v2: the long forms we leave out are unsupported, not garbage") {
    bytes al = to_bytes(llc::encode(sample_add_link(2)));
    set_len_v2(al, 44 + 28 + 16);  // ADD LINK + v2 extension + one rkey triple
    check_rejected<llc::add_link>(al, llc::error::unsupported);
    bytes dr = to_bytes(llc::encode(sample_delete_rkey(2)));
    set_len_v2(dr, 8 + 4 * 20);  // DELETE RKEY v2 with 20 rkeys
    check_rejected<llc::delete_rkey>(dr, llc::error::unsupported);
    set_len_v2(al, 43);
    check_rejected<llc::add_link>(al, llc::error::bad_length);
  }
}

TEST_CASE("every decoder rejects every truncation", "[llc]") {
  for (uint8_t v : {1, 2}) {
    check_truncations<llc::confirm_link>(to_bytes(llc::encode(sample_confirm_link(v))));
    check_truncations<llc::add_link>(to_bytes(llc::encode(sample_add_link(v))));
    check_truncations<llc::delete_link>(to_bytes(llc::encode(sample_delete_link(v))));
    check_truncations<llc::confirm_rkey>(to_bytes(llc::encode(sample_confirm_rkey(v))));
    check_truncations<llc::delete_rkey>(to_bytes(llc::encode(sample_delete_rkey(v))));
    check_truncations<llc::test_link>(to_bytes(llc::encode(sample_test_link(v))));
  }
  check_truncations<llc::add_link_cont>(to_bytes(llc::encode(sample_add_link_cont())));
  check_truncations<llc::confirm_link>(pinned_confirm_link);
}

TEST_CASE("counts and enums out of range are rejected", "[llc]") {
  SECTION("ADD LINK QP MTU beyond IB_MTU_4096") {
    for (uint8_t mtu : {6, 7, 15}) {
      bytes b = to_bytes(llc::encode(sample_add_link(1)));
      b[32] = mtu;
      check_rejected<llc::add_link>(b, llc::error::bad_field);
    }
    for (uint8_t mtu : {0, 1, 5}) {
      bytes b = to_bytes(llc::encode(sample_add_link(2)));
      b[32] = mtu;
      llc::add_link m;
      CHECK(llc::decode(b, m) == llc::error::ok);
    }
  }
  SECTION("CONFIRM RKEY with more than 2 other links") {
    for (uint8_t v : {1, 2}) {
      for (uint8_t n : {3, 4, 255}) {
        bytes b = to_bytes(llc::encode(sample_confirm_rkey(v)));
        b[4] = n;
        check_rejected<llc::confirm_rkey>(b, llc::error::bad_field);
      }
    }
  }
  SECTION("DELETE RKEY count outside 1..8") {
    for (uint8_t v : {1, 2}) {
      for (uint8_t n : {0, 9, 255}) {
        bytes b = to_bytes(llc::encode(sample_delete_rkey(v)));
        b[4] = n;
        b[5] = 0;
        check_rejected<llc::delete_rkey>(b, llc::error::bad_field);
      }
    }
  }
  SECTION("DELETE RKEY v1 error mask naming an rkey past the count") {
    auto m = sample_delete_rkey(1);
    m.num_rkeys = 2;
    m.err_mask = 0xC0;  // rkeys 0 and 1: fine
    round_trip(m);
    bytes b = to_bytes(llc::encode(m));
    b[5] = 0x20;  // rkey 2 of 2
    check_rejected<llc::delete_rkey>(b, llc::error::bad_field);
    b[5] = 0x01;
    check_rejected<llc::delete_rkey>(b, llc::error::bad_field);
  }
  SECTION("DELETE RKEY v2 invalid-rkey count above the rkey count") {
    auto m = sample_delete_rkey(2);
    m.num_rkeys = 1;
    m.err_mask = 1;
    round_trip(m);
    bytes b = to_bytes(llc::encode(m));
    b[5] = 2;
    check_rejected<llc::delete_rkey>(b, llc::error::bad_field);
  }
}

TEST_CASE("LLC to_string names every error", "[llc]") {
  for (auto e : {llc::error::ok, llc::error::short_buffer, llc::error::bad_type,
                 llc::error::bad_length, llc::error::bad_field, llc::error::unsupported}) {
    CHECK(std::string(llc::to_string(e)).size() > 1);
  }
}

// ---- mutation loop --------------------------------------------------------------------

namespace {

/// Decodes `b` as M; when accepted, the re-encoding must decode to the same
/// value. Returns the error.
template <typename M>
llc::error try_decode(const bytes& b) {
  M m;
  const auto e = llc::decode(b, m);
  if (e == llc::error::ok) {
    M again;
    REQUIRE(llc::decode(llc::encode(m), again) == llc::error::ok);
    CHECK(again == m);
  }
  return e;
}

}  // namespace

TEST_CASE("LLC decoders survive random mutations", "[llc][fuzz]") {
  std::vector<bytes> seeds = {pinned_confirm_link, hwipl_add_link, hwipl_add_link_cont,
                              hwipl_delete_link, hwipl_confirm_rkey, hwipl_delete_rkey,
                              hwipl_test_link(), to_bytes(llc::encode(sample_add_link_cont())),
                              to_bytes(llc::encode(sample_add_link_reject()))};
  for (uint8_t v : {1, 2}) {
    seeds.push_back(to_bytes(llc::encode(sample_confirm_link(v))));
    seeds.push_back(to_bytes(llc::encode(sample_add_link(v))));
    seeds.push_back(to_bytes(llc::encode(sample_delete_link(v))));
    seeds.push_back(to_bytes(llc::encode(sample_confirm_rkey(v))));
    seeds.push_back(to_bytes(llc::encode(sample_delete_rkey(v))));
    seeds.push_back(to_bytes(llc::encode(sample_test_link(v))));
  }
  std::mt19937 rng(0x11C);
  int accepted = 0;
  for (int iter = 0; iter < 8000; ++iter) {
    bytes b = seeds[rng() % seeds.size()];
    const int mutations = 1 + static_cast<int>(rng() % 4);
    for (int i = 0; i < mutations && !b.empty(); ++i) {
      switch (rng() % 6) {
        case 0:  // random byte anywhere
          b[rng() % b.size()] = static_cast<uint8_t>(rng());
          break;
        case 1:  // flip a bit in the header
          b[rng() % std::min<size_t>(b.size(), 8)] ^= static_cast<uint8_t>(1u << (rng() % 8));
          break;
        case 2:  // truncate
          b.resize(rng() % (b.size() + 1));
          break;
        case 3:  // grow with junk (a larger receive slot)
          b.resize(b.size() + rng() % 16, static_cast<uint8_t>(rng()));
          break;
        case 4:  // another type byte, LLC or not
          b[0] = static_cast<uint8_t>(rng() % 3 == 0 ? rng()
                                                     : (rng() % 10) | (rng() % 2 ? 0x20 : 0));
          break;
        default:  // small values where counts live
          b[rng() % b.size()] = static_cast<uint8_t>(rng() % 10);
          break;
      }
    }
    (void)llc::classify(b.empty() ? 0 : b[0]);
    llc::header h;
    const auto pe = llc::peek(b, h);
    const llc::error results[] = {
        try_decode<llc::confirm_link>(b), try_decode<llc::add_link>(b),
        try_decode<llc::add_link_cont>(b), try_decode<llc::delete_link>(b),
        try_decode<llc::confirm_rkey>(b),  try_decode<llc::delete_rkey>(b),
        try_decode<llc::test_link>(b)};
    int ok = 0;
    for (auto e : results) {
      if (pe != llc::error::ok) {
        CHECK(e == pe);  // the decoders run peek() first
      }
      ok += e == llc::error::ok ? 1 : 0;
    }
    CHECK(ok <= 1);  // one type byte, at most one decoder
    if (ok == 1) {
      CHECK(pe == llc::error::ok);
      CHECK(llc::is_llc(b[0]));
    }
    accepted += ok;
  }
  CHECK(accepted > 100);
}
