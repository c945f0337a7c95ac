//! Replication and liveness over the mesh (docs/design.md, Replication): the async shell.
//!
//! Everything here runs on the node's mesh address, port [`PORT`], so only
//! members of the WireGuard mesh reach it, and WireGuard's cryptokey routing
//! ties a source address to one peer's key: a connection or datagram from a
//! node's mesh address comes from that node. Anything else is dropped.
//!
//! What to send, when to start a session, who is alive and whom to ask is
//! decided by `makiatto_core::replication` (a sans-I/O state machine the
//! seeded simulation runs too); this module owns the sockets, the tasks,
//! the blob store and the mesh, moves bytes in and out and carries out
//! what the state machine asks for.
//!
//! - **Sessions (TCP)**: both ends send a `Hello` with their version vector,
//!   then stream each other what the other lacks, then `Done`. Every event
//!   received is verified and appended like one from `maki`
//!   (`control::ingest`); a peer that sends forged or broken events is
//!   counted and logged, and its events change nothing.
//! - **Push**: events appended here ([`Changes::appended`]) start a session
//!   with every live peer at once (a peer that received them does not push
//!   again, so each crosses the wire once per node).
//! - **Heartbeats (UDP)**, every 500 ms to every peer: liveness, load and a
//!   digest of the version vector; one that differs starts a catch-up.
//! - **Blobs (TCP)**: `Fetch` and `FetchVersion` connections, for the
//!   content follower ([`PeerBlobs`]), and for blobs announced ahead of
//!   their version while `maki sync` uploads them (`BlobsAhead`).
//! - **Anti-entropy**: every 15 s, a session with one live peer at random.
//! - **Bounds**: a peer holds at most 16 connections and 4 sessions open
//!   on this node at once (`replication::incoming`); past them its new
//!   connection is closed at once and counted (`refused_busy`).
//! - **Held events**: events a peer sent stamped further ahead of this
//!   node's clock than `log.max_clock_skew` wait in the log
//!   (`makiatto_core::skew`); every second, those the clock has reached
//!   are admitted.
//!
//! # Layout
//! - `wire`: frames read and written on the mesh's connections (timeouts,
//!   byte counts, the blocking reader of a fetch's answer).
//! - `session`: sessions this node starts and answers, driving
//!   `replication::session`; what a peer sends is absorbed here.
//! - `liveness`: heartbeats sent and heard.
//! - `anti_entropy`: the periodic session.
//! - `fetch`: blob and version fetches, asked and answered.
//! - `ahead`: site versions sent ahead of their events, offered and taken.
//! - `blobs_ahead`: blobs a sync is uploading, announced to the peers,
//!   which fetch them while the upload goes on.
//! - `health`: per-peer counters, totals, and the health table.

mod ahead;
mod anti_entropy;
mod blobs_ahead;
mod fetch;
mod health;
mod liveness;
mod session;
mod wire;

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use makiatto_core::GroupCommitter;
use makiatto_core::replication::{HEARTBEAT_EVERY, Incoming, Schedule, Topology};
use makiatto_events::AuthorKey;
use tokio::net::{TcpListener, UdpSocket};

use crate::blobs::BlobStore;
use crate::changes::Changes;
use crate::liveness::Liveness;
use crate::replica::Replica;
use crate::topology::MeshSlot;

pub use session::{flood_sessions, send_raw};

/// TCP (sessions, fetches) and UDP (heartbeats) port on the mesh address.
pub const PORT: u16 = 51881;

/// The replication and liveness service of one node.
pub struct Gossip {
    replica: Arc<Mutex<Replica>>,
    blobs: Arc<BlobStore>,
    committer: GroupCommitter,
    mesh: MeshSlot,
    /// The topology and what heartbeats said, shared with DNS and ACME.
    liveness: Liveness,
    changes: Changes,
    /// Which sessions this node started are running.
    schedule: Mutex<Schedule>,
    /// The connections and sessions each peer holds open here.
    incoming: Mutex<Incoming>,
    health: health::Health,
    started: Instant,
    /// The peer that last sent this node new events: asked first for blobs.
    last_sender: Mutex<Option<AuthorKey>>,
    ahead: ahead::Ahead,
    blobs_ahead: blobs_ahead::BlobsAhead,
}

