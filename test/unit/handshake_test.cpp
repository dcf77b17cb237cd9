// Unit tests for the CLC handshake (core/handshake) over a stand-in TCP
// connection: an AF_UNIX stream socketpair (the handshake only uses send,
// recv and poll on it). The client runs in its own thread; the server side
// runs in the test thread the way the preload drives it: poll + peek_clc until
// a whole Proposal is there, then server_handshake().
//
// Besides the successful switch, the tests pin the fallback guarantees: every
// failure leaves the byte stream intact (CLC messages consumed exactly, other
// bytes never consumed), and hostile starts of stream are classified without
// consuming anything.
#include <catch2/catch.hpp>

#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "config/config.h"
#include "core/clc.h"
#include "core/conn.h"
#include "core/handshake.h"
#include "core/host_id.h"
#include "core/reason.h"
#include "rdma/shm/shm_link.h"
#include "rdma/shm/shm_transport.h"

namespace clc = smc::core::clc;
using smc::core::conn;
using smc::core::hs_outcome;
using smc::core::hs_params;
using smc::core::io_result;
using smc::core::reason;
using smc::core::start_kind;
using smc::config::transport_mode;
using bytes = std::vector<uint8_t>;

namespace {

constexpr uint32_t nosmcdev = 0x03030000;
constexpr uint32_t noueid = 0x03030008;
constexpr unsigned mask_decline = 1u << 4;

/// The stand-in TCP connection: c is the client's end, s the server's.
struct tcp_pair {
  int c = -1;
  int s = -1;
  tcp_pair() {
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    c = sv[0];
    s = sv[1];
  }
  ~tcp_pair() {
    close_c();
    close_s();
  }
  tcp_pair(const tcp_pair&) = delete;
  tcp_pair& operator=(const tcp_pair&) = delete;
  void close_c() {
    if (c >= 0) {
      ::close(c);
      c = -1;
    }
  }
  void close_s() {
    if (s >= 0) {
      ::close(s);
      s = -1;
    }
  }
};

const char* kind_name(start_kind k) {
  switch (k) {
    case start_kind::need_more: return "need_more";
    case start_kind::eof: return "eof";
    case start_kind::match: return "match";
    case start_kind::not_clc: return "not_clc";
  }
  return "?";
}

/// What the client sends: a v2 Proposal for the same-host path (the
/// loopback entry, and the entry with this process's link key).
clc::proposal our_proposal() {
  clc::proposal p;
  p.version = 2;
  p.typev1 = clc::type_n;
  p.typev2 = clc::type_d;
  p.ueids.push_back(clc::make_eid(smc::core::default_ueid()));
  p.ism_v2.push_back({smc::core::host_id(), clc::loopback_chid});
  p.ism_v2.push_back({smc::rdma::shm::link_key(), clc::link_key_chid});
  return p;
}

void send_all(int fd, const void* p, size_t n) {
  REQUIRE(::send(fd, p, n, MSG_NOSIGNAL) == static_cast<ssize_t>(n));
}
void send_all(int fd, const bytes& b) { send_all(fd, b.data(), b.size()); }
void send_all(int fd, const std::string& s) { send_all(fd, s.data(), s.size()); }

/// Everything readable on fd right now (never blocks).
bytes read_available(int fd) {
  bytes out;
  uint8_t buf[4096];
  for (;;) {
    ssize_t n = ::recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n <= 0) {
      break;
    }
    out.insert(out.end(), buf, buf + n);
  }
  return out;
}

/// Nothing at all is waiting on fd (and the peer is still open).
bool stream_empty(int fd) {
  char c;
  ssize_t n = ::recv(fd, &c, 1, MSG_DONTWAIT | MSG_PEEK);
  return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

/// Reads exactly n bytes, waiting (bounded) for them.
bytes read_exactly(int fd, size_t n, int max_ms = 5000) {
  bytes out;
  const auto start = std::chrono::steady_clock::now();
  while (out.size() < n) {
    uint8_t buf[4096];
    ssize_t k = ::recv(fd, buf, std::min(sizeof(buf), n - out.size()), MSG_DONTWAIT);
    if (k > 0) {
      out.insert(out.end(), buf, buf + k);
      continue;
    }
    if (k == 0 || (errno != EAGAIN && errno != EINTR)) {
      break;
    }
    auto left = max_ms - std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::steady_clock::now() - start)
                             .count();
    if (left <= 0) {
      break;
    }
    pollfd p{fd, POLLIN, 0};
    ::poll(&p, 1, static_cast<int>(left));
  }
  return out;
}

/// Plays the client after its Proposal: reads the server's Accept whole
/// (fails the test if the next message is anything else).
bytes read_accept(int fd) {
  bytes msg = read_exactly(fd, clc::header_len);
  clc::header h;
  REQUIRE(msg.size() == clc::header_len);
  REQUIRE(clc::peek_header(msg, h) == clc::error::ok);
  REQUIRE(h.type == clc::msg_type::accept);
  bytes rest = read_exactly(fd, h.length - clc::header_len);
  msg.insert(msg.end(), rest.begin(), rest.end());
  return msg;
}

/// The server's loop: poll + peek_clc until a whole Proposal is at the start
/// of the stream, or something else is known, or max_ms passes (need_more).
start_kind wait_for_proposal(int fd, size_t& len, int max_ms = 5000) {
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    size_t l = 0;
    start_kind k = smc::core::peek_clc(fd, smc::core::mask_proposal, l);
    if (k != start_kind::need_more) {
      len = l;
      return k;
    }
    auto left = max_ms - std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::steady_clock::now() - start)
                             .count();
    if (left <= 0) {
      return start_kind::need_more;
    }
    pollfd p{fd, POLLIN, 0};
    ::poll(&p, 1, static_cast<int>(std::min<long>(left, 50)));
  }
}

/// Reads one whole CLC Decline from fd and decodes it.
bool read_decline(int fd, clc::decline& d) {
  bytes hdr = read_exactly(fd, clc::header_len);
  clc::header h;
  if (hdr.size() != clc::header_len || clc::peek_header(hdr, h) != clc::error::ok ||
      h.type != clc::msg_type::decline) {
    return false;
  }
  bytes rest = read_exactly(fd, h.length - clc::header_len);
  hdr.insert(hdr.end(), rest.begin(), rest.end());
  return clc::decode(hdr, d) == clc::error::ok;
}

