//! Replication, simulated deterministically (in the manner of FoundationDB
//! and TigerBeetle): N replicas run the node's own replication state
//! machine (`makiatto_core::replication`) over a [`Network`] that drops,
//! duplicates, reorders and partitions, while a [`History`] is written
//! into them through whichever node its authors happen to reach, events
//! are corrupted on the wire, and nodes crash and restart.
//!
//! What a node decides, the simulation does not re-implement: it only
//! moves bytes and carries out what the state machine asks for.
//! - **Heartbeats** are datagrams (`Heartbeat::encode`), every
//!   `HEARTBEAT_EVERY`, lost and duplicated and reordered as they come;
//!   [`Liveness`] says who is alive and when a catch-up starts.
//! - **Sessions** run over connections: each frame goes on the wire
//!   (`frame::encode`) as one segment of a stream, decoded at the other
//!   end. The stream does what TCP does: segments are put back in order,
//!   duplicates are dropped, and a segment lost at random is sent again;
//!   a partition or a crash breaks the connections across it (what was cut
//!   is not resent), and a session that waits longer than `FRAME_TIMEOUT`
//!   for a frame fails. [`Handshake`], [`Outbound`] and [`Inbound`] decide
//!   what is sent (the plan, in batches of `max_bytes`) and what a frame
//!   asks; events go through `Log::append_bytes`.
//! - **When** a session starts is the [`Schedule`]'s decision: a push to
//!   every live peer when a client's events are stored, anti-entropy with
//!   a live peer ([`anti_entropy::pick`], the run's RNG), a catch-up when
//!   a heartbeat says so; one session per peer at a time.
//! - Each replica announces this build's features or none (an older
//!   build), so a mixed cluster is what runs.
//!
//! Invariants are checked after every step (what is stored is what is
//! folded; every corrupted event is refused) and, after every heal, every
//! replica runs a session with every other until they hold the same
//! events and the convergence checks run: identical version vectors,
//! fingerprints and verdicts, nothing lost, nothing left waiting.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use makiatto_core::replication::frame::{self, Features, Frame};
use makiatto_core::replication::{
    FRAME_TIMEOUT, HEARTBEAT_EVERY, Handshake, Heartbeat, Identity, Inbound, Liveness, Member,
    Moment, Outbound, Received, Schedule, Session, Step, anti_entropy,
};
use makiatto_core::{AppendOutcome, IngestError};
use makiatto_events::{EventId, Load, NodeName, SigningKey, WgPublicKey};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::generator::{Expected, History};
use crate::network::{Faults, Network, NetworkStats, Sent};
use crate::replica::{Replica, assert_same_state, fingerprints};
use crate::stream::{Incoming, Outgoing};

/// Rounds of sessions allowed after a heal before convergence is declared
/// failed. Each round every replica runs a session with every other.
pub const MAX_ROUNDS: usize = 200;

/// How much time one tick of the network is.
pub const TICK: Duration = Duration::from_millis(100);

/// What crosses the simulated wire.
#[derive(Debug, Clone)]
pub enum Packet {
    /// A heartbeat datagram.
    Heartbeat(Vec<u8>),
    /// One frame of a connection's stream, as it goes on the wire; `seq`
    /// numbers the frames of one direction of one connection.
    Segment {
        connection: u64,
        seq: u64,
        bytes: Vec<u8>,
    },
}

/// The knobs of one run.
#[derive(Debug, Clone, Copy)]
pub struct SimConfig {
    pub replicas: usize,
    /// About how many bytes of events go in one `Events` frame (a
    /// session's batch; at least one seq's worth).
    pub max_bytes: usize,
    pub faults: Faults,
    /// Probability that an `Events` frame has one bit flipped in one event.
    pub corrupt: f64,
    /// Per step, probability that one replica crashes and restarts.
    pub crash: f64,
    /// Per step, probability of a partition (or, when partitioned, a heal).
    pub partition: f64,
    /// Per step and replica, probability that its anti-entropy timer fires.
    pub anti_entropy: f64,
}

