// Counters and their JSON form (format documented in README.md).
#include "core/stats.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdlib>
#include <atomic>
#include <cstdio>

#include "rdma/sys.h"

namespace smc::core::stats {

namespace {

struct counters {
  std::atomic<uint64_t> shm{0};
  std::atomic<uint64_t> rdma{0};
  std::atomic<uint64_t> fallback{0};
  std::array<std::atomic<uint64_t>, static_cast<size_t>(reason::count_)> reasons{};
  std::atomic<uint64_t> tx{0};
  std::atomic<uint64_t> rx{0};
  std::atomic<uint64_t> cq_engine{0};
  std::atomic<uint64_t> cq_caller{0};
  std::array<std::atomic<uint64_t>, 3> handoffs{};
  std::atomic<uint64_t> background{0};
  std::atomic<uint64_t> stepped{0};
  std::atomic<uint64_t> step_waits{0};
  std::atomic<uint64_t> untouched{0};
  std::atomic<uint64_t> shm_links{0};
  std::atomic<uint64_t> shm_reused{0};
  std::atomic<uint64_t> shm_fresh{0};
  std::atomic<uint64_t> bells_kept{0};
  std::atomic<uint64_t> lent_first{0};
  std::atomic<uint64_t> poll_memory{0};
  std::atomic<uint64_t> wakes_listed{0};
  std::atomic<uint64_t> wakes_rung{0};
};

counters& c() {
  static counters* instance = new counters();  // never destroyed: used until the very end
  return *instance;
}

}  // namespace

void count_shm() { c().shm.fetch_add(1, std::memory_order_relaxed); }
void count_rdma() { c().rdma.fetch_add(1, std::memory_order_relaxed); }
void count_fallback(reason r) {
  c().fallback.fetch_add(1, std::memory_order_relaxed);
  auto i = static_cast<size_t>(r);
  if (i < c().reasons.size()) {
    c().reasons[i].fetch_add(1, std::memory_order_relaxed);
  }
}
void add_tx(uint64_t n) { c().tx.fetch_add(n, std::memory_order_relaxed); }
void add_rx(uint64_t n) { c().rx.fetch_add(n, std::memory_order_relaxed); }
void count_cq_event(bool by_engine) {
  (by_engine ? c().cq_engine : c().cq_caller).fetch_add(1, std::memory_order_relaxed);
}

void count_handoff(handoff h) {
  c().handoffs[static_cast<size_t>(h)].fetch_add(1, std::memory_order_relaxed);
}

void count_background() { c().background.fetch_add(1, std::memory_order_relaxed); }
void count_stepped() { c().stepped.fetch_add(1, std::memory_order_relaxed); }
void count_step_wait() { c().step_waits.fetch_add(1, std::memory_order_relaxed); }
void count_untouched_look() { c().untouched.fetch_add(1, std::memory_order_relaxed); }

void count_shm_fresh_slot() { c().shm_fresh.fetch_add(1, std::memory_order_relaxed); }
void count_shm_link(bool reused) {
  (reused ? c().shm_reused : c().shm_links).fetch_add(1, std::memory_order_relaxed);
}

void count_shm_lent_first() { c().lent_first.fetch_add(1, std::memory_order_relaxed); }
void count_bell_watch_kept() { c().bells_kept.fetch_add(1, std::memory_order_relaxed); }

void count_poll_from_memory() { c().poll_memory.fetch_add(1, std::memory_order_relaxed); }
void count_wake(bool listed) {
  (listed ? c().wakes_listed : c().wakes_rung).fetch_add(1, std::memory_order_relaxed);
}

void reset() {
  c().shm = 0;
  c().rdma = 0;
  c().fallback = 0;
  for (auto& r : c().reasons) {
    r = 0;
  }
  c().tx = 0;
  c().rx = 0;
  c().cq_engine = 0;
  c().cq_caller = 0;
  for (auto& h : c().handoffs) {
    h = 0;
  }
  c().background = 0;
  c().stepped = 0;
  c().step_waits = 0;
  c().untouched = 0;
  c().shm_links = 0;
  c().shm_reused = 0;
  c().shm_fresh = 0;
  c().bells_kept = 0;
  c().lent_first = 0;
  c().poll_memory = 0;
  c().wakes_listed = 0;
  c().wakes_rung = 0;
}

std::string to_json(int pid) {
  auto ull = [](const std::atomic<uint64_t>& a) {
    return std::to_string(a.load(std::memory_order_relaxed));
  };
  std::string s = "{\"pid\": " + std::to_string(pid) + ", \"connections\": {\"smc_shm\": " +
                  ull(c().shm) + ", \"smc_rdma\": " + ull(c().rdma) +
                  ", \"fallback\": " + ull(c().fallback) + "}, \"fallback_reasons\": {";
  bool first = true;
  for (size_t i = 0; i < c().reasons.size(); ++i) {
    uint64_t v = c().reasons[i].load(std::memory_order_relaxed);
    if (v == 0) {
      continue;
    }
    s += first ? "" : ", ";
    s += "\"" + std::string(to_name(static_cast<reason>(i))) + "\": " + std::to_string(v);
    first = false;
  }
  s += "}, \"shm_links\": {\"made\": " + ull(c().shm_links) +
       ", \"connections_reusing\": " + ull(c().shm_reused) +
       ", \"fresh_slots\": " + ull(c().shm_fresh) +
       ", \"lent_first\": " + ull(c().lent_first) +
       ", \"bell_watches_kept\": " + ull(c().bells_kept);
  s += "}, \"bytes\": {\"smc_tx\": " + ull(c().tx) + ", \"smc_rx\": " + ull(c().rx) +
       "}, \"rdma_cq_events\": {\"engine\": " + ull(c().cq_engine) +
       ", \"caller\": " + ull(c().cq_caller) + "}, \"handoffs\": {\"offered\": " +
       ull(c().handoffs[0]) + ", \"taken\": " + ull(c().handoffs[1]) + ", \"reset\": " +
       ull(c().handoffs[2]) + "}, \"handshakes\": {\"background\": " + ull(c().background) +
       ", \"stepped\": " + ull(c().stepped) +
       ", \"step_waits\": " + ull(c().step_waits) +
       ", \"untouched_looks\": " + ull(c().untouched) +
       "}, \"waits\": {\"poll_from_memory\": " + ull(c().poll_memory) +
       ", \"wakes_listed\": " + ull(c().wakes_listed) + ", \"wakes_rung\": " + ull(c().wakes_rung) +
       "}}\n";
  return s;
}

bool write_file(const std::string& path_template, int pid) {
  std::string path;
  for (size_t i = 0; i < path_template.size(); ++i) {
    if (path_template[i] == '%' && i + 1 < path_template.size() && path_template[i + 1] == 'p') {
      path += std::to_string(pid);
      ++i;
    } else {
      path += path_template[i];
    }
  }
  // The target, if there, must be a regular file: rename() would replace a
  // link or a FIFO planted there, but a directory or device is not ours to
  // touch, and anything else is a mistake worth failing on.
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
    errno = EEXIST;
    return false;
  }
  // A temporary name nobody can predict, created (O_EXCL) next to the
  // target: never a link another user planted in a shared directory.
  std::string tmp = path + ".XXXXXX";
  int fd = ::mkostemp(tmp.data(), O_CLOEXEC);
  if (fd < 0) {
    return false;
  }
  ::fchmod(fd, 0644);
  std::string body = to_json(pid);
  // Past the interposers (rdma::sys): a number the application closed
  // behind our back may still be recorded as its socket.
  bool ok = rdma::sys().write(fd, body.data(), body.size()) == static_cast<ssize_t>(body.size());
  ok = (rdma::sys().close(fd) == 0) && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    return false;
  }
  return true;
}

}  // namespace smc::core::stats
