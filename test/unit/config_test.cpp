// Unit tests for config/: every SMC_* key (good and bad values), the config
// file syntax, file-then-environment precedence, SMC_PEERS parsing and
// peer matching.
#include "config/config.h"

#include <arpa/inet.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <string>

using namespace smc::config;

namespace {

// The fake environment that load() sees through its getenv_fn seam.
std::map<std::string, std::string>& fake_env() {
  static std::map<std::string, std::string> env;
  return env;
}

const char* fake_getenv(const char* name) {
  const auto it = fake_env().find(name);
  return it == fake_env().end() ? nullptr : it->second.c_str();
}

// A temporary file removed at scope exit.
struct temp_file {
  std::string path;
  explicit temp_file(const std::string& text) {
    char tmpl[] = "/tmp/smc_config_test_XXXXXX";
    const int fd = ::mkstemp(tmpl);
    REQUIRE(fd >= 0);
    REQUIRE(::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()));
    ::close(fd);
    path = tmpl;
  }
  ~temp_file() { ::unlink(path.c_str()); }
};

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

sockaddr_in v4(const char* ip, uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  REQUIRE(::inet_pton(AF_INET, ip, &a.sin_addr) == 1);
  return a;
}

sockaddr_in6 v6(const char* ip, uint16_t port) {
  sockaddr_in6 a{};
  a.sin6_family = AF_INET6;
  a.sin6_port = htons(port);
  REQUIRE(::inet_pton(AF_INET6, ip, &a.sin6_addr) == 1);
  return a;
}

bool match(const std::vector<peer_rule>& rules, const sockaddr_in& a) {
  return peers_match(rules, reinterpret_cast<const sockaddr*>(&a), sizeof(a));
}

bool match(const std::vector<peer_rule>& rules, const sockaddr_in6& a) {
  return peers_match(rules, reinterpret_cast<const sockaddr*>(&a), sizeof(a));
}

std::vector<peer_rule> rules_of(const std::string& text) {
  std::vector<peer_rule> r;
  const auto w = parse_peers(text, r);
  INFO(text);
  REQUIRE(w.empty());
  return r;
}

std::string one_rule(const std::string& text) {
  const auto r = rules_of(text);
  REQUIRE(r.size() == 1);
  return to_string(r[0]);
}

}  // namespace

TEST_CASE("defaults", "[config]") {
  const config c;
  CHECK_FALSE(c.enable);
  CHECK(c.peers.empty());
  CHECK(c.transport == transport_mode::auto_);
  CHECK(c.rmb_size == 256 * 1024);
  CHECK(c.level == log_level::off);
  CHECK(c.log_file.empty());
  CHECK(c.stats_file.empty());
  CHECK(c.spin_us == 20);
}

TEST_CASE("SMC_ENABLE", "[config]") {
  config c;
  for (const char* t : {"1", "true", "TRUE", "yes", "Yes", "on", "ON", " 1 "}) {
    c.enable = false;
    INFO(t);
    CHECK(apply(c, "SMC_ENABLE", t).empty());
    CHECK(c.enable);
  }
  for (const char* f : {"0", "false", "False", "no", "NO", "off", "Off"}) {
    c.enable = true;
    INFO(f);
    CHECK(apply(c, "SMC_ENABLE", f).empty());
    CHECK_FALSE(c.enable);
  }
  c.enable = false;
  for (const char* bad : {"", "2", "maybe", "enable", "y", "1 0"}) {
    INFO(bad);
    const std::string w = apply(c, "SMC_ENABLE", bad);
    CHECK(contains(w, "SMC_ENABLE"));
    CHECK(contains(w, std::string("'") + bad + "'"));
    CHECK(contains(w, "using 0"));
    CHECK_FALSE(c.enable);
  }
  c.enable = true;
  CHECK(contains(apply(c, "SMC_ENABLE", "x"), "using 1"));
  CHECK(c.enable);
}

