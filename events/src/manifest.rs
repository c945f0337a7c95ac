//! A site version's manifest: every served path with its blob's blake3
//! hash, size and content type, and, in a section never served, the
//! version's WebAssembly components (functions and transforms, by their
//! path in the site directory). It is a blob itself (too large for an
//! event); the `site-published` event carries its hash and size, so a
//! version (and a rollback to it) carries its components with it.
//!
//! The encoding is canonical (postcard of a sorted map), so one manifest has
//! one hash. Paths are checked on decode as well as on creation: a manifest
//! from anywhere can never name a file outside its site (no `..`, no
//! absolute paths, no NUL or control characters, no empty segments).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Blake3Hash;
use crate::payload::ChangeSummary;

/// The encoding version written first in a manifest without components
/// (every manifest made before components existed keeps its bytes and hash).
const VERSION: u8 = 1;
/// The encoding version of a manifest with components: the files, then
/// the components.
const VERSION_COMPONENTS: u8 = 2;
/// The longest path accepted.
pub const MAX_PATH_BYTES: usize = 1024;

/// Why bytes are not a valid manifest, or a path not a valid site path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("the manifest does not decode: {0}")]
    Malformed(String),
    #[error("the manifest's encoding is not canonical")]
    NotCanonical,
    #[error("manifest version {0} is not known to this version of Makiatto")]
    UnknownVersion(u8),
    #[error("path {path:?} is not allowed: {why}")]
    BadPath { path: String, why: &'static str },
    #[error("the delta does not give manifest {0}")]
    NotTheTarget(Blake3Hash),
}

/// One file of a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub hash: Blake3Hash,
    pub size: u64,
    pub content_type: String,
}

/// Every file of a version, by path (relative, `/`-separated), and the
/// components it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// What the version serves.
    pub files: BTreeMap<String, FileEntry>,
    /// The WebAssembly components named by the domain's functions and
    /// transforms, by their path in the site directory: configuration,
    /// never served, kept and fetched like the files.
    #[serde(default)]
    pub components: BTreeMap<String, FileEntry>,
}

#[derive(Serialize, Deserialize)]
struct Encoded<'a> {
    version: u8,
    files: std::borrow::Cow<'a, BTreeMap<String, FileEntry>>,
}

#[derive(Serialize, Deserialize)]
struct EncodedWithComponents<'a> {
    version: u8,
    files: std::borrow::Cow<'a, BTreeMap<String, FileEntry>>,
    components: std::borrow::Cow<'a, BTreeMap<String, FileEntry>>,
}

/// Postcard bytes whose first byte (the encoding's version) must be
/// `version`.
fn decode_versioned<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    version: u8,
    empty: &str,
) -> Result<T, ManifestError> {
    let found = *bytes
        .first()
        .ok_or_else(|| ManifestError::Malformed(empty.into()))?;
    if found != version {
        return Err(ManifestError::UnknownVersion(found));
    }
    postcard::from_bytes(bytes).map_err(|e| ManifestError::Malformed(e.to_string()))
}

/// Checks a path as a manifest may hold it.
pub fn check_path(path: &str) -> Result<(), ManifestError> {
    let bad = |why| {
        Err(ManifestError::BadPath {
            path: path.chars().take(200).collect(),
            why,
        })
    };
    if path.is_empty() {
        return bad("it is empty");
    }
    if path.len() > MAX_PATH_BYTES {
        return bad("it is longer than 1024 bytes");
    }
    if path.starts_with('/') {
        return bad("it is absolute");
    }
    if path.chars().any(|c| c == '\0' || c.is_control()) {
        return bad("it holds a NUL or control character");
    }
    if path.contains('\\') {
        return bad("it holds a backslash");
    }
    for segment in path.split('/') {
        match segment {
            "" => return bad("it has an empty segment"),
            "." | ".." => return bad("it has a . or .. segment"),
            _ => {}
        }
    }
    Ok(())
}

impl Manifest {
    /// Adds a file, checking its path.
    pub fn insert(&mut self, path: String, entry: FileEntry) -> Result<(), ManifestError> {
        check_path(&path)?;
        self.files.insert(path, entry);
        Ok(())
    }

