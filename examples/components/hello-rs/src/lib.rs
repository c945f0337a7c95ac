//! The example edge function, compiled: answers with the serving node's
//! name and coordinates, like `examples/components/hello/app.py`.

wit_bindgen::generate!({
    path: "../../../wit/http",
    world: "http",
});

use exports::makiatto::http::handler::{Guest, NodeContext, Request, Response};

struct Hello;

impl Guest for Hello {
    fn handle_request(ctx: NodeContext, req: Request) -> Response {
        let (body, kind) = if req.query.as_deref() == Some("format=json") {
            (
                format!(
                    "{{\"node\": {}, \"latitude\": {}, \"longitude\": {}}}",
                    json_string(&ctx.name),
                    ctx.latitude,
                    ctx.longitude
                ),
                "application/json",
            )
        } else {
            (
                format!(
                    "hello from node {} at ({:.4}, {:.4})\n",
                    ctx.name, ctx.latitude, ctx.longitude
                ),
                "text/plain; charset=utf-8",
            )
        };
        Response {
            status: 200,
            headers: vec![
                ("content-type".into(), kind.into()),
                ("cache-control".into(), "no-store".into()),
            ],
            body: Some(body.into_bytes()),
        }
    }
}

/// `s` as a JSON string.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

export!(Hello);
