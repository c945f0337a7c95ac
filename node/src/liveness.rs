//! [`Liveness`]: who is up now. The narrow handle through which DNS (geo
//! answers only with live nodes) and ACME (the orderer is the first node
//! alive; certificates wait for the peers to hold the same log; nothing is
//! signed before a peer confirmed this node's own feed, `OwnFeed`) read
//! what gossip hears, without holding the replication service itself.
//!
//! Gossip writes it: the topology it follows and every heartbeat
//! (`makiatto_core::replication::Liveness` decides what a heartbeat means);
//! the time is this handle's monotonic clock, passed to those decisions.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use makiatto_core::replication::{self, Member, Moment, OwnFeed, SignGate, Topology};
use makiatto_events::{AuthorKey, NodeName};
use tokio::sync::watch;

use crate::replica::Replica;

/// Shared by gossip (which writes it) and its readers.
#[derive(Clone)]
pub struct Liveness(Arc<Inner>);

struct Inner {
    origin: Instant,
    topology: watch::Sender<Topology>,
    table: Mutex<replication::Liveness>,
    /// Whether a peer has confirmed this node's own feed since it started.
    own_feed: Mutex<OwnFeed>,
    replica: Arc<Mutex<Replica>>,
}

impl Liveness {
    /// Nobody heard yet; no topology until the peers projection is followed.
    pub fn new(replica: Arc<Mutex<Replica>>) -> Liveness {
        Liveness(Arc::new(Inner {
            origin: Instant::now(),
            topology: watch::Sender::new(Topology::default()),
            table: Mutex::new(replication::Liveness::default()),
            own_feed: Mutex::new(OwnFeed::started(Moment::default())),
            replica,
        }))
    }

    /// This node's name, once it has joined.
    pub fn me(&self) -> Option<NodeName> {
        self.0.topology.borrow().me.as_ref().map(|m| m.name.clone())
    }

    /// The peers heard from within `DEAD_AFTER`.
    pub fn alive_names(&self) -> Vec<NodeName> {
        let peers = self.topology().peers;
        let now = self.now();
        self.with_table(|t| {
            t.live(&peers, now)
                .into_iter()
                .map(|p| p.name.clone())
                .collect()
        })
        .unwrap_or_default()
    }

    /// Do the peers heard alive hold what this node holds (their last
    /// heartbeat carried this node's version-vector digest)?
    pub fn peers_in_sync(&self) -> bool {
        let Some(vv) = self
            .0
            .replica
            .lock()
            .ok()
            .and_then(|r| r.version_vector().ok())
        else {
            return false;
        };
        let peers = self.topology().peers;
        let now = self.now();
        self.with_table(|t| t.in_sync(&peers, &vv.digest(), now))
            .unwrap_or(false)
    }

    /// Whether `key` was heard from within `DEAD_AFTER`.
    pub fn alive(&self, key: &AuthorKey) -> bool {
        let now = self.now();
        self.with_table(|t| t.alive(key, now)).unwrap_or(false)
    }

    /// Now, on the clock the liveness decisions are made with.
    pub fn now(&self) -> Moment {
        Moment::after(self.0.origin.elapsed())
    }

    /// The members of the mesh as gossip follows them.
    /// The peers heard within the liveness window.
    pub fn live_peers(&self) -> Vec<Member> {
        self.topology()
            .peers
            .into_iter()
            .filter(|p| self.alive(&p.key))
            .collect()
    }

    pub fn topology(&self) -> Topology {
        self.0.topology.borrow().clone()
    }

    /// A receiver that sees every change of the topology.
    pub fn watch_topology(&self) -> watch::Receiver<Topology> {
        self.0.topology.subscribe()
    }

    /// Follows a change of the peers projection (gossip).
    pub fn set_topology(&self, t: Topology) {
        self.0.topology.send_if_modified(|old| {
            let changed = *old != t;
            *old = t;
            changed
        });
    }

    /// May this node sign its own events yet (`OwnFeed`): a peer has
    /// confirmed its feed's tip since it started, it has no peer, or none
    /// answered in time.
    pub fn sign_gate(&self) -> SignGate {
        let peers = self.topology().peers.len();
        let now = self.now();
        self.0
            .own_feed
            .lock()
            .map_or(SignGate::Unconfirmed, |f| f.gate(peers, now))
    }

    /// A peer's heartbeat carried this node's digest (`equal`) or another.
    pub fn heard_digest(&self, equal: bool) {
        if let Ok(mut f) = self.0.own_feed.lock() {
            f.heard_digest(equal);
        }
    }

    /// A session with a peer ran to the end.
    pub fn session_completed(&self) {
        if let Ok(mut f) = self.0.own_feed.lock() {
            f.session_completed();
        }
    }

    /// Runs `f` on the table of what was heard (gossip writes through
    /// this); `None` if a thread panicked holding it.
    pub fn with_table<T>(&self, f: impl FnOnce(&mut replication::Liveness) -> T) -> Option<T> {
        self.0.table.lock().ok().map(|mut t| f(&mut t))
    }
}
