#!/usr/bin/env python3
"""smc_diff.py: a differential test of socket semantics, TCP against SMC.

One script of small cases, each a server and a client on 127.0.0.1 doing a
few socket calls (connect variants, MSG_PEEK, MSG_WAITALL, FIONREAD,
half-close, close with unread data, SO_RCVTIMEO, readiness through select,
poll and epoll, ...) and printing what it observed, one fact per line:

    CASE cli: FACT
    CASE srv: FACT

Nothing printed depends on ports, addresses, pids or timings (a timing shows
only as a yes/no fact with generous bounds), so running it plainly and under
scripts/smc_run must print the same lines:

    python3 smc_diff.py > plain.txt
    smc_run -p 127.0.0.1 python3 smc_diff.py > smc.txt
    diff plain.txt smc.txt

Each case makes its own listener on an ephemeral port and forks a server
child (which inherits LD_PRELOAD and SMC_*: both ends are under the
preload); the parent is the client. Client and server synchronise over an
AF_UNIX socket pair (which the preload leaves alone) or through the data
itself, never by sleeping; a sleep appears only where it is the behaviour
under test. Every wait is bounded (socket timeouts, select timeouts) and a
per-case alarm turns a hang into a printed WATCHDOG line. The server's lines
come back through a pipe and are printed after the client's, so the output
order is fixed.

Standard library only. Exits 0 once all cases ran (the comparison is the
caller's: run_pairs.sh's scenario_diff).

usage: smc_diff.py [--only REGEX] [--list]
"""

import errno
import fcntl
import hashlib
import os
import random
import re
import select
import selectors
import signal
import socket
import struct
import sys
import tempfile
import termios
import time

HOST = "127.0.0.1"
IO_TIMEOUT = 5.0        # a socket or ctl wait that should end at once
CONNECT_TIMEOUT = 10.0  # a connect (an SMC handshake may stall up to 5 s)
CASE_ALARM = 30         # per-case watchdog, each side
QUIET_S = 0.2           # "nothing arrives within" windows

# ---------------------------------------------------------------- helpers


class Watchdog(BaseException):
    """The per-case alarm fired (BaseException: no case catches it)."""


class CtlError(Exception):
    pass


def _on_alarm(signum, frame):
    raise Watchdog()


def ename(code):
    if not code:
        return "0"
    return errno.errorcode.get(code, str(code))


def exc_str(e):
    if isinstance(e, Watchdog):
        return "WATCHDOG"
    if isinstance(e, CtlError):
        return "CTL " + str(e)
    if isinstance(e, OSError):
        if e.errno:
            return "err " + ename(e.errno)
        if isinstance(e, TimeoutError):
            return "timeout"
        return "oserror " + str(e)
    return "%s %s" % (type(e).__name__, e)


def sha(b):
    return hashlib.sha256(b).hexdigest()[:16]


def show(b):
    if isinstance(b, (bytes, bytearray)):
        if len(b) <= 32:
            return repr(bytes(b))
        return "%dB sha=%s" % (len(b), sha(b))
    return str(b)


def attempt(fn, *args, **kw):
    """'ok VALUE' or the error, as text."""
    try:
        r = fn(*args, **kw)
    except Exception as e:  # noqa: BLE001 (Watchdog passes)
        return exc_str(e)
    return "ok " + show(r)


def rand(n, seed):
    return random.Random(seed).randbytes(n)


def yn(flag):
    return "yes" if flag else "no"


POLL_BITS = [("POLLIN", select.POLLIN), ("POLLPRI", select.POLLPRI), ("POLLOUT", select.POLLOUT),
             ("POLLERR", select.POLLERR), ("POLLHUP", select.POLLHUP), ("POLLNVAL", select.POLLNVAL),
             ("POLLRDHUP", getattr(select, "POLLRDHUP", 0x2000))]
EPOLL_BITS = [("EPOLLIN", select.EPOLLIN), ("EPOLLPRI", select.EPOLLPRI), ("EPOLLOUT", select.EPOLLOUT),
              ("EPOLLERR", select.EPOLLERR), ("EPOLLHUP", select.EPOLLHUP),
              ("EPOLLRDHUP", select.EPOLLRDHUP), ("EPOLLRDNORM", select.EPOLLRDNORM),
              ("EPOLLWRNORM", select.EPOLLWRNORM)]


def bits(mask, table):
    names = [n for n, v in table if mask & v]
    rest = mask & ~sum(v for _, v in table)
    if rest:
        names.append(hex(rest))
    return "|".join(names) if names else "none"


def poll1(sock, events, timeout_ms):
    """revents of one poll() on sock, as names ('none' when nothing)."""
    p = select.poll()
    p.register(sock.fileno(), events)
    r = p.poll(timeout_ms)
    return bits(r[0][1], POLL_BITS) if r else "none"


def sel1(sock, timeout):
    """select() on sock for reading and writing: 'r=yes w=yes x=no'."""
    r, w, x = select.select([sock], [sock], [sock], timeout)
    return "r=%s w=%s x=%s" % (yn(r), yn(w), yn(x))


def readable(sock, timeout=IO_TIMEOUT):
    r, _, _ = select.select([sock], [], [], timeout)
    return bool(r)


def fionread(sock):
    buf = fcntl.ioctl(sock.fileno(), termios.FIONREAD, struct.pack("i", 0))
    return struct.unpack("i", buf)[0]


def recv_exact(sock, n):
    """Reads n bytes (fewer only at EOF)."""
    out = bytearray()
    while len(out) < n:
        b = sock.recv(n - len(out))
        if not b:
            break
        out += b
    return bytes(out)


def recv_to_eof(sock, limit=64 << 20):
    out = bytearray()
    while len(out) < limit:
        b = sock.recv(65536)
        if not b:
            break
        out += b
    return bytes(out)


def timeval(seconds):
    return struct.pack("ll", int(seconds), int(round((seconds - int(seconds)) * 1e6)))


class Ctl:
    """Line messages over one end of an AF_UNIX socket pair."""

    def __init__(self, sock):
        self.s = sock
        self.buf = b""

    def send(self, msg):
        self.s.sendall(msg.encode() + b"\n")

    def recv(self, timeout=IO_TIMEOUT):
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CtlError("timed out")
            r, _, _ = select.select([self.s], [], [], left)
            if not r:
                continue
            b = self.s.recv(4096)
            if not b:
                raise CtlError("peer gone")
            self.buf += b
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def wait(self, msg, timeout=IO_TIMEOUT):
        line = self.recv(timeout)
        if line != msg:
            raise CtlError("expected %r, got %r" % (msg, line))


