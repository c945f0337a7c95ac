//! Getting the new versions' blobs onto one node, sending as little as
//! possible:
//! - a manifest that has a delta from the live one goes as that delta
//!   (`manifest-put`: about a hundred bytes for a one-file edit of a
//!   10,000-file site, instead of a megabyte);
//! - a small sync (the usual edit: new files of at most
//!   [`SEND_AHEAD_BYTES`]) sends them with the deltas, without first asking
//!   which the node lacks: they are nearly always new to it, and the
//!   question costs a round trip more than a few kilobytes it may hold;
//! - otherwise (or when what was sent ahead was not all taken, or a sync is
//!   resumed) it asks (`blobs-missing`) and sends only what is missing:
//!   inline on the control session up to [`INLINE_UPLOAD_BYTES`], else
//!   streamed through `makiatto blobs receive`.
//!
//! The node verifies every blob against its hash.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::{Context, bail};
use makiatto_events::Blake3Hash;
use makiatto_protocol::blob_stream::{InlineBlob, Received};
use makiatto_protocol::client::Batch;
use makiatto_protocol::request as op;

use super::plan::Planned;
use super::timing::Timing;
use crate::ssh::{FileCount, Remote, files_bar};

/// Uploads up to this size go inline in a control request (hex: twice
/// the size on the wire, under the node's limit of 8 MiB).
const INLINE_UPLOAD_BYTES: u64 = 2 << 20;

/// A sync whose new blobs come to at most this many bytes sends them
/// without asking which the node lacks.
const SEND_AHEAD_BYTES: u64 = 256 << 10;

/// Bytes to upload: a local file or bytes made here (a manifest).
pub enum Source {
    File(PathBuf, u64),
    Bytes(Vec<u8>),
}

impl Source {
    pub fn size(&self) -> u64 {
        match self {
            Source::File(_, n) => *n,
            Source::Bytes(b) => b.len() as u64,
        }
    }
}

/// How the upload goes.
#[derive(Debug, Clone, Copy)]
pub struct Mode {
    /// Only ask what is missing; send nothing.
    pub dry_run: bool,
    /// A sync of these domains stopped midway before: ask first, so that
    /// nothing it sent is sent again.
    pub resuming: bool,
}

/// What the upload did.
#[derive(Debug, Default)]
pub struct Uploaded<'p> {
    /// Files' bytes sent (or, in a dry run, to send), per domain.
    pub per_domain: BTreeMap<&'p str, u64>,
    /// All bytes sent (or to send), manifests included.
    pub bytes: u64,
}

/// Gets every blob of `plans` onto the node behind `remote`.
pub async fn upload<'p>(
    remote: &Remote,
    machine: &str,
    plans: &'p [Planned<'p>],
    mode: Mode,
    timing: &Timing,
) -> anyhow::Result<Uploaded<'p>> {
    let mut deltas = Batch::new();
    if !mode.dry_run {
        push_deltas(&mut deltas, plans);
    }
    let ahead = if mode.dry_run || mode.resuming {
        None
    } else {
        sent_ahead(plans)
    };
    let mut sent = Uploaded::default();
    if let Some(upload) = ahead {
        // Whatever happens next, the deltas are sent now.
        let (uploaded, complete) =
            send_ahead(remote, machine, std::mem::take(&mut deltas), &upload).await?;
        timing.mark("manifest deltas and new blobs sent ahead");
        if complete {
            return Ok(uploaded);
        }
        sent = uploaded;
    }
    // A delta the node did not take (or an upload it could not read)
    // leaves something missing: the question finds it.
    let mut uploaded = ask_and_upload(remote, machine, plans, deltas, mode.dry_run, timing).await?;
    uploaded.bytes += sent.bytes;
    for (domain, bytes) in sent.per_domain {
        *uploaded.per_domain.entry(domain).or_default() += bytes;
    }
    Ok(uploaded)
}

/// A `manifest-put` of each new manifest that has a delta from the live
/// one. The node keeps a rebuilt manifest only if it hashes to `target`;
/// one it does not take (an older node) stays missing and is uploaded
/// whole.
fn push_deltas(batch: &mut Batch, plans: &[Planned<'_>]) {
    for p in plans {
        if let Some((base, delta)) = &p.delta {
            batch.push(op::ManifestPut {
                base: *base,
                target: p.manifest_hash,
                delta: hex::encode(delta),
            });
        }
    }
}

/// One blob a small sync sends without asking, and the domain whose file
/// it is (none for a manifest).
type Ahead<'p> = (Blake3Hash, Source, Option<&'p str>);

