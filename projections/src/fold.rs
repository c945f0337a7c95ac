//! The fold: events in canonical order in, projections and one verdict per
//! event out.
//!
//! For each event, in order:
//! 1. **Validity.** Its clock must be later than each parent's (so the
//!    canonical order is causal); only the first genesis counts, and only if
//!    its author is the operator it names.
//! 2. **Authorization** against the roles *as of its causal past*. Each
//!    event carries the set of applied role events among its ancestors (a
//!    small sorted list, shared between events); the roles for a set are
//!    folded from those role events alone and cached. So a verdict never
//!    depends on concurrent events that sort before it.
//! 3. **Application** to roles, config, peers and sites; zone serials move
//!    when a zone's content changes.

use std::sync::Arc;

use crate::fast::FastMap;
use makiatto_events::{AuthorKey, Event, EventId, Hlc, Payload};
use serde::Serialize;

use crate::certificates::Certificates;
use crate::config::ConfigDoc;
use crate::peers::Peers;
use crate::roles::Roles;
use crate::sites::Sites;
use crate::state::State;
use crate::zones;

/// What the fold made of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", content = "reason", rename_all = "kebab-case")]
pub enum Verdict {
    /// It took effect.
    Applied,
    /// Its author lacked the role, as of its causal past; it changes nothing.
    Unauthorized(String),
    /// It breaks a rule of the log (clock, second genesis, bad contents).
    Invalid(String),
}

impl Verdict {
    pub fn is_applied(&self) -> bool {
        matches!(self, Verdict::Applied)
    }
}

/// Indices of applied role events in an event's causal past, ascending.
type RoleSet = Arc<[u32]>;

/// The fold's accumulator.
#[derive(Debug, Clone, Default)]
pub struct Fold {
    genesis: Option<EventId>,
    role_events: Vec<Event>,
    past: FastMap<EventId, (Hlc, RoleSet)>,
    roles_cache: FastMap<RoleSet, Arc<Roles>>,
    verdicts: FastMap<EventId, Verdict>,
    feed_places: FastMap<(AuthorKey, u64), EventId>,
    roles: Roles,
    config: ConfigDoc,
    peers: Peers,
    sites: Sites,
    certificates: Certificates,
    zone_serial: u32,
    last: Option<(Hlc, EventId)>,
    folded: u64,
}

impl Fold {
    /// The last event folded, in canonical order.
    pub fn last(&self) -> Option<(Hlc, EventId)> {
        self.last
    }

    /// How many events were folded.
    pub fn folded(&self) -> u64 {
        self.folded
    }

    /// The verdict on a folded event.
    pub fn verdict(&self, id: &EventId) -> Option<&Verdict> {
        self.verdicts.get(id)
    }

    /// The current roles (every applied role event, in canonical order).
    pub fn roles(&self) -> &Roles {
        &self.roles
    }

    /// Folds one event. Events must come in canonical order.
    pub fn apply(&mut self, event: &Event) {
        let id = event.id();
        self.last = Some((event.hlc(), id));
        self.folded += 1;

        // The role events in this event's causal past, and its clock check.
        let mut set: Option<RoleSet> = None;
        let mut clock_ok = true;
        for parent in event.parents() {
            match self.past.get(parent) {
                Some((hlc, parent_set)) => {
                    clock_ok &= *hlc < event.hlc();
                    set = Some(match set {
                        None => parent_set.clone(),
                        Some(s) if Arc::ptr_eq(&s, parent_set) || *s == **parent_set => s,
                        Some(s) => union(&s, parent_set),
                    });
                }
                // Present (the engine only folds ready events) but not yet
                // folded: it sorts after us, so our clock is not after it.
                None => clock_ok = false,
            }
        }
        let set = set.unwrap_or_else(|| Arc::from(Vec::new()));

        let verdict = self.judge(event, &set, clock_ok);
        let mut own_set = set;
        if verdict.is_applied() {
            // Only applied events mark a fork: an unauthorized one changes
            // nothing, the roles projection included (the log still counts it).
            if let Some(first) = self.feed_places.get(&(event.author(), event.seq())) {
                if *first != id {
                    self.roles
                        .forks
                        .entry(event.author())
                        .or_default()
                        .insert(event.seq());
                }
            } else {
                self.feed_places.insert((event.author(), event.seq()), id);
            }
            if Roles::is_role_event(event.payload()) {
                let index = self.role_events.len() as u32;
                self.role_events.push(event.clone());
                let mut with_me = own_set.to_vec();
                with_me.push(index);
                own_set = Arc::from(with_me);
                self.roles.apply(event);
            }
            self.apply_effects(event);
        }
        self.past.insert(id, (event.hlc(), own_set));
        self.verdicts.insert(id, verdict);
    }

