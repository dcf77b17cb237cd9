// Interposed socket lifecycle calls (socket, connect, listen, accept, close,
// shutdown, dup*, fcntl, ioctl, get/setsockopt) and the state decisions.
// Each exported function is a thin, noexcept translation: preload/ holds no
// protocol logic, core/ does.
#include <fcntl.h>
#include <linux/close_range.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdarg>
#include <cstring>
#include <optional>

#include "core/background.h"
#include "core/handoff.h"
#include "core/log.h"
#include "core/stats.h"
#include "core/tcp_option.h"
#include "preload/preload.h"
#include "rdma/shm/shm_transport.h"
#include "rdma/sys.h"

using namespace smc::preload;
using smc::core::reason;

namespace smc::preload {

namespace {

int64_t now_ms() { return rdma::shm::now_ms(); }

// How long a partial CLC message at the start of an accepted stream may sit
// before we call it application data.
constexpr int partial_timeout_ms = 2000;
// How long a server that writes first waits for a believed client's Proposal.
constexpr int server_first_wait_ms = 500;

bool is_stream_inet(int domain, int type) {
  return (domain == AF_INET || domain == AF_INET6) &&
         (type & ~(SOCK_NONBLOCK | SOCK_CLOEXEC)) == SOCK_STREAM;
}

void become_tcp(entry* e, int fd, reason why) {
  if (why != reason::none) {
    core::stats::count_fallback(why);
    SMC_LOG(debug, "fd %d: TCP (%s)", fd, core::to_name(why));
  }
  // A reset the handshake's look took from the socket: the application's
  // next call sees it, as its first one would have on TCP.
  if (const int err = core::take_tcp_error(fd); err != 0) {
    e->tcp_err.store(err, std::memory_order_relaxed);
  }
  e->st.store(state::tcp, std::memory_order_release);
}

// The application's TCP_NOTSENT_LOWAT, kept with the connection from its
// switch on: nothing is sent on TCP, and the socket may carry our mark.
void keep_app_lowat(entry* e, int fd) {
  // A socket our socket() made whose application never set the option has
  // the system default: nothing to read (and keep).
  if (!e->lowat_default.load()) {
    unsigned v = 0;
    socklen_t l = sizeof v;
    if (real.getsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &v, &l) == 0) {
      e->conn->set_app_notsent_lowat(v);
    }
  }
}

// The system's TCP_NOTSENT_LOWAT default, as a new TCP socket reports it
// (only asked for when an application reads the option of an SMC socket it
// never set it on). UINT32_MAX, the kernel's own default, if none can be made.
unsigned default_notsent_lowat(int family) {
  unsigned v = UINT32_MAX;
  const int s = real.socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s >= 0) {
    socklen_t l = sizeof v;
    if (real.getsockopt(s, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &v, &l) != 0) {
      v = UINT32_MAX;
    }
    real.close(s);
  }
  return v;
}

// Applies a handshake outcome (under e->mu).
void apply(entry* e, int fd, core::hs_outcome&& o) {
  if (o.path) {
    core::take_tcp_error(fd);  // (a look's before the connection was decided: none is owed)
    const bool rdma = o.path->transport() == rdma::kind::rdma;
    e->conn = std::make_shared<core::conn>(std::move(o.path), fd, cfg().spin_us);
    if (e->rcvlowat > 1) {
      e->conn->set_rcvlowat(e->rcvlowat);  // set before the switch
    }
    keep_app_lowat(e, fd);
    e->st.store(state::smc, std::memory_order_seq_cst);
    if (marking_all()) {
      mark_smc(e, fd);  // (after the state: mark_for_exec's sweep sees one or the other)
    }
    if (rdma) {
      core::stats::count_rdma();
    } else {
      core::stats::count_shm();
    }
    SMC_LOG(info, "fd %d: SMC over %s", fd, rdma ? "RDMA" : "shm");
    return;
  }
  if (o.broken) {
    // Both ends can no longer agree on the stream: reset it rather than
    // deliver corrupt data.
    // (A peer that closed meanwhile is no fault: it reads nothing more.)
    if (o.why == core::reason::peer_closed) {
      SMC_LOG(info, "fd %d: the peer closed during the handshake; resetting", fd);
    } else {
      SMC_LOG(warn, "fd %d: handshake broke the stream (%s); resetting", fd, core::to_name(o.why));
    }
    linger lg{1, 0};
    real.setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    real.shutdown(fd, SHUT_RDWR);
  }
  if (o.strip_reply) {
    e->strip_mask = core::mask_reply;
    core::stats::count_fallback(o.why);
    e->st.store(state::strip, std::memory_order_release);
    return;
  }
  become_tcp(e, fd, o.why);
}

// The socket changed state outside a decision: its epoll registrations
// (made while it was fresh) follow.
void regs_follow(entry* e) {
  if (!e->regs.empty()) {
    ep_state_changed(e);
  }
}

}  // namespace

