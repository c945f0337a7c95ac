//! What each domain's new version is against the live one: pure, from the
//! walked tree and the live version's manifest.

use std::collections::BTreeSet;
use std::path::PathBuf;

use makiatto_events::payload::ChangeSummary;
use makiatto_events::{Blake3Hash, DomainName, Manifest};
use makiatto_projections::sites::Sites;

use super::walk::Walked;
use crate::project::Domain;

/// One domain's new version.
pub struct Planned<'a> {
    pub domain: &'a Domain,
    pub manifest: Manifest,
    pub manifest_bytes: Vec<u8>,
    /// The hash of `manifest_bytes`, the new version's manifest blob.
    pub manifest_hash: Blake3Hash,
    pub summary: ChangeSummary,
    /// Local files with their hashes and sizes, to upload from (those the
    /// live version lacks), in path order: the order they were written in,
    /// so mostly the order they lie on disk.
    pub sources: Vec<(Blake3Hash, PathBuf, u64)>,
    /// Blobs of the live version: the node holds them (it keeps the live
    /// version's files), so they are not even asked about.
    pub known: BTreeSet<Blake3Hash>,
    /// The live version's manifest and the delta from it to this one: what
    /// is sent instead of the whole manifest when the node takes it.
    pub delta: Option<(Blake3Hash, Vec<u8>)>,
}

/// The live version's manifest of `domain`, as the sites projection names it.
pub fn live_manifest(sites: &Sites, domain: &str) -> Option<Blake3Hash> {
    let name = DomainName::new(domain).ok()?;
    Some(sites.domains.get(&name)?.live_version()?.manifest.hash)
}

/// A walked tree, encoded: its manifest's bytes and hash.
pub struct Encoded {
    pub walked: Walked,
    pub bytes: Vec<u8>,
    pub hash: Blake3Hash,
}

impl Encoded {
    pub fn new(walked: Walked) -> Encoded {
        let bytes = walked.manifest.encode();
        let hash = Blake3Hash::of(&bytes);
        Encoded {
            walked,
            bytes,
            hash,
        }
    }
}

/// The new version of `domain` against `before` (the live version's
/// manifest, whose hash is `live`; empty when none is live).
pub fn plan<'a>(
    domain: &'a Domain,
    tree: Encoded,
    live: Option<Blake3Hash>,
    before: &Manifest,
) -> Planned<'a> {
    let Encoded {
        walked: Walked { files, manifest },
        bytes,
        hash,
    } = tree;
    let summary = manifest.summary_since(before);
    let known: BTreeSet<Blake3Hash> = before.blobs().map(|f| f.hash).collect();
    // Only what may be uploaded: the files and components the live
    // version lacks.
    let sources = files
        .iter()
        .filter_map(|f| {
            let entry = manifest.files.get(&f.path);
            entry
                .or_else(|| manifest.components.get(&f.path))
                .map(|e| (e.hash, f))
        })
        .filter(|(h, _)| !known.contains(h))
        .map(|(h, f)| (h, f.full.clone(), f.size))
        .collect();
    let delta = live
        .filter(|_| !before.files.is_empty() || !before.components.is_empty())
        .map(|h| (h, manifest.delta_from(before).encode()));
    Planned {
        domain,
        manifest,
        manifest_bytes: bytes,
        manifest_hash: hash,
        summary,
        sources,
        known,
        delta,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Found;
    use makiatto_events::FileEntry;

    fn domain() -> Domain {
        Domain::for_test("example.com")
    }

    fn tree(files: &[(&str, &[u8])]) -> Walked {
        let mut manifest = Manifest::default();
        let mut found = Vec::new();
        for (path, body) in files {
            manifest
                .insert(
                    (*path).to_owned(),
                    FileEntry {
                        hash: Blake3Hash::of(body),
                        size: body.len() as u64,
                        content_type: "text/html".into(),
                    },
                )
                .unwrap();
            found.push(Found {
                path: (*path).to_owned(),
                full: PathBuf::from("/site").join(path),
                size: body.len() as u64,
                mtime_ns: 0,
            });
        }
        Walked {
            files: found,
            manifest,
        }
    }

    #[test]
    fn a_first_version_sends_everything_whole() {
        let d = domain();
        let p = plan(
            &d,
            Encoded::new(tree(&[("a.html", b"a"), ("b.html", b"b")])),
            None,
            &Manifest::default(),
        );
        assert_eq!(p.summary.added, 2);
        assert_eq!(p.sources.len(), 2);
        assert!(p.delta.is_none() && p.known.is_empty());
    }

    #[test]
    fn an_edit_sends_only_the_changed_file_and_a_delta() {
        let d = domain();
        let before = tree(&[("a.html", b"a"), ("b.html", b"b")]).manifest;
        let live = before.hash();
        let p = plan(
            &d,
            Encoded::new(tree(&[("a.html", b"a"), ("b.html", b"b2")])),
            Some(live),
            &before,
        );
        assert_eq!((p.summary.changed, p.summary.added), (1, 0));
        assert_eq!(p.sources.len(), 1);
        assert_eq!(p.sources[0].0, Blake3Hash::of(b"b2"));
        let (base, delta) = p.delta.unwrap();
        assert_eq!(base, live);
        let rebuilt = Manifest::apply(
            &before,
            &makiatto_events::ManifestDelta::decode(&delta).unwrap(),
        )
        .unwrap();
        assert_eq!(rebuilt.hash(), p.manifest_hash);
    }

    #[test]
    fn the_live_manifest_is_read_from_the_sites_projection() {
        assert_eq!(live_manifest(&Sites::default(), "example.com"), None);
        assert_eq!(live_manifest(&Sites::default(), "not a domain"), None);
    }
}
