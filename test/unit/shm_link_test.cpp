// Unit tests for same-host links (rdma/shm/shm_link.h): two links joined by a
// socketpair stand for the two processes' ends. Slots come back to their
// link when a path ends and are lent again only once the peer released
// them; a slot counts only when its control page offers it for the
// connection's token; and whatever a peer
// sends that breaks the link protocol ends that link, with every fd it
// brought closed.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "rdma/shm/shm_link.h"
#include "rdma/shm/shm_transport.h"
#include "rdma/sys.h"

namespace {

namespace shm = smc::rdma::shm;
using smc::rdma::data_path;

constexpr uint32_t ring = 16 * 1024;

// A link message as rdma/shm/shm_link.cpp lays it out (struct link_msg).
struct wire_msg {
  uint32_t magic;
  uint32_t kind;
  uint64_t token;
  uint32_t slot;
  uint32_t size;
};
constexpr uint32_t wire_magic = 0x534d4c4bu;
constexpr uint32_t k_new_slot = 1;

int seqpacket_pair(int sv[2]) {
  return ::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv);
}

struct link_pair {
  std::shared_ptr<shm::link> a;  // the server's end
  std::shared_ptr<shm::link> b;  // the client's end
  link_pair() {
    int sv[2];
    REQUIRE(seqpacket_pair(sv) == 0);
    a = std::make_shared<shm::link>(sv[0], 1);
    b = std::make_shared<shm::link>(sv[1], 1);
  }
};

struct conn_paths {
  std::unique_ptr<data_path> pa;
  std::unique_ptr<data_path> pb;
  uint32_t a_slot = 0;
  uint32_t b_slot = 0;
};

// One connection as the handshake makes it over an existing link: the
// server lends a slot and offers it for its token, the client takes it on
// that offer, lends its own and offers it, the server takes that.
conn_paths connect_over(link_pair& lp) {
  auto a_own = lp.a->take_own(ring);
  REQUIRE(a_own);
  const uint64_t token = a_own->token;
  shm::link::offer(*a_own, token);
  auto b_peer = lp.b->take_peer(token, a_own->slot, ring);
  REQUIRE(b_peer);
  auto b_own = lp.b->take_own(ring);
  REQUIRE(b_own);
  shm::link::offer(*b_own, token);
  auto a_peer = lp.a->take_peer(token, b_own->slot, ring);
  REQUIRE(a_peer);
  conn_paths c;
  c.a_slot = a_own->slot;
  c.b_slot = b_own->slot;
  c.pa = shm::make_path(std::move(a_own), std::move(a_peer), lp.a);
  c.pb = shm::make_path(std::move(b_own), std::move(b_peer), lp.b);
  REQUIRE(c.pa);
  REQUIRE(c.pb);
  return c;
}

// Bytes written by one path arrive in the other's RMB, both ways.
void check_carries(conn_paths& c) {
  REQUIRE(c.pa->peer_prod() == 0);
  REQUIRE(c.pb->peer_prod() == 0);
  c.pa->put(0, "ab", 2);
  c.pa->publish_prod(2, 0);
  c.pb->put(0, "xyz", 3);
  c.pb->publish_prod(3, 0);
  REQUIRE(c.pb->peer_prod() == 2);
  REQUIRE(std::memcmp(c.pb->rx_data(), "ab", 2) == 0);
  REQUIRE(c.pa->peer_prod() == 3);
  REQUIRE(std::memcmp(c.pa->rx_data(), "xyz", 3) == 0);
}

bool fd_open(int fd) { return ::fcntl(fd, F_GETFD) != -1; }

}  // namespace

TEST_CASE("a link lends a released slot again, reset, with no new memory") {
  link_pair lp;
  conn_paths c1 = connect_over(lp);
  check_carries(c1);
  const uint8_t* a_rx = c1.pa->rx_data();
  const uint8_t* b_rx = c1.pb->rx_data();
  const int a_bell = c1.pa->rx_fd();
  c1.pb.reset();
  c1.pa.reset();

  conn_paths c2 = connect_over(lp);
  CHECK(c2.a_slot == c1.a_slot);
  CHECK(c2.b_slot == c1.b_slot);
  CHECK(c2.pa->rx_data() == a_rx);  // the same mapping, not a new one
  CHECK(c2.pb->rx_data() == b_rx);
  CHECK(c2.pa->rx_fd() == a_bell);
  check_carries(c2);  // cursors start from 0 again
  CHECK(lp.a->alive());
  CHECK(lp.b->alive());
}

