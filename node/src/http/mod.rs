//! The edge: each node serves the deployed version of every domain on
//! port 80 and (TLS by SNI) 443, HTTP/1.1 and HTTP/2.
//!
//! # Layout
//! - [`request`]: the pure decisions (path → manifest key, encoding,
//!   conditional requests, ranges).
//! - [`routes`]: host → deployed site version, one immutable snapshot.
//! - [`variants`]: br/zstd/gzip prepared when a version is deployed.
//! - [`handler`]: one request, from the snapshot and the blob store.
//! - [`rendition`]: a file asked with image parameters (`?w=…`), from
//!   the image service (`crate::images`).
//! - [`transformed`]: a file run through its domain's transforms, a
//!   representation of its own (cached, ETag, 304, Range).
//! - [`function`]: a request answered by a WebAssembly handler
//!   (`crate::wasm`): methods, body limits, statuses, request ids.
//! - [`server`]: sockets, TLS, hyper.
//! - [`gather`]: an HTTP/2 connection's writes sent together.
//!
//! The routes follow the content follower (a version switch) and the log
//! (aliases); a request holds one snapshot, so it sees one version whole.

pub mod function;
pub mod gather;
pub mod handler;
pub mod rendition;
pub mod request;
pub mod routes;
pub mod server;
pub mod transformed;
pub mod variants;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use makiatto_events::{Blake3Hash, Manifest};
use makiatto_protocol::health::{ConnectionsEnded, HttpReport, ServedSite, StatusCounts};

use crate::blobs::BlobStore;
use crate::changes::Changes;
use crate::content::Content;
use crate::handover::Handover;
use crate::images::{self, Images};
use crate::replica::Replica;
use crate::wasm::{NodeInfo, Wasm};
use crate::work_pool::WorkPool;

/// How often unused variants are deleted.
const VARIANT_GC_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// Why the node ended a connection (see [`ConnectionsEnded`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    HeadTooLarge,
    HeadTimeout,
    BadRequest,
    TlsFailed,
    H2Error,
}

impl Ended {
    /// Why hyper ended an HTTP/1.1 connection, when it was the client's
    /// doing (`None` for a client that went away, or an I/O error).
    pub fn of_h1(e: &hyper::Error) -> Option<Ended> {
        if e.is_parse_too_large() {
            Some(Ended::HeadTooLarge)
        } else if e.is_timeout() {
            Some(Ended::HeadTimeout)
        } else if e.is_parse() {
            Some(Ended::BadRequest)
        } else {
            None
        }
    }
}

/// The HTTP service of one node.
pub struct Http {
    routes: ArcSwap<routes::Routes>,
    blobs: Arc<BlobStore>,
    variants: variants::Variants,
    cache: Arc<handler::SmallCache>,
    certs: Arc<server::SiteCerts>,
    challenges: ArcSwap<HashMap<String, String>>,
    /// Versions (by manifest) whose variants were prepared or are being.
    prepared: Mutex<std::collections::HashSet<Blake3Hash>>,
    /// Responses by status class (1xx … 5xx).
    statuses: [AtomicU64; 5],
    /// Connections ended for what the client sent, by [`Ended`].
    ended: [AtomicU64; 5],
    /// Images on the fly: renditions, their cache, the CPU pool.
    pub images: Arc<Images>,
    /// WebAssembly functions and transforms.
    pub wasm: Arc<Wasm>,
    /// Transformed files, by (input, chain, node).
    transformed: transformed::Cache,
    /// Versions (by domain and manifest) whose components are being
    /// compiled (false) or are (true): a version is switched to once they
    /// are, so that its first request pays no compile.
    compiled: Mutex<HashMap<(String, Blake3Hash), bool>>,
    /// This node's signing key (which node of the peers it is), if it has
    /// keys yet.
    me: Option<makiatto_events::AuthorKey>,
}

/// What runs the work beside serving: the CPU pool (images, components)
/// and the WebAssembly engine.
pub struct Work {
    pub pool: Arc<WorkPool>,
    pub engine: crate::wasm::engine::NodeEngine,
}

