"""The example edge function: answers with the serving node's name and
coordinates, so `curl /api/hello` on each node shows which node answered.
Built into `examples/site/api/hello.wasm` by `scripts/build-components.sh`."""

import json

from wit_world import exports
from wit_world.exports.handler import NodeContext, Request, Response


class Handler(exports.Handler):
    def handle_request(self, ctx: NodeContext, req: Request) -> Response:
        text = f"hello from node {ctx.name} at ({ctx.latitude:.4f}, {ctx.longitude:.4f})\n"
        if req.query == "format=json":
            body = json.dumps(
                {"node": ctx.name, "latitude": ctx.latitude, "longitude": ctx.longitude}
            ).encode()
            kind = "application/json"
        else:
            body = text.encode()
            kind = "text/plain; charset=utf-8"
        return Response(200, [("content-type", kind), ("cache-control", "no-store")], body)
