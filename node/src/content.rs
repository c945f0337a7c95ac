//! Which version of each site this node serves (docs/design.md, Content addressing).
//!
//! The sites projection says which version is live; this node switches a
//! domain to it only once the version's manifest and every blob it names
//! are in the local store, fetched from peers over the mesh and verified
//! by hash. Until then it keeps serving the version it had, so a visitor
//! never sees a mix of two versions. The choice is node-local state (it
//! depends on what this node holds), kept in `<data>/deployed.json` and
//! replaced atomically (a temporary file, then a rename).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use makiatto_events::{Blake3Hash, EventId, Manifest};
use makiatto_protocol::health::SiteDeployment;
use serde::{Deserialize, Serialize};

use crate::blobs::BlobStore;
use crate::changes::Changes;
use crate::peer_blobs::PeerBlobs;
use crate::replica::Replica;

/// The longest wait for a version a peer is handing over ahead of its
/// event before fetching it instead.
const AHEAD_WAIT: Duration = Duration::from_secs(5);
/// How often a domain that is not yet deployed is tried again.
const RETRY: Duration = Duration::from_secs(5);
/// Blobs younger than this are never collected: a sync may have uploaded
/// them and not yet published the version that names them.
const GC_GRACE: Duration = Duration::from_secs(3600);
/// How often unreferenced blobs are collected.
const GC_EVERY: Duration = Duration::from_secs(600);

/// The version a domain is served at here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployed {
    /// The `site-published` event of the version.
    pub version: EventId,
    pub manifest: Blake3Hash,
    pub files: u64,
}

/// What a domain is waiting for.
#[derive(Debug, Clone, Default, Serialize)]
struct Pending {
    version: Option<EventId>,
    missing_blobs: usize,
    error: Option<String>,
}

/// Sets of blob hashes (foldhash: the hashes are uniform already, and a
/// 10,000-file version fills one on every deploy).
type HashSet<T> = foldhash::HashSet<T>;

/// A deployed manifest's hash and the blobs it names.
type Held = (Blake3Hash, Arc<HashSet<Blake3Hash>>);

/// The follower: deploys live versions as their blobs arrive.
pub struct Content {
    replica: Arc<Mutex<Replica>>,
    blobs: Arc<BlobStore>,
    /// The peers, through gossip: where missing blobs come from.
    peers: Arc<dyn PeerBlobs>,
    /// Wakes the follower when events are stored or a peer is back up.
    log: Changes,
    file: PathBuf,
    deployed: Mutex<BTreeMap<String, Deployed>>,
    pending: Mutex<BTreeMap<String, Pending>>,
    /// Bumped whenever a domain switches version (the HTTP server follows).
    changes: tokio::sync::watch::Sender<u64>,
    /// Per domain, the blobs of the version deployed here (filled as
    /// versions deploy): they are in the store (collection keeps them), so
    /// the next version checks the store only for what is new in it, not
    /// a `stat` for each of its files.
    held: Mutex<BTreeMap<String, Held>>,
}

impl Content {
    /// Loads what was deployed and starts following the projection.
    pub fn start(
        data_dir: &std::path::Path,
        replica: Arc<Mutex<Replica>>,
        blobs: Arc<BlobStore>,
        peers: Arc<dyn PeerBlobs>,
        log: Changes,
    ) -> Arc<Content> {
        let file = data_dir.join("deployed.json");
        let deployed = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let content = Arc::new(Content {
            replica,
            blobs,
            peers,
            log,
            file,
            deployed: Mutex::new(deployed),
            pending: Mutex::new(BTreeMap::new()),
            changes: tokio::sync::watch::Sender::new(0),
            held: Mutex::new(BTreeMap::new()),
        });
        tokio::spawn(content.clone().follow());
        content
    }

    async fn follow(self: Arc<Self>) {
        let mut last_gc: Option<std::time::Instant> = None;
        loop {
            self.step().await;
            if last_gc.is_none_or(|t| t.elapsed() > GC_EVERY) {
                last_gc = Some(std::time::Instant::now());
                if let Err(e) = self.collect() {
                    tracing::warn!(error = %format!("{e:#}"), "blob collection failed");
                }
            }
            let waiting = self.pending.lock().is_ok_and(|p| !p.is_empty());
            if waiting {
                let _ = tokio::time::timeout(RETRY, self.log.follower_woken()).await;
            } else {
                self.log.follower_woken().await;
            }
        }
    }

