//! What crosses the wire between `maki` and the `makiatto` daemon.
//!
//! `maki` reaches a node over SSH and runs `makiatto control`, which
//! speaks this protocol on its standard input and output and forwards
//! what only the daemon answers to its control socket; `makiatto`'s own
//! subcommands use the socket directly. Both binaries build requests and
//! read answers only through these types.
//!
//! # Layout
//! - [`version`]: each side's [`Version`], feature bits, and the
//!   compatibility rule of a rolling upgrade.
//! - [`request`]: every [`Request`], each an [`Operation`] that names the
//!   type of its answer; the [`Envelope`] that carries the client's version.
//! - [`answer`]: [`Answer`] (`ok` or an error with an [`ErrorCode`]).
//! - [`append`], [`log`], [`show`], [`status`], [`health`]: the answers.
//! - [`probe`]: what a node finds checking every node from where it
//!   stands, and its clock (for `maki health`).
//! - [`identity`]: a node's public keys, as `makiatto keys` prints them.
//! - [`blob_stream`]: the hash · size · bytes stream of an upload.
//! - [`client`]: a session's client side without I/O: batches of requests,
//!   the `hello` that opens a session, answers read as each request's type.
//!
//! # Invariants
//! - One line, one request; one line, one answer, in order.
//! - The wire form is pinned by golden fixtures (`tests/fixtures/`): a
//!   change to a message's shape fails a test before it reaches a cluster.
//! - Projections cross the wire as the projections' own types.

pub mod answer;
pub mod append;
pub mod blob_stream;
pub mod client;
pub mod health;
pub mod identity;
pub mod log;
pub mod probe;
pub mod request;
pub mod show;
pub mod status;
pub mod version;

pub use answer::{Answer, ControlError, ErrorCode};
pub use append::{AppendResult, Outcome, Refusal};
pub use request::{Envelope, Operation, Request};
pub use show::Shown;
pub use version::{Features, PROTOCOL, Version};
