//! The WebAssembly service's hook: every call of a component (an HTTP
//! handler, or one stage of a transform chain) timed by kind and outcome
//! (`makiatto.wasm.duration`, never sampled), and a `wasm.handler` or
//! `wasm.transform` span, a child of the request's.
//!
//! A call is as frequent as the requests it serves, so its span follows
//! its request's decision: it is parked on the request's [`Served`] and
//! exported only if the request's span is kept (by the ratio, a sampled
//! caller, an error or slowness). A call that failed is an error: its span
//! is kept, and keeps its request's span too.

use std::sync::Mutex;
use std::time::SystemTime;

use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

use super::http::Served;
use super::metrics::{DURATION_BOUNDS, Hist};
use super::sampler::Kept;
use super::span::{LIVE, SPANS, Started, took};

/// `makiatto.wasm.kind` values.
pub const KINDS: [&str; 2] = ["handler", "transform"];

/// `makiatto.wasm.outcome` values.
pub const OUTCOMES: [&str; 8] = [
    "ok",
    "not_deployed",
    "concurrency",
    "busy",
    "unusable",
    "timeout",
    "memory",
    "trap",
];

/// Durations by kind, then outcome, since the start (one lock per call:
/// small beside a component's instantiation).
pub static DURATIONS: Mutex<[[Option<Hist<15>>; 8]; 2]> =
    Mutex::new([const { [const { None }; 8] }; 2]);

/// Which component runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Handler,
    Transform,
}

impl Kind {
    fn index(self) -> usize {
        match self {
            Kind::Handler => 0,
            Kind::Transform => 1,
        }
    }

    fn span_name(self) -> &'static str {
        match self {
            Kind::Handler => "wasm.handler",
            Kind::Transform => "wasm.transform",
        }
    }
}

/// The index of an outcome's name in [`OUTCOMES`] (an unknown one counts
/// as a trap).
fn outcome_index(name: &str) -> usize {
    OUTCOMES
        .iter()
        .position(|o| *o == name)
        .unwrap_or(OUTCOMES.len() - 1)
}

/// A call begun.
pub struct Call {
    kind: Kind,
    at: SystemTime,
    started: Option<Started>,
}

/// Begins timing a call (on the thread that serves its request, so that
/// the span is a child of the request's).
pub fn begin(kind: Kind) -> Call {
    let started = LIVE.traces().then(Started::child_of_current);
    Call {
        kind,
        at: started.map_or_else(SystemTime::now, |s| s.at),
        started,
    }
}

impl Call {
    /// Records the call's end: `component` is its path in the site,
    /// `status` the handler's HTTP status when it answered, `failure` the
    /// outcome's name (one of [`OUTCOMES`]) and the error when it did not.
    /// (The WebAssembly service names its errors: telemetry does not
    /// import it.)
    pub fn end(
        self,
        served: &Served,
        component: &str,
        status: Option<u16>,
        failure: Option<(&'static str, String)>,
    ) {
        let end = SystemTime::now();
        let outcome = failure.as_ref().map_or(0, |(name, _)| outcome_index(name));
        if let Ok(mut d) = DURATIONS.lock() {
            d[self.kind.index()][outcome]
                .get_or_insert_with(Hist::default)
                .record(&DURATION_BOUNDS, took(self.at, end).as_secs_f64());
        }
        let Some(started) = self.started else {
            return;
        };
        let mut attributes = vec![
            KeyValue::new("makiatto.wasm.kind", KINDS[self.kind.index()]),
            KeyValue::new("makiatto.wasm.component", component.to_owned()),
            KeyValue::new("makiatto.wasm.outcome", OUTCOMES[outcome]),
        ];
        if let Some(s) = status {
            attributes.push(KeyValue::new("http.response.status_code", i64::from(s)));
        }
        let failed = failure.map(|(_, message)| {
            attributes.push(KeyValue::new("error.type", OUTCOMES[outcome]));
            message
        });
        let name = self.kind.span_name();
        if failed.is_some() {
            served.keep();
            SPANS.push(started.finish(
                name,
                SpanKind::Internal,
                end,
                attributes,
                failed,
                Kept::Error,
            ));
        } else {
            served.park(started.finish(
                name,
                SpanKind::Internal,
                end,
                attributes,
                None,
                Kept::Parent,
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::sampler::Rules;
    use std::time::Duration;

    #[test]
    fn a_failed_call_is_kept_with_its_request_and_a_good_one_waits_for_it() {
        LIVE.set(true, Rules::new(0.0, Duration::from_secs(10)));
        let served = Served::default();
        let before = SPANS.pushed();
        begin(Kind::Handler).end(&served, "api/hello.wasm", Some(200), None);
        assert_eq!(SPANS.pushed(), before, "a good call waits for its request");
        assert_eq!(served.parked(), 1);
        begin(Kind::Transform).end(
            &served,
            "t.wasm",
            None,
            Some(("timeout", "the component ran out of time".into())),
        );
        assert!(SPANS.pushed() > before, "a failed call is kept at once");
        let d = DURATIONS.lock().unwrap();
        assert!(d[0][0].as_ref().is_some_and(|h| h.count >= 1));
        assert!(d[1][5].as_ref().is_some_and(|h| h.count >= 1));
    }
}
