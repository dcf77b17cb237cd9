// rdma-core building blocks for SMC-R. See verbs.h.
#include "rdma/verbs/verbs.h"

#include <net/if.h>
#include <netinet/in.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/random.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <new>

#include "rdma/sys.h"

namespace smc::rdma::verbs {

namespace {

bool read_mac(uint32_t ifindex, std::array<uint8_t, 6>& mac) {
  char name[IF_NAMESIZE] = {};
  if (ifindex == 0 || if_indextoname(ifindex, name) == nullptr) {
    return false;
  }
  char path[64 + IF_NAMESIZE];
  std::snprintf(path, sizeof(path), "/sys/class/net/%s/address", name);
  FILE* f = std::fopen(path, "re");
  if (f == nullptr) {
    return false;
  }
  unsigned b[6];
  int n = std::fscanf(f, "%x:%x:%x:%x:%x:%x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]);
  std::fclose(f);
  if (n != 6) {
    return false;
  }
  for (int i = 0; i < 6; ++i) {
    mac[i] = static_cast<uint8_t>(b[i]);
  }
  return true;
}

bool allowed(const std::vector<std::string>& allow, const char* name) {
  if (allow.empty()) {
    return true;
  }
  for (const auto& a : allow) {
    if (a == name) {
      return true;
    }
  }
  return false;
}

}  // namespace

int mtu_bytes(ibv_mtu m) {
  switch (m) {
    case IBV_MTU_256: return 256;
    case IBV_MTU_512: return 512;
    case IBV_MTU_1024: return 1024;
    case IBV_MTU_2048: return 2048;
    case IBV_MTU_4096: return 4096;
  }
  return 0;
}

std::vector<std::string> device_names() {
  library_calls own;
  std::vector<std::string> out;
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (list == nullptr) {
    return out;
  }
  for (int i = 0; i < n; ++i) {
    out.emplace_back(ibv_get_device_name(list[i]));
  }
  ibv_free_device_list(list);
  return out;
}

bool ip_to_gid(const sockaddr* sa, socklen_t len, std::array<uint8_t, 16>& gid) {
  gid.fill(0);
  if (sa == nullptr) {
    return false;
  }
  if (sa->sa_family == AF_INET && len >= sizeof(sockaddr_in)) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    gid[10] = gid[11] = 0xFF;
    std::memcpy(&gid[12], &in->sin_addr, 4);
    return true;
  }
  if (sa->sa_family == AF_INET6 && len >= sizeof(sockaddr_in6)) {
    std::memcpy(gid.data(), &reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr, 16);
    return true;
  }
  return false;
}

std::vector<gid_choice> all_gids(const std::vector<std::string>& allow) {
  library_calls own;
  std::vector<gid_choice> out;
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (list == nullptr) {
    return out;
  }
  for (int i = 0; i < n; ++i) {
    const char* name = ibv_get_device_name(list[i]);
    if (!allowed(allow, name)) {
      continue;
    }
    ibv_context* ctx = ibv_open_device(list[i]);
    if (ctx == nullptr) {
      continue;
    }
    ibv_device_attr da{};
    if (ibv_query_device(ctx, &da) == 0) {
      for (uint8_t port = 1; port <= da.phys_port_cnt; ++port) {
        ibv_port_attr pa{};
        if (ibv_query_port(ctx, port, &pa) != 0 || pa.state != IBV_PORT_ACTIVE ||
            pa.link_layer != IBV_LINK_LAYER_ETHERNET) {
          continue;
        }
        for (int idx = 0; idx < pa.gid_tbl_len; ++idx) {
          ibv_gid_entry e{};
          if (ibv_query_gid_ex(ctx, port, static_cast<uint32_t>(idx), &e, 0) != 0 ||
              e.gid_type != IBV_GID_TYPE_ROCE_V2) {
            continue;
          }
          gid_choice c;
          c.device = name;
          c.port = port;
          c.gid_index = e.gid_index;
          std::memcpy(c.gid.data(), e.gid.raw, 16);
          c.ifindex = e.ndev_ifindex;
          read_mac(c.ifindex, c.mac);
          c.active_mtu = pa.active_mtu;
          out.push_back(c);
        }
      }
    }
    ibv_close_device(ctx);
  }
  ibv_free_device_list(list);
  return out;
}

std::optional<gid_choice> find_gid(const sockaddr* local, socklen_t len,
                                   const std::vector<std::string>& allow) {
  std::array<uint8_t, 16> want{};
  if (!ip_to_gid(local, len, want)) {
    return std::nullopt;
  }
  for (const auto& g : all_gids(allow)) {
    if (g.gid == want) {
      return g;
    }
  }
  return std::nullopt;
}

device::~device() {
  library_calls own;
  if (pd_ != nullptr) {
    ibv_dealloc_pd(pd_);
  }
  if (ctx_ != nullptr) {
    ibv_close_device(ctx_);
  }
}

std::shared_ptr<device> device::open(const std::string& name) {
  library_calls own;
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (list == nullptr) {
    return nullptr;
  }
  std::shared_ptr<device> d(new (std::nothrow) device());
  for (int i = 0; d && i < n; ++i) {
    if (name == ibv_get_device_name(list[i])) {
      d->ctx_ = ibv_open_device(list[i]);
      break;
    }
  }
  ibv_free_device_list(list);
  if (!d || d->ctx_ == nullptr) {
    errno = ENODEV;
    return nullptr;
  }
  d->name_ = name;
  d->pd_ = ibv_alloc_pd(d->ctx_);
  if (d->pd_ == nullptr) {
    return nullptr;
  }
  return d;
}

memory_region::~memory_region() {
  library_calls own;
  if (mr_ != nullptr) {
    ibv_dereg_mr(mr_);
  }
  if (data_ != nullptr) {
    munmap(data_, size_);
  }
}

std::unique_ptr<memory_region> memory_region::create(const std::shared_ptr<device>& dev,
                                                     size_t size, bool remote_write) {
  library_calls own;
  std::unique_ptr<memory_region> m(new (std::nothrow) memory_region());
  if (!m) {
    errno = ENOMEM;
    return nullptr;
  }
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    return nullptr;
  }
  m->data_ = static_cast<uint8_t*>(p);
  m->size_ = size;
  m->dev_ = dev;
  int access = IBV_ACCESS_LOCAL_WRITE | (remote_write ? IBV_ACCESS_REMOTE_WRITE : 0);
  m->mr_ = ibv_reg_mr(dev->pd(), p, size, access);
  if (m->mr_ == nullptr) {
    return nullptr;
  }
  return m;
}

