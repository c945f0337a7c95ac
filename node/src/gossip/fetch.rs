//! Blob and version fetches over the mesh, both sides.
//!
//! A `Fetch` frame asks a peer for blobs by hash; the peer answers each
//! with a `Blob` header and the raw bytes (or `NoBlob`), verified against
//! the hash as they are written (`blobs::BlobWriter`). A node that serves
//! an earlier version of the domain first asks for the new one as a
//! `FetchVersion`: the peer answers with the manifest's delta from that
//! version and the blobs new in it, on one connection; the rebuilt
//! manifest is kept only if it hashes to the one the event names. The
//! content follower asks through [`PeerBlobs`]; which peer goes first is
//! `replication::fetch::order`'s decision.

use std::io::{self, Read};
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use makiatto_core::replication::fetch::{Ask, MAX_FETCH, order};
use makiatto_core::replication::frame::{self, Fetch, FetchVersion, Frame, PROTOCOL};
use makiatto_core::replication::{FRAME_TIMEOUT, Identity, Member};
use makiatto_events::{Blake3Hash, Manifest};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::Gossip;
use super::wire::{connect, timed_out};
use crate::blobs::{BlobError, BlobStore, Rebuilt, Staged, new_blobs};
use crate::peer_blobs::{PeerBlobs, Pending};

/// About this many bytes of framed blobs go to the socket per write.
const SEND_BATCH: usize = 1 << 20;
/// The room a batch is made with: a batch is sent once it reaches
/// `SEND_BATCH`, and the last read into it may overshoot by up to 64 KiB.
const BATCH_CAPACITY: usize = SEND_BATCH + (64 << 10);
/// A delta larger than this is not sent (the whole manifest streams
/// instead, as blobs do); it is far under `frame::MAX_FRAME`.
const MAX_DELTA: usize = 8 << 20;

impl PeerBlobs for Gossip {
    fn wait_for_ahead<'a>(&'a self, manifest: &'a Blake3Hash, within: Duration) -> Pending<'a, ()> {
        Box::pin(self.ahead.taking.wait(manifest, within))
    }

    fn fetch_version(&self, base: Blake3Hash, target: Blake3Hash) -> Pending<'_, bool> {
        Box::pin(self.fetch_version(base, target))
    }

    fn fetch_blobs<'a>(&'a self, want: &'a [Blake3Hash]) -> Pending<'a, Vec<Blake3Hash>> {
        Box::pin(self.fetch_blobs(want))
    }

    fn count_whole_manifest(&self) {
        self.health
            .totals
            .manifests_whole
            .fetch_add(1, Ordering::Relaxed);
    }
}

impl Gossip {
    /// Sends a peer the blobs (or the version) it asked for that this node
    /// holds.
    pub(super) async fn serve_fetch(&self, stream: TcpStream, ask: Ask) -> anyhow::Result<()> {
        let _ = stream.set_nodelay(true);
        let (_reader, mut writer) = stream.into_split();
        // A blocking thread reads the blobs and frames them into batches of
        // about `SEND_BATCH` bytes; this task writes each batch whole. Small
        // blobs travel many to a write (one frame, one syscall and one small
        // packet through WireGuard per blob cost more than their bytes), and
        // the disk is read while the network sends.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<io::Result<Vec<u8>>>(4);
        let blobs = self.blobs.clone();
        let reading = tokio::task::spawn_blocking(move || match ask {
            Ask::Blobs(want) => frame_blobs(&blobs, want, &tx, Vec::new()),
            Ask::Version { base, target } => frame_version(&blobs, base, target, &tx),
        });
        while let Some(batch) = rx.recv().await {
            let batch = batch.context("cannot read a blob")?;
            self.write_bytes(&mut writer, &batch).await?;
        }
        reading.await.context("the blob reader stopped")?;
        writer.shutdown().await.ok();
        Ok(())
    }

