//! The fjall backend of the log.
//!
//! Keyspaces and keys (all integers big-endian, so byte order is numeric order):
//! - `log`: hlc millis(8) · counter(4) · id(32) → canonical event bytes.
//!   Keyed by canonical position, so folding the log from any point is one
//!   sequential read: reading a million events one by one in canonical
//!   order through an id-keyed keyspace took 10 s here (~10 µs a read),
//!   scanning them in key order half a second.
//! - `ids`: id → hlc millis(8) · counter(4): where an event is in `log`.
//! - `feeds`: author(32) · seq(8) · id(32) → empty. Forks are two keys.
//! - `meta`: `cluster_id` → the genesis id; `layout` → this layout's number;
//!   `fold` → the fold's record of what it has taken in ([`FoldWrite`]).
//! - `projections`: name → the projection's canonical bytes as last saved,
//!   which `makiatto verify` compares with a rebuild.
//! - `index`: id → what the fold decided about a folded event (its time,
//!   the role events in its causal past, its verdict), in the fold's own
//!   encoding: the per-event facts the fold needs, kept out of memory.
//! - `checkpoints`: hlc millis(8) · counter(4) · id(32) → the fold's whole
//!   state after every event up to that point, in the fold's own encoding.
//!
//! Layout 1 (releases up to 0.2) kept `events` (id → bytes) and `time`
//! (hlc · id → empty); [`Store::open`] moves such a log to this layout once,
//! in batches, and removes the old keyspaces.
//!
//! One batch of events is one fjall write batch committed with `SyncAll`, so
//! a batch is on disk, whole, before an append returns; a process killed
//! mid-batch leaves either all of it or none of it after recovery. What the
//! fold writes ([`Store::write_fold`]) is one batch too, not fsynced (all of
//! it can be folded again from the events), so its index, checkpoints and
//! record always agree with each other.
//!
//! Memory: the block cache, each keyspace's memtable and the journals are
//! bounded ([`CACHE_BYTES`], [`MEMTABLE_BYTES`], [`JOURNAL_BYTES`]), so
//! what the store holds in memory does not grow with the log.

use std::ops::Bound;
use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use makiatto_events::{AuthorKey, Event, EventId, Hlc};

use crate::ingest::Backend;

/// A storage failure: the disk or the database, never the event's fault.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the event store failed: {0}")]
    Fjall(#[from] fjall::Error),
    #[error("the event store is corrupt: {0}")]
    Corrupt(String),
}

const CLUSTER_ID: &[u8] = b"cluster_id";
const FOLD: &[u8] = b"fold";
const LAYOUT: &[u8] = b"layout";
/// The layout this build writes (see the module's documentation).
const LAYOUT_NOW: u8 = 2;
/// Events moved per batch when a layout 1 log is migrated.
const MIGRATE_BATCH: usize = 16_384;

/// The block cache shared by every keyspace.
pub const CACHE_BYTES: u64 = 16 * 1024 * 1024;
/// One keyspace's memtable, flushed to disk when it reaches this.
pub const MEMTABLE_BYTES: u64 = 8 * 1024 * 1024;
/// The journals together: past this the oldest memtables are flushed so
/// their journals can go (a journal is replayed into memory at start-up).
pub const JOURNAL_BYTES: u64 = 64 * 1024 * 1024;

/// A point in canonical order: the key of the `log` and `checkpoints`
/// keyspaces.
pub type Position = (Hlc, EventId);

/// How many events [`Store::read_events`] reads at a time.
pub const READ_CHUNK: usize = 4_096;

/// [`Store::read_events`]' iterator: the chunk read last, and where the
/// next one starts (`None` once the range is read or a read failed).
struct Chunks<'a> {
    store: &'a Store,
    from: Option<Bound<Position>>,
    to: Bound<Position>,
    read: std::collections::VecDeque<Result<(Position, Vec<u8>), StoreError>>,
}

impl Iterator for Chunks<'_> {
    type Item = Result<(Position, Vec<u8>), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.read.is_empty() {
            let from = self.from.take()?;
            self.read
                .extend(self.store.range_events(from, self.to).take(READ_CHUNK));
            match self.read.back() {
                Some(Ok((last, _))) if self.read.len() == READ_CHUNK => {
                    self.from = Some(Bound::Excluded(*last));
                }
                // A short chunk is the range's end; a failed read ends it.
                _ => {}
            }
        }
        self.read.pop_front()
    }
}

/// What the fold writes, as one batch: new per-event entries, a checkpoint
/// of its state, checkpoints it no longer trusts, its record and the
/// projections' canonical bytes.
#[derive(Debug, Default)]
pub struct FoldWrite {
    pub entries: Vec<(EventId, Vec<u8>)>,
    pub checkpoint: Option<(Position, Vec<u8>)>,
    pub drop_checkpoints: Vec<Position>,
    pub record: Option<Vec<u8>>,
    pub projections: Vec<(String, Vec<u8>)>,
}

