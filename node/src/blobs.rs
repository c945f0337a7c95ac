//! The content-addressed blob store (docs/design.md, Content addressing): every file of every site
//! version, stored once under its blake3 hash at `<data>/blobs/ab/abcd…`.
//!
//! A blob is written to a temporary file while it is hashed, checked
//! against the hash and size it was announced with, made durable, and only
//! then renamed into place: a blob that is present is complete and correct,
//! and one whose bytes do not match its name never appears. Blobs arrive
//! from `maki` (`makiatto blobs receive`, a stream over SSH) and later from
//! peers over the mesh.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use makiatto_events::{Blake3Hash, Manifest};
use makiatto_protocol::blob_stream;

/// A stream's staged blobs are committed at least this often: every
/// this many blobs, bytes or this long (whichever comes first). Each
/// commit is announced to the peers, which fetch it while the stream goes
/// on (`makiatto blobs receive`), so a batch is also a unit of fan-out.
const COMMIT_BLOBS: usize = 2048;
const COMMIT_BYTES: u64 = 32 << 20;
const COMMIT_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// The largest blob accepted (a single file of a site).
pub const MAX_BLOB_BYTES: u64 = 8 << 30;

/// Why a blob was refused.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {expected}: its bytes hash to {actual}, not to its name; refused")]
    HashMismatch {
        expected: Blake3Hash,
        actual: Blake3Hash,
    },
    #[error(
        "blob {hash}: announced as {announced} bytes, more than the {MAX_BLOB_BYTES}-byte limit"
    )]
    TooLarge { hash: Blake3Hash, announced: u64 },
    #[error("blob {hash}: the stream ended after {got} of {announced} bytes")]
    Truncated {
        hash: Blake3Hash,
        announced: u64,
        got: u64,
    },
    #[error("blob store: {0}")]
    Io(#[from] std::io::Error),
    #[error("manifest {hash}: {error}")]
    Manifest {
        hash: Blake3Hash,
        error: makiatto_events::ManifestError,
    },
}

/// How many decoded manifests are kept in memory, shared by the content
/// follower, the mesh and the HTTP routes: a domain's deployed version and
/// the one before it for several domains. A 10,000-file manifest decodes
/// in 25–50 ms here and takes about 2 MB; the deployed ones are held by
/// the routes anyway.
const MANIFESTS_KEPT: usize = 16;

/// A blake3 hash written as 64 hex digits (surrounding space ignored).
pub fn parse_hash(text: &str) -> anyhow::Result<Blake3Hash> {
    text.trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("{text:?} is not a blake3 hash (64 hex digits)"))
}

/// A manifest stored from a delta: what the peers need to rebuild it too.
#[derive(Debug, Clone)]
pub struct PutDelta {
    pub base: Blake3Hash,
    pub target: Blake3Hash,
    /// The `ManifestDelta` bytes.
    pub delta: Vec<u8>,
    /// How many files the manifest names.
    pub files: usize,
    /// The blobs it names that `base` does not, with their sizes.
    pub new_blobs: Vec<(Blake3Hash, u64)>,
}

/// A manifest rebuilt from a base held here and a `ManifestDelta`, checked
/// against the hash it is to have: how a version arrives as a delta, from
/// `maki` (`manifest-put`) or from a peer (a fetch, or sent ahead).
pub struct Rebuilt {
    pub target: Blake3Hash,
    pub delta: makiatto_events::ManifestDelta,
    pub manifest: Manifest,
    /// The manifest's canonical bytes (the blob `target`).
    pub encoded: Vec<u8>,
}

impl Rebuilt {
    /// Decodes `delta` and applies it to `base`. An error means the delta
    /// (whoever sent it) is wrong: it does not decode, does not apply, or
    /// the result does not hash to `target`.
    pub fn from_delta(
        delta: &[u8],
        base: &Manifest,
        target: Blake3Hash,
    ) -> anyhow::Result<Rebuilt> {
        use anyhow::Context;
        let delta =
            makiatto_events::ManifestDelta::decode(delta).context("the delta does not decode")?;
        let (manifest, encoded) = delta
            .rebuild(base, target)
            .context("the delta does not apply")?;
        Ok(Rebuilt {
            target,
            delta,
            manifest,
            encoded,
        })
    }

