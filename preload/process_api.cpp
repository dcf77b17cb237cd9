// Process-level hooks: fork() and the stats file at exit.
#include <unistd.h>

#include "core/log.h"
#include "core/stats.h"
#include "preload/preload.h"

namespace smc::preload {

void write_stats_at_exit() {
  if (g_init_state.load() != 2 || !g_enabled) {
    return;
  }
  const std::string& path = cfg().stats_file;
  if (!path.empty()) {
    int saved = errno;
    if (!core::stats::write_file(path, static_cast<int>(getpid()))) {
      SMC_LOG(warn, "cannot write stats file %s", path.c_str());
    }
    errno = saved;
  }
  core::log::flush();
}

}  // namespace smc::preload

extern "C" {

// fork() itself needs nothing beyond the pthread_atfork handlers registered at
// init (locks made consistent, the child's counters reset); it is interposed
// so that the library is initialised before a child can exist.
__attribute__((visibility("default"))) pid_t fork() {
  smc::preload::ensure_init();
  return smc::preload::real.fork();
}

}  // extern "C"
