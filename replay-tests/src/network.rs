//! A simulated network between numbered nodes: every message is delayed by a
//! random number of ticks (so messages overtake each other), and may be
//! dropped or duplicated; a partition cuts the links between groups and loses
//! what was in flight across them. All randomness comes from one seeded RNG.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// How unreliable the network is.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// Probability that a message is lost.
    pub drop: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Largest delay in ticks (at least 1); delays are uniform in 1..=max.
    pub max_delay: u64,
}

/// What became of a message handed to [`Network::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// On its way (maybe twice).
    Queued,
    /// Lost at random: a transport that retransmits sends it again.
    Dropped,
    /// Its link is cut by a partition.
    Cut,
}

/// A message in flight.
#[derive(Debug, Clone)]
pub struct Envelope<M> {
    pub from: usize,
    pub to: usize,
    pub message: M,
}

/// Messages in flight, the partition, and the fault settings.
#[derive(Debug)]
pub struct Network<M> {
    rng: ChaCha20Rng,
    faults: Faults,
    now: u64,
    sent: u64,
    /// (delivery tick, send number) → message: delivery order is by time,
    /// then by sending order, so a run is reproducible.
    in_flight: BTreeMap<(u64, u64), Envelope<M>>,
    /// Each node's group; nodes talk only within a group.
    groups: Vec<usize>,
    stats: NetworkStats,
}

/// What the network did, for the test's report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetworkStats {
    pub sent: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub cut: u64,
}

impl<M: Clone> Network<M> {
    /// A fully connected network of `nodes` nodes.
    pub fn new(nodes: usize, seed: u64, faults: Faults) -> Network<M> {
        Network {
            rng: ChaCha20Rng::seed_from_u64(seed),
            faults,
            now: 0,
            sent: 0,
            in_flight: BTreeMap::new(),
            groups: vec![0; nodes],
            stats: NetworkStats::default(),
        }
    }

    /// Sends `message`; it may be lost, delayed or duplicated. A message
    /// in flight when a partition cuts its link is lost too, silently.
    pub fn send(&mut self, from: usize, to: usize, message: M) -> Sent {
        self.stats.sent += 1;
        if !self.connected(from, to) {
            self.stats.cut += 1;
            return Sent::Cut;
        }
        if self.rng.random_bool(self.faults.drop) {
            self.stats.dropped += 1;
            return Sent::Dropped;
        }
        if self.rng.random_bool(self.faults.duplicate) {
            self.stats.duplicated += 1;
            self.enqueue(from, to, message.clone());
        }
        self.enqueue(from, to, message);
        Sent::Queued
    }

    fn enqueue(&mut self, from: usize, to: usize, message: M) {
        let at = self.now + self.rng.random_range(1..=self.faults.max_delay.max(1));
        self.sent += 1;
        self.in_flight
            .insert((at, self.sent), Envelope { from, to, message });
    }

    /// The next message due, advancing the clock to it; messages across a
    /// partition are lost on the way.
    pub fn deliver_next(&mut self) -> Option<Envelope<M>> {
        loop {
            let ((at, _), envelope) = self.in_flight.pop_first()?;
            self.now = self.now.max(at);
            if self.connected(envelope.from, envelope.to) {
                self.stats.delivered += 1;
                return Some(envelope);
            }
            self.stats.cut += 1;
        }
    }

    /// The clock, in ticks.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Whether nothing is in flight.
    pub fn is_idle(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Advances the clock by one tick without delivering anything.
    pub fn tick(&mut self) {
        self.now += 1;
    }

    /// Whether a message is due at or before the current tick.
    pub fn has_due(&self) -> bool {
        self.in_flight
            .first_key_value()
            .is_some_and(|((at, _), _)| *at <= self.now)
    }

    /// Loses every message on its way to `node` (its socket buffers died
    /// with it).
    pub fn lose_inbound(&mut self, node: usize) {
        let before = self.in_flight.len();
        self.in_flight.retain(|_, e| e.to != node);
        self.stats.dropped += (before - self.in_flight.len()) as u64;
    }

    /// Splits the nodes: `groups[i]` is node i's group.
    pub fn partition(&mut self, groups: Vec<usize>) {
        assert_eq!(groups.len(), self.groups.len(), "one group per node");
        self.groups = groups;
    }

    /// Reconnects everyone.
    pub fn heal(&mut self) {
        self.groups.iter_mut().for_each(|g| *g = 0);
    }

    pub fn is_partitioned(&self) -> bool {
        self.groups.iter().any(|g| *g != self.groups[0])
    }

    pub fn connected(&self, a: usize, b: usize) -> bool {
        self.groups[a] == self.groups[b]
    }

    pub fn stats(&self) -> NetworkStats {
        self.stats
    }
}
