//! Blobs that arrived ahead of their version (`Features::BLOBS_AHEAD`):
//! fanning a large sync out while it uploads.
//!
//! `maki sync` uploads a version's blobs to one node and publishes the
//! version when they are all there; until then no event names them, and
//! the other nodes would fetch them only after the upload. On a laptop's
//! uplink that is one slow copy followed by a fast one over the mesh. So
//! the node taking the upload offers each batch of blobs as soon as it is
//! committed (`makiatto blobs receive` tells the daemon, `blobs-arrived`;
//! an inline `blobs-put` does too), each peer's next session carries the
//! hashes as `BlobsAhead` frames, and the peer fetches what it lacks from
//! this node right away, on a few background fetchers. When the event
//! lands, the content follower finds the blobs here and switches at once.
//!
//! Nothing depends on it: a peer that misses a notice (it was down, the
//! session failed, it is an older build) fetches after the event as
//! before. A blob fetched ahead that no version names is recent, so
//! garbage collection keeps it for its grace period, then deletes it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use makiatto_core::replication::fetch::MAX_FETCH;
use makiatto_core::replication::frame::Frame;
use makiatto_core::replication::{BLOBS_AHEAD_MAX, Member};
use makiatto_events::{AuthorKey, Blake3Hash};
use tokio::io::AsyncWriteExt;

use super::Gossip;

/// How long a batch of blobs is offered to peers that were not sent it.
const OFFER_FOR: Duration = Duration::from_secs(120);
/// At most this many batches are offered at once (the oldest go first).
const OFFERED_KEPT: usize = 1024;
/// At most this many notices wait for a fetcher; more are dropped (their
/// blobs are fetched after the event instead).
const QUEUE_KEPT: usize = 256;
/// Fetchers working through the notices: two keep the mesh busy while one
/// writes what it received.
pub(super) const FETCHERS: usize = 2;

/// The batches offered here, and the notices peers sent, waiting.
#[derive(Default)]
pub(super) struct BlobsAhead {
    offered: Mutex<VecDeque<Offered>>,
    queue: Mutex<VecDeque<(Member, Vec<Blake3Hash>)>>,
    wake: tokio::sync::Notify,
}

/// One committed batch of blobs, and the peers that were told of it.
struct Offered {
    hashes: Arc<Vec<Blake3Hash>>,
    at: Instant,
    sent_to: Vec<AuthorKey>,
}

impl Gossip {
    /// Blobs `maki` uploaded here that no event names yet: each live peer's
    /// next session (started now) tells it, and it fetches them from here.
    pub fn offer_blobs(self: &Arc<Self>, hashes: Vec<Blake3Hash>) {
        if hashes.is_empty() {
            return;
        }
        if let Ok(mut offered) = self.blobs_ahead.offered.lock() {
            offered.retain(|o| o.at.elapsed() < OFFER_FOR);
            while offered.len() >= OFFERED_KEPT {
                offered.pop_front();
            }
            offered.push_back(Offered {
                hashes: Arc::new(hashes),
                at: Instant::now(),
                sent_to: Vec::new(),
            });
        }
        self.push();
    }

    /// Tells `peer` of the batches offered here that it was not told of,
    /// in frames of at most [`BLOBS_AHEAD_MAX`] hashes.
    pub(super) async fn send_blobs_ahead(
        &self,
        writer: &mut (impl AsyncWriteExt + Unpin),
        peer: &Member,
    ) -> anyhow::Result<()> {
        let batches: Vec<Arc<Vec<Blake3Hash>>> = match self.blobs_ahead.offered.lock() {
            Ok(mut offered) => {
                offered.retain(|o| o.at.elapsed() < OFFER_FOR);
                offered
                    .iter_mut()
                    .filter(|o| !o.sent_to.contains(&peer.key))
                    .map(|o| {
                        // Marked before it is written: a session that fails
                        // here leaves the peer to fetch after the event.
                        o.sent_to.push(peer.key);
                        o.hashes.clone()
                    })
                    .collect()
            }
            Err(_) => Vec::new(),
        };
        for batch in batches {
            for chunk in batch.chunks(BLOBS_AHEAD_MAX) {
                self.write_frame(writer, &Frame::BlobsAhead(chunk.to_vec()))
                    .await?;
            }
        }
        Ok(())
    }

    /// `peer` told this node of blobs a sync is uploading to it: a fetcher
    /// takes what of them this node lacks, soon.
    pub(super) fn fetch_ahead_soon(&self, peer: &Member, hashes: Vec<Blake3Hash>) {
        let queued = self.blobs_ahead.queue.lock().is_ok_and(|mut q| {
            if q.len() >= QUEUE_KEPT {
                return false;
            }
            q.push_back((peer.clone(), hashes));
            true
        });
        if queued {
            self.blobs_ahead.wake.notify_one();
        } else {
            tracing::debug!(peer = %peer.name, "too many blob notices waiting; these are fetched after their event");
        }
    }

    /// One fetcher: takes the notices in order, fetching from the peer that
    /// sent each what of its blobs this node lacks.
    pub(super) async fn fetching_ahead(self: Arc<Self>) {
        loop {
            let next = self
                .blobs_ahead
                .queue
                .lock()
                .ok()
                .and_then(|mut q| q.pop_front());
            let Some((peer, hashes)) = next else {
                self.blobs_ahead.wake.notified().await;
                continue;
            };
            let blobs = self.blobs.clone();
            let missing = tokio::task::spawn_blocking(move || blobs.missing(&hashes))
                .await
                .unwrap_or_default();
            for chunk in missing.chunks(MAX_FETCH) {
                match self.fetch_from(&peer, chunk.to_vec()).await {
                    Ok(n) => {
                        self.health
                            .totals
                            .blobs_ahead
                            .fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e) => {
                        // The blobs come after the event instead.
                        tracing::info!(peer = %peer.name, error = %format!("{e:#}"), "fetching blobs ahead of their version failed");
                        break;
                    }
                }
            }
        }
    }
}
