//! Heartbeats: sent to every peer every `HEARTBEAT_EVERY`, and heard.
//! What one means (alive, back up, a catch-up to start) is
//! `replication::liveness`'s decision; the table it keeps is shared with
//! DNS and ACME through [`crate::liveness::Liveness`].

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Instant;

use makiatto_core::replication::Heartbeat;
use makiatto_events::Load;
use tokio::net::UdpSocket;

use super::{Gossip, PORT};

/// The largest heartbeat read.
pub(super) const MAX_DATAGRAM: usize = 1024;

impl Gossip {
    /// Sends this node's heartbeat to every peer.
    pub(super) async fn beat(self: &Arc<Self>, udp: &UdpSocket) {
        let topology = self.liveness.topology();
        let Some(identity) = topology.identity() else {
            return;
        };
        let Ok(vv) = self.read(|r| r.version_vector()) else {
            return;
        };
        let beat = Heartbeat::new(identity, &vv, read_load(self.started));
        let Ok(bytes) = beat.encode_with_clock(crate::clock::now_millis()) else {
            return;
        };
        for peer in &topology.peers {
            let to = SocketAddr::V4(SocketAddrV4::new(peer.mesh, PORT));
            // A peer that is down makes sends fail; that is what liveness is for.
            let _ = udp.send_to(&bytes, to).await;
        }
    }

    /// A heartbeat arrived: note the peer alive, and catch up if its log
    /// differs from ours and it holds more.
    pub(super) fn heard(self: &Arc<Self>, bytes: &[u8], from: SocketAddr) {
        let SocketAddr::V4(from) = from else { return };
        let topology = self.liveness.topology();
        let (Some(peer), Some(identity)) = (topology.peer_at(*from.ip()), topology.identity())
        else {
            return;
        };
        let received_at = crate::clock::now_millis();
        let Ok((beat, clock)) = Heartbeat::decode_with_clock(bytes) else {
            tracing::debug!(%from, "a heartbeat that does not decode");
            return;
        };
        let Ok(vv) = self.read(|r| r.version_vector()) else {
            return;
        };
        let now = self.liveness.now();
        let same_log = beat.vv_digest == vv.digest();
        let Some(Some(hearing)) = self.liveness.with_table(|t| {
            let hearing = t.heard(identity, peer, beat, &vv, now);
            if let (Some(_), Some(theirs)) = (&hearing, clock) {
                t.clock_heard(&peer.key, theirs, received_at);
            }
            hearing
        }) else {
            return;
        };
        self.liveness.heard_digest(same_log);
        if hearing.back_up {
            // A peer (back) up may hold blobs the content follower waits for.
            self.changes.peer_up();
        }
        if hearing.catch_up {
            self.catch_up(peer.clone(), hearing.theirs, hearing.ours);
        }
    }
}

/// This node's load now, from /proc (zeros where it cannot be read).
pub(super) fn read_load(started: Instant) -> Load {
    let load1 = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| -> u32 {
        meminfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map_or(0, |kb| (kb / 1024) as u32)
    };
    Load {
        load1_milli: (load1 * 1000.0) as u32,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u16),
        mem_available_mb: field("MemAvailable:"),
        mem_total_mb: field("MemTotal:"),
        uptime_secs: started.elapsed().as_secs(),
    }
}