TEST_CASE("a slot is not lent again while its peer may still write it") {
  link_pair lp;
  conn_paths c1 = connect_over(lp);
  c1.pa.reset();  // the server is done; the client's end still lives
  conn_paths c2 = connect_over(lp);
  CHECK(c2.a_slot != c1.a_slot);
  CHECK(c2.b_slot != c1.b_slot);  // the client's first slot is still lent
  check_carries(c2);
}

TEST_CASE("a slot counts only when it offers itself for the token, once") {
  link_pair lp;
  auto a_own = lp.a->take_own(ring);
  REQUIRE(a_own);
  const uint64_t token = a_own->token;

  SECTION("not offered") {
    errno = 0;
    CHECK(lp.b->take_peer(token, a_own->slot, ring) == nullptr);
    CHECK(errno == EPROTO);
  }
  SECTION("offered for another token") {
    shm::link::offer(*a_own, token + 1);
    CHECK(lp.b->take_peer(token, a_own->slot, ring) == nullptr);
  }
  SECTION("another slot named") {
    shm::link::offer(*a_own, token);
    CHECK(lp.b->take_peer(token, a_own->slot + 1, ring) == nullptr);
  }
  SECTION("offered, a wrong size named") {
    shm::link::offer(*a_own, token);
    CHECK(lp.b->take_peer(token, a_own->slot, ring * 2) == nullptr);
  }
  SECTION("a slot already lent, named again") {
    shm::link::offer(*a_own, token);
    auto first = lp.b->take_peer(token, a_own->slot, ring);
    REQUIRE(first);
    shm::link::offer(*a_own, token + 7);
    CHECK(lp.b->take_peer(token + 7, a_own->slot, ring) == nullptr);
    lp.b->discard(nullptr, std::move(first));
  }
  CHECK(lp.b->alive());  // none of that is the link's end
  lp.a->discard(std::move(a_own), nullptr);
}

TEST_CASE("a slot lent in a Proposal goes to the claim or to the withdrawal, never both") {
  link_pair lp;
  auto b_own = lp.b->take_own(ring);  // the client's, lent before any Accept
  REQUIRE(b_own);
  const uint64_t lend = 0x8000000000001234ULL;
  shm::link::offer(*b_own, lend);
  const uint32_t slot = b_own->slot;

  SECTION("claimed first: the withdrawal fails, the slot is the server's until released") {
    auto taken = lp.a->take_peer(lend, slot, 0, true);
    REQUIRE(taken);
    CHECK(lp.a->take_peer(lend, slot, 0, true) == nullptr);  // once
    CHECK_FALSE(shm::link::withdraw(*b_own, lend));
    lp.b->give_back(std::move(b_own), nullptr, true);  // waits for the release
    lp.a->give_back(nullptr, std::move(taken), true);  // the server's connection ends
    auto again = lp.b->take_own(ring);
    REQUIRE(again);
    CHECK(again->slot == slot);  // released: lent again
    lp.b->discard(std::move(again), nullptr);
  }
  SECTION("withdrawn first: no claim, and the slot is idle again at once") {
    CHECK(shm::link::withdraw(*b_own, lend));
    errno = 0;
    CHECK(lp.a->take_peer(lend, slot, 0, true) == nullptr);
    CHECK(errno == EPROTO);
    lp.b->put_back(std::move(b_own));
    auto again = lp.b->take_own(ring);
    REQUIRE(again);
    CHECK(again->slot == slot);
    lp.b->discard(std::move(again), nullptr);
  }
  CHECK(lp.a->alive());
  CHECK(lp.b->alive());
}

TEST_CASE("a reused slot carries a few rings into its next connection, never a flood") {
  link_pair lp;
  int bell = -1;
  for (int round = 0; round < 40; ++round) {
    conn_paths c = connect_over(lp);
    bell = c.pa->rx_fd();
    if (round == 1) {
      // The first connection's ring is still there: no drain (a system
      // call) when the slot was lent again.
      pollfd p{bell, POLLIN, 0};
      CHECK(::poll(&p, 1, 0) == 1);
    }
    // The peer rings while the server waits; the server re-arms without a
    // drain (an edge-triggered watch), as event loops do.
    c.pa->arm_rx(1);
    c.pb->put(0, "x", 1);
    c.pb->publish_prod(1, 0);
    CHECK(c.pa->rearm_rx() >= 0);
    c.pa->arm_rx(-1);
    // A drain finds no flood however many connections left rings behind.
    if (round % 10 == 9) {
      CHECK(c.pa->drain_rx());
    }
    c.pb.reset();
    c.pa.reset();
  }
  // Every ring left in the doorbell was counted: what it holds now is at
  // most what a reuse may carry (plus the last connection's own).
  int queued = 0;
  char b;
  while (::recv(bell, &b, 1, MSG_DONTWAIT) == 1) {
    ++queued;
  }
  CHECK(queued <= static_cast<int>(shm::max_carried_rings) + 2);
  CHECK(lp.a->alive());
}

