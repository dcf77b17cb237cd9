// spdlog behind a printf-style facade. Header-only spdlog/fmt compiled into
// this object with hidden visibility: an application's own spdlog is untouched.
#include "core/log.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <memory>
#include <mutex>

#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>

#include "rdma/sys.h"

namespace smc::core::log {

namespace {

std::atomic<int> g_level{static_cast<int>(level::off)};

// Writes each message with one write(2) to a file descriptor that is checked
// to still be the file it was opened as: an application may close our fd
// behind our back (closefrom() and close_range() reach the kernel without
// passing through us) and reuse the number for a socket or a file of its
// own, which must never receive our lines. A file is reopened when that
// happened (open_log_file: never through a link or into a FIFO planted in
// its place), stderr falls silent.
// Opens the log file for appending: never through a link (O_NOFOLLOW),
// never blocking on a FIFO planted in its place (O_NONBLOCK), and only a
// regular file. -1 otherwise.
int open_log_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC,
                  0600);
  struct stat st {};
  if (fd >= 0 && (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))) {
    rdma::sys().close(fd);
    fd = -1;
  }
  return fd;
}

class checked_fd_sink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  explicit checked_fd_sink(std::string path) : path_(std::move(path)) {
    if (path_.empty()) {
      fd_ = 2;
    } else {
      fd_ = open_log_file(path_);
      if (fd_ < 0) {
        throw spdlog::spdlog_ex("cannot open the log file");
      }
    }
    remember();
  }
  ~checked_fd_sink() override = default;  // leaked with the logger: the fd may be anyone's by then

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    if (!still_ours()) {
      return;
    }
    spdlog::memory_buf_t buf;
    formatter_->format(msg, buf);
    // A process may forbid itself to write files (RLIMIT_FSIZE 0: sshd's
    // sandboxed child): the kernel's answer to our write would be SIGXFSZ,
    // which kills. Blocked around the write; one that our write raised is
    // taken back, and the file falls silent.
    sigset_t xfsz;
    sigset_t old;
    sigemptyset(&xfsz);
    sigaddset(&xfsz, SIGXFSZ);
    pthread_sigmask(SIG_BLOCK, &xfsz, &old);
    const char* p = buf.data();
    size_t left = buf.size();
    while (left > 0) {
      ssize_t n = rdma::sys().write(fd_, p, left);  // (past the interposers: see rdma/sys.h)
      if (n <= 0) {
        if (n < 0 && errno == EFBIG) {
          const timespec zero{0, 0};
          sigtimedwait(&xfsz, nullptr, &zero);
          ok_ = false;
        }
        break;
      }
      p += n;
      left -= static_cast<size_t>(n);
    }
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
  }
  void flush_() override {}

 private:
  void remember() {
    struct stat st {};
    ok_ = fd_ >= 0 && ::fstat(fd_, &st) == 0;
    dev_ = st.st_dev;
    ino_ = st.st_ino;
  }
  bool still_ours() {
    struct stat st {};
    if (ok_ && ::fstat(fd_, &st) == 0 && st.st_dev == dev_ && st.st_ino == ino_) {
      return true;
    }
    if (path_.empty() || !ok_ || fd_ < 0) {
      ok_ = false;
      return false;
    }
    fd_ = open_log_file(path_);
    remember();
    return ok_;
  }

  std::string path_;
  int fd_ = -1;
  bool ok_ = false;
  dev_t dev_ = 0;
  ino_t ino_ = 0;
};

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
    auto sink = std::make_shared<checked_fd_sink>(file);
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

void stop() {
  g_level = static_cast<int>(level::off);
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
