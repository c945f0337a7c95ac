//! Cluster histories: who writes what, having seen what.
//!
//! A history starts with a genesis operator and grows step by step: an
//! author writes an event on top of the heads it has seen, or learns what
//! another author has seen, or the authors split into groups that only see
//! each other until the next heal. Operators add and remove operators, join
//! and remove nodes, add and remove external peers, edit the configuration
//! through their own `ConfigDoc` copy (which knows only the changes they have
//! seen), publish sites and roll them back; one operator may sign on two
//! devices (a feed fork). Nodes reseal secrets. Intruders write what they
//! may not: a stranger's key, a node writing operator-level events, an
//! operator who has seen its own removal, a kind this version does not know.
//!
//! Every author signs through its own `FeedWriter`, stamped by a simulated
//! clock with a per-author skew. What an author has seen is always causally
//! closed and is exactly the causal past of what it writes next, so a small
//! model of the roles in it tells the verdict each event must get
//! ([`Expected`]) without asking the fold under test.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use makiatto_events::payload::{
    AcmeChallenge, BlobRef, CertificateIssued, CertificateRenewalRequested, ChangeSummary,
    ConfigChanged, Coordinates, ExternalPeerAdded, ExternalPeerRemoved, Genesis, Ipv4Net,
    NodeJoined, NodeRemoved, OperatorAdded, OperatorRemoved, SecretResealed, SitePublished,
    SiteRolledBack, SshTarget,
};
use makiatto_events::{
    AuthorKey, Blake3Hash, DomainName, Event, EventId, FeedWriter, Hlc, NodeName, Payload,
    PeerName, Recipient, SealedValue, SealingKey, SigningKey, WgPublicKey,
};
use makiatto_projections::config::{
    ConfigDoc, DesiredConfig, FunctionConfig, RecordConfig, SealedEnv,
};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// The domains histories configure and publish sites for.
pub const DOMAINS: [&str; 3] = ["example.com", "example.org", "shop.example.net"];

/// Where every generated cluster's clock starts (2025-10-09 UTC).
pub const EPOCH_MILLIS: u64 = 1_760_000_000_000;

/// The first octets of the mesh range (198.51.100.0/N, docs/design.md, Testing on one machine).
const MESH_NETWORK: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 0);

const NODE_WORDS: [&str; 8] = [
    "vector", "tulip", "quartz", "birch", "cobalt", "ember", "fjord", "kestrel",
];

/// The verdict the fold must give an event, by the roles in its causal past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    Applied,
    Unauthorized,
}

/// How big and how eventful a history is.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Steps to take: writes, learning, partitions and heals.
    pub steps: usize,
    /// Operators ever added, the genesis operator included.
    pub max_operators: usize,
    /// Nodes ever joined.
    pub max_nodes: usize,
    /// Whether authors split into groups that see only each other for a while.
    pub partitions: bool,
    /// Whether intruders write events that must be judged unauthorized.
    pub intruders: bool,
    /// Whether other authors see intruders' events and build on them. When
    /// not, no authorized event descends from an unauthorized one, so the
    /// unauthorized events can be left out of a replay.
    pub intruders_visible: bool,
    /// Whether one operator key signs on two devices (a feed fork).
    pub fork: bool,
    /// The mesh range's prefix length: small ranges force address conflicts.
    pub mesh_prefix: u8,
}

impl Shape {
    /// A small history, about 4–25 events: most cases.
    pub fn small(rng: &mut impl Rng) -> Shape {
        Shape {
            steps: rng.random_range(6..40),
            max_operators: rng.random_range(2..5),
            max_nodes: rng.random_range(0..5),
            partitions: rng.random_bool(0.6),
            intruders: rng.random_bool(0.7),
            intruders_visible: rng.random_bool(0.3),
            fork: rng.random_bool(0.25),
            mesh_prefix: [24, 28, 29][rng.random_range(0..3)],
        }
    }

    /// A larger history, about 100–200 events.
    pub fn large(rng: &mut impl Rng) -> Shape {
        Shape {
            steps: rng.random_range(150..300),
            max_operators: rng.random_range(3..7),
            max_nodes: rng.random_range(4..12),
            partitions: true,
            intruders: true,
            intruders_visible: rng.random_bool(0.5),
            fork: rng.random_bool(0.5),
            mesh_prefix: [24, 28][rng.random_range(0..2)],
        }
    }
}

/// A generated history: every event in the order it was written (a
/// topological order of the causal graph), with its expected verdict.
#[derive(Debug, Clone)]
pub struct History {
    shape: Shape,
    events: Vec<Event>,
    expected: Vec<Expected>,
    writers: Vec<String>,
    index: HashMap<EventId, usize>,
}

