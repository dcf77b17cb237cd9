#!/usr/bin/env python3
"""kvcheck: stores pseudo-random values in a key-value server and reads every
one back, comparing byte for byte. Plain sockets (the process runs under
smc_run, so they are SMC connections); no client library needed.

  kvcheck.py redis|memcached HOST PORT [--keys N] [--max-size BYTES] [--seed S] [--conns C]

Values are 1 byte .. max-size (binary, any byte value), written and read
over C connections in turn, part of them pipelined. Prints
"ok keys=N bytes=B" (B = value bytes written; as many are read back) and
exits 0, or prints the first mismatch to stderr and exits 1.
"""
import argparse
import random
import socket
import sys


class Conn:
    def __init__(self, host, port):
        self.s = socket.create_connection((host, port), timeout=60)
        self.buf = bytearray()

    def send(self, data):
        self.s.sendall(data)

    def _fill(self):
        chunk = self.s.recv(1 << 20)
        if not chunk:
            raise EOFError("server closed the connection")
        self.buf += chunk

    def line(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                out = bytes(self.buf[:i])
                del self.buf[: i + 2]
                return out
            self._fill()

    def exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


def redis_cmd(*parts):
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        if isinstance(p, str):
            p = p.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(p), p))
    return b"".join(out)


def redis_set(c, key, val):
    c.send(redis_cmd("SET", key, val))


def redis_set_reply(c):
    r = c.line()
    if r != b"+OK":
        raise RuntimeError("SET answered %r" % r)


def redis_get(c, key):
    c.send(redis_cmd("GET", key))


def redis_get_reply(c):
    r = c.line()
    if not r.startswith(b"$") or r == b"$-1":
        raise RuntimeError("GET answered %r" % r)
    v = c.exact(int(r[1:]))
    if c.exact(2) != b"\r\n":
        raise RuntimeError("GET: bad bulk string end")
    return v


def mc_set(c, key, val):
    c.send(b"set %s 0 0 %d\r\n%s\r\n" % (key.encode(), len(val), val))


def mc_set_reply(c):
    r = c.line()
    if r != b"STORED":
        raise RuntimeError("set answered %r" % r)


def mc_get(c, key):
    c.send(b"get %s\r\n" % key.encode())


def mc_get_reply(c):
    r = c.line()
    parts = r.split()
    if len(parts) != 4 or parts[0] != b"VALUE":
        raise RuntimeError("get answered %r" % r)
    v = c.exact(int(parts[3]))
    if c.exact(2) != b"\r\n" or c.line() != b"END":
        raise RuntimeError("get: bad value end")
    return v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["redis", "memcached"])
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--keys", type=int, default=2000)
    ap.add_argument("--max-size", type=int, default=200000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--conns", type=int, default=4)
    a = ap.parse_args()
    rnd = random.Random(a.seed)
    if a.kind == "redis":
        do_set, set_reply, do_get, get_reply = redis_set, redis_set_reply, redis_get, redis_get_reply
    else:
        do_set, set_reply, do_get, get_reply = mc_set, mc_set_reply, mc_get, mc_get_reply
    conns = [Conn(a.host, a.port) for _ in range(a.conns)]
    values = {}
    total = 0
    for i in range(a.keys):
        # Mostly small values, some large ones up to max-size.
        size = rnd.choice([rnd.randint(1, 100), rnd.randint(1, 4096), rnd.randint(1, a.max_size)])
        values["smc:kv:%d:%d" % (a.seed, i)] = rnd.randbytes(size)
        total += size
    keys = list(values)
    batch = 16  # pipelined requests per round trip
    for start in range(0, len(keys), batch):
        c = conns[(start // batch) % len(conns)]
        part = keys[start : start + batch]
        for k in part:
            do_set(c, k, values[k])
        for _ in part:
            set_reply(c)
    rnd.shuffle(keys)
    for start in range(0, len(keys), batch):
        c = conns[(start // batch) % len(conns)]
        part = keys[start : start + batch]
        for k in part:
            do_get(c, k)
        for k in part:
            v = get_reply(c)
            if v != values[k]:
                sys.stderr.write(
                    "kvcheck: %s: value of %s differs (%d bytes, expected %d)\n"
                    % (a.kind, k, len(v), len(values[k]))
                )
                return 1
    for c in conns:
        c.s.close()
    print("ok keys=%d bytes=%d" % (len(keys), total))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # one line, for the test's FAIL message
        sys.stderr.write("kvcheck: %s: %s\n" % (type(e).__name__, e))
        sys.exit(1)
