//! What became of each event handed to a node.

use makiatto_events::{Event, EventId};
use serde::{Deserialize, Serialize};

/// The fate of one appended event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Stored durably.
    Stored,
    /// Held until its feed predecessor arrives.
    Waiting,
    /// Already stored: no fault, nothing to do.
    Duplicate,
    /// Refused; the result's `reason` says why.
    Rejected,
}

/// Why an event was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Refusal {
    /// Forged, malformed, or not canonical.
    Invalid,
    /// It does not follow its author's feed.
    ChainMismatch,
    /// The genesis of another cluster.
    ForeignCluster,
    /// Its predecessor is missing and the wait buffer is full; sent again
    /// later, it is taken.
    WaitBufferFull,
    /// Stamped further ahead of the node's clock than the cluster allows
    /// (`log.max_clock_skew`): a clock is wrong. Sent only to a client
    /// announcing [`Features::CLOCK_BOUND`](crate::version::Features::CLOCK_BOUND).
    AheadOfClock,
}

impl Refusal {
    /// Whether the sender is at fault (a peer sending such events is
    /// counted and logged); a full wait buffer is nobody's fault, and a
    /// clock off is told to the operator, not held against a peer.
    pub fn is_fault(self) -> bool {
        !matches!(self, Refusal::WaitBufferFull | Refusal::AheadOfClock)
    }
}

/// One event's result, in the order the events were given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendResult {
    pub id: Option<EventId>,
    pub outcome: Outcome,
    /// Stored beside another event of the same author and seq.
    #[serde(default)]
    pub fork: bool,
    /// What happened, for people.
    #[serde(default)]
    pub error: Option<String>,
    /// Why it was refused (`rejected` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Refusal>,
}

impl AppendResult {
    /// Whether the event is (now or already) in the log, or will be.
    pub fn is_accepted(&self) -> bool {
        !matches!(self.outcome, Outcome::Rejected)
    }

    /// A result from a protocol-1 daemon, which reports a duplicate as
    /// `rejected` and says so only in its text (and gives no reason).
    /// This is the one place that reads that text; it goes with protocol 1.
    pub fn from_legacy(mut self) -> AppendResult {
        if self.outcome == Outcome::Rejected
            && self
                .error
                .as_deref()
                .is_some_and(|e| e.contains("already stored"))
        {
            self.outcome = Outcome::Duplicate;
        }
        self
    }
}

impl AppendResult {
    /// The form a client without [`Features::TYPED_OUTCOMES`] reads: a
    /// duplicate is `rejected` (its text says "already stored", which such
    /// a client looks for), and no reason is given.
    ///
    /// [`Features::TYPED_OUTCOMES`]: crate::version::Features::TYPED_OUTCOMES
    pub fn to_legacy(mut self) -> AppendResult {
        if self.outcome == Outcome::Duplicate {
            self.outcome = Outcome::Rejected;
            self.id = None;
        }
        if self.outcome == Outcome::Rejected {
            self.id = None;
        }
        self.reason = None;
        self
    }
}

/// The request's events, as canonical bytes in hex (one bad item is
/// refused on its own, not the whole request).
pub fn hex_events(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| hex::encode(e.to_bytes())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_legacy_duplicate_is_recognised_once_here() {
        let legacy = AppendResult {
            id: None,
            outcome: Outcome::Rejected,
            fork: false,
            error: Some("event 00aa is already stored".into()),
            reason: None,
        };
        assert_eq!(legacy.clone().from_legacy().outcome, Outcome::Duplicate);
        let forged = AppendResult {
            error: Some("rejected forged or malformed event: bad signature".into()),
            ..legacy
        };
        assert_eq!(forged.from_legacy().outcome, Outcome::Rejected);
    }
}
