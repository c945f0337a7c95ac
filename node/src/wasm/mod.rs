//! WebAssembly at the edge: `makiatto:http` handlers answering their
//! routes, and `makiatto:transform` components rewriting files as they
//! are served, on wasmtime (components, WASI preview 2).
//!
//! # Layout
//! - [`bindings`]: the Rust side of the WIT packages in `wit/`.
//! - [`engine`]: the engine (pooling allocator, epoch clock) and the
//!   compiled components kept on disk by blob hash.
//! - [`sandbox`]: what a call may touch: the read-only tree, its env, its
//!   memory, its outgoing connections.
//! - [`destination`]: which addresses a component may connect to (pure).
//! - [`outgoing`]: the wasi:http sender and the call's outgoing budget.
//! - [`route`]: which function answers a path, and its methods (pure).
//! - [`tree`]: a version's files as a tree of hard links, the sandbox's `/`.
//!
//! [`Wasm`] is the service the HTTP edge asks. A component is compiled
//! once per blob hash, on the [`WorkPool`], when a version that runs it
//! arrives ([`Wasm::prepare_version`]; the edge switches to the version
//! once that is done) or when it is configured anew; kept on disk, and
//! linked once ([`InstancePre`](wasmtime::component::InstancePre)), so a
//! request pays an instantiation from the pool and its own run. No
//! component code runs on a serving thread: every call is a job of the
//! work pool, whose queue limit answers 503. A guest that loops is stopped
//! by epoch interruption, one that asks for too much memory by the store's
//! limiter; either way the request gets its status and a request id, the
//! log a line, and the node goes on serving.

pub mod bindings;
pub mod destination;
pub mod engine;
pub mod outgoing;
pub mod route;
pub mod sandbox;
pub mod tree;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use makiatto_events::{Blake3Hash, Recipient, SealingSecret, SecretId};
use makiatto_projections::config::{DomainConfig, FunctionConfig, Settings, TransformConfig};
use wasmtime::component::Linker;
use wasmtime::{Engine, Store};

use crate::blobs::BlobStore;
use crate::telemetry::http::Served;
use crate::telemetry::wasm as telemetry;
use crate::work_pool::WorkPool;
use destination::Destinations;
use route::HandlerMethod;
use sandbox::{Grant, Sandbox};

/// The node a component runs on (the WIT `node-context`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeInfo {
    pub name: String,
    pub latitude: f64,
    pub longitude: f64,
}

/// The cluster's limits on calls (`wasm.*` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub timeout: Duration,
    pub max_timeout: Duration,
    pub memory_mb: u32,
    pub max_memory_mb: u32,
    /// Calls of one function running or queued at once.
    pub concurrency: u32,
    pub outgoing_calls: u32,
    /// The largest request body a handler is given (413 beyond).
    pub max_request_bytes: usize,
    /// How long reading the request body may take (408 beyond).
    pub body_timeout: Duration,
}

impl Limits {
    pub fn from_settings(s: &Settings) -> Limits {
        Limits {
            timeout: Duration::from_millis(s.number("wasm.timeout_ms").into()),
            max_timeout: Duration::from_millis(s.number("wasm.max_timeout_ms").into()),
            memory_mb: s.number("wasm.memory_mb"),
            max_memory_mb: s.number("wasm.max_memory_mb"),
            concurrency: s.number("wasm.concurrency"),
            outgoing_calls: s.number("wasm.outgoing_calls"),
            max_request_bytes: s.number("wasm.max_request_kb") as usize * 1024,
            body_timeout: Duration::from_millis(s.number("wasm.body_timeout_ms").into()),
        }
    }

    /// A component's timeout: its own, else the default, at most the cap.
    fn timeout(&self, own: Option<u64>) -> Duration {
        own.map_or(self.timeout, Duration::from_millis)
            .min(self.max_timeout)
    }

    /// A component's memory in bytes: its own, else the default, at most
    /// the cap (and the engine's slot).
    fn memory(&self, own: Option<u64>) -> usize {
        let mb = own
            .unwrap_or(self.memory_mb.into())
            .min(self.max_memory_mb.into());
        (mb as usize * (1 << 20)).min(engine::MAX_MEMORY_BYTES)
    }
}

/// A component's env values, opened: held in memory only, and never
/// printed (`Debug` shows the names).
#[derive(Clone, Default)]
pub struct Env(Arc<[(String, String)]>);

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, _)| (k, "<redacted>")))
            .finish()
    }
}

/// A configured function, its env opened.
#[derive(Debug)]
pub struct Function {
    /// The component's path in the site directory (its key in the
    /// manifest's component section).
    pub path: String,
    pub route: String,
    pub methods: Vec<HandlerMethod>,
    env: Env,
    timeout: Duration,
    memory: usize,
}

impl Function {
    /// Whether the function may be called with `m` (every WIT method when
    /// the configuration names none).
    pub fn allows(&self, m: HandlerMethod) -> bool {
        self.methods.is_empty() || self.methods.contains(&m)
    }
}

