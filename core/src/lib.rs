//! Makiatto's replicated log.
//!
//! The log is a grow-only set of per-author, hash-chained feeds of signed
//! events. This crate stores it (fjall), decides what may enter it, and
//! states replication as a pure state machine; sockets live in `node`.
//!
//! # Layout
//! - [`ingest`]: the one rule for admitting an event (verify, chain, fork,
//!   gap), shared by every backend.
//! - [`log`]: [`Log`], a backend plus the gap buffer, rejection counters
//!   and the version vector; appends are atomic and durable per batch.
//! - [`skew`]: how far ahead of the node's clock an event may be stamped,
//!   and the events held until the clock reaches them.
//! - [`store`]: the fjall backend: events by id, feeds by (author, seq),
//!   a time index, and stored projections.
//! - [`memory`]: an in-memory backend with the same rules, for simulation.
//! - [`group_commit`]: concurrent appenders share one fsync.
//! - [`replication`]: what nodes exchange and decide, as a sans-I/O state
//!   machine (frames, sessions, heartbeats, liveness, scheduling), run by
//!   the daemon's gossip and by the seeded simulation alike.
//!
//! # Invariants
//! - Nothing is stored that did not verify (signature, canonical bytes, id,
//!   feed chain, size). Rejections are typed and counted.
//! - Under a skew bound, nothing is stored whose stamp is further ahead of
//!   the node's clock than the bound: it is held until the clock gets there.
//! - A stored event's feed predecessor is stored: feeds have no holes, so a
//!   version vector entry (author → highest seq) describes a whole prefix.
//! - The store judges no roles: authorization is folded in `projections`.
//! - Merge is set union: appending the same events in any order, any number
//!   of times, yields the same stored set.

pub mod group_commit;
pub mod ingest;
pub mod log;
pub mod memory;
pub mod replication;
pub mod skew;
pub mod store;

pub use group_commit::GroupCommitter;
pub use ingest::{Admission, Backend, IngestError, RejectCounts};
pub use log::{AppendOutcome, Log};
pub use memory::MemoryBackend;
// Version vectors are data every side of the wire needs: they live in
// `events` and are re-exported here for the log's users.
pub use makiatto_events::{FeedRequest, FeedSummary, VersionVector};
pub use store::{Store, StoreError};