impl History {
    /// The history for `seed`: small, except one seed in `large_one_in`
    /// (0: never) gets a large one.
    pub fn for_seed(seed: u64, large_one_in: u64) -> History {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let shape = if large_one_in > 0 && seed.is_multiple_of(large_one_in) {
            Shape::large(&mut rng)
        } else {
            Shape::small(&mut rng)
        };
        Generator::new(rng, seed, shape).run()
    }

    /// [`History::for_seed`], generated once per process: the properties
    /// that test the same seed share it.
    pub fn shared(seed: u64, large_one_in: u64) -> Arc<History> {
        type Slot = Arc<OnceLock<Arc<History>>>;
        static SHARED: OnceLock<Mutex<HashMap<(u64, u64), Slot>>> = OnceLock::new();
        let slot = SHARED
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((seed, large_one_in))
            .or_default()
            .clone();
        // A second property asking for the same seed waits for the first.
        slot.get_or_init(|| Arc::new(History::for_seed(seed, large_one_in)))
            .clone()
    }

    /// The history for `seed` with a given shape.
    pub fn generate(seed: u64, shape: Shape) -> History {
        Generator::new(ChaCha20Rng::seed_from_u64(seed), seed, shape).run()
    }

    /// Every event, in the order written.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// The event `id`.
    pub fn event(&self, id: &EventId) -> &Event {
        &self.events[self.position(id)]
    }

    /// Every event's canonical bytes, in the order written.
    pub fn bytes(&self) -> Vec<Vec<u8>> {
        self.events.iter().map(|e| e.to_bytes().to_vec()).collect()
    }

    /// The verdict `id` must get.
    pub fn expected(&self, id: &EventId) -> Expected {
        self.expected[self.position(id)]
    }

    /// Who wrote `id` (`op2`, `op1-device2`, `tulip-3`, `stranger`).
    pub fn writer(&self, id: &EventId) -> &str {
        &self.writers[self.position(id)]
    }

    /// The events that must be judged unauthorized.
    pub fn unauthorized(&self) -> impl Iterator<Item = &Event> {
        self.events
            .iter()
            .zip(&self.expected)
            .filter(|(_, x)| **x == Expected::Unauthorized)
            .map(|(e, _)| e)
    }

    /// Whether no authorized event descends from an unauthorized one.
    pub fn unauthorized_are_leaves(&self) -> bool {
        !self.shape.intruders_visible
    }

    /// `id` and all its ancestors, in the order written.
    pub fn causal_past(&self, id: &EventId) -> Vec<Event> {
        let mut seen = HashSet::from([*id]);
        let mut stack = vec![*id];
        while let Some(next) = stack.pop() {
            for p in self.events[self.position(&next)].parents() {
                if seen.insert(*p) {
                    stack.push(*p);
                }
            }
        }
        self.events
            .iter()
            .filter(|e| seen.contains(&e.id()))
            .cloned()
            .collect()
    }

    fn position(&self, id: &EventId) -> usize {
        *self
            .index
            .get(id)
            .unwrap_or_else(|| panic!("event {id} is not in the history"))
    }
}

/// What kind of key an author holds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    Operator,
    Node(NodeName),
    /// A key no operator ever added.
    Stranger,
}

/// What one author has seen: a causally closed set of events, its heads,
/// and what the applied ones among them establish.
#[derive(Debug, Clone, Default)]
struct Seen {
    ids: HashSet<EventId>,
    heads: BTreeMap<EventId, Hlc>,
    operators: BTreeSet<AuthorKey>,
    nodes: BTreeMap<NodeName, AuthorKey>,
    peers: BTreeSet<PeerName>,
    /// Requested mesh address per member (`node:NAME`, `peer:NAME`).
    mesh_requested: BTreeMap<String, Ipv4Addr>,
    mesh_range: Option<Ipv4Net>,
    /// Applied site versions per domain.
    sites: BTreeMap<DomainName, Vec<(EventId, Hlc)>>,
}

impl Seen {
    /// Takes in one event whose parents are already seen; false when it
    /// was seen before.
    fn learn(&mut self, event: &Event, applied: bool) -> bool {
        if !self.ids.insert(event.id()) {
            return false;
        }
        for p in event.parents() {
            self.heads.remove(p);
        }
        self.heads.insert(event.id(), event.hlc());
        if !applied {
            return true;
        }
        match event.payload() {
            Payload::Genesis(g) => {
                self.operators.insert(g.operator);
                self.mesh_range = Some(g.mesh_range);
            }
            Payload::OperatorAdded(o) => {
                self.operators.insert(o.key);
            }
            Payload::OperatorRemoved(o) => {
                self.operators.remove(&o.key);
            }
            Payload::NodeJoined(n) => {
                self.nodes.insert(n.name.clone(), n.signing_key);
                self.mesh_requested
                    .insert(format!("node:{}", n.name), n.mesh_addr);
            }
            Payload::NodeRemoved(n) => {
                self.nodes.remove(&n.name);
                self.mesh_requested.remove(&format!("node:{}", n.name));
            }
            Payload::ExternalPeerAdded(p) => {
                self.peers.insert(p.name.clone());
                if let Some(addr) = p.wg_address {
                    self.mesh_requested.insert(format!("peer:{}", p.name), addr);
                }
            }
            Payload::ExternalPeerRemoved(p) => {
                self.peers.remove(&p.name);
                self.mesh_requested.remove(&format!("peer:{}", p.name));
            }
            Payload::SitePublished(s) => {
                self.sites
                    .entry(s.domain.clone())
                    .or_default()
                    .push((event.id(), event.hlc()));
            }
            _ => {}
        }
        true
    }
}

