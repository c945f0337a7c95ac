//! The replication protocol, simulated deterministically (in the manner of
//! FoundationDB and TigerBeetle): N replicas exchange messages over a
//! [`Network`] that drops, duplicates, reorders, corrupts and partitions,
//! while a [`History`] is written into them through whichever node its
//! authors happen to reach, and nodes crash and restart.
//!
//! The protocol uses only what `core` offers a real node:
//! - **push on append**: a node that stores events from a client sends them
//!   to every peer at once;
//! - **anti-entropy**: a node sends its `VersionVector`; the peer answers with
//!   `Log::missing_for` (bounded by a byte budget) and, when
//!   `VersionVector::plan_for` shows the sender holds events it lacks, with
//!   its own vector so the sender answers in turn;
//! - every received batch goes through `Log::append_bytes`.
//!
//! Invariants are checked after every step (what is stored is what is
//! folded; every corrupted event is refused) and, after every heal, anti-
//! entropy runs until the replicas hold the same events and the convergence
//! checks run: identical version vectors, fingerprints and verdicts, nothing
//! lost, nothing left waiting.

use makiatto_core::{AppendOutcome, IngestError, VersionVector};
use makiatto_events::EventId;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::generator::{Expected, History};
use crate::network::{Faults, Network, NetworkStats};
use crate::replica::{Replica, assert_same_state, fingerprints};

/// Anti-entropy rounds allowed after a heal before convergence is declared
/// failed. Each round every ordered pair of replicas exchanges vectors.
pub const MAX_ROUNDS: usize = 200;

/// What crosses the wire between replicas.
#[derive(Debug, Clone)]
pub enum Message {
    /// Canonical event bytes, pushed or sent in answer to a vector.
    Events(Vec<Vec<u8>>),
    /// "This is what I hold." `answer` asks the receiver to send its own
    /// vector back when it lacks something the sender holds.
    Sync { vv: VersionVector, answer: bool },
}

/// The knobs of one run.
#[derive(Debug, Clone, Copy)]
pub struct SimConfig {
    pub replicas: usize,
    /// Byte budget of one anti-entropy answer (`Log::missing_for`).
    pub max_bytes: usize,
    pub faults: Faults,
    /// Probability that a delivered batch has one bit flipped in one event.
    pub corrupt: f64,
    /// Per step, probability that one replica crashes and restarts.
    pub crash: f64,
    /// Per step, probability of a partition (or, when partitioned, a heal).
    pub partition: f64,
    /// Per step and replica, probability of starting anti-entropy.
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
    /// The most anti-entropy rounds one convergence took.
    pub max_rounds: usize,
    pub network: NetworkStats,
}

/// One deterministic run.
pub struct Simulation {
    seed: u64,
    rng: ChaCha20Rng,
    config: SimConfig,
    history: History,
    replicas: Vec<Replica>,
    /// Per replica, how many corrupted events it was sent (each must be
    /// refused as invalid).
    corrupted_sent: Vec<u64>,
    network: Network<Message>,
    injected: usize,
    report: SimReport,
}

