//! A deterministic, realistic cluster history to benchmark against.
//!
//! The history opens like a real cluster: a genesis by the first operator,
//! the other operators and the nodes added by it, and a first configuration
//! that declares every domain. After that it is mostly `site-published`
//! events (the common write: `maki sync`) by the operators across the
//! domains, with a `config-changed` event made by [`ConfigDoc::edit`] every
//! so often. Each event names its author's previous event and the latest
//! event of one other operator as parents, so feeds interleave like those of
//! operators who sync against each other.
//!
//! The last [`Spec::split_tail`] events are two concurrent branches, as after
//! a partition: operators of the first half only see side A, the others only
//! side B. A log holding the common part plus one side differs from one
//! holding the other side by exactly those events (see `reconcile`).
//!
//! Everything is drawn from one seeded RNG and a synthetic clock, so the same
//! [`Spec`] always yields the same bytes; that is what makes the `/tmp`
//! cache of [`Workload::load_or_generate`] safe.

use std::fs;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use makiatto_events::payload::{
    BlobRef, ChangeSummary, ConfigChanged, Coordinates, Genesis, Ipv4Net, NodeJoined,
    OperatorAdded, SitePublished, SshTarget,
};
use makiatto_events::{
    AuthorKey, Blake3Hash, DomainName, Event, EventId, FeedWriter, Hlc, NodeName, Payload,
    SealingKey, SigningKey, WgPublicKey,
};
use makiatto_projections::config::{ConfigDoc, DesiredConfig, DomainConfig, RecordConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// The shape of a generated history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// Events in total, setup included.
    pub events: usize,
    /// Operator keys (the authors of site versions and configuration).
    pub operators: usize,
    /// Nodes added by the first operator (they author nothing here).
    pub nodes: usize,
    /// Domains that site versions are published to.
    pub domains: usize,
    /// One `config-changed` event per this many events (0: none after setup).
    pub config_every: usize,
    /// How many final events form two concurrent branches (0: none).
    pub split_tail: usize,
    pub seed: u64,
}

impl Spec {
    /// A small cluster: 8 operator devices, 6 nodes, 12 domains, a config
    /// change every 1,000 events.
    pub fn cluster(events: usize) -> Spec {
        Spec {
            events,
            operators: 8,
            nodes: 6,
            domains: 12,
            config_every: 1_000,
            split_tail: 0,
            seed: 0x6d61_6b69,
        }
    }

    /// The million-event history that `rebuild` and `reconcile` share (and
    /// so one cache file): [`Spec::cluster`] ending in two branches of 500
    /// events each.
    pub fn million() -> Spec {
        Spec {
            split_tail: 1_000,
            ..Spec::cluster(1_000_000)
        }
    }
}

/// Which part of the history an event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Side {
    /// Before the split: every log holds it.
    Common = 0,
    /// The branch written by the first half of the operators.
    A = 1,
    /// The branch written by the second half.
    B = 2,
}

/// A generated history: canonical event bytes in causal (generation) order.
pub struct Workload {
    pub events: Vec<Vec<u8>>,
    pub sides: Vec<Side>,
}

impl Workload {
    /// Generates the history. Signing dominates: 30–45 µs an event here,
    /// so about 45 s for a million.
    pub fn generate(spec: Spec) -> Workload {
        Generator::new(spec).run()
    }

    /// The history from a cache file under the system temp directory, or
    /// generated (and cached) when there is none. The cache is named by the
    /// whole spec and a format version, never kept in the repository.
    pub fn load_or_generate(spec: Spec) -> io::Result<Workload> {
        let path = cache_path(&spec);
        if let Ok(file) = fs::File::open(&path)
            && let Ok(workload) = read_cache(BufReader::new(file))
            && workload.events.len() == spec.events
        {
            return Ok(workload);
        }
        let workload = Workload::generate(spec);
        fs::create_dir_all(path.parent().unwrap_or(&std::env::temp_dir()))?;
        let tmp = path.with_extension("partial");
        let mut out = BufWriter::new(fs::File::create(&tmp)?);
        for (bytes, side) in workload.events.iter().zip(&workload.sides) {
            out.write_all(&[*side as u8])?;
            out.write_all(&(bytes.len() as u32).to_le_bytes())?;
            out.write_all(bytes)?;
        }
        out.into_inner()?.sync_all()?;
        fs::rename(&tmp, &path)?;
        Ok(workload)
    }

    /// The total size of the canonical bytes.
    pub fn bytes(&self) -> usize {
        self.events.iter().map(Vec::len).sum()
    }
}

/// Bump when the generator changes what it writes.
const CACHE_FORMAT: u32 = 1;

fn cache_path(spec: &Spec) -> PathBuf {
    let Spec {
        events,
        operators,
        nodes,
        domains,
        config_every,
        split_tail,
        seed,
    } = spec;
    std::env::temp_dir().join("makiatto-benches").join(format!(
        "history-v{CACHE_FORMAT}-{events}e-{operators}o-{nodes}n-{domains}d-{config_every}c-{split_tail}t-{seed:x}.bin"
    ))
}

