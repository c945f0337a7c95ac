//! The mesh as one node's peers projection shows it (`show peers`): the
//! range, the members and the addresses they hold, typed once where the
//! JSON enters. The allocation itself is the projection's
//! (`makiatto_projections::peers`); `maki` only picks the address a new
//! member asks for, by the same rule as `Peers::free_mesh_addr`.

use std::net::Ipv4Addr;

use makiatto_events::payload::Ipv4Net;
use makiatto_projections::peers::Peers;
use makiatto_protocol::request::ShowAs;

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

/// The peers projection as one node shows it, with the questions `maki`
/// asks of it.
#[derive(Debug, Clone, Default)]
pub struct Mesh(pub Peers);

impl std::ops::Deref for Mesh {
    type Target = Peers;
    fn deref(&self) -> &Peers {
        &self.0
    }
}

impl std::ops::DerefMut for Mesh {
    fn deref_mut(&mut self) -> &mut Peers {
        &mut self.0
    }
}

impl Mesh {
    /// Reads the peers projection of the node behind `remote`.
    pub async fn fetch(remote: &Remote) -> anyhow::Result<Mesh> {
        Ok(Mesh(remote.ask(ShowAs::<Peers>::now()).await?.state))
    }

    /// Types the `state` of a `show peers` answer (the tests' fixtures).
    #[cfg(test)]
    pub fn from_state(state: &serde_json::Value) -> anyhow::Result<Mesh> {
        use anyhow::Context;
        use serde::Deserialize;
        Peers::deserialize(state)
            .map(Mesh)
            .context("the node's peers projection is unreadable")
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
        let range = self.mesh_range.ok_or(MeshError::NoRange)?;
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
        let range = self.mesh_range.ok_or(MeshError::NoRange)?;
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
    use serde_json::{Value, json};

    /// A projection as a node shows it: range 198.51.100.0/28, nodes
    /// vector (.1) and klukai (.2), peer o11y (.3).
    pub(crate) fn shown() -> Value {
        let key = |b: u8| hex::encode([b; 32]);
        let hlc = json!({"millis": 1, "counter": 0});
        json!({
            "mesh_range": "198.51.100.0/28",
            "nodes": {
                "vector": {"signing_key": key(11), "sealing_key": key(12), "wg_public_key": key(1),
                           "ipv4": "203.0.113.2", "ipv6": "2001:db8:1::2",
                           "ssh": "root@203.0.113.2", "latitude": 51.5, "longitude": -0.13,
                           "mesh_addr": "198.51.100.1", "requested_mesh_addr": "198.51.100.1",
                           "nameserver": true, "joined": key(13), "joined_at": hlc},
                "klukai": {"signing_key": key(21), "sealing_key": key(22), "wg_public_key": key(2),
                           "ipv4": null, "ipv6": "2001:db8:1::3",
                           "ssh": "root@203.0.113.3", "latitude": 35.7, "longitude": 139.7,
                           "mesh_addr": "198.51.100.2", "requested_mesh_addr": "198.51.100.2",
                           "nameserver": true, "joined": key(23), "joined_at": hlc}
            },
            "external": {
                "o11y": {"wg_public_key": key(3), "endpoint": "192.0.2.7", "mesh_addr": "198.51.100.3",
                         "requested_mesh_addr": null, "o11y": true, "added": key(31), "added_at": hlc}
            }
        })
    }

    #[test]
    fn the_projection_json_is_typed() {
        let mesh = Mesh::from_state(&shown()).unwrap();
        assert_eq!(mesh.mesh_range.unwrap().to_string(), "198.51.100.0/28");
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
        mesh.mesh_range = "198.51.100.0/30".parse().ok();
        assert!(matches!(mesh.free_addr(None), Err(MeshError::Full(_))));
        mesh.mesh_range = None;
        assert_eq!(mesh.choose_addr(None), Err(MeshError::NoRange));
    }
}
