// The fd table: fd number -> entry, a two-level array of atomic pointers.
// A socket we do not handle costs one atomic load (fd_maybe); only recorded
// fds take a striped lock to pin their entry with a reference.
#include <algorithm>
#include <cstdlib>
#include <functional>

#include "core/log.h"
#include "preload/preload.h"
#include "rdma/sys.h"

namespace smc::preload {

namespace {

constexpr int chunk_bits = 12;
constexpr int chunk_size = 1 << chunk_bits;
constexpr int max_chunks = 1024;  // 4 Mi fds
constexpr int stripes = 64;

using slot = std::atomic<entry*>;
std::atomic<slot*> g_chunks[max_chunks];
std::mutex g_stripe[stripes];

slot* find_slot(int fd, bool create) {
  if (fd < 0 || fd >= max_chunks * chunk_size) {
    return nullptr;
  }
  std::atomic<slot*>& c = g_chunks[fd >> chunk_bits];
  slot* s = c.load(std::memory_order_acquire);
  if (s == nullptr && create) {
    auto* fresh = static_cast<slot*>(std::calloc(chunk_size, sizeof(slot)));
    if (fresh == nullptr) {
      return nullptr;
    }
    slot* expected = nullptr;
    if (c.compare_exchange_strong(expected, fresh, std::memory_order_acq_rel)) {
      s = fresh;
    } else {
      std::free(fresh);
      s = expected;
    }
  }
  return s == nullptr ? nullptr : &s[fd & (chunk_size - 1)];
}

std::mutex& stripe(int fd) { return g_stripe[static_cast<unsigned>(fd) % stripes]; }

void last_close(entry* e) {
  if (!e->regs.empty()) {
    // Without a copy of our own the socket goes with this close, and the
    // kernel drops its watches in every epoll set: none to delete first.
    ep_forget_entry(e, e->own_copies.load() == 0 && !e->passed.load() &&
                           e->fork_gen == fork_generation());
  }
  if (e->timer.linked || e->st.load() == state::stepping) {
    abandon_step(e);
  }
  if (e->st.load() == state::deciding) {
    // Its background job sees no fd left when it publishes, and ends the
    // connection then; unless it published just now.
    // (Once: a job that saw no fd left either way may have ended it.)
    std::lock_guard<std::mutex> lk(e->mu);
    if (e->st.load() == state::smc && !e->ended) {
      e->ended = true;
      e->conn->close(e->linger0);
    }
    return;
  }
  switch (e->st.load()) {
    case state::smc:
      e->conn->close(e->linger0);
      break;
    case state::epoll:
      ep_destroy_set(e);
      break;
    default:
      break;
  }
}

}  // namespace

entry::~entry() {
  if (decided_fd >= 0) {
    real.close(decided_fd);
  }
}

namespace {

bool recorded(int fd) {
  if (fd < 0 || fd >= max_chunks * chunk_size) {
    return false;
  }
  slot* s = g_chunks[fd >> chunk_bits].load(std::memory_order_acquire);
  return s != nullptr && s[fd & (chunk_size - 1)].load(std::memory_order_acquire) != nullptr;
}

}  // namespace

// The library's own calls through libc (rdma::t_library_calls: Asio's,
// libibverbs') see nothing recorded: their fds are never the application's.
bool fd_maybe(int fd) { return recorded(fd) && rdma::t_library_calls == 0; }

entry* fd_get(int fd) {
  slot* s = find_slot(fd, false);
  if (s == nullptr) {
    return nullptr;
  }
  std::lock_guard<std::mutex> lk(stripe(fd));
  entry* e = s->load(std::memory_order_acquire);
  if (e != nullptr) {
    e->refs.fetch_add(1, std::memory_order_relaxed);
  }
  return e;
}

void fd_put(entry* e) {
  if (e->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) {
    delete e;
  }
}

entry* fd_install(int fd, entry* e) {
  slot* s = find_slot(fd, true);
  if (s == nullptr) {
    if (e != nullptr) {
      fd_put(e);  // beyond the table: the socket stays plain TCP
    }
    return nullptr;
  }
  std::lock_guard<std::mutex> lk(stripe(fd));
  return s->exchange(e, std::memory_order_acq_rel);
}

entry* fd_take(int fd) {
  slot* s = find_slot(fd, false);
  if (s == nullptr) {
    return nullptr;
  }
  std::lock_guard<std::mutex> lk(stripe(fd));
  return s->exchange(nullptr, std::memory_order_acq_rel);
}

void fd_forget_if(int fd, entry* e) {
  slot* s = find_slot(fd, false);
  if (s == nullptr) {
    return;
  }
  entry* expected = e;
  bool dropped;
  {
    std::lock_guard<std::mutex> lk(stripe(fd));
    dropped = s->compare_exchange_strong(expected, nullptr, std::memory_order_acq_rel);
  }
  if (dropped) {
    e->nfds.fetch_sub(1);
    fd_put(e);
  }
}

void fd_release(int fd) {
  entry* e = fd_take(fd);
  if (e == nullptr) {
    return;
  }
  if (e->nfds.fetch_sub(1) == 1) {
    try {
      last_close(e);
    } catch (...) {
      SMC_LOG(error, "fd %d: exception while closing", fd);
    }
  }
  fd_put(e);
}

void fd_fresh(int fd) {
  // The kernel handed out this number, so whatever we recorded for it was
  // closed behind our back (fclose, close_range, a raw syscall): forget it.
  if (recorded(fd)) {
    fd_release(fd);
  }
}

void fd_release_range(unsigned first, unsigned last) {
  constexpr unsigned limit = static_cast<unsigned>(max_chunks) * chunk_size;
  if (first >= limit) {
    return;
  }
  last = std::min(last, limit - 1);
  // Only chunks that were ever allocated can hold entries: close_range(3, ~0U)
  // costs one load per 4096 fds of an untouched range.
  for (unsigned c = first >> chunk_bits; c <= (last >> chunk_bits); ++c) {
    slot* s = g_chunks[c].load(std::memory_order_acquire);
    if (s == nullptr) {
      continue;
    }
    unsigned lo = std::max(first, c << chunk_bits);
    unsigned hi = std::min(last, ((c + 1) << chunk_bits) - 1);
    for (unsigned fd = lo; fd <= hi; ++fd) {
      if (s[fd & (chunk_size - 1)].load(std::memory_order_acquire) != nullptr) {
        fd_release(static_cast<int>(fd));
      }
    }
  }
}

void fd_for_each(const std::function<void(int, entry*)>& f) {
  for (int c = 0; c < max_chunks; ++c) {
    slot* s = g_chunks[c].load(std::memory_order_acquire);
    if (s == nullptr) {
      continue;
    }
    for (int i = 0; i < chunk_size; ++i) {
      if (s[i].load(std::memory_order_acquire) == nullptr) {
        continue;
      }
      const int fd = (c << chunk_bits) | i;
      if (entry* e = fd_get(fd); e != nullptr) {
        f(fd, e);
        fd_put(e);
      }
    }
  }
}

void fd_table_lock_all() {
  for (auto& m : g_stripe) {
    m.lock();
  }
}

void fd_table_unlock_all() {
  for (auto& m : g_stripe) {
    m.unlock();
  }
}

}  // namespace smc::preload
