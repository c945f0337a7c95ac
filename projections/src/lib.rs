//! Makiatto's projections: what a node serves, folded from the events it holds.
//!
//! Every projection is a pure function of a set of events. The events are
//! folded in the canonical order — by hybrid logical clock, then id, which
//! is a topological order of the causal graph because an event's clock must
//! exceed its parents' — so two nodes holding the same events build
//! byte-identical projections, whatever order the events arrived in.
//!
//! # Layout
//! - [`engine`]: [`Engine`], which tracks which events are causally
//!   ready, folds incrementally or again from a checkpoint, saves, and
//!   answers "as of", reading the events from a [`Source`].
//! - [`source`]: [`Source`], where the engine reads events and keeps what
//!   it decided (the node's store), and [`source::Memory`], the same in
//!   memory for tests and simulations.
//! - [`fold`]: the fold itself: validity, authorization against each event's
//!   causal past, and the per-event [`Verdict`].
//! - [`index`]: the fold's 20-byte entry per event (clock, role set,
//!   verdict), the entries not yet saved and a bounded cache of recent ones.
//! - [`role_sets`]: role events and the interned sets of them that events
//!   have in their causal past, with the roles of each set.
//! - [`checkpoint`]: the fold's state as a checkpoint, and the engine's
//!   record of what its saved entries and checkpoints cover.
//! - [`roles`]: who may do what (operators, nodes).
//! - [`config`]: the desired-configuration automerge document and its typed view.
//! - [`peers`]: nodes, external peers, deterministic mesh addresses.
//! - [`zones`]: per domain, the authoritative zone content.
//! - [`record`]: the one parser of a custom DNS record's data, shared by
//!   the CLI's checks and the node's zone compiler.
//! - [`certificates`]: per name, the current certificate (filled by ACME later).
//! - [`sites`]: per domain, the live site version and its latest history.
//! - [`fast`]: seeded hash maps keyed by event ids, for the fold's hot paths.
//! - [`state`]: [`State`], all projections together, with canonical bytes
//!   and blake3 fingerprints.
//!
//! # Invariants
//! - Folding is deterministic: no clock, no randomness, no hash-map order.
//! - An event is judged once, on its causal past, so its verdict never
//!   changes when concurrent events arrive later.
//! - Incremental application and a full rebuild give identical bytes.

pub mod certificates;
pub mod checkpoint;
pub mod config;
pub mod engine;
pub mod fast;
pub mod fold;
pub mod index;
pub mod peers;
pub mod record;
pub mod role_sets;
pub mod roles;
pub mod sites;
pub mod source;
pub mod state;
pub mod zones;

pub use engine::{AsOf, Engine};
pub use fold::Verdict;
pub use source::{Source, SourceError};
pub use state::{Projection, ProjectionName, State};
