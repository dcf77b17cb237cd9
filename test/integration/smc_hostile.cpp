// smc_hostile: opens TCP connections to a server and starts each stream with
// hostile bytes that look more or less like a CLC message (PROTOCOL.md
// section 2: header = eyecatcher "SMCR" E2 D4 C3 D9, type, BE16 length,
// version byte), then closes. A server under the preload must treat every
// one as plain TCP (or decline) and keep serving; the constants are written
// here by hand on purpose, independent of core/'s codec.
//
//   smc_hostile --addr A --port P --case NAME|all [--hold-ms T] [--seed S]
//
// Exit 0 unless no connection could be made at all. Prints one line per case
// and a final "hostile cases=N connected=M" line.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "test/integration/net_util.h"

namespace {

using bytes = std::vector<uint8_t>;

constexpr uint8_t eyecatcher[4] = {0xE2, 0xD4, 0xC3, 0xD9};  // "SMCR" in EBCDIC
constexpr uint8_t type_proposal = 1;
constexpr uint8_t version_v1 = 0x10;                          // version 1 in the high nibble, path R
constexpr size_t proposal_v1_len = 52;                        // 40 + IPv4 area 8 + trailer 4

struct options {
  std::string addr = "127.0.0.1";
  uint16_t port = 0;
  bool port_given = false;
  std::string which;
  int hold_ms = 300;
  uint64_t seed = 1;
};

uint64_t g_rng = 0x9E3779B97F4A7C15ull;

uint8_t rand_byte() {
  g_rng ^= g_rng >> 12;
  g_rng ^= g_rng << 25;
  g_rng ^= g_rng >> 27;
  return static_cast<uint8_t>((g_rng * 0x2545F4914F6CDD1Dull) >> 56);
}

void put_header(bytes& b, uint8_t type, uint16_t length, uint8_t version) {
  b.insert(b.end(), eyecatcher, eyecatcher + 4);
  b.push_back(type);
  b.push_back(static_cast<uint8_t>(length >> 8));
  b.push_back(static_cast<uint8_t>(length));
  b.push_back(version);
}

// A syntactically complete SMC v1 IPv4 Proposal (PROTOCOL.md 2.3), 52 bytes:
// header, peer id 8, GID 16, MAC 6, iparea_offset 0, 127.0.0.0/8, no IPv6
// prefixes, trailer. The fields given are what the cases break.
bytes proposal_v1(uint8_t type, uint16_t length, uint8_t version, bool good_trailer) {
  bytes b;
  put_header(b, type, length, version);
  const uint8_t peer_id[8] = {0x12, 0x34, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01};
  b.insert(b.end(), peer_id, peer_id + 8);
  for (int i = 0; i < 16; ++i) {  // GID
    b.push_back(static_cast<uint8_t>(i == 0 ? 0xFE : (i == 1 ? 0x80 : i)));
  }
  const uint8_t mac[6] = {0x02, 0x00, 0x00, 0x00, 0x00, 0x01};
  b.insert(b.end(), mac, mac + 6);
  b.push_back(0);  // iparea_offset BE16 = 0
  b.push_back(0);
  const uint8_t subnet[4] = {127, 0, 0, 0};
  b.insert(b.end(), subnet, subnet + 4);
  b.push_back(8);  // prefix length
  b.push_back(0);  // reserved
  b.push_back(0);
  b.push_back(0);  // IPv6 prefix count
  if (good_trailer) {
    b.insert(b.end(), eyecatcher, eyecatcher + 4);
  } else {
    const uint8_t bad[4] = {0xE2, 0xD4, 0xC3, 0x00};
    b.insert(b.end(), bad, bad + 4);
  }
  return b;
}

struct hostile_case {
  const char* name;
  bytes payload;
  bool hold;  // keep the connection open for --hold-ms before closing
};

std::vector<hostile_case> make_cases() {
  std::vector<hostile_case> cs;
  {
    bytes b = proposal_v1(type_proposal, proposal_v1_len, version_v1, true);
    b[3] = 0xE7;  // "SMCX": neither "SMCR" nor "SMCD"
    cs.push_back({"bad_eyecatcher", b, false});
  }
  cs.push_back({"bad_type", proposal_v1(9, proposal_v1_len, version_v1, true), false});
  cs.push_back({"bad_version", proposal_v1(type_proposal, proposal_v1_len, 0xF0, true), false});
  cs.push_back({"length_too_small", proposal_v1(type_proposal, 4, version_v1, true), false});
  cs.push_back({"length_too_large", proposal_v1(type_proposal, 0xFFFF, version_v1, true), false});
  {
    // Looks like a Proposal of 200 bytes; only 60 arrive, then the close.
    bytes b = proposal_v1(type_proposal, 200, version_v1, true);
    while (b.size() < 60) {
      b.push_back(rand_byte());
    }
    cs.push_back({"length_mismatch", b, false});
  }
  {
    bytes b;
    put_header(b, type_proposal, proposal_v1_len, version_v1);
    b.resize(5);  // eyecatcher + type only
    cs.push_back({"truncated_header", b, true});
  }
  {
    bytes b = proposal_v1(type_proposal, 100, version_v1, true);
    b.resize(40);
    cs.push_back({"truncated_message", b, true});
  }
  {
    bytes b(eyecatcher, eyecatcher + 4);
    for (int i = 0; i < 60; ++i) {
      b.push_back(rand_byte());
    }
    cs.push_back({"garbage_after_eyecatcher", b, false});
  }
  {
    bytes b;
    for (int i = 0; i < 1024; ++i) {
      b.push_back(rand_byte());
    }
    cs.push_back({"random_bytes", b, false});
  }
  cs.push_back({"valid_header_bad_trailer", proposal_v1(type_proposal, proposal_v1_len, version_v1, false), false});
  cs.push_back({"zero_bytes", {}, false});
  return cs;
}

int64_t now_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(steady_clock::now().time_since_epoch()).count();
}

