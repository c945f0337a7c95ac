//! A domain's local tree as a manifest: walk it (honouring
//! `.makiattoignore`, leaving out the configuration files named in
//! `makiatto.toml`), hash every file with blake3 on every core, and
//! remember each file's hash by (size, mtime) so that a sync with nothing
//! changed reads no file at all.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use makiatto_events::{Blake3Hash, FileEntry, Manifest};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::project::Domain;

/// The ignore file, in `.gitignore` syntax, anywhere in the tree.
pub const IGNORE_FILE: &str = ".makiattoignore";

/// A file written this recently may change again within the same mtime
/// tick; its hash is not cached (git's "racy" rule).
const RACY: Duration = Duration::from_secs(2);

/// One file found by the walk.
#[derive(Debug, Clone)]
pub struct Found {
    /// Relative, `/`-separated.
    pub path: String,
    pub full: PathBuf,
    pub size: u64,
    /// Nanoseconds since the epoch.
    pub mtime_ns: u128,
}

/// Files of the domain directory to publish, sorted by path. Hidden files
/// are included (`.well-known/` must be served); symbolic links are not
/// followed and are skipped with a warning, so nothing outside the
/// directory is ever read. Directories are read on every core (a tree of
/// 10,000 files is mostly `stat` calls).
pub fn walk(domain: &Domain, skip: &BTreeSet<String>) -> anyhow::Result<Vec<Found>> {
    let found = std::sync::Mutex::new(Vec::new());
    let failed: std::sync::Mutex<Option<anyhow::Error>> = std::sync::Mutex::new(None);
    ignore::WalkBuilder::new(&domain.dir)
        .standard_filters(false)
        .add_custom_ignore_filename(IGNORE_FILE)
        .follow_links(false)
        .threads(std::thread::available_parallelism().map_or(1, |n| n.get().min(8)))
        .build_parallel()
        .run(|| {
            let mut mine = Batch {
                files: Vec::new(),
                into: &found,
            };
            let failed = &failed;
            Box::new(move |item| {
                let step = item
                    .with_context(|| format!("cannot walk {}", domain.dir.display()))
                    .and_then(|entry| walked(domain, skip, &entry));
                match step {
                    Ok(Some(f)) => mine.files.push(f),
                    Ok(None) => {}
                    Err(e) => {
                        if let Ok(mut first) = failed.lock() {
                            first.get_or_insert(e);
                        }
                        return ignore::WalkState::Quit;
                    }
                }
                if mine.files.len() >= 256 {
                    mine.hand_over();
                }
                ignore::WalkState::Continue
            })
        });
    if let Some(e) = failed.into_inner().ok().flatten() {
        return Err(e);
    }
    let mut found = found.into_inner().unwrap_or_default();
    found.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    Ok(found)
}

/// One walking thread's files, handed over in batches and when the thread
/// is done (its visitor, which owns this, is dropped then).
struct Batch<'a> {
    files: Vec<Found>,
    into: &'a std::sync::Mutex<Vec<Found>>,
}

impl Batch<'_> {
    fn hand_over(&mut self) {
        if let Ok(mut all) = self.into.lock() {
            all.append(&mut self.files);
        }
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        self.hand_over();
    }
}

/// One entry of the walk: the file to publish, or none (a directory, an
/// ignore file, a configuration file, a symbolic link).
fn walked(
    domain: &Domain,
    skip: &BTreeSet<String>,
    entry: &ignore::DirEntry,
) -> anyhow::Result<Option<Found>> {
    let Some(kind) = entry.file_type() else {
        return Ok(None);
    };
    if kind.is_dir() {
        return Ok(None);
    }
    let rel = entry
        .path()
        .strip_prefix(&domain.dir)
        .with_context(|| format!("{} is outside the domain", entry.path().display()))?;
    let Some(text) = rel.to_str() else {
        bail!(
            "{}: the file name is not UTF-8; rename it (URLs name files in UTF-8)",
            entry.path().display()
        );
    };
    let path = text.replace(std::path::MAIN_SEPARATOR, "/");
    if kind.is_symlink() {
        eprintln!(
            "warning: {}: a symbolic link, skipped (copy the file in instead)",
            entry.path().display()
        );
        return Ok(None);
    }
    if !kind.is_file() || path.ends_with(IGNORE_FILE) || skip.contains(&path) {
        return Ok(None);
    }
    makiatto_events::manifest::check_path(&path)
        .with_context(|| format!("{}", entry.path().display()))?;
    let meta = entry
        .metadata()
        .with_context(|| format!("cannot read {}", entry.path().display()))?;
    Ok(Some(Found {
        path,
        full: entry.path().to_owned(),
        size: meta.len(),
        mtime_ns: mtime_ns(meta.modified().ok()),
    }))
}