class Side:
    """One side of a case: output, the ctl channel, its sockets."""

    def __init__(self, case, role, port, ctl, emit, listener=None):
        self.case = case
        self.role = role
        self.port = port
        self.ctl = ctl
        self.emit = emit
        self.listener = listener
        self.socks = []

    def out(self, *parts):
        self.emit("%s %s: %s" % (self.case, self.role, " ".join(str(p) for p in parts)))

    def track(self, s):
        self.socks.append(s)
        return s

    def socket(self):
        return self.track(socket.socket(socket.AF_INET, socket.SOCK_STREAM))

    def connect(self, timeout=IO_TIMEOUT):
        """A connected socket; timeout None = blocking (connect too)."""
        s = self.socket()
        s.settimeout(CONNECT_TIMEOUT if timeout is not None else None)
        s.connect((HOST, self.port))
        s.settimeout(timeout)
        return s

    def accept(self, timeout=IO_TIMEOUT):
        self.listener.settimeout(CONNECT_TIMEOUT)
        c, _ = self.listener.accept()
        self.track(c)
        c.settimeout(timeout)
        return c

    def close_all(self):
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass
        self.socks = []


def wait_eof(S, c, label="eof"):
    """Server: reads until EOF and says how it ended."""
    try:
        rest = recv_to_eof(c)
        S.out(label, "after", len(rest), "more bytes")
    except Exception as e:  # noqa: BLE001
        S.out(label, exc_str(e))


# ---------------------------------------------------------------- cases
# Each case: srv_NAME(S) in the forked server child (S.listener is the
# case's listener), cli_NAME(C) in the parent; C.port is the listener's.

# 1. blocking connect, blocking echo.
def srv_echo_blocking(S):
    c = S.accept(timeout=None)
    data = recv_exact(c, 5000)
    S.out("got", show(data))
    c.sendall(data)
    wait_eof(S, c)
    c.close()


def cli_echo_blocking(C):
    s = C.connect(timeout=None)
    C.out("connect ok; blocking", yn(s.getblocking()))
    payload = rand(5000, 1)
    C.out("sendall", attempt(s.sendall, payload))
    got = recv_exact(s, 5000)
    C.out("echo", show(got), "match", yn(got == payload))
    s.close()


# 2. echo rounds of various sizes, sockets with timeouts (poll + non-blocking).
SIZES = [1, 100, 4096, 65536, 300000, 1 << 20]


def srv_echo_rounds(S):
    c = S.accept()
    total = 0
    for n in SIZES:
        data = recv_exact(c, n)
        total += len(data)
        c.sendall(data)
    S.out("echoed", total)
    wait_eof(S, c)
    c.close()


def cli_echo_rounds(C):
    s = C.connect()
    for i, n in enumerate(SIZES):
        payload = rand(n, 100 + i)
        s.sendall(payload)
        got = recv_exact(s, n)
        C.out("round", n, "match", yn(got == payload))
    s.close()


# 3/4. non-blocking connect, writability, SO_ERROR 0.
def srv_ping(S):
    c = S.accept()
    S.out("got", show(recv_exact(c, 5)))
    c.sendall(b"pong!")
    wait_eof(S, c)
    c.close()


def cli_nb_connect_select(C):
    s = C.socket()
    s.setblocking(False)
    C.out("connect_ex", ename(s.connect_ex((HOST, C.port))))
    r, w, x = select.select([], [s], [s], CONNECT_TIMEOUT)
    C.out("select writable", yn(w), "except", yn(x))
    C.out("SO_ERROR", ename(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)))
    C.out("peer port matches", yn(s.getpeername() == (HOST, C.port)))
    s.settimeout(IO_TIMEOUT)
    s.sendall(b"ping!")
    C.out("reply", show(recv_exact(s, 5)))
    s.close()


def cli_nb_connect_poll(C):
    s = C.socket()
    s.setblocking(False)
    C.out("connect_ex", ename(s.connect_ex((HOST, C.port))))
    C.out("poll", poll1(s, select.POLLOUT, int(CONNECT_TIMEOUT * 1000)))
    C.out("SO_ERROR", ename(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)))
    C.out("connect_ex again", ename(s.connect_ex((HOST, C.port))))
    C.out("connect_ex third", ename(s.connect_ex((HOST, C.port))))
    s.settimeout(IO_TIMEOUT)
    s.sendall(b"ping!")
    C.out("reply", show(recv_exact(s, 5)))
    s.close()


# 5. a refused port: bound, not listening.
def cli_connect_refused(C):
    blocker = C.socket()
    blocker.bind((HOST, 0))
    addr = blocker.getsockname()
    s = C.socket()
    s.settimeout(None)
    C.out("blocking connect", attempt(s.connect, addr))
    s = C.socket()
    s.setblocking(False)
    C.out("nb connect_ex", ename(s.connect_ex(addr)))
    C.out("poll", poll1(s, select.POLLOUT | select.POLLIN, int(IO_TIMEOUT * 1000)))
    C.out("SO_ERROR", ename(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)))
    C.out("SO_ERROR again", ename(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)))
    C.out("recv", attempt(s.recv, 10))
    s = C.socket()
    s.setblocking(False)
    C.out("nb connect_ex (select)", ename(s.connect_ex(addr)))
    r, w, x = select.select([s], [s], [s], IO_TIMEOUT)
    C.out("select r", yn(r), "w", yn(w), "x", yn(x))
    C.out("SO_ERROR", ename(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)))
    s = C.socket()
    s.settimeout(IO_TIMEOUT)
    C.out("connect with a timeout", attempt(s.connect, addr))


# 6. MSG_PEEK then reads return the same bytes.
PEEK = b"peekaboo-0123456789"


def srv_peek(S):
    c = S.accept()
    c.sendall(PEEK)
    S.ctl.send("sent")
    wait_eof(S, c)
    c.close()