completion_queue::~completion_queue() {
  library_calls own;
  if (cq_ != nullptr) {
    if (unsigned n = unacked_.load(); n != 0) {
      ibv_ack_cq_events(cq_, n);
    }
    ibv_destroy_cq(cq_);
  }
  if (channel_ != nullptr) {
    ibv_destroy_comp_channel(channel_);
  }
}

std::unique_ptr<completion_queue> completion_queue::create(const std::shared_ptr<device>& dev,
                                                           int entries) {
  library_calls own;
  std::unique_ptr<completion_queue> q(new (std::nothrow) completion_queue());
  if (!q) {
    errno = ENOMEM;
    return nullptr;
  }
  q->dev_ = dev;
  q->channel_ = ibv_create_comp_channel(dev->ctx());
  if (q->channel_ == nullptr) {
    return nullptr;
  }
  // The engine thread polls the channel fd; never block inside ibv_get_cq_event.
  int fl = fcntl(q->channel_->fd, F_GETFL);
  fcntl(q->channel_->fd, F_SETFL, fl | O_NONBLOCK);
  q->cq_ = ibv_create_cq(dev->ctx(), entries, q.get(), q->channel_, 0);
  if (q->cq_ == nullptr || !q->arm()) {
    return nullptr;
  }
  return q;
}

bool completion_queue::arm() {
  library_calls own;
  return ibv_req_notify_cq(cq_, 0) == 0;
}