/// What a small sync sends without asking: every file the live versions
/// lack (with its domain) and each new manifest no delta stands for; none
/// when that comes to more than [`SEND_AHEAD_BYTES`].
fn sent_ahead<'p>(plans: &'p [Planned<'p>]) -> Option<Vec<Ahead<'p>>> {
    let mut out = Vec::new();
    let mut queued = BTreeSet::new();
    let mut bytes = 0u64;
    for p in plans {
        if p.delta.is_none() && queued.insert(p.manifest_hash) {
            bytes += p.manifest_bytes.len() as u64;
            out.push((
                p.manifest_hash,
                Source::Bytes(p.manifest_bytes.clone()),
                None,
            ));
        }
        for (hash, path, size) in &p.sources {
            if queued.insert(*hash) {
                bytes += size;
                out.push((
                    *hash,
                    Source::File(path.clone(), *size),
                    Some(p.domain.name.as_str()),
                ));
            }
        }
        if bytes > SEND_AHEAD_BYTES {
            return None;
        }
    }
    Some(out)
}

/// Sends the deltas and the blobs of a small sync in one round trip: what
/// the node took, and whether it took all of it (else the caller asks).
async fn send_ahead<'p>(
    remote: &Remote,
    machine: &str,
    mut batch: Batch,
    upload: &[Ahead<'p>],
) -> anyhow::Result<(Uploaded<'p>, bool)> {
    let deltas = batch.len();
    // (A change of configuration alone sends nothing here, and shows no bar.)
    let mut bar = None;
    let mut put = None;
    if !upload.is_empty() {
        let files = FileCount::default();
        files.add_total(upload.len() as u64);
        let b = files_bar(&format!("uploading to {machine}"), &files);
        b.set_length(upload.iter().map(|(_, s, _)| s.size()).sum());
        let blobs: Vec<(Blake3Hash, &Source)> = upload.iter().map(|(h, s, _)| (*h, s)).collect();
        put = Some(batch.push(inline_request(&blobs, &b, &files).await?));
        bar = Some(b);
    }
    if batch.is_empty() {
        return Ok((Uploaded::default(), true));
    }
    let mut answers = remote
        .send(batch)
        .await
        .with_context(|| format!("{machine}: the upload failed"))?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let deltas_taken = answers.take_all_ok(deltas);
    let put_taken = match put {
        Some(slot) => match answers.take(slot) {
            Ok(report) => {
                refused(machine, &report)?;
                true
            }
            Err(_) => false,
        },
        None => true,
    };
    let mut uploaded = Uploaded::default();
    for (_, source, domain) in upload.iter().filter(|_| put_taken) {
        uploaded.bytes += source.size();
        if let (Source::File(_, size), Some(domain)) = (source, domain) {
            *uploaded.per_domain.entry(domain).or_default() += size;
        }
    }
    Ok((uploaded, put_taken && deltas_taken))
}

/// Asks the node which blobs of the plans it lacks (after `batch`: the
/// manifest deltas not sent yet) and uploads them. A dry run only asks.
async fn ask_and_upload<'p>(
    remote: &Remote,
    machine: &str,
    plans: &'p [Planned<'p>],
    mut batch: Batch,
    dry_run: bool,
    timing: &Timing,
) -> anyhow::Result<Uploaded<'p>> {
    let mut wanted_blobs: BTreeSet<Blake3Hash> = BTreeSet::new();
    for p in plans {
        wanted_blobs.insert(p.manifest_hash);
        wanted_blobs.extend(
            p.manifest
                .blobs()
                .map(|f| f.hash)
                .filter(|h| !p.known.contains(h)),
        );
    }
    let asked = batch.push(op::BlobsMissing {
        hashes: wanted_blobs.into_iter().collect(),
    });
    let mut answers = remote
        .send(batch)
        .await
        .with_context(|| format!("{machine}: cannot list its blobs"))?;
    let mut missing: BTreeSet<Blake3Hash> = answers
        .take(asked)
        .map_err(|e| anyhow::anyhow!("{machine}: cannot list its blobs: {e}"))?
        .into_iter()
        .collect();
    if dry_run {
        // A real sync would send these manifests as deltas.
        for p in plans.iter().filter(|p| p.delta.is_some()) {
            missing.remove(&p.manifest_hash);
        }
    }
    let mut uploaded = Uploaded::default();
    let mut upload: Vec<(Blake3Hash, Source)> = Vec::new();
    let mut queued: BTreeSet<Blake3Hash> = BTreeSet::new();
    for p in plans {
        let mhash = p.manifest_hash;
        if missing.contains(&mhash) && queued.insert(mhash) {
            upload.push((mhash, Source::Bytes(p.manifest_bytes.clone())));
        }
        // Only what the live version lacks can be missing.
        for (hash, path, size) in &p.sources {
            if missing.contains(hash) && queued.insert(*hash) {
                upload.push((*hash, Source::File(path.clone(), *size)));
                *uploaded.per_domain.entry(&p.domain.name).or_default() += size;
            }
        }
    }
    timing.mark("manifest deltas sent, blobs asked");
    uploaded.bytes = upload.iter().map(|(_, s)| s.size()).sum();
    if dry_run || upload.is_empty() {
        return Ok(uploaded);
    }
    let files = FileCount::default();
    files.add_total(upload.len() as u64);
    let bar = files_bar(&format!("uploading to {machine}"), &files);
    bar.set_length(uploaded.bytes);
    // A few small blobs ride the open control session; anything larger
    // streams through a command of its own.
    let report = if uploaded.bytes <= INLINE_UPLOAD_BYTES {
        let blobs: Vec<(Blake3Hash, &Source)> = upload.iter().map(|(h, s)| (*h, s)).collect();
        let request = inline_request(&blobs, &bar, &files).await?;
        remote
            .ask(request)
            .await
            .with_context(|| format!("{machine}: the upload failed"))?
    } else {
        remote.stream_blobs(upload, &bar, &files).await?
    };
    bar.finish_and_clear();
    refused(machine, &report)?;
    Ok(uploaded)
}

