// Configuration: parses the SMC_* settings from the config file and the
// environment into one snapshot. This code runs inside other people's
// processes, possibly before main(), so it never throws, never prints and
// never exits: every problem becomes a returned warning plus a default.
#include "config/config.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>

namespace smc::config {
namespace {

constexpr const char* default_config_path = "/etc/smc-preload.conf";
// A config file is a few lines; refusing anything bigger bounds what a stray
// SMC_CONFIG (say, pointing at a log file) can make us allocate and parse.
constexpr size_t max_file_size = 64 * 1024;
// A garbage file must not flood the application's log.
constexpr size_t max_file_warnings = 32;
// Values echoed in warnings are cut to this length.
constexpr size_t max_shown = 64;

constexpr uint64_t kib = 1024;
constexpr uint64_t mib = 1024 * 1024;
constexpr uint64_t min_rmb = 16 * kib;
constexpr uint64_t max_rmb = 512 * mib;
constexpr uint64_t max_spin_us = 10000;

// Every key read from the environment, in the order they are applied.
constexpr const char* env_keys[] = {
    "SMC_ENABLE",    "SMC_PEERS",    "SMC_TRANSPORT",  "SMC_RMB_SIZE",
    "SMC_LOG_LEVEL", "SMC_LOG_FILE", "SMC_STATS_FILE", "SMC_SPIN_US",
    "SMC_DEVICES",   "SMC_UEID",
};

// Our own character classes: <cctype> depends on the locale, and the
// application may have changed it.
bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

char to_lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_space(s.front())) {
    s.remove_prefix(1);
  }
  while (!s.empty() && is_space(s.back())) {
    s.remove_suffix(1);
  }
  return s;
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) {
    return false;
  }
  for (size_t i = 0; i < a.size(); ++i) {
    if (to_lower(a[i]) != to_lower(b[i])) {
      return false;
    }
  }
  return true;
}

// A value as it appears in a warning: quoted, truncated, and with control
// bytes replaced, because it may come from an arbitrary file.
std::string shown(std::string_view v) {
  std::string s = "'";
  for (size_t i = 0; i < v.size() && i < max_shown; ++i) {
    const auto c = static_cast<unsigned char>(v[i]);
    s += (c < 0x20 || c == 0x7f) ? '?' : static_cast<char>(c);
  }
  if (v.size() > max_shown) {
    s += "...";
  }
  s += "'";
  return s;
}

// Plain decimal digits only (no sign, no spaces), value <= max.
bool parse_uint(std::string_view s, uint64_t max, uint64_t& out) {
  if (s.empty()) {
    return false;
  }
  uint64_t v = 0;
  for (char c : s) {
    if (!is_digit(c)) {
      return false;
    }
    v = v * 10 + static_cast<uint64_t>(c - '0');
    if (v > max) {  // checked per digit, so v * 10 cannot overflow
      return false;
    }
  }
  out = v;
  return true;
}

bool parse_bool(std::string_view s, bool& out) {
  for (const char* t : {"1", "true", "yes", "on"}) {
    if (iequals(s, t)) {
      out = true;
      return true;
    }
  }
  for (const char* f : {"0", "false", "no", "off"}) {
    if (iequals(s, f)) {
      out = false;
      return true;
    }
  }
  return false;
}

bool parse_transport(std::string_view s, transport_mode& out) {
  for (auto m : {transport_mode::auto_, transport_mode::rdma, transport_mode::shm,
                 transport_mode::tcp}) {
    if (iequals(s, to_string(m))) {
      out = m;
      return true;
    }
  }
  return false;
}

bool parse_log_level(std::string_view s, log_level& out) {
  for (auto l : {log_level::trace, log_level::debug, log_level::info, log_level::warn,
                 log_level::error, log_level::off}) {
    if (iequals(s, to_string(l))) {
      out = l;
      return true;
    }
  }
  return false;
}

