#!/usr/bin/env python3
"""Configures the Linux kernel's SMC (smc.ko) as an SMC-Rv2 peer on a RoCE v2 device.

  kernel_smc_setup.py UEID NETDEV IBDEV [PNETID]

Over generic netlink (smc-tools is not packaged for Debian): adds the
user-defined EID UEID (family SMC_GEN_NETLINK, command SMC_NETLINK_ADD_UEID,
attribute SMC_NLA_EID_TABLE_ENTRY: 32 bytes, upper case, blank padded), and
one PNET id for NETDEV and port 1 of IBDEV (family SMC_PNETID, command
SMC_PNETID_ADD; attributes 1 pnetid, 2 eth name, 3 ib name, 4 ib port).
Without a PNET id the kernel finds no device for rxe and falls back to TCP.
Both peers must share the UEID (the preload's is SMC-PRELOAD-V1). Run as root
after `modprobe smc`. Exits non-zero when the kernel refuses a step.
"""
import os
import socket
import struct
import sys

NETLINK_GENERIC, GENL_ID_CTRL, CTRL_CMD_GETFAMILY = 16, 0x10, 3
CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME = 1, 2
NLM_F_REQUEST, NLM_F_ACK = 1, 4
SMC_NETLINK_ADD_UEID, SMC_NLA_EID_TABLE_ENTRY = 10, 1
SMC_PNETID_ADD = 2
SMC_PNETID_NAME, SMC_PNETID_ETHNAME, SMC_PNETID_IBNAME, SMC_PNETID_IBPORT = 1, 2, 3, 4
EEXIST = 17


def attr(kind, data):
    size = 4 + len(data)
    return struct.pack("HH", size, kind) + data + b"\0" * ((4 - size % 4) % 4)


def request(sock, family, cmd, attrs, ack=True):
    """Sends one generic netlink request and returns its one reply. A query
    goes without NLM_F_ACK (its data reply is the answer), a command with it
    (the answer is an NLMSG_ERROR carrying 0 or -errno)."""
    payload = struct.pack("BBH", cmd, 1, 0) + attrs
    flags = NLM_F_REQUEST | (NLM_F_ACK if ack else 0)
    sock.send(struct.pack("IHHII", 16 + len(payload), family, flags, 1, os.getpid()) + payload)
    return sock.recv(65536)


def family_id(sock, name):
    reply = request(sock, GENL_ID_CTRL, CTRL_CMD_GETFAMILY,
                    attr(CTRL_ATTR_FAMILY_NAME, name + b"\0"), ack=False)
    off = 20
    while off + 4 <= len(reply):
        size, kind = struct.unpack_from("HH", reply, off)
        if kind == CTRL_ATTR_FAMILY_ID:
            return struct.unpack_from("H", reply, off + 4)[0]
        if size < 4:
            break
        off += (size + 3) & ~3
    sys.exit(f"generic netlink family {name.decode()} not found: is smc.ko loaded?")


def step(what, reply):
    err = struct.unpack_from("i", reply, 16)[0]
    print(f"kernel_smc_setup: {what}: {'ok' if err == 0 else os.strerror(-err)}")
    return err in (0, -EEXIST)


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    ueid, netdev, ibdev = sys.argv[1], sys.argv[2], sys.argv[3]
    pnetid = (sys.argv[4] if len(sys.argv) > 4 else "NET1").encode()
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
    sock.bind((0, 0))
    ok = True
    smc = family_id(sock, b"SMC_GEN_NETLINK")
    entry = ueid.upper().ljust(32).encode() + b"\0"
    ok &= step(f"UEID {ueid.upper()}",
               request(sock, smc, SMC_NETLINK_ADD_UEID, attr(SMC_NLA_EID_TABLE_ENTRY, entry)))
    pnet = family_id(sock, b"SMC_PNETID")
    name = attr(SMC_PNETID_NAME, pnetid + b"\0")
    ok &= step(f"PNET id {pnetid.decode()} for {netdev}",
               request(sock, pnet, SMC_PNETID_ADD, name + attr(SMC_PNETID_ETHNAME, netdev.encode() + b"\0")))
    ok &= step(f"PNET id {pnetid.decode()} for {ibdev} port 1",
               request(sock, pnet, SMC_PNETID_ADD,
                       name + attr(SMC_PNETID_IBNAME, ibdev.encode() + b"\0") + attr(SMC_PNETID_IBPORT, b"\x01")))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