/// A configured transform, its env opened.
#[derive(Debug)]
pub struct Transform {
    pub path: String,
    glob: globset::GlobMatcher,
    env: Env,
    timeout: Duration,
    memory: usize,
    max_file_size: Option<u64>,
    /// What the transform cache's key covers besides the component: env
    /// (hashed), limits.
    fingerprint: Blake3Hash,
}

/// One domain's functions and transforms.
#[derive(Debug, Default)]
pub struct DomainWasm {
    /// Longest route first.
    pub functions: Vec<Function>,
    /// In configuration order.
    pub transforms: Vec<Transform>,
}

impl Transform {
    /// What the transform cache's key covers besides the component.
    pub fn fingerprint(&self) -> Blake3Hash {
        self.fingerprint
    }
}

impl DomainWasm {
    /// The transforms applying to a file, in configuration order.
    pub fn chain(&self, path: &str) -> Vec<&Transform> {
        self.transforms
            .iter()
            .filter(|t| t.glob.is_match(path))
            .collect()
    }

    /// The function answering `path`.
    pub fn function(&self, path: &str) -> Option<&Function> {
        self.functions
            .iter()
            .find(|f| route::matches(&f.route, path))
    }
}

/// What the service's configuration is made from: a rebuild with the
/// same inputs changes nothing (and opens no env value again).
#[derive(Debug, Clone, PartialEq)]
struct Inputs {
    node: NodeInfo,
    limits: Limits,
    mesh: Option<makiatto_events::payload::Ipv4Net>,
    domains: BTreeMap<String, (Vec<FunctionConfig>, Vec<TransformConfig>)>,
    /// The `secret-resealed` entries for this node (a node that joined
    /// after an env value was sealed opens it with one).
    resealed: BTreeMap<SecretId, Recipient>,
}

/// What the service knows of the cluster.
#[derive(Debug, Default)]
struct Configured {
    inputs: Option<Inputs>,
    /// Env values this node could not open.
    env_unopened: u64,
    node: NodeInfo,
    limits: Option<Limits>,
    destinations: Destinations,
    domains: HashMap<String, Arc<DomainWasm>>,
}

/// Which world a component was linked as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Handler,
    Transformer,
}

/// A component linked, ready to instantiate.
#[derive(Clone)]
struct Ready {
    pre: Pre,
    /// Whether it imports `wasi:filesystem`: one that does not cannot see
    /// the version's tree, so its calls skip opening it.
    reads_files: bool,
}

#[derive(Clone)]
enum Pre {
    Handler(bindings::http::HttpPre<Sandbox>),
    Transformer(bindings::transform::TransformPre<Sandbox>),
}

type Preparing = Arc<tokio::sync::OnceCell<Result<Ready, Arc<str>>>>;

/// What one call is granted, owned (the pool's job takes it along).
struct Granted {
    /// (domain, component path), for the log.
    caller: (Arc<str>, Arc<str>),
    root: Option<Arc<PathBuf>>,
    env: Env,
    timeout: Duration,
    memory: usize,
    destinations: Destinations,
    outgoing_calls: u32,
}

/// The site version a call runs for: its domain and manifest.
#[derive(Debug, Clone, Copy)]
pub struct Deployed<'a> {
    pub domain: &'a str,
    pub manifest: &'a makiatto_events::Manifest,
    pub manifest_hash: Blake3Hash,
}

/// Why a call gave no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("the component {0} is not part of the deployed version")]
    NotDeployed(String),
    #[error("too many calls of this function at once (wasm.concurrency)")]
    Concurrency,
    #[error("the CPU pool is busy")]
    Busy,
    #[error("the component cannot run: {0}")]
    Unusable(Arc<str>),
    #[error("the component ran out of time ({0:?})")]
    Timeout(Duration),
    #[error("the component went over its memory limit")]
    Memory,
    #[error("the component trapped: {0}")]
    Trap(String),
}

impl CallError {
    /// Its outcome's name in telemetry (`makiatto.wasm.outcome`), and
    /// what it says.
    pub fn failure(&self) -> (&'static str, String) {
        let name = match self {
            CallError::NotDeployed(_) => "not_deployed",
            CallError::Concurrency => "concurrency",
            CallError::Busy => "busy",
            CallError::Unusable(_) => "unusable",
            CallError::Timeout(_) => "timeout",
            CallError::Memory => "memory",
            CallError::Trap(_) => "trap",
        };
        (name, self.to_string())
    }
}

/// Calls answered, by outcome, for `makiatto health`.
#[derive(Debug, Default)]
pub struct Counts {
    pub calls: AtomicU64,
    pub failed: AtomicU64,
    pub timeouts: AtomicU64,
    pub refused: AtomicU64,
}

/// The service.
pub struct Wasm {
    engine: Engine,
    /// How a call's memory is made fresh (reported).
    reset: engine::MemoryReset,
    linker: Linker<Sandbox>,
    cache: engine::CompiledCache,
    blobs: Arc<BlobStore>,
    pool: Arc<WorkPool>,
    trees: tree::Trees,
    ready: Mutex<HashMap<(Blake3Hash, Kind), Preparing>>,
    configured: ArcSwap<Configured>,
    /// Calls of each function (domain, path) running or queued.
    running: Mutex<HashMap<(String, String), u32>>,
    secret: Option<SealingSecret>,
    pub counts: Counts,
}

