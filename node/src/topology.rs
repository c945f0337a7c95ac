//! This node's place on the mesh: the peers projection applied to the
//! mesh device, and the [`Topology`] replication follows. The daemon calls
//! it after every append; gossip after it stores events from a peer.

use std::sync::{Arc, Mutex};

use makiatto_core::replication::{Member, Topology};
use makiatto_events::{AuthorKey, EventId};
use makiatto_projections::peers::Peers;

use crate::mesh::Mesh;
use crate::replica::Replica;

/// The mesh device and this node's key, when the node has a mesh.
pub type MeshSlot = Arc<Mutex<Option<(Mesh, AuthorKey)>>>;

/// The nodes of `peers` with a mesh address; `me` is the node whose key
/// is `key`.
pub fn of(peers: &Peers, key: &AuthorKey, cluster: Option<EventId>) -> Topology {
    let mut t = Topology {
        cluster,
        ..Topology::default()
    };
    for (name, n) in &peers.nodes {
        let Some(mesh) = n.mesh_addr else { continue };
        let m = Member {
            name: name.clone(),
            key: n.signing_key,
            mesh,
            wg: n.wg_public_key,
        };
        if n.signing_key == *key {
            t.me = Some(m);
        } else {
            t.peers.push(m);
        }
    }
    t
}

/// Brings the mesh device in line with the peers projection; returns the
/// topology gossip should follow (none when the node has no mesh).
pub fn follow_peers(replica: &Mutex<Replica>, mesh: &MeshSlot) -> Option<Topology> {
    let (peers, cluster) = {
        let mut r = replica.lock().ok()?;
        (r.peers(), r.cluster_id())
    };
    let mut slot = mesh.lock().ok()?;
    let (mesh, me) = slot.as_mut()?;
    if let Err(e) = mesh.apply(&peers, me) {
        tracing::error!(error = %format!("{e:#}"), "cannot apply the peers to the mesh");
    }
    Some(of(&peers, me, cluster))
}