/// The on-disk log. Cloning is cheap and clones share the database, so
/// readers can hold their own handle while one writer appends.
#[derive(Clone)]
pub struct Store {
    db: Database,
    log: Keyspace,
    ids: Keyspace,
    feeds: Keyspace,
    meta: Keyspace,
    projections: Keyspace,
    index: Keyspace,
    checkpoints: Keyspace,
    cluster_id: Option<EventId>,
}

fn feed_key(author: &AuthorKey, seq: u64, id: &EventId) -> [u8; 72] {
    let mut key = [0u8; 72];
    key[..32].copy_from_slice(author.as_bytes());
    key[32..40].copy_from_slice(&seq.to_be_bytes());
    key[40..].copy_from_slice(id.as_bytes());
    key
}

fn hlc_bytes(hlc: Hlc) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[..8].copy_from_slice(&hlc.millis.to_be_bytes());
    out[8..].copy_from_slice(&hlc.counter.to_be_bytes());
    out
}

fn position_key(hlc: Hlc, id: &EventId) -> [u8; 44] {
    let mut key = [0u8; 44];
    key[..12].copy_from_slice(&hlc_bytes(hlc));
    key[12..].copy_from_slice(id.as_bytes());
    key
}

fn id_from(bytes: &[u8]) -> Result<EventId, StoreError> {
    bytes
        .try_into()
        .map(EventId)
        .map_err(|_| StoreError::Corrupt(format!("a stored id is {} bytes, not 32", bytes.len())))
}

fn hlc_from(bytes: &[u8]) -> Result<Hlc, StoreError> {
    let (Some(millis), Some(counter)) = (bytes.get(..8), bytes.get(8..12)) else {
        return Err(StoreError::Corrupt(format!(
            "a stored time is {} bytes, not 12",
            bytes.len()
        )));
    };
    let mut m = [0u8; 8];
    m.copy_from_slice(millis);
    let mut c = [0u8; 4];
    c.copy_from_slice(counter);
    Ok(Hlc {
        millis: u64::from_be_bytes(m),
        counter: u32::from_be_bytes(c),
    })
}

fn position_from(key: &[u8]) -> Result<Position, StoreError> {
    if key.len() != 44 {
        return Err(StoreError::Corrupt(format!(
            "a position key is {} bytes, not 44",
            key.len()
        )));
    }
    Ok((hlc_from(&key[..12])?, id_from(&key[12..])?))
}

fn position_bound(bound: Bound<Position>) -> Bound<[u8; 44]> {
    match bound {
        Bound::Included((hlc, id)) => Bound::Included(position_key(hlc, &id)),
        Bound::Excluded((hlc, id)) => Bound::Excluded(position_key(hlc, &id)),
        Bound::Unbounded => Bound::Unbounded,
    }
}

fn parse_feed_key(key: &[u8]) -> Result<(AuthorKey, u64, EventId), StoreError> {
    if key.len() != 72 {
        return Err(StoreError::Corrupt(format!(
            "a feed key is {} bytes, not 72",
            key.len()
        )));
    }
    let mut author = [0u8; 32];
    author.copy_from_slice(&key[..32]);
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&key[32..40]);
    Ok((
        AuthorKey(author),
        u64::from_be_bytes(seq),
        id_from(&key[40..])?,
    ))
}

