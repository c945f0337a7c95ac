//! What replication did, per peer and in total, and the health table
//! (`Request::Health`, `makiatto health`, `maki health`) built from it and
//! from what heartbeats said, as `makiatto_protocol::health`'s types.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use makiatto_core::replication::{DEAD_AFTER, Member, SignGate};
use makiatto_events::AuthorKey;
use makiatto_protocol::health::{HealthReport, OwnFeedState, PeerHealth, ReplicationTotals};

use super::Gossip;
use super::liveness::read_load;

/// Per peer and in total.
#[derive(Default)]
pub(super) struct Health {
    peers: Mutex<HashMap<AuthorKey, PeerStats>>,
    pub(super) totals: Totals,
}

/// What replication did with one peer.
#[derive(Default)]
struct PeerStats {
    last_sync: Option<Instant>,
    last_error: Option<String>,
    events_in: u64,
    events_out: u64,
    bad_events: u64,
}

/// Totals since the daemon started.
#[derive(Default)]
pub(super) struct Totals {
    pub(super) sessions_ok: AtomicU64,
    pub(super) sessions_failed: AtomicU64,
    pub(super) bytes_in: AtomicU64,
    pub(super) bytes_out: AtomicU64,
    pub(super) events_in: AtomicU64,
    pub(super) events_out: AtomicU64,
    pub(super) bad_events: AtomicU64,
    pub(super) refused_connections: AtomicU64,
    /// Connections of a peer that held as many open here as it may.
    pub(super) refused_busy: AtomicU64,
    /// Site versions fetched as a manifest delta, and as a whole manifest.
    pub(super) versions_by_delta: AtomicU64,
    pub(super) manifests_whole: AtomicU64,
    /// Site versions a peer sent ahead of their events, taken.
    pub(super) versions_ahead: AtomicU64,
    /// Blobs fetched ahead of their version, as a peer announced them.
    pub(super) blobs_ahead: AtomicU64,
}

impl Health {
    fn with_peer(&self, peer: &Member, f: impl FnOnce(&mut PeerStats)) {
        if let Ok(mut peers) = self.peers.lock() {
            f(peers.entry(peer.key).or_default());
        }
    }

    pub(super) fn session_ok(&self, peer: &Member) {
        self.totals.sessions_ok.fetch_add(1, Ordering::Relaxed);
        self.with_peer(peer, |p| {
            p.last_sync = Some(Instant::now());
            p.last_error = None;
        });
    }

    /// Records a failed session; returns whether its error is new for
    /// this peer (worth a log line).
    pub(super) fn session_failed(&self, peer: &Member, message: &str) -> bool {
        self.totals.sessions_failed.fetch_add(1, Ordering::Relaxed);
        let mut new = false;
        self.with_peer(peer, |p| {
            new = p.last_error.as_deref() != Some(message);
            p.last_error = Some(message.to_string());
        });
        new
    }

    /// Events a session sent a peer.
    pub(super) fn sent(&self, peer: &Member, events: u64) {
        self.totals.events_out.fetch_add(events, Ordering::Relaxed);
        self.with_peer(peer, |p| p.events_out += events);
    }

    /// Events a peer sent that were stored, and those that were refused.
    pub(super) fn received(&self, peer: &Member, stored: u64, bad: u64) {
        self.with_peer(peer, |p| {
            p.events_in += stored;
            p.bad_events += bad;
        });
        self.totals.bad_events.fetch_add(bad, Ordering::Relaxed);
    }

    /// A peer's blob (or version) that failed verification: counted with
    /// its bad events.
    pub(super) fn bad_blob(&self, peer: &Member) {
        self.with_peer(peer, |p| p.bad_events += 1);
    }