// "<digits>[ ]*[K|KiB|M|MiB]" (suffix case-insensitive, binary units), in
// min_rmb..max_rmb, rounded up to a power of two.
bool parse_rmb_size(std::string_view s, uint32_t& out) {
  size_t n = 0;
  while (n < s.size() && is_digit(s[n])) {
    ++n;
  }
  uint64_t v = 0;
  if (!parse_uint(s.substr(0, n), max_rmb, v)) {
    return false;
  }
  const std::string_view suffix = trim(s.substr(n));
  uint64_t unit = 1;
  if (suffix.empty()) {
    unit = 1;
  } else if (iequals(suffix, "k") || iequals(suffix, "kib")) {
    unit = kib;
  } else if (iequals(suffix, "m") || iequals(suffix, "mib")) {
    unit = mib;
  } else {
    return false;
  }
  v *= unit;  // v <= 512M and unit <= 1M: no overflow in 64 bits
  if (v < min_rmb || v > max_rmb) {
    return false;
  }
  // max_rmb is itself a power of two, so rounding up stays in range.
  out = std::bit_ceil(static_cast<uint32_t>(v));
  return true;
}

std::string size_text(uint64_t bytes) {
  if (bytes != 0 && bytes % mib == 0) {
    return std::to_string(bytes / mib) + "M";
  }
  if (bytes != 0 && bytes % kib == 0) {
    return std::to_string(bytes / kib) + "K";
  }
  return std::to_string(bytes);
}

std::string bad_value(std::string_view key, std::string_view value, const char* expected,
                      const std::string& using_text) {
  std::string w(key);
  w += ": bad value ";
  w += shown(value);
  w += " (expected ";
  w += expected;
  w += "); using ";
  w += using_text;
  return w;
}

// Sets the first `bits` bits of a 16-byte address, clears the rest.
void mask_to_prefix(uint8_t* addr, size_t size, unsigned bits) {
  for (size_t i = 0; i < size; ++i) {
    const unsigned lo = static_cast<unsigned>(i) * 8;
    if (bits >= lo + 8) {
      continue;
    }
    addr[i] = (bits <= lo) ? 0 : static_cast<uint8_t>(addr[i] & (0xff00u >> (bits - lo)));
  }
}

bool prefix_equal(const uint8_t* a, const uint8_t* b, unsigned bits) {
  const unsigned full = bits / 8;
  if (std::memcmp(a, b, full) != 0) {
    return false;
  }
  const unsigned rest = bits % 8;
  if (rest == 0) {
    return true;
  }
  const auto m = static_cast<uint8_t>(0xff00u >> rest);
  return (a[full] & m) == (b[full] & m);
}

constexpr uint8_t v4_mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

// inet_pton needs a NUL-terminated string; addresses are short, so anything
// longer than the buffer is not an address.
bool parse_addr(std::string_view s, int family, uint8_t* out) {
  char buf[64];
  if (s.empty() || s.size() >= sizeof(buf)) {
    return false;
  }
  std::memcpy(buf, s.data(), s.size());
  buf[s.size()] = '\0';
  return ::inet_pton(family, buf, out) == 1;
}