/// Classifies `b` (written whole into a fresh stream whose writer stays open)
/// and checks that peek_clc consumed nothing.
start_kind classify(const bytes& b, unsigned mask, size_t& len) {
  tcp_pair t;
  if (!b.empty()) {
    send_all(t.c, b);
  }
  len = 0;
  start_kind k = smc::core::peek_clc(t.s, mask, len);
  CHECK(read_available(t.s) == b);  // nothing consumed
  return k;
}

start_kind classify(const bytes& b, unsigned mask = smc::core::mask_proposal) {
  size_t len = 0;
  return classify(b, mask, len);
}

void set_be16(bytes& b, size_t off, uint16_t v) {
  b.at(off) = static_cast<uint8_t>(v >> 8);
  b.at(off + 1) = static_cast<uint8_t>(v);
}

/// Moves `n` bytes each way through two connected conns, verified.
void exchange_data(conn& client, conn& server, size_t n) {
  bytes up(n);
  bytes down(n);
  for (size_t i = 0; i < n; ++i) {
    up[i] = static_cast<uint8_t>(i * 7 + (i >> 9));
    down[i] = static_cast<uint8_t>(i * 13 + (i >> 11) + 1);
  }
  auto pump = [](conn& from, conn& to, const bytes& src) {
    bytes got;
    std::thread w([&] {
      size_t off = 0;
      while (off < src.size()) {
        size_t k = std::min<size_t>(src.size() - off, 10000);
        iovec v{const_cast<uint8_t*>(src.data() + off), k};
        io_result r = from.send(&v, 1, MSG_NOSIGNAL);
        if (r.n <= 0) {
          return;
        }
        off += static_cast<size_t>(r.n);
      }
    });
    got.resize(src.size());
    size_t off = 0;
    while (off < got.size()) {
      iovec v{got.data() + off, got.size() - off};
      io_result r = to.recv(&v, 1, 0);
      if (r.n <= 0) {
        break;
      }
      off += static_cast<size_t>(r.n);
    }
    w.join();
    got.resize(off);
    return got;
  };
  CHECK(pump(client, server, up) == up);
  CHECK(pump(server, client, down) == down);
}

void set_timeouts(int fd, int ms) {
  timeval tv{ms / 1000, (ms % 1000) * 1000};
  REQUIRE(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) == 0);
  REQUIRE(setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) == 0);
}

// Both ends of a handshake that made the connection SMC carry data both
// ways over it.
void exchange_over(tcp_pair& t, hs_outcome& co, hs_outcome& so, size_t n) {
  set_timeouts(t.c, 10000);
  set_timeouts(t.s, 10000);
  conn cc(std::move(co.path), t.c, 0);
  conn sc(std::move(so.path), t.s, 0);
  exchange_data(cc, sc, n);
}

}  // namespace

// ---------------------------------------------------------------------------
// 1. Success
// ---------------------------------------------------------------------------

TEST_CASE("handshake succeeds between two sides on this host", "[handshake]") {
  tcp_pair t;
  hs_params cp;
  cp.rmb_size = 16 * 1024;
  cp.timeout_ms = 5000;
  hs_params sp;
  sp.rmb_size = 64 * 1024;
  sp.timeout_ms = 5000;
  auto client = std::async(std::launch::async, [&] { return smc::core::client_handshake(t.c, cp); });
  size_t len = 0;
  start_kind k = wait_for_proposal(t.s, len);
  INFO("server saw " << kind_name(k));
  REQUIRE(k == start_kind::match);
  CHECK(len == clc::encode(our_proposal()).size());
  hs_outcome so = smc::core::server_handshake(t.s, len, sp);
  hs_outcome co = client.get();
  INFO("server why " << smc::core::to_name(so.why) << ", client why " << smc::core::to_name(co.why));
  REQUIRE(so.path);
  REQUIRE(co.path);
  CHECK(so.why == reason::none);
  CHECK(co.why == reason::none);
  CHECK_FALSE(so.broken);
  CHECK_FALSE(co.broken);
  CHECK_FALSE(co.strip_reply);
  CHECK(co.path->transport() == smc::rdma::kind::shm);
  // Each side reads its own RMB and writes the other's.
  CHECK(co.path->rx_size() == cp.rmb_size);
  CHECK(co.path->tx_size() == sp.rmb_size);
  CHECK(so.path->rx_size() == sp.rmb_size);
  CHECK(so.path->tx_size() == cp.rmb_size);
  // The CLC messages were consumed exactly: the TCP stream is empty both ways.
  CHECK(stream_empty(t.c));
  CHECK(stream_empty(t.s));

  set_timeouts(t.c, 10000);
  set_timeouts(t.s, 10000);
  conn cc(std::move(co.path), t.c, 0);
  conn sc(std::move(so.path), t.s, 0);
  exchange_data(cc, sc, 1u << 20);
  CHECK(cc.readable_bytes() == 0);
  CHECK(sc.readable_bytes() == 0);
  // Orderly close from the client: the server reads EOF.
  cc.close(false);
  char b;
  iovec v{&b, 1};
  CHECK(sc.recv(&v, 1, 0).n == 0);
}

TEST_CASE("successful handshakes back to back get independent paths", "[handshake]") {
  for (int i = 0; i < 5; ++i) {
    INFO("round " << i);
    tcp_pair t;
    hs_params p;
    p.rmb_size = 16 * 1024;
    auto client = std::async(std::launch::async, [&] { return smc::core::client_handshake(t.c, p); });
    size_t len = 0;
    REQUIRE(wait_for_proposal(t.s, len) == start_kind::match);
    hs_outcome so = smc::core::server_handshake(t.s, len, p);
    hs_outcome co = client.get();
    REQUIRE(so.path);
    REQUIRE(co.path);
    exchange_over(t, co, so, 100000);
  }
}

// ---------------------------------------------------------------------------
// 2. Server declines (transport tcp): the stream continues as plain TCP
// ---------------------------------------------------------------------------

TEST_CASE("server with transport tcp declines and the stream stays intact", "[handshake]") {
  tcp_pair t;
  hs_params cp;
  hs_params sp;
  sp.transport = transport_mode::tcp;
  auto client = std::async(std::launch::async, [&] { return smc::core::client_handshake(t.c, cp); });
  size_t len = 0;
  REQUIRE(wait_for_proposal(t.s, len) == start_kind::match);
  hs_outcome so = smc::core::server_handshake(t.s, len, sp);
  hs_outcome co = client.get();
  CHECK_FALSE(so.path);
  CHECK_FALSE(co.path);
  CHECK(so.why == reason::transport_tcp);
  CHECK(co.why == reason::peer_declined);
  CHECK(co.peer_diagnosis == nosmcdev);
  CHECK_FALSE(so.broken);
  CHECK_FALSE(co.broken);
  CHECK_FALSE(co.strip_reply);
  // No leftover CLC bytes either way: application bytes arrive unchanged.
  CHECK(stream_empty(t.c));
  CHECK(stream_empty(t.s));
  const std::string up = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  const std::string down = "HTTP/1.1 200 OK\r\n\r\n";
  send_all(t.c, up);
  bytes got = read_exactly(t.s, up.size());
  CHECK(std::string(got.begin(), got.end()) == up);
  send_all(t.s, down);
  got = read_exactly(t.c, down.size());
  CHECK(std::string(got.begin(), got.end()) == down);
  CHECK(stream_empty(t.c));
  CHECK(stream_empty(t.s));
}

