// SMC-R link groups and data path over rdma-core. See smcr.h.
//
// Threads: application threads post RDMA WRITEs and CDCs; the engine thread
// (core/engine) drains both completion queues, dispatches received CDC and
// LLC messages, and rings the connections' doorbells with the same protocol
// as the shm transport (rdma/transport.h).
#include "core/smcr.h"

#include <netinet/in.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "core/cdc.h"
#include "core/cursor.h"
#include "core/engine.h"
#include "core/llc.h"
#include "core/log.h"
#include "core/stats.h"
#include "rdma/sys.h"

namespace smc::core::smcr {

namespace v = rdma::verbs;
using rdma::doorbell_drain;
using rdma::doorbell_ring;
using rdma::sys;

namespace {

constexpr uint32_t recv_slots = 64;
// CDC and LLC v1 messages are 44 bytes, but an LLC v2 message may be up to
// 8 KiB (an ADD LINK with rkeys, a REQUEST ADD LINK with GIDs): a SEND longer
// than its receive buffer would break the QP, so every slot takes the longest.
constexpr size_t recv_slot_size = llc::max_len_v2;
constexpr uint32_t sq_depth = 256;
constexpr uint64_t signal_every = 32;
// A receive CQ left disarmed by busy-polling threads is re-armed after this
// long without any (see link_group::spinner).
constexpr uint32_t rearm_quiet_ms = 50;
constexpr uint8_t our_link_id = 1;
constexpr uint32_t max_inline = 64;  // the QP's max_inline_data (rdma/verbs)
// An idle link group is deleted after this long; the client waits longer so
// that the server, which decides about reuse, ends the group first (Linux:
// 600 s and 610 s).
constexpr int idle_server_seconds = 30;
constexpr int idle_client_seconds = 40;
// TEST LINK keepalive (Linux: sysctl smcr_testlink_time 30 s, answer within
// SMC_LLC_WAIT_TIME 2 s): a link silent that long is probed, and an
// unanswered probe fails the link.
constexpr int testlink_seconds = 30;
constexpr int testlink_answer_ms = 2000;

std::atomic<uint32_t> g_next_token{1};
std::atomic<size_t> g_live_groups{0};
std::atomic<size_t> g_live_slots{0};

int64_t mono_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}



}  // namespace

/// The RDMA side of one connection. Owned by its link group's table until
/// both ends closed (the peer may still write into the RMB before that).
struct slot {
  uint32_t token = 0;       // ours: the peer puts it into the CDCs it sends us
  uint32_t peer_token = 0;  // the peer's: we put it into ours
  std::unique_ptr<v::memory_region> rmb;      // peer writes here (remote write)
  std::unique_ptr<v::memory_region> staging;  // we write from here (local only)
  uint64_t peer_addr = 0;
  uint32_t peer_rkey = 0;
  uint32_t peer_size = 0;
  // Received from the peer (engine thread stores, application threads load).
  std::atomic<uint64_t> peer_prod{0};
  std::atomic<uint64_t> peer_cons{0};
  std::atomic<uint8_t> peer_conn_flags{0};
  std::atomic<uint8_t> peer_prod_flags{0};
  bool rx_seq_valid = false;  // under the group's rx_poll_mu_
  uint16_t rx_seq = 0;
  // Sent to the peer (under tx_mu).
  std::mutex tx_mu;
  uint16_t tx_seq = 0;
  uint64_t sent_prod = 0;
  uint64_t sent_cons = 0;
  uint64_t final_wr = 0;  // WR count of our closing CDC (signalled)
  std::atomic<uint64_t> local_cons{0};
  std::atomic<uint64_t> local_prod{0};
  std::atomic<uint8_t> local_flags{0};
  // Doorbells, as in the shm transport.
  int rx_efd = -1;
  int tx_efd = -1;
  std::atomic<uint32_t> rx_waiters{0};
  std::atomic<uint32_t> rx_rung{0};
  std::atomic<uint32_t> tx_waiters{0};
  std::atomic<uint32_t> tx_rung{0};
  std::atomic<bool> released{false};
  std::atomic<bool> peer_closed{false};

  slot() { g_live_slots.fetch_add(1); }
  ~slot() {
    if (rx_efd >= 0) {
      sys().close(rx_efd);
    }
    if (tx_efd >= 0) {
      sys().close(tx_efd);
    }
    g_live_slots.fetch_sub(1);
  }
  void wake_rx() {
    if (rx_waiters.load(std::memory_order_seq_cst) != 0 &&
        rx_rung.exchange(1, std::memory_order_seq_cst) == 0) {
      doorbell_ring(rx_efd);
    }
  }
  void wake_tx() {
    if (tx_waiters.load(std::memory_order_seq_cst) != 0 &&
        tx_rung.exchange(1, std::memory_order_seq_cst) == 0) {
      doorbell_ring(tx_efd);
    }
  }
};

class link_group : public std::enable_shared_from_this<link_group> {
 public:
  link_group(role r, const v::gid_choice& local) : role_(r), local_(local) {
    g_live_groups.fetch_add(1);
  }
  ~link_group() {
    rwatch_.reset();
    swatch_.reset();
    if (chan_ep_ >= 0) {
      sys().close(chan_ep_);
    }
    g_live_groups.fetch_sub(1);
    SMC_LOG(debug, "smcr: link group %p destroyed", static_cast<void*>(this));
  }

  bool init();
  bool post_recv(uint32_t i);
  /// Posts WRs as one unit (in order, under the post lock). `sig` forces a
  /// signalled last WR. Returns the WR count of the last one, 0 on failure.
  uint64_t post(ibv_send_wr* first, int count, bool sig);
  bool send_msg(const uint8_t* msg, size_t len, bool sig = false);
  /// Posts a CDC for the slot; `before` (nbefore WRs, e.g. the data's RDMA
  /// WRITEs) is posted ahead of it in the same call.
  bool send_cdc(slot& s, bool sig = false, uint8_t extra_prod_flags = 0,
                ibv_send_wr* before = nullptr, int nbefore = 0);
  void fail(const char* why);
  void on_recv() { take_rx_event(true); }
  // After the receive CQ's channel became readable: takes the event, re-arms
  // the CQ (unless spinners keep it quiet) and dispatches what completed.
  void take_rx_event(bool by_engine);
  // Application threads blocked in a call may wait on the channel themselves
  // (direct waiters): the thread that needs a message is woken by it, not the
  // engine first and that thread after it (a second wake-up and a doorbell
  // per message). While there are any, the engine stops watching the channel;
  // the direct waiters dispatch for everybody (doorbell sleepers included).
  int begin_direct_wait();
  void end_direct_wait(bool readable);
  int rx_channel_fd() const { return rcq_->fd(); }
  void watch_channel(bool on);  // under direct_mu_
  int poll_recv();      // under rx_poll_mu_; the completions dispatched
  int poll_recv_now();  // any thread; skips (0) if another one is dispatching
  // Threads busy-polling the receive CQ (poll_recv_now in a loop). While
  // there are any, the engine does not re-arm the CQ's notification after
  // an event: the spinners see completions first, and a wake-up of the
  // engine thread per message would only take CPU from them (and from the
  // device). When the last spinner leaves, the CQ is re-armed at once if a
  // thread sleeps on the group, else after rearm_quiet_ms without spinners.
  // `loop`: the spinner is an event loop's wait (epoll_wait, poll), whose
  // set's registrations count as sleepers for as long as they exist; it
  // comes back, and sleeps through begin_direct_wait, which arms the CQ.
  void spinner(bool on, bool loop = false);
  // Threads asleep on a doorbell of this group (arm_rx/arm_tx): while there
  // are any, the CQ is never left disarmed without a spinner.
  void sleeper(int delta);
  void ensure_armed();  // arms the CQ if it is not, then dispatches
  void schedule_rearm(uint32_t ms);
  std::atomic<int> spinners_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> rx_armed_{true};
  std::atomic<bool> rearm_pending_{false};
  std::atomic<bool> loop_quiet_{false};  // disarmed after an event loop's spin
  std::atomic<int64_t> spin_end_ms_{0};
  std::mutex rx_poll_mu_;  // one thread at a time dispatches receives
  std::atomic<bool> rx_spin_polling_{false};  // a spinner holds rx_poll_mu_
  void on_send();
  bool poll_send();
  void dispatch(const uint8_t* b, uint32_t len);
  void handle_cdc(const uint8_t* b, uint32_t len);
  void handle_llc(const uint8_t* b, uint32_t len);
  void add_slot(const std::shared_ptr<slot>& s);
  void release(const std::shared_ptr<slot>& s);
  void reap();  // frees released slots that are safe to free
  bool wait_llc(std::unique_lock<std::mutex>& lk, int timeout_ms, bool& flag);
  /// Waits (bounded) until WR number `wr` completed.
  void wait_completed(uint64_t wr, int timeout_ms);
  /// Has the engine thread dispatch every receive completion there is now,
  /// and waits (bounded) for that.
  void sync_rx(int timeout_ms);
  void schedule_idle_check();