TEST_CASE("SMC_TRANSPORT", "[config]") {
  config c;
  CHECK(apply(c, "SMC_TRANSPORT", "rdma").empty());
  CHECK(c.transport == transport_mode::rdma);
  CHECK(apply(c, "SMC_TRANSPORT", "SHM").empty());
  CHECK(c.transport == transport_mode::shm);
  CHECK(apply(c, "SMC_TRANSPORT", "tcp").empty());
  CHECK(c.transport == transport_mode::tcp);
  CHECK(apply(c, "SMC_TRANSPORT", "Auto").empty());
  CHECK(c.transport == transport_mode::auto_);
  c.transport = transport_mode::shm;
  const std::string w = apply(c, "SMC_TRANSPORT", "infiniband");
  CHECK(contains(w, "SMC_TRANSPORT"));
  CHECK(contains(w, "'infiniband'"));
  CHECK(contains(w, "using shm"));
  CHECK(c.transport == transport_mode::shm);
  CHECK_FALSE(apply(c, "SMC_TRANSPORT", "").empty());
  CHECK_FALSE(apply(c, "SMC_TRANSPORT", "auto_").empty());
  CHECK(std::string(to_string(transport_mode::auto_)) == "auto");
}

TEST_CASE("SMC_DEVICES", "[config]") {
  config c;
  CHECK(c.devices.empty());
  CHECK(apply(c, "SMC_DEVICES", "rxe0, mlx5_1 mlx5_bond.0").empty());
  REQUIRE(c.devices.size() == 3);
  CHECK(c.devices[0] == "rxe0");
  CHECK(c.devices[1] == "mlx5_1");
  CHECK(c.devices[2] == "mlx5_bond.0");
  const std::string w = apply(c, "SMC_DEVICES", "rxe0,../evil");
  CHECK(contains(w, "SMC_DEVICES"));
  CHECK(c.devices.size() == 3);  // a bad list leaves the old one
  CHECK(apply(c, "SMC_DEVICES", "").empty());
  CHECK(c.devices.empty());
}

TEST_CASE("SMC_LOG_LEVEL", "[config]") {
  config c;
  const std::pair<const char*, log_level> good[] = {
      {"trace", log_level::trace}, {"debug", log_level::debug}, {"INFO", log_level::info},
      {"warn", log_level::warn},   {"Error", log_level::error}, {"off", log_level::off},
  };
  for (const auto& [text, level] : good) {
    INFO(text);
    CHECK(apply(c, "SMC_LOG_LEVEL", text).empty());
    CHECK(c.level == level);
  }
  c.level = log_level::info;
  const std::string w = apply(c, "SMC_LOG_LEVEL", "verbose");
  CHECK(contains(w, "SMC_LOG_LEVEL"));
  CHECK(contains(w, "'verbose'"));
  CHECK(contains(w, "using info"));
  CHECK(c.level == log_level::info);
  CHECK_FALSE(apply(c, "SMC_LOG_LEVEL", "3").empty());
}

TEST_CASE("SMC_RMB_SIZE suffixes, rounding and range", "[config]") {
  config c;
  const std::pair<const char*, uint32_t> good[] = {
      {"16384", 16384},
      {"16K", 16384},
      {"16k", 16384},
      {"16KiB", 16384},
      {"16kib", 16384},
      {"16 KiB", 16384},
      {"64K", 65536},
      {"1M", 1u << 20},
      {"1m", 1u << 20},
      {"1MiB", 1u << 20},
      {"1MIB", 1u << 20},
      {"512M", 512u << 20},
      {"536870912", 512u << 20},
      {"524288K", 512u << 20},
      {"16385", 32768},      // rounded up to a power of two
      {"100K", 128 * 1024},  // rounded up
      {"257K", 512 * 1024},
      {"300M", 512u << 20},  // rounds up to the maximum, still allowed
      {"  2M  ", 2u << 20},
  };
  for (const auto& [text, bytes] : good) {
    INFO(text);
    CHECK(apply(c, "SMC_RMB_SIZE", text).empty());
    CHECK(c.rmb_size == bytes);
  }
  c.rmb_size = 256 * 1024;
  for (const char* bad : {"", "16383", "15K", "0", "513M", "536870913", "1G", "1GiB", "64KB",
                          "64 K B", "K", "-64K", "+64K", "64.5K", "0x4000", "99999999999999999999",
                          "64Ki", "1MB"}) {
    INFO(bad);
    const std::string w = apply(c, "SMC_RMB_SIZE", bad);
    CHECK(contains(w, "SMC_RMB_SIZE"));
    CHECK(contains(w, "using 256K"));
    CHECK(c.rmb_size == 256 * 1024);
  }
}

