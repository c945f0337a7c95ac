//! What `maki` keeps between syncs, beside the operator's key (per
//! cluster): the configuration as of this operator's last sync (the base),
//! the digests of the env values it sealed, the manifest each domain last
//! published from here, and a marker while a sync is unfinished.
//!
//! None of it is authoritative: a missing or stale copy costs a fetch or a
//! few kilobytes sent again, never a wrong result.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use makiatto_events::{Blake3Hash, Manifest};
use makiatto_projections::config::{ConfigDoc, DesiredConfig};

use crate::cluster::Ctx;
use crate::operator::Operator;

/// The files of one cluster's sync state.
#[derive(Debug, Clone)]
pub struct Kept {
    /// The configuration as of the last sync (an automerge document).
    base: PathBuf,
    /// Per env value sealed (`domain/path/VAR`), the digest of the value
    /// sealed: an unchanged value keeps its sealed form.
    secrets: PathBuf,
    /// `<domain>.bin` manifests, `<domain>.unfinished` markers.
    manifests: PathBuf,
}

/// Secrets' digests, by `domain/path/VAR`.
pub type SealedDigests = BTreeMap<String, String>;

impl Kept {
    pub fn of(ctx: &Ctx, cluster_id: &str) -> Kept {
        let dir = ctx
            .operator_key_path
            .parent()
            .unwrap_or(Path::new("."))
            .join("base");
        Kept {
            base: dir.join(format!("{cluster_id}.automerge")),
            secrets: dir.join(format!("{cluster_id}.secrets.json")),
            manifests: dir.join(format!("{cluster_id}.manifests")),
        }
    }

    /// The base, if a sync from here saved one.
    pub fn base(&self) -> anyhow::Result<Option<DesiredConfig>> {
        match std::fs::read(&self.base) {
            Ok(bytes) => ConfigDoc::load(&bytes)
                .and_then(|d| d.view())
                .map(Some)
                .with_context(|| {
                    format!(
                        "the sync base {} is damaged; remove it",
                        self.base.display()
                    )
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", self.base.display())),
        }
    }

    /// The digests of the values sealed so far (none when unreadable: the
    /// values are then sealed afresh).
    pub fn sealed_digests(&self) -> SealedDigests {
        std::fs::read(&self.secrets)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Saves the configuration this sync sent and the digests of what it
    /// sealed: the next sync's base.
    pub fn save_base(
        &self,
        config: &DesiredConfig,
        digests: &SealedDigests,
        operator: &Operator,
    ) -> anyhow::Result<()> {
        // Kept whole here, never sent: one change however large.
        let doc = ConfigDoc::whole(&operator.key().public(), rand::random(), config)?;
        if let Some(dir) = self.base.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        for (path, bytes) in [
            (&self.base, doc.save()),
            (&self.secrets, serde_json::to_vec(digests)?),
        ] {
            write_atomically(path, &bytes)
                .with_context(|| format!("cannot save {}", path.display()))?;
        }
        Ok(())
    }

    /// Where the manifest of a domain's last version synced from here is
    /// kept, so the next sync need not fetch it.
    pub fn manifest_file(&self, domain: &str) -> PathBuf {
        self.manifests.join(format!("{domain}.bin"))
    }

    /// The manifest kept for `domain`, with its hash, if there is a
    /// readable one.
    pub fn manifest(&self, domain: &str) -> Option<(Blake3Hash, Manifest)> {
        let bytes = std::fs::read(self.manifest_file(domain)).ok()?;
        Some((Blake3Hash::of(&bytes), Manifest::decode(&bytes).ok()?))
    }

    /// Keeps a manifest for the next sync; failing to is no error (the next
    /// sync fetches it).
    pub fn keep_manifest(&self, domain: &str, bytes: &[u8]) {
        let file = self.manifest_file(domain);
        let kept = file
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| write_atomically(&file, bytes));
        if let Err(e) = kept {
            eprintln!(
                "warning: cannot keep the manifest in {}: {e}",
                file.display()
            );
        }
    }

    /// Present while a sync of `domain` that has begun to upload has not
    /// delivered its events: the next sync then asks the node which blobs
    /// it lacks before sending any (it resumes; it does not send again
    /// what the cut-off sync sent).
    pub fn unfinished_marker(&self, domain: &str) -> PathBuf {
        self.manifests.join(format!("{domain}.unfinished"))
    }

    /// Leaves the marker; a marker that cannot be written costs at most a
    /// few kilobytes sent again after an interruption.
    pub fn mark_unfinished(&self, domain: &str) {
        let marker = self.unfinished_marker(domain);
        if let Some(dir) = marker.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = std::fs::write(marker, b"");
    }

    pub fn is_unfinished(&self, domain: &str) -> bool {
        self.unfinished_marker(domain).exists()
    }

    pub fn mark_finished(&self, domain: &str) {
        let _ = std::fs::remove_file(self.unfinished_marker(domain));
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
