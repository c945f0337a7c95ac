//! [`Replica`]: this node's copy of the log and the projections folded from
//! it. The daemon and the offline commands (`makiatto log` with no daemon
//! running) both work through it, so both give the same answers.
//!
//! The events stay in the store: the engine reads them through
//! [`StoreSource`] and keeps in memory only its indexes and the fold's
//! state. Opening starts from the fold's last save (its newest checkpoint
//! and record) and folds only the events stored after it; a store with no
//! save (a new node, or one written by an older build) is folded from the
//! start, a batch at a time. The fold saves every
//! [`Settings::NODE`]`.checkpoint_every` events, at least every
//! [`SAVE_EVERY`] while events arrive, and when the daemon stops.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use makiatto_core::VersionVector;
use makiatto_core::{Backend, Log, RejectCounts, Store};
use makiatto_events::{AuthorKey, Event, EventId, Hlc, MAX_PARENTS, Payload};
use makiatto_projections::engine::{AsOfError, Settings};
use makiatto_projections::{AsOf, Engine, ProjectionName, Source, SourceError, State};

use makiatto_core::skew::SkewBound;
use makiatto_protocol::log::{LogFilter, LogLine};
use makiatto_protocol::status::{Head, NodeClock, Rejections, Status, VerifyReport};

use crate::fold_source::StoreSource;
use crate::query::Point;

/// The fold saves (entries, a checkpoint, its record) at least this often
/// while events arrive, so a node killed without a clean stop re-folds at
/// most this much of its log when it starts again.
pub const SAVE_EVERY: Duration = Duration::from_secs(60);

/// Stored events decoded and folded at once when the log is folded from
/// the start.
const FOLD_BATCH: usize = 16_384;

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
    #[error("the fold cannot read its store: {0}")]
    Fold(#[from] SourceError),
    #[error("{0}")]
    Query(String),
}

/// The store, the log around it and the engine over it.
pub struct Replica {
    store: Store,
    log: Arc<Mutex<Log<Store>>>,
    engine: Engine<StoreSource>,
    last_save: Instant,
    /// Why the last save of the projections failed (their stored copies
    /// are older than the log then), until a save succeeds.
    unsaved: Option<String>,
    /// Told of a failed save (the daemon restarts on a reopened store once
    /// its data directory takes writes again).
    on_store_failure: Option<std::sync::mpsc::Sender<String>>,
}

