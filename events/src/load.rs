//! [`Load`]: how busy a node is, as it says of itself.
//!
//! Not an event (load is an ephemeral fact, never history): it lives here
//! because two wires carry it and both see this crate — the heartbeats
//! nodes send each other (`makiatto_core::replication`) and the health
//! report the daemon answers `maki` with (`makiatto_protocol::health`).
//! Its postcard form is part of the heartbeat datagram, so its fields keep
//! their order.

use serde::{Deserialize, Serialize};

/// Load figures a node reports in its heartbeats.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Load {
    /// The one-minute load average, in thousandths.
    pub load1_milli: u32,
    pub cpus: u16,
    pub mem_available_mb: u32,
    pub mem_total_mb: u32,
    pub uptime_secs: u64,
}