fn mtime_ns(t: Option<SystemTime>) -> u128 {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}

/// Hashes remembered from earlier syncs of one directory.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct HashCache {
    entries: BTreeMap<String, Cached>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Cached {
    size: u64,
    mtime_ns: u128,
    hash: Blake3Hash,
}

impl HashCache {
    /// How many files it knows.
    pub fn known(&self) -> usize {
        self.entries.len()
    }

    /// Where the cache of `dir` lives: `MAKIATTO_CACHE_DIR`, else
    /// `~/.cache/makiatto`, under `hashes/`, named by the directory's path.
    pub fn file_for(dir: &Path) -> Option<PathBuf> {
        let base = std::env::var_os("MAKIATTO_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| std::env::home_dir().map(|h| h.join(".cache/makiatto")))?;
        let key = Blake3Hash::of(dir.as_os_str().as_encoded_bytes());
        Some(
            base.join("hashes")
                .join(format!("{}.bin", &key.to_hex()[..32])),
        )
    }

    /// Reads a cache; a missing or unreadable one is empty (it is only a
    /// cache: at worst every file is hashed again).
    pub fn load(file: &Path) -> HashCache {
        std::fs::read(file)
            .ok()
            .and_then(|b| {
                let body = b.strip_prefix(CACHE_FORMAT)?;
                postcard::from_bytes(body).ok()
            })
            .unwrap_or_default()
    }

    /// Writes the cache atomically (temporary file, then rename).
    pub fn save(&self, file: &Path) -> anyhow::Result<()> {
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = file.with_extension("tmp");
        let mut bytes = CACHE_FORMAT.to_vec();
        bytes.extend(postcard::to_allocvec(self)?);
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, file)?;
        // The JSON cache of earlier versions, now replaced.
        let _ = std::fs::remove_file(file.with_extension("json"));
        Ok(())
    }
}

/// The first bytes of a hash cache file: its format (postcard, binary
/// hashes: about a third of the JSON it replaced, and read without
/// parsing text).
const CACHE_FORMAT: &[u8] = b"makiatto-hashes-1\n";

/// How many files were hashed and how many came from the cache.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HashStats {
    pub hashed: usize,
    pub cached: usize,
    pub bytes_hashed: u64,
}

fn hash_file(path: &Path) -> anyhow::Result<Blake3Hash> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(Blake3Hash::from(*hasher.finalize().as_bytes()))
}

/// The content type served for a path (text types in UTF-8).
pub fn content_type(path: &str) -> String {
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let essence = mime.essence_str();
    let text = mime.type_() == mime_guess::mime::TEXT
        || matches!(
            essence,
            "application/javascript" | "application/json" | "image/svg+xml" | "application/xml"
        );
    if text {
        format!("{essence}; charset=utf-8")
    } else {
        essence.to_owned()
    }
}