def cli_peek(C):
    s = C.connect()
    C.ctl.wait("sent")
    C.out("readable", yn(readable(s)))
    p1 = s.recv(100, socket.MSG_PEEK)
    C.out("peek 100", show(p1))
    C.out("peek 4", show(s.recv(4, socket.MSG_PEEK)))
    C.out("FIONREAD after peeks", fionread(s))
    r1 = s.recv(4)
    C.out("read 4", show(r1))
    r2 = s.recv(100)
    C.out("read 100", show(r2))
    C.out("peek == reads", yn(p1 == r1 + r2))
    s.setblocking(False)
    C.out("nb peek empty", attempt(s.recv, 10, socket.MSG_PEEK))
    s.setblocking(True)
    C.out("MSG_PEEK|MSG_DONTWAIT empty", attempt(s.recv, 10, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    s.close()


# 7. MSG_WAITALL across several server writes (the small pauses only make
# separate writes likely; the result does not depend on them).
def srv_waitall(S):
    c = S.accept()
    for i in range(5):
        c.sendall(rand(1000, 200 + i))
        time.sleep(0.02)
    S.out("wrote 5x1000")
    wait_eof(S, c)
    c.close()


def cli_waitall(C):
    s = C.connect(timeout=None)
    got = s.recv(5000, socket.MSG_WAITALL)
    want = b"".join(rand(1000, 200 + i) for i in range(5))
    C.out("waitall 5000", show(got), "match", yn(got == want))
    s.close()


# 8. MSG_WAITALL ended early by EOF.
def srv_waitall_eof(S):
    c = S.accept()
    c.sendall(rand(3000, 300))
    c.shutdown(socket.SHUT_WR)
    S.out("wrote 3000, SHUT_WR")
    wait_eof(S, c)
    c.close()


def cli_waitall_eof(C):
    s = C.connect(timeout=None)
    got = s.recv(5000, socket.MSG_WAITALL)
    C.out("waitall 5000", show(got))
    C.out("then", attempt(s.recv, 100))
    s.close()


# 9. FIONREAD.
def srv_fionread(S):
    c = S.accept()
    S.out("request", show(recv_exact(c, 1)))
    c.sendall(rand(1000, 400))
    S.ctl.send("sent")
    wait_eof(S, c)
    c.close()


def cli_fionread(C):
    s = C.connect()
    C.out("idle FIONREAD", fionread(s))
    s.sendall(b"g")
    C.ctl.wait("sent")
    C.out("readable", yn(readable(s)))
    n = fionread(s)
    C.out("FIONREAD after 1000 written", n)
    C.out("FIONREAD in (0, 1000]", yn(0 < n <= 1000))
    a = recv_exact(s, 300)
    C.out("read", len(a), "FIONREAD", fionread(s))
    b = recv_exact(s, 700)
    C.out("read", len(b), "FIONREAD", fionread(s))
    C.out("data match", yn(a + b == rand(1000, 400)))
    s.close()


# 10. the client shuts down its writing side; the server still answers.
def srv_client_shut_wr(S):
    c = S.accept()
    data = recv_to_eof(c)
    S.out("read to eof", show(data), "match", yn(data == rand(3000, 500)))
    # Not before the client's second shutdown: once this side's reply and
    # close reach it, TCP's shutdown says ENOTCONN (the socket is closed).
    S.ctl.wait("shut twice")
    S.out("recv again", attempt(c.recv, 10))
    S.out("send reply", attempt(c.send, b"reply-after-eof"))
    c.close()
    S.ctl.send("closed")


def cli_client_shut_wr(C):
    s = C.connect()
    s.sendall(rand(3000, 500))
    C.out("shutdown WR", attempt(s.shutdown, socket.SHUT_WR))
    C.out("send after SHUT_WR", attempt(s.send, b"x"))
    C.out("shutdown WR twice", attempt(s.shutdown, socket.SHUT_WR))
    C.ctl.send("shut twice")
    C.out("reply", show(recv_to_eof(s)))
    C.ctl.wait("closed")
    C.out("recv after", attempt(s.recv, 10))
    C.out("poll", poll1(s, select.POLLIN | select.POLLOUT | select.POLLRDHUP, 0))
    C.out("SO_ERROR", ename(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)))
    s.close()


# 11. the server shuts down its writing side; the client still answers.
def srv_server_shut_wr(S):
    c = S.accept()
    c.sendall(rand(2000, 600))
    S.out("shutdown WR", attempt(c.shutdown, socket.SHUT_WR))
    S.out("send after SHUT_WR", attempt(c.send, b"x"))
    S.ctl.send("shut")
    data = recv_to_eof(c)
    S.out("client's answer", show(data))
    c.close()


def cli_server_shut_wr(C):
    s = C.connect()
    C.ctl.wait("shut")
    C.out("poll", poll1(s, select.POLLIN | select.POLLOUT | select.POLLRDHUP, 0))
    data = recv_to_eof(s)
    C.out("read to eof", show(data), "match", yn(data == rand(2000, 600)))
    C.out("recv again", attempt(s.recv, 10))
    C.out("send answer", attempt(s.send, b"thanks"))
    C.out("shutdown WR", attempt(s.shutdown, socket.SHUT_WR))
    s.close()


# 12. half-closed: POLLIN and b'' with nothing sent before.
def srv_half_closed(S):
    c = S.accept()
    S.out("hello", show(recv_exact(c, 5)))
    c.shutdown(socket.SHUT_WR)
    S.ctl.send("shut")
    S.out("then", show(recv_exact(c, 1)))
    wait_eof(S, c)
    c.close()


def cli_half_closed(C):
    s = C.connect()
    s.sendall(b"hello")
    C.ctl.wait("shut")
    C.out("poll", poll1(s, select.POLLIN | select.POLLOUT | select.POLLRDHUP, int(IO_TIMEOUT * 1000)))
    C.out("select", sel1(s, 0))
    C.out("recv", attempt(s.recv, 10))
    C.out("recv", attempt(s.recv, 10))
    C.out("send", attempt(s.send, b"x"))
    s.close()


# 13. send to a server that has not read yet (handshake done: it read a
# first request); it reads later.
def srv_send_before_read(S):
    c = S.accept()
    S.out("hello", show(recv_exact(c, 5)))
    S.ctl.send("ready")
    S.ctl.wait("sent")
    S.out("FIONREAD", fionread(c))
    data = recv_exact(c, 1000)
    S.out("read later", show(data), "match", yn(data == rand(1000, 700)))
    c.sendall(b"ok")
    wait_eof(S, c)
    c.close()


def cli_send_before_read(C):
    s = C.connect()
    s.sendall(b"hello")
    C.ctl.wait("ready")
    C.out("send 1000", attempt(s.send, rand(1000, 700)))
    C.ctl.send("sent")
    C.out("answer", show(recv_exact(s, 2)))
    s.close()


# 14. the same, but the server has not touched the accepted socket at all
# until the client's data is sent.
def srv_send_untouched(S):
    c = S.accept()
    S.ctl.wait("sent", timeout=20)
    data = recv_exact(c, 1000)
    S.out("read later", show(data), "match", yn(data == rand(1000, 800)))
    c.sendall(b"ok")
    wait_eof(S, c)
    c.close()


def cli_send_untouched(C):
    t0 = time.monotonic()
    s = C.connect()
    C.out("connect within 3 s", yn(time.monotonic() - t0 < 3))
    C.out("send 1000", attempt(s.send, rand(1000, 800)))
    C.ctl.send("sent")
    C.out("answer", attempt(recv_exact, s, 2))
    s.close()


# 15-17. the server closes with unread data: the client's next call sees the
# reset (recv first, SO_ERROR first, send first).
def srv_close_unread(S):
    c = S.accept()
    S.out("hello", show(recv_exact(c, 5)))
    S.ctl.send("ready")
    S.ctl.wait("sent")
    S.out("FIONREAD before close", fionread(c))
    c.close()
    S.ctl.send("closed")


def close_unread_prefix(C):
    s = C.connect()
    s.sendall(b"hello")
    C.ctl.wait("ready")
    C.out("send 100", attempt(s.send, rand(100, 900)))
    C.ctl.send("sent")
    C.ctl.wait("closed")
    return s


def cli_close_unread_recv(C):
    s = close_unread_prefix(C)
    C.out("poll", poll1(s, select.POLLIN | select.POLLOUT | select.POLLRDHUP, int(IO_TIMEOUT * 1000)))
    C.out("recv", attempt(s.recv, 10))
    C.out("recv", attempt(s.recv, 10))
    C.out("send", attempt(s.send, b"x"))
    C.out("SO_ERROR", ename(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)))
    s.close()