namespace {

// Publishes a background decision's outcome (`o`, or `tcp_why` when no
// handshake ran) and wakes whoever waits for it. `fd` is the application's
// number for the socket, `dfd` the job's own duplicate of it.
void publish_decision(entry* e, int fd, int dfd, std::optional<core::hs_outcome> o,
                      reason tcp_why) {
  int wake = -1;
  {
    auto pub = core::background::publishing();
    std::lock_guard<std::mutex> lk(e->mu);
    wake = e->decided_fd;
    // Every fd of the socket closed meanwhile: the last close saw it
    // deciding and left the end to us (fd_table.cpp).
    const bool orphan = e->nfds.load() == 0;
    if (o) {
      apply(e, orphan ? dfd : fd, std::move(*o));
    } else {
      become_tcp(e, fd, tcp_why);
    }
    if (orphan && e->st.load() == state::smc && !e->ended) {
      e->ended = true;
      e->conn->close(e->linger0);
    }
  }
  ep_state_changed(e);
  if (wake >= 0) {
    const uint64_t one = 1;
    ssize_t w = real.write(wake, &one, sizeof one);
    (void)w;
  }
}

// The passive decision, on a background thread: the rest of the Proposal,
// then the handshake.
void passive_job(entry* e, int fd, int dfd, int64_t patience_until) {
  size_t len = 0;
  core::start_kind k = core::await_clc(dfd, core::mask_proposal, len, patience_until);
  if (k == core::start_kind::match) {
    publish_decision(e, fd, dfd, core::server_handshake(dfd, len, hs_params()), reason::none);
  } else {
    publish_decision(e, fd, dfd, std::nullopt, reason::no_proposal);
  }
}

// Hands the socket's decision to a background thread (under e->mu, from
// state undecided or connecting). false: none was free; nothing changed.
template <class Job>
bool start_background(entry* e, int fd, Job&& job) {
  if (g_confined.load(std::memory_order_relaxed)) {
    return false;
  }
  // The job's own fd: the application may close its number meanwhile.
  // Numbered high, out of the way of the application's next sockets (event
  // loops size their tables by the fd numbers they expect).
  int dfd = real.fcntl(fd, F_DUPFD_CLOEXEC, rdma::high_fd_base());
  if (dfd < 0) {
    dfd = real.fcntl(fd, F_DUPFD_CLOEXEC, 0);
  }
  if (dfd < 0) {
    return false;
  }
  const state before = e->st.load();
  e->refs.fetch_add(1);
  e->own_copies.fetch_add(1);
  e->st.store(state::deciding, std::memory_order_release);
  const bool ok = core::background::run([e, fd, dfd, job = std::forward<Job>(job)] {
    job(e, fd, dfd);
    real.close(dfd);
    e->own_copies.fetch_sub(1);
    fd_put(e);
  });
  if (!ok) {
    e->st.store(before, std::memory_order_release);
    real.close(dfd);
    e->own_copies.fetch_sub(1);
    fd_put(e);
    return false;
  }
  core::stats::count_background();
  return true;
}

// ---- handshakes between steps (state::stepping), and the socket's deadline ----

// An untouched accepted socket is looked at after 10 ms, then after twice
// as long each time, 8 times (until about 2.5 s after accept()).
constexpr int untouched_first_ms = 10;
constexpr uint8_t untouched_max_looks = 8;
// An SMC-R connection cannot follow its socket to another process (its
// QP is this process's): a server that accepts and passes the socket on
// (node's cluster primary, a privilege-separated acceptor) would see it
// reset. So a look answers a Proposal that would make it SMC-R only from
// this look on (about 150 ms after accept()); a same-host one can move.
constexpr uint8_t untouched_rdma_look = 3;
// How long a wake-up a corked send held back may stay owed (TCP's 200 ms).
constexpr int cork_hold_ms = 200;
// Bumped by every fork (in the parent; the child forgets every deadline).
std::atomic<unsigned> g_untouched_gen{0};

entry* of_timer(core::deadlines::item* it) { return static_cast<entry*>(it->owner); }

void entry_deadline(core::deadlines::item* it);

// Arms (or moves) the socket's deadline (under e->mu).
void arm_timer(entry* e, int fd, int64_t at) {
  e->timer_fd = fd;
  if (e->timer.linked && e->timer.at_ms == at) {
    return;
  }
  e->timer.hold = [](core::deadlines::item* i) { of_timer(i)->refs.fetch_add(1); };
  e->timer.release = [](core::deadlines::item* i) { fd_put(of_timer(i)); };
  e->timer.fire = entry_deadline;
  e->timer.owner = e;
  if (!core::deadlines::arm(&e->timer, at)) {
    // No thread to time it: the calls that touch the socket still move it on.
    SMC_LOG(debug, "fd %d: no deadline thread", fd);
  }
}

// The step is over (under e->mu): its deadline disarmed, the step gone.
void end_step(entry* e) {
  core::deadlines::disarm(&e->timer);
  e->step.reset();
}

// Moves a step on as far as it goes without waiting (under e->mu): it
// waits on (its deadline armed), ends (the outcome applied), or goes on
// on a background thread (first contact, SMC-R), or, with none free, is
// declined.
state step_on_locked(entry* e, int fd) {
  if (e->st.load() != state::stepping || !e->step) {
    return e->st.load();
  }
  core::hs_outcome out;
  switch (core::hs_advance(*e->step, fd, hs_params(), false, out)) {
    case core::step_result::wait: {
      core::stats::count_step_wait();
      arm_timer(e, fd, core::hs_deadline(*e->step));
      return state::stepping;
    }
    case core::step_result::done:
      end_step(e);
      apply(e, fd, std::move(out));
      break;
    case core::step_result::blocking: {
      std::shared_ptr<core::hs_step> step(e->step.release(), core::hs_step_free());
      end_step(e);
      if (!start_background(e, fd, [step](entry* be, int bfd, int dfd) {
            publish_decision(be, bfd, dfd, core::hs_finish(*step, dfd, hs_params()),
                             reason::none);
          })) {
        apply(e, fd, core::hs_abandon(*step, fd, reason::busy));
      }
      break;
    }
  }
  if (!e->regs.empty()) {
    ep_state_changed(e);
  }
  return e->st.load();
}

// Enters state::stepping with `step` (under e->mu) and moves it on.
state begin_step(entry* e, int fd, core::hs_step_ptr step) {
  e->step = std::move(step);
  e->st.store(state::stepping, std::memory_order_release);
  core::stats::count_stepped();
  const state s = step_on_locked(e, fd);
  if (s == state::stepping && !e->regs.empty()) {
    ep_state_changed(e);  // (its watch is the peer's next message now)
  }
  return s;
}

state step_on(entry* e, int fd) {
  std::lock_guard<std::mutex> lk(e->mu);
  return step_on_locked(e, fd);
}

state decide_passive_locked(entry* e, int fd, bool may_block, bool early_look = false);

// The socket's deadline passed with nobody touching it: a step ends (timed
// out) or, if its wait moved on meanwhile, waits on; an untouched accepted
// socket is looked at (and, still undecided, looked at again later).
void entry_deadline(core::deadlines::item* it) {
  entry* e = of_timer(it);
  {
    // A thread of the application's may hold the lock for a while (a
    // blocking read running the handshake inline, bounded by the peer's
    // timeouts): the deadline thread never waits for it, which would hold
    // up every other socket's deadline; it looks again a tick later.
    std::unique_lock<std::mutex> lk(e->mu, std::try_to_lock);
    if (!lk.owns_lock()) {
      core::deadlines::arm(it, now_ms() + untouched_first_ms);
      fd_put(e);  // (the new arming holds its own reference)
      return;
    }
    // Its fd number still names this socket (a last close would have
    // disarmed it under this lock; a dup's close does not).
    const int fd = e->timer_fd;
    entry* now = fd_maybe(fd) ? fd_get(fd) : nullptr;
    if (now != nullptr) {
      fd_put(now);
    }
    const state s = e->st.load();
    if (s == state::stepping && e->step) {
      if (now == e) {
        step_on_locked(e, fd);
      } else {
        end_step(e);
        become_tcp(e, fd, reason::clc_timeout);
        if (!e->regs.empty()) {
          ep_state_changed(e);
        }
      }
    } else if (s == state::smc && e->conn) {
      e->conn->flush_cork();  // held back 200 ms: as TCP sends a corked segment
    } else if (s == state::undecided && now == e && e->untouched_looks < untouched_max_looks &&
               e->untouched_gen == g_untouched_gen.load(std::memory_order_relaxed)) {
      core::stats::count_untouched_look();
      const bool early = e->untouched_looks < untouched_rdma_look;
      if (decide_passive_locked(e, fd, false, early) == state::undecided &&
          ++e->untouched_looks < untouched_max_looks) {
        arm_timer(e, fd, now_ms() + (untouched_first_ms << e->untouched_looks));
      }
    }
  }
  fd_put(e);
}

}  // namespace

