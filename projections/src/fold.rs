//! The fold: events in canonical order in, projections and one [`Entry`]
//! per event out.
//!
//! For each event, in order:
//! 1. **Validity.** Its clock must be later than each parent's (so the
//!    canonical order is causal); only the first genesis counts, and only if
//!    its author is the operator it names.
//! 2. **Authorization** against the roles *as of its causal past*. Each
//!    event's entry names the set of applied role events among its
//!    ancestors (a [`RoleSetId`]); the roles of a set are folded from those
//!    role events alone and cached. So a verdict never depends on
//!    concurrent events that sort before it.
//! 3. **Application** to roles, config, peers, sites and certificates;
//!    zone serials move when a zone's content can change.
//!
//! Everything in an entry depends on the event's causal past alone, so an
//! event already folded can be folded again from its entry
//! ([`Fold::reapply`]) without judging it anew. The fold's state without
//! the entries is small (the projections, and which feed places hold an
//! applied event), and is what a checkpoint saves.

use std::collections::BTreeMap;

use makiatto_events::{AuthorKey, DomainName, Event, EventId, Payload, Recipient, SecretId};
use serde::{Deserialize, Serialize};

use crate::certificates::Certificates;
use crate::config::ConfigDoc;
use crate::index::{Entry, RoleSetId, Verdicts};
use crate::peers::Peers;
use crate::role_sets::RoleSets;
use crate::roles::Roles;
use crate::sites::{SiteHistory, SiteVersion};
use crate::source::{Position, SourceError};
use crate::state::State;
use crate::zones;

/// What the fold made of an event.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

/// Where folding again reads another event (a rollback's target, when it
/// is older than the versions the sites projection keeps).
pub trait Lookup {
    /// A held event.
    fn event(&mut self, id: &EventId) -> Result<Option<Event>, SourceError>;
}

/// What the fold needs to know about other events while it judges one:
/// their entries (parents, a rollback's target) and the tables entries
/// point into.
pub trait Facts: Lookup {
    /// The entry of an event folded before (`None`: not folded).
    fn entry(&mut self, id: &EventId) -> Result<Option<Entry>, SourceError>;
    fn sets(&mut self) -> &mut RoleSets;
    fn verdicts(&mut self) -> &mut Verdicts;
}

/// The sequence numbers of one author that hold an applied event, as
/// sorted, disjoint, inclusive runs (a fork-free feed is one run).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runs(Vec<(u64, u64)>);

impl Runs {
    /// Adds `seq`; false when it was there already.
    pub fn insert(&mut self, seq: u64) -> bool {
        let at = self.0.partition_point(|(_, end)| *end < seq);
        if self.0.get(at).is_some_and(|(start, _)| *start <= seq) {
            return false;
        }
        let joins_before = at > 0 && self.0[at - 1].1 + 1 == seq;
        let joins_after = self.0.get(at).is_some_and(|(start, _)| *start == seq + 1);
        match (joins_before, joins_after) {
            (true, true) => {
                self.0[at - 1].1 = self.0[at].1;
                self.0.remove(at);
            }
            (true, false) => self.0[at - 1].1 = seq,
            (false, true) => self.0[at].0 = seq,
            (false, false) => self.0.insert(at, (seq, seq)),
        }
        true
    }
}

/// The fold's accumulator: every projection as it stands, and what the
/// rules need beyond them.
#[derive(Debug, Clone, Default)]
pub struct Fold {
    pub(crate) genesis: Option<EventId>,
    pub(crate) roles: Roles,
    pub(crate) config: ConfigDoc,
    pub(crate) peers: Peers,
    pub(crate) sites: SiteHistory,
    pub(crate) certificates: Certificates,
    pub(crate) zone_serial: u32,
    pub(crate) last: Option<Position>,
    pub(crate) folded: u64,
    /// Per author, the feed places that hold an applied event: a second
    /// applied event at one place is a fork.
    pub(crate) places: BTreeMap<AuthorKey, Runs>,
    /// The applied `config-changed` events, in canonical order.
    pub(crate) config_events: Vec<EventId>,
    /// The applied `secret-resealed` entries, in canonical order: the
    /// extra recipients of each sealed value.
    pub(crate) resealed: Vec<(SecretId, Recipient)>,
}