    /// A manifest of these files, checking every path (faster than
    /// inserting one by one when they come sorted).
    pub fn from_files(
        files: impl IntoIterator<Item = (String, FileEntry)>,
    ) -> Result<Manifest, ManifestError> {
        let files: Vec<(String, FileEntry)> = files.into_iter().collect();
        for (path, _) in &files {
            check_path(path)?;
        }
        Ok(Manifest {
            files: files.into_iter().collect(),
            components: BTreeMap::new(),
        })
    }

    /// Adds a component, checking its path.
    pub fn insert_component(
        &mut self,
        path: String,
        entry: FileEntry,
    ) -> Result<(), ManifestError> {
        check_path(&path)?;
        self.components.insert(path, entry);
        Ok(())
    }

    /// Every blob the version needs: its files and its components.
    pub fn blobs(&self) -> impl Iterator<Item = &FileEntry> + '_ {
        self.files.values().chain(self.components.values())
    }

    /// The canonical bytes (version 1 when there is no component, so a
    /// manifest of files only keeps the bytes it always had).
    pub fn encode(&self) -> Vec<u8> {
        let files = std::borrow::Cow::Borrowed(&self.files);
        if self.components.is_empty() {
            postcard::to_allocvec(&Encoded {
                version: VERSION,
                files,
            })
        } else {
            postcard::to_allocvec(&EncodedWithComponents {
                version: VERSION_COMPONENTS,
                files,
                components: std::borrow::Cow::Borrowed(&self.components),
            })
        }
        .unwrap_or_default()
    }

    /// The blob's hash: blake3 of the canonical bytes.
    pub fn hash(&self) -> Blake3Hash {
        Blake3Hash::of(&self.encode())
    }

    /// Decodes a manifest from anywhere: version known, canonical, every
    /// path allowed.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let manifest = match bytes.first() {
            Some(&VERSION_COMPONENTS) => {
                let encoded: EncodedWithComponents =
                    decode_versioned(bytes, VERSION_COMPONENTS, "empty")?;
                Manifest {
                    files: encoded.files.into_owned(),
                    components: encoded.components.into_owned(),
                }
            }
            _ => {
                let encoded: Encoded = decode_versioned(bytes, VERSION, "empty")?;
                Manifest {
                    files: encoded.files.into_owned(),
                    components: BTreeMap::new(),
                }
            }
        };
        for path in manifest.files.keys().chain(manifest.components.keys()) {
            check_path(path)?;
        }
        if manifest.encode() != bytes {
            return Err(ManifestError::NotCanonical);
        }
        Ok(manifest)
    }

    /// Total size of the files.
    pub fn bytes(&self) -> u64 {
        self.files.values().map(|f| f.size).sum()
    }

    /// What changed from `before` (an empty manifest for a first version).
    pub fn summary_since(&self, before: &Manifest) -> ChangeSummary {
        let mut s = ChangeSummary {
            files: self.files.len() as u64,
            added: 0,
            changed: 0,
            removed: 0,
            bytes: self.bytes(),
        };
        for (_, old, new) in self.changes_since(before) {
            match (old, new) {
                (None, Some(_)) => s.added += 1,
                (Some(_), Some(_)) => s.changed += 1,
                (Some(_), None) => s.removed += 1,
                (None, None) => {}
            }
        }
        s
    }

    /// The paths whose entry differs from `before`'s, in path order, with
    /// the old and the new entry (none where the path is absent): one
    /// pass over both sorted maps, no lookups.
    pub fn changes_since<'a>(
        &'a self,
        before: &'a Manifest,
    ) -> impl Iterator<Item = (&'a str, Option<&'a FileEntry>, Option<&'a FileEntry>)> + 'a {
        let mut old = before.files.iter().peekable();
        let mut new = self.files.iter().peekable();
        std::iter::from_fn(move || {
            loop {
                use std::cmp::Ordering;
                let order = match (old.peek(), new.peek()) {
                    (None, None) => return None,
                    (Some(_), None) => Ordering::Less,
                    (None, Some(_)) => Ordering::Greater,
                    (Some((a, _)), Some((b, _))) => a.cmp(b),
                };
                match order {
                    Ordering::Less => {
                        let (p, e) = old.next()?;
                        return Some((p.as_str(), Some(e), None));
                    }
                    Ordering::Greater => {
                        let (p, e) = new.next()?;
                        return Some((p.as_str(), None, Some(e)));
                    }
                    Ordering::Equal => {
                        let ((p, a), (_, b)) = (old.next()?, new.next()?);
                        if a != b {
                            return Some((p.as_str(), Some(a), Some(b)));
                        }
                    }
                }
            }
        })
    }
}