bool completion_queue::take_event() {
  library_calls own;
  ibv_cq* cq = nullptr;
  void* ctx = nullptr;
  if (ibv_get_cq_event(channel_, &cq, &ctx) != 0) {
    return false;
  }
  // Acknowledging costs a lock: batch it.
  if (unacked_.fetch_add(1) + 1 >= 64) {
    if (unsigned n = unacked_.exchange(0); n != 0) {
      ibv_ack_cq_events(cq_, n);
    }
  }
  return true;
}

rc_qp::~rc_qp() {
  library_calls own;
  if (qp_ != nullptr) {
    ibv_destroy_qp(qp_);
  }
}

std::unique_ptr<rc_qp> rc_qp::create(const std::shared_ptr<device>& dev, completion_queue& send_cq,
                                     completion_queue& recv_cq, uint32_t send_wr,
                                     uint32_t recv_wr) {
  library_calls own;
  std::unique_ptr<rc_qp> q(new (std::nothrow) rc_qp());
  if (!q) {
    errno = ENOMEM;
    return nullptr;
  }
  q->dev_ = dev;
  ibv_qp_init_attr a{};
  a.send_cq = send_cq.cq();
  a.recv_cq = recv_cq.cq();
  a.qp_type = IBV_QPT_RC;
  a.sq_sig_all = 0;
  a.cap.max_send_wr = send_wr;
  a.cap.max_recv_wr = recv_wr;
  a.cap.max_send_sge = 2;
  a.cap.max_recv_sge = 1;
  a.cap.max_inline_data = 64;  // CDC and LLC messages (44 bytes) go inline
  q->qp_ = ibv_create_qp(dev->pd(), &a);
  if (q->qp_ == nullptr) {
    return nullptr;
  }
  uint32_t r = 0;
  if (getrandom(&r, sizeof(r), GRND_NONBLOCK) != sizeof(r)) {  // a PSN need not be secret
    r = static_cast<uint32_t>(reinterpret_cast<uintptr_t>(q.get()) >> 4);
  }
  q->psn_ = r & 0xFFFFFF;
  return q;
}

bool rc_qp::to_init(uint8_t port) {
  library_calls own;
  ibv_qp_attr a{};
  a.qp_state = IBV_QPS_INIT;
  a.pkey_index = 0;
  a.port_num = port;
  a.qp_access_flags = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE;
  return ibv_modify_qp(qp_, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT |
                                    IBV_QP_ACCESS_FLAGS) == 0;
}

bool rc_qp::to_rtr(uint8_t port, uint32_t sgid_index, const peer_qp& peer) {
  library_calls own;
  ibv_qp_attr a{};
  a.qp_state = IBV_QPS_RTR;
  a.path_mtu = peer.mtu;
  a.dest_qp_num = peer.qpn & 0xFFFFFF;
  a.rq_psn = peer.psn & 0xFFFFFF;
  a.max_dest_rd_atomic = 1;
  a.min_rnr_timer = 5;
  a.ah_attr.is_global = 1;
  a.ah_attr.port_num = port;
  a.ah_attr.grh.sgid_index = static_cast<uint8_t>(sgid_index);
  a.ah_attr.grh.hop_limit = 64;  // SMC-Rv2: routable RoCE v2
  std::memcpy(a.ah_attr.grh.dgid.raw, peer.gid.data(), 16);
  return ibv_modify_qp(qp_, &a, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
                                    IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC |
                                    IBV_QP_MIN_RNR_TIMER) == 0;
}

bool rc_qp::to_rts() {
  library_calls own;
  ibv_qp_attr a{};
  a.qp_state = IBV_QPS_RTS;
  a.timeout = 15;   // 4.096 us * 2^15 ~ 134 ms, as Linux
  a.retry_cnt = 7;
  a.rnr_retry = 7;  // infinite
  a.sq_psn = psn_;
  a.max_rd_atomic = 1;
  return ibv_modify_qp(qp_, &a, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT |
                                    IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC) == 0;
}

bool rc_qp::to_error() {
  library_calls own;
  ibv_qp_attr a{};
  a.qp_state = IBV_QPS_ERR;
  return ibv_modify_qp(qp_, &a, IBV_QP_STATE) == 0;
}

}  // namespace smc::rdma::verbs