    /// Stages the manifest's bytes as blob `target` (none if held).
    pub fn stage(&self, store: &BlobStore) -> Result<Option<Staged>, BlobError> {
        store.stage(
            self.target,
            self.encoded.len() as u64,
            &mut &self.encoded[..],
            false,
        )
    }

    /// Keeps the decoded manifest for the deploy that follows (once its
    /// blob is committed).
    pub fn remember(self, store: &BlobStore) {
        store.remember_manifest(self.target, Arc::new(self.manifest));
    }
}

/// Stores manifest `target` (hex) rebuilt from manifest `base` (hex, held
/// here) and a `ManifestDelta` (hex), once it hashes to `target`; keeps it
/// decoded for the deploy that follows.
pub fn put_manifest_delta(
    store: &BlobStore,
    base: &Blake3Hash,
    target: &Blake3Hash,
    delta: &str,
) -> anyhow::Result<PutDelta> {
    use anyhow::Context;
    let (base, target) = (*base, *target);
    let bytes = hex::decode(delta).context("the delta is not hex")?;
    let held = store
        .manifest(&base)
        .with_context(|| format!("manifest {base} is not stored here"))?;
    let rebuilt = Rebuilt::from_delta(&bytes, &held, target)
        .with_context(|| format!("applied to manifest {base}"))?;
    if let Some(staged) = rebuilt.stage(store)? {
        store.commit(vec![staged])?;
    }
    let new: foldhash::HashSet<Blake3Hash> = new_blobs(&rebuilt.delta, &held).into_iter().collect();
    let mut new_blobs = Vec::with_capacity(new.len());
    if !new.is_empty() {
        let mut seen = foldhash::HashSet::default();
        for f in rebuilt.manifest.blobs() {
            if new.contains(&f.hash) && seen.insert(f.hash) {
                new_blobs.push((f.hash, f.size));
            }
        }
    }
    let files = rebuilt.manifest.files.len();
    rebuilt.remember(store);
    Ok(PutDelta {
        base,
        target,
        delta: bytes,
        files,
        new_blobs,
    })
}

/// The blobs a delta names that its base does not: what a node holding
/// the base lacks for the target (in the delta's path order, each once).
pub fn new_blobs(delta: &makiatto_events::ManifestDelta, base: &Manifest) -> Vec<Blake3Hash> {
    let held: foldhash::HashSet<Blake3Hash> = base.blobs().map(|f| f.hash).collect();
    let mut seen = foldhash::HashSet::default();
    delta
        .hashes()
        .filter(|h| !held.contains(h) && seen.insert(*h))
        .collect()
}

/// The blob directory of a data directory.
pub struct BlobStore {
    dir: PathBuf,
    /// Files and directories made here are handed to this owner (the
    /// daemon's user), so that the daemon can add blobs beside them.
    owner: Option<(u32, u32)>,
    /// Recently used manifests, decoded, the most recent last.
    manifests: std::sync::Mutex<Vec<(Blake3Hash, Arc<Manifest>)>>,
}

pub use makiatto_protocol::blob_stream::Received;

impl BlobStore {
    /// Opens (creating) `<data_dir>/blobs`, owned like `data_dir`.
    pub fn open(data_dir: &Path) -> std::io::Result<BlobStore> {
        let dir = data_dir.join("blobs");
        std::fs::create_dir_all(dir.join("tmp"))?;
        let owner = std::fs::metadata(data_dir).ok().map(|m| (m.uid(), m.gid()));
        let store = BlobStore {
            dir,
            owner,
            manifests: std::sync::Mutex::new(Vec::new()),
        };
        store.hand_over(&store.dir)?;
        store.hand_over(&store.dir.join("tmp"))?;
        Ok(store)
    }

    fn hand_over(&self, path: &Path) -> std::io::Result<()> {
        if let Some((uid, gid)) = self.owner
            && nix::unistd::geteuid().is_root()
        {
            nix::unistd::chown(
                path,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
            )
            .map_err(std::io::Error::from)?;
        }
        Ok(())
    }