/// One signing device and what it has seen.
#[derive(Debug, Clone)]
struct Author {
    label: String,
    role: Role,
    writer: FeedWriter,
    seen: Seen,
    /// The configuration as this author knows it (its `maki` base)...
    config: ConfigDoc,
    /// ...once these applied changes it has seen are merged in; merged
    /// only when it edits, since most authors never do.
    unmerged: Vec<Vec<Vec<u8>>>,
    skew_millis: i64,
    group: usize,
    /// Once an author writes what it may not, it writes nothing else, so
    /// hidden intruders' events stay leaves of the causal graph.
    intruding: bool,
}

impl Author {
    fn key(&self) -> AuthorKey {
        self.writer.author()
    }

    fn is_operator(&self) -> bool {
        self.role == Role::Operator && self.seen.operators.contains(&self.key())
    }

    fn is_node(&self) -> bool {
        match &self.role {
            Role::Node(name) => self.seen.nodes.get(name) == Some(&self.key()),
            _ => false,
        }
    }

    fn heads(&self) -> Vec<(EventId, Hlc)> {
        self.seen.heads.iter().map(|(id, h)| (*id, *h)).collect()
    }

    /// Takes in an event; applied configuration changes are kept for its
    /// document.
    fn learn(&mut self, event: &Event, expected: Expected) {
        let applied = expected == Expected::Applied;
        if !self.seen.learn(event, applied) || !applied {
            return;
        }
        if let Payload::ConfigChanged(c) = event.payload()
            && event.author() != self.key()
        {
            self.unmerged.push(c.changes.clone());
        }
    }

    /// The configuration document with every applied change seen so far.
    fn merged_config(&mut self) -> &mut ConfigDoc {
        for changes in self.unmerged.drain(..) {
            if let Ok(changes) = ConfigDoc::decode(&changes) {
                // Two devices of one key reuse one automerge actor; automerge
                // refuses the second device's change, as it does in the fold.
                let _ = self.config.apply(changes);
            }
        }
        &mut self.config
    }
}

/// What an operator does next.
#[derive(Debug, Clone, Copy)]
enum Action {
    AddOperator,
    RemoveOperator,
    JoinNode,
    RemoveNode,
    AddPeer,
    RemovePeer,
    EditConfig,
    Publish,
    Rollback,
    ForkDevice,
    WriteUnknownKind,
    RequestRenewal,
}

const OPERATOR_ACTIONS: [(Action, u32); 12] = [
    (Action::EditConfig, 20),
    (Action::Publish, 10),
    (Action::Rollback, 6),
    (Action::JoinNode, 12),
    (Action::RemoveNode, 4),
    (Action::AddPeer, 6),
    (Action::RemovePeer, 3),
    (Action::AddOperator, 8),
    (Action::RemoveOperator, 8),
    (Action::ForkDevice, 6),
    (Action::WriteUnknownKind, 1),
    (Action::RequestRenewal, 2),
];

struct Generator {
    rng: ChaCha20Rng,
    seed: u64,
    shape: Shape,
    now_millis: u64,
    authors: Vec<Author>,
    history: History,
    genesis_operator: AuthorKey,
    operators_made: usize,
    nodes_made: usize,
    peers_made: usize,
    forked: bool,
}

impl Generator {
    fn new(mut rng: ChaCha20Rng, seed: u64, shape: Shape) -> Generator {
        let key = SigningKey::generate(&mut rng);
        let genesis_operator = key.public();
        let founder = Author {
            label: "op0".into(),
            role: Role::Operator,
            writer: FeedWriter::new(key),
            seen: Seen::default(),
            config: ConfigDoc::default(),
            unmerged: Vec::new(),
            skew_millis: 0,
            group: 0,
            intruding: false,
        };
        Generator {
            now_millis: EPOCH_MILLIS + rng.random_range(0..86_400_000),
            rng,
            seed,
            history: History {
                shape: shape.clone(),
                events: Vec::new(),
                expected: Vec::new(),
                writers: Vec::new(),
                index: HashMap::new(),
            },
            shape,
            authors: vec![founder],
            genesis_operator,
            operators_made: 1,
            nodes_made: 0,
            peers_made: 0,
            forked: false,
        }
    }