impl Wasm {
    /// Starts the service on `engine` ([`engine::engine`], made before the
    /// daemon drops root: see `daemon::prepare`).
    pub fn start(
        engine: engine::NodeEngine,
        data_dir: &Path,
        blobs: Arc<BlobStore>,
        pool: Arc<WorkPool>,
        secret: Option<SealingSecret>,
    ) -> anyhow::Result<Arc<Wasm>> {
        let engine::NodeEngine { engine, reset } = engine;
        engine::start_clock(&engine)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| anyhow::anyhow!("linking WASI: {e:#}"))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker)
            .map_err(|e| anyhow::anyhow!("linking wasi:http: {e:#}"))?;
        Ok(Arc::new(Wasm {
            cache: engine::CompiledCache::open(data_dir)?,
            trees: tree::Trees::open(data_dir)?,
            engine,
            reset,
            linker,
            blobs,
            pool,
            ready: Mutex::new(HashMap::new()),
            configured: ArcSwap::from_pointee(Configured::default()),
            running: Mutex::new(HashMap::new()),
            secret,
            counts: Counts::default(),
        }))
    }

    /// Follows the configuration: this node's name and place, the limits,
    /// the mesh range, each domain's functions and transforms (env values
    /// opened with this node's sealing key, and its reseal entries, kept
    /// in memory only). Says whether anything changed.
    pub fn configure(
        &self,
        node: NodeInfo,
        settings: &Settings,
        mesh: Option<makiatto_events::payload::Ipv4Net>,
        domains: &BTreeMap<String, DomainConfig>,
        resealed: &BTreeMap<SecretId, Vec<Recipient>>,
    ) -> bool {
        let limits = Limits::from_settings(settings);
        let me = self.secret.as_ref().map(|s| s.public());
        let resealed = resealed
            .iter()
            .filter_map(|(id, entries)| {
                let mine = entries.iter().find(|r| Some(r.node) == me)?;
                Some((*id, mine.clone()))
            })
            .collect();
        let inputs = Inputs {
            node: node.clone(),
            limits,
            mesh,
            domains: domains
                .iter()
                .filter(|(_, d)| !d.functions.is_empty() || !d.transforms.is_empty())
                .map(|(n, d)| (n.clone(), (d.functions.clone(), d.transforms.clone())))
                .collect(),
            resealed,
        };
        if self.configured.load().inputs.as_ref() == Some(&inputs) {
            return false;
        }
        let mut out = HashMap::new();
        let mut unopened = 0;
        for (name, (functions, transforms)) in &inputs.domains {
            let d = self.domain(name, functions, transforms, &limits, &inputs.resealed);
            let configured: usize = functions
                .iter()
                .map(|f| f.env.len())
                .chain(transforms.iter().map(|t| t.env.len()))
                .sum();
            let opened: usize = d
                .functions
                .iter()
                .map(|f| f.env.0.len())
                .chain(d.transforms.iter().map(|t| t.env.0.len()))
                .sum();
            unopened += configured.saturating_sub(opened) as u64;
            out.insert(name.clone(), Arc::new(d));
        }
        self.configured.store(Arc::new(Configured {
            inputs: Some(inputs),
            env_unopened: unopened,
            node,
            limits: Some(limits),
            destinations: Destinations { mesh },
            domains: out,
        }));
        true
    }

    fn domain(
        &self,
        domain: &str,
        functions: &[FunctionConfig],
        transforms: &[TransformConfig],
        limits: &Limits,
        resealed: &BTreeMap<SecretId, Recipient>,
    ) -> DomainWasm {
        let mut functions: Vec<Function> = functions
            .iter()
            .map(|f| Function {
                route: route::route_of(&f.path),
                path: f.path.clone(),
                methods: f
                    .methods
                    .iter()
                    .filter_map(|m| HandlerMethod::parse(m))
                    .collect(),
                env: self.open_env(domain, &f.path, &f.env, resealed),
                timeout: limits.timeout(f.timeout_ms),
                memory: limits.memory(f.max_memory_mb),
            })
            .collect();
        functions.sort_by_key(|f| std::cmp::Reverse(f.route.len()));
        let transforms = transforms
            .iter()
            .filter_map(|t| {
                let glob = match globset::Glob::new(&t.files) {
                    Ok(g) => g.compile_matcher(),
                    Err(e) => {
                        tracing::warn!(%domain, transform = %t.path, error = %e, "a transform's glob does not parse; it is skipped");
                        return None;
                    }
                };
                let env = self.open_env(domain, &t.path, &t.env, resealed);
                let timeout = limits.timeout(t.timeout_ms);
                let memory = limits.memory(t.max_memory_mb);
                let mut h = blake3::Hasher::new();
                for (k, v) in env.0.iter() {
                    h.update(&(k.len() as u64).to_le_bytes());
                    h.update(k.as_bytes());
                    h.update(&(v.len() as u64).to_le_bytes());
                    h.update(v.as_bytes());
                }
                h.update(&(timeout.as_millis() as u64).to_le_bytes());
                h.update(&(memory as u64).to_le_bytes());
                h.update(&t.max_file_size_kb.unwrap_or(0).to_le_bytes());
                h.update(t.files.as_bytes());
                Some(Transform {
                    path: t.path.clone(),
                    glob,
                    env,
                    timeout,
                    memory,
                    max_file_size: t.max_file_size_kb.map(|k| k * 1024),
                    fingerprint: Blake3Hash::from(*h.finalize().as_bytes()),
                })
            })
            .collect();
        DomainWasm {
            functions,
            transforms,
        }
    }

    /// Opens a component's sealed env values (with this node's reseal
    /// entries); one this node cannot open is left out, and logged (by
    /// name only).
    fn open_env(
        &self,
        domain: &str,
        path: &str,
        env: &BTreeMap<String, String>,
        resealed: &BTreeMap<SecretId, Recipient>,
    ) -> Env {
        let mut out = Vec::with_capacity(env.len());
        for (name, sealed) in env {
            let opened = self
                .secret
                .as_ref()
                .ok_or("this node has no sealing key")
                .and_then(|secret| {
                    let value = crate::reseal::env_value(sealed)?;
                    let extra: &[Recipient] =
                        resealed.get(&value.id()).map_or(&[], std::slice::from_ref);
                    let plain = value.open(secret, extra).map_err(
                        |_| "not sealed to this node (yet: a node that can reseals it to this one)",
                    )?;
                    String::from_utf8(plain).map_err(|_| "not UTF-8")
                });
            match opened {
                Ok(v) => out.push((name.clone(), v)),
                Err(why) => {
                    tracing::warn!(%domain, component = %path, variable = %name, why, "an env value cannot be opened here; the component runs without it")
                }
            }
        }
        Env(out.into())
    }

    /// The CPU pool the calls run on (also for compressing their answers).
    pub fn pool(&self) -> &Arc<WorkPool> {
        &self.pool
    }

    /// The functions and transforms of `domain`.
    pub fn domain_of(&self, domain: &str) -> Option<Arc<DomainWasm>> {
        self.configured.load().domains.get(domain).cloned()
    }

    /// This node's name (part of a transformed file's key).
    pub fn node_name(&self) -> String {
        self.configured.load().node.name.clone()
    }

    /// Limits of the request path (body size and read time).
    pub fn limits(&self) -> Option<Limits> {
        self.configured.load().limits
    }

    /// The component of `hash`, compiled and linked as `kind`: at most one
    /// compile per hash however many ask, on the work pool.
    async fn ready(&self, hash: Blake3Hash, kind: Kind) -> Result<Ready, CallError> {
        let cell = {
            let Ok(mut ready) = self.ready.lock() else {
                return Err(CallError::Unusable(
                    "the component table is poisoned".into(),
                ));
            };
            ready.entry((hash, kind)).or_default().clone()
        };
        let made = cell
            .get_or_init(|| async {
                let engine = self.engine.clone();
                let linker = self.linker.clone();
                let source = self.blobs.path(&hash);
                let cache = self.cache.dir().to_owned();
                let job = self
                    .pool
                    .submit(move || prepare(&engine, &linker, &cache, hash, &source, kind));
                match job {
                    Ok(rx) => rx
                        .await
                        .unwrap_or_else(|_| Err("the compile job ended".into())),
                    Err(busy) => Err(busy.to_string().into()),
                }
            })
            .await
            .clone();
        if made.is_err() {
            // A later request tries again (the pool may have been full).
            if let Ok(mut ready) = self.ready.lock() {
                ready.remove(&(hash, kind));
            }
        }
        made.map_err(CallError::Unusable)
    }

    /// The components `domain`'s configuration runs from this version,
    /// with the world each is linked as.
    fn wanted(
        &self,
        manifest: &makiatto_events::Manifest,
        domain: &str,
    ) -> Vec<(Blake3Hash, Kind)> {
        let Some(d) = self.domain_of(domain) else {
            return Vec::new();
        };
        d.functions
            .iter()
            .map(|f| (&f.path, Kind::Handler))
            .chain(d.transforms.iter().map(|t| (&t.path, Kind::Transformer)))
            .filter_map(|(p, k)| Some((manifest.components.get(p)?.hash, k)))
            .collect()
    }

    /// Whether the version runs any component here.
    pub fn runs_components(&self, manifest: &makiatto_events::Manifest, domain: &str) -> bool {
        !self.wanted(manifest, domain).is_empty()
    }

    /// Gets a version ready before it is served: compiles (or loads from
    /// disk) and links every component it runs, on the work pool, and
    /// makes its tree. Ends when each is ready or has failed (a component
    /// that cannot run is logged, and answers 500 once served: it does not
    /// hold the version back).
    pub async fn prepare_version(
        self: Arc<Self>,
        manifest_hash: Blake3Hash,
        manifest: Arc<makiatto_events::Manifest>,
        domain: String,
    ) {
        let wanted = self.wanted(&manifest, &domain);
        let started = Instant::now();
        let mut compiles = tokio::task::JoinSet::new();
        for &(hash, kind) in &wanted {
            let this = self.clone();
            let domain = domain.clone();
            compiles.spawn(async move {
                if let Err(e) = this.ready(hash, kind).await {
                    tracing::warn!(%domain, component = %hash, error = %e, "a component of the version cannot run");
                }
            });
        }
        while compiles.join_next().await.is_some() {}
        if !wanted.is_empty() {
            let _ = self.tree(manifest_hash, &manifest).await;
            tracing::info!(
                domain = %domain,
                manifest = %manifest_hash,
                components = wanted.len(),
                millis = started.elapsed().as_millis() as u64,
                "the version's components are compiled"
            );
        }
    }

    fn enter(&self, domain: &str, path: &str, limit: u32) -> Option<Running<'_>> {
        let mut running = self.running.lock().ok()?;
        let n = running
            .entry((domain.to_owned(), path.to_owned()))
            .or_default();
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(Running {
            wasm: self,
            key: (domain.to_owned(), path.to_owned()),
        })
    }

    /// Calls handler `f` of the version whose manifest is `manifest`,
    /// timed and traced as a child of the request `served` answers.
    pub async fn call_handler(
        &self,
        site: Deployed<'_>,
        f: &Function,
        request: bindings::http::Request,
        served: &Served,
    ) -> Result<bindings::http::Response, CallError> {
        let call = telemetry::begin(telemetry::Kind::Handler);
        let out = self.run_handler(site, f, request).await;
        call.end(
            served,
            &f.path,
            out.as_ref().ok().map(|r| r.status),
            out.as_ref().err().map(CallError::failure),
        );
        out
    }

    async fn run_handler(
        &self,
        site: Deployed<'_>,
        f: &Function,
        request: bindings::http::Request,
    ) -> Result<bindings::http::Response, CallError> {
        let configured = self.configured.load_full();
        let limits = configured.limits.ok_or(CallError::Busy)?;
        let (_running, ready) = self
            .component(site, &f.path, Kind::Handler, limits.concurrency)
            .await?;
        let Pre::Handler(pre) = ready.pre else {
            return Err(CallError::Unusable("linked as another world".into()));
        };
        let ctx = bindings::http::NodeContext {
            name: configured.node.name.clone(),
            latitude: configured.node.latitude,
            longitude: configured.node.longitude,
        };
        let grant = Granted {
            caller: (site.domain.into(), f.path.as_str().into()),
            root: if ready.reads_files {
                self.tree(site.manifest_hash, site.manifest).await
            } else {
                None
            },
            env: f.env.clone(),
            timeout: f.timeout,
            memory: f.memory,
            destinations: configured.destinations,
            outgoing_calls: limits.outgoing_calls,
        };
        self.sandboxed(grant, move |store| {
            pre.instantiate(&mut *store)?
                .makiatto_http_handler()
                .call_handle_request(store, &ctx, &request)
        })
        .await
    }

    /// Runs the chain of transforms on a file: each one given the
    /// previous one's output; `None` when no transform matched or every
    /// one passed the file through.
    pub async fn transform(
        &self,
        site: Deployed<'_>,
        chain: &[&Transform],
        info: bindings::transform::FileInfo,
        content: Vec<u8>,
        served: &Served,
    ) -> Result<Option<Transformed>, CallError> {
        let configured = self.configured.load_full();
        let limits = configured.limits.ok_or(CallError::Busy)?;
        let ctx = bindings::transform::NodeContext {
            name: configured.node.name.clone(),
            latitude: configured.node.latitude,
            longitude: configured.node.longitude,
        };
        // The version's tree, made when a stage that reads files first
        // needs it.
        let mut root: Option<Option<Arc<PathBuf>>> = None;
        let mut current = Transformed {
            content,
            mime_type: info.mime_type.clone(),
            headers: Vec::new(),
        };
        let mut changed = false;
        for t in chain {
            if t.max_file_size
                .is_some_and(|max| current.content.len() as u64 > max)
            {
                continue;
            }
            let call = telemetry::begin(telemetry::Kind::Transform);
            let stage = async {
                let (_running, ready) = self
                    .component(site, &t.path, Kind::Transformer, limits.concurrency)
                    .await?;
                let Pre::Transformer(pre) = ready.pre else {
                    return Err(CallError::Unusable("linked as another world".into()));
                };
                let file = bindings::transform::FileInfo {
                    path: info.path.clone(),
                    mime_type: current.mime_type.clone(),
                    size: current.content.len() as u64,
                };
                let input = std::mem::take(&mut current.content);
                let grant = Granted {
                    caller: (site.domain.into(), t.path.as_str().into()),
                    root: if ready.reads_files {
                        match &root {
                            Some(made) => made.clone(),
                            None => root
                                .insert(self.tree(site.manifest_hash, site.manifest).await)
                                .clone(),
                        }
                    } else {
                        None
                    },
                    env: t.env.clone(),
                    timeout: t.timeout,
                    memory: t.memory,
                    destinations: configured.destinations,
                    outgoing_calls: limits.outgoing_calls,
                };
                let ctx = ctx.clone();
                self.sandboxed(grant, move |store| {
                    let out = pre
                        .instantiate(&mut *store)?
                        .makiatto_transform_transformer()
                        .call_transform(store, &ctx, &file, &input)?;
                    Ok((out, input))
                })
                .await
            }
            .await;
            call.end(
                served,
                &t.path,
                None,
                stage.as_ref().err().map(CallError::failure),
            );
            let (result, input) = stage?;
            match result {
                None => current.content = input,
                Some(r) => {
                    changed = true;
                    current.content = r.content;
                    if let Some(m) = r.mime_type {
                        current.mime_type = m;
                    }
                    current.headers.extend(r.headers);
                }
            }
        }
        Ok(changed.then_some(current))
    }

    /// Component `path` of the version, ready to instantiate as `kind`,
    /// with a place among its concurrent calls (held while the guard
    /// lives).
    async fn component(
        &self,
        site: Deployed<'_>,
        path: &str,
        kind: Kind,
        concurrency: u32,
    ) -> Result<(Running<'_>, Ready), CallError> {
        let hash = site
            .manifest
            .components
            .get(path)
            .ok_or_else(|| CallError::NotDeployed(path.to_owned()))?
            .hash;
        let running = self
            .enter(site.domain, path, concurrency)
            .ok_or_else(|| self.refuse(CallError::Concurrency))?;
        Ok((running, self.ready(hash, kind).await?))
    }

    /// Runs `call` on the CPU pool in a fresh sandbox granted `grant`,
    /// within its time; counted for `makiatto health`.
    async fn sandboxed<T: Send + 'static>(
        &self,
        grant: Granted,
        call: impl FnOnce(&mut Store<Sandbox>) -> wasmtime::Result<T> + Send + 'static,
    ) -> Result<T, CallError> {
        let engine = self.engine.clone();
        let timeout = grant.timeout;
        self.counts.calls.fetch_add(1, Ordering::Relaxed);
        let job = self
            .pool
            // The store goes after the answer: dropping it resets the
            // instance's memory, which the request need not wait for.
            .submit_then_drop(move || {
                let sandbox = Sandbox::new(Grant {
                    caller: grant.caller,
                    root: grant.root.as_deref().map(|p| p.as_path()),
                    env: &grant.env.0,
                    max_memory: grant.memory,
                    destinations: grant.destinations,
                    outgoing_calls: grant.outgoing_calls,
                    deadline: Instant::now() + timeout,
                });
                let mut store = match sandbox {
                    Ok(sandbox) => new_store(&engine, sandbox, timeout),
                    Err(e) => return (Err(CallError::Trap(format!("{e:#}"))), None),
                };
                let out = call(&mut store).map_err(|e| classify(e, &store, timeout));
                (out, Some(store))
            })
            .map_err(|_| self.refuse(CallError::Busy))?;
        let out = rx_within(job, timeout).await;
        self.count(&out);
        out
    }

    /// Counts a call refused for want of room (503).
    fn refuse(&self, e: CallError) -> CallError {
        self.counts.refused.fetch_add(1, Ordering::Relaxed);
        e
    }

    /// What `makiatto health` shows of the service.
    pub fn report(&self) -> makiatto_protocol::health::WasmReport {
        let configured = self.configured.load();
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let components_ready = self.ready.lock().map_or(0, |r| {
            r.values()
                .filter(|cell| cell.get().is_some_and(Result::is_ok))
                .count() as u64
        });
        makiatto_protocol::health::WasmReport {
            functions: configured
                .domains
                .values()
                .map(|d| d.functions.len() as u64)
                .sum(),
            transforms: configured
                .domains
                .values()
                .map(|d| d.transforms.len() as u64)
                .sum(),
            components_ready,
            calls: n(&self.counts.calls),
            failed: n(&self.counts.failed),
            timeouts: n(&self.counts.timeouts),
            refused: n(&self.counts.refused),
            env_unopened: configured.env_unopened,
            memory_reset: Some(self.reset),
        }
    }

    fn count<T>(&self, out: &Result<T, CallError>) {
        match out {
            Ok(_) => {}
            Err(CallError::Timeout(_)) => {
                self.counts.timeouts.fetch_add(1, Ordering::Relaxed);
                self.counts.failed.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.counts.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The version's tree (made on first need, on a blocking thread); none
    /// if it cannot be made (the call then sees no files).
    async fn tree(
        &self,
        manifest_hash: Blake3Hash,
        manifest: &makiatto_events::Manifest,
    ) -> Option<Arc<PathBuf>> {
        if let Some(t) = self.trees.get(&manifest_hash) {
            return Some(t);
        }
        let trees = self.trees.clone();
        let blobs = self.blobs.clone();
        let files: Vec<(String, Blake3Hash)> = manifest
            .files
            .iter()
            .map(|(p, e)| (p.clone(), e.hash))
            .collect();
        match tokio::task::spawn_blocking(move || {
            trees.make(manifest_hash, &files, |h| blobs.path(h))
        })
        .await
        {
            Ok(Ok(t)) => Some(t),
            Ok(Err(e)) => {
                tracing::error!(manifest = %manifest_hash, error = %e, "cannot make the version's tree for components");
                None
            }
            Err(_) => None,
        }
    }

    /// Deletes trees and compiled components no deployed version uses.
    pub fn collect(&self, manifests: &[(Blake3Hash, Arc<makiatto_events::Manifest>)]) {
        let keep_trees: std::collections::HashSet<Blake3Hash> =
            manifests.iter().map(|(h, _)| *h).collect();
        self.trees.collect(&keep_trees);
        let keep: std::collections::HashSet<Blake3Hash> = manifests
            .iter()
            .flat_map(|(_, m)| m.components.values().map(|e| e.hash))
            .collect();
        self.cache.collect(&keep);
    }
}

/// A call of one function counted as running until dropped.
struct Running<'a> {
    wasm: &'a Wasm,
    key: (String, String),
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if let Ok(mut running) = self.wasm.running.lock()
            && let Some(n) = running.get_mut(&self.key)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                running.remove(&self.key);
            }
        }
    }
}