    /// Fetches what of `want` this node lacks from the live peers, one
    /// after another until nothing is missing. Returns what is still missing.
    async fn fetch_blobs(&self, want: &[Blake3Hash]) -> Vec<Blake3Hash> {
        let mut missing = self.blobs.missing(want);
        for peer in self.fetch_order() {
            if missing.is_empty() {
                break;
            }
            for chunk in missing.clone().chunks(MAX_FETCH) {
                match self.fetch_from(&peer, chunk.to_vec()).await {
                    Ok(n) if n > 0 => {
                        tracing::info!(peer = %peer.name, blobs = n, "fetched blobs")
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::info!(peer = %peer.name, error = %format!("{e:#}"), "fetching blobs from a peer failed")
                    }
                }
            }
            missing = self.blobs.missing(&missing);
        }
        missing
    }

    /// The live peers, in the order a fetch asks them.
    fn fetch_order(&self) -> Vec<Member> {
        let live: Vec<Member> = self.liveness.live_peers();
        let last = self.last_sender.lock().ok().and_then(|l| *l);
        order(live, last, &mut rand::rng())
    }

    /// Fetches blobs from one peer into the store; each is verified against
    /// its hash before it is kept. Returns how many were stored.
    pub(super) async fn fetch_from(
        &self,
        peer: &Member,
        want: Vec<Blake3Hash>,
    ) -> anyhow::Result<u64> {
        let Identity { cluster, node } = self.identity()?;
        let count = want.len();
        let reader = self
            .ask(
                peer,
                &Frame::Fetch(Fetch {
                    protocol: PROTOCOL,
                    cluster,
                    node,
                    want,
                }),
            )
            .await?;
        tokio::task::block_in_place(|| {
            let mut reader = reader;
            // Blobs are staged as they arrive and published together (two
            // file system syncs per fetch, not two per blob), also when the
            // fetch fails part way: what arrived whole is kept.
            let mut staged = Vec::new();
            let result = self.receive_blobs(&mut reader, peer, count, &mut staged);
            let stored = staged.len() as u64;
            self.blobs.commit(staged)?;
            result.map(|()| stored)
        })
    }

    /// This node's key and cluster, once it has a mesh identity.
    fn identity(&self) -> anyhow::Result<Identity> {
        self.liveness
            .topology()
            .identity()
            .context("this node has no mesh identity yet")
    }