def cli_close_unread_soerror(C):
    s = close_unread_prefix(C)
    C.out("SO_ERROR", ename(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)))
    C.out("SO_ERROR again", ename(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)))
    C.out("recv", attempt(s.recv, 10))
    C.out("send", attempt(s.send, b"x"))
    s.close()


def cli_close_unread_send(C):
    s = close_unread_prefix(C)
    C.out("send", attempt(s.send, b"x"))
    C.out("send", attempt(s.send, b"x"))
    C.out("recv", attempt(s.recv, 10))
    s.close()


# 18/19. a server that accepts, waits 0.2 s (the behaviour under test) and
# closes without ever reading: with a request sent (unread data) and without.
def srv_close_after_delay(S):
    c = S.accept()
    time.sleep(0.2)
    c.close()
    S.out("closed")


def cli_close_after_delay_request(C):
    t0 = time.monotonic()
    s = C.connect()
    C.out("connect within 3 s", yn(time.monotonic() - t0 < 3))
    C.out("send request", attempt(s.send, b"GET / HTTP/1.0\r\n\r\n"))
    C.out("recv", attempt(s.recv, 100))
    C.out("recv", attempt(s.recv, 100))
    s.close()


def cli_close_after_delay_silent(C):
    t0 = time.monotonic()
    s = C.connect()
    C.out("connect within 3 s", yn(time.monotonic() - t0 < 3))
    C.out("recv", attempt(s.recv, 100))
    C.out("recv", attempt(s.recv, 100))
    s.close()


# 20. SO_RCVTIMEO 200 ms against a silent server (it reads, never writes).
def srv_silent(S):
    c = S.accept(timeout=20)
    wait_eof(S, c)
    c.close()


def cli_rcvtimeo(C):
    s = C.connect(timeout=None)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval(0.2))
    tv = struct.unpack("ll", s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16))
    C.out("SO_RCVTIMEO reads back", tv)
    for i in range(2):
        t0 = time.monotonic()
        r = attempt(s.recv, 100)
        dt = time.monotonic() - t0
        C.out("recv", r, "waited 0.15..3 s", yn(0.15 <= dt < 3))
    t0 = time.monotonic()
    r = attempt(s.recv, 100, socket.MSG_WAITALL)
    dt = time.monotonic() - t0
    C.out("recv WAITALL", r, "waited 0.15..3 s", yn(0.15 <= dt < 3))
    s.close()


# 21. SO_SNDTIMEO 200 ms against a server that stops reading.
def srv_sndtimeo(S):
    c = S.accept(timeout=20)
    S.out("hello", show(recv_exact(c, 5)))
    S.ctl.send("ready")
    line = S.ctl.recv(timeout=25)
    total, digest = line.split()
    data = recv_exact(c, int(total))
    S.out("drained all the client sent", yn(len(data) == int(total) and sha(data) == digest))
    c.sendall(b"ok")
    wait_eof(S, c)
    c.close()


def cli_sndtimeo(C):
    s = C.connect(timeout=None)
    s.sendall(b"hello")
    C.ctl.wait("ready")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval(0.2))
    chunk = rand(65536, 1000)
    h = hashlib.sha256()
    total = 0
    end = "none"
    dt = 0.0
    while total < (256 << 20):
        t0 = time.monotonic()
        try:
            n = s.send(chunk)
        except OSError as e:
            dt = time.monotonic() - t0
            end = exc_str(e)
            break
        h.update(chunk[:n])
        total += n
    C.out("send loop ended with", end, "last call waited 0.15..3 s", yn(0.15 <= dt < 3))
    C.out("sent something", yn(total > 0))
    C.ctl.send("%d %s" % (total, h.hexdigest()[:16]))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval(20))
    C.out("answer", attempt(recv_exact, s, 2))
    s.close()


# 22. getpeername after shutdown(SHUT_RDWR), and after the peer closed too.
def srv_getpeername(S):
    c = S.accept()
    S.out("hi", show(recv_exact(c, 2)))
    c.sendall(b"ok")
    wait_eof(S, c)
    S.out("getpeername after client shutdown", attempt(lambda: c.getpeername()[0]))
    S.ctl.wait("checked")
    c.close()
    S.ctl.send("closed")


def cli_getpeername(C):
    s = C.connect()
    s.sendall(b"hi")
    C.out("reply", show(recv_exact(s, 2)))
    C.out("shutdown RDWR", attempt(s.shutdown, socket.SHUT_RDWR))
    try:
        peer = s.getpeername()
        C.out("getpeername", peer[0], "port matches", yn(peer[1] == C.port))
    except OSError as e:
        C.out("getpeername", exc_str(e))
    C.out("getsockname family", socket.AddressFamily(s.family).name,
          attempt(lambda: s.getsockname()[0]))
    C.out("recv", attempt(s.recv, 10))
    C.out("send", attempt(s.send, b"x"))
    C.ctl.send("checked")
    C.ctl.wait("closed")
    C.out("poll", poll1(s, select.POLLIN | select.POLLOUT | select.POLLRDHUP, 0))
    C.out("getpeername after peer closed", attempt(lambda: s.getpeername()[0]))
    s.close()


# 23. getsockname/getpeername on both sides agree.
def srv_names(S):
    c = S.accept()
    S.out("hi", show(recv_exact(c, 2)))
    cport = int(S.ctl.recv())
    peer = c.getpeername()
    S.out("getpeername", peer[0], "is client's getsockname", yn(peer[1] == cport))
    me = c.getsockname()
    S.out("getsockname", me[0], "is the listener's port", yn(me[1] == S.port))
    S.out("family", socket.AddressFamily(c.family).name, "type", socket.SocketKind(c.type).name)
    wait_eof(S, c)
    c.close()


