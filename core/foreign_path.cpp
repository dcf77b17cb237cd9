// The data path of a connection whose buffers live in another program image:
// an SMC connection that was running when its process exec()d and that the
// new image inherited. Nothing can reach the peer's RMB from here (the
// memfds or the QP stayed behind), so the connection reads as reset: the
// peer's state is "abnormal", both doorbells are readable for good, and
// publishing does nothing, so the peer (and a parent that still holds the
// connection) are left alone.
#include <sys/eventfd.h>
#include <unistd.h>

#include <array>

#include "core/cdc.h"
#include "core/conn.h"
#include "rdma/sys.h"

namespace smc::core {

using rdma::data_path;
using rdma::kind;

namespace {

class foreign_path final : public data_path {
 public:
  foreign_path() : efd_(rdma::place_fd(::eventfd(1, EFD_NONBLOCK | EFD_CLOEXEC))) {}
  ~foreign_path() override {
    if (efd_ >= 0) {
      rdma::sys().close(efd_);
    }
  }

  kind transport() const override { return kind::shm; }
  uint32_t rx_size() const override { return static_cast<uint32_t>(ring_.size()); }
  const uint8_t* rx_data() const override { return ring_.data(); }
  uint64_t peer_prod() const override { return 0; }
  uint8_t peer_conn_flags() const override { return cdc::conn_abnormal; }
  void publish_cons(uint64_t) override {}
  uint32_t tx_size() const override { return static_cast<uint32_t>(ring_.size()); }
  uint64_t peer_cons() const override { return 0; }
  void put(uint32_t, const void*, size_t) override {}
  void publish_prod(uint64_t, uint8_t) override {}
  // One eventfd, written once and never read: readable for as long as the
  // connection exists, as its state (reset) never changes.
  int rx_fd() const override { return efd_; }
  int tx_fd() const override { return efd_; }
  void arm_rx(int) override {}
  void arm_tx(int) override {}
  uint32_t rx_waiters() const override { return 0; }
  uint32_t tx_waiters() const override { return 0; }
  bool drain_rx() override { return true; }
  bool drain_tx() override { return true; }
  void kick_rx() override {}
  void kick_tx() override {}

 private:
  std::array<uint8_t, 64> ring_{};
  int efd_;
};

}  // namespace

std::unique_ptr<data_path> make_foreign_path() {
  auto p = std::make_unique<foreign_path>();
  if (p->rx_fd() < 0) {
    return nullptr;
  }
  return p;
}

}  // namespace smc::core
