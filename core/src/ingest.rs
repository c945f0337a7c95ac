//! The admission rule: whether a verified event may be stored now, must wait
//! for its feed predecessor, or is refused. Every backend uses this one rule.

use makiatto_events::{AuthorKey, Event, EventError, EventId, Payload};

use crate::store::StoreError;

/// What a log backend must answer for admission, and how it stores.
pub trait Backend {
    /// Whether an event with this id is stored.
    fn contains(&self, id: &EventId) -> Result<bool, StoreError>;
    /// The ids stored at (author, seq): one normally, more after a fork.
    fn ids_at(&self, author: &AuthorKey, seq: u64) -> Result<Vec<EventId>, StoreError>;
    /// The genesis event's id, once one is stored.
    fn cluster_id(&self) -> Option<EventId>;
    /// Stores `events` atomically and durably: all or none, on disk when it
    /// returns. Events are already admitted and in feed order.
    fn write(&mut self, events: &[Event]) -> Result<(), StoreError>;
    /// The canonical bytes of a stored event.
    fn get(&self, id: &EventId) -> Result<Option<Vec<u8>>, StoreError>;
    /// The (seq, id) pairs of an author's feed with seq ≥ `from`, in order,
    /// at most `limit` of them.
    fn feed_from(
        &self,
        author: &AuthorKey,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, EventId)>, StoreError>;
    /// Visits every stored (author, seq, id), in (author, seq, id) order,
    /// without holding them all at once.
    fn each_feed_entry(
        &self,
        visit: &mut dyn FnMut(AuthorKey, u64, EventId),
    ) -> Result<(), StoreError>;
}

/// Why an event was refused. Each is counted in [`RejectCounts`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    #[error("rejected forged or malformed event: {0}")]
    Invalid(#[from] EventError),
    #[error("event {0} is already stored")]
    Duplicate(EventId),
    #[error(
        "event {id} does not follow its author's feed: prev {prev} is not the author's event at seq {expected_seq}"
    )]
    ChainMismatch {
        id: EventId,
        prev: EventId,
        expected_seq: u64,
    },
    #[error("event {id} is the genesis of another cluster (this log's genesis is {ours})")]
    ForeignCluster { id: EventId, ours: EventId },
    #[error(
        "event {id} waits for a feed predecessor, but the wait buffer is full; it will be fetched again"
    )]
    WaitBufferFull { id: EventId },
    #[error(
        "event {id} is stamped {} s ahead of this node's clock, past the cluster's bound of {} s \
         (log.max_clock_skew): fix the clock of the machine that signed it (or this node's) and send it again",
        .ahead_millis / 1000,
        .max_ahead_millis / 1000
    )]
    AheadOfClock {
        id: EventId,
        ahead_millis: u64,
        max_ahead_millis: u64,
    },
    #[error(
        "event {id} is stamped ahead of this node's clock and too many such events are held already; it will be fetched again"
    )]
    HoldFull { id: EventId },
}

/// Counters of refused events, by reason, since the log was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RejectCounts {
    pub invalid: u64,
    pub duplicate: u64,
    pub chain_mismatch: u64,
    pub foreign_cluster: u64,
    pub wait_buffer_full: u64,
    /// Stamped too far ahead of this node's clock: refused from `maki`,
    /// or from a peer when the hold was full.
    pub ahead_of_clock: u64,
}

impl RejectCounts {
    pub(crate) fn count(&mut self, error: &IngestError) {
        let slot = match error {
            IngestError::Invalid(_) => &mut self.invalid,
            IngestError::Duplicate(_) => &mut self.duplicate,
            IngestError::ChainMismatch { .. } => &mut self.chain_mismatch,
            IngestError::ForeignCluster { .. } => &mut self.foreign_cluster,
            IngestError::WaitBufferFull { .. } => &mut self.wait_buffer_full,
            IngestError::AheadOfClock { .. } | IngestError::HoldFull { .. } => {
                &mut self.ahead_of_clock
            }
        };
        *slot += 1;
    }

    /// All refusals together.
    pub fn total(&self) -> u64 {
        self.invalid
            + self.duplicate
            + self.chain_mismatch
            + self.foreign_cluster
            + self.wait_buffer_full
            + self.ahead_of_clock
    }
}

/// The verdict on one verified event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Store it; `fork` when another event already holds its (author, seq).
    Store { fork: bool },
    /// Its feed predecessor `on` is not stored yet; `diverged` when another
    /// event already holds the predecessor's place (a branch we lack).
    Wait { on: EventId, diverged: bool },
}

/// Judges `event` against what `backend` holds plus `staged` (events admitted
/// earlier in the same batch, not yet written). The outer error is a storage
/// failure (nobody's fault, nothing decided); the inner result is the verdict.
pub(crate) fn admit(
    backend: &impl Backend,
    staged: &[Event],
    event: &Event,
) -> Result<Result<Admission, IngestError>, StoreError> {
    let id = event.id();
    let header = event.header();
    let is_stored = |id: &EventId| -> Result<bool, StoreError> {
        Ok(staged.iter().any(|e| e.id() == *id) || backend.contains(id)?)
    };
    let ids_at = |seq: u64| -> Result<Vec<EventId>, StoreError> {
        let mut ids = backend.ids_at(&header.author, seq)?;
        ids.extend(
            staged
                .iter()
                .filter(|e| e.author() == header.author && e.seq() == seq)
                .map(|e| e.id()),
        );
        Ok(ids)
    };

    if is_stored(&id)? {
        return Ok(Err(IngestError::Duplicate(id)));
    }
    if matches!(event.payload(), Payload::Genesis(_)) {
        let ours = backend.cluster_id().or_else(|| {
            staged
                .iter()
                .find(|e| matches!(e.payload(), Payload::Genesis(_)))
                .map(|e| e.id())
        });
        if let Some(ours) = ours
            && ours != id
        {
            return Ok(Err(IngestError::ForeignCluster { id, ours }));
        }
    }
    if let Some(prev) = header.prev {
        let before = ids_at(header.seq - 1)?;
        if !before.contains(&prev) {
            if is_stored(&prev)? {
                return Ok(Err(IngestError::ChainMismatch {
                    id,
                    prev,
                    expected_seq: header.seq - 1,
                }));
            }
            return Ok(Ok(Admission::Wait {
                on: prev,
                diverged: !before.is_empty(),
            }));
        }
    }
    let fork = !ids_at(header.seq)?.is_empty();
    Ok(Ok(Admission::Store { fork }))
}
