#!/usr/bin/env python3
"""echo_check: sends BYTES pseudo-random bytes to an echo server in random
chunk sizes (a thread), reads the echo at the same time, compares every byte,
then half-closes and expects EOF once all came back.

  echo_check.py HOST PORT BYTES [SEED]

Prints "ok bytes=N" and exits 0, or says what differed on stderr and exits 1.
"""
import random
import socket
import sys
import threading


def main():
    host, port, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    seed = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    rnd = random.Random(seed)
    data = rnd.randbytes(total)
    s = socket.create_connection((host, port), timeout=60)
    err = []

    def sender():
        try:
            pos = 0
            r = random.Random(seed + 1)
            while pos < total:
                n = min(total - pos, r.choice([1, 7, 100, 1500, 65536, 300000]))
                s.sendall(data[pos : pos + n])
                pos += n
            s.shutdown(socket.SHUT_WR)
        except Exception as e:
            err.append(e)

    t = threading.Thread(target=sender)
    t.start()
    got = 0
    while True:
        b = s.recv(1 << 20)
        if not b:
            break
        if data[got : got + len(b)] != b:
            i = next(i for i in range(len(b)) if data[got + i] != b[i])
            sys.stderr.write("echo_check: wrong byte at offset %d\n" % (got + i))
            return 1
        got += len(b)
    t.join()
    if err:
        sys.stderr.write("echo_check: send: %s\n" % err[0])
        return 1
    if got != total:
        sys.stderr.write("echo_check: EOF after %d of %d bytes\n" % (got, total))
        return 1
    print("ok bytes=%d" % total)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:
        sys.stderr.write("echo_check: %s: %s\n" % (type(e).__name__, e))
        sys.exit(1)
