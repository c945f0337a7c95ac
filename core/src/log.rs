//! [`Log`]: a backend plus what admission needs around it: the bounded
//! buffer of events waiting for their feed predecessor, the events held
//! until the clock reaches their stamp (`skew`), rejection counters, and
//! the version vector that replication reads.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};

use makiatto_events::{AuthorKey, AuthorVerifier, Event, EventError, EventId};

use crate::ingest::{Admission, Backend, IngestError, RejectCounts, admit};
use crate::skew::{Held, SkewBound, Timeliness, judge};
use crate::store::{Position, StoreError};
use makiatto_events::VersionVector;

/// How many events may wait for a predecessor at once. Past it, new waiters
/// are refused (and fetched again by anti-entropy once the gap is filled).
pub const MAX_WAITING: usize = 10_000;

/// How many parsed author keys ingest keeps (a log has few authors; past
/// this the cache starts over rather than grow with made-up keys).
const MAX_VERIFIERS: usize = 1_024;

/// What became of one appended event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored durably; `fork` when its (author, seq) was already taken.
    Stored { id: EventId, fork: bool },
    /// Held in memory until its feed predecessor `on` arrives.
    Waiting { id: EventId, on: EventId },
    /// Stamped further ahead of this node's clock than the bound: held in
    /// memory until the clock reads `due_millis` (`skew`).
    Held { id: EventId, due_millis: u64 },
    /// Refused, and counted.
    Rejected(IngestError),
}

/// The result of one append call.
#[derive(Debug, Default)]
pub struct AppendReport {
    /// One outcome per event given, in order.
    pub outcomes: Vec<AppendOutcome>,
    /// Every event stored by this call, including earlier waiters that it
    /// released, in the order they were written.
    pub stored: Vec<Event>,
}

#[derive(Debug, Default)]
struct Waiting {
    by_prev: HashMap<EventId, Vec<Event>>,
    ids: HashSet<EventId>,
    order: VecDeque<EventId>,
}

/// The log: admission, storage, waiting, counting and the version vector.
#[derive(Debug)]
pub struct Log<B: Backend> {
    backend: B,
    waiting: Waiting,
    counts: RejectCounts,
    vv: VersionVector,
    /// Keys of authors whose signatures verified, parsed once.
    verifiers: HashMap<AuthorKey, AuthorVerifier>,
    /// The last event of every fork-free feed: an event that extends it is
    /// admitted without reading the store (the common case of ingest).
    tips: HashMap<AuthorKey, (u64, EventId)>,
    /// The clock and how far ahead of it an event may be stamped; `None`
    /// admits any stamp (the simulation, tests of other rules).
    skew: Option<SkewBound>,
    /// Events stamped past the bound, until the clock reaches them.
    held: Held,
    /// Events ever held (each counted once when it first arrived).
    held_total: u64,
}

impl<B: Backend> Log<B> {
    /// Wraps a backend, reading its feeds once to build the version vector.
    pub fn open(backend: B) -> Result<Self, StoreError> {
        let mut vv = VersionVector::default();
        let mut tips = HashMap::new();
        backend.each_feed_entry(&mut |author, seq, id| {
            vv.observe(author, seq, &id);
            tips.insert(author, (seq, id));
        })?;
        tips.retain(|author, _| vv.get(author).is_some_and(|f| f.count == f.seq));
        Ok(Self {
            backend,
            waiting: Waiting::default(),
            counts: RejectCounts::default(),
            vv,
            verifiers: HashMap::new(),
            tips,
            skew: None,
            held: Held::default(),
            held_total: 0,
        })
    }

    /// Judges every event's stamp against `bound` from now on: one stamped
    /// further ahead of the clock is held until the clock reaches it.
    pub fn bound_skew(&mut self, bound: SkewBound) {
        self.skew = Some(bound);
    }

    /// The bound in force, if any.
    pub fn skew(&self) -> Option<&SkewBound> {
        self.skew.as_ref()
    }

    /// How many events are held for their stamp now, and how many ever were.
    pub fn held(&self) -> (usize, u64) {
        (self.held.len(), self.held_total)
    }

    /// When the earliest held event comes due (Unix millis).
    pub fn next_due(&self) -> Option<u64> {
        self.held.next_due()
    }