/// The manifest of `files`, hashing (in parallel) only files whose size or
/// mtime differ from the cache; the cache is updated in place.
pub fn manifest(
    files: &[Found],
    cache: &mut HashCache,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<(Manifest, HashStats)> {
    let now = mtime_ns(Some(SystemTime::now()));
    let results: Vec<anyhow::Result<(Blake3Hash, bool)>> = files
        .par_iter()
        .map(|f| {
            if let Some(c) = cache.entries.get(&f.path)
                && c.size == f.size
                && c.mtime_ns == f.mtime_ns
            {
                return Ok((c.hash, true));
            }
            let hash = hash_file(&f.full)?;
            progress(f.size);
            Ok((hash, false))
        })
        .collect();
    let mut manifest = Manifest::default();
    let mut stats = HashStats::default();
    let mut fresh = BTreeMap::new();
    for (f, result) in files.iter().zip(results) {
        let (hash, cached) = result?;
        if cached {
            stats.cached += 1;
        } else {
            stats.hashed += 1;
            stats.bytes_hashed += f.size;
        }
        if now.saturating_sub(f.mtime_ns) > RACY.as_nanos() {
            fresh.insert(
                f.path.clone(),
                Cached {
                    size: f.size,
                    mtime_ns: f.mtime_ns,
                    hash,
                },
            );
        }
        manifest.insert(
            f.path.clone(),
            FileEntry {
                hash,
                size: f.size,
                content_type: content_type(&f.path),
            },
        )?;
    }
    // Only files still present: the cache does not grow without bound.
    cache.entries = fresh;
    Ok((manifest, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain(dir: &Path) -> Domain {
        Domain {
            name: "example.com".into(),
            dir: dir.to_owned(),
            aliases: vec![],
            records: BTreeMap::new(),
            functions: vec![],
            transforms: vec![],
            config_files: BTreeSet::new(),
        }
    }

    fn set_old_mtime(path: &Path) {
        let old = SystemTime::now() - Duration::from_secs(60);
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(old).unwrap();
    }

    #[test]
    fn the_walk_honours_makiattoignore_and_skips_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (p, body) in [
            ("index.html", "<h1>hi</h1>"),
            (".well-known/security.txt", "Contact: x"),
            ("drafts/wip.html", "wip"),
            ("notes.tmp", "tmp"),
            ("api/hello.wasm", "\0asm"),
            (".makiattoignore", "drafts/\n*.tmp\n"),
        ] {
            std::fs::create_dir_all(d.join(p).parent().unwrap()).unwrap();
            std::fs::write(d.join(p), body).unwrap();
        }
        std::os::unix::fs::symlink("/etc/passwd", d.join("passwd")).unwrap();
        let skip = BTreeSet::from(["api/hello.wasm".to_owned()]);
        let found: Vec<String> = walk(&domain(d), &skip)
            .unwrap()
            .into_iter()
            .map(|f| f.path)
            .collect();
        assert_eq!(found, [".well-known/security.txt", "index.html"]);
    }

    #[test]
    fn unchanged_files_are_not_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for i in 0..20 {
            std::fs::write(d.join(format!("f{i}.txt")), format!("file {i}")).unwrap();
            set_old_mtime(&d.join(format!("f{i}.txt")));
        }
        let mut cache = HashCache::default();
        let files = walk(&domain(d), &BTreeSet::new()).unwrap();
        let (first, stats) = manifest(&files, &mut cache, &|_| {}).unwrap();
        assert_eq!((stats.hashed, stats.cached), (20, 0));
        let (again, stats) = manifest(&files, &mut cache, &|_| {}).unwrap();
        assert_eq!((stats.hashed, stats.cached), (0, 20));
        assert_eq!(first, again);
        // A change (new size) is seen.
        std::fs::write(d.join("f3.txt"), "changed!").unwrap();
        let files = walk(&domain(d), &BTreeSet::new()).unwrap();
        let (changed, stats) = manifest(&files, &mut cache, &|_| {}).unwrap();
        assert_eq!((stats.hashed, stats.cached), (1, 19));
        assert_eq!(changed.files["f3.txt"].hash, Blake3Hash::of(b"changed!"));
        assert_eq!(changed.summary_since(&first).changed, 1);
        // The racy file was not cached: it is hashed again next time.
        let (_, stats) = manifest(&files, &mut cache, &|_| {}).unwrap();
        assert_eq!(stats.hashed, 1);
        // The cache survives a save and load.
        let file = d.join("cache/h.bin");
        cache.save(&file).unwrap();
        assert_eq!(HashCache::load(&file).entries.len(), 19);
    }

    #[test]
    fn a_large_tree_is_walked_whole_and_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let mut want = Vec::new();
        for i in 0..1200 {
            let path = format!("d{}/s{}/f{i}.txt", i % 7, i % 3);
            std::fs::create_dir_all(dir.path().join(&path).parent().unwrap()).unwrap();
            std::fs::write(dir.path().join(&path), "x").unwrap();
            want.push(path);
        }
        want.sort();
        let found: Vec<String> = walk(&domain(dir.path()), &BTreeSet::new())
            .unwrap()
            .into_iter()
            .map(|f| f.path)
            .collect();
        assert_eq!(found, want);
    }

    #[test]
    fn content_types_carry_a_charset_for_text() {
        assert_eq!(content_type("a/index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("app.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("logo.svg"), "image/svg+xml; charset=utf-8");
        assert_eq!(content_type("photo.JPG"), "image/jpeg");
        assert_eq!(content_type("blob.bin"), "application/octet-stream");
    }
}
