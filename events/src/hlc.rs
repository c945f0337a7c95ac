//! Hybrid logical clock: wall-clock milliseconds plus a counter, so that
//! timestamps stay close to real time yet always move forward along causality.
//!
//! Pure: the caller passes the physical time in, so tests are deterministic.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A hybrid logical clock timestamp. Orders by `millis`, then `counter`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct Hlc {
    /// Milliseconds since the Unix epoch (UTC).
    pub millis: u64,
    /// Tie-breaker for events within one millisecond.
    pub counter: u32,
}

impl Hlc {
    /// The first timestamp at or after `now_millis` that is strictly later
    /// than every timestamp in `seen` (the author's previous event and the
    /// event's causal parents).
    pub fn next<'a>(now_millis: u64, seen: impl IntoIterator<Item = &'a Hlc>) -> Hlc {
        let latest = seen.into_iter().max().copied();
        match latest {
            Some(l) if l.millis >= now_millis => Hlc {
                millis: l.millis,
                counter: l.counter.saturating_add(1),
            },
            _ => Hlc {
                millis: now_millis,
                counter: 0,
            },
        }
    }

    /// The largest timestamp within the given millisecond, for "as of this
    /// time" queries that include everything stamped in it.
    pub fn end_of_millis(millis: u64) -> Hlc {
        Hlc {
            millis,
            counter: u32::MAX,
        }
    }
}

impl fmt::Debug for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.millis, self.counter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_wall_clock_when_it_is_ahead() {
        let prev = Hlc {
            millis: 10,
            counter: 4,
        };
        assert_eq!(
            Hlc::next(20, [&prev]),
            Hlc {
                millis: 20,
                counter: 0
            }
        );
    }

    #[test]
    fn stays_after_causal_parents_when_the_wall_clock_lags() {
        let a = Hlc {
            millis: 50,
            counter: 1,
        };
        let b = Hlc {
            millis: 50,
            counter: 7,
        };
        let next = Hlc::next(30, [&a, &b]);
        assert!(next > a && next > b);
        assert_eq!(
            next,
            Hlc {
                millis: 50,
                counter: 8
            }
        );
    }
}