    /// Decodes, verifies and appends raw events from outside (a peer, `maki`).
    pub fn append_bytes(&mut self, raw: &[Vec<u8>]) -> Result<AppendReport, StoreError> {
        let mut decoded = Vec::with_capacity(raw.len());
        let mut invalid = Vec::new();
        for (i, bytes) in raw.iter().enumerate() {
            match self.decode(bytes) {
                Ok(e) => decoded.push(e),
                Err(e) => invalid.push((i, e)),
            }
        }
        let mut report = self.append(decoded)?;
        for (i, error) in invalid {
            let error = IngestError::Invalid(error);
            self.counts.count(&error);
            report.outcomes.insert(i, AppendOutcome::Rejected(error));
        }
        Ok(report)
    }

    /// [`Event::decode`], with each author's key parsed once rather than
    /// once per event (it costs about 15% of a verification).
    fn decode(&mut self, bytes: &[u8]) -> Result<Event, EventError> {
        let event = Event::decode_trusted(bytes)?;
        let verifier = match self.verifiers.get(&event.author()) {
            Some(verifier) => *verifier,
            None => AuthorVerifier::new(event.author())?,
        };
        event.verify_signature_with(&verifier)?;
        if self.verifiers.len() >= MAX_VERIFIERS {
            self.verifiers.clear();
        }
        self.verifiers.insert(event.author(), verifier);
        Ok(event)
    }

    /// Appends verified events as one durable batch (one fsync). Returns
    /// only after everything stored is on disk; on a storage error nothing
    /// of this call is stored.
    ///
    /// Under a skew bound, held events that have come due go first (not
    /// reported: their outcome was reported when they arrived), and an
    /// event stamped past the bound is held, not admitted.
    pub fn append(&mut self, events: Vec<Event>) -> Result<AppendReport, StoreError> {
        let mut report = AppendReport::default();
        let now = self
            .skew
            .as_ref()
            .map(|s| ((s.clock)(), s.max_ahead_millis));
        let due = match now {
            Some((now, _)) if !self.held.is_empty() => self.held.take_due(now),
            _ => Vec::new(),
        };
        let mut work: VecDeque<(Event, bool)> = due
            .into_iter()
            .map(|e| (e, false))
            .chain(events.into_iter().map(|e| (e, true)))
            .collect();
        // Tips moved by events of this batch, not yet written.
        let mut batch_tips: HashMap<AuthorKey, (u64, EventId)> = HashMap::new();
        let mut forked: HashSet<AuthorKey> = HashSet::new();
        while let Some((event, reported)) = work.pop_front() {
            let id = event.id();
            if let Some((now, max_ahead)) = now
                && let Timeliness::Ahead { due_millis, .. } = judge(event.hlc(), now, max_ahead)
            {
                let fresh = !self.held.contains(&id);
                let outcome = if self.held.put(due_millis, event) {
                    self.held_total += u64::from(fresh);
                    AppendOutcome::Held { id, due_millis }
                } else {
                    let error = IngestError::HoldFull { id };
                    self.counts.count(&error);
                    AppendOutcome::Rejected(error)
                };
                if reported {
                    report.outcomes.push(outcome);
                }
                continue;
            }
            let admission = if self.extends_tip(&event, &batch_tips) {
                Ok(Admission::Store { fork: false })
            } else {
                admit(&self.backend, &report.stored, &event)?
            };
            match admission {
                // A new last event of a fork-free feed (no event held its
                // place, so its seq is one past the feed's end).
                Ok(Admission::Store { fork: false })
                    if !forked.contains(&event.author())
                        && self
                            .vv
                            .get(&event.author())
                            .is_none_or(|f| f.count == f.seq) =>
                {
                    batch_tips.insert(event.author(), (event.seq(), id));
                }
                Ok(Admission::Store { fork: true }) => {
                    forked.insert(event.author());
                    batch_tips.remove(&event.author());
                    self.tips.remove(&event.author());
                }
                _ => {}
            }
            let outcome = match admission {
                Ok(Admission::Store { fork }) => {
                    if let Some(released) = self.waiting.take(&id) {
                        work.extend(released.into_iter().map(|e| (e, false)));
                    }
                    report.stored.push(event);
                    AppendOutcome::Stored { id, fork }
                }
                Ok(Admission::Wait { on, diverged }) => {
                    if diverged {
                        self.vv.mark_diverged(event.author(), true);
                    }
                    if self.waiting.ids.contains(&id) {
                        AppendOutcome::Waiting { id, on }
                    } else if self.waiting.ids.len() >= MAX_WAITING {
                        AppendOutcome::Rejected(IngestError::WaitBufferFull { id })
                    } else {
                        self.waiting.put(on, event);
                        AppendOutcome::Waiting { id, on }
                    }
                }
                Err(error) => AppendOutcome::Rejected(error),
            };
            if let AppendOutcome::Rejected(error) = &outcome {
                self.counts.count(error);
            }
            if reported {
                report.outcomes.push(outcome);
            }
        }
        self.backend.write(&report.stored)?;
        for e in &report.stored {
            self.vv.observe(e.author(), e.seq(), &e.id());
        }
        for (author, tip) in batch_tips {
            if self
                .vv
                .get(&author)
                .is_some_and(|f| f.count == f.seq && f.seq == tip.0)
            {
                self.tips.insert(author, tip);
            }
        }
        for e in &report.stored {
            if self.vv.get(&e.author()).is_some_and(|f| f.count > f.seq) {
                // The fork is now held here; whole-feed exchange takes over.
                self.vv.mark_diverged(e.author(), false);
            }
        }
        Ok(report)
    }

