//! Deterministic replay and simulation tests of the log and projections.
//!
//! Everything here is driven by a seeded ChaCha20 RNG and a simulated
//! millisecond clock, so a failing case reruns exactly from the seed it
//! prints: `MAKIATTO_SEED=<seed> cargo test -p makiatto-replay-tests <test>`.
//! The library generates cluster histories and simulates nodes and networks;
//! the properties themselves live in `tests/`.
//!
//! # Layout
//! - [`generator`]: cluster histories written by operators, nodes and
//!   intruders that each see only part of the log, with the verdict every
//!   event must get.
//! - [`replica`]: one simulated node: a `Log<MemoryBackend>` (admission)
//!   feeding an `Engine` (projections), and comparisons of their states.
//! - [`network`]: a lossy, duplicating, reordering, partitionable network.
//! - [`stream`]: a connection's frames over that network, in order and
//!   once each, as TCP delivers them.
//! - [`simulation`]: replicas running the node's own replication state
//!   machine (`makiatto_core::replication`: sessions, heartbeats, catch-up,
//!   anti-entropy) over that network, with crashes, partitions and heals.
//! - [`cases`]: runs a property over many seeds, printing the failing one.
//!
//! # Invariants the tests hold the other crates to
//! - Nodes holding the same events build byte-identical projections, in any
//!   delivery order, with duplicates, drops and partitions.
//! - Incremental folding equals a rebuild; "as of" equals a rebuild of the
//!   prefix or causal past; unauthorized events change nothing; an event's
//!   verdict is the one its causal past dictates, on every node, forever.
//! - Tampered bytes never enter a log; replication loses nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark support: a failure is a panic that fails the run

//!
//! # Cases per `cargo test` (10,062 generated, plus fixtures and coverage)
//! tampering 4,500 · verdicts against the causal past 1,500 · incremental
//! against rebuild 1,000 · unauthorized change nothing 800 · convergence
//! 600 · verdicts never flip 600 · as of a time 500 · as of an event 500 ·
//! replication runs 50 + forked feeds under a small budget 12.

pub mod cases;
pub mod generator;
pub mod network;
pub mod replica;
pub mod simulation;
pub mod stream;