TEST_CASE("SMC_SPIN_US", "[config]") {
  config c;
  CHECK(apply(c, "SMC_SPIN_US", "0").empty());
  CHECK(c.spin_us == 0);
  CHECK(apply(c, "SMC_SPIN_US", "10000").empty());
  CHECK(c.spin_us == 10000);
  CHECK(apply(c, "SMC_SPIN_US", "50").empty());
  CHECK(c.spin_us == 50);
  for (const char* bad : {"10001", "-1", "", "abc", "5us", "1e3", "18446744073709551617"}) {
    INFO(bad);
    const std::string w = apply(c, "SMC_SPIN_US", bad);
    CHECK(contains(w, "SMC_SPIN_US"));
    CHECK(contains(w, "using 50"));
    CHECK(c.spin_us == 50);
  }
}

TEST_CASE("SMC_UEID", "[config]") {
  config c;
  CHECK(c.ueid == "SMC-PRELOAD-V1");
  CHECK(apply(c, "SMC_UEID", "site-a.1").empty());
  CHECK(c.ueid == "SITE-A.1");  // raised to upper case, as Linux stores it
  CHECK(apply(c, "SMC_UEID", std::string(32, 'X')).empty());
  CHECK(c.ueid == std::string(32, 'X'));
  CHECK(apply(c, "SMC_UEID", "SITE-B").empty());
  for (const char* bad : {"", "-SITE", ".SITE", "SITE B", "SITE_B", "SITE/B", "\xc3\xa9T\xc3\xa9",
                          "XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"}) {
    INFO(bad);
    const std::string w = apply(c, "SMC_UEID", bad);
    CHECK(contains(w, "SMC_UEID"));
    CHECK(contains(w, "using SITE-B"));
    CHECK(c.ueid == "SITE-B");
  }
}

TEST_CASE("SMC_LOG_FILE and SMC_STATS_FILE", "[config]") {
  config c;
  CHECK(apply(c, "SMC_LOG_FILE", "/tmp/smc.log").empty());
  CHECK(c.log_file == "/tmp/smc.log");
  CHECK(apply(c, "SMC_STATS_FILE", " /tmp/smc-%p.stats ").empty());
  CHECK(c.stats_file == "/tmp/smc-%p.stats");
  CHECK(apply(c, "SMC_LOG_FILE", "").empty());  // empty = back to stderr
  CHECK(c.log_file.empty());
  const std::string w = apply(c, "SMC_STATS_FILE", std::string("/tmp/a\0b", 8));
  CHECK(contains(w, "SMC_STATS_FILE"));
  CHECK(c.stats_file == "/tmp/smc-%p.stats");
}

TEST_CASE("apply rejects unknown keys", "[config]") {
  config c;
  CHECK(contains(apply(c, "SMC_NOPE", "1"), "unknown key 'SMC_NOPE'"));
  CHECK(contains(apply(c, "smc_enable", "1"), "unknown key"));
  CHECK_FALSE(c.enable);
}

TEST_CASE("warnings sanitise and truncate values", "[config]") {
  config c;
  const std::string w = apply(c, "SMC_TRANSPORT", std::string(200, 'x') + "\x1b[31m");
  CHECK(contains(w, std::string(64, 'x') + "..."));
  CHECK_FALSE(contains(w, "\x1b"));
  CHECK(w.size() < 200);
}

TEST_CASE("config file syntax", "[config][file]") {
  config c;
  const std::string text =
      "# a comment\n"
      "\n"
      "   \t\n"
      "   # indented comment\n"
      "SMC_ENABLE=1\n"
      "SMC_TRANSPORT = shm\r\n"  // CRLF
      "  SMC_RMB_SIZE   =   1M  \n"
      "SMC_LOG_LEVEL=debug # trailing comment\n"
      "SMC_LOG_FILE = \"/tmp/with space.log\"\n"
      "SMC_STATS_FILE='/tmp/s#%p'\n"
      "SMC_SPIN_US=\t100\n"
      "SMC_PEERS = 10.0.0.0/8, 192.168.1.5:6379\n"
      "SMC_PEERS = [fd00::/8]:80\n";  // repeated SMC_PEERS lines add up
  const auto w = parse_file_text(text, c);
  CHECK(w.empty());
  CHECK(c.enable);
  CHECK(c.transport == transport_mode::shm);
  CHECK(c.rmb_size == 1u << 20);
  CHECK(c.level == log_level::debug);
  CHECK(c.log_file == "/tmp/with space.log");
  CHECK(c.stats_file == "/tmp/s#%p");  // '#' inside a word is not a comment
  CHECK(c.spin_us == 100);
  REQUIRE(c.peers.size() == 3);
  CHECK(to_string(c.peers[0]) == "10.0.0.0/8");
  CHECK(to_string(c.peers[1]) == "192.168.1.5/32:6379");
  CHECK(to_string(c.peers[2]) == "[fd00::/8]:80");
}