impl Store {
    /// Opens (or creates) the store in `dir`, moving a log of an older
    /// layout to this one first. Fails if another process has it open.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let db = Database::builder(dir)
            .cache_size(CACHE_BYTES)
            .max_journaling_size(JOURNAL_BYTES)
            .open()?;
        let open = |name: &str| {
            db.keyspace(name, || {
                KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)
            })
        };
        let meta = open("meta")?;
        let cluster_id = meta.get(CLUSTER_ID)?.map(|v| id_from(&v)).transpose()?;
        let store = Store {
            log: open("log")?,
            ids: open("ids")?,
            feeds: open("feeds")?,
            projections: open("projections")?,
            index: open("index")?,
            checkpoints: open("checkpoints")?,
            meta,
            cluster_id,
            db,
        };
        store.migrate()?;
        Ok(store)
    }

    /// Moves a layout 1 log (`events`: id → bytes, `time`: hlc · id) into
    /// `log` and `ids`, then removes the old keyspaces. A migration cut
    /// short starts again at the next open: every write is idempotent and
    /// the layout is recorded only once all of it is done.
    fn migrate(&self) -> Result<(), StoreError> {
        let done = self
            .meta
            .get(LAYOUT)?
            .is_some_and(|v| v.first() == Some(&LAYOUT_NOW));
        if !done {
            if self.db.keyspace_exists("events") {
                let events = self.db.keyspace("events", KeyspaceCreateOptions::default)?;
                let mut chunk: Vec<(EventId, Vec<u8>)> = Vec::with_capacity(MIGRATE_BATCH);
                for guard in events.iter() {
                    let (k, v) = guard.into_inner()?;
                    chunk.push((id_from(&k)?, v.to_vec()));
                    if chunk.len() == MIGRATE_BATCH {
                        self.migrate_chunk(&chunk)?;
                        chunk.clear();
                    }
                }
                self.migrate_chunk(&chunk)?;
            }
            let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
            batch.insert(&self.meta, LAYOUT.to_vec(), vec![LAYOUT_NOW]);
            batch.commit()?;
        }
        for old in ["events", "time"] {
            if self.db.keyspace_exists(old) {
                let handle = self.db.keyspace(old, KeyspaceCreateOptions::default)?;
                self.db.delete_keyspace(handle)?;
            }
        }
        Ok(())
    }

    fn migrate_chunk(&self, chunk: &[(EventId, Vec<u8>)]) -> Result<(), StoreError> {
        if chunk.is_empty() {
            return Ok(());
        }
        let bytes: Vec<&[u8]> = chunk.iter().map(|(_, b)| b.as_slice()).collect();
        let events = Event::decode_trusted_all(&bytes).map_err(|(i, e)| {
            StoreError::Corrupt(format!("stored event {} does not decode: {e}", chunk[i].0))
        })?;
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
        for (e, (id, raw)) in events.iter().zip(chunk) {
            batch.insert(&self.log, position_key(e.hlc(), id).to_vec(), raw.clone());
            batch.insert(
                &self.ids,
                id.as_bytes().to_vec(),
                hlc_bytes(e.hlc()).to_vec(),
            );
        }
        batch.commit()?;
        Ok(())
    }

    /// How many events are stored (counts every id: for tests and tools).
    pub fn len(&self) -> Result<usize, StoreError> {
        Ok(self.ids.len()?)
    }

    /// Whether no event is stored.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.ids.is_empty()?)
    }

    /// Every stored event's position and bytes, in canonical order.
    /// (Read a chunk at a time, as [`Store::read_events`].)
    pub fn iter_events(
        &self,
    ) -> impl Iterator<Item = Result<(Position, Vec<u8>), StoreError>> + '_ {
        self.read_events(Bound::Unbounded, Bound::Unbounded)
    }

    /// Stored events between two points, in canonical order (reversible).
    pub fn range_events(
        &self,
        from: Bound<Position>,
        to: Bound<Position>,
    ) -> impl DoubleEndedIterator<Item = Result<(Position, Vec<u8>), StoreError>> + '_ {
        self.log
            .range((position_bound(from), position_bound(to)))
            .map(|guard| {
                let (k, v) = guard.into_inner()?;
                Ok((position_from(&k)?, v.to_vec()))
            })
    }

    /// Stored events between two points, in canonical order, read
    /// [`READ_CHUNK`] at a time, each chunk by a read of its own, so that
    /// no snapshot of the store stays open between chunks. An iterator
    /// held open pins the store's state as it began: fjall then keeps
    /// every memtable sealed since, in every keyspace, in memory — a fold
    /// of a million events read through one iterator held the whole index
    /// it wrote (about 200 MiB) until it ended. Stored events are never
    /// rewritten, so the chunks join up; one stored meanwhile after the
    /// last read may be included.
    pub fn read_events(
        &self,
        from: Bound<Position>,
        to: Bound<Position>,
    ) -> impl Iterator<Item = Result<(Position, Vec<u8>), StoreError>> + '_ {
        Chunks {
            store: self,
            from: Some(from),
            to,
            read: std::collections::VecDeque::new(),
        }
    }

    /// Where a stored event is in canonical order.
    pub fn position_of(&self, id: &EventId) -> Result<Option<Position>, StoreError> {
        self.ids
            .get(id.as_bytes())?
            .map(|v| Ok((hlc_from(&v)?, *id)))
            .transpose()
    }

    /// The bytes of the event at a position.
    pub fn get_at(&self, at: &Position) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.log.get(position_key(at.0, &at.1))?.map(|v| v.to_vec()))
    }

    /// Stored ids that start with `prefix` (whole bytes), in id order.
    pub fn ids_with_prefix(
        &self,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<EventId, StoreError>> + '_ {
        self.ids.prefix(prefix).map(|guard| id_from(&guard.key()?))
    }

    /// The fold's entry for an event, as the fold wrote it.
    pub fn index_entry(&self, id: &EventId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.index.get(id.as_bytes())?.map(|v| v.to_vec()))
    }

    /// How many events the fold has entries for (counts them all).
    pub fn index_len(&self) -> Result<usize, StoreError> {
        Ok(self.index.len()?)
    }

    /// The fold's record, as last written.
    pub fn fold_record(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(FOLD)?.map(|v| v.to_vec()))
    }

    /// The checkpoint at `at`, if one is saved there.
    pub fn checkpoint(&self, at: &Position) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .checkpoints
            .get(position_key(at.0, &at.1))?
            .map(|v| v.to_vec()))
    }

    /// Writes what the fold decided, as one batch (see [`FoldWrite`]). Not
    /// fsynced: all of it can be folded again from the events.
    pub fn write_fold(&self, write: FoldWrite) -> Result<(), StoreError> {
        let mut batch = self.db.batch();
        for (id, entry) in write.entries {
            batch.insert(&self.index, id.as_bytes().to_vec(), entry);
        }
        for at in write.drop_checkpoints {
            batch.remove(&self.checkpoints, position_key(at.0, &at.1).to_vec());
        }
        if let Some((at, bytes)) = write.checkpoint {
            batch.insert(&self.checkpoints, position_key(at.0, &at.1).to_vec(), bytes);
        }
        if let Some(record) = write.record {
            batch.insert(&self.meta, FOLD.to_vec(), record);
        }
        for (name, bytes) in write.projections {
            batch.insert(&self.projections, name.into_bytes(), bytes);
        }
        batch.commit()?;
        Ok(())
    }

    /// Forgets everything the fold wrote (its index, checkpoints and
    /// record): the next start-up folds the log from the start.
    pub fn clear_fold(&self) -> Result<(), StoreError> {
        self.index.clear()?;
        self.checkpoints.clear()?;
        self.meta.remove(FOLD)?;
        Ok(())
    }

    /// Bytes on disk: every keyspace, journals included.
    pub fn disk_space(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }

    /// Saves a projection's canonical bytes (derivable, so not fsynced).
    pub fn put_projection(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.projections.insert(name, bytes)?;
        Ok(())
    }

    /// The projection bytes saved under `name`.
    pub fn projection(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.projections.get(name)?.map(|v| v.to_vec()))
    }

    /// Flushes everything to disk (used before a clean shutdown).
    pub fn persist(&self) -> Result<(), StoreError> {
        self.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }
}

