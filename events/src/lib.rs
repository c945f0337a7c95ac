//! Makiatto's events: the only thing that is state.
//!
//! Every change to a cluster is a signed [`Event`] appended to a replicated
//! log; everything a node serves is folded from those events. This crate is
//! the data model and nothing else: it performs no I/O, reads no clock and
//! draws no randomness of its own (callers pass an RNG and the time in).
//!
//! # Layout
//! - [`ids`]: typed 32-byte identities (`EventId`, `AuthorKey`, `Blake3Hash`, …).
//! - [`hlc`]: the hybrid logical clock that timestamps events.
//! - [`names`]: validated names (`NodeName`, `DomainName`, `PeerName`).
//! - [`payload`]: what an event says, one variant per kind, append-only.
//! - [`event`]: the header, the canonical encoding, signing and verification.
//! - [`keys`]: operator/node signing keys and node sealing keys.
//! - [`feed`]: [`FeedWriter`], which signs each event on the author's last one.
//! - [`manifest`]: a site version's [`Manifest`] (path → blob) and the
//!   [`ManifestDelta`] from one version to the next.
//! - [`sealed`]: secrets sealed to nodes' X25519 keys, never plaintext in the log.
//! - [`version_vector`]: what a log holds per author, and what a peer lacks.
//! - [`load`]: a node's load figures, which heartbeats and the health
//!   report both carry (not an event: the one value here that is not).
//!
//! # Invariants
//! - One event has exactly one byte encoding ([`Event::to_bytes`]); decoding
//!   anything else is an error, so the id (blake3 of those bytes) names the
//!   event, not a way of writing it.
//! - Payload kinds are numbered once and never renumbered; a new kind or a new
//!   shape of an old kind is a new number. Kinds this version does not know
//!   decode as [`Payload::Unknown`] and still verify, so a rolling upgrade can
//!   carry events that only newer nodes understand.
//! - An event is at most [`MAX_EVENT_BYTES`]; larger data travels as blobs.

pub mod event;
pub mod feed;
pub mod hlc;
pub mod ids;
pub mod keys;
pub mod load;
pub mod manifest;
pub mod names;
pub mod payload;
pub mod sealed;
pub mod version_vector;

pub use event::{
    AuthorVerifier, Event, EventError, Header, MAX_EVENT_BYTES, MAX_PARENTS, UnsignedEvent,
};
pub use feed::FeedWriter;
pub use hlc::Hlc;
pub use ids::{AuthorKey, Blake3Hash, EventId, SealingKey, WgPublicKey};
pub use keys::{SealingSecret, SigningKey};
pub use load::Load;
pub use manifest::{FileEntry, Manifest, ManifestDelta, ManifestError};
pub use names::{DomainName, NameError, NodeName, PeerName};
pub use payload::{EventKind, Payload};
pub use sealed::{Recipient, SealError, SealedValue, SecretId};
pub use version_vector::{FeedRequest, FeedSummary, VersionVector};
