//! Which build each side of the wire runs, and what it can serve.
//!
//! A connection starts with [`Hello`](crate::request::Hello): the client
//! sends its [`Version`], the daemon answers with its own. From then on
//! every request carries the client's version (the envelope's `client`),
//! so a daemon that cannot serve a request says which two versions met.
//!
//! # The compatibility rule (a rolling upgrade)
//! - The protocol number is bumped only when an old peer would misread a
//!   message. Additions within a number are feature bits.
//! - A side ignores answer fields it does not know; fields added later are
//!   optional (`#[serde(default)]`) for readers.
//! - Each request names the first protocol that serves it
//!   ([`Operation::SINCE`](crate::request::Operation::SINCE)); a client does
//!   not send it to an older daemon, and a daemon refuses a request it does
//!   not know with [`ErrorCode::Unsupported`](crate::answer::ErrorCode),
//!   naming both versions and what to upgrade.
//! - Protocol 1 is the untyped JSON of `makiatto` 0.1, which has no
//!   `hello` (it answers one with an error). Its messages have the same
//!   shapes as protocol 2's, so both directions keep working: a new `maki`
//!   sends a protocol-1 daemon bare requests (no envelope), and a new daemon
//!   takes bare requests from an old `maki`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The control protocol this build speaks.
pub const PROTOCOL: u32 = 2;

/// The untyped protocol of `makiatto` 0.1, before `hello` existed.
pub const LEGACY_PROTOCOL: u32 = 1;

/// This build's version, as Cargo knows it.
pub const SOFTWARE: &str = env!("CARGO_PKG_VERSION");

/// Capabilities added within a protocol number, one bit each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Features(pub u64);

impl Features {
    /// Append results say `duplicate` as an outcome of its own and give a
    /// [`Refusal`](crate::append::Refusal) reason for each refused event.
    pub const TYPED_OUTCOMES: Features = Features(1);

    /// The client reads the `ahead-of-clock` refusal (an event stamped
    /// further ahead of the node's clock than the cluster allows).
    pub const CLOCK_BOUND: Features = Features(1 << 1);

    /// The daemon places visitors with the GeoIP database the log names
    /// (`geoip.database`), fetched over the mesh; an older one reads only
    /// a copy in its data directory.
    pub const GEOIP_FROM_LOG: Features = Features(1 << 2);

    /// The daemon answers `probe` (checks every node from where it
    /// stands) and `clock`.
    pub const PROBE: Features = Features(1 << 3);

    /// The daemon hands its sockets over to a new binary without closing
    /// them (`handover`, `makiatto reload`), and a binary with this bit
    /// takes them (`makiatto handover-check`).
    pub const HANDOVER: Features = Features(1 << 4);

    /// Everything this build can do.
    pub const ALL: Features = Features(
        Self::TYPED_OUTCOMES.0
            | Self::CLOCK_BOUND.0
            | Self::GEOIP_FROM_LOG.0
            | Self::PROBE.0
            | Self::HANDOVER.0,
    );

    /// Whether every bit of `other` is set.
    pub fn has(self, other: Features) -> bool {
        self.0 & other.0 == other.0
    }
}

/// One side's build: its protocol, features and software version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub protocol: u32,
    #[serde(default)]
    pub features: Features,
    /// The release (`0.2.0`), for messages to people.
    #[serde(default)]
    pub software: String,
}

impl Version {
    /// This build.
    pub fn ours() -> Version {
        Version {
            protocol: PROTOCOL,
            features: Features::ALL,
            software: SOFTWARE.to_owned(),
        }
    }

    /// A daemon that answered `hello` with an error: `makiatto` 0.1.
    pub fn legacy() -> Version {
        Version {
            protocol: LEGACY_PROTOCOL,
            features: Features::default(),
            software: "0.1".to_owned(),
        }
    }

    /// Whether this side serves requests introduced in protocol `since`.
    pub fn serves(&self, since: u32) -> bool {
        self.protocol >= since
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (control protocol {})", self.software, self.protocol)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_are_sets_of_bits() {
        assert!(Features::ALL.has(Features::TYPED_OUTCOMES));
        assert!(!Features::default().has(Features::TYPED_OUTCOMES));
        assert!(Features::default().has(Features::default()));
    }

    #[test]
    fn a_version_serves_what_came_before_it() {
        let ours = Version::ours();
        assert!(ours.serves(LEGACY_PROTOCOL) && ours.serves(PROTOCOL));
        assert!(!Version::legacy().serves(PROTOCOL));
        assert_eq!(
            Version::legacy().to_string(),
            "0.1 (control protocol 1)",
            "messages name the other side's build"
        );
    }
}
