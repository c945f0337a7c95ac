//! `maki sync`: publish `makiatto.toml` and the domains' files.
//!
//! 1. Validate `makiatto.toml` (nothing is sent if anything is wrong).
//! 2. Walk and hash each domain's tree (cached by size and mtime) into a
//!    manifest; compare it with the live version the cluster holds.
//! 3. Work out the configuration change (below), sealing env values.
//! 4. Ask a node which blobs it lacks, stream only those to it (verified
//!    there by hash), then sign one `config-changed` event for the
//!    configuration and one `site-published` event per changed domain.
//!
//! The event is sent only after every blob is stored, so an interrupted
//! sync publishes nothing, and running it again re-sends only what did not
//! arrive. The mesh hands the events to the other nodes.
//!
//! Concurrent edits (DESIGN §3): `maki` keeps the configuration as of this
//! operator's last sync (the base, beside the outbox). A field the file does
//! not change relative to the base keeps the cluster's current value, so a
//! stale `makiatto.toml` never reverts what another operator changed; the
//! changes are made on top of the cluster's current document, and automerge
//! merges them with anything concurrent.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use makiatto_events::payload::{BlobRef, ChangeSummary, ConfigChanged, SitePublished};
use makiatto_events::{Blake3Hash, DomainName, Manifest, Payload, SealedValue, SealingKey};
use makiatto_projections::config::{ConfigDoc, DesiredConfig, DomainConfig};
use makiatto_projections::peers::Peers;
use makiatto_projections::sites::Sites;
use makiatto_protocol::blob_stream::{InlineBlob, Received};
use makiatto_protocol::client::Batch;
use makiatto_protocol::request::{self as op, ShowAs};

use crate::cluster::Ctx;
use crate::project::{Domain, Project};
use crate::ssh::Remote;
use crate::tree::{Found, HashCache, manifest, walk};

/// What `maki sync` was asked.
pub struct SyncArgs {
    pub file: PathBuf,
    pub domains: Vec<String>,
    pub message: Option<String>,
    pub dry_run: bool,
}

/// One domain's new version.
struct Planned<'a> {
    domain: &'a Domain,
    manifest: Manifest,
    manifest_bytes: Vec<u8>,
    /// The hash of `manifest_bytes`, the new version's manifest blob.
    manifest_hash: Blake3Hash,
    summary: ChangeSummary,
    /// Local files with their hashes and sizes, to upload from (those the
    /// live version lacks), in path order: the order they were written in,
    /// so mostly the order they lie on disk.
    sources: Vec<(Blake3Hash, PathBuf, u64)>,
    /// Blobs of the live version: the node holds them (it keeps the live
    /// version's files), so they are not even asked about.
    known: BTreeSet<Blake3Hash>,
    /// The live version's manifest and the delta from it to this one: what
    /// is sent instead of the whole manifest when the node takes it.
    delta: Option<(Blake3Hash, Vec<u8>)>,
}

/// Where this operator keeps the base of a cluster (beside the outbox).
fn base_paths(ctx: &Ctx, cluster_id: &str) -> (PathBuf, PathBuf) {
    let dir = ctx
        .operator_key_path
        .parent()
        .unwrap_or(Path::new("."))
        .join("base");
    (
        dir.join(format!("{cluster_id}.automerge")),
        dir.join(format!("{cluster_id}.secrets.json")),
    )
}

/// Three-way merge at the level of fields: where `file` equals `base`, the
/// cluster's `current` value stays; where it differs, the file wins.
fn merge(base: &DesiredConfig, file: &DesiredConfig, current: &DesiredConfig) -> DesiredConfig {
    let mut out = current.clone();
    if file.o11y != base.o11y {
        out.o11y = file.o11y.clone();
    }
    let names: BTreeSet<&String> = base.domains.keys().chain(file.domains.keys()).collect();
    let empty = DomainConfig::default();
    for name in names {
        let b = base.domains.get(name);
        let f = file.domains.get(name);
        match (b, f) {
            (Some(_), None) => {
                out.domains.remove(name);
            }
            (None, Some(f)) => {
                out.domains.insert(name.clone(), f.clone());
            }
            (Some(b), Some(f)) if b == f => {}
            (b, Some(f)) => {
                let b = b.unwrap_or(&empty);
                let cur = out.domains.entry(name.clone()).or_default();
                if f.aliases != b.aliases {
                    cur.aliases = f.aliases.clone();
                }
                if f.functions != b.functions {
                    cur.functions = f.functions.clone();
                }
                if f.transforms != b.transforms {
                    cur.transforms = f.transforms.clone();
                }
                let keys: BTreeSet<&String> = b.records.keys().chain(f.records.keys()).collect();
                for key in keys {
                    match (b.records.get(key), f.records.get(key)) {
                        (x, y) if x == y => {}
                        (_, Some(r)) => {
                            cur.records.insert(key.clone(), r.clone());
                        }
                        (_, None) => {
                            cur.records.remove(key);
                        }
                    }
                }
            }
            (None, None) => {}
        }
    }
    out
}

