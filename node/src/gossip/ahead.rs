//! Site versions sent ahead of their events (`Features::VERSION_AHEAD`).
//!
//! When `maki` sends a new manifest as a delta and the delta and the blobs
//! new in it are small, this node offers it (kept `AHEAD_FOR`): each
//! session sends it once to a peer that announced the feature, as one
//! `VersionAhead` frame before the events. A peer stores it on a blocking
//! thread (the manifest rebuilt from its own copy of the base and checked
//! against its hash; only the blobs the delta names, each verified) while
//! it appends the events, and its content follower waits for it rather
//! than fetch it. A peer without the base drops it and fetches as before.
//! How much a session may take is `replication::session`'s decision.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use makiatto_core::replication::frame::{Frame, VersionAhead};
use makiatto_core::replication::{AHEAD_KEPT, AHEAD_MAX_BYTES, Member};
use makiatto_events::{AuthorKey, Blake3Hash};
use tokio::io::AsyncWriteExt;

use super::Gossip;
use crate::blobs::{BlobError, BlobStore, PutDelta, Rebuilt, new_blobs};

/// How long a version is offered ahead.
const AHEAD_FOR: Duration = Duration::from_secs(30);

/// The versions offered here, and those being taken from peers.
#[derive(Default)]
pub(super) struct Ahead {
    /// Versions to send ahead of their events (newest last).
    offered: Mutex<Vec<Offered>>,
    /// Versions a peer sent ahead that are being stored now.
    pub(super) taking: Arc<Taking>,
}

/// A version this node took from `maki` as a delta, offered to each peer
/// once, ahead of its event.
struct Offered {
    put: PutDelta,
    at: Instant,
    sent_to: Vec<AuthorKey>,
}

/// A version sent ahead being stored (see `Gossip::start_take`); an
/// error is this node's own (its store), not the peer's.
pub(super) struct Take {
    handle: tokio::task::JoinHandle<anyhow::Result<Taken>>,
}

/// What became of a version sent ahead.
#[derive(Debug)]
enum Taken {
    Stored,
    /// This node lacks its base, or holds it already.
    Unusable,
    /// It does not check out (the peer's fault): a delta that does not
    /// decode, apply or give the target, or a blob that is not its hash.
    Refused(anyhow::Error),
}

/// Manifests of versions a peer sent ahead that are being stored, and a
/// wake-up when one is done: the content follower waits for them rather
/// than fetch the same version again.
#[derive(Default)]
pub(super) struct Taking {
    /// How many takes of each manifest are running (two peers may send
    /// the same version at once).
    manifests: Mutex<foldhash::HashMap<Blake3Hash, usize>>,
    done: tokio::sync::Notify,
}

impl Taking {
    fn start(&self, manifest: Blake3Hash) {
        if let Ok(mut manifests) = self.manifests.lock() {
            *manifests.entry(manifest).or_default() += 1;
        }
    }

    fn end(&self, manifest: &Blake3Hash) {
        if let Ok(mut manifests) = self.manifests.lock()
            && let Some(n) = manifests.get_mut(manifest)
        {
            *n -= 1;
            if *n == 0 {
                manifests.remove(manifest);
            }
        }
        self.done.notify_waiters();
    }

    /// Returns once `manifest` is not being taken, or after `within`.
    pub(super) async fn wait(&self, manifest: &Blake3Hash, within: Duration) {
        let until = tokio::time::Instant::now() + within;
        loop {
            // Enabled before the check: an end between the two still wakes.
            let done = self.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if !self
                .manifests
                .lock()
                .is_ok_and(|t| t.contains_key(manifest))
            {
                return;
            }
            if tokio::time::timeout_at(until, done).await.is_err() {
                return;
            }
        }
    }
}

impl Gossip {
    /// A site version `maki` sent here as a manifest delta: if it is small,
    /// each peer's next session sends it ahead of the event that names it
    /// (the delta and the new blobs, which `maki` uploads before the
    /// event). Each peer then switches when the event lands, without
    /// asking this node for the version: a connection and a round trip
    /// less per peer.
    pub fn offer_version(&self, put: PutDelta) {
        let bytes = put.delta.len() as u64 + put.new_blobs.iter().map(|(_, n)| n).sum::<u64>();
        if bytes > AHEAD_MAX_BYTES {
            return;
        }
        if let Ok(mut offered) = self.ahead.offered.lock() {
            offered.retain(|o| o.at.elapsed() < AHEAD_FOR && o.put.target != put.target);
            if offered.len() >= AHEAD_KEPT {
                offered.remove(0);
            }
            offered.push(Offered {
                put,
                at: Instant::now(),
                sent_to: Vec::new(),
            });
        }
    }

