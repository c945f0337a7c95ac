//! How much of this node one peer holds at a time: the connections it
//! opened (sessions, blob and version fetches, and connections that have
//! not said which yet) and the sessions among them.
//!
//! A member of the mesh is let in by its address, and nothing else stops
//! it from opening connection after connection, each with a `Hello` that
//! claims an empty version vector and so asks for the whole log. A node
//! never needs that many: its [`Schedule`](super::Schedule) runs one
//! session with a peer at a time (a second may overlap while the first
//! closes) and a few fetches at once. Past these bounds a peer's new
//! connection is closed at once and counted, so a member flooding
//! anti-entropy gets at most [`MAX_SESSIONS`] streams of the log, and the
//! node's other peers and its serving are not starved.

use std::collections::HashMap;

use makiatto_events::AuthorKey;

/// Connections one peer may hold open to this node at once.
pub const MAX_CONNECTIONS: u32 = 16;

/// Sessions one peer may run with this node at once.
pub const MAX_SESSIONS: u32 = 4;

/// The connections and sessions each peer holds open here.
#[derive(Debug, Default)]
pub struct Incoming {
    open: HashMap<AuthorKey, Open>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Open {
    connections: u32,
    sessions: u32,
}

impl Incoming {
    /// `peer` opened a connection: whether it is let in (if so, the caller
    /// calls [`Incoming::closed`] when it ends).
    pub fn opened(&mut self, peer: AuthorKey) -> bool {
        let open = self.open.entry(peer).or_default();
        if open.connections >= MAX_CONNECTIONS {
            return false;
        }
        open.connections += 1;
        true
    }

    /// One of `peer`'s connections opens a session: whether it may (if so,
    /// the caller calls [`Incoming::session_ended`] when it ends).
    pub fn session(&mut self, peer: AuthorKey) -> bool {
        let open = self.open.entry(peer).or_default();
        if open.sessions >= MAX_SESSIONS {
            return false;
        }
        open.sessions += 1;
        true
    }

    pub fn session_ended(&mut self, peer: AuthorKey) {
        self.less(peer, |open| open.sessions = open.sessions.saturating_sub(1));
    }

    pub fn closed(&mut self, peer: AuthorKey) {
        self.less(peer, |open| {
            open.connections = open.connections.saturating_sub(1);
        });
    }

    /// Counts one thing of `peer`'s down; a peer holding nothing is
    /// forgotten.
    fn less(&mut self, peer: AuthorKey, f: impl FnOnce(&mut Open)) {
        if let Some(open) = self.open.get_mut(&peer) {
            f(open);
            if open.connections == 0 && open.sessions == 0 {
                self.open.remove(&peer);
            }
        }
    }

    /// Connections open now, of every peer.
    pub fn connections(&self) -> u32 {
        self.open.values().map(|o| o.connections).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_holds_at_most_its_share_and_gets_it_back_as_its_connections_end() {
        let (a, b) = (AuthorKey([1; 32]), AuthorKey([2; 32]));
        let mut incoming = Incoming::default();
        for _ in 0..MAX_CONNECTIONS {
            assert!(incoming.opened(a));
        }
        assert!(!incoming.opened(a), "one connection too many");
        assert!(incoming.opened(b), "another peer is not held back");
        for _ in 0..MAX_SESSIONS {
            assert!(incoming.session(a));
        }
        assert!(!incoming.session(a), "one session too many");
        incoming.session_ended(a);
        assert!(incoming.session(a));
        incoming.closed(a);
        assert!(incoming.opened(a));
        for _ in 0..MAX_CONNECTIONS {
            incoming.closed(a);
        }
        for _ in 0..MAX_SESSIONS {
            incoming.session_ended(a);
        }
        incoming.closed(b);
        assert_eq!(incoming.connections(), 0);
        assert!(incoming.open.is_empty(), "nothing is kept for peers gone");
    }
}
