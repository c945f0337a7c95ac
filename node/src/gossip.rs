//! Replication and liveness over the mesh (DESIGN §3).
//!
//! Everything here runs on the node's mesh address, port 51881, so only
//! members of the WireGuard mesh reach it, and WireGuard's cryptokey routing
//! ties a source address to one peer's key: a connection or datagram from a
//! node's mesh address comes from that node. Anything else is dropped.
//!
//! - **Sessions (TCP)**: both ends send a `Hello` with their version vector,
//!   then stream each other what the other lacks (the plan of
//!   [`VersionVector::plan_for`], feed suffixes in batches of about 1 MiB),
//!   then `Done`. Every event received is verified and appended like one
//!   from `maki` (`control::ingest`); a peer that sends forged or broken
//!   events is counted and logged, and its events change nothing.
//! - **Push**: events appended through the control socket start a session
//!   with every peer at once (only the node that took them pushes; a peer
//!   that received them does not push again, so each crosses the wire once
//!   per node).
//! - **Heartbeats (UDP)**, every 500 ms to every peer: liveness, load and a
//!   digest of the sender's version vector. A node that sees a digest other
//!   than its own starts a session with that peer (the node holding fewer
//!   events does, one such session at a time), which is how a node that
//!   comes back from a partition or a crash catches up within a heartbeat.
//!   Heartbeats are never events: they feed the health table, not history.
//! - **Blobs (TCP)**: a `Fetch` frame asks a peer for blobs by hash; the
//!   peer answers each with a `Blob` header and the raw bytes (or `NoBlob`),
//!   verified against the hash as they are written (`blobs::BlobWriter`).
//!   The content follower (`content.rs`) fetches a version's blobs this way.
//!   A node that serves an earlier version of the domain first asks for the
//!   new one as a `FetchVersion`: the peer answers with the manifest's delta
//!   from that version and the blobs new in it, on one connection; the
//!   rebuilt manifest is kept only if it hashes to the one the event names.
//! - **Anti-entropy**: every 15 s, a session with one live peer chosen at
//!   random repairs anything the rest missed.

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use makiatto_core::{GroupCommitter, VersionVector};
use makiatto_events::{AuthorKey, Blake3Hash, EventId, Load, Manifest, NodeName, WgPublicKey};
use makiatto_projections::peers::Peers;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;

use crate::blobs::new_blobs;
use crate::control;
use crate::replica::Replica;

/// TCP (sessions) and UDP (heartbeats) port on the mesh address.
pub const PORT: u16 = 51881;
/// Bumped when the frames change incompatibly; peers speaking another
/// version are refused.
const PROTOCOL: u16 = 1;
/// What a node can do beyond [`PROTOCOL`], as bits after its `Hello`. An
/// older node does not read them (postcard ignores what follows a value)
/// and announces none, so each side sends the other only what it reads.
const FEATURE_VERSION_AHEAD: u32 = 1;
const FEATURES: u32 = FEATURE_VERSION_AHEAD;
/// A version sent ahead of its event carries at most this many bytes
/// (delta and new blobs); a larger one is fetched as before.
const AHEAD_MAX_BYTES: u64 = 1 << 20;
/// How long a version is offered ahead, and how many at most.
const AHEAD_FOR: Duration = Duration::from_secs(30);
const AHEAD_KEPT: usize = 16;
/// How often every peer is sent a heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);
/// A peer not heard from for this long is down.
pub const DEAD_AFTER: Duration = Duration::from_secs(3);
const ANTI_ENTROPY_EVERY: Duration = Duration::from_secs(15);
/// Mesh round trips are short: a connection not made by then is a dead link.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest wait for the next frame of a session.
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_FRAME: usize = 16 << 20;
const BATCH_BYTES: usize = 1 << 20;
const MAX_DATAGRAM: usize = 1024;

/// A node of the mesh, as gossip needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub name: NodeName,
    pub key: AuthorKey,
    pub mesh: Ipv4Addr,
    pub wg: WgPublicKey,
}

/// This node and its peers, from the peers projection.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Topology {
    pub cluster: Option<EventId>,
    pub me: Option<Member>,
    pub peers: Vec<Member>,
}

impl Topology {
    /// The nodes of `peers` with a mesh address; `me` is the node whose key
    /// is `key`.
    pub fn new(peers: &Peers, key: &AuthorKey, cluster: Option<EventId>) -> Topology {
        let mut t = Topology {
            cluster,
            ..Topology::default()
        };
        for (name, n) in &peers.nodes {
            let Some(mesh) = n.mesh_addr else { continue };
            let m = Member {
                name: name.clone(),
                key: n.signing_key,
                mesh,
                wg: n.wg_public_key,
            };
            if n.signing_key == *key {
                t.me = Some(m);
            } else {
                t.peers.push(m);
            }
        }
        t
    }

    fn peer_at(&self, ip: Ipv4Addr) -> Option<&Member> {
        self.peers.iter().find(|m| m.mesh == ip)
    }
}

#[derive(Serialize, Deserialize)]
struct Hello {
    protocol: u16,
    cluster: EventId,
    node: AuthorKey,
    vv: VersionVector,
}

#[derive(Serialize, Deserialize)]
enum Frame {
    Hello(Hello),
    /// Canonical event bytes, verified by the receiver.
    Events(Vec<Vec<u8>>),
    Done,
    /// The first frame of a blob fetch: these blobs, please.
    Fetch(Fetch),
    /// A blob follows: exactly `size` raw bytes after this frame.
    Blob {
        hash: Blake3Hash,
        size: u64,
    },
    /// The peer does not hold this blob.
    NoBlob(Blake3Hash),
    /// The first frame of a version fetch: the manifest `target`, as a
    /// delta from `base` (which the asking node holds), and the blobs the
    /// delta names that `base` does not.
    FetchVersion(FetchVersion),
    /// The answer to `FetchVersion`: the delta (`ManifestDelta` bytes),
    /// then a `Blob` (or `NoBlob`) for each new blob, then `Done`. A peer
    /// that lacks either manifest answers `NoBlob(target)` and `Done`.
    ManifestDelta {
        target: Blake3Hash,
        delta: Vec<u8>,
    },
    /// A site version whose event follows in the same session (sent only
    /// to a peer that announces [`FEATURE_VERSION_AHEAD`]): the manifest
    /// `target` as a delta from `base`, with the blobs new in it, so that
    /// a peer holding `base` deploys the version as soon as the event
    /// lands, with no fetch of its own.
    VersionAhead(VersionAhead),
}

/// A version sent ahead being stored (see [`Gossip::start_take`]); an
/// error is this node's own (its store), not the peer's.
struct Take {
    handle: tokio::task::JoinHandle<anyhow::Result<Taken>>,
}

/// What became of a version sent ahead.
#[derive(Debug)]
enum Taken {
    Stored,
    /// This node lacks its base, or holds it already.
    Unusable,
    /// It does not check out (the peer's fault): a delta that does not
    /// decode, apply or give the target, or a blob that is not its hash.
    Refused(anyhow::Error),
}

#[derive(Serialize, Deserialize)]
struct VersionAhead {
    base: Blake3Hash,
    target: Blake3Hash,
    delta: Vec<u8>,
    blobs: Vec<(Blake3Hash, Vec<u8>)>,
}

/// A version this node took from `maki` as a delta, offered to each peer
/// once, ahead of its event.
struct Offered {
    put: crate::blobs::PutDelta,
    at: Instant,
    sent_to: Vec<AuthorKey>,
}

#[derive(Serialize, Deserialize)]
struct FetchVersion {
    protocol: u16,
    cluster: EventId,
    node: AuthorKey,
    base: Blake3Hash,
    target: Blake3Hash,
}

#[derive(Serialize, Deserialize)]
struct Fetch {
    protocol: u16,
    cluster: EventId,
    node: AuthorKey,
    want: Vec<Blake3Hash>,
}

/// At most this many blobs asked for in one fetch.
const MAX_FETCH: usize = 100_000;

/// What one node says of itself twice a second.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    protocol: u16,
    cluster: EventId,
    node: AuthorKey,
    /// Events held, and a digest of the version vector.
    events: u64,
    vv_digest: [u8; 32],
    load: Load,
}

/// This node's load now, from /proc (zeros where it cannot be read).
fn read_load(started: Instant) -> Load {
    let load1 = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| -> u32 {
        meminfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map_or(0, |kb| (kb / 1024) as u32)
    };
    Load {
        load1_milli: (load1 * 1000.0) as u32,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u16),
        mem_available_mb: field("MemAvailable:"),
        mem_total_mb: field("MemTotal:"),
        uptime_secs: started.elapsed().as_secs(),
    }
}

/// What this node knows of one peer.
#[derive(Default)]
struct PeerHealth {
    last_heard: Option<Instant>,
    heartbeat: Option<Heartbeat>,
    last_sync: Option<Instant>,
    last_error: Option<String>,
    events_in: u64,
    events_out: u64,
    bad_events: u64,
}