TEST_CASE("config file problems give one warning each", "[config][file]") {
  config c;
  const std::string text =
      "SMC_ENABLE=1\n"
      "SMC_BOGUS=1\n"          // line 2: unknown key
      "just some words\n"      // line 3: no '='
      "SMC_SPIN_US=lots\n"     // line 4: bad value
      "SMC_CONFIG=/x\n"        // line 5: only from the environment
      "SMC_RMB_SIZE=64K\n"
      "SMC_PEERS=10.0.0.1, nonsense, 10.0.0.2\n";  // line 7: one bad entry
  const auto w = parse_file_text(text, c);
  REQUIRE(w.size() == 5);
  CHECK(contains(w[0], "line 2"));
  CHECK(contains(w[0], "unknown key 'SMC_BOGUS'"));
  CHECK(contains(w[1], "line 3"));
  CHECK(contains(w[2], "line 4"));
  CHECK(contains(w[2], "SMC_SPIN_US"));
  CHECK(contains(w[2], "'lots'"));
  CHECK(contains(w[2], "using 20"));
  CHECK(contains(w[3], "line 5"));
  CHECK(contains(w[3], "SMC_CONFIG"));
  CHECK(contains(w[4], "line 7"));
  CHECK(contains(w[4], "'nonsense'"));
  // Good lines around the bad ones still apply.
  CHECK(c.enable);
  CHECK(c.spin_us == 20);
  CHECK(c.rmb_size == 64 * 1024);
  CHECK(c.peers.size() == 2);
}

TEST_CASE("a garbage file cannot flood the log", "[config][file]") {
  config c;
  std::string text;
  for (int i = 0; i < 1000; ++i) {
    text += "garbage\n";
  }
  const auto w = parse_file_text(text, c);
  REQUIRE(w.size() == 33);
  CHECK(contains(w.back(), "968 further warnings suppressed"));
}

TEST_CASE("load: file, then environment overrides", "[config][load]") {
  temp_file f(
      "SMC_ENABLE = yes\n"
      "SMC_TRANSPORT = shm\n"
      "SMC_RMB_SIZE = 1M\n"
      "SMC_SPIN_US = 100\n"
      "SMC_LOG_LEVEL = info\n"
      "SMC_PEERS = 10.0.0.0/8\n");
  fake_env() = {
      {"SMC_CONFIG", f.path},
      {"SMC_TRANSPORT", "tcp"},       // good env value overrides the file
      {"SMC_SPIN_US", "bad"},         // bad env value keeps the file's value
      {"SMC_RMB_SIZE", "1K"},         // out of range: keeps the file's 1M
      {"SMC_PEERS", "192.168.0.0/16"},// replaces the file's list
      {"SMC_LOG_FILE", "/tmp/x.log"},
  };
  config c;
  c.spin_us = 7;  // load() starts from defaults, not from what was there
  const auto w = load(c, &fake_getenv);
  fake_env().clear();
  REQUIRE(w.size() == 2);
  CHECK(contains(w[0], "environment: SMC_RMB_SIZE"));
  CHECK(contains(w[0], "'1K'"));
  CHECK(contains(w[0], "using 1M"));
  CHECK(contains(w[1], "environment: SMC_SPIN_US"));
  CHECK(contains(w[1], "using 100"));
  CHECK(c.config_path == f.path);
  CHECK(c.enable);
  CHECK(c.transport == transport_mode::tcp);
  CHECK(c.rmb_size == 1u << 20);
  CHECK(c.spin_us == 100);
  CHECK(c.level == log_level::info);
  CHECK(c.log_file == "/tmp/x.log");
  REQUIRE(c.peers.size() == 1);
  CHECK(to_string(c.peers[0]) == "192.168.0.0/16");
}

TEST_CASE("load: file warnings name the file and line", "[config][load]") {
  temp_file f("SMC_ENABLE=1\nSMC_WHAT=2\n");
  fake_env() = {{"SMC_CONFIG", f.path}};
  config c;
  const auto w = load(c, &fake_getenv);
  fake_env().clear();
  REQUIRE(w.size() == 1);
  CHECK(contains(w[0], f.path + ": line 2: unknown key 'SMC_WHAT'"));
  CHECK(c.enable);
}