    fn run(mut self) -> History {
        let mesh_range = Ipv4Net::new(MESH_NETWORK, self.shape.mesh_prefix)
            .expect("generated prefixes are at most 32");
        let genesis = Payload::Genesis(Genesis {
            cluster_name: format!("replay-{}", self.seed % 1000),
            operator_name: "op0".into(),
            operator: self.genesis_operator,
            mesh_range,
        });
        self.write(0, genesis, &[], Expected::Applied);
        // `maki init`: the first configuration, so that later edits change
        // fields of one document instead of racing to create it.
        let mut initial = DesiredConfig::default();
        initial
            .domains
            .entry(DOMAINS[0].into())
            .or_default()
            .records
            .insert("TXT @ 0".into(), txt_record("v=init", None));
        let payload = self.config_payload(0, initial, "initial configuration".into());
        self.write(0, payload, &[], Expected::Applied);
        if self.shape.intruders {
            let mut stranger = self.authors[0].clone();
            stranger.label = "stranger".into();
            stranger.role = Role::Stranger;
            stranger.writer = FeedWriter::new(SigningKey::generate(&mut self.rng));
            stranger.skew_millis = self.rng.random_range(-5_000..5_000);
            self.authors.push(stranger);
        }
        for _ in 0..self.shape.steps {
            self.step();
        }
        self.history
    }

    fn step(&mut self) {
        self.now_millis += self.rng.random_range(0..1_500);
        let roll = self.rng.random_range(0..100);
        if self.shape.partitions && roll < 6 {
            self.repartition();
        } else if roll < 35 {
            self.exchange();
        } else {
            self.write_something();
        }
    }

    /// Heals a partition, or splits the authors into two or three groups.
    fn repartition(&mut self) {
        let partitioned = self.authors.iter().any(|a| a.group != 0);
        if partitioned && self.rng.random_bool(0.5) {
            for a in &mut self.authors {
                a.group = 0;
            }
        } else {
            let groups = self.rng.random_range(2..=3);
            for a in &mut self.authors {
                a.group = self.rng.random_range(0..groups);
            }
        }
    }

    /// One author learns what another in its group has seen (and sometimes
    /// the other way round).
    fn exchange(&mut self) {
        let a = self.rng.random_range(0..self.authors.len());
        let group = self.authors[a].group;
        let others: Vec<usize> = (0..self.authors.len())
            .filter(|b| *b != a && self.authors[*b].group == group)
            .collect();
        let Some(&b) = others.choose(&mut self.rng) else {
            return;
        };
        self.learn_from(a, b);
        if self.rng.random_bool(0.5) {
            self.learn_from(b, a);
        }
    }

    /// `a` learns every event `b` has seen that `b` may show (an intruder's
    /// events stay with their author unless the shape makes them visible).
    fn learn_from(&mut self, a: usize, b: usize) {
        for i in 0..self.history.events.len() {
            let event = &self.history.events[i];
            let expected = self.history.expected[i];
            let shown = expected == Expected::Applied || self.shape.intruders_visible;
            if shown
                && self.authors[b].seen.ids.contains(&event.id())
                && !self.authors[a].seen.ids.contains(&event.id())
            {
                let event = event.clone();
                self.authors[a].learn(&event, expected);
            }
        }
    }

    fn can_write(&self, a: &Author) -> bool {
        if a.intruding {
            return true;
        }
        match &a.role {
            Role::Operator => a.is_operator() || self.shape.intruders,
            Role::Node(_) => a.is_node() || self.shape.intruders,
            Role::Stranger => self.shape.intruders,
        }
    }

    fn write_something(&mut self) {
        let eligible: Vec<usize> = (0..self.authors.len())
            .filter(|i| self.can_write(&self.authors[*i]))
            .collect();
        let Some(&a) = eligible.choose(&mut self.rng) else {
            return;
        };
        let author = &self.authors[a];
        let legitimate = !author.intruding && (author.is_operator() || author.is_node());
        if !legitimate && self.rng.random_bool(0.6) {
            // Intruders are a minority: most steps belong to the cluster.
            return;
        }
        if author.intruding {
            self.intrude(a);
        } else if author.is_operator() {
            self.operate(a);
        } else if author.is_node() {
            if self.shape.intruders && self.rng.random_bool(0.1) {
                self.intrude(a);
            } else {
                // What nodes write: reseals, and (as the ACME orderer)
                // challenges and certificates.
                let payload = match self.rng.random_range(0..3) {
                    0 => reseal_payload(&mut self.rng),
                    1 => challenge_payload(&mut self.rng),
                    _ => certificate_payload(&mut self.rng),
                };
                self.write(a, payload, &[], Expected::Applied);
            }
        } else {
            // A stranger, or a removed operator or node that has seen its
            // removal.
            self.intrude(a);
        }
    }

