//! Makiatto's projections: what a node serves, folded from the events it holds.
//!
//! Every projection is a pure function of a set of events. The events are
//! folded in the canonical order — by hybrid logical clock, then id, which
//! is a topological order of the causal graph because an event's clock must
//! exceed its parents' — so two nodes holding the same events build
//! byte-identical projections, whatever order the events arrived in.
//!
//! # Layout
//! - [`engine`]: [`Engine`], which holds the events, tracks which are
//!   causally ready, folds incrementally or rebuilds, and answers "as of".
//! - [`fold`]: the fold itself: validity, authorization against each event's
//!   causal past, and the per-event [`Verdict`].
//! - [`roles`]: who may do what (operators, nodes).
//! - [`config`]: the desired-configuration automerge document and its typed view.
//! - [`peers`]: nodes, external peers, deterministic mesh addresses.
//! - [`zones`]: per domain, the authoritative zone content.
//! - [`record`]: the one parser of a custom DNS record's data, shared by
//!   the CLI's checks and the node's zone compiler.
//! - [`certificates`]: per name, the current certificate (filled by ACME later).
//! - [`sites`]: per domain, the live site version and its history.
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
pub mod config;
pub mod engine;
pub mod fast;
pub mod fold;
pub mod peers;
pub mod record;
pub mod roles;
pub mod sites;
pub mod state;
pub mod zones;

pub use engine::{AsOf, Engine};
pub use fold::Verdict;
pub use state::{Projection, ProjectionName, State};
