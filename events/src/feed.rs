//! Writing one's own feed: each new event follows the author's previous one,
//! so an author that always signs through its [`FeedWriter`] never forks.

use crate::event::{Event, EventError, UnsignedEvent};
use crate::hlc::Hlc;
use crate::ids::{AuthorKey, EventId};
use crate::keys::SigningKey;
use crate::payload::Payload;

/// The signing state of one author: key, last seq, last id and last time.
#[derive(Debug, Clone)]
pub struct FeedWriter {
    key: SigningKey,
    seq: u64,
    prev: Option<EventId>,
    last_hlc: Option<Hlc>,
}

impl FeedWriter {
    /// A writer for a key that has written nothing yet.
    pub fn new(key: SigningKey) -> Self {
        Self {
            key,
            seq: 0,
            prev: None,
            last_hlc: None,
        }
    }

    /// A writer that continues after `last` (the author's latest event).
    pub fn resume(key: SigningKey, last: &Event) -> Self {
        Self {
            key,
            seq: last.seq(),
            prev: Some(last.id()),
            last_hlc: Some(last.hlc()),
        }
    }

    /// The author's public key.
    pub fn author(&self) -> AuthorKey {
        self.key.public()
    }

    /// The sequence number of the last event written.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Signs the next event. `parents` are the heads the author has seen,
    /// with their timestamps (so the new stamp follows them); `now_millis`
    /// is the caller's wall clock.
    pub fn write(
        &mut self,
        payload: Payload,
        parents: &[(EventId, Hlc)],
        now_millis: u64,
    ) -> Result<Event, EventError> {
        let hlc = Hlc::next(
            now_millis,
            self.last_hlc.iter().chain(parents.iter().map(|(_, h)| h)),
        );
        let unsigned = UnsignedEvent::new(
            self.key.public(),
            self.seq + 1,
            self.prev,
            hlc,
            parents.iter().map(|(id, _)| *id),
            payload,
        );
        let event = unsigned.sign(&self.key)?;
        self.seq += 1;
        self.prev = Some(event.id());
        self.last_hlc = Some(hlc);
        Ok(event)
    }
}