/// Totals since the daemon started.
#[derive(Default)]
struct Totals {
    sessions_ok: AtomicU64,
    sessions_failed: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    events_in: AtomicU64,
    events_out: AtomicU64,
    bad_events: AtomicU64,
    refused_connections: AtomicU64,
    /// Site versions fetched as a manifest delta, and as a whole manifest.
    versions_by_delta: AtomicU64,
    manifests_whole: AtomicU64,
    /// Site versions a peer sent ahead of their events, taken.
    versions_ahead: AtomicU64,
}

/// One session at a time per peer; a push during a session runs another.
#[derive(Default)]
struct PeerLock {
    running: tokio::sync::Mutex<()>,
    again: AtomicBool,
}

/// The replication and liveness service of one node.
pub struct Gossip {
    replica: Arc<Mutex<Replica>>,
    blobs: Arc<crate::blobs::BlobStore>,
    /// Woken whenever events are stored (the content follower waits on it).
    pub stored: Arc<tokio::sync::Notify>,
    /// Counts the times events were stored (the DNS follows it).
    changes: watch::Sender<u64>,
    committer: GroupCommitter,
    mesh: crate::daemon::MeshSlot,
    topology: watch::Sender<Topology>,
    health: Mutex<HashMap<AuthorKey, PeerHealth>>,
    totals: Totals,
    locks: Mutex<HashMap<AuthorKey, Arc<PeerLock>>>,
    /// Catch-up sessions started by heartbeats run one at a time, so a node
    /// back from a partition fetches the difference once, not from everyone.
    catch_up: tokio::sync::Mutex<()>,
    started: Instant,
    /// The peer that last sent this node new events: asked first for blobs.
    last_sender: Mutex<Option<AuthorKey>>,
    /// Versions to send ahead of their events (newest last).
    offered: Mutex<Vec<Offered>>,
    /// Versions a peer sent ahead that are being stored now.
    taking: Arc<Taking>,
}

/// Manifests of versions a peer sent ahead that are being stored, and a
/// wake-up when one is done: the content follower waits for them rather
/// than fetch the same version again.
#[derive(Default)]
struct Taking {
    /// How many takes of each manifest are running (two peers may send
    /// the same version at once).
    manifests: Mutex<foldhash::HashMap<Blake3Hash, usize>>,
    done: tokio::sync::Notify,
}

impl Taking {
    fn start(&self, manifest: Blake3Hash) {
        if let Ok(mut manifests) = self.manifests.lock() {
            *manifests.entry(manifest).or_default() += 1;
        }
    }

    fn end(&self, manifest: &Blake3Hash) {
        if let Ok(mut manifests) = self.manifests.lock()
            && let Some(n) = manifests.get_mut(manifest)
        {
            *n -= 1;
            if *n == 0 {
                manifests.remove(manifest);
            }
        }
        self.done.notify_waiters();
    }

    /// Returns once `manifest` is not being taken, or after `within`.
    async fn wait(&self, manifest: &Blake3Hash, within: Duration) {
        let until = tokio::time::Instant::now() + within;
        loop {
            // Enabled before the check: an end between the two still wakes.
            let done = self.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if !self
                .manifests
                .lock()
                .is_ok_and(|t| t.contains_key(manifest))
            {
                return;
            }
            if tokio::time::timeout_at(until, done).await.is_err() {
                return;
            }
        }
    }
}

impl Gossip {
    /// Starts the service's tasks on the current runtime.
    pub fn start(
        replica: Arc<Mutex<Replica>>,
        committer: GroupCommitter,
        mesh: crate::daemon::MeshSlot,
        blobs: Arc<crate::blobs::BlobStore>,
    ) -> Arc<Gossip> {
        let gossip = Arc::new(Gossip {
            replica,
            blobs,
            stored: Arc::new(tokio::sync::Notify::new()),
            changes: watch::Sender::new(0),
            committer,
            mesh,
            topology: watch::Sender::new(Topology::default()),
            health: Mutex::new(HashMap::new()),
            totals: Totals::default(),
            locks: Mutex::new(HashMap::new()),
            catch_up: tokio::sync::Mutex::new(()),
            started: Instant::now(),
            last_sender: Mutex::new(None),
            offered: Mutex::new(Vec::new()),
            taking: Arc::default(),
        });
        tokio::spawn(gossip.clone().endpoint());
        tokio::spawn(gossip.clone().anti_entropy());
        gossip
    }

    /// Events were stored here: wake the content follower and whoever
    /// follows [`Gossip::changes`].
    pub fn events_stored(&self) {
        self.stored.notify_one();
        self.changes.send_modify(|n| *n += 1);
    }

    /// A receiver that sees every time events are stored.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// This node's name, once it has joined.
    pub fn me(&self) -> Option<NodeName> {
        self.topology.borrow().me.as_ref().map(|m| m.name.clone())
    }

    /// Do the peers heard alive hold what this node holds (their last
    /// heartbeat carried this node's version-vector digest)?
    pub fn peers_in_sync(&self) -> bool {
        let Ok(vv) = self.read(|r| r.version_vector()) else {
            return false;
        };
        let digest = vv.digest();
        let peers = self.topology.borrow().peers.clone();
        let Ok(health) = self.health.lock() else {
            return false;
        };
        peers.iter().all(|p| {
            let Some(h) = health.get(&p.key) else {
                return true;
            };
            let alive = h.last_heard.is_some_and(|t| t.elapsed() < DEAD_AFTER);
            !alive || h.heartbeat.as_ref().is_some_and(|b| b.vv_digest == digest)
        })
    }

    /// The peers heard from within [`DEAD_AFTER`].
    pub fn alive_names(&self) -> Vec<NodeName> {
        let peers = self.topology.borrow().peers.clone();
        peers
            .into_iter()
            .filter(|p| self.alive(&p.key))
            .map(|p| p.name)
            .collect()
    }

    /// Follows a change of the peers projection.
    pub fn set_topology(&self, t: Topology) {
        self.topology.send_if_modified(|old| {
            let changed = *old != t;
            *old = t;
            changed
        });
    }

    /// A site version `maki` sent here as a manifest delta: if it is small,
    /// each peer's next session sends it ahead of the event that names it
    /// (the delta and the new blobs, which `maki` uploads before the
    /// event). Each peer then switches when the event lands, without
    /// asking this node for the version: a connection and a round trip
    /// less per peer.
    pub fn offer_version(&self, put: crate::blobs::PutDelta) {
        let bytes = put.delta.len() as u64 + put.new_blobs.iter().map(|(_, n)| n).sum::<u64>();
        if bytes > AHEAD_MAX_BYTES {
            return;
        }
        if let Ok(mut offered) = self.offered.lock() {
            offered.retain(|o| o.at.elapsed() < AHEAD_FOR && o.put.target != put.target);
            if offered.len() >= AHEAD_KEPT {
                offered.remove(0);
            }
            offered.push(Offered {
                put,
                at: Instant::now(),
                sent_to: Vec::new(),
            });
        }
    }

    /// Sends `peer` the versions offered here that it was not sent yet,
    /// each in one frame. One whose blobs are not all here yet (`maki` is
    /// still uploading them) waits for a later session.
    async fn send_ahead(
        &self,
        writer: &mut (impl AsyncWriteExt + Unpin),
        peer: &Member,
    ) -> anyhow::Result<()> {
        let offers: Vec<crate::blobs::PutDelta> = match self.offered.lock() {
            Ok(mut offered) => {
                offered.retain(|o| o.at.elapsed() < AHEAD_FOR);
                offered
                    .iter()
                    .filter(|o| !o.sent_to.contains(&peer.key))
                    .map(|o| o.put.clone())
                    .collect()
            }
            Err(_) => Vec::new(),
        };
        for put in offers {
            let crate::blobs::PutDelta {
                base,
                target,
                delta,
                new_blobs,
                ..
            } = put;
            let store = self.blobs.clone();
            let read = tokio::task::spawn_blocking(move || {
                new_blobs
                    .iter()
                    .map(|(hash, size)| {
                        let bytes = std::fs::read(store.path(hash)).ok()?;
                        (bytes.len() as u64 == *size).then_some((*hash, bytes))
                    })
                    .collect::<Option<Vec<_>>>()
            })
            .await?;
            let Some(blobs) = read else { continue };
            let frame = Frame::VersionAhead(VersionAhead {
                base,
                target,
                delta,
                blobs,
            });
            self.write_frame(writer, &frame).await?;
            if let Ok(mut offered) = self.offered.lock()
                && let Some(o) = offered.iter_mut().find(|o| o.put.target == target)
            {
                o.sent_to.push(peer.key);
            }
        }
        Ok(())
    }

    /// Starts storing a version a peer sent ahead of its event (see
    /// [`Frame::VersionAhead`]) on a blocking thread, while the session
    /// reads on: the events that follow are appended meanwhile (the two
    /// file system syncs overlap), and the content follower waits for the
    /// version ([`Gossip::wait_for_ahead`]). One this node cannot use (it
    /// lacks the base, or holds the version already) is dropped, and the
    /// follower fetches as before.
    fn start_take(&self, peer: &Member, ahead: VersionAhead) -> Take {
        let store = self.blobs.clone();
        let target = ahead.target;
        let taking = self.taking.clone();
        taking.start(target);
        let name = peer.name.clone();
        let handle = tokio::task::spawn_blocking(move || {
            let taken = take_version(&store, ahead);
            taking.end(&target);
            if matches!(taken, Ok(Taken::Stored)) {
                tracing::info!(peer = %name, manifest = %target.short(), "took a version sent ahead of its event");
            }
            taken
        });
        Take { handle }
    }