fn read_cache(mut input: impl Read) -> io::Result<Workload> {
    let (mut events, mut sides) = (Vec::new(), Vec::new());
    let mut head = [0u8; 5];
    loop {
        match input.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
        let [side, len @ ..] = head;
        sides.push(match side {
            0 => Side::Common,
            1 => Side::A,
            2 => Side::B,
            _ => return Err(io::Error::new(io::ErrorKind::InvalidData, "bad side")),
        });
        let mut bytes = vec![0; u32::from_le_bytes(len) as usize];
        input.read_exact(&mut bytes)?;
        events.push(bytes);
    }
    Ok(Workload { events, sides })
}

/// One operator device: its feed and the latest event it wrote, per branch.
struct Operator {
    writer: FeedWriter,
    head: Option<(EventId, Hlc)>,
}

struct Generator {
    spec: Spec,
    rng: ChaCha20Rng,
    now_millis: u64,
    operators: Vec<Operator>,
    domains: Vec<DomainName>,
    config: ConfigDoc,
    wanted: DesiredConfig,
    /// The last setup event: every operator's first event names it, so the
    /// roles that authorize the operator are in its causal past.
    setup_tip: (EventId, Hlc),
    out: Workload,
}

impl Generator {
    fn new(spec: Spec) -> Generator {
        let mut rng = ChaCha20Rng::seed_from_u64(spec.seed);
        let operators = (0..spec.operators)
            .map(|_| Operator {
                writer: FeedWriter::new(SigningKey::generate(&mut rng)),
                head: None,
            })
            .collect();
        let domains = (0..spec.domains)
            .map(|i| DomainName::new(format!("site-{i}.example.com")).expect("a valid domain"))
            .collect();
        Generator {
            spec,
            rng,
            // 2026-09-24, stepped forward by up to two seconds per event.
            now_millis: 1_790_000_000_000,
            operators,
            domains,
            config: ConfigDoc::default(),
            wanted: DesiredConfig::default(),
            setup_tip: (EventId([0; 32]), Hlc::default()),
            out: Workload {
                events: Vec::with_capacity(spec.events),
                sides: Vec::with_capacity(spec.events),
            },
        }
    }

    fn run(mut self) -> Workload {
        self.setup();
        let split_at = self.spec.events.saturating_sub(self.spec.split_tail);
        while self.out.events.len() < self.spec.events {
            let index = self.out.events.len();
            let side = if index < split_at {
                Side::Common
            } else if (index - split_at).is_multiple_of(2) {
                Side::A
            } else {
                Side::B
            };
            let author = self.pick_author(side);
            let config_due =
                self.spec.config_every > 0 && index.is_multiple_of(self.spec.config_every);
            let payload = if config_due && side == Side::Common {
                self.config_change(author)
            } else {
                self.site_published(index)
            };
            let parents = self.parents_for(author, side);
            self.write(author, payload, &parents, side);
        }
        self.out
    }

    /// Genesis, the other operators, the nodes and the first configuration,
    /// each on top of the one before, all by the first operator.
    fn setup(&mut self) {
        let first = self.operators[0].writer.author();
        self.write(
            0,
            Payload::Genesis(Genesis {
                cluster_name: "bench".into(),
                operator_name: "op-0".into(),
                operator: first,
                mesh_range: Ipv4Net::new(Ipv4Addr::new(10, 44, 0, 0), 16).expect("a /16"),
            }),
            &[],
            Side::Common,
        );
        for i in 1..self.spec.operators {
            let key = self.operators[i].writer.author();
            let payload = Payload::OperatorAdded(OperatorAdded {
                name: format!("op-{i}"),
                key,
            });
            self.write_on_head(payload);
        }
        for i in 0..self.spec.nodes {
            let payload = Payload::NodeJoined(self.node(i));
            self.write_on_head(payload);
        }
        for (i, domain) in self.domains.clone().iter().enumerate() {
            let mut config = DomainConfig::default();
            config.aliases.push(format!("www.{domain}"));
            config.records.insert(
                "TXT @ 0".into(),
                txt(format!("v=spf1 include:mail-{i}.example.net -all")),
            );
            self.wanted.domains.insert(domain.to_string(), config);
        }
        let payload = self.config_change(0);
        self.write_on_head(payload);
        self.setup_tip = self.operators[0].head.expect("setup wrote events");
    }

    /// An event by the first operator on top of its own last event.
    fn write_on_head(&mut self, payload: Payload) {
        let parents: Vec<_> = self.operators[0].head.into_iter().collect();
        self.write(0, payload, &parents, Side::Common);
    }