TEST_CASE("load: environment only", "[config][load]") {
  fake_env() = {{"SMC_CONFIG", ""}, {"SMC_ENABLE", "1"}, {"SMC_PEERS", "127.0.0.1"}};
  config c;
  const auto w = load(c, &fake_getenv);
  fake_env().clear();
  CHECK(w.empty());
  CHECK(c.config_path.empty());  // SMC_CONFIG="" reads no file
  CHECK(c.enable);
  CHECK(c.peers.size() == 1);
}

TEST_CASE("load: empty SMC_PEERS in the environment clears the file's list", "[config][load]") {
  temp_file f("SMC_PEERS=10.0.0.0/8\n");
  fake_env() = {{"SMC_CONFIG", f.path}, {"SMC_PEERS", ""}};
  config c;
  CHECK(load(c, &fake_getenv).empty());
  fake_env().clear();
  CHECK(c.peers.empty());
}

TEST_CASE("load: an explicitly named missing file warns once", "[config][load]") {
  fake_env() = {{"SMC_CONFIG", "/nonexistent/smc.conf"}, {"SMC_ENABLE", "1"}};
  config c;
  const auto w = load(c, &fake_getenv);
  fake_env().clear();
  REQUIRE(w.size() == 1);
  CHECK(contains(w[0], "/nonexistent/smc.conf"));
  CHECK(contains(w[0], "No such file"));
  CHECK(c.enable);  // the environment still applies
  CHECK(c.config_path.empty());
}

TEST_CASE("load: the missing default file is silent", "[config][load]") {
  struct stat st {};
  if (::stat("/etc/smc-preload.conf", &st) == 0) {
    WARN("/etc/smc-preload.conf exists on this host; skipping");
    return;
  }
  fake_env().clear();
  config c;
  CHECK(load(c, &fake_getenv).empty());
  CHECK(c.config_path.empty());
  CHECK_FALSE(c.enable);
}

TEST_CASE("load: directories, FIFOs and big files are refused", "[config][load]") {
  config c;
  SECTION("directory") {
    fake_env() = {{"SMC_CONFIG", "/tmp"}};
    const auto w = load(c, &fake_getenv);
    REQUIRE(w.size() == 1);
    CHECK(contains(w[0], "not a regular file"));
  }
  SECTION("FIFO does not block") {
    const std::string path = "/tmp/smc_config_test_fifo_" + std::to_string(::getpid());
    REQUIRE(::mkfifo(path.c_str(), 0600) == 0);
    fake_env() = {{"SMC_CONFIG", path}};
    const auto w = load(c, &fake_getenv);
    ::unlink(path.c_str());
    REQUIRE(w.size() == 1);
    CHECK(contains(w[0], "not a regular file"));
  }
  SECTION("over 64 KiB") {
    temp_file f("SMC_ENABLE=1\n" + std::string(64 * 1024, '#'));
    fake_env() = {{"SMC_CONFIG", f.path}};
    const auto w = load(c, &fake_getenv);
    REQUIRE(w.size() == 1);
    CHECK(contains(w[0], "larger than 64 KiB"));
    CHECK_FALSE(c.enable);
  }
  SECTION("exactly 64 KiB is fine") {
    std::string text = "SMC_ENABLE=1\n";
    text += std::string(64 * 1024 - text.size(), '#');
    temp_file f(text);
    fake_env() = {{"SMC_CONFIG", f.path}};
    CHECK(load(c, &fake_getenv).empty());
    CHECK(c.enable);
  }
  fake_env().clear();
}

TEST_CASE("load with the real environment", "[config][load]") {
  ::setenv("SMC_CONFIG", "", 1);
  ::setenv("SMC_SPIN_US", "33", 1);
  config c;
  const auto w = load(c);
  ::unsetenv("SMC_CONFIG");
  ::unsetenv("SMC_SPIN_US");
  CHECK(w.empty());
  CHECK(c.spin_us == 33);
}