impl Replica {
    /// Opens the data directory's log and the fold as last saved, and
    /// folds the events stored since.
    pub fn open(data_dir: &Path) -> Result<Replica, ReplicaError> {
        let store = Store::open(&data_dir.join("log"))?;
        let log = Log::open(store.clone())?;
        let mut engine = match Engine::open(StoreSource::new(store.clone()), Settings::NODE) {
            Ok(engine) => engine,
            // A save that does not read back (damaged, or of another
            // build's format) costs a fold from the start, never the node.
            Err(SourceError::Corrupt(what)) => {
                tracing::warn!(problem = %what, "the fold's save does not read back; folding the log from the start");
                store.clear_fold()?;
                Engine::open(StoreSource::new(store.clone()), Settings::NODE)?
            }
            Err(e) => return Err(e.into()),
        };
        catch_up(&mut engine, &store, log.version_vector())?;
        let folded = engine.unsaved() > 0;
        let log = Arc::new(Mutex::new(log));
        let mut replica = Replica {
            store,
            log,
            engine,
            last_save: Instant::now(),
            unsaved: None,
            on_store_failure: None,
        };
        if folded {
            // What was folded is saved at once, so the next start (an
            // offline command's, too) begins from here. The projections'
            // stored copies are left as they are: `verify` compares them
            // with a rebuild, and the daemon saves them once it runs.
            replica.engine.try_flush()?;
        }
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
    ///
    /// A store that fails to write here (a full disk) is told as a failed
    /// save of the projections is (see [`Replica::save_projections`]).
    pub fn absorb(&mut self, stored: Vec<Event>) -> Result<(), ReplicaError> {
        if stored.is_empty() {
            return Ok(());
        }
        let folded = self
            .engine
            .try_insert(stored)
            .map(drop)
            .map_err(ReplicaError::from);
        self.follow_skew_bound();
        let flushed = folded.and_then(|()| {
            if self.engine.unsaved() > 0 && self.last_save.elapsed() >= SAVE_EVERY {
                self.engine.try_flush()?;
                self.last_save = Instant::now();
            }
            Ok(())
        });
        if let Err(e) = &flushed {
            self.failed_to_save(e.to_string());
        }
        flushed?;
        self.save_projections()
    }

    /// Saves the fold (its new entries, a checkpoint and its record) and
    /// the projections: at a clean stop, so the next start folds nothing.
    pub fn save(&mut self) -> Result<(), ReplicaError> {
        if self.engine.unsaved() > 0 {
            self.engine.try_flush()?;
        }
        self.last_save = Instant::now();
        self.save_projections()
    }

    /// Saves every projection's canonical bytes, for `verify` to compare.
    /// A save that fails (a full disk) is remembered: `verify` saves again
    /// before it compares, and the first failure is told to
    /// [`Replica::on_store_failure`]'s channel.
    pub fn save_projections(&mut self) -> Result<(), ReplicaError> {
        let state = self.engine.state();
        let saved = ProjectionName::ALL.into_iter().try_for_each(|name| {
            self.store
                .put_projection(name.as_str(), &state.canonical_bytes(name))
        });
        match &saved {
            Ok(()) => self.unsaved = None,
            Err(e) => self.failed_to_save(e.to_string()),
        }
        Ok(saved?)
    }

    /// Remembers that the stored copies are older than the log, and tells
    /// the first such failure to [`Replica::on_store_failure`]'s channel.
    fn failed_to_save(&mut self, why: String) {
        if self.unsaved.is_none()
            && let Some(tx) = &self.on_store_failure
        {
            let _ = tx.send(format!("saving the fold or the projections failed: {why}"));
        }
        self.unsaved = Some(why);
    }

    /// Where a failed save of the projections is told.
    pub fn on_store_failure(&mut self, tx: std::sync::mpsc::Sender<String>) {
        self.on_store_failure = Some(tx);
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

    /// The one folded event whose hex id starts with `prefix` (read from
    /// the store's id index, so only ids sharing the prefix are visited).
    pub fn resolve_id(&self, prefix: &str) -> Result<EventId, ReplicaError> {
        let prefix = prefix.to_ascii_lowercase();
        let whole_bytes = hex::decode(&prefix[..prefix.len() - prefix.len() % 2])
            .map_err(|_| ReplicaError::Query(format!("{prefix:?} is not hexadecimal")))?;
        let mut found = Vec::new();
        for id in self.store.ids_with_prefix(&whole_bytes) {
            let id = id?;
            if id.to_hex().starts_with(&prefix) && self.engine.try_is_ready(&id)? {
                found.push(id);
                if found.len() == 2 {
                    break;
                }
            }
        }
        match (found.first().copied(), found.get(1)) {
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

    /// The log listing, filtered, in time order. Read from the store
    /// newest first when a limit is given, so `--limit` costs what it
    /// lists, not the length of the log.
    pub fn log_lines(&self, filter: &LogFilter) -> Result<Vec<LogLine>, ReplicaError> {
        let limit = filter.limit.unwrap_or(usize::MAX);
        let roles = self.engine.roles();
        let mut lines = Vec::new();
        let take = |event: &Event, lines: &mut Vec<LogLine>| -> Result<bool, ReplicaError> {
            let id = event.id();
            if !self.engine.try_contains(&id)? {
                // Stored, but not yet given to the engine.
                return Ok(true);
            }
            let verdict = self.engine.try_verdict(&id)?;
            let line = LogLine::new(event, roles, verdict);
            if filter.matches(&line) {
                lines.push(line);
            }
            Ok(lines.len() < limit)
        };
        let point = match &filter.at {
            None => None,
            Some(text) => Some(self.resolve_point(text)?),
        };
        match point {
            Some(AsOf::Event(id)) => {
                let mut past = Vec::new();
                self.engine.try_walk_past(id, |e, _| past.push(e.clone()))?;
                for e in &past {
                    if !take(e, &mut lines)? {
                        break;
                    }
                }
                lines.reverse();
            }
            time => {
                let last = match time {
                    Some(AsOf::Time(t)) => t,
                    _ => Hlc {
                        millis: u64::MAX,
                        counter: u32::MAX,
                    },
                };
                let last = (last, EventId([0xff; 32]));
                let source = self.engine.source();
                if filter.limit.is_some() {
                    for e in source.backward(last) {
                        if !take(&e?, &mut lines)? {
                            break;
                        }
                    }
                    lines.reverse();
                } else {
                    for e in source.forward(Bound::Unbounded, Bound::Included(last)) {
                        take(&e?, &mut lines)?;
                    }
                }
            }
        }
        Ok(lines)
    }

    /// Re-checks every stored event (signature, id, feed chain), rebuilds
    /// every projection from scratch and compares it with the incremental
    /// state and with the stored projections.
    pub fn verify(&mut self) -> Result<VerifyReport, ReplicaError> {
        let mut problems = Vec::new();
        // Stored copies left behind by a failed save, or never made (a
        // store only offline commands have opened: they fold, and leave the
        // copies to the daemon), are saved first: stale or absent is not
        // corrupt, but a store that refuses the save is a problem.
        let mut absent = false;
        for name in ProjectionName::ALL {
            absent |= self.store.projection(name.as_str())?.is_none();
        }
        let mut stale = false;
        if (self.unsaved.is_some() || absent)
            && let Err(e) = self.save_projections()
        {
            stale = true;
            problems.push(format!(
                "the projections' stored copies are older than the log: saving them failed ({e}); is the disk full?"
            ));
        }
        let mut count = 0;
        let mut events = self.store.iter_events();
        loop {
            // Signatures are checked a batch at a time over every core.
            let batch: Vec<_> = events.by_ref().take(FOLD_BATCH).collect::<Result<_, _>>()?;
            if batch.is_empty() {
                break;
            }
            count += batch.len();
            let bytes: Vec<&[u8]> = batch.iter().map(|(_, b)| b.as_slice()).collect();
            for (((hlc, id), _), decoded) in batch.iter().zip(Event::decode_all(&bytes)) {
                match decoded {
                    Ok(e) if e.id() == *id && e.hlc() == *hlc => {
                        if let Some(prev) = e.header().prev {
                            let before = self.store.ids_at(&e.author(), e.seq() - 1)?;
                            if !before.contains(&prev) {
                                problems.push(format!(
                                    "event {id}: its feed predecessor {prev} is not stored"
                                ));
                            }
                        }
                    }
                    Ok(_) => problems.push(format!(
                        "event stored under {id} hashes to another id or time"
                    )),
                    Err(e) => problems.push(format!("event {id}: {e}")),
                }
            }
        }
        let mut feed_problem = None;
        self.store
            .each_feed_entry(&mut |author, seq, id| match self.store.contains(&id) {
                Ok(true) => {}
                Ok(false) => problems.push(format!(
                    "feed of {} names event {id} at seq {seq}, which is missing",
                    author.short()
                )),
                Err(e) => feed_problem = Some(e),
            })?;
        if let Some(e) = feed_problem {
            return Err(e.into());
        }
        let rebuilt = self.engine.try_rebuild()?;
        problems.extend(rebuilt.problems);
        let rebuilt = rebuilt.state;
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
                _ if stale => {}
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
        let not_ready = self.engine.unready() as u64;
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
            .map(|(hlc, id)| Head::new(id, hlc))
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
        for (secret, recipient) in self.engine.resealed() {
            out.entry(*secret).or_default().push(recipient.clone());
        }
        out
    }

    /// The bytes of every applied configuration change, in canonical order,
    /// for a client to rebuild the configuration document.
    pub fn config_changes(&self) -> Result<Vec<Vec<u8>>, ReplicaError> {
        let mut out = Vec::new();
        for id in self.engine.config_events() {
            let Some(e) = self.engine.source().event(id)? else {
                return Err(SourceError::Corrupt(format!(
                    "configuration change {id} was folded but is not stored"
                ))
                .into());
            };
            if let Payload::ConfigChanged(c) = e.payload() {
                out.extend(c.changes.iter().cloned());
            }
        }
        Ok(out)
    }
}

/// Gives the engine every stored event its last save does not cover: all
/// of them, a batch at a time in canonical order, when there is no save;
/// otherwise, per author, the part of the feed the save had not seen
/// (the whole feed where either side saw a fork).
fn catch_up(
    engine: &mut Engine<StoreSource>,
    store: &Store,
    stored: &VersionVector,
) -> Result<(), ReplicaError> {
    if engine.known().total() == 0 {
        let mut events = store.iter_events();
        loop {
            let batch: Vec<_> = events.by_ref().take(FOLD_BATCH).collect::<Result<_, _>>()?;
            if batch.is_empty() {
                return Ok(());
            }
            let bytes: Vec<&[u8]> = batch.iter().map(|(_, b)| b.as_slice()).collect();
            let decoded = Event::decode_trusted_all(&bytes).map_err(|(i, error)| {
                ReplicaError::CorruptEvent {
                    id: batch[i].0.1,
                    error,
                }
            })?;
            drop(bytes);
            drop(batch);
            engine.try_insert(decoded)?;
        }
    }
    for request in stored.plan_for(engine.known()) {
        let mut events = Vec::new();
        for (_, id) in store.feed_from(&request.author, request.from, usize::MAX)? {
            if engine.try_contains(&id)? {
                continue;
            }
            if let Some(bytes) = store.get(&id)? {
                events.push(
                    Event::decode_trusted(&bytes)
                        .map_err(|error| ReplicaError::CorruptEvent { id, error })?,
                );
            }
        }
        engine.try_insert(events)?;
    }
    Ok(())
}
