//! The fjall backend of the log.
//!
//! Keyspaces and keys (all integers big-endian, so byte order is numeric order):
//! - `events`: id → canonical event bytes.
//! - `feeds`: author(32) · seq(8) · id(32) → empty. Forks are two keys.
//! - `time`: hlc millis(8) · counter(4) · id(32) → empty (time travel, listing).
//! - `meta`: `cluster_id` → the genesis id.
//! - `projections`: name → the projection's canonical bytes as last folded,
//!   which `makiatto verify` compares with a rebuild.
//!
//! One batch of events is one fjall write batch committed with `SyncAll`, so
//! a batch is on disk, whole, before an append returns; a process killed
//! mid-batch leaves either all of it or none of it after recovery.

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

/// The on-disk log. Cloning is cheap and clones share the database, so
/// readers can hold their own handle while one writer appends.
#[derive(Clone)]
pub struct Store {
    db: Database,
    events: Keyspace,
    feeds: Keyspace,
    time: Keyspace,
    meta: Keyspace,
    projections: Keyspace,
    cluster_id: Option<EventId>,
}

fn feed_key(author: &AuthorKey, seq: u64, id: &EventId) -> [u8; 72] {
    let mut key = [0u8; 72];
    key[..32].copy_from_slice(author.as_bytes());
    key[32..40].copy_from_slice(&seq.to_be_bytes());
    key[40..].copy_from_slice(id.as_bytes());
    key
}

fn time_key(hlc: Hlc, id: &EventId) -> [u8; 44] {
    let mut key = [0u8; 44];
    key[..8].copy_from_slice(&hlc.millis.to_be_bytes());
    key[8..12].copy_from_slice(&hlc.counter.to_be_bytes());
    key[12..].copy_from_slice(id.as_bytes());
    key
}

fn id_from(bytes: &[u8]) -> Result<EventId, StoreError> {
    bytes
        .try_into()
        .map(EventId)
        .map_err(|_| StoreError::Corrupt(format!("a stored id is {} bytes, not 32", bytes.len())))
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
    /// Opens (or creates) the store in `dir`. Fails if another process has it open.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let db = Database::builder(dir).open()?;
        let open = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default);
        let meta = open("meta")?;
        let cluster_id = meta.get(CLUSTER_ID)?.map(|v| id_from(&v)).transpose()?;
        Ok(Store {
            events: open("events")?,
            feeds: open("feeds")?,
            time: open("time")?,
            projections: open("projections")?,
            meta,
            cluster_id,
            db,
        })
    }

    /// How many events are stored.
    pub fn len(&self) -> Result<usize, StoreError> {
        Ok(self.events.len()?)
    }

    /// Whether no event is stored.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.events.is_empty()?)
    }

    /// Every stored event's bytes, in id order.
    pub fn iter_events(&self) -> impl Iterator<Item = Result<(EventId, Vec<u8>), StoreError>> + '_ {
        self.events.iter().map(|guard| {
            let (k, v) = guard.into_inner()?;
            Ok((id_from(&k)?, v.to_vec()))
        })
    }

    /// Stored (time, id) pairs in time order.
    pub fn iter_by_time(
        &self,
    ) -> impl DoubleEndedIterator<Item = Result<(Hlc, EventId), StoreError>> + '_ {
        self.time.iter().map(|guard| {
            let key = guard.key()?;
            if key.len() != 44 {
                return Err(StoreError::Corrupt("a time key is not 44 bytes".into()));
            }
            let mut millis = [0u8; 8];
            millis.copy_from_slice(&key[..8]);
            let mut counter = [0u8; 4];
            counter.copy_from_slice(&key[8..12]);
            let hlc = Hlc {
                millis: u64::from_be_bytes(millis),
                counter: u32::from_be_bytes(counter),
            };
            Ok((hlc, id_from(&key[12..])?))
        })
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
        Ok(self.events.contains_key(id.as_bytes())?)
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
            batch.insert(&self.events, id.as_bytes().to_vec(), e.to_bytes().to_vec());
            batch.insert(
                &self.feeds,
                feed_key(&e.author(), e.seq(), &id).to_vec(),
                Vec::new(),
            );
            batch.insert(&self.time, time_key(e.hlc(), &id).to_vec(), Vec::new());
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
        Ok(self.events.get(id.as_bytes())?.map(|v| v.to_vec()))
    }

    fn feed_from(&self, author: &AuthorKey, from: u64) -> Result<Vec<(u64, EventId)>, StoreError> {
        let start = feed_key(author, from, &EventId([0; 32]));
        let end = feed_key(author, u64::MAX, &EventId([0xff; 32]));
        self.feeds
            .range(start..=end)
            .map(|g| {
                let (_, seq, id) = parse_feed_key(&g.key()?)?;
                Ok((seq, id))
            })
            .collect()
    }

    fn all_feed_entries(&self) -> Result<Vec<(AuthorKey, u64, EventId)>, StoreError> {
        self.feeds
            .iter()
            .map(|g| parse_feed_key(&g.key()?))
            .collect()
    }
}
