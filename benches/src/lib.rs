//! Benchmarks of Makiatto, each against an anchor measured in the same run.
//!
//! Every benchmark is a plain binary under `src/bin/` that prints a small
//! table and one JSON line; `docs/benchmarks.md` says how to run them and
//! what they measured. This library holds what they share.
//!
//! # Layout
//! - [`workload`]: a deterministic, realistic cluster history (genesis,
//!   operators, nodes, site versions, configuration edits), optionally
//!   ending in two concurrent branches, cached under the temp directory.
//! - [`measure`]: timing, resident memory, and the table + JSON report.
//! - [`lab`]: a one-node local cluster with namespaces for an anchor
//!   server and a client on its bridge, and server CPU from `/proc`.

pub mod lab;
pub mod measure;
pub mod workload;
