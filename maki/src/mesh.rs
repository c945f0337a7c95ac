//! The mesh as one node's peers projection shows it (`show peers`): the
//! range, the members and the addresses they hold, typed once where the
//! JSON enters. The allocation itself is the projection's
//! (`makiatto_projections::peers`); `maki` only picks the address a new
//! member asks for, by the same rule as `Peers::free_mesh_addr`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::Context;
use makiatto_events::payload::Ipv4Net;
use makiatto_events::{NodeName, PeerName, WgPublicKey};
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use crate::ssh::Remote;

/// Why a mesh address cannot be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeshError {
    #[error("the node holds no mesh range yet (its log lacks the genesis event)")]
    NoRange,
    #[error("the mesh range {0} is full; remove a peer or a machine first")]
    Full(Ipv4Net),
    #[error("{addr} is not a host address of the mesh range {range}")]
    OutsideRange { addr: Ipv4Addr, range: Ipv4Net },
    #[error("{addr} is already held by {holder}; leave --wg-address out to get a free one")]
    Taken { addr: Ipv4Addr, holder: String },
}

/// The fields of the peers projection `maki` reads (its JSON is the
/// `Serialize` of `makiatto_projections::peers::Peers`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Mesh {
    #[serde(rename = "mesh_range", deserialize_with = "range")]
    pub range: Option<Ipv4Net>,
    pub nodes: BTreeMap<NodeName, Node>,
    pub external: BTreeMap<PeerName, Peer>,
}

/// A node, as far as the mesh is concerned.
#[derive(Debug, Clone, Deserialize)]
pub struct Node {
    pub wg_public_key: WgPublicKey,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub mesh_addr: Option<Ipv4Addr>,
}

/// An external WireGuard peer.
#[derive(Debug, Clone, Deserialize)]
pub struct Peer {
    pub wg_public_key: WgPublicKey,
    /// As given to `maki peer add --endpoint` (already checked then).
    pub endpoint: String,
    pub mesh_addr: Option<Ipv4Addr>,
}

/// The projection writes the range as text (`198.51.100.0/28`).
fn range<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Ipv4Net>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|text| text.parse().map_err(serde::de::Error::custom))
        .transpose()
}

impl Mesh {
    /// Reads the peers projection of the node behind `remote`.
    pub async fn fetch(remote: &Remote) -> anyhow::Result<Mesh> {
        let shown = remote.call(json!({"op": "show", "name": "peers"})).await?;
        Self::from_state(&shown["state"])
    }

    /// Types the `state` of a `show peers` answer.
    pub fn from_state(state: &Value) -> anyhow::Result<Mesh> {
        Mesh::deserialize(state).context("the node's peers projection is unreadable")
    }

    /// The member holding `addr`, described for an error message.
    pub fn holder(&self, addr: Ipv4Addr) -> Option<String> {
        let node = self
            .nodes
            .iter()
            .find(|(_, n)| n.mesh_addr == Some(addr))
            .map(|(name, _)| format!("node {name}"));
        node.or_else(|| {
            self.external
                .iter()
                .find(|(_, p)| p.mesh_addr == Some(addr))
                .map(|(name, _)| format!("peer {name}"))
        })
    }

    /// The lowest host address of the range that no member holds; the
    /// address of node `rejoining` counts as free (it gives it up).
    pub fn free_addr(&self, rejoining: Option<&str>) -> Result<Ipv4Addr, MeshError> {
        let range = self.range.ok_or(MeshError::NoRange)?;
        let held: Vec<Ipv4Addr> = self
            .nodes
            .iter()
            .filter(|(name, _)| Some(name.as_str()) != rejoining)
            .filter_map(|(_, n)| n.mesh_addr)
            .chain(self.external.values().filter_map(|p| p.mesh_addr))
            .collect();
        range
            .hosts()
            .find(|h| !held.contains(h))
            .ok_or(MeshError::Full(range))
    }