  role role_;
  v::gid_choice local_;
  std::shared_ptr<v::device> dev_;
  std::unique_ptr<v::completion_queue> scq_;
  std::unique_ptr<v::completion_queue> rcq_;
  std::unique_ptr<v::rc_qp> qp_;
  std::unique_ptr<v::memory_region> rbuf_;
  std::unique_ptr<engine::watch> rwatch_;
  std::unique_ptr<engine::watch> swatch_;
  // The engine watches the receive channel through this epoll set, so that
  // direct waiters can take the channel out of it (and put it back) at the
  // cost of one epoll_ctl, without a round trip through the engine thread.
  int chan_ep_ = -1;
  std::mutex direct_mu_;
  int direct_waiters_ = 0;  // under direct_mu_
  clc::gid_t peer_gid_{};
  clc::peer_id_t peer_id_{};  // server: the client's peer id (CLC Proposal)
  uint32_t peer_qpn_ = 0;
  std::atomic<bool> up_{false};
  std::atomic<bool> failed_{false};

  std::mutex mu_;
  std::unordered_map<uint32_t, std::shared_ptr<slot>> slots_;
  std::vector<std::shared_ptr<slot>> lingering_;
  std::chrono::steady_clock::time_point last_active_ = std::chrono::steady_clock::now();
  bool idle_timer_ = false;  // an idle check is scheduled

  std::mutex post_mu_;
  uint64_t posted_ = 0;
  uint64_t last_signaled_ = 0;
  std::atomic<uint64_t> completed_{0};
  std::condition_variable sq_cv_;

  std::atomic<int64_t> last_rx_ms_{0};      // any receive completion
  std::atomic<uint64_t> testlink_seq_{0};   // probes sent
  std::atomic<uint64_t> testlink_ack_{0};   // probes answered
  void schedule_keepalive();

  std::mutex llc_mu_;
  std::condition_variable llc_cv_;
  bool confirm_req_seen_ = false;
  bool confirm_resp_seen_ = false;
  llc::confirm_link confirm_req_{};
};

namespace {

std::mutex g_reg_mu;
std::vector<std::shared_ptr<link_group>>& registry() {
  static auto* r = new std::vector<std::shared_ptr<link_group>>();
  return *r;
}

std::mutex g_dev_mu;
std::unordered_map<std::string, std::weak_ptr<v::device>>& device_cache() {
  static auto* cache = new std::unordered_map<std::string, std::weak_ptr<v::device>>();
  return *cache;
}
std::shared_ptr<v::device> open_device(const std::string& name) {
  std::lock_guard<std::mutex> lk(g_dev_mu);
  auto& cache = device_cache();
  if (auto d = cache[name].lock()) {
    return d;
  }
  auto d = v::device::open(name);
  cache[name] = d;
  return d;
}

// Bumped in a forked child: everything verbs made before belongs to the
// parent (see forget_after_fork()).
std::atomic<uint32_t> g_fork_gen{0};

void unregister(link_group* g) {
  std::lock_guard<std::mutex> lk(g_reg_mu);
  auto& r = registry();
  r.erase(std::remove_if(r.begin(), r.end(), [g](const auto& p) { return p.get() == g; }), r.end());
}

}  // namespace

bool link_group::init() {
  dev_ = open_device(local_.device);
  if (!dev_) {
    return false;
  }
  scq_ = v::completion_queue::create(dev_, static_cast<int>(sq_depth + 16));
  rcq_ = v::completion_queue::create(dev_, static_cast<int>(recv_slots + 16));
  if (!scq_ || !rcq_) {
    return false;
  }
  qp_ = v::rc_qp::create(dev_, *scq_, *rcq_, sq_depth, recv_slots);
  rbuf_ = v::memory_region::create(dev_, recv_slots * recv_slot_size, false);
  if (!qp_ || !rbuf_ || !qp_->to_init(local_.port)) {
    return false;
  }
  for (uint32_t i = 0; i < recv_slots; ++i) {
    if (!post_recv(i)) {
      return false;
    }
  }
  chan_ep_ = sys().epoll_create1(EPOLL_CLOEXEC);
  if (chan_ep_ < 0) {
    return false;
  }
  epoll_event ev{};
  ev.events = EPOLLIN;  // level-triggered: an event left in the channel keeps the set ready
  if (sys().epoll_ctl(chan_ep_, EPOLL_CTL_ADD, rcq_->fd(), &ev) != 0) {
    return false;
  }
  std::weak_ptr<link_group> w = weak_from_this();
  rwatch_ = engine::watch_fd(chan_ep_, [w] {
    if (auto g = w.lock()) {
      g->on_recv();
    }
  });
  swatch_ = engine::watch_fd(scq_->fd(), [w] {
    if (auto g = w.lock()) {
      g->on_send();
    }
  });
  return rwatch_ && swatch_;
}

bool link_group::post_recv(uint32_t i) {
  ibv_sge sge{rbuf_->addr() + i * recv_slot_size, static_cast<uint32_t>(recv_slot_size),
              rbuf_->lkey()};
  ibv_recv_wr wr{};
  ibv_recv_wr* bad = nullptr;
  wr.wr_id = i;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  rdma::library_calls own;  // (a software provider's post is a write() on its fd)
  return ibv_post_recv(qp_->qp(), &wr, &bad) == 0;
}

uint64_t link_group::post(ibv_send_wr* first, int count, bool sig) {
  std::unique_lock<std::mutex> lk(post_mu_);
  // Send-queue flow control: never more than sq_depth WRs outstanding.
  while (!failed_.load() && posted_ + count - completed_.load() > sq_depth - 1) {
    // Reap completions ourselves: the engine thread may be the one waiting
    // here (answering a CDC), and nobody else would.
    if (!poll_send()) {
      lk.unlock();
      fail("send completion error");
      return 0;
    }
    if (posted_ + count - completed_.load() > sq_depth - 1) {
      sq_cv_.wait_for(lk, std::chrono::milliseconds(1));
    }
  }
  if (failed_.load()) {
    return 0;
  }
  ibv_send_wr* last = first;
  for (int i = 1; i < count; ++i) {
    last = last->next;
  }
  uint64_t seq = posted_ + count;
  if (sig || seq - last_signaled_ >= signal_every) {
    last->send_flags |= IBV_SEND_SIGNALED;
    last->wr_id = seq;
    last_signaled_ = seq;
  }
  ibv_send_wr* bad = nullptr;
  rdma::library_calls own;  // (rxe's post_send is a write() on its fd)
  if (ibv_post_send(qp_->qp(), first, &bad) != 0) {
    lk.unlock();
    fail("post_send failed");
    return 0;
  }
  posted_ = seq;
  return seq;
}