/// The encoding version written first in a manifest delta that changes
/// no component (the bytes deltas always had).
const DELTA_VERSION: u8 = 1;
/// The encoding version of a delta that changes components too.
const DELTA_VERSION_COMPONENTS: u8 = 2;

/// What turns one manifest (the base) into another: the entries added or
/// changed, and the paths removed, of the files and of the components. A
/// node that holds the base rebuilds the target from it and checks the
/// result against the target's hash, so a delta from anywhere is only
/// trusted once it yields the announced manifest. A one-file edit of a
/// 10,000-file site is about a hundred bytes instead of the whole manifest
/// (about 100 bytes per file).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManifestDelta {
    pub upserts: BTreeMap<String, FileEntry>,
    pub removed: Vec<String>,
    pub component_upserts: BTreeMap<String, FileEntry>,
    pub components_removed: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct EncodedDelta<'a> {
    version: u8,
    upserts: std::borrow::Cow<'a, BTreeMap<String, FileEntry>>,
    removed: std::borrow::Cow<'a, [String]>,
}

#[derive(Serialize, Deserialize)]
struct EncodedDeltaWithComponents<'a> {
    version: u8,
    upserts: std::borrow::Cow<'a, BTreeMap<String, FileEntry>>,
    removed: std::borrow::Cow<'a, [String]>,
    component_upserts: std::borrow::Cow<'a, BTreeMap<String, FileEntry>>,
    components_removed: std::borrow::Cow<'a, [String]>,
}

/// The entries of `new` that differ from `old`'s, and the paths `old` has
/// and `new` lacks.
fn diff(
    old: &BTreeMap<String, FileEntry>,
    new: &BTreeMap<String, FileEntry>,
) -> (BTreeMap<String, FileEntry>, Vec<String>) {
    let mut upserts = BTreeMap::new();
    let mut removed = Vec::new();
    for (path, entry) in new {
        if old.get(path) != Some(entry) {
            upserts.insert(path.clone(), entry.clone());
        }
    }
    for path in old.keys() {
        if !new.contains_key(path) {
            removed.push(path.clone());
        }
    }
    (upserts, removed)
}

/// `base` with the upserts and removals applied, every path checked.
fn patch(
    base: &BTreeMap<String, FileEntry>,
    upserts: &BTreeMap<String, FileEntry>,
    removed: &[String],
) -> Result<BTreeMap<String, FileEntry>, ManifestError> {
    let mut files = base.clone();
    for path in removed {
        if files.remove(path).is_none() {
            return Err(ManifestError::Malformed(format!(
                "the delta removes {:?}, which the base does not hold",
                path.chars().take(200).collect::<String>()
            )));
        }
    }
    for (path, entry) in upserts {
        check_path(path)?;
        files.insert(path.clone(), entry.clone());
    }
    Ok(files)
}

impl Manifest {
    /// The delta that turns `base` into this manifest.
    pub fn delta_from(&self, base: &Manifest) -> ManifestDelta {
        let mut delta = ManifestDelta::default();
        for (path, _, new) in self.changes_since(base) {
            match new {
                Some(entry) => {
                    delta.upserts.insert(path.to_owned(), entry.clone());
                }
                None => delta.removed.push(path.to_owned()),
            }
        }
        (delta.component_upserts, delta.components_removed) =
            diff(&base.components, &self.components);
        delta
    }

    /// `base` with `delta` applied; every path is checked as a manifest's
    /// are. The caller compares the result's hash with the one it expects.
    pub fn apply(base: &Manifest, delta: &ManifestDelta) -> Result<Manifest, ManifestError> {
        Ok(Manifest {
            files: patch(&base.files, &delta.upserts, &delta.removed)?,
            components: patch(
                &base.components,
                &delta.component_upserts,
                &delta.components_removed,
            )?,
        })
    }
}