    /// A current operator does something it may do, drawn by weight among
    /// what is possible for it now.
    fn operate(&mut self, a: usize) {
        let total: u32 = OPERATOR_ACTIONS.iter().map(|(_, w)| w).sum();
        for _ in 0..8 {
            let mut roll = self.rng.random_range(0..total);
            for (action, weight) in OPERATOR_ACTIONS {
                if roll >= weight {
                    roll -= weight;
                } else if self.possible(a, action) {
                    return self.perform(a, action);
                } else {
                    break;
                }
            }
        }
        self.edit_config(a);
    }

    fn possible(&self, a: usize, action: Action) -> bool {
        let seen = &self.authors[a].seen;
        match action {
            Action::AddOperator => self.operators_made < self.shape.max_operators,
            Action::RemoveOperator => !self.removable_operators(a).is_empty(),
            Action::JoinNode => self.nodes_made < self.shape.max_nodes,
            Action::RemoveNode => !seen.nodes.is_empty(),
            Action::RemovePeer => !seen.peers.is_empty(),
            Action::Rollback => !seen.sites.is_empty(),
            Action::ForkDevice => self.shape.fork && !self.forked,
            Action::WriteUnknownKind => self.shape.intruders,
            Action::AddPeer | Action::EditConfig | Action::Publish | Action::RequestRenewal => true,
        }
    }

    /// Operators `a` may remove: never the genesis operator (so the cluster
    /// always keeps one), never itself.
    fn removable_operators(&self, a: usize) -> Vec<AuthorKey> {
        let me = self.authors[a].key();
        self.authors[a]
            .seen
            .operators
            .iter()
            .filter(|k| **k != self.genesis_operator && **k != me)
            .copied()
            .collect()
    }

    fn perform(&mut self, a: usize, action: Action) {
        let seen = &self.authors[a].seen;
        match action {
            Action::AddOperator => {
                let key = SigningKey::generate(&mut self.rng);
                let label = format!("op{}", self.operators_made);
                self.operators_made += 1;
                let payload = Payload::OperatorAdded(OperatorAdded {
                    name: label.clone(),
                    key: key.public(),
                });
                self.write(a, payload, &[], Expected::Applied);
                self.spawn(a, label, Role::Operator, key);
            }
            Action::RemoveOperator => {
                let candidates = self.removable_operators(a);
                let key = *candidates.choose(&mut self.rng).expect("checked possible");
                let payload = Payload::OperatorRemoved(OperatorRemoved { key });
                self.write(a, payload, &[], Expected::Applied);
                // Often the removed operator hears of it at once (and may
                // then write what it no longer may).
                let group = self.authors[a].group;
                for b in 0..self.authors.len() {
                    let told = self.authors[b].key() == key && self.authors[b].group == group;
                    if told && self.rng.random_bool(0.5) {
                        self.learn_from(b, a);
                    }
                }
            }
            Action::JoinNode => {
                let key = SigningKey::generate(&mut self.rng);
                let name = NodeName::new(format!(
                    "{}-{}",
                    NODE_WORDS[self.nodes_made % NODE_WORDS.len()],
                    self.nodes_made
                ))
                .expect("generated node names are valid labels");
                self.nodes_made += 1;
                let payload = join_payload(&mut self.rng, seen, name.clone(), key.public());
                self.write(a, payload, &[], Expected::Applied);
                self.spawn(a, name.to_string(), Role::Node(name), key);
            }
            Action::RemoveNode => {
                let names: Vec<&NodeName> = seen.nodes.keys().collect();
                let name = (*names.choose(&mut self.rng).expect("checked possible")).clone();
                let payload = Payload::NodeRemoved(NodeRemoved { name });
                self.write(a, payload, &[], Expected::Applied);
            }
            Action::AddPeer => {
                self.peers_made += 1;
                let payload = peer_payload(&mut self.rng, seen, self.peers_made);
                self.write(a, payload, &[], Expected::Applied);
            }
            Action::RemovePeer => {
                let names: Vec<&PeerName> = seen.peers.iter().collect();
                let name = (*names.choose(&mut self.rng).expect("checked possible")).clone();
                let payload = Payload::ExternalPeerRemoved(ExternalPeerRemoved { name });
                self.write(a, payload, &[], Expected::Applied);
            }
            Action::EditConfig => self.edit_config(a),
            Action::Publish => {
                let payload = publish_payload(&mut self.rng);
                self.write(a, payload, &[], Expected::Applied);
            }
            Action::Rollback => {
                let domains: Vec<(&DomainName, &Vec<(EventId, Hlc)>)> = seen.sites.iter().collect();
                let (domain, versions) = *domains.choose(&mut self.rng).expect("checked possible");
                let target = *versions
                    .choose(&mut self.rng)
                    .expect("a version per domain");
                let payload = Payload::SiteRolledBack(SiteRolledBack {
                    domain: domain.clone(),
                    to: target.0,
                    message: Some(format!("back to {}", target.0.short())),
                });
                // A rollback names its target among its parents.
                self.write(a, payload, &[target], Expected::Applied);
            }
            Action::ForkDevice => {
                // The same key on a second device, which has seen what the
                // first has; from now on both sign on top of what they see.
                self.forked = true;
                let mut device = self.authors[a].clone();
                device.label = format!("{}-device2", device.label);
                device.skew_millis = self.rng.random_range(-5_000..5_000);
                self.authors.push(device);
                self.operate(a);
            }
            Action::WriteUnknownKind => self.intrude(a),
            Action::RequestRenewal => {
                let payload = Payload::CertificateRenewalRequested(CertificateRenewalRequested {
                    name: format!("site{}.example", self.rng.random_range(0..4)),
                });
                self.write(a, payload, &[], Expected::Applied);
            }
        }
    }

