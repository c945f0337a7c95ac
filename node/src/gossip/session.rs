//! Sessions: started by this node (a push, a catch-up, anti-entropy) or
//! by a peer, each driving `replication::session` over one TCP
//! connection: the hellos, then the plan sent (feed chunks read from the
//! log on a blocking thread) while what the peer sends is absorbed. When
//! to start one is `replication::schedule`'s decision.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::bail;
use makiatto_core::VersionVector;
use makiatto_core::replication::fetch::{self, Opening};
use makiatto_core::replication::frame::{self, Features, Frame, Hello, PROTOCOL};
use makiatto_core::replication::{FRAME_TIMEOUT, Handshake, Member, Received, Session, Step};
use makiatto_events::{AuthorKey, EventId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Gossip;
use super::wire::connect;
use crate::control;

impl Gossip {
    /// Events were appended here: hand them now to every peer that is up.
    /// A peer that is down is left alone: when it is back, its heartbeats
    /// show it behind and it catches up itself, in one session.
    pub(super) fn push(self: &Arc<Self>) {
        for peer in self.liveness.topology().peers {
            if self.liveness.alive(&peer.key) {
                self.sync_soon(peer);
            }
        }
    }

    /// Runs a session with `peer` soon; if one is running, once more after it.
    pub(super) fn sync_soon(self: &Arc<Self>, peer: Member) {
        let start = self.schedule.lock().is_ok_and(|mut s| s.want(peer.key));
        if start {
            self.run_sessions(peer);
        }
    }

    /// A heartbeat showed this node behind `peer`: one catch-up session,
    /// unless another catch-up or a session with that peer is running.
    pub(super) fn catch_up(self: &Arc<Self>, peer: Member, theirs: u64, ours: u64) {
        let start = self.schedule.lock().is_ok_and(|mut s| s.catch_up(peer.key));
        if start {
            tracing::info!(peer = %peer.name, theirs, ours, "catching up");
            self.run_sessions(peer);
        }
    }

    /// Runs sessions with `peer` for as long as the schedule wants more.
    fn run_sessions(self: &Arc<Self>, peer: Member) {
        let gossip = self.clone();
        tokio::spawn(async move {
            loop {
                let ok = gossip.initiate(&peer).await;
                // Unreachable: the schedule drops what was pending; the
                // peer catches up by itself when it is back.
                let again = gossip
                    .schedule
                    .lock()
                    .is_ok_and(|mut s| s.ended(peer.key, ok));
                if !again {
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

    /// Answers a connection a peer opened: a session or a fetch.
    pub(super) async fn serve(self: Arc<Self>, stream: TcpStream, from: SocketAddr) {
        let topology = self.liveness.topology();
        let peer = match from {
            SocketAddr::V4(v4) => topology.peer_at(*v4.ip()).cloned(),
            SocketAddr::V6(_) => None,
        };
        let Some(peer) = peer else {
            self.health
                .totals
                .refused_connections
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%from, "refused a mesh connection from an address that is no node");
            return;
        };
        let Some(_connection) = Admitted::connection(&self, peer.key) else {
            self.refuse_busy(&peer, "connections");
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
        let result = match fetch::open(first, features, &peer, topology.cluster) {
            Ok(Opening::Session(first, features)) => {
                let Some(_session) = Admitted::session(&self, peer.key) else {
                    self.refuse_busy(&peer, "sessions");
                    return;
                };
                let result = self.session(stream, &peer, Some((first, features))).await;
                self.record(&peer, result);
                return;
            }
            Ok(Opening::Fetch(ask)) => self.serve_fetch(stream, ask).await,
            Err(e) => Err(e.into()),
        };
        if let Err(e) = result {
            tracing::info!(peer = %peer.name, error = %format!("{e:#}"), "serving blobs to a peer failed");
        }
    }

    /// A peer's connection closed unanswered: it holds as many
    /// `what` open here as a peer may (`replication::incoming`).
    fn refuse_busy(&self, peer: &Member, what: &str) {
        self.health
            .totals
            .refused_busy
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(peer = %peer.name, "refused a connection: the peer holds as many {what} open here as it may");
    }

    /// One session on an open connection: exchange version vectors, stream
    /// each other the difference. Returns (events sent, events received).
    async fn session(
        &self,
        stream: TcpStream,
        peer: &Member,
        first: Option<(Frame, Features)>,
    ) -> anyhow::Result<(u64, u64)> {
        let _ = stream.set_nodelay(true);
        let Some(identity) = self.liveness.topology().identity() else {
            bail!("this node has no mesh identity yet");
        };
        let ours = self.read(|r| r.version_vector())?;
        let (mut reader, mut writer) = stream.into_split();
        let handshake = Handshake::new(identity, peer.clone(), ours, Features::OURS);
        let (hello, features) = handshake.hello();
        self.write_frame_with(&mut writer, &hello, Some(features))
            .await?;
        let (first, features) = match first {
            Some(first) => first,
            None => self.read_frame_with(&mut reader).await?,
        };
        let Session {
            mut outbound,
            mut inbound,
        } = handshake.on_hello(first, features)?;
        let send = async {
            loop {
                match outbound.step() {
                    Step::SendAhead => self.send_ahead(&mut writer, peer).await?,
                    Step::SendBlobsAhead => self.send_blobs_ahead(&mut writer, peer).await?,
                    Step::Read(read) => {
                        let log = self.read(|r| Ok(r.log()))?;
                        let (batch, next) = tokio::task::spawn_blocking(move || {
                            let log = log
                                .lock()
                                .map_err(|_| anyhow::anyhow!("log lock poisoned"))?;
                            anyhow::Ok(log.feed_chunk(&read.author, read.from, read.max_bytes)?)
                        })
                        .await??;
                        outbound.read(batch, next);
                    }
                    Step::Send(frame) => self.write_frame(&mut writer, &frame).await?,
                    Step::Finished => break,
                }
            }
            writer.shutdown().await.ok();
            anyhow::Ok(outbound.events_sent())
        };
        let receive = async {
            let mut received = 0u64;
            let mut takes = Vec::new();
            loop {
                match inbound.on_frame(self.read_frame(&mut reader).await?)? {
                    Received::Events(batch) => received += self.absorb(peer, batch).await?,
                    Received::TakeAhead(ahead) => takes.push(self.start_take(peer, ahead)),
                    Received::DropAhead { bytes } => {
                        tracing::warn!(peer = %peer.name, bytes, "a peer sent more ahead than a node offers; dropped");
                    }
                    Received::FetchAhead(blobs) => self.fetch_ahead_soon(peer, blobs),
                    Received::DropBlobsAhead { blobs } => {
                        tracing::warn!(peer = %peer.name, blobs, "a peer announced more blobs ahead than a node sends; dropped");
                    }
                    Received::Done => {
                        self.finish_takes(peer, takes).await;
                        // Everything the peer held is here now, this
                        // node's own feed included.
                        self.liveness.session_completed();
                        return anyhow::Ok(received);
                    }
                }
            }
        };
        let (sent, received) = tokio::try_join!(send, receive)?;
        self.health.sent(peer, sent);
        Ok((sent, received))
    }

    /// Verifies and appends a batch a peer sent; returns how many it stored.
    async fn absorb(&self, peer: &Member, batch: Vec<Vec<u8>>) -> anyhow::Result<u64> {
        self.health
            .totals
            .events_in
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let replica = self.replica.clone();
        let committer = self.committer.clone();
        let mesh = self.mesh.clone();
        let (ingested, topology) = tokio::task::spawn_blocking(move || {
            let ingested = control::ingest(
                &replica,
                &committer,
                batch.into_iter().map(Ok).collect(),
                control::Arrival::Replicated,
            )?;
            let topology = (ingested.stored > 0)
                .then(|| crate::topology::follow_peers(&replica, &mesh))
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
            self.changes.stored();
        }
        self.health
            .received(peer, ingested.stored as u64, ingested.bad.len() as u64);
        if let Some(first) = ingested.bad.first() {
            tracing::warn!(
                peer = %peer.name,
                count = ingested.bad.len(),
                first = %first,
                "a peer sent events that fail verification; they were refused"
            );
        }
        Ok(ingested.stored as u64)
    }

    /// Admits the events held for their stamp that the clock has reached
    /// (`makiatto_core::skew`): an empty commit releases them.
    pub(super) async fn release_held(&self) -> anyhow::Result<usize> {
        let replica = self.replica.clone();
        let committer = self.committer.clone();
        let mesh = self.mesh.clone();
        let (committed, topology) = tokio::task::spawn_blocking(move || {
            let ingested = control::ingest(
                &replica,
                &committer,
                Vec::new(),
                control::Arrival::Replicated,
            )?;
            let topology = (ingested.committed > 0)
                .then(|| crate::topology::follow_peers(&replica, &mesh))
                .flatten();
            Ok::<_, String>((ingested.committed, topology))
        })
        .await?
        .map_err(|e| anyhow::anyhow!(e))?;
        if let Some(t) = topology {
            self.set_topology(t);
        }
        if committed > 0 {
            tracing::info!(
                events = committed,
                "events held for their stamp are admitted: the clock reached them"
            );
            self.changes.stored();
        }
        Ok(committed)
    }

    /// Records a session's outcome; returns whether it succeeded.
    fn record(&self, peer: &Member, result: anyhow::Result<(u64, u64)>) -> bool {
        let ok = result.is_ok();
        match result {
            Ok((sent, received)) => {
                self.health.session_ok(peer);
                if sent + received > 0 {
                    tracing::info!(peer = %peer.name, sent, received, "replicated");
                }
            }
            Err(e) => {
                let message = format!("{e:#}");
                if self.health.session_failed(peer, &message) {
                    tracing::info!(peer = %peer.name, error = %message, "replication with a peer failed; will retry");
                }
            }
        }
        ok
    }
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
    for f in &frames {
        frame::encode(f, &mut bytes)?;
    }
    stream.write_all(&bytes).await?;
    // Read until the peer closes: its hello, what this node lacks, done.
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(FRAME_TIMEOUT, stream.read_to_end(&mut sink)).await;
    Ok(())
}

/// What [`flood_sessions`] saw.
#[derive(Debug, Default, serde::Serialize)]
pub struct Flood {
    /// Connections opened, each with a hello that asked for everything.
    pub connections: u64,
    /// Answered: the node sent its log.
    pub answered: u64,
    /// Closed by the node before a byte came back.
    pub refused: u64,
    /// Failed to connect, or broke off.
    pub failed: u64,
    /// Bytes the node sent back.
    pub bytes: u64,
}

/// Floods a peer's replication port as this node, a member: `connections`
/// at once, each a session whose hello claims an empty version vector (so
/// asks for the peer's whole log) and sends nothing, opened again as soon
/// as it ends, for `seconds`: `makiatto debug flood-sessions`, for the
/// hostile-input test of a member flooding anti-entropy.
pub async fn flood_sessions(
    me: AuthorKey,
    cluster: EventId,
    to: Ipv4Addr,
    connections: usize,
    seconds: u64,
) -> anyhow::Result<Flood> {
    let mut ask = Vec::new();
    frame::encode_with(
        &Frame::Hello(Hello {
            protocol: PROTOCOL,
            cluster,
            node: me,
            vv: VersionVector::default(),
        }),
        Some(Features::OURS),
        &mut ask,
    )?;
    frame::encode(&Frame::Done, &mut ask)?;
    let ask = Arc::new(ask);
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(seconds);
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let ask = ask.clone();
            tokio::spawn(async move {
                let mut flood = Flood::default();
                while tokio::time::Instant::now() < until {
                    flood.connections += 1;
                    let Ok(mut stream) = connect(to).await else {
                        flood.failed += 1;
                        continue;
                    };
                    let mut sink = Vec::new();
                    let read = async {
                        stream.write_all(&ask).await?;
                        stream.read_to_end(&mut sink).await
                    };
                    match tokio::time::timeout(FRAME_TIMEOUT, read).await {
                        Ok(Ok(_)) if sink.is_empty() => flood.refused += 1,
                        Ok(Ok(_)) => flood.answered += 1,
                        // A reset before a byte came back is a refusal too.
                        Ok(Err(_)) if sink.is_empty() => flood.refused += 1,
                        _ => flood.failed += 1,
                    }
                    flood.bytes += sink.len() as u64;
                }
                flood
            })
        })
        .collect();
    let mut total = Flood::default();
    for w in workers {
        let f = w.await?;
        total.connections += f.connections;
        total.answered += f.answered;
        total.refused += f.refused;
        total.failed += f.failed;
        total.bytes += f.bytes;
    }
    Ok(total)
}

/// A peer's connection, or its session, counted in `Gossip::incoming`
/// while it lasts.
struct Admitted<'a> {
    gossip: &'a Gossip,
    peer: AuthorKey,
    session: bool,
}

impl<'a> Admitted<'a> {
    fn connection(gossip: &'a Gossip, peer: AuthorKey) -> Option<Admitted<'a>> {
        Self::admit(gossip, peer, false)
    }

    fn session(gossip: &'a Gossip, peer: AuthorKey) -> Option<Admitted<'a>> {
        Self::admit(gossip, peer, true)
    }

    fn admit(gossip: &'a Gossip, peer: AuthorKey, session: bool) -> Option<Admitted<'a>> {
        let mut incoming = gossip.incoming.lock().ok()?;
        let admitted = if session {
            incoming.session(peer)
        } else {
            incoming.opened(peer)
        };
        drop(incoming);
        // Made only when admitted: an `Admitted` dropped gives its place back.
        admitted.then(|| Admitted {
            gossip,
            peer,
            session,
        })
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if let Ok(mut incoming) = self.gossip.incoming.lock() {
            if self.session {
                incoming.session_ended(self.peer);
            } else {
                incoming.closed(self.peer);
            }
        }
    }
}