    /// The outcome of versions taken in a session: counted, and one that
    /// did not check out is counted against the peer (it changed nothing).
    /// A failure of this node's own store is not the peer's.
    async fn finish_takes(&self, peer: &Member, takes: Vec<Take>) {
        for take in takes {
            match take.handle.await {
                Ok(Ok(Taken::Stored)) => {
                    self.totals.versions_ahead.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Ok(Taken::Unusable)) => {}
                Ok(Ok(Taken::Refused(e))) => {
                    self.bad_blob(peer);
                    tracing::warn!(peer = %peer.name, error = %format!("{e:#}"), "a peer sent a version that does not check out; refused");
                }
                Ok(Err(e)) => {
                    tracing::warn!(peer = %peer.name, error = %format!("{e:#}"), "cannot store a version a peer sent ahead; it is fetched instead")
                }
                Err(e) => tracing::warn!(error = %e, "taking a version sent ahead stopped"),
            }
        }
    }

    /// Waits (at most `within`) while the version whose manifest is
    /// `manifest` is being stored from a peer that sent it ahead of its
    /// event; the event can come first from another peer, and the version
    /// should not be fetched twice.
    pub async fn wait_for_ahead(&self, manifest: &Blake3Hash, within: Duration) {
        self.taking.wait(manifest, within).await;
    }

    /// Events were appended here: hand them now to every peer that is up.
    /// A peer that is down is left alone: when it is back, its heartbeats
    /// show it behind and it catches up itself, in one session.
    pub fn push(self: &Arc<Self>) {
        let peers = self.topology.borrow().peers.clone();
        for peer in peers {
            if self.alive(&peer.key) {
                self.sync_soon(peer);
            }
        }
    }

    /// Heard from within [`DEAD_AFTER`].
    fn alive(&self, key: &AuthorKey) -> bool {
        self.health.lock().is_ok_and(|h| {
            h.get(key)
                .and_then(|p| p.last_heard)
                .is_some_and(|t| t.elapsed() < DEAD_AFTER)
        })
    }

    fn lock_for(&self, key: &AuthorKey) -> Arc<PeerLock> {
        match self.locks.lock() {
            Ok(mut locks) => locks.entry(*key).or_default().clone(),
            Err(_) => Arc::new(PeerLock::default()),
        }
    }

