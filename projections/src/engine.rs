//! [`Engine`]: which events are causally ready, the fold over the ready
//! ones kept current, and "as of" answers — with the events themselves in
//! a [`Source`], not in memory.
//!
//! An event is *ready* once all its ancestors are held; only ready events
//! are folded, so a verdict is never made on a partial past. New ready
//! events that all sort after the last folded one are folded on top;
//! otherwise (events from a healed partition sorting earlier) the fold
//! starts again from the newest checkpoint before the earliest of them and
//! re-folds what follows, reading it from the source. Both paths give the
//! same bytes, which the replay tests check.
//!
//! What stays in memory: the fold's state (the projections), the events
//! not yet ready, the heads, the tables entries point into, the entries
//! not yet saved and a bounded cache of recent ones. Every event ready and
//! folded has an [`Entry`] (20 bytes, in the source once saved); an event
//! is ready exactly when it has one. Every `checkpoint_every` events folded
//! the engine saves its new entries, a checkpoint of the fold and its
//! record together ([`Source::save`]); [`Engine::open`] starts from them.

use std::collections::BTreeSet;
use std::ops::Bound;

use makiatto_events::{Event, EventId, Hlc, VersionVector};

use crate::checkpoint::{FORMAT, Mark, Record};
use crate::fast::{FastMap, FastSet};
use crate::fold::{Facts, Fold, Lookup, Verdict};
use crate::index::{CACHED_ENTRIES, Entry, Index, Verdicts};
use crate::role_sets::RoleSets;
use crate::roles::Roles;
use crate::source::{Memory, Position, Save, Source, SourceError};
use crate::state::{ProjectionName, State};

/// A point in history for time travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// The event's causal past, including itself.
    Event(EventId),
    /// Every event stamped at or before this time.
    Time(Hlc),
}

/// Why an "as of" query has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AsOfError {
    #[error("no event {0} is held here")]
    UnknownEvent(EventId),
    #[error("event {0} is held but some of its causal past is not yet")]
    NotReady(EventId),
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// What an insert did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InsertReport {
    /// Events that became ready (and were folded), in canonical order.
    pub folded: Vec<EventId>,
    /// Whether the fold was redone from a checkpoint (or the start).
    pub rebuilt: bool,
}

/// How often the engine saves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Save (entries, a checkpoint and the record) once this many events
    /// were folded since the last save.
    pub checkpoint_every: u64,
    /// Checkpoints kept: past this, the one whose removal leaves the
    /// smallest gap between its neighbours goes (never the newest two),
    /// so the rest stay spread over the history.
    pub checkpoints_kept: usize,
}

impl Settings {
    /// A node's: a save per 65,536 events (and whenever the node asks).
    pub const NODE: Settings = Settings {
        checkpoint_every: 1 << 16,
        checkpoints_kept: 16,
    };
    /// [`Engine::new`]'s, small so that the tests' histories cross
    /// checkpoints and re-fold from them.
    pub const TESTS: Settings = Settings {
        checkpoint_every: 48,
        checkpoints_kept: 4,
    };
}

/// A rebuild from scratch, compared with what the engine keeps.
#[derive(Debug, Clone, Default)]
pub struct Rebuilt {
    /// Every projection, rebuilt.
    pub state: State,
    /// Events folded.
    pub events: u64,
    /// Where the rebuild disagrees with a saved entry or checkpoint.
    pub problems: Vec<String>,
}

/// Problems listed in full by a rebuild; past these it counts them.
const PROBLEMS_LISTED: usize = 20;

/// Events held but not yet ready, and what each waits for.
#[derive(Debug, Default)]
struct Unready {
    events: FastMap<EventId, Event>,
    /// Parent id → events waiting for it to become ready.
    waiting_on: FastMap<EventId, Vec<EventId>>,
    /// Not-ready event → how many of its parents are not ready.
    missing: FastMap<EventId, usize>,
}

impl Unready {
    fn wait(&mut self, event: Event, missing: Vec<EventId>) {
        let id = event.id();
        self.missing.insert(id, missing.len());
        for p in missing {
            self.waiting_on.entry(p).or_default().push(id);
        }
        self.events.insert(id, event);
    }