impl Backend for Store {
    fn contains(&self, id: &EventId) -> Result<bool, StoreError> {
        Ok(self.ids.contains_key(id.as_bytes())?)
    }

    fn ids_at(&self, author: &AuthorKey, seq: u64) -> Result<Vec<EventId>, StoreError> {
        let mut prefix = [0u8; 40];
        prefix[..32].copy_from_slice(author.as_bytes());
        prefix[32..].copy_from_slice(&seq.to_be_bytes());
        self.feeds
            .prefix(prefix)
            .map(|g| Ok(parse_feed_key(&g.key()?)?.2))
            .collect()
    }

    fn cluster_id(&self) -> Option<EventId> {
        self.cluster_id
    }

    fn write(&mut self, events: &[Event]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
        let mut genesis = None;
        for e in events {
            let id = e.id();
            batch.insert(
                &self.log,
                position_key(e.hlc(), &id).to_vec(),
                e.to_bytes().to_vec(),
            );
            batch.insert(
                &self.ids,
                id.as_bytes().to_vec(),
                hlc_bytes(e.hlc()).to_vec(),
            );
            batch.insert(
                &self.feeds,
                feed_key(&e.author(), e.seq(), &id).to_vec(),
                Vec::new(),
            );
            if matches!(e.payload(), makiatto_events::Payload::Genesis(_))
                && self.cluster_id.is_none()
            {
                batch.insert(&self.meta, CLUSTER_ID.to_vec(), id.as_bytes().to_vec());
                genesis = Some(id);
            }
        }
        batch.commit()?;
        if genesis.is_some() {
            self.cluster_id = genesis;
        }
        Ok(())
    }

    fn get(&self, id: &EventId) -> Result<Option<Vec<u8>>, StoreError> {
        match self.position_of(id)? {
            Some(at) => self.get_at(&at),
            None => Ok(None),
        }
    }

    fn feed_from(
        &self,
        author: &AuthorKey,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, EventId)>, StoreError> {
        let start = feed_key(author, from, &EventId([0; 32]));
        let end = feed_key(author, u64::MAX, &EventId([0xff; 32]));
        self.feeds
            .range(start..=end)
            .take(limit)
            .map(|g| {
                let (_, seq, id) = parse_feed_key(&g.key()?)?;
                Ok((seq, id))
            })
            .collect()
    }

    fn each_feed_entry(
        &self,
        visit: &mut dyn FnMut(AuthorKey, u64, EventId),
    ) -> Result<(), StoreError> {
        for guard in self.feeds.iter() {
            let (author, seq, id) = parse_feed_key(&guard.key()?)?;
            visit(author, seq, id);
        }
        Ok(())
    }
}
