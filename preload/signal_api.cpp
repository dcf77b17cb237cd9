// Signal handlers, watched for one fact: whether every installed handler has
// SA_RESTART. The kernel restarts a blocking recv/send on a TCP socket after
// such a handler (without SO_RCVTIMEO/SO_SNDTIMEO), and programs that
// install their handlers with SA_RESTART (or with signal(), which sets it)
// never expect EINTR there. Our SMC sockets block in poll(), which the
// kernel never restarts, and cannot tell which signal interrupted it: as
// long as no handler lacks SA_RESTART, the engine carries on after EINTR
// (core::set_signals_restart); otherwise it returns EINTR, as the kernel does
// for the handlers without.
//
// Each call goes to the next definition and then reads back the kernel's
// view of that one signal, so the flags glibc chose (signal(), sigset(),
// siginterrupt()) are what counts. No state beyond one bit per signal.
// Fault signals (SIGSEGV & co.) do not count: they arrive on a running
// thread, never in the middle of a wait.
#include <dlfcn.h>
#include <signal.h>

#include <atomic>
#include <cerrno>
#include <cstdint>

#include "core/conn.h"

namespace {

using sigaction_fn = int (*)(int, const struct sigaction*, struct sigaction*);
using handler_fn = sighandler_t (*)(int, sighandler_t);
using interrupt_fn = int (*)(int, int);

std::atomic<uint64_t> g_no_restart{0};  // bit sig-1: a handler without SA_RESTART

template <typename F>
F next(const char* name, std::atomic<F>& slot) {
  F f = slot.load(std::memory_order_acquire);
  if (f == nullptr) {
    f = reinterpret_cast<F>(dlsym(RTLD_NEXT, name));
    slot.store(f, std::memory_order_release);
  }
  return f;
}

std::atomic<sigaction_fn> g_sigaction{nullptr};

// Signals the kernel raises on the faulting thread itself (a crash handler,
// a sanitizer's, a runtime's): the thread is running, not waiting in poll,
// so they cannot be what interrupted a wait, whatever their flags.
bool synchronous(int sig) {
  return sig == SIGSEGV || sig == SIGBUS || sig == SIGFPE || sig == SIGILL || sig == SIGTRAP ||
         sig == SIGSYS;
}

void refresh(int sig) {
  if (sig <= 0 || sig > 64 || synchronous(sig)) {
    return;
  }
  sigaction_fn real_sa = next("sigaction", g_sigaction);
  struct sigaction cur {};
  if (real_sa == nullptr || real_sa(sig, nullptr, &cur) != 0) {
    return;
  }
  const bool is_handler = (cur.sa_flags & SA_SIGINFO) != 0
                              ? cur.sa_sigaction != nullptr
                              : cur.sa_handler != SIG_DFL && cur.sa_handler != SIG_IGN;
  const uint64_t bit = uint64_t{1} << (sig - 1);
  uint64_t now;
  if (is_handler && (cur.sa_flags & SA_RESTART) == 0) {
    now = g_no_restart.fetch_or(bit, std::memory_order_acq_rel) | bit;
  } else {
    now = g_no_restart.fetch_and(~bit, std::memory_order_acq_rel) & ~bit;
  }
  smc::core::set_signals_restart(now == 0);
}

// Runs `call`, then refreshes `sig`, keeping the call's errno.
template <typename R, typename Call>
R tracked(int sig, Call&& call) {
  R r = call();
  int saved = errno;
  refresh(sig);
  errno = saved;
  return r;
}

sighandler_t handler_call(const char* name, std::atomic<handler_fn>& slot, int sig,
                          sighandler_t h) {
  handler_fn f = next(name, slot);
  if (f == nullptr) {
    errno = ENOSYS;
    return SIG_ERR;
  }
  return tracked<sighandler_t>(sig, [&] { return f(sig, h); });
}

std::atomic<handler_fn> g_signal{nullptr};
std::atomic<handler_fn> g_bsd_signal{nullptr};
std::atomic<handler_fn> g_sysv_signal{nullptr};
std::atomic<handler_fn> g_sysv_signal2{nullptr};
std::atomic<handler_fn> g_sigset{nullptr};
std::atomic<interrupt_fn> g_siginterrupt{nullptr};

}  // namespace

extern "C" {

// glibc still exports it; its headers no longer declare it.
sighandler_t bsd_signal(int sig, sighandler_t h);

__attribute__((visibility("default"))) int sigaction(int sig, const struct sigaction* act,
                                                     struct sigaction* old) {
  sigaction_fn f = next("sigaction", g_sigaction);
  if (f == nullptr) {
    errno = ENOSYS;
    return -1;
  }
  if (act == nullptr) {
    return f(sig, act, old);  // a query changes nothing
  }
  return tracked<int>(sig, [&] { return f(sig, act, old); });
}

__attribute__((visibility("default"))) sighandler_t signal(int sig, sighandler_t h) {
  return handler_call("signal", g_signal, sig, h);
}

__attribute__((visibility("default"))) sighandler_t bsd_signal(int sig, sighandler_t h) {
  return handler_call("bsd_signal", g_bsd_signal, sig, h);
}

__attribute__((visibility("default"))) sighandler_t sysv_signal(int sig, sighandler_t h) {
  return handler_call("sysv_signal", g_sysv_signal, sig, h);
}

__attribute__((visibility("default"))) sighandler_t __sysv_signal(int sig, sighandler_t h) {
  return handler_call("__sysv_signal", g_sysv_signal2, sig, h);
}

__attribute__((visibility("default"))) sighandler_t sigset(int sig, sighandler_t h) {
  return handler_call("sigset", g_sigset, sig, h);
}

__attribute__((visibility("default"))) int siginterrupt(int sig, int flag) {
  interrupt_fn f = next("siginterrupt", g_siginterrupt);
  if (f == nullptr) {
    errno = ENOSYS;
    return -1;
  }
  return tracked<int>(sig, [&] { return f(sig, flag); });
}

}  // extern "C"
