//! What the fold decides about each event, kept compact and mostly out of
//! memory.
//!
//! An [`Entry`] is 20 bytes: the event's clock, the role events in its
//! causal past (a [`RoleSetId`] into [`RoleSets`](crate::role_sets::RoleSets))
//! and its verdict (a [`VerdictId`] into [`Verdicts`]; applied, the common
//! case, is 0). Every one of them depends on the event's causal past alone,
//! so an entry, once made, holds for good: a re-fold after a healed
//! partition makes the same entries again and need not rewrite them.
//!
//! The [`Index`] keeps the entries not yet saved and a bounded cache of
//! recent ones; the rest are read from the [`Source`] when asked for (an
//! event names old events as parents only after a long partition).

use std::collections::HashMap;

use makiatto_events::{EventId, Hlc};

use crate::fast::FastMap;
use crate::fold::Verdict;
use crate::source::{Source, SourceError};

/// An interned set of applied role events (see `role_sets`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RoleSetId(pub u32);

/// An interned verdict; 0 is [`Verdict::Applied`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct VerdictId(pub u32);

impl VerdictId {
    pub const APPLIED: VerdictId = VerdictId(0);

    pub fn is_applied(self) -> bool {
        self == VerdictId::APPLIED
    }
}

/// What the fold decided about one folded event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub hlc: Hlc,
    pub roles: RoleSetId,
    pub verdict: VerdictId,
}

impl Entry {
    /// Bytes of the saved form.
    pub const BYTES: usize = 20;

    /// The saved form: millis, counter, role set, verdict (big-endian).
    pub fn to_bytes(&self) -> [u8; Entry::BYTES] {
        let mut out = [0u8; Entry::BYTES];
        out[..8].copy_from_slice(&self.hlc.millis.to_be_bytes());
        out[8..12].copy_from_slice(&self.hlc.counter.to_be_bytes());
        out[12..16].copy_from_slice(&self.roles.0.to_be_bytes());
        out[16..].copy_from_slice(&self.verdict.0.to_be_bytes());
        out
    }

    /// Reads the saved form back.
    pub fn from_bytes(bytes: &[u8]) -> Result<Entry, SourceError> {
        let word = |range: std::ops::Range<usize>| -> Result<u32, SourceError> {
            let mut b = [0u8; 4];
            b.copy_from_slice(bytes.get(range).ok_or_else(|| {
                SourceError::Corrupt(format!(
                    "a fold entry is {} bytes, not {}",
                    bytes.len(),
                    Entry::BYTES
                ))
            })?);
            Ok(u32::from_be_bytes(b))
        };
        if bytes.len() != Entry::BYTES {
            return Err(SourceError::Corrupt(format!(
                "a fold entry is {} bytes, not {}",
                bytes.len(),
                Entry::BYTES
            )));
        }
        let mut millis = [0u8; 8];
        millis.copy_from_slice(&bytes[..8]);
        Ok(Entry {
            hlc: Hlc {
                millis: u64::from_be_bytes(millis),
                counter: word(8..12)?,
            },
            roles: RoleSetId(word(12..16)?),
            verdict: VerdictId(word(16..20)?),
        })
    }
}

/// Every distinct verdict the fold gave, numbered once. Verdicts other than
/// applied are few and repeat (their reasons are fixed sentences), so an
/// entry carries a number instead of the text.
#[derive(Debug, Clone)]
pub struct Verdicts {
    list: Vec<Verdict>,
    ids: HashMap<Verdict, VerdictId>,
}

impl Default for Verdicts {
    fn default() -> Self {
        Verdicts::from_list(Vec::new())
    }
}

impl Verdicts {
    /// The table from its saved list (without the implied applied first).
    pub fn from_list(rest: Vec<Verdict>) -> Verdicts {
        let mut list = vec![Verdict::Applied];
        list.extend(rest);
        let ids = list
            .iter()
            .enumerate()
            .map(|(i, v)| (v.clone(), VerdictId(i as u32)))
            .collect();
        Verdicts { list, ids }
    }

