// Helpers shared by the unit tests (wire byte vectors).
#pragma once

#include <cctype>
#include <cstdint>
#include <vector>

namespace smc_test {

using bytes = std::vector<uint8_t>;

/// Hex string to bytes; anything that is not a hex digit (spaces, '|', '.')
/// only separates.
inline bytes hex(const char* s) {
  bytes out;
  int hi = -1;
  for (; *s != '\0'; ++s) {
    if (std::isxdigit(static_cast<unsigned char>(*s)) == 0) {
      continue;
    }
    const int v = std::isdigit(static_cast<unsigned char>(*s)) != 0
                      ? *s - '0'
                      : std::tolower(static_cast<unsigned char>(*s)) - 'a' + 10;
    if (hi < 0) {
      hi = v;
    } else {
      out.push_back(static_cast<uint8_t>(hi << 4 | v));
      hi = -1;
    }
  }
  return out;
}

}  // namespace smc_test
