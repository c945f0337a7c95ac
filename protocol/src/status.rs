//! Small answers: the log's status, verification, heads, a stored manifest.

use makiatto_events::{EventId, Hlc};
use serde::{Deserialize, Serialize};

/// Counts of refused events since the daemon started, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Rejections {
    pub invalid: u64,
    pub duplicate: u64,
    pub chain_mismatch: u64,
    pub foreign_cluster: u64,
    pub wait_buffer_full: u64,
    /// Stamped too far ahead of the node's clock (`log.max_clock_skew`):
    /// refused from `maki`, or from a peer when too many were held.
    #[serde(skip_serializing_if = "is_zero")]
    pub ahead_of_clock: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The node's clock when it answered, and the cluster's bound on how far
/// ahead of it an event may be stamped: what `maki` compares its own
/// clock with before it signs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeClock {
    /// Unix milliseconds.
    pub now_millis: u64,
    pub max_skew_millis: u64,
}

/// What the log holds and how much it waits for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    pub cluster: Option<EventId>,
    pub events: u64,
    pub waiting_for_predecessor: u64,
    pub waiting_for_causal_past: u64,
    pub authors: u64,
    pub rejected: Rejections,
    /// Events from peers stamped ahead of this node's clock, held until
    /// it reaches them: now, and since the daemon started.
    #[serde(skip_serializing_if = "is_zero")]
    pub held_ahead_of_clock: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub held_ahead_of_clock_total: u64,
    /// This node's clock (absent from older nodes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock: Option<NodeClock>,
}

/// `makiatto status` (a command's output, which `maki` reads over SSH):
/// the log's counts and the daemon's processes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    #[serde(flatten)]
    pub status: Status,
    #[serde(default)]
    pub daemon_pid: Option<i32>,
    #[serde(default)]
    pub supervisor_pid: Option<i32>,
    /// The daemon answers on its control socket (not merely has a pid).
    #[serde(default)]
    pub running: bool,
    /// The GeoIP database the running daemon places visitors with, and
    /// what is wrong with it (from its health report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geoip: Option<crate::health::GeoIpReport>,
}

/// `verify`: every event re-checked, every projection rebuilt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub events: usize,
    pub problems: Vec<String>,
    /// Projection name and fingerprint, in the order `show` lists them.
    pub fingerprints: Vec<(String, String)>,
}

/// One head of the log: an event nothing else names as a parent yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub id: EventId,
    pub millis: u64,
    pub counter: u32,
}

impl Head {
    pub fn new(id: EventId, hlc: Hlc) -> Head {
        Head {
            id,
            millis: hlc.millis,
            counter: hlc.counter,
        }
    }

    pub fn hlc(&self) -> Hlc {
        Hlc {
            millis: self.millis,
            counter: self.counter,
        }
    }
}

/// `manifest-put`: the manifest was rebuilt, checked and stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestStored {
    /// How many files it names.
    pub stored: usize,
}
