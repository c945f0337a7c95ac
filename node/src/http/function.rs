//! A request answered by a WebAssembly handler (`crate::wasm`): the
//! method checked against the function's `methods` (405 with `Allow`),
//! the body read with a size limit (413) and a read timeout (408), the
//! call made on the work pool (503 with `Retry-After` when it is full or
//! the function is at `wasm.concurrency`), and the guest's response
//! compressed like a static file. A trap, a timeout or a memory overrun
//! answers 500/504; every answer carries `x-request-id`, and a failure is
//! logged with it.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};

use super::handler::{Body, Ctx, full, text};
use super::request::{self, Coding};
use super::routes::SiteVersion;
use crate::wasm::bindings::http as wit;
use crate::wasm::route::{self, HandlerMethod};
use crate::wasm::{CallError, Function};

/// Bodies up to this size are compressed on the serving thread; larger
/// ones on the work pool (sent as the guest made them when it is full).
const COMPRESS_INLINE_MAX: usize = 256 << 10;

/// A request id: 16 hex digits, random.
fn request_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

pub async fn respond<B>(
    ctx: &Ctx,
    site: &SiteVersion,
    f: &Function,
    req: Request<B>,
) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let id = request_id();
    let mut r = answer(ctx, site, f, req, &id).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        r.headers_mut()
            .insert(HeaderName::from_static("x-request-id"), v);
    }
    r
}

async fn answer<B>(
    ctx: &Ctx,
    site: &SiteVersion,
    f: &Function,
    req: Request<B>,
    id: &str,
) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Some(method) = HandlerMethod::of(req.method()).filter(|m| f.allows(*m)) else {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} is not allowed here", req.method()),
        );
        if let Ok(v) = HeaderValue::from_str(&route::allow(&f.methods)) {
            r.headers_mut().insert(header::ALLOW, v);
        }
        return r;
    };
    let Some(limits) = ctx.http.wasm.limits() else {
        return retry("the node is still reading its configuration");
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_request_bytes as u64) {
        return too_large(limits.max_request_bytes);
    }
    let accept = req
        .headers()
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (parts, body) = req.into_parts();
    let limited = http_body_util::Limited::new(body, limits.max_request_bytes);
    let body = match tokio::time::timeout(limits.body_timeout, limited.collect()).await {
        Err(_) => {
            return text(
                StatusCode::REQUEST_TIMEOUT,
                "the request body was not sent in time",
            );
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return too_large(limits.max_request_bytes);
        }
        Ok(Err(e)) => return text(StatusCode::BAD_REQUEST, format!("the request body: {e}")),
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let request = wit::Request {
        method: match method {
            HandlerMethod::Get => wit::Method::Get,
            HandlerMethod::Post => wit::Method::Post,
            HandlerMethod::Put => wit::Method::Put,
            HandlerMethod::Delete => wit::Method::Delete,
            HandlerMethod::Patch => wit::Method::Patch,
            HandlerMethod::Head => wit::Method::Head,
            HandlerMethod::Options => wit::Method::Options,
        },
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: (!body.is_empty()).then(|| body.to_vec()),
    };
    let called = ctx
        .http
        .wasm
        .call_handler(site.deployed(), f, request, &ctx.served)
        .await;
    match called {
        Ok(response) => {
            // Computed, not from a cache (`cdn.cache.hit = false`).
            ctx.served.served_from_disk();
            build(ctx, response, accept.as_deref(), id, site, f).await
        }
        Err(e) => failed(e, id, site, f),
    }
}

fn too_large(max: usize) -> Response<Body> {
    text(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is larger than {max} bytes (wasm.max_request_kb)"),
    )
}

fn retry(why: &str) -> Response<Body> {
    let mut r = text(StatusCode::SERVICE_UNAVAILABLE, why);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// Headers a guest may not set (the connection's and the edge's own).
fn reserved(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "upgrade"
            | "te"
            | "trailer"
            | "proxy-connection"
            | "content-length"
            | "x-request-id"
    )
}

async fn build(
    ctx: &Ctx,
    response: wit::Response,
    accept: Option<&str>,
    id: &str,
    site: &SiteVersion,
    f: &Function,
) -> Response<Body> {
    let Ok(status) = StatusCode::from_u16(response.status) else {
        tracing::warn!(request_id = id, domain = %site.domain, function = %f.path, status = response.status, "a function answered an invalid status");
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the function answered an invalid status (request {id})"),
        );
    };
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    for (name, value) in response.headers {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            (Ok(n), Ok(v)) if !reserved(&n) => {
                h.append(n, v);
            }
            _ => {
                tracing::debug!(request_id = id, header = %name, "a function's header was dropped");
            }
        }
    }
    let body = response.body.unwrap_or_default();
    let content_type = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let coding = (body.len() >= 256
        && !h.contains_key(header::CONTENT_ENCODING)
        && super::variants::compressible(content_type))
    .then(|| request::choose_coding(accept, &Coding::ALL))
    .flatten();
    h.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    let body = Bytes::from(body);
    let body = match coding {
        Some(c) => match compress(ctx, c, body.clone()).await {
            Some(compressed) => {
                if let Ok(v) = HeaderValue::from_str(c.token()) {
                    r.headers_mut().insert(header::CONTENT_ENCODING, v);
                }
                Bytes::from(compressed)
            }
            None => body,
        },
        None => body,
    };
    *r.body_mut() = full(body);
    r
}

/// A function's body compressed with `coding`: on this thread when it is
/// small, else on the work pool; `None` when the pool
/// is full or the coder failed (the body then goes out as it is).
async fn compress(ctx: &Ctx, coding: Coding, body: Bytes) -> Option<Vec<u8>> {
    if body.len() <= COMPRESS_INLINE_MAX {
        return super::variants::compress_dynamic(coding, &body).ok();
    }
    let job = ctx
        .http
        .wasm
        .pool()
        .submit(move || super::variants::compress_dynamic(coding, &body).ok());
    match job {
        Ok(rx) => rx.await.ok().flatten(),
        Err(_) => None,
    }
}

fn failed(e: CallError, id: &str, site: &SiteVersion, f: &Function) -> Response<Body> {
    tracing::warn!(request_id = id, domain = %site.domain, function = %f.path, error = %e, "a function call failed");
    match e {
        CallError::Busy | CallError::Concurrency => retry(&format!("{e} (request {id})")),
        CallError::Timeout(_) => text(StatusCode::GATEWAY_TIMEOUT, format!("{e} (request {id})")),
        CallError::NotDeployed(_)
        | CallError::Unusable(_)
        | CallError::Memory
        | CallError::Trap(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the function failed (request {id})"),
        ),
    }
}
