// smc_evil_peer: a hostile same-host SMC peer. It completes the shm handshake
// for real (the project's own CLC codec, shm segments and rendezvous) and
// then misbehaves with everything a peer can reach: the doorbells whose
// ringing ends it holds, every shared page it can map, the cursors and flags
// in them, its own silence, its link, and the fds it passes. The acceptance
// criterion: "the server under test (single-threaded poll and epoll) keeps
// serving an ordinary client within 0.5 s throughout", and whatever the peer
// does costs at most that peer's own connection.
//
//   smc_evil_peer server [--addr A] [--port P] [--portfile F] --loop poll|epoll [--count N]
//       one thread, a non-blocking listener; accepts everything and echoes
//       every byte back (reading only while less than 1 MiB waits to go out,
//       so a peer that never consumes makes it stop reading, not grow),
//       watching all sockets with poll() or a level-triggered epoll set.
//       Plain socket calls only: run under the preload. With --count N it
//       exits 0 ("ok served N LOOP") once N connections have ended.
//   smc_evil_peer evil [--addr A] --port P --kind KIND [--hold-ms T]
//       run WITHOUT the preload: an SMC client built on the project's code
//       (core/clc, rdma/shm) that then misbehaves (KIND, below); prints
//       "evil KIND in place" once the misbehaviour is in place (it goes on
//       in a thread of its own), holds for T ms (default 3000), exits 0.
//   smc_evil_peer probe [--addr A] --port P [--count N] [--gap-ms G]
//       an ordinary client (run under the preload): N rounds (default 3),
//       G ms apart (default 0), of connect, 64 bytes out, the 64 echoed
//       bytes back and verified, close; prints "probe round=I ms=X" per
//       round and "probe ok max_ms=X", or fails if a round took over 500 ms.
//
// Kinds (connections the evil role makes: 1 unless said otherwise):
//   flood_doorbells      clears O_NONBLOCK on every doorbell socket it shares
//                        with the server, fills the queues of the server's
//                        doorbells (both) and of its own (so the server's
//                        rings find them full), and keeps ringing as fast as
//                        the queues take it
//   ring_storm           rings both of the server's doorbells 16 times a
//                        millisecond: below the flood limit, without end
//   garbage_pages        random bytes over every byte of the server's RMB
//                        (control page and ring) and of its own (the control
//                        page the server reads its consumer cursor, waiter
//                        counts and rung flags from, and the ring), again and
//                        again; holes punched in both memfds; rings now and then
//   flip_flags           4 connections, after some normal traffic on each:
//                        on one, waiter counts toggled (0 / 0xffffffff) and
//                        rung flags stuck at 1 while traffic goes on; on one,
//                        the half-close flag on and off; on one, the closed /
//                        abnormal / all flags on and off; on one, the cursors
//                        and control-page header garbage and back
//   never_consume        writes until the server's writes would block (the
//                        echo fills its own RMB, which it never reads, then
//                        the server stops reading), then keeps writing as
//                        space appears
//   close_mid_write      a large write, then in its middle (ring partly
//                        published, partly copied) closes the TCP socket,
//                        every doorbell fd and unmaps everything
//   bad_fds              12 connections, each with a rendezvous of its own
//                        made at the byte level, passing the wrong fds: a
//                        regular file as RMB, pipes, eventfds, an unsealed
//                        memfd, a sealed memfd of the wrong size, a FIFO, five
//                        fds, none, listening seqpacket sockets as ringing
//                        ends (which pass the check: that one becomes SMC), a
//                        ring size the memfd does not have, a lingering TCP
//                        socket as RMB, lingering TCP sockets as ringing ends
//   bad_fds_pool         32 connections (the server's handshake threads,
//                        core/background.h), each passing a lingering TCP
//                        socket as its RMB in the rendezvous
//   bad_fds_bell         after the handshake, sends fds through the server's
//                        doorbells (an eventfd, a memfd, a pipe, the doorbells
//                        themselves, 253 fds at once, a large message), then
//                        checks that an echo still works
//   bad_fds_bell_tcp     sends its own TCP socket through the server's tx
//                        doorbell, then exits as usual (the server must still
//                        see the connection end)
//   bad_fds_bell_linger  sends through the server's tx doorbell one TCP
//                        socket with unsent data and SO_LINGER 30 s (whose
//                        last close blocks the closing thread), then makes the
//                        server wait for room (an echo larger than its RMB,
//                        which it never reads), so that the server drains it
//   bad_fds_ring_linger  queues such a socket on its own doorbell's ringing
//                        end (which the server holds), closes its copy of that
//                        end and closes the connection with the SMC close flags
//   shut_rings           sends an empty message through the server's rx
//                        doorbell and shuts its ends of both of the server's
//                        doorbells for writing (the server's ends then read
//                        end of file: readable for good, with nothing to
//                        report); says whether the server ended that
//                        connection within 5 s (its TCP end seen), as a
//                        level-triggered watcher must rather than be kept
//                        awake by it (an edge-triggered one woke once, and
//                        may leave it be)
//
// Every role is bounded by an alarm() watchdog (--timeout seconds, default
// 60). Exit 0 on success; 1 with "smc_evil_peer: FAIL why" on stderr; 2 on
// a usage error.
#include <fcntl.h>
#include <linux/falloc.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/cdc.h"
#include "core/clc.h"
#include "core/cursor.h"
#include "core/handshake.h"
#include "core/host_id.h"
#include "rdma/shm/shm_transport.h"
#include "rdma/sys.h"
#include "test/integration/echo_loop.h"
#include "test/integration/net_util.h"

