//! `wasmtime serve`'s hello world, for scale beside ours: answers 200 with
//! the body in the `HELLO_BODY` environment variable (the bench passes
//! the Rust hello's answer on the node, so both send the same bytes),
//! `text/plain`.

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasip2::http::proxy::export!(Hello);

struct Hello;

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let body_text = wasip2::cli::environment::get_environment()
            .into_iter()
            .find_map(|(k, v)| (k == "HELLO_BODY").then_some(v))
            .unwrap_or_else(|| "hello\n".into());
        let headers = Fields::new();
        // A header the runtime refuses is left out, not a trap.
        let _ = headers.set(
            "content-type",
            &[b"text/plain; charset=utf-8".to_vec()],
        );
        let response = OutgoingResponse::new(headers);
        let Ok(body) = response.body() else {
            return;
        };
        ResponseOutparam::set(out, Ok(response));
        if let Ok(stream) = body.write() {
            let _ = stream.blocking_write_and_flush(body_text.as_bytes());
        }
        let _ = OutgoingBody::finish(body, None);
    }
}
