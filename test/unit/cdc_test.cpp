// Unit tests for the CDC codec (cdc.h, PROTOCOL.md section 3.2).
#include <catch2/catch.hpp>

#include <random>
#include <vector>

#include "core/cdc.h"

using namespace smc::core;
namespace cdc = smc::core::cdc;

namespace {

// The hwipl/smc-llc cdc_test.go dump quoted in PROTOCOL.md section 3.2.
const std::vector<uint8_t> example_cdc = {
    0xFE, 0x2C, 0x00, 0x01, 0x00, 0x00, 0x00, 0x03,  // type, len, seqno 1, token 3
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0D,  // prod wrap 0, count 13
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // cons 0/0
    0x00, 0x00,                                      // flags
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};

}  // namespace

TEST_CASE("CDC example from PROTOCOL.md decodes and re-encodes", "[cdc]") {
  REQUIRE(example_cdc.size() == cdc::msg_len);
  cdc::message m;
  REQUIRE(cdc::decode(example_cdc, m) == cdc::error::ok);
  CHECK(m.seqno == 1);
  CHECK(m.token == 3);
  CHECK(m.prod == cursor{0, 13});
  CHECK(m.cons == cursor{0, 0});
  CHECK(m.prod_flags == 0);
  CHECK(m.conn_flags == 0);
  const auto again = cdc::encode(m);
  CHECK(std::vector<uint8_t>(again.begin(), again.end()) == example_cdc);
}

TEST_CASE("CDC round trip with every field set", "[cdc]") {
  cdc::message m;
  m.seqno = 0xFFFF;
  m.token = 0xA1B2C3D4;
  m.prod = cursor{0x1234, 0x0001FFFF};
  m.cons = cursor{0xFFFF, 0x7FFFFFFF};
  m.prod_flags = cdc::prod_write_blocked | cdc::prod_urg_pending | cdc::prod_urg_present |
                 cdc::prod_cons_update_req | cdc::prod_failover;
  m.conn_flags = cdc::conn_done_writing | cdc::conn_closed | cdc::conn_abnormal;
  const auto b = cdc::encode(m);
  CHECK(b[0] == 0xFE);
  CHECK(b[1] == 44);
  CHECK(b[10] == 0x12);
  CHECK(b[11] == 0x34);
  CHECK(b[12] == 0x00);
  CHECK(b[15] == 0xFF);
  CHECK(b[24] == 0xF8);
  CHECK(b[25] == 0xE0);
  for (size_t i = 26; i < 44; ++i) {
    CHECK(b[i] == 0);
  }
  cdc::message d;
  REQUIRE(cdc::decode(b, d) == cdc::error::ok);
  CHECK(d == m);
}

TEST_CASE("CDC decode ignores bytes past the 44-byte message", "[cdc]") {
  std::vector<uint8_t> slot = example_cdc;
  slot.resize(48, 0xAA);  // Linux v1 receive slots are 48 bytes
  cdc::message m;
  CHECK(cdc::decode(slot, m) == cdc::error::ok);
  CHECK(m.prod.count == 13);
}

TEST_CASE("CDC decode rejects malformed input", "[cdc]") {
  cdc::message m;
  m.seqno = 77;  // sentinel: must survive every rejection
  const cdc::message before = m;

  SECTION("wrong type byte") {
    auto b = example_cdc;
    b[0] = 0x01;  // an LLC type
    CHECK(cdc::decode(b, m) == cdc::error::bad_type);
  }
  SECTION("wrong length byte") {
    for (uint8_t len : {0, 26, 43, 45, 0xFF}) {
      auto b = example_cdc;
      b[1] = len;
      CHECK(cdc::decode(b, m) == cdc::error::bad_length);
    }
  }
  SECTION("every truncation") {
    for (size_t n = 0; n < cdc::msg_len; ++n) {
      std::vector<uint8_t> b(example_cdc.begin(), example_cdc.begin() + static_cast<long>(n));
      CHECK(cdc::decode(b, m) == cdc::error::short_buffer);
    }
  }
  CHECK(m == before);
}

TEST_CASE("CDC seq_older uses signed 16-bit distance", "[cdc]") {
  CHECK(cdc::seq_older(4, 5));
  CHECK_FALSE(cdc::seq_older(5, 5));
  CHECK_FALSE(cdc::seq_older(6, 5));
  CHECK(cdc::seq_older(0xFFFF, 0));   // just before the wrap
  CHECK_FALSE(cdc::seq_older(0, 0xFFFF));
  CHECK_FALSE(cdc::seq_older(3, 0xFFF0));
}

TEST_CASE("CDC decode survives random mutations", "[cdc][fuzz]") {
  std::mt19937 rng(0xCDC);
  size_t ok = 0;
  for (int iter = 0; iter < 5000; ++iter) {
    std::vector<uint8_t> b = example_cdc;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int i = 0; i < flips; ++i) {
      b[rng() % b.size()] = static_cast<uint8_t>(rng());
    }
    if (rng() % 3 == 0) {
      b.resize(rng() % (b.size() + 8));
    }
    cdc::message m;
    const auto e = cdc::decode(b, m);
    if (e == cdc::error::ok) {
      ++ok;
      CHECK(cdc::encode(m)[0] == 0xFE);
    }
  }
  CHECK(ok > 0);
}