    fn edit_config(&mut self, a: usize) {
        let mut wanted = self.authors[a].merged_config().view().unwrap_or_default();
        let summary = mutate_config(&mut self.rng, &mut wanted);
        let payload = self.config_payload(a, wanted, summary);
        let expected = if self.authors[a].is_operator() && !self.authors[a].intruding {
            Expected::Applied
        } else {
            Expected::Unauthorized
        };
        self.write(a, payload, &[], expected);
    }

    fn config_payload(&mut self, a: usize, wanted: DesiredConfig, summary: String) -> Payload {
        // Unique to the edit (one per event) without drawing from the rng,
        // so that every seed's history stays as it was.
        let nonce = (self.history.events.len() as u128).to_le_bytes();
        let author = &mut self.authors[a];
        let key = author.key();
        let changes = author
            .merged_config()
            .edit(&key, nonce, &wanted)
            .expect("a typed configuration always reconciles");
        Payload::ConfigChanged(ConfigChanged { changes, summary })
    }

    /// Writes something the author may not, and marks it an intruder.
    fn intrude(&mut self, a: usize) {
        self.authors[a].intruding = true;
        if self.authors[a].is_operator() {
            // An operator on a newer version: a kind this one does not know.
            let payload = unknown_payload(&mut self.rng);
            self.write(a, payload, &[], Expected::Unauthorized);
            return;
        }
        let seen = &self.authors[a].seen;
        let payload = match self.rng.random_range(0..8) {
            0 => Payload::OperatorAdded(OperatorAdded {
                name: "mallory".into(),
                key: self.authors[a].key(),
            }),
            1 => Payload::OperatorRemoved(OperatorRemoved {
                key: self.genesis_operator,
            }),
            2 => {
                let name = NodeName::new("impostor").expect("a valid label");
                join_payload(&mut self.rng, seen, name, self.authors[a].key())
            }
            3 => peer_payload(&mut self.rng, seen, 999),
            4 => publish_payload(&mut self.rng),
            5 if !self.authors[a].is_node() => reseal_payload(&mut self.rng),
            6 => unknown_payload(&mut self.rng),
            _ => return self.edit_config(a),
        };
        self.write(a, payload, &[], Expected::Unauthorized);
    }

    /// A new author (operator or node) that has seen what its creator has.
    fn spawn(&mut self, creator: usize, label: String, role: Role, key: SigningKey) {
        let mut author = self.authors[creator].clone();
        author.label = label;
        author.role = role;
        author.writer = FeedWriter::new(key);
        author.skew_millis = if self.rng.random_bool(0.1) {
            // A machine an hour behind: its clock follows its parents.
            -3_600_000
        } else {
            self.rng.random_range(-3_000..3_000)
        };
        author.intruding = false;
        self.authors.push(author);
    }

    fn write(
        &mut self,
        a: usize,
        payload: Payload,
        extra_parents: &[(EventId, Hlc)],
        expected: Expected,
    ) {
        let now = self
            .now_millis
            .saturating_add_signed(self.authors[a].skew_millis);
        let author = &mut self.authors[a];
        let mut parents = author.heads();
        parents.extend_from_slice(extra_parents);
        let event = author
            .writer
            .write(payload, &parents, now)
            .expect("generated events are well formed");
        author.learn(&event, expected);
        let h = &mut self.history;
        h.index.insert(event.id(), h.events.len());
        h.events.push(event);
        h.expected.push(expected);
        h.writers.push(author.label.clone());
    }
}

fn random_bytes<const N: usize>(rng: &mut impl Rng) -> [u8; N] {
    let mut out = [0u8; N];
    rng.fill(&mut out[..]);
    out
}

fn txt_record(value: &str, ttl: Option<u32>) -> RecordConfig {
    RecordConfig {
        rtype: "TXT".into(),
        name: "@".into(),
        value: value.into(),
        ttl,
        priority: None,
    }
}