    /// The address a new member asks for: `wanted` if it is a free host
    /// address of the range, else the lowest free one.
    pub fn choose_addr(&self, wanted: Option<Ipv4Addr>) -> Result<Ipv4Addr, MeshError> {
        let range = self.range.ok_or(MeshError::NoRange)?;
        let Some(addr) = wanted else {
            return self.free_addr(None);
        };
        if !range.is_host(addr) {
            return Err(MeshError::OutsideRange { addr, range });
        }
        match self.holder(addr) {
            Some(holder) => Err(MeshError::Taken { addr, holder }),
            None => Ok(addr),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A projection as a node shows it: range 198.51.100.0/28, nodes
    /// vector (.1) and klukai (.2), peer o11y (.3).
    pub(crate) fn shown() -> Value {
        let key = |b: u8| hex::encode([b; 32]);
        json!({
            "mesh_range": "198.51.100.0/28",
            "nodes": {
                "vector": {"wg_public_key": key(1), "ipv4": "203.0.113.2", "ipv6": "2001:db8:1::2",
                           "mesh_addr": "198.51.100.1", "requested_mesh_addr": "198.51.100.1",
                           "nameserver": true, "ssh": "root@203.0.113.2:22"},
                "klukai": {"wg_public_key": key(2), "ipv4": null, "ipv6": "2001:db8:1::3",
                           "mesh_addr": "198.51.100.2", "requested_mesh_addr": "198.51.100.2",
                           "nameserver": true, "ssh": "root@203.0.113.3:22"}
            },
            "external": {
                "o11y": {"wg_public_key": key(3), "endpoint": "192.0.2.7", "mesh_addr": "198.51.100.3",
                         "requested_mesh_addr": null, "o11y": true}
            }
        })
    }

    #[test]
    fn the_projection_json_is_typed() {
        let mesh = Mesh::from_state(&shown()).unwrap();
        assert_eq!(mesh.range.unwrap().to_string(), "198.51.100.0/28");
        assert_eq!(mesh.nodes.len(), 2);
        assert_eq!(
            mesh.holder("198.51.100.3".parse().unwrap()).unwrap(),
            "peer o11y"
        );
        assert!(Mesh::from_state(&json!({"mesh_range": "nonsense"})).is_err());
    }

    #[test]
    fn a_new_member_gets_the_lowest_free_address() {
        let mesh = Mesh::from_state(&shown()).unwrap();
        assert_eq!(mesh.free_addr(None), Ok("198.51.100.4".parse().unwrap()));
        assert_eq!(
            mesh.free_addr(Some("klukai")),
            Ok("198.51.100.2".parse().unwrap())
        );
        assert_eq!(mesh.choose_addr(None), mesh.free_addr(None));
    }

    #[test]
    fn an_asked_address_must_be_a_free_host_of_the_range() {
        let mesh = Mesh::from_state(&shown()).unwrap();
        let addr = |a: &str| a.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            mesh.choose_addr(Some(addr("198.51.100.9"))),
            Ok(addr("198.51.100.9"))
        );
        assert!(matches!(
            mesh.choose_addr(Some(addr("198.51.100.2"))),
            Err(MeshError::Taken { holder, .. }) if holder == "node klukai"
        ));
        for outside in ["198.51.100.0", "198.51.100.15", "198.51.100.16", "10.0.0.1"] {
            assert!(matches!(
                mesh.choose_addr(Some(addr(outside))),
                Err(MeshError::OutsideRange { .. })
            ));
        }
    }

    #[test]
    fn a_full_range_or_no_range_is_an_error() {
        let mut mesh = Mesh::from_state(&shown()).unwrap();
        mesh.range = "198.51.100.0/30".parse().ok();
        assert!(matches!(mesh.free_addr(None), Err(MeshError::Full(_))));
        mesh.range = None;
        assert_eq!(mesh.choose_addr(None), Err(MeshError::NoRange));
    }
}