fn decode_doc(hex_changes: &[String]) -> anyhow::Result<ConfigDoc> {
    let bytes: Vec<Vec<u8>> = hex_changes
        .iter()
        .map(hex::decode)
        .collect::<Result<_, _>>()
        .context("the node sent a configuration change that is not hex")?;
    let mut doc = ConfigDoc::default();
    doc.apply(ConfigDoc::decode(&bytes)?)?;
    Ok(doc)
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GB", b as f64 / 1e9),
        b if b >= 1 << 20 => format!("{:.1} MB", b as f64 / 1e6),
        b if b >= 1 << 10 => format!("{:.1} kB", b as f64 / 1e3),
        b => format!("{b} B"),
    }
}

/// `maki sync`.
pub async fn sync(ctx: &Ctx, args: SyncArgs) -> anyhow::Result<()> {
    let project = Project::load(&args.file).map_err(|problems| anyhow::anyhow!("{problems}"))?;
    let selected: Vec<&Domain> = if args.domains.is_empty() {
        project.domains.iter().collect()
    } else {
        let mut out = Vec::new();
        for name in &args.domains {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            match project.domains.iter().find(|d| d.name == name) {
                Some(d) => out.push(d),
                None => bail!(
                    "{name} is not configured in {} (its domains: {})",
                    args.file.display(),
                    project
                        .domains
                        .iter()
                        .map(|d| d.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
        out
    };
    let cluster_id = ctx.cluster_id()?;
    let operator = ctx.operator()?;
    let timing = Timing::from_env();

    // The tree of every selected domain, as a manifest: walked and hashed
    // while the SSH connection is made and the node answers.
    let hashed_files = crate::ssh::FileCount::default();
    let hashing = crate::ssh::files_bar("hashing", &hashed_files);
    let walking = {
        let domains: Vec<Domain> = selected.iter().map(|d| (*d).clone()).collect();
        let hashing = hashing.clone();
        let hashed_files = hashed_files.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(Vec<Found>, Manifest)>> {
            let mut out = Vec::new();
            for d in &domains {
                let cache_file = HashCache::file_for(&d.dir);
                // The cache is read while the directories are.
                let (files, mut cache) = rayon::join(
                    || walk(d, &d.config_files),
                    || {
                        cache_file
                            .as_deref()
                            .map(HashCache::load)
                            .unwrap_or_default()
                    },
                );
                let files = files?;
                let total: u64 = files.iter().map(|f| f.size).sum();
                hashing.inc_length(total);
                hashed_files.add_total(files.len() as u64);
                let known = cache.known();
                let (m, stats) = manifest(&files, &mut cache, &|n| {
                    hashing.inc(n);
                    hashed_files.done(1);
                })?;
                // Files known by the cache are done without reading them.
                hashing.inc(total.saturating_sub(stats.bytes_hashed));
                hashed_files.done(stats.cached as u64);
                // Nothing hashed, nothing added or dropped: the cache on
                // disk is still right.
                let unchanged =
                    stats.hashed == 0 && cache.known() == files.len() && cache.known() == known;
                if let Some(file) = &cache_file
                    && !unchanged
                    && let Err(e) = cache.save(file)
                {
                    eprintln!(
                        "warning: cannot save the hash cache {}: {e:#}",
                        file.display()
                    );
                }
                out.push((files, m));
            }
            Ok(out)
        })
    };
    // The manifests kept from this operator's last syncs, decoded beside
    // the walk: the live version's, if it is one of them, is the base of
    // the delta.
    let kept = {
        let files: Vec<(String, PathBuf)> = selected
            .iter()
            .map(|d| (d.name.clone(), manifest_cache(ctx, &cluster_id, &d.name)))
            .collect();
        tokio::task::spawn_blocking(move || -> BTreeMap<String, (Blake3Hash, Manifest)> {
            files
                .into_iter()
                .filter_map(|(name, file)| {
                    let bytes = std::fs::read(file).ok()?;
                    let hash = Blake3Hash::of(&bytes);
                    Some((name, (hash, Manifest::decode(&bytes).ok()?)))
                })
                .collect()
        })
    };
    timing.mark("started, SSH walk begun");
    let (machine, remote) = ctx.any_node().await?;
    timing.mark("connected");
    let mut plans = Vec::new();
    // With the state, the tip the events will be signed on: a small sync
    // then needs no question of its own before it delivers them.
    let mut batch = Batch::new();
    let sites = batch.push(ShowAs::<Sites>::now());
    let peers = batch.push(ShowAs::<Peers>::now());
    let changes = batch.push(op::ConfigChanges {});
    let tip = ctx.ask_tip(&mut batch)?;
    let mut answers = remote.send(batch).await?;
    timing.mark("state asked");
    let asked_at = std::time::Instant::now();
    let err = |e| anyhow::anyhow!("{}: {e}", machine.name);
    let sites = answers.take(sites).map_err(err)?.state;
    let peers = answers.take(peers).map_err(err)?.state;
    let changes = answers.take(changes).map_err(err)?;
    let tip = Some(tip.take(&mut answers, &remote)?);
    let walked = walking
        .await
        .map_err(|e| anyhow::anyhow!("the walk stopped: {e}"))??;
    timing.mark("walked");
    let mut kept = kept.await.unwrap_or_default();
    for (d, (files, m)) in selected.iter().zip(walked) {
        let live_manifest: Option<Blake3Hash> = DomainName::new(d.name.as_str())
            .ok()
            .and_then(|name| sites.domains.get(&name))
            .and_then(|site| site.live_version())
            .map(|v| v.manifest.hash);
        let manifest_bytes = m.encode();
        let hash = Blake3Hash::of(&manifest_bytes);
        if live_manifest == Some(hash) {
            continue;
        }
        let before = match &live_manifest {
            Some(h) => match kept.remove(&d.name) {
                Some((kept_hash, m)) if kept_hash == *h => m,
                _ => fetch_manifest(&remote, &manifest_cache(ctx, &cluster_id, &d.name), h)
                    .await
                    .with_context(|| {
                        format!(
                            "cannot read the live version of {} from {} to compare with; \
                             nothing was sent (run `maki health`, then `maki sync` again)",
                            d.name, machine.name
                        )
                    })?,
            },
            None => Manifest::default(),
        };
        let summary = m.summary_since(&before);
        let known: BTreeSet<Blake3Hash> = before.files.values().map(|f| f.hash).collect();
        // Only what may be uploaded: the files the live version lacks.
        let sources = files
            .iter()
            .filter_map(|f| m.files.get(&f.path).map(|e| (e.hash, f)))
            .filter(|(h, _)| !known.contains(h))
            .map(|(h, f)| (h, f.full.clone(), f.size))
            .collect();
        let delta = live_manifest
            .filter(|_| !before.files.is_empty())
            .map(|h| (h, m.delta_from(&before).encode()));
        plans.push(Planned {
            domain: d,
            manifest: m,
            manifest_bytes,
            manifest_hash: hash,
            summary,
            sources,
            known,
            delta,
        });
    }
    hashing.finish_and_clear();
    timing.mark("planned");

    // The configuration: the file's wishes merged field by field.
    let mut current_doc = decode_doc(&changes)?;
    let current = current_doc.view()?;
    let (base_file, secrets_file) = base_paths(ctx, &cluster_id);
    let base = match std::fs::read(&base_file) {
        Ok(bytes) => ConfigDoc::load(&bytes)
            .and_then(|d| d.view())
            .with_context(|| {
                format!(
                    "the sync base {} is damaged; remove it",
                    base_file.display()
                )
            })?,
        // No sync from here yet: the cluster's current state of the
        // domains this file names is the base. Domains it does not name are
        // someone else's; a sync never removes what its operator never sent.
        Err(_) => {
            let mut base = current.clone();
            base.domains
                .retain(|name, _| project.domains.iter().any(|d| &d.name == name));
            base
        }
    };
    let mut secrets: BTreeMap<String, String> = std::fs::read(&secrets_file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let recipients: Vec<SealingKey> = peers.nodes.values().map(|n| n.sealing_key).collect();
    let mut rng = rand::rng();
    let file_config = project.to_desired(&base, |domain, path, var, value| {
        let key = format!("{domain}/{path}/{var}");
        let digest = Blake3Hash::of(value.as_bytes()).to_hex();
        let previous = base
            .domains
            .get(domain)
            .and_then(|d| {
                d.functions
                    .iter()
                    .find(|f| f.path == path)
                    .map(|f| &f.env)
                    .or_else(|| d.transforms.iter().find(|t| t.path == path).map(|t| &t.env))
            })
            .and_then(|env| env.get(var));
        if let Some(sealed) = previous
            && secrets.get(&key) == Some(&digest)
        {
            return Ok(sealed.clone());
        }
        let sealed = SealedValue::seal(value.as_bytes(), &recipients, &mut rng)
            .with_context(|| format!("cannot seal {var} of {path}: the cluster has no nodes"))?;
        secrets.insert(key, digest);
        Ok(hex::encode(postcard::to_allocvec(&sealed)?))
    })?;
    // Only the selected domains' configuration moves with --domain.
    let mut file_config = file_config;
    if !args.domains.is_empty() {
        for (name, d) in &base.domains {
            if !selected.iter().any(|s| &s.name == name) {
                file_config.domains.insert(name.clone(), d.clone());
            }
        }
        file_config.domains.retain(|name, _| {
            selected.iter().any(|s| &s.name == name) || base.domains.contains_key(name)
        });
    }
    // Did anyone else change what this file manages since its last sync?
    let others_changed = current.o11y != base.o11y
        || base
            .domains
            .keys()
            .chain(file_config.domains.keys())
            .any(|name| current.domains.get(name) != base.domains.get(name));
    let wanted = merge(&base, &file_config, &current);
    let config_changes = current_doc.edit(&operator.key().public(), &wanted)?;
    timing.mark("configuration merged");

    if plans.is_empty() && config_changes.is_empty() {
        println!("everything is up to date on {}", machine.name);
        return save_base(&base_file, &secrets_file, &file_config, &secrets, &operator);
    }

    // A small sync (the usual edit) sends the files the live version lacks
    // with the manifest deltas, without first asking which the node lacks:
    // they are nearly always new to it, and the question costs a round
    // trip more than a few kilobytes it may already hold.
    // After a sync that stopped midway, ask: what it sent is not sent again.
    let markers: Vec<PathBuf> = plans
        .iter()
        .map(|p| unfinished_marker(ctx, &cluster_id, &p.domain.name))
        .collect();
    let unfinished: Vec<&str> = plans
        .iter()
        .zip(&markers)
        .filter(|(_, m)| m.exists())
        .map(|(p, _)| p.domain.name.as_str())
        .collect();
    let resuming = !unfinished.is_empty();
    if resuming && !args.dry_run {
        println!(
            "resuming: the last sync of {} stopped before it finished; only what {} lacks is sent",
            unfinished.join(", "),
            machine.name
        );
    }
    let ahead = if args.dry_run || resuming {
        None
    } else {
        sent_ahead(&plans)
    };
    if !args.dry_run {
        for m in &markers {
            mark_unfinished(m);
        }
    }
    let mut deltas = Batch::new();
    if !args.dry_run {
        push_deltas(&mut deltas, &plans);
    }
    let mut per_domain: BTreeMap<&str, u64> = BTreeMap::new();
    let mut uploaded = false;
    if let Some(upload) = &ahead {
        // (A change of configuration alone sends nothing here, and shows
        // no bar.)
        let mut bar = None;
        let mut put = None;
        let mut batch = std::mem::take(&mut deltas);
        if !upload.is_empty() {
            let files = crate::ssh::FileCount::default();
            files.add_total(upload.len() as u64);
            let b = crate::ssh::files_bar(&format!("uploading to {}", machine.name), &files);
            b.set_length(upload.iter().map(|(_, s, _)| s.size()).sum());
            let blobs: Vec<(Blake3Hash, &Source)> =
                upload.iter().map(|(h, s, _)| (*h, s)).collect();
            put = Some(batch.push(inline_request(&blobs, &b, &files).await?));
            bar = Some(b);
        }
        let delta_count = batch.len() - usize::from(put.is_some());
        let mut answers = if batch.is_empty() {
            None
        } else {
            Some(
                remote
                    .send(batch)
                    .await
                    .with_context(|| format!("{}: the upload failed", machine.name))?,
            )
        };
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        let mut put_taken = true;
        if let (Some(slot), Some(answers)) = (put, answers.as_mut()) {
            let report = answers.take(slot);
            if let Ok(report) = &report {
                refused(&machine.name, report)?;
            }
            put_taken = report.is_ok();
        }
        // A delta the node did not take (or an upload it could not read)
        // leaves something missing: the question below finds it.
        let deltas_taken = answers.as_mut().is_none_or(|a| a.take_all_ok(delta_count));
        uploaded = put_taken && deltas_taken;
        for (_, source, domain) in upload.iter().filter(|_| put_taken) {
            if let (Source::File(_, size), Some(domain)) = (source, domain) {
                *per_domain.entry(domain).or_default() += size;
            }
        }
        timing.mark("manifest deltas and new blobs sent ahead");
    }
    if !uploaded {
        let upload_bytes = ask_and_upload(
            &remote,
            &machine.name,
            &plans,
            deltas,
            args.dry_run,
            &mut per_domain,
            &timing,
        )
        .await?;
        if args.dry_run {
            report(&plans, &per_domain, !config_changes.is_empty(), true);
            println!(
                "dry run: {} to upload to {}; nothing was sent",
                human(upload_bytes),
                machine.name
            );
            return Ok(());
        }
    }
    timing.mark("uploaded");
    // Each new manifest is kept for the next sync while the events go out.
    // Kept even if they do not land: the copy is named by its hash, and a
    // next sync that finds another live version fetches that one.
    let keeping = {
        let kept: Vec<(PathBuf, Vec<u8>)> = plans
            .iter()
            .map(|p| {
                (
                    manifest_cache(ctx, &cluster_id, &p.domain.name),
                    p.manifest_bytes.clone(),
                )
            })
            .collect();
        tokio::task::spawn_blocking(move || {
            for (file, bytes) in kept {
                keep_manifest(&file, &bytes);
            }
        })
    };
    // Every blob is on the node: now the events.
    let mut payloads = Vec::new();
    if !config_changes.is_empty() {
        payloads.push(Payload::ConfigChanged(ConfigChanged {
            changes: config_changes,
            summary: config_summary(&current, &wanted),
        }));
    }
    for p in &plans {
        payloads.push(Payload::SitePublished(SitePublished {
            domain: DomainName::new(p.domain.name.as_str())?,
            manifest: BlobRef {
                hash: p.manifest_hash,
                size: p.manifest_bytes.len() as u64,
            },
            summary: p.summary,
            message: args.message.clone(),
        }));
    }
    // The tip asked with the state, if that was a moment ago (a long
    // upload asks again).
    let tip = tip.filter(|_| asked_at.elapsed() < TIP_FRESH);
    let events = ctx
        .publish(&remote, &cluster_id, payloads, None, tip)
        .await?;
    timing.mark("signed and delivered");
    for m in &markers {
        let _ = std::fs::remove_file(m);
    }
    save_base(&base_file, &secrets_file, &file_config, &secrets, &operator)?;
    let _ = keeping.await;
    timing.mark("saved");
    report(&plans, &per_domain, events.len() > plans.len(), false);
    if others_changed {
        println!(
            "note: others changed the configuration since your last sync; their changes were kept"
        );
    }
    Ok(())
}

/// Phase times on standard error with `MAKIATTO_TIMINGS=1`: where a slow
/// sync spends its time.
struct Timing {
    start: Option<std::time::Instant>,
    last: std::cell::Cell<Option<std::time::Instant>>,
}

impl Timing {
    fn from_env() -> Timing {
        let start = (std::env::var_os("MAKIATTO_TIMINGS").is_some_and(|v| v == "1"))
            .then(std::time::Instant::now);
        Timing {
            start,
            last: std::cell::Cell::new(start),
        }
    }

    fn mark(&self, phase: &str) {
        if let (Some(start), Some(last)) = (self.start, self.last.get()) {
            let now = std::time::Instant::now();
            eprintln!(
                "timing: {phase}: {:.1} ms (at {:.1} ms)",
                (now - last).as_secs_f64() * 1e3,
                (now - start).as_secs_f64() * 1e3
            );
            self.last.set(Some(now));
        }
    }
}

fn config_summary(current: &DesiredConfig, wanted: &DesiredConfig) -> String {
    let mut parts = Vec::new();
    for (name, d) in &wanted.domains {
        match current.domains.get(name) {
            None => parts.push(format!("{name} added")),
            Some(c) if c != d => parts.push(format!("{name} changed")),
            Some(_) => {}
        }
    }
    for name in current.domains.keys() {
        if !wanted.domains.contains_key(name) {
            parts.push(format!("{name} removed"));
        }
    }
    if current.o11y != wanted.o11y {
        parts.push("o11y changed".into());
    }
    format!(
        "sync: {}",
        if parts.is_empty() {
            "configuration".into()
        } else {
            parts.join(", ")
        }
    )
}

fn report(plans: &[Planned], uploaded: &BTreeMap<&str, u64>, config: bool, dry: bool) {
    let verb = if dry { "would publish" } else { "published" };
    for p in plans {
        let s = &p.summary;
        println!(
            "{}: {verb} {} files: {} changed, {} added, {} removed, {} uploaded",
            p.domain.name,
            s.files,
            s.changed,
            s.added,
            s.removed,
            human(uploaded.get(p.domain.name.as_str()).copied().unwrap_or(0))
        );
    }
    if config {
        println!(
            "configuration: {}",
            if dry { "would change" } else { "changed" }
        );
    }
}

fn save_base(
    base_file: &Path,
    secrets_file: &Path,
    config: &DesiredConfig,
    secrets: &BTreeMap<String, String>,
    operator: &crate::operator::Operator,
) -> anyhow::Result<()> {
    let mut doc = ConfigDoc::default();
    doc.edit(&operator.key().public(), config)?;
    if let Some(dir) = base_file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    for (path, bytes) in [
        (base_file, doc.save()),
        (secrets_file, serde_json::to_vec(secrets)?),
    ] {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, path)?;
    }
    Ok(())
}

/// Where the manifest of a domain's last version synced from here is kept
/// (beside the base), so the next sync need not fetch it.
fn manifest_cache(ctx: &Ctx, cluster_id: &str, domain: &str) -> PathBuf {
    let (base, _) = base_paths(ctx, cluster_id);
    base.with_extension("manifests")
        .join(format!("{domain}.bin"))
}

/// Present while a sync of `domain` that has begun to upload has not
/// delivered its events: the next sync then asks the node which blobs it
/// lacks before sending any (it resumes; it does not send again what the
/// cut-off sync sent).
fn unfinished_marker(ctx: &Ctx, cluster_id: &str, domain: &str) -> PathBuf {
    manifest_cache(ctx, cluster_id, domain).with_extension("unfinished")
}

/// Leaves the marker; a marker that cannot be written costs at most a few
/// kilobytes sent again after an interruption.
fn mark_unfinished(marker: &Path) {
    if let Some(dir) = marker.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::write(marker, b"");
}

/// The manifest `hash` (hex), when the copy kept here is not it: fetched
/// from the node (about 100 bytes per file) and kept.
async fn fetch_manifest(
    remote: &Remote,
    cache: &Path,
    hash: &Blake3Hash,
) -> anyhow::Result<Manifest> {
    let out = remote
        .run_ok(&format!("makiatto blobs get --hex {hash}"))
        .await?;
    let bytes = hex::decode(out.trim())?;
    if Blake3Hash::of(&bytes) != *hash {
        bail!(
            "{}: the manifest it sent does not match its hash",
            remote.target()
        );
    }
    keep_manifest(cache, &bytes);
    Ok(Manifest::decode(&bytes)?)
}

/// Keeps a manifest for the next sync; failing to is no error (the next
/// sync fetches it).
fn keep_manifest(cache: &Path, bytes: &[u8]) {
    let kept = cache
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| {
            let tmp = cache.with_extension("tmp");
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, cache)
        });
    if let Err(e) = kept {
        eprintln!(
            "warning: cannot keep the manifest in {}: {e}",
            cache.display()
        );
    }
}

/// A `manifest-put` of each new manifest that has a delta from the live
/// one (a one-file edit of a 10,000-file site: about a hundred bytes
/// instead of a megabyte). The node keeps a rebuilt manifest only if it
/// hashes to `target`; one it does not take (an older node) stays missing
/// and is uploaded whole.
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

/// Asks the node which blobs of the plans it lacks (after `requests`: the
/// manifest deltas not sent yet) and uploads them, adding each domain's
/// bytes to `per_domain`. A dry run only asks. Returns the bytes uploaded
/// (or, in a dry run, to upload).
async fn ask_and_upload<'p>(
    remote: &Remote,
    machine: &str,
    plans: &'p [Planned<'p>],
    mut batch: Batch,
    dry_run: bool,
    per_domain: &mut BTreeMap<&'p str, u64>,
    timing: &Timing,
) -> anyhow::Result<u64> {
    let mut wanted_blobs: BTreeSet<Blake3Hash> = BTreeSet::new();
    for p in plans {
        wanted_blobs.insert(p.manifest_hash);
        wanted_blobs.extend(
            p.manifest
                .files
                .values()
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
    let mut upload: Vec<(Blake3Hash, Source)> = Vec::new();
    let mut queued: BTreeSet<Blake3Hash> = BTreeSet::new();
    for p in plans {
        let mhash = p.manifest_hash;
        if missing.contains(&mhash) && queued.insert(mhash) {
            upload.push((mhash, Source::Bytes(p.manifest_bytes.clone())));
        }
        // Only what the live version lacks can be missing: not a hex
        // string made for each of the site's files.
        for (hash, path, size) in &p.sources {
            if missing.contains(hash) && queued.insert(*hash) {
                upload.push((*hash, Source::File(path.clone(), *size)));
                *per_domain.entry(&p.domain.name).or_default() += size;
            }
        }
    }
    timing.mark("manifest deltas sent, blobs asked");
    let upload_bytes: u64 = upload.iter().map(|(_, s)| s.size()).sum();
    if dry_run || upload.is_empty() {
        return Ok(upload_bytes);
    }
    let files = crate::ssh::FileCount::default();
    files.add_total(upload.len() as u64);
    let bar = crate::ssh::files_bar(&format!("uploading to {machine}"), &files);
    bar.set_length(upload_bytes);
    // A few small blobs ride the open control session; anything larger
    // streams through a command of its own.
    let result = if upload_bytes <= INLINE_UPLOAD_BYTES {
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
    refused(machine, &result)?;
    Ok(upload_bytes)
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

/// How long the tip asked with the state is signed on.
const TIP_FRESH: std::time::Duration = std::time::Duration::from_secs(5);

/// Uploads up to this size go inline in a control request (hex: twice
/// the size on the wire, under the node's limit of 8 MiB).
const INLINE_UPLOAD_BYTES: u64 = 2 << 20;

/// A sync whose new blobs come to at most this many bytes sends them
/// without asking which the node lacks.
const SEND_AHEAD_BYTES: u64 = 256 << 10;

/// What a small sync sends without asking: every file the live versions
/// lack (with its domain) and each new manifest no delta stands for; none
/// when that comes to more than [`SEND_AHEAD_BYTES`].
fn sent_ahead<'p>(plans: &'p [Planned<'p>]) -> Option<Vec<(Blake3Hash, Source, Option<&'p str>)>> {
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

/// The `blobs-put` request that sends blobs inline on the control
/// session; the node verifies each against its hash and answers a report.
async fn inline_request(
    upload: &[(Blake3Hash, &Source)],
    bar: &indicatif::ProgressBar,
    files: &crate::ssh::FileCount,
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
