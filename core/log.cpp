// spdlog behind a printf-style facade. Header-only spdlog/fmt compiled into
// this object with hidden visibility: an application's own spdlog is untouched.
#include "core/log.h"

#include <atomic>
#include <cstdio>
#include <memory>

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

namespace smc::core::log {

namespace {

std::atomic<int> g_level{static_cast<int>(level::off)};

std::shared_ptr<spdlog::logger>& logger() {
  // Leaked on purpose: messages may be written from atexit handlers and
  // destructors of other libraries after our statics would be gone.
  static auto* l = new std::shared_ptr<spdlog::logger>();
  return *l;
}

}  // namespace

void init(level lvl, const std::string& file) {
  if (lvl == level::off) {
    g_level = static_cast<int>(level::off);
    return;
  }
  try {
    std::shared_ptr<spdlog::sinks::sink> sink;
    if (file.empty()) {
      sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
    } else {
      sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(file, false);
    }
    // Not registered in spdlog's global registry: the application may have its own.
    auto l = std::make_shared<spdlog::logger>("smc-preload", std::move(sink));
    l->set_pattern("%Y-%m-%d %H:%M:%S.%e smc-preload[%P:%t] %l: %v");
    l->set_level(spdlog::level::trace);
    l->flush_on(spdlog::level::trace);
    logger() = std::move(l);
    g_level = static_cast<int>(lvl);
  } catch (...) {
    g_level = static_cast<int>(level::off);  // cannot log: stay silent, never fail the app
  }
}

bool enabled(level lvl) {
  return static_cast<int>(lvl) >= g_level.load(std::memory_order_relaxed);
}

void write(level lvl, const char* fmt, ...) {
  auto l = logger();
  if (!l) {
    return;
  }
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  try {
    l->log(static_cast<spdlog::level::level_enum>(static_cast<int>(lvl)), "{}", buf);
  } catch (...) {
  }
}

void flush() {
  try {
    if (auto l = logger()) {
      l->flush();
    }
  } catch (...) {
  }
}

}  // namespace smc::core::log
