//! Trace context: trace and span ids, the W3C `traceparent` header, and
//! the trace a task is working for (so a log record can name it).
//!
//! Ids come from a per-thread generator seeded from the operating system:
//! a request pays a few multiplications for its ids, never a system call.
//! The trace id's last eight bytes are uniformly random, which is what the
//! sampler's ratio reads (W3C Trace Context level 2's "random" flag).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A trace's id: 16 bytes, never all zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// A span's id: 8 bytes, never all zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// The 64 random bits the sampling ratio is compared with.
    pub fn random_bits(&self) -> u64 {
        let mut low = [0u8; 8];
        low.copy_from_slice(&self.0[8..]);
        u64::from_be_bytes(low)
    }

    #[cfg(test)]
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }
}

#[cfg(test)]
impl SpanId {
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }
}

/// The caller's trace, from a valid `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace: TraceId,
    pub span: SpanId,
    /// The caller kept (sampled) the trace: so do we.
    pub sampled: bool,
}

/// Reads a W3C `traceparent` (Trace Context §3.2): `version-traceid-
/// parentid-flags` in lowercase hex. Version `ff`, all-zero ids, uppercase
/// hex and a version-00 header of the wrong length are refused (the
/// request then starts a trace of its own); a later version may carry
/// more after a `-`, which is ignored.
pub fn parse_traceparent(value: &[u8]) -> Option<Parent> {
    if value.len() < 55 {
        return None;
    }
    let version = hex_byte(&value[0..2])?;
    if version == 0xff || (version == 0 && value.len() != 55) {
        return None;
    }
    if value.len() > 55 && value[55] != b'-' {
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let mut trace = [0u8; 16];
    for (i, b) in trace.iter_mut().enumerate() {
        *b = hex_byte(&value[3 + 2 * i..5 + 2 * i])?;
    }
    let mut span = [0u8; 8];
    for (i, b) in span.iter_mut().enumerate() {
        *b = hex_byte(&value[36 + 2 * i..38 + 2 * i])?;
    }
    let flags = hex_byte(&value[53..55])?;
    if trace == [0; 16] || span == [0; 8] {
        return None;
    }
    Some(Parent {
        trace: TraceId(trace),
        span: SpanId(span),
        sampled: flags & 1 == 1,
    })
}

/// Two lowercase hex digits.
fn hex_byte(two: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(digit(two[0])? << 4 | digit(two[1])?)
}

thread_local! {
    /// wyrand's state: seeded once per thread from the operating system.
    static RNG: Cell<u64> = Cell::new(rand::random::<u64>() | 1);
    /// The trace and span this thread works for now (set while a traced
    /// task is polled, or a DNS query is answered).
    static CURRENT: Cell<Option<(TraceId, SpanId)>> = const { Cell::new(None) };
}

/// 64 random bits (wyrand: fast, and good enough for ids that must only
/// be unique and uniform, never secret).
pub(crate) fn next_u64() -> u64 {
    RNG.with(|s| {
        let x = s.get().wrapping_add(0xa076_1d64_78bd_642f);
        s.set(x);
        let t = u128::from(x) * u128::from(x ^ 0xe703_7ed1_a0b4_28db);
        (t >> 64) as u64 ^ t as u64
    })
}

/// A new trace id.
pub fn new_trace_id() -> TraceId {
    loop {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&next_u64().to_be_bytes());
        b[8..].copy_from_slice(&next_u64().to_be_bytes());
        if b != [0; 16] {
            return TraceId(b);
        }
    }
}

/// A new span id.
pub fn new_span_id() -> SpanId {
    loop {
        let b = next_u64().to_be_bytes();
        if b != [0; 8] {
            return SpanId(b);
        }
    }
}

/// The trace and span this thread works for now, if any.
pub fn current() -> Option<(TraceId, SpanId)> {
    CURRENT.with(Cell::get)
}

/// Runs `f` as part of a span: log records made meanwhile name it.
pub fn with_current<R>(ids: (TraceId, SpanId), f: impl FnOnce() -> R) -> R {
    let before = CURRENT.with(|c| c.replace(Some(ids)));
    let r = f();
    CURRENT.with(|c| c.set(before));
    r
}

/// A future polled as part of a span: whichever thread polls it, log
/// records made while it runs name that span (a serving thread interleaves
/// many requests, so the span is set for each poll, not once).
pub struct InSpan<F> {
    ids: (TraceId, SpanId),
    inner: F,
}

impl<F> InSpan<F> {
    pub fn new(ids: (TraceId, SpanId), inner: F) -> InSpan<F> {
        InSpan { ids, inner }
    }
}

impl<F: Future> Future for InSpan<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `inner` is structurally pinned: it is never moved out of
        // `self`, and `InSpan` has no Drop of its own.
        let this = unsafe { self.get_unchecked_mut() };
        let ids = this.ids;
        let inner = unsafe { Pin::new_unchecked(&mut this.inner) };
        with_current(ids, || inner.poll(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_read_and_written_back_alike() {
        let p = parse_traceparent(GOOD.as_bytes()).unwrap();
        assert!(p.sampled);
        assert_eq!(p.trace.to_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(p.span.to_hex(), "00f067aa0ba902b7");
        assert_eq!(
            format!("00-{}-{}-01", p.trace.to_hex(), p.span.to_hex()),
            GOOD
        );
        let unsampled = GOOD.replace("-01", "-00");
        assert!(!parse_traceparent(unsampled.as_bytes()).unwrap().sampled);
        // A later version may say more after a dash.
        let future = GOOD.replacen("00-", "cc-", 1) + "-what-comes-next";
        assert!(parse_traceparent(future.as_bytes()).is_some());
    }

    #[test]
    fn a_malformed_traceparent_is_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert_eq!(parse_traceparent(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn ids_are_never_zero_and_differ() {
        let a = new_trace_id();
        let b = new_trace_id();
        assert_ne!(a, b);
        assert_ne!(a.0, [0; 16]);
        assert_ne!(new_span_id().0, [0; 8]);
    }

    #[test]
    fn the_current_span_is_set_only_while_polled() {
        let ids = (new_trace_id(), new_span_id());
        assert_eq!(current(), None);
        let seen = futures_util::FutureExt::now_or_never(InSpan::new(ids, async { current() }));
        assert_eq!(seen, Some(Some(ids)));
        assert_eq!(current(), None);
    }
}