def cli_names(C):
    s = C.connect()
    s.sendall(b"hi")
    me = s.getsockname()
    C.out("getsockname", me[0], "family", socket.AddressFamily(s.family).name)
    C.ctl.send(str(me[1]))
    peer = s.getpeername()
    C.out("getpeername", peer[0], "port matches", yn(peer[1] == C.port))
    s.close()


# 24. recv after the peer closed cleanly: b'' every time.
def srv_bye(S):
    c = S.accept()
    S.out("hi", show(recv_exact(c, 2)))
    c.sendall(b"bye")
    c.close()
    S.ctl.send("closed")


def cli_recv_after_close(C):
    s = C.connect()
    s.sendall(b"hi")
    C.ctl.wait("closed")
    C.out("poll", poll1(s, select.POLLIN | select.POLLOUT | select.POLLRDHUP, 0))
    C.out("FIONREAD", fionread(s))
    C.out("recv", attempt(s.recv, 100))
    for _ in range(3):
        C.out("recv", attempt(s.recv, 100))
    C.out("select", sel1(s, 0))
    s.close()


# 25. send after the peer closed cleanly: the first send goes, the reset
# it provokes fails the next.
def cli_send_after_close(C):
    s = C.connect()
    s.sendall(b"hi")
    C.ctl.wait("closed")
    C.out("recv", attempt(s.recv, 100))
    C.out("send", attempt(s.send, b"x"))
    C.out("poll", poll1(s, select.POLLIN | select.POLLOUT | select.POLLRDHUP, int(IO_TIMEOUT * 1000)))
    C.out("send", attempt(s.send, b"x"))
    C.out("send", attempt(s.send, b"x"))
    C.out("recv", attempt(s.recv, 100))
    s.close()


# 26. sendall of 4 MiB to a slow reader (the pauses are the behaviour).
BULK = 4 << 20


def srv_bulk_slow(S):
    c = S.accept(timeout=20)
    h = hashlib.sha256()
    total = 0
    while total < BULK:
        b = c.recv(32768)
        if not b:
            break
        h.update(b)
        total += len(b)
        time.sleep(0.001)
    S.out("read", total, "sha", h.hexdigest()[:16])
    c.sendall(h.hexdigest()[:16].encode())
    wait_eof(S, c)
    c.close()


def cli_bulk_slow(C):
    s = C.connect(timeout=20)
    payload = rand(BULK, 1100)
    C.out("sendall", attempt(s.sendall, payload), "sha", sha(payload))
    C.out("server's sha matches", yn(recv_exact(s, 16).decode() == sha(payload)))
    s.close()


# 27. select, poll and epoll on an idle connection, then with data.
def srv_readiness(S):
    c = S.accept()
    S.out("hi", show(recv_exact(c, 2)))
    S.ctl.send("ready")
    S.ctl.wait("send")
    c.sendall(b"0123456789")
    S.ctl.send("sent")
    wait_eof(S, c)
    c.close()


def cli_readiness(C):
    s = C.connect()
    s.sendall(b"hi")
    C.ctl.wait("ready")
    C.out("idle select", sel1(s, 0))
    C.out("idle select read for 0.2 s", yn(readable(s, QUIET_S)))
    C.out("idle poll", poll1(s, select.POLLIN | select.POLLOUT, 0))
    ep = select.epoll()
    ep.register(s.fileno(), select.EPOLLIN | select.EPOLLOUT)
    C.out("idle epoll", [bits(ev, EPOLL_BITS) for _, ev in ep.poll(0)])
    C.ctl.send("send")
    C.ctl.wait("sent")
    C.out("data select", sel1(s, 0))
    C.out("data poll", poll1(s, select.POLLIN | select.POLLOUT, 0))
    C.out("data epoll", [bits(ev, EPOLL_BITS) for _, ev in ep.poll(0)])
    C.out("recv", attempt(s.recv, 100))
    C.out("after read poll", poll1(s, select.POLLIN | select.POLLOUT, 0))
    ep.close()
    s.close()


# 28. non-blocking recv on an idle connection.
def srv_hi_then_eof(S):
    c = S.accept()
    S.out("hi", show(recv_exact(c, 2)))
    S.ctl.send("ready")
    wait_eof(S, c)
    c.close()


def cli_nb_recv_idle(C):
    s = C.connect()
    s.sendall(b"hi")
    C.ctl.wait("ready")
    s.setblocking(False)
    C.out("nb recv", attempt(s.recv, 100))
    C.out("nb recv_into", attempt(s.recv_into, bytearray(100)))
    C.out("nb recvmsg", attempt(lambda: s.recvmsg(100)[0]))
    s.setblocking(True)
    C.out("MSG_DONTWAIT recv on blocking socket", attempt(s.recv, 100, socket.MSG_DONTWAIT))
    s.close()


# 29. the accepted socket's first non-blocking read, before the client wrote.
def srv_accepted_nb(S):
    c = S.accept()
    c.setblocking(False)
    S.out("first nb recv", attempt(c.recv, 100))
    S.listener.setblocking(False)
    S.out("nb accept, nothing pending", attempt(S.listener.accept))
    S.ctl.send("go")
    S.out("readable", yn(readable(c)))
    S.out("recv", attempt(c.recv, 100))
    S.out("nb recv again", attempt(c.recv, 100))
    S.ctl.send("done")
    c.setblocking(True)
    c.settimeout(IO_TIMEOUT)
    wait_eof(S, c)
    c.close()


def cli_accepted_nb(C):
    s = C.connect()
    C.ctl.wait("go")
    s.sendall(b"hi")
    C.ctl.wait("done")
    s.close()