    /// Runs a session with `peer` soon; if one is running, once more after it.
    fn sync_soon(self: &Arc<Self>, peer: Member) {
        let lock = self.lock_for(&peer.key);
        lock.again.store(true, Ordering::SeqCst);
        let gossip = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok(guard) = lock.running.try_lock() else {
                    return;
                };
                while lock.again.swap(false, Ordering::SeqCst) {
                    if !gossip.initiate(&peer).await {
                        // Unreachable: drop what was pending; it catches up
                        // by itself when it is back.
                        lock.again.store(false, Ordering::SeqCst);
                        return;
                    }
                }
                drop(guard);
                // A push that arrived between the last check and the unlock.
                if !lock.again.load(Ordering::SeqCst) {
                    return;
                }
            }
        });
    }

    /// Connects to `peer` and runs one session; the outcome is recorded.
    /// Returns whether the session succeeded.
    async fn initiate(&self, peer: &Member) -> bool {
        let result = async {
            let stream = connect(peer.mesh).await?;
            self.session(stream, peer, None).await
        }
        .await;
        self.record(peer, result)
    }

    fn record(&self, peer: &Member, result: anyhow::Result<(u64, u64)>) -> bool {
        let ok = result.is_ok();
        let Ok(mut health) = self.health.lock() else {
            return ok;
        };
        let h = health.entry(peer.key).or_default();
        match result {
            Ok((sent, received)) => {
                self.totals.sessions_ok.fetch_add(1, Ordering::Relaxed);
                h.last_sync = Some(Instant::now());
                h.last_error = None;
                if sent + received > 0 {
                    tracing::info!(peer = %peer.name, sent, received, "replicated");
                }
            }
            Err(e) => {
                self.totals.sessions_failed.fetch_add(1, Ordering::Relaxed);
                let message = format!("{e:#}");
                if h.last_error.as_deref() != Some(message.as_str()) {
                    tracing::info!(peer = %peer.name, error = %message, "replication with a peer failed; will retry");
                }
                h.last_error = Some(message);
            }
        }
        ok
    }

    /// One session on an open connection: exchange version vectors, stream
    /// each other the difference. Returns (events sent, events received).
    async fn session(
        &self,
        stream: TcpStream,
        peer: &Member,
        first: Option<(Frame, u32)>,
    ) -> anyhow::Result<(u64, u64)> {
        let _ = stream.set_nodelay(true);
        let (me, cluster) = {
            let t = self.topology.borrow();
            (t.me.clone(), t.cluster)
        };
        let (Some(me), Some(cluster)) = (me, cluster) else {
            bail!("this node has no mesh identity yet");
        };
        let ours = self.read(|r| r.version_vector())?;
        let (mut reader, mut writer) = stream.into_split();
        let hello = Frame::Hello(Hello {
            protocol: PROTOCOL,
            cluster,
            node: me.key,
            vv: ours.clone(),
        });
        self.write_frame_with(&mut writer, &hello, Some(FEATURES))
            .await?;
        let (first, features) = match first {
            Some(first) => first,
            None => self.read_frame_with(&mut reader).await?,
        };
        let theirs = match first {
            Frame::Hello(h) => {
                if h.protocol != PROTOCOL {
                    bail!(
                        "{} speaks replication protocol {}, this node {PROTOCOL}",
                        peer.name,
                        h.protocol
                    );
                }
                if h.cluster != cluster {
                    bail!("{} belongs to another cluster", peer.name);
                }
                if h.node != peer.key {
                    bail!(
                        "the node at {} is not {} (another key answered)",
                        peer.mesh,
                        peer.name
                    );
                }
                h.vv
            }
            _ => bail!("{} did not start with a hello", peer.name),
        };
        let send = async {
            let mut sent = 0u64;
            // Versions first: a peer that takes one holds it whole when the
            // event naming it arrives.
            if features & FEATURE_VERSION_AHEAD != 0 {
                self.send_ahead(&mut writer, peer).await?;
            }
            for request in ours.plan_for(&theirs) {
                let mut from = Some(request.from);
                while let Some(seq) = from {
                    let log = self.read(|r| Ok(r.log()))?;
                    let (batch, next) = tokio::task::spawn_blocking(move || {
                        let log = log
                            .lock()
                            .map_err(|_| anyhow::anyhow!("log lock poisoned"))?;
                        anyhow::Ok(log.feed_chunk(&request.author, seq, BATCH_BYTES)?)
                    })
                    .await??;
                    from = next;
                    if batch.is_empty() {
                        break;
                    }
                    sent += batch.len() as u64;
                    self.write_frame(&mut writer, &Frame::Events(batch)).await?;
                }
            }
            self.write_frame(&mut writer, &Frame::Done).await?;
            writer.shutdown().await.ok();
            anyhow::Ok(sent)
        };
        let receive = async {
            let mut received = 0u64;
            let mut takes = Vec::new();
            loop {
                match self.read_frame(&mut reader).await? {
                    Frame::Events(batch) => {
                        received += self.absorb(peer, batch).await?;
                    }
                    // At most as many, and as large, as a node offers:
                    // a peer cannot make this node store more unasked.
                    Frame::VersionAhead(ahead) => {
                        let bytes = ahead.delta.len() as u64
                            + ahead.blobs.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
                        if takes.len() < AHEAD_KEPT && bytes <= AHEAD_MAX_BYTES {
                            takes.push(self.start_take(peer, ahead));
                        } else {
                            tracing::warn!(peer = %peer.name, bytes, "a peer sent more ahead than a node offers; dropped");
                        }
                    }
                    Frame::Done => {
                        self.finish_takes(peer, takes).await;
                        return anyhow::Ok(received);
                    }
                    _ => bail!("{} sent a frame out of place", peer.name),
                }
            }
        };
        let (sent, received) = tokio::try_join!(send, receive)?;
        self.totals.events_out.fetch_add(sent, Ordering::Relaxed);
        if let Ok(mut health) = self.health.lock() {
            let h = health.entry(peer.key).or_default();
            h.events_out += sent;
        }
        Ok((sent, received))
    }

    /// Verifies and appends a batch a peer sent; returns how many it stored.
    async fn absorb(&self, peer: &Member, batch: Vec<Vec<u8>>) -> anyhow::Result<u64> {
        let n = batch.len() as u64;
        self.totals.events_in.fetch_add(n, Ordering::Relaxed);
        let replica = self.replica.clone();
        let committer = self.committer.clone();
        let mesh = self.mesh.clone();
        let (ingested, topology) = tokio::task::spawn_blocking(move || {
            let ingested =
                control::ingest(&replica, &committer, batch.into_iter().map(Ok).collect())?;
            let topology = (ingested.stored > 0)
                .then(|| crate::daemon::follow_peers(&replica, &mesh))
                .flatten();
            Ok::<_, String>((ingested, topology))
        })
        .await?
        .map_err(|e| anyhow::anyhow!(e))?;
        if let Some(t) = topology {
            self.set_topology(t);
        }
        if ingested.stored > 0 {
            if let Ok(mut last) = self.last_sender.lock() {
                *last = Some(peer.key);
            }
            self.events_stored();
        }
        if let Ok(mut health) = self.health.lock() {
            let h = health.entry(peer.key).or_default();
            h.events_in += ingested.stored as u64;
            h.bad_events += ingested.bad.len() as u64;
        }
        if !ingested.bad.is_empty() {
            self.totals
                .bad_events
                .fetch_add(ingested.bad.len() as u64, Ordering::Relaxed);
            tracing::warn!(
                peer = %peer.name,
                count = ingested.bad.len(),
                first = %ingested.bad[0],
                "a peer sent events that fail verification; they were refused"
            );
        }
        Ok(ingested.stored as u64)
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

    async fn write_frame(
        &self,
        writer: &mut (impl AsyncWriteExt + Unpin),
        frame: &Frame,
    ) -> anyhow::Result<()> {
        self.write_frame_with(writer, frame, None).await
    }

    /// Writes a frame, with `features` after it if given (a `Hello`).
    async fn write_frame_with(
        &self,
        writer: &mut (impl AsyncWriteExt + Unpin),
        frame: &Frame,
        features: Option<u32>,
    ) -> anyhow::Result<()> {
        let mut bytes = Vec::new();
        frame_bytes_with(frame, features, &mut bytes)?;
        tokio::time::timeout(FRAME_TIMEOUT, writer.write_all(&bytes))
            .await
            .context("the peer stopped reading")??;
        self.totals
            .bytes_out
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    async fn read_frame(&self, reader: &mut (impl AsyncReadExt + Unpin)) -> anyhow::Result<Frame> {
        Ok(self.read_frame_with(reader).await?.0)
    }

    /// Reads a frame and the feature bits after it (none: 0).
    async fn read_frame_with(
        &self,
        reader: &mut (impl AsyncReadExt + Unpin),
    ) -> anyhow::Result<(Frame, u32)> {
        let body = tokio::time::timeout(FRAME_TIMEOUT, async {
            let mut len = [0u8; 4];
            reader.read_exact(&mut len).await?;
            let mut body = frame_body(len)?;
            reader.read_exact(&mut body).await?;
            Ok::<_, anyhow::Error>(body)
        })
        .await
        .context("the peer went silent")??;
        self.unframe(&body)
    }

    /// Counts a frame's bytes in and decodes it, with the feature bits
    /// that may follow it.
    fn unframe(&self, body: &[u8]) -> anyhow::Result<(Frame, u32)> {
        self.totals
            .bytes_in
            .fetch_add(body.len() as u64 + 4, Ordering::Relaxed);
        unframe(body)
    }

    /// Listens on the mesh address (TCP sessions, UDP heartbeats) and sends
    /// heartbeats; rebinds when the node's mesh address changes.
    async fn endpoint(self: Arc<Self>) {
        let mut topology = self.topology.subscribe();
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
            let mut buf = vec![0u8; MAX_DATAGRAM];
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

    /// Answers a session a peer started.
    async fn serve(self: Arc<Self>, stream: TcpStream, from: SocketAddr) {
        let peer = match from {
            SocketAddr::V4(v4) => self.topology.borrow().peer_at(*v4.ip()).cloned(),
            SocketAddr::V6(_) => None,
        };
        let Some(peer) = peer else {
            self.totals
                .refused_connections
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%from, "refused a mesh connection from an address that is no node");
            return;
        };
        let mut stream = stream;
        let (first, features) = match self.read_frame_with(&mut stream).await {
            Ok(first) => first,
            Err(e) => {
                self.record(&peer, Err(e));
                return;
            }
        };
        let (protocol, cluster, node, ask) = match first {
            Frame::Fetch(f) => (f.protocol, f.cluster, f.node, Ask::Blobs(f.want)),
            Frame::FetchVersion(f) => (
                f.protocol,
                f.cluster,
                f.node,
                Ask::Version {
                    base: f.base,
                    target: f.target,
                },
            ),
            // A session the peer started may overlap one this node started:
            // both only add what is missing.
            first => {
                let result = self.session(stream, &peer, Some((first, features))).await;
                self.record(&peer, result);
                return;
            }
        };
        let from_peer = protocol == PROTOCOL
            && Some(cluster) == self.topology.borrow().cluster
            && node == peer.key;
        let result = if from_peer {
            self.serve_fetch(stream, &peer, ask).await
        } else {
            Err(anyhow::anyhow!(
                "a blob fetch that is not from {} of this cluster",
                peer.name
            ))
        };
        if let Err(e) = result {
            tracing::info!(peer = %peer.name, error = %format!("{e:#}"), "serving blobs to a peer failed");
        }
    }

    /// Sends a peer the blobs (or the version) it asked for that this node
    /// holds.
    async fn serve_fetch(&self, stream: TcpStream, peer: &Member, ask: Ask) -> anyhow::Result<()> {
        if let Ask::Blobs(want) = &ask
            && want.len() > MAX_FETCH
        {
            bail!("{} asked for {} blobs at once", peer.name, want.len());
        }
        let _ = stream.set_nodelay(true);
        let (_reader, mut writer) = stream.into_split();
        // A blocking thread reads the blobs and frames them into batches of
        // about `SEND_BATCH` bytes; this task writes each batch whole. Small
        // blobs travel many to a write (one frame, one syscall and one small
        // packet through WireGuard per blob cost more than their bytes), and
        // the disk is read while the network sends.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<io::Result<Vec<u8>>>(4);
        let blobs = self.blobs.clone();
        let reading = tokio::task::spawn_blocking(move || match ask {
            Ask::Blobs(want) => frame_blobs(&blobs, want, &tx, Vec::new()),
            Ask::Version { base, target } => frame_version(&blobs, base, target, &tx),
        });
        while let Some(batch) = rx.recv().await {
            let batch = batch.context("cannot read a blob")?;
            tokio::time::timeout(FRAME_TIMEOUT, writer.write_all(&batch))
                .await
                .context("the peer stopped reading")??;
            self.totals
                .bytes_out
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        reading.await.context("the blob reader stopped")?;
        writer.shutdown().await.ok();
        Ok(())
    }

    /// Fetches blobs from one peer into the store; each is verified against
    /// its hash before it is kept. Returns how many were stored.
    async fn fetch_from(&self, peer: &Member, want: Vec<Blake3Hash>) -> anyhow::Result<u64> {
        let (me, cluster) = self.identity()?;
        let count = want.len();
        let reader = self
            .ask(
                peer,
                &Frame::Fetch(Fetch {
                    protocol: PROTOCOL,
                    cluster,
                    node: me,
                    want,
                }),
            )
            .await?;
        tokio::task::block_in_place(|| {
            let mut reader = reader;
            // Blobs are staged as they arrive and published together (two
            // file system syncs per fetch, not two per blob), also when the
            // fetch fails part way: what arrived whole is kept.
            let mut staged = Vec::new();
            let result = self.receive_blobs(&mut reader, peer, count, &mut staged);
            let stored = staged.len() as u64;
            self.blobs.commit(staged)?;
            result.map(|()| stored)
        })
    }

    /// This node's key and cluster, once it has a mesh identity.
    fn identity(&self) -> anyhow::Result<(AuthorKey, EventId)> {
        let t = self.topology.borrow();
        match (&t.me, t.cluster) {
            (Some(me), Some(cluster)) => Ok((me.key, cluster)),
            _ => bail!("this node has no mesh identity yet"),
        }
    }

    /// Sends a fetch's first frame to a peer and returns the connection to
    /// read the answer from, blocking, through a buffer (frames of small
    /// blobs arrive many to a segment). The answer is read on one blocking
    /// section, not a runtime handoff for every blob written.
    async fn ask(
        &self,
        peer: &Member,
        frame: &Frame,
    ) -> anyhow::Result<std::io::BufReader<std::net::TcpStream>> {
        let mut stream = connect(peer.mesh).await?;
        let _ = stream.set_nodelay(true);
        self.write_frame(&mut stream, frame).await?;
        let stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(FRAME_TIMEOUT))?;
        Ok(std::io::BufReader::with_capacity(SEND_BATCH, stream))
    }

    /// Reads one frame, blocking (see [`Gossip::ask`]).
    fn read_frame_blocking(&self, reader: &mut impl Read) -> anyhow::Result<Frame> {
        let silent = |e: io::Error| {
            if timed_out(&e) {
                anyhow::anyhow!("the peer went silent")
            } else {
                anyhow::Error::from(e)
            }
        };
        let mut len = [0u8; 4];
        reader.read_exact(&mut len).map_err(silent)?;
        let mut body = frame_body(len)?;
        reader.read_exact(&mut body).map_err(silent)?;
        Ok(self.unframe(&body)?.0)
    }

    /// Reads up to `count` blobs and `Done`, each verified as it is written
    /// and staged (blocking).
    fn receive_blobs(
        &self,
        reader: &mut impl Read,
        peer: &Member,
        count: usize,
        staged: &mut Vec<crate::blobs::Staged>,
    ) -> anyhow::Result<()> {
        for _ in 0..=count {
            match self.read_frame_blocking(reader)? {
                Frame::Done => return Ok(()),
                Frame::NoBlob(_) => {}
                Frame::Blob { hash, size } => {
                    match self.blobs.stage(hash, size, reader, false) {
                        Ok(Some(s)) => staged.push(s),
                        Ok(None) => {}
                        Err(e @ crate::blobs::BlobError::HashMismatch { .. }) => {
                            self.bad_blob(peer);
                            tracing::warn!(peer = %peer.name, error = %e, "a peer sent a blob that fails verification; refused");
                            return Err(e.into());
                        }
                        Err(crate::blobs::BlobError::Truncated { .. }) => {
                            bail!("{} closed the connection inside blob {hash}", peer.name)
                        }
                        Err(crate::blobs::BlobError::Io(e)) if timed_out(&e) => {
                            bail!("{} went silent inside blob {hash}", peer.name)
                        }
                        Err(e) => return Err(e.into()),
                    }
                    self.totals.bytes_in.fetch_add(size, Ordering::Relaxed);
                }
                _ => bail!("{} sent a frame out of place in a blob fetch", peer.name),
            }
        }
        bail!("{} sent more blobs than were asked for", peer.name)
    }

    /// Fetches the manifest `target` as a delta from `base` (a manifest
    /// this node holds), with the blobs new in it, from the first live peer
    /// that can send it. The rebuilt manifest is kept only if its hash is
    /// `target`. Returns whether it is now stored; if not (no peer holds
    /// both, or an older peer), the caller fetches the whole manifest.
    pub async fn fetch_version(&self, base: Blake3Hash, target: Blake3Hash) -> bool {
        let blobs = self.blobs.clone();
        let Ok(base_manifest) = tokio::task::block_in_place(|| blobs.manifest(&base)) else {
            return false;
        };
        for peer in self.live_peers() {
            match self
                .fetch_version_from(&peer, base, &base_manifest, target)
                .await
            {
                Ok(true) => {
                    self.totals
                        .versions_by_delta
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(peer = %peer.name, manifest = %target.short(), "fetched a version as a delta");
                    return true;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::info!(peer = %peer.name, error = %format!("{e:#}"), "fetching a version from a peer failed")
                }
            }
        }
        false
    }

    async fn fetch_version_from(
        &self,
        peer: &Member,
        base: Blake3Hash,
        base_manifest: &Manifest,
        target: Blake3Hash,
    ) -> anyhow::Result<bool> {
        let (me, cluster) = self.identity()?;
        let reader = self
            .ask(
                peer,
                &Frame::FetchVersion(FetchVersion {
                    protocol: PROTOCOL,
                    cluster,
                    node: me,
                    base,
                    target,
                }),
            )
            .await?;
        tokio::task::block_in_place(|| {
            let mut reader = reader;
            let delta = match self.read_frame_blocking(&mut reader)? {
                Frame::NoBlob(_) => return Ok(false),
                Frame::ManifestDelta { target: t, delta } if t == target => delta,
                _ => bail!("{} sent a frame out of place in a version fetch", peer.name),
            };
            let rebuilt = match crate::blobs::Rebuilt::from_delta(&delta, base_manifest, target) {
                Ok(r) => r,
                Err(e) => {
                    self.bad_blob(peer);
                    bail!(
                        "{} sent a manifest delta that does not apply: {e:#}",
                        peer.name
                    );
                }
            };
            let mut staged = Vec::new();
            if let Some(s) = rebuilt.stage(&self.blobs)? {
                staged.push(s);
            }
            let count = new_blobs(&rebuilt.delta, base_manifest).len();
            let result = self.receive_blobs(&mut reader, peer, count, &mut staged);
            self.blobs.commit(staged)?;
            rebuilt.remember(&self.blobs);
            result.map(|()| true)
        })
    }

    /// Counts a manifest fetched whole (no peer could send a delta).
    pub fn count_whole_manifest(&self) {
        self.totals.manifests_whole.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a peer's blob that failed verification.
    fn bad_blob(&self, peer: &Member) {
        if let Ok(mut health) = self.health.lock() {
            health.entry(peer.key).or_default().bad_events += 1;
        }
    }

    /// The live peers to fetch from: first the one that last sent this
    /// node new events (a new version's event comes from a node that holds
    /// its blobs: the one `maki` uploaded to, or one that fetched them
    /// before passing it on), then the others from a random one, so not
    /// every node asks the same peer first.
    fn live_peers(&self) -> Vec<Member> {
        let mut peers: Vec<Member> = self
            .topology
            .borrow()
            .peers
            .iter()
            .filter(|p| self.alive(&p.key))
            .cloned()
            .collect();
        if !peers.is_empty() {
            let start = rand::random_range(0..peers.len());
            peers.rotate_left(start);
        }
        let last = self.last_sender.lock().ok().and_then(|l| *l);
        if let Some(at) = peers.iter().position(|p| Some(p.key) == last) {
            let first = peers.remove(at);
            peers.insert(0, first);
        }
        peers
    }

    /// Fetches what of `want` this node lacks from the live peers, one
    /// after another until nothing is missing. Returns what is still missing.
    pub async fn fetch_blobs(&self, want: &[Blake3Hash]) -> Vec<Blake3Hash> {
        let mut missing = self.blobs.missing(want);
        for peer in self.live_peers() {
            if missing.is_empty() {
                break;
            }
            for chunk in missing.clone().chunks(MAX_FETCH) {
                match self.fetch_from(&peer, chunk.to_vec()).await {
                    Ok(n) if n > 0 => {
                        tracing::info!(peer = %peer.name, blobs = n, "fetched blobs")
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::info!(peer = %peer.name, error = %format!("{e:#}"), "fetching blobs from a peer failed")
                    }
                }
            }
            missing = self.blobs.missing(&missing);
        }
        missing
    }

    async fn beat(self: &Arc<Self>, udp: &UdpSocket) {
        let (me, cluster, peers) = {
            let t = self.topology.borrow();
            (t.me.clone(), t.cluster, t.peers.clone())
        };
        let (Some(me), Some(cluster)) = (me, cluster) else {
            return;
        };
        let Ok(vv) = self.read(|r| r.version_vector()) else {
            return;
        };
        let beat = Heartbeat {
            protocol: PROTOCOL,
            cluster,
            node: me.key,
            events: vv.total(),
            vv_digest: vv.digest(),
            load: read_load(self.started),
        };
        let Ok(bytes) = postcard::to_allocvec(&beat) else {
            return;
        };
        for peer in &peers {
            let to = SocketAddr::V4(SocketAddrV4::new(peer.mesh, PORT));
            // A peer that is down makes sends fail; that is what liveness is for.
            let _ = udp.send_to(&bytes, to).await;
        }
    }

    /// A heartbeat arrived: note the peer alive, and catch up if its log
    /// differs from ours and it holds more.
    fn heard(self: &Arc<Self>, bytes: &[u8], from: SocketAddr) {
        let SocketAddr::V4(from) = from else { return };
        let (peer, me, cluster) = {
            let t = self.topology.borrow();
            (t.peer_at(*from.ip()).cloned(), t.me.clone(), t.cluster)
        };
        let (Some(peer), Some(me), Some(cluster)) = (peer, me, cluster) else {
            return;
        };
        let Ok(beat) = postcard::from_bytes::<Heartbeat>(bytes) else {
            tracing::debug!(%from, "a heartbeat that does not decode");
            return;
        };
        if beat.protocol != PROTOCOL || beat.cluster != cluster || beat.node != peer.key {
            return;
        }
        let Ok(vv) = self.read(|r| r.version_vector()) else {
            return;
        };
        let differs = beat.vv_digest != vv.digest();
        // The node with fewer events starts the catch-up (on a tie, the
        // smaller key), so two nodes do not both start one.
        let ours = vv.total();
        let starts = beat.events > ours || (beat.events == ours && me.key < peer.key);
        let beat_events = beat.events;
        let was_alive = self.alive(&peer.key);
        if let Ok(mut health) = self.health.lock() {
            let h = health.entry(peer.key).or_default();
            h.last_heard = Some(Instant::now());
            h.heartbeat = Some(beat);
        }
        if !was_alive {
            // A peer (back) up may hold blobs the content follower waits for.
            self.stored.notify_one();
        }
        if differs && starts {
            let gossip = self.clone();
            tokio::spawn(async move {
                let Ok(_one) = gossip.catch_up.try_lock() else {
                    return;
                };
                let lock = gossip.lock_for(&peer.key);
                let Ok(_guard) = lock.running.try_lock() else {
                    return;
                };
                tracing::info!(peer = %peer.name, theirs = beat_events, ours, "catching up");
                gossip.initiate(&peer).await;
            });
        }
    }

    /// Every 15 s, a session with one live peer at random.
    async fn anti_entropy(self: Arc<Self>) {
        let mut tick = tokio::time::interval(ANTI_ENTROPY_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // Only live peers: a session to a dead one would hang until it
            // times out, and might land after the peer's own catch-up.
            let peers: Vec<Member> = self
                .topology
                .borrow()
                .peers
                .iter()
                .filter(|p| self.alive(&p.key))
                .cloned()
                .collect();
            if peers.is_empty() {
                continue;
            }
            let peer = peers[rand::random_range(0..peers.len())].clone();
            self.sync_soon(peer);
        }
    }

    /// The health table: this node, every peer's liveness, load, handshake
    /// age and replication state, and the totals.
    pub fn report(&self) -> serde_json::Value {
        let t = self.topology.borrow().clone();
        let links = match self.mesh.lock() {
            Ok(mut slot) => slot
                .as_mut()
                .and_then(|(mesh, _)| mesh.links().ok())
                .unwrap_or_default(),
            Err(_) => HashMap::new(),
        };
        let vv = self.read(|r| r.version_vector()).unwrap_or_default();
        let health = self.health.lock();
        let mut peers = Vec::new();
        for p in &t.peers {
            let h = health.as_ref().ok().and_then(|h| h.get(&p.key));
            let heard_ms = h
                .and_then(|h| h.last_heard)
                .map(|i| i.elapsed().as_millis() as u64);
            let beat = h.and_then(|h| h.heartbeat.as_ref());
            let link = links.get(p.wg.as_bytes());
            peers.push(serde_json::json!({
                "name": p.name.to_string(),
                "mesh_addr": p.mesh.to_string(),
                "alive": heard_ms.is_some_and(|ms| ms < DEAD_AFTER.as_millis() as u64),
                "last_heard_ms": heard_ms,
                "events": beat.map(|b| b.events),
                "in_sync": beat.map(|b| b.vv_digest == vv.digest()),
                "load": beat.map(|b| &b.load),
                "handshake_age_secs": link.and_then(|l| l.handshake_age_secs),
                "wg_rx_bytes": link.map(|l| l.rx_bytes),
                "wg_tx_bytes": link.map(|l| l.tx_bytes),
                "last_sync_ms": h.and_then(|h| h.last_sync).map(|i| i.elapsed().as_millis() as u64),
                "last_error": h.and_then(|h| h.last_error.clone()),
                "events_received": h.map_or(0, |h| h.events_in),
                "events_sent": h.map_or(0, |h| h.events_out),
                "bad_events": h.map_or(0, |h| h.bad_events),
            }));
        }
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "node": t.me.as_ref().map(|m| m.name.to_string()),
            "mesh_addr": t.me.as_ref().map(|m| m.mesh.to_string()),
            "events": vv.total(),
            "vv_digest": hex::encode(vv.digest()),
            "load": read_load(self.started),
            "peers": peers,
            "replication": {
                "sessions_ok": n(&self.totals.sessions_ok),
                "sessions_failed": n(&self.totals.sessions_failed),
                "bytes_in": n(&self.totals.bytes_in),
                "bytes_out": n(&self.totals.bytes_out),
                "events_in": n(&self.totals.events_in),
                "events_out": n(&self.totals.events_out),
                "bad_events": n(&self.totals.bad_events),
                "refused_connections": n(&self.totals.refused_connections),
                "versions_by_delta": n(&self.totals.versions_by_delta),
                "versions_ahead": n(&self.totals.versions_ahead),
                "manifests_whole": n(&self.totals.manifests_whole),
            },
        })
    }
}