/// A transform chain's output.
#[derive(Debug, Clone)]
pub struct Transformed {
    pub content: Vec<u8>,
    pub mime_type: String,
    pub headers: Vec<(String, String)>,
}

fn new_store(engine: &Engine, sandbox: Sandbox, timeout: Duration) -> Store<Sandbox> {
    let mut store = Store::new(engine, sandbox);
    store.limiter(|s| &mut s.memory);
    store.set_epoch_deadline(engine::ticks(timeout));
    store.epoch_deadline_trap();
    store
}

/// What a failed call was.
fn classify(e: wasmtime::Error, store: &Store<Sandbox>, timeout: Duration) -> CallError {
    if store.data().memory.exceeded {
        return CallError::Memory;
    }
    if let Some(wasmtime::Trap::Interrupt) = e.downcast_ref::<wasmtime::Trap>() {
        return CallError::Timeout(timeout);
    }
    CallError::Trap(format!("{e:#}"))
}

/// The job's answer, waited for at most a little past its own timeout (a
/// guest blocked in a host call is not stopped by the epoch; the request
/// is answered anyway and the job ends by its own deadline).
async fn rx_within<T>(
    rx: tokio::sync::oneshot::Receiver<Result<T, CallError>>,
    timeout: Duration,
) -> Result<T, CallError> {
    match tokio::time::timeout(timeout + Duration::from_secs(1), rx).await {
        Ok(Ok(out)) => out,
        Ok(Err(_)) => Err(CallError::Trap(
            "the call's job ended without an answer".into(),
        )),
        Err(_) => Err(CallError::Timeout(timeout)),
    }
}