# 30. socket options on a healthy connection.
def cli_sockopts(C):
    s = C.connect()
    s.sendall(b"hi")
    C.ctl.wait("ready")
    g = s.getsockopt
    C.out("SO_ERROR", ename(g(socket.SOL_SOCKET, socket.SO_ERROR)))
    C.out("SO_TYPE", g(socket.SOL_SOCKET, socket.SO_TYPE), "SO_DOMAIN", g(socket.SOL_SOCKET, socket.SO_DOMAIN),
          "SO_PROTOCOL", g(socket.SOL_SOCKET, socket.SO_PROTOCOL))
    C.out("SO_ACCEPTCONN", g(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    C.out("TCP_NODELAY", g(socket.IPPROTO_TCP, socket.TCP_NODELAY))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    C.out("TCP_NODELAY set", g(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    C.out("SO_KEEPALIVE set", g(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0)
    C.out("TCP_INFO state", g(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0])
    C.out("TCP_NOTSENT_LOWAT", g(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT))
    C.out("TCP_CORK", g(socket.IPPROTO_TCP, socket.TCP_CORK))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
    C.out("TCP_CORK set", g(socket.IPPROTO_TCP, socket.TCP_CORK))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
    C.out("TCP_CORK cleared", g(socket.IPPROTO_TCP, socket.TCP_CORK))
    s.close()


# 30b. TCP_NOTSENT_LOWAT set before connect() (the switch must keep it, not
# the system default), then changed on the connected socket.
def cli_lowat_before_connect(C):
    s = C.socket()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, 12345)
    s.settimeout(CONNECT_TIMEOUT)
    s.connect((HOST, C.port))
    s.settimeout(IO_TIMEOUT)
    s.sendall(b"hi")
    C.ctl.wait("ready")
    C.out("TCP_NOTSENT_LOWAT", s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, 54321)
    C.out("TCP_NOTSENT_LOWAT set", s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT))
    s.close()


# 31. close of one socket in a selector (epoll), the others carry on.
def srv_selector(S):
    conns = {}
    for _ in range(2):
        c = S.accept()
        conns[recv_exact(c, 1)] = c
    S.out("accepted", sorted(conns))
    a, b = conns[b"A"], conns[b"B"]
    S.ctl.wait("go")
    a.sendall(b"a1")
    b.sendall(b"b1")
    S.ctl.send("sent1")
    S.ctl.wait("closed-a")
    S.out("a", attempt(a.recv, 10))
    b.sendall(b"b2")
    S.ctl.send("sent2")
    c = S.accept()
    S.out("third", show(recv_exact(c, 1)))
    b.sendall(b"b3")
    c.sendall(b"c3")
    S.ctl.send("sent3")
    wait_eof(S, b, "b eof")
    wait_eof(S, c, "c eof")
    a.close()
    b.close()
    c.close()


def cli_selector(C):
    sel = selectors.DefaultSelector()
    C.out("selector", type(sel).__name__)
    a = C.connect()
    a.sendall(b"A")
    b = C.connect()
    b.sendall(b"B")
    sel.register(a, selectors.EVENT_READ, "a")
    sel.register(b, selectors.EVENT_READ, "b")
    C.ctl.send("go")
    C.ctl.wait("sent1")
    C.out("ready", sorted(k.data for k, _ in sel.select(IO_TIMEOUT)))
    C.out("a", attempt(a.recv, 10), "b", attempt(b.recv, 10))
    C.out("ready after reads", sorted(k.data for k, _ in sel.select(QUIET_S)))
    sel.unregister(a)
    a.close()
    C.ctl.send("closed-a")
    C.ctl.wait("sent2")
    C.out("ready", sorted(k.data for k, _ in sel.select(IO_TIMEOUT)))
    C.out("b", attempt(b.recv, 10))
    c = C.connect()
    c.sendall(b"C")
    sel.register(c, selectors.EVENT_READ, "c")
    C.ctl.wait("sent3")
    C.out("ready", sorted(k.data for k, _ in sel.select(IO_TIMEOUT)))
    C.out("b", attempt(b.recv, 10), "c", attempt(c.recv, 10))
    sel.close()
    b.close()
    c.close()


# 32. edge-triggered epoll.
def two_sends(first, second):
    # A server that sends `first`, then `second` when the client says go2.
    def srv(S):
        c = S.accept()
        S.out("hi", show(recv_exact(c, 2)))
        c.sendall(first)
        S.ctl.send("sent1")
        S.ctl.wait("go2")
        c.sendall(second)
        S.ctl.send("sent2")
        wait_eof(S, c)
        c.close()
    return srv


srv_two_sends = two_sends(b"one..", b"two..")


def cli_epoll_et(C):
    s = C.connect()
    s.sendall(b"hi")
    ep = select.epoll()
    ep.register(s.fileno(), select.EPOLLIN | select.EPOLLET)
    C.ctl.wait("sent1")
    C.out("first", [bits(ev, EPOLL_BITS) for _, ev in ep.poll(IO_TIMEOUT)])
    C.out("again (0.2 s)", [bits(ev, EPOLL_BITS) for _, ev in ep.poll(QUIET_S)])
    C.ctl.send("go2")
    C.ctl.wait("sent2")
    C.out("second", [bits(ev, EPOLL_BITS) for _, ev in ep.poll(IO_TIMEOUT)])
    C.out("again (0.2 s)", [bits(ev, EPOLL_BITS) for _, ev in ep.poll(QUIET_S)])
    C.out("read", show(recv_exact(s, 10)))
    C.out("after read (0.2 s)", [bits(ev, EPOLL_BITS) for _, ev in ep.poll(QUIET_S)])
    ep.close()
    s.close()


# 33. EPOLLRDHUP when the peer shuts down writing.
def cli_epoll_rdhup(C):
    s = C.connect()
    ep = select.epoll()
    ep.register(s.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
    C.out("before (0.2 s)", [bits(ev, EPOLL_BITS) for _, ev in ep.poll(QUIET_S)])
    s.sendall(b"hello")
    C.ctl.wait("shut")
    C.out("after SHUT_WR", [bits(ev, EPOLL_BITS) for _, ev in ep.poll(IO_TIMEOUT)])
    C.out("recv", attempt(s.recv, 10))
    s.sendall(b"x")
    ep.close()
    s.close()


# 34. shutdown(SHUT_RD) by the client.
def srv_shut_rd(S):
    c = S.accept()
    S.out("hi", show(recv_exact(c, 2)))
    S.ctl.wait("shut")
    S.out("send late", attempt(c.send, b"late"))
    S.ctl.send("sent")
    S.out("then", attempt(recv_exact, c, 1))
    c.close()


def cli_shut_rd(C):
    s = C.connect()
    s.sendall(b"hi")
    C.out("shutdown RD", attempt(s.shutdown, socket.SHUT_RD))
    C.out("recv", attempt(s.recv, 10))
    C.out("poll", poll1(s, select.POLLIN | select.POLLOUT | select.POLLRDHUP, 0))
    C.ctl.send("shut")
    C.ctl.wait("sent")
    C.out("recv after late data", attempt(s.recv, 10))
    C.out("send", attempt(s.send, b"x"))
    s.close()


# 35. a dup'ed socket carries on after the original is closed (Python's dup
# is fcntl(F_DUPFD_CLOEXEC); also dup2 to a chosen number).
def srv_echo_to_eof(S):
    c = S.accept()
    n = 0
    while True:
        b = c.recv(65536)
        if not b:
            break
        n += len(b)
        c.sendall(b)
    S.out("echoed", n, "then eof")
    c.close()


def cli_dup(C):
    s = C.connect()
    s2 = C.track(s.dup())
    s.close()
    s2.settimeout(IO_TIMEOUT)
    s2.sendall(b"via-dup")
    C.out("dup echo", attempt(recv_exact, s2, 7))
    spare = os.open(os.devnull, os.O_RDONLY)
    os.dup2(s2.fileno(), spare)
    s3 = C.track(socket.socket(fileno=spare))
    s2.close()
    s3.settimeout(IO_TIMEOUT)
    s3.sendall(b"via-dup2")
    C.out("dup2 echo", attempt(recv_exact, s3, 8))
    s3.close()


# 36. socket.sendfile (os.sendfile) of a 1 MiB file.
def srv_sha_to_eof(S):
    c = S.accept(timeout=20)
    data = recv_to_eof(c)
    S.out("got", show(data))
    c.close()


def cli_sendfile(C):
    s = C.connect(timeout=20)
    payload = rand(1 << 20, 1200)
    with tempfile.TemporaryFile() as f:
        f.write(payload)
        f.flush()
        f.seek(0)
        C.out("sendfile", attempt(s.sendfile, f), "sha", sha(payload))
    s.close()


# 37. sendmsg with several buffers; recvmsg, recvfrom, recv_into.
def srv_msgs(S):
    c = S.accept()
    data, anc, flags, addr = c.recvmsg(9)
    S.out("recvmsg", show(data), "anc", anc, "flags", flags, "addr", addr)
    S.ctl.send("read1")
    S.ctl.wait("sent2")
    data, addr = c.recvfrom(100)
    S.out("recvfrom", show(data), "addr", addr)
    S.ctl.send("read2")
    S.ctl.wait("sent3")
    buf = bytearray(100)
    n = c.recv_into(buf, 4)
    S.out("recv_into 4", n, show(buf[:n]))
    n, anc, flags, addr = c.recvmsg_into([bytearray(3), bytearray(100)])
    S.out("recvmsg_into", n, "flags", flags)
    wait_eof(S, c)
    c.close()


def cli_msgs(C):
    s = C.connect()
    C.out("sendmsg", attempt(s.sendmsg, [b"abc", b"defg", b"hi"]))
    C.ctl.wait("read1")
    C.out("sendto", attempt(s.sendto, b"to-nowhere", (HOST, 9)))
    C.ctl.send("sent2")
    C.ctl.wait("read2")
    C.out("send MSG_NOSIGNAL|MSG_DONTWAIT", attempt(s.send, b"0123456789", socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT))
    C.ctl.send("sent3")
    s.close()


# 38. SO_LINGER 0: the server sees the reset.
def srv_linger0(S):
    c = S.accept()
    S.out("hi", show(recv_exact(c, 2)))
    S.ctl.send("ready")
    S.ctl.wait("closed")
    S.out("poll", poll1(c, select.POLLIN | select.POLLOUT | select.POLLRDHUP, int(IO_TIMEOUT * 1000)))
    S.out("recv", attempt(c.recv, 10))
    S.out("recv", attempt(c.recv, 10))
    S.out("send", attempt(c.send, b"x"))
    c.close()


def cli_linger0(C):
    s = C.connect()
    s.sendall(b"hi")
    C.ctl.wait("ready")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    C.ctl.send("closed")


# 38b. the server resets the connection before it reads anything (SO_LINGER
# 0, then close): the client's calls see the reset as on TCP.
def srv_reset_first(S):
    c = S.accept()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    S.ctl.send("reset")


def cli_reset_first(C):
    s = C.connect()
    C.ctl.wait("reset")
    C.out("readable", yn(readable(s)))
    C.out("poll", poll1(s, select.POLLIN | select.POLLOUT, 0))
    C.out("recv", attempt(s.recv, 10))
    C.out("recv", attempt(s.recv, 10))
    C.out("SO_ERROR", ename(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)))
    C.out("send", attempt(s.send, b"x"))


# 39. calls on a socket that is not connected.
def cli_not_connected(C):
    s = C.socket()
    s.settimeout(None)
    C.out("getpeername", attempt(s.getpeername))
    C.out("getsockname", attempt(s.getsockname))
    C.out("recv", attempt(s.recv, 10))
    C.out("send", attempt(s.send, b"x"))
    C.out("shutdown", attempt(s.shutdown, socket.SHUT_RDWR))
    C.out("FIONREAD", attempt(fionread, s))
    C.out("SO_ERROR", ename(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)))
    C.out("poll", poll1(s, select.POLLIN | select.POLLOUT, 0))
    lst = C.socket()
    lst.bind((HOST, 0))
    lst.listen(1)
    C.out("listener recv", attempt(lst.recv, 10))
    C.out("listener send", attempt(lst.send, b"x"))
    C.out("listener getpeername", attempt(lst.getpeername))
    C.out("listener SO_ACCEPTCONN", lst.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    C.out("listener poll", poll1(lst, select.POLLIN | select.POLLOUT, 0))


# 40. zero-length recv and send.
def cli_zero_len(C):
    s = C.connect(timeout=None)
    s.sendall(b"hi")
    C.ctl.wait("ready")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval(0.2))
    C.out("recv 0 idle", attempt(s.recv, 0))
    C.out("send 0", attempt(s.send, b""))
    s.setblocking(False)
    C.out("nb recv 0 idle", attempt(s.recv, 0))
    s.close()


# 41. connect on a connected socket.
def cli_connect_again(C):
    s = C.connect()
    s.sendall(b"hi")
    C.ctl.wait("ready")
    C.out("connect again", ename(s.connect_ex((HOST, C.port))))
    s.close()


# 42. many small writes each way.
def srv_small(S):
    c = S.accept()
    data = recv_exact(c, 10000)
    S.out("got", show(data), "match", yn(data == rand(10000, 1300)))
    back = rand(10000, 1301)
    for i in range(0, 10000, 10):
        c.send(back[i:i + 10])
    wait_eof(S, c)
    c.close()


def cli_small(C):
    s = C.connect()
    data = rand(10000, 1300)
    for i in range(0, 10000, 10):
        s.send(data[i:i + 10])
    got = recv_exact(s, 10000)
    C.out("got back", show(got), "match", yn(got == rand(10000, 1301)))
    s.close()


# 43. FIONREAD with data and EOF pending.
def cli_fionread_eof(C):
    s = C.connect()
    s.sendall(b"hi")
    C.ctl.wait("closed")
    C.out("FIONREAD", fionread(s))
    C.out("recv", attempt(s.recv, 100))
    C.out("FIONREAD", fionread(s))
    C.out("recv", attempt(s.recv, 100))
    s.close()


# 44. SO_RCVLOWAT: readiness waits for the low-water mark.
srv_rcvlowat = two_sends(b"12345", b"67890")


def cli_rcvlowat(C):
    s = C.connect()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 10)
    C.out("SO_RCVLOWAT", s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT))
    s.sendall(b"hi")
    C.ctl.wait("sent1")
    C.out("5 of 10 bytes: poll (0.2 s)", poll1(s, select.POLLIN, int(QUIET_S * 1000)))
    C.ctl.send("go2")
    C.ctl.wait("sent2")
    C.out("10 of 10 bytes: poll", poll1(s, select.POLLIN, int(IO_TIMEOUT * 1000)))
    C.out("read", attempt(recv_exact, s, 10))
    s.close()