// ---------------------------------------------------------------------------
// 3. Client with transport tcp: no Proposal at all
// ---------------------------------------------------------------------------

TEST_CASE("client with transport tcp sends nothing", "[handshake]") {
  tcp_pair t;
  hs_params cp;
  cp.transport = transport_mode::tcp;
  const auto t0 = std::chrono::steady_clock::now();
  hs_outcome co = smc::core::client_handshake(t.c, cp);
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
          .count();
  CHECK(co.why == reason::transport_tcp);
  CHECK_FALSE(co.path);
  CHECK_FALSE(co.broken);
  CHECK_FALSE(co.strip_reply);
  CHECK(ms < 1000);  // returned at once, no waiting on the peer
  char c;
  errno = 0;
  CHECK(::recv(t.s, &c, 1, MSG_DONTWAIT) == -1);
  CHECK(errno == EAGAIN);
}

// ---------------------------------------------------------------------------
// 4. Server answers with application data
// ---------------------------------------------------------------------------

TEST_CASE("server answering with application data: no_clc_reply, data kept", "[handshake]") {
  tcp_pair t;
  const std::string banner = "220 ready\r\n";
  hs_params cp;
  SECTION("server wrote before reading the Proposal") {
    send_all(t.s, banner);
    hs_outcome co = smc::core::client_handshake(t.c, cp);
    CHECK(co.why == reason::no_clc_reply);
    CHECK_FALSE(co.path);
    CHECK_FALSE(co.broken);
    CHECK_FALSE(co.strip_reply);
  }
  SECTION("server answered the Proposal with non-CLC bytes") {
    auto client = std::async(std::launch::async, [&] { return smc::core::client_handshake(t.c, cp); });
    size_t len = 0;
    REQUIRE(wait_for_proposal(t.s, len) == start_kind::match);
    send_all(t.s, banner);
    hs_outcome co = client.get();
    CHECK(co.why == reason::no_clc_reply);
    CHECK_FALSE(co.path);
    CHECK_FALSE(co.broken);
  }
  SECTION("a short non-CLC answer (one byte)") {
    send_all(t.s, std::string("2"));
    hs_outcome co = smc::core::client_handshake(t.c, cp);
    CHECK(co.why == reason::no_clc_reply);
    bytes got = read_available(t.c);
    CHECK(std::string(got.begin(), got.end()) == "2");
    return;
  }
  // The banner is still there for the application, in order, untouched.
  bytes got = read_available(t.c);
  CHECK(std::string(got.begin(), got.end()) == banner);
  // The server's side holds exactly the Proposal.
  size_t len = 0;
  REQUIRE(smc::core::peek_clc(t.s, smc::core::mask_proposal, len) == start_kind::match);
  CHECK(len == clc::encode(our_proposal()).size());
  REQUIRE(smc::core::discard_clc(t.s, len));
  CHECK(stream_empty(t.s));
}

// ---------------------------------------------------------------------------
// 5. Silent server
// ---------------------------------------------------------------------------

TEST_CASE("silent server: clc_timeout, and the client's Decline follows its Proposal",
          "[handshake]") {
  tcp_pair t;
  hs_params cp;
  cp.timeout_ms = 200;
  const auto t0 = std::chrono::steady_clock::now();
  hs_outcome co = smc::core::client_handshake(t.c, cp);
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
          .count();
  CHECK(co.why == reason::clc_timeout);
  CHECK(co.strip_reply);
  CHECK_FALSE(co.broken);
  CHECK_FALSE(co.path);
  CHECK(ms >= 190);
  CHECK(ms < 3000);
  // Server side: a complete Proposal, then a complete Decline, then nothing.
  size_t len = 0;
  REQUIRE(smc::core::peek_clc(t.s, smc::core::mask_proposal, len) == start_kind::match);
  CHECK(len == clc::encode(our_proposal()).size());
  REQUIRE(smc::core::discard_clc(t.s, len));
  size_t dlen = 0;
  REQUIRE(smc::core::peek_clc(t.s, smc::core::mask_reply, dlen) == start_kind::match);
  bytes d = read_exactly(t.s, dlen);
  clc::decline dec;
  REQUIRE(clc::decode(d, dec) == clc::error::ok);
  CHECK(dec.diagnosis == smc::core::to_decline_code(reason::clc_timeout));
  CHECK(stream_empty(t.s));
  CHECK(stream_empty(t.c));
}

TEST_CASE("discard_clc consumes exactly one message", "[handshake]") {
  tcp_pair t;
  bytes prop = clc::encode(our_proposal());
  send_all(t.c, prop);
  send_all(t.c, std::string("after"));
  size_t len = 0;
  REQUIRE(smc::core::peek_clc(t.s, smc::core::mask_proposal, len) == start_kind::match);
  REQUIRE(len == prop.size());
  REQUIRE(smc::core::discard_clc(t.s, len));
  bytes rest = read_available(t.s);
  CHECK(std::string(rest.begin(), rest.end()) == "after");
  CHECK_FALSE(smc::core::discard_clc(t.s, clc::max_msg_len + 1));
}

// ---------------------------------------------------------------------------
// 6. peek_clc classification
// ---------------------------------------------------------------------------

TEST_CASE("peek_clc: empty stream and prefixes of a Proposal need more", "[handshake][peek]") {
  CHECK(classify({}) == start_kind::need_more);
  const bytes prop = clc::encode(our_proposal());
  REQUIRE(prop.size() > clc::header_len);
  for (size_t n = 1; n < prop.size(); ++n) {
    INFO("prefix of " << n << " bytes");
    CHECK(classify(bytes(prop.begin(), prop.begin() + static_cast<long>(n))) ==
          start_kind::need_more);
  }
}