impl Simulation {
    /// A run of `history` over replicas configured by `config`, all
    /// randomness drawn from `seed`.
    pub fn new(seed: u64, history: History, config: SimConfig) -> Simulation {
        Simulation {
            seed,
            rng: ChaCha20Rng::seed_from_u64(seed ^ 0x5151_5151),
            network: Network::new(config.replicas, seed ^ 0x0a11_ce55, config.faults),
            replicas: (0..config.replicas).map(|_| Replica::new()).collect(),
            corrupted_sent: vec![0; config.replicas],
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
            if let Some(envelope) = self.network.deliver_next() {
                self.deliver(envelope.from, envelope.to, envelope.message);
            }
        }
        if self.rng.random_bool(0.5) {
            self.inject();
        }
        for from in 0..self.replicas.len() {
            if self.rng.random_bool(self.config.anti_entropy) {
                let to = self.random_peer(from);
                self.start_sync(from, to);
            }
        }
        if self.rng.random_bool(self.config.crash) {
            let node = self.rng.random_range(0..self.replicas.len());
            self.replicas[node].crash_and_restart();
            self.network.lose_inbound(node);
            // Refusal counters start over with the reopened log.
            self.corrupted_sent[node] = 0;
            self.report.crashes += 1;
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

    /// The next history event reaches a random replica, as `maki` would
    /// send it: first the author's earlier events that replica lacks (the
    /// outbox, which the client works out by asking the replica), then the
    /// event. The replica pushes what it stored to every peer.
    fn inject(&mut self) {
        let Some(event) = self.history.events().get(self.injected).cloned() else {
            return;
        };
        self.injected += 1;
        let node = self.rng.random_range(0..self.replicas.len());
        let mut outbox = vec![event.to_bytes().to_vec()];
        let mut prev = event.header().prev;
        while let Some(id) = prev.filter(|id| !self.replicas[node].stores(id)) {
            let earlier = self.history.event(&id);
            outbox.push(earlier.to_bytes().to_vec());
            prev = earlier.header().prev;
        }
        outbox.reverse();
        let report = self.replicas[node].receive(&outbox);
        assert!(
            matches!(
                report.outcomes.last(),
                Some(AppendOutcome::Stored { id, .. }) if *id == event.id()
            ),
            "seed {}: a client's event with its outbox was not stored: {:?}",
            self.seed,
            report.outcomes
        );
        let pushed: Vec<Vec<u8>> = report
            .stored
            .iter()
            .map(|e| e.to_bytes().to_vec())
            .collect();
        for peer in 0..self.replicas.len() {
            if peer != node {
                self.network
                    .send(node, peer, Message::Events(pushed.clone()));
            }
        }
    }

    fn start_sync(&mut self, from: usize, to: usize) {
        let vv = self.replicas[from].version_vector().clone();
        self.network
            .send(from, to, Message::Sync { vv, answer: true });
    }

    fn deliver(&mut self, from: usize, to: usize, message: Message) {
        match message {
            Message::Events(mut batch) => {
                let corrupted = (!batch.is_empty() && self.rng.random_bool(self.config.corrupt))
                    .then(|| {
                        let i = self.rng.random_range(0..batch.len());
                        let bit = self.rng.random_range(0..batch[i].len() * 8);
                        batch[i][bit / 8] ^= 1 << (bit % 8);
                        i
                    });
                let report = self.replicas[to].receive(&batch);
                if let Some(i) = corrupted {
                    self.report.corrupted += 1;
                    self.corrupted_sent[to] += 1;
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
            Message::Sync { vv, answer } => {
                let local = self.replicas[to].log();
                let missing = local
                    .missing_for(&vv, self.config.max_bytes)
                    .expect("the memory backend never fails");
                let they_hold_more = !vv.plan_for(local.version_vector()).is_empty();
                let own = local.version_vector().clone();
                if !missing.is_empty() {
                    self.network.send(to, from, Message::Events(missing));
                }
                if answer && they_hold_more {
                    self.network.send(
                        to,
                        from,
                        Message::Sync {
                            vv: own,
                            answer: false,
                        },
                    );
                }
            }
        }
    }

    fn random_peer(&mut self, of: usize) -> usize {
        let peers: Vec<usize> = (0..self.replicas.len()).filter(|p| *p != of).collect();
        *peers.choose(&mut self.rng).expect("at least two replicas")
    }

    /// Splits the replicas into two or three non-empty groups.
    fn partition(&mut self) {
        let n = self.replicas.len();
        let groups_wanted = self.rng.random_range(2..=3.min(n));
        let mut groups: Vec<usize> = (0..n).map(|i| i % groups_wanted).collect();
        for i in (1..n).rev() {
            let j = self.rng.random_range(0..=i);
            groups.swap(i, j);
        }
        self.network.partition(groups);
    }

    /// Heals, runs anti-entropy between every pair until all replicas hold
    /// the same events, and checks that they converged.
    fn heal_and_converge(&mut self) {
        self.network.heal();
        self.report.heals += 1;
        let mut rounds = 0;
        while !self.same_events() {
            rounds += 1;
            assert!(
                rounds <= MAX_ROUNDS,
                "seed {}: replicas still differ after {MAX_ROUNDS} anti-entropy rounds \
                 (budget {} bytes):\n{}",
                self.seed,
                self.config.max_bytes,
                self.describe_vectors()
            );
            for from in 0..self.replicas.len() {
                for to in 0..self.replicas.len() {
                    if from != to {
                        self.start_sync(from, to);
                    }
                }
            }
            while let Some(envelope) = self.network.deliver_next() {
                self.deliver(envelope.from, envelope.to, envelope.message);
            }
        }
        self.report.max_rounds = self.report.max_rounds.max(rounds);
        self.check_converged();
    }

    /// Each replica's vector, one line per author: `seq/count`, with `!`
    /// where the feed diverged and `*` where replicas disagree.
    fn describe_vectors(&self) -> String {
        let authors: std::collections::BTreeSet<_> = self
            .replicas
            .iter()
            .flat_map(|r| r.version_vector().iter().map(|(a, _)| *a))
            .collect();
        let mut out = String::new();
        for author in authors {
            let summaries: Vec<_> = self
                .replicas
                .iter()
                .map(|r| r.version_vector().get(&author).copied())
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
        let first = self.replicas[0].version_vector();
        self.replicas.iter().all(|r| r.version_vector() == first)
    }

    fn check_step_invariants(&self) {
        for (i, r) in self.replicas.iter().enumerate() {
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
        for (i, r) in self.replicas.iter().enumerate() {
            for id in &injected {
                assert!(r.stores(id), "seed {seed}: replica {i} lost event {id}");
            }
            assert_eq!(
                r.log().backend().len(),
                injected.len(),
                "seed {seed}: replica {i} stores events nobody wrote"
            );
            assert_eq!(r.log().waiting(), 0, "seed {seed}: replica {i} still waits");
            for other in &self.replicas {
                assert!(
                    r.version_vector()
                        .plan_for(other.version_vector())
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
        let first_state = self.replicas[0].state();
        let first_verdicts = self.replicas[0].verdicts();
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
            &self.replicas[0].engine().rebuild(),
            &format!("seed {seed}: replica 0, incremental against rebuild"),
        );
        for i in 1..self.replicas.len() {
            let state = self.replicas[i].state();
            assert_eq!(
                fingerprints(&state),
                fingerprints(&first_state),
                "seed {seed}: replica {i}'s fingerprints differ from replica 0's"
            );
            assert_same_state(&state, &first_state, &format!("seed {seed}: replica {i}"));
            assert_eq!(
                self.replicas[i].verdicts(),
                first_verdicts,
                "seed {seed}: replica {i} judged some event differently"
            );
        }
    }
}