    /// The events that `ready` was the last missing parent of.
    fn release(&mut self, ready: &EventId) -> Vec<Event> {
        let mut out = Vec::new();
        for child in self.waiting_on.remove(ready).unwrap_or_default() {
            if let Some(n) = self.missing.get_mut(&child) {
                *n -= 1;
                if *n == 0 {
                    self.missing.remove(&child);
                    if let Some(e) = self.events.remove(&child) {
                        out.push(e);
                    }
                }
            }
        }
        out
    }
}

/// Readiness, the fold and its saved entries and checkpoints.
#[derive(Debug)]
pub struct Engine<S: Source = Memory> {
    source: S,
    settings: Settings,
    fold: Fold,
    index: Index,
    sets: RoleSets,
    verdicts: Verdicts,
    unready: Unready,
    heads: FastMap<EventId, Hlc>,
    known: VersionVector,
    ready: u64,
    /// Saved checkpoints that still hold, oldest first.
    checkpoints: Vec<Mark>,
    /// Saved checkpoints that no longer hold, to drop at the next save.
    stale: Vec<Position>,
    /// Events folded (or re-folded) since the last save.
    unsaved: u64,
    state: Option<State>,
}

impl Default for Engine<Memory> {
    fn default() -> Self {
        Engine::empty(Memory::default(), Settings::TESTS)
    }
}

impl Engine<Memory> {
    /// An engine over a [`Memory`] source, saving as [`Settings::TESTS`] says.
    pub fn new() -> Self {
        Self::default()
    }

    /// An engine over a [`Memory`] source with these settings.
    pub fn with_settings(settings: Settings) -> Self {
        Engine::empty(Memory::default(), settings)
    }

    // The memory source never fails, so these give the answer alone; the
    // fallbacks below are never taken.

    /// Adds events (duplicates are ignored) and folds those that become ready.
    pub fn insert(&mut self, events: impl IntoIterator<Item = Event>) -> InsertReport {
        self.try_insert(events).unwrap_or_default()
    }

    /// Whether the event is held with all of its causal past.
    pub fn is_ready(&self, id: &EventId) -> bool {
        self.try_is_ready(id).unwrap_or(false)
    }

    /// Whether the event is held at all.
    pub fn contains(&self, id: &EventId) -> bool {
        self.try_contains(id).unwrap_or(false)
    }

    /// The verdict on a folded event (`None` while it is not ready).
    pub fn verdict(&self, id: &EventId) -> Option<&Verdict> {
        self.try_verdict(id).ok().flatten()
    }

    /// All projections rebuilt from scratch over every ready event.
    pub fn rebuild(&self) -> State {
        self.try_rebuild().map(|r| r.state).unwrap_or_default()
    }

    /// The ready events, in canonical order.
    pub fn ordered(&self) -> Vec<Event> {
        let mut out = Vec::new();
        let _ = self.try_for_each_ready(|e, _| {
            out.push(e.clone());
            Ok(())
        });
        out
    }
}

/// The engine's facts: its index and tables over its source.
struct Known<'a, S: Source> {
    index: &'a mut Index,
    source: &'a S,
    sets: &'a mut RoleSets,
    verdicts: &'a mut Verdicts,
}

impl<S: Source> Lookup for Known<'_, S> {
    fn event(&mut self, id: &EventId) -> Result<Option<Event>, SourceError> {
        self.source.event(id)
    }
}

impl<S: Source> Facts for Known<'_, S> {
    fn entry(&mut self, id: &EventId) -> Result<Option<Entry>, SourceError> {
        self.index.get(id, self.source)
    }
    fn sets(&mut self) -> &mut RoleSets {
        self.sets
    }
    fn verdicts(&mut self) -> &mut Verdicts {
        self.verdicts
    }
}

/// The facts of a fold from scratch: entries of its own, recent ones in
/// memory; an older one is the engine's saved entry, translated into the
/// fresh tables (each saved entry was compared with the fresh one when
/// the fresh fold made it, so this trusts only what was checked).
struct Fresh<'a, S: Source> {
    recent: FastMap<EventId, Entry>,
    older: FastMap<EventId, Entry>,
    engine: &'a Engine<S>,
    sets: RoleSets,
    verdicts: Verdicts,
}

