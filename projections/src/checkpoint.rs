//! What the engine saves besides the per-event entries: checkpoints of the
//! fold's state, and the engine's record.
//!
//! A **checkpoint** is the fold's whole state after every ready event up to
//! one position, as JSON (the projections' own serde forms, the
//! configuration document as automerge's saved bytes, the certificates'
//! sealed keys, which the projection's JSON withholds). Start-up loads the
//! newest instead of folding the log; a re-fold after a healed partition
//! and "as of a time" start from the newest one before the point they need.
//!
//! The **record** says what the entries and checkpoints cover: the
//! interned role sets and verdicts the entries point into, the events
//! held but not ready, the heads, the version vector of every event the
//! engine was given, and where the checkpoints are.

use std::collections::BTreeMap;

use makiatto_events::{AuthorKey, EventId, Recipient, SealedValue, SecretId, VersionVector};
use serde::{Deserialize, Serialize};

use crate::certificates::Certificates;
use crate::config::ConfigDoc;
use crate::fold::{Fold, Runs, Verdict};
use crate::peers::Peers;
use crate::roles::Roles;
use crate::sites::SiteHistory;
use crate::source::{Position, SourceError};

/// The format of checkpoints and records this build writes; others are
/// not read (the log is folded from the start instead).
pub const FORMAT: u32 = 2;

#[derive(Serialize, Deserialize)]
struct SavedFold {
    format: u32,
    genesis: Option<EventId>,
    roles: Roles,
    /// Automerge's saved document, changes still waiting for their
    /// dependencies included, in hex.
    config: String,
    peers: Peers,
    sites: SiteHistory,
    certificates: Certificates,
    /// The sealed private keys that `certificates`' JSON withholds.
    certificate_keys: BTreeMap<String, SealedValue>,
    zone_serial: u32,
    last: Option<Position>,
    folded: u64,
    places: BTreeMap<AuthorKey, Runs>,
    config_events: Vec<EventId>,
    resealed: Vec<(SecretId, Recipient)>,
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> SourceError {
    SourceError::Corrupt(format!("{what}: {e}"))
}

impl Fold {
    /// The fold's state as a checkpoint.
    pub fn to_checkpoint(&self) -> Vec<u8> {
        let saved = SavedFold {
            format: FORMAT,
            genesis: self.genesis,
            roles: self.roles.clone(),
            config: hex::encode(self.config.save()),
            peers: self.peers.clone(),
            sites: self.sites.clone(),
            certificates: self.certificates.clone(),
            certificate_keys: self
                .certificates
                .names
                .iter()
                .map(|(n, c)| (n.clone(), c.key.clone()))
                .collect(),
            zone_serial: self.zone_serial,
            last: self.last,
            folded: self.folded,
            places: self.places.clone(),
            config_events: self.config_events.clone(),
            resealed: self.resealed.clone(),
        };
        serde_json::to_vec(&saved).unwrap_or_default()
    }

    /// A fold from a checkpoint.
    pub fn from_checkpoint(bytes: &[u8]) -> Result<Fold, SourceError> {
        let saved: SavedFold =
            serde_json::from_slice(bytes).map_err(|e| corrupt("a checkpoint does not read", e))?;
        if saved.format != FORMAT {
            return Err(corrupt(
                "a checkpoint is of another format",
                format!("{} (this build reads {FORMAT})", saved.format),
            ));
        }
        let config = hex::decode(&saved.config)
            .map_err(|e| corrupt("a checkpoint's configuration is not hex", e))
            .and_then(|b| {
                ConfigDoc::load(&b)
                    .map_err(|e| corrupt("a checkpoint's configuration does not load", e))
            })?;
        let mut certificates = saved.certificates;
        for (name, key) in saved.certificate_keys {
            if let Some(c) = certificates.names.get_mut(&name) {
                c.key = key;
            }
        }
        Ok(Fold {
            genesis: saved.genesis,
            roles: saved.roles,
            config,
            peers: saved.peers,
            sites: saved.sites,
            certificates,
            zone_serial: saved.zone_serial,
            last: saved.last,
            folded: saved.folded,
            places: saved.places,
            config_events: saved.config_events,
            resealed: saved.resealed,
        })
    }
}

/// A saved checkpoint: where, and after how many events folded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub at: Position,
    pub folded: u64,
}

/// What the saved entries and checkpoints cover (see the module's
/// documentation).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub format: u32,
    /// The role events entries' sets are made of, by number.
    pub role_events: Vec<EventId>,
    /// Every role set after the empty one, by number.
    pub role_sets: Vec<Vec<u32>>,
    /// Every verdict after applied, by number.
    pub verdicts: Vec<Verdict>,
    /// Events held and not ready: stored, so only their ids.
    pub unready: Vec<EventId>,
    /// The ready events no ready event names as a parent.
    pub heads: Vec<Position>,
    /// Every event the engine was given, ready or not.
    pub known: VersionVector,
    /// How many of them are ready.
    pub ready: u64,
    /// The checkpoints, oldest first; the last holds the fold as saved.
    pub checkpoints: Vec<Mark>,
}

impl Record {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Record, SourceError> {
        let record: Record = serde_json::from_slice(bytes)
            .map_err(|e| corrupt("the fold's record does not read", e))?;
        if record.format != FORMAT {
            return Err(corrupt(
                "the fold's record is of another format",
                format!("{} (this build reads {FORMAT})", record.format),
            ));
        }
        Ok(record)
    }
}