state decide_passive(entry* e, int fd, bool may_block) {
  std::lock_guard<std::mutex> lk(e->mu);
  return decide_passive_locked(e, fd, may_block);
}

namespace {

state decide_passive_locked(entry* e, int fd, bool may_block, bool early_look) {
  state s = e->st.load();
  if (s != state::undecided && s != state::strip) {
    return s;
  }
  size_t len = 0;
  unsigned mask = s == state::undecided ? core::mask_proposal : e->strip_mask;
  core::start_kind k = core::peek_clc(fd, mask, len);
  bool prefix = false;
  if (k == core::start_kind::need_more) {
    int probe;
    // need_more with bytes present means a CLC prefix: bounded patience.
    ssize_t n = real.recv(fd, &probe, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n > 0) {
      prefix = true;
      if (e->partial_since_ms == 0) {
        e->partial_since_ms = now_ms();
      } else if (now_ms() - e->partial_since_ms > partial_timeout_ms) {
        k = core::start_kind::not_clc;
      }
    }
  }
  if (!may_block && s == state::undecided && k == core::start_kind::match) {
    if (early_look && core::proposal_wants_rdma(fd, len, hs_params())) {
      return s;  // the application may still pass it on (untouched_rdma_look)
    }
    // The caller must not wait for the peer: the handshake goes on in
    // steps (the Proposal answered now; over a same-host link the Confirm
    // is taken when it comes), or on a background thread.
    core::hs_outcome out;
    if (core::hs_step_ptr step = core::server_begin(fd, len, hs_params(), out)) {
      return begin_step(e, fd, std::move(step));
    }
    apply(e, fd, std::move(out));
    if (!e->regs.empty()) {
      ep_state_changed(e);
    }
    return e->st.load();
  }
  if (!may_block && s == state::undecided && k == core::start_kind::need_more && prefix) {
    // The rest of the Proposal and the handshake run in the background.
    const int64_t until = (e->partial_since_ms != 0 ? e->partial_since_ms : now_ms()) + partial_timeout_ms;
    if (start_background(e, fd, [until](entry* be, int bfd, int dfd) {
          passive_job(be, bfd, dfd, until);
        })) {
      ep_state_changed(e);
      return state::deciding;
    }
  }
  switch (k) {
    case core::start_kind::need_more:
      return s;
    case core::start_kind::eof:
    case core::start_kind::not_clc:
      become_tcp(e, fd, s == state::undecided ? reason::no_proposal : reason::none);
      break;
    case core::start_kind::match:
      if (s == state::strip) {
        core::discard_clc(fd, len);
        SMC_LOG(debug, "fd %d: stripped a late CLC message", fd);
        become_tcp(e, fd, reason::none);
      } else {
        apply(e, fd, core::server_handshake(fd, len, hs_params()));
      }
      break;
  }
  s = e->st.load();
  if (!e->regs.empty()) {
    ep_state_changed(e);
  }
  return s;
}

}  // namespace