/// About this many bytes of framed blobs go to the socket per write.
const SEND_BATCH: usize = 1 << 20;
/// The room a batch is made with: a batch is sent once it reaches
/// `SEND_BATCH`, and the last read into it may overshoot by up to 64 KiB.
const BATCH_CAPACITY: usize = SEND_BATCH + (64 << 10);

/// One frame as it goes on the wire: its length, then its postcard bytes.
fn frame_bytes(frame: &Frame, out: &mut Vec<u8>) -> anyhow::Result<()> {
    frame_bytes_with(frame, None, out)
}

/// A frame, and after it (in the same length) the feature bits if any.
fn frame_bytes_with(frame: &Frame, features: Option<u32>, out: &mut Vec<u8>) -> anyhow::Result<()> {
    let mut body = postcard::to_allocvec(frame).context("cannot encode a frame")?;
    if let Some(bits) = features {
        body.extend(postcard::to_allocvec(&bits).context("cannot encode a frame")?);
    }
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(())
}

/// A frame's body decoded, with the feature bits after it (0 when none
/// follow, as from an older node).
fn unframe(body: &[u8]) -> anyhow::Result<(Frame, u32)> {
    let (frame, rest) =
        postcard::take_from_bytes(body).context("the peer sent a frame that does not decode")?;
    let features = postcard::from_bytes(rest).unwrap_or(0);
    Ok((frame, features))
}