    /// Where a blob lives.
    pub fn path(&self, hash: &Blake3Hash) -> PathBuf {
        let hex = hash.to_hex();
        self.dir.join(&hex[..2]).join(hex)
    }

    /// The manifest stored as blob `hash`, decoded (and checked: canonical,
    /// every path allowed), from memory when it was used lately.
    pub fn manifest(&self, hash: &Blake3Hash) -> Result<Arc<Manifest>, BlobError> {
        if let Ok(mut kept) = self.manifests.lock()
            && let Some(at) = kept.iter().position(|(h, _)| h == hash)
        {
            let entry = kept.remove(at);
            let manifest = entry.1.clone();
            kept.push(entry);
            return Ok(manifest);
        }
        let bytes = std::fs::read(self.path(hash))?;
        let manifest = Arc::new(
            Manifest::decode(&bytes).map_err(|error| BlobError::Manifest { hash: *hash, error })?,
        );
        self.remember_manifest(*hash, manifest.clone());
        Ok(manifest)
    }

    /// Keeps a decoded manifest (one rebuilt from a delta, say) for
    /// [`BlobStore::manifest`]; the caller has checked that it hashes to
    /// `hash`.
    pub fn remember_manifest(&self, hash: Blake3Hash, manifest: Arc<Manifest>) {
        if let Ok(mut kept) = self.manifests.lock() {
            kept.retain(|(h, _)| *h != hash);
            if kept.len() >= MANIFESTS_KEPT {
                kept.remove(0);
            }
            kept.push((hash, manifest));
        }
    }

    pub fn contains(&self, hash: &Blake3Hash) -> bool {
        self.path(hash).is_file()
    }

    /// Those of `hashes` not held, in the order given.
    pub fn missing(&self, hashes: &[Blake3Hash]) -> Vec<Blake3Hash> {
        hashes
            .iter()
            .filter(|h| !self.contains(h))
            .copied()
            .collect()
    }

    /// Every stored blob with its size and last modification time.
    pub fn list(&self) -> std::io::Result<Vec<(Blake3Hash, u64, std::time::SystemTime)>> {
        let mut out = Vec::new();
        for shard in std::fs::read_dir(&self.dir)? {
            let shard = shard?;
            let name = shard.file_name();
            if name.len() != 2 || !shard.file_type()?.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(shard.path())? {
                let entry = entry?;
                let mut bytes = [0u8; 32];
                if hex::decode_to_slice(entry.file_name().as_encoded_bytes(), &mut bytes).is_err() {
                    continue;
                }
                let meta = entry.metadata()?;
                out.push((Blake3Hash::from(bytes), meta.len(), meta.modified()?));
            }
        }
        Ok(out)
    }