TEST_CASE("peek_clc: a whole Proposal matches with its length", "[handshake][peek]") {
  const bytes prop = clc::encode(our_proposal());
  size_t len = 0;
  CHECK(classify(prop, smc::core::mask_proposal, len) == start_kind::match);
  CHECK(len == prop.size());
  // Followed by application bytes: still the Proposal's own length.
  bytes more = prop;
  for (char ch : std::string("GET / HTTP/1.1\r\n")) {
    more.push_back(static_cast<uint8_t>(ch));
  }
  len = 0;
  CHECK(classify(more, smc::core::mask_proposal, len) == start_kind::match);
  CHECK(len == prop.size());
  // Arriving byte by byte on one stream: need_more until the last byte.
  tcp_pair t;
  for (size_t i = 0; i < prop.size(); ++i) {
    send_all(t.c, &prop[i], 1);
    size_t l = 0;
    start_kind k = smc::core::peek_clc(t.s, smc::core::mask_proposal, l);
    INFO("after " << i + 1 << " bytes: " << kind_name(k));
    CHECK(k == (i + 1 == prop.size() ? start_kind::match : start_kind::need_more));
  }
}

TEST_CASE("peek_clc: other CLC types match only when asked for", "[handshake][peek]") {
  clc::decline d;
  d.diagnosis = nosmcdev;
  const bytes dec = clc::encode(d);
  size_t len = 0;
  CHECK(classify(dec, smc::core::mask_proposal) == start_kind::not_clc);
  CHECK(classify(dec, smc::core::mask_reply, len) == start_kind::match);
  CHECK(len == dec.size());
  CHECK(classify(clc::encode(our_proposal()), smc::core::mask_reply) == start_kind::not_clc);
}

TEST_CASE("peek_clc: application data and hostile headers are not CLC", "[handshake][peek]") {
  const bytes prop = clc::encode(our_proposal());
  const auto text = [](const char* s) { return bytes(s, s + std::strlen(s)); };

  CHECK(classify(text("GET / HTTP/1.1\r\n\r\n")) == start_kind::not_clc);
  CHECK(classify(text("G")) == start_kind::not_clc);      // decided on the first byte
  CHECK(classify(bytes{0xE2, 0xD4, 0x00}) == start_kind::not_clc);

  bytes b = prop;
  SECTION("bad eyecatcher") {
    b[3] = 0xC5;
  }
  SECTION("bad type 0") {
    b[4] = 0;
  }
  SECTION("bad type 5") {
    b[4] = 5;
  }
  SECTION("bad type 0xFE (a CDC message)") {
    b[4] = 0xFE;
  }
  SECTION("bad version 0") {
    b[7] = static_cast<uint8_t>(b[7] & 0x0F);
  }
  SECTION("bad version 3") {
    b[7] = static_cast<uint8_t>((b[7] & 0x0F) | 0x30);
  }
  SECTION("length too small") {
    set_be16(b, 5, static_cast<uint16_t>(clc::header_len + clc::trailer_len - 1));
  }
  SECTION("length 0") {
    set_be16(b, 5, 0);
  }
  SECTION("length 0xFFFF") {
    set_be16(b, 5, 0xFFFF);
  }
  SECTION("length just above the maximum") {
    set_be16(b, 5, static_cast<uint16_t>(clc::max_msg_len + 1));
  }
  SECTION("length shorter than the content") {
    set_be16(b, 5, static_cast<uint16_t>(prop.size() - 4));
  }
  SECTION("length longer than the content (padding before the trailer)") {
    b.insert(b.end() - static_cast<long>(clc::trailer_len), 4, uint8_t{0});
    set_be16(b, 5, static_cast<uint16_t>(b.size()));
  }
  SECTION("valid header, bad trailer") {
    b.back() ^= 0x01;
  }
  SECTION("valid header, trailer zeroed") {
    for (size_t i = b.size() - clc::trailer_len; i < b.size(); ++i) {
      b[i] = 0;
    }
  }
  SECTION("bad UEID count inside") {
    // Our Proposal carries one UEID; claim 9 (more than the maximum of 8).
    clc::proposal p = our_proposal();
    bytes ok = clc::encode(p);
    p.ueids.push_back(clc::make_eid("SECOND"));
    bytes two = clc::encode(p);
    REQUIRE(two.size() == ok.size() + 32);
    // Find the count byte: the only byte that differs between the two encodings
    // at the same offset and holds 1 vs 2.
    size_t at = 0;
    for (size_t i = clc::header_len; i < ok.size(); ++i) {
      if (ok[i] == 1 && two[i] == 2) {
        at = i;
        break;
      }
    }
    REQUIRE(at != 0);
    b[at] = 9;
  }
  INFO("message: " << b.size() << " bytes");
  size_t len = 12345;
  CHECK(classify(b, smc::core::mask_proposal, len) == start_kind::not_clc);
}

TEST_CASE("peek_clc: peer closed before sending anything is eof", "[handshake][peek]") {
  tcp_pair t;
  t.close_c();
  size_t len = 0;
  CHECK(smc::core::peek_clc(t.s, smc::core::mask_proposal, len) == start_kind::eof);
}

// ---------------------------------------------------------------------------
// 7. Proposals the server must decline
// ---------------------------------------------------------------------------