/// Compiles or loads a component and links it (a job of the work pool).
fn prepare(
    engine: &Engine,
    linker: &Linker<Sandbox>,
    cache: &Path,
    hash: Blake3Hash,
    source: &Path,
    kind: Kind,
) -> Result<Ready, Arc<str>> {
    let component = engine::CompiledCache::at(cache)
        .load(engine, hash, source)
        .map_err(|e| Arc::<str>::from(e.to_string()))?;
    let reads_files = component
        .component_type()
        .imports(engine)
        .any(|(name, _)| name.starts_with("wasi:filesystem/"));
    let pre = linker
        .instantiate_pre(&component)
        .map_err(|e| Arc::<str>::from(format!("component {hash} cannot be linked: {e:#}")))?;
    let pre = match kind {
        Kind::Handler => bindings::http::HttpPre::new(pre)
            .map(Pre::Handler)
            .map_err(|e| format!("component {hash} is no makiatto:http handler: {e:#}"))?,
        Kind::Transformer => bindings::transform::TransformPre::new(pre)
            .map(Pre::Transformer)
            .map_err(|e| format!("component {hash} is no makiatto:transform transformer: {e:#}"))?,
    };
    Ok(Ready { pre, reads_files })
}

#[cfg(test)]
mod tests {
    use super::*;
    use makiatto_events::manifest::FileEntry;

