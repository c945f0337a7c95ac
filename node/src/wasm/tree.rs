//! A version's files as a directory tree of hard links into the blob
//! store: the sandbox's read-only `/` (`<data>/wasm/trees/<manifest>/`).
//! A tree is made once per manifest, in a temporary directory renamed into
//! place, so a component sees a version whole or not at all; a version
//! switch is a switch to another tree. Only the version's served files are
//! in it (never its components, never another domain's files).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use makiatto_events::Blake3Hash;

/// The trees on disk, and those known to be complete.
#[derive(Clone)]
pub struct Trees {
    dir: Arc<PathBuf>,
    made: Arc<Mutex<HashMap<Blake3Hash, Arc<PathBuf>>>>,
}

impl Trees {
    pub fn open(data_dir: &Path) -> std::io::Result<Trees> {
        let dir = data_dir.join("wasm").join("trees");
        std::fs::create_dir_all(&dir)?;
        // Leftovers of a tree being made when the daemon stopped.
        for entry in std::fs::read_dir(&dir)?.flatten() {
            if entry.file_name().to_string_lossy().contains(".tmp") {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(Trees {
            dir: Arc::new(dir),
            made: Arc::default(),
        })
    }

    /// The tree of a manifest, if it is complete.
    pub fn get(&self, manifest: &Blake3Hash) -> Option<Arc<PathBuf>> {
        if let Some(t) = self.made.lock().ok()?.get(manifest) {
            return Some(t.clone());
        }
        let path = self.dir.join(manifest.to_hex());
        path.is_dir().then(|| self.remember(manifest, path))
    }

    fn remember(&self, manifest: &Blake3Hash, path: PathBuf) -> Arc<PathBuf> {
        let path = Arc::new(path);
        if let Ok(mut made) = self.made.lock() {
            made.insert(*manifest, path.clone());
        }
        path
    }

    /// Makes the tree of a manifest: every file a hard link to its blob.
    pub fn make(
        &self,
        manifest: Blake3Hash,
        files: &[(String, Blake3Hash)],
        blob: impl Fn(&Blake3Hash) -> PathBuf,
    ) -> std::io::Result<Arc<PathBuf>> {
        if let Some(t) = self.get(&manifest) {
            return Ok(t);
        }
        let target = self.dir.join(manifest.to_hex());
        let tmp = self.dir.join(format!(
            "{}.tmp{}",
            manifest.to_hex(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&tmp)?;
        let made = (|| {
            for (path, hash) in files {
                // Manifest paths are checked (no `..`, not absolute).
                let dst = tmp.join(path);
                if let Some(parent) = dst.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::hard_link(blob(hash), &dst)?;
            }
            std::fs::rename(&tmp, &target)
        })();
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&tmp);
            // Another call made it meanwhile.
            if target.is_dir() {
                return Ok(self.remember(&manifest, target));
            }
            return Err(e);
        }
        Ok(self.remember(&manifest, target))
    }

    /// Deletes trees of manifests not kept.
    pub fn collect(&self, keep: &std::collections::HashSet<Blake3Hash>) {
        if let Ok(mut made) = self.made.lock() {
            made.retain(|h, _| keep.contains(h));
        }
        let Ok(dir) = std::fs::read_dir(&*self.dir) else {
            return;
        };
        for entry in dir.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.contains(".tmp") {
                continue;
            }
            let kept = crate::blobs::parse_hash(&name).is_ok_and(|h| keep.contains(&h));
            if !kept {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_links_the_versions_files_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = dir.path().join("blobs");
        std::fs::create_dir_all(&blobs).unwrap();
        let a = Blake3Hash::of(b"a");
        std::fs::write(blobs.join(a.to_hex()), b"a").unwrap();
        let trees = Trees::open(dir.path()).unwrap();
        let m = Blake3Hash::of(b"manifest");
        let files = vec![("index.html".to_owned(), a), ("d/e/f.txt".to_owned(), a)];
        let t = trees.make(m, &files, |h| blobs.join(h.to_hex())).unwrap();
        assert_eq!(std::fs::read(t.join("d/e/f.txt")).unwrap(), b"a");
        assert_eq!(trees.get(&m).unwrap(), t);
        trees.collect(&Default::default());
        assert!(!t.exists());
        assert!(trees.get(&m).is_none());
    }
}
