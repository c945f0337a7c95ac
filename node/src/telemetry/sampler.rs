//! The tail decision: whether a finished request's trace is exported.
//!
//! A head sampler decides when a request starts, so it has already thrown
//! away the request that ends in a 500. Here every request is recorded
//! (cheaply: a few timestamps and ids) and the decision is made when the
//! response ends, when its status and duration are known:
//!
//! 1. an error (HTTP 5xx, DNS SERVFAIL, a failed operation) is kept;
//! 2. a request slower than `slow_threshold_ms` is kept;
//! 3. a trace the caller sampled (`traceparent` flag 01) is kept;
//! 4. otherwise `sampling_ratio` of traces are kept, chosen by the trace
//!    id's random bits, so every node keeps or drops a trace alike.

use std::time::Duration;

use super::context::TraceId;

/// Why a trace was kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    Error,
    Slow,
    Parent,
    Ratio,
    /// A span inside it was kept (an image made for the request).
    Child,
}

impl Kept {
    /// The value of the span attribute `sampling.reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kept::Error => "error",
            Kept::Slow => "slow",
            Kept::Parent => "parent",
            Kept::Ratio => "ratio",
            Kept::Child => "child",
        }
    }
}

/// The sampling rules in force.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    /// Traces whose random bits are below this are kept (`ratio` × 2^64;
    /// `u64::MAX` keeps all).
    threshold: u64,
    pub slow: Duration,
}

impl Rules {
    /// `ratio` is clamped to 0–1.
    pub fn new(ratio: f64, slow: Duration) -> Rules {
        let ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        let threshold = if ratio >= 1.0 {
            u64::MAX
        } else {
            (ratio * 18_446_744_073_709_551_616.0) as u64
        };
        Rules { threshold, slow }
    }

    pub fn threshold(&self) -> u64 {
        self.threshold
    }

    pub fn from_threshold(threshold: u64, slow: Duration) -> Rules {
        Rules { threshold, slow }
    }

    /// Whether the ratio keeps a trace with these random bits.
    pub fn keeps(&self, bits: u64) -> bool {
        self.threshold == u64::MAX || bits < self.threshold
    }

    /// The decision for a finished request.
    pub fn decide(
        &self,
        trace: TraceId,
        error: bool,
        took: Duration,
        parent_sampled: bool,
    ) -> Option<Kept> {
        if error {
            Some(Kept::Error)
        } else if took >= self.slow {
            Some(Kept::Slow)
        } else if parent_sampled {
            Some(Kept::Parent)
        } else if self.keeps(trace.random_bits()) {
            Some(Kept::Ratio)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::context::new_trace_id;

    const FAST: Duration = Duration::from_millis(1);
    const SLOW: Duration = Duration::from_secs(1);

    #[test]
    fn errors_slow_requests_and_sampled_parents_are_always_kept() {
        let none = Rules::new(0.0, SLOW);
        let t = new_trace_id();
        assert_eq!(none.decide(t, true, FAST, false), Some(Kept::Error));
        assert_eq!(none.decide(t, false, SLOW, false), Some(Kept::Slow));
        assert_eq!(none.decide(t, false, FAST, true), Some(Kept::Parent));
        assert_eq!(none.decide(t, false, FAST, false), None);
        assert_eq!(
            Rules::new(1.0, SLOW).decide(t, false, FAST, false),
            Some(Kept::Ratio)
        );
    }

    #[test]
    fn the_ratio_keeps_its_share_of_random_traces() {
        for ratio in [0.01, 0.1, 0.5] {
            let rules = Rules::new(ratio, SLOW);
            let n = 100_000;
            let kept = (0..n)
                .filter(|_| rules.decide(new_trace_id(), false, FAST, false).is_some())
                .count() as f64;
            // Binomial: five standard deviations either side.
            let sd = (n as f64 * ratio * (1.0 - ratio)).sqrt();
            assert!(
                (kept - n as f64 * ratio).abs() < 5.0 * sd,
                "{ratio}: kept {kept} of {n}"
            );
        }
    }

    #[test]
    fn one_trace_gets_one_decision_everywhere() {
        let rules = Rules::new(0.3, SLOW);
        let t = new_trace_id();
        let first = rules.decide(t, false, FAST, false);
        for _ in 0..10 {
            assert_eq!(rules.decide(t, false, FAST, false), first);
        }
    }
}