bool link_group::send_msg(const uint8_t* msg, size_t len, bool sig) {
  ibv_sge sge{reinterpret_cast<uintptr_t>(msg), static_cast<uint32_t>(len), 0};
  ibv_send_wr wr{};
  wr.opcode = IBV_WR_SEND;
  wr.send_flags = IBV_SEND_INLINE | IBV_SEND_SOLICITED;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  return post(&wr, 1, sig) != 0;
}

bool link_group::send_cdc(slot& s, bool sig, uint8_t extra_prod_flags, ibv_send_wr* before,
                          int nbefore) {
  // Caller holds s.tx_mu: sequence numbers must reach the QP in order.
  if (s.peer_token == 0) {
    return false;  // the peer's buffer is not known yet (handshake in progress)
  }
  cdc::message m;
  m.seqno = ++s.tx_seq;
  m.token = s.peer_token;
  m.prod = curs_unpack(s.sent_prod);
  m.cons = curs_unpack(s.local_cons.load(std::memory_order_seq_cst));
  m.conn_flags = s.local_flags.load();
  m.prod_flags = extra_prod_flags;
  auto bytes = cdc::encode(m);
  uint64_t seq;
  {
    ibv_sge sge{reinterpret_cast<uintptr_t>(bytes.data()), static_cast<uint32_t>(bytes.size()), 0};
    ibv_send_wr wr{};
    wr.opcode = IBV_WR_SEND;
    wr.send_flags = IBV_SEND_INLINE | IBV_SEND_SOLICITED;
    wr.sg_list = &sge;
    wr.num_sge = 1;
    // The data's RDMA WRITEs and this CDC go in one post: one doorbell.
    if (nbefore > 0) {
      before[nbefore - 1].next = &wr;
      seq = post(before, nbefore + 1, sig);
    } else {
      seq = post(&wr, 1, sig);
    }
  }
  if (seq == 0) {
    return false;
  }
  s.sent_cons = curs_pack(m.cons);
  if (sig) {
    s.final_wr = seq;
  }
  return true;
}

void link_group::fail(const char* why) {
  if (failed_.exchange(true)) {
    return;
  }
  up_ = false;
  SMC_LOG(warn, "smcr: link group %p failed: %s", static_cast<void*>(this), why);
  if (qp_) {
    qp_->to_error();
  }
  std::vector<std::shared_ptr<slot>> all;
  {
    std::lock_guard<std::mutex> lk(mu_);
    for (auto& [t, s] : slots_) {
      all.push_back(s);
    }
  }
  // Every connection on the link ends with ECONNRESET.
  for (auto& s : all) {
    s->peer_conn_flags.fetch_or(cdc::conn_abnormal);
    doorbell_ring(s->rx_efd);
    doorbell_ring(s->tx_efd);
  }
  sq_cv_.notify_all();
  llc_cv_.notify_all();
  unregister(this);
}

void link_group::watch_channel(bool on) {
  epoll_event ev{};
  ev.events = on ? static_cast<uint32_t>(EPOLLIN) : 0U;
  // Put back while the channel holds an event, the set is ready at once and
  // the engine takes it.
  sys().epoll_ctl(chan_ep_, EPOLL_CTL_MOD, rcq_->fd(), &ev);
}

int link_group::begin_direct_wait() {
  if (failed_.load()) {
    return -1;
  }
  {
    std::lock_guard<std::mutex> lk(direct_mu_);
    if (direct_waiters_++ == 0) {
      watch_channel(false);
    }
  }
  // Whoever left the CQ disarmed (a spinner), the channel this thread sleeps
  // on must fire for the next completion; what completed before is
  // dispatched here.
  ensure_armed();
  return rcq_->fd();
}

void link_group::end_direct_wait(bool readable) {
  if (readable) {
    take_rx_event(false);
  }
  std::lock_guard<std::mutex> lk(direct_mu_);
  if (--direct_waiters_ == 0) {
    watch_channel(true);
  }
}

void link_group::take_rx_event(bool by_engine) {
  if (rcq_->take_event()) {
    stats::count_cq_event(by_engine);
  }
  // Disarmed first, then looked: a spinner leaving at the same time either
  // sees rx_armed_ false and re-arms, or is already gone and we re-arm.
  rx_armed_.store(false, std::memory_order_seq_cst);
  if (spinners_.load(std::memory_order_seq_cst) == 0 && !rx_armed_.exchange(true)) {
    loop_quiet_.store(false, std::memory_order_seq_cst);
    rcq_->arm();
  }
  std::lock_guard<std::mutex> lk(rx_poll_mu_);
  poll_recv();
}

void link_group::spinner(bool on, bool loop) {
  if (on) {
    spinners_.fetch_add(1, std::memory_order_seq_cst);
    return;
  }
  if (spinners_.fetch_sub(1, std::memory_order_seq_cst) != 1 ||
      rx_armed_.load(std::memory_order_seq_cst)) {
    return;
  }
  // The last spinner left a disarmed CQ. Someone asleep on this group needs
  // the notification now; otherwise the spinner most likely comes back in a
  // moment (a request-response loop), and re-arming now would only buy one
  // engine wake-up per message: the engine re-arms after a quiet spell.
  if (sleepers_.load(std::memory_order_seq_cst) > 0) {
    if (!loop) {
      ensure_armed();
      return;
    }
    loop_quiet_.store(true, std::memory_order_seq_cst);
  }
  spin_end_ms_.store(mono_ms(), std::memory_order_relaxed);
  if (!rearm_pending_.exchange(true, std::memory_order_seq_cst)) {
    schedule_rearm(rearm_quiet_ms);
  }
}

void link_group::sleeper(int delta) {
  // After an event loop's spin the CQ stays quiet for the loop's next visit
  // (spinner(false, true)); a waiter declared meanwhile (poll() declares its
  // sockets' waiters on every call) arms it only when it really goes to
  // sleep, in begin_direct_wait.
  if (sleepers_.fetch_add(delta, std::memory_order_seq_cst) + delta > 0 && delta > 0 &&
      !loop_quiet_.load(std::memory_order_seq_cst)) {
    ensure_armed();
  }
}

void link_group::ensure_armed() {
  if (rx_armed_.exchange(true, std::memory_order_seq_cst)) {
    return;
  }
  loop_quiet_.store(false, std::memory_order_seq_cst);
  rcq_->arm();
  // What completed while nobody was notified: dispatched now, waiting for
  // the lock if another thread has it (it may be past its last look at the
  // CQ; a try-lock here would leave such a completion to nobody).
  std::lock_guard<std::mutex> lk(rx_poll_mu_);
  poll_recv();
}