impl SimConfig {
    /// A random configuration: small budgets and harsh faults included.
    pub fn random(rng: &mut impl Rng) -> SimConfig {
        SimConfig {
            replicas: rng.random_range(2..=5),
            max_bytes: [300, 2_048, 16_384, 1 << 20][rng.random_range(0..4)],
            faults: Faults {
                drop: [0.0, 0.05, 0.2, 0.4][rng.random_range(0..4)],
                duplicate: [0.0, 0.1, 0.3][rng.random_range(0..3)],
                max_delay: rng.random_range(1..20),
            },
            corrupt: [0.0, 0.02, 0.1][rng.random_range(0..3)],
            crash: [0.0, 0.01, 0.05][rng.random_range(0..3)],
            partition: [0.02, 0.05, 0.1][rng.random_range(0..3)],
            anti_entropy: [0.02, 0.1, 0.3][rng.random_range(0..3)],
        }
    }
}

/// What happened in a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimReport {
    pub events: usize,
    pub steps: u64,
    pub heals: usize,
    pub crashes: usize,
    pub corrupted: u64,
    /// The most rounds of sessions one convergence took.
    pub max_rounds: usize,
    /// Sessions a replica started that succeeded, and that failed.
    pub sessions_ok: u64,
    pub sessions_failed: u64,
    /// Catch-ups heartbeats started.
    pub catch_ups: u64,
    pub network: NetworkStats,
}

/// One replica: its log and projections, and the replication state it
/// keeps in memory (lost in a crash).
struct Node {
    replica: Replica,
    member: Member,
    features: Features,
    liveness: Liveness,
    schedule: Schedule,
    /// The tick of its next heartbeat.
    next_beat: u64,
}

/// One end of a connection.
struct End {
    state: EndState,
    outgoing: Outgoing,
    incoming: Incoming,
    /// The tick a frame was last taken (or the end made).
    progress: u64,
    /// Its session completed: everything sent, `Done` received.
    finished: bool,
}

enum EndState {
    /// Waiting for the peer's hello.
    Hello(Handshake),
    /// Past the hellos; the outbound side has sent everything.
    Open(Inbound),
    /// Between the two (taken out while it changes).
    Changing,
}

/// A connection between a replica that started a session and its peer.
struct Connection {
    initiator: usize,
    responder: usize,
    /// The initiator's end, and the responder's once its first segment
    /// arrived.
    ends: [Option<End>; 2],
}

/// One deterministic run.
pub struct Simulation {
    seed: u64,
    rng: ChaCha20Rng,
    config: SimConfig,
    history: History,
    cluster: EventId,
    nodes: Vec<Node>,
    /// Per replica, how many corrupted events it was sent (each must be
    /// refused as invalid).
    corrupted_sent: Vec<u64>,
    network: Network<Packet>,
    connections: BTreeMap<u64, Connection>,
    next_connection: u64,
    injected: usize,
    report: SimReport,
}