impl Http {
    /// Builds the routes, binds the ports and follows changes.
    pub fn start(
        data_dir: &Path,
        replica: Arc<Mutex<Replica>>,
        content: Arc<Content>,
        log: Changes,
        ports: server::Ports,
        Work { pool, engine }: Work,
        handover: &Handover,
    ) -> anyhow::Result<Arc<Http>> {
        let settings = replica.lock().map(|mut r| r.settings()).unwrap_or_default();
        let images = Arc::new(Images::new(
            pool.clone(),
            images::Config::from_settings(&settings),
        ));
        let keys = crate::keys::NodeKeys::load(data_dir).ok();
        let wasm = Wasm::start(
            engine,
            data_dir,
            content.blobs().clone(),
            pool,
            keys.as_ref().map(|k| k.sealing.clone()),
        )?;
        let http = Arc::new(Http {
            routes: ArcSwap::from_pointee(routes::Routes::default()),
            blobs: content.blobs().clone(),
            variants: variants::Variants::open(data_dir)?,
            cache: Arc::new(handler::SmallCache::default()),
            certs: Arc::new(server::SiteCerts::default()),
            challenges: ArcSwap::from_pointee(HashMap::new()),
            prepared: Mutex::new(Default::default()),
            statuses: Default::default(),
            ended: Default::default(),
            images,
            wasm,
            transformed: transformed::Cache::default(),
            compiled: Mutex::new(HashMap::new()),
            me: keys.map(|k| k.signing.public()),
        });
        // Subscribed before the first build, so no change falls between.
        let mut deployed = content.changes();
        let mut log = log.watch();
        http.clone().rebuild(&replica, &content);
        server::serve(http.clone(), ports, handover);
        let follower = http.clone();
        tokio::spawn(async move {
            let mut gc = tokio::time::interval(VARIANT_GC_EVERY);
            loop {
                tokio::select! {
                    _ = gc.tick() => follower.collect_variants(),
                    c = deployed.changed() => {
                        if c.is_err() { return }
                        follower.clone().rebuild(&replica, &content);
                    }
                    c = log.changed() => {
                        if c.is_err() { return }
                        follower.clone().rebuild(&replica, &content);
                    }
                }
            }
        });
        Ok(http)
    }

    /// The open ACME HTTP-01 challenges (token → key authorization).
    pub fn set_challenges(&self, challenges: HashMap<String, String>) {
        if **self.challenges.load() != challenges {
            self.challenges.store(Arc::new(challenges));
        }
    }

    /// Serves an issued certificate for these names.
    pub fn install_certificate(&self, names: &[String], key: Arc<rustls::sign::CertifiedKey>) {
        self.certs.install(names, key);
    }

    fn manifest(&self, hash: &Blake3Hash) -> Option<Arc<Manifest>> {
        self.blobs.manifest(hash).ok()
    }