impl ManifestDelta {
    /// The canonical bytes (version 1 when no component changes).
    pub fn encode(&self) -> Vec<u8> {
        use std::borrow::Cow::Borrowed;
        if self.component_upserts.is_empty() && self.components_removed.is_empty() {
            postcard::to_allocvec(&EncodedDelta {
                version: DELTA_VERSION,
                upserts: Borrowed(&self.upserts),
                removed: Borrowed(&self.removed),
            })
        } else {
            postcard::to_allocvec(&EncodedDeltaWithComponents {
                version: DELTA_VERSION_COMPONENTS,
                upserts: Borrowed(&self.upserts),
                removed: Borrowed(&self.removed),
                component_upserts: Borrowed(&self.component_upserts),
                components_removed: Borrowed(&self.components_removed),
            })
        }
        .unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<ManifestDelta, ManifestError> {
        if bytes.first() == Some(&DELTA_VERSION_COMPONENTS) {
            let e: EncodedDeltaWithComponents =
                decode_versioned(bytes, DELTA_VERSION_COMPONENTS, "empty delta")?;
            return Ok(ManifestDelta {
                upserts: e.upserts.into_owned(),
                removed: e.removed.into_owned(),
                component_upserts: e.component_upserts.into_owned(),
                components_removed: e.components_removed.into_owned(),
            });
        }
        let e: EncodedDelta = decode_versioned(bytes, DELTA_VERSION, "empty delta")?;
        Ok(ManifestDelta {
            upserts: e.upserts.into_owned(),
            removed: e.removed.into_owned(),
            ..ManifestDelta::default()
        })
    }

    /// Manifest `target` rebuilt from `base`, with its canonical bytes;
    /// refused unless they hash to `target` (a delta from anywhere is
    /// trusted only this way).
    pub fn rebuild(
        &self,
        base: &Manifest,
        target: Blake3Hash,
    ) -> Result<(Manifest, Vec<u8>), ManifestError> {
        let manifest = Manifest::apply(base, self)?;
        let bytes = manifest.encode();
        if Blake3Hash::of(&bytes) != target {
            return Err(ManifestError::NotTheTarget(target));
        }
        Ok((manifest, bytes))
    }

    /// The blobs the delta's new entries name (files and components).
    pub fn hashes(&self) -> impl Iterator<Item = Blake3Hash> + '_ {
        self.upserts
            .values()
            .chain(self.component_upserts.values())
            .map(|e| e.hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(byte: u8, size: u64) -> FileEntry {
        FileEntry {
            hash: Blake3Hash::of(&[byte]),
            size,
            content_type: "text/html; charset=utf-8".into(),
        }
    }

    #[test]
    fn manifests_round_trip_canonically() {
        let mut m = Manifest::default();
        m.insert("index.html".into(), entry(1, 10)).unwrap();
        m.insert("css/site.css".into(), entry(2, 20)).unwrap();
        let bytes = m.encode();
        assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        assert_eq!(m.hash(), Blake3Hash::of(&bytes));
        assert!(Manifest::decode(&[2]).is_err());
        assert!(Manifest::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn a_delta_rebuilds_the_target_exactly() {
        let mut base = Manifest::default();
        for i in 0..50u8 {
            base.insert(format!("d/f{i}.html"), entry(i, u64::from(i)))
                .unwrap();
        }
        let mut target = base.clone();
        target.files.remove("d/f3.html");
        target.insert("d/f4.html".into(), entry(200, 9)).unwrap();
        target
            .insert("new/page.html".into(), entry(201, 7))
            .unwrap();
        let delta = target.delta_from(&base);
        assert_eq!(delta.upserts.len(), 2);
        assert_eq!(delta.removed, vec!["d/f3.html".to_owned()]);
        let bytes = delta.encode();
        assert!(bytes.len() < 300, "{} bytes", bytes.len());
        let delta = ManifestDelta::decode(&bytes).unwrap();
        let (rebuilt, encoded) = delta.rebuild(&base, target.hash()).unwrap();
        assert_eq!(rebuilt, target);
        assert_eq!(encoded, target.encode());
        assert_eq!(
            delta.rebuild(&base, base.hash()),
            Err(ManifestError::NotTheTarget(base.hash()))
        );
        // Nothing changed: an empty delta.
        assert_eq!(base.delta_from(&base), ManifestDelta::default());
    }

    #[test]
    fn components_ride_in_their_own_section_and_old_manifests_keep_their_bytes() {
        let mut files_only = Manifest::default();
        files_only
            .insert("index.html".into(), entry(1, 10))
            .unwrap();
        // A manifest without components encodes as it always did.
        let old = Encoded {
            version: VERSION,
            files: std::borrow::Cow::Borrowed(&files_only.files),
        };
        assert_eq!(files_only.encode(), postcard::to_allocvec(&old).unwrap());
        let mut with = files_only.clone();
        with.insert_component("api/hello.wasm".into(), entry(9, 99))
            .unwrap();
        let bytes = with.encode();
        assert_eq!(bytes[0], VERSION_COMPONENTS);
        let back = Manifest::decode(&bytes).unwrap();
        assert_eq!(back, with);
        assert!(!back.files.contains_key("api/hello.wasm"), "never served");
        assert_eq!(back.blobs().count(), 2);
        assert_ne!(with.hash(), files_only.hash());
        // A delta adding the component, then one removing it.
        let delta = with.delta_from(&files_only);
        assert!(delta.upserts.is_empty());
        assert_eq!(delta.component_upserts.len(), 1);
        assert_eq!(delta.hashes().collect::<Vec<_>>(), vec![entry(9, 99).hash]);
        let delta = ManifestDelta::decode(&delta.encode()).unwrap();
        assert_eq!(delta.rebuild(&files_only, with.hash()).unwrap().0, with);
        let back = files_only.delta_from(&with);
        assert_eq!(back.components_removed, vec!["api/hello.wasm".to_owned()]);
        let back = ManifestDelta::decode(&back.encode()).unwrap();
        assert_eq!(
            back.rebuild(&with, files_only.hash()).unwrap().0,
            files_only
        );
        // A forged component path is refused like a file's.
        let forged = EncodedWithComponents {
            version: VERSION_COMPONENTS,
            files: std::borrow::Cow::Owned(BTreeMap::new()),
            components: std::borrow::Cow::Owned([("../x.wasm".to_owned(), entry(1, 1))].into()),
        };
        assert!(matches!(
            Manifest::decode(&postcard::to_allocvec(&forged).unwrap()),
            Err(ManifestError::BadPath { .. })
        ));
    }

    #[test]
    fn a_hostile_delta_is_refused() {
        let base = Manifest::default();
        let mut delta = ManifestDelta::default();
        delta.upserts.insert("../etc/passwd".into(), entry(1, 1));
        assert!(matches!(
            Manifest::apply(&base, &delta),
            Err(ManifestError::BadPath { .. })
        ));
        let gone = ManifestDelta {
            removed: vec!["never/there".into()],
            ..ManifestDelta::default()
        };
        assert!(Manifest::apply(&base, &gone).is_err());
        assert!(ManifestDelta::decode(&[]).is_err());
        assert!(ManifestDelta::decode(&[9, 0, 0]).is_err());
        assert!(ManifestDelta::decode(&[DELTA_VERSION, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn hostile_paths_are_refused_even_in_a_forged_manifest() {
        for path in [
            "../etc/passwd",
            "/etc/passwd",
            "a/../../b",
            "a//b",
            "a/./b",
            "nul\0byte",
            "back\\slash",
            "",
            "dir/",
        ] {
            assert!(check_path(path).is_err(), "{path:?}");
            // Built by hand, bypassing `insert`.
            let forged = Encoded {
                version: VERSION,
                files: std::borrow::Cow::Owned([(path.to_owned(), entry(1, 1))].into()),
            };
            let bytes = postcard::to_allocvec(&forged).unwrap();
            assert!(
                matches!(Manifest::decode(&bytes), Err(ManifestError::BadPath { .. })),
                "{path:?}"
            );
        }
        for path in [".well-known/acme", "a b/c.html", "ünïcode.txt", "..hidden"] {
            assert!(check_path(path).is_ok(), "{path:?}");
        }
    }

    #[test]
    fn the_summary_counts_added_changed_and_removed() {
        let mut old = Manifest::default();
        old.insert("a".into(), entry(1, 1)).unwrap();
        old.insert("b".into(), entry(2, 2)).unwrap();
        let mut new = Manifest::default();
        new.insert("a".into(), entry(1, 1)).unwrap();
        new.insert("b".into(), entry(3, 5)).unwrap();
        new.insert("c".into(), entry(4, 4)).unwrap();
        let s = new.summary_since(&old);
        assert_eq!(
            (s.files, s.added, s.changed, s.removed, s.bytes),
            (3, 1, 1, 0, 10)
        );
        let s = Manifest::default().summary_since(&new);
        assert_eq!(s.removed, 3);
    }
}
