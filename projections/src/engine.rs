//! [`Engine`]: the events a node holds, which of them are causally ready,
//! and the fold over the ready ones, kept current incrementally.
//!
//! An event is *ready* once all its ancestors are held; only ready events are
//! folded, so a verdict is never made on a partial past. New ready events
//! that all sort after the last folded one are folded on top; otherwise
//! (events from a healed partition sorting earlier) the fold is rebuilt from
//! the start. Both paths give the same bytes, which the replay tests check.

use std::collections::BTreeSet;

use crate::fast::{FastMap, FastSet};
use makiatto_events::{Event, EventId, Hlc};

use crate::fold::{Fold, Verdict};
use crate::roles::Roles;
use crate::state::State;

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
}

/// What an insert did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InsertReport {
    /// Events that became ready (and were folded), in canonical order.
    pub folded: Vec<EventId>,
    /// Whether the fold was rebuilt from the start.
    pub rebuilt: bool,
}

/// Events, readiness and the fold.
#[derive(Debug, Default)]
pub struct Engine {
    events: FastMap<EventId, Event>,
    /// Parent id → events waiting for it to become ready.
    waiting_on: FastMap<EventId, Vec<EventId>>,
    /// Not-ready event → how many of its parents are not ready.
    unready: FastMap<EventId, usize>,
    order: BTreeSet<(Hlc, EventId)>,
    fold: Fold,
    state: Option<State>,
}

impl Engine {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds events (duplicates are ignored) and folds those that become ready.
    pub fn insert(&mut self, events: impl IntoIterator<Item = Event>) -> InsertReport {
        // Taken in canonical order, nearly every event finds its parents
        // ready on arrival; in the order a store returns them (by id) nearly
        // every one would first wait on a parent. The outcome is the same.
        let mut events: Vec<Event> = events.into_iter().collect();
        events.sort_unstable_by_key(|e| (e.hlc(), e.id()));
        self.events.reserve(events.len());
        let mut newly_ready = Vec::new();
        for event in events {
            let id = event.id();
            if self.events.contains_key(&id) {
                continue;
            }
            let missing: Vec<EventId> = event
                .parents()
                .iter()
                .filter(|p| !self.is_ready(p))
                .copied()
                .collect();
            self.events.insert(id, event);
            if missing.is_empty() {
                self.mark_ready(id, &mut newly_ready);
            } else {
                self.unready.insert(id, missing.len());
                for p in missing {
                    self.waiting_on.entry(p).or_default().push(id);
                }
            }
        }
        if newly_ready.is_empty() {
            return InsertReport::default();
        }
        newly_ready.sort_unstable();
        let rebuilt = self.fold.last().is_some_and(|last| newly_ready[0] <= last);
        if rebuilt {
            self.fold = fold_all(self.order.iter().map(|(_, id)| &self.events[id]));
        } else {
            for (_, id) in &newly_ready {
                self.fold.apply(&self.events[id]);
            }
        }
        self.state = None;
        InsertReport {
            folded: newly_ready.into_iter().map(|(_, id)| id).collect(),
            rebuilt,
        }
    }

    fn mark_ready(&mut self, id: EventId, newly_ready: &mut Vec<(Hlc, EventId)>) {
        let mut stack = vec![id];
        while let Some(id) = stack.pop() {
            let hlc = self.events[&id].hlc();
            self.order.insert((hlc, id));
            newly_ready.push((hlc, id));
            for child in self.waiting_on.remove(&id).unwrap_or_default() {
                if let Some(n) = self.unready.get_mut(&child) {
                    *n -= 1;
                    if *n == 0 {
                        self.unready.remove(&child);
                        stack.push(child);
                    }
                }
            }
        }
    }

    /// Whether the event is held with all of its causal past.
    pub fn is_ready(&self, id: &EventId) -> bool {
        self.events.contains_key(id) && !self.unready.contains_key(id)
    }

    /// Whether the event is held at all.
    pub fn contains(&self, id: &EventId) -> bool {
        self.events.contains_key(id)
    }

    /// A held event.
    pub fn event(&self, id: &EventId) -> Option<&Event> {
        self.events.get(id)
    }

    /// How many events are held, ready or not.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The ready events in canonical order.
    pub fn ordered(&self) -> impl DoubleEndedIterator<Item = &Event> + '_ {
        self.order.iter().map(|(_, id)| &self.events[id])
    }

    /// The ready events no ready event names as a parent: what a new event
    /// should name as its parents. Newest first.
    pub fn heads(&self) -> Vec<&Event> {
        let mut named: FastSet<EventId> = FastSet::default();
        for e in self.ordered() {
            named.extend(e.parents().iter().copied());
        }
        self.ordered()
            .rev()
            .filter(|e| !named.contains(&e.id()))
            .collect()
    }

    /// The verdict on a folded event (`None` while it is not ready).
    pub fn verdict(&self, id: &EventId) -> Option<&Verdict> {
        self.fold.verdict(id)
    }

    /// The current roles, for naming authors.
    pub fn roles(&self) -> &Roles {
        self.fold.roles()
    }

    /// All projections as of every ready event.
    pub fn state(&mut self) -> &State {
        let fold = &self.fold;
        self.state.get_or_insert_with(|| fold.snapshot())
    }

    /// All projections rebuilt from scratch over every ready event: what
    /// `makiatto verify` compares with the incremental state.
    pub fn rebuild(&self) -> State {
        fold_all(self.ordered()).snapshot()
    }

    /// All projections as of a point in history.
    pub fn as_of(&self, at: AsOf) -> Result<State, AsOfError> {
        let fold = match at {
            AsOf::Time(t) => fold_all(
                self.order
                    .range(..=(t, EventId([0xff; 32])))
                    .map(|(_, id)| &self.events[id]),
            ),
            AsOf::Event(id) => {
                let past = self.causal_past(&id)?;
                fold_all(
                    self.order
                        .iter()
                        .filter(|(_, e)| past.contains(e))
                        .map(|(_, e)| &self.events[e]),
                )
            }
        };
        Ok(fold.snapshot())
    }

    /// The event and all its ancestors.
    pub fn causal_past(&self, id: &EventId) -> Result<FastSet<EventId>, AsOfError> {
        if !self.events.contains_key(id) {
            return Err(AsOfError::UnknownEvent(*id));
        }
        if !self.is_ready(id) {
            return Err(AsOfError::NotReady(*id));
        }
        let mut seen = FastSet::from_iter([*id]);
        let mut stack = vec![*id];
        while let Some(next) = stack.pop() {
            for p in self.events[&next].parents() {
                if seen.insert(*p) {
                    stack.push(*p);
                }
            }
        }
        Ok(seen)
    }
}

fn fold_all<'a>(events: impl Iterator<Item = &'a Event>) -> Fold {
    let mut fold = Fold::default();
    for e in events {
        fold.apply(e);
    }
    fold
}
