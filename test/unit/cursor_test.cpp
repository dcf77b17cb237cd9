// Unit tests for the RMB ring cursor helpers and RMB size codes (cursor.h,
// PROTOCOL.md sections 3.3 and 6).
#include <catch2/catch.hpp>

#include "core/cursor.h"

using smc::core::cursor;
using namespace smc::core;

namespace {
constexpr uint32_t ring = 65536;
}

TEST_CASE("curs_add stays inside the ring", "[cursor]") {
  CHECK(curs_add(ring, cursor{3, 0}, 0) == cursor{3, 0});
  CHECK(curs_add(ring, cursor{3, 100}, 200) == cursor{3, 300});
  // Landing exactly on the end is the start of the next lap.
  CHECK(curs_add(ring, cursor{3, ring - 10}, 10) == cursor{4, 0});
  CHECK(curs_add(ring, cursor{3, ring - 10}, 9) == cursor{3, ring - 1});
}

TEST_CASE("curs_add crosses the end of the ring", "[cursor]") {
  CHECK(curs_add(ring, cursor{7, ring - 100}, 300) == cursor{8, 200});
  // A full ring's worth brings count back to where it was, one lap later.
  CHECK(curs_add(ring, cursor{7, 1234}, ring) == cursor{8, 1234});
}

TEST_CASE("curs_add wraps the wrap counter 0xFFFF -> 0", "[cursor]") {
  CHECK(curs_add(ring, cursor{0xFFFF, ring - 1}, 2) == cursor{0, 1});
  CHECK(curs_add(16384, cursor{0xFFFF, 16000}, 16384) == cursor{0, 16000});
}

TEST_CASE("curs_pack and curs_unpack are inverse", "[cursor]") {
  const cursor c{0xBEEF, 0x12345678};
  CHECK(curs_pack(c) == 0x0000BEEF12345678ULL);
  CHECK(curs_unpack(curs_pack(c)) == c);
}

TEST_CASE("curs_diff", "[cursor]") {
  SECTION("same wrap") {
    CHECK(curs_diff(ring, cursor{5, 100}, cursor{5, 100}) == 0);
    CHECK(curs_diff(ring, cursor{5, 100}, cursor{5, 350}) == 250);
  }
  SECTION("across the end of the ring") {
    CHECK(curs_diff(ring, cursor{5, ring - 100}, cursor{6, 50}) == 150);
    CHECK(curs_diff(ring, cursor{5, 1000}, cursor{6, 1000}) == ring);  // full ring
  }
  SECTION("across wrap 0xFFFF -> 0") {
    CHECK(curs_diff(ring, cursor{0xFFFF, ring - 10}, cursor{0, 20}) == 30);
  }
  SECTION("zero when new is not ahead") {
    CHECK(curs_diff(ring, cursor{5, 350}, cursor{5, 100}) == 0);
    CHECK(curs_diff(ring, cursor{6, 50}, cursor{5, ring - 100}) == 0);
    CHECK(curs_diff(ring, cursor{0, 20}, cursor{0xFFFF, ring - 10}) == 0);
  }
  SECTION("consistent with curs_add") {
    const cursor a{0xFFFE, 60000};
    for (uint32_t n : {0u, 1u, 5535u, 5536u, 40000u, ring}) {
      CHECK(curs_diff(ring, a, curs_add(ring, a, n)) == n);
    }
  }
}

TEST_CASE("curs_comp", "[cursor]") {
  CHECK(curs_comp(ring, cursor{1, 10}, cursor{1, 10}) == 0);
  CHECK(curs_comp(ring, cursor{1, 10}, cursor{1, 11}) == -1);
  CHECK(curs_comp(ring, cursor{1, 11}, cursor{1, 10}) == 1);
  // The wrap decides even when the count is smaller.
  CHECK(curs_comp(ring, cursor{2, 0}, cursor{1, ring - 1}) == 1);
  CHECK(curs_comp(ring, cursor{1, ring - 1}, cursor{2, 0}) == -1);
  // Wrap-aware: 0 is one lap after 0xFFFF.
  CHECK(curs_comp(ring, cursor{0, 5}, cursor{0xFFFF, 60000}) == 1);
  CHECK(curs_comp(ring, cursor{0xFFFF, 60000}, cursor{0, 5}) == -1);
}

