//! Clock skew at admission: how far ahead of this node's clock an event
//! may be stamped, and the events held until the clock reaches them.
//!
//! Every event's hybrid logical clock must exceed its parents', so one
//! event stamped a year ahead (an operator's clock gone wrong, or a stolen
//! key) would drag every later event, on every node, into that year, and
//! "as of a time" would stop meaning anything. So an event stamped more
//! than the cluster's bound (`log.max_clock_skew`, 60 s by default) ahead
//! of the receiving node's clock is not stored yet:
//!
//! - from a peer (replication), it is **held** in memory until the node's
//!   clock reaches its stamp less the bound, then admitted like any other
//!   event, so every node ends with the same set (a node that restarts
//!   meanwhile forgets it and anti-entropy sends it again);
//! - from `maki` (its first hand-over of a new event), it is **refused**
//!   outright, with the reason, so the operator fixes the clock before
//!   anything is stored anywhere.
//!
//! Both are counted. An event that follows a held one in its author's
//! feed waits for it in the log's gap buffer; one that names it as a
//! parent is stamped later still, so it is held too.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use makiatto_events::{Event, EventId, Hlc};

/// The default bound: an event may be stamped up to this far ahead of the
/// receiving node's clock.
pub const DEFAULT_MAX_AHEAD_MILLIS: u64 = 60_000;

/// How many events may be held at once. Past it, more future events are
/// refused (counted); anti-entropy sends them again later.
pub const MAX_HELD: usize = 10_000;

/// A wall clock in Unix milliseconds, passed in (a node reads the system
/// clock; tests and the simulation pass their own).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The bound an event's stamp is judged against.
#[derive(Clone)]
pub struct SkewBound {
    pub clock: Clock,
    /// How far ahead of `clock` an event may be stamped.
    pub max_ahead_millis: u64,
}

impl std::fmt::Debug for SkewBound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SkewBound")
            .field("max_ahead_millis", &self.max_ahead_millis)
            .finish_non_exhaustive()
    }
}

/// Whether a stamp is within the bound at `now_millis`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeliness {
    OnTime,
    /// Stamped `ahead_millis` past `now_millis`; admissible once the clock
    /// reads `due_millis`.
    Ahead {
        ahead_millis: u64,
        due_millis: u64,
    },
}

/// Judges a stamp against a clock reading and a bound.
pub fn judge(hlc: Hlc, now_millis: u64, max_ahead_millis: u64) -> Timeliness {
    if hlc.millis <= now_millis.saturating_add(max_ahead_millis) {
        Timeliness::OnTime
    } else {
        Timeliness::Ahead {
            ahead_millis: hlc.millis - now_millis,
            due_millis: hlc.millis - max_ahead_millis,
        }
    }
}

/// Events held until the clock reaches them, by when they come due.
#[derive(Debug, Default)]
pub struct Held {
    by_due: BTreeMap<(u64, EventId), Event>,
    ids: HashSet<EventId>,
}

impl Held {
    /// Holds `event` until `due_millis`; false when it cannot (full).
    pub fn put(&mut self, due_millis: u64, event: Event) -> bool {
        if self.ids.contains(&event.id()) {
            return true;
        }
        if self.ids.len() >= MAX_HELD {
            return false;
        }
        self.ids.insert(event.id());
        self.by_due.insert((due_millis, event.id()), event);
        true
    }

    /// Takes every event due at `now_millis`, earliest first.
    pub fn take_due(&mut self, now_millis: u64) -> Vec<Event> {
        let later = self
            .by_due
            .split_off(&(now_millis.saturating_add(1), EventId([0; 32])));
        let due = std::mem::replace(&mut self.by_due, later);
        due.into_values()
            .inspect(|e| {
                self.ids.remove(&e.id());
            })
            .collect()
    }

    pub fn contains(&self, id: &EventId) -> bool {
        self.ids.contains(id)
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// When the earliest held event comes due.
    pub fn next_due(&self) -> Option<u64> {
        self.by_due.keys().next().map(|(due, _)| *due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use makiatto_events::payload::{Genesis, Ipv4Net};
    use makiatto_events::{FeedWriter, Payload, SigningKey};

    fn stamped(millis: u64, seed: u8) -> Event {
        let mut w = FeedWriter::new(SigningKey::from_bytes(&[seed; 32]));
        let operator = w.author();
        w.write(
            Payload::Genesis(Genesis {
                cluster_name: format!("c{seed}"),
                operator_name: "alice".into(),
                operator,
                mesh_range: Ipv4Net::new(std::net::Ipv4Addr::new(198, 51, 100, 0), 24).unwrap(),
            }),
            &[],
            millis,
        )
        .unwrap()
    }

    #[test]
    fn a_stamp_up_to_the_bound_ahead_is_on_time_and_past_it_comes_due_later() {
        let at = |millis| Hlc { millis, counter: 0 };
        assert_eq!(judge(at(1_000), 1_000, 60_000), Timeliness::OnTime);
        assert_eq!(judge(at(61_000), 1_000, 60_000), Timeliness::OnTime);
        assert_eq!(judge(at(0), 1_000, 60_000), Timeliness::OnTime);
        assert_eq!(
            judge(at(61_001), 1_000, 60_000),
            Timeliness::Ahead {
                ahead_millis: 60_001,
                due_millis: 1_001
            }
        );
    }

    #[test]
    fn held_events_come_out_when_due_earliest_first_and_the_hold_is_bounded() {
        let mut held = Held::default();
        let (a, b) = (stamped(5_000, 1), stamped(9_000, 2));
        assert!(held.put(9, b.clone()));
        assert!(held.put(5, a.clone()));
        assert!(held.put(5, a.clone()), "holding it twice is holding it");
        assert_eq!(held.len(), 2);
        assert_eq!(held.next_due(), Some(5));
        assert!(held.take_due(4).is_empty());
        assert_eq!(held.take_due(8), vec![a]);
        assert_eq!(held.take_due(100), vec![b]);
        assert!(held.is_empty());
        for seed in 0..MAX_HELD {
            let e = stamped(seed as u64 + 1, (seed % 250) as u8);
            // Distinct events: the seeds repeat, the stamps do not.
            held.put(1, e);
        }
        assert_eq!(held.len(), MAX_HELD);
        assert!(!held.put(1, stamped(1, 251)));
    }
}
