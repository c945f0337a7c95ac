//! All projections together, each with canonical bytes and a fingerprint.
//!
//! Canonical bytes are the projection's JSON with fields in declaration
//! order and maps sorted (every map here is a `BTreeMap`), so equal
//! projections give equal bytes on every node; the fingerprint is their
//! blake3 hash.

use std::fmt;

use makiatto_events::Blake3Hash;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::certificates::Certificates;
use crate::config::DesiredConfig;
use crate::peers::Peers;
use crate::roles::Roles;
use crate::sites::Sites;
use crate::zones::Zones;

/// The projections by name, as `makiatto show NAME` takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProjectionName {
    Peers,
    Roles,
    Config,
    Zones,
    Certificates,
    Sites,
}

impl ProjectionName {
    pub const ALL: [ProjectionName; 6] = [
        ProjectionName::Peers,
        ProjectionName::Roles,
        ProjectionName::Config,
        ProjectionName::Zones,
        ProjectionName::Certificates,
        ProjectionName::Sites,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            ProjectionName::Peers => "peers",
            ProjectionName::Roles => "roles",
            ProjectionName::Config => "config",
            ProjectionName::Zones => "zones",
            ProjectionName::Certificates => "certificates",
            ProjectionName::Sites => "sites",
        }
    }

    pub fn parse(name: &str) -> Option<ProjectionName> {
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

impl Serialize for ProjectionName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ProjectionName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        ProjectionName::parse(&name).ok_or_else(|| {
            let known: Vec<&str> = ProjectionName::ALL.iter().map(|p| p.as_str()).collect();
            serde::de::Error::custom(format!(
                "unknown projection {name:?}; projections are: {}",
                known.join(", ")
            ))
        })
    }
}

/// A projection's type and its name: what `show` reads back as the
/// projection's own type (its shown JSON holds no secrets, so sealed values
/// read back as withheld).
pub trait Projection: Serialize + DeserializeOwned {
    const NAME: ProjectionName;
}

impl Projection for Peers {
    const NAME: ProjectionName = ProjectionName::Peers;
}
impl Projection for Roles {
    const NAME: ProjectionName = ProjectionName::Roles;
}
impl Projection for DesiredConfig {
    const NAME: ProjectionName = ProjectionName::Config;
}
impl Projection for Zones {
    const NAME: ProjectionName = ProjectionName::Zones;
}
impl Projection for Certificates {
    const NAME: ProjectionName = ProjectionName::Certificates;
}
impl Projection for Sites {
    const NAME: ProjectionName = ProjectionName::Sites;
}

impl fmt::Display for ProjectionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every projection, as of some set of events.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    pub roles: Roles,
    pub config: DesiredConfig,
    pub peers: Peers,
    pub zones: Zones,
    pub certificates: Certificates,
    pub sites: Sites,
}

fn json<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

impl State {
    /// One projection as a JSON value (without fingerprint).
    pub fn value(&self, name: ProjectionName) -> serde_json::Value {
        match name {
            ProjectionName::Peers => json(&self.peers),
            ProjectionName::Roles => json(&self.roles),
            ProjectionName::Config => json(&self.config),
            ProjectionName::Zones => json(&self.zones),
            ProjectionName::Certificates => json(&self.certificates),
            ProjectionName::Sites => json(&self.sites),
        }
    }

    /// One projection's canonical bytes.
    pub fn canonical_bytes(&self, name: ProjectionName) -> Vec<u8> {
        serde_json::to_vec(&self.value(name)).unwrap_or_default()
    }

    /// One projection's fingerprint: blake3 of its canonical bytes.
    pub fn fingerprint(&self, name: ProjectionName) -> Blake3Hash {
        Blake3Hash::of(&self.canonical_bytes(name))
    }

    /// One projection for `makiatto show --json`: its name and fingerprint
    /// at the top level, the projection under `state`.
    pub fn to_json(&self, name: ProjectionName) -> serde_json::Value {
        serde_json::json!({
            "projection": name.as_str(),
            "fingerprint": self.fingerprint(name).to_hex(),
            "state": self.value(name),
        })
    }
}