    /// Sends a fetch's first frame to a peer and returns the connection to
    /// read the answer from, blocking, through a buffer (frames of small
    /// blobs arrive many to a segment). The answer is read on one blocking
    /// section, not a runtime handoff for every blob written.
    async fn ask(
        &self,
        peer: &Member,
        frame: &Frame,
    ) -> anyhow::Result<std::io::BufReader<std::net::TcpStream>> {
        let mut stream = connect(peer.mesh).await?;
        let _ = stream.set_nodelay(true);
        self.write_frame(&mut stream, frame).await?;
        let stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(FRAME_TIMEOUT))?;
        Ok(std::io::BufReader::with_capacity(SEND_BATCH, stream))
    }

    /// Reads up to `count` blobs and `Done`, each verified as it is written
    /// and staged (blocking).
    fn receive_blobs(
        &self,
        reader: &mut impl Read,
        peer: &Member,
        count: usize,
        staged: &mut Vec<Staged>,
    ) -> anyhow::Result<()> {
        for _ in 0..=count {
            match self.read_frame_blocking(reader)? {
                Frame::Done => return Ok(()),
                Frame::NoBlob(_) => {}
                Frame::Blob { hash, size } => {
                    match self.blobs.stage(hash, size, reader, false) {
                        Ok(Some(s)) => staged.push(s),
                        Ok(None) => {}
                        Err(e @ BlobError::HashMismatch { .. }) => {
                            self.health.bad_blob(peer);
                            tracing::warn!(peer = %peer.name, error = %e, "a peer sent a blob that fails verification; refused");
                            return Err(e.into());
                        }
                        Err(BlobError::Truncated { .. }) => {
                            bail!("{} closed the connection inside blob {hash}", peer.name)
                        }
                        Err(BlobError::Io(e)) if timed_out(&e) => {
                            bail!("{} went silent inside blob {hash}", peer.name)
                        }
                        Err(e) => return Err(e.into()),
                    }
                    self.health
                        .totals
                        .bytes_in
                        .fetch_add(size, Ordering::Relaxed);
                }
                _ => bail!("{} sent a frame out of place in a blob fetch", peer.name),
            }
        }
        bail!("{} sent more blobs than were asked for", peer.name)
    }

    /// Fetches the manifest `target` as a delta from `base` (a manifest
    /// this node holds), with the blobs new in it, from the first live peer
    /// that can send it. The rebuilt manifest is kept only if its hash is
    /// `target`. Returns whether it is now stored; if not (no peer holds
    /// both, or an older peer), the caller fetches the whole manifest.
    async fn fetch_version(&self, base: Blake3Hash, target: Blake3Hash) -> bool {
        let blobs = self.blobs.clone();
        let Ok(base_manifest) = tokio::task::block_in_place(|| blobs.manifest(&base)) else {
            return false;
        };
        for peer in self.fetch_order() {
            match self
                .fetch_version_from(&peer, base, &base_manifest, target)
                .await
            {
                Ok(true) => {
                    self.health
                        .totals
                        .versions_by_delta
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(peer = %peer.name, manifest = %target.short(), "fetched a version as a delta");
                    return true;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::info!(peer = %peer.name, error = %format!("{e:#}"), "fetching a version from a peer failed")
                }
            }
        }
        false
    }

    async fn fetch_version_from(
        &self,
        peer: &Member,
        base: Blake3Hash,
        base_manifest: &Manifest,
        target: Blake3Hash,
    ) -> anyhow::Result<bool> {
        let Identity { cluster, node } = self.identity()?;
        let reader = self
            .ask(
                peer,
                &Frame::FetchVersion(FetchVersion {
                    protocol: PROTOCOL,
                    cluster,
                    node,
                    base,
                    target,
                }),
            )
            .await?;
        tokio::task::block_in_place(|| {
            let mut reader = reader;
            let delta = match self.read_frame_blocking(&mut reader)? {
                Frame::NoBlob(_) => return Ok(false),
                Frame::ManifestDelta { target: t, delta } if t == target => delta,
                _ => bail!("{} sent a frame out of place in a version fetch", peer.name),
            };
            let rebuilt = match Rebuilt::from_delta(&delta, base_manifest, target) {
                Ok(r) => r,
                Err(e) => {
                    self.health.bad_blob(peer);
                    bail!(
                        "{} sent a manifest delta that does not apply: {e:#}",
                        peer.name
                    );
                }
            };
            let mut staged = Vec::new();
            if let Some(s) = rebuilt.stage(&self.blobs)? {
                staged.push(s);
            }
            let count = new_blobs(&rebuilt.delta, base_manifest).len();
            let result = self.receive_blobs(&mut reader, peer, count, &mut staged);
            self.blobs.commit(staged)?;
            rebuilt.remember(&self.blobs);
            result.map(|()| true)
        })
    }
}

