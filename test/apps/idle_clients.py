#!/usr/bin/env python3
"""idle_clients.py HOST PORT N READY RELEASE: N connections to a redis
server held open at once. Each stores a 32 KiB value under its own key and
reads it back (RESP SET/GET), then all stay open, idle, until the file
RELEASE exists (at most 60 s). READY gets "ok N" once all are connected and
checked. Exits non-zero, saying which connection and why, on any error (a
refused or reset connection, a wrong reply, EMFILE)."""
import os
import socket
import sys
import time

host, port, n, ready, release = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
VALUE = 32 * 1024


def recv_reply(s, want):
    buf = b""
    while len(buf) < len(want):
        d = s.recv(len(want) - len(buf))
        if not d:
            raise OSError("connection closed after %d of %d reply bytes" % (len(buf), len(want)))
        buf += d
    if buf != want:
        raise OSError("unexpected reply %r" % buf[:80])


socks = []
for i in range(n):
    try:
        s = socket.create_connection((host, port), timeout=10)
        key = b"k%d" % i
        val = bytes((i + j) & 0xff for j in range(256)) * (VALUE // 256)
        s.sendall(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, len(val), val))
        recv_reply(s, b"+OK\r\n")
        s.sendall(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key))
        recv_reply(s, b"$%d\r\n%s\r\n" % (len(val), val))
        socks.append(s)
    except OSError as e:
        sys.exit("connection %d: %s" % (i, e))
with open(ready + ".tmp", "w") as f:
    f.write("ok %d\n" % len(socks))
os.rename(ready + ".tmp", ready)
deadline = time.time() + 60
while not os.path.exists(release) and time.time() < deadline:
    time.sleep(0.05)
for s in socks:
    s.close()
print("ok %d connections" % len(socks))