    /// The live version of every domain, from the projection.
    fn live(&self) -> BTreeMap<String, (EventId, Blake3Hash)> {
        let Ok(mut replica) = self.replica.lock() else {
            return BTreeMap::new();
        };
        replica
            .sites()
            .domains
            .iter()
            .filter_map(|(name, site)| {
                let v = site.live_version()?;
                Some((name.to_string(), (v.event, v.manifest.hash)))
            })
            .collect()
    }

    async fn step(&self) {
        for (domain, (version, manifest_hash)) in self.live() {
            let current = self
                .deployed
                .lock()
                .ok()
                .and_then(|d| d.get(&domain).map(|d| d.version));
            if current == Some(version) {
                if let Ok(mut p) = self.pending.lock() {
                    p.remove(&domain);
                }
                continue;
            }
            // Telemetry: each attempt to fetch and switch is a span.
            let outcome = crate::telemetry::Operation::new("site.version.deploy")
                .attr("makiatto.domain", domain.clone())
                .attr("makiatto.version", version.short().to_string())
                .run(self.deploy(&domain, version, manifest_hash))
                .await;
            let Ok(mut pending) = self.pending.lock() else {
                return;
            };
            match outcome {
                Ok(None) => {
                    pending.remove(&domain);
                }
                Ok(Some(missing)) => {
                    pending.insert(
                        domain,
                        Pending {
                            version: Some(version),
                            missing_blobs: missing,
                            error: None,
                        },
                    );
                }
                Err(e) => {
                    let message = format!("{e:#}");
                    if pending.get(&domain).and_then(|p| p.error.as_deref())
                        != Some(message.as_str())
                    {
                        tracing::warn!(%domain, error = %message, "cannot deploy the live version");
                    }
                    pending.insert(
                        domain,
                        Pending {
                            version: Some(version),
                            missing_blobs: 0,
                            error: Some(message),
                        },
                    );
                }
            }
        }
    }