TEST_CASE("server declines a Proposal from another host or without our UEID", "[handshake]") {
  tcp_pair t;
  clc::proposal p = our_proposal();
  reason expect = reason::none;
  uint32_t code = 0;
  SECTION("ISM gid is not our host id") {
    p.ism_v2[0].gid = smc::core::host_id() ^ 0x1;
    expect = reason::no_smc_dev;
    code = nosmcdev;
  }
  SECTION("our host id, but not the loopback CHID") {
    p.ism_v2[0].chid = 0x1234;
    expect = reason::no_smc_dev;
    code = nosmcdev;
  }
  SECTION("several foreign ISM entries") {
    p.ism_v2 = {{1, clc::loopback_chid}, {2, clc::loopback_chid}, {smc::core::host_id() + 1, 7}};
    expect = reason::no_smc_dev;
    code = nosmcdev;
  }
  SECTION("no common UEID") {
    p.ueids = {clc::make_eid("SOMEONE-ELSE")};
    expect = reason::no_ueid;
    code = noueid;
  }
  SECTION("no UEID at all") {
    p.ueids.clear();
    expect = reason::no_ueid;
    code = noueid;
  }
  SECTION("our UEID second in the list is fine: accepted") {
    p.ueids = {clc::make_eid("SOMEONE-ELSE"), clc::make_eid(smc::core::default_ueid())};
    expect = reason::none;
  }
  std::string server_ueid = smc::core::default_ueid();
  SECTION("the server's SMC_UEID is the one that must match: accepted") {
    p.ueids = {clc::make_eid("SITE-A.1")};
    server_ueid = "SITE-A.1";
    expect = reason::none;
  }
  SECTION("the default UEID no longer matches a server with its own SMC_UEID") {
    server_ueid = "SITE-A.1";
    expect = reason::no_ueid;
    code = noueid;
  }
  const bytes prop = clc::encode(p);
  send_all(t.c, prop);
  size_t len = 0;
  REQUIRE(wait_for_proposal(t.s, len) == start_kind::match);
  REQUIRE(len == prop.size());
  hs_params sp;
  sp.timeout_ms = 300;  // the accepted case waits for a Confirm that never comes
  sp.ueid = server_ueid;
  hs_outcome so = smc::core::server_handshake(t.s, len, sp);
  CHECK_FALSE(so.path);
  if (expect == reason::none) {
    // It answered with an Accept and waited for the client in vain.
    size_t alen = 0;
    CHECK(smc::core::peek_clc(t.c, 1u << 2, alen) == start_kind::match);
    CHECK(so.why == reason::clc_timeout);
    return;
  }
  CHECK(so.why == expect);
  CHECK_FALSE(so.broken);
  clc::decline d;
  REQUIRE(read_decline(t.c, d));
  CHECK(d.diagnosis == code);
  // The Proposal was consumed exactly; nothing else was sent.
  CHECK(stream_empty(t.s));
  CHECK(stream_empty(t.c));
}

TEST_CASE("server with transport rdma declines a same-host Proposal (no shm)", "[handshake]") {
  tcp_pair t;
  send_all(t.c, clc::encode(our_proposal()));
  size_t len = 0;
  REQUIRE(wait_for_proposal(t.s, len) == start_kind::match);
  hs_params sp;
  sp.transport = transport_mode::rdma;
  hs_outcome so = smc::core::server_handshake(t.s, len, sp);
  CHECK(so.why == reason::no_smc_dev);
  clc::decline d;
  REQUIRE(read_decline(t.c, d));
  CHECK(d.diagnosis == nosmcdev);
}

TEST_CASE("client gets a hostile Accept: it declines and stays TCP", "[handshake]") {
  tcp_pair t;
  hs_params cp;
  cp.timeout_ms = 2000;
  auto client = std::async(std::launch::async, [&] { return smc::core::client_handshake(t.c, cp); });
  size_t len = 0;
  REQUIRE(wait_for_proposal(t.s, len) == start_kind::match);
  REQUIRE(smc::core::discard_clc(t.s, len));
  clc::accept_confirm_d acc;
  acc.type = clc::msg_type::accept;
  acc.version = 2;
  acc.first_contact = true;
  acc.gid = smc::core::host_id();
  acc.token = 0x1234;
  acc.dmbe_idx = 1;
  acc.link_id = 42;
  acc.chid = clc::loopback_chid;
  acc.eid = clc::make_eid(smc::core::default_ueid());
  reason expect = reason::none;
  SECTION("Accept names another host") {
    acc.gid ^= 1;
    expect = reason::no_smc_dev;
  }
  SECTION("Accept with token 0") {
    acc.token = 0;
    expect = reason::no_smc_dev;
  }
  SECTION("Accept with another UEID") {
    acc.eid = clc::make_eid("OTHER");
    expect = reason::no_ueid;
  }
  SECTION("Accept pointing at a rendezvous nobody listens on") {
    expect = reason::rendezvous_failed;
  }
  send_all(t.s, clc::encode(acc));
  hs_outcome co = client.get();
  CHECK(co.why == expect);
  CHECK_FALSE(co.path);
  CHECK_FALSE(co.broken);
  // The client told the server why, in one whole Decline; nothing else.
  clc::decline d;
  REQUIRE(read_decline(t.s, d));
  CHECK(d.diagnosis == smc::core::to_decline_code(expect));
  CHECK(stream_empty(t.s));
  CHECK(stream_empty(t.c));
}

TEST_CASE("a server Decline arriving in pieces is read whole", "[handshake]") {
  tcp_pair t;
  clc::decline d;
  d.diagnosis = nosmcdev;
  const bytes dec = clc::encode(d);
  const size_t first = GENERATE(size_t{3}, size_t{8}, size_t{10});
  INFO("first piece " << first << " bytes");
  // Part of the answer is already there when the client starts to read it.
  send_all(t.s, dec.data(), first);
  hs_params cp;
  cp.timeout_ms = 3000;
  auto client = std::async(std::launch::async, [&] { return smc::core::client_handshake(t.c, cp); });
  size_t len = 0;
  REQUIRE(wait_for_proposal(t.s, len) == start_kind::match);
  REQUIRE(smc::core::discard_clc(t.s, len));
  send_all(t.s, dec.data() + first, dec.size() - first);
  hs_outcome co = client.get();
  CHECK(co.why == reason::peer_declined);
  CHECK(co.peer_diagnosis == nosmcdev);
  CHECK_FALSE(co.broken);
  CHECK(stream_empty(t.c));
  CHECK(stream_empty(t.s));
}

TEST_CASE("client declining after the server's Accept: server stays TCP, stream intact",
          "[handshake]") {
  tcp_pair t;
  hs_params sp;
  sp.timeout_ms = 3000;
  const bytes prop = clc::encode(our_proposal());
  send_all(t.c, prop);
  size_t len = 0;
  REQUIRE(wait_for_proposal(t.s, len) == start_kind::match);
  auto server = std::async(std::launch::async, [&] { return smc::core::server_handshake(t.s, len, sp); });
  // Play the client: read the Accept, then decline instead of confirming.
  const bytes hdr = read_accept(t.c);
  clc::accept_confirm_d acc;
  REQUIRE(clc::decode(hdr, acc) == clc::error::ok);
  CHECK(acc.gid == smc::core::host_id());
  CHECK(acc.chid == clc::loopback_chid);
  CHECK(acc.token != 0);
  clc::decline d;
  d.diagnosis = 0x09990003;
  send_all(t.c, clc::encode(d));
  send_all(t.c, std::string("app bytes"));  // what the client sends next as plain TCP
  const auto t0 = std::chrono::steady_clock::now();
  hs_outcome so = server.get();
  CHECK(std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
            .count() < 2000);  // the Decline ends the wait for the rendezvous at once
  CHECK_FALSE(so.path);
  CHECK(so.why == reason::peer_declined);
  CHECK(so.peer_diagnosis == 0x09990003);
  CHECK_FALSE(so.broken);
  // Exactly the Decline was consumed: the application bytes follow.
  bytes app = read_exactly(t.s, 9);
  CHECK(std::string(app.begin(), app.end()) == "app bytes");
  CHECK(stream_empty(t.s));
  CHECK(stream_empty(t.c));
}

