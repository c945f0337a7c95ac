//! The replication protocol, simulated: replicas that push on append and
//! run anti-entropy over a network that drops, duplicates, reorders,
//! corrupts and partitions, and that crash now and then, hold every event
//! and serve identical projections after every heal.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark support: a failure is a panic that fails the run

use makiatto_replay_tests::cases;
use makiatto_replay_tests::generator::{History, Shape};
use makiatto_replay_tests::simulation::{SimConfig, SimReport, Simulation};
use rand::Rng;

const RUNS: u64 = 50;
const FORK_RUNS: u64 = 12;

/// Totals over runs, to show that the faults did happen.
#[derive(Debug, Default)]
struct Totals {
    runs: u64,
    events: usize,
    heals: usize,
    crashes: usize,
    corrupted: u64,
    dropped: u64,
    duplicated: u64,
    max_rounds: usize,
}

impl Totals {
    fn add(&mut self, report: &SimReport) {
        self.runs += 1;
        self.events += report.events;
        self.heals += report.heals;
        self.crashes += report.crashes;
        self.corrupted += report.corrupted;
        self.dropped += report.network.dropped + report.network.cut;
        self.duplicated += report.network.duplicated;
        self.max_rounds = self.max_rounds.max(report.max_rounds);
    }

    /// Over many runs, every kind of fault must have been injected.
    fn assert_faults_happened(&self) {
        if self.runs < 10 {
            return; // a single rerun (MAKIATTO_SEED) may be calm
        }
        assert!(
            self.heals > self.runs as usize,
            "no partition healed: {self:?}"
        );
        assert!(self.crashes > 0, "no replica crashed: {self:?}");
        assert!(self.corrupted > 0, "no event was corrupted: {self:?}");
        assert!(self.dropped > 0, "no message was lost: {self:?}");
        assert!(self.duplicated > 0, "no message was duplicated: {self:?}");
    }
}

#[test]
fn replicas_converge_after_every_heal_and_lose_nothing() {
    let mut totals = Totals::default();
    cases::run(
        "replicas_converge_after_every_heal_and_lose_nothing",
        RUNS,
        |seed, rng| {
            let config = SimConfig::random(rng);
            let shape = if seed % 20 == 0 {
                Shape {
                    steps: rng.random_range(100..160),
                    ..Shape::large(rng)
                }
            } else {
                Shape {
                    steps: rng.random_range(20..90),
                    ..Shape::small(rng)
                }
            };
            let history = History::generate(seed, shape);
            totals.add(&Simulation::new(seed, history, config).run());
        },
    );
    eprintln!("replication: {totals:?}");
    totals.assert_faults_happened();
}

#[test]
fn forked_feeds_replicate_under_a_small_byte_budget() {
    let mut forked = 0;
    cases::run(
        "forked_feeds_replicate_under_a_small_byte_budget",
        FORK_RUNS,
        |seed, rng| {
            let config = SimConfig {
                // About one event per answer: a peer must still get every
                // branch of a forked feed.
                max_bytes: 300,
                ..SimConfig::random(rng)
            };
            let shape = Shape {
                steps: rng.random_range(40..120),
                fork: true,
                ..Shape::small(rng)
            };
            let history = History::generate(seed, shape);
            let mut places = std::collections::HashSet::new();
            if history
                .events()
                .iter()
                .any(|e| !places.insert((e.author(), e.seq())))
            {
                forked += 1;
            }
            Simulation::new(seed, history, config).run();
        },
    );
    eprintln!("forked feeds: {forked} of the runs had a fork");
    assert!(
        forked > 0 || std::env::var(cases::SEED_VAR).is_ok(),
        "no run had a fork"
    );
}

#[test]
fn a_seed_replays_the_same_run() {
    cases::run("a_seed_replays_the_same_run", 3, |seed, rng| {
        let config = SimConfig::random(rng);
        let shape = Shape {
            steps: 40,
            ..Shape::small(rng)
        };
        let run = || {
            let history = History::generate(seed, shape.clone());
            Simulation::new(seed, history, config).run()
        };
        assert_eq!(run(), run(), "the same seed took two different runs");
    });
}
