//! One simulated node: a log that admits events, feeding an engine that
//! folds them; and the comparisons the tests make between states.
//!
//! Events reach the engine only through the log, as on a real node, so
//! every property that speaks of projections also exercises admission.

use makiatto_core::log::AppendReport;
use makiatto_core::{Backend, Log, MemoryBackend, VersionVector};
use makiatto_events::{Blake3Hash, Event, EventId};
use makiatto_projections::engine::Settings;
use makiatto_projections::{Engine, ProjectionName, State, Verdict};

/// A node of the simulation: what it stores and what it serves.
#[derive(Debug)]
pub struct Replica {
    log: Log<MemoryBackend>,
    engine: Engine,
}

impl Default for Replica {
    fn default() -> Self {
        Self::new()
    }
}

impl Replica {
    /// An empty node.
    pub fn new() -> Replica {
        Replica {
            log: Log::open(MemoryBackend::default()).expect("an empty memory backend opens"),
            engine: Engine::new(),
        }
    }

    /// Appends raw events as a peer or `maki` sends them; whatever the log
    /// stores (including earlier waiters it releases) goes to the engine.
    pub fn receive(&mut self, raw: &[Vec<u8>]) -> AppendReport {
        let report = self
            .log
            .append_bytes(raw)
            .expect("the memory backend never fails");
        self.engine.insert(report.stored.iter().cloned());
        report
    }

    /// A crash and restart: the log's waiting buffer and the engine's
    /// memory are lost; stored events survive, and so does what the engine
    /// last saved (its entries, checkpoints and record, as a node's store
    /// keeps them). The engine reopens from its save, as a node starts up,
    /// and is given every stored event again (those it folded are skipped).
    pub fn crash_and_restart(&mut self) {
        let backend = self.log.backend().clone();
        let mut engine = Engine::open(self.engine.source().clone(), Settings::TESTS)
            .expect("the memory source never fails");
        engine.insert(
            backend.events().into_iter().map(|(_, bytes)| {
                Event::decode_trusted(&bytes).expect("stored events were verified")
            }),
        );
        self.log = Log::open(backend).expect("a memory backend reopens");
        self.engine = engine;
    }

    pub fn log(&self) -> &Log<MemoryBackend> {
        &self.log
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn version_vector(&self) -> &VersionVector {
        self.log.version_vector()
    }

    /// Whether the log stores `id`.
    pub fn stores(&self, id: &EventId) -> bool {
        self.log
            .backend()
            .contains(id)
            .expect("the memory backend never fails")
    }

    /// The incremental state of every projection.
    pub fn state(&mut self) -> State {
        self.engine.state().clone()
    }

    /// The verdict on every folded event, in id order.
    pub fn verdicts(&self) -> Vec<(EventId, Verdict)> {
        let mut all: Vec<(EventId, Verdict)> = self
            .engine
            .ordered()
            .into_iter()
            .filter_map(|e| Some((e.id(), self.engine.verdict(&e.id())?.clone())))
            .collect();
        all.sort_by_key(|(id, _)| *id);
        all
    }
}

/// An engine fed exactly `events` (in the order given), without a log.
pub fn fold(events: impl IntoIterator<Item = Event>) -> Engine {
    let mut engine = Engine::new();
    engine.insert(events);
    engine
}

/// Every projection's fingerprint, in [`ProjectionName::ALL`] order.
pub fn fingerprints(state: &State) -> Vec<(ProjectionName, Blake3Hash)> {
    ProjectionName::ALL
        .into_iter()
        .map(|p| (p, state.fingerprint(p)))
        .collect()
}

/// Panics with the first projection whose canonical bytes differ.
pub fn assert_same_state(left: &State, right: &State, what: &str) {
    for p in ProjectionName::ALL {
        let (l, r) = (left.canonical_bytes(p), right.canonical_bytes(p));
        if l != r {
            panic!(
                "{what}: projection {p} differs\n  left:  {}\n  right: {}",
                String::from_utf8_lossy(&l),
                String::from_utf8_lossy(&r)
            );
        }
    }
}