TEST_CASE("a client that closes after the server's Accept: peer_closed, at once", "[handshake]") {
  tcp_pair t;
  hs_params sp;
  sp.timeout_ms = 3000;
  send_all(t.c, clc::encode(our_proposal()));
  size_t len = 0;
  REQUIRE(wait_for_proposal(t.s, len) == start_kind::match);
  auto server = std::async(std::launch::async, [&] { return smc::core::server_handshake(t.s, len, sp); });
  read_accept(t.c);
  const auto t0 = std::chrono::steady_clock::now();
  t.close_c();
  hs_outcome so = server.get();
  CHECK(std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
            .count() < 2000);  // not the handshake's timeout
  CHECK_FALSE(so.path);
  CHECK(so.why == reason::peer_closed);
}

// ---------------------------------------------------------------------------
// 9. what a background decision uses: await_clc, server_decline
// ---------------------------------------------------------------------------

TEST_CASE("await_clc: a Proposal completed while it waits matches", "[handshake][background]") {
  tcp_pair t;
  const bytes prop = clc::encode(our_proposal());
  const size_t half = prop.size() / 2;
  send_all(t.c, prop.data(), half);
  std::thread rest([&] {
    // Meant to arrive while await_clc waits; the outcome must be the same if
    // it comes first (nothing here depends on the order).
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    send_all(t.c, prop.data() + half, prop.size() - half);
  });
  size_t len = 0;
  const auto k = smc::core::await_clc(t.s, smc::core::mask_proposal, len,
                                      smc::rdma::shm::now_ms() + 5000);
  rest.join();
  CHECK(kind_name(k) == std::string("match"));
  CHECK(len == prop.size());
  CHECK(read_available(t.s) == prop);  // nothing consumed
}

TEST_CASE("await_clc: a prefix that never completes is application data at the deadline",
          "[handshake][background]") {
  tcp_pair t;
  const bytes prop = clc::encode(our_proposal());
  send_all(t.c, prop.data(), 10);
  size_t len = 0;
  const int64_t start = smc::rdma::shm::now_ms();
  CHECK(smc::core::await_clc(t.s, smc::core::mask_proposal, len, start + 100) ==
        start_kind::not_clc);
  CHECK(smc::rdma::shm::now_ms() >= start + 100);
  CHECK(read_available(t.s) == bytes(prop.begin(), prop.begin() + 10));  // still all there
}

TEST_CASE("await_clc: nothing at all by the deadline still needs more; EOF is eof",
          "[handshake][background]") {
  tcp_pair t;
  size_t len = 0;
  CHECK(smc::core::await_clc(t.s, smc::core::mask_proposal, len, smc::rdma::shm::now_ms() + 50) ==
        start_kind::need_more);
  t.close_c();
  CHECK(smc::core::await_clc(t.s, smc::core::mask_proposal, len, smc::rdma::shm::now_ms() + 5000) ==
        start_kind::eof);
}

TEST_CASE("server_decline consumes exactly the Proposal and answers a Decline",
          "[handshake][background]") {
  tcp_pair t;
  const bytes prop = clc::encode(our_proposal());
  send_all(t.c, prop);
  send_all(t.c, std::string("GET /"));
  hs_outcome o = smc::core::server_decline(t.s, prop.size(), reason::busy);
  CHECK_FALSE(o.path);
  CHECK(o.why == reason::busy);
  CHECK_FALSE(o.broken);
  bytes rest = read_available(t.s);
  CHECK(std::string(rest.begin(), rest.end()) == "GET /");
  // The client reads one whole Decline, and nothing else.
  bytes reply = read_available(t.c);
  size_t len = 0;
  REQUIRE(classify(reply, mask_decline, len) == start_kind::match);
  CHECK(len == reply.size());
  clc::decline d;
  REQUIRE(clc::decode(reply, d) == clc::error::ok);
  CHECK(d.diagnosis == smc::core::to_decline_code(reason::busy));
  CHECK(std::string(smc::core::to_name(reason::busy)) == "busy");
}

// ---------------------------------------------------------------------------
// Handshakes in steps (core::hs_step): what event loops run with no thread
// ---------------------------------------------------------------------------

namespace {

using smc::core::step_result;

const char* step_name(step_result r) {
  switch (r) {
    case step_result::wait: return "wait";
    case step_result::done: return "done";
    case step_result::blocking: return "blocking";
  }
  return "?";
}

// A blocking handshake between this process's two ends: afterwards the
// process has a same-host link with itself (as client and as server).
void make_link(const hs_params& p) {
  tcp_pair t;
  auto client = std::async(std::launch::async, [&] { return smc::core::client_handshake(t.c, p); });
  size_t len = 0;
  REQUIRE(wait_for_proposal(t.s, len) == start_kind::match);
  hs_outcome so = smc::core::server_handshake(t.s, len, p);
  hs_outcome co = client.get();
  REQUIRE(so.path);
  REQUIRE(co.path);
}

// Sleeps until the step's deadline has passed (waiting for the deadline
// itself, which is what the test is about).
// The server's first step on the Proposal waiting on fd (which must be one).
smc::core::hs_step_ptr begin_server(int fd, const hs_params& p, hs_outcome& so) {
  size_t len = 0;
  REQUIRE(smc::core::peek_clc(fd, smc::core::mask_proposal, len) == start_kind::match);
  auto ss = smc::core::server_begin(fd, len, p, so);
  REQUIRE(ss);
  return ss;
}

void outlive(const smc::core::hs_step& s) {
  for (;;) {
    const int64_t left = smc::core::hs_deadline(s) - smc::rdma::shm::now_ms();
    if (left < 0) {
      return;
    }
    ::poll(nullptr, 0, static_cast<int>(left) + 1);
  }
}

}  // namespace