    /// A service over a temporary data directory holding the test
    /// components (built from `node/tests/components/*.wat`), each a
    /// function of `example.test` at `api/<name>.wasm`.
    struct Fixture {
        _dir: tempfile::TempDir,
        wasm: Arc<Wasm>,
        manifest: makiatto_events::Manifest,
    }

    fn fixture(names: &[&str], timeout_ms: Option<u64>) -> Fixture {
        makiatto_harness::build_components();
        let dir = tempfile::tempdir().unwrap();
        let blobs = Arc::new(BlobStore::open(dir.path()).unwrap());
        let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/components");
        let mut manifest = makiatto_events::Manifest::default();
        let mut functions = Vec::new();
        for name in names {
            let bytes = std::fs::read(built.join(format!("{name}.wasm"))).unwrap();
            let hash = Blake3Hash::of(&bytes);
            blobs
                .put(hash, bytes.len() as u64, &mut &bytes[..])
                .unwrap();
            let path = format!("api/{name}.wasm");
            manifest
                .insert_component(
                    path.clone(),
                    FileEntry {
                        hash,
                        size: bytes.len() as u64,
                        content_type: "application/wasm".into(),
                    },
                )
                .unwrap();
            functions.push(FunctionConfig {
                path,
                timeout_ms,
                ..FunctionConfig::default()
            });
        }
        let pool = Arc::new(WorkPool::with_threads(2, 16).unwrap());
        let wasm = Wasm::start(engine::engine().unwrap(), dir.path(), blobs, pool, None).unwrap();
        let domains = [(
            "example.test".to_owned(),
            DomainConfig {
                functions,
                ..DomainConfig::default()
            },
        )]
        .into_iter()
        .collect();
        wasm.configure(
            NodeInfo {
                name: "vector".into(),
                latitude: 51.5,
                longitude: -0.12,
            },
            &Settings::default(),
            None,
            &domains,
            &BTreeMap::new(),
        );
        Fixture {
            _dir: dir,
            wasm,
            manifest,
        }
    }