    /// Deletes blobs not in `keep` last modified before `older_than`, and
    /// temporary files left by interrupted writes; returns (blobs, bytes)
    /// deleted.
    pub fn collect(
        &self,
        keep: &std::collections::HashSet<Blake3Hash>,
        older_than: std::time::SystemTime,
    ) -> std::io::Result<(u64, u64)> {
        let (mut count, mut bytes) = (0, 0);
        for (hash, size, modified) in self.list()? {
            if !keep.contains(&hash) && modified < older_than {
                std::fs::remove_file(self.path(&hash))?;
                count += 1;
                bytes += size;
            }
        }
        for entry in std::fs::read_dir(self.dir.join("tmp"))? {
            let entry = entry?;
            if entry.metadata()?.modified()? < older_than {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok((count, bytes))
    }

    /// Starts writing blob `hash` of `size` bytes (see [`BlobWriter`]); with
    /// `held`, or when the blob is stored already, the bytes are only
    /// checked (the same stream staged it, or it is here).
    fn writer_unless(
        &self,
        hash: Blake3Hash,
        size: u64,
        held: bool,
    ) -> Result<BlobWriter, BlobError> {
        if size > MAX_BLOB_BYTES {
            return Err(BlobError::TooLarge {
                hash,
                announced: size,
            });
        }
        let tmp = self.dir.join("tmp").join(format!(
            "{}.{}.{}",
            hash.to_hex(),
            std::process::id(),
            rand::random::<u32>()
        ));
        let out = if held || self.contains(&hash) {
            None
        } else {
            Some(File::create(&tmp)?)
        };
        Ok(BlobWriter {
            hash,
            size,
            written: 0,
            hasher: blake3::Hasher::new(),
            out,
            tmp,
        })
    }

    /// Stores `size` bytes read from `input` as blob `hash`, verifying them,
    /// durably. Returns whether the blob is new.
    #[cfg(test)]
    pub fn put(
        &self,
        hash: Blake3Hash,
        size: u64,
        input: &mut impl Read,
    ) -> Result<bool, BlobError> {
        match self.stage(hash, size, input, false)? {
            Some(s) => {
                self.commit(vec![s])?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Reads `size` bytes from `input` as blob `hash` and stages it (see
    /// [`BlobStore::commit`]). Exactly `size` bytes are consumed even when
    /// the blob is refused or already held, so a stream stays in step.
    pub fn stage(
        &self,
        hash: Blake3Hash,
        size: u64,
        input: &mut impl Read,
        held: bool,
    ) -> Result<Option<Staged>, BlobError> {
        let mut w = self.writer_unless(hash, size, held)?;
        // Sized to the blob: most are a few kilobytes, and a stream of
        // 10,000 of them must not zero 256 KiB for each.
        let mut buf = vec![0u8; size.clamp(1, 256 * 1024) as usize];
        while w.remaining() > 0 {
            let want = w.remaining().min(buf.len() as u64) as usize;
            let n = input.read(&mut buf[..want])?;
            if n == 0 {
                return Err(BlobError::Truncated {
                    hash,
                    announced: size,
                    got: size - w.remaining(),
                });
            }
            w.write(&buf[..n])?;
        }
        w.finish_staged()
    }

    /// Reads a stream of blobs (each: 32-byte hash, 8-byte big-endian size,
    /// the bytes) until it ends. A blob whose bytes do not match is refused
    /// and the stream goes on; a stream cut in the middle of a blob keeps
    /// every blob completed before it.
    ///
    /// Blobs are committed in batches on a second thread while the stream
    /// goes on: a commit (two file-system syncs and a rename per blob) no
    /// longer stops the reading, and with it the sender. The report is
    /// given only once every batch is committed.
    pub fn receive(&self, input: &mut impl Read) -> Result<Received, BlobError> {
        self.receive_announcing(input, |_| {})
    }

    /// [`BlobStore::receive`], calling `committed` with the hashes of each
    /// batch once it is durable (on the committing thread).
    pub fn receive_announcing(
        &self,
        input: &mut impl Read,
        committed: impl FnMut(Vec<Blake3Hash>) + Send,
    ) -> Result<Received, BlobError> {
        let mut committed = committed;
        std::thread::scope(|scope| {
            // One batch committing, one waiting: the reader runs at most
            // two batches ahead of what is durable.
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Staged>>(1);
            let committer = scope.spawn(move || -> std::io::Result<()> {
                for batch in rx {
                    let hashes: Vec<Blake3Hash> = batch.iter().map(|s| s.hash).collect();
                    self.commit(batch)?;
                    committed(hashes);
                }
                Ok(())
            });
            let read = self.receive_into(input, &tx);
            drop(tx);
            let committed = committer
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the blob committer panicked")));
            // A reader stopped by a failed commit reports the commit's error.
            committed?;
            read
        })
    }

    /// [`BlobStore::receive`]'s reading: hands each full batch, and what is
    /// staged when the stream ends, to `commit`.
    fn receive_into(
        &self,
        input: &mut impl Read,
        commit: &std::sync::mpsc::SyncSender<Vec<Staged>>,
    ) -> Result<Received, BlobError> {
        // A send fails only when the committer stopped on an error, which
        // `receive` reports.
        let hand_over = |staged: Vec<Staged>| -> Result<(), BlobError> {
            if staged.is_empty() {
                return Ok(());
            }
            commit
                .send(staged)
                .map_err(|_| BlobError::Io(std::io::Error::other("a commit failed")))
        };
        let mut report = Received::default();
        let mut staged = Vec::new();
        // Every blob staged by this stream, committed or not: a second copy
        // of one is only checked.
        let mut staged_hashes = std::collections::HashSet::new();
        let mut staged_bytes = 0u64;
        let mut staged_since = std::time::Instant::now();
        loop {
            let mut head = [0u8; blob_stream::HEADER_BYTES];
            match read_full(input, &mut head)? {
                0 => {
                    hand_over(staged)?;
                    return Ok(report);
                }
                blob_stream::HEADER_BYTES => {}
                n => {
                    report.refused.push(format!(
                        "the stream ended inside a blob header ({n} of {} bytes)",
                        blob_stream::HEADER_BYTES
                    ));
                    hand_over(staged)?;
                    return Ok(report);
                }
            }
            let (hash, size) = blob_stream::parse_header(&head);
            let held = staged_hashes.contains(&hash);
            match self.stage(hash, size, input, held) {
                Ok(Some(s)) => {
                    staged_hashes.insert(hash);
                    if staged.is_empty() {
                        staged_since = std::time::Instant::now();
                    }
                    staged.push(s);
                    staged_bytes += size;
                    report.stored += 1;
                    report.bytes += size;
                    if staged.len() >= COMMIT_BLOBS
                        || staged_bytes >= COMMIT_BYTES
                        || staged_since.elapsed() >= COMMIT_AFTER
                    {
                        hand_over(std::mem::take(&mut staged))?;
                        staged_bytes = 0;
                    }
                }
                Ok(None) => report.already_present += 1,
                Err(e @ BlobError::HashMismatch { .. }) => report.refused.push(e.to_string()),
                Err(e @ (BlobError::Truncated { .. } | BlobError::TooLarge { .. })) => {
                    // The stream is out of step (or cut): nothing after can
                    // be trusted; what was complete before is kept.
                    report.refused.push(e.to_string());
                    hand_over(staged)?;
                    return Ok(report);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Standard input as `makiatto blobs receive` reads it: from a pipe
/// widened to 1 MiB where the system allows (sshd feeds it), through a
/// 1 MiB buffer. A stream of small blobs is then read a megabyte at a time,
/// not one small file at a time with a wake-up of sshd for each.
pub fn stdin_stream() -> impl Read {
    const PIPE_BYTES: i32 = 1 << 20;
    let stdin = std::io::stdin();
    // Not a pipe, or a smaller limit: the stream works as it is.
    let _ = nix::fcntl::fcntl(&stdin, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_BYTES));
    std::io::BufReader::with_capacity(PIPE_BYTES as usize, stdin)
}

/// One blob being written: bytes are hashed as they come, to a temporary
/// file; [`BlobWriter::finish_staged`] checks size and hash and hands it to
/// [`BlobStore::commit`], which makes it durable and renames it into place.
/// Dropped unfinished, it leaves nothing behind.
pub struct BlobWriter {
    hash: Blake3Hash,
    size: u64,
    written: u64,
    hasher: blake3::Hasher,
    /// None when the blob is already held (the bytes are only checked).
    out: Option<File>,
    tmp: PathBuf,
}

impl BlobWriter {
    /// Bytes still expected.
    pub fn remaining(&self) -> u64 {
        self.size - self.written
    }

    pub fn write(&mut self, bytes: &[u8]) -> Result<(), BlobError> {
        if bytes.len() as u64 > self.remaining() {
            return Err(BlobError::TooLarge {
                hash: self.hash,
                announced: self.size,
            });
        }
        self.hasher.update(bytes);
        if let Some(out) = self.out.as_mut() {
            out.write_all(bytes)?;
        }
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Verifies the blob and leaves it staged (written, not yet durable nor
    /// in place); [`BlobStore::commit`] publishes many at once with two
    /// file-system syncs instead of two per blob. None: already held.
    pub fn finish_staged(mut self) -> Result<Option<Staged>, BlobError> {
        if self.written != self.size {
            return Err(BlobError::Truncated {
                hash: self.hash,
                announced: self.size,
                got: self.written,
            });
        }
        let actual = Blake3Hash::from(*self.hasher.finalize().as_bytes());
        if actual != self.hash {
            return Err(BlobError::HashMismatch {
                expected: self.hash,
                actual,
            });
        }
        let Some(out) = self.out.take() else {
            return Ok(None);
        };
        drop(out);
        let tmp = std::mem::take(&mut self.tmp);
        Ok(Some(Staged {
            hash: self.hash,
            tmp,
        }))
    }
}

/// Up to this many blobs are committed with an fsync each rather than
/// a `syncfs` of the whole file system.
const SYNC_EACH_MAX: usize = 8;

/// A verified blob waiting for [`BlobStore::commit`]. Dropped uncommitted,
/// its temporary file stays until garbage collection removes it.
pub struct Staged {
    hash: Blake3Hash,
    tmp: PathBuf,
}

impl BlobStore {
    /// Publishes staged blobs: their bytes are made durable (one `syncfs`),
    /// then they are renamed into place and the renames made durable (a
    /// second one). A crash leaves each blob either absent or complete.
    ///
    /// A few blobs (the usual edit) are synced one by one instead: each
    /// file, then each directory its rename changed. `syncfs` writes out
    /// everything dirty on the file system, which costs tens of
    /// milliseconds on a busy one however little is ours.
    pub fn commit(&self, staged: Vec<Staged>) -> std::io::Result<()> {
        if staged.is_empty() {
            return Ok(());
        }
        let few = staged.len() <= SYNC_EACH_MAX;
        let root = File::open(&self.dir)?;
        if few {
            for s in &staged {
                File::open(&s.tmp)?.sync_all()?;
            }
        } else {
            nix::unistd::syncfs(&root).map_err(std::io::Error::from)?;
        }
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut made_shard = false;
        for s in staged {
            let dest = self.path(&s.hash);
            if let Some(parent) = dest.parent() {
                if !parent.exists() {
                    std::fs::create_dir_all(parent)?;
                    self.hand_over(parent)?;
                    made_shard = true;
                }
                if !dirs.iter().any(|d| d == parent) {
                    dirs.push(parent.to_path_buf());
                }
            }
            self.hand_over(&s.tmp)?;
            std::fs::rename(&s.tmp, &dest)?;
        }
        if few {
            for d in &dirs {
                File::open(d)?.sync_all()?;
            }
            if made_shard {
                root.sync_all()?;
            }
        } else {
            nix::unistd::syncfs(&root).map_err(std::io::Error::from)?;
        }
        Ok(())
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.out.is_some() || self.tmp.exists() {
            self.out = None;
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes one blob in the `receive` stream format.
    fn frame(hash: &Blake3Hash, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        blob_stream::push(&mut out, hash, bytes);
        out
    }

    #[test]
    fn a_manifest_delta_is_stored_only_when_it_gives_the_named_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let entry = |body: &[u8]| makiatto_events::FileEntry {
            hash: Blake3Hash::of(body),
            size: body.len() as u64,
            content_type: "text/html".into(),
        };
        let mut base = Manifest::default();
        base.insert("index.html".into(), entry(b"home")).unwrap();
        let base_bytes = base.encode();
        store
            .put(base.hash(), base_bytes.len() as u64, &mut &base_bytes[..])
            .unwrap();
        let mut target = base.clone();
        target.insert("about.html".into(), entry(b"about")).unwrap();
        let delta = hex::encode(target.delta_from(&base).encode());
        let (b, t) = (base.hash(), target.hash());
        // One that does not give the manifest it names is refused.
        let wrong = Blake3Hash::of(b"x");
        let e = put_manifest_delta(&store, &b, &wrong, &delta).unwrap_err();
        assert!(format!("{e:#}").contains("does not give"), "{e:#}");
        assert!(!store.contains(&wrong));
        let put = put_manifest_delta(&store, &b, &t, &delta).unwrap();
        assert_eq!(put.files, 2);
        // The one new blob, for the peers.
        assert_eq!(put.new_blobs, vec![(Blake3Hash::of(b"about"), 5)]);
        assert_eq!((put.base, put.target), (base.hash(), target.hash()));
        assert_eq!(
            std::fs::read(store.path(&target.hash())).unwrap(),
            target.encode()
        );
        assert_eq!(*store.manifest(&target.hash()).unwrap(), target);
        // A base not held here, bad hex: clear errors. (A bad hash is
        // refused as the request is read: `control::tests`.)
        let e = put_manifest_delta(&store, &wrong, &t, &delta).unwrap_err();
        assert!(format!("{e:#}").contains("not stored here"), "{e:#}");
        let e = put_manifest_delta(&store, &b, &t, "zz").unwrap_err();
        assert!(format!("{e:#}").contains("not hex"), "{e:#}");
    }

    #[test]
    fn recent_manifests_are_kept_decoded_and_the_oldest_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let mut hashes = Vec::new();
        for i in 0..MANIFESTS_KEPT + 1 {
            let mut m = Manifest::default();
            let body = format!("{i}");
            m.insert(
                "index.html".into(),
                makiatto_events::FileEntry {
                    hash: Blake3Hash::of(body.as_bytes()),
                    size: 1,
                    content_type: "text/html".into(),
                },
            )
            .unwrap();
            let bytes = m.encode();
            store
                .put(m.hash(), bytes.len() as u64, &mut &bytes[..])
                .unwrap();
            let first = store.manifest(&m.hash()).unwrap();
            // The same one again comes from memory.
            assert!(Arc::ptr_eq(&first, &store.manifest(&m.hash()).unwrap()));
            hashes.push(m.hash());
        }
        let kept = store.manifests.lock().unwrap();
        assert_eq!(kept.len(), MANIFESTS_KEPT);
        assert!(!kept.iter().any(|(h, _)| *h == hashes[0]));
        drop(kept);
        // A blob that is no manifest is an error, not a panic.
        let junk = b"not a manifest";
        let h = Blake3Hash::of(junk);
        store.put(h, junk.len() as u64, &mut &junk[..]).unwrap();
        assert!(matches!(
            store.manifest(&h),
            Err(BlobError::Manifest { .. })
        ));
    }

    #[test]
    fn blobs_are_stored_under_their_hash_once_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let a = b"hello world".to_vec();
        let b = vec![7u8; 300_000];
        let (ha, hb) = (Blake3Hash::of(&a), Blake3Hash::of(&b));
        let mut stream = frame(&ha, &a);
        stream.extend(frame(&hb, &b));
        stream.extend(frame(&ha, &a)); // again: already present
        // A blob named for other bytes.
        stream.extend(frame(&Blake3Hash::of(b"something else"), b"forged"));
        let report = store.receive(&mut stream.as_slice()).unwrap();
        assert_eq!((report.stored, report.already_present), (2, 1));
        assert_eq!(report.refused.len(), 1, "{report:?}");
        assert!(report.refused[0].contains("hash to"));
        assert_eq!(std::fs::read(store.path(&hb)).unwrap(), b);
        assert!(!store.contains(&Blake3Hash::of(b"something else")));
        assert_eq!(
            store.missing(&[ha, Blake3Hash::of(b"x")]),
            [Blake3Hash::of(b"x")]
        );
        // Nothing is left half-written.
        assert_eq!(
            std::fs::read_dir(dir.path().join("blobs/tmp"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn a_few_blobs_and_many_are_both_committed_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        for count in [1usize, SYNC_EACH_MAX, SYNC_EACH_MAX + 1, 40] {
            let blobs: Vec<Vec<u8>> = (0..count)
                .map(|i| format!("blob {count} {i}").into_bytes())
                .collect();
            let mut stream = Vec::new();
            for b in &blobs {
                stream.extend(frame(&Blake3Hash::of(b), b));
            }
            let report = store.receive(&mut &stream[..]).unwrap();
            assert_eq!(report.stored, count as u64);
            for b in &blobs {
                assert_eq!(std::fs::read(store.path(&Blake3Hash::of(b))).unwrap(), *b);
            }
        }
    }

    #[test]
    fn collection_keeps_what_is_referenced_and_what_is_recent() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let blobs: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 10]).collect();
        let hashes: Vec<Blake3Hash> = blobs.iter().map(|b| Blake3Hash::of(b)).collect();
        for (h, b) in hashes.iter().zip(&blobs) {
            store.put(*h, b.len() as u64, &mut b.as_slice()).unwrap();
        }
        let keep = std::collections::HashSet::from([hashes[0]]);
        // Everything is recent: nothing goes.
        let past = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        assert_eq!(store.collect(&keep, past).unwrap(), (0, 0));
        let future = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
        assert_eq!(store.collect(&keep, future).unwrap(), (2, 20));
        assert!(store.contains(&hashes[0]));
        assert_eq!(store.missing(&hashes), hashes[1..].to_vec());
    }

    #[test]
    fn a_stream_longer_than_a_batch_is_committed_whole_and_repeats_are_checked_once() {
        // More blobs than one commit batch: the first batch commits on the
        // second thread while the rest is read.
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let blobs: Vec<Vec<u8>> = (0..COMMIT_BLOBS + 50)
            .map(|i| format!("blob number {i}").into_bytes())
            .collect();
        let mut stream = Vec::new();
        for b in &blobs {
            stream.extend(frame(&Blake3Hash::of(b), b));
        }
        // The first blob again, after its batch was handed over.
        stream.extend(frame(&Blake3Hash::of(&blobs[0]), &blobs[0]));
        let report = store.receive(&mut stream.as_slice()).unwrap();
        assert_eq!(report.stored, blobs.len() as u64);
        assert_eq!(report.already_present, 1, "{report:?}");
        assert!(report.refused.is_empty(), "{report:?}");
        for b in &blobs {
            assert_eq!(std::fs::read(store.path(&Blake3Hash::of(b))).unwrap(), *b);
        }
        assert_eq!(
            std::fs::read_dir(dir.path().join("blobs/tmp"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn each_batch_is_announced_once_it_is_durable_and_every_blob_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let blobs: Vec<Vec<u8>> = (0..2 * COMMIT_BLOBS + 7)
            .map(|i| format!("announced blob {i}").into_bytes())
            .collect();
        let mut stream = Vec::new();
        for b in &blobs {
            stream.extend(frame(&Blake3Hash::of(b), b));
        }
        let mut batches: Vec<Vec<Blake3Hash>> = Vec::new();
        let report = store
            .receive_announcing(&mut stream.as_slice(), |hashes| {
                // Announced only once the whole batch is in place.
                assert!(hashes.iter().all(|h| store.contains(h)));
                batches.push(hashes);
            })
            .unwrap();
        assert_eq!(report.stored, blobs.len() as u64);
        assert!(batches.len() >= 3, "{} batches", batches.len());
        let announced: Vec<Blake3Hash> = batches.into_iter().flatten().collect();
        let expected: Vec<Blake3Hash> = blobs.iter().map(|b| Blake3Hash::of(b)).collect();
        assert_eq!(announced, expected, "every blob once, in stream order");
    }

    #[test]
    fn a_stream_cut_inside_a_blob_keeps_the_blobs_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let a = b"complete".to_vec();
        let b = vec![1u8; 10_000];
        let mut stream = frame(&Blake3Hash::of(&a), &a);
        let cut = frame(&Blake3Hash::of(&b), &b);
        stream.extend(&cut[..5_000]);
        let report = store.receive(&mut stream.as_slice()).unwrap();
        assert_eq!(report.stored, 1);
        assert!(report.refused[0].contains("ended after"), "{report:?}");
        assert!(store.contains(&Blake3Hash::of(&a)));
        assert!(!store.contains(&Blake3Hash::of(&b)));
        assert_eq!(
            std::fs::read_dir(dir.path().join("blobs/tmp"))
                .unwrap()
                .count(),
            0
        );
    }
}
