"""The example transformer: adds an HTML comment naming the node that
served the page, just before `</body>` (or at the end). Built into
`examples/site/transforms/comment.wasm` by `scripts/build-components.sh`."""

from typing import Optional

from wit_world import exports
from wit_world.exports.transformer import FileInfo, NodeContext, TransformResult


class Transformer(exports.Transformer):
    def transform(
        self, ctx: NodeContext, info: FileInfo, content: bytes
    ) -> Optional[TransformResult]:
        if not info.mime_type.startswith("text/html"):
            return None
        comment = f"<!-- served by {ctx.name} via Makiatto -->\n".encode()
        at = content.rfind(b"</body>")
        out = content + comment if at < 0 else content[:at] + comment + content[at:]
        return TransformResult(out, None, [("x-transformed-by", "comment")])