    /// The saved list (applied, always first, left out).
    pub fn to_list(&self) -> &[Verdict] {
        &self.list[1..]
    }

    /// The number of a verdict, numbering it if it is new.
    pub fn intern(&mut self, verdict: Verdict) -> VerdictId {
        if let Some(id) = self.ids.get(&verdict) {
            return *id;
        }
        let id = VerdictId(self.list.len() as u32);
        self.list.push(verdict.clone());
        self.ids.insert(verdict, id);
        id
    }

    /// The verdict a number stands for.
    pub fn get(&self, id: VerdictId) -> Option<&Verdict> {
        self.list.get(id.0 as usize)
    }
}

/// Recent entries kept in memory, per generation.
pub const CACHED_ENTRIES: usize = 1 << 16;

/// The entries not yet saved, and a cache of recent ones, in front of the
/// source's saved entries.
#[derive(Debug, Clone, Default)]
pub struct Index {
    pending: FastMap<EventId, Entry>,
    recent: FastMap<EventId, Entry>,
    older: FastMap<EventId, Entry>,
}

impl Index {
    /// A new entry (not yet saved).
    pub fn put(&mut self, id: EventId, entry: Entry) {
        self.pending.insert(id, entry);
    }

    /// The entry of `id`, from memory or the source; a saved one read from
    /// the source is cached.
    pub fn get(
        &mut self,
        id: &EventId,
        source: &impl Source,
    ) -> Result<Option<Entry>, SourceError> {
        if let Some(e) = self.in_memory(id) {
            return Ok(Some(e));
        }
        let found = source.entry(id)?;
        if let Some(e) = found {
            self.cache(*id, e);
        }
        Ok(found)
    }

    /// The entry of `id`, without caching what is read.
    pub fn peek(&self, id: &EventId, source: &impl Source) -> Result<Option<Entry>, SourceError> {
        match self.in_memory(id) {
            Some(e) => Ok(Some(e)),
            None => source.entry(id),
        }
    }

    fn in_memory(&self, id: &EventId) -> Option<Entry> {
        self.pending
            .get(id)
            .or_else(|| self.recent.get(id))
            .or_else(|| self.older.get(id))
            .copied()
    }

    /// Remembers a saved entry as recently used. Two generations of at
    /// most [`CACHED_ENTRIES`] each: when the newer fills, it becomes the
    /// older and the old older is dropped.
    fn cache(&mut self, id: EventId, entry: Entry) {
        if self.recent.len() >= CACHED_ENTRIES {
            self.older = std::mem::take(&mut self.recent);
        }
        self.recent.insert(id, entry);
    }

    /// How many entries wait to be saved.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Takes the entries to save (they stay cached), in id order.
    pub fn take_pending(&mut self) -> Vec<(EventId, Entry)> {
        let mut taken: Vec<(EventId, Entry)> = self.pending.drain().collect();
        taken.sort_unstable_by_key(|(id, _)| *id);
        for (id, e) in &taken {
            self.cache(*id, *e);
        }
        taken
    }

    /// Forgets every entry, saved or not (a fold from scratch).
    pub fn clear(&mut self) {
        self.pending.clear();
        self.recent.clear();
        self.older.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_reads_back_from_its_bytes() {
        let e = Entry {
            hlc: Hlc {
                millis: 1_700_000_000_123,
                counter: 7,
            },
            roles: RoleSetId(42),
            verdict: VerdictId(3),
        };
        assert_eq!(Entry::from_bytes(&e.to_bytes()), Ok(e));
        assert!(Entry::from_bytes(&e.to_bytes()[..19]).is_err());
    }

    #[test]
    fn verdicts_are_numbered_once_and_applied_is_zero() {
        let mut v = Verdicts::default();
        assert_eq!(v.intern(Verdict::Applied), VerdictId::APPLIED);
        let a = v.intern(Verdict::Unauthorized("no".into()));
        assert_eq!(v.intern(Verdict::Unauthorized("no".into())), a);
        let again = Verdicts::from_list(v.to_list().to_vec());
        assert_eq!(again.get(a), Some(&Verdict::Unauthorized("no".into())));
    }
}