    fn write(&mut self, author: usize, payload: Payload, parents: &[(EventId, Hlc)], side: Side) {
        self.now_millis += self.rng.random_range(1..2_000);
        let event = self.operators[author]
            .writer
            .write(payload, parents, self.now_millis)
            .expect("generated events are valid");
        self.operators[author].head = Some((event.id(), event.hlc()));
        self.out.events.push(event.into_bytes());
        self.out.sides.push(side);
    }

    /// Any operator before the split; after it, one from the side's half.
    fn pick_author(&mut self, side: Side) -> usize {
        let half = self.spec.operators / 2;
        match side {
            Side::Common => self.rng.random_range(0..self.spec.operators),
            Side::A => self.rng.random_range(0..half),
            Side::B => self.rng.random_range(half..self.spec.operators),
        }
    }

    /// The author's previous event is added by its `FeedWriter`; besides it,
    /// the latest event of another operator of the same side (or the setup
    /// tip for an operator's first event), so the roles are in its past.
    fn parents_for(&mut self, author: usize, side: Side) -> Vec<(EventId, Hlc)> {
        if self.operators[author].head.is_none() {
            return vec![self.setup_tip];
        }
        let other = self.pick_author(side);
        match self.operators[other].head {
            Some(head) if other != author => vec![head],
            _ => Vec::new(),
        }
    }

    fn site_published(&mut self, index: usize) -> Payload {
        let rng = &mut self.rng;
        let files = rng.random_range(20..5_000);
        let mut hash = [0u8; 32];
        rng.fill(&mut hash);
        Payload::SitePublished(SitePublished {
            domain: self.domains[rng.random_range(0..self.domains.len())].clone(),
            manifest: BlobRef {
                hash: Blake3Hash(hash),
                size: files * rng.random_range(60..120),
            },
            summary: ChangeSummary {
                files,
                added: rng.random_range(0..20),
                changed: rng.random_range(0..50),
                removed: rng.random_range(0..5),
                bytes: files * rng.random_range(2_000..60_000),
            },
            message: rng.random_bool(0.7).then(|| {
                format!(
                    "deploy #{index}: {:08x} from ci ({} pages rebuilt)",
                    rng.random::<u32>(),
                    rng.random_range(1..200)
                )
            }),
        })
    }

    /// Edits one record (or the geo TTL) of the desired configuration and
    /// returns the automerge changes as a `config-changed` payload.
    fn config_change(&mut self, author: usize) -> Payload {
        let version = self.out.events.len();
        let summary = if self.rng.random_bool(0.2) {
            let ttl = self.rng.random_range(30..300);
            self.wanted.settings.dns_geo_ttl = Some(ttl);
            format!("set dns.geo_ttl = {ttl}")
        } else {
            let domain = &self.domains[self.rng.random_range(0..self.domains.len())];
            let entry = self.wanted.domains.entry(domain.to_string()).or_default();
            entry.records.insert(
                "TXT _verify 0".into(),
                RecordConfig {
                    name: "_verify".into(),
                    ..txt(format!("verification={version:016x}"))
                },
            );
            format!("set TXT _verify.{domain}")
        };
        let actor: AuthorKey = self.operators[author].writer.author();
        let changes = self
            .config
            .edit(&actor, (version as u128).to_le_bytes(), &self.wanted)
            .expect("the generated configuration reconciles");
        Payload::ConfigChanged(ConfigChanged { changes, summary })
    }

    fn node(&mut self, i: usize) -> NodeJoined {
        let mut random32 = || {
            let mut bytes = [0u8; 32];
            self.rng.fill(&mut bytes);
            bytes
        };
        let signing_key = AuthorKey(random32());
        let sealing_key = SealingKey(random32());
        let wg_public_key = WgPublicKey(random32());
        let octet = u8::try_from(i + 10).expect("fewer than 240 nodes");
        NodeJoined {
            name: NodeName::new(format!("node-{i}")).expect("a valid node name"),
            signing_key,
            sealing_key,
            wg_public_key,
            ipv4: Some(Ipv4Addr::new(203, 0, 113, octet)),
            ipv6: None,
            ssh: SshTarget {
                user: "root".into(),
                host: format!("203.0.113.{octet}"),
                port: 22,
            },
            coordinates: Coordinates::from_degrees(
                self.rng.random_range(-60.0..60.0),
                self.rng.random_range(-180.0..180.0),
            )
            .expect("in range"),
            nameserver: i < 2,
            mesh_addr: Ipv4Addr::new(10, 44, 0, octet),
        }
    }
}

fn txt(value: String) -> RecordConfig {
    RecordConfig {
        rtype: "TXT".into(),
        name: "@".into(),
        value,
        ttl: Some(300),
        priority: None,
    }
}

/// Decodes generated bytes (trusted: this process signed them).
pub fn decode_all(events: &[Vec<u8>]) -> Vec<Event> {
    events
        .iter()
        .map(|b| Event::decode_trusted(b).expect("generated events decode"))
        .collect()
}