impl Fold {
    /// The last event folded, in canonical order.
    pub fn last(&self) -> Option<Position> {
        self.last
    }

    /// How many events were folded.
    pub fn folded(&self) -> u64 {
        self.folded
    }

    /// The current roles (every applied role event, in canonical order).
    pub fn roles(&self) -> &Roles {
        &self.roles
    }

    /// The applied `config-changed` events, in canonical order.
    pub fn config_events(&self) -> &[EventId] {
        &self.config_events
    }

    /// The applied `secret-resealed` entries, in canonical order.
    pub fn resealed(&self) -> &[(SecretId, Recipient)] {
        &self.resealed
    }

    /// Folds an event not folded before and returns its entry. Events must
    /// come in canonical order, each after its ready parents.
    pub fn apply(&mut self, event: &Event, facts: &mut impl Facts) -> Result<Entry, SourceError> {
        let position = (event.hlc(), event.id());
        // The role events in this event's causal past, and its clock
        // check. A parent folded before it sorts before it; one that sorts
        // after it (its clock is not after the parent's) is left out of
        // its set, as if not yet folded.
        let mut set: Option<RoleSetId> = None;
        let mut clock_ok = true;
        for parent in event.parents() {
            match facts.entry(parent)? {
                Some(p) if (p.hlc, *parent) < position => {
                    clock_ok &= p.hlc < event.hlc();
                    set = Some(match set {
                        None => p.roles,
                        Some(s) => facts.sets().union(s, p.roles),
                    });
                }
                _ => clock_ok = false,
            }
        }
        let set = set.unwrap_or(RoleSets::EMPTY);
        let (verdict, target) = self.judge(event, set, clock_ok, facts)?;
        let mut own = set;
        let applied = verdict.is_applied();
        if applied && Roles::is_role_event(event.payload()) {
            own = facts.sets().with(set, event);
        }
        let entry = Entry {
            hlc: event.hlc(),
            roles: own,
            verdict: facts.verdicts().intern(verdict),
        };
        self.take(event, applied, target, facts)?;
        Ok(entry)
    }

    /// Folds again an event whose entry a fold made before.
    pub fn reapply(
        &mut self,
        event: &Event,
        entry: Entry,
        lookup: &mut impl Lookup,
    ) -> Result<(), SourceError> {
        let applied = entry.verdict.is_applied();
        if applied && matches!(event.payload(), Payload::Genesis(_)) {
            self.genesis = Some(event.id());
        }
        self.take(event, applied, None, lookup)
    }

    /// What folding an event does once it is judged.
    fn take(
        &mut self,
        event: &Event,
        applied: bool,
        target: Option<SiteVersion>,
        lookup: &mut impl Lookup,
    ) -> Result<(), SourceError> {
        self.last = Some((event.hlc(), event.id()));
        self.folded += 1;
        if !applied {
            return Ok(());
        }
        // Only applied events mark a fork: an unauthorized one changes
        // nothing, the roles projection included (the log still counts it).
        if !self
            .places
            .entry(event.author())
            .or_default()
            .insert(event.seq())
        {
            self.roles
                .forks
                .entry(event.author())
                .or_default()
                .insert(event.seq());
        }
        if Roles::is_role_event(event.payload()) {
            self.roles.apply(event);
        }
        let target = match (event.payload(), target) {
            (Payload::SiteRolledBack(r), None) if !self.sites.keeps(&r.domain, &r.to) => lookup
                .event(&r.to)?
                .as_ref()
                .and_then(SiteVersion::of)
                .map(|(_, v)| v),
            (_, target) => target,
        };
        self.apply_effects(event, target);
        Ok(())
    }

