//! This node and its peers, as replication names them: who may connect,
//! whose hello is whose, where a heartbeat goes.
//!
//! The node builds it from the peers projection (only nodes with a mesh
//! address are members); the simulation makes one per replica.

use std::net::Ipv4Addr;

use makiatto_events::{AuthorKey, EventId, NodeName, WgPublicKey};

/// A node of the mesh.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub name: NodeName,
    pub key: AuthorKey,
    pub mesh: Ipv4Addr,
    pub wg: WgPublicKey,
}

#[cfg(test)]
impl Member {
    /// A member made from one byte: name `n{seed}`, keys and mesh address
    /// derived from it (the replication tests' peers).
    pub(crate) fn of_seed(seed: u8) -> Member {
        Member {
            name: NodeName::new(format!("n{seed}")).unwrap(),
            key: makiatto_events::SigningKey::from_bytes(&[seed; 32]).public(),
            mesh: Ipv4Addr::new(198, 51, 100, seed),
            wg: WgPublicKey([seed; 32]),
        }
    }
}

/// This node and its peers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Topology {
    pub cluster: Option<EventId>,
    pub me: Option<Member>,
    pub peers: Vec<Member>,
}

/// Who this node is on the wire: its key in this cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub cluster: EventId,
    pub node: AuthorKey,
}

impl Topology {
    /// The peer whose mesh address is `ip`: WireGuard ties a source
    /// address to one peer's key, so this is who sent from it.
    pub fn peer_at(&self, ip: Ipv4Addr) -> Option<&Member> {
        self.peers.iter().find(|m| m.mesh == ip)
    }

    /// This node's identity, once it is a member of a cluster.
    pub fn identity(&self) -> Option<Identity> {
        Some(Identity {
            cluster: self.cluster?,
            node: self.me.as_ref()?.key,
        })
    }
}