impl Simulation {
    /// A run of `history` over replicas configured by `config`, all
    /// randomness drawn from `seed`.
    pub fn new(seed: u64, history: History, config: SimConfig) -> Simulation {
        let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x5151_5151);
        let nodes = (0..config.replicas)
            .map(|i| Node {
                replica: Replica::new(),
                member: member(i),
                features: if rng.random_bool(0.7) {
                    Features::OURS
                } else {
                    Features::NONE
                },
                liveness: Liveness::default(),
                schedule: Schedule::default(),
                next_beat: 0,
            })
            .collect();
        Simulation {
            seed,
            rng,
            cluster: EventId::of(format!("simulated cluster {seed}").as_bytes()),
            network: Network::new(config.replicas, seed ^ 0x0a11_ce55, config.faults),
            nodes,
            corrupted_sent: vec![0; config.replicas],
            connections: BTreeMap::new(),
            next_connection: 0,
            config,
            history,
            injected: 0,
            report: SimReport::default(),
        }
    }

    /// Writes the whole history while faults happen, heals, and checks
    /// convergence after every heal.
    pub fn run(mut self) -> SimReport {
        while self.injected < self.history.events().len() {
            self.step();
        }
        self.heal_and_converge();
        self.report.events = self.history.events().len();
        self.report.network = self.network.stats();
        self.report
    }

    fn step(&mut self) {
        self.report.steps += 1;
        self.network.tick();
        while self.network.has_due() {
            self.deliver_next();
        }
        self.beat();
        self.time_out();
        if self.rng.random_bool(0.5) {
            self.inject();
        }
        for node in 0..self.nodes.len() {
            if self.rng.random_bool(self.config.anti_entropy) {
                self.anti_entropy(node);
            }
        }
        if self.rng.random_bool(self.config.crash) {
            let node = self.rng.random_range(0..self.nodes.len());
            self.crash(node);
        }
        if self.rng.random_bool(self.config.partition) {
            if self.network.is_partitioned() {
                self.heal_and_converge();
            } else {
                self.partition();
            }
        }
        self.check_step_invariants();
    }

    fn now(&self) -> Moment {
        Moment::after(TICK * self.network.now() as u32)
    }

    fn identity(&self, node: usize) -> Identity {
        Identity {
            cluster: self.cluster,
            node: self.nodes[node].member.key,
        }
    }

    /// Every replica but `node`, as members of its mesh.
    fn peers(&self, node: usize) -> Vec<Member> {
        (0..self.nodes.len())
            .filter(|p| *p != node)
            .map(|p| self.nodes[p].member.clone())
            .collect()
    }

    /// The replica that is `member` (a node knows a sender by its mesh
    /// address).
    fn index_of(&self, member: &Member) -> usize {
        self.nodes
            .iter()
            .position(|n| n.member.key == member.key)
            .expect("a member is a replica")
    }

    /// Every replica whose heartbeat is due sends it to every peer.
    fn beat(&mut self) {
        let every = (HEARTBEAT_EVERY.as_millis() / TICK.as_millis()).max(1) as u64;
        for node in 0..self.nodes.len() {
            if self.nodes[node].next_beat > self.network.now() {
                continue;
            }
            self.nodes[node].next_beat = self.network.now() + every;
            let beat = Heartbeat::new(
                self.identity(node),
                self.nodes[node].replica.version_vector(),
                Load::default(),
            );
            let bytes = beat.encode().expect("a heartbeat encodes");
            for peer in 0..self.nodes.len() {
                if peer != node {
                    self.network
                        .send(node, peer, Packet::Heartbeat(bytes.clone()));
                }
            }
        }
    }

    /// A heartbeat arrived at `to` from `from`'s address.
    fn heard(&mut self, from: usize, to: usize, bytes: &[u8]) {
        let beat = Heartbeat::decode(bytes).expect("heartbeats are not corrupted");
        let (identity, now) = (self.identity(to), self.now());
        let peer = self.nodes[from].member.clone();
        let node = &mut self.nodes[to];
        let hearing =
            node.liveness
                .heard(identity, &peer, beat, node.replica.version_vector(), now);
        if hearing.is_some_and(|h| h.catch_up) && node.schedule.catch_up(peer.key) {
            self.report.catch_ups += 1;
            self.open(to, from);
        }
    }

    /// The next history event reaches a random replica, as `maki` would
    /// send it: first the author's earlier events that replica lacks (the
    /// outbox, which the client works out by asking the replica), then the
    /// event. The replica pushes to every peer it hears alive.
    fn inject(&mut self) {
        let Some(event) = self.history.events().get(self.injected).cloned() else {
            return;
        };
        self.injected += 1;
        let node = self.rng.random_range(0..self.nodes.len());
        let mut outbox = vec![event.to_bytes().to_vec()];
        let mut prev = event.header().prev;
        while let Some(id) = prev.filter(|id| !self.nodes[node].replica.stores(id)) {
            let earlier = self.history.event(&id);
            outbox.push(earlier.to_bytes().to_vec());
            prev = earlier.header().prev;
        }
        outbox.reverse();
        let report = self.nodes[node].replica.receive(&outbox);
        assert!(
            matches!(
                report.outcomes.last(),
                Some(AppendOutcome::Stored { id, .. }) if *id == event.id()
            ),
            "seed {}: a client's event with its outbox was not stored: {:?}",
            self.seed,
            report.outcomes
        );
        let now = self.now();
        for peer in self.peers(node) {
            if self.nodes[node].liveness.alive(&peer.key, now) {
                let to = self.index_of(&peer);
                self.want(node, to);
            }
        }
    }

    /// `node`'s anti-entropy timer fired: a session with a live peer.
    fn anti_entropy(&mut self, node: usize) {
        let peers = self.peers(node);
        let live: Vec<&Member> = self.nodes[node].liveness.live(&peers, self.now());
        if let Some(peer) = anti_entropy::pick(&live, &mut self.rng) {
            let to = self.index_of(peer);
            self.want(node, to);
        }
    }

    /// `from` wants a session with `to` (a push or anti-entropy).
    fn want(&mut self, from: usize, to: usize) {
        let key = self.nodes[to].member.key;
        if self.nodes[from].schedule.want(key) {
            self.open(from, to);
        }
    }

    /// `from` connects to `to` and sends its hello.
    fn open(&mut self, from: usize, to: usize) {
        let id = self.next_connection;
        self.next_connection += 1;
        let handshake = Handshake::new(
            self.identity(from),
            self.nodes[to].member.clone(),
            self.nodes[from].replica.version_vector().clone(),
            self.nodes[from].features,
        )
        .with_batch_bytes(self.config.max_bytes);
        let (hello, features) = handshake.hello();
        let mut end = self.end(EndState::Hello(handshake));
        self.send_frame(id, from, to, &mut end, &hello, Some(features));
        self.connections.insert(
            id,
            Connection {
                initiator: from,
                responder: to,
                ends: [Some(end), None],
            },
        );
    }

    fn end(&self, state: EndState) -> End {
        End {
            state,
            outgoing: Outgoing::default(),
            incoming: Incoming::default(),
            progress: self.network.now(),
            finished: false,
        }
    }

    /// Puts one frame on the wire; a segment lost at random is sent again
    /// (the stream retransmits), one cut by a partition is gone.
    fn send_frame(
        &mut self,
        connection: u64,
        from: usize,
        to: usize,
        end: &mut End,
        frame: &Frame,
        features: Option<Features>,
    ) {
        let mut bytes = Vec::new();
        frame::encode_with(frame, features, &mut bytes).expect("a frame encodes");
        let seq = end.outgoing.number();
        loop {
            let packet = Packet::Segment {
                connection,
                seq,
                bytes: bytes.clone(),
            };
            if self.network.send(from, to, packet) != Sent::Dropped {
                return;
            }
        }
    }

    fn deliver_next(&mut self) {
        let Some(envelope) = self.network.deliver_next() else {
            return;
        };
        match envelope.message {
            Packet::Heartbeat(bytes) => self.heard(envelope.from, envelope.to, &bytes),
            Packet::Segment {
                connection,
                seq,
                bytes,
            } => self.segment(connection, envelope.from, envelope.to, seq, bytes),
        }
    }

    /// A segment of `connection` arrived at `to`: put in order, and every
    /// frame now in turn taken.
    fn segment(&mut self, id: u64, from: usize, to: usize, seq: u64, bytes: Vec<u8>) {
        // A segment of a connection that is gone (failed, or a crash took
        // it) is dropped, as a reset would.
        let Some(mut connection) = self.connections.remove(&id) else {
            return;
        };
        let side = usize::from(to == connection.responder);
        if side == 1 && connection.ends[1].is_none() {
            // The peer answers a new connection with its own hello.
            let handshake = Handshake::new(
                self.identity(to),
                self.nodes[from].member.clone(),
                self.nodes[to].replica.version_vector().clone(),
                self.nodes[to].features,
            )
            .with_batch_bytes(self.config.max_bytes);
            let (hello, features) = handshake.hello();
            let mut end = self.end(EndState::Hello(handshake));
            self.send_frame(id, to, from, &mut end, &hello, Some(features));
            connection.ends[1] = Some(end);
        }
        let mut end = connection.ends[side]
            .take()
            .expect("the initiator's end is made with the connection, the peer's just now");
        end.incoming.arrived(seq, bytes);
        while let Some(bytes) = end.incoming.take() {
            end.progress = self.network.now();
            // Nothing in the simulation breaks a frame's bytes or the order
            // of a stream: a session that fails on a frame is a bug.
            if let Err(e) = self.take(id, from, to, side == 0, &mut end, &bytes) {
                panic!("seed {}: a session failed on a frame: {e}", self.seed);
            }
        }
        connection.ends[side] = Some(end);
        let done = connection
            .ends
            .iter()
            .all(|e| e.as_ref().is_some_and(|e| e.finished));
        if !done {
            self.connections.insert(id, connection);
        }
    }

    /// `to` takes the next frame of its stream from `from` (`initiator`:
    /// `to` started the session).
    fn take(
        &mut self,
        id: u64,
        from: usize,
        to: usize,
        initiator: bool,
        end: &mut End,
        bytes: &[u8],
    ) -> Result<(), String> {
        let len = frame::body_len(bytes[..4].try_into().map_err(|_| "a short frame")?)
            .map_err(|e| e.to_string())?;
        let (received, features) = frame::decode(&bytes[4..4 + len]).map_err(|e| e.to_string())?;
        match std::mem::replace(&mut end.state, EndState::Changing) {
            EndState::Hello(handshake) => {
                let Session {
                    mut outbound,
                    inbound,
                } = handshake
                    .on_hello(received, features)
                    .map_err(|e| e.to_string())?;
                self.send_all(id, to, from, end, &mut outbound);
                end.state = EndState::Open(inbound);
            }
            EndState::Open(mut inbound) => {
                let asked = inbound.on_frame(received).map_err(|e| e.to_string());
                end.state = EndState::Open(inbound);
                match asked? {
                    Received::Events(batch) => self.absorb(to, batch),
                    // No versions or blobs are offered here, so none come.
                    Received::TakeAhead(_)
                    | Received::DropAhead { .. }
                    | Received::FetchAhead(_)
                    | Received::DropBlobsAhead { .. } => {
                        return Err("a version or blobs ahead that nobody offered".into());
                    }
                    Received::Done => {
                        end.finished = true;
                        if initiator {
                            self.report.sessions_ok += 1;
                            self.ended(to, from, true);
                        }
                    }
                }
            }
            EndState::Changing => return Err("a frame while the end changes".into()),
        }
        Ok(())
    }

    /// Everything `outbound` has to send, read from `node`'s log and put
    /// on the wire (the stream buffers it; the network paces it).
    fn send_all(
        &mut self,
        id: u64,
        node: usize,
        peer: usize,
        end: &mut End,
        outbound: &mut Outbound,
    ) {
        loop {
            match outbound.step() {
                // Nothing is offered ahead in the simulation.
                Step::SendAhead | Step::SendBlobsAhead => {}
                Step::Read(read) => {
                    let (batch, next) = self.nodes[node]
                        .replica
                        .log()
                        .feed_chunk(&read.author, read.from, read.max_bytes)
                        .expect("the memory backend never fails");
                    outbound.read(batch, next);
                }
                Step::Send(f) => self.send_frame(id, node, peer, end, &f, None),
                Step::Finished => return,
            }
        }
    }

    /// Events a peer sent reach `node`'s log; one of them may have been
    /// corrupted on the way, and must be refused as invalid.
    fn absorb(&mut self, node: usize, mut batch: Vec<Vec<u8>>) {
        let corrupted =
            (!batch.is_empty() && self.rng.random_bool(self.config.corrupt)).then(|| {
                let i = self.rng.random_range(0..batch.len());
                let bit = self.rng.random_range(0..batch[i].len() * 8);
                batch[i][bit / 8] ^= 1 << (bit % 8);
                i
            });
        let report = self.nodes[node].replica.receive(&batch);
        if let Some(i) = corrupted {
            self.report.corrupted += 1;
            self.corrupted_sent[node] += 1;
            assert!(
                matches!(
                    report.outcomes[i],
                    AppendOutcome::Rejected(IngestError::Invalid(_))
                ),
                "seed {}: a corrupted event was not refused as invalid: {:?}",
                self.seed,
                report.outcomes[i]
            );
        }
    }

    /// A session `node` started with `peer` ended: the schedule may want
    /// another at once.
    fn ended(&mut self, node: usize, peer: usize, ok: bool) {
        let key = self.nodes[peer].member.key;
        if self.nodes[node].schedule.ended(key, ok) {
            self.open(node, peer);
        }
    }

    /// A connection broke: the session fails at both ends.
    fn fail(&mut self, connection: Connection) {
        let started = connection.ends[0].as_ref().is_some_and(|e| !e.finished);
        if started {
            self.report.sessions_failed += 1;
            self.ended(connection.initiator, connection.responder, false);
        }
    }

    /// Sessions that waited longer than `FRAME_TIMEOUT` for a frame fail.
    fn time_out(&mut self) {
        let limit = (FRAME_TIMEOUT.as_millis() / TICK.as_millis()) as u64;
        let now = self.network.now();
        let stale: Vec<u64> = self
            .connections
            .iter()
            .filter(|(_, c)| {
                c.ends
                    .iter()
                    .flatten()
                    .any(|e| !e.finished && now.saturating_sub(e.progress) > limit)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            if let Some(connection) = self.connections.remove(&id) {
                self.fail(connection);
            }
        }
    }

    /// A crash and restart: what the replica held in memory is lost (its
    /// log's waiting buffer, its engine, what it heard, its sessions and
    /// their connections, its socket buffers); stored events survive.
    fn crash(&mut self, node: usize) {
        self.nodes[node].replica.crash_and_restart();
        self.nodes[node].liveness = Liveness::default();
        self.nodes[node].schedule = Schedule::default();
        let broken: Vec<u64> = self
            .connections
            .iter()
            .filter(|(_, c)| c.initiator == node || c.responder == node)
            .map(|(id, _)| *id)
            .collect();
        for id in broken {
            if let Some(connection) = self.connections.remove(&id) {
                // The crashed node's own sessions went with its schedule.
                if connection.initiator != node {
                    self.fail(connection);
                }
            }
        }
        self.network.lose_inbound(node);
        // Refusal counters start over with the reopened log.
        self.corrupted_sent[node] = 0;
        self.report.crashes += 1;
    }

    /// Splits the replicas into two or three non-empty groups.
    fn partition(&mut self) {
        let n = self.nodes.len();
        let groups_wanted = self.rng.random_range(2..=3.min(n));
        let mut groups: Vec<usize> = (0..n).map(|i| i % groups_wanted).collect();
        for i in (1..n).rev() {
            let j = self.rng.random_range(0..=i);
            groups.swap(i, j);
        }
        self.network.partition(groups);
    }

    /// Heals, runs sessions between every pair until all replicas hold the
    /// same events, and checks that they converged.
    fn heal_and_converge(&mut self) {
        self.network.heal();
        self.report.heals += 1;
        let mut rounds = 0;
        while !self.same_events() {
            rounds += 1;
            assert!(
                rounds <= MAX_ROUNDS,
                "seed {}: replicas still differ after {MAX_ROUNDS} rounds of sessions \
                 (batches of {} bytes):\n{}",
                self.seed,
                self.config.max_bytes,
                self.describe_vectors()
            );
            for from in 0..self.nodes.len() {
                for to in 0..self.nodes.len() {
                    if from != to {
                        self.want(from, to);
                    }
                }
            }
            self.settle();
        }
        self.report.max_rounds = self.report.max_rounds.max(rounds);
        self.check_converged();
    }

    /// Delivers until nothing is in flight; sessions still open then wait
    /// for what a partition cut, and time out.
    fn settle(&mut self) {
        loop {
            while !self.network.is_idle() {
                self.deliver_next();
            }
            let Some((&id, _)) = self.connections.first_key_value() else {
                return;
            };
            if let Some(connection) = self.connections.remove(&id) {
                self.fail(connection);
            }
        }
    }

    /// Each replica's vector, one line per author: `seq/count`, with `!`
    /// where the feed diverged and `*` where replicas disagree.
    fn describe_vectors(&self) -> String {
        let authors: std::collections::BTreeSet<_> = self
            .nodes
            .iter()
            .flat_map(|n| n.replica.version_vector().iter().map(|(a, _)| *a))
            .collect();
        let mut out = String::new();
        for author in authors {
            let summaries: Vec<_> = self
                .nodes
                .iter()
                .map(|n| n.replica.version_vector().get(&author).copied())
                .collect();
            let differ = summaries.iter().any(|s| *s != summaries[0]);
            out.push_str(&format!(
                "{} {}",
                if differ { '*' } else { ' ' },
                author.short()
            ));
            for s in summaries {
                match s {
                    Some(f) => out.push_str(&format!(
                        "  {}/{}{}",
                        f.seq,
                        f.count,
                        if f.diverged { "!" } else { "" }
                    )),
                    None => out.push_str("  -"),
                }
            }
            out.push('\n');
        }
        out
    }

    fn same_events(&self) -> bool {
        let first = self.nodes[0].replica.version_vector();
        self.nodes
            .iter()
            .all(|n| n.replica.version_vector() == first)
    }

    fn check_step_invariants(&self) {
        for (i, n) in self.nodes.iter().enumerate() {
            let r = &n.replica;
            let stored = r.log().backend().len();
            assert_eq!(
                r.version_vector().total(),
                stored as u64,
                "seed {}: replica {i}'s version vector does not count what it stores",
                self.seed
            );
            assert_eq!(
                r.engine().len(),
                stored,
                "seed {}: replica {i} folds something other than what it stores",
                self.seed
            );
            assert_eq!(
                r.log().reject_counts().invalid,
                self.corrupted_sent[i],
                "seed {}: replica {i} refused as invalid something not corrupted",
                self.seed
            );
        }
    }

    fn check_converged(&mut self) {
        let seed = self.seed;
        let injected: Vec<EventId> = self.history.events()[..self.injected]
            .iter()
            .map(|e| e.id())
            .collect();
        for (i, n) in self.nodes.iter().enumerate() {
            let r = &n.replica;
            for id in &injected {
                assert!(r.stores(id), "seed {seed}: replica {i} lost event {id}");
            }
            assert_eq!(
                r.log().backend().len(),
                injected.len(),
                "seed {seed}: replica {i} stores events nobody wrote"
            );
            assert_eq!(r.log().waiting(), 0, "seed {seed}: replica {i} still waits");
            for other in &self.nodes {
                assert!(
                    r.version_vector()
                        .plan_for(other.replica.version_vector())
                        .is_empty(),
                    "seed {seed}: converged replicas still plan to send"
                );
            }
            for id in &injected {
                assert!(
                    r.engine().is_ready(id),
                    "seed {seed}: replica {i} holds {id} but not its causal past"
                );
            }
        }
        let first_state = self.nodes[0].replica.state();
        let first_verdicts = self.nodes[0].replica.verdicts();
        for (id, verdict) in &first_verdicts {
            let expected = self.history.expected(id);
            assert_eq!(
                verdict.is_applied(),
                expected == Expected::Applied,
                "seed {seed}: {id} by {} got {verdict:?}, expected {expected:?}",
                self.history.writer(id)
            );
        }
        assert_same_state(
            &first_state,
            &self.nodes[0].replica.engine().rebuild(),
            &format!("seed {seed}: replica 0, incremental against rebuild"),
        );
        for i in 1..self.nodes.len() {
            let state = self.nodes[i].replica.state();
            assert_eq!(
                fingerprints(&state),
                fingerprints(&first_state),
                "seed {seed}: replica {i}'s fingerprints differ from replica 0's"
            );
            assert_same_state(&state, &first_state, &format!("seed {seed}: replica {i}"));
            assert_eq!(
                self.nodes[i].replica.verdicts(),
                first_verdicts,
                "seed {seed}: replica {i} judged some event differently"
            );
        }
    }
}

/// Replica `i` as a member of the simulated mesh.
fn member(i: usize) -> Member {
    Member {
        name: NodeName::new(format!("replica-{i}")).expect("a node name"),
        key: SigningKey::from_bytes(&[i as u8 + 101; 32]).public(),
        mesh: Ipv4Addr::new(198, 51, 100, i as u8 + 1),
        wg: WgPublicKey([i as u8; 32]),
    }
}
