//! The tree of every selected domain, as a manifest: walked and hashed on
//! a blocking thread (all cores) while the SSH connection is made and the
//! node answers. The components of its functions and transforms go into
//! the manifest's never-served section.

use indicatif::ProgressBar;
use makiatto_events::Manifest;

use crate::project::Domain;
use crate::ssh::FileCount;
use crate::tree::{Found, HashCache, components, manifest, walk};

/// One domain's tree: its files (components included) and their manifest.
pub struct Walked {
    pub files: Vec<Found>,
    pub manifest: Manifest,
}

/// Walks and hashes every domain (the hash cache is read while the
/// directories are, and saved when anything changed).
pub fn start(
    domains: Vec<Domain>,
    hashing: ProgressBar,
    hashed_files: FileCount,
) -> tokio::task::JoinHandle<anyhow::Result<Vec<Walked>>> {
    tokio::task::spawn_blocking(move || {
        domains
            .iter()
            .map(|d| walk_one(d, &hashing, &hashed_files))
            .collect()
    })
}

fn walk_one(d: &Domain, hashing: &ProgressBar, hashed_files: &FileCount) -> anyhow::Result<Walked> {
    let cache_file = HashCache::file_for(&d.dir);
    let (files, mut cache) = rayon::join(
        || walk(d, &d.config_files),
        || {
            cache_file
                .as_deref()
                .map(HashCache::load)
                .unwrap_or_default()
        },
    );
    let mut files = files?;
    let parts = components(d)?;
    let component_paths: Vec<String> = parts.iter().map(|f| f.path.clone()).collect();
    files.extend(parts);
    files.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    let total: u64 = files.iter().map(|f| f.size).sum();
    hashing.inc_length(total);
    hashed_files.add_total(files.len() as u64);
    let known = cache.known();
    let (mut m, stats) = manifest(&files, &mut cache, &|n| {
        hashing.inc(n);
        hashed_files.done(1);
    })?;
    for path in component_paths {
        if let Some(mut entry) = m.files.remove(&path) {
            entry.content_type = "application/wasm".into();
            m.insert_component(path, entry)?;
        }
    }
    // Files known by the cache are done without reading them.
    hashing.inc(total.saturating_sub(stats.bytes_hashed));
    hashed_files.done(stats.cached as u64);
    // Nothing hashed, nothing added or dropped: the cache on disk is still
    // right.
    let unchanged = stats.hashed == 0 && cache.known() == files.len() && cache.known() == known;
    if let Some(file) = &cache_file
        && !unchanged
        && let Err(e) = cache.save(file)
    {
        eprintln!(
            "warning: cannot save the hash cache {}: {e:#}",
            file.display()
        );
    }
    Ok(Walked { files, manifest: m })
}