/// A mesh address as an operator would pick it from what it has seen:
/// mostly the lowest free one (so concurrent joins collide), sometimes one
/// already taken, sometimes anything (outside the range included).
fn pick_mesh_addr(rng: &mut impl Rng, seen: &Seen) -> Ipv4Addr {
    let taken: BTreeSet<Ipv4Addr> = seen.mesh_requested.values().copied().collect();
    let range = seen
        .mesh_range
        .unwrap_or_else(|| Ipv4Net::new(MESH_NETWORK, 24).expect("a valid range"));
    let lowest_free = range.hosts().find(|h| !taken.contains(h));
    match rng.random_range(0..20) {
        0..14 => lowest_free.unwrap_or(range.network),
        14..17 => {
            let taken: Vec<_> = taken.into_iter().collect();
            taken
                .choose(rng)
                .copied()
                .or(lowest_free)
                .unwrap_or(range.network)
        }
        _ => Ipv4Addr::new(198, 51, 100, rng.random()),
    }
}

fn join_payload(
    rng: &mut impl Rng,
    seen: &Seen,
    name: NodeName,
    signing_key: AuthorKey,
) -> Payload {
    let public = Ipv4Addr::new(203, 0, 113, rng.random_range(1..255));
    Payload::NodeJoined(NodeJoined {
        name,
        signing_key,
        sealing_key: SealingKey(random_bytes(rng)),
        wg_public_key: WgPublicKey(random_bytes(rng)),
        ipv4: rng.random_bool(0.9).then_some(public),
        ipv6: rng
            .random_bool(0.5)
            .then(|| Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, rng.random())),
        ssh: SshTarget {
            user: "root".into(),
            host: public.to_string(),
            port: if rng.random_bool(0.8) { 22 } else { 2222 },
        },
        coordinates: Coordinates {
            lat_e6: rng.random_range(-90_000_000..=90_000_000),
            lon_e6: rng.random_range(-180_000_000..=180_000_000),
        },
        nameserver: rng.random_bool(0.5),
        mesh_addr: pick_mesh_addr(rng, seen),
    })
}

fn peer_payload(rng: &mut impl Rng, seen: &Seen, n: usize) -> Payload {
    let name = if rng.random_bool(0.2) {
        format!("o11y-{n}")
    } else {
        format!("peer-{n}")
    };
    Payload::ExternalPeerAdded(ExternalPeerAdded {
        name: PeerName::new(name).expect("generated peer names are valid labels"),
        wg_public_key: WgPublicKey(random_bytes(rng)),
        endpoint: format!("203.0.113.{}:51820", rng.random_range(1..255)),
        wg_address: rng.random_bool(0.5).then(|| pick_mesh_addr(rng, seen)),
    })
}

fn publish_payload(rng: &mut impl Rng) -> Payload {
    let files = rng.random_range(1..200);
    Payload::SitePublished(SitePublished {
        domain: DomainName::new(*DOMAINS.choose(rng).expect("not empty"))
            .expect("listed domains are valid"),
        manifest: BlobRef {
            hash: Blake3Hash(random_bytes(rng)),
            size: rng.random_range(100..100_000),
        },
        summary: ChangeSummary {
            files,
            added: rng.random_range(0..=files),
            changed: rng.random_range(0..=files),
            removed: rng.random_range(0..10),
            bytes: rng.random_range(1_000..10_000_000),
        },
        message: rng
            .random_bool(0.5)
            .then(|| format!("deploy {}", rng.random_range(0..1000))),
    })
}

fn reseal_payload(rng: &mut impl Rng) -> Payload {
    Payload::SecretResealed(SecretResealed {
        secret: Blake3Hash(random_bytes(rng)),
        recipient: Recipient {
            node: SealingKey(random_bytes(rng)),
            ephemeral: random_bytes(rng),
            wrapped_key: random_bytes::<48>(rng).to_vec(),
        },
    })
}

fn challenge_payload(rng: &mut impl Rng) -> Payload {
    let token = rng.random_range(0..6);
    Payload::AcmeChallenge(AcmeChallenge {
        name: format!("site{}.example", rng.random_range(0..4)),
        token: format!("token-{token}"),
        value: format!("token-{token}.{}", rng.random_range(0..1000)),
        dns: rng.random_bool(0.3),
        open: rng.random_bool(0.6),
    })
}

fn certificate_payload(rng: &mut ChaCha20Rng) -> Payload {
    let site = rng.random_range(0..4);
    let key =
        SealedValue::seal(b"key", &[SealingKey(random_bytes(rng))], rng).expect("one recipient");
    Payload::CertificateIssued(CertificateIssued {
        domain: DomainName::new(format!("site{site}.example")).expect("a valid domain"),
        names: vec![format!("site{site}.example")],
        chain_pem: format!("chain {}", rng.random_range(0..1000)),
        key,
        not_after_millis: rng.random_range(1_700_000_000_000..1_900_000_000_000),
        issuer: "Generated CA".into(),
    })
}