TEST_CASE("SMC_PEERS: every accepted form", "[config][peers]") {
  CHECK(one_rule("10.0.0.0/8") == "10.0.0.0/8");
  CHECK(one_rule("10.1.2.3") == "10.1.2.3/32");
  CHECK(one_rule("10.1.2.3:6379") == "10.1.2.3/32:6379");
  CHECK(one_rule("10.0.0.0/8:80") == "10.0.0.0/8:80");
  CHECK(one_rule("0.0.0.0/0") == "0.0.0.0/0");
  CHECK(one_rule("::1") == "::1/128");
  CHECK(one_rule("fd00::/8") == "fd00::/8");
  CHECK(one_rule("[fd00::1]:80") == "[fd00::1/128]:80");
  CHECK(one_rule("[fd00::/8]:80") == "[fd00::/8]:80");
  CHECK(one_rule("[fd00::1]") == "fd00::1/128");
  CHECK(one_rule("[fd00::/16]") == "fd00::/16");
  CHECK(one_rule("::/0") == "::/0");
  CHECK(one_rule("10.0.0.1:65535") == "10.0.0.1/32:65535");
  CHECK(one_rule("10.0.0.1:1") == "10.0.0.1/32:1");
}

TEST_CASE("SMC_PEERS: host bits beyond the prefix are masked off", "[config][peers]") {
  CHECK(one_rule("10.1.2.3/8") == "10.0.0.0/8");
  CHECK(one_rule("10.1.2.3/20") == "10.1.0.0/20");
  CHECK(one_rule("10.255.255.255/9") == "10.128.0.0/9");
  CHECK(one_rule("255.255.255.255/0") == "0.0.0.0/0");
  CHECK(one_rule("fd12:3456::1/8") == "fd00::/8");
  CHECK(one_rule("fd12:3456::1/17") == "fd12::/17");
  CHECK(one_rule("fd12:ffff::1/17") == "fd12:8000::/17");
  CHECK(one_rule("ffff:ffff::/0") == "::/0");
}

TEST_CASE("SMC_PEERS: IPv4-mapped IPv6 rules become IPv4 rules", "[config][peers]") {
  const auto r = rules_of("::ffff:10.1.2.3 [::ffff:10.0.0.0/104]:80");
  REQUIRE(r.size() == 2);
  CHECK(r[0].family == AF_INET);
  CHECK(to_string(r[0]) == "10.1.2.3/32");
  CHECK(to_string(r[1]) == "10.0.0.0/8:80");
  // Below /96 it is a genuine IPv6 rule.
  CHECK(one_rule("::ffff:0:0/80") == "::/80");
}

TEST_CASE("SMC_PEERS: separators", "[config][peers]") {
  CHECK(rules_of("10.0.0.1,10.0.0.2").size() == 2);
  CHECK(rules_of("10.0.0.1 10.0.0.2").size() == 2);
  CHECK(rules_of("  10.0.0.1 ,\t10.0.0.2 ,, ,\n[::1]:5 ").size() == 3);
  CHECK(rules_of("").empty());
  CHECK(rules_of(" , ,").empty());
}

TEST_CASE("SMC_PEERS: bad entries are skipped, good ones kept", "[config][peers]") {
  const char* bad[] = {
      "10.0.0",           // incomplete
      "10.0.0.256",       // octet range
      "010.0.0.1",        // leading zero (octal ambiguity)
      "host.example",     // no DNS lookups at start-up
      "10.0.0.0/33",      // v4 prefix range
      "10.0.0.0/-1",
      "10.0.0.0/",        // empty prefix
      "10.0.0.0/8/8",
      "10.0.0.1:0",       // port range
      "10.0.0.1:65536",
      "10.0.0.1:",
      "10.0.0.1:http",
      "fd00::/129",       // v6 prefix range
      "fd00::1:::",       // not an address
      "[fd00::1",         // unclosed bracket
      "[fd00::1]80",      // missing ':' before port
      "[fd00::1]:",
      "[fd00::1]:0",
      "[10.0.0.1]:80",    // brackets are for IPv6
      "fe80::1%eth0",     // zone ids are not supported
      "/8",
      ":80",
      "*",
  };
  for (const char* entry : bad) {
    INFO(entry);
    std::vector<peer_rule> r;
    const auto w = parse_peers(std::string("10.9.9.9, ") + entry + ", [fd00::9]:9", r);
    REQUIRE(w.size() == 1);
    CHECK(contains(w[0], "SMC_PEERS"));
    CHECK(contains(w[0], std::string("'") + entry + "'"));
    REQUIRE(r.size() == 2);
    CHECK(to_string(r[0]) == "10.9.9.9/32");
    CHECK(to_string(r[1]) == "[fd00::9/128]:9");
  }
}

