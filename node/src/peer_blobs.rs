//! [`PeerBlobs`]: what the content follower asks of the peers — a site
//! version's manifest and blobs, fetched over the mesh and verified — as a
//! narrow handle, so the follower does not hold the replication service.
//! Gossip answers it (`gossip/fetch.rs`, `gossip/ahead.rs`).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use makiatto_events::Blake3Hash;

/// A future the handle returns (boxed: the handle is a trait object).
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Blobs and versions from the peers.
pub trait PeerBlobs: Send + Sync {
    /// Waits (at most `within`) while the version whose manifest is
    /// `manifest` is being stored from a peer that sent it ahead of its
    /// event; the event can come first from another peer, and the version
    /// should not be fetched twice.
    fn wait_for_ahead<'a>(&'a self, manifest: &'a Blake3Hash, within: Duration) -> Pending<'a, ()>;

    /// Fetches the manifest `target` as a delta from `base` (one this node
    /// holds), with the blobs new in it, from the first live peer that can
    /// send it. Returns whether it is now stored; if not, the caller
    /// fetches the whole manifest.
    fn fetch_version(&self, base: Blake3Hash, target: Blake3Hash) -> Pending<'_, bool>;

    /// Fetches what of `want` this node lacks from the live peers, one
    /// after another until nothing is missing. Returns what is still missing.
    fn fetch_blobs<'a>(&'a self, want: &'a [Blake3Hash]) -> Pending<'a, Vec<Blake3Hash>>;

    /// Counts a manifest fetched whole (no peer could send a delta).
    fn count_whole_manifest(&self);
}