namespace {

// A client's handshake parameters: hs_params() and where it connected.
core::hs_params client_params(const entry* e) {
  core::hs_params p = hs_params();
  p.dest = e->dest;
  return p;
}

}  // namespace

state finish_connect(entry* e, int fd, uint32_t seen) {
  std::lock_guard<std::mutex> lk(e->mu);
  if (e->st.load() != state::connecting) {
    return e->st.load();
  }
  // Writable without an error or a hangup: established (what the kernel
  // just told poll or epoll_wait saves asking it twice more).
  const bool up = (seen & POLLOUT) != 0 && (seen & (POLLERR | POLLHUP)) == 0;
  pollfd p{fd, POLLOUT, 0};
  if (!up && real.poll(&p, 1, 0) <= 0) {
    return state::connecting;
  }
  sockaddr_storage ss;
  socklen_t sl = sizeof(ss);
  if (!up && getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &sl) != 0) {
    // The connect failed: the application reads the error from SO_ERROR itself.
    become_tcp(e, fd, reason::none);
  } else if (!e->believed && core::tcp_option::peer_said(fd) != core::tcp_option::peer::smc) {
    become_tcp(e, fd, reason::peer_not_configured);
  } else {
    // A non-blocking connect's caller must not wait for the server either:
    // the Proposal goes out now, the server's answer is taken when it comes.
    core::hs_outcome out;
    if (core::hs_step_ptr step = core::client_propose(fd, client_params(e), out)) {
      return begin_step(e, fd, std::move(step));
    }
    apply(e, fd, std::move(out));
  }
  if (!e->regs.empty()) {
    ep_state_changed(e);
  }
  return e->st.load();
}

state drive(entry* e, int fd, uint32_t seen) {
  switch (e->st.load(std::memory_order_acquire)) {
    case state::undecided:
    case state::strip:
      return decide_passive(e, fd, false);
    case state::connecting:
      return finish_connect(e, fd, seen);
    case state::stepping:
      return step_on(e, fd);
    default:
      return e->st.load();
  }
}

