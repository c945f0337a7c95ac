//! A domain's local tree as a manifest: walk it (honouring
//! `.makiattoignore`, leaving out the configuration files named in
//! `makiatto.toml`), hash every file with blake3 on every core, and
//! remember each file's hash by (size, mtime) so that a sync with nothing
//! changed reads no file at all.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use ignore::gitignore::{Gitignore, GitignoreBuilder};
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
/// directory is ever read. `.makiattoignore` files apply to their
/// directory and below, the deepest match winning (as `.gitignore` does).
/// Directories are read on every core, and each file is looked at
/// relative to its open directory (`fstatat`), not by its whole path.
pub fn walk(domain: &Domain, skip: &BTreeSet<String>) -> anyhow::Result<Vec<Found>> {
    let mut found = walk_dir(domain, skip, &domain.dir, &[])?;
    found.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    Ok(found)
}

fn walk_dir(
    domain: &Domain,
    skip: &BTreeSet<String>,
    dir: &Path,
    rules: &[Arc<Gitignore>],
) -> anyhow::Result<Vec<Found>> {
    let mut rules = rules.to_vec();
    let ignore_file = dir.join(IGNORE_FILE);
    if std::fs::symlink_metadata(&ignore_file).is_ok_and(|m| m.is_file()) {
        let mut builder = GitignoreBuilder::new(dir);
        if let Some(e) = builder.add(&ignore_file) {
            bail!("{}: {e}", ignore_file.display());
        }
        let set = builder
            .build()
            .with_context(|| format!("{}", ignore_file.display()))?;
        rules.push(Arc::new(set));
    }
    let cannot = || format!("cannot walk {}", dir.display());
    let mut files = Vec::new();
    let mut subdirs = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(cannot)? {
        let entry = entry.with_context(cannot)?;
        let kind = entry.file_type().with_context(cannot)?;
        let full = entry.path();
        let ignored = rules
            .iter()
            .rev()
            .find_map(|set| match set.matched(&full, kind.is_dir()) {
                ignore::Match::None => None,
                m => Some(m.is_ignore()),
            })
            .unwrap_or(false);
        if ignored {
            continue;
        }
        if kind.is_dir() {
            subdirs.push(full);
        } else if let Some(found) = walked(domain, skip, &entry, full, kind)? {
            files.push(found);
        }
    }
    let nested: Vec<anyhow::Result<Vec<Found>>> = subdirs
        .par_iter()
        .map(|d| walk_dir(domain, skip, d, &rules))
        .collect();
    for n in nested {
        files.extend(n?);
    }
    Ok(files)
}

/// One entry of the walk that is no directory: the file to publish, or
/// none (an ignore file, a configuration file, a symbolic link).
fn walked(
    domain: &Domain,
    skip: &BTreeSet<String>,
    entry: &std::fs::DirEntry,
    full: PathBuf,
    kind: std::fs::FileType,
) -> anyhow::Result<Option<Found>> {
    let rel = full
        .strip_prefix(&domain.dir)
        .with_context(|| format!("{} is outside the domain", full.display()))?;
    let Some(text) = rel.to_str() else {
        bail!(
            "{}: the file name is not UTF-8; rename it (URLs name files in UTF-8)",
            full.display()
        );
    };
    let path = text.replace(std::path::MAIN_SEPARATOR, "/");
    if kind.is_symlink() {
        eprintln!(
            "warning: {}: a symbolic link, skipped (copy the file in instead)",
            full.display()
        );
        return Ok(None);
    }
    if !kind.is_file() || path.ends_with(IGNORE_FILE) || skip.contains(&path) {
        return Ok(None);
    }
    makiatto_events::manifest::check_path(&path).with_context(|| format!("{}", full.display()))?;
    // Relative to the open directory (`fstatat`), not a lookup of the
    // whole path.
    let meta = entry
        .metadata()
        .with_context(|| format!("cannot read {}", full.display()))?;
    Ok(Some(Found {
        path,
        full,
        size: meta.len(),
        mtime_ns: mtime_ns(meta.modified().ok()),
    }))
}