// One SMC_PEERS entry; returns "" or why it was rejected.
std::string parse_peer(std::string_view e, peer_rule& out) {
  peer_rule r;
  std::string_view host;  // address with optional /prefix
  std::string_view port;
  bool has_port = false;
  if (e.front() == '[') {
    const size_t close = e.find(']');
    if (close == std::string_view::npos) {
      return "missing ']'";
    }
    host = e.substr(1, close - 1);
    const std::string_view rest = e.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') {
        return "expected ':PORT' after ']'";
      }
      port = rest.substr(1);
      has_port = true;
    }
    r.family = AF_INET6;
  } else {
    const size_t colons = static_cast<size_t>(std::count(e.begin(), e.end(), ':'));
    if (colons == 0) {
      host = e;
      r.family = AF_INET;
    } else if (colons == 1) {
      // Exactly one colon is IPv4 "addr[/len]:port"; every IPv6 address has
      // at least two, which is also why IPv6 needs brackets for a port.
      const size_t c = e.find(':');
      host = e.substr(0, c);
      port = e.substr(c + 1);
      has_port = true;
      r.family = AF_INET;
    } else {
      host = e;
      r.family = AF_INET6;
    }
  }

  std::string_view addr = host;
  std::string_view len;
  bool has_len = false;
  if (const size_t slash = host.find('/'); slash != std::string_view::npos) {
    addr = host.substr(0, slash);
    len = host.substr(slash + 1);
    has_len = true;
  }
  if (!parse_addr(addr, r.family, r.addr)) {
    return r.family == AF_INET ? "not an IPv4 address (IPv6 needs '[addr]:port' for a port)"
                               : "not an IPv6 address";
  }
  const unsigned max_len = r.family == AF_INET ? 32 : 128;
  uint64_t v = max_len;
  if (has_len && !parse_uint(len, max_len, v)) {
    return r.family == AF_INET ? "prefix length must be 0..32" : "prefix length must be 0..128";
  }
  r.prefix_len = static_cast<uint8_t>(v);
  if (has_port) {
    uint64_t p = 0;
    if (!parse_uint(port, 65535, p) || p == 0) {
      return "port must be 1..65535";
    }
    r.port = static_cast<uint16_t>(p);
  }
  // An IPv6 rule inside ::ffff:0:0/96 is an IPv4 rule in disguise; store it
  // as one so both spellings print and match identically.
  if (r.family == AF_INET6 && r.prefix_len >= 96 &&
      std::memcmp(r.addr, v4_mapped_prefix, sizeof(v4_mapped_prefix)) == 0) {
    uint8_t v4[4];
    std::memcpy(v4, r.addr + 12, 4);
    std::memset(r.addr, 0, sizeof(r.addr));
    std::memcpy(r.addr, v4, 4);
    r.family = AF_INET;
    r.prefix_len = static_cast<uint8_t>(r.prefix_len - 96);
  }
  mask_to_prefix(r.addr, r.family == AF_INET ? 4 : 16, r.prefix_len);
  out = r;
  return "";
}

// Parses `text` and adds the good entries to `out`; returns how many entries
// (good or bad) there were.
size_t parse_peers_into(std::string_view text, std::vector<peer_rule>& out,
                        std::vector<std::string>& warnings) {
  size_t entries = 0;
  size_t i = 0;
  while (i < text.size()) {
    if (text[i] == ',' || is_space(text[i])) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < text.size() && text[j] != ',' && !is_space(text[j])) {
      ++j;
    }
    const std::string_view entry = text.substr(i, j - i);
    i = j;
    ++entries;
    peer_rule r;
    if (const std::string why = parse_peer(entry, r); !why.empty()) {
      warnings.push_back("SMC_PEERS: bad entry " + shown(entry) + " skipped (" + why + ")");
      continue;
    }
    out.push_back(r);
  }
  return entries;
}

bool is_known_key(std::string_view key) {
  for (const char* k : env_keys) {
    if (key == k) {
      return true;
    }
  }
  return false;
}