TEST_CASE("SMC_PEERS through apply replaces and reports every bad entry", "[config][peers]") {
  config c;
  CHECK(apply(c, "SMC_PEERS", "10.0.0.1").empty());
  const std::string w = apply(c, "SMC_PEERS", "bad1 10.0.0.2 bad2");
  CHECK(contains(w, "'bad1'"));
  CHECK(contains(w, "'bad2'"));
  REQUIRE(c.peers.size() == 1);
  CHECK(to_string(c.peers[0]) == "10.0.0.2/32");
}

TEST_CASE("peers_match: IPv4 prefixes and boundaries", "[config][peers]") {
  const auto r = rules_of("10.1.0.0/16");
  CHECK(match(r, v4("10.1.0.0", 1)));
  CHECK(match(r, v4("10.1.255.255", 1)));
  CHECK_FALSE(match(r, v4("10.0.255.255", 1)));
  CHECK_FALSE(match(r, v4("10.2.0.0", 1)));

  const auto r9 = rules_of("10.128.0.0/9");  // boundary inside a byte
  CHECK(match(r9, v4("10.128.0.0", 1)));
  CHECK(match(r9, v4("10.255.255.255", 1)));
  CHECK_FALSE(match(r9, v4("10.127.255.255", 1)));

  const auto host = rules_of("192.168.1.5");
  CHECK(match(host, v4("192.168.1.5", 80)));
  CHECK_FALSE(match(host, v4("192.168.1.4", 80)));
  CHECK_FALSE(match(host, v4("192.168.1.6", 80)));

  const auto r31 = rules_of("192.168.1.4/31");
  CHECK(match(r31, v4("192.168.1.4", 1)));
  CHECK(match(r31, v4("192.168.1.5", 1)));
  CHECK_FALSE(match(r31, v4("192.168.1.6", 1)));
}

TEST_CASE("peers_match: /0 matches everything of its kind", "[config][peers]") {
  const auto any4 = rules_of("0.0.0.0/0");
  CHECK(match(any4, v4("1.2.3.4", 1)));
  CHECK(match(any4, v4("255.255.255.255", 65535)));
  CHECK(match(any4, v6("::ffff:1.2.3.4", 1)));
  CHECK_FALSE(match(any4, v6("fd00::1", 1)));
  CHECK_FALSE(match(any4, v6("::1", 1)));

  // IPv4 peers are compared as ::ffff:a.b.c.d, so ::/0 covers them too.
  const auto any6 = rules_of("::/0");
  CHECK(match(any6, v6("fd00::1", 1)));
  CHECK(match(any6, v6("::1", 1)));
  CHECK(match(any6, v4("1.2.3.4", 1)));

  CHECK_FALSE(match({}, v4("1.2.3.4", 1)));  // no rules: nothing matches
}

TEST_CASE("peers_match: ports", "[config][peers]") {
  const auto r = rules_of("10.0.0.0/8:6379 [fd00::/8]:80");
  CHECK(match(r, v4("10.1.1.1", 6379)));
  CHECK_FALSE(match(r, v4("10.1.1.1", 6380)));
  CHECK_FALSE(match(r, v4("10.1.1.1", 80)));
  CHECK(match(r, v6("fd00::5", 80)));
  CHECK_FALSE(match(r, v6("fd00::5", 6379)));
  CHECK_FALSE(match(r, v6("fe00::5", 80)));

  // First rule with a port, second without: any port on 10.0.0.2.
  const auto mixed = rules_of("10.0.0.1:80, 10.0.0.2");
  CHECK(match(mixed, v4("10.0.0.1", 80)));
  CHECK_FALSE(match(mixed, v4("10.0.0.1", 81)));
  CHECK(match(mixed, v4("10.0.0.2", 81)));
}

TEST_CASE("peers_match: IPv6 prefixes", "[config][peers]") {
  const auto r = rules_of("fd12:3400::/24");
  CHECK(match(r, v6("fd12:3400::", 1)));
  CHECK(match(r, v6("fd12:34ff:ffff::1", 1)));
  CHECK_FALSE(match(r, v6("fd12:3500::1", 1)));
  CHECK_FALSE(match(r, v6("fd12:33ff:ffff::1", 1)));
  CHECK_FALSE(match(r, v4("10.0.0.1", 1)));

  const auto lo = rules_of("::1");
  CHECK(match(lo, v6("::1", 1)));
  CHECK_FALSE(match(lo, v6("::2", 1)));
  CHECK_FALSE(match(lo, v4("127.0.0.1", 1)));

  const auto r127 = rules_of("fd00::/127");
  CHECK(match(r127, v6("fd00::1", 1)));
  CHECK_FALSE(match(r127, v6("fd00::2", 1)));
}