bool send_all(int fd, const bytes& b, std::string& error) {
  if (!smc_test::send_all(fd, b.data(), b.size())) {
    error = std::string("send: ") + std::strerror(errno);
    return false;
  }
  return true;
}

// Keeps the connection open for hold_ms, draining whatever the server sends
// (so the server is never blocked by us) and noting its first bytes.
std::string hold_open(int fd, int hold_ms) {
  int64_t deadline = now_ms() + hold_ms;
  uint64_t got = 0;
  uint8_t first[8] = {};
  size_t first_len = 0;
  std::string end = "held";
  for (;;) {
    int64_t left = deadline - now_ms();
    if (left <= 0) {
      break;
    }
    pollfd pfd{fd, POLLIN, 0};
    int n = ::poll(&pfd, 1, static_cast<int>(left));
    if (n < 0 && errno != EINTR) {
      break;
    }
    if (n <= 0) {
      continue;
    }
    uint8_t buf[65536];
    ssize_t r = ::recv(fd, buf, sizeof buf, 0);
    if (r == 0) {
      end = "peer closed";
      break;
    }
    if (r < 0) {
      if (errno == EINTR || errno == EAGAIN) {
        continue;
      }
      end = std::string("recv: ") + std::strerror(errno);
      break;
    }
    for (ssize_t i = 0; i < r && first_len < sizeof first; ++i) {
      first[first_len++] = buf[i];
    }
    got += static_cast<uint64_t>(r);
  }
  char text[128];
  int k = std::snprintf(text, sizeof text, "%s, received %llu bytes", end.c_str(),
                        static_cast<unsigned long long>(got));
  if (first_len > 0 && k > 0 && static_cast<size_t>(k) < sizeof text) {
    std::string s(text);
    s += " first=";
    for (size_t i = 0; i < first_len; ++i) {
      char h[4];
      std::snprintf(h, sizeof h, "%02x", first[i]);
      s += h;
    }
    return s;
  }
  return text;
}