impl<S: Source> Fresh<'_, S> {
    fn put(&mut self, id: EventId, entry: Entry) {
        if self.recent.len() >= CACHED_ENTRIES {
            self.older = std::mem::take(&mut self.recent);
        }
        self.recent.insert(id, entry);
    }

    /// A saved entry in this fold's numbering.
    fn translate(&mut self, saved: Entry) -> Result<Entry, SourceError> {
        let mut set = RoleSets::EMPTY;
        for id in self.engine.sets.members(saved.roles) {
            let Some(event) = self.engine.source.event(&id)? else {
                return Err(SourceError::Corrupt(format!(
                    "role event {id} is named by the fold but not held"
                )));
            };
            set = self.sets.with(set, &event);
        }
        let verdict = self
            .engine
            .verdicts
            .get(saved.verdict)
            .cloned()
            .unwrap_or(Verdict::Applied);
        Ok(Entry {
            hlc: saved.hlc,
            roles: set,
            verdict: self.verdicts.intern(verdict),
        })
    }

    /// What an entry means, whatever the tables' numbering.
    fn meaning(sets: &RoleSets, verdicts: &Verdicts, e: Entry) -> (Hlc, Vec<EventId>, Verdict) {
        (
            e.hlc,
            sets.members(e.roles),
            verdicts.get(e.verdict).cloned().unwrap_or(Verdict::Applied),
        )
    }
}

impl<S: Source> Lookup for Fresh<'_, S> {
    fn event(&mut self, id: &EventId) -> Result<Option<Event>, SourceError> {
        self.engine.source.event(id)
    }
}

impl<S: Source> Facts for Fresh<'_, S> {
    fn entry(&mut self, id: &EventId) -> Result<Option<Entry>, SourceError> {
        if let Some(e) = self.recent.get(id).or_else(|| self.older.get(id)) {
            return Ok(Some(*e));
        }
        match self.engine.index.peek(id, &self.engine.source)? {
            Some(saved) => Ok(Some(self.translate(saved)?)),
            None => Ok(None),
        }
    }
    fn sets(&mut self) -> &mut RoleSets {
        &mut self.sets
    }
    fn verdicts(&mut self) -> &mut Verdicts {
        &mut self.verdicts
    }
}

impl<S: Source> Engine<S> {
    fn empty(source: S, settings: Settings) -> Self {
        Engine {
            source,
            settings,
            fold: Fold::default(),
            index: Index::default(),
            sets: RoleSets::default(),
            verdicts: Verdicts::default(),
            unready: Unready::default(),
            heads: FastMap::default(),
            known: VersionVector::default(),
            ready: 0,
            checkpoints: Vec::new(),
            stale: Vec::new(),
            unsaved: 0,
            state: None,
        }
    }

    /// An engine over `source`, as its last save left it: the fold from the
    /// newest checkpoint, the tables and the events not yet ready from the
    /// record. With no record (or one this build cannot read), an empty
    /// engine, whose saved entries are forgotten: the caller then inserts
    /// every held event. Events held since the save are the caller's to
    /// insert too ([`Engine::known`] says what the save covered).
    pub fn open(mut source: S, settings: Settings) -> Result<Self, SourceError> {
        let record = match source.record()? {
            Some(bytes) => Record::from_bytes(&bytes).ok(),
            None => None,
        };
        let Some(record) = record else {
            source.forget()?;
            return Ok(Engine::empty(source, settings));
        };
        let mut role_events = Vec::with_capacity(record.role_events.len());
        for id in &record.role_events {
            role_events.push(source.event(id)?.ok_or_else(|| {
                SourceError::Corrupt(format!("role event {id} is in the record but not held"))
            })?);
        }
        let sets =
            RoleSets::restore(role_events, record.role_sets).map_err(SourceError::Corrupt)?;
        let fold = match record.checkpoints.last() {
            Some(mark) => {
                Fold::from_checkpoint(&source.checkpoint(&mark.at)?.ok_or_else(|| {
                    SourceError::Corrupt("the record names a checkpoint that is not saved".into())
                })?)?
            }
            None => Fold::default(),
        };
        let mut engine = Engine {
            settings,
            fold,
            index: Index::default(),
            sets,
            verdicts: Verdicts::from_list(record.verdicts),
            unready: Unready::default(),
            heads: record.heads.into_iter().map(|(h, id)| (id, h)).collect(),
            known: record.known,
            ready: record.ready,
            checkpoints: record.checkpoints,
            stale: Vec::new(),
            unsaved: 0,
            state: None,
            source,
        };
        for id in record.unready {
            let event = engine.source.event(&id)?.ok_or_else(|| {
                SourceError::Corrupt(format!("event {id} waits in the record but is not held"))
            })?;
            let mut missing = Vec::new();
            for p in event.parents() {
                if !engine.has_entry(p)? {
                    missing.push(*p);
                }
            }
            engine.unready.wait(event, missing);
        }
        Ok(engine)
    }

