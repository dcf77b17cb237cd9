// verbs_floor: the cheapest possible round trip for SMC-R's wire pattern on
// an RDMA device, with no SMC at all, as a yardstick for smc_bench's
// ping-pong. Each message is what an SMC-R connection posts for a small
// write (an inline RDMA WRITE of the payload into the peer's buffer, then an
// inline 44-byte SEND, the CDC, in one post), or, with --pattern send, a
// single SEND (what ib_send_lat measures). Both ends busy-poll their receive
// CQ without pause, as perftest does. The QP is set up over a TCP connection
// with the project's own verbs wrappers (the device whose RoCE v2 GID matches
// the connection's local address).
//
//   verbs_floor server --addr A [--port P] [--portfile F] [--pattern write_send|send] [--size N]
//   verbs_floor client --addr A --port P [--iters N] [--pattern ...] [--size N]
//
// The client prints
//   verbs pattern=write_send size=64 iters=N avg_us=.. p50_us=.. p99_us=..
// A benchmark: it checks only that the peer answered each message.
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "rdma/verbs/verbs.h"
#include "test/integration/net_util.h"

namespace {

namespace v = smc::rdma::verbs;

constexpr uint32_t recv_depth = 32;
constexpr uint32_t cdc_bytes = 44;
constexpr uint32_t signal_every = 16;  // posts between signalled ones

[[noreturn]] void fail_exit(const std::string& why) {
  std::fprintf(stderr, "verbs_floor: %s\n", why.c_str());
  std::exit(1);
}

struct options {
  bool server = false;
  std::string addr;
  uint16_t port = 0;
  std::string portfile;
  bool write_send = true;
  uint32_t size = 64;
  uint64_t iters = 2000;
};

options parse(int argc, char** argv) {
  options o;
  if (argc < 2) {
    fail_exit("usage: verbs_floor server|client --addr A [--port P] [--portfile F] "
              "[--pattern write_send|send] [--size N] [--iters N]");
  }
  std::string role = argv[1];
  if (role != "server" && role != "client") {
    fail_exit("the first argument is server or client");
  }
  o.server = role == "server";
  for (int i = 2; i < argc; ++i) {
    std::string k = argv[i];
    if (i + 1 >= argc) {
      fail_exit(k + " needs a value");
    }
    std::string val = argv[++i];
    if (k == "--addr") {
      o.addr = val;
    } else if (k == "--port") {
      o.port = static_cast<uint16_t>(std::stoul(val));
    } else if (k == "--portfile") {
      o.portfile = val;
    } else if (k == "--pattern") {
      if (val != "write_send" && val != "send") {
        fail_exit("--pattern is write_send or send");
      }
      o.write_send = val == "write_send";
    } else if (k == "--size") {
      o.size = static_cast<uint32_t>(std::stoul(val));
    } else if (k == "--iters") {
      o.iters = std::stoull(val);
    } else {
      fail_exit("unknown option " + k);
    }
  }
  if (o.addr.empty() || (!o.server && o.port == 0)) {
    fail_exit("--addr (and for the client --port) are required");
  }
  // Both messages go inline, as SMC-R's small writes and CDCs do.
  if (o.size == 0 || o.size > 64) {
    fail_exit("--size is 1..64 (inline)");
  }
  return o;
}

// What each side tells the other over TCP.
struct wire_info {
  uint32_t qpn;
  uint32_t psn;
  uint8_t gid[16];
  uint32_t mtu;
  uint64_t addr;
  uint32_t rkey;
};

int tcp_connect(const options& o) {
  std::string error;
  if (o.server) {
    int lfd = smc_test::open_listener(o.addr, o.port, 1, o.portfile, error);
    if (lfd < 0) {
      fail_exit(error);
    }
    int c = ::accept(lfd, nullptr, nullptr);
    if (c < 0) {
      fail_exit(std::string("accept: ") + std::strerror(errno));
    }
    ::close(lfd);
    return c;
  }
  int fd = smc_test::dial(o.addr, o.port, error);
  if (fd < 0) {
    fail_exit(error);
  }
  return fd;
}

void exchange(int fd, const void* out, void* in, size_t n) {
  if (!smc_test::send_all(fd, out, n) || smc_test::recv_full(fd, in, n) != static_cast<ssize_t>(n)) {
    fail_exit("the TCP exchange with the peer failed");
  }
}

struct qp_link {
  std::shared_ptr<v::device> dev;
  std::unique_ptr<v::completion_queue> scq, rcq;
  std::unique_ptr<v::rc_qp> qp;
  std::unique_ptr<v::memory_region> rmb;    // the peer writes here
  std::unique_ptr<v::memory_region> slots;  // SEND landing slots
  wire_info peer{};
  uint64_t posts = 0;
};

void post_recv(qp_link& l, uint32_t i) {
  ibv_sge sge{l.slots->addr() + i * 64, 64, l.slots->lkey()};
  ibv_recv_wr wr{};
  ibv_recv_wr* bad = nullptr;
  wr.wr_id = i;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  if (ibv_post_recv(l.qp->qp(), &wr, &bad) != 0) {
    fail_exit("ibv_post_recv failed");
  }
}

// One message: [RDMA WRITE of the payload] + a 44-byte SEND, in one post.
void post_message(qp_link& l, const uint8_t* payload, const options& o) {
  static uint8_t cdc[cdc_bytes] = {0xFE};
  ibv_sge sge[2] = {{reinterpret_cast<uintptr_t>(payload), o.size, 0},
                    {reinterpret_cast<uintptr_t>(cdc), cdc_bytes, 0}};
  ibv_send_wr wr[2]{};
  wr[0].opcode = IBV_WR_RDMA_WRITE;
  wr[0].send_flags = IBV_SEND_INLINE;
  wr[0].sg_list = &sge[0];
  wr[0].num_sge = 1;
  wr[0].wr.rdma.remote_addr = l.peer.addr;
  wr[0].wr.rdma.rkey = l.peer.rkey;
  wr[0].next = &wr[1];
  wr[1].opcode = IBV_WR_SEND;
  wr[1].send_flags = IBV_SEND_INLINE | IBV_SEND_SOLICITED;
  wr[1].sg_list = &sge[1];
  wr[1].num_sge = 1;
  if (++l.posts % signal_every == 0) {
    wr[1].send_flags |= IBV_SEND_SIGNALED;
  }
  ibv_send_wr* bad = nullptr;
  if (ibv_post_send(l.qp->qp(), o.write_send ? &wr[0] : &wr[1], &bad) != 0) {
    fail_exit("ibv_post_send failed");
  }
  // Keep the send queue drained (a signalled WR every signal_every posts).
  ibv_wc wc;
  while (ibv_poll_cq(l.scq->cq(), 1, &wc) > 0) {
    if (wc.status != IBV_WC_SUCCESS) {
      fail_exit(std::string("send completion: ") + ibv_wc_status_str(wc.status));
    }
  }
}

void await_message(qp_link& l) {
  ibv_wc wc;
  int n;
  while ((n = ibv_poll_cq(l.rcq->cq(), 1, &wc)) == 0) {
  }
  if (n < 0 || wc.status != IBV_WC_SUCCESS) {
    fail_exit("receive completion failed");
  }
  post_recv(l, static_cast<uint32_t>(wc.wr_id));
}

}  // namespace

