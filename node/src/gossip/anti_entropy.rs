//! Anti-entropy: every `ANTI_ENTROPY_EVERY`, a session with one live peer
//! (picked by `replication::anti_entropy`) repairs anything the pushes and
//! catch-ups missed.

use std::sync::Arc;

use makiatto_core::replication::Member;
use makiatto_core::replication::anti_entropy::{ANTI_ENTROPY_EVERY, pick};

use super::Gossip;

impl Gossip {
    pub(super) async fn anti_entropy(self: Arc<Self>) {
        let mut tick = tokio::time::interval(ANTI_ENTROPY_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let live: Vec<Member> = self.liveness.live_peers();
            if let Some(peer) = pick(&live, &mut rand::rng()) {
                self.sync_soon(peer.clone());
            }
        }
    }
}
