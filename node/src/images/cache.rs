//! The rendition cache: least recently used out first, bounded by the
//! encoded bytes it holds (`images.cache_mb`).
//!
//! Keyed by (source blob hash, normalised spec), never by path or domain:
//! a new site version whose image changed has a new hash, so its old
//! renditions are never served again (and age out); the same image under
//! two paths or two domains shares one entry; and a rebuild of the routes
//! (a deploy, an alias) leaves the cache as it was.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use makiatto_events::Blake3Hash;

use super::params::{Format, Spec};

/// A rendition's name.
pub type Key = (Blake3Hash, Spec);

/// A rendition made.
#[derive(Debug)]
pub struct Rendition {
    pub bytes: Bytes,
    pub format: Format,
    /// Its ETag ([`super::etag`]), made once with it, so that a cache hit
    /// computes none.
    pub etag: Bytes,
}

/// What is remembered of a key.
#[derive(Debug, Clone)]
pub enum Entry {
    Made(Arc<Rendition>),
    /// The source is no still raster image we process: serve it unchanged
    /// (remembered so that the next request does not read it again).
    Unchanged,
}

/// What an [`Entry::Unchanged`] is counted as.
const MARKER_BYTES: u64 = 64;

impl Entry {
    fn bytes(&self) -> u64 {
        match self {
            Entry::Made(r) => r.bytes.len() as u64 + MARKER_BYTES,
            Entry::Unchanged => MARKER_BYTES,
        }
    }
}

/// The cache itself (behind the service's lock).
#[derive(Debug, Default)]
pub struct Lru {
    entries: HashMap<Key, (Entry, u64)>,
    /// Last use → key, oldest first.
    order: BTreeMap<u64, Key>,
    clock: u64,
    bytes: u64,
    capacity: u64,
    pub evictions: u64,
}

impl Lru {
    pub fn new(capacity: u64) -> Lru {
        Lru {
            capacity,
            ..Default::default()
        }
    }

    /// The entry, marked as just used.
    pub fn get(&mut self, key: &Key) -> Option<Entry> {
        let (entry, used) = self.entries.get_mut(key)?;
        self.order.remove(used);
        self.clock += 1;
        *used = self.clock;
        self.order.insert(self.clock, *key);
        Some(entry.clone())
    }

    /// Keeps `entry`, dropping the least recently used until it fits; an
    /// entry larger than the whole cache is not kept.
    pub fn put(&mut self, key: Key, entry: Entry) {
        self.remove(&key);
        let size = entry.bytes();
        if size > self.capacity {
            return;
        }
        self.shrink_to(self.capacity - size);
        self.clock += 1;
        self.bytes += size;
        self.order.insert(self.clock, key);
        self.entries.insert(key, (entry, self.clock));
    }

    fn remove(&mut self, key: &Key) {
        if let Some((entry, used)) = self.entries.remove(key) {
            self.order.remove(&used);
            self.bytes -= entry.bytes();
        }
    }

    fn shrink_to(&mut self, bytes: u64) {
        while self.bytes > bytes {
            let Some((_, key)) = self.order.pop_first() else {
                break;
            };
            if let Some((entry, _)) = self.entries.remove(&key) {
                self.bytes -= entry.bytes();
                self.evictions += 1;
            }
        }
    }

    /// A new size limit; what is over it goes at once.
    pub fn set_capacity(&mut self, capacity: u64) {
        self.capacity = capacity;
        self.shrink_to(capacity);
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::params::Fit;
    use super::*;

    fn key(n: u32) -> Key {
        (
            Blake3Hash::of(b"source"),
            Spec {
                width: Some(n),
                height: None,
                fit: Fit::Max,
                format: Format::Webp,
                quality: 80,
            },
        )
    }

    fn made(len: usize) -> Entry {
        Entry::Made(Arc::new(Rendition {
            bytes: Bytes::from(vec![0; len]),
            format: Format::Webp,
            etag: Bytes::new(),
        }))
    }

    #[test]
    fn the_least_recently_used_goes_first_and_the_bytes_stay_bounded() {
        let mut lru = Lru::new(3 * (100 + MARKER_BYTES));
        for n in 1..=3 {
            lru.put(key(n), made(100));
        }
        assert!(lru.get(&key(1)).is_some());
        lru.put(key(4), made(100));
        assert!(lru.get(&key(2)).is_none(), "2 was used least recently");
        assert!(lru.get(&key(1)).is_some() && lru.get(&key(3)).is_some());
        assert_eq!(lru.evictions, 1);
        assert_eq!(lru.bytes(), 3 * (100 + MARKER_BYTES));
        lru.set_capacity(100 + MARKER_BYTES);
        assert_eq!(lru.len(), 1);
        assert!(lru.get(&key(3)).is_some(), "the most recently used stays");
    }

    #[test]
    fn an_entry_larger_than_the_cache_is_not_kept_and_a_zero_cache_keeps_nothing() {
        let mut lru = Lru::new(1000);
        lru.put(key(1), made(10));
        lru.put(key(2), made(5000));
        assert!(lru.get(&key(2)).is_none());
        assert!(lru.get(&key(1)).is_some());
        let mut none = Lru::new(0);
        none.put(key(1), Entry::Unchanged);
        assert_eq!(none.len(), 0);
    }

    #[test]
    fn putting_a_key_again_replaces_it() {
        let mut lru = Lru::new(10_000);
        lru.put(key(1), made(10));
        lru.put(key(1), made(20));
        assert_eq!(lru.len(), 1);
        assert_eq!(lru.bytes(), 20 + MARKER_BYTES);
    }
}
