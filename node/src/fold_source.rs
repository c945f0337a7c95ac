//! [`StoreSource`]: the node's fjall store as the engine's
//! [`Source`]: the events stay on disk, keyed by canonical position, and
//! the fold's per-event entries, checkpoints and record are saved beside
//! them. What the engine holds in memory is then its indexes and one
//! fold state, not the log.
//!
//! Reading forward decodes the stored events in batches spread over the
//! cores ([`Event::decode_trusted_all`]): a refold or a rebuild reads the
//! log front to back, and decoding is most of its cost.

use std::collections::VecDeque;
use std::ops::Bound;

use makiatto_core::store::FoldWrite;
use makiatto_core::{Store, StoreError};
use makiatto_events::{Event, EventId};
use makiatto_projections::index::Entry;
use makiatto_projections::source::{Events, Position, Save};
use makiatto_projections::{Source, SourceError};

/// Events decoded at once when reading forward.
const DECODE_BATCH: usize = 4096;

/// The store, read and written by the engine.
#[derive(Clone)]
pub struct StoreSource {
    store: Store,
}

impl StoreSource {
    pub fn new(store: Store) -> StoreSource {
        StoreSource { store }
    }
}

fn read(e: StoreError) -> SourceError {
    match e {
        StoreError::Corrupt(what) => SourceError::Corrupt(what),
        other => SourceError::Read(other.to_string()),
    }
}

fn decode(position: &Position, bytes: &[u8]) -> Result<Event, SourceError> {
    Event::decode_trusted(bytes).map_err(|e| {
        SourceError::Corrupt(format!("stored event {} does not decode: {e}", position.1))
    })
}

/// Stored (position, bytes) pairs, as the store reads them.
type Raw<'a> = Box<dyn Iterator<Item = Result<(Position, Vec<u8>), StoreError>> + 'a>;

/// Stored events in canonical order, decoded a batch at a time.
struct Forward<'a> {
    raw: Raw<'a>,
    decoded: VecDeque<Event>,
    failed: bool,
}

impl Forward<'_> {
    fn refill(&mut self) -> Result<(), SourceError> {
        let mut batch: Vec<(Position, Vec<u8>)> = Vec::with_capacity(DECODE_BATCH);
        for item in self.raw.by_ref() {
            batch.push(item.map_err(read)?);
            if batch.len() == DECODE_BATCH {
                break;
            }
        }
        let bytes: Vec<&[u8]> = batch.iter().map(|(_, b)| b.as_slice()).collect();
        let events = Event::decode_trusted_all(&bytes).map_err(|(i, e)| {
            SourceError::Corrupt(format!(
                "stored event {} does not decode: {e}",
                batch
                    .get(i)
                    .map_or_else(|| "?".to_owned(), |(p, _)| p.1.to_string())
            ))
        })?;
        self.decoded.extend(events);
        Ok(())
    }
}

impl Iterator for Forward<'_> {
    type Item = Result<Event, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.decoded.is_empty()
            && let Err(e) = self.refill()
        {
            self.failed = true;
            return Some(Err(e));
        }
        self.decoded.pop_front().map(Ok)
    }
}

impl Source for StoreSource {
    fn hold(&mut self, _event: &Event) {
        // The log stored it before the engine was given it.
    }

    fn event(&self, id: &EventId) -> Result<Option<Event>, SourceError> {
        let Some(at) = self.store.position_of(id).map_err(read)? else {
            return Ok(None);
        };
        match self.store.get_at(&at).map_err(read)? {
            Some(bytes) => Ok(Some(decode(&at, &bytes)?)),
            None => Err(SourceError::Corrupt(format!(
                "event {id} is indexed but its bytes are not stored"
            ))),
        }
    }

    fn forward(&self, from: Bound<Position>, until: Bound<Position>) -> Events<'_> {
        Box::new(Forward {
            raw: Box::new(self.store.read_events(from, until)),
            decoded: VecDeque::new(),
            failed: false,
        })
    }

    fn backward(&self, until: Position) -> Events<'_> {
        Box::new(
            self.store
                .range_events(Bound::Unbounded, Bound::Included(until))
                .rev()
                .map(|item| {
                    let (at, bytes) = item.map_err(read)?;
                    decode(&at, &bytes)
                }),
        )
    }

    fn entry(&self, id: &EventId) -> Result<Option<Entry>, SourceError> {
        self.store
            .index_entry(id)
            .map_err(read)?
            .map(|bytes| Entry::from_bytes(&bytes))
            .transpose()
    }

    fn checkpoint(&self, at: &Position) -> Result<Option<Vec<u8>>, SourceError> {
        self.store.checkpoint(at).map_err(read)
    }

    fn record(&self) -> Result<Option<Vec<u8>>, SourceError> {
        self.store.fold_record().map_err(read)
    }

    fn save(&mut self, save: Save) -> Result<(), SourceError> {
        self.store
            .write_fold(FoldWrite {
                entries: save
                    .entries
                    .into_iter()
                    .map(|(id, e)| (id, e.to_bytes().to_vec()))
                    .collect(),
                checkpoint: save.checkpoint,
                drop_checkpoints: save.drop_checkpoints,
                record: Some(save.record),
                projections: Vec::new(),
            })
            .map_err(read)
    }

    fn forget(&mut self) -> Result<(), SourceError> {
        self.store.clear_fold().map_err(read)
    }
}