int decided_wait_fd(entry* e) {
  std::lock_guard<std::mutex> lk(e->mu);
  if (e->st.load() != state::deciding) {
    return -1;
  }
  if (e->decided_fd < 0) {
    // It lives as long as the socket: out of the application's numbers.
    e->decided_fd = rdma::place_fd(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  }
  return e->decided_fd;
}

int await_decision(entry* e, int fd, int64_t deadline_ms) {
  bool prefix = false;  // a step's message lies there in part
  for (;;) {
    state s = e->st.load(std::memory_order_acquire);
    if (s == state::stepping) {
      s = step_on(e, fd);
    }
    if (!in_handshake(s)) {
      return 0;
    }
    // A step: its socket becomes readable when the peer's message comes
    // (while a prefix sits there, look again shortly); a background
    // decision: its eventfd when it ends. -1: decided just now, or no
    // eventfd to be had (then poll() on nothing is a short sleep and the
    // state is looked at again).
    const bool step = s == state::stepping;
    const int wfd = step ? (prefix ? -1 : fd) : decided_wait_fd(e);
    int slice = step ? (prefix ? 2 : 100) : (wfd >= 0 ? 1000 : 10);
    if (deadline_ms >= 0) {
      const int64_t left = deadline_ms - now_ms();
      if (left <= 0) {
        return EAGAIN;
      }
      slice = static_cast<int>(std::min<int64_t>(slice, left));
    }
    pollfd p{wfd, POLLIN, 0};
    const int n = real.poll(&p, 1, slice);
    if (n < 0 && errno == EINTR && (deadline_ms >= 0 || !core::signals_restart())) {
      return EINTR;
    }
    prefix = step && n > 0;
  }
}

void abandon_step(entry* e) {
  std::lock_guard<std::mutex> lk(e->mu);
  core::deadlines::disarm(&e->timer);
  if (e->st.load() == state::stepping) {
    end_step(e);
    e->st.store(state::tcp, std::memory_order_release);
  }
}

void watch_untouched(entry* e, int fd) {
  std::lock_guard<std::mutex> lk(e->mu);
  if (e->st.load() == state::undecided) {
    e->untouched_gen = g_untouched_gen.load(std::memory_order_relaxed);
    arm_timer(e, fd, now_ms() + untouched_first_ms);
  }
}

void leave_untouched(entry* e) {
  std::lock_guard<std::mutex> lk(e->mu);
  e->untouched_looks = untouched_max_looks;
  if (e->st.load() == state::undecided) {
    core::deadlines::disarm(&e->timer);
  }
}

void untouched_after_fork() { g_untouched_gen.fetch_add(1, std::memory_order_relaxed); }

void cork_deadline(entry* e, int fd) {
  std::lock_guard<std::mutex> lk(e->mu);
  if (e->st.load() == state::smc && !e->timer.linked) {
    arm_timer(e, fd, now_ms() + cork_hold_ms);
  }
}

void forget_decisions_after_fork() {
  fd_for_each([](int fd, entry* e) {
    if (e->timer.linked) {
      // Its deadline is the parent's (the deadlines' list was forgotten
      // here), and so is its step: let go of the copy, whose link the fork
      // retired.
      e->timer.linked = false;
      e->timer.prev = e->timer.next = nullptr;
      fd_put(e);  // the armed deadline's reference
    }
    e->step.reset();
    if (in_handshake(e->st.load())) {
      // Its handshake runs on a thread of the parent's, or in its calls.
      SMC_LOG(debug, "fd %d: decided in the parent process; TCP here", fd);
      e->st.store(state::tcp, std::memory_order_release);
    }
  });
}

int64_t timeout_deadline(int fd, int name) {
  timeval tv{};
  socklen_t tl = sizeof(tv);
  if (real.getsockopt(fd, SOL_SOCKET, name, &tv, &tl) == 0 && (tv.tv_sec || tv.tv_usec)) {
    return now_ms() + tv.tv_sec * 1000 + (tv.tv_usec + 999) / 1000;
  }
  return -1;
}

bool nonblocking(int fd, int flags) {
  if ((flags & MSG_DONTWAIT) != 0) {
    return true;
  }
  int fl = real.fcntl(fd, F_GETFL);
  return fl >= 0 && (fl & O_NONBLOCK) != 0;
}

int prepare_read(entry* e, int fd, int flags) {
  // Asked of the kernel (F_GETFL) only when it matters, once.
  int nb = -1;
  auto nonblock = [&] {
    if (nb < 0) {
      nb = nonblocking(fd, flags) ? 1 : 0;
    }
    return nb == 1;
  };
  int64_t deadline = -1;  // from SO_RCVTIMEO, computed once
  bool computed = false;
  for (;;) {
    state s = e->st.load(std::memory_order_acquire);
    if (s == state::undecided) {
      s = decide_passive(e, fd, !nonblock());
    } else if (s == state::strip) {
      s = decide_passive(e, fd, false);  // (stripping never waits for the peer)
    } else if (s == state::connecting) {
      s = finish_connect(e, fd, 0);
    } else if (s == state::stepping) {
      s = step_on(e, fd);
    }
    if (s != state::undecided && s != state::strip && !in_handshake(s)) {
      return 0;  // decided, or still connecting (the kernel answers that read)
    }
    if (nonblock()) {
      return EAGAIN;
    }
    if (!computed) {
      computed = true;
      deadline = timeout_deadline(fd, SO_RCVTIMEO);
    }
    if (in_handshake(s)) {
      if (int err = await_decision(e, fd, deadline); err != 0) {
        return err;
      }
      continue;
    }
    // Sleep until bytes arrive, then decide. In slices: another thread of the
    // application (a writer on the same socket) may run the handshake and
    // consume the bytes we are waiting for, so the state is re-checked often.
    int slice = e->partial_since_ms != 0 ? 20 : 100;
    if (deadline >= 0) {
      int64_t left = deadline - now_ms();
      if (left <= 0) {
        return EAGAIN;  // SO_RCVTIMEO expired
      }
      slice = static_cast<int>(std::min<int64_t>(slice, left));
    }
    pollfd p{fd, POLLIN, 0};
    if (real.poll(&p, 1, slice) < 0 && errno == EINTR &&
        (deadline >= 0 || !core::signals_restart())) {
      return EINTR;  // else an SA_RESTART handler ran: carry on, as recv would
    }
  }
}

void prepare_write(entry* e, int fd) {
  state s = drive(e, fd);
  if (s != state::undecided) {
    return;
  }
  if (e->believed) {
    // The client is expected to propose: give its Proposal a moment.
    int64_t until = now_ms() + server_first_wait_ms;
    while (s == state::undecided && now_ms() < until) {
      pollfd p{fd, POLLIN, 0};
      real.poll(&p, 1, static_cast<int>(std::max<int64_t>(1, until - now_ms())));
      s = drive(e, fd);
      if (s == state::undecided && e->partial_since_ms == 0 && p.revents == 0) {
        break;  // no byte at all within the wait
      }
    }
    if (s != state::undecided) {
      return;
    }
  }
  std::lock_guard<std::mutex> lk(e->mu);
  if (e->st.load() == state::undecided) {
    // Our bytes go out on TCP now; a Proposal that arrives later is never
    // answered but silently removed, and the client falls back on seeing our data.
    e->strip_mask = core::mask_proposal;
    core::stats::count_fallback(reason::server_wrote_first);
    e->st.store(state::strip, std::memory_order_release);
    if (!e->regs.empty()) {
      ep_state_changed(e);
    }
  }
}

void settle_before_confinement(entry* e, int fd) {
  state s = drive(e, fd);
  if (in_handshake(s)) {
    await_decision(e, fd, now_ms() + 30000);  // bounded by the handshake's own timeouts
    s = e->st.load();
  }
  if (s == state::smc) {
    e->conn->confine();
    return;
  }
  if (s != state::undecided && s != state::strip && s != state::connecting) {
    return;
  }
  {
    std::lock_guard<std::mutex> lk(e->mu);
    s = e->st.load();
    if (s != state::undecided && s != state::strip && s != state::connecting) {
      return;
    }
    become_tcp(e, fd, s == state::strip ? reason::none : reason::sandboxed);
  }
  regs_follow(e);
}

ssize_t finish_io(io_status s, int saved_errno) {
  errno = s.n < 0 ? s.err : saved_errno;
  return s.n;
}

// What closing [first, last] ends (close(), close_range(), and the same
// system calls made through syscall()): our state for every recorded fd
// in the range, released before the kernel closes them.
// CLOSE_RANGE_CLOEXEC closes nothing now (exec ends the image and its table).
void forget_closed(unsigned first, unsigned last, int flags) {
  if (!g_enabled || first > last || (flags & ~(CLOSE_RANGE_UNSHARE | CLOSE_RANGE_CLOEXEC)) != 0 ||
      (flags & CLOSE_RANGE_CLOEXEC) != 0) {
    return;
  }
  const int saved = errno;
  if (first == last) {
    if (fd_maybe(static_cast<int>(first))) {
      fd_release(static_cast<int>(first));
    }
  } else {
    try {
      fd_release_range(first, last);
    } catch (...) {
    }
  }
  errno = saved;
}

}  // namespace smc::preload