int main(int argc, char** argv) {
  options o = parse(argc, argv);
  int fd = tcp_connect(o);
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  sockaddr_storage local{};
  socklen_t llen = sizeof local;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &llen);
  auto gid = v::find_gid(reinterpret_cast<sockaddr*>(&local), llen, {});
  if (!gid) {
    fail_exit("no RoCE v2 GID for this connection's local address");
  }
  qp_link l;
  l.dev = v::device::open(gid->device);
  if (!l.dev) {
    fail_exit("cannot open " + gid->device);
  }
  l.scq = v::completion_queue::create(l.dev, 64);
  l.rcq = v::completion_queue::create(l.dev, recv_depth + 8);
  if (!l.scq || !l.rcq) {
    fail_exit("cannot create CQs");
  }
  l.qp = v::rc_qp::create(l.dev, *l.scq, *l.rcq, 64, recv_depth);
  l.rmb = v::memory_region::create(l.dev, 4096, true);
  l.slots = v::memory_region::create(l.dev, recv_depth * 64, false);
  if (!l.qp || !l.rmb || !l.slots || !l.qp->to_init(gid->port)) {
    fail_exit("cannot create the QP or its memory");
  }
  for (uint32_t i = 0; i < recv_depth; ++i) {
    post_recv(l, i);
  }
  wire_info me{};
  me.qpn = l.qp->qpn();
  me.psn = l.qp->psn();
  std::memcpy(me.gid, gid->gid.data(), 16);
  me.mtu = static_cast<uint32_t>(gid->active_mtu);
  me.addr = l.rmb->addr();
  me.rkey = l.rmb->rkey();
  exchange(fd, &me, &l.peer, sizeof me);
  v::peer_qp p;
  p.qpn = l.peer.qpn;
  p.psn = l.peer.psn;
  std::memcpy(p.gid.data(), l.peer.gid, 16);
  p.mtu = static_cast<ibv_mtu>(l.peer.mtu);
  if (!l.qp->to_rtr(gid->port, gid->gid_index, p) || !l.qp->to_rts()) {
    fail_exit("cannot bring the QP up");
  }
  uint8_t ready = 1;
  uint8_t peer_ready = 0;
  exchange(fd, &ready, &peer_ready, 1);  // both QPs are up before the first message

  std::vector<uint8_t> payload(o.size, 0x5A);
  const uint64_t warmup = std::min<uint64_t>(1000, o.iters / 10);
  if (o.server) {
    for (uint64_t i = 0; i < warmup + o.iters; ++i) {
      await_message(l);
      post_message(l, payload.data(), o);
    }
  } else {
    std::vector<double> lat;
    lat.reserve(o.iters);
    for (uint64_t i = 0; i < warmup + o.iters; ++i) {
      auto t0 = std::chrono::steady_clock::now();
      post_message(l, payload.data(), o);
      await_message(l);
      auto t1 = std::chrono::steady_clock::now();
      if (i >= warmup) {
        lat.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
      }
    }
    double sum = 0;
    for (double x : lat) {
      sum += x;
    }
    std::sort(lat.begin(), lat.end());
    size_t n = lat.size();
    std::printf("verbs pattern=%s size=%u iters=%zu avg_us=%.2f p50_us=%.2f p99_us=%.2f\n",
                o.write_send ? "write_send" : "send", o.size, n, n ? sum / static_cast<double>(n) : 0.0,
                n ? lat[n / 2] : 0.0, n ? lat[std::min(n - 1, n * 99 / 100)] : 0.0);
  }
  // Wait for the peer before tearing the QP down under its last message.
  exchange(fd, &ready, &peer_ready, 1);
  ::close(fd);
  return 0;
}
