//! The cluster test harness: what the integration tests of `maki` and
//! `makiatto` and the benchmarks use to make local clusters, run commands
//! in test hosts, run daemons and wait for what they do.
//!
//! It drives the built binaries (`maki local up`, `makiatto run`, …), as
//! an operator would, and links neither binary's crate.
//!
//! Every failure here is the failure of the test or benchmark that asked:
//! helpers panic with what went wrong rather than return errors, so the
//! step unwinds through the `Drop` of whatever it made ([`Cluster`],
//! [`Lab`], [`Namespace`], [`Process`], [`Daemon`]), which leaves no
//! namespace, process or directory behind, also when a test fails.
//!
//! # Layout
//! - [`binaries`]: where the `maki` and `makiatto` of this build are
//!   (debug beside a test, release beside a benchmark).
//! - [`cluster`]: a local cluster made with `maki local up`, removed on
//!   drop; `maki` against it, commands and control requests in its hosts.
//! - [`host`]: the test hosts as `maki local` recorded them (`state.json`).
//! - [`netns`]: network namespaces of our own on a cluster's bridge, and
//!   the processes in a namespace.
//! - [`instructions`]: instructions (callgrind) and system calls (perf) a
//!   server spends on a fixed amount of work: the noise-free A/B.
//! - [`lab`]: a cluster with namespaces for a benchmark's anchor server
//!   and client.
//! - [`load`]: HTTPS and DNS clients at a fixed rate against every node,
//!   with timeouts, counting per second (the chaos tests' load).
//! - [`cpu`]: `/proc` readings: CPU of a server, its client and the
//!   machine over a run; resident memory.
//! - [`daemon`]: a `makiatto` on a temporary data directory, for the
//!   daemon's own tests.
//! - [`fuzz`]: a fuzz target's seed corpus and seeded mutations of it,
//!   in the suite.
//! - [`geoip`]: the DB-IP database, and where it places an address (and
//!   a copy of it with another build date).
//! - [`traffic`]: keep-alive and new-connection HTTPS clients and DNS
//!   clients against every node at once, from a namespace, counting
//!   failures and keeping latencies (the upgrade tests' load).
//! - [`process`]: running commands: checked output, input on stdin, child
//!   processes ended on drop, tools on the PATH, root.
//! - [`placement`]: benchmarks' servers and load pinned to a core each, or free.
//! - [`previous`]: the previous release's binaries, built from history,
//!   for the compatibility tests.
//! - [`project`]: the repository's example project, and copies of it.
//! - [`wait`]: waiting for a condition by polling it, with a deadline.
//! - [`wg_peer`]: an external WireGuard peer added with `maki peer add`
//!   and configured from `maki peer wg-config`, on wireguard-go.
//! - [`otlp`]: a real OTLP/gRPC receiver in a namespace, recording what
//!   the nodes export.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark support: a failure is a panic that fails the run

pub mod binaries;
pub mod cluster;
pub mod cpu;
pub mod daemon;
pub mod fuzz;
pub mod geoip;
pub mod host;
pub mod instructions;
pub mod lab;
pub mod load;
pub mod netns;
pub mod otlp;
pub mod placement;
pub mod previous;
pub mod process;
pub mod project;
pub mod traffic;
pub mod wait;
pub mod wg_peer;

pub use binaries::Binaries;
pub use cluster::Cluster;
pub use daemon::Daemon;
pub use geoip::GeoIp;
pub use host::{Host, State};
pub use lab::Lab;
pub use netns::Namespace;
pub use otlp::OtlpReceiver;
pub use placement::Placement;
pub use previous::previous_release;
pub use process::{Process, clock_offset_env, have, json_lines, require_root, stdout, with_input};
pub use project::{
    EXAMPLE_DNS_MIX, build_components, copy_dir, copy_examples, copy_examples_with_wasm,
    example_project, example_project_with_wasm, test_component,
};
pub use wait::{Wait, eventually, wait_seeing, wait_until};
pub use wg_peer::WgPeer;