// Applies one known key. For SMC_PEERS, `append_peers` adds to the current
// list (repeated lines in the file) instead of replacing it (environment).
void apply_key(config& out, std::string_view key, std::string_view raw, bool append_peers,
               std::vector<std::string>& warnings) {
  const std::string_view value = trim(raw);
  if (key == "SMC_ENABLE") {
    if (!parse_bool(value, out.enable)) {
      warnings.push_back(bad_value(key, value, "1/0, true/false, yes/no, on/off",
                                   out.enable ? "1" : "0"));
    }
  } else if (key == "SMC_PEERS") {
    std::vector<peer_rule> rules;
    if (append_peers) {
      rules = out.peers;
    }
    parse_peers_into(value, rules, warnings);
    out.peers = std::move(rules);
  } else if (key == "SMC_TRANSPORT") {
    if (!parse_transport(value, out.transport)) {
      warnings.push_back(bad_value(key, value, "auto|rdma|shm|tcp", to_string(out.transport)));
    }
  } else if (key == "SMC_RMB_SIZE") {
    if (!parse_rmb_size(value, out.rmb_size)) {
      warnings.push_back(bad_value(key, value, "bytes with optional K/M/KiB/MiB suffix, 16K..512M",
                                   size_text(out.rmb_size)));
    }
  } else if (key == "SMC_LOG_LEVEL") {
    if (!parse_log_level(value, out.level)) {
      warnings.push_back(
          bad_value(key, value, "trace|debug|info|warn|error|off", to_string(out.level)));
    }
  } else if (key == "SMC_LOG_FILE" || key == "SMC_STATS_FILE") {
    std::string& field = key == "SMC_LOG_FILE" ? out.log_file : out.stats_file;
    // A NUL would silently cut the path short at open() time.
    if (value.find('\0') != std::string_view::npos) {
      warnings.push_back(bad_value(key, value, "a path without NUL bytes",
                                   field.empty() ? "none" : shown(field)));
    } else {
      field.assign(value);
    }
  } else if (key == "SMC_DEVICES") {
    // RDMA device names (ibv_devices): letters, digits, '_', '-', '.'.
    std::vector<std::string> names;
    bool ok = true;
    size_t i = 0;
    while (i < value.size()) {
      while (i < value.size() && (value[i] == ',' || is_space(value[i]))) {
        ++i;
      }
      size_t j = i;
      while (j < value.size() && value[j] != ',' && !is_space(value[j])) {
        char c = value[j];
        ok = ok && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '-' || c == '.');
        ++j;
      }
      if (j > i) {
        ok = ok && j - i <= 64;
        names.emplace_back(value.substr(i, j - i));
      }
      i = j;
    }
    if (ok) {
      out.devices = std::move(names);
    } else {
      warnings.push_back(bad_value(key, value, "RDMA device names, comma separated",
                                   out.devices.empty() ? "all devices" : "unchanged"));
    }
  } else if (key == "SMC_UEID") {
    // As Linux checks a UEID: 1..32 characters, upper-case letters, digits,
    // '.' and '-', starting with a letter or digit. Lower case is raised.
    std::string u(value);
    bool ok = !u.empty() && u.size() <= 32;
    for (size_t i = 0; ok && i < u.size(); ++i) {
      char& c = u[i];
      if (c >= 'a' && c <= 'z') {
        c = static_cast<char>(c - 'a' + 'A');
      }
      const bool alnum = (c >= 'A' && c <= 'Z') || is_digit(c);
      ok = alnum || (i > 0 && (c == '.' || c == '-'));
    }
    if (ok) {
      out.ueid = std::move(u);
    } else {
      warnings.push_back(bad_value(key, value,
                                   "1..32 letters, digits, '.' or '-', starting with a letter or digit",
                                   out.ueid));
    }
  } else if (key == "SMC_SPIN_US") {
    uint64_t v = 0;
    if (parse_uint(value, max_spin_us, v)) {
      out.spin_us = static_cast<uint32_t>(v);
    } else {
      warnings.push_back(
          bad_value(key, value, "0..10000 microseconds", std::to_string(out.spin_us)));
    }
  }
}

// Removes an unquoted trailing "# comment" (a '#' preceded by whitespace;
// a '#' inside a word, as in a path, is kept), then one pair of matching
// quotes, as people paste values from shell scripts.
std::string_view clean_file_value(std::string_view v) {
  for (size_t i = 1; i < v.size(); ++i) {
    if (v[i] == '#' && is_space(v[i - 1])) {
      v = v.substr(0, i);
      break;
    }
  }
  v = trim(v);
  if (v.size() >= 2 && (v.front() == '"' || v.front() == '\'') && v.back() == v.front()) {
    v = v.substr(1, v.size() - 2);
  }
  return v;
}

void parse_text_into(std::string_view text, config& out, std::vector<std::string>& warnings) {
  std::vector<std::string> all;
  size_t line_no = 0;
  while (!text.empty()) {
    ++line_no;
    const size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
    line = trim(line);
    if (line.empty() || line.front() == '#') {
      continue;
    }
    const std::string where = "line " + std::to_string(line_no) + ": ";
    const size_t eq = line.find('=');
    if (eq == std::string_view::npos) {
      all.push_back(where + "expected KEY = value, got " + shown(line) + "; ignored");
      continue;
    }
    const std::string_view key = trim(line.substr(0, eq));
    const std::string_view value = clean_file_value(line.substr(eq + 1));
    if (key == "SMC_CONFIG") {
      all.push_back(where + "SMC_CONFIG is read only from the environment; ignored");
      continue;
    }
    if (!is_known_key(key)) {
      all.push_back(where + "unknown key " + shown(key) + " ignored");
      continue;
    }
    std::vector<std::string> w;
    apply_key(out, key, value, /*append_peers=*/true, w);
    for (auto& s : w) {
      all.push_back(where + s);
    }
  }
  for (size_t i = 0; i < all.size() && i < max_file_warnings; ++i) {
    warnings.push_back(std::move(all[i]));
  }
  if (all.size() > max_file_warnings) {
    warnings.push_back(std::to_string(all.size() - max_file_warnings) +
                       " further warnings suppressed");
  }
}