# 45. The fd numbers a connection leaves behind: an event loop that sizes
# its table by the fds it expects (wrk: 10 + 3 per connection) must find
# no more fds below its next sockets after a connection than on TCP (what
# a library keeps open goes to half the soft RLIMIT_NOFILE or above).
def low_fds():
    import resource
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    bound = 512 if soft == resource.RLIM_INFINITY else soft // 2
    return set(int(f) for f in os.listdir("/proc/self/fd") if int(f) < bound)


def srv_fd_numbers(S):
    before = low_fds()
    c = S.accept(timeout=None)
    c.sendall(recv_exact(c, 2))
    wait_eof(S, c)
    c.close()
    S.out("low fds left open by the connection", len(low_fds() - before))


def cli_fd_numbers(C):
    before = low_fds()
    s = C.connect(timeout=None)
    s.sendall(b"hi")
    C.out("echo", attempt(recv_exact, s, 2))
    s.close()
    C.out("low fds left open by the connection", len(low_fds() - before))


CASES = [
    ("echo_blocking", srv_echo_blocking, cli_echo_blocking),
    ("echo_rounds", srv_echo_rounds, cli_echo_rounds),
    ("nb_connect_select", srv_ping, cli_nb_connect_select),
    ("nb_connect_poll", srv_ping, cli_nb_connect_poll),
    ("connect_refused", None, cli_connect_refused),
    ("peek", srv_peek, cli_peek),
    ("waitall", srv_waitall, cli_waitall),
    ("waitall_eof", srv_waitall_eof, cli_waitall_eof),
    ("fionread", srv_fionread, cli_fionread),
    ("fionread_eof", srv_bye, cli_fionread_eof),
    ("client_shut_wr", srv_client_shut_wr, cli_client_shut_wr),
    ("server_shut_wr", srv_server_shut_wr, cli_server_shut_wr),
    ("half_closed", srv_half_closed, cli_half_closed),
    ("send_before_read", srv_send_before_read, cli_send_before_read),
    ("send_untouched", srv_send_untouched, cli_send_untouched),
    ("close_unread_recv", srv_close_unread, cli_close_unread_recv),
    ("close_unread_soerror", srv_close_unread, cli_close_unread_soerror),
    ("close_unread_send", srv_close_unread, cli_close_unread_send),
    ("close_after_delay_request", srv_close_after_delay, cli_close_after_delay_request),
    ("close_after_delay_silent", srv_close_after_delay, cli_close_after_delay_silent),
    ("rcvtimeo", srv_silent, cli_rcvtimeo),
    ("sndtimeo", srv_sndtimeo, cli_sndtimeo),
    ("getpeername_shutdown", srv_getpeername, cli_getpeername),
    ("names", srv_names, cli_names),
    ("recv_after_close", srv_bye, cli_recv_after_close),
    ("send_after_close", srv_bye, cli_send_after_close),
    ("bulk_slow_reader", srv_bulk_slow, cli_bulk_slow),
    ("readiness", srv_readiness, cli_readiness),
    ("nb_recv_idle", srv_hi_then_eof, cli_nb_recv_idle),
    ("accepted_nb_first_read", srv_accepted_nb, cli_accepted_nb),
    ("sockopts", srv_hi_then_eof, cli_sockopts),
    ("sockopt_lowat", srv_hi_then_eof, cli_lowat_before_connect),
    ("selector_close", srv_selector, cli_selector),
    ("epoll_et", srv_two_sends, cli_epoll_et),
    ("epoll_rdhup", srv_half_closed, cli_epoll_rdhup),
    ("shut_rd", srv_shut_rd, cli_shut_rd),
    ("dup", srv_echo_to_eof, cli_dup),
    ("sendfile", srv_sha_to_eof, cli_sendfile),
    ("msgs", srv_msgs, cli_msgs),
    ("linger0", srv_linger0, cli_linger0),
    ("reset_first", srv_reset_first, cli_reset_first),
    ("not_connected", None, cli_not_connected),
    ("zero_len", srv_hi_then_eof, cli_zero_len),
    ("connect_again", srv_hi_then_eof, cli_connect_again),
    ("small_writes", srv_small, cli_small),
    ("rcvlowat", srv_rcvlowat, cli_rcvlowat),
    ("fd_numbers", srv_fd_numbers, cli_fd_numbers),
]