TEST_CASE("a fork retires every link: nothing of it is lent again") {
  link_pair lp;
  conn_paths c1 = connect_over(lp);
  shm::lock_for_fork();
  shm::after_fork(false);
  CHECK_FALSE(lp.a->alive());
  CHECK(lp.a->take_own(ring) == nullptr);
  c1.pa.reset();  // the halves are destroyed, not kept
  c1.pb.reset();
  CHECK(lp.b->take_own(ring) == nullptr);
}

TEST_CASE("whatever breaks the link protocol ends that link and closes what it brought") {
  int sv[2];
  REQUIRE(seqpacket_pair(sv) == 0);
  auto l = std::make_shared<shm::link>(sv[0], 1);
  const int peer = sv[1];

  // A real slot's fds, as a peer that follows the protocol sends them.
  shm::local_side side;
  REQUIRE(side.init(ring));
  const int good[3] = {side.rmb->fd(), side.rx_bell_ring, side.tx_bell_ring};

  SECTION("control: a well-formed slot that offers itself is taken") {
    const wire_msg m{wire_magic, k_new_slot, 0, 5, ring};
    REQUIRE(smc::rdma::send_with_fds(peer, &m, sizeof m, good, 3));
    shm::link::offer(side, 42);
    auto half = l->take_peer(42, 5, ring);
    CHECK(half);
    CHECK(l->alive());
    CHECK(l->why_dead().empty());
    l->discard(nullptr, std::move(half));
    ::close(peer);
    return;
  }

  int pfd[2];
  REQUIRE(::pipe2(pfd, O_CLOEXEC | O_NONBLOCK) == 0);
  std::vector<int> fds;
  wire_msg m{wire_magic, k_new_slot, 0, 5, ring};
  size_t len = sizeof m;
  SECTION("a short message") { len = 4; }
  SECTION("a wrong magic") { m.magic ^= 1; }
  SECTION("an unknown kind") { m.kind = 9; }
  SECTION("the unused kind 2, with an fd") {
    m.kind = 2;
    fds = {pfd[1]};
  }
  SECTION("a slot with one fd") { fds = {good[0]}; }
  SECTION("a slot whose fds are a pipe") { fds = {pfd[1], pfd[1], pfd[1]}; }
  SECTION("a slot whose RMB is a doorbell") { fds = {good[1], good[1], good[2]}; }
  SECTION("a slot numbered 0") {
    m.slot = 0;
    fds = {good[0], good[1], good[2]};
  }
  SECTION("a slot of a size no ring has") {
    m.size = 1000;
    fds = {good[0], good[1], good[2]};
  }
  SECTION("a slot whose memfd is not its size") {
    m.size = ring * 2;
    fds = {good[0], good[1], good[2]};
  }
  SECTION("the same slot twice") {
    REQUIRE(smc::rdma::send_with_fds(peer, &m, sizeof m, good, 3));
    fds = {good[0], good[1], good[2]};
  }
  REQUIRE(smc::rdma::send_with_fds(peer, &m, len, fds.data(), fds.size()));
  CHECK(l->take_peer(7, 99, ring) == nullptr);  // a slot it does not know: it looks
  CHECK_FALSE(l->alive());
  // What ended it is there for the log line of the connection it fails.
  const std::string why = l->why_dead();
  CHECK((why == "the peer broke the link protocol" ||
         why == "the peer announced a slot we cannot take"));
  CHECK(l->take_own(ring) == nullptr);
  // Every fd that came with the message is closed: with our own write end
  // closed too, the pipe reads as ended.
  ::close(pfd[1]);
  char c;
  CHECK(::read(pfd[0], &c, 1) == 0);
  ::close(pfd[0]);
  ::close(peer);
  CHECK(fd_open(good[0]));  // ours, untouched
}

TEST_CASE("a link whose peer went away lends nothing") {
  int sv[2];
  REQUIRE(seqpacket_pair(sv) == 0);
  auto l = std::make_shared<shm::link>(sv[0], 1);
  ::close(sv[1]);
  SECTION("found announcing a slot") {
    CHECK(l->take_own(ring) == nullptr);
    CHECK_FALSE(l->alive());
    CHECK(l->why_dead() == std::string("a message to the peer failed: ") + std::strerror(EPIPE));
  }
  SECTION("found looking for the peer's slot") {
    CHECK(l->take_peer(7, 99, ring) == nullptr);
    CHECK_FALSE(l->alive());
    CHECK(l->why_dead() == "the peer hung up");
  }
}