    fn has_entry(&mut self, id: &EventId) -> Result<bool, SourceError> {
        Ok(self.index.get(id, &self.source)?.is_some())
    }

    /// The source the engine reads.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// Adds events (duplicates are ignored) and folds those that become
    /// ready; saves when `checkpoint_every` events were folded since the
    /// last save.
    pub fn try_insert(
        &mut self,
        events: impl IntoIterator<Item = Event>,
    ) -> Result<InsertReport, SourceError> {
        // Taken in canonical order, nearly every event finds its parents
        // ready on arrival; in the order a store returns them by id nearly
        // every one would first wait on a parent. The outcome is the same.
        let mut events: Vec<Event> = events.into_iter().collect();
        events.sort_unstable_by_key(|e| (e.hlc(), e.id()));
        events.dedup_by_key(|e| e.id());
        let mut newly: Vec<Event> = Vec::new();
        let mut newly_ids: FastSet<EventId> = FastSet::default();
        for event in events {
            let id = event.id();
            // Held already: waiting, made ready earlier in this call (a
            // parent given before it released it), or folded before.
            if self.unready.events.contains_key(&id)
                || newly_ids.contains(&id)
                || self.has_entry(&id)?
            {
                continue;
            }
            self.source.hold(&event);
            self.known.observe(event.author(), event.seq(), &id);
            let mut missing = Vec::new();
            for p in event.parents() {
                if !newly_ids.contains(p) && !self.has_entry(p)? {
                    missing.push(*p);
                }
            }
            if missing.is_empty() {
                self.mark_ready(event, &mut newly, &mut newly_ids);
            } else {
                self.unready.wait(event, missing);
            }
        }
        if newly.is_empty() {
            return Ok(InsertReport::default());
        }
        newly.sort_unstable_by_key(|e| (e.hlc(), e.id()));
        let first = (newly[0].hlc(), newly[0].id());
        let rebuilt = self.fold.last().is_some_and(|last| first <= last);
        if rebuilt {
            self.refold(first, &newly_ids)?;
        } else {
            let Engine {
                fold,
                index,
                source,
                sets,
                verdicts,
                ..
            } = self;
            let mut facts = Known {
                index,
                source,
                sets,
                verdicts,
            };
            for e in &newly {
                let entry = fold.apply(e, &mut facts)?;
                facts.index.put(e.id(), entry);
            }
            self.unsaved += newly.len() as u64;
        }
        self.state = None;
        if self.unsaved >= self.settings.checkpoint_every {
            self.try_flush()?;
        }
        Ok(InsertReport {
            folded: newly.into_iter().map(|e| e.id()).collect(),
            rebuilt,
        })
    }

    /// Marks an event ready, and every waiting event that it completes.
    fn mark_ready(
        &mut self,
        event: Event,
        newly: &mut Vec<Event>,
        newly_ids: &mut FastSet<EventId>,
    ) {
        let mut stack = vec![event];
        while let Some(e) = stack.pop() {
            let id = e.id();
            // An event that becomes ready has no ready child yet.
            for p in e.parents() {
                self.heads.remove(p);
            }
            self.heads.insert(id, e.hlc());
            self.ready += 1;
            newly_ids.insert(id);
            stack.extend(self.unready.release(&id));
            newly.push(e);
        }
    }