// Returns false only when the connection could not be made.
bool run_case(const options& o, const hostile_case& c) {
  sockaddr_storage ss;
  socklen_t len = 0;
  smc_test::parse_addr(o.addr, o.port, ss, len);
  int fd = ::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    std::printf("case %s: socket: %s\n", c.name, std::strerror(errno));
    return false;
  }
  int rc;
  do {
    rc = ::connect(fd, reinterpret_cast<sockaddr*>(&ss), len);
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    std::printf("case %s: connect: %s\n", c.name, std::strerror(errno));
    ::close(fd);
    return false;
  }
  std::string error;
  std::string outcome;
  if (!send_all(fd, c.payload, error)) {
    outcome = error;  // the server may legitimately have closed already
  } else if (c.hold) {
    outcome = hold_open(fd, o.hold_ms);
  } else {
    outcome = "closed";
  }
  ::close(fd);
  std::printf("case %s: sent=%zu %s\n", c.name, c.payload.size(), outcome.c_str());
  std::fflush(stdout);
  return true;
}

[[noreturn]] void usage(const std::string& why, const std::vector<hostile_case>& cs) {
  std::fprintf(stderr, "smc_hostile: %s\nusage: smc_hostile --addr A --port P --case NAME|all [--hold-ms T]\ncases:",
               why.c_str());
  for (const auto& c : cs) {
    std::fprintf(stderr, " %s", c.name);
  }
  std::fprintf(stderr, "\n");
  std::exit(2);
}

int run(int argc, char** argv) {
  options o;
  // Parse first so --seed can shape the random cases.
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--seed" && i + 1 < argc) {
      o.seed = std::strtoull(argv[++i], nullptr, 10);
    }
  }
  g_rng ^= o.seed * 0xD6E8FEB86659FD93ull;
  if (g_rng == 0) {
    g_rng = 1;
  }
  std::vector<hostile_case> cs = make_cases();
  smc_test::arg_reader args(argc, argv, 1, [&](const std::string& why) { usage(why, cs); });
  while (args.next()) {
    const std::string& a = args.name();
    if (a == "--addr") {
      o.addr = args.value();
    } else if (a == "--port") {
      o.port = static_cast<uint16_t>(std::strtoul(args.value().c_str(), nullptr, 10));
      o.port_given = true;
    } else if (a == "--case") {
      o.which = args.value();
    } else if (a == "--hold-ms") {
      o.hold_ms = std::atoi(args.value().c_str());
    } else if (a == "--seed") {
      args.skip_value();  // taken above
    } else {
      usage("unknown option " + a, cs);
    }
  }
  sockaddr_storage ss;
  socklen_t len = 0;
  if (!o.port_given || o.which.empty()) {
    usage("--port and --case are required", cs);
  }
  if (!smc_test::parse_addr(o.addr, o.port, ss, len)) {
    usage("bad --addr " + o.addr, cs);
  }
  int cases = 0;
  int connected = 0;
  for (const auto& c : cs) {
    if (o.which != "all" && o.which != c.name) {
      continue;
    }
    ++cases;
    connected += run_case(o, c) ? 1 : 0;
  }
  if (cases == 0) {
    usage("unknown case " + o.which, cs);
  }
  std::printf("hostile cases=%d connected=%d\n", cases, connected);
  if (connected == 0) {
    std::fprintf(stderr, "smc_hostile: FAIL could not connect to %s port %u\n", o.addr.c_str(),
                 static_cast<unsigned>(o.port));
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    ::signal(SIGPIPE, SIG_IGN);
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "smc_hostile: FAIL exception: %s\n", e.what());
  } catch (...) {
    std::fprintf(stderr, "smc_hostile: FAIL unknown exception\n");
  }
  return 1;
}