void link_group::schedule_rearm(uint32_t ms) {
  std::weak_ptr<link_group> w = weak_from_this();
  bool ok = engine::post(
      [w] {
        auto g = w.lock();
        if (!g) {
          return;
        }
        // Cleared first, then looked: a spinner leaving meanwhile either
        // sees it clear and schedules anew, or is seen here. While the CQ
        // stays disarmed the check repeats on its own, so spinners coming
        // and going cost the engine one wake-up per period, not per visit.
        g->rearm_pending_.store(false, std::memory_order_seq_cst);
        if (g->rx_armed_.load(std::memory_order_seq_cst)) {
          return;
        }
        int64_t quiet = mono_ms() - g->spin_end_ms_.load(std::memory_order_relaxed);
        if (g->spinners_.load(std::memory_order_seq_cst) > 0 || quiet < rearm_quiet_ms) {
          if (!g->rearm_pending_.exchange(true, std::memory_order_seq_cst)) {
            g->schedule_rearm(rearm_quiet_ms);
          }
          return;
        }
        g->ensure_armed();
      },
      ms);
  if (!ok) {
    rearm_pending_.store(false);
    ensure_armed();
  }
}

int link_group::poll_recv_now() {
  // A busy-waiting application thread dispatches what arrived itself; if
  // another thread is at it already, that one will do. Spinners call this
  // in a tight loop: a plain load first keeps several of them from bouncing
  // the mutex's cache line between their cores.
  if (rx_spin_polling_.load(std::memory_order_relaxed)) {
    return 0;
  }
  std::unique_lock<std::mutex> lk(rx_poll_mu_, std::try_to_lock);
  int done = 0;
  if (lk.owns_lock()) {
    rx_spin_polling_.store(true, std::memory_order_relaxed);
    done = poll_recv();
    rx_spin_polling_.store(false, std::memory_order_relaxed);
  }
  return done;
}

int link_group::poll_recv() {
  if (failed_.load()) {
    return 0;
  }
  ibv_wc wc[16];
  int n;
  int done = 0;
  while ((n = ibv_poll_cq(rcq_->cq(), 16, wc)) > 0) {
    done += n;
    for (int i = 0; i < n; ++i) {
      if (wc[i].status != IBV_WC_SUCCESS) {
        if (wc[i].status != IBV_WC_WR_FLUSH_ERR) {
          SMC_LOG(warn, "smcr: receive completion error %s", ibv_wc_status_str(wc[i].status));
        }
        fail("receive completion error");
        return done;
      }
      last_rx_ms_.store(mono_ms(), std::memory_order_relaxed);
      auto idx = static_cast<uint32_t>(wc[i].wr_id);
      if (idx < recv_slots) {
        dispatch(rbuf_->data() + idx * recv_slot_size, wc[i].byte_len);
        if (!failed_.load() && !post_recv(idx)) {
          fail("post_recv failed");
          return done;
        }
      }
    }
  }
  if (n < 0) {
    fail("poll_cq failed");
  }
  return done;
}

bool link_group::poll_send() {
  ibv_wc wc[16];
  int n;
  while ((n = ibv_poll_cq(scq_->cq(), 16, wc)) > 0) {
    for (int i = 0; i < n; ++i) {
      if (wc[i].status != IBV_WC_SUCCESS) {
        if (wc[i].status != IBV_WC_WR_FLUSH_ERR) {
          SMC_LOG(warn, "smcr: send completion error %s", ibv_wc_status_str(wc[i].status));
        }
        return false;
      }
      // Signalled WRs carry their running count: all before them are done too.
      uint64_t done = wc[i].wr_id;
      uint64_t cur = completed_.load();
      while (done > cur && !completed_.compare_exchange_weak(cur, done)) {
      }
    }
  }
  return n >= 0;
}

void link_group::on_send() {
  scq_->take_event();
  scq_->arm();
  if (!poll_send()) {
    fail("send completion error");
    return;
  }
  sq_cv_.notify_all();
  reap();
}

void link_group::dispatch(const uint8_t* b, uint32_t len) {
  if (len < 1) {
    return;
  }
  switch (llc::classify(b[0])) {
    case llc::kind::cdc:
      handle_cdc(b, len);
      break;
    case llc::kind::llc_v1:
    case llc::kind::llc_v2:
      handle_llc(b, len);
      break;
    case llc::kind::unknown:
      break;  // as Linux: silently dropped
  }
}

void link_group::handle_cdc(const uint8_t* b, uint32_t len) {
  cdc::message m;
  if (cdc::decode({b, len}, m) != cdc::error::ok) {
    return;
  }
  std::shared_ptr<slot> s;
  {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = slots_.find(m.token);
    if (it == slots_.end()) {
      return;  // a connection already gone: nothing to deliver
    }
    s = it->second;
  }
  if (s->rx_seq_valid && cdc::seq_older(m.seqno, s->rx_seq)) {
    return;  // stale duplicate
  }
  s->rx_seq_valid = true;
  s->rx_seq = m.seqno;
  // The connection engine validates these cursors before any use.
  s->peer_cons.store(curs_pack(m.cons), std::memory_order_release);
  s->peer_prod.store(curs_pack(m.prod), std::memory_order_release);
  s->peer_prod_flags.store(m.prod_flags, std::memory_order_seq_cst);
  if (m.conn_flags != 0) {
    s->peer_conn_flags.fetch_or(m.conn_flags);
  }
  s->wake_rx();
  s->wake_tx();
  if ((m.prod_flags & (cdc::prod_write_blocked | cdc::prod_cons_update_req)) != 0) {
    // The peer waits for room: tell it what we consumed, if anything new.
    std::lock_guard<std::mutex> lk(s->tx_mu);
    if (s->local_cons.load(std::memory_order_seq_cst) != s->sent_cons &&
        (s->local_flags.load() & (cdc::conn_closed | cdc::conn_abnormal)) == 0) {
      send_cdc(*s);
    }
  }
  if ((m.conn_flags & (cdc::conn_closed | cdc::conn_abnormal)) != 0) {
    s->peer_closed = true;
    reap();
  }
}

void link_group::handle_llc(const uint8_t* b, uint32_t len) {
  llc::header h;
  if (llc::peek({b, len}, h) != llc::error::ok) {
    SMC_LOG(debug, "smcr: link group %p: malformed LLC message (0x%02x, %u bytes) dropped",
            static_cast<void*>(this), b[0], len);
    return;
  }
  SMC_LOG(trace, "smcr: link group %p: LLC type %u v%u length %u flags 0x%02x",
          static_cast<void*>(this), h.type, h.version, h.length, h.flags);
  // Linux answers several requests by echoing the first 44 bytes with the
  // response flag: a single-link group does the same where nothing is to do.
  auto echo = [&](uint8_t add_flags, size_t clear_from = 0, size_t clear_len = 0) {
    std::array<uint8_t, llc::msg_len> out;
    std::memcpy(out.data(), b, out.size());
    out[1] = static_cast<uint8_t>(llc::msg_len);  // v1 length; v2's 16-bit length, low byte
    if (h.version >= 2) {
      out[2] = 0;
    }
    out[3] |= add_flags;
    if (clear_len > 0) {
      std::memset(out.data() + clear_from, 0, clear_len);
    }
    send_msg(out.data(), out.size());
  };
  switch (h.type) {
    case llc::type_confirm_link: {
      llc::confirm_link m;
      if (llc::decode({b, len}, m) != llc::error::ok) {
        return;
      }
      std::lock_guard<std::mutex> lk(llc_mu_);
      if (llc::is_response(m.flags)) {
        confirm_resp_seen_ = true;
      } else {
        confirm_req_ = m;
        confirm_req_seen_ = true;
      }
      llc_cv_.notify_all();
      break;
    }
    case llc::type_test_link: {
      llc::test_link m;
      if (llc::decode({b, len}, m) != llc::error::ok) {
        break;
      }
      if (llc::is_response(m.flags)) {
        uint64_t seq = 0;
        std::memcpy(&seq, m.user_data.data(), sizeof(seq));  // our own bytes, echoed
        uint64_t cur = testlink_ack_.load();
        while (seq > cur && seq <= testlink_seq_.load() &&
               !testlink_ack_.compare_exchange_weak(cur, seq)) {
        }
      } else {
        m.flags |= llc::flag_response;
        auto out = llc::encode(m);
        send_msg(out.data(), out.size());
      }
      break;
    }
    case llc::type_delete_link: {
      llc::delete_link m;
      if (llc::decode({b, len}, m) == llc::error::ok) {
        fail("peer deleted the link");
      }
      break;
    }
    case llc::type_add_link: {
      // Single-link groups: decline every additional link. From the header
      // alone: a v2 request carries an rkey extension we need not read.
      if (!llc::is_response(h.flags)) {
        llc::add_link r;
        r.version = h.version;
        r.flags = llc::flag_response | llc::flag_add_link_reject;
        r.reject_reason = llc::reject_no_alt_path;
        auto out = llc::encode(r);
        send_msg(out.data(), out.size());
      }
      break;
    }
    case llc::type_confirm_rkey: {
      // The peer announces an RMB's rkeys for every link of the group. With
      // one link the rkey from the CLC handshake is all we use: confirm.
      llc::confirm_rkey m;
      if (!llc::is_response(h.flags) && llc::decode({b, len}, m) == llc::error::ok) {
        echo(llc::flag_response);
      }
      break;
    }
    case llc::type_delete_rkey: {
      // The peer frees an RMB (Linux waits for this answer): nothing of ours
      // refers to its rkeys beyond the connection, which is gone. No errors.
      // A v2 request may list more rkeys than 44 bytes hold; the answer is
      // 44 bytes in any case, as Linux sends it.
      if (!llc::is_response(h.flags)) {
        echo(llc::flag_response, 5, 1);  // byte 5: the error mask / count
      }
      break;
    }
    default:
      break;
  }
}

