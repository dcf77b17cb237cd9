// Unit tests for the files the library writes into places others may
// share: the statistics file (core/stats) and the log file (core/log).
// Neither may follow a link another user planted, block on a FIFO, or touch
// a target that is not a regular file.
#include <catch2/catch.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/log.h"
#include "core/stats.h"

namespace {

/// A fresh directory, removed with everything in it at the end.
struct scratch_dir {
  std::string path;
  scratch_dir() {
    char t[] = "/tmp/smc-files-test.XXXXXX";
    REQUIRE(::mkdtemp(t) != nullptr);
    path = t;
  }
  ~scratch_dir() {
    for (const auto& n : names()) {
      const std::string p = path + "/" + n;
      if (::unlink(p.c_str()) != 0) {
        ::rmdir(p.c_str());
      }
    }
    ::rmdir(path.c_str());
  }
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    if (DIR* d = ::opendir(path.c_str())) {
      while (dirent* de = ::readdir(d)) {
        const std::string n = de->d_name;
        if (n != "." && n != "..") {
          out.push_back(n);
        }
      }
      ::closedir(d);
    }
    return out;
  }
};

std::string slurp(const std::string& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace

TEST_CASE("stats file: written whole, no temporary left behind", "[files]") {
  scratch_dir d;
  REQUIRE(smc::core::stats::write_file(d.path + "/stats.%p.json", 4242));
  const std::string body = slurp(d.path + "/stats.4242.json");
  CHECK(body.rfind("{\"pid\": 4242,", 0) == 0);
  CHECK(body.back() == '\n');
  CHECK(d.names() == std::vector<std::string>{"stats.4242.json"});
  // Written again: replaced, still one file.
  REQUIRE(smc::core::stats::write_file(d.path + "/stats.%p.json", 4242));
  CHECK(d.names().size() == 1);
}

TEST_CASE("stats file: links planted at the target or the old temporary name are never followed",
          "[files]") {
  scratch_dir d;
  const std::string victim = d.path + "/victim";
  { std::ofstream(victim) << "precious"; }
  const std::string target = d.path + "/stats.json";
  REQUIRE(::symlink(victim.c_str(), target.c_str()) == 0);
  // The name earlier versions used for their temporary, planted too.
  REQUIRE(::symlink(victim.c_str(), (target + ".tmp.77").c_str()) == 0);
  // A link at the target is not a regular file: refused, nothing written.
  CHECK_FALSE(smc::core::stats::write_file(target, 77));
  CHECK(slurp(victim) == "precious");
  // With the target free, the planted temporary name is still never used.
  REQUIRE(::unlink(target.c_str()) == 0);
  REQUIRE(smc::core::stats::write_file(target, 77));
  CHECK(slurp(victim) == "precious");
  struct stat st {};
  REQUIRE(::lstat(target.c_str(), &st) == 0);
  CHECK(S_ISREG(st.st_mode));
  CHECK(slurp(target).rfind("{\"pid\": 77,", 0) == 0);
  CHECK(d.names().size() == 3);  // victim, the planted link, ours: no temporary left
}

TEST_CASE("stats file: a FIFO or a directory at the target is left alone, without blocking",
          "[files]") {
  scratch_dir d;
  const std::string fifo = d.path + "/fifo.json";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  CHECK_FALSE(smc::core::stats::write_file(fifo, 1));
  struct stat st {};
  REQUIRE(::lstat(fifo.c_str(), &st) == 0);
  CHECK(S_ISFIFO(st.st_mode));
  const std::string dir = d.path + "/dir.json";
  REQUIRE(::mkdir(dir.c_str(), 0700) == 0);
  CHECK_FALSE(smc::core::stats::write_file(dir, 1));
  REQUIRE(::lstat(dir.c_str(), &st) == 0);
  CHECK(S_ISDIR(st.st_mode));
  CHECK(d.names().size() == 2);  // no temporary left behind
}

TEST_CASE("log file: a FIFO or a link in its place is not opened, and nothing blocks", "[files]") {
  namespace log = smc::core::log;
  scratch_dir d;
  const std::string fifo = d.path + "/log.fifo";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  log::init(log::level::info, fifo);  // would block for ever opening a FIFO without a reader
  CHECK_FALSE(log::enabled(log::level::info));
  const std::string victim = d.path + "/victim";
  { std::ofstream(victim) << "precious"; }
  const std::string link = d.path + "/log.link";
  REQUIRE(::symlink(victim.c_str(), link.c_str()) == 0);
  log::init(log::level::info, link);
  CHECK_FALSE(log::enabled(log::level::info));
  SMC_LOG(info, "must not reach the victim");
  CHECK(slurp(victim) == "precious");
  // A regular file is fine.
  const std::string file = d.path + "/log.txt";
  log::init(log::level::info, file);
  CHECK(log::enabled(log::level::info));
  SMC_LOG(info, "hello %d", 7);
  CHECK(slurp(file).find("hello 7") != std::string::npos);
  log::init(log::level::off, "");
}