std::string errno_text(int err) {
  char buf[128];
  // GNU strerror_r (g++ defines _GNU_SOURCE): thread-safe, returns the text.
  return ::strerror_r(err, buf, sizeof(buf));
}

// Reads a small regular file with plain POSIX calls (no iostreams, no
// locale, no exceptions from the library at process start). Returns "" on
// success, else the reason; sets `missing` when the file does not exist.
std::string read_small_file(const std::string& path, std::string& text, bool& missing) {
  missing = false;
  // O_NONBLOCK: opening a FIFO for reading would otherwise block the host
  // program's start-up until a writer appears.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) {
    const int err = errno;
    missing = err == ENOENT || err == ENOTDIR;
    return errno_text(err);
  }
  std::string why;
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    why = errno_text(errno);
  } else if (!S_ISREG(st.st_mode)) {
    why = "not a regular file";
  } else if (static_cast<uint64_t>(st.st_size) > max_file_size) {
    why = "larger than 64 KiB";
  } else {
    // Read one byte beyond the limit to notice a file that grew after fstat.
    text.resize(max_file_size + 1);
    size_t got = 0;
    while (got < text.size()) {
      const ssize_t n = ::read(fd, text.data() + got, text.size() - got);
      if (n < 0) {
        if (errno == EINTR) {
          continue;
        }
        why = errno_text(errno);
        break;
      }
      if (n == 0) {
        break;
      }
      got += static_cast<size_t>(n);
    }
    if (why.empty() && got > max_file_size) {
      why = "larger than 64 KiB";
    }
    text.resize(why.empty() ? got : 0);
  }
  ::close(fd);
  return why;
}

const char* default_getenv(const char* name) {
  // secure_getenv: in a set-user-ID program the environment belongs to a less
  // privileged user, who must not pick the config file we read.
  return ::secure_getenv(name);
}

}  // namespace

std::vector<std::string> load(config& out, getenv_fn env) {
  std::vector<std::string> warnings;
  try {
    if (env == nullptr) {
      env = &default_getenv;
    }
    out = config{};
    const char* named = env("SMC_CONFIG");
    // SMC_CONFIG set but empty means "no config file at all".
    const std::string path = named != nullptr ? named : default_config_path;
    if (!path.empty()) {
      std::string text;
      bool missing = false;
      const std::string why = read_small_file(path, text, missing);
      if (why.empty()) {
        out.config_path = path;
        std::vector<std::string> w;
        parse_text_into(text, out, w);
        for (auto& s : w) {
          warnings.push_back(path + ": " + s);
        }
      } else if (named != nullptr || !missing) {
        // Only the absent default file is normal (most hosts have none).
        warnings.push_back("config file " + shown(path) + " not read: " + why +
                           "; using defaults and environment");
      }
    }
    for (const char* key : env_keys) {
      if (const char* v = env(key); v != nullptr) {
        std::vector<std::string> w;
        apply_key(out, key, v, /*append_peers=*/false, w);
        for (auto& s : w) {
          warnings.push_back("environment: " + s);
        }
      }
    }
  } catch (...) {
    // Out of memory at start-up: offload off is the safe snapshot.
    out.enable = false;
    try {
      warnings.push_back("configuration not loaded (internal error); SMC disabled");
    } catch (...) {
    }
  }
  return warnings;
}

std::vector<std::string> parse_file_text(const std::string& text, config& out) {
  std::vector<std::string> warnings;
  try {
    parse_text_into(text, out, warnings);
  } catch (...) {
    try {
      warnings.push_back("config text not fully parsed (internal error)");
    } catch (...) {
    }
  }
  return warnings;
}

