// SMC connections that move to another process with their socket. See
// handoff.h.
//
// Wire format on the handoff listener (SOCK_SEQPACKET, one message each way,
// host byte order: both ends are this library on one host):
//   request  = hof_msg{magic, version, status 0, sizes 0} + SCM_RIGHTS [the TCP socket]
//   response = hof_msg{magic, version, status, rx_size, tx_size}
//              + SCM_RIGHTS [the sender's TCP socket, then on status ok the
//                            connection's fds (rdma::data_path::export_fds)]
#include "core/handoff.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <vector>

#include "core/conn.h"
#include "core/engine.h"
#include "core/log.h"
#include "core/stats.h"
#include "rdma/shm/shm_transport.h"
#include "rdma/sys.h"

namespace smc::core::handoff {

namespace {

using rdma::sys;

constexpr uint64_t hof_magic = 0x534d432d484f4631ULL;  // "SMC-HOF1"
constexpr uint32_t hof_version = 1;
constexpr int take_wait_ms = 2000;      // a receiver waits this long for the sender
constexpr int client_wait_ms = 2000;    // the sender keeps a silent client this long
constexpr size_t max_clients = 32;      // requests the sender serves at once
constexpr size_t max_fds = 1 + rdma::shm::export_fd_count;
static_assert(max_fds <= rdma::max_passed_fds);

enum status : uint32_t { st_ok = 0, st_no_offer = 1, st_bad_request = 2 };

struct hof_msg {
  uint64_t magic;
  uint32_t version;
  uint32_t status;
  uint32_t rx_size;
  uint32_t tx_size;
};

struct sock_id {
  dev_t dev = 0;
  ino_t ino = 0;
  bool operator==(const sock_id& o) const { return dev == o.dev && ino == o.ino; }
};

bool identify(int fd, sock_id& out) {
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) {
    return false;
  }
  out = {st.st_dev, st.st_ino};
  return true;
}

void listener_name(sockaddr_un& sa, socklen_t& len, uint32_t id) {
  std::memset(&sa, 0, sizeof(sa));
  sa.sun_family = AF_UNIX;
  // Abstract (leading NUL): gone with the socket, nothing to clean up.
  int n = std::snprintf(sa.sun_path + 1, sizeof(sa.sun_path) - 1, "smc-preload/handoff/%06x", id);
  len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + n);
}

bool send_msg(int sock, const hof_msg& m, const int* fds, size_t nfds) {
  return rdma::send_with_fds(sock, &m, sizeof(m), fds, nfds);
}

// Closes fds another process passed us, that we did not take: whatever they
// are, their close must not block this thread (rdma::close_untrusted).
void close_all(std::vector<int>& fds) {
  for (int fd : fds) {
    rdma::close_untrusted(fd);
  }
  fds.clear();
}

// ---- the sender's side: offers and the listener that serves them ----

struct offer_rec {
  uint64_t id;
  std::shared_ptr<conn> c;
  int proof_fd;  // our own copy of the TCP socket, shown to the receiver
  sock_id sock;
};

struct client {
  uint64_t token;  // fd numbers are reused: timers name clients by this
  int fd;
  std::unique_ptr<engine::watch> w;
};

std::mutex g_mu;
std::vector<offer_rec>* g_offers = nullptr;  // leaked on purpose (used until exit)
uint64_t g_next_offer = 1;
uint32_t g_listener_id = 0;
int g_listen_fd = -1;
engine::watch* g_listen_watch = nullptr;
std::vector<client>* g_clients = nullptr;  // engine thread only
uint64_t g_next_client = 1;                // engine thread only

// Removes the first offer `match` accepts into `out`; false if none does.
template <class Match>
bool take_offer(Match&& match, offer_rec& out) {
  std::lock_guard<std::mutex> lk(g_mu);
  auto& v = *g_offers;
  auto it = std::find_if(v.begin(), v.end(), match);
  if (it == v.end()) {
    return false;
  }
  out = std::move(*it);
  v.erase(it);
  return true;
}

