"""A hostile handler for the cluster tests (world: http): does what its
query asks and says what happened, so a test can check that the sandbox
refused it. Built into `target/components/hostile.wasm` by
`scripts/build-components.sh`.

    ?connect=HOST:PORT   open a TCP connection (HOST may be [v6])
    ?read=PATH           read a file
    ?write=PATH          create or overwrite a file
    ?list=PATH           list a directory
    ?env=NAME            the value of an environment variable

Answers 200 with `done: …` when the operation succeeded, 403 with
`refused: <exception> errno=<n>: …` when it failed."""

import os
import socket
from urllib.parse import parse_qs

from wit_world import exports
from wit_world.exports.handler import NodeContext, Request, Response


def connect(target: str) -> str:
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.connect((host, int(port)))
    finally:
        s.close()
    return f"connected to {target}"


def read(path: str) -> str:
    with open(path, "rb") as f:
        return f"read {len(f.read())} bytes of {path}"


def write(path: str) -> str:
    with open(path, "wb") as f:
        f.write(b"written by a component\n")
    return f"wrote {path}"


def listing(path: str) -> str:
    return f"{path}: " + " ".join(sorted(os.listdir(path)))


def env(name: str) -> str:
    return os.environ[name]


ACTIONS = {"connect": connect, "read": read, "write": write, "list": listing, "env": env}


class Handler(exports.Handler):
    def handle_request(self, ctx: NodeContext, req: Request) -> Response:
        asked = parse_qs(req.query or "")
        for name, action in ACTIONS.items():
            if name in asked:
                try:
                    text, status = "done: " + action(asked[name][0]), 200
                except Exception as e:  # what the sandbox answered
                    errno = getattr(e, "errno", None)
                    text, status = f"refused: {type(e).__name__} errno={errno}: {e}", 403
                return Response(status, [("content-type", "text/plain")], (text + "\n").encode())
        size = len(req.body or b"")
        return Response(200, [("content-type", "text/plain")], f"body of {size} bytes\n".encode())
