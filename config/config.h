// Configuration: environment variables override the config file
// (SMC_CONFIG, default /etc/smc-preload.conf); the result is one immutable
// snapshot read once at start-up. Bad values never abort: each produces one
// warning (returned to the caller, who logs it) and the documented default.
#pragma once

#include <cstdint>
#include <netinet/in.h>
#include <string>
#include <vector>

namespace smc::config {

enum class transport_mode { auto_, rdma, shm, tcp };
enum class log_level { trace, debug, info, warn, error, off };

/// One SMC_PEERS entry: CIDR with optional port (0 = any port).
/// Accepted forms: 10.0.0.0/8, 10.1.2.3 (= /32), 10.1.2.3:6379, 10.0.0.0/8:80,
/// ::1, fd00::/8, [fd00::1]:80, [fd00::/8]:80. An IPv4 rule also matches the
/// IPv4-mapped IPv6 form (::ffff:a.b.c.d) of a matching address.
struct peer_rule {
  int family = AF_INET;         // AF_INET or AF_INET6
  uint8_t addr[16] = {};        // network byte order; first 4 bytes for AF_INET
  uint8_t prefix_len = 32;
  uint16_t port = 0;            // host order, 0 = any
};

struct config {
  bool enable = false;                              // SMC_ENABLE (1/0, true/false, yes/no, on/off)
  std::vector<peer_rule> peers;                     // SMC_PEERS (comma or whitespace separated)
  transport_mode transport = transport_mode::auto_; // SMC_TRANSPORT auto|rdma|shm|tcp
  uint32_t rmb_size = 256 * 1024;                   // SMC_RMB_SIZE bytes; K/M suffixes; 16K..512M, rounded up to 2^n
  log_level level = log_level::off;                 // SMC_LOG_LEVEL trace|debug|info|warn|error|off
  std::string log_file;                             // SMC_LOG_FILE (empty = stderr when logging is on)
  std::string stats_file;                           // SMC_STATS_FILE (%p = pid), empty = none
  std::vector<std::string> devices;                 // SMC_DEVICES: RDMA devices to use (empty = all)
  uint32_t spin_us = 20;                            // SMC_SPIN_US: busy-poll before sleeping (0..10000)
  std::string ueid = "SMC-PRELOAD-V1";              // SMC_UEID: SMC v2 user-defined EID (upper case)
  std::string config_path;                          // config file actually read (empty = none)
};

/// Reads the file named by SMC_CONFIG (default /etc/smc-preload.conf; missing
/// default file is not an error, a missing named file is a warning), then the
/// environment, into `out`. Never throws. Returns warnings, one per bad value.
/// `getenv_fn` lets tests supply an environment.
using getenv_fn = const char* (*)(const char*);
std::vector<std::string> load(config& out, getenv_fn env = nullptr);

/// Parses config-file text (lines `KEY = value` or `KEY=value`, `#` comments,
/// keys are the SMC_* names) into `out`; returns warnings.
/// A `#` after whitespace starts a trailing comment; one pair of surrounding
/// quotes is stripped; repeated SMC_PEERS lines add up (in the environment,
/// SMC_PEERS replaces the list).
std::vector<std::string> parse_file_text(const std::string& text, config& out);

/// Applies one key/value (an SMC_* name) to `out`; returns a warning or "".
std::string apply(config& out, const std::string& key, const std::string& value);

/// Parses an SMC_PEERS list. Bad entries are skipped with one warning each.
std::vector<std::string> parse_peers(const std::string& text, std::vector<peer_rule>& out);

/// True when the address (sockaddr_in or sockaddr_in6) matches a rule.
bool peers_match(const std::vector<peer_rule>& rules, const struct sockaddr* addr, unsigned addrlen);

const char* to_string(transport_mode m);
const char* to_string(log_level l);
/// Canonical text of a rule, e.g. "10.0.0.0/8:80", "[fd00::/8]:80", "::1/128".
std::string to_string(const peer_rule& r);

}  // namespace smc::config
