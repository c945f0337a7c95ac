//! What the dashboard shows, read from the cluster over SSH every few
//! seconds: `maki health`'s report (every node, and every node from every
//! node), the last events of the log, the sites and the certificates.
//! Readers take the latest whole state; a reading that fails keeps the
//! last good one and says why.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use makiatto_projections::certificates::Certificates;
use makiatto_projections::sites::Sites;
use makiatto_protocol::client::Batch;
use makiatto_protocol::log::{LogFilter, LogLine};
use makiatto_protocol::request::{self as op, ShowAs};
use serde::Serialize;

use crate::cluster::{Ctx, now_millis};

/// Events shown.
const EVENTS: usize = 20;
/// Versions of a site shown.
const VERSIONS: usize = 10;

/// The latest state, as JSON, and the last error.
#[derive(Default)]
pub struct Shared {
    latest: Mutex<Option<Arc<String>>>,
}

impl Shared {
    /// The latest state's JSON, if one was read yet.
    pub fn latest(&self) -> Option<Arc<String>> {
        self.latest.lock().ok().and_then(|l| l.clone())
    }

    fn set(&self, json: String) {
        if let Ok(mut l) = self.latest.lock() {
            *l = Some(Arc::new(json));
        }
    }
}

#[derive(Serialize)]
struct State {
    /// When it was read (Unix millis).
    read_at: u64,
    cluster: Option<String>,
    /// `healthy`, `warnings` or `failures`, as `maki health` says.
    status: &'static str,
    nodes: Vec<Node>,
    /// Warnings and failures about the cluster as a whole.
    cluster_findings: Vec<String>,
    events: Vec<Event>,
    sites: Vec<Site>,
    certificates: Vec<Certificate>,
    /// Why part of it could not be read.
    errors: Vec<String>,
}

#[derive(Serialize)]
struct Node {
    name: String,
    latitude: f64,
    longitude: f64,
    /// `ok`, `problems`, `down` (its daemon does not answer) or
    /// `unreachable`.
    state: &'static str,
    events: Option<u64>,
    problems: Vec<String>,
}

#[derive(Serialize)]
struct Event {
    time: String,
    author: String,
    kind: String,
    summary: String,
    verified: bool,
    status: String,
}

#[derive(Serialize)]
struct Site {
    domain: String,
    live: Option<Version>,
    history: Vec<Version>,
}

#[derive(Serialize)]
struct Version {
    id: String,
    /// Unix millis.
    at: u64,
    files: String,
    message: Option<String>,
    live: bool,
}

#[derive(Serialize)]
struct Certificate {
    name: String,
    names: Vec<String>,
    issuer: String,
    not_after_millis: u64,
    days_left: i64,
}

/// Reads the state every `every`, for ever.
pub async fn refresh(ctx: Arc<Ctx>, shared: Arc<Shared>, every: Duration) {
    loop {
        let state = read(&ctx).await;
        match serde_json::to_string(&state) {
            Ok(json) => shared.set(json),
            Err(e) => eprintln!("maki dashboard: cannot encode the state: {e}"),
        }
        tokio::time::sleep(every).await;
    }
}

async fn read(ctx: &Ctx) -> State {
    let report = crate::health::run(ctx).await;
    let mut errors = Vec::new();
    let nodes = report
        .nodes
        .iter()
        .map(|row| {
            let m = ctx.profile.machine(row.name());
            Node {
                name: row.name().to_owned(),
                latitude: m.map_or(0.0, |m| m.latitude),
                longitude: m.map_or(0.0, |m| m.longitude),
                state: row.state(),
                events: row.events(),
                problems: row.problems().to_vec(),
            }
        })
        .collect();
    let cluster_findings = report
        .findings
        .iter()
        .filter(|f| f.node.is_empty())
        .map(|f| f.message.clone())
        .collect();
    let (mut events, mut sites, mut certificates) = (Vec::new(), Vec::new(), Vec::new());
    match ctx.any_node().await {
        Err(e) => errors.push(format!("no node answers: {e:#}")),
        Ok((_, remote)) => {
            let mut batch = Batch::new();
            let log = batch.push(op::Log {
                filter: LogFilter {
                    limit: Some(EVENTS),
                    ..LogFilter::default()
                },
            });
            let site_slot = batch.push(ShowAs::<Sites>::now());
            let cert_slot = batch.push(ShowAs::<Certificates>::now());
            match remote.send(batch).await {
                Err(e) => errors.push(format!("{e:#}")),
                Ok(mut answers) => {
                    match answers.take(log) {
                        Ok(lines) => events = lines.into_iter().rev().map(event).collect(),
                        Err(e) => errors.push(format!("the log: {e}")),
                    }
                    match answers.take(site_slot) {
                        Ok(s) => sites = site_list(&s.state),
                        Err(e) => errors.push(format!("the sites: {e}")),
                    }
                    match answers.take(cert_slot) {
                        Ok(c) => certificates = certificate_list(&c.state),
                        Err(e) => errors.push(format!("the certificates: {e}")),
                    }
                }
            }
        }
    }
    State {
        read_at: now_millis(),
        cluster: ctx.profile.cluster_name.clone(),
        status: report.status,
        nodes,
        cluster_findings,
        events,
        sites,
        certificates,
        errors,
    }
}

fn event(l: LogLine) -> Event {
    Event {
        time: l.time,
        author: l.author,
        kind: l.kind,
        summary: l.summary,
        verified: l.verified,
        status: l.status,
    }
}

fn site_list(sites: &Sites) -> Vec<Site> {
    sites
        .domains
        .iter()
        .map(|(domain, s)| {
            let version = |v: &makiatto_projections::sites::SiteVersion| Version {
                id: v.event.short(),
                at: v.at.millis,
                files: format!(
                    "{} files (+{} ~{} -{})",
                    v.summary.files, v.summary.added, v.summary.changed, v.summary.removed
                ),
                message: v.message.clone(),
                live: s.live == Some(v.event),
            };
            Site {
                domain: domain.to_string(),
                live: s.live_version().map(version),
                history: s
                    .versions
                    .iter()
                    .rev()
                    .take(VERSIONS)
                    .map(version)
                    .collect(),
            }
        })
        .collect()
}

fn certificate_list(certificates: &Certificates) -> Vec<Certificate> {
    let now = now_millis() as i64;
    certificates
        .names
        .iter()
        .map(|(name, c)| Certificate {
            name: name.clone(),
            names: c.names.clone(),
            issuer: c.issuer.clone(),
            not_after_millis: c.not_after_millis,
            days_left: (c.not_after_millis as i64 - now) / 86_400_000,
        })
        .collect()
}