/// Reads the blobs `want` from the store (on a blocking thread) and sends
/// them, framed (`Blob` header and bytes, or `NoBlob`) and then `Done`, in
/// batches of about [`SEND_BATCH`] bytes. Stops when the receiver is gone.
fn frame_blobs(
    blobs: &BlobStore,
    want: Vec<Blake3Hash>,
    tx: &tokio::sync::mpsc::Sender<io::Result<Vec<u8>>>,
    first: Vec<u8>,
) {
    let send = |batch: &mut Vec<u8>| {
        let full = std::mem::replace(batch, Vec::with_capacity(BATCH_CAPACITY));
        tx.blocking_send(Ok(full)).is_ok()
    };
    let fail = |e: io::Error| {
        let _ = tx.blocking_send(Err(e));
    };
    let framed = |f: &Frame, batch: &mut Vec<u8>| {
        frame::encode(f, batch).map_err(|e| fail(io::Error::other(format!("{e:#}"))))
    };
    let mut batch = first;
    batch.reserve(BATCH_CAPACITY.saturating_sub(batch.len()));
    for hash in want {
        let mut file = match std::fs::File::open(blobs.path(&hash)) {
            Ok(f) => f,
            Err(_) => {
                if framed(&Frame::NoBlob(hash), &mut batch).is_err() {
                    return;
                }
                continue;
            }
        };
        let size = match file.metadata() {
            Ok(m) => m.len(),
            Err(e) => return fail(e),
        };
        if framed(&Frame::Blob { hash, size }, &mut batch).is_err() {
            return;
        }
        let mut left = size;
        while left > 0 {
            let room = BATCH_CAPACITY.saturating_sub(batch.len()).max(64 << 10);
            let take = left.min(room as u64) as usize;
            let at = batch.len();
            batch.resize(at + take, 0);
            if let Err(e) = file.read_exact(&mut batch[at..]) {
                return fail(io::Error::new(
                    e.kind(),
                    format!("blob {hash} shrank or cannot be read while it was sent: {e}"),
                ));
            }
            left -= take as u64;
            if batch.len() >= SEND_BATCH && !send(&mut batch) {
                return;
            }
        }
        if batch.len() >= SEND_BATCH && !send(&mut batch) {
            return;
        }
    }
    if framed(&Frame::Done, &mut batch).is_ok() {
        send(&mut batch);
    }
}

