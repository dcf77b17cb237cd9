// SMC-R over rdma-core: link groups, the CDC-carrying RDMA data path, and the
// LLC exchanges a single-link group needs (CONFIRM LINK, TEST LINK, DELETE
// LINK). Connections between the same two peers share one link group and
// its RC QP; each connection owns an RMB (registered for remote write only)
// that the peer RDMA-writes into, and a local staging ring it writes from.
// After the data, a 44-byte CDC message (IBV_WR_SEND on the same QP, so RC
// ordering places the data first) carries the cursors (PROTOCOL.md 3).
#pragma once

#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/clc.h"
#include "rdma/transport.h"
#include "rdma/verbs/verbs.h"

namespace smc::core::smcr {

enum class role : uint8_t { client, server };

class link_group;

/// The local RoCE v2 identity for the local address of TCP socket `fd`, or
/// nullopt when no usable RDMA device serves it (the address is not asked
/// for when the host has no RoCE GID at all). The devices' scan is cached.
std::optional<rdma::verbs::gid_choice> local_gid(int fd, const std::vector<std::string>& devices);

/// Scans the RDMA devices now (if the cached scan is stale), so that a
/// handshake that follows does not wait for it.
void warm_up(const std::vector<std::string>& devices);

/// This process's SMC system id (peer id): 2 random bytes + a device MAC.
clc::peer_id_t system_id(const rdma::verbs::gid_choice& g);

/// One side's half of an SMC-R connection, being set up by the handshake.
struct pending {
  std::shared_ptr<link_group> lgr;
  bool first_contact = false;
  std::shared_ptr<struct slot> s;  // the connection's buffers and cursors
};

/// Server: find a usable link group with this peer (by its peer id, which
/// names one process of ours or one Linux host, and its RoCE GID, as Linux
/// matches them) or make a new one (first contact); create the connection's
/// buffers.
std::optional<pending> server_prepare(const rdma::verbs::gid_choice& local,
                                      const clc::peer_id_t& peer_id, const clc::gid_t& peer_gid,
                                      uint32_t rmb_size);
/// Fills an Accept/Confirm with our link and buffer data.
void fill_accept_confirm(const pending& p, clc::accept_confirm_r& m);
/// Server, after a valid Confirm: records the peer's buffer and, on first
/// contact, brings the link up (QP to RTS, CONFIRM LINK request/response).
bool server_complete(pending& p, const clc::accept_confirm_r& confirm, int timeout_ms);

/// Client, after a valid Accept: joins the link group the server named (or
/// creates it on first contact, QP to RTR) and creates the buffers.
/// nullopt + *sync_error when the server's group is unknown to us.
std::optional<pending> client_prepare(const rdma::verbs::gid_choice& local,
                                      const clc::accept_confirm_r& accept, uint32_t rmb_size,
                                      bool* sync_error);
/// Client, after sending Confirm: on first contact waits for the server's
/// CONFIRM LINK, moves the QP to RTS and answers.
bool client_complete(pending& p, int timeout_ms);

/// The peer does not know the link group we chose (CLC Decline with the
/// out-of-sync flag): end that group, and drop the connection.
void out_of_sync(pending& p);

/// Drops a connection that did not complete its handshake.
void abandon(pending& p);

/// The data path for a prepared, completed connection.
std::unique_ptr<rdma::data_path> make_path(pending&& p);

/// Live verbs objects (for tests and leak checks): link groups, connection slots.
struct counts {
  size_t link_groups = 0;
  size_t slots = 0;
};
counts live();

/// In a forked child (from its atfork handler): everything made with verbs
/// before the fork is the parent's. The child's inherited SMC-R connections
/// read as reset and post nothing; new ones get link groups of the child's own.
void forget_after_fork();

}  // namespace smc::core::smcr