void drop_client(uint64_t token) {
  if (g_clients == nullptr) {
    return;
  }
  auto& v = *g_clients;
  for (auto it = v.begin(); it != v.end(); ++it) {
    if (it->token == token) {
      client c = std::move(*it);
      v.erase(it);
      c.w.reset();
      rdma::close_untrusted(c.fd);  // (the client could queue fds on it)
      return;
    }
  }
}

// Answers one request, if it has arrived. True when the client is done with.
bool serve(int fd) {
  hof_msg req{};
  std::vector<int> got;
  bool truncated = false;
  ssize_t n = rdma::recv_with_fds(fd, &req, sizeof(req), got, truncated);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
    return false;
  }
  sock_id want;
  const bool good = n == static_cast<ssize_t>(sizeof(req)) && !truncated && got.size() == 1 &&
                    req.magic == hof_magic && req.version == hof_version && identify(got[0], want);
  if (!good) {
    close_all(got);
    hof_msg bad{hof_magic, hof_version, st_bad_request, 0, 0};
    send_msg(fd, bad, nullptr, 0);
    return true;
  }
  offer_rec o{};
  if (!take_offer([&](const offer_rec& r) { return r.sock == want; }, o)) {
    // Not ours to give (a stale mark, or an offer that expired): say so,
    // without proof, which the receiver would not trust anyway.
    close_all(got);
    hof_msg no{hof_magic, hof_version, st_no_offer, 0, 0};
    send_msg(fd, no, nullptr, 0);
    return true;
  }
  // A copy of the offered connection's own socket: closed as it is (no
  // untrusted close: its lingering is the application's).
  sys().close(got[0]);
  got.clear();
  std::vector<int> fds{o.proof_fd};
  hof_msg ok{hof_magic, hof_version, st_ok, 0, 0};
  if (o.c->path().export_fds(fds, ok.rx_size, ok.tx_size) &&
      send_msg(fd, ok, fds.data(), fds.size())) {
    // Our holder is the receiver's now; our copies of everything go.
    SMC_LOG(debug, "handoff: connection on socket inode %lu taken over by another process",
            static_cast<unsigned long>(o.sock.ino));
    sys().close(o.proof_fd);
    return true;
  }
  // Could not answer: the offer stands until it expires.
  std::lock_guard<std::mutex> lk(g_mu);
  g_offers->push_back(std::move(o));
  return true;
}

void on_client_readable(uint64_t token, int fd) {
  if (serve(fd)) {
    drop_client(token);
  }
}

void on_listener_readable() {
  for (;;) {
    int c = sys().accept4(g_listen_fd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (c < 0) {
      return;  // EAGAIN (done), or a client that gave up
    }
    if (serve(c)) {
      sys().close(c);
      continue;
    }
    if (g_clients->size() >= max_clients) {
      sys().close(c);  // a flood of silent clients: they cannot hold us
      continue;
    }
    const uint64_t token = g_next_client++;
    auto w = engine::watch_fd(c, [token, c] { on_client_readable(token, c); });
    if (!w) {
      sys().close(c);
      continue;
    }
    g_clients->push_back({token, c, std::move(w)});
    // A client that connects and says nothing is dropped.
    engine::post([token] { drop_client(token); }, client_wait_ms);
  }
}

// Opens the listener (under g_mu). False if it cannot.
bool ensure_listener() {
  if (g_listen_fd >= 0) {
    return true;
  }
  if (g_clients == nullptr) {
    g_clients = new std::vector<client>();
  }
  int fd = sys().socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    return false;
  }
  for (int attempt = 0; attempt < 16; ++attempt) {
    uint32_t id = static_cast<uint32_t>(rdma::shm::random64()) & ~mark_mask;
    if (id == 0) {
      continue;
    }
    sockaddr_un sa;
    socklen_t len;
    listener_name(sa, len, id);
    if (sys().bind(fd, reinterpret_cast<sockaddr*>(&sa), len) == 0) {
      if (sys().listen(fd, 64) != 0) {
        break;
      }
      auto w = engine::watch_fd(fd, [] { on_listener_readable(); });
      if (!w) {
        break;
      }
      g_listen_fd = fd;
      g_listener_id = id;
      g_listen_watch = w.release();  // lives as long as the listener
      SMC_LOG(debug, "handoff: serving offers as %06x", id);
      return true;
    }
    if (errno != EADDRINUSE) {
      break;
    }
  }
  sys().close(fd);
  return false;
}

