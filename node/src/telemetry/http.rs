//! The HTTP edge's hook: an [`Exchange`] begins with the request's head
//! and ends when hyper lets go of the response body (its last byte sent,
//! or the client gone), so durations and sizes are what the visitor got,
//! not when the handler returned.
//!
//! Recorded for every exchange: the metrics (never sampled). Built only
//! for kept ones: the span, with OpenTelemetry's HTTP server attributes
//! and `cdn.cache.hit`, and the exemplar linking the duration histogram to
//! it. An incoming W3C `traceparent` is continued; a malformed one is
//! ignored (the request starts a trace of its own), and no response ever
//! carries one.

use std::cell::RefCell;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Buf;
use hyper::body::{Body, Frame, SizeHint};
use hyper::{Request, Response, Uri, Version};
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::trace::SpanData;

use super::context::{self, SpanId, TraceId};
use super::metrics::{self, Example, HttpKey};
use super::sampler::Kept;
use super::span::{LIVE, SPANS, Started, took};

/// Where the representation served came from: an in-memory cache, or
/// disk (or computed); whether a child span needs this request's span
/// kept; and the child spans that are exported only if it is. Set by the
/// handler; read when the exchange ends.
#[derive(Debug, Default)]
pub struct Served(AtomicU8, AtomicBool, Mutex<Vec<SpanData>>, AtomicBool);

impl Served {
    /// From an in-memory representation cache (`cdn.cache.hit = true`).
    pub fn served_from_memory(&self) {
        self.0.store(1, Ordering::Relaxed);
    }

    /// Read from disk, or computed (`cdn.cache.hit = false`).
    pub fn served_from_disk(&self) {
        self.0.store(2, Ordering::Relaxed);
    }

    /// A child span was kept (an image made for this request): keep the
    /// request's span too.
    pub fn keep(&self) {
        self.1.store(true, Ordering::Relaxed);
    }

    /// A child span that follows this request's decision (a WebAssembly
    /// call): exported with the request's span, or not at all.
    pub fn park(&self, span: SpanData) {
        if let Ok(mut parked) = self.2.lock() {
            parked.push(span);
            self.3.store(true, Ordering::Relaxed);
        }
    }

    /// Child spans parked so far.
    #[cfg(test)]
    pub fn parked(&self) -> usize {
        self.2.lock().map_or(0, |p| p.len())
    }

    /// The parked spans (no lock taken on the common path: none parked).
    fn take_parked(&self) -> Vec<SpanData> {
        if !self.3.load(Ordering::Relaxed) {
            return Vec::new();
        }
        self.2
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default()
    }

    /// `None` when no representation was served (a redirect, a 304, an
    /// error).
    pub fn cache_hit(&self) -> Option<bool> {
        match self.0.load(Ordering::Relaxed) {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        }
    }
}

/// One request, from its head to the response's last byte.
pub struct Exchange {
    /// Ids and the caller's trace, when spans are recorded.
    started: Option<Started>,
    at: SystemTime,
    method: &'static str,
    uri: Uri,
    address: Option<Arc<str>>,
    https: bool,
    version: &'static str,
}

thread_local! {
    /// Configured hosts seen on this thread, shared by its data points.
    static HOSTS: RefCell<HashMap<Box<str>, Arc<str>>> = RefCell::new(HashMap::new());
}

fn interned(host: &str) -> Arc<str> {
    HOSTS.with(|h| {
        let mut h = h.borrow_mut();
        if let Some(a) = h.get(host) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(host);
        h.insert(host.into(), a.clone());
        a
    })
}

/// The request method as the conventions name it (`_OTHER` for any
/// method they do not list, so a client cannot make new series).
fn method_name(m: &hyper::Method) -> &'static str {
    match m.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        _ => "_OTHER",
    }
}

fn version_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// The W3C header (a constant name: no parsing per request).
static TRACEPARENT: hyper::header::HeaderName =
    hyper::header::HeaderName::from_static("traceparent");

/// Begins an exchange. `address` is the host when it is a configured
/// domain or alias (anything else is `other` in telemetry).
pub fn begin<B>(req: &Request<B>, https: bool, address: Option<&str>) -> Exchange {
    let started = LIVE.traces().then(|| {
        let parent = req
            .headers()
            .get(&TRACEPARENT)
            .and_then(|v| context::parse_traceparent(v.as_bytes()));
        Started::new(parent)
    });
    Exchange {
        at: started.map_or_else(SystemTime::now, |s| s.at),
        started,
        method: method_name(req.method()),
        uri: req.uri().clone(),
        address: address.map(interned),
        https,
        version: version_name(req.version()),
    }
}

impl Exchange {
    /// The span's ids, to run the handler in (log records name them).
    pub fn ids(&self) -> Option<(TraceId, SpanId)> {
        self.started.map(|s| s.ids())
    }

    /// The response, its body measured: the exchange ends when hyper
    /// drops it.
    pub fn respond<B>(self, response: Response<B>, served: &Served) -> Response<Measured<B>> {
        let status = response.status().as_u16();
        let cached = served.cache_hit();
        let child_kept = served.1.load(Ordering::Relaxed);
        let children = served.take_parked();
        response.map(|inner| Measured {
            inner,
            done: Some(Ending {
                exchange: self,
                status,
                cached,
                child_kept,
                children,
                sent: 0,
                complete: false,
            }),
        })
    }
}