    /// Deploys a version if every blob is here (fetching what is not);
    /// returns how many blobs are still missing, or none once deployed.
    async fn deploy(
        &self,
        domain: &str,
        version: EventId,
        manifest_hash: Blake3Hash,
    ) -> anyhow::Result<Option<usize>> {
        if !self.blobs.contains(&manifest_hash) {
            // A peer may be handing the version over already.
            self.peers.wait_for_ahead(&manifest_hash, AHEAD_WAIT).await;
        }
        if !self.blobs.contains(&manifest_hash) {
            // From the version deployed here, a peer sends only what
            // changed (and the blobs new in it); else the whole manifest.
            let base = self
                .deployed
                .lock()
                .ok()
                .and_then(|d| d.get(domain).map(|d| d.manifest))
                .filter(|m| self.blobs.contains(m));
            let delta = match base {
                Some(base) => self.peers.fetch_version(base, manifest_hash).await,
                None => false,
            };
            if !delta {
                if !self.peers.fetch_blobs(&[manifest_hash]).await.is_empty() {
                    return Ok(Some(1));
                }
                self.peers.count_whole_manifest();
            }
        }
        let blobs = self.blobs.clone();
        let manifest = tokio::task::block_in_place(|| blobs.manifest(&manifest_hash))?;
        let hashes: HashSet<Blake3Hash> = manifest.blobs().map(|f| f.hash).collect();
        let deployed_manifest = self
            .deployed
            .lock()
            .ok()
            .and_then(|d| d.get(domain).map(|d| d.manifest));
        let held = self
            .held
            .lock()
            .ok()
            .and_then(|h| h.get(domain).cloned())
            .filter(|(m, _)| Some(*m) == deployed_manifest)
            .map(|(_, set)| set);
        let new: Vec<Blake3Hash> = hashes
            .iter()
            .filter(|h| held.as_ref().is_none_or(|set| !set.contains(h)))
            .copied()
            .collect();
        let mut missing = self.blobs.missing(&new);
        if !missing.is_empty() {
            missing = self.peers.fetch_blobs(&missing).await;
        }
        if !missing.is_empty() {
            return Ok(Some(missing.len()));
        }
        let deployed = Deployed {
            version,
            manifest: manifest_hash,
            files: manifest.files.len() as u64,
        };
        let snapshot = {
            let mut all = self
                .deployed
                .lock()
                .map_err(|_| anyhow::anyhow!("deployed map poisoned"))?;
            all.insert(domain.to_owned(), deployed);
            all.clone()
        };
        if let Ok(mut held) = self.held.lock() {
            held.insert(domain.to_owned(), (manifest_hash, Arc::new(hashes)));
        }
        // The switch: the HTTP server follows at once. Every blob of the
        // version is durable already; the record of the choice is written
        // after, off the visitors' path (after a crash before it, the node
        // starts on the version before and deploys this one again from
        // the blobs it holds).
        self.changes.send_modify(|n| *n += 1);
        tracing::info!(
            domain,
            version = %version.short(),
            files = manifest.files.len(),
            "site version deployed"
        );
        let file = self.file.clone();
        let recorded = tokio::task::spawn_blocking(move || {
            let tmp = file.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(&snapshot)?)?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &file)
        })
        .await
        .map_err(|e| anyhow::anyhow!("recording the deployed versions stopped: {e}"))
        .and_then(|r| r.with_context(|| format!("cannot write {}", self.file.display())));
        // The version is served either way; unrecorded, it is deployed
        // again after a restart.
        if let Err(e) = recorded {
            tracing::warn!(error = %format!("{e:#}"), "cannot record the deployed versions; after a restart they are deployed again");
        }
        Ok(None)
    }

    /// Deletes blobs no kept version references (docs/design.md, Content
    /// addressing): per domain the last `sites.keep_versions` versions, the
    /// live one and the one this node serves are kept, with their manifests
    /// and every file they name,
    /// and so is the GeoIP database the log names.
    /// If a kept version's manifest is not here, nothing is collected (what
    /// it names is unknown).
    fn collect(&self) -> anyhow::Result<()> {
        let (sites, settings) = {
            let mut r = self
                .replica
                .lock()
                .map_err(|_| anyhow::anyhow!("replica lock poisoned"))?;
            (r.sites(), r.settings())
        };
        let keep_versions = settings.keep_versions() as usize;
        let deployed = self.deployed.lock().map(|d| d.clone()).unwrap_or_default();
        let mut manifests: Vec<Blake3Hash> = Vec::new();
        for (name, site) in &sites.domains {
            let n = site.versions.len();
            for v in &site.versions[n.saturating_sub(keep_versions.max(1))..] {
                manifests.push(v.manifest.hash);
            }
            if let Some(v) = site.live_version() {
                manifests.push(v.manifest.hash);
            }
            if let Some(d) = deployed.get(name.as_str()) {
                manifests.push(d.manifest);
            }
        }
        let mut keep: std::collections::HashSet<Blake3Hash> = std::collections::HashSet::new();
        for m in manifests {
            let Ok(bytes) = std::fs::read(self.blobs.path(&m)) else {
                return Ok(());
            };
            let Ok(manifest) = Manifest::decode(&bytes) else {
                return Ok(());
            };
            keep.insert(m);
            keep.extend(manifest.blobs().map(|f| f.hash));
        }
        // The GeoIP database the log names is content too (`dns::geoip`);
        // while its manifest is still being fetched, none of its files is
        // here to lose.
        if let Some(m) = settings.geoip_database()
            && let Ok(manifest) = std::fs::read(self.blobs.path(&m))
                .map_err(|_| ())
                .and_then(|b| Manifest::decode(&b).map_err(|_| ()))
        {
            keep.insert(m);
            keep.extend(manifest.files.values().map(|f| f.hash));
        }
        let older_than = std::time::SystemTime::now() - GC_GRACE;
        let (count, bytes) = self.blobs.collect(&keep, older_than)?;
        if count > 0 {
            tracing::info!(blobs = count, bytes, "collected blobs no kept version uses");
        }
        Ok(())
    }

    /// The version each domain is served at here.
    pub fn deployed(&self) -> BTreeMap<String, Deployed> {
        self.deployed.lock().map(|d| d.clone()).unwrap_or_default()
    }

    /// The blob store the deployed versions live in.
    pub fn blobs(&self) -> &Arc<BlobStore> {
        &self.blobs
    }

    /// A receiver that sees every version switch.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Per domain: the live version, the deployed one, what is missing.
    pub fn report(&self) -> BTreeMap<String, SiteDeployment> {
        let live = self.live();
        let deployed = self.deployed.lock().map(|d| d.clone()).unwrap_or_default();
        let pending = self.pending.lock().map(|p| p.clone()).unwrap_or_default();
        live.into_iter()
            .map(|(domain, (version, _))| {
                let d = deployed.get(&domain);
                let p = pending.get(&domain);
                let site = SiteDeployment {
                    live: Some(version),
                    deployed: d.map(|d| d.version),
                    files: d.map(|d| d.files),
                    in_sync: d.is_some_and(|d| d.version == version),
                    missing_blobs: p.map_or(0, |p| p.missing_blobs),
                    error: p.and_then(|p| p.error.clone()),
                };
                (domain, site)
            })
            .collect()
    }
}
