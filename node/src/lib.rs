//! `makiatto`, the node daemon, and the commands that read its data directory.
//!
//! The crate is a library with a thin binary (`main.rs` calls
//! [`cli::main`]): nothing depends on it but the fuzz targets under
//! `node/fuzz/`, which reach the daemon's parsers through [`fuzz`].
//!
//! # Layout
//! - [`cli`]: the command line: every subcommand, parsed and carried out.
//! - [`fuzz`]: the entry points of the fuzz targets (a DNS query through
//!   parse and answer; an HTTP request's path, headers and host through
//!   the request decisions and the router).
//! - [`daemon`]: `makiatto run`, the long-running process and its control
//!   socket; it starts and wires every subsystem below.
//! - [`service`]: running supervised (`run --detach`, `stop`) or under
//!   systemd, and `reload` (a handover, asked of the running daemon).
//! - [`handover`]: handing the listening sockets to a new binary without
//!   closing them (the drain, the `execve` in place, the way back).
//! - [`privileges`]: dropping root for the `makiatto` user, keeping only
//!   CAP_NET_ADMIN and CAP_NET_BIND_SERVICE.
//! - [`keys`]: the node's signing, sealing and WireGuard keys.
//! - [`clock`]: the node's wall clock, read in one place.
//! - [`control`]: the control protocol's serving side, shared by the daemon
//!   and offline commands.
//! - [`replica`]: this node's log and projections.
//! - [`fold_source`]: the store as the fold's source of events, and where
//!   it saves its per-event entries and checkpoints.
//! - [`query`]: a point in history (`--at`) as typed.
//! - [`mesh`]: the WireGuard device (boringtun) and its peers.
//! - [`topology`]: the mesh device and gossip's view of the members,
//!   brought in line with the peers projection after every append.
//! - [`gossip`]: replication, liveness and blob fetching over the mesh
//!   (the async shell around `makiatto_core::replication`).
//! - [`changes`], [`liveness`], [`peer_blobs`]: the narrow handles through
//!   which DNS, HTTP, ACME and content see gossip: the log changed, who is
//!   alive, fetch blobs from peers.
//! - [`blobs`]: the content-addressed blob store.
//! - [`content`]: follows the sites projection; switches a domain's version
//!   once every blob is here.
//! - [`dns`]: the authoritative GeoDNS server.
//! - [`http`]: the HTTP and HTTPS edge.
//! - [`images`]: images on the fly (`?w&h&fit&fmt&q&dpr`): parameters,
//!   geometry, decoding, encoding, the rendition cache.
//! - [`wasm`]: WebAssembly functions and transforms (wasmtime
//!   components): compiled once per blob hash, sandboxed, run on the pool.
//! - [`work_pool`]: the one bounded pool for CPU-heavy work (images,
//!   WebAssembly), with the queue limit that answers 503.
//! - [`acme`]: ordering and installing certificates.
//! - [`signer`]: the events this node writes itself, signed on its own
//!   feed once it may sign.
//! - [`reseal`]: secrets resealed to nodes that join after they were
//!   sealed (`secret-resealed`).
//! - [`telemetry`]: OpenTelemetry traces, metrics and logs over OTLP to
//!   the mesh's `o11y` peer; the hooks the request paths call.
//! - [`probe`]: checking every node from this one (DNS, HTTPS) and this
//!   node's own headroom, for `maki health`.
//!
//! Read commands (`log`, `show`, `verify`, `status`, `append`) go through
//! the running daemon's socket when one answers, and otherwise open the data
//! directory themselves (the store admits one process at a time).

mod acme;
mod blobs;
mod changes;
mod clock;
mod content;
mod control;
mod daemon;
mod dns;
mod fold_source;
mod gossip;
mod handover;
mod http;
mod images;
mod keys;
mod liveness;
mod mesh;
mod peer_blobs;
mod privileges;
mod probe;
mod query;
mod replica;
mod reseal;
mod service;
mod signer;
mod telemetry;
mod topology;
mod wasm;
mod work_pool;

pub mod cli;
pub mod fuzz;