/// What an exchange ends with.
struct Ending {
    exchange: Exchange,
    status: u16,
    cached: Option<bool>,
    /// A child span was kept: so is this one.
    child_kept: bool,
    /// Child spans exported if this one is.
    children: Vec<SpanData>,
    sent: u64,
    complete: bool,
}

impl Ending {
    fn finish(self) {
        let end = SystemTime::now();
        let x = self.exchange;
        let duration = took(x.at, end);
        let seconds = duration.as_secs_f64();
        let error = self.status >= 500;
        let child_kept = self.child_kept;
        let kept = x.started.and_then(|s| {
            let rules = LIVE.rules();
            let kept = rules
                .decide(s.trace, error, duration, s.parent_sampled())
                .or(child_kept.then_some(Kept::Child))?;
            Some((s, kept))
        });
        let example = kept.map(|(s, _)| Example {
            value: seconds,
            at: end,
            trace: s.trace,
            span: s.span,
        });
        let key = HttpKey {
            method: x.method,
            status: self.status,
            address: x.address.clone(),
            https: x.https,
            version: x.version,
        };
        metrics::record_http(key, seconds, self.sent, self.cached, example);
        let Some((started, kept)) = kept else {
            return;
        };
        // Room for every attribute a span may get (one allocation).
        let mut attributes = Vec::with_capacity(12);
        attributes.extend([
            KeyValue::new("http.request.method", x.method),
            KeyValue::new("http.response.status_code", i64::from(self.status)),
            KeyValue::new("url.scheme", if x.https { "https" } else { "http" }),
            KeyValue::new("url.path", x.uri.path().to_owned()),
            match x.address {
                // The interned host, shared rather than copied.
                Some(address) => KeyValue::new("server.address", address),
                None => KeyValue::new("server.address", "other"),
            },
            KeyValue::new("network.protocol.version", x.version),
            KeyValue::new(
                "http.response.body.size",
                i64::try_from(self.sent).unwrap_or(i64::MAX),
            ),
        ]);
        if let Some(hit) = self.cached {
            attributes.push(KeyValue::new("cdn.cache.hit", hit));
        }
        if !self.complete {
            // The client went away (or the stream was reset) before the
            // last byte.
            attributes.push(KeyValue::new("makiatto.response.complete", false));
        }
        let error = error.then(|| {
            attributes.push(KeyValue::new("error.type", self.status.to_string()));
            format!("status {}", self.status)
        });
        SPANS.push(started.finish(x.method, SpanKind::Server, end, attributes, error, kept));
        for child in self.children {
            SPANS.push(child);
        }
    }
}

/// A response body that ends its exchange when it is dropped.
pub struct Measured<B> {
    inner: B,
    done: Option<Ending>,
}

impl<B> Drop for Measured<B> {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            done.finish();
        }
    }
}

impl<B: Body + Unpin> Body for Measured<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Some(done) = &mut this.done {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        done.sent += data.remaining() as u64;
                    }
                    if this.inner.is_end_stream() {
                        done.complete = true;
                    }
                }
                Poll::Ready(None) => done.complete = true,
                _ => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::sampler::Rules;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn an_exchange_is_measured_to_its_last_byte_and_kept_by_the_rules() {
        LIVE.set(true, Rules::new(1.0, std::time::Duration::from_secs(10)));
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let req = Request::get("https://example.test/a?secret=1")
            .header("traceparent", parent)
            .body(())
            .unwrap();
        let x = begin(&req, true, Some("example.test"));
        let (trace, _) = x.ids().unwrap();
        assert_eq!(trace.to_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let served = Served::default();
        served.served_from_memory();
        let before = SPANS.pushed();
        let r = x.respond(
            Response::new(Full::new(bytes::Bytes::from_static(b"hello"))),
            &served,
        );
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hello");
        assert!(SPANS.pushed() > before);
        let spans = SPANS.take(usize::MAX);
        let span = spans
            .iter()
            .find(|s| s.span_context.trace_id().to_string() == "4bf92f3577b34da6a3ce929d0e0e4736")
            .unwrap();
        let attr = |k: &str| {
            span.attributes
                .iter()
                .find(|a| a.key.as_str() == k)
                .map(|a| a.value.to_string())
        };
        assert_eq!(attr("cdn.cache.hit").as_deref(), Some("true"));
        assert_eq!(attr("http.response.body.size").as_deref(), Some("5"));
        assert_eq!(attr("url.path").as_deref(), Some("/a"));
        assert_eq!(attr("server.address").as_deref(), Some("example.test"));
        assert!(
            span.attributes
                .iter()
                .all(|a| !a.value.to_string().contains("secret")),
            "no query string in telemetry"
        );
        assert_eq!(span.parent_span_id.to_string(), "00f067aa0ba902b7");
        assert!(span.parent_span_is_remote);
    }

    #[test]
    fn unknown_methods_make_no_new_series() {
        assert_eq!(method_name(&hyper::Method::GET), "GET");
        let m = hyper::Method::from_bytes(b"BREW").unwrap();
        assert_eq!(method_name(&m), "_OTHER");
    }
}