fn unknown_payload(rng: &mut impl Rng) -> Payload {
    let len = rng.random_range(0..40);
    Payload::Unknown {
        kind: rng.random_range(1_000..2_000),
        body: (0..len).map(|_| rng.random()).collect(),
    }
}

/// Changes one thing of the configuration, as `maki sync` or `maki config
/// set` would; returns the summary for the event.
fn mutate_config(rng: &mut impl Rng, config: &mut DesiredConfig) -> String {
    let domain = *DOMAINS.choose(rng).expect("not empty");
    match rng.random_range(0..10) {
        0 => {
            let ttl = rng.random_range(1..=86_400);
            config.settings.dns_geo_ttl = Some(ttl);
            format!("set dns.geo_ttl = {ttl}")
        }
        1 => {
            let n = rng.random_range(1..=8);
            config.settings.dns_nearest = Some(n);
            format!("set dns.nearest = {n}")
        }
        2 => {
            let n = rng.random_range(1..=1000);
            config.settings.sites_keep_versions = Some(n);
            format!("set sites.keep_versions = {n}")
        }
        3 => {
            let records = &mut config.domains.entry(domain.into()).or_default().records;
            let key = format!("TXT @ {}", rng.random_range(0..3));
            let value = format!("v={}", rng.random_range(0..1000));
            records.insert(key.clone(), txt_record(&value, None));
            format!("{domain}: record {key} = {value}")
        }
        4 => {
            let records = &mut config.domains.entry(domain.into()).or_default().records;
            let host = rng.random_range(1..255);
            let key = format!("A www {}", rng.random_range(0..2));
            records.insert(
                key.clone(),
                RecordConfig {
                    rtype: "A".into(),
                    name: "www".into(),
                    value: format!("203.0.113.{host}"),
                    ttl: Some(rng.random_range(60..3_600)),
                    priority: None,
                },
            );
            format!("{domain}: record {key}")
        }
        5 => {
            // One field of one record: concurrent edits of other fields merge.
            let ttl = rng.random_range(60..86_400);
            match config
                .domains
                .get_mut(domain)
                .and_then(|d| d.records.values_mut().next())
            {
                Some(record) => {
                    record.ttl = Some(ttl);
                    format!("{domain}: ttl {ttl} on one record")
                }
                None => {
                    config.settings.dns_geo_ttl = Some(ttl);
                    format!("set dns.geo_ttl = {ttl}")
                }
            }
        }
        6 => {
            let records = &mut config.domains.entry(domain.into()).or_default().records;
            match records.keys().next().cloned() {
                Some(key) => {
                    records.remove(&key);
                    format!("{domain}: removed record {key}")
                }
                None => format!("{domain}: added"),
            }
        }
        7 => {
            let alias = format!(
                "{}.{domain}",
                ["www", "blog", "docs"][rng.random_range(0..3)]
            );
            let aliases = &mut config.domains.entry(domain.into()).or_default().aliases;
            if !aliases.contains(&alias) {
                aliases.push(alias.clone());
            }
            format!("{domain}: alias {alias}")
        }
        8 => {
            let path = format!("/api/{}", rng.random_range(0..3));
            let env: SealedEnv =
                BTreeMap::from([("TOKEN".into(), hex::encode(random_bytes::<24>(rng)))]);
            let functions = &mut config.domains.entry(domain.into()).or_default().functions;
            functions.retain(|f| f.path != path);
            functions.push(FunctionConfig {
                path: path.clone(),
                methods: vec!["GET".into()],
                env,
                timeout_ms: Some(rng.random_range(100..5_000)),
                max_memory_mb: None,
            });
            format!("{domain}: function {path}")
        }
        _ => {
            if domain != DOMAINS[0] && config.domains.remove(domain).is_some() {
                format!("removed domain {domain}")
            } else {
                let ratio = f64::from(rng.random_range(0..=10u32)) / 10.0;
                config.o11y.otlp_endpoint = Some("http://o11y:4317".into());
                config.o11y.sampling_ratio = Some(ratio);
                format!("o11y sampling {ratio}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_generates_the_same_history_every_time() {
        for seed in [1, 2, 3, 400] {
            let first = History::for_seed(seed, 400);
            let again = History::for_seed(seed, 400);
            assert_eq!(first.bytes(), again.bytes(), "seed {seed}");
            assert_eq!(first.expected, again.expected, "seed {seed}");
        }
    }

    #[test]
    fn what_an_author_has_seen_is_the_causal_past_of_what_it_writes() {
        let history = History::for_seed(7, 0);
        for (i, e) in history.events().iter().enumerate() {
            // Written in a topological order: every parent came before.
            for p in e.parents() {
                assert!(history.position(p) < i, "{e:?} names a later parent");
            }
        }
    }
}
