//! `maki health`: every machine of the profile checked at once, and every
//! node checked from every node.
//!
//! From here, over SSH: reachable, daemon up, its health report (mesh
//! handshakes and liveness of each peer as that node sees them, deployed
//! sites, DNS sockets, certificate orders, the GeoIP database), replication
//! lag (events behind the most advanced node), log verification, and its
//! clock. From each node (`probe`, answered by its daemon): every node's
//! DNS and HTTPS as a visitor reaches them, and its own disk, memory and
//! blobs. The rules and their severities are [`check`]'s; the exit status
//! is the worst one (0 healthy, 1 warnings, 2 failures).
//!
//! # Layout
//! - [`check`]: the checks, a pure function of what the nodes answered.
//! - [`render`]: the report as text.

pub mod check;
pub mod render;

use std::time::{Duration, Instant};

use makiatto_protocol::client::Batch;
use makiatto_protocol::probe::SAMPLE_SUBNETS;
use makiatto_protocol::request as op;
use makiatto_protocol::version::Features;
use serde::Serialize;

use crate::cluster::{Ctx, now_millis};
use crate::profile::Machine;
use crate::ssh::Remote;
use check::{ClockOffset, Finding, Observed, Probed, Severity};

/// How long nodes still catching up (events, a site version, the GeoIP
/// database, a zone's serial) are given before that counts against them:
/// replication normally closes it within a heartbeat or two.
const SETTLE_WITHIN: Duration = Duration::from_secs(5);
/// Clock readings per node; the one with the shortest round trip counts.
const CLOCK_READINGS: usize = 3;

/// `maki health` arguments.
pub struct Args {
    pub json: bool,
    /// Redraw every this often, until interrupted.
    pub watch: Option<Duration>,
}

/// What one run found: every node as observed, and the findings.
#[derive(Serialize)]
pub struct Report {
    /// 0 healthy, 1 warnings, 2 failures.
    pub exit_code: u8,
    /// No warning and no failure.
    pub healthy: bool,
    /// `healthy`, `warnings` or `failures`.
    pub status: &'static str,
    pub nodes: Vec<render::NodeRow>,
    pub findings: Vec<Finding>,
    /// Each node's clock against `maki`'s.
    pub clocks: Vec<(String, ClockOffset)>,
    /// What each node's probe found, in full.
    pub probes: Vec<serde_json::Value>,
}

/// Runs the checks (again and again with `--watch`) and prints them;
/// returns the exit status of the last run.
pub async fn health(ctx: &Ctx, args: Args) -> anyhow::Result<u8> {
    if ctx.profile.machines.is_empty() {
        anyhow::bail!(
            "the profile {} has no machines; run `maki machine init` first",
            ctx.profile_path.display()
        );
    }
    let Some(every) = args.watch else {
        let report = run(ctx).await;
        print(&report, args.json)?;
        return Ok(report.exit_code);
    };
    use std::io::IsTerminal;
    let redraw = std::io::stdout().is_terminal() && !args.json;
    loop {
        let report = run(ctx).await;
        if redraw {
            // Home and clear: the new report replaces the old one.
            print!("\x1b[H\x1b[2J");
        }
        print(&report, args.json)?;
        if !args.json {
            println!(
                "\n{} — next check in {} s (Ctrl-C to stop)",
                jiff::Timestamp::now().strftime("%H:%M:%S"),
                every.as_secs()
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = tokio::signal::ctrl_c() => return Ok(report.exit_code),
        }
    }
}

fn print(report: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        render::print(report);
    }
    Ok(())
}

