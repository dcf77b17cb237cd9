// The private socket option level that connects the preload with the
// cgroup eBPF programs of bpf/smc_option.bpf.c. Applications cannot call
// bpf() (Debian: kernel.unprivileged_bpf_disabled=2), but every process may
// call setsockopt/getsockopt, and the cgroup hooks answer this level before
// the kernel would refuse it (ENOPROTOOPT: no programs are attached).
// Shared by the BPF C code and the C++ library: plain C, no includes.
#ifndef SMC_BPF_H
#define SMC_BPF_H

// "SMC" in ASCII: far from every level the kernel knows.
#define SMC_BPF_SOL 0x534d43

// setsockopt(fd, SMC_BPF_SOL, SMC_BPF_ADVERTISE, &one, sizeof(int)) before
// connect() or listen(): the socket's SYN (or a listener's SYN-ACKs to
// clients that offered it) carries RFC 7609's TCP option.
#define SMC_BPF_ADVERTISE 1

// getsockopt(fd, SMC_BPF_SOL, SMC_BPF_PEER, &v, &len), len = sizeof(int),
// on a connected socket: v has SMC_BPF_PEER_KNOWN set (the programs saw the
// handshake) and SMC_BPF_PEER_SMC when the peer's SYN-ACK (or, accepted,
// its SYN) carried the option.
#define SMC_BPF_PEER 2
#define SMC_BPF_PEER_KNOWN 0x1
#define SMC_BPF_PEER_SMC 0x2

// RFC 7609's option: kind 254 (experimental), length 6, ExID "SMCR" in EBCDIC.
#define SMC_TCPOPT_KIND 254
#define SMC_TCPOPT_LEN 6
#define SMC_TCPOPT_MAGIC0 0xE2
#define SMC_TCPOPT_MAGIC1 0xD4
#define SMC_TCPOPT_MAGIC2 0xC3
#define SMC_TCPOPT_MAGIC3 0xD9

#endif