TEST_CASE("peers_match: IPv4 rules match IPv4-mapped IPv6 peers", "[config][peers]") {
  const auto r = rules_of("10.0.0.0/8:80");
  CHECK(match(r, v6("::ffff:10.1.2.3", 80)));
  CHECK_FALSE(match(r, v6("::ffff:11.1.2.3", 80)));
  CHECK_FALSE(match(r, v6("::ffff:10.1.2.3", 81)));
  // Not mapped: the IPv4-compatible form and NAT64 do not count.
  CHECK_FALSE(match(r, v6("::10.1.2.3", 80)));
  CHECK_FALSE(match(r, v6("64:ff9b::10.1.2.3", 80)));

  // A rule written in mapped form matches a plain AF_INET peer.
  const auto m = rules_of("::ffff:192.168.0.0/112");
  CHECK(match(m, v4("192.168.7.7", 1)));
  CHECK(match(m, v6("::ffff:192.168.7.7", 1)));
  CHECK_FALSE(match(m, v4("192.169.7.7", 1)));
}

TEST_CASE("peers_match: bad sockaddrs are rejected", "[config][peers]") {
  const auto r = rules_of("0.0.0.0/0 ::/0");
  const auto a4 = v4("10.0.0.1", 80);
  const auto a6 = v6("fd00::1", 80);
  const auto* s4 = reinterpret_cast<const sockaddr*>(&a4);
  const auto* s6 = reinterpret_cast<const sockaddr*>(&a6);
  CHECK(peers_match(r, s4, sizeof(a4)));
  CHECK_FALSE(peers_match(r, s4, sizeof(a4) - 1));
  CHECK_FALSE(peers_match(r, s4, 0));
  CHECK_FALSE(peers_match(r, s4, 1));
  CHECK(peers_match(r, s6, sizeof(a6)));
  CHECK(peers_match(r, s6, 24));  // RFC 2133 size, no scope id: the kernel accepts it
  CHECK_FALSE(peers_match(r, s6, 23));
  CHECK_FALSE(peers_match(r, s6, sizeof(sockaddr_in)));
  CHECK_FALSE(peers_match(r, nullptr, sizeof(a6)));

  sockaddr_storage un{};
  un.ss_family = AF_UNIX;
  CHECK_FALSE(peers_match(r, reinterpret_cast<const sockaddr*>(&un), sizeof(un)));

  // An unaligned buffer is fine (the library memcpy's it).
  alignas(8) unsigned char buf[sizeof(a6) + 1];
  std::memcpy(buf + 1, &a6, sizeof(a6));
  CHECK(peers_match(r, reinterpret_cast<const sockaddr*>(buf + 1), sizeof(a6)));
}

TEST_CASE("the shipped example config parses cleanly", "[config][file]") {
  // Found next to this source file, so the test runs from any build dir.
  std::string path = __FILE__;
  path = path.substr(0, path.rfind("test/unit/")) + "etc/smc-preload.conf.example";
  std::ifstream in(path);
  if (!in) {
    WARN("example config not found at " << path << "; skipping");
    return;
  }
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());

  // As shipped, everything is commented out: the defaults.
  config c;
  CHECK(parse_file_text(text, c).empty());
  CHECK_FALSE(c.enable);
  CHECK(c.peers.empty());

  // With every "#SMC_" example line enabled, still no warnings; the
  // defaults shown in the file are the real defaults.
  std::string enabled;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    nl = nl == std::string::npos ? text.size() : nl + 1;
    std::string line = text.substr(pos, nl - pos);
    if (line.rfind("#SMC_", 0) == 0) {
      line.erase(0, 1);
    }
    enabled += line;
    pos = nl;
  }
  config d;
  const auto w = parse_file_text(enabled, d);
  CHECK(w.empty());
  const config defaults;
  CHECK(d.enable == defaults.enable);
  CHECK(d.transport == defaults.transport);
  CHECK(d.rmb_size == defaults.rmb_size);
  CHECK(d.level == defaults.level);
  CHECK(d.spin_us == defaults.spin_us);
  CHECK(d.log_file == "/var/tmp/smc-preload.log");
  CHECK(d.stats_file == "/var/tmp/smc-stats-%p.txt");
  CHECK(d.peers.size() == 3);
}
