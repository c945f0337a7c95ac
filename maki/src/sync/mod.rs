//! `maki sync`: publish `makiatto.toml` and the domains' files.
//!
//! A pipeline of steps with typed values between them; the pure ones are
//! unit-tested where they live:
//!
//! 1. [`select`]: the domains to publish (`--domain`, else all); nothing is
//!    sent if `makiatto.toml` has any problem.
//! 2. [`walk`]: each domain's tree hashed into a manifest (cached by size
//!    and mtime), on all cores, while a node is reached and asked for the
//!    cluster's state ([`ClusterState`]: sites, peers, configuration, and
//!    the tip new events are signed on, in one round trip).
//! 3. [`plan`]: each manifest against the live version's ([`Planned`]):
//!    what changed, which files the live version lacks, the delta.
//! 4. [`config`]: the file's configuration merged field by field into the
//!    cluster's document, env values sealed to the nodes.
//! 5. [`upload`]: the blobs the node lacks, verified there by hash.
//! 6. publish: one `config-changed` event for the configuration and one
//!    `site-published` event per changed domain, signed on the operator's
//!    feed and handed to the node; the mesh hands them to the others.
//!
//! The events are sent only after every blob is stored, so an interrupted
//! sync publishes nothing; run again, it sends only what did not arrive.
//!
//! # Layout
//! - [`select`], [`walk`], [`plan`], [`config`], [`upload`]: the steps above.
//! - [`kept`]: what is kept between syncs beside the operator key (the
//!   base, sealed digests, manifests, and a marker while a sync is
//!   unfinished).
//! - [`timing`]: each step's time on standard error with
//!   `MAKIATTO_TIMINGS=1`.

mod config;
mod kept;
mod plan;
mod select;
mod timing;
mod upload;
mod walk;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use makiatto_events::payload::{BlobRef, ConfigChanged, SitePublished};
use makiatto_events::{Blake3Hash, DomainName, Manifest, Payload};
use makiatto_projections::peers::Peers;
use makiatto_projections::sites::Sites;
use makiatto_protocol::client::Batch;
use makiatto_protocol::request::{self as op, ShowAs};

use crate::cluster::{Ctx, Tip};
use crate::project::Project;
use crate::ssh::Remote;
use kept::Kept;
use plan::{Encoded, Planned};
use timing::Timing;
pub use upload::Source;

/// What `maki sync` was asked.
pub struct SyncArgs {
    pub file: PathBuf,
    pub domains: Vec<String>,
    pub message: Option<String>,
    pub dry_run: bool,
}

/// How long the tip asked with the state is signed on.
const TIP_FRESH: std::time::Duration = std::time::Duration::from_secs(5);

/// What the node said of the cluster, asked in one round trip.
struct ClusterState {
    sites: Sites,
    peers: Peers,
    /// Every applied configuration change (hex).
    changes: Vec<String>,
    /// The tip new events are signed on, and when it was asked.
    tip: Tip,
    asked_at: std::time::Instant,
}

impl ClusterState {
    async fn ask(ctx: &Ctx, remote: &Remote, machine: &str) -> anyhow::Result<ClusterState> {
        let mut batch = Batch::new();
        let sites = batch.push(ShowAs::<Sites>::now());
        let peers = batch.push(ShowAs::<Peers>::now());
        let changes = batch.push(op::ConfigChanges {});
        let tip = ctx.ask_tip(&mut batch)?;
        let mut answers = remote.send(batch).await?;
        let asked_at = std::time::Instant::now();
        let err = |e| anyhow::anyhow!("{machine}: {e}");
        Ok(ClusterState {
            sites: answers.take(sites).map_err(err)?.state,
            peers: answers.take(peers).map_err(err)?.state,
            changes: answers.take(changes).map_err(err)?,
            tip: tip.take(&mut answers, remote)?,
            asked_at,
        })
    }
}

