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
//! - [`launcher`]: commands started from a small process of the bench's
//!   own, so that their peak resident memory is theirs alone.
//! - [`reports`]: h2load's and dnsperf's reports, read.
//!
//! The benchmarks that run real nodes stand on the cluster test harness
//! (`makiatto-harness`, in `harness/`): local clusters, the anchors' and
//! clients' namespaces, and server CPU from `/proc`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark support: a failure is a panic that fails the run

pub mod launcher;
pub mod measure;
pub mod reports;
pub mod workload;
