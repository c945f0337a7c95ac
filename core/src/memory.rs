//! An in-memory backend with the same admission rule as the store, for the
//! deterministic simulation and tests. Nothing here is durable.

use std::collections::{BTreeMap, HashMap};

use makiatto_events::{AuthorKey, Event, EventId, Payload};

use crate::ingest::Backend;
use crate::store::StoreError;

/// Events in memory, indexed like [`crate::Store`].
#[derive(Debug, Clone, Default)]
pub struct MemoryBackend {
    events: HashMap<EventId, Vec<u8>>,
    feeds: BTreeMap<(AuthorKey, u64, EventId), ()>,
    cluster_id: Option<EventId>,
}

impl MemoryBackend {
    /// Every stored event's bytes, in id order.
    pub fn events(&self) -> Vec<(EventId, Vec<u8>)> {
        let mut all: Vec<_> = self.events.iter().map(|(k, v)| (*k, v.clone())).collect();
        all.sort_by_key(|(id, _)| *id);
        all
    }

    /// How many events are stored.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether no event is stored.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

impl Backend for MemoryBackend {
    fn contains(&self, id: &EventId) -> Result<bool, StoreError> {
        Ok(self.events.contains_key(id))
    }

    fn ids_at(&self, author: &AuthorKey, seq: u64) -> Result<Vec<EventId>, StoreError> {
        Ok(self
            .feeds
            .range((*author, seq, EventId([0; 32]))..=(*author, seq, EventId([0xff; 32])))
            .map(|((_, _, id), _)| *id)
            .collect())
    }

    fn cluster_id(&self) -> Option<EventId> {
        self.cluster_id
    }

    fn write(&mut self, events: &[Event]) -> Result<(), StoreError> {
        for e in events {
            self.events.insert(e.id(), e.to_bytes().to_vec());
            self.feeds.insert((e.author(), e.seq(), e.id()), ());
            if matches!(e.payload(), Payload::Genesis(_)) && self.cluster_id.is_none() {
                self.cluster_id = Some(e.id());
            }
        }
        Ok(())
    }

    fn get(&self, id: &EventId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.events.get(id).cloned())
    }

    fn feed_from(
        &self,
        author: &AuthorKey,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, EventId)>, StoreError> {
        Ok(self
            .feeds
            .range((*author, from, EventId([0; 32]))..=(*author, u64::MAX, EventId([0xff; 32])))
            .map(|((_, seq, id), _)| (*seq, *id))
            .take(limit)
            .collect())
    }

    fn each_feed_entry(
        &self,
        visit: &mut dyn FnMut(AuthorKey, u64, EventId),
    ) -> Result<(), StoreError> {
        for (author, seq, id) in self.feeds.keys() {
            visit(*author, *seq, *id);
        }
        Ok(())
    }
}