bool link_group::wait_llc(std::unique_lock<std::mutex>& lk, int timeout_ms, bool& flag) {
  return llc_cv_.wait_for(lk, std::chrono::milliseconds(timeout_ms),
                          [&] { return flag || failed_.load(); }) &&
         flag;
}

void link_group::wait_completed(uint64_t wr, int timeout_ms) {
  if (wr == 0 || engine::on_engine_thread()) {
    return;
  }
  std::unique_lock<std::mutex> lk(post_mu_);
  sq_cv_.wait_for(lk, std::chrono::milliseconds(timeout_ms),
                  [&] { return completed_.load() >= wr || failed_.load(); });
}

void link_group::sync_rx(int timeout_ms) {
  if (failed_.load() || engine::on_engine_thread()) {
    return;
  }
  auto done = std::make_shared<std::pair<std::mutex, std::condition_variable>>();
  auto flag = std::make_shared<bool>(false);
  std::weak_ptr<link_group> w = weak_from_this();
  bool posted = engine::post([w, done, flag] {
    if (auto g = w.lock()) {
      std::lock_guard<std::mutex> rl(g->rx_poll_mu_);
      g->poll_recv();
    }
    std::lock_guard<std::mutex> lk(done->first);
    *flag = true;
    done->second.notify_all();
  });
  if (!posted) {
    return;
  }
  std::unique_lock<std::mutex> lk(done->first);
  done->second.wait_for(lk, std::chrono::milliseconds(timeout_ms), [&] { return *flag; });
}

void link_group::add_slot(const std::shared_ptr<slot>& s) {
  std::lock_guard<std::mutex> lk(mu_);
  slots_[s->token] = s;
  last_active_ = std::chrono::steady_clock::now();
}

void link_group::release(const std::shared_ptr<slot>& s) {
  s->released = true;
  {
    std::lock_guard<std::mutex> lk(mu_);
    lingering_.push_back(s);
  }
  reap();
}

void link_group::reap() {
  bool now_idle = false;
  {
    std::lock_guard<std::mutex> lk(mu_);
    const bool dead = failed_.load();
    const uint64_t done = completed_.load();
    auto safe = [&](const std::shared_ptr<slot>& s) {
      // The peer wrote its last byte before its closing CDC, and our last
      // WR (the signalled closing CDC) completed: the buffers are idle.
      return dead || (s->peer_closed.load() && done >= s->final_wr);
    };
    for (auto it = lingering_.begin(); it != lingering_.end();) {
      if (safe(*it)) {
        slots_.erase((*it)->token);
        it = lingering_.erase(it);
      } else {
        ++it;
      }
    }
    now_idle = slots_.empty() && !idle_timer_;
    if (slots_.empty()) {
      last_active_ = std::chrono::steady_clock::now();
    }
    if (now_idle) {
      idle_timer_ = true;
    }
  }
  if (now_idle && !failed_.load()) {
    schedule_idle_check();
  }
}

void link_group::schedule_idle_check() {
  const int idle_s = role_ == role::server ? idle_server_seconds : idle_client_seconds;
  std::weak_ptr<link_group> w = weak_from_this();
  uint32_t delay_ms = static_cast<uint32_t>(idle_s) * 1000;
  {
    std::lock_guard<std::mutex> lk(mu_);
    auto since = std::chrono::steady_clock::now() - last_active_;
    auto left = std::chrono::seconds(idle_s) - since;
    delay_ms = static_cast<uint32_t>(
        std::max<int64_t>(10, std::chrono::duration_cast<std::chrono::milliseconds>(left).count()));
  }
  bool posted = engine::post(
      [w, idle_s] {
        auto g = w.lock();
        if (!g || g->failed_.load()) {
          return;
        }
        bool again = false;
        {
          std::lock_guard<std::mutex> lk(g->mu_);
          if (!g->slots_.empty()) {
            g->idle_timer_ = false;  // in use again: the next idle moment re-arms
            return;
          }
          if (std::chrono::steady_clock::now() - g->last_active_ < std::chrono::seconds(idle_s)) {
            // Used in the meantime: look again when the full idle time passed
            // (after the lock is released: scheduling takes it too).
            g->idle_timer_ = true;
            again = true;
          } else {
            g->up_ = false;  // no new connection may join it from here on
          }
        }
        if (again) {
          g->schedule_idle_check();
          return;
        }
        // Idle long enough: end the group in order (DELETE LINK, all links, orderly).
        llc::delete_link d;
        d.version = 2;
        d.flags = llc::flag_delete_all | llc::flag_delete_orderly;
        d.reason = llc::del_prog_init_term;
        auto out = llc::encode(d);
        g->send_msg(out.data(), out.size(), true);
        g->fail("idle");
      },
      delay_ms);
  if (!posted) {
    std::lock_guard<std::mutex> lk(mu_);
    idle_timer_ = false;
  }
}

void link_group::schedule_keepalive() {
  std::weak_ptr<link_group> w = weak_from_this();
  engine::post(
      [w] {
        auto g = w.lock();
        if (!g || g->failed_.load()) {
          return;
        }
        if (mono_ms() - g->last_rx_ms_.load() < testlink_seconds * 1000) {
          g->schedule_keepalive();  // traffic proves the link
          return;
        }
        llc::test_link t;
        t.version = 2;
        uint64_t seq = g->testlink_seq_.fetch_add(1) + 1;
        std::memcpy(t.user_data.data(), &seq, sizeof(seq));
        auto out = llc::encode(t);
        g->send_msg(out.data(), out.size());
        engine::post(
            [w, seq] {
              auto g2 = w.lock();
              if (!g2 || g2->failed_.load()) {
                return;
              }
              if (g2->testlink_ack_.load() < seq) {
                g2->fail("TEST LINK unanswered");
                return;
              }
              g2->schedule_keepalive();
            },
            testlink_answer_ms);
      },
      testlink_seconds * 1000);
}