TEST_CASE("curs_ahead_within accepts valid peer cursors", "[cursor]") {
  const cursor from{9, 1000};
  CHECK(curs_ahead_within(ring, from, from));                 // equal
  CHECK(curs_ahead_within(ring, from, cursor{9, 1001}));      // a byte ahead
  CHECK(curs_ahead_within(ring, from, cursor{9, ring - 1}));  // to the end
  CHECK(curs_ahead_within(ring, from, cursor{10, 0}));        // past the end
  CHECK(curs_ahead_within(ring, from, cursor{10, 1000}));     // exactly a full ring
  CHECK(curs_ahead_within(ring, cursor{0xFFFF, 1000}, cursor{0, 999}));  // wrap 0xFFFF -> 0
}

TEST_CASE("curs_ahead_within rejects bad peer cursors", "[cursor]") {
  const cursor from{9, 1000};
  CHECK_FALSE(curs_ahead_within(ring, from, cursor{9, 999}));     // behind, same wrap
  CHECK_FALSE(curs_ahead_within(ring, from, cursor{8, 5000}));    // behind, previous wrap
  CHECK_FALSE(curs_ahead_within(ring, from, cursor{10, 1001}));   // more than a ring ahead
  CHECK_FALSE(curs_ahead_within(ring, from, cursor{11, 0}));      // two laps ahead
  CHECK_FALSE(curs_ahead_within(ring, from, cursor{9, ring}));    // count == size
  CHECK_FALSE(curs_ahead_within(ring, from, cursor{9, 0xFFFFFFFF}));  // count > size
  CHECK_FALSE(curs_ahead_within(ring, from, cursor{10, ring}));   // count == size, next wrap
  CHECK_FALSE(curs_ahead_within(ring, cursor{9, ring}, cursor{9, ring}));  // bad `from`
  CHECK_FALSE(curs_ahead_within(0, cursor{0, 0}, cursor{0, 0}));  // no ring
  CHECK_FALSE(curs_ahead_within(ring, cursor{0, 5}, cursor{0xFFFF, 10}));  // behind across wrap
}

TEST_CASE("rmb_size_to_code and rmb_code_to_size", "[cursor]") {
  CHECK(rmb_size_to_code(0) == 0);
  CHECK(rmb_size_to_code(1) == 0);
  CHECK(rmb_size_to_code(16384) == 0);
  CHECK(rmb_size_to_code(16385) == 1);  // rounds up
  CHECK(rmb_size_to_code(32768) == 1);
  CHECK(rmb_size_to_code(32769) == 2);
  CHECK(rmb_size_to_code(65536) == 2);
  CHECK(rmb_size_to_code(262144) == 4);
  CHECK(rmb_size_to_code(1048576) == 6);
  CHECK(rmb_size_to_code(512u << 20) == 15);
  CHECK(rmb_size_to_code(0xFFFFFFFFu) == 15);  // clamped to the 4-bit field
  // clamp to a caller cap (SMC-D: 6, old SMC-R: 5)
  CHECK(rmb_size_to_code(4u << 20, 5) == 5);
  CHECK(rmb_size_to_code(4u << 20, 6) == 6);
  CHECK(rmb_size_to_code(64u << 10, 5) == 2);
  CHECK(rmb_size_to_code(1u << 30, 200) == 15);  // a cap above 15 is still 15

  CHECK(rmb_code_to_size(0) == 16384);
  CHECK(rmb_code_to_size(2) == 65536);
  CHECK(rmb_code_to_size(6) == 1048576);
  CHECK(rmb_code_to_size(15) == (512u << 20));
  for (uint8_t code = 0; code <= 15; ++code) {
    CHECK(rmb_size_to_code(rmb_code_to_size(code)) == code);
    if (code < 15) {
      CHECK(rmb_size_to_code(rmb_code_to_size(code) + 1) == code + 1);
    }
  }
}