/// Stores a version sent ahead (blocking): the manifest rebuilt from the
/// base held here and checked against `target`, and the blobs new in it,
/// each verified. An error is this node's store failing; what the peer got
/// wrong is [`Taken::Refused`].
fn take_version(store: &crate::blobs::BlobStore, ahead: VersionAhead) -> anyhow::Result<Taken> {
    if store.contains(&ahead.target) {
        return Ok(Taken::Unusable);
    }
    let Ok(base) = store.manifest(&ahead.base) else {
        return Ok(Taken::Unusable);
    };
    let rebuilt = match crate::blobs::Rebuilt::from_delta(&ahead.delta, &base, ahead.target) {
        Ok(r) => r,
        Err(e) => return Ok(Taken::Refused(e)),
    };
    let wanted: foldhash::HashSet<Blake3Hash> =
        new_blobs(&rebuilt.delta, &base).into_iter().collect();
    let mut staged = Vec::new();
    let mut refused = None;
    if let Some(s) = rebuilt.stage(store)? {
        staged.push(s);
    }
    for (hash, blob) in ahead.blobs.iter().filter(|(h, _)| wanted.contains(h)) {
        match store.stage(*hash, blob.len() as u64, &mut &blob[..], false) {
            Ok(Some(s)) => staged.push(s),
            Ok(None) => {}
            Err(e @ crate::blobs::BlobError::HashMismatch { .. }) => {
                refused = Some(anyhow::Error::from(e));
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    // What verified is kept, as a fetch keeps it.
    store.commit(staged)?;
    if let Some(e) = refused {
        return Ok(Taken::Refused(e));
    }
    rebuilt.remember(store);
    Ok(Taken::Stored)
}

/// Reads the blobs `want` from the store (on a blocking thread) and sends
/// them, framed (`Blob` header and bytes, or `NoBlob`) and then `Done`, in
/// batches of about [`SEND_BATCH`] bytes. Stops when the receiver is gone.
fn frame_blobs(
    blobs: &crate::blobs::BlobStore,
    want: Vec<Blake3Hash>,
    tx: &tokio::sync::mpsc::Sender<io::Result<Vec<u8>>>,
    first: Vec<u8>,
) {
    let send = |batch: &mut Vec<u8>| {
        let full = std::mem::replace(batch, Vec::with_capacity(BATCH_CAPACITY));
        tx.blocking_send(Ok(full)).is_ok()
    };
    let fail = |e: io::Error| {
        let _ = tx.blocking_send(Err(e));
    };
    let framed = |frame: &Frame, batch: &mut Vec<u8>| {
        frame_bytes(frame, batch).map_err(|e| fail(io::Error::other(format!("{e:#}"))))
    };
    let mut batch = first;
    batch.reserve(BATCH_CAPACITY.saturating_sub(batch.len()));
    for hash in want {
        let mut file = match std::fs::File::open(blobs.path(&hash)) {
            Ok(f) => f,
            Err(_) => {
                if framed(&Frame::NoBlob(hash), &mut batch).is_err() {
                    return;
                }
                continue;
            }
        };
        let size = match file.metadata() {
            Ok(m) => m.len(),
            Err(e) => return fail(e),
        };
        if framed(&Frame::Blob { hash, size }, &mut batch).is_err() {
            return;
        }
        let mut left = size;
        while left > 0 {
            let room = BATCH_CAPACITY.saturating_sub(batch.len()).max(64 << 10);
            let take = left.min(room as u64) as usize;
            let at = batch.len();
            batch.resize(at + take, 0);
            if let Err(e) = file.read_exact(&mut batch[at..]) {
                return fail(io::Error::new(
                    e.kind(),
                    format!("blob {hash} shrank or cannot be read while it was sent: {e}"),
                ));
            }
            left -= take as u64;
            if batch.len() >= SEND_BATCH && !send(&mut batch) {
                return;
            }
        }
        if batch.len() >= SEND_BATCH && !send(&mut batch) {
            return;
        }
    }
    if framed(&Frame::Done, &mut batch).is_ok() {
        send(&mut batch);
    }
}

/// A buffer for the body of a frame announced as `len` (big-endian), if
/// the length is allowed.
fn frame_body(len: [u8; 4]) -> anyhow::Result<Vec<u8>> {
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        bail!("the peer sent a frame of {len} bytes (at most {MAX_FRAME})");
    }
    Ok(vec![0u8; len])
}

/// Whether a blocking read ended on its timeout (`SO_RCVTIMEO` reports
/// either kind).
fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// What a peer asked for in a fetch.
enum Ask {
    Blobs(Vec<Blake3Hash>),
    Version {
        base: Blake3Hash,
        target: Blake3Hash,
    },
}

/// A delta larger than this is not sent (the whole manifest streams
/// instead, as blobs do); it is far under [`MAX_FRAME`].
const MAX_DELTA: usize = 8 << 20;

/// Answers a `FetchVersion` (on a blocking thread): the delta from `base`
/// to `target` and the blobs new in it, as [`frame_blobs`] sends them; or
/// `NoBlob(target)` when this node cannot make the delta.
fn frame_version(
    blobs: &crate::blobs::BlobStore,
    base: Blake3Hash,
    target: Blake3Hash,
    tx: &tokio::sync::mpsc::Sender<io::Result<Vec<u8>>>,
) {
    let read = |h: &Blake3Hash| blobs.manifest(h).ok();
    let mut first = Vec::new();
    let made = match (read(&base), read(&target)) {
        (Some(b), Some(t)) => {
            let delta = t.delta_from(&b);
            let bytes = delta.encode();
            (bytes.len() <= MAX_DELTA).then(|| (new_blobs(&delta, &b), bytes))
        }
        _ => None,
    };
    let framed = match made {
        Some((want, delta)) => {
            frame_bytes(&Frame::ManifestDelta { target, delta }, &mut first).map(|()| want)
        }
        None => frame_bytes(&Frame::NoBlob(target), &mut first).map(|()| Vec::new()),
    };
    match framed {
        Ok(want) => frame_blobs(blobs, want, tx, first),
        Err(e) => {
            let _ = tx.blocking_send(Err(io::Error::other(format!("{e:#}"))));
        }
    }
}

/// Opens a connection to a node's replication port on the mesh.
async fn connect(mesh: Ipv4Addr) -> anyhow::Result<TcpStream> {
    let addr = SocketAddr::V4(SocketAddrV4::new(mesh, PORT));
    tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .with_context(|| format!("timed out connecting to {addr}"))?
        .with_context(|| format!("cannot connect to {addr}"))
}

/// Sends raw bytes as events to a peer, as this node: `makiatto debug
/// send-events`, for tests that play a peer gone bad. The peer judges them
/// exactly as it judges any session.
pub async fn send_raw(
    me: AuthorKey,
    cluster: EventId,
    vv: VersionVector,
    to: Ipv4Addr,
    events: Vec<Vec<u8>>,
) -> anyhow::Result<()> {
    let mut stream = connect(to).await?;
    let frames = [
        Frame::Hello(Hello {
            protocol: PROTOCOL,
            cluster,
            node: me,
            vv,
        }),
        Frame::Events(events),
        Frame::Done,
    ];
    let mut bytes = Vec::new();
    for frame in &frames {
        frame_bytes(frame, &mut bytes)?;
    }
    stream.write_all(&bytes).await?;
    // Read until the peer closes: its hello, what this node lacks, done.
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(FRAME_TIMEOUT, stream.read_to_end(&mut sink)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits a byte stream of frames (and blob bytes) back into what was
    /// sent: (hash, Some(bytes)) per blob, (hash, None) per `NoBlob`.
    fn unframe(mut wire: &[u8]) -> Vec<(Blake3Hash, Option<Vec<u8>>)> {
        let mut out = Vec::new();
        loop {
            let len = u32::from_be_bytes(wire[..4].try_into().unwrap()) as usize;
            let frame: Frame = postcard::from_bytes(&wire[4..4 + len]).unwrap();
            wire = &wire[4 + len..];
            match frame {
                Frame::Done => {
                    assert!(wire.is_empty(), "bytes after Done");
                    return out;
                }
                Frame::NoBlob(h) => out.push((h, None)),
                Frame::Blob { hash, size } => {
                    let (bytes, rest) = wire.split_at(size as usize);
                    out.push((hash, Some(bytes.to_vec())));
                    wire = rest;
                }
                _ => panic!("a frame out of place"),
            }
        }
    }

    /// What `frame_version` sends, in one piece.
    fn version_wire(
        store: crate::blobs::BlobStore,
        base: Blake3Hash,
        target: Blake3Hash,
    ) -> Vec<u8> {
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let sender = std::thread::spawn(move || frame_version(&store, base, target, &tx));
        let mut wire = Vec::new();
        while let Some(batch) = rx.blocking_recv() {
            wire.extend(batch.unwrap());
        }
        sender.join().unwrap();
        wire
    }

    #[test]
    fn a_version_is_sent_as_its_delta_and_its_new_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::blobs::BlobStore::open(dir.path()).unwrap();
        let put = |bytes: &[u8]| {
            let h = Blake3Hash::of(bytes);
            store.put(h, bytes.len() as u64, &mut &bytes[..]).unwrap();
            h
        };
        let entry = |hash, size| makiatto_events::FileEntry {
            hash,
            size,
            content_type: "text/plain".into(),
        };
        let mut base = Manifest::default();
        for i in 0..100u32 {
            let body = format!("file {i}");
            let h = put(body.as_bytes());
            base.insert(format!("f{i}.txt"), entry(h, body.len() as u64))
                .unwrap();
        }
        let mut target = base.clone();
        let changed = put(b"changed");
        target.insert("f7.txt".into(), entry(changed, 7)).unwrap();
        // Two paths, one new blob; one path reuses a blob of the base.
        target.insert("copy.txt".into(), entry(changed, 7)).unwrap();
        target
            .insert("again.txt".into(), base.files["f1.txt"].clone())
            .unwrap();
        target.files.remove("f9.txt");
        let (b, t) = (put(&base.encode()), put(&target.encode()));
        let absent = Blake3Hash::of(b"no such manifest");
        let wire = version_wire(crate::blobs::BlobStore::open(dir.path()).unwrap(), b, t);
        let len = u32::from_be_bytes(wire[..4].try_into().unwrap()) as usize;
        let Frame::ManifestDelta { target: got, delta } =
            postcard::from_bytes(&wire[4..4 + len]).unwrap()
        else {
            panic!("no delta first");
        };
        assert_eq!(got, t);
        let delta = makiatto_events::ManifestDelta::decode(&delta).unwrap();
        assert_eq!(Manifest::apply(&base, &delta).unwrap().hash(), t);
        assert_eq!(new_blobs(&delta, &base), vec![changed]);
        let blobs = unframe(&wire[4 + len..]);
        assert_eq!(blobs, vec![(changed, Some(b"changed".to_vec()))]);
        // Without the base (or the target) here: NoBlob, then Done.
        for (base, target) in [(absent, t), (b, absent)] {
            let wire = version_wire(
                crate::blobs::BlobStore::open(dir.path()).unwrap(),
                base,
                target,
            );
            assert_eq!(unframe(&wire), vec![(target, None)]);
        }
    }

    #[tokio::test]
    async fn the_follower_waits_for_a_version_being_taken_and_no_longer() {
        let taking = Arc::new(Taking::default());
        let (m, other) = (Blake3Hash::of(b"m"), Blake3Hash::of(b"other"));
        // Nothing being taken: no wait.
        let t = Instant::now();
        taking.wait(&m, Duration::from_secs(30)).await;
        assert!(t.elapsed() < Duration::from_secs(5));
        // Being taken, twice: the wait ends when both are done, not before.
        taking.start(m);
        taking.start(m);
        let waiter = tokio::spawn({
            let taking = taking.clone();
            async move { taking.wait(&m, Duration::from_secs(30)).await }
        });
        taking.end(&other);
        taking.end(&m);
        tokio::task::yield_now().await;
        assert!(
            !waiter.is_finished(),
            "another manifest's end, or one take of two, is not the end"
        );
        taking.end(&m);
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("woken when done")
            .unwrap();
        // A take that never ends: the wait gives up after its limit.
        taking.start(m);
        let t = Instant::now();
        taking.wait(&m, Duration::from_millis(50)).await;
        assert!(t.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn feature_bits_after_a_hello_are_invisible_to_older_nodes() {
        let hello = || {
            Frame::Hello(Hello {
                protocol: PROTOCOL,
                cluster: EventId::of(b"a cluster"),
                node: makiatto_events::SigningKey::from_bytes(&[2; 32]).public(),
                vv: VersionVector::default(),
            })
        };
        let mut wire = Vec::new();
        frame_bytes_with(&hello(), Some(FEATURES), &mut wire).unwrap();
        // An older node decodes the frame alone, as it always did.
        let old: Frame = postcard::from_bytes(&wire[4..]).unwrap();
        assert!(matches!(old, Frame::Hello(h) if h.protocol == PROTOCOL));
        let (frame, features) = super::unframe(&wire[4..]).unwrap();
        assert!(matches!(frame, Frame::Hello(_)));
        assert_eq!(features, FEATURES);
        // An older node's hello announces nothing.
        let mut wire = Vec::new();
        frame_bytes(&hello(), &mut wire).unwrap();
        assert_eq!(super::unframe(&wire[4..]).unwrap().1, 0);
    }

    #[test]
    fn a_version_sent_ahead_is_taken_only_when_it_checks_out() {
        let entry = |hash, size| makiatto_events::FileEntry {
            hash,
            size,
            content_type: "text/plain".into(),
        };
        let open = || {
            let dir = tempfile::tempdir().unwrap();
            let store = crate::blobs::BlobStore::open(dir.path()).unwrap();
            (dir, store)
        };
        let put = |store: &crate::blobs::BlobStore, bytes: &[u8]| {
            let h = Blake3Hash::of(bytes);
            store.put(h, bytes.len() as u64, &mut &bytes[..]).unwrap();
            h
        };
        let mut base = Manifest::default();
        for i in 0..20u32 {
            let body = format!("file {i}");
            base.insert(
                format!("f{i}.txt"),
                entry(Blake3Hash::of(body.as_bytes()), body.len() as u64),
            )
            .unwrap();
        }
        let mut target = base.clone();
        let new = b"new page".to_vec();
        let new_hash = Blake3Hash::of(&new);
        target
            .insert("new.txt".into(), entry(new_hash, new.len() as u64))
            .unwrap();
        let (b, t) = (Blake3Hash::of(&base.encode()), target.hash());
        let delta = target.delta_from(&base).encode();
        let stray = b"not named by the delta".to_vec();
        let ahead = |blobs: Vec<(Blake3Hash, Vec<u8>)>| VersionAhead {
            base: b,
            target: t,
            delta: delta.clone(),
            blobs,
        };
        let sent = || {
            vec![
                (new_hash, new.clone()),
                (Blake3Hash::of(&stray), stray.clone()),
            ]
        };

        // A node that holds the base takes the manifest and the new blob,
        // and nothing the delta does not name.
        let (_d, store) = open();
        put(&store, &base.encode());
        assert!(matches!(
            take_version(&store, ahead(sent())).unwrap(),
            Taken::Stored
        ));
        assert!(store.contains(&t) && store.contains(&new_hash));
        assert!(!store.contains(&Blake3Hash::of(&stray)));
        assert_eq!(store.manifest(&t).unwrap().files.len(), 21);
        // Once held, it is not taken again.
        assert!(matches!(
            take_version(&store, ahead(sent())).unwrap(),
            Taken::Unusable
        ));

        // Without the base, nothing is stored.
        let (_d, store) = open();
        assert!(matches!(
            take_version(&store, ahead(sent())).unwrap(),
            Taken::Unusable
        ));
        assert!(!store.contains(&t) && !store.contains(&new_hash));

        // A blob whose bytes are not its hash is refused.
        let (_d, store) = open();
        put(&store, &base.encode());
        let forged = vec![(new_hash, b"forged!!".to_vec())];
        assert!(matches!(
            take_version(&store, ahead(forged)).unwrap(),
            Taken::Refused(_)
        ));
        assert!(!store.contains(&new_hash));
        // So is a delta that does not give the target.
        let (_d, store) = open();
        put(&store, &base.encode());
        let mut wrong = ahead(sent());
        wrong.target = Blake3Hash::of(b"another manifest");
        assert!(matches!(
            take_version(&store, wrong).unwrap(),
            Taken::Refused(_)
        ));
    }

    /// The gossip frames as they go on the wire, pinned by the fixtures in
    /// `replay-tests/fixtures/frames/` (one hex file per frame): nodes of
    /// two builds talk during a rolling upgrade only while these bytes stay.
    #[test]
    fn gossip_frames_keep_their_wire_bytes() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../replay-tests/fixtures/frames"
        );
        let bless = std::env::var("MAKIATTO_BLESS").is_ok_and(|v| v == "1");
        let key = |seed: u8| makiatto_events::SigningKey::from_bytes(&[seed; 32]).public();
        let cluster = EventId::of(b"golden cluster");
        let node = key(3);
        let mut vv = VersionVector::default();
        vv.observe(key(1), 1, &EventId::of(b"first"));
        vv.observe(key(1), 2, &EventId::of(b"second"));
        vv.observe(key(2), 1, &EventId::of(b"third"));
        let (h1, h2) = (Blake3Hash::of(b"blob one"), Blake3Hash::of(b"blob two"));
        let hello = || {
            Frame::Hello(Hello {
                protocol: PROTOCOL,
                cluster,
                node,
                vv: vv.clone(),
            })
        };
        let framed = |frame: &Frame, features: Option<u32>| {
            let mut wire = Vec::new();
            frame_bytes_with(frame, features, &mut wire).unwrap();
            wire
        };
        let beat = Heartbeat {
            protocol: PROTOCOL,
            cluster,
            node,
            events: 3,
            vv_digest: vv.digest(),
            load: Load {
                load1_milli: 1_250,
                cpus: 4,
                mem_available_mb: 2_048,
                mem_total_mb: 4_096,
                uptime_secs: 3_600,
            },
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("hello", framed(&hello(), Some(FEATURES))),
            ("hello-without-features", framed(&hello(), None)),
            (
                "events",
                framed(
                    &Frame::Events(vec![b"an event".to_vec(), vec![0, 1, 2, 255]]),
                    None,
                ),
            ),
            ("done", framed(&Frame::Done, None)),
            (
                "fetch",
                framed(
                    &Frame::Fetch(Fetch {
                        protocol: PROTOCOL,
                        cluster,
                        node,
                        want: vec![h1, h2],
                    }),
                    None,
                ),
            ),
            (
                "blob",
                framed(
                    &Frame::Blob {
                        hash: h1,
                        size: 1_234_567,
                    },
                    None,
                ),
            ),
            ("no-blob", framed(&Frame::NoBlob(h2), None)),
            (
                "fetch-version",
                framed(
                    &Frame::FetchVersion(FetchVersion {
                        protocol: PROTOCOL,
                        cluster,
                        node,
                        base: h1,
                        target: h2,
                    }),
                    None,
                ),
            ),
            (
                "manifest-delta",
                framed(
                    &Frame::ManifestDelta {
                        target: h2,
                        delta: b"a delta".to_vec(),
                    },
                    None,
                ),
            ),
            (
                "version-ahead",
                framed(
                    &Frame::VersionAhead(VersionAhead {
                        base: h1,
                        target: h2,
                        delta: b"a delta".to_vec(),
                        blobs: vec![(h1, b"blob one".to_vec())],
                    }),
                    None,
                ),
            ),
            ("heartbeat", postcard::to_allocvec(&beat).unwrap()),
        ];
        for (name, built) in cases {
            let path = format!("{dir}/{name}.hex");
            let recorded = match std::fs::read_to_string(&path) {
                Ok(hex) => hex::decode(hex.trim()).unwrap(),
                Err(_) if bless => {
                    std::fs::create_dir_all(dir).unwrap();
                    std::fs::write(&path, hex::encode(&built) + "\n").unwrap();
                    built.clone()
                }
                Err(e) => panic!("{path} is missing ({e}); write it with MAKIATTO_BLESS=1"),
            };
            assert_eq!(
                hex::encode(&built),
                hex::encode(&recorded),
                "{name}: the wire bytes of a gossip frame changed"
            );
            // And the recorded bytes still decode to the same frame.
            if name == "heartbeat" {
                let back: Heartbeat = postcard::from_bytes(&recorded).unwrap();
                assert_eq!(postcard::to_allocvec(&back).unwrap(), recorded);
                continue;
            }
            let (frame, features) = super::unframe(&recorded[4..]).unwrap();
            let expected = if name == "hello" { FEATURES } else { 0 };
            assert_eq!(features, expected, "{name}: feature bits");
            let features = (name == "hello").then_some(features);
            assert_eq!(framed(&frame, features), recorded, "{name}: decodes back");
        }
    }

    #[test]
    fn blobs_are_framed_in_batches_that_parse_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::blobs::BlobStore::open(dir.path()).unwrap();
        // Small ones, one larger than a batch, and one the store lacks.
        let mut blobs: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; 100 + usize::from(i)]).collect();
        blobs.insert(
            10,
            (0..SEND_BATCH * 3 + 7).map(|i| (i % 253) as u8).collect(),
        );
        let mut want = Vec::new();
        for b in &blobs {
            let h = Blake3Hash::of(b);
            store.put(h, b.len() as u64, &mut &b[..]).unwrap();
            want.push(h);
        }
        let absent = Blake3Hash::of(b"absent");
        want.insert(20, absent);
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let reader = std::thread::spawn({
            let want = want.clone();
            move || frame_blobs(&store, want, &tx, Vec::new())
        });
        let mut wire = Vec::new();
        let mut batches = 0;
        while let Some(batch) = rx.blocking_recv() {
            let batch = batch.unwrap();
            assert!(batch.len() <= BATCH_CAPACITY + 128);
            wire.extend(batch);
            batches += 1;
        }
        reader.join().unwrap();
        assert!(batches >= 3, "a large blob spans batches ({batches})");
        let got = unframe(&wire);
        assert_eq!(got.len(), want.len());
        let mut blobs = blobs.into_iter();
        for ((hash, bytes), asked) in got.into_iter().zip(&want) {
            assert_eq!(hash, *asked);
            if hash == absent {
                assert!(bytes.is_none());
            } else {
                assert_eq!(bytes, blobs.next());
            }
        }
    }
}