    /// Whether `event` is the next event of a fork-free feed whose last event
    /// is known: then it cannot be stored already, its chain is right and it
    /// forks nothing, so the store need not be read. Genesis always takes the
    /// full path (the cluster check).
    fn extends_tip(&self, event: &Event, batch_tips: &HashMap<AuthorKey, (u64, EventId)>) -> bool {
        if matches!(event.payload(), makiatto_events::Payload::Genesis(_)) {
            return false;
        }
        let author = event.author();
        match batch_tips.get(&author).or_else(|| self.tips.get(&author)) {
            Some((seq, id)) => event.seq() == seq + 1 && event.header().prev == Some(*id),
            None => false,
        }
    }

    /// The canonical bytes of every event a peer holding `remote` lacks,
    /// stopping once `max_bytes` is reached (at least one event is always
    /// returned when any is missing; a feed resent whole is never cut).
    ///
    /// Feeds resent whole come first; the rest are merged in canonical
    /// order (stamp, then id), which puts every event after its parents
    /// whichever feed they are in: a peer that takes a batch finds the
    /// parents of its events folded and holds nothing back waiting for
    /// them. (Feed after feed, a newcomer held a whole long feed in memory
    /// until the short feed its first event names arrived last.) Each feed
    /// is read a page at a time, never its whole suffix.
    pub fn missing_for(
        &self,
        remote: &VersionVector,
        max_bytes: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut out = Vec::new();
        let mut size = 0;
        let mut merged = Vec::new();
        for request in self.vv.plan_for(remote) {
            // A feed resent from below the peer's seq (a fork, or feeds that
            // diverged) goes whole: the peer's vector cannot say which of
            // those events it lacks, so a cut would resend the same prefix
            // forever and starve every author after it.
            let whole = remote
                .get(&request.author)
                .is_some_and(|theirs| request.from <= theirs.seq);
            if !whole {
                merged.push(FeedCursor::new(request.author, request.from));
                continue;
            }
            if size >= max_bytes && !out.is_empty() {
                return Ok(out);
            }
            let mut feed = FeedCursor::new(request.author, request.from);
            while let Some((_, id)) = feed.next_entry(&self.backend)? {
                let bytes = self.stored(&id)?;
                size += bytes.len();
                out.push(bytes);
            }
        }
        // Each feed's next event, by (stamp, id): the smallest first.
        let mut next = BinaryHeap::new();
        for (i, feed) in merged.iter_mut().enumerate() {
            if let Some((key, bytes)) = self.next_of(feed)? {
                next.push(Reverse((key, i, bytes)));
            }
        }
        while let Some(Reverse((_, i, bytes))) = next.pop() {
            if size >= max_bytes && !out.is_empty() {
                break;
            }
            size += bytes.len();
            out.push(bytes);
            if let Some((key, bytes)) = self.next_of(&mut merged[i])? {
                next.push(Reverse((key, i, bytes)));
            }
        }
        Ok(out)
    }

    /// `feed`'s next event: its canonical position and its bytes.
    fn next_of(&self, feed: &mut FeedCursor) -> Result<Option<(Position, Vec<u8>)>, StoreError> {
        let Some((_, id)) = feed.next_entry(&self.backend)? else {
            return Ok(None);
        };
        let bytes = self.stored(&id)?;
        let header = Event::peek_header(&bytes)
            .ok_or_else(|| StoreError::Corrupt(format!("stored event {id} has no header")))?;
        Ok(Some(((header.hlc, id), bytes)))
    }