    /// Makes the routes snapshot from the deployed versions and the
    /// configured domains and aliases; versions seen for the first time get
    /// their variants prepared (then the routes are made again).
    fn rebuild(self: Arc<Self>, replica: &Arc<Mutex<Replica>>, content: &Arc<Content>) {
        let Some((domains, published, settings, configs, peers, resealed)) =
            replica.lock().ok().map(|mut r| {
                let (d, p) = r.domains();
                (
                    d,
                    p,
                    r.settings(),
                    r.domain_configs(),
                    r.peers(),
                    r.resealed(),
                )
            })
        else {
            return;
        };
        // The image settings follow the log; the rendition cache is not
        // emptied by a rebuild (its keys are content hashes).
        self.images
            .configure(images::Config::from_settings(&settings));
        let node = peers
            .nodes
            .iter()
            .find(|(_, n)| Some(n.signing_key) == self.me)
            .map(|(name, n)| NodeInfo {
                name: name.to_string(),
                latitude: n.latitude,
                longitude: n.longitude,
            })
            .unwrap_or_default();
        let wasm_changed =
            self.wasm
                .configure(node, &settings, peers.mesh_range, &configs, &resealed);
        let mut versions = HashMap::new();
        // A version already served, with no variant made or gone since,
        // keeps its snapshot: a rebuild for an event, or for another
        // domain's switch, does not go over its files again.
        let generation = self.variants.generation();
        let current = self.routes.load();
        for (domain, d) in content.deployed() {
            if let Some(site) = current.site(&domain)
                && site.version == d.version
                && site.variants_generation == generation
            {
                versions.insert(domain, site.clone());
                continue;
            }
            let Some(manifest) = self.manifest(&d.manifest) else {
                tracing::error!(%domain, manifest = %d.manifest, "the deployed manifest cannot be read");
                continue;
            };
            // A new version whose components are not compiled yet: the
            // version served until now stays while they compile (none:
            // the domain answers 503 as while its files are fetched).
            if !self.components_compiled(&domain, d.manifest, &manifest, replica, content) {
                if let Some(old) = current.site(&domain) {
                    versions.insert(domain, old.clone());
                }
                continue;
            }
            let variants = self.variants.present(&manifest);
            let at = published.get(&d.version).map_or(0, |h| h.millis);
            versions.insert(
                domain.clone(),
                Arc::new(routes::SiteVersion::new(
                    domain, d.version, at, manifest, d.manifest, variants, generation,
                )),
            );
        }
        let new: Vec<Blake3Hash> = match self.prepared.lock() {
            Ok(mut seen) => content
                .deployed()
                .values()
                .filter(|d| seen.insert(d.manifest))
                .map(|d| d.manifest)
                .collect(),
            Err(_) => Vec::new(),
        };
        self.forget_compiled(&versions);
        let routes = routes::Routes::build(&domains, versions);
        if wasm_changed {
            // Functions or transforms configured anew for versions
            // already served: compiled now, not at their first request.
            for site in current.sites() {
                tokio::spawn(self.wasm.clone().prepare_version(
                    site.manifest_hash,
                    site.manifest.clone(),
                    site.domain.clone(),
                ));
            }
        }
        if routes.same_as(&current) {
            // Nothing a visitor sees changed (an event that is no switch
            // and no new name): the small-file cache stays warm.
            if !new.is_empty() {
                self.prepare_variants(new, replica.clone(), content.clone());
            }
            return;
        }
        self.certs.set_known(routes.hosts().cloned());
        let routes = Arc::new(routes);
        let before = self.routes.swap(routes.clone());
        // From here visitors get the new versions: what "switched" means
        // for a visitor (the content follower's "deployed" comes a step
        // before).
        for site in routes.sites() {
            if !before
                .sites()
                .any(|b| b.domain == site.domain && b.version == site.version)
            {
                tracing::info!(
                    domain = %site.domain,
                    version = %site.version.short(),
                    "serving site version"
                );
            }
        }
        self.cache.clear();
        if !new.is_empty() {
            self.prepare_variants(new, replica.clone(), content.clone());
        }
    }

    /// Whether the components `domain`'s version `manifest_hash` runs are
    /// compiled; if they are not, and are not being, starts compiling
    /// them on the work pool, and rebuilds the routes when they are.
    fn components_compiled(
        self: &Arc<Self>,
        domain: &str,
        manifest_hash: Blake3Hash,
        manifest: &Arc<Manifest>,
        replica: &Arc<Mutex<Replica>>,
        content: &Arc<Content>,
    ) -> bool {
        let Ok(mut compiled) = self.compiled.lock() else {
            return true;
        };
        let key = (domain.to_owned(), manifest_hash);
        if let Some(done) = compiled.get(&key) {
            return *done;
        }
        if !self.wasm.runs_components(manifest, domain) {
            return true;
        }
        compiled.insert(key.clone(), false);
        drop(compiled);
        tracing::info!(%domain, manifest = %manifest_hash, "compiling the version's components before serving it");
        let (this, replica, content) = (self.clone(), replica.clone(), content.clone());
        let prepare =
            self.wasm
                .clone()
                .prepare_version(manifest_hash, manifest.clone(), domain.to_owned());
        tokio::spawn(async move {
            prepare.await;
            if let Ok(mut compiled) = this.compiled.lock() {
                compiled.insert(key, true);
            }
            this.rebuild(&replica, &content);
        });
        false
    }

