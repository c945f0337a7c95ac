//! `probe`: what one node finds when it checks every node of the cluster
//! from where it stands — DNS answered (authoritative, the zone's serial,
//! the geo decision for sample client subnets), HTTPS answered with a
//! certificate (whose dates, names and issue are checked) — and its own
//! headroom: disk, memory, the live versions' blobs, the nodes it hears.
//!
//! `maki health` asks every node (`Probe`) and compares what they found;
//! the comparisons and their severities are `maki`'s. A node reads its
//! clock for `maki` with `Clock`: the offsets between nodes are measured
//! against `maki`'s clock, bounded by each round trip.

use std::collections::BTreeMap;

use makiatto_events::EventId;
use serde::{Deserialize, Serialize};

/// Client subnets whose geo decision `maki health` compares across nodes:
/// real-world networks the DB-IP database places on four continents.
pub const SAMPLE_SUBNETS: [&str; 5] = [
    "81.2.69.0/24",   // London
    "1.0.0.0/24",     // Brisbane
    "200.160.0.0/24", // São Paulo
    "5.5.5.0/24",     // Frankfurt
    "2001:200::/32",  // Japan
];

/// What a node found, checking every node from where it stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProbeReport {
    /// The probing node's name.
    pub node: Option<String>,
    /// The nodes it hears alive (itself included), by name: its view,
    /// which decides its geo answers with the database.
    pub view: Vec<String>,
    /// Its own headroom and content.
    pub local: LocalReport,
    /// Every node of the peers projection (itself included), as seen from
    /// here.
    pub targets: Vec<TargetReport>,
}

/// A node's own state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LocalReport {
    /// The file system of the data directory.
    pub disk: Option<Space>,
    /// Memory available to new work (`MemAvailable`) of all there is.
    pub memory: Option<Space>,
    /// Per domain served here: the version's blobs, checked present.
    pub blobs: BTreeMap<String, VersionBlobs>,
}

/// Free of total, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Space {
    pub free_bytes: u64,
    pub total_bytes: u64,
}

impl Space {
    /// The share free, from 0 to 1 (none of nothing is 0).
    pub fn free_share(&self) -> f64 {
        if self.total_bytes == 0 {
            0.0
        } else {
            self.free_bytes as f64 / self.total_bytes as f64
        }
    }
}

/// One deployed version's blobs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VersionBlobs {
    pub version: Option<EventId>,
    pub files: u64,
    /// Files whose blob is not in the store (they would be 404).
    pub missing: u64,
    /// A few of their paths.
    pub missing_paths: Vec<String>,
    /// Why the version could not be checked (its manifest unreadable).
    pub error: Option<String>,
}

/// One node, as the prober saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TargetReport {
    pub node: String,
    /// Its DNS, per zone and address asked.
    pub dns: Vec<DnsCheck>,
    /// Its HTTPS, per name served (domains and aliases).
    pub https: Vec<HttpsCheck>,
}

/// One zone asked at one address of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DnsCheck {
    pub zone: String,
    /// The node's address asked.
    pub address: String,
    /// The SOA serial it answered.
    pub serial: Option<u32>,
    /// The answer had the AA bit.
    pub authoritative: bool,
    pub rtt_ms: Option<u32>,
    /// Why there was no good answer (timeout, an rcode, a bad message).
    pub error: Option<String>,
    /// Per sample subnet (asked with EDNS Client Subnet), the apex's
    /// addresses it answered, sorted; none when it was not asked.
    pub geo: BTreeMap<String, Vec<String>>,
}

/// One name asked over HTTPS at a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpsCheck {
    pub name: String,
    pub address: String,
    /// The status of `HEAD /`.
    pub status: Option<u16>,
    /// The certificate presented, if the handshake went through.
    pub certificate: Option<SeenCertificate>,
    pub rtt_ms: Option<u32>,
    /// Why it was not answered (refused, timed out, a TLS alert).
    pub error: Option<String>,
}

/// A certificate as a client was shown it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SeenCertificate {
    pub not_before_unix_secs: i64,
    pub not_after_unix_secs: i64,
    pub issuer: String,
    /// Its names (DNS subject alternative names).
    pub names: Vec<String>,
    /// It names the host asked (exactly, or by a wildcard one label up).
    pub covers: bool,
    /// It is the certificate the log issued for this name, byte for byte.
    pub issued: bool,
    /// The log holds an issued certificate for this name at all.
    pub issued_exists: bool,
}

/// A node's wall clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClockReading {
    pub unix_millis: u64,
}