    /// Sends `peer` the versions offered here that it was not sent yet,
    /// each in one frame. One whose blobs are not all here yet (`maki` is
    /// still uploading them) waits for a later session.
    pub(super) async fn send_ahead(
        &self,
        writer: &mut (impl AsyncWriteExt + Unpin),
        peer: &Member,
    ) -> anyhow::Result<()> {
        let offers: Vec<PutDelta> = match self.ahead.offered.lock() {
            Ok(mut offered) => {
                offered.retain(|o| o.at.elapsed() < AHEAD_FOR);
                offered
                    .iter()
                    .filter(|o| !o.sent_to.contains(&peer.key))
                    .map(|o| o.put.clone())
                    .collect()
            }
            Err(_) => Vec::new(),
        };
        for put in offers {
            let PutDelta {
                base,
                target,
                delta,
                new_blobs,
                ..
            } = put;
            let store = self.blobs.clone();
            let read = tokio::task::spawn_blocking(move || {
                new_blobs
                    .iter()
                    .map(|(hash, size)| {
                        let bytes = std::fs::read(store.path(hash)).ok()?;
                        (bytes.len() as u64 == *size).then_some((*hash, bytes))
                    })
                    .collect::<Option<Vec<_>>>()
            })
            .await?;
            let Some(blobs) = read else { continue };
            let frame = Frame::VersionAhead(VersionAhead {
                base,
                target,
                delta,
                blobs,
            });
            self.write_frame(writer, &frame).await?;
            if let Ok(mut offered) = self.ahead.offered.lock()
                && let Some(o) = offered.iter_mut().find(|o| o.put.target == target)
            {
                o.sent_to.push(peer.key);
            }
        }
        Ok(())
    }

    /// Starts storing a version a peer sent ahead of its event (see
    /// [`Frame::VersionAhead`]) on a blocking thread, while the session
    /// reads on: the events that follow are appended meanwhile (the two
    /// file system syncs overlap), and the content follower waits for the
    /// version (`PeerBlobs::wait_for_ahead`). One this node cannot use (it
    /// lacks the base, or holds the version already) is dropped, and the
    /// follower fetches as before.
    pub(super) fn start_take(&self, peer: &Member, ahead: VersionAhead) -> Take {
        let store = self.blobs.clone();
        let target = ahead.target;
        let taking = self.ahead.taking.clone();
        taking.start(target);
        let name = peer.name.clone();
        let handle = tokio::task::spawn_blocking(move || {
            let taken = take_version(&store, ahead);
            taking.end(&target);
            if matches!(taken, Ok(Taken::Stored)) {
                tracing::info!(peer = %name, manifest = %target.short(), "took a version sent ahead of its event");
            }
            taken
        });
        Take { handle }
    }

    /// The outcome of versions taken in a session: counted, and one that
    /// did not check out is counted against the peer (it changed nothing).
    /// A failure of this node's own store is not the peer's.
    pub(super) async fn finish_takes(&self, peer: &Member, takes: Vec<Take>) {
        for take in takes {
            match take.handle.await {
                Ok(Ok(Taken::Stored)) => {
                    self.health
                        .totals
                        .versions_ahead
                        .fetch_add(1, Ordering::Relaxed);
                }
                Ok(Ok(Taken::Unusable)) => {}
                Ok(Ok(Taken::Refused(e))) => {
                    self.health.bad_blob(peer);
                    tracing::warn!(peer = %peer.name, error = %format!("{e:#}"), "a peer sent a version that does not check out; refused");
                }
                Ok(Err(e)) => {
                    tracing::warn!(peer = %peer.name, error = %format!("{e:#}"), "cannot store a version a peer sent ahead; it is fetched instead")
                }
                Err(e) => tracing::warn!(error = %e, "taking a version sent ahead stopped"),
            }
        }
    }
}