    fn totals(&self) -> ReplicationTotals {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let t = &self.totals;
        ReplicationTotals {
            sessions_ok: n(&t.sessions_ok),
            sessions_failed: n(&t.sessions_failed),
            bytes_in: n(&t.bytes_in),
            bytes_out: n(&t.bytes_out),
            events_in: n(&t.events_in),
            events_out: n(&t.events_out),
            bad_events: n(&t.bad_events),
            refused_connections: n(&t.refused_connections),
            refused_busy: n(&t.refused_busy),
            versions_by_delta: n(&t.versions_by_delta),
            versions_ahead: n(&t.versions_ahead),
            blobs_ahead: n(&t.blobs_ahead),
            manifests_whole: n(&t.manifests_whole),
        }
    }
}

impl Gossip {
    /// The health table: this node, every peer's liveness, load, handshake
    /// age and replication state, and the totals. The parts of other
    /// subsystems (sites, DNS, HTTP, ACME) are left for the daemon to fill.
    pub fn report(&self) -> HealthReport {
        let t = self.liveness.topology();
        let links = match self.mesh.lock() {
            Ok(mut slot) => slot
                .as_mut()
                .and_then(|(mesh, _)| mesh.links().ok())
                .unwrap_or_default(),
            Err(_) => HashMap::new(),
        };
        let vv = self.read(|r| r.version_vector()).unwrap_or_default();
        let now = self.liveness.now();
        let heard: Vec<_> = self
            .liveness
            .with_table(|table| {
                t.peers
                    .iter()
                    .map(|p| table.last(&p.key).cloned())
                    .collect()
            })
            .unwrap_or_else(|| vec![None; t.peers.len()]);
        let stats = self.health.peers.lock();
        let mut peers = Vec::new();
        for (p, heard) in t.peers.iter().zip(heard) {
            let h = stats.as_ref().ok().and_then(|s| s.get(&p.key));
            let heard_ms = heard
                .as_ref()
                .and_then(|l| l.at)
                .map(|at| now.since(at).as_millis() as u64);
            let clock_offset_ms = heard.as_ref().and_then(|l| l.clock_offset_millis);
            let beat = heard.and_then(|l| l.heartbeat);
            let link = links.get(p.wg.as_bytes());
            peers.push(PeerHealth {
                name: p.name.to_string(),
                mesh_addr: p.mesh.to_string(),
                alive: heard_ms.is_some_and(|ms| ms < DEAD_AFTER.as_millis() as u64),
                last_heard_ms: heard_ms,
                events: beat.as_ref().map(|b| b.events),
                in_sync: beat.as_ref().map(|b| b.vv_digest == vv.digest()),
                load: beat.map(|b| b.load),
                handshake_age_secs: link.and_then(|l| l.handshake_age_secs),
                wg_rx_bytes: link.map(|l| l.rx_bytes),
                wg_tx_bytes: link.map(|l| l.tx_bytes),
                last_sync_ms: h
                    .and_then(|h| h.last_sync)
                    .map(|i| i.elapsed().as_millis() as u64),
                last_error: h.and_then(|h| h.last_error.clone()),
                events_received: h.map_or(0, |h| h.events_in),
                events_sent: h.map_or(0, |h| h.events_out),
                bad_events: h.map_or(0, |h| h.bad_events),
                clock_offset_ms,
            });
        }
        let clock_ahead_of_peers_ms = self
            .liveness
            .with_table(|table| table.clock_ahead_of_peers(&t.peers, now))
            .flatten();
        let held_ahead_of_clock = self.read(|r| Ok(r.held_ahead_of_clock())).unwrap_or(0);
        HealthReport {
            node: t.me.as_ref().map(|m| m.name.to_string()),
            mesh_addr: t.me.as_ref().map(|m| m.mesh.to_string()),
            events: vv.total(),
            vv_digest: hex::encode(vv.digest()),
            load: read_load(self.started),
            peers,
            replication: self.health.totals(),
            clock_ahead_of_peers_ms,
            held_ahead_of_clock,
            own_feed: Some(match self.liveness.sign_gate() {
                SignGate::Learnt => OwnFeedState::Learnt,
                SignGate::Waiting { left } => OwnFeedState::Waiting {
                    left_secs: left.as_secs(),
                },
                SignGate::Unconfirmed => OwnFeedState::Unconfirmed,
            }),
            ..HealthReport::default()
        }
    }
}
