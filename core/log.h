// Logging: silent unless asked for (SMC_LOG_LEVEL / smc_run -d); then spdlog
// writes to SMC_LOG_FILE or to stderr, never to the application's stdout.
// Only log.cpp includes spdlog, so it stays out of every other object.
#pragma once

#include <cstdarg>
#include <string>

namespace smc::core::log {

enum class level : int { trace = 0, debug = 1, info = 2, warn = 3, error = 4, off = 5 };

/// Starts logging at `lvl` (off = stay silent) to `file` (empty = stderr).
void init(level lvl, const std::string& file);
/// True when a message at `lvl` would be written (cheap: one relaxed load).
bool enabled(level lvl);
/// printf-style message; formats only when enabled.
void write(level lvl, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
/// Flush buffered output (at exit).
void flush();
/// The process confined itself (a seccomp filter, small limits): logging
/// falls silent, as each line would take calls (fstat, open, signal mask
/// changes) that it may no longer make, or a signal (SIGXFSZ) that kills.
void stop();

}  // namespace smc::core::log

#define SMC_LOG(lvl, ...)                                                      \
  do {                                                                         \
    if (::smc::core::log::enabled(::smc::core::log::level::lvl)) {             \
      ::smc::core::log::write(::smc::core::log::level::lvl, __VA_ARGS__);      \
    }                                                                          \
  } while (0)