TEST_CASE("over a same-host link a handshake runs in steps, no thread and no waiting",
          "[handshake][step]") {
  hs_params p;
  p.rmb_size = 16 * 1024;
  make_link(p);
  for (int i = 0; i < 3; ++i) {
    INFO("connection " << i);
    tcp_pair t;
    hs_outcome co;
    hs_outcome so;
    auto cs = smc::core::client_propose(t.c, p, co);
    REQUIRE(cs);
    // Nothing from the server yet: the client waits (and sent nothing more).
    CHECK(smc::core::hs_advance(*cs, t.c, p, false, co) == step_result::wait);
    auto ss = begin_server(t.s, p, so);
    // The server's Accept names the link: sent at once, the Confirm awaited.
    step_result r = smc::core::hs_advance(*ss, t.s, p, false, so);
    INFO("server " << step_name(r));
    REQUIRE(r == step_result::wait);
    CHECK(smc::core::hs_advance(*ss, t.s, p, false, so) == step_result::wait);
    // The client takes the Accept, lends its slot, confirms: done.
    r = smc::core::hs_advance(*cs, t.c, p, false, co);
    INFO("client " << step_name(r) << " " << smc::core::to_name(co.why));
    REQUIRE(r == step_result::done);
    REQUIRE(co.path);
    r = smc::core::hs_advance(*ss, t.s, p, false, so);
    INFO("server " << step_name(r) << " " << smc::core::to_name(so.why));
    REQUIRE(r == step_result::done);
    REQUIRE(so.path);
    CHECK(stream_empty(t.c));
    CHECK(stream_empty(t.s));
    exchange_over(t, co, so, 100000);
  }
}

TEST_CASE("a step that needs a rendezvous or a link asks for a thread, or declines",
          "[handshake][step]") {
  tcp_pair t;
  hs_params p;
  // A Proposal without a link key: first contact, whose rendezvous waits
  // for the client.
  clc::proposal prop = our_proposal();
  prop.ism_v2.resize(1);
  send_all(t.c, clc::encode(prop));
  size_t len = 0;
  REQUIRE(wait_for_proposal(t.s, len) == start_kind::match);
  hs_outcome so;
  auto ss = smc::core::server_begin(t.s, len, p, so);
  REQUIRE(ss);
  CHECK(smc::core::hs_advance(*ss, t.s, p, false, so) == step_result::blocking);
  CHECK(stream_empty(t.c));  // nothing was sent before a thread takes it
  // No thread to be had: the server declines, and the stream stays intact.
  so = smc::core::hs_abandon(*ss, t.s, reason::busy);
  CHECK(so.why == reason::busy);
  CHECK_FALSE(so.broken);
  clc::decline d;
  REQUIRE(read_decline(t.c, d));
  CHECK(d.diagnosis == smc::core::to_decline_code(reason::busy));
  CHECK(stream_empty(t.c));
}

TEST_CASE("a client step outlives its deadline: clc_timeout, its Decline after its Proposal",
          "[handshake][step]") {
  tcp_pair t;
  hs_params p;
  p.timeout_ms = 100;
  hs_outcome co;
  auto cs = smc::core::client_propose(t.c, p, co);
  REQUIRE(cs);
  CHECK(smc::core::hs_advance(*cs, t.c, p, false, co) == step_result::wait);
  outlive(*cs);
  REQUIRE(smc::core::hs_advance(*cs, t.c, p, false, co) == step_result::done);
  CHECK(co.why == reason::clc_timeout);
  CHECK(co.strip_reply);
  CHECK_FALSE(co.broken);
  size_t len = 0;
  REQUIRE(smc::core::peek_clc(t.s, smc::core::mask_proposal, len) == start_kind::match);
  REQUIRE(smc::core::discard_clc(t.s, len));
  clc::decline d;
  REQUIRE(read_decline(t.s, d));
  CHECK(d.diagnosis == smc::core::to_decline_code(reason::clc_timeout));
  CHECK(stream_empty(t.s));
}

TEST_CASE("a client step finds the server closed: peer_closed, a fallback that reads the end",
          "[handshake][step]") {
  tcp_pair t;
  hs_params p;
  hs_outcome co;
  auto cs = smc::core::client_propose(t.c, p, co);
  REQUIRE(cs);
  CHECK(smc::core::hs_advance(*cs, t.c, p, false, co) == step_result::wait);
  SECTION("with a FIN, after it read the Proposal") {
    size_t len = 0;
    REQUIRE(smc::core::peek_clc(t.s, smc::core::mask_proposal, len) == start_kind::match);
    REQUIRE(smc::core::discard_clc(t.s, len));
    t.close_s();
    REQUIRE(smc::core::hs_advance(*cs, t.c, p, false, co) == step_result::done);
    char c;
    CHECK(::recv(t.c, &c, 1, MSG_DONTWAIT) == 0);  // the application reads the end, as on TCP
  }
  SECTION("with a reset (the Proposal unread)") {
    t.close_s();
    REQUIRE(smc::core::hs_advance(*cs, t.c, p, false, co) == step_result::done);
  }
  CHECK(co.why == reason::peer_closed);
  CHECK_FALSE(co.broken);
  CHECK_FALSE(co.path);
}

TEST_CASE("after a link's Accept the server takes a Decline, and breaks on anything else",
          "[handshake][step]") {
  hs_params p;
  p.rmb_size = 16 * 1024;
  make_link(p);
  p.timeout_ms = 100;  // (the Confirm's wait: twice that)
  tcp_pair t;
  hs_outcome co;
  hs_outcome so;
  auto cs = smc::core::client_propose(t.c, p, co);
  REQUIRE(cs);
  auto ss = begin_server(t.s, p, so);
  REQUIRE(smc::core::hs_advance(*ss, t.s, p, false, so) == step_result::wait);
  size_t alen = 0;
  REQUIRE(smc::core::peek_clc(t.c, smc::core::mask_reply, alen) == start_kind::match);
  REQUIRE(smc::core::discard_clc(t.c, alen));  // (the client never sees it)
  reason want = reason::none;
  bool broken = false;
  SECTION("a Decline: the server falls back, the stream intact") {
    clc::decline d;
    d.version = 2;
    d.diagnosis = smc::core::to_decline_code(reason::no_smc_dev);
    send_all(t.c, clc::encode(d));
    want = reason::peer_declined;
  }
  SECTION("application bytes instead of a Confirm: broken") {
    send_all(t.c, std::string("GET / HTTP/1.1\r\n\r\n"));
    want = reason::clc_malformed;
    broken = true;
  }
  SECTION("the client closes: broken") {
    t.close_c();
    want = reason::peer_closed;
    broken = true;
  }
  SECTION("nothing until the deadline: broken") {
    outlive(*ss);
    want = reason::clc_timeout;
    broken = true;
  }
  const step_result r = smc::core::hs_advance(*ss, t.s, p, false, so);
  INFO("server " << step_name(r) << " " << smc::core::to_name(so.why));
  REQUIRE(r == step_result::done);
  CHECK(so.why == want);
  CHECK(so.broken == broken);
  CHECK_FALSE(so.path);
  ss.reset();
  cs.reset();
  // The slot went back unused: the link still serves the next connection.
  tcp_pair u;
  auto client = std::async(std::launch::async, [&] { return smc::core::client_handshake(u.c, p); });
  size_t len = 0;
  REQUIRE(wait_for_proposal(u.s, len) == start_kind::match);
  hs_outcome s2 = smc::core::server_handshake(u.s, len, p);
  hs_outcome c2 = client.get();
  CHECK(s2.path);
  CHECK(c2.path);
}

