#!/usr/bin/env python3
"""Delays and reorders packets that iptables sends to an NFQUEUE: each is
held for a random time between MIN_MS and MAX_MS, then accepted, so
packets leave in another order than they came whenever the spread is wider
than their spacing. For chaos tests of the mesh (`tc netem` is not
available on this kernel, and nftables can drop but not delay).

  scripts/mesh-delay.py QUEUE MIN_MS MAX_MS [SEED]

Run it inside a host's network namespace, with a rule such as

  iptables -A OUTPUT -p udp --dport 51880 -j NFQUEUE --queue-num QUEUE --queue-bypass

(`--queue-bypass`: while nothing listens on the queue, packets pass).
Speaks netlink (NETLINK_NETFILTER, nfnetlink_queue) itself: packets are
copied as metadata only, and verdicts are given by packet id, in any order.
Ends on SIGTERM or SIGINT, accepting what it holds; prints one JSON line:
packets held, and how many left before one that arrived earlier.
"""

import heapq
import json
import random
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS = 1, 2
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
NF_ACCEPT = 1


def attr(kind, payload):
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def message(kind, queue, attrs, flags=NLM_F_REQUEST, seq=0):
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + b"".join(attrs)
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | kind, flags, seq, 0) + body


def attributes(data):
    out = {}
    while len(data) >= 4:
        length, kind = struct.unpack_from("=HH", data)
        if length < 4:
            break
        out[kind & 0x7FFF] = data[4:length]
        data = data[(length + 3) & ~3:]
    return out


def main():
    queue, low, high = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    rng = random.Random(int(sys.argv[4]) if len(sys.argv) > 4 else 0)
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    s.bind((0, 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    bind = struct.pack("=BxH", NFQNL_CFG_CMD_BIND, socket.htons(socket.AF_INET))
    params = struct.pack("!IB", 0, NFQNL_COPY_META)
    for seq, a in enumerate([attr(NFQA_CFG_CMD, bind), attr(NFQA_CFG_PARAMS, params)], 1):
        s.send(message(NFQNL_MSG_CONFIG, queue, [a], NLM_F_REQUEST | NLM_F_ACK, seq))
        reply = s.recv(65536)
        kind = struct.unpack_from("=H", reply, 4)[0]
        if kind == NLMSG_ERROR and struct.unpack_from("=i", reply, 16)[0] != 0:
            sys.exit("nfnetlink_queue refused the configuration: errno %d" % -struct.unpack_from("=i", reply, 16)[0])

    held, order = [], 0  # (due, arrival, id)
    released_arrival = -1
    stats = {"packets": 0, "reordered": 0}
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))

    def release(packet_id):
        verdict = attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, packet_id))
        s.send(message(NFQNL_MSG_VERDICT, queue, [verdict]))

    while not stop:
        now = time.monotonic()
        while held and (held[0][0] <= now):
            _, arrival, packet_id = heapq.heappop(held)
            if arrival < released_arrival:
                stats["reordered"] += 1
            released_arrival = max(released_arrival, arrival)
            release(packet_id)
        timeout = max(0.0, held[0][0] - now) if held else 0.5
        try:
            ready, _, _ = select.select([s], [], [], timeout)
        except InterruptedError:
            continue
        if not ready:
            continue
        data = s.recv(1 << 16)
        while len(data) >= 16:
            length, kind = struct.unpack_from("=IH", data)
            if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                header = attributes(data[20:length]).get(NFQA_PACKET_HDR)
                if header:
                    packet_id = struct.unpack_from("!I", header)[0]
                    due = time.monotonic() + rng.uniform(low, high) / 1000
                    heapq.heappush(held, (due, order, packet_id))
                    order += 1
                    stats["packets"] += 1
            data = data[(length + 3) & ~3:] if length else b""
    for _, _, packet_id in held:
        release(packet_id)
    print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    main()
