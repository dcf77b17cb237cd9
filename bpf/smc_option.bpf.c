// RFC 7609 capability detection for smc-preload, as cgroup eBPF programs:
//
//  - sockops: a socket the preload marked (SMC_BPF_ADVERTISE) sends the SMC
//    TCP option in its SYN; a marked listener echoes it in the SYN-ACK to
//    clients whose SYN carried it (Linux's AF_SMC client requires that echo,
//    its AF_SMC server requires the option in the SYN). Whether the peer
//    sent the option is recorded per socket.
//  - cgroup/setsockopt, cgroup/getsockopt on SMC_BPF_SOL: the preload's way
//    to mark a socket and to read what the peer sent (see smc_bpf.h).
//
// Sockets nobody marked are left alone: their SYNs stay as they were, and
// options of other levels pass through untouched. Needs Linux >= 5.10
// (TCP header option callbacks). Loaded by scripts/smc-bpf.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "smc_bpf.h"

#define SOL_TCP 6
#define TCP_SAVE_SYN 27
#define TCPHDR_SYN 0x02
#define TCPHDR_ACK 0x10

struct smc_sk {
  __u8 advertise;  // marked by the preload
  __u8 peer;       // SMC_BPF_PEER_* bits
};

struct {
  __uint(type, BPF_MAP_TYPE_SK_STORAGE);
  __uint(map_flags, BPF_F_NO_PREALLOC | BPF_F_CLONE);  // accepted sockets inherit the mark
  __type(key, int);
  __type(value, struct smc_sk);
} smc_sk_map SEC(".maps");

struct smc_opt {
  __u8 kind, len;
  __u8 magic[4];
} __attribute__((packed));

static __always_inline int is_smc(const struct smc_opt *o) {
  return o->len == SMC_TCPOPT_LEN && o->magic[0] == SMC_TCPOPT_MAGIC0 &&
         o->magic[1] == SMC_TCPOPT_MAGIC1 && o->magic[2] == SMC_TCPOPT_MAGIC2 &&
         o->magic[3] == SMC_TCPOPT_MAGIC3;
}

// Searches the current packet (flags 0) or the SYN of a passive open
// (BPF_LOAD_HDR_OPT_TCP_SYN) for the option. kind 254 with a 6-byte search
// buffer matches all four ExID bytes.
static __always_inline int has_option(struct bpf_sock_ops *skops, __u64 flags) {
  struct smc_opt o = {SMC_TCPOPT_KIND, SMC_TCPOPT_LEN,
                      {SMC_TCPOPT_MAGIC0, SMC_TCPOPT_MAGIC1, SMC_TCPOPT_MAGIC2, SMC_TCPOPT_MAGIC3}};
  long r = bpf_load_hdr_opt(skops, &o, sizeof(o), flags);
  return r == sizeof(o) && is_smc(&o);
}

static __always_inline struct smc_sk *storage(struct bpf_sock *sk, int create) {
  if (!sk) {
    return 0;
  }
  return bpf_sk_storage_get(&smc_sk_map, sk, 0, create ? BPF_SK_STORAGE_GET_F_CREATE : 0);
}

SEC("sockops")
int smc_sockops(struct bpf_sock_ops *skops) {
  struct smc_sk *s;
  const struct smc_opt opt = {SMC_TCPOPT_KIND, SMC_TCPOPT_LEN,
                              {SMC_TCPOPT_MAGIC0, SMC_TCPOPT_MAGIC1, SMC_TCPOPT_MAGIC2, SMC_TCPOPT_MAGIC3}};
  switch (skops->op) {
    case BPF_SOCK_OPS_TCP_CONNECT_CB:
    case BPF_SOCK_OPS_TCP_LISTEN_CB:
      // Only marked sockets get the header option callbacks (for a
      // listener, those of its SYN-ACKs).
      s = storage(skops->sk, 0);
      if (s && s->advertise) {
        bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
                                             BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG);
        if (skops->op == BPF_SOCK_OPS_TCP_LISTEN_CB) {
          // Keeps each client's SYN with its connection, so that
          // PASSIVE_ESTABLISHED can look for the option in it.
          int one = 1;
          bpf_setsockopt(skops, SOL_TCP, TCP_SAVE_SYN, &one, sizeof(one));
        }
      }
      break;
    case BPF_SOCK_OPS_HDR_OPT_LEN_CB:
    case BPF_SOCK_OPS_WRITE_HDR_OPT_CB:
      if (!(skops->skb_tcp_flags & TCPHDR_SYN)) {
        break;  // the option belongs in SYN and SYN-ACK only
      }
      // A SYN-ACK echoes the option only to a client that offered it.
      if ((skops->skb_tcp_flags & TCPHDR_ACK) && !has_option(skops, BPF_LOAD_HDR_OPT_TCP_SYN)) {
        break;
      }
      if (skops->op == BPF_SOCK_OPS_HDR_OPT_LEN_CB) {
        bpf_reserve_hdr_opt(skops, sizeof(opt), 0);
      } else {
        bpf_store_hdr_opt(skops, &opt, sizeof(opt), 0);
      }
      break;
    case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:  // the packet is the SYN-ACK
      s = storage(skops->sk, 0);
      if (s && s->advertise) {
        s->peer = SMC_BPF_PEER_KNOWN | (has_option(skops, 0) ? SMC_BPF_PEER_SMC : 0);
      }
      break;
    case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:  // the client's SYN is at hand
      s = storage(skops->sk, 0);  // cloned from the marked listener
      if (s && s->advertise) {
        s->peer = SMC_BPF_PEER_KNOWN |
                  (has_option(skops, BPF_LOAD_HDR_OPT_TCP_SYN) ? SMC_BPF_PEER_SMC : 0);
      }
      break;
  }
  return 1;
}

SEC("cgroup/setsockopt")
int smc_setsockopt(struct bpf_sockopt *ctx) {
  if (ctx->level != SMC_BPF_SOL) {
    return 1;  // not ours: the kernel handles it, untouched
  }
  if (ctx->optname == SMC_BPF_ADVERTISE) {
    struct smc_sk *s = storage(ctx->sk, 1);
    if (s) {
      s->advertise = 1;
    }
  }
  ctx->optlen = -1;  // answered here: the kernel returns 0 without a look
  return 1;
}

SEC("cgroup/getsockopt")
int smc_getsockopt(struct bpf_sockopt *ctx) {
  if (ctx->level != SMC_BPF_SOL || ctx->optname != SMC_BPF_PEER) {
    return 1;  // the kernel's answer stands
  }
  void *end = ctx->optval_end;
  int *v = ctx->optval;
  if ((void *)(v + 1) > end) {
    return 1;
  }
  struct smc_sk *s = storage(ctx->sk, 0);
  *v = s ? s->peer : 0;
  ctx->optlen = sizeof(int);
  // Two 4-byte stores: the verifier refuses the one 8-byte store clang
  // would merge them into.
  asm volatile("" ::: "memory");
  ctx->retval = 0;
  return 1;
}

char LICENSE[] SEC("license") = "GPL";