void expire(uint64_t id) {
  offer_rec o{};
  if (take_offer([&](const offer_rec& r) { return r.id == id; }, o)) {
    SMC_LOG(info, "handoff: nobody took the connection passed on socket inode %lu within %d ms",
            static_cast<unsigned long>(o.sock.ino), offer_ms);
    sys().close(o.proof_fd);
    o.c->release_holder();
  }
}

void cannot_move(const std::shared_ptr<conn>& c, int tcp_fd, const char* why) {
  SMC_LOG(warn, "fd %d: an SMC connection passed to another process cannot follow it (%s): reset",
          tcp_fd, why);
  stats::count_handoff(stats::handoff::reset);
  c->reset_connection();
}

}  // namespace

uint64_t offer(const std::shared_ptr<conn>& c, int tcp_fd) {
  std::vector<int> probe;
  uint32_t rx = 0;
  uint32_t tx = 0;
  if (!c->path().export_fds(probe, rx, tx)) {
    cannot_move(c, tcp_fd, "an SMC-R link group belongs to its process");
    return 0;
  }
  offer_rec o{};
  if (!identify(tcp_fd, o.sock)) {
    cannot_move(c, tcp_fd, std::strerror(errno));
    return 0;
  }
  o.proof_fd = rdma::place_fd(sys().fcntl(tcp_fd, F_DUPFD_CLOEXEC, 0));  // (held up to 10 s)
  if (o.proof_fd < 0) {
    cannot_move(c, tcp_fd, std::strerror(errno));
    return 0;
  }
  o.c = c;
  uint32_t listener = 0;
  {
    std::lock_guard<std::mutex> lk(g_mu);
    if (g_offers == nullptr) {
      g_offers = new std::vector<offer_rec>();
    }
    if (ensure_listener()) {
      listener = g_listener_id;
      o.id = g_next_offer++;
      c->add_holder();  // the offer holds it until taken or expired
      g_offers->push_back(o);
    }
  }
  if (listener == 0) {
    sys().close(o.proof_fd);
    cannot_move(c, tcp_fd, "no handoff listener");
    return 0;
  }
  const uint32_t mark = mark_base | listener;
  sys().setsockopt(tcp_fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &mark, sizeof(mark));
  const uint64_t id = o.id;
  engine::post([id] { expire(id); }, offer_ms);
  stats::count_handoff(stats::handoff::offered);
  SMC_LOG(debug, "fd %d: SMC connection offered to the process it is passed to", tcp_fd);
  return id;
}

void withdraw(uint64_t id) { expire(id); }