    /// Forgets the versions compiled that are no longer served (a rollback
    /// to one looks again: its components may have been collected).
    fn forget_compiled(&self, served: &HashMap<String, Arc<routes::SiteVersion>>) {
        if let Ok(mut compiled) = self.compiled.lock() {
            compiled.retain(|(domain, manifest), done| {
                !*done
                    || served
                        .get(domain)
                        .is_some_and(|s| s.manifest_hash == *manifest)
            });
        }
    }

    /// Compresses what these versions lack, off the runtime; then rebuilds
    /// the routes so the new variants are served.
    fn prepare_variants(
        self: Arc<Self>,
        manifests: Vec<Blake3Hash>,
        replica: Arc<Mutex<Replica>>,
        content: Arc<Content>,
    ) {
        tokio::spawn(async move {
            let this = self.clone();
            // A thread of its own that runs only on idle CPU: compressing a
            // new version ahead is background work, and must not slow
            // serving, replication or peers fetching the version from here.
            let (done, made) = tokio::sync::oneshot::channel();
            let spawned = std::thread::Builder::new()
                .name("variants".into())
                .spawn(move || {
                    lower_priority();
                    let mut made = 0;
                    for hash in &manifests {
                        if let Some(m) = this.manifest(hash) {
                            made += this.variants.prepare(&m, |h| this.blobs.path(h));
                        }
                    }
                    let _ = done.send(made);
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start preparing variants");
                return;
            }
            let made = made.await.unwrap_or(0);
            if made > 0 {
                tracing::info!(variants = made, "precompressed variants prepared");
                self.rebuild(&replica, &content);
            }
        });
    }

    /// Deletes variants of files no deployed version names (a rollback
    /// prepares them again).
    fn collect_variants(&self) {
        let routes = self.routes.load();
        let keep: std::collections::HashSet<Blake3Hash> = routes
            .sites()
            .flat_map(|s| s.manifest.files.values().map(|f| f.hash))
            .collect();
        let removed = self.variants.collect(&keep);
        let deployed: Vec<(Blake3Hash, Arc<Manifest>)> = routes
            .sites()
            .map(|s| (s.manifest_hash, s.manifest.clone()))
            .collect();
        self.wasm.collect(&deployed);
        if removed > 0 {
            tracing::info!(removed, "collected variants no deployed version uses");
        }
    }

    fn count(&self, status: hyper::StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.statuses[class].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection ended for what its client sent.
    pub fn ended(&self, why: Ended) {
        self.ended[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// For `makiatto health`: hosts and responses by status class.
    pub fn report(&self) -> HttpReport {
        let routes = self.routes.load();
        let mut hosts: Vec<String> = routes.hosts().cloned().collect();
        hosts.sort();
        let sites = routes
            .sites()
            .map(|s| {
                let served = ServedSite {
                    version: Some(s.version),
                    files: s.manifest.files.len(),
                    precompressed: s.variants.len(),
                };
                (s.domain.clone(), served)
            })
            .collect();
        let n = |i: usize| self.statuses[i].load(Ordering::Relaxed);
        let e = |why: Ended| self.ended[why as usize].load(Ordering::Relaxed);
        HttpReport {
            ended: Some(ConnectionsEnded {
                head_too_large: e(Ended::HeadTooLarge),
                head_timeout: e(Ended::HeadTimeout),
                bad_request: e(Ended::BadRequest),
                tls_failed: e(Ended::TlsFailed),
                h2_error: e(Ended::H2Error),
            }),
            images: Some(self.images.report()),
            wasm: Some(self.wasm.report()),
            hosts,
            sites,
            responses: StatusCounts {
                informational: n(0),
                success: n(1),
                redirection: n(2),
                client_error: n(3),
                server_error: n(4),
            },
        }
    }
}

/// Makes the calling thread run only when a CPU would otherwise be idle
/// (`SCHED_IDLE`; Linux keeps the policy per thread): compressing ahead
/// waits for serving, replication and peers fetching from this node.
/// Failing to is no error (the work is only less polite).
fn lower_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads `param`; pid 0 is this thread.
    let failed = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0;
    if failed {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower the priority of variant preparation");
    }
}
