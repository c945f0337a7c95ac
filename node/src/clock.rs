//! The node's wall clock, read in one place: event stamps, the bound on
//! stamps at admission (`makiatto_core::skew`), the clock a heartbeat
//! carries, and the clock `maki` compares its own with.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix milliseconds now (0 if the clock reads before 1970).
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