// ---------------------------------------------------------------------------

namespace {

// Every usable RoCE v2 GID of the host, scanned at most every 30 s: opening
// devices is slow (milliseconds on hardware, far more under emulation) and
// must not sit between the TCP handshake and the Proposal.
struct gid_table {
  std::mutex mu;
  std::vector<v::gid_choice> gids;
  std::vector<std::string> devices;
  std::chrono::steady_clock::time_point at{};
  bool valid = false;
};

gid_table& table() {
  static auto* t = new gid_table();
  return *t;
}

void refresh(gid_table& t, const std::vector<std::string>& devices) {
  const auto now = std::chrono::steady_clock::now();
  if (t.valid && t.devices == devices && now - t.at < std::chrono::seconds(30)) {
    return;
  }
  t.gids = v::all_gids(devices);
  t.devices = devices;
  t.at = now;
  t.valid = true;
}

}  // namespace

void warm_up(const std::vector<std::string>& devices) {
  gid_table& t = table();
  std::lock_guard<std::mutex> lk(t.mu);
  refresh(t, devices);
}

std::optional<v::gid_choice> local_gid(int fd, const std::vector<std::string>& devices) {
  gid_table& t = table();
  std::lock_guard<std::mutex> lk(t.mu);
  refresh(t, devices);
  if (t.gids.empty()) {
    return std::nullopt;  // no RoCE GID at all: no need for our address
  }
  sockaddr_storage ss{};
  socklen_t sl = sizeof(ss);
  std::array<uint8_t, 16> want{};
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &sl) != 0 ||
      !v::ip_to_gid(reinterpret_cast<sockaddr*>(&ss), sl, want)) {
    return std::nullopt;
  }
  for (const auto& g : t.gids) {
    if (g.gid == want) {
      return g;
    }
  }
  return std::nullopt;
}

namespace {
std::atomic<uint16_t> g_instance{0};  // this process's part of the SMC-R peer id
}  // namespace

clc::peer_id_t system_id(const v::gid_choice& g) {
  auto& rnd = g_instance;
  uint16_t r = rnd.load();
  while (r == 0) {
    uint16_t x = 0;
    // Never block (early at boot the pool may not be ready): this only has
    // to differ between processes.
    if (getrandom(&x, sizeof(x), GRND_NONBLOCK) != sizeof(x)) {
      x = static_cast<uint16_t>(getpid());
    }
    uint16_t expected = 0;
    rnd.compare_exchange_strong(expected, x == 0 ? 1 : x);
    r = rnd.load();
  }
  clc::peer_id_t id{};
  id[0] = static_cast<uint8_t>(r >> 8);
  id[1] = static_cast<uint8_t>(r);
  std::memcpy(&id[2], g.mac.data(), 6);
  return id;
}

namespace {

std::shared_ptr<slot> make_slot(const std::shared_ptr<link_group>& g, uint32_t rmb_size) {
  auto s = std::make_shared<slot>();
  s->token = g_next_token.fetch_add(1);
  if (s->token == 0) {
    s->token = g_next_token.fetch_add(1);
  }
  s->rmb = v::memory_region::create(g->dev_, rmb_size, true);
  // Numbered out of the application's way, as the transports' fds (rdma/sys.h).
  s->rx_efd = rdma::place_fd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  s->tx_efd = rdma::place_fd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!s->rmb || s->rx_efd < 0 || s->tx_efd < 0) {
    return nullptr;
  }
  return s;
}

bool set_peer_buffer(const std::shared_ptr<link_group>& g, slot& s, const clc::accept_confirm_r& m) {
  uint32_t size = rmb_code_to_size(m.rmbe_size_code);
  if (m.rmbe_alert_token == 0 || m.rmbe_idx == 0 || size > (512u << 20)) {
    return false;
  }
  s.peer_token = m.rmbe_alert_token;
  s.peer_rkey = m.rmb_rkey;
  // An RMB element index > 1 means several elements share one RMB.
  s.peer_addr = m.rmb_dma_addr + static_cast<uint64_t>(m.rmbe_idx - 1) * size;
  s.peer_size = size;
  s.staging = v::memory_region::create(g->dev_, size, false);
  return s.staging != nullptr;
}

std::shared_ptr<link_group> new_group(role r, const v::gid_choice& local) {
  auto g = std::make_shared<link_group>(r, local);
  if (!g->init()) {
    SMC_LOG(info, "smcr: cannot set up a link on %s: %s", local.device.c_str(), std::strerror(errno));
    return nullptr;
  }
  return g;
}

ibv_mtu clamp_mtu(uint8_t peer, ibv_mtu own) {
  uint8_t m = std::min<uint8_t>(peer, static_cast<uint8_t>(own));
  return static_cast<ibv_mtu>(std::clamp<uint8_t>(m, IBV_MTU_256, IBV_MTU_4096));
}

void fill_hostname(std::array<uint8_t, 32>& out) {
  out.fill(' ');
  utsname u{};
  if (uname(&u) == 0) {
    size_t n = std::min(std::strlen(u.nodename), out.size());
    std::memcpy(out.data(), u.nodename, n);
  }
}

}  // namespace

std::optional<pending> server_prepare(const v::gid_choice& local, const clc::peer_id_t& peer_id,
                                      const clc::gid_t& peer_gid, uint32_t rmb_size) {
  pending p;
  {
    std::lock_guard<std::mutex> lk(g_reg_mu);
    for (auto& g : registry()) {
      // Two processes of one host share its GID but not a link group: the
      // peer id tells them apart (each process of ours draws its own).
      if (g->role_ == role::server && g->up_.load() && g->peer_gid_ == peer_gid &&
          g->peer_id_ == peer_id && g->local_.device == local.device &&
          g->local_.gid == local.gid) {
        p.lgr = g;
        break;
      }
    }
  }
  if (!p.lgr) {
    p.lgr = new_group(role::server, local);
    if (!p.lgr) {
      return std::nullopt;
    }
    p.lgr->peer_gid_ = peer_gid;
    p.lgr->peer_id_ = peer_id;
    p.first_contact = true;
  }
  p.s = make_slot(p.lgr, rmb_size);
  if (!p.s) {
    return std::nullopt;
  }
  // Known to the group before our Accept leaves: on a reused link the client
  // may send data (and its CDC) right after its Confirm, before we read it.
  p.lgr->add_slot(p.s);
  return p;
}

void fill_accept_confirm(const pending& p, clc::accept_confirm_r& m) {
  const link_group& g = *p.lgr;
  m.version = 2;
  m.first_contact = p.first_contact;
  m.peer_id = system_id(g.local_);
  m.gid = g.local_.gid;
  m.mac = g.local_.mac;
  m.qpn = g.qp_->qpn();
  m.rmb_rkey = p.s->rmb->rkey();
  m.rmbe_idx = 1;
  m.rmbe_alert_token = p.s->token;
  m.rmbe_size_code = rmb_size_to_code(static_cast<uint32_t>(p.s->rmb->size()));
  m.qp_mtu = static_cast<uint8_t>(g.local_.active_mtu);
  m.rmb_dma_addr = p.s->rmb->addr();
  m.psn = g.qp_->psn();
  if (p.first_contact) {
    m.v2_direct = true;
    m.os_type = 2;
    m.fce_release = 1;
    fill_hostname(m.hostname);
    m.max_conns = 255;
    m.max_links = 1;
    if (m.type == clc::msg_type::confirm) {
      m.gid_list = {g.local_.gid};
    }
  }
}

