//! A node's own feed after it starts: may it sign yet?
//!
//! A node signs its own events (ACME challenges, issued certificates) on
//! top of the last event of its feed that it holds. After a restart that
//! is normally the feed's tip, but a node restored from an old backup of
//! `/var/makiatto` holds an old prefix of it: the events it signed since
//! the backup are on its peers. Signing then would reuse their sequence
//! numbers — a fork of its own feed, flagged on every node for good.
//!
//! So after starting, a node signs nothing until it has learnt its feed's
//! tip from a peer: a heartbeat whose version-vector digest equals its own
//! (that peer holds exactly what it holds, its own feed included), or a
//! session with a peer that ran to the end (everything the peer held, its
//! feed included, was sent). A node with no peers (a one-node cluster)
//! signs at once; one whose peers all stay silent (restarted inside a
//! partition) signs after [`LEARN_WITHIN`], so it is not stranded — that
//! is the one case a restored backup can still fork, and the log flags it.

use std::time::Duration;

use super::liveness::Moment;

/// How long a node waits to hear its feed's tip from a peer before it
/// signs anyway.
pub const LEARN_WITHIN: Duration = Duration::from_secs(60);

/// What a node knows of its own feed's tip since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnFeed {
    started: Moment,
    learnt: bool,
}

/// May the node sign now?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignGate {
    /// It holds its feed's tip (a peer said so, or it has no peer).
    Learnt,
    /// Not yet: no peer has answered since it started; it may sign
    /// without their word after `left`.
    Waiting { left: Duration },
    /// No peer answered within [`LEARN_WITHIN`]: it signs on what it
    /// holds.
    Unconfirmed,
}

impl SignGate {
    pub fn may_sign(self) -> bool {
        !matches!(self, SignGate::Waiting { .. })
    }
}

impl OwnFeed {
    /// A node that started at `started` and has heard from no peer.
    pub fn started(started: Moment) -> OwnFeed {
        OwnFeed {
            started,
            learnt: false,
        }
    }

    /// A peer's heartbeat arrived: `equal` when its digest is this node's.
    pub fn heard_digest(&mut self, equal: bool) {
        self.learnt |= equal;
    }

    /// A session with a peer ran to the end: this node now holds what the
    /// peer held when it began.
    pub fn session_completed(&mut self) {
        self.learnt = true;
    }

    pub fn learnt(&self) -> bool {
        self.learnt
    }

    /// Whether the node may sign at `now`, having `peers` peers.
    pub fn gate(&self, peers: usize, now: Moment) -> SignGate {
        if self.learnt || peers == 0 {
            return SignGate::Learnt;
        }
        let waited = now.since(self.started);
        if waited >= LEARN_WITHIN {
            SignGate::Unconfirmed
        } else {
            SignGate::Waiting {
                left: LEARN_WITHIN - waited,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> Moment {
        Moment::after(Duration::from_secs(secs))
    }

    #[test]
    fn a_node_with_peers_waits_for_one_to_confirm_its_feed() {
        let mut feed = OwnFeed::started(at(0));
        assert_eq!(
            feed.gate(2, at(10)),
            SignGate::Waiting {
                left: Duration::from_secs(50)
            }
        );
        assert!(!feed.gate(2, at(10)).may_sign());
        // A peer holding other events says nothing about our feed.
        feed.heard_digest(false);
        assert!(!feed.gate(2, at(11)).may_sign());
        feed.heard_digest(true);
        assert_eq!(feed.gate(2, at(12)), SignGate::Learnt);
    }

    #[test]
    fn a_completed_session_confirms_the_feed() {
        let mut feed = OwnFeed::started(at(0));
        feed.session_completed();
        assert_eq!(feed.gate(1, at(0)), SignGate::Learnt);
    }

    #[test]
    fn a_lone_node_signs_at_once_and_a_partitioned_one_after_the_wait() {
        let feed = OwnFeed::started(at(100));
        assert_eq!(feed.gate(0, at(100)), SignGate::Learnt);
        assert!(!feed.gate(3, at(159)).may_sign());
        assert_eq!(feed.gate(3, at(160)), SignGate::Unconfirmed);
        assert!(feed.gate(3, at(160)).may_sign());
    }
}
