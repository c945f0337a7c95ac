//! The image service's hook: every rendition request timed by outcome
//! (`makiatto.image.duration`, never sampled), whether its bytes came from
//! the rendition cache (`cdn.cache.hit`), and an `image.render` span, a
//! child of the request's, for each one not answered from the cache.
//!
//! A rendition made (or waited for, or refused) is rare and costly, so its
//! span is always kept while tracing is on, and it keeps its request's
//! span too ([`Served::keep`]): a trace never lacks the request it was
//! made for.

use std::sync::Mutex;
use std::time::SystemTime;

use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

use super::http::Served;
use super::metrics::{DURATION_BOUNDS, Hist};
use super::sampler::Kept;
use super::span::{LIVE, SPANS, Started, took};
use crate::images::Outcome;

/// `makiatto.image.outcome` values.
pub const OUTCOMES: [&str; 7] = [
    "cache",
    "made",
    "unchanged",
    "too_large",
    "busy",
    "timed_out",
    "limited",
];

/// Durations by outcome, since the start (image requests are few: one
/// lock is cheap enough).
pub static DURATIONS: Mutex<[Option<Hist<15>>; 7]> = Mutex::new([const { None }; 7]);

/// A rendition asked for.
pub struct Render {
    at: SystemTime,
    started: Option<Started>,
}

/// Begins timing a request to the image service.
pub fn begin() -> Render {
    let started = LIVE.traces().then(Started::child_of_current);
    Render {
        at: started.map_or_else(SystemTime::now, |s| s.at),
        started,
    }
}

fn outcome_index(outcome: &Outcome, cached: bool) -> usize {
    match (outcome, cached) {
        (_, true) => 0,
        (Outcome::Made(_), false) => 1,
        (Outcome::Unchanged, false) => 2,
        (Outcome::TooLarge(_), false) => 3,
        (Outcome::Busy, false) => 4,
        (Outcome::TimedOut, false) => 5,
        (Outcome::Limited(_), false) => 6,
    }
}

impl Render {
    /// Records the answer; `cached`: it came from the rendition cache.
    /// `spec` names the rendition (its `Display` form).
    pub fn end(
        self,
        served: &Served,
        spec: &dyn std::fmt::Display,
        outcome: &Outcome,
        cached: bool,
    ) {
        let end = SystemTime::now();
        let index = outcome_index(outcome, cached);
        if let Outcome::Made(_) = outcome {
            if cached {
                served.served_from_memory();
            } else {
                served.served_from_disk();
            }
        }
        let seconds = took(self.at, end).as_secs_f64();
        if let Ok(mut d) = DURATIONS.lock() {
            d[index]
                .get_or_insert_with(Hist::default)
                .record(&DURATION_BOUNDS, seconds);
        }
        let Some(started) = self.started else {
            return;
        };
        if cached {
            return;
        }
        served.keep();
        let mut attributes = vec![
            KeyValue::new("makiatto.image.spec", spec.to_string()),
            KeyValue::new("makiatto.image.outcome", OUTCOMES[index]),
        ];
        let error = match outcome {
            Outcome::Busy | Outcome::TimedOut => {
                attributes.push(KeyValue::new("error.type", OUTCOMES[index]));
                Some(OUTCOMES[index].to_owned())
            }
            _ => None,
        };
        SPANS.push(started.finish(
            "image.render",
            SpanKind::Internal,
            end,
            attributes,
            error,
            Kept::Parent,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_rendition_is_a_cache_hit_and_a_made_one_is_not() {
        let r = std::sync::Arc::new(crate::images::cache::Rendition {
            bytes: bytes::Bytes::from_static(b"x"),
            format: crate::images::params::Format::Png,
            etag: bytes::Bytes::from_static(b"\"i1\""),
        });
        let hit = Served::default();
        begin().end(&hit, &"w=1", &Outcome::Made(r.clone()), true);
        assert_eq!(hit.cache_hit(), Some(true));
        let made = Served::default();
        begin().end(&made, &"w=1", &Outcome::Made(r), false);
        assert_eq!(made.cache_hit(), Some(false));
        let d = DURATIONS.lock().unwrap();
        assert!(d[0].as_ref().is_some_and(|h| h.count >= 1));
        assert!(d[1].as_ref().is_some_and(|h| h.count >= 1));
    }
}