bool server_complete(pending& p, const clc::accept_confirm_r& c, int timeout_ms) {
  link_group& g = *p.lgr;
  if (!set_peer_buffer(p.lgr, *p.s, c)) {
    return false;
  }
  if (p.first_contact) {
    v::peer_qp peer;
    peer.qpn = c.qpn;
    peer.psn = c.psn;
    peer.gid = c.gid;
    peer.mtu = clamp_mtu(c.qp_mtu, g.local_.active_mtu);
    g.peer_qpn_ = c.qpn;
    if (!g.qp_->to_rtr(g.local_.port, g.local_.gid_index, peer) || !g.qp_->to_rts()) {
      SMC_LOG(info, "smcr: QP transition failed: %s", std::strerror(errno));
      return false;
    }
    // CONFIRM LINK: the first message on the new link proves both directions.
    llc::confirm_link req;
    req.version = 2;
    req.flags = llc::flag_no_rmbe_eyec;
    req.sender_mac = g.local_.mac;
    req.sender_gid = g.local_.gid;
    req.sender_qpn = g.qp_->qpn();
    req.link_num = our_link_id;
    req.link_uid = static_cast<uint32_t>(reinterpret_cast<uintptr_t>(&g) >> 4);
    req.max_links = 1;
    req.max_conns = 255;
    auto out = llc::encode(req);
    std::unique_lock<std::mutex> lk(g.llc_mu_);
    if (!g.send_msg(out.data(), out.size()) || !g.wait_llc(lk, timeout_ms, g.confirm_resp_seen_)) {
      lk.unlock();
      g.fail("no CONFIRM LINK response");
      return false;
    }
    lk.unlock();
    g.up_ = true;
    g.last_rx_ms_ = mono_ms();
    g.schedule_keepalive();
    std::lock_guard<std::mutex> rl(g_reg_mu);
    registry().push_back(p.lgr);
    SMC_LOG(info, "smcr: link up on %s (server), qpn %u -> %u", g.local_.device.c_str(),
            g.qp_->qpn(), c.qpn);
    return true;
  }
  return !g.failed_.load();
}

std::optional<pending> client_prepare(const v::gid_choice& local, const clc::accept_confirm_r& a,
                                      uint32_t rmb_size, bool* sync_error) {
  *sync_error = false;
  pending p;
  if (a.first_contact) {
    p.lgr = new_group(role::client, local);
    if (!p.lgr) {
      return std::nullopt;
    }
    p.first_contact = true;
    link_group& g = *p.lgr;
    g.peer_gid_ = a.gid;
    g.peer_qpn_ = a.qpn;
    v::peer_qp peer;
    peer.qpn = a.qpn;
    peer.psn = a.psn;
    peer.gid = a.gid;
    peer.mtu = clamp_mtu(a.qp_mtu, local.active_mtu);
    if (!g.qp_->to_rtr(local.port, local.gid_index, peer)) {
      SMC_LOG(info, "smcr: QP to RTR failed: %s", std::strerror(errno));
      return std::nullopt;
    }
  } else {
    std::lock_guard<std::mutex> lk(g_reg_mu);
    for (auto& g : registry()) {
      if (g->role_ == role::client && g->up_.load() && g->peer_gid_ == a.gid &&
          g->peer_qpn_ == a.qpn && g->local_.gid == local.gid) {
        p.lgr = g;
        break;
      }
    }
    if (!p.lgr) {
      *sync_error = true;
      return std::nullopt;
    }
  }
  p.s = make_slot(p.lgr, rmb_size);
  if (!p.s || !set_peer_buffer(p.lgr, *p.s, a)) {
    return std::nullopt;
  }
  p.lgr->add_slot(p.s);
  return p;
}

bool client_complete(pending& p, int timeout_ms) {
  if (!p.first_contact) {
    return !p.lgr->failed_.load();
  }
  link_group& g = *p.lgr;
  std::unique_lock<std::mutex> lk(g.llc_mu_);
  if (!g.wait_llc(lk, timeout_ms, g.confirm_req_seen_)) {
    lk.unlock();
    g.fail("no CONFIRM LINK request");
    return false;
  }
  llc::confirm_link req = g.confirm_req_;
  lk.unlock();
  if (req.sender_qpn != g.peer_qpn_ || !g.qp_->to_rts()) {
    g.fail("CONFIRM LINK does not match the Accept");
    return false;
  }
  llc::confirm_link resp;
  resp.version = req.version;
  resp.flags = llc::flag_response | llc::flag_no_rmbe_eyec;
  resp.sender_mac = g.local_.mac;
  resp.sender_gid = g.local_.gid;
  resp.sender_qpn = g.qp_->qpn();
  resp.link_num = req.link_num;
  resp.link_uid = req.link_uid;
  resp.max_links = req.max_links;
  resp.max_conns = req.max_conns;
  auto out = llc::encode(resp);
  if (!g.send_msg(out.data(), out.size())) {
    return false;
  }
  g.up_ = true;
  g.last_rx_ms_ = mono_ms();
  g.schedule_keepalive();
  std::lock_guard<std::mutex> rl(g_reg_mu);
  registry().push_back(p.lgr);
  SMC_LOG(info, "smcr: link up on %s (client), qpn %u -> %u", g.local_.device.c_str(),
          g.qp_->qpn(), g.peer_qpn_);
  return true;
}

namespace {

// A link group's receive channel as an event loop's wait serves it
// (data_path::channel): inert in a forked child, as the connections are.
class group_channel final : public rdma::direct_channel {
 public:
  explicit group_channel(std::shared_ptr<link_group> g)
      : g_(std::move(g)), fd_(g_->rx_channel_fd()) {}
  ~group_channel() override {
    if (foreign()) {
      // Inherited across fork: never the last owner of the parent's group
      // (see smcr_path).
      new (std::nothrow) std::shared_ptr<link_group>(std::move(g_));
    }
  }
  int fd() const override { return fd_; }
  int begin() override { return foreign() ? -1 : g_->begin_direct_wait(); }
  void end(bool readable) override { g_->end_direct_wait(readable); }
  int poll() override { return foreign() ? 0 : g_->poll_recv_now(); }
  void arm() override {
    if (!foreign()) {
      g_->ensure_armed();
    }
  }
  void spin(bool on) override {
    if (!foreign()) {
      g_->spinner(on, true);
    }
  }

 private:
  bool foreign() const { return gen_ != g_fork_gen.load(std::memory_order_relaxed); }
  const uint32_t gen_ = g_fork_gen.load(std::memory_order_relaxed);
  std::shared_ptr<link_group> g_;
  const int fd_;
};

class smcr_path final : public rdma::data_path {
 public:
  explicit smcr_path(pending&& p) : g_(std::move(p.lgr)), s_(std::move(p.s)) {
    update_limit_ = std::max<uint32_t>(static_cast<uint32_t>(s_->rmb->size()) / 10, 2048);
  }
  ~smcr_path() override {
    if (foreign()) {
      // Inherited across fork: the buffers and the QP are the parent's.
      // Releasing them here would deregister them under the parent's feet.
      new (std::nothrow) std::shared_ptr<link_group>(std::move(g_));
      new (std::nothrow) std::shared_ptr<slot>(std::move(s_));
      return;
    }
    g_->release(s_);
  }

  rdma::kind transport() const override { return rdma::kind::rdma; }

