//! When sessions run: one per peer at a time, one catch-up at a time.
//!
//! A push (events appended here) or an anti-entropy round asks for a
//! session with a peer; if one is running, it runs once more after it (so
//! what was appended meanwhile goes too), unless it failed: a peer that
//! cannot be reached catches up by itself when it is back. A heartbeat
//! that shows this node behind starts a catch-up, but only one at a time
//! across all peers (a node back from a partition fetches the difference
//! once, not from everyone) and never beside a session with that peer.

use std::collections::BTreeMap;

use makiatto_events::AuthorKey;

/// The sessions this node started that are running.
#[derive(Debug, Clone, Default)]
pub struct Schedule {
    /// Per peer with a session running: whether one more is wanted.
    running: BTreeMap<AuthorKey, bool>,
    catching_up: Option<AuthorKey>,
}

impl Schedule {
    /// A session with `peer` is wanted. Returns whether the caller starts
    /// one now; if not, the one running is followed by another.
    pub fn want(&mut self, peer: AuthorKey) -> bool {
        match self.running.get_mut(&peer) {
            Some(again) => {
                *again = true;
                false
            }
            None => {
                self.running.insert(peer, false);
                true
            }
        }
    }

    /// A catch-up with `peer`: returns whether the caller starts it now
    /// (no other catch-up and no session with `peer` running).
    pub fn catch_up(&mut self, peer: AuthorKey) -> bool {
        if self.catching_up.is_some() || self.running.contains_key(&peer) {
            return false;
        }
        self.catching_up = Some(peer);
        self.running.insert(peer, false);
        true
    }

    /// A session with `peer` ended (`ok`: it succeeded). Returns whether
    /// the caller runs another right away.
    pub fn ended(&mut self, peer: AuthorKey, ok: bool) -> bool {
        if self.catching_up == Some(peer) {
            self.catching_up = None;
        }
        match self.running.get_mut(&peer) {
            Some(again) if ok && *again => {
                *again = false;
                true
            }
            _ => {
                self.running.remove(&peer);
                false
            }
        }
    }

    /// Whether a session with `peer` is running.
    pub fn is_running(&self, peer: &AuthorKey) -> bool {
        self.running.contains_key(peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> AuthorKey {
        makiatto_events::SigningKey::from_bytes(&[seed; 32]).public()
    }

    #[test]
    fn a_push_during_a_session_runs_one_more_after_it() {
        let mut s = Schedule::default();
        assert!(s.want(key(1)));
        assert!(!s.want(key(1)));
        assert!(!s.want(key(1)));
        // Two pushes meanwhile: one more session, not two.
        assert!(s.ended(key(1), true));
        assert!(!s.ended(key(1), true));
        assert!(!s.is_running(&key(1)));
        // Sessions with other peers run beside it.
        assert!(s.want(key(1)));
        assert!(s.want(key(2)));
    }

    #[test]
    fn a_failed_session_drops_what_was_pending() {
        let mut s = Schedule::default();
        assert!(s.want(key(1)));
        assert!(!s.want(key(1)));
        assert!(!s.ended(key(1), false));
        assert!(s.want(key(1)));
    }

    #[test]
    fn catch_ups_run_one_at_a_time_and_never_beside_a_session_with_the_peer() {
        let mut s = Schedule::default();
        assert!(s.want(key(1)));
        assert!(!s.catch_up(key(1)));
        assert!(s.catch_up(key(2)));
        assert!(!s.catch_up(key(3)));
        // A push to the peer being caught up with waits for it.
        assert!(!s.want(key(2)));
        assert!(s.ended(key(2), true));
        assert!(!s.ended(key(2), true));
        assert!(s.catch_up(key(3)));
    }
}