namespace {

namespace clc = smc::core::clc;
namespace shm = smc::rdma::shm;
namespace cdc = smc::core::cdc;
using smc::core::cursor;
using smc::core::curs_add;
using smc::core::curs_ahead_within;
using smc::core::curs_diff;
using smc::core::curs_pack;
using smc::core::curs_unpack;
using smc_test::err_text;
using smc_test::now_ms;
using smc_test::say;
using smc_test::sleep_ms;

constexpr const char* prog = "smc_evil_peer";
constexpr int evil_io_ms = 5000;  // bound on the evil role's own waits
constexpr smc_test::raw_role evil_role{prog, "evil", evil_io_ms};
constexpr size_t server_out_cap = 1u << 20;
constexpr uint32_t evil_rmb_size = 64 * 1024;
constexpr int linger_s = 30;

const char* const kinds[] = {"flood_doorbells",  "ring_storm",          "garbage_pages",
                             "flip_flags",       "never_consume",       "close_mid_write",
                             "bad_fds",          "bad_fds_pool",        "bad_fds_bell",
                             "bad_fds_bell_tcp", "bad_fds_bell_linger", "bad_fds_ring_linger",
                             "shut_rings"};

[[noreturn]] void die(const std::string& why) { smc_test::fail(prog, why); }

constexpr const char* usage_text =
    "usage: smc_evil_peer server [--addr A] [--port P] [--portfile F] --loop poll|epoll [--count N]\n"
    "       smc_evil_peer evil [--addr A] --port P --kind KIND [--hold-ms T]\n"
    "       smc_evil_peer probe [--addr A] --port P [--count N] [--gap-ms G]\n";

[[noreturn]] void usage(const std::string& why) { smc_test::usage_exit(prog, why, usage_text, kinds); }

struct options : smc_test::loop_options {
  int gap_ms = 0;
};

// ---------------------------------------------------------------- server

// Echoes all, reading only while less than server_out_cap waits to go out.
int server(const options& o) { return smc_test::echo_server(o, {prog, o.loop, o.count, server_out_cap, true}); }

// ---------------------------------------------------------------- evil: plumbing

// Everything the evil role must keep open (or mapped) until it exits.
struct keep_list {
  std::vector<int> fds;
  std::vector<std::unique_ptr<shm::local_side>> sides;
  std::vector<std::unique_ptr<shm::segment>> segs;
};
keep_list g_keep;

// A raw TCP socket: this role runs without the preload and speaks CLC itself.
int tcp_connect(const options& o) { return smc_test::raw_dial(evil_role, o, usage); }

// The Proposal exactly as client_handshake() builds it for shm, then the
// server's Accept (a Decline or anything else fails the evil role).
clc::accept_confirm_d clc_start(int fd) {
  const std::vector<uint8_t> m = smc_test::shm_proposal();
  if (!smc_test::send_all(fd, m.data(), m.size())) {
    die(err_text("evil: send of the Proposal"));
  }
  clc::header h;
  std::vector<uint8_t> msg = smc_test::read_answer(evil_role, fd, h);
  clc::accept_confirm_d acc;
  if (h.type != clc::msg_type::accept || clc::decode(msg, acc) != clc::error::ok) {
    die("evil: the server's answer is no SMC-D Accept");
  }
  if (acc.gid != smc::core::host_id() || acc.chid != clc::loopback_chid) {
    die("evil: the server's Accept is not for a same-host (shm) connection");
  }
  return acc;
}

// The Confirm as client_handshake() sends it.
void send_confirm(int fd, const clc::accept_confirm_d& acc, uint64_t my_token, uint32_t my_size) {
  clc::accept_confirm_d conf;
  conf.type = clc::msg_type::confirm;
  conf.version = 2;
  conf.first_contact = acc.first_contact;
  conf.gid = smc::core::host_id();
  conf.token = my_token;
  conf.dmbe_idx = 1;
  conf.dmbe_size_code = smc::core::rmb_size_to_code(my_size);
  conf.link_id = acc.link_id;
  conf.chid = clc::loopback_chid;
  conf.eid = clc::make_eid(smc::core::default_ueid());
  const std::vector<uint8_t> m = clc::encode(conf);
  if (!smc_test::send_all(fd, m.data(), m.size())) {
    die(err_text("evil: send of the Confirm"));
  }
}

void ring(int fd) {
  const char one = 1;
  (void)::send(fd, &one, 1, MSG_DONTWAIT | MSG_NOSIGNAL);
}

// sendmsg of `len` bytes with any number of fds (up to SCM_MAX_FD), without
// blocking; returns sendmsg's result.
ssize_t send_fds(int sock, const void* data, size_t len, const std::vector<int>& fds) {
  iovec iov{const_cast<void*>(data), len};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> buf(CMSG_SPACE(fds.size() * sizeof(int)) + sizeof(cmsghdr));
  if (!fds.empty()) {
    msg.msg_control = buf.data();
    msg.msg_controllen = CMSG_SPACE(fds.size() * sizeof(int));
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(fds.size() * sizeof(int));
    std::memcpy(CMSG_DATA(c), fds.data(), fds.size() * sizeof(int));
  }
  ssize_t n;
  do {
    n = ::sendmsg(sock, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  return n;
}

// One connection whose handshake went through: what the evil side holds.
struct evil_conn {
  int tcp = -1;
  clc::accept_confirm_d acc;
  std::unique_ptr<shm::local_side> me;  // our RMB (the server writes it) and our doorbells
  std::unique_ptr<shm::segment> srv;    // the server's RMB, mapped (we write it)
  int srv_rx_ring = -1;                 // rings the server's rx doorbell
  int srv_tx_ring = -1;                 // rings the server's tx doorbell
  uint64_t prod = 0;                    // our producer cursor into srv
  uint64_t cons = 0;                    // our consumer cursor of me->rmb
};

// The real client handshake (client_handshake()'s shm path, step by step, so
// that every fd and mapping stays in our hands).
void handshake(evil_conn& c, const options& o) {
  c.tcp = tcp_connect(o);
  c.acc = clc_start(c.tcp);
  c.me = std::make_unique<shm::local_side>();
  if (!c.me->init(evil_rmb_size)) {
    die(err_text("evil: local_side::init"));
  }
  shm::peer_side peer;
  if (!shm::rendezvous_connect(c.acc.gid, c.acc.link_id, c.acc.token, *c.me, shm::now_ms() + evil_io_ms,
                               peer)) {
    die(err_text("evil: rendezvous_connect"));
  }
  if (peer.rmb_size != smc::core::rmb_code_to_size(c.acc.dmbe_size_code) || peer.token != c.acc.token) {
    die("evil: the server's rendezvous hello does not match its Accept");
  }
  c.srv = shm::segment::attach(peer.rmb_fd, peer.rmb_size);
  if (!c.srv) {
    die(err_text("evil: mapping the server's RMB"));
  }
  peer.rmb_fd = -1;  // the segment's now
  c.srv_rx_ring = peer.rx_ring;
  c.srv_tx_ring = peer.tx_ring;
  peer.rx_ring = peer.tx_ring = -1;
  send_confirm(c.tcp, c.acc, c.me->token, c.me->rmb->size());
}

// Writes up to n bytes into the server's ring as the protocol says (cursor,
// then a ring if the server declared a waiter); returns how many fitted.
size_t produce(evil_conn& c, const uint8_t* p, size_t n) {
  shm::control* ctl = c.srv->ctl();
  const uint32_t size = c.srv->size();
  cursor prod = curs_unpack(c.prod);
  const cursor cons = curs_unpack(ctl->cons.load(std::memory_order_acquire));
  const uint32_t used = std::min(curs_diff(size, cons, prod), size);
  const auto k = static_cast<uint32_t>(std::min<size_t>(n, size - used));
  if (k == 0) {
    return 0;
  }
  const uint32_t first = std::min(k, size - prod.count);
  std::memcpy(c.srv->data() + prod.count, p, first);
  std::memcpy(c.srv->data(), p + first, k - first);
  prod = curs_add(size, prod, k);
  c.prod = curs_pack(prod);
  ctl->prod.store(c.prod, std::memory_order_seq_cst);
  if (ctl->rx_waiters.load(std::memory_order_seq_cst) != 0 &&
      ctl->rx_rung.exchange(1, std::memory_order_seq_cst) == 0) {
    ring(c.srv_rx_ring);
  }
  return k;
}

// Reads up to n bytes from our own ring as the protocol says; returns how many.
size_t consume(evil_conn& c, uint8_t* p, size_t n) {
  shm::control* ctl = c.me->rmb->ctl();
  const uint32_t size = c.me->rmb->size();
  cursor cons = curs_unpack(c.cons);
  const cursor prod = curs_unpack(ctl->prod.load(std::memory_order_acquire));
  if (!curs_ahead_within(size, cons, prod)) {
    return 0;
  }
  const auto k = static_cast<uint32_t>(std::min<size_t>(n, curs_diff(size, cons, prod)));
  if (k == 0) {
    return 0;
  }
  const uint32_t first = std::min(k, size - cons.count);
  std::memcpy(p, c.me->rmb->data() + cons.count, first);
  std::memcpy(p + first, c.me->rmb->data(), k - first);
  cons = curs_add(size, cons, k);
  c.cons = curs_pack(cons);
  ctl->cons.store(c.cons, std::memory_order_seq_cst);
  if (ctl->tx_waiters.load(std::memory_order_seq_cst) != 0 &&
      ctl->tx_rung.exchange(1, std::memory_order_seq_cst) == 0) {
    ring(c.srv_tx_ring);
  }
  return k;
}

// Sends n pattern bytes and reads the echo back within `ms`; true if it came.
bool echo_check(evil_conn& c, size_t n, uint64_t key, int ms) {
  std::vector<uint8_t> out(n);
  std::vector<uint8_t> in(n);
  smc_test::pattern_fill(key, 0, out.data(), n);
  const int64_t until = now_ms() + ms;
  size_t sent = 0;
  size_t got = 0;
  while (got < n && now_ms() < until) {
    if (sent < n) {
      sent += produce(c, out.data() + sent, n - sent);
    }
    size_t k = consume(c, in.data() + got, n - got);
    got += k;
    if (k == 0) {
      sleep_ms(1);
    }
  }
  return got == n && std::memcmp(in.data(), out.data(), n) == 0;
}

// A TCP socket with unsent data queued and SO_LINGER of linger_s: its last
// close waits (in the closing thread) until the data is acknowledged, which
// never happens while its peer, kept in g_keep, does not read; or until that
// peer goes away (this process's exit resets it).
int lingering_socket() {
  int ls = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int small = 4096;
  ::setsockopt(ls, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);  // the accepted socket inherits it
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t sl = sizeof sa;
  if (ls < 0 || ::bind(ls, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || ::listen(ls, 4) != 0 ||
      ::getsockname(ls, reinterpret_cast<sockaddr*>(&sa), &sl) != 0) {
    die(err_text("evil: lingering socket: listener"));
  }
  int cs = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int sndbuf = 16384;  // a little unsent data is enough
  ::setsockopt(cs, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
  if (cs < 0 || ::connect(cs, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    die(err_text("evil: lingering socket: connect"));
  }
  int as = ::accept4(ls, nullptr, nullptr, SOCK_CLOEXEC);
  if (as < 0) {
    die(err_text("evil: lingering socket: accept"));
  }
  std::vector<char> junk(65536, 'L');
  size_t queued = 0;
  for (int i = 0; i < 1000; ++i) {
    ssize_t n = ::send(cs, junk.data(), junk.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n <= 0) {
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        // Let the window close, then see whether more fits.
        sleep_ms(5);
        if (::send(cs, junk.data(), junk.size(), MSG_DONTWAIT | MSG_NOSIGNAL) <= 0) {
          break;
        }
        continue;
      }
      die(err_text("evil: lingering socket: filling it"));
    }
    queued += static_cast<size_t>(n);
  }
  linger lg{1, linger_s};
  if (::setsockopt(cs, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) != 0) {
    die(err_text("evil: lingering socket: SO_LINGER"));
  }
  int unsent = 0;
  ::ioctl(cs, TIOCOUTQ, &unsent);
  say("evil: lingering socket fd=%d queued=%zu unsent=%d linger=%ds", cs, queued, unsent, linger_s);
  g_keep.fds.push_back(ls);
  g_keep.fds.push_back(as);
  return cs;
}

// Drops our copy of a lingering socket we passed away, on a thread of its
// own: should ours be the last copy after all (the peer closed its copy
// first), the close waits out the linger there, not here. (Threads still
// blocked so when the process exits are ended by the exit; an exiting
// process's close does not linger.)
void close_elsewhere(int fd) {
  std::thread([fd] { ::close(fd); }).detach();
}

// The misbehaviour that goes on while the evil role holds.
struct background {
  std::atomic<bool> stop{false};
  std::thread t;
  template <class F>
  void start(F&& f) {
    t = std::thread([this, f = std::forward<F>(f)]() mutable { f(stop); });
  }
  void finish() {
    stop.store(true);
    if (t.joinable()) {
      t.join();
    }
  }
};

uint64_t xorshift(uint64_t& x) {
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return x;
}

void fill_random(void* base, size_t n, uint64_t& x) {
  auto* p = static_cast<uint8_t*>(base);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t v = xorshift(x);
    std::memcpy(p + i, &v, 8);
  }
  for (; i < n; ++i) {
    p[i] = static_cast<uint8_t>(xorshift(x));
  }
}

bool set_blocking(int fd) {
  int fl = ::fcntl(fd, F_GETFL);
  return fl >= 0 && ::fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) == 0;
}

// Sends single-byte rings on fd until its queue is full (or `max`); returns the count.
int fill_queue(int fd, int max) {
  int n = 0;
  const char one = 1;
  while (n < max && ::send(fd, &one, 1, MSG_DONTWAIT | MSG_NOSIGNAL) == 1) {
    ++n;
  }
  return n;
}

// ---------------------------------------------------------------- evil: kinds

void kind_flood(evil_conn& c, background& bg, const std::string& kind) {
  // Every doorbell socket we share with the server: the ringing ends of its
  // doorbells and the ringing ends of ours (it rings us through them).
  int blocking = 0;
  for (int fd : {c.srv_rx_ring, c.srv_tx_ring, c.me->rx_bell_ring, c.me->tx_bell_ring}) {
    blocking += set_blocking(fd) ? 1 : 0;
  }
  const int rx = fill_queue(c.srv_rx_ring, 100000);
  const int tx = fill_queue(c.srv_tx_ring, 100000);
  const int own_rx = fill_queue(c.me->rx_bell_ring, 100000);
  const int own_tx = fill_queue(c.me->tx_bell_ring, 100000);
  say("evil %s: O_NONBLOCK cleared on %d/4 shared doorbell sockets; queued rings: server rx %d, server tx %d, "
      "ours rx %d, ours tx %d",
      kind.c_str(), blocking, rx, tx, own_rx, own_tx);
  const int a = c.srv_rx_ring;
  const int b = c.srv_tx_ring;
  bg.start([a, b](std::atomic<bool>& stop) {
    uint64_t sent = 0;
    while (!stop.load()) {
      int k = fill_queue(a, 4096) + fill_queue(b, 4096);
      sent += static_cast<uint64_t>(k);
      if (k == 0) {
        // Full (or gone): as soon as there is room again.
        pollfd p[2] = {{a, POLLOUT, 0}, {b, POLLOUT, 0}};
        if (::poll(p, 2, 1) > 0 && ((p[0].revents | p[1].revents) & (POLLERR | POLLHUP)) != 0) {
          sleep_ms(1);
        }
      }
    }
    say("evil flood: %llu more rings sent while holding", static_cast<unsigned long long>(sent));
  });
}

void kind_ring_storm(evil_conn& c, background& bg) {
  const int a = c.srv_rx_ring;
  const int b = c.srv_tx_ring;
  bg.start([a, b](std::atomic<bool>& stop) {
    uint64_t sent = 0;
    while (!stop.load()) {
      sent += static_cast<uint64_t>(fill_queue(a, 16) + fill_queue(b, 16));
      sleep_ms(1);
    }
    say("evil ring_storm: %llu rings sent while holding", static_cast<unsigned long long>(sent));
  });
}

void kind_garbage(evil_conn& c, background& bg) {
  shm::segment* srv = c.srv.get();
  shm::segment* own = c.me->rmb.get();
  const int a = c.srv_rx_ring;
  const int b = c.srv_tx_ring;
  auto pass = [srv, own, a, b](uint64_t& x, uint64_t i) {
    // The server's RMB: control page (its consumer cursor, waiter counts,
    // rung flags, our producer cursor and flags as it reads them) and ring.
    fill_random(srv->ctl(), shm::control_bytes + srv->size(), x);
    // Ours: the control page the server reads (our consumer cursor, its
    // waiters and rung flag) and writes (its producer cursor), and the ring.
    fill_random(own->ctl(), shm::control_bytes + own->size(), x);
    if (i % 8 == 0) {
      ring(a);
      ring(b);
    }
    if (i % 32 == 31) {
      // Holes: the pages read back as zeros (the seals allow it).
      ::fallocate(srv->fd(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0,
                  static_cast<off_t>(shm::control_bytes + srv->size()));
      ::fallocate(own->fd(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0,
                  static_cast<off_t>(shm::control_bytes + own->size()));
    }
  };
  uint64_t x = 0x9e3779b97f4a7c15ULL ^ static_cast<uint64_t>(now_ms());
  pass(x, 0);
  bg.start([pass, x](std::atomic<bool>& stop) mutable {
    uint64_t i = 1;
    while (!stop.load()) {
      pass(x, i++);
      ::usleep(500);
    }
    say("evil garbage_pages: %llu passes over both RMBs", static_cast<unsigned long long>(i));
  });
}

// Four connections, one per target, so that each toggle meets a live
// connection (the first flag the server honours ends the one it is on).
constexpr int flip_conns = 4;

void kind_flip(const options& o, std::vector<std::unique_ptr<evil_conn>>& conns, background& bg) {
  for (int i = 0; i < flip_conns; ++i) {
    auto c = std::make_unique<evil_conn>();
    handshake(*c, o);
    if (!echo_check(*c, 4096, 0xf11b + i, 2000)) {
      say("evil flip_flags: no echo on connection %d before flipping (carrying on)", i);
    }
    conns.push_back(std::move(c));
  }
  std::vector<evil_conn*> cs;
  for (auto& c : conns) {
    cs.push_back(c.get());
  }
  bg.start([cs](std::atomic<bool>& stop) {
    uint64_t i = 0;
    std::vector<uint8_t> buf(4096);
    const uint8_t flag_sets[] = {cdc::conn_closed, cdc::conn_abnormal, cdc::conn_closed | cdc::conn_done_writing,
                                 0xff};
    while (!stop.load()) {
      const bool odd = (i & 1) != 0;
      {
        // 0: waiter counts huge / zero and rung flags stuck at 1, on both
        // control pages, while normal traffic goes on.
        evil_conn& k = *cs[0];
        shm::control* s = k.srv->ctl();
        shm::control* m = k.me->rmb->ctl();
        s->rx_waiters.store(odd ? 0xffffffffu : 0u);
        s->rx_rung.store(1);
        s->tx_waiters.store(odd ? 0u : 0x80000000u);
        s->tx_rung.store(1);
        m->rx_waiters.store(odd ? 0xffffffffu : 0u);
        m->rx_rung.store(1);
        m->tx_waiters.store(odd ? 0x7fffffffu : 0xffffffffu);
        m->tx_rung.store(1);
        produce(k, buf.data(), 256);
        consume(k, buf.data(), buf.size());
        if (i % 16 == 0) {
          ring(k.srv_rx_ring);
        }
      }
      {
        // 1: half-close on, off, on...
        evil_conn& k = *cs[1];
        k.srv->ctl()->prod_flags.store(odd ? cdc::conn_done_writing : 0u);
        ring(k.srv_rx_ring);
      }
      {
        // 2: closed, abnormal, both, everything; and back to nothing.
        evil_conn& k = *cs[2];
        k.srv->ctl()->prod_flags.store(odd ? flag_sets[(i / 2) % 4] : 0u);
        k.me->rmb->ctl()->prod_flags.store(odd ? 0xffu : 0u);
        ring(k.srv_rx_ring);
        ring(k.srv_tx_ring);
      }
      {
        // 3: cursors garbage, then back to the truth; the header fields too.
        evil_conn& k = *cs[3];
        shm::control* s = k.srv->ctl();
        shm::control* m = k.me->rmb->ctl();
        s->prod.store(odd ? (k.prod ^ 0x0001000000000000ULL) + 0x10 : k.prod);
        m->cons.store(odd ? 0xffff0000ffffffffULL : k.cons);
        s->cons.store(odd ? 0x1234567812345678ULL : 0);
        s->magic = odd ? 0 : shm::control_magic;
        m->size = odd ? 0xffffffffu : k.me->rmb->size();
        ring(k.srv_rx_ring);
        ring(k.srv_tx_ring);
      }
      ++i;
      ::usleep(100);
    }
    say("evil flip_flags: %llu flips", static_cast<unsigned long long>(i));
  });
}

void kind_never_consume(evil_conn& c, background& bg, const std::string& kind) {
  // We never want to hear about data (our rx waiters stay 0) and never read.
  std::vector<uint8_t> buf(65536);
  smc_test::pattern_fill(0xbad, 0, buf.data(), buf.size());
  uint64_t total = 0;
  int64_t last = now_ms();
  const int64_t t0 = last;
  while (now_ms() - last < 300 && now_ms() - t0 < evil_io_ms) {
    size_t k = produce(c, buf.data(), buf.size());
    total += k;
    if (k > 0) {
      last = now_ms();
    } else {
      sleep_ms(1);
    }
  }
  shm::control* m = c.me->rmb->ctl();
  say("evil %s: wrote %llu bytes until the server stopped reading; the server's echo waits in our RMB "
      "(prod %#llx, cons %#llx)",
      kind.c_str(), static_cast<unsigned long long>(total), static_cast<unsigned long long>(m->prod.load()),
      static_cast<unsigned long long>(m->cons.load()));
  evil_conn* cp = &c;
  bg.start([cp](std::atomic<bool>& stop) {
    std::vector<uint8_t> b(65536, 0x5a);
    while (!stop.load()) {
      if (produce(*cp, b.data(), b.size()) == 0) {
        sleep_ms(1);
      }
    }
  });
}

void kind_close_mid_write(evil_conn& c, const std::string& kind) {
  // A write of 64 MiB, cut off in its middle: published pieces, then a piece
  // copied but not published, then everything goes.
  std::vector<uint8_t> buf(16384);
  smc_test::pattern_fill(0xc105e, 0, buf.data(), buf.size());
  uint64_t total = 0;
  const int64_t t0 = now_ms();
  while (total < (2u << 20) && now_ms() - t0 < 1000) {
    size_t k = produce(c, buf.data(), buf.size());
    total += k;
    if (k == 0) {
      sleep_ms(1);
    }
  }
  const cursor prod = curs_unpack(c.prod);
  const uint32_t room = c.srv->size() - prod.count;
  std::memset(c.srv->data() + prod.count, 0xcc, std::min<uint32_t>(room, 8192));
  ::close(c.tcp);
  ::close(c.srv_rx_ring);
  ::close(c.srv_tx_ring);
  c.tcp = c.srv_rx_ring = c.srv_tx_ring = -1;
  c.me.reset();   // our doorbells and RMB (unmapped, closed)
  c.srv.reset();  // the server's RMB, unmapped
  say("evil %s: closed everything after %llu bytes of the write (8 KiB more copied, not published)",
      kind.c_str(), static_cast<unsigned long long>(total));
}

// ---- bad fds in the rendezvous (at the byte level)

struct rdv_hello {  // rdma/shm/shm_transport.cpp, struct hello
  uint64_t magic;
  uint64_t to_token;
  uint64_t from_token;
  uint32_t rmb_size;
  uint32_t kept_link;  // a server's: the id of the link it keeps (0 here)
};
constexpr uint64_t rdv_magic = 0x534d432d52445631ULL;  // "SMC-RDV1"

// The server's hello, if it answers within `ms` (fds it brought go to `fds`).
bool recv_reply(int s, int ms, rdv_hello& h, std::vector<int>& fds) {
  pollfd p{s, POLLIN, 0};
  if (::poll(&p, 1, ms) != 1) {
    return false;
  }
  iovec iov{&h, sizeof h};
  alignas(cmsghdr) char buf[CMSG_SPACE(16 * sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = buf;
  msg.msg_controllen = sizeof buf;
  ssize_t n = ::recvmsg(s, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  smc::rdma::for_each_passed_fd(&msg, [&](int fd) { fds.push_back(fd); });
  return n == static_cast<ssize_t>(sizeof h);
}

int seqpacket_listener() {
  int s = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;  // autobind: an abstract name of the kernel's choice
  if (s < 0 || ::bind(s, reinterpret_cast<sockaddr*>(&sa), sizeof(sa_family_t)) != 0 || ::listen(s, 1) != 0) {
    die(err_text("evil: seqpacket listener"));
  }
  return s;
}

int memfd_of(size_t bytes, unsigned seals) {
  int fd = ::memfd_create("evil", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(bytes)) != 0 ||
      (seals != 0 && ::fcntl(fd, F_ADD_SEALS, seals) != 0)) {
    die(err_text("evil: memfd"));
  }
  return fd;
}

constexpr unsigned good_seals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;

const char* const bad_variants[] = {"regular", "pipe",     "eventfd",   "unsealed",    "small",      "fifo",
                                    "five",    "none",     "listener",  "size_lie",    "linger_rmb", "linger_rings"};

// One connection whose rendezvous passes the server the wrong fds.
void bad_rendezvous(const options& o, const std::string& variant, const std::string& tmpdir) {
  const int tcp = tcp_connect(o);
  const clc::accept_confirm_d acc = clc_start(tcp);
  auto me = std::make_unique<shm::local_side>();
  if (!me->init(evil_rmb_size)) {
    die(err_text("evil: local_side::init"));
  }
  const size_t bytes = shm::control_bytes + evil_rmb_size;
  uint32_t claimed = evil_rmb_size;
  std::vector<int> fds;
  if (variant == "regular") {
    int f = ::open(tmpdir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (f < 0 || ::ftruncate(f, static_cast<off_t>(bytes)) != 0) {
      die(err_text("evil: O_TMPFILE in " + tmpdir));
    }
    fds = {f, me->rx_bell_ring, me->tx_bell_ring};
  } else if (variant == "pipe") {
    int p1[2];
    int p2[2];
    if (::pipe2(p1, O_CLOEXEC | O_NONBLOCK) != 0 || ::pipe2(p2, O_CLOEXEC | O_NONBLOCK) != 0) {
      die(err_text("evil: pipe2"));
    }
    fds = {p1[0], p1[1], p2[1]};
    g_keep.fds.insert(g_keep.fds.end(), {p2[0]});
  } else if (variant == "eventfd") {
    int e = ::eventfd(0, EFD_CLOEXEC);
    if (e < 0) {
      die(err_text("evil: eventfd"));
    }
    fds = {e, e, e};
  } else if (variant == "unsealed") {
    fds = {memfd_of(bytes, 0), me->rx_bell_ring, me->tx_bell_ring};
  } else if (variant == "small") {
    fds = {memfd_of(shm::control_bytes + 4096, good_seals), me->rx_bell_ring, me->tx_bell_ring};
  } else if (variant == "fifo") {
    const std::string path = tmpdir + "/evil.fifo." + std::to_string(::getpid());
    if (::mkfifo(path.c_str(), 0600) != 0) {
      die(err_text("evil: mkfifo " + path));
    }
    int f = ::open(path.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC);
    ::unlink(path.c_str());
    if (f < 0) {
      die(err_text("evil: open FIFO"));
    }
    fds = {f, f, f};
  } else if (variant == "five") {
    fds = {me->rmb->fd(), me->rx_bell_ring, me->tx_bell_ring, me->rx_bell, me->tx_bell};
  } else if (variant == "none") {
    fds = {};
  } else if (variant == "listener") {
    fds = {me->rmb->fd(), seqpacket_listener(), seqpacket_listener()};
  } else if (variant == "size_lie") {
    claimed = shm::max_ring_bytes;  // the memfd is 64 KiB + 4 KiB
    fds = {me->rmb->fd(), me->rx_bell_ring, me->tx_bell_ring};
  } else if (variant == "linger_rmb") {
    fds = {lingering_socket(), me->rx_bell_ring, me->tx_bell_ring};
  } else {  // linger_rings
    fds = {me->rmb->fd(), lingering_socket(), lingering_socket()};
  }
  const int s = smc_test::rendezvous_socket(evil_role, acc);
  rdv_hello h{rdv_magic, acc.token, me->token, claimed, 0};
  if (send_fds(s, &h, sizeof h, fds) != static_cast<ssize_t>(sizeof h)) {
    die(err_text("evil: bad_fds " + variant + ": sending the hello"));
  }
  // Our copies of what is not our side's go (the server's are in flight).
  for (int fd : fds) {
    if (fd >= 0 && fd != me->rmb->fd() && fd != me->rx_bell_ring && fd != me->tx_bell_ring &&
        fd != me->rx_bell && fd != me->tx_bell) {
      if (variant == "linger_rings") {
        // (The server closes its copies as soon as it has looked at them:
        // whichever copy goes last waits out the linger.)
        close_elsewhere(fd);
      } else {
        ::close(fd);
      }
      for (int& f : fds) {  // (the same fd may be there thrice)
        f = f == fd ? -1 : f;
      }
    }
  }
  rdv_hello reply{};
  std::vector<int> got;
  const bool answered = recv_reply(s, variant == "five" || variant == "none" ? 300 : 2000, reply, got);
  std::string note = answered ? "server answered the hello" : "no answer to the hello";
  if (variant == "listener" && answered && got.size() == 3) {
    // That one passes every check: SMC with ringing ends that ring nothing.
    // Write a little into the server's RMB, as a client would.
    auto srv = shm::segment::attach(got[0], reply.rmb_size);
    if (srv) {
      got[0] = -1;
      evil_conn c;
      c.srv = std::move(srv);
      c.srv_rx_ring = got[1];
      c.srv_tx_ring = got[2];
      got[1] = got[2] = -1;
      send_confirm(tcp, acc, me->token, claimed);
      uint8_t hi[64];
      smc_test::pattern_fill(0x11, 0, hi, sizeof hi);
      produce(c, hi, sizeof hi);
      note += ", 64 bytes written into its RMB";
      g_keep.segs.push_back(std::move(c.srv));
      g_keep.fds.insert(g_keep.fds.end(), {c.srv_rx_ring, c.srv_tx_ring});
      claimed = 0;  // Confirm sent
    }
  }
  for (int fd : got) {
    if (fd >= 0) {
      g_keep.fds.push_back(fd);
    }
  }
  if (claimed != 0) {
    // Claim success whatever happened: the server must not follow.
    send_confirm(tcp, acc, me->token, claimed);
  }
  say("evil bad_fds %s: %s", variant.c_str(), note.c_str());
  g_keep.fds.push_back(tcp);
  g_keep.fds.push_back(s);
  g_keep.sides.push_back(std::move(me));
}

std::string tmp_dir() {
  const char* t = std::getenv("TMPDIR");
  return t != nullptr && *t != '\0' ? t : "/tmp";
}

void kind_bad_fds(const options& o) {
  for (const char* v : bad_variants) {
    bad_rendezvous(o, v, tmp_dir());
  }
}

// As many connections as the server has threads for handshakes (core/
// background.h, max_threads), each passing a lingering TCP socket as its RMB:
// the server's last close of each waits out the linger, on that thread.
constexpr int pool_conns = 32;

void kind_bad_fds_pool(const options& o) {
  for (int i = 0; i < pool_conns; ++i) {
    bad_rendezvous(o, "linger_rmb", tmp_dir());
  }
}

// ---- bad fds on the doorbells

void kind_bad_fds_bell(evil_conn& c, const std::string& kind) {
  if (!echo_check(c, 256, 0xbe11, 2000)) {
    die("evil " + kind + ": no echo even before any fd was sent");
  }
  int e = ::eventfd(0, EFD_CLOEXEC);
  int mfd = memfd_of(4096, 0);
  int p[2];
  if (e < 0 || ::pipe2(p, O_CLOEXEC) != 0) {
    die(err_text("evil: eventfd/pipe2"));
  }
  std::vector<int> many(253, e);
  const std::vector<std::vector<int>> sets = {{e}, {mfd}, {p[0], p[1]}, {c.srv_rx_ring, c.srv_tx_ring}, many};
  std::vector<char> big(60000, 'B');
  int ok = 0;
  int tries = 0;
  for (int bell : {c.srv_rx_ring, c.srv_tx_ring}) {
    for (const auto& s : sets) {
      ++tries;
      const char one = 1;
      ok += send_fds(bell, &one, 1, s) == 1 ? 1 : 0;
    }
    ++tries;
    ok += send_fds(bell, big.data(), big.size(), {e}) > 0 ? 1 : 0;
  }
  ::close(e);
  ::close(mfd);
  ::close(p[0]);
  ::close(p[1]);
  say("evil %s: %d/%d messages with fds sent through the server's doorbells", kind.c_str(), ok, tries);
  // The connection should not mind (a few rings, each with things it drops).
  bool echo = echo_check(c, 4096, 0xbe12, 2000);
  say("evil %s: echo after the fds: %s", kind.c_str(), echo ? "ok" : "MISSING");
}

// A send of fds the server's sockets refuse (EPERM: the waiting end takes
// no fds, SO_PASSRIGHTS 0; EPIPE: a ringing end the server shut for
// reading) is the defence working: said, and the attack carries on without
// it. Anything else is a failure of the test itself.
void refused_or_die(const std::string& kind, const std::string& what) {
  if (errno == EPERM || errno == EPIPE) {
    say("evil %s: %s refused by the server (%s)", kind.c_str(), what.c_str(), std::strerror(errno));
    return;
  }
  die(err_text("evil " + kind + ": " + what));
}

// Our own last copy of a lingering socket (the server refused it): closed
// without its linger, or this process would wait out the linger itself.
void drop_lingering(int ls) {
  const linger off{1, 0};
  ::setsockopt(ls, SOL_SOCKET, SO_LINGER, &off, sizeof off);
  ::close(ls);
}

void kind_bell_tcp(evil_conn& c, const std::string& kind) {
  if (!echo_check(c, 256, 0x7c9, 2000)) {
    say("evil %s: no echo before (carrying on)", kind.c_str());
  }
  // Our own TCP socket, through the server's tx doorbell (which nobody
  // drains while no write of the server's waits for room).
  const char one = 1;
  if (send_fds(c.srv_tx_ring, &one, 1, {c.tcp}) != 1) {
    refused_or_die(kind, "sending our TCP socket through the server's tx doorbell");
    return;
  }
  say("evil %s: our TCP socket rides the server's tx doorbell; when we exit, does the connection end?",
      kind.c_str());
}

void kind_bell_linger(evil_conn& c, const std::string& kind) {
  if (!echo_check(c, 256, 0x1199, 2000)) {
    say("evil %s: no echo before (carrying on)", kind.c_str());
  }
  // Through the server's tx doorbell, which nobody drains while no write of
  // the server's waits for room: our copy can go first, so the server's is
  // the last one (no race with its drain).
  int ls = lingering_socket();
  const char one = 1;
  if (send_fds(c.srv_tx_ring, &one, 1, {ls}) != 1) {
    refused_or_die(kind, "sending a lingering TCP socket through the server's tx doorbell");
    drop_lingering(ls);
    return;
  }
  ::close(ls);  // not the last copy: the one in flight is
  // Now make the server wait for room: it echoes into our RMB, which we
  // never read; its next wait watches (and drains) that doorbell.
  std::vector<uint8_t> buf(2 * evil_rmb_size);
  smc_test::pattern_fill(0x1197, 0, buf.data(), buf.size());
  size_t sent = 0;
  const int64_t t0 = now_ms();
  while (sent < buf.size() && now_ms() - t0 < evil_io_ms) {
    size_t k = produce(c, buf.data() + sent, buf.size() - sent);
    sent += k;
    if (k == 0) {
      sleep_ms(1);
    }
  }
  say("evil %s: a lingering TCP socket rides the server's tx doorbell; %zu bytes sent for an echo that "
      "cannot fit our RMB",
      kind.c_str(), sent);
}

void kind_shut_rings(evil_conn& c, const std::string& kind) {
  if (::send(c.srv_rx_ring, "", 0, MSG_DONTWAIT | MSG_NOSIGNAL) != 0) {
    die(err_text("evil: an empty message on the server's rx doorbell"));
  }
  if (::shutdown(c.srv_rx_ring, SHUT_WR) != 0 || ::shutdown(c.srv_tx_ring, SHUT_WR) != 0) {
    die(err_text("evil: shutdown of the server's ringing ends"));
  }
  // The server watches its rx doorbell while it waits to read.
  pollfd p{c.tcp, POLLIN | POLLRDHUP, 0};
  const int n = ::poll(&p, 1, evil_io_ms);
  char b;
  const ssize_t r = n == 1 ? ::recv(c.tcp, &b, 1, MSG_DONTWAIT) : -2;
  if (r == 0 || (r == -1 && errno == ECONNRESET)) {
    say("evil %s: the server ended the connection", kind.c_str());
  } else {
    say("evil %s: the connection stays", kind.c_str());
  }
}

void kind_ring_linger(evil_conn& c, const std::string& kind) {
  if (!echo_check(c, 256, 0x1198, 2000)) {
    say("evil %s: no echo before (carrying on)", kind.c_str());
  }
  int ls = lingering_socket();
  const char one = 1;
  // From our bell end to its peer, the ringing end the server holds (it
  // never reads there): the message waits in that socket's queue.
  if (send_fds(c.me->rx_bell, &one, 1, {ls}) != 1 || send_fds(c.me->tx_bell, &one, 1, {ls}) != 1) {
    refused_or_die(kind, "queueing a lingering TCP socket on the ringing ends the server holds");
    drop_lingering(ls);
    return;
  }
  ::close(ls);  // not the last copy (nobody reads those queues): the server's will be
  // The server's copies of those ends are the last ones now.
  ::close(c.me->rx_bell_ring);
  ::close(c.me->tx_bell_ring);
  c.me->rx_bell_ring = c.me->tx_bell_ring = -1;
  // An orderly SMC close: the server reads EOF and closes its side.
  shm::control* s = c.srv->ctl();
  s->prod_flags.fetch_or(cdc::conn_done_writing | cdc::conn_closed);
  s->prod.store(c.prod);
  ring(c.srv_rx_ring);
  ring(c.srv_tx_ring);
  say("evil %s: lingering TCP sockets wait in the queues of the ringing ends the server holds; SMC close sent",
      kind.c_str());
}

int evil(const options& o) {
  const std::string& kind = o.kind;
  background bg;
  evil_conn c;
  std::vector<std::unique_ptr<evil_conn>> flips;
  if (kind != "bad_fds" && kind != "bad_fds_pool" && kind != "flip_flags") {
    handshake(c, o);
    say("evil %s: handshake done (server ring %u bytes, ours %u)", kind.c_str(), c.srv->size(),
        c.me->rmb->size());
  }
  if (kind == "flood_doorbells") {
    kind_flood(c, bg, kind);
  } else if (kind == "ring_storm") {
    kind_ring_storm(c, bg);
  } else if (kind == "garbage_pages") {
    kind_garbage(c, bg);
  } else if (kind == "flip_flags") {
    kind_flip(o, flips, bg);
  } else if (kind == "never_consume") {
    kind_never_consume(c, bg, kind);
  } else if (kind == "close_mid_write") {
    kind_close_mid_write(c, kind);
  } else if (kind == "bad_fds") {
    kind_bad_fds(o);
  } else if (kind == "bad_fds_pool") {
    kind_bad_fds_pool(o);
  } else if (kind == "bad_fds_bell") {
    kind_bad_fds_bell(c, kind);
  } else if (kind == "bad_fds_bell_tcp") {
    kind_bell_tcp(c, kind);
  } else if (kind == "bad_fds_bell_linger") {
    kind_bell_linger(c, kind);
  } else if (kind == "shut_rings") {
    kind_shut_rings(c, kind);
  } else {
    kind_ring_linger(c, kind);
  }
  say("evil %s in place", kind.c_str());
  smc_test::hold_for(o.hold_ms);
  bg.finish();
  say("evil %s done after hold_ms=%d", kind.c_str(), o.hold_ms);
  std::fflush(stdout);
  // Everything (sockets, mappings) goes with the process.
  _exit(0);
}

int run(int argc, char** argv) {
  options o;
  o.role = smc_test::loop_role(argc, argv, {"server", "evil", "probe"}, usage);
  if (o.role == "probe") {
    o.count = 3;
  }
  auto takes = [&o](const std::string& n) {  // which role has which shared option
    if (n == "--loop") {
      return o.role == "server";
    }
    if (n == "--count") {
      return o.role != "evil";
    }
    return o.role == "evil";  // --kind, --hold-ms
  };
  auto own = [&o](auto& args) {
    if (args.name() != "--gap-ms" || o.role != "probe") {
      return false;
    }
    o.gap_ms = static_cast<int>(std::min<uint64_t>(args.size_value("bad value for "), 10000));
    return true;
  };
  smc_test::read_loop_options(argc, argv, o, kinds, takes, own, usage);
  if (o.role == "server" && o.loop.empty()) {
    usage("server needs --loop poll|epoll");
  }
  if (o.role != "server" && !o.port_given) {
    usage(o.role + " needs --port");
  }
  if (o.role == "evil" && o.kind.empty()) {
    usage("evil needs --kind");
  }
  if (o.role == "probe" && o.count == 0) {
    usage("probe needs --count >= 1");
  }
  if (o.role == "evil") {
    // The watchdog must not fire while the evil role holds on purpose.
    o.timeout = std::max<unsigned>(o.timeout, static_cast<unsigned>(o.hold_ms / 1000) + 4 * evil_io_ms / 1000 + 10);
  }
  smc_test::arm_watchdog(("smc_evil_peer " + o.role).c_str(), o.timeout);
  if (o.role == "server") {
    return server(o);
  }
  if (o.role == "evil") {
    return evil(o);
  }
  return smc_test::probe(prog, o, o.count, o.gap_ms, 0xe7117);
}

}  // namespace

int main(int argc, char** argv) { return smc_test::guarded_main(prog, argc, argv, run); }