# ---------------------------------------------------------------- runner


def run_case(name, srv, cli):
    lines = []
    port = 0
    lst = None
    pid = 0
    rfd = -1
    c_ctl = s_ctl = None
    if srv is not None:
        lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind((HOST, 0))
        lst.listen(16)
        port = lst.getsockname()[1]
        c_ctl, s_ctl = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        rfd, wfd = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the server child
            try:
                c_ctl.close()
                os.close(rfd)
                signal.alarm(CASE_ALARM)

                def emit(line):
                    os.write(wfd, line.encode() + b"\n")

                S = Side(name, "srv", port, Ctl(s_ctl), emit, listener=lst)
                try:
                    srv(S)
                except BaseException as e:  # noqa: BLE001
                    S.out("EXCEPTION", exc_str(e))
                signal.alarm(0)
                S.close_all()
                lst.close()
                s_ctl.close()
            finally:
                os._exit(0)
        lst.close()
        s_ctl.close()
        os.close(wfd)
    C = Side(name, "cli", port, Ctl(c_ctl) if c_ctl else None, lines.append)
    signal.alarm(CASE_ALARM)
    try:
        cli(C)
    except BaseException as e:  # noqa: BLE001
        C.out("EXCEPTION", exc_str(e))
    signal.alarm(0)
    C.close_all()
    if c_ctl is not None:
        c_ctl.close()
    if pid:
        buf = b""
        deadline = time.monotonic() + CASE_ALARM + 5
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                lines.append("%s srv: KILLED (no end after %d s)" % (name, CASE_ALARM + 5))
                break
            r, _, _ = select.select([rfd], [], [], left)
            if not r:
                continue
            b = os.read(rfd, 65536)
            if not b:
                break
            buf += b
        os.close(rfd)
        os.waitpid(pid, 0)
        lines.extend(buf.decode(errors="replace").splitlines())
    for line in lines:
        print(line)
    sys.stdout.flush()


def main(argv):
    only = None
    if "--list" in argv:
        for name, _, _ in CASES:
            print(name)
        return 0
    if "--only" in argv:
        only = re.compile(argv[argv.index("--only") + 1])
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    for name, srv, cli in CASES:
        if only and not only.search(name):
            continue
        run_case(name, srv, cli)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
