//! [`Changes`]: the log changed. The narrow handle through which the
//! subsystems that follow the log (DNS, HTTP, ACME, the content follower)
//! hear of new events, and through which events appended on this node
//! reach the peers — without holding the replication service itself.

use std::sync::Arc;

use tokio::sync::{Notify, watch};

/// Shared by whoever stores events (the control socket, gossip, ACME) and
/// whoever follows them.
#[derive(Clone)]
pub struct Changes(Arc<Inner>);

struct Inner {
    /// Counts the times events were stored (DNS, HTTP and ACME follow it).
    count: watch::Sender<u64>,
    /// Wakes the content follower: events were stored, or a peer that may
    /// hold blobs it waits for is back up.
    follower: Notify,
    /// Events were appended here: gossip hands them to the live peers.
    push: Notify,
    /// Counts the times a peer came (back) up: ACME retries at once an
    /// order that could not reach the CA (the network is likely back).
    peers_up: watch::Sender<u64>,
}

impl Default for Changes {
    fn default() -> Self {
        Changes(Arc::new(Inner {
            count: watch::Sender::new(0),
            follower: Notify::new(),
            push: Notify::new(),
            peers_up: watch::Sender::new(0),
        }))
    }
}

impl Changes {
    /// Events were stored here (from any source): wake every follower.
    pub fn stored(&self) {
        self.0.follower.notify_one();
        self.0.count.send_modify(|n| *n += 1);
    }

    /// Events were appended on this node (from `maki` or by the node
    /// itself): they are stored, and go to the peers now. Events received
    /// from a peer are only [`Changes::stored`]: each crosses the wire once
    /// per node.
    pub fn appended(&self) {
        self.0.push.notify_one();
        self.stored();
    }

    /// A peer is back up: the content follower tries again (it may hold
    /// blobs the follower waits for).
    pub fn peer_up(&self) {
        self.0.follower.notify_one();
        self.0.peers_up.send_modify(|n| *n += 1);
    }

    /// A receiver that sees every time a peer comes (back) up.
    pub fn watch_peers_up(&self) -> watch::Receiver<u64> {
        self.0.peers_up.subscribe()
    }

    /// A receiver that sees every time events are stored.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.0.count.subscribe()
    }

    /// Returns at the next wake-up of the content follower (one that came
    /// while nobody waited counts).
    pub async fn follower_woken(&self) {
        self.0.follower.notified().await;
    }

    /// Returns once events were appended here (one append that came while
    /// nobody waited counts).
    pub async fn push_wanted(&self) {
        self.0.push.notified().await;
    }
}