    /// Folds again from the newest checkpoint before `first`, taking the
    /// new ready events (`newly`) in their places.
    fn refold(&mut self, first: Position, newly: &FastSet<EventId>) -> Result<(), SourceError> {
        let keep = self.checkpoints.partition_point(|m| m.at < first);
        self.stale
            .extend(self.checkpoints.drain(keep..).map(|m| m.at));
        let mut second_genesis = false;
        if self.fold.genesis.is_some() {
            for id in newly {
                if let Some(e) = self.source.event(id)?
                    && matches!(e.payload(), makiatto_events::Payload::Genesis(_))
                {
                    second_genesis = true;
                }
            }
        }
        if second_genesis {
            // Only the first genesis by canonical order counts: one that
            // sorts earlier undoes the verdicts of everything that followed
            // the other. A log refuses a second genesis; a bare engine may
            // be given one. Fold everything again from nothing.
            return self.fold_from_nothing();
        }
        let base = self.checkpoints.last().copied();
        self.fold = match base {
            Some(mark) => self.load_checkpoint(&mark.at)?,
            None => Fold::default(),
        };
        let from = base.map_or(Bound::Unbounded, |m| Bound::Excluded(m.at));
        let Engine {
            fold,
            index,
            source,
            sets,
            verdicts,
            unsaved,
            ..
        } = self;
        let source = &*source;
        let mut facts = Known {
            index,
            source,
            sets,
            verdicts,
        };
        for e in source.forward(from, Bound::Unbounded) {
            let e = e?;
            let id = e.id();
            if newly.contains(&id) {
                let entry = fold.apply(&e, &mut facts)?;
                facts.index.put(id, entry);
            } else if let Some(entry) = facts.index.get(&id, source)? {
                fold.reapply(&e, entry, &mut facts)?;
            } else {
                // Not ready, or held by the source but not given to the
                // engine yet.
                continue;
            }
            *unsaved += 1;
        }
        Ok(())
    }

    fn load_checkpoint(&self, at: &Position) -> Result<Fold, SourceError> {
        let bytes = self.source.checkpoint(at)?.ok_or_else(|| {
            SourceError::Corrupt(format!(
                "the checkpoint at {} is recorded but not saved",
                at.1
            ))
        })?;
        Fold::from_checkpoint(&bytes)
    }

    /// Forgets every entry and checkpoint and folds every held event
    /// again, as a new engine would.
    fn fold_from_nothing(&mut self) -> Result<(), SourceError> {
        let events: Vec<Event> = self
            .source
            .forward(Bound::Unbounded, Bound::Unbounded)
            .collect::<Result<_, _>>()?;
        self.source.forget()?;
        self.fold = Fold::default();
        self.index.clear();
        self.sets = RoleSets::default();
        self.verdicts = Verdicts::default();
        self.unready = Unready::default();
        self.heads.clear();
        self.known = VersionVector::default();
        self.ready = 0;
        self.checkpoints.clear();
        self.stale.clear();
        self.unsaved = 0;
        self.state = None;
        self.try_insert(events).map(|_| ())
    }

    /// Saves now: the entries not yet saved, a checkpoint of the fold (if
    /// anything was folded since the last) and the record, as one unit.
    pub fn try_flush(&mut self) -> Result<(), SourceError> {
        let mut checkpoint = None;
        if let Some(last) = self.fold.last()
            && self.checkpoints.last().is_none_or(|m| m.at != last)
        {
            checkpoint = Some((last, self.fold.to_checkpoint()));
            self.checkpoints.push(Mark {
                at: last,
                folded: self.fold.folded(),
            });
            self.thin_checkpoints();
        }
        let record = self.record().to_bytes();
        let save = Save {
            entries: self.index.take_pending(),
            checkpoint,
            drop_checkpoints: std::mem::take(&mut self.stale),
            record,
        };
        self.source.save(save)?;
        self.unsaved = 0;
        Ok(())
    }

