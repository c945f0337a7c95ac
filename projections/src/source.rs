//! [`Source`]: where the engine reads the events it has folded, and keeps
//! what it decided about them, so that none of it needs to stay in memory.
//!
//! A node's source is its fjall store (in `node`): events keyed by
//! canonical position, the fold's per-event [`Entry`]s, checkpoints of the
//! fold's state and the fold's record, all written by [`Source::save`] as
//! one unit. [`Memory`] keeps the same things in memory, for tests, the
//! replay simulation and benchmarks of the fold alone.

use std::collections::BTreeMap;
use std::ops::Bound;

use makiatto_events::{Event, EventId, Hlc};

use crate::fast::FastMap;
use crate::index::Entry;

/// A point in canonical order: (HLC, id).
pub type Position = (Hlc, EventId);

/// Why the source could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("reading the event store failed: {0}")]
    Read(String),
    #[error("the event store holds something that does not read back: {0}")]
    Corrupt(String),
}

/// Events one at a time, in the order asked for.
pub type Events<'a> = Box<dyn Iterator<Item = Result<Event, SourceError>> + 'a>;

/// What the engine writes at a checkpoint, as one unit: every entry made
/// since the last save, a checkpoint of the fold (if one is due),
/// checkpoints that no longer hold (an event sorting before them arrived),
/// and the engine's record.
#[derive(Debug, Default)]
pub struct Save {
    pub entries: Vec<(EventId, Entry)>,
    pub checkpoint: Option<(Position, Vec<u8>)>,
    pub drop_checkpoints: Vec<Position>,
    pub record: Vec<u8>,
}

/// The events an engine has been given, and what it keeps about them.
pub trait Source {
    /// Keeps an event the engine was given. A source that stores events
    /// before the engine sees them (the node's store) has nothing to do.
    fn hold(&mut self, event: &Event);

    /// A held event.
    fn event(&self, id: &EventId) -> Result<Option<Event>, SourceError>;

    /// Held events between two points, in canonical order. Events the
    /// engine has not folded are among them; it skips those.
    fn forward(&self, from: Bound<Position>, until: Bound<Position>) -> Events<'_>;

    /// Held events at or before `until`, newest first.
    fn backward(&self, until: Position) -> Events<'_>;

    /// The saved entry of a folded event.
    fn entry(&self, id: &EventId) -> Result<Option<Entry>, SourceError>;

    /// The checkpoint saved at a position.
    fn checkpoint(&self, at: &Position) -> Result<Option<Vec<u8>>, SourceError>;

    /// The engine's record as last saved.
    fn record(&self) -> Result<Option<Vec<u8>>, SourceError>;

    /// Writes a [`Save`], all of it or none.
    fn save(&mut self, save: Save) -> Result<(), SourceError>;

    /// Forgets every entry, checkpoint and record (the events stay).
    fn forget(&mut self) -> Result<(), SourceError>;
}

/// A source in memory: every event given, and what the engine saved.
#[derive(Debug, Default, Clone)]
pub struct Memory {
    events: BTreeMap<Position, Event>,
    positions: FastMap<EventId, Hlc>,
    entries: FastMap<EventId, Entry>,
    checkpoints: BTreeMap<Position, Vec<u8>>,
    record: Option<Vec<u8>>,
}

impl Memory {
    /// How many events are held.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// How many checkpoints are saved.
    pub fn checkpoints(&self) -> usize {
        self.checkpoints.len()
    }
}

impl Source for Memory {
    fn hold(&mut self, event: &Event) {
        self.positions.insert(event.id(), event.hlc());
        self.events.insert((event.hlc(), event.id()), event.clone());
    }

    fn event(&self, id: &EventId) -> Result<Option<Event>, SourceError> {
        Ok(self
            .positions
            .get(id)
            .and_then(|hlc| self.events.get(&(*hlc, *id)))
            .cloned())
    }

    fn forward(&self, from: Bound<Position>, until: Bound<Position>) -> Events<'_> {
        Box::new(self.events.range((from, until)).map(|(_, e)| Ok(e.clone())))
    }

    fn backward(&self, until: Position) -> Events<'_> {
        Box::new(
            self.events
                .range(..=until)
                .rev()
                .map(|(_, e)| Ok(e.clone())),
        )
    }

    fn entry(&self, id: &EventId) -> Result<Option<Entry>, SourceError> {
        Ok(self.entries.get(id).copied())
    }

    fn checkpoint(&self, at: &Position) -> Result<Option<Vec<u8>>, SourceError> {
        Ok(self.checkpoints.get(at).cloned())
    }

    fn record(&self) -> Result<Option<Vec<u8>>, SourceError> {
        Ok(self.record.clone())
    }

    fn save(&mut self, save: Save) -> Result<(), SourceError> {
        self.entries.extend(save.entries);
        for at in save.drop_checkpoints {
            self.checkpoints.remove(&at);
        }
        if let Some((at, bytes)) = save.checkpoint {
            self.checkpoints.insert(at, bytes);
        }
        self.record = Some(save.record);
        Ok(())
    }

    fn forget(&mut self) -> Result<(), SourceError> {
        self.entries.clear();
        self.checkpoints.clear();
        self.record = None;
        Ok(())
    }
}
