//! The role events of a history and the sets of them that events have in
//! their causal past, each set numbered once ([`RoleSetId`]).
//!
//! An event is authorized by the roles folded from the applied role events
//! among its ancestors. Those sets are few (they change only when roles
//! do) and shared by long runs of events, so each is stored once, every
//! entry names its set by number, and the roles of a set are folded once
//! and cached. Role events are numbered in the order they were first
//! applied; the roles of a set fold its events in canonical order.

use std::sync::Arc;

use makiatto_events::{Event, EventId};

use crate::fast::FastMap;
use crate::index::RoleSetId;
use crate::roles::Roles;

/// Role events, the interned sets of them, and the roles of each set.
#[derive(Debug, Clone)]
pub struct RoleSets {
    events: Vec<Event>,
    numbers: FastMap<EventId, u32>,
    sets: Vec<Arc<[u32]>>,
    ids: FastMap<Arc<[u32]>, RoleSetId>,
    roles: FastMap<RoleSetId, Arc<Roles>>,
}

impl Default for RoleSets {
    fn default() -> Self {
        let empty: Arc<[u32]> = Arc::from(Vec::new());
        let mut ids = FastMap::default();
        ids.insert(empty.clone(), RoleSetId(0));
        RoleSets {
            events: Vec::new(),
            numbers: FastMap::default(),
            sets: vec![empty],
            ids,
            roles: FastMap::default(),
        }
    }
}

impl RoleSets {
    /// The empty set (an event with no role event in its past).
    pub const EMPTY: RoleSetId = RoleSetId(0);

    /// The tables from their saved form: the role events in number order
    /// and every set after the empty one.
    pub fn restore(events: Vec<Event>, sets: Vec<Vec<u32>>) -> Result<RoleSets, String> {
        let mut out = RoleSets::default();
        for e in events {
            out.numbers.insert(e.id(), out.events.len() as u32);
            out.events.push(e);
        }
        for set in sets {
            if set.iter().any(|n| *n as usize >= out.events.len()) {
                return Err("a saved role set names a role event that is not saved".into());
            }
            out.intern(set);
        }
        Ok(out)
    }

    /// The role events' ids, in number order (what is saved of them).
    pub fn event_ids(&self) -> Vec<EventId> {
        self.events.iter().map(Event::id).collect()
    }

    /// Every set after the empty one, in number order.
    pub fn saved_sets(&self) -> Vec<Vec<u32>> {
        self.sets[1..].iter().map(|s| s.to_vec()).collect()
    }

    fn intern(&mut self, members: Vec<u32>) -> RoleSetId {
        let members: Arc<[u32]> = Arc::from(members);
        if let Some(id) = self.ids.get(&members) {
            return *id;
        }
        let id = RoleSetId(self.sets.len() as u32);
        self.sets.push(members.clone());
        self.ids.insert(members, id);
        id
    }

    /// The union of two sets.
    pub fn union(&mut self, a: RoleSetId, b: RoleSetId) -> RoleSetId {
        if a == b {
            return a;
        }
        let (Some(x), Some(y)) = (self.sets.get(a.0 as usize), self.sets.get(b.0 as usize)) else {
            return a;
        };
        let mut members: Vec<u32> = x.iter().chain(y.iter()).copied().collect();
        members.sort_unstable();
        members.dedup();
        self.intern(members)
    }

    /// A set with one more applied role event in it (numbered if new).
    pub fn with(&mut self, set: RoleSetId, event: &Event) -> RoleSetId {
        let number = match self.numbers.get(&event.id()) {
            Some(n) => *n,
            None => {
                let n = self.events.len() as u32;
                self.numbers.insert(event.id(), n);
                self.events.push(event.clone());
                n
            }
        };
        let mut members = self
            .sets
            .get(set.0 as usize)
            .map(|s| s.to_vec())
            .unwrap_or_default();
        if let Err(at) = members.binary_search(&number) {
            members.insert(at, number);
        }
        self.intern(members)
    }

    /// The ids of a set's role events, in canonical order: what a set
    /// means, whatever its number (for comparing two folds' entries).
    pub fn members(&self, set: RoleSetId) -> Vec<EventId> {
        self.sorted(set).iter().map(|e| e.id()).collect()
    }

    fn sorted(&self, set: RoleSetId) -> Vec<&Event> {
        let mut events: Vec<&Event> = self
            .sets
            .get(set.0 as usize)
            .map(|s| {
                s.iter()
                    .filter_map(|n| self.events.get(*n as usize))
                    .collect()
            })
            .unwrap_or_default();
        events.sort_by_key(|e| (e.hlc(), e.id()));
        events
    }

    /// The roles as of a set: its role events folded in canonical order.
    pub fn roles(&mut self, set: RoleSetId) -> Arc<Roles> {
        if let Some(r) = self.roles.get(&set) {
            return r.clone();
        }
        let mut roles = Roles::default();
        for e in self.sorted(set) {
            roles.apply(e);
        }
        let roles = Arc::new(roles);
        self.roles.insert(set, roles.clone());
        roles
    }
}