std::shared_ptr<conn> take(int tcp_fd, uint32_t spin_us) {
  auto fail = [&](const char* why) -> std::shared_ptr<conn> {
    SMC_LOG(warn, "fd %d: an SMC connection received from another process cannot be taken "
                  "over (%s): it reads as reset", tcp_fd, why);
    stats::count_handoff(stats::handoff::reset);
    return nullptr;
  };
  uint32_t mark = 0;
  socklen_t ml = sizeof(mark);
  if (sys().getsockopt(tcp_fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &mark, &ml) != 0 || !is_mark(mark)) {
    return fail("no mark");
  }
  const uint32_t id = mark & ~mark_mask;
  if (id == 0) {
    return fail("the process that had it did not offer it");
  }
  sock_id mine;
  if (!identify(tcp_fd, mine)) {
    return fail(std::strerror(errno));
  }
  int s = sys().socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (s < 0) {
    return fail(std::strerror(errno));
  }
  sockaddr_un sa;
  socklen_t len;
  listener_name(sa, len, id);
  hof_msg req{hof_magic, hof_version, 0, 0, 0};
  if (sys().connect(s, reinterpret_cast<sockaddr*>(&sa), len) != 0 ||
      !send_msg(s, req, &tcp_fd, 1)) {
    sys().close(s);
    return fail("the process that passed it is gone");
  }
  const int64_t deadline = rdma::shm::now_ms() + take_wait_ms;
  hof_msg rep{};
  std::vector<int> got;
  bool truncated = false;
  ssize_t n = -1;
  for (;;) {
    n = rdma::recv_with_fds(s, &rep, sizeof(rep), got, truncated);
    if (n >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
      break;
    }
    const int64_t left = deadline - rdma::shm::now_ms();
    if (left <= 0) {
      break;
    }
    pollfd p{s, POLLIN, 0};
    if (sys().poll(&p, 1, static_cast<int>(left)) < 0 && errno != EINTR) {
      break;
    }
  }
  sys().close(s);
  if (n != static_cast<ssize_t>(sizeof(rep)) || truncated || rep.magic != hof_magic ||
      rep.version != hof_version) {
    close_all(got);
    return fail(n < 0 ? "no answer from the process that passed it" : "a malformed answer");
  }
  if (rep.status != st_ok) {
    close_all(got);
    return fail(rep.status == st_no_offer ? "no offer for it (expired, or taken already)"
                                          : "the request was refused");
  }
  // The answer counts only from a holder of the same socket.
  sock_id theirs;
  if (got.size() != max_fds || !identify(got[0], theirs) || !(theirs == mine)) {
    close_all(got);
    return fail("the answer did not come from a holder of the socket");
  }
  sys().close(got[0]);
  auto path = rdma::shm::import_path(got.data() + 1, rep.rx_size, rep.tx_size);  // owns the fds
  got.clear();
  if (!path) {
    return fail(std::strerror(errno));
  }
  auto c = std::make_shared<conn>(conn::attach_t{}, std::move(path), tcp_fd, spin_us, false);
  if (!c->valid()) {
    return fail("its state is not a connection's");
  }
  stats::count_handoff(stats::handoff::taken);
  SMC_LOG(info, "fd %d: SMC connection taken over from the process that passed it", tcp_fd);
  return c;
}

void wait_pending(int max_ms) {
  const int64_t until = rdma::shm::now_ms() + max_ms;
  for (;;) {
    {
      std::lock_guard<std::mutex> lk(g_mu);
      if (g_offers == nullptr || g_offers->empty()) {
        return;
      }
    }
    if (rdma::shm::now_ms() >= until) {
      return;
    }
    pollfd none{-1, 0, 0};
    sys().poll(&none, 1, 5);
  }
}

void forget_after_fork() {
  // The child has copies of the parent's bookkeeping, not its listener's
  // engine thread; the offers are the parent's to serve.
  new (&g_mu) std::mutex();
  if (g_offers != nullptr) {
    for (auto& o : *g_offers) {
      sys().close(o.proof_fd);
      // The shared_ptr is the parent's: leak our copy of it rather than run
      // a destructor for a connection this child does not hold as an offer.
      new (std::nothrow) std::shared_ptr<conn>(std::move(o.c));
    }
    g_offers->clear();
  }
  if (g_listen_fd >= 0) {
    sys().close(g_listen_fd);
    g_listen_fd = -1;
  }
  g_listener_id = 0;
  g_listen_watch = nullptr;  // the parent's engine owns it
  g_clients = nullptr;
}

}  // namespace smc::core::handoff