/// `maki sync`.
pub async fn sync(ctx: &Ctx, args: SyncArgs) -> anyhow::Result<()> {
    let project = Project::load(&args.file).map_err(|problems| anyhow::anyhow!("{problems}"))?;
    let selected = select::select(&project, &args.domains, &args.file)?;
    let cluster_id = ctx.cluster_id()?;
    let operator = ctx.operator()?;
    let kept = Kept::of(ctx, &cluster_id);
    let timing = Timing::from_env();

    // Walked and hashed, and the manifests kept from this operator's last
    // syncs decoded, while a node is reached and answers.
    let hashed_files = crate::ssh::FileCount::default();
    let hashing = crate::ssh::files_bar("hashing", &hashed_files);
    let walking = walk::start(
        selected.iter().map(|d| (*d).clone()).collect(),
        hashing.clone(),
        hashed_files,
    );
    let kept_manifests = {
        let (kept, names) = (kept.clone(), selected.iter().map(|d| d.name.clone()));
        let names: Vec<String> = names.collect();
        tokio::task::spawn_blocking(move || -> BTreeMap<String, (Blake3Hash, Manifest)> {
            names
                .into_iter()
                .filter_map(|name| Some((name.clone(), kept.manifest(&name)?)))
                .collect()
        })
    };
    timing.mark("started, SSH walk begun");
    let (machine, remote) = ctx.any_node().await?;
    timing.mark("connected");
    let state = ClusterState::ask(ctx, &remote, &machine.name).await?;
    timing.mark("state asked");
    let walked = walking
        .await
        .map_err(|e| anyhow::anyhow!("the walk stopped: {e}"))??;
    timing.mark("walked");

    let mut kept_manifests = kept_manifests.await.unwrap_or_default();
    let mut plans = Vec::new();
    for (d, tree) in selected.iter().zip(walked) {
        let tree = Encoded::new(tree);
        let live = plan::live_manifest(&state.sites, &d.name);
        if live == Some(tree.hash) {
            continue;
        }
        let before = match live {
            Some(h) => match kept_manifests.remove(&d.name) {
                Some((kept_hash, m)) if kept_hash == h => m,
                _ => fetch_manifest(&remote, &kept, &d.name, &h)
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
        plans.push(plan::plan(d, tree, live, &before));
    }
    hashing.finish_and_clear();
    timing.mark("planned");

    let config = config::configure(
        &project,
        &selected,
        !args.domains.is_empty(),
        &state,
        &kept,
        &operator,
        &timing,
    )?;
    timing.mark("configuration edited");

    if plans.is_empty() && config.changes.is_empty() {
        println!("everything is up to date on {}", machine.name);
        return kept.save_base(&config.file_config, &config.digests, &operator);
    }

    // After a sync that stopped midway, ask: what it sent is not sent again.
    let unfinished: Vec<&str> = plans
        .iter()
        .map(|p| p.domain.name.as_str())
        .filter(|d| kept.is_unfinished(d))
        .collect();
    let resuming = !unfinished.is_empty();
    if resuming && !args.dry_run {
        println!(
            "resuming: the last sync of {} stopped before it finished; only what {} lacks is sent",
            unfinished.join(", "),
            machine.name
        );
    }
    if !args.dry_run {
        for p in &plans {
            kept.mark_unfinished(&p.domain.name);
        }
    }
    let mode = upload::Mode {
        dry_run: args.dry_run,
        resuming,
    };
    let uploaded = upload::upload(&remote, &machine.name, &plans, mode, &timing).await?;
    if args.dry_run {
        report(
            &plans,
            &uploaded.per_domain,
            !config.changes.is_empty(),
            true,
        );
        println!(
            "dry run: {} to upload to {}; nothing was sent",
            human(uploaded.bytes),
            machine.name
        );
        return Ok(());
    }
    timing.mark("uploaded");

    // Every blob is on the node: now the events. Each new manifest is kept
    // for the next sync while they go out (kept even if they do not land:
    // the copy is named by its hash, and a next sync that finds another
    // live version fetches that one).
    let keeping = {
        let kept = kept.clone();
        let manifests: Vec<(String, Vec<u8>)> = plans
            .iter()
            .map(|p| (p.domain.name.clone(), p.manifest_bytes.clone()))
            .collect();
        tokio::task::spawn_blocking(move || {
            for (domain, bytes) in manifests {
                kept.keep_manifest(&domain, &bytes);
            }
        })
    };
    let payloads = payloads(&plans, &config, args.message.as_ref())?;
    // The tip asked with the state, if that was a moment ago (a long
    // upload asks again).
    let tip = (state.asked_at.elapsed() < TIP_FRESH).then_some(state.tip);
    let events = ctx
        .publish(&remote, &cluster_id, payloads, None, tip)
        .await?;
    timing.mark("signed and delivered");
    for p in &plans {
        kept.mark_finished(&p.domain.name);
    }
    kept.save_base(&config.file_config, &config.digests, &operator)?;
    let _ = keeping.await;
    timing.mark("saved");
    report(
        &plans,
        &uploaded.per_domain,
        events.len() > plans.len(),
        false,
    );
    if config.others_changed {
        println!(
            "note: others changed the configuration since your last sync; their changes were kept"
        );
    }
    Ok(())
}

/// Bytes of configuration changes in one event (the rest of its
/// `MAX_EVENT_BYTES` is the summary, the header and the signature).
const CHANGES_PER_EVENT: usize = makiatto_events::MAX_EVENT_BYTES - 8 * 1024;

/// The events of a sync: the configuration change (if any, in several
/// events when it is large), then one published version per plan.
fn payloads(
    plans: &[Planned<'_>],
    config: &config::ConfigChange,
    message: Option<&String>,
) -> anyhow::Result<Vec<Payload>> {
    let mut payloads = Vec::new();
    // A large edit (thousands of domains) spans several events, each
    // within the event size limit, in order.
    let groups = makiatto_projections::config::pack_changes(&config.changes, CHANGES_PER_EVENT)
        .map_err(|size| {
            anyhow::anyhow!(
                "one domain's configuration is {size} bytes once encoded, more than an event \
                 holds ({CHANGES_PER_EVENT}): split its records across domains"
            )
        })?;
    let summary = config::summary(&config.current, &config.wanted);
    let parts = groups.len();
    for (i, changes) in groups.into_iter().enumerate() {
        payloads.push(Payload::ConfigChanged(ConfigChanged {
            changes,
            summary: if parts == 1 {
                summary.clone()
            } else {
                format!("{summary} (part {} of {parts})", i + 1)
            },
        }));
    }
    for p in plans {
        payloads.push(Payload::SitePublished(SitePublished {
            domain: DomainName::new(p.domain.name.as_str())?,
            manifest: BlobRef {
                hash: p.manifest_hash,
                size: p.manifest_bytes.len() as u64,
            },
            summary: p.summary,
            message: message.cloned(),
        }));
    }
    Ok(payloads)
}

/// The manifest `hash`, when the copy kept here is not it: fetched from
/// the node (about 100 bytes per file), checked, and kept.
async fn fetch_manifest(
    remote: &Remote,
    kept: &Kept,
    domain: &str,
    hash: &Blake3Hash,
) -> anyhow::Result<Manifest> {
    let out = remote
        .run_ok(&format!("makiatto blobs get --hex {hash}"))
        .await?;
    let bytes = hex::decode(out.trim())
        .with_context(|| format!("{}: the manifest it sent is not hex", remote.target()))?;
    if Blake3Hash::of(&bytes) != *hash {
        anyhow::bail!(
            "{}: the manifest it sent does not match its hash",
            remote.target()
        );
    }
    kept.keep_manifest(domain, &bytes);
    Ok(Manifest::decode(&bytes)?)
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GB", b as f64 / 1e9),
        b if b >= 1 << 20 => format!("{:.1} MB", b as f64 / 1e6),
        b if b >= 1 << 10 => format!("{:.1} kB", b as f64 / 1e3),
        b => format!("{b} B"),
    }
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
