#!/usr/bin/env python3
"""detbytes: the deterministic body the test servers (node_cluster.sh's HTTP
server, nginx_php.sh's PHP script) generate for a size and a tag, so that a
download can be compared with what it must be:

  detbytes.py BYTES TAG     writes the BYTES bytes to stdout

The bytes are sha256("TAG:0") sha256("TAG:1") ... (32-byte digests),
cut to BYTES.
"""
import hashlib
import sys


def main():
    n, tag = int(sys.argv[1]), sys.argv[2]
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{tag}:{i}".encode()).digest()
        i += 1
    sys.stdout.buffer.write(bytes(out[:n]))


if __name__ == "__main__":
    main()