/// Answers a `FetchVersion` (on a blocking thread): the delta from `base`
/// to `target` and the blobs new in it, as [`frame_blobs`] sends them; or
/// `NoBlob(target)` when this node cannot make the delta.
fn frame_version(
    blobs: &BlobStore,
    base: Blake3Hash,
    target: Blake3Hash,
    tx: &tokio::sync::mpsc::Sender<io::Result<Vec<u8>>>,
) {
    let read = |h: &Blake3Hash| blobs.manifest(h).ok();
    let mut first = Vec::new();
    let made = match (read(&base), read(&target)) {
        (Some(b), Some(t)) => {
            let delta = t.delta_from(&b);
            let bytes = delta.encode();
            (bytes.len() <= MAX_DELTA).then(|| (new_blobs(&delta, &b), bytes))
        }
        _ => None,
    };
    let framed = match made {
        Some((want, delta)) => {
            frame::encode(&Frame::ManifestDelta { target, delta }, &mut first).map(|()| want)
        }
        None => frame::encode(&Frame::NoBlob(target), &mut first).map(|()| Vec::new()),
    };
    match framed {
        Ok(want) => frame_blobs(blobs, want, tx, first),
        Err(e) => {
            let _ = tx.blocking_send(Err(io::Error::other(format!("{e:#}"))));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits a byte stream of frames (and blob bytes) back into what was
    /// sent: (hash, Some(bytes)) per blob, (hash, None) per `NoBlob`.
    fn unframe(mut wire: &[u8]) -> Vec<(Blake3Hash, Option<Vec<u8>>)> {
        let mut out = Vec::new();
        loop {
            let len = u32::from_be_bytes(wire[..4].try_into().unwrap()) as usize;
            let frame: Frame = postcard::from_bytes(&wire[4..4 + len]).unwrap();
            wire = &wire[4 + len..];
            match frame {
                Frame::Done => {
                    assert!(wire.is_empty(), "bytes after Done");
                    return out;
                }
                Frame::NoBlob(h) => out.push((h, None)),
                Frame::Blob { hash, size } => {
                    let (bytes, rest) = wire.split_at(size as usize);
                    out.push((hash, Some(bytes.to_vec())));
                    wire = rest;
                }
                _ => panic!("a frame out of place"),
            }
        }
    }

    /// What `frame_version` sends, in one piece.
    fn version_wire(store: BlobStore, base: Blake3Hash, target: Blake3Hash) -> Vec<u8> {
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let sender = std::thread::spawn(move || frame_version(&store, base, target, &tx));
        let mut wire = Vec::new();
        while let Some(batch) = rx.blocking_recv() {
            wire.extend(batch.unwrap());
        }
        sender.join().unwrap();
        wire
    }

    #[test]
    fn a_version_is_sent_as_its_delta_and_its_new_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let put = |bytes: &[u8]| {
            let h = Blake3Hash::of(bytes);
            store.put(h, bytes.len() as u64, &mut &bytes[..]).unwrap();
            h
        };
        let entry = |hash, size| makiatto_events::FileEntry {
            hash,
            size,
            content_type: "text/plain".into(),
        };
        let mut base = Manifest::default();
        for i in 0..100u32 {
            let body = format!("file {i}");
            let h = put(body.as_bytes());
            base.insert(format!("f{i}.txt"), entry(h, body.len() as u64))
                .unwrap();
        }
        let mut target = base.clone();
        let changed = put(b"changed");
        target.insert("f7.txt".into(), entry(changed, 7)).unwrap();
        // Two paths, one new blob; one path reuses a blob of the base.
        target.insert("copy.txt".into(), entry(changed, 7)).unwrap();
        target
            .insert("again.txt".into(), base.files["f1.txt"].clone())
            .unwrap();
        target.files.remove("f9.txt");
        let (b, t) = (put(&base.encode()), put(&target.encode()));
        let absent = Blake3Hash::of(b"no such manifest");
        let wire = version_wire(BlobStore::open(dir.path()).unwrap(), b, t);
        let len = u32::from_be_bytes(wire[..4].try_into().unwrap()) as usize;
        let Frame::ManifestDelta { target: got, delta } =
            postcard::from_bytes(&wire[4..4 + len]).unwrap()
        else {
            panic!("no delta first");
        };
        assert_eq!(got, t);
        let delta = makiatto_events::ManifestDelta::decode(&delta).unwrap();
        assert_eq!(Manifest::apply(&base, &delta).unwrap().hash(), t);
        assert_eq!(new_blobs(&delta, &base), vec![changed]);
        let blobs = unframe(&wire[4 + len..]);
        assert_eq!(blobs, vec![(changed, Some(b"changed".to_vec()))]);
        // Without the base (or the target) here: NoBlob, then Done.
        for (base, target) in [(absent, t), (b, absent)] {
            let wire = version_wire(BlobStore::open(dir.path()).unwrap(), base, target);
            assert_eq!(unframe(&wire), vec![(target, None)]);
        }
    }

    #[test]
    fn blobs_are_framed_in_batches_that_parse_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        // Small ones, one larger than a batch, and one the store lacks.
        let mut blobs: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; 100 + usize::from(i)]).collect();
        blobs.insert(
            10,
            (0..SEND_BATCH * 3 + 7).map(|i| (i % 253) as u8).collect(),
        );
        let mut want = Vec::new();
        for b in &blobs {
            let h = Blake3Hash::of(b);
            store.put(h, b.len() as u64, &mut &b[..]).unwrap();
            want.push(h);
        }
        let absent = Blake3Hash::of(b"absent");
        want.insert(20, absent);
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let reader = std::thread::spawn({
            let want = want.clone();
            move || frame_blobs(&store, want, &tx, Vec::new())
        });
        let mut wire = Vec::new();
        let mut batches = 0;
        while let Some(batch) = rx.blocking_recv() {
            let batch = batch.unwrap();
            assert!(batch.len() <= BATCH_CAPACITY + 128);
            wire.extend(batch);
            batches += 1;
        }
        reader.join().unwrap();
        assert!(batches >= 3, "a large blob spans batches ({batches})");
        let got = unframe(&wire);
        assert_eq!(got.len(), want.len());
        let mut blobs = blobs.into_iter();
        for ((hash, bytes), asked) in got.into_iter().zip(&want) {
            assert_eq!(hash, *asked);
            if hash == absent {
                assert!(bytes.is_none());
            } else {
                assert_eq!(bytes, blobs.next());
            }
        }
    }
}