// ---------------------------------------------------------------------------
// The client lends first (docs/ARCHITECTURE.md, "Same-host links")
// ---------------------------------------------------------------------------

namespace {

// What a client's Proposal at the head of `fd` lends: (link id << 32 |
// slot) and token, and its link key; all 0 when it lends nothing.
struct lend_seen {
  uint64_t link_slot = 0;
  uint64_t token = 0;
  uint64_t key = 0;
};

lend_seen peek_lend(int fd) {
  size_t len = 0;
  REQUIRE(smc::core::peek_clc(fd, smc::core::mask_proposal, len) == start_kind::match);
  bytes b(len);
  REQUIRE(::recv(fd, b.data(), b.size(), MSG_PEEK) == static_cast<ssize_t>(len));
  clc::proposal prop;
  REQUIRE(clc::decode(b, prop) == clc::error::ok);
  lend_seen l;
  for (const auto& e : prop.ism_v2) {
    l.link_slot = e.chid == clc::lend_slot_chid ? e.gid : l.link_slot;
    l.token = e.chid == clc::lend_token_chid ? e.gid : l.token;
    l.key = e.chid == clc::link_key_chid ? e.gid : l.key;
  }
  return l;
}

// As a server that saw the Proposal elsewhere and replayed it to the
// link's owner would make that owner do: the lent slot, claimed.
std::unique_ptr<smc::rdma::shm::remote_side> claim_lent(const lend_seen& l) {
  auto link = smc::rdma::shm::find_link(smc::rdma::shm::link_end::server, l.key);
  REQUIRE(link);
  auto half = link->take_peer(l.token, static_cast<uint32_t>(l.link_slot), 0, true);
  REQUIRE(half);
  return half;
}

constexpr uint64_t some_dest = 0x5eed5eed5eed5eedULL;

}  // namespace

TEST_CASE("to an address its link served last, the client lends first: no Confirm",
          "[handshake][step][lend]") {
  hs_params p;
  p.rmb_size = 16 * 1024;
  p.dest = some_dest;
  make_link(p);  // (remembers the link for that address)
  for (int i = 0; i < 3; ++i) {
    INFO("connection " << i);
    tcp_pair t;
    hs_outcome co;
    hs_outcome so;
    auto cs = smc::core::client_propose(t.c, p, co);
    REQUIRE(cs);
    const lend_seen seen = peek_lend(t.s);
    CHECK(seen.token != 0);
    CHECK(seen.link_slot != 0);
    auto ss = begin_server(t.s, p, so);
    // The server took the lent slot: its Accept ends the handshake.
    step_result r = smc::core::hs_advance(*ss, t.s, p, false, so);
    INFO("server " << step_name(r) << " " << smc::core::to_name(so.why));
    REQUIRE(r == step_result::done);
    REQUIRE(so.path);
    r = smc::core::hs_advance(*cs, t.c, p, false, co);
    INFO("client " << step_name(r) << " " << smc::core::to_name(co.why));
    REQUIRE(r == step_result::done);
    REQUIRE(co.path);
    CHECK(stream_empty(t.s));  // no Confirm
    CHECK(stream_empty(t.c));
    exchange_over(t, co, so, 100000);
  }
}

TEST_CASE("a lent slot someone else had claimed: the Confirm follows with another one",
          "[handshake][step][lend]") {
  hs_params p;
  p.rmb_size = 16 * 1024;
  p.dest = some_dest + 1;
  make_link(p);
  tcp_pair t;
  hs_outcome co;
  hs_outcome so;
  auto cs = smc::core::client_propose(t.c, p, co);
  REQUIRE(cs);
  const lend_seen seen = peek_lend(t.s);
  REQUIRE(seen.token != 0);
  auto stolen = claim_lent(seen);
  auto ss = begin_server(t.s, p, so);
  REQUIRE(smc::core::hs_advance(*ss, t.s, p, false, so) == step_result::wait);  // a Confirm to come
  REQUIRE(smc::core::hs_advance(*cs, t.c, p, false, co) == step_result::done);
  REQUIRE(co.path);
  REQUIRE(smc::core::hs_advance(*ss, t.s, p, false, so) == step_result::done);
  REQUIRE(so.path);
  exchange_over(t, co, so, 100000);
  // The claimed slot is the claimer's until it lets it go.
  auto link = smc::rdma::shm::find_link(smc::rdma::shm::link_end::server, seen.key);
  REQUIRE(link);
  link->give_back(nullptr, std::move(stolen), true);
}

TEST_CASE("a lent slot taken and no Accept: the client waits once more, then breaks, never declines",
          "[handshake][step][lend]") {
  hs_params p;
  p.rmb_size = 16 * 1024;
  p.dest = some_dest + 2;
  make_link(p);
  p.timeout_ms = 100;
  tcp_pair t;
  hs_outcome co;
  auto cs = smc::core::client_propose(t.c, p, co);
  REQUIRE(cs);
  const lend_seen seen = peek_lend(t.s);
  REQUIRE(seen.token != 0);
  auto stolen = claim_lent(seen);
  outlive(*cs);
  // Whoever took the slot believes in the connection: no Decline yet.
  REQUIRE(smc::core::hs_advance(*cs, t.c, p, false, co) == step_result::wait);
  outlive(*cs);
  REQUIRE(smc::core::hs_advance(*cs, t.c, p, false, co) == step_result::done);
  CHECK(co.why == reason::clc_timeout);
  CHECK(co.broken);
  size_t len = 0;
  REQUIRE(smc::core::peek_clc(t.s, smc::core::mask_proposal, len) == start_kind::match);
  REQUIRE(smc::core::discard_clc(t.s, len));
  CHECK(stream_empty(t.s));  // the Proposal, and nothing after it
  cs.reset();
  auto link = smc::rdma::shm::find_link(smc::rdma::shm::link_end::server, seen.key);
  REQUIRE(link);
  link->give_back(nullptr, std::move(stolen), true);
}