    /// Drops checkpoints past [`Settings::checkpoints_kept`]: each time the
    /// one (never among the newest two) whose neighbours are closest.
    fn thin_checkpoints(&mut self) {
        while self.checkpoints.len() > self.settings.checkpoints_kept.max(2) {
            let n = self.checkpoints.len();
            let drop = (1..n - 2)
                .min_by_key(|&i| self.checkpoints[i + 1].folded - self.checkpoints[i - 1].folded)
                .unwrap_or(0);
            let mark = self.checkpoints.remove(drop);
            self.stale.push(mark.at);
        }
    }

    fn record(&self) -> Record {
        let mut unready: Vec<EventId> = self.unready.events.keys().copied().collect();
        unready.sort_unstable();
        let mut heads: Vec<Position> = self.heads.iter().map(|(id, h)| (*h, *id)).collect();
        heads.sort_unstable();
        Record {
            format: FORMAT,
            role_events: self.sets.event_ids(),
            role_sets: self.sets.saved_sets(),
            verdicts: self.verdicts.to_list().to_vec(),
            unready,
            heads,
            known: self.known.clone(),
            ready: self.ready,
            checkpoints: self.checkpoints.clone(),
        }
    }

    /// Events folded since the last save.
    pub fn unsaved(&self) -> u64 {
        self.unsaved
    }

    /// Whether the event is held with all of its causal past.
    pub fn try_is_ready(&self, id: &EventId) -> Result<bool, SourceError> {
        Ok(self.index.peek(id, &self.source)?.is_some())
    }

    /// Whether the event is held at all.
    pub fn try_contains(&self, id: &EventId) -> Result<bool, SourceError> {
        Ok(self.unready.events.contains_key(id) || self.try_is_ready(id)?)
    }

    /// A held event.
    pub fn try_event(&self, id: &EventId) -> Result<Option<Event>, SourceError> {
        match self.unready.events.get(id) {
            Some(e) => Ok(Some(e.clone())),
            None => self.source.event(id),
        }
    }

    /// The verdict on a folded event (`None` while it is not ready).
    pub fn try_verdict(&self, id: &EventId) -> Result<Option<&Verdict>, SourceError> {
        Ok(self
            .index
            .peek(id, &self.source)?
            .and_then(|e| self.verdicts.get(e.verdict)))
    }