    fn request(body: Option<Vec<u8>>) -> bindings::http::Request {
        bindings::http::Request {
            method: bindings::http::Method::Post,
            path: "/api/x".into(),
            query: None,
            headers: vec![],
            body,
        }
    }

    async fn call(
        f: &Fixture,
        name: &str,
        body: Option<Vec<u8>>,
    ) -> Result<bindings::http::Response, CallError> {
        let d = f.wasm.domain_of("example.test").unwrap();
        let function = d.function(&format!("/api/{name}")).unwrap();
        f.wasm
            .call_handler(
                Deployed {
                    domain: "example.test",
                    manifest: &f.manifest,
                    manifest_hash: f.manifest.hash(),
                },
                function,
                request(body),
                &Served::default(),
            )
            .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_handler_answers_and_hostile_ones_are_contained() {
        let f = fixture(&["echo", "loop", "memory", "recursion", "huge"], Some(300));
        let ok = call(&f, "echo", Some(b"ping".to_vec())).await.unwrap();
        assert_eq!((ok.status, ok.body.as_deref()), (200, Some(&b"ping"[..])));
        // A tight loop is stopped by the epoch, not waited for.
        let started = Instant::now();
        assert!(matches!(
            call(&f, "loop", None).await,
            Err(CallError::Timeout(_))
        ));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(matches!(
            call(&f, "memory", None).await,
            Err(CallError::Memory)
        ));
        assert!(matches!(
            call(&f, "recursion", None).await,
            Err(CallError::Trap(_))
        ));
        assert!(matches!(
            call(&f, "huge", None).await,
            Err(CallError::Trap(_))
        ));
        // After all that, the service still answers.
        let ok = call(&f, "echo", Some(b"still here".to_vec()))
            .await
            .unwrap();
        assert_eq!(ok.body.as_deref(), Some(&b"still here"[..]));
        assert_eq!(f.wasm.counts.timeouts.load(Ordering::Relaxed), 1);
    }

    /// Instances reuse the pool's memory slots, reset in place (the pages
    /// kept resident): no call sees what an earlier one wrote, in
    /// its first page or in one it grew.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_sees_nothing_of_the_calls_before_it() {
        let f = fixture(&["residue"], None);
        let mut fresh = 1u32.to_le_bytes().to_vec();
        fresh.extend([0u8; 8]);
        for _ in 0..4 {
            let out = call(&f, "residue", None).await.unwrap();
            assert_eq!(out.body.as_deref(), Some(&fresh[..]));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_component_without_filesystem_imports_is_not_given_the_tree() {
        let f = fixture(&["echo"], None);
        let hash = f.manifest.components["api/echo.wasm"].hash;
        let ready = f.wasm.ready(hash, Kind::Handler).await.unwrap();
        assert!(!ready.reads_files);
    }

    #[test]
    fn every_call_error_has_a_telemetry_outcome() {
        let errors = [
            CallError::NotDeployed("x".into()),
            CallError::Concurrency,
            CallError::Busy,
            CallError::Unusable("x".into()),
            CallError::Timeout(Duration::from_secs(1)),
            CallError::Memory,
            CallError::Trap("x".into()),
        ];
        for e in &errors {
            let (name, _) = e.failure();
            assert!(
                crate::telemetry::wasm::OUTCOMES[1..].contains(&name),
                "{name}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_component_not_in_the_version_is_not_run() {
        let f = fixture(&["echo"], None);
        let d = f.wasm.domain_of("example.test").unwrap();
        let function = d.function("/api/echo").unwrap();
        let empty = makiatto_events::Manifest::default();
        let out = f
            .wasm
            .call_handler(
                Deployed {
                    domain: "example.test",
                    manifest: &empty,
                    manifest_hash: empty.hash(),
                },
                function,
                request(None),
                &Served::default(),
            )
            .await;
        assert!(matches!(out, Err(CallError::NotDeployed(_))));
    }

    #[test]
    fn env_values_are_never_printed() {
        let env = Env(vec![("TOKEN".to_owned(), "hunter2".to_owned())].into());
        let shown = format!("{env:?}");
        assert!(shown.contains("TOKEN"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn limits_take_the_components_own_value_up_to_the_cap() {
        let l = Limits::from_settings(&Settings::default());
        assert_eq!(l.timeout(None), Duration::from_secs(5));
        assert_eq!(l.timeout(Some(100)), Duration::from_millis(100));
        assert_eq!(l.timeout(Some(100_000)), Duration::from_secs(30));
        assert_eq!(l.memory(None), 64 << 20);
        assert_eq!(l.memory(Some(4096)), 512 << 20);
    }
}