impl Gossip {
    /// Starts the service's tasks on the current runtime.
    pub fn start(
        replica: Arc<Mutex<Replica>>,
        committer: GroupCommitter,
        mesh: MeshSlot,
        blobs: Arc<BlobStore>,
        liveness: Liveness,
        changes: Changes,
    ) -> Arc<Gossip> {
        let gossip = Arc::new(Gossip {
            replica,
            blobs,
            committer,
            mesh,
            liveness,
            changes,
            schedule: Mutex::new(Schedule::default()),
            incoming: Mutex::new(Incoming::default()),
            health: health::Health::default(),
            started: Instant::now(),
            last_sender: Mutex::new(None),
            ahead: ahead::Ahead::default(),
            blobs_ahead: blobs_ahead::BlobsAhead::default(),
        });
        tokio::spawn(gossip.clone().endpoint());
        tokio::spawn(gossip.clone().anti_entropy());
        tokio::spawn(gossip.clone().pushes());
        tokio::spawn(gossip.clone().releases());
        for _ in 0..blobs_ahead::FETCHERS {
            tokio::spawn(gossip.clone().fetching_ahead());
        }
        gossip
    }

    /// Every second, admits the events held for their stamp that the
    /// clock has reached (`makiatto_core::skew`).
    async fn releases(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = crate::clock::now_millis();
            let due = self
                .read(|r| Ok(r.next_held_due()))
                .ok()
                .flatten()
                .is_some_and(|due| due <= now);
            if due && let Err(e) = self.release_held().await {
                tracing::warn!(error = %format!("{e:#}"), "admitting held events failed");
            }
        }
    }

    /// Follows a change of the peers projection.
    pub fn set_topology(&self, t: Topology) {
        self.liveness.set_topology(t);
    }

    /// Events were appended here: hand them now to every peer that is up,
    /// each time [`Changes::appended`] says so.
    async fn pushes(self: Arc<Self>) {
        loop {
            self.changes.push_wanted().await;
            self.push();
        }
    }

    /// Listens on the mesh address (TCP sessions, UDP heartbeats) and sends
    /// heartbeats; rebinds when the node's mesh address changes.
    async fn endpoint(self: Arc<Self>) {
        let mut topology = self.liveness.watch_topology();
        loop {
            let me = topology.borrow_and_update().me.clone();
            let Some(me) = me else {
                if topology.changed().await.is_err() {
                    return;
                }
                continue;
            };
            let addr = SocketAddr::V4(SocketAddrV4::new(me.mesh, PORT));
            let bound = async {
                let tcp = TcpListener::bind(addr).await?;
                let udp = UdpSocket::bind(addr).await?;
                std::io::Result::Ok((tcp, udp))
            }
            .await;
            let (tcp, udp) = match bound {
                Ok(sockets) => sockets,
                Err(e) => {
                    // The address appears on the device right after the
                    // peers are applied; until then binding fails.
                    tracing::debug!(%addr, error = %e, "cannot listen on the mesh address yet");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        changed = topology.changed() => if changed.is_err() { return },
                    }
                    continue;
                }
            };
            tracing::info!(%addr, "replicating over the mesh");
            let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut buf = vec![0u8; liveness::MAX_DATAGRAM];
            loop {
                tokio::select! {
                    accepted = tcp.accept() => match accepted {
                        Ok((stream, from)) => {
                            let gossip = self.clone();
                            tokio::spawn(async move { gossip.serve(stream, from).await });
                        }
                        Err(e) => tracing::warn!(error = %e, "accepting a mesh connection failed"),
                    },
                    got = udp.recv_from(&mut buf) => match got {
                        Ok((n, from)) => self.heard(&buf[..n], from),
                        Err(e) => tracing::debug!(error = %e, "receiving a heartbeat failed"),
                    },
                    _ = tick.tick() => self.beat(&udp).await,
                    changed = topology.changed() => {
                        if changed.is_err() { return }
                        if topology.borrow().me.as_ref().map(|m| m.mesh) != Some(me.mesh) {
                            break;
                        }
                    }
                }
            }
        }
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&Replica) -> Result<T, crate::replica::ReplicaError>,
    ) -> anyhow::Result<T> {
        let r = self
            .replica
            .lock()
            .map_err(|_| anyhow::anyhow!("replica lock poisoned"))?;
        Ok(f(&r)?)
    }
}
