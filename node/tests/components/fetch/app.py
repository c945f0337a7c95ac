"""A handler that fetches for the cluster tests (world: fetch): a GET
through wasi:http's outgoing handler, so a test can check what the node's
sender (`node/src/wasm/outgoing.rs`) lets through. Built into
`target/components/fetch.wasm` by `scripts/build-components.sh`, against
the WASI packages of the wasmtime-wasi-http crate the node links.

    ?url=http://HOST:PORT/PATH   GET it (HOST may be [v6])

Answers 200 with `fetched <status>: <the body's first bytes>` when a
response came, 403 with `refused: <error-code>` (its WIT name, e.g.
`destination-ip-prohibited`) when the host refused the request or it
failed."""

import re
from urllib.parse import parse_qs, urlsplit

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.exports.handler import NodeContext, Request, Response
from wit_world.imports import outgoing_handler
from wit_world.imports.streams import StreamError_Closed
from wit_world.imports.types import (
    Fields,
    Method_Get,
    OutgoingRequest,
    Scheme_Http,
    Scheme_Https,
)

# How much of the body the answer quotes.
FIRST_BYTES = 256


class Refused(Exception):
    """The host answered an error code."""


def code_name(code) -> str:
    """`ErrorCode_DestinationIpProhibited()` -> `destination-ip-prohibited`,
    with the payload if it has one."""
    name = type(code).__name__.removeprefix("ErrorCode_")
    name = re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()
    payload = getattr(code, "value", None)
    return name if payload is None else f"{name} {payload}"


def fetch(url: str) -> str:
    parts = urlsplit(url)
    request = OutgoingRequest(Fields())
    request.set_method(Method_Get())
    request.set_scheme(Scheme_Https() if parts.scheme == "https" else Scheme_Http())
    request.set_authority(parts.netloc)
    request.set_path_with_query(parts.path + (f"?{parts.query}" if parts.query else "") or "/")
    try:
        future = outgoing_handler.handle(request, None)
    except Err as e:
        raise Refused(code_name(e.value))
    # Children are dropped before their parents (a pollable before its
    # future, a stream before its body): `with` releases each in turn.
    with future:
        with future.subscribe() as ready:
            ready.block()
        got = future.get()
        match got:
            case Ok(value=Ok(value=response)):
                pass
            case Ok(value=Err(value=code)):
                raise Refused(code_name(code))
            case _:
                raise Refused(f"no response: {got}")
    with response:
        status = response.status()
        with response.consume() as body:
            data = b""
            with body.stream() as stream:
                while len(data) < FIRST_BYTES:
                    try:
                        data += stream.blocking_read(FIRST_BYTES - len(data))
                    except Err as e:
                        if isinstance(e.value, StreamError_Closed):
                            break
                        raise Refused(f"reading the body: {e.value}")
    return f"{status}: {data.decode(errors='replace')}"


class Handler(exports.Handler):
    def handle_request(self, ctx: NodeContext, req: Request) -> Response:
        asked = parse_qs(req.query or "")
        if "url" not in asked:
            return Response(400, [("content-type", "text/plain")], b"give ?url=\n")
        try:
            text, status = "fetched " + fetch(asked["url"][0]), 200
        except Refused as e:
            text, status = f"refused: {e}", 403
        return Response(status, [("content-type", "text/plain")], (text + "\n").encode())