std::string apply(config& out, const std::string& key, const std::string& value) {
  try {
    if (!is_known_key(key)) {
      return "unknown key " + shown(key) + " ignored";
    }
    std::vector<std::string> w;
    apply_key(out, key, value, /*append_peers=*/false, w);
    std::string joined;
    for (const auto& s : w) {
      if (!joined.empty()) {
        joined += "; ";
      }
      joined += s;
    }
    return joined;
  } catch (...) {
    return {};
  }
}

std::vector<std::string> parse_peers(const std::string& text, std::vector<peer_rule>& out) {
  std::vector<std::string> warnings;
  try {
    parse_peers_into(text, out, warnings);
  } catch (...) {
  }
  return warnings;
}

bool peers_match(const std::vector<peer_rule>& rules, const struct sockaddr* addr,
                 unsigned addrlen) {
  if (addr == nullptr || addrlen < sizeof(sa_family_t)) {
    return false;
  }
  sa_family_t family = 0;
  std::memcpy(&family, reinterpret_cast<const char*>(addr) + offsetof(sockaddr, sa_family),
              sizeof(family));
  // Compare everything as IPv6: an IPv4 peer becomes ::ffff:a.b.c.d, so an
  // IPv4 rule matches it whether the app used AF_INET or a dual-stack socket.
  uint8_t peer[16] = {};
  uint16_t port = 0;
  if (family == AF_INET) {
    if (addrlen < sizeof(sockaddr_in)) {
      return false;
    }
    sockaddr_in sin{};
    std::memcpy(&sin, addr, sizeof(sin));  // memcpy: the caller's buffer may be unaligned
    std::memcpy(peer, v4_mapped_prefix, sizeof(v4_mapped_prefix));
    std::memcpy(peer + 12, &sin.sin_addr, 4);
    port = ntohs(sin.sin_port);
  } else if (family == AF_INET6) {
    // The kernel accepts the 24-byte RFC 2133 sockaddr_in6 (no scope id) in
    // connect(), and the address and port are complete without it.
    constexpr unsigned min_len = offsetof(sockaddr_in6, sin6_scope_id);
    if (addrlen < min_len) {
      return false;
    }
    sockaddr_in6 sin6{};
    std::memcpy(&sin6, addr, min_len);
    std::memcpy(peer, &sin6.sin6_addr, 16);
    port = ntohs(sin6.sin6_port);
  } else {
    return false;
  }
  for (const auto& r : rules) {
    if (r.port != 0 && r.port != port) {
      continue;
    }
    if (r.family == AF_INET) {
      if (std::memcmp(peer, v4_mapped_prefix, sizeof(v4_mapped_prefix)) == 0 &&
          prefix_equal(peer + 12, r.addr, r.prefix_len)) {
        return true;
      }
    } else if (r.family == AF_INET6) {
      if (prefix_equal(peer, r.addr, r.prefix_len)) {
        return true;
      }
    }
  }
  return false;
}

const char* to_string(transport_mode m) {
  switch (m) {
    case transport_mode::auto_:
      return "auto";
    case transport_mode::rdma:
      return "rdma";
    case transport_mode::shm:
      return "shm";
    case transport_mode::tcp:
      return "tcp";
  }
  return "?";
}

const char* to_string(log_level l) {
  switch (l) {
    case log_level::trace:
      return "trace";
    case log_level::debug:
      return "debug";
    case log_level::info:
      return "info";
    case log_level::warn:
      return "warn";
    case log_level::error:
      return "error";
    case log_level::off:
      return "off";
  }
  return "?";
}

std::string to_string(const peer_rule& r) {
  try {
    char buf[INET6_ADDRSTRLEN] = {};
    if (::inet_ntop(r.family, r.addr, buf, sizeof(buf)) == nullptr) {
      return "?";
    }
    std::string s = buf;
    s += "/" + std::to_string(r.prefix_len);
    if (r.port != 0) {
      s = (r.family == AF_INET6 ? "[" + s + "]" : s) + ":" + std::to_string(r.port);
    }
    return s;
  } catch (...) {
    return {};
  }
}

}  // namespace smc::config