/// Fails if the node refused any blob of an upload (its report).
fn refused(machine: &str, report: &Received) -> anyhow::Result<()> {
    if !report.refused.is_empty() {
        bail!(
            "{machine}: refused blobs (a file changed while it was sent? run maki sync again): {}",
            report.refused.join("; ")
        );
    }
    Ok(())
}

/// The `blobs-put` request that sends blobs inline on the control
/// session; the node verifies each against its hash and answers a report.
async fn inline_request(
    upload: &[(Blake3Hash, &Source)],
    bar: &indicatif::ProgressBar,
    files: &FileCount,
) -> anyhow::Result<op::BlobsPut> {
    let mut blobs = Vec::with_capacity(upload.len());
    for (hash, source) in upload {
        let bytes = match source {
            Source::Bytes(b) => b.clone(),
            Source::File(path, size) => {
                let b = tokio::fs::read(path)
                    .await
                    .with_context(|| format!("cannot read {}", path.display()))?;
                if b.len() as u64 != *size {
                    bail!(
                        "{} changed while it was sent; run maki sync again",
                        path.display()
                    );
                }
                b
            }
        };
        bar.inc(bytes.len() as u64);
        files.done(1);
        blobs.push(InlineBlob {
            hash: *hash,
            hex: hex::encode(bytes),
        });
    }
    Ok(op::BlobsPut { blobs })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::Domain;
    use makiatto_events::Manifest;

    fn planned<'d>(domain: &'d Domain, sizes: &[u64], delta: bool) -> Planned<'d> {
        let manifest = Manifest::default();
        Planned {
            domain,
            manifest_bytes: manifest.encode(),
            manifest_hash: Blake3Hash::of(&manifest.encode()),
            manifest,
            summary: Default::default(),
            sources: sizes
                .iter()
                .enumerate()
                .map(|(i, s)| (Blake3Hash([i as u8; 32]), PathBuf::from("/f"), *s))
                .collect(),
            known: BTreeSet::new(),
            delta: delta.then(|| (Blake3Hash([9; 32]), vec![1, 2])),
        }
    }

    fn domain() -> Domain {
        Domain::for_test("example.com")
    }

    #[test]
    fn a_small_sync_sends_its_new_files_and_a_manifest_no_delta_stands_for() {
        let d = domain();
        let plans = [planned(&d, &[100, 200], false)];
        let ahead = sent_ahead(&plans).unwrap();
        assert_eq!(ahead.len(), 3, "the manifest and two files");
        assert_eq!(ahead[0].2, None);
        assert_eq!(ahead[1].2, Some("example.com"));
        let with_delta = [planned(&d, &[100], true)];
        assert_eq!(
            sent_ahead(&with_delta).unwrap().len(),
            1,
            "the delta stands for it"
        );
        let mut batch = Batch::new();
        push_deltas(&mut batch, &with_delta);
        assert_eq!(batch.len(), 1);
    }

    #[test]
    fn a_large_sync_asks_first() {
        let d = domain();
        let plans = [planned(&d, &[SEND_AHEAD_BYTES, 1], true)];
        assert!(sent_ahead(&plans).is_none());
    }
}