    /// How many events are held, ready or not.
    pub fn len(&self) -> usize {
        self.ready as usize + self.unready.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many held events are not ready.
    pub fn unready(&self) -> usize {
        self.unready.events.len()
    }

    /// Every event the engine was given, ready or not, per author.
    pub fn known(&self) -> &VersionVector {
        &self.known
    }

    /// The ready events no ready event names as a parent: what a new event
    /// should name as its parents. Newest first.
    pub fn heads(&self) -> Vec<Position> {
        let mut heads: Vec<Position> = self.heads.iter().map(|(id, h)| (*h, *id)).collect();
        heads.sort_unstable_by(|a, b| b.cmp(a));
        heads
    }

    /// The current roles, for naming authors.
    pub fn roles(&self) -> &Roles {
        self.fold.roles()
    }

    /// The applied `config-changed` events, in canonical order.
    pub fn config_events(&self) -> &[EventId] {
        self.fold.config_events()
    }

    /// The applied `secret-resealed` entries, in canonical order.
    pub fn resealed(&self) -> &[(makiatto_events::SecretId, makiatto_events::Recipient)] {
        self.fold.resealed()
    }

    /// All projections as of every ready event.
    pub fn state(&mut self) -> &State {
        let fold = &self.fold;
        self.state.get_or_insert_with(|| fold.snapshot())
    }

    /// Calls `f` with every ready event and its verdict, in canonical order.
    pub fn try_for_each_ready(
        &self,
        mut f: impl FnMut(&Event, &Verdict) -> Result<(), SourceError>,
    ) -> Result<(), SourceError> {
        for e in self.source.forward(Bound::Unbounded, Bound::Unbounded) {
            let e = e?;
            if let Some(entry) = self.index.peek(&e.id(), &self.source)? {
                let verdict = self
                    .verdicts
                    .get(entry.verdict)
                    .unwrap_or(&Verdict::Applied);
                f(&e, verdict)?;
            }
        }
        Ok(())
    }

    /// Every projection folded from scratch over every ready event, with
    /// its own entries and tables, compared as it goes with the saved
    /// entries (each one) and checkpoints (each one it passes): what
    /// `makiatto verify` checks the engine against.
    pub fn try_rebuild(&self) -> Result<Rebuilt, SourceError> {
        let mut fresh = Fresh {
            recent: FastMap::default(),
            older: FastMap::default(),
            engine: self,
            sets: RoleSets::default(),
            verdicts: Verdicts::default(),
        };
        let marks: BTreeSet<Position> = self.checkpoints.iter().map(|m| m.at).collect();
        let mut fold = Fold::default();
        let mut problems = Vec::new();
        let mut more = 0usize;
        let mut problem = |text: String| {
            if problems.len() < PROBLEMS_LISTED {
                problems.push(text);
            } else {
                more += 1;
            }
        };
        for e in self.source.forward(Bound::Unbounded, Bound::Unbounded) {
            let e = e?;
            let id = e.id();
            let Some(saved) = self.index.peek(&id, &self.source)? else {
                continue;
            };
            let entry = fold.apply(&e, &mut fresh)?;
            let made = Fresh::<S>::meaning(&fresh.sets, &fresh.verdicts, entry);
            let kept = Fresh::<S>::meaning(&self.sets, &self.verdicts, saved);
            if made != kept {
                problem(format!(
                    "event {id}: the fold decided {:?} on {} role events, the saved entry says {:?} on {}",
                    made.2,
                    made.1.len(),
                    kept.2,
                    kept.1.len()
                ));
            }
            fresh.put(id, entry);
            if marks.contains(&(e.hlc(), id)) {
                let saved = self.load_checkpoint(&(e.hlc(), id))?.snapshot();
                let now = fold.snapshot();
                for name in ProjectionName::ALL {
                    if saved.canonical_bytes(name) != now.canonical_bytes(name) {
                        problem(format!(
                            "checkpoint at event {id}: projection {name} differs from a rebuild"
                        ));
                    }
                }
            }
        }
        if more > 0 {
            problems.push(format!("… and {more} more problems"));
        }
        Ok(Rebuilt {
            events: fold.folded(),
            state: fold.snapshot(),
            problems,
        })
    }

    /// All projections as of a point in history.
    pub fn as_of(&self, at: AsOf) -> Result<State, AsOfError> {
        match at {
            AsOf::Time(t) => Ok(self.as_of_time(t)?),
            AsOf::Event(id) => self.as_of_event(id),
        }
    }

    /// Every ready event stamped at or before `t`: from the newest
    /// checkpoint at or before it, the ready events after it up to `t`.
    fn as_of_time(&self, t: Hlc) -> Result<State, SourceError> {
        let until = (t, EventId([0xff; 32]));
        let base = self
            .checkpoints
            .iter()
            .rev()
            .find(|m| m.at <= until)
            .copied();
        let mut fold = match base {
            Some(mark) => self.load_checkpoint(&mark.at)?,
            None => Fold::default(),
        };
        let from = base.map_or(Bound::Unbounded, |m| Bound::Excluded(m.at));
        let mut reader = self.reader();
        for e in self.source.forward(from, Bound::Included(until)) {
            let e = e?;
            if let Some(entry) = self.index.peek(&e.id(), &self.source)? {
                fold.reapply(&e, entry, &mut reader)?;
            }
        }
        Ok(fold.snapshot())
    }

    /// The causal past of `id`. Found by walking back from it in canonical
    /// order, keeping the ancestors not yet met (a bitmap marks members by
    /// their rank among the ready events walked, so a million-event past
    /// costs 125 KB); then folded forward, from the newest checkpoint below
    /// every ready event outside the past. Only ready events count in the
    /// ranks: the source may gain events meanwhile (a store appended to by
    /// another thread), but the engine's ready set does not change.
    fn as_of_event(&self, id: EventId) -> Result<State, AsOfError> {
        let Some(entry) = self.index.peek(&id, &self.source)? else {
            return Err(if self.unready.events.contains_key(&id) {
                AsOfError::NotReady(id)
            } else {
                AsOfError::UnknownEvent(id)
            });
        };
        let at = (entry.hlc, id);
        let marks: BTreeSet<Position> = self.checkpoints.iter().map(|m| m.at).collect();
        let mut wanted: FastSet<EventId> = FastSet::from_iter([id]);
        let mut members: Vec<u64> = Vec::new();
        let mut lowest_outside: Option<Position> = None;
        let mut last_walked: Option<Position> = None;
        let mut mark_ranks: FastMap<Position, u64> = FastMap::default();
        let mut rank: u64 = 0;
        let mut exhausted = true;
        for e in self.source.backward(at) {
            if wanted.is_empty() {
                exhausted = false;
                break;
            }
            let e = e?;
            let position = (e.hlc(), e.id());
            if wanted.remove(&e.id()) {
                let word = (rank / 64) as usize;
                if members.len() <= word {
                    members.resize(word + 1, 0);
                }
                members[word] |= 1 << (rank % 64);
                wanted.extend(e.parents().iter().copied());
            } else if self.index.peek(&e.id(), &self.source)?.is_some() {
                lowest_outside = Some(position);
            } else {
                continue;
            }
            if marks.contains(&position) {
                mark_ranks.insert(position, rank);
            }
            last_walked = Some(position);
            rank += 1;
        }
        let is_member = |r: u64| {
            members
                .get((r / 64) as usize)
                .is_some_and(|w| w & (1 << (r % 64)) != 0)
        };
        // A checkpoint can start the fold only if every ready event up to
        // it is in the past: the walk reached the first event, and no
        // ready event outside the past sorts before the checkpoint.
        let base = if exhausted {
            self.checkpoints
                .iter()
                .rev()
                .find(|m| {
                    lowest_outside.is_none_or(|low| m.at < low) && mark_ranks.contains_key(&m.at)
                })
                .copied()
        } else {
            None
        };
        let (mut fold, from, mut next_rank) = match base {
            Some(mark) => (
                self.load_checkpoint(&mark.at)?,
                Bound::Excluded(mark.at),
                mark_ranks.get(&mark.at).copied().unwrap_or(0),
            ),
            None => (
                Fold::default(),
                last_walked.map_or(Bound::Unbounded, Bound::Included),
                rank,
            ),
        };
        let mut reader = self.reader();
        for e in self.source.forward(from, Bound::Included(at)) {
            let e = e?;
            let Some(entry) = self.index.peek(&e.id(), &self.source)? else {
                continue;
            };
            // Ranks count down to 0 (`id` itself) going forward.
            if next_rank == 0 {
                break;
            }
            next_rank -= 1;
            if is_member(next_rank) {
                fold.reapply(&e, entry, &mut reader)?;
            }
        }
        Ok(fold.snapshot())
    }

    /// Calls `f` with every event of the causal past of `id`, itself
    /// included, newest first (for `log --at`).
    pub fn try_walk_past(
        &self,
        id: EventId,
        mut f: impl FnMut(&Event, &Verdict),
    ) -> Result<(), AsOfError> {
        let Some(entry) = self.index.peek(&id, &self.source)? else {
            return Err(if self.unready.events.contains_key(&id) {
                AsOfError::NotReady(id)
            } else {
                AsOfError::UnknownEvent(id)
            });
        };
        let mut wanted: FastSet<EventId> = FastSet::from_iter([id]);
        for e in self.source.backward((entry.hlc, id)) {
            if wanted.is_empty() {
                break;
            }
            let e = e?;
            if wanted.remove(&e.id()) {
                wanted.extend(e.parents().iter().copied());
                if let Some(entry) = self.index.peek(&e.id(), &self.source)? {
                    f(
                        &e,
                        self.verdicts
                            .get(entry.verdict)
                            .unwrap_or(&Verdict::Applied),
                    );
                }
            }
        }
        Ok(())
    }

    /// Facts for re-folding saved entries without changing the engine.
    fn reader(&self) -> Reader<'_, S> {
        Reader { engine: self }
    }
}

/// Where re-folds of saved entries ("as of" answers) read other events.
struct Reader<'a, S: Source> {
    engine: &'a Engine<S>,
}

impl<S: Source> Lookup for Reader<'_, S> {
    fn event(&mut self, id: &EventId) -> Result<Option<Event>, SourceError> {
        self.engine.source.event(id)
    }
}