/// One run: observe every node, give what is still settling a moment,
/// evaluate. (The dashboard shows the same.)
pub async fn run(ctx: &Ctx) -> Report {
    let remotes = connect_all(ctx).await;
    let mut observed = observe_all(&remotes, true).await;
    let started = Instant::now();
    let mut settled_late = false;
    while check::settling(&observed) && started.elapsed() < SETTLE_WITHIN {
        settled_late = true;
        tokio::time::sleep(Duration::from_millis(250)).await;
        let fresh = observe_all(&remotes, false).await;
        for (o, f) in observed.iter_mut().zip(fresh) {
            if f.health.is_some() {
                o.health = f.health;
                o.vv = f.vv;
            }
        }
    }
    if settled_late {
        // The probes saw nodes mid-change: ask them again.
        for (o, (_, remote)) in observed.iter_mut().zip(&remotes) {
            let probed = matches!(o.probe, Probed::Report(_));
            if let (true, Ok(remote)) = (probed, remote) {
                o.probe = probe(remote).await;
            }
        }
    }
    let now = (now_millis() / 1000) as i64;
    let findings = check::evaluate(&observed, now);
    let worst = findings.iter().map(|f| f.severity).max();
    let exit_code = Severity::exit_code(worst);
    Report {
        exit_code,
        healthy: exit_code == 0,
        status: match exit_code {
            0 => "healthy",
            1 => "warnings",
            _ => "failures",
        },
        nodes: render::rows(&observed, &findings),
        clocks: observed
            .iter()
            .filter_map(|o| o.clock.map(|c| (o.name.clone(), c)))
            .collect(),
        probes: observed
            .iter()
            .filter_map(|o| match &o.probe {
                Probed::Report(r) => serde_json::to_value(r).ok(),
                _ => None,
            })
            .collect(),
        findings,
    }
}

/// Every machine, connected (or why not).
async fn connect_all(ctx: &Ctx) -> Vec<(Machine, Result<Remote, String>)> {
    let connects = ctx.profile.machines.iter().map(|m| async move {
        let remote = ctx.connect(m).await.map_err(|e| format!("{e:#}"));
        (m.clone(), remote)
    });
    futures::future::join_all(connects).await
}

/// Every node observed at once; `full` adds the log verification, the
/// probe and the clock (the rest is what settling re-reads).
async fn observe_all(remotes: &[(Machine, Result<Remote, String>)], full: bool) -> Vec<Observed> {
    let all = remotes.iter().map(|(m, r)| observe(m, r.as_ref(), full));
    futures::future::join_all(all).await
}

async fn observe(m: &Machine, remote: Result<&Remote, &String>, full: bool) -> Observed {
    let mut o = Observed {
        name: m.name.clone(),
        unreachable: None,
        health: None,
        daemon_error: None,
        vv: None,
        verify: None,
        probe: Probed::NotAsked,
        clock: None,
    };
    let remote = match remote {
        Ok(r) => r,
        Err(e) => {
            o.unreachable = Some(e.clone());
            return o;
        }
    };
    // One round trip: the health table, the version vector, and (when
    // asked) a verification, each answered or refused on its own.
    let mut batch = Batch::new();
    let health = batch.push(op::Health {});
    let vv = batch.push(op::GetVersionVector {});
    let verified = full.then(|| batch.push(op::Verify {}));
    let mut answers = match remote.send(batch).await {
        Ok(a) => a,
        Err(e) => {
            o.daemon_error = Some(format!("{e:#}"));
            return o;
        }
    };
    let daemon = answers.daemon().clone();
    match answers.take(health) {
        Ok(h) => o.health = Some(h),
        Err(e) => o.daemon_error = Some(format!("{}: {e}", remote.target())),
    }
    o.vv = answers.take(vv).ok();
    o.verify = verified.and_then(|slot| answers.take(slot).ok());
    if !full || o.health.is_none() {
        return o;
    }
    if !daemon.features.has(Features::PROBE) {
        o.probe = Probed::Unsupported(daemon.to_string());
        return o;
    }
    o.clock = clock(remote).await;
    o.probe = probe(remote).await;
    o
}

async fn probe(remote: &Remote) -> Probed {
    let subnets = SAMPLE_SUBNETS.iter().map(|s| (*s).to_owned()).collect();
    match remote.ask(op::ProbeCluster { subnets }).await {
        Ok(r) => Probed::Report(Box::new(r)),
        Err(e) => Probed::Failed(format!("{e:#}")),
    }
}

/// The node's clock against ours: a few readings, the one with the
/// shortest round trip counts (its middle is the best guess of when the
/// node read its clock).
async fn clock(remote: &Remote) -> Option<ClockOffset> {
    let mut best: Option<ClockOffset> = None;
    for _ in 0..CLOCK_READINGS {
        let sent = now_millis() as i64;
        let reading = remote.ask(op::Clock {}).await.ok()?;
        let back = now_millis() as i64;
        let sample = ClockOffset {
            offset_ms: reading.unix_millis as i64 - (sent + back) / 2,
            uncertainty_ms: (back - sent + 1) / 2,
        };
        if best.is_none_or(|b| sample.uncertainty_ms < b.uncertainty_ms) {
            best = Some(sample);
        }
    }
    best
}