  uint32_t rx_size() const override { return static_cast<uint32_t>(s_->rmb->size()); }
  const uint8_t* rx_data() const override { return s_->rmb->data(); }
  uint64_t peer_prod() const override {
    // In a forked child: nothing more to read (the RMB may not even be mapped
    // there: rdma-core keeps registered memory out of children).
    return foreign() ? s_->local_cons.load() : s_->peer_prod.load(std::memory_order_acquire);
  }
  uint8_t peer_conn_flags() const override {
    // In a forked child the connection is unusable (its QP is the parent's):
    // it reads as reset by the peer, and nothing is ever posted for it.
    return foreign() ? cdc::conn_abnormal : s_->peer_conn_flags.load();
  }
  void publish_cons(uint64_t cons) override {
    if (foreign()) {
      return;
    }
    slot& s = *s_;
    s.local_cons.store(cons, std::memory_order_seq_cst);
    // RFC 7609's window update rule, as Linux applies it: tell the peer when
    // we consumed a tenth of the ring, or at once when it waits for room.
    bool blocked = (s.peer_prod_flags.load(std::memory_order_seq_cst) &
                    (cdc::prod_write_blocked | cdc::prod_cons_update_req)) != 0;
    uint32_t size = rx_size();
    std::lock_guard<std::mutex> lk(s.tx_mu);
    uint32_t unsent = curs_diff(size, curs_unpack(s.sent_cons), curs_unpack(cons));
    if (unsent > 0 && (blocked || unsent >= update_limit_)) {
      g_->send_cdc(s);
    }
  }

  uint32_t tx_size() const override { return s_->peer_size; }
  uint64_t peer_cons() const override { return s_->peer_cons.load(std::memory_order_acquire); }
  void put(uint32_t off, const void* src, size_t n) override {
    std::memcpy(s_->staging->data() + off, src, n);
  }
  void publish_prod(uint64_t prod, uint8_t conn_flags) override {
    if (foreign()) {
      return;
    }
    slot& s = *s_;
    std::lock_guard<std::mutex> lk(s.tx_mu);
    const uint32_t size = s.peer_size;
    cursor from = curs_unpack(s.sent_prod);
    cursor to = curs_unpack(prod);
    uint32_t n = curs_diff(size, from, to);
    // One RDMA WRITE per contiguous piece (two across the ring's end), then
    // the CDC, all in one post.
    ibv_sge sge[2];
    ibv_send_wr wr[2]{};
    int k = 0;
    {
      uint32_t off = from.count;
      while (n > 0 && k < 2) {
        uint32_t len = std::min(n, size - off);
        sge[k] = {s.staging->addr() + off, len, s.staging->lkey()};
        wr[k].opcode = IBV_WR_RDMA_WRITE;
        if (len <= max_inline) {
          wr[k].send_flags = IBV_SEND_INLINE;  // small: copied at post, no DMA read
        }
        wr[k].sg_list = &sge[k];
        wr[k].num_sge = 1;
        wr[k].wr.rdma.remote_addr = s.peer_addr + off;
        wr[k].wr.rdma.rkey = s.peer_rkey;
        if (k > 0) {
          wr[k - 1].next = &wr[k];
        }
        n -= len;
        off = (off + len) % size;
        ++k;
      }
    }
    s.sent_prod = prod;
    s.local_flags.fetch_or(conn_flags);  // flags only accumulate (see the shm transport)
    // Write-blocked: the ring is full now, so ask for the consumer cursor.
    uint32_t space = size - curs_diff(size, curs_unpack(s.peer_cons.load()), to);
    uint8_t pf = space == 0 ? cdc::prod_write_blocked : 0;
    bool closing = (conn_flags & (cdc::conn_closed | cdc::conn_abnormal)) != 0;
    g_->send_cdc(s, closing, pf, wr, k);  // a failed link: the connection sees ECONNRESET
  }

  int rx_fd() const override { return s_->rx_efd; }
  int tx_fd() const override { return s_->tx_efd; }
  void arm_rx(int delta) override {
    s_->rx_waiters.fetch_add(static_cast<uint32_t>(delta), std::memory_order_seq_cst);
    if (!foreign()) {
      g_->sleeper(delta);
    }
  }
  void arm_tx(int delta) override {
    s_->tx_waiters.fetch_add(static_cast<uint32_t>(delta), std::memory_order_seq_cst);
    if (!foreign()) {
      g_->sleeper(delta);
    }
  }
  uint32_t rx_waiters() const override { return s_->rx_waiters.load(std::memory_order_seq_cst); }
  uint32_t tx_waiters() const override { return s_->tx_waiters.load(std::memory_order_seq_cst); }
  // Our own eventfds (the peer rings them only through the engine): read
  // first, then clear (see the shm transport).
  bool drain_rx() override {
    doorbell_drain(s_->rx_efd);
    s_->rx_rung.store(0, std::memory_order_seq_cst);
    return true;
  }
  bool drain_tx() override {
    doorbell_drain(s_->tx_efd);
    s_->tx_rung.store(0, std::memory_order_seq_cst);
    return true;
  }
  void kick_rx() override { doorbell_ring(s_->rx_efd); }
  void kick_tx() override { doorbell_ring(s_->tx_efd); }

  void settle_close() override {
    // The closing CDC was posted signalled: its completion means the peer's
    // adapter has it, before our TCP FIN can leave.
    if (!foreign()) {
      g_->wait_completed(s_->final_wr, 1000);
    }
  }
  void sync_rx() override {
    if (!foreign()) {
      g_->sync_rx(500);
    }
  }
  bool poll_progress() override {
    if (foreign()) {
      return false;
    }
    g_->poll_recv_now();
    return true;
  }
  void spin(bool on) override {
    if (!foreign()) {
      g_->spinner(on);
    }
  }
  int begin_direct_wait() override { return foreign() ? -1 : g_->begin_direct_wait(); }
  void end_direct_wait(bool readable) override { g_->end_direct_wait(readable); }
  std::shared_ptr<rdma::direct_channel> channel() override {
    return foreign() ? nullptr : std::make_shared<group_channel>(g_);
  }

 private:
  bool foreign() const { return gen_ != g_fork_gen.load(std::memory_order_relaxed); }

  const uint32_t gen_ = g_fork_gen.load(std::memory_order_relaxed);
  std::shared_ptr<link_group> g_;
  std::shared_ptr<slot> s_;
  uint32_t update_limit_ = 2048;
};

}  // namespace

void out_of_sync(pending& p) {
  if (p.lgr) {
    p.lgr->fail("the peer declared the link group out of sync");
  }
  abandon(p);
}

void abandon(pending& p) {
  if (p.lgr && p.s) {
    // Nothing was ever written into its buffers: drop it at once.
    std::lock_guard<std::mutex> lk(p.lgr->mu_);
    p.lgr->slots_.erase(p.s->token);
  }
  p.s.reset();
  p.lgr.reset();
}

std::unique_ptr<rdma::data_path> make_path(pending&& p) {
  return std::make_unique<smcr_path>(std::move(p));
}

counts live() { return {g_live_groups.load(), g_live_slots.load()}; }

void forget_after_fork() {
  // The child shares the parent's verbs context (the same uverbs file), so
  // destroying or using any QP, CQ or MR made before the fork would act on
  // the parent's. The child leaks them all, never touches them again, and
  // builds its own link groups, under its own peer id, when it needs one.
  g_fork_gen.fetch_add(1, std::memory_order_relaxed);
  new (&g_reg_mu) std::mutex();
  new (&g_dev_mu) std::mutex();
  new (std::nothrow) std::vector<std::shared_ptr<link_group>>(std::move(registry()));
  registry().clear();
  device_cache().clear();  // weak references only; the devices stay leaked with their groups
  g_instance.store(0);
}

}  // namespace smc::core::smcr
