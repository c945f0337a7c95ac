//! [`Replica`]: this node's copy of the log and the projections folded from
//! it. The daemon and the offline commands (`makiatto log` with no daemon
//! running) both work through it, so both give the same answers.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use makiatto_core::VersionVector;
use makiatto_core::{Backend, Log, RejectCounts, Store};
use makiatto_events::{AuthorKey, Event, EventId, Hlc, MAX_PARENTS, Payload};
use makiatto_projections::engine::AsOfError;
use makiatto_projections::{AsOf, Engine, ProjectionName, State};

use makiatto_core::skew::SkewBound;
use makiatto_protocol::log::{LogFilter, LogLine};
use makiatto_protocol::status::{Head, NodeClock, Rejections, Status, VerifyReport};

use crate::query::Point;

/// Why the replica could not answer.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error(transparent)]
    Store(#[from] makiatto_core::StoreError),
    #[error("stored event {id} does not decode: {error}")]
    CorruptEvent {
        id: EventId,
        error: makiatto_events::EventError,
    },
    #[error(transparent)]
    AsOf(#[from] AsOfError),
    #[error("{0}")]
    Query(String),
}

/// The store, the log around it and the engine over it.
pub struct Replica {
    store: Store,
    log: Arc<Mutex<Log<Store>>>,
    engine: Engine,
}

impl Replica {
    /// Opens the data directory's log and folds every stored event.
    pub fn open(data_dir: &Path) -> Result<Replica, ReplicaError> {
        let store = Store::open(&data_dir.join("log"))?;
        let stored: Vec<(EventId, Vec<u8>)> = store.iter_events().collect::<Result<_, _>>()?;
        let bytes: Vec<&[u8]> = stored.iter().map(|(_, b)| b.as_slice()).collect();
        let events =
            Event::decode_trusted_all(&bytes).map_err(|(i, error)| ReplicaError::CorruptEvent {
                id: stored[i].0,
                error,
            })?;
        drop(bytes);
        drop(stored);
        let mut engine = Engine::new();
        engine.insert(events);
        let log = Arc::new(Mutex::new(Log::open(store.clone())?));
        let mut replica = Replica { store, log, engine };
        replica.follow_skew_bound();
        Ok(replica)
    }

    /// Bounds the stamps the log admits by this node's clock and the
    /// cluster's `log.max_clock_skew`, as the configuration now says.
    fn follow_skew_bound(&mut self) {
        let max_ahead_millis = self.engine.state().config.settings.max_clock_skew_millis();
        if let Ok(mut log) = self.log.lock()
            && log.skew().map(|s| s.max_ahead_millis) != Some(max_ahead_millis)
        {
            log.bound_skew(SkewBound {
                clock: Arc::new(crate::clock::now_millis),
                max_ahead_millis,
            });
        }
    }

    /// How many events from peers are held for their stamp now.
    pub fn held_ahead_of_clock(&self) -> u64 {
        self.log.lock().map_or(0, |l| l.held().0 as u64)
    }

    /// When the earliest event held for its stamp comes due (Unix ms).
    pub fn next_held_due(&self) -> Option<u64> {
        self.log.lock().ok()?.next_due()
    }

    /// The bound on stamps in force, and this node's clock now.
    pub fn clock(&self) -> NodeClock {
        let max_skew_millis = self
            .log
            .lock()
            .ok()
            .and_then(|l| l.skew().map(|s| s.max_ahead_millis))
            .unwrap_or(makiatto_core::skew::DEFAULT_MAX_AHEAD_MILLIS);
        NodeClock {
            now_millis: crate::clock::now_millis(),
            max_skew_millis,
        }
    }

    /// The shared log, for the group committer.
    pub fn log(&self) -> Arc<Mutex<Log<Store>>> {
        self.log.clone()
    }

    /// Folds events that the log stored and saves the projections.
    pub fn absorb(&mut self, stored: Vec<Event>) -> Result<(), ReplicaError> {
        if stored.is_empty() {
            return Ok(());
        }
        self.engine.insert(stored);
        self.follow_skew_bound();
        self.save_projections()
    }

    /// Saves every projection's canonical bytes, for `verify` to compare.
    pub fn save_projections(&mut self) -> Result<(), ReplicaError> {
        let state = self.engine.state();
        for name in ProjectionName::ALL {
            self.store
                .put_projection(name.as_str(), &state.canonical_bytes(name))?;
        }
        Ok(())
    }

    /// Makes everything written durable (before a handover replaces the
    /// process's image).
    pub fn persist(&self) -> Result<(), ReplicaError> {
        Ok(self.store.persist()?)
    }

    /// Rejection counters since the log was opened.
    pub fn reject_counts(&self) -> RejectCounts {
        self.log
            .lock()
            .map(|l| l.reject_counts())
            .unwrap_or_default()
    }

    /// Resolves a `--at` argument: a unique id prefix or an RFC 3339 time.
    pub fn resolve_point(&self, text: &str) -> Result<AsOf, ReplicaError> {
        match Point::parse(text).map_err(ReplicaError::Query)? {
            Point::Time(hlc) => Ok(AsOf::Time(hlc)),
            Point::IdPrefix(prefix) => Ok(AsOf::Event(self.resolve_id(&prefix)?)),
        }
    }

    /// The one held event whose hex id starts with `prefix`.
    pub fn resolve_id(&self, prefix: &str) -> Result<EventId, ReplicaError> {
        let mut found = self
            .engine
            .ordered()
            .map(|e| e.id())
            .filter(|id| id.to_hex().starts_with(prefix));
        match (found.next(), found.next()) {
            (Some(id), None) => Ok(id),
            (None, _) => Err(ReplicaError::Query(format!(
                "no event id starts with {prefix:?}"
            ))),
            (Some(_), Some(_)) => Err(ReplicaError::Query(format!(
                "{prefix:?} is ambiguous: give more characters of the id"
            ))),
        }
    }

    /// Projections now, or as of a point.
    pub fn state_at(&mut self, at: Option<&str>) -> Result<State, ReplicaError> {
        match at {
            None => Ok(self.engine.state().clone()),
            Some(text) => {
                let point = self.resolve_point(text)?;
                Ok(self.engine.as_of(point)?)
            }
        }
    }

    /// The log listing, filtered, in time order.
    pub fn log_lines(&self, filter: &LogFilter) -> Result<Vec<LogLine>, ReplicaError> {
        let within = match &filter.at {
            None => None,
            Some(text) => Some(match self.resolve_point(text)? {
                AsOf::Event(id) => Within::Past(self.engine.causal_past(&id)?),
                AsOf::Time(t) => Within::Until(t),
            }),
        };
        let roles = self.engine.roles();
        let mut lines = Vec::new();
        for item in self.store.iter_by_time() {
            let (hlc, id) = item?;
            match &within {
                Some(Within::Until(t)) if hlc > *t => break,
                Some(Within::Past(set)) if !set.contains(&id) => continue,
                _ => {}
            }
            let Some(event) = self.engine.event(&id) else {
                continue;
            };
            let line = LogLine::new(event, roles, self.engine.verdict(&id));
            if filter.matches(&line) {
                lines.push(line);
            }
        }
        if let Some(limit) = filter.limit {
            let skip = lines.len().saturating_sub(limit);
            lines.drain(..skip);
        }
        Ok(lines)
    }

    /// Re-checks every stored event (signature, id, feed chain), rebuilds
    /// every projection from scratch and compares it with the incremental
    /// state and with the stored projections.
    pub fn verify(&mut self) -> Result<VerifyReport, ReplicaError> {
        let mut problems = Vec::new();
        let mut count = 0;
        for item in self.store.iter_events() {
            let (id, bytes) = item?;
            count += 1;
            match Event::decode(&bytes) {
                Ok(e) if e.id() == id => {
                    if let Some(prev) = e.header().prev {
                        let before = self.store.ids_at(&e.author(), e.seq() - 1)?;
                        if !before.contains(&prev) {
                            problems.push(format!(
                                "event {id}: its feed predecessor {prev} is not stored"
                            ));
                        }
                    }
                }
                Ok(_) => problems.push(format!("event stored under {id} hashes to another id")),
                Err(e) => problems.push(format!("event {id}: {e}")),
            }
        }
        for (author, seq, id) in self.store.all_feed_entries()? {
            if !self.store.contains(&id)? {
                problems.push(format!(
                    "feed of {} names event {id} at seq {seq}, which is missing",
                    author.short()
                ));
            }
        }
        let rebuilt = self.engine.rebuild();
        let current = self.engine.state().clone();
        let mut fingerprints = Vec::new();
        for name in ProjectionName::ALL {
            let fresh = rebuilt.canonical_bytes(name);
            if fresh != current.canonical_bytes(name) {
                problems.push(format!(
                    "projection {name}: incremental state differs from a rebuild"
                ));
            }
            match self.store.projection(name.as_str())? {
                Some(saved) if saved != fresh => problems.push(format!(
                    "projection {name}: stored copy differs from a rebuild"
                )),
                None if count > 0 => problems.push(format!("projection {name}: no stored copy")),
                _ => {}
            }
            fingerprints.push((name.as_str().to_owned(), rebuilt.fingerprint(name).to_hex()));
        }
        Ok(VerifyReport {
            events: count,
            problems,
            fingerprints,
        })
    }

    /// Summary numbers for `status`.
    pub fn status(&self) -> Status {
        let (events, waiting, authors, (held, held_total)) = match self.log.lock() {
            Ok(l) => (
                l.version_vector().total(),
                l.waiting() as u64,
                l.version_vector().iter().count() as u64,
                l.held(),
            ),
            Err(_) => (0, 0, 0, (0, 0)),
        };
        let not_ready = self.engine.len() as u64 - self.engine.ordered().count() as u64;
        let r = self.reject_counts();
        Status {
            cluster: self.cluster_id(),
            events,
            waiting_for_predecessor: waiting,
            waiting_for_causal_past: not_ready,
            authors,
            rejected: Rejections {
                invalid: r.invalid,
                duplicate: r.duplicate,
                chain_mismatch: r.chain_mismatch,
                foreign_cluster: r.foreign_cluster,
                wait_buffer_full: r.wait_buffer_full,
                ahead_of_clock: r.ahead_of_clock,
            },
            held_ahead_of_clock: held as u64,
            held_ahead_of_clock_total: held_total,
            clock: Some(self.clock()),
        }
    }
}

impl Replica {
    /// What this log holds, per author.
    pub fn version_vector(&self) -> Result<VersionVector, ReplicaError> {
        let log = self
            .log
            .lock()
            .map_err(|_| ReplicaError::Query("log lock poisoned".into()))?;
        Ok(log.version_vector().clone())
    }

    /// The events a log holding `remote` lacks, up to about `max_bytes`.
    pub fn missing_for(
        &self,
        remote: &VersionVector,
        max_bytes: usize,
    ) -> Result<Vec<Vec<u8>>, ReplicaError> {
        let log = self
            .log
            .lock()
            .map_err(|_| ReplicaError::Query("log lock poisoned".into()))?;
        Ok(log.missing_for(remote, max_bytes)?)
    }

    /// The genesis event's id, once the log holds one.
    pub fn cluster_id(&self) -> Option<EventId> {
        self.log.lock().ok()?.backend().cluster_id()
    }

    /// The cluster-wide settings.
    pub fn settings(&mut self) -> makiatto_projections::config::Settings {
        self.engine.state().config.settings.clone()
    }

    /// The current sites projection (for the content follower).
    pub fn sites(&mut self) -> makiatto_projections::sites::Sites {
        self.engine.state().sites.clone()
    }

    /// The configured domains with their aliases, and when each site
    /// version was published (for the HTTP server).
    pub fn domains(&mut self) -> (BTreeMap<String, Vec<String>>, BTreeMap<EventId, Hlc>) {
        let state = self.engine.state();
        let domains = state
            .config
            .domains
            .iter()
            .map(|(d, c)| (d.clone(), c.aliases.clone()))
            .collect();
        let published = state
            .sites
            .domains
            .values()
            .flat_map(|s| s.versions.iter().map(|v| (v.event, v.at)))
            .collect();
        (domains, published)
    }

    /// Every configured domain's configuration (functions and transforms,
    /// for WebAssembly).
    pub fn domain_configs(
        &mut self,
    ) -> BTreeMap<String, makiatto_projections::config::DomainConfig> {
        self.engine.state().config.domains.clone()
    }

    /// The current certificates projection (for ACME and the servers).
    pub fn certificates(&mut self) -> makiatto_projections::certificates::Certificates {
        self.engine.state().certificates.clone()
    }

    /// The current zones projection (for the DNS server).
    pub fn zones(&mut self) -> makiatto_projections::zones::Zones {
        self.engine.state().zones.clone()
    }

    /// The `[o11y]` table and the cluster's name (for telemetry).
    pub fn o11y(&mut self) -> (makiatto_projections::config::O11yConfig, Option<String>) {
        let state = self.engine.state();
        (
            state.config.o11y.clone(),
            state.roles.cluster.as_ref().map(|c| c.name.clone()),
        )
    }

    /// The current peers projection (for the mesh).
    pub fn peers(&mut self) -> makiatto_projections::peers::Peers {
        self.engine.state().peers.clone()
    }

    /// The current heads (at most `MAX_PARENTS`, newest first).
    pub fn heads(&self) -> Vec<Head> {
        self.engine
            .heads()
            .into_iter()
            .take(MAX_PARENTS)
            .map(|e| Head::new(e.id(), e.hlc()))
            .collect()
    }

    /// The author's latest event (the highest seq; the smallest id on a fork).
    pub fn latest_of(&self, author: &AuthorKey) -> Result<Option<Vec<u8>>, ReplicaError> {
        let log = self
            .log
            .lock()
            .map_err(|_| ReplicaError::Query("log lock poisoned".into()))?;
        let Some(feed) = log.version_vector().get(author).copied() else {
            return Ok(None);
        };
        let ids = self.store.ids_at(author, feed.seq)?;
        match ids.into_iter().min() {
            Some(id) => Ok(self.store.get(&id)?),
            None => Ok(None),
        }
    }

    /// Every applied `secret-resealed` entry, by secret: the extra
    /// recipients a sealed value may be opened by (`SealedValue::open`).
    pub fn resealed(&self) -> BTreeMap<makiatto_events::SecretId, Vec<makiatto_events::Recipient>> {
        let mut out: BTreeMap<_, Vec<_>> = BTreeMap::new();
        for e in self.engine.ordered() {
            if let Payload::SecretResealed(r) = e.payload()
                && self.engine.verdict(&e.id()).is_some_and(|v| v.is_applied())
            {
                out.entry(r.secret).or_default().push(r.recipient.clone());
            }
        }
        out
    }

    /// The bytes of every applied configuration change, in canonical order,
    /// for a client to rebuild the configuration document.
    pub fn config_changes(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for e in self.engine.ordered() {
            if let Payload::ConfigChanged(c) = e.payload()
                && self.engine.verdict(&e.id()).is_some_and(|v| v.is_applied())
            {
                out.extend(c.changes.iter().cloned());
            }
        }
        out
    }
}

enum Within {
    Past(makiatto_projections::fast::FastSet<EventId>),
    Until(Hlc),
}