    /// The verdict, and for a rollback to a version older than those the
    /// sites projection keeps, that version (read to check it).
    fn judge(
        &mut self,
        event: &Event,
        past: RoleSetId,
        clock_ok: bool,
        facts: &mut impl Facts,
    ) -> Result<(Verdict, Option<SiteVersion>), SourceError> {
        if !clock_ok {
            return Ok((
                Verdict::Invalid("its timestamp is not later than its parents'".into()),
                None,
            ));
        }
        if let Payload::Genesis(g) = event.payload() {
            if self.genesis.is_some() {
                return Ok((
                    Verdict::Invalid("a cluster has exactly one genesis".into()),
                    None,
                ));
            }
            if g.operator != event.author() {
                return Ok((
                    Verdict::Invalid("the genesis must be signed by the operator it names".into()),
                    None,
                ));
            }
            self.genesis = Some(event.id());
            return Ok((Verdict::Applied, None));
        }
        let roles = facts.sets().roles(past);
        if let Err(reason) = roles.authorize(event) {
            return Ok((Verdict::Unauthorized(reason), None));
        }
        Ok(match event.payload() {
            Payload::ConfigChanged(c) => match ConfigDoc::decode(&c.changes) {
                Ok(_) => (Verdict::Applied, None),
                Err(e) => (Verdict::Invalid(e.to_string()), None),
            },
            Payload::SiteRolledBack(r) => {
                if !event.parents().contains(&r.to) {
                    (
                        Verdict::Invalid(
                            "a rollback must name its target version among its parents".into(),
                        ),
                        None,
                    )
                } else if self.sites.keeps(&r.domain, &r.to) {
                    (Verdict::Applied, None)
                } else {
                    match self.published_version(&r.domain, &r.to, facts)? {
                        Some(v) => (Verdict::Applied, Some(v)),
                        None => (
                            Verdict::Invalid(format!(
                                "{} is not a published version of {}",
                                r.to.short(),
                                r.domain
                            )),
                            None,
                        ),
                    }
                }
            }
            _ => (Verdict::Applied, None),
        })
    }

    /// `id`, when it is an applied `site-published` of `domain` folded
    /// before: the version it published.
    fn published_version(
        &self,
        domain: &DomainName,
        id: &EventId,
        facts: &mut impl Facts,
    ) -> Result<Option<SiteVersion>, SourceError> {
        let applied = facts.entry(id)?.is_some_and(|e| e.verdict.is_applied());
        if !applied {
            return Ok(None);
        }
        Ok(facts
            .event(id)?
            .as_ref()
            .and_then(SiteVersion::of)
            .filter(|(d, _)| d == domain)
            .map(|(_, v)| v))
    }

    fn apply_effects(&mut self, event: &Event, target: Option<SiteVersion>) {
        let zones_may_change = match event.payload() {
            Payload::ConfigChanged(c) => {
                if let Ok(changes) = ConfigDoc::decode(&c.changes) {
                    // A change that fails to apply leaves the document as it
                    // was; the verdict was decided on decodability alone.
                    // `maki` rebuilds the document the same way.
                    self.config.apply_as_folded(changes);
                }
                self.config_events.push(event.id());
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
                self.sites.apply(event, target);
                false
            }
            Payload::AcmeChallenge(_)
            | Payload::CertificateIssued(_)
            | Payload::CertificateRenewalRequested(_) => self.certificates.apply(event),
            Payload::SecretResealed(r) => {
                self.resealed.push((r.secret, r.recipient.clone()));
                false
            }
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
    fn bump_serials(&mut self, at: makiatto_events::Hlc) {
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
            sites: self.sites.view(&config),
            config,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_merge_and_refuse_a_taken_place() {
        let mut r = Runs::default();
        for seq in [1, 2, 4, 3, 7, 6] {
            assert!(r.insert(seq), "{seq}");
        }
        assert_eq!(r.0, vec![(1, 4), (6, 7)]);
        assert!(!r.insert(3));
        assert!(!r.insert(7));
        assert!(r.insert(5));
        assert_eq!(r.0, vec![(1, 7)]);
    }
}
