// rdma-core (libibverbs) building blocks for SMC-R: device and RoCE v2 GID
// discovery, and RAII owners for the verbs objects a link needs (device
// context + PD, completion channel, CQ, RC QP, MR). No SMC semantics here:
// core/ builds link groups, CDC and LLC on top of these.
#pragma once

#include <infiniband/verbs.h>
#include <sys/socket.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace smc::rdma::verbs {

/// A RoCE v2 GID of a port, matched to an IP address of the host.
struct gid_choice {
  std::string device;       // ibv device name, e.g. "rxe0"
  uint8_t port = 1;
  uint32_t gid_index = 0;
  std::array<uint8_t, 16> gid{};
  uint32_t ifindex = 0;     // the netdev the GID belongs to
  std::array<uint8_t, 6> mac{};
  ibv_mtu active_mtu = IBV_MTU_1024;
};

/// Names of the RDMA devices present (empty when there are none).
std::vector<std::string> device_names();

/// Every RoCE v2 GID of an active Ethernet port on the devices named in
/// `allow` (empty = all).
std::vector<gid_choice> all_gids(const std::vector<std::string>& allow);

/// The GID a RoCE v2 port has for an IP address (IPv4 as ::ffff:a.b.c.d).
bool ip_to_gid(const sockaddr* sa, socklen_t len, std::array<uint8_t, 16>& gid);

/// The RoCE v2 GID whose address is `local` (the TCP connection's local IP;
/// IPv4 addresses match their IPv4-mapped GID), on a device named in `allow`
/// (empty = any) with an active port. nullopt when there is none.
std::optional<gid_choice> find_gid(const sockaddr* local, socklen_t len,
                                   const std::vector<std::string>& allow);

/// An opened device with its protection domain. Shared by every link on it.
class device {
 public:
  ~device();
  device(const device&) = delete;
  device& operator=(const device&) = delete;
  /// nullptr + errno on failure.
  static std::shared_ptr<device> open(const std::string& name);
  ibv_context* ctx() const { return ctx_; }
  ibv_pd* pd() const { return pd_; }
  const std::string& name() const { return name_; }

 private:
  device() = default;
  std::string name_;
  ibv_context* ctx_ = nullptr;
  ibv_pd* pd_ = nullptr;
};

/// A memory region registered for local write and (optionally) remote write.
/// Never remote read: a peer may only place data, not fetch it.
class memory_region {
 public:
  ~memory_region();
  memory_region(const memory_region&) = delete;
  memory_region& operator=(const memory_region&) = delete;
  /// Page-aligned, zeroed allocation of `size` bytes, registered on `dev`.
  static std::unique_ptr<memory_region> create(const std::shared_ptr<device>& dev, size_t size,
                                               bool remote_write);
  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  uint32_t lkey() const { return mr_->lkey; }
  uint32_t rkey() const { return mr_->rkey; }
  uint64_t addr() const { return reinterpret_cast<uintptr_t>(data_); }

 private:
  memory_region() = default;
  std::shared_ptr<device> dev_;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  ibv_mr* mr_ = nullptr;
};

/// A completion queue on its own completion channel (the channel's fd is
/// what the engine thread waits on).
class completion_queue {
 public:
  ~completion_queue();
  completion_queue(const completion_queue&) = delete;
  completion_queue& operator=(const completion_queue&) = delete;
  static std::unique_ptr<completion_queue> create(const std::shared_ptr<device>& dev, int entries);
  ibv_cq* cq() const { return cq_; }
  int fd() const { return channel_->fd; }
  /// Re-arms notification; call after draining.
  bool arm();
  /// Consumes the channel event (after fd() became readable). Non-blocking;
  /// any thread (false: no event, e.g. another thread took it).
  bool take_event();

 private:
  completion_queue() = default;
  std::shared_ptr<device> dev_;
  ibv_comp_channel* channel_ = nullptr;
  ibv_cq* cq_ = nullptr;
  std::atomic<unsigned> unacked_{0};  // taken, not yet acknowledged
};

/// What the peer told us about its end of a link (from CLC / LLC).
struct peer_qp {
  uint32_t qpn = 0;
  uint32_t psn = 0;
  std::array<uint8_t, 16> gid{};
  ibv_mtu mtu = IBV_MTU_1024;
};

/// An RC queue pair, RESET -> INIT -> RTR -> RTS with SMC-R's parameters
/// (PROTOCOL.md 5.3).
class rc_qp {
 public:
  ~rc_qp();
  rc_qp(const rc_qp&) = delete;
  rc_qp& operator=(const rc_qp&) = delete;
  static std::unique_ptr<rc_qp> create(const std::shared_ptr<device>& dev, completion_queue& send_cq,
                                       completion_queue& recv_cq, uint32_t send_wr, uint32_t recv_wr);
  ibv_qp* qp() const { return qp_; }
  uint32_t qpn() const { return qp_->qp_num; }
  uint32_t psn() const { return psn_; }
  bool to_init(uint8_t port);
  bool to_rtr(uint8_t port, uint32_t sgid_index, const peer_qp& peer);
  bool to_rts();
  bool to_error();

 private:
  rc_qp() = default;
  std::shared_ptr<device> dev_;
  ibv_qp* qp_ = nullptr;
  uint32_t psn_ = 0;
};

/// ib_mtu enum <-> bytes.
int mtu_bytes(ibv_mtu m);

}  // namespace smc::rdma::verbs
