//! Members of the mesh: nodes and external peers, with their keys, addresses,
//! coordinates and roles, and the mesh address each one holds.
//!
//! Mesh addresses (docs/design.md, Projections): members are taken in the order they joined
//! (HLC, then id, of their joining event); each keeps the address it asked
//! for if that is in the mesh range and still free, and otherwise takes the
//! lowest free one. Joins made on both sides of a partition that chose the
//! same address therefore resolve the same way on every node: the earlier
//! keeps it, the later moves.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use makiatto_events::payload::{Coordinates, Ipv4Net, SshTarget};
use makiatto_events::{
    AuthorKey, Event, EventId, Hlc, NodeName, Payload, PeerName, SealingKey, WgPublicKey,
};
use serde::{Deserialize, Serialize};

/// A node of the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeEntry {
    pub signing_key: AuthorKey,
    pub sealing_key: SealingKey,
    pub wg_public_key: WgPublicKey,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    #[serde(serialize_with = "display", deserialize_with = "parsed")]
    pub ssh: SshTarget,
    pub latitude: f64,
    pub longitude: f64,
    /// Not in the JSON (`latitude` and `longitude` are, exactly): read
    /// back from them.
    #[serde(skip)]
    pub coordinates: Coordinates,
    pub nameserver: bool,
    /// The address this node holds on the mesh (after allocation).
    pub mesh_addr: Option<Ipv4Addr>,
    pub requested_mesh_addr: Ipv4Addr,
    pub joined: EventId,
    pub joined_at: Hlc,
}

/// A WireGuard peer outside the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalPeer {
    pub wg_public_key: WgPublicKey,
    pub endpoint: String,
    pub mesh_addr: Option<Ipv4Addr>,
    pub requested_mesh_addr: Option<Ipv4Addr>,
    pub o11y: bool,
    pub added: EventId,
    pub added_at: Hlc,
}

fn display<S: serde::Serializer, T: std::fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn parsed<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr<Err = String>,
{
    String::deserialize(d)?
        .parse()
        .map_err(serde::de::Error::custom)
}

/// The nodes read back from JSON, each with its coordinates made again
/// from its degrees (which the JSON holds exactly).
fn nodes_with_coordinates<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<NodeName, NodeEntry>, D::Error> {
    let mut nodes = BTreeMap::<NodeName, NodeEntry>::deserialize(d)?;
    for (name, n) in &mut nodes {
        n.coordinates = Coordinates::from_degrees(n.latitude, n.longitude).ok_or_else(|| {
            serde::de::Error::custom(format!("node {name}: coordinates out of range"))
        })?;
    }
    Ok(nodes)
}

/// When a member joined: the (HLC, id) of its joining event.
type JoinOrder = (Hlc, EventId);
/// A member by name: a node (`Ok`) or an external peer (`Err`).
type Member = Result<NodeName, PeerName>;

/// Every member of the mesh.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Peers {
    #[serde(
        serialize_with = "optional_range",
        deserialize_with = "optional_range_parsed"
    )]
    pub mesh_range: Option<Ipv4Net>,
    #[serde(deserialize_with = "nodes_with_coordinates")]
    pub nodes: BTreeMap<NodeName, NodeEntry>,
    pub external: BTreeMap<PeerName, ExternalPeer>,
}

fn optional_range<S: serde::Serializer>(v: &Option<Ipv4Net>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(net) => s.collect_str(net),
        None => s.serialize_none(),
    }
}

fn optional_range_parsed<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Ipv4Net>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|text| text.parse().map_err(serde::de::Error::custom))
        .transpose()
}

impl Peers {
    /// Applies an authorized event; returns whether membership changed.
    pub fn apply(&mut self, event: &Event) -> bool {
        match event.payload() {
            Payload::Genesis(g) => {
                self.mesh_range = Some(g.mesh_range);
                false
            }
            Payload::NodeJoined(n) => {
                self.nodes.insert(
                    n.name.clone(),
                    NodeEntry {
                        signing_key: n.signing_key,
                        sealing_key: n.sealing_key,
                        wg_public_key: n.wg_public_key,
                        ipv4: n.ipv4,
                        ipv6: n.ipv6,
                        ssh: n.ssh.clone(),
                        latitude: n.coordinates.lat(),
                        longitude: n.coordinates.lon(),
                        coordinates: n.coordinates,
                        nameserver: n.nameserver,
                        mesh_addr: None,
                        requested_mesh_addr: n.mesh_addr,
                        joined: event.id(),
                        joined_at: event.hlc(),
                    },
                );
                self.allocate();
                true
            }
            Payload::NodeRemoved(n) => {
                let removed = self.nodes.remove(&n.name).is_some();
                self.allocate();
                removed
            }
            Payload::ExternalPeerAdded(p) => {
                self.external.insert(
                    p.name.clone(),
                    ExternalPeer {
                        wg_public_key: p.wg_public_key,
                        endpoint: p.endpoint.clone(),
                        mesh_addr: None,
                        requested_mesh_addr: p.wg_address,
                        o11y: p.name.is_o11y(),
                        added: event.id(),
                        added_at: event.hlc(),
                    },
                );
                self.allocate();
                true
            }
            Payload::ExternalPeerRemoved(p) => {
                let removed = self.external.remove(&p.name).is_some();
                self.allocate();
                removed
            }
            _ => false,
        }
    }

    /// Assigns mesh addresses by the rule in the module docs.
    fn allocate(&mut self) {
        let Some(range) = self.mesh_range else { return };
        let mut order: Vec<(JoinOrder, Option<Ipv4Addr>, Member)> = self
            .nodes
            .iter()
            .map(|(name, n)| {
                (
                    (n.joined_at, n.joined),
                    Some(n.requested_mesh_addr),
                    Ok(name.clone()),
                )
            })
            .chain(self.external.iter().map(|(name, p)| {
                (
                    (p.added_at, p.added),
                    p.requested_mesh_addr,
                    Err(name.clone()),
                )
            }))
            .collect();
        order.sort_by_key(|(joined, _, _)| *joined);
        let mut taken = BTreeSet::new();
        for (_, requested, member) in order {
            let addr = requested
                .filter(|a| range.is_host(*a) && !taken.contains(a))
                .or_else(|| range.hosts().find(|h| !taken.contains(h)));
            taken.extend(addr);
            match member {
                Ok(node) => {
                    if let Some(n) = self.nodes.get_mut(&node) {
                        n.mesh_addr = addr;
                    }
                }
                Err(peer) => {
                    if let Some(p) = self.external.get_mut(&peer) {
                        p.mesh_addr = addr;
                    }
                }
            }
        }
    }

    /// The lowest mesh address no member holds or asked for, for a new join.
    pub fn free_mesh_addr(&self) -> Option<Ipv4Addr> {
        let range = self.mesh_range?;
        let used: BTreeSet<Ipv4Addr> = self
            .nodes
            .values()
            .filter_map(|n| n.mesh_addr)
            .chain(self.external.values().filter_map(|p| p.mesh_addr))
            .collect();
        range.hosts().find(|h| !used.contains(h))
    }
}