/// Stores a version sent ahead (blocking): the manifest rebuilt from the
/// base held here and checked against `target`, and the blobs new in it,
/// each verified. An error is this node's store failing; what the peer got
/// wrong is [`Taken::Refused`].
fn take_version(store: &BlobStore, ahead: VersionAhead) -> anyhow::Result<Taken> {
    if store.contains(&ahead.target) {
        return Ok(Taken::Unusable);
    }
    let Ok(base) = store.manifest(&ahead.base) else {
        return Ok(Taken::Unusable);
    };
    let rebuilt = match Rebuilt::from_delta(&ahead.delta, &base, ahead.target) {
        Ok(r) => r,
        Err(e) => return Ok(Taken::Refused(e)),
    };
    let wanted: foldhash::HashSet<Blake3Hash> =
        new_blobs(&rebuilt.delta, &base).into_iter().collect();
    let mut staged = Vec::new();
    let mut refused = None;
    if let Some(s) = rebuilt.stage(store)? {
        staged.push(s);
    }
    for (hash, blob) in ahead.blobs.iter().filter(|(h, _)| wanted.contains(h)) {
        match store.stage(*hash, blob.len() as u64, &mut &blob[..], false) {
            Ok(Some(s)) => staged.push(s),
            Ok(None) => {}
            Err(e @ BlobError::HashMismatch { .. }) => {
                refused = Some(anyhow::Error::from(e));
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    // What verified is kept, as a fetch keeps it.
    store.commit(staged)?;
    if let Some(e) = refused {
        return Ok(Taken::Refused(e));
    }
    rebuilt.remember(store);
    Ok(Taken::Stored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use makiatto_events::Manifest;

    #[tokio::test]
    async fn the_follower_waits_for_a_version_being_taken_and_no_longer() {
        let taking = Arc::new(Taking::default());
        let (m, other) = (Blake3Hash::of(b"m"), Blake3Hash::of(b"other"));
        // Nothing being taken: no wait.
        let t = Instant::now();
        taking.wait(&m, Duration::from_secs(30)).await;
        assert!(t.elapsed() < Duration::from_secs(5));
        // Being taken, twice: the wait ends when both are done, not before.
        taking.start(m);
        taking.start(m);
        let waiter = tokio::spawn({
            let taking = taking.clone();
            async move { taking.wait(&m, Duration::from_secs(30)).await }
        });
        taking.end(&other);
        taking.end(&m);
        tokio::task::yield_now().await;
        assert!(
            !waiter.is_finished(),
            "another manifest's end, or one take of two, is not the end"
        );
        taking.end(&m);
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("woken when done")
            .unwrap();
        // A take that never ends: the wait gives up after its limit.
        taking.start(m);
        let t = Instant::now();
        taking.wait(&m, Duration::from_millis(50)).await;
        assert!(t.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn a_version_sent_ahead_is_taken_only_when_it_checks_out() {
        let entry = |hash, size| makiatto_events::FileEntry {
            hash,
            size,
            content_type: "text/plain".into(),
        };
        let open = || {
            let dir = tempfile::tempdir().unwrap();
            let store = BlobStore::open(dir.path()).unwrap();
            (dir, store)
        };
        let put = |store: &BlobStore, bytes: &[u8]| {
            let h = Blake3Hash::of(bytes);
            store.put(h, bytes.len() as u64, &mut &bytes[..]).unwrap();
            h
        };
        let mut base = Manifest::default();
        for i in 0..20u32 {
            let body = format!("file {i}");
            base.insert(
                format!("f{i}.txt"),
                entry(Blake3Hash::of(body.as_bytes()), body.len() as u64),
            )
            .unwrap();
        }
        let mut target = base.clone();
        let new = b"new page".to_vec();
        let new_hash = Blake3Hash::of(&new);
        target
            .insert("new.txt".into(), entry(new_hash, new.len() as u64))
            .unwrap();
        let (b, t) = (Blake3Hash::of(&base.encode()), target.hash());
        let delta = target.delta_from(&base).encode();
        let stray = b"not named by the delta".to_vec();
        let ahead = |blobs: Vec<(Blake3Hash, Vec<u8>)>| VersionAhead {
            base: b,
            target: t,
            delta: delta.clone(),
            blobs,
        };
        let sent = || {
            vec![
                (new_hash, new.clone()),
                (Blake3Hash::of(&stray), stray.clone()),
            ]
        };

        // A node that holds the base takes the manifest and the new blob,
        // and nothing the delta does not name.
        let (_d, store) = open();
        put(&store, &base.encode());
        assert!(matches!(
            take_version(&store, ahead(sent())).unwrap(),
            Taken::Stored
        ));
        assert!(store.contains(&t) && store.contains(&new_hash));
        assert!(!store.contains(&Blake3Hash::of(&stray)));
        assert_eq!(store.manifest(&t).unwrap().files.len(), 21);
        // Once held, it is not taken again.
        assert!(matches!(
            take_version(&store, ahead(sent())).unwrap(),
            Taken::Unusable
        ));

        // Without the base, nothing is stored.
        let (_d, store) = open();
        assert!(matches!(
            take_version(&store, ahead(sent())).unwrap(),
            Taken::Unusable
        ));
        assert!(!store.contains(&t) && !store.contains(&new_hash));

        // A blob whose bytes are not its hash is refused.
        let (_d, store) = open();
        put(&store, &base.encode());
        let forged = vec![(new_hash, b"forged!!".to_vec())];
        assert!(matches!(
            take_version(&store, ahead(forged)).unwrap(),
            Taken::Refused(_)
        ));
        assert!(!store.contains(&new_hash));
        // So is a delta that does not give the target.
        let (_d, store) = open();
        put(&store, &base.encode());
        let mut wrong = ahead(sent());
        wrong.target = Blake3Hash::of(b"another manifest");
        assert!(matches!(
            take_version(&store, wrong).unwrap(),
            Taken::Refused(_)
        ));
    }
}
