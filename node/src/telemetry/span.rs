//! Spans, recorded cheaply and kept or dropped when they end.
//!
//! A request takes its ids and one timestamp when it starts, and nothing
//! else until it ends; then the sampler decides, and only a kept span is
//! built (attributes, an `opentelemetry_sdk` `SpanData` with explicit
//! start and end times) and queued for the exporter. The queue is bounded
//! ([`super::queue`]): a collector that is away costs dropped spans,
//! counted, never a slower response.
//!
//! Operations that are rare and matter each time (ACME orders, site
//! version fetches and switches, uploads from `maki sync`) are always
//! kept while tracing is on.

use std::borrow::Cow;
use std::future::Future;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId as OtelSpanId, SpanKind, Status, TraceFlags, TraceId as OtelTraceId,
    TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use super::context::{self, InSpan, Parent, SpanId, TraceId};
use super::queue::Bounded;
use super::sampler::{Kept, Rules};

/// Spans waiting for the exporter, at most this many (about 1 KiB each).
pub const SPAN_QUEUE: usize = 4096;

/// Spans per export call (OpenTelemetry's batch processor's default).
pub const SPAN_BATCH: usize = 512;

pub static SPANS: Bounded<SpanData> = Bounded::new(SPAN_QUEUE, SPAN_BATCH);

/// The settings the recording paths read, changed live by the exporter
/// when the configuration changes.
pub struct Live {
    traces: AtomicBool,
    threshold: AtomicU64,
    /// The DNS queries' own ratio, as a threshold (`dns_sampling_ratio`).
    dns_threshold: AtomicU64,
    slow_ms: AtomicU64,
}

pub static LIVE: Live = Live {
    traces: AtomicBool::new(false),
    threshold: AtomicU64::new(0),
    dns_threshold: AtomicU64::new(0),
    slow_ms: AtomicU64::new(1000),
};

impl Live {
    /// `rules` for every span; DNS queries' ratio stays as it was (see
    /// [`Live::set_dns`]).
    pub fn set(&self, traces: bool, rules: Rules) {
        self.threshold.store(rules.threshold(), Ordering::Relaxed);
        self.slow_ms.store(
            u64::try_from(rules.slow.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.traces.store(traces, Ordering::Relaxed);
    }

    /// Spans are recorded (an endpoint is known and tracing is enabled).
    pub fn traces(&self) -> bool {
        self.traces.load(Ordering::Relaxed)
    }

    pub fn rules(&self) -> Rules {
        Rules::from_threshold(
            self.threshold.load(Ordering::Relaxed),
            Duration::from_millis(self.slow_ms.load(Ordering::Relaxed)),
        )
    }

    /// The ratio of DNS queries traced: `rules`' threshold, as
    /// [`Rules::new`] makes it (its slow threshold is [`Live::set`]'s).
    pub fn set_dns(&self, rules: Rules) {
        self.dns_threshold
            .store(rules.threshold(), Ordering::Relaxed);
    }

    /// The rules of DNS queries: their own ratio, the same slow threshold.
    pub fn dns_rules(&self) -> Rules {
        Rules::from_threshold(
            self.dns_threshold.load(Ordering::Relaxed),
            Duration::from_millis(self.slow_ms.load(Ordering::Relaxed)),
        )
    }
}

/// Who made the spans.
pub static SCOPE: LazyLock<InstrumentationScope> = LazyLock::new(|| {
    InstrumentationScope::builder("makiatto")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
});

/// A span begun: its ids, its caller's, and when.
#[derive(Debug, Clone, Copy)]
pub struct Started {
    pub trace: TraceId,
    pub span: SpanId,
    pub parent: Option<Parent>,
    /// The parent is another process's (a `traceparent`).
    pub remote: bool,
    pub at: SystemTime,
}

impl Started {
    /// A span of a new trace, or continuing the caller's.
    pub fn new(parent: Option<Parent>) -> Started {
        Started {
            trace: parent.map_or_else(context::new_trace_id, |p| p.trace),
            span: context::new_span_id(),
            parent,
            remote: parent.is_some(),
            at: SystemTime::now(),
        }
    }

    /// A span inside the one this thread works for now (or a new trace).
    pub fn child_of_current() -> Started {
        let parent = context::current().map(|(trace, span)| Parent {
            trace,
            span,
            sampled: true,
        });
        let mut s = Started::new(parent);
        // A child made here is not a remote parent's.
        s.remote = false;
        s
    }

    pub fn ids(&self) -> (TraceId, SpanId) {
        (self.trace, self.span)
    }

    pub fn parent_sampled(&self) -> bool {
        self.parent.is_some_and(|p| p.sampled)
    }

    /// Builds the span as it ended.
    pub fn finish(
        &self,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        end: SystemTime,
        mut attributes: Vec<KeyValue>,
        error: Option<String>,
        kept: Kept,
    ) -> SpanData {
        attributes.push(KeyValue::new("sampling.reason", kept.as_str()));
        SpanData {
            span_context: SpanContext::new(
                OtelTraceId::from_bytes(self.trace.0),
                OtelSpanId::from_bytes(self.span.0),
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
            parent_span_id: self
                .parent
                .map_or(OtelSpanId::INVALID, |p| OtelSpanId::from_bytes(p.span.0)),
            parent_span_is_remote: self.remote,
            span_kind: kind,
            name: name.into(),
            start_time: self.at,
            end_time: end,
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: match error {
                Some(description) => Status::Error {
                    description: description.into(),
                },
                None => Status::Unset,
            },
            instrumentation_scope: SCOPE.clone(),
        }
    }
}

/// How long since `start`, as the wall clock says (0 if it stepped back).
pub fn took(start: SystemTime, end: SystemTime) -> Duration {
    end.duration_since(start).unwrap_or_default()
}

/// An operation traced whole, always kept while tracing is on: its
/// attributes, then [`Operation::run`] with the work.
pub struct Operation {
    name: &'static str,
    attributes: Vec<KeyValue>,
}

impl Operation {
    pub fn new(name: &'static str) -> Operation {
        Operation {
            name,
            attributes: Vec::new(),
        }
    }

    pub fn attr(mut self, key: &'static str, value: impl Into<opentelemetry::Value>) -> Operation {
        self.attributes.push(KeyValue::new(key, value));
        self
    }

    /// Runs `work` as this span (log records made meanwhile name it); the
    /// span ends with it, an error when it returns one.
    pub async fn run<T, E: std::fmt::Display>(
        self,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        if !LIVE.traces() {
            return work.await;
        }
        let started = Started::child_of_current();
        let result = InSpan::new(started.ids(), work).await;
        let error = result.as_ref().err().map(|e| format!("{e:#}"));
        let kept = if error.is_some() {
            Kept::Error
        } else {
            Kept::Parent
        };
        let mut attributes = self.attributes;
        if let Some(e) = &error {
            attributes.push(KeyValue::new("error.type", "failed"));
            attributes.push(KeyValue::new("error.message", e.clone()));
        }
        SPANS.push(started.finish(
            self.name,
            SpanKind::Internal,
            SystemTime::now(),
            attributes,
            error,
            kept,
        ));
        result
    }
}
