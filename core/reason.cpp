// Fallback reasons and CLC Decline codes (Linux net/smc smc_clc.h values).
#include "core/reason.h"

namespace smc::core {

const char* to_name(reason r) {
  switch (r) {
    case reason::none: return "none";
    case reason::peer_not_configured: return "peer_not_configured";
    case reason::transport_tcp: return "transport_tcp";
    case reason::no_proposal: return "no_proposal";
    case reason::server_wrote_first: return "server_wrote_first";
    case reason::peer_declined: return "peer_declined";
    case reason::no_clc_reply: return "no_clc_reply";
    case reason::clc_timeout: return "clc_timeout";
    case reason::clc_malformed: return "clc_malformed";
    case reason::no_smc_dev: return "no_smc_dev";
    case reason::no_ueid: return "no_ueid";
    case reason::rendezvous_failed: return "rendezvous_failed";
    case reason::out_of_sync: return "out_of_sync";
    case reason::sandboxed: return "sandboxed";
    case reason::out_of_memory: return "out_of_memory";
    case reason::internal: return "internal";
    case reason::busy: return "busy";
    case reason::no_fds: return "no_fds";
    case reason::peer_closed: return "peer_closed";
    case reason::count_: break;
  }
  return "unknown";
}

uint32_t to_decline_code(reason r) {
  switch (r) {
    case reason::transport_tcp: return 0x03030000;      // NOSMCDEV
    case reason::no_smc_dev: return 0x03030000;         // NOSMCDEV
    case reason::no_ueid: return 0x03030008;            // NOUEID
    case reason::clc_timeout: return 0x02000000;        // timeout class
    case reason::clc_malformed: return 0x03040000;      // MODEUNSUPP
    case reason::out_of_memory: return 0x01010000;      // MEM
    case reason::no_fds: return 0x01010000;             // MEM
    case reason::rendezvous_failed: return 0x09990003;  // ERR_REGBUF
    case reason::out_of_sync: return 0x04000000;        // SYNCERR
    default: return 0x09990000;                         // INTERR
  }
}

const char* decline_code_name(uint32_t code) {
  switch (code) {
    case 0x01010000: return "MEM";
    case 0x02010000: return "TIMEOUT_CL";
    case 0x02020000: return "TIMEOUT_AL";
    case 0x03000000: return "CNFERR";
    case 0x03010000: return "PEERNOSMC";
    case 0x03020000: return "IPSEC";
    case 0x03030000: return "NOSMCDEV";
    case 0x03030001: return "NOSMCDDEV";
    case 0x03030002: return "NOSMCRDEV";
    case 0x03030003: return "NOISM2SUPP";
    case 0x03030004: return "NOV2EXT";
    case 0x03030005: return "NOV2DEXT";
    case 0x03030006: return "NOSEID";
    case 0x03030007: return "NOSMCD2DEV";
    case 0x03030008: return "NOUEID";
    case 0x03030009: return "RELEASEERR";
    case 0x0303000a: return "MAXCONNERR";
    case 0x0303000b: return "MAXLINKERR";
    case 0x03040000: return "MODEUNSUPP";
    case 0x03050000: return "RMBE_EC";
    case 0x03060000: return "OPTUNSUPP";
    case 0x03070000: return "DIFFPREFIX";
    case 0x04000000: return "SYNCERR";
    case 0x09990000: return "INTERR";
    default: return "other";
  }
}

}  // namespace smc::core