namespace {

// A confined SMC connection no longer asks the kernel for its socket's
// blocking mode and timeouts (core::conn::confine): it hears of changes here.
template <class F>
void tell_confined(int fd, F&& f) {
  if (g_enabled && g_confined.load(std::memory_order_relaxed) && fd_maybe(fd)) {
    entry_ref e(fd);
    if (e && e->st.load() == state::smc && e->conn->confined()) {
      f(*e->conn);
    }
  }
}

}  // namespace

// ---------------------------------------------------------------------------
// Exported symbols.

extern "C" {

__attribute__((visibility("default"))) int socket(int domain, int type, int protocol) noexcept {
  ensure_init();
  int fd = real.socket(domain, type, protocol);
  if (fd < 0 || !g_enabled) {
    return fd;
  }
  int saved = errno;
  fd_fresh(fd);
  if (is_stream_inet(domain, type) && (protocol == 0 || protocol == IPPROTO_TCP) &&
      !g_confined.load(std::memory_order_relaxed)) {
    auto* e = new (std::nothrow) entry();
    if (e != nullptr) {
      e->family = domain;
      e->lowat_default = true;
      entry* old = fd_install(fd, e);
      if (old != nullptr) {
        fd_put(old);
      }
    }
  }
  errno = saved;
  return fd;
}

__attribute__((visibility("default"))) int connect(int fd, const sockaddr* addr,
                                                   socklen_t len) noexcept {
  ensure_init();
  entry_ref e(fd);
  if (!e || e->st.load() != state::fresh) {
    return real.connect(fd, addr, len);
  }
  int saved = errno;
  try {
    const auto& c = cfg();
    reason why = reason::none;
    // Belief in the peer: SMC_PEERS, or (decided once connected) SMC's TCP
    // option echoed in its SYN-ACK, when the host's eBPF programs are there.
    bool believed = false;
    if (c.transport == smc::config::transport_mode::tcp) {
      why = reason::transport_tcp;
    } else if (g_confined.load(std::memory_order_relaxed)) {
      why = reason::sandboxed;
    } else if (addr != nullptr && smc::config::peers_match(c.peers, addr, len)) {
      believed = true;
      smc::core::tcp_option::advertise(fd);
    } else if (addr == nullptr || !smc::core::tcp_option::advertise(fd)) {
      why = reason::peer_not_configured;
    }
    if (why != reason::none) {
      {
        std::lock_guard<std::mutex> lk(e->mu);
        become_tcp(e.get(), fd, why);
      }
      regs_follow(e.get());
      fd_forget_if(fd, e.get());
      errno = saved;
      return real.connect(fd, addr, len);
    }
    e->believed = believed;
    e->dest = smc::core::dest_key(addr, len);
    if (believed) {
      smc::core::client_warm_up(hs_params());
    }
    errno = saved;
    int rc = real.connect(fd, addr, len);
    if (rc != 0) {
      if (errno == EINPROGRESS) {
        e->st.store(state::connecting, std::memory_order_release);
        regs_follow(e.get());
        errno = EINPROGRESS;
      }
      return rc;
    }
    {
      std::lock_guard<std::mutex> lk(e->mu);
      if (believed || smc::core::tcp_option::peer_said(fd) == smc::core::tcp_option::peer::smc) {
        apply(e.get(), fd, smc::core::client_handshake(fd, client_params(e.get())));
      } else {
        become_tcp(e.get(), fd, reason::peer_not_configured);
      }
    }
    regs_follow(e.get());
    if (e->st.load() == state::tcp) {
      fd_forget_if(fd, e.get());
    }
    errno = saved;
    return 0;
  } catch (...) {
    errno = saved;
    return e->st.load() == state::fresh ? real.connect(fd, addr, len) : 0;
  }
}

__attribute__((visibility("default"))) int listen(int fd, int backlog) noexcept {
  ensure_init();
  entry_ref e(fd);
  if (e && e->st.load() == state::fresh && cfg().transport != smc::config::transport_mode::tcp) {
    // Our SYN-ACKs echo SMC's TCP option to clients that offer it (Linux's
    // AF_SMC clients require that), when the host's eBPF programs are there.
    smc::core::tcp_option::advertise(fd);
  }
  int rc = real.listen(fd, backlog);
  if (rc == 0 && e && e->st.load() == state::fresh) {
    int saved = errno;
    e->st.store(state::listener, std::memory_order_release);
    regs_follow(e.get());
    errno = saved;
  }
  return rc;
}

static int accept_common(int fd, sockaddr* addr, socklen_t* len, int flags) {
  entry_ref e(fd);
  if (!e || e->st.load() != state::listener || g_confined.load(std::memory_order_relaxed)) {
    // (Confined: the decision would peek at the stream, a call the process
    // may no longer make; the connection is plain TCP.)
    return real.accept4(fd, addr, len, flags);
  }
  sockaddr_storage ss;
  socklen_t sl = sizeof(ss);
  int nfd = real.accept4(fd, reinterpret_cast<sockaddr*>(&ss), &sl, flags);
  if (nfd < 0) {
    return nfd;
  }
  int saved = errno;
  if (addr != nullptr && len != nullptr) {
    std::memcpy(addr, &ss, std::min<socklen_t>(*len, sl));
    *len = sl;
  }
  fd_fresh(nfd);
  auto* ne = new (std::nothrow) entry();
  if (ne != nullptr) {
    ne->family = e->family;
    // An accepted socket starts with its listener's TCP_NOTSENT_LOWAT.
    ne->lowat_default = e->lowat_default.load();
    ne->believed = smc::config::peers_match(cfg().peers, reinterpret_cast<sockaddr*>(&ss), sl) ||
                   smc::core::tcp_option::peer_said(nfd) == smc::core::tcp_option::peer::smc;
    ne->st.store(state::undecided, std::memory_order_release);
    entry* old = fd_install(nfd, ne);
    if (old != nullptr) {
      fd_put(old);
    }
    watch_untouched(ne, nfd);
  }
  errno = saved;
  return nfd;
}

__attribute__((visibility("default"))) int accept(int fd, sockaddr* addr, socklen_t* len) {
  ensure_init();
  if (!g_enabled) {
    return real.accept(fd, addr, len);
  }
  return accept_common(fd, addr, len, 0);
}

__attribute__((visibility("default"))) int accept4(int fd, sockaddr* addr, socklen_t* len,
                                                   int flags) {
  ensure_init();
  if (!g_enabled) {
    return real.accept4(fd, addr, len, flags);
  }
  return accept_common(fd, addr, len, flags);
}

__attribute__((visibility("default"))) int close(int fd) {
  ensure_init();
  smc::preload::forget_closed(static_cast<unsigned>(fd), static_cast<unsigned>(fd), 0);
  return real.close(fd);
}

// close_range closes behind close()'s back: release our state for every
// recorded fd in the range first, exactly as close() does for one fd.
__attribute__((visibility("default"))) int close_range(unsigned first, unsigned last,
                                                       int flags) noexcept {
  ensure_init();
  smc::preload::forget_closed(first, last, flags);
  return real.close_range(first, last, flags);
}

// closefrom() closes through glibc's own close_range, which close_range()
// above never sees: the same first.
__attribute__((visibility("default"))) void closefrom(int lowfd) noexcept {
  ensure_init();
  if (lowfd >= 0) {
    smc::preload::forget_closed(static_cast<unsigned>(lowfd), ~0U, 0);
  }
  real.closefrom(lowfd);
}

__attribute__((visibility("default"))) int shutdown(int fd, int how) noexcept {
  ensure_init();
  entry_ref e(fd);
  if (!e) {
    return real.shutdown(fd, how);
  }
  state s = e->st.load();
  if (s == state::undecided || s == state::strip) {
    s = drive(e.get(), fd);
  }
  if (in_handshake(s)) {
    const int saved = errno;
    await_decision(e.get(), fd, -1);  // bounded by the handshake's own timeouts
    s = e->st.load();
    errno = saved;
  }
  if (s == state::smc) {
    if (how != SHUT_RD && how != SHUT_WR && how != SHUT_RDWR) {
      errno = EINVAL;
      return -1;
    }
    return e->conn->shutdown(how);
  }
  return real.shutdown(fd, how);
}

static int dup_common(int oldfd, int newfd) {
  if (newfd < 0) {
    return newfd;
  }
  int saved = errno;
  fd_fresh(newfd);
  if (fd_maybe(oldfd)) {
    entry* e = fd_get(oldfd);
    if (e != nullptr) {
      e->nfds.fetch_add(1);
      entry* old = fd_install(newfd, e);
      if (old != nullptr) {
        fd_put(old);
      }
    }
  }
  errno = saved;
  return newfd;
}

__attribute__((visibility("default"))) int dup(int fd) {
  ensure_init();
  int n = real.dup(fd);
  return g_enabled ? dup_common(fd, n) : n;
}

__attribute__((visibility("default"))) int dup2(int oldfd, int newfd) {
  ensure_init();
  if (!g_enabled || oldfd == newfd) {
    return real.dup2(oldfd, newfd);
  }
  if (fd_maybe(newfd)) {
    int saved = errno;
    fd_release(newfd);  // dup2 closes newfd first
    errno = saved;
  }
  return dup_common(oldfd, real.dup2(oldfd, newfd));
}

__attribute__((visibility("default"))) int dup3(int oldfd, int newfd, int flags) {
  ensure_init();
  if (!g_enabled || oldfd == newfd) {
    return real.dup3(oldfd, newfd, flags);
  }
  if (fd_maybe(newfd)) {
    int saved = errno;
    fd_release(newfd);
    errno = saved;
  }
  return dup_common(oldfd, real.dup3(oldfd, newfd, flags));
}

static int fcntl_common(int (*fn)(int, int, ...), int fd, int cmd, unsigned long arg) {
  int rc = fn(fd, cmd, arg);
  if (g_enabled && (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC)) {
    return dup_common(fd, rc);
  }
  if (rc == 0 && cmd == F_SETFL) {
    tell_confined(fd, [&](smc::core::conn& c) { c.note_nonblock((arg & O_NONBLOCK) != 0); });
  }
  return rc;
}

__attribute__((visibility("default"))) int fcntl(int fd, int cmd, ...) {
  ensure_init();
  va_list ap;
  va_start(ap, cmd);
  unsigned long arg = va_arg(ap, unsigned long);
  va_end(ap);
  return fcntl_common(real.fcntl, fd, cmd, arg);
}

__attribute__((visibility("default"))) int fcntl64(int fd, int cmd, ...) {
  ensure_init();
  va_list ap;
  va_start(ap, cmd);
  unsigned long arg = va_arg(ap, unsigned long);
  va_end(ap);
  return fcntl_common(real.fcntl64, fd, cmd, arg);
}

__attribute__((visibility("default"))) int ioctl(int fd, unsigned long req, ...) {
  ensure_init();
  va_list ap;
  va_start(ap, req);
  void* arg = va_arg(ap, void*);
  va_end(ap);
  if ((req == FIONREAD || req == SIOCOUTQ) && g_enabled && fd_maybe(fd)) {
    entry_ref e(fd);
    const state s = e ? drive(e.get(), fd) : state::tcp;
    if ((s == state::smc || in_handshake(s)) && arg != nullptr) {
      int v = in_handshake(s) ? 0  // nothing to read or in flight yet
              : static_cast<int>(req == FIONREAD ? e->conn->readable_bytes() : e->conn->unsent_bytes());
      std::memcpy(arg, &v, sizeof(v));
      return 0;
    }
  }
  int rc = real.ioctl(fd, req, arg);
  if (rc == 0 && req == FIONBIO && arg != nullptr) {
    int on = 0;
    std::memcpy(&on, arg, sizeof(on));
    tell_confined(fd, [&](smc::core::conn& c) { c.note_nonblock(on != 0); });
  }
  return rc;
}

__attribute__((visibility("default"))) int getsockopt(int fd, int level, int name, void* val,
                                                      socklen_t* len) noexcept {
  ensure_init();
  if (level == IPPROTO_TCP && name == TCP_NOTSENT_LOWAT && g_enabled && fd_maybe(fd) &&
      val != nullptr && len != nullptr && *len >= sizeof(unsigned)) {
    entry_ref e(fd);
    if (e && e->st.load() == state::smc) {  // ours is the mark: theirs is kept here
      unsigned v = 0;
      if (!e->conn->app_notsent_lowat(v)) {
        const int saved = errno;
        v = default_notsent_lowat(e->family != 0 ? e->family : AF_INET);
        errno = saved;
      }
      std::memcpy(val, &v, sizeof(unsigned));
      *len = sizeof(unsigned);
      return 0;
    }
  }
  if (level == IPPROTO_TCP && name == TCP_CORK && g_enabled && fd_maybe(fd) && val != nullptr &&
      len != nullptr && *len >= sizeof(int)) {
    entry_ref e(fd);
    if (e && e->st.load() == state::smc) {
      const int on = e->conn->corked() ? 1 : 0;
      std::memcpy(val, &on, sizeof on);
      *len = sizeof(int);
      return 0;
    }
  }
  if (level == SOL_SOCKET && name == SO_ERROR && g_enabled && fd_maybe(fd)) {
    entry_ref e(fd);
    // (An error a handshake took from the kernel, entry::tcp_err, is owed
    // to the next read or write, not to SO_ERROR: a non-blocking connect's
    // SO_ERROR is what moves its handshake on, and on TCP a reset that
    // came after the connection was made reaches that read.)
    if (e && drive(e.get(), fd) == state::smc && val != nullptr && len != nullptr &&
        *len >= sizeof(int)) {
      int err = e->conn->take_error();
      if (err != 0) {
        std::memcpy(val, &err, sizeof(err));
        *len = sizeof(int);
        return 0;
      }
    }
  }
  return real.getsockopt(fd, level, name, val, len);
}

__attribute__((visibility("default"))) int setsockopt(int fd, int level, int name, const void* val,
                                                      socklen_t len) noexcept {
  ensure_init();
  if (level == IPPROTO_TCP && name == TCP_NOTSENT_LOWAT && g_enabled && fd_maybe(fd) &&
      val != nullptr && len >= sizeof(unsigned)) {
    entry_ref e(fd);
    if (e && e->st.load() == state::smc) {  // nothing is sent on TCP: keep it, keep our mark
      unsigned v;
      std::memcpy(&v, val, sizeof(unsigned));
      e->conn->set_app_notsent_lowat(v);
      return 0;
    }
    if (e) {
      e->lowat_default = false;  // the socket holds the application's value now
    }
  }
  if (level == IPPROTO_TCP && name == TCP_CORK && g_enabled && fd_maybe(fd) && val != nullptr &&
      len >= sizeof(int)) {
    // Nothing is sent on TCP: kept here, and getsockopt answers from here
    // (a system call per response saved: nginx corks each one).
    entry_ref e(fd);
    if (e && e->st.load() == state::smc) {
      int on = 0;
      std::memcpy(&on, val, sizeof on);
      e->conn->set_cork(on != 0);
      return 0;
    }
  }
  int rc = real.setsockopt(fd, level, name, val, len);
  if (rc == 0 && level == SOL_SOCKET && (name == SO_RCVTIMEO || name == SO_SNDTIMEO) &&
      val != nullptr && len >= sizeof(timeval)) {
    timeval tv;
    std::memcpy(&tv, val, sizeof(tv));
    const int64_t ms = static_cast<int64_t>(tv.tv_sec) * 1000 + (tv.tv_usec + 999) / 1000;
    const int v = ms <= 0 ? -1 : static_cast<int>(std::min<int64_t>(ms, INT_MAX));
    tell_confined(fd, [&](smc::core::conn& c) { c.note_timeout(name == SO_RCVTIMEO, v); });
  }
  if (rc == 0 && level == SOL_SOCKET && name == SO_RCVLOWAT && g_enabled && fd_maybe(fd) &&
      val != nullptr && len >= sizeof(int)) {
    entry_ref e(fd);
    if (e) {
      int v;
      std::memcpy(&v, val, sizeof(v));
      e->rcvlowat = v > 0 ? static_cast<uint32_t>(v) : 0;
      if (e->st.load() == state::smc) {
        e->conn->set_rcvlowat(e->rcvlowat);
      }
    }
  }
  if (rc == 0 && level == SOL_SOCKET && name == SO_LINGER && g_enabled && fd_maybe(fd) &&
      val != nullptr && len >= sizeof(linger)) {
    entry_ref e(fd);
    if (e) {
      linger lg;
      std::memcpy(&lg, val, sizeof(lg));
      e->linger0 = lg.l_onoff != 0 && lg.l_linger == 0;
    }
  }
  return rc;
}

}  // extern "C"