    fn judge(&mut self, event: &Event, past: &RoleSet, clock_ok: bool) -> Verdict {
        if !clock_ok {
            return Verdict::Invalid("its timestamp is not later than its parents'".into());
        }
        if let Payload::Genesis(g) = event.payload() {
            if self.genesis.is_some() {
                return Verdict::Invalid("a cluster has exactly one genesis".into());
            }
            if g.operator != event.author() {
                return Verdict::Invalid(
                    "the genesis must be signed by the operator it names".into(),
                );
            }
            self.genesis = Some(event.id());
            return Verdict::Applied;
        }
        let roles = self.roles_for(past);
        if let Err(reason) = roles.authorize(event) {
            return Verdict::Unauthorized(reason);
        }
        match event.payload() {
            Payload::ConfigChanged(c) => match ConfigDoc::decode(&c.changes) {
                Ok(_) => Verdict::Applied,
                Err(e) => Verdict::Invalid(e.to_string()),
            },
            Payload::SiteRolledBack(_) => match self.sites.check(event) {
                Ok(()) => Verdict::Applied,
                Err(e) => Verdict::Invalid(e),
            },
            _ => Verdict::Applied,
        }
    }

    fn roles_for(&mut self, set: &RoleSet) -> Arc<Roles> {
        if let Some(roles) = self.roles_cache.get(set) {
            return roles.clone();
        }
        let mut roles = Roles::default();
        for i in set.iter() {
            roles.apply(&self.role_events[*i as usize]);
        }
        let roles = Arc::new(roles);
        self.roles_cache.insert(set.clone(), roles.clone());
        roles
    }

    fn apply_effects(&mut self, event: &Event) {
        let zones_may_change = match event.payload() {
            Payload::ConfigChanged(c) => {
                if let Ok(changes) = ConfigDoc::decode(&c.changes) {
                    // A change that fails to apply leaves the document as it
                    // was; the verdict was decided on decodability alone.
                    // `maki` rebuilds the document the same way.
                    self.config.apply_as_folded(changes);
                }
                true
            }
            Payload::Genesis(_)
            | Payload::NodeJoined(_)
            | Payload::NodeRemoved(_)
            | Payload::ExternalPeerAdded(_)
            | Payload::ExternalPeerRemoved(_) => {
                self.peers.apply(event);
                true
            }
            Payload::SitePublished(_) | Payload::SiteRolledBack(_) => {
                self.sites.apply(event);
                false
            }
            Payload::AcmeChallenge(_)
            | Payload::CertificateIssued(_)
            | Payload::CertificateRenewalRequested(_) => self.certificates.apply(event),
            _ => false,
        };
        if zones_may_change {
            self.bump_serials(event.hlc());
        }
    }

    /// Moves the zones' serial: to the event's time in seconds, or one past
    /// the old serial if that is not later. Every event that can change a
    /// zone moves it (moving it without a change is harmless; missing a
    /// change is not), so the document need not be read per event.
    fn bump_serials(&mut self, at: Hlc) {
        let seconds = u32::try_from(at.millis / 1000).unwrap_or(u32::MAX);
        self.zone_serial = seconds.max(self.zone_serial.wrapping_add(1));
    }

    /// All projections as they stand.
    pub fn snapshot(&self) -> State {
        // A document whose shape does not read (only a foreign or future
        // writer could make one) reads as empty, the same on every node.
        let config = self.config.view().unwrap_or_default();
        State {
            roles: self.roles.clone(),
            peers: self.peers.clone(),
            zones: zones::build(&config, &self.peers, &self.certificates, self.zone_serial),
            certificates: self.certificates.clone(),
            sites: self.sites.with_config(&config),
            config,
        }
    }
}

fn union(a: &[u32], b: &[u32]) -> RoleSet {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x == y => {
                out.push(*x);
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x < y => {
                out.push(*x);
                i += 1;
            }
            (Some(_), Some(y)) => {
                out.push(*y);
                j += 1;
            }
            (Some(x), None) => {
                out.push(*x);
                i += 1;
            }
            (None, Some(y)) => {
                out.push(*y);
                j += 1;
            }
            (None, None) => break,
        }
    }
    Arc::from(out)
}