/// The components the domain's functions and transforms name, each once,
/// found in the domain directory (never served; they go into the
/// manifest's component section). A symbolic link is refused, as the walk
/// skips one: nothing outside the directory is read.
pub fn components(domain: &Domain) -> anyhow::Result<Vec<Found>> {
    let paths: BTreeSet<&str> = domain
        .functions
        .iter()
        .map(|f| f.path.as_str())
        .chain(domain.transforms.iter().map(|t| t.path.as_str()))
        .collect();
    paths
        .into_iter()
        .map(|path| {
            let full = domain.dir.join(path);
            let meta = std::fs::symlink_metadata(&full)
                .with_context(|| format!("cannot read the component {}", full.display()))?;
            if !meta.is_file() {
                bail!(
                    "{}: a component must be a regular file (not a link or a directory)",
                    full.display()
                );
            }
            Ok(Found {
                path: path.to_owned(),
                full,
                size: meta.len(),
                mtime_ns: mtime_ns(meta.modified().ok()),
            })
        })
        .collect()
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
    let mut stats = HashStats::default();
    // `files` is sorted by path: both maps are built in one pass from
    // sorted entries, not by 10,000 inserts each.
    let mut fresh = Vec::with_capacity(files.len());
    let mut entries = Vec::with_capacity(files.len());
    // The type depends on the extension only: guessed once per extension.
    let mut types: std::collections::HashMap<&str, String> = std::collections::HashMap::new();
    for (f, result) in files.iter().zip(results) {
        let (hash, cached) = result?;
        if cached {
            stats.cached += 1;
        } else {
            stats.hashed += 1;
            stats.bytes_hashed += f.size;
        }
        if now.saturating_sub(f.mtime_ns) > RACY.as_nanos() {
            fresh.push((
                f.path.clone(),
                Cached {
                    size: f.size,
                    mtime_ns: f.mtime_ns,
                    hash,
                },
            ));
        }
        // The extension as mime_guess reads it (none for `.htaccess`).
        let ext = Path::new(&f.path)
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("");
        let content_type = types
            .entry(ext)
            .or_insert_with(|| content_type(&f.path))
            .clone();
        entries.push((
            f.path.clone(),
            FileEntry {
                hash,
                size: f.size,
                content_type,
            },
        ));
    }
    let manifest = Manifest::from_files(entries)?;
    // Only files still present: the cache does not grow without bound.
    cache.entries = fresh.into_iter().collect();
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

    /// Writes files (relative path, contents) under `d`.
    fn write_tree(d: &Path, files: &[(&str, &str)]) {
        for (p, body) in files {
            std::fs::create_dir_all(d.join(p).parent().unwrap()).unwrap();
            std::fs::write(d.join(p), body).unwrap();
        }
    }

    /// The paths the walk finds under `d`.
    fn paths(d: &Path, skip: &BTreeSet<String>) -> Vec<String> {
        walk(&domain(d), skip)
            .unwrap()
            .into_iter()
            .map(|f| f.path)
            .collect()
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
        write_tree(
            d,
            &[
                ("index.html", "<h1>hi</h1>"),
                (".well-known/security.txt", "Contact: x"),
                ("drafts/wip.html", "wip"),
                ("notes.tmp", "tmp"),
                ("api/hello.wasm", "\0asm"),
                (".makiattoignore", "drafts/\n*.tmp\n"),
            ],
        );
        std::os::unix::fs::symlink("/etc/passwd", d.join("passwd")).unwrap();
        let skip = BTreeSet::from(["api/hello.wasm".to_owned()]);
        assert_eq!(paths(d, &skip), [".well-known/security.txt", "index.html"]);
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
    fn a_deeper_makiattoignore_wins() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write_tree(
            d,
            &[
                (".makiattoignore", "*.tmp\nbuild/\n"),
                ("a.tmp", "x"),
                ("keep/.makiattoignore", "!wanted.tmp\n"),
                ("keep/wanted.tmp", "x"),
                ("keep/other.tmp", "x"),
                ("keep/deep/also.tmp", "x"),
                ("build/out.html", "x"),
                ("site/build/out.html", "x"),
                ("index.html", "x"),
            ],
        );
        assert_eq!(
            paths(d, &BTreeSet::new()),
            ["index.html", "keep/wanted.tmp"]
        );
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
        assert_eq!(paths(dir.path(), &BTreeSet::new()), want);
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