    /// The bytes of an event a feed names.
    fn stored(&self, id: &EventId) -> Result<Vec<u8>, StoreError> {
        self.backend
            .get(id)?
            .ok_or_else(|| StoreError::Corrupt(format!("feed names {id} but the event is missing")))
    }

    /// The canonical bytes of `author`'s events from `from` on, about
    /// `max_bytes` of them (at least one seq's worth, never a part of one:
    /// both branches of a forked seq go together). Returns the next seq to
    /// ask for, or `None` when the feed is exhausted. Replication streams a
    /// plan ([`VersionVector::plan_for`]) with it, batch after batch.
    pub fn feed_chunk(
        &self,
        author: &AuthorKey,
        from: u64,
        max_bytes: usize,
    ) -> Result<(Vec<Vec<u8>>, Option<u64>), StoreError> {
        let mut out = Vec::new();
        let mut size = 0;
        let mut feed = FeedCursor::new(*author, from);
        while let Some((seq, id)) = feed.next_entry(&self.backend)? {
            if size >= max_bytes && out.last().is_some_and(|(s, _)| *s != seq) {
                return Ok((out.into_iter().map(|(_, b)| b).collect(), Some(seq)));
            }
            let bytes = self.stored(&id)?;
            size += bytes.len();
            out.push((seq, bytes));
        }
        Ok((out.into_iter().map(|(_, b)| b).collect(), None))
    }

    /// What this log holds, per author.
    pub fn version_vector(&self) -> &VersionVector {
        &self.vv
    }

    /// Counts a refusal decided outside the log (bytes that did not decode
    /// before reaching it), so every refusal shows in one set of counters.
    pub fn count_rejection(&mut self, error: &IngestError) {
        self.counts.count(error);
    }

    /// Refusals since the log was opened.
    pub fn reject_counts(&self) -> RejectCounts {
        self.counts
    }

    /// How many events wait for a predecessor.
    pub fn waiting(&self) -> usize {
        self.waiting.ids.len()
    }

    /// The backend, for reads.
    pub fn backend(&self) -> &B {
        &self.backend
    }
}

impl Waiting {
    fn put(&mut self, on: EventId, event: Event) {
        self.ids.insert(event.id());
        self.order.push_back(event.id());
        self.by_prev.entry(on).or_default().push(event);
    }

    fn take(&mut self, prev: &EventId) -> Option<Vec<Event>> {
        let released = self.by_prev.remove(prev)?;
        for e in &released {
            self.ids.remove(&e.id());
        }
        self.order.retain(|id| self.ids.contains(id));
        Some(released)
    }
}

/// Feed entries read at once: about a batch's worth, never the whole
/// suffix of a long feed (read again for every batch, that made copying a
/// feed quadratic).
const FEED_PAGE: usize = 1024;

/// One author's feed from a seq on, read from the backend a page at a
/// time.
struct FeedCursor {
    author: AuthorKey,
    from: u64,
    /// The last entry returned: the next page starts after it.
    last: Option<(u64, EventId)>,
    page: VecDeque<(u64, EventId)>,
    exhausted: bool,
}

impl FeedCursor {
    fn new(author: AuthorKey, from: u64) -> FeedCursor {
        FeedCursor {
            author,
            from,
            last: None,
            page: VecDeque::new(),
            exhausted: false,
        }
    }

    /// The next (seq, id) of the feed, in (seq, id) order.
    fn next_entry<B: Backend>(
        &mut self,
        backend: &B,
    ) -> Result<Option<(u64, EventId)>, StoreError> {
        if self.page.is_empty() && !self.exhausted {
            // A page starts at the last seq returned (a forked seq holds
            // more than one id) and skips what was returned already.
            let from = self.last.map_or(self.from, |(seq, _)| seq);
            let mut limit = FEED_PAGE;
            loop {
                let page = backend.feed_from(&self.author, from, limit)?;
                let full = page.len() == limit;
                let last = self.last;
                self.page = page
                    .into_iter()
                    .filter(|entry| last.is_none_or(|last| *entry > last))
                    .collect();
                if !self.page.is_empty() || !full {
                    self.exhausted = !full;
                    break;
                }
                // A page of one seq's branches, all returned already.
                limit = limit.saturating_mul(2);
            }
        }
        let entry = self.page.pop_front();
        if entry.is_some() {
            self.last = entry;
        }
        Ok(entry)
    }
}
