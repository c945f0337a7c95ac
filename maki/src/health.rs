//! `maki health`: every machine of the profile checked at once: reachable
//! over SSH, daemon up, mesh handshakes and liveness of each peer as that
//! node sees them, replication lag (events behind the most advanced node)
//! log verification, and whether each site's live version is deployed.
//! Exits non-zero when anything is wrong.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use makiatto_events::{AuthorKey, VersionVector};
use makiatto_protocol::client::Batch;
use makiatto_protocol::health::HealthReport;
use makiatto_protocol::request as op;
use makiatto_protocol::status::VerifyReport;
use serde::Serialize;

use crate::cluster::Ctx;
use crate::profile::Machine;

/// A handshake older than this means the tunnel is not working (WireGuard
/// renews sessions every two minutes while traffic flows; keepalives keep
/// it flowing).
const STALE_HANDSHAKE_SECS: u64 = 180;
/// How long lagging nodes are given to catch up before lag counts as a
/// problem (replication normally closes it within a heartbeat or two).
const LAG_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize)]
struct PeerRow {
    name: String,
    alive: bool,
    handshake_age_secs: Option<u64>,
    in_sync: Option<bool>,
    last_error: Option<String>,
}

#[derive(Debug, Serialize)]
struct NodeRow {
    name: String,
    reachable: bool,
    daemon: bool,
    events: Option<u64>,
    behind: Option<u64>,
    verified: Option<bool>,
    peers: Vec<PeerRow>,
    rejected_from_peers: Option<u64>,
    /// Images on the fly (from daemons that have them).
    #[serde(skip_serializing_if = "Option::is_none")]
    images: Option<makiatto_protocol::health::ImagesReport>,
    /// WebAssembly functions and transforms (from daemons that have them).
    #[serde(skip_serializing_if = "Option::is_none")]
    wasm: Option<makiatto_protocol::health::WasmReport>,
    problems: Vec<String>,
}

/// What one node answered.
struct Probe {
    health: Option<HealthReport>,
    vv: Option<VersionVector>,
    verify: Option<VerifyReport>,
    error: Option<String>,
    reachable: bool,
}

async fn probe(ctx: &Ctx, m: &Machine, verify: bool) -> Probe {
    let remote = match ctx.connect(m).await {
        Ok(r) => r,
        Err(e) => {
            return Probe {
                health: None,
                vv: None,
                verify: None,
                error: Some(format!("{e:#}")),
                reachable: false,
            };
        }
    };
    let mut p = Probe {
        health: None,
        vv: None,
        verify: None,
        error: None,
        reachable: true,
    };
    // One round trip: the health table, the version vector, and (when
    // asked) a verification, each answered or refused on its own.
    let mut batch = Batch::new();
    let health = batch.push(op::Health {});
    let vv = batch.push(op::GetVersionVector {});
    let verified = verify.then(|| batch.push(op::Verify {}));
    let mut answers = match remote.send(batch).await {
        Ok(a) => a,
        Err(e) => {
            p.error = Some(format!("{e:#}"));
            return p;
        }
    };
    match answers.take(health) {
        Ok(h) => p.health = Some(h),
        Err(e) => p.error = Some(format!("{}: {e}", remote.target())),
    }
    p.vv = answers.take(vv).ok();
    p.verify = verified.and_then(|slot| answers.take(slot).ok());
    p
}

/// Per author, the highest seq any node holds.
fn union(vvs: &[&VersionVector]) -> BTreeMap<AuthorKey, u64> {
    let mut best = BTreeMap::new();
    for vv in vvs {
        for (author, feed) in vv.iter() {
            let e = best.entry(*author).or_insert(0);
            *e = (*e).max(feed.seq);
        }
    }
    best
}

/// Events `vv` lacks of `best`.
fn behind(vv: &VersionVector, best: &BTreeMap<AuthorKey, u64>) -> u64 {
    best.iter()
        .map(|(author, seq)| seq.saturating_sub(vv.get(author).map_or(0, |f| f.seq)))
        .sum()
}

async fn probe_all(ctx: &Ctx, verify: bool) -> Vec<Probe> {
    let probes = ctx.profile.machines.iter().map(|m| probe(ctx, m, verify));
    futures::future::join_all(probes).await
}

/// Runs the checks and prints them; returns whether everything is well.
pub async fn health(ctx: &Ctx, json_out: bool) -> anyhow::Result<bool> {
    if ctx.profile.machines.is_empty() {
        anyhow::bail!(
            "the profile {} has no machines; run `maki machine init` first",
            ctx.profile_path.display()
        );
    }
    let mut probes = probe_all(ctx, true).await;
    // Lag right after a change is replication at work (and a new site
    // version takes a moment to fetch): give it a moment, re-reading, before
    // calling it a problem.
    let started = Instant::now();
    loop {
        let vvs: Vec<&VersionVector> = probes.iter().filter_map(|p| p.vv.as_ref()).collect();
        let best = union(&vvs);
        // Events still replicating, or a site version still being fetched.
        let deploying = probes.iter().any(|p| {
            p.health
                .as_ref()
                .is_some_and(|h| h.sites.values().any(|s| !s.in_sync))
        });
        let lagging = deploying || vvs.iter().any(|vv| behind(vv, &best) > 0);
        if !lagging || started.elapsed() > LAG_GRACE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        let fresh = probe_all(ctx, false).await;
        for (p, f) in probes.iter_mut().zip(fresh) {
            if f.vv.is_some() {
                p.vv = f.vv;
                p.health = f.health.or(p.health.take());
            }
        }
    }
    let vvs: Vec<&VersionVector> = probes.iter().filter_map(|p| p.vv.as_ref()).collect();
    let best = union(&vvs);
    let mut rows = Vec::new();
    for (m, p) in ctx.profile.machines.iter().zip(&probes) {
        let mut problems = Vec::new();
        if !p.reachable {
            problems.push(format!(
                "unreachable over SSH: {}",
                p.error.as_deref().unwrap_or("?")
            ));
        } else if p.health.is_none() {
            problems.push(format!(
                "the daemon does not answer: {}",
                p.error.as_deref().unwrap_or("?")
            ));
        }
        let lag = p.vv.as_ref().map(|vv| behind(vv, &best));
        if let Some(n) = lag.filter(|n| *n > 0) {
            problems.push(format!("{n} events behind the most advanced node"));
        }
        let verified = p.verify.as_ref().map(|v| {
            for item in &v.problems {
                problems.push(format!("log verification: {item}"));
            }
            v.problems.is_empty()
        });
        let mut peers = Vec::new();
        if let Some(h) = &p.health {
            for peer in &h.peers {
                let row = PeerRow {
                    name: peer.name.clone(),
                    alive: peer.alive,
                    handshake_age_secs: peer.handshake_age_secs,
                    in_sync: peer.in_sync,
                    last_error: peer.last_error.clone(),
                };
                if !row.alive {
                    problems.push(format!("no heartbeat from {} over the mesh", row.name));
                }
                match row.handshake_age_secs {
                    None => problems.push(format!("no WireGuard handshake with {}", row.name)),
                    Some(s) if s > STALE_HANDSHAKE_SECS => problems.push(format!(
                        "last WireGuard handshake with {} was {s}s ago",
                        row.name
                    )),
                    _ => {}
                }
                peers.push(row);
            }
        }
        if let Some(h) = &p.health {
            for (domain, s) in &h.sites {
                if !s.in_sync {
                    let why = match &s.error {
                        Some(e) => e.clone(),
                        None => format!("{} blobs still to fetch", s.missing_blobs),
                    };
                    problems.push(format!(
                        "{domain}: the live version is not deployed here yet ({why})"
                    ));
                }
            }
            if let Some(dns) = &h.dns {
                for t in ["udp", "tcp"] {
                    if !dns.transports.contains_key(t) {
                        problems.push(format!(
                            "DNS is not served over {} (port 53 could not be bound: see the daemon's log)",
                            t.to_uppercase()
                        ));
                    }
                }
                for skipped in &dns.skipped_records {
                    problems.push(format!("DNS record not served: {skipped}"));
                }
            }
            // Certificate orders that failed (only the ordering node has any).
            for f in h.acme.iter().flat_map(|a| &a.failures) {
                problems.push(format!(
                    "certificate {}: the order failed {} time(s), next try in {} s: {}",
                    f.certificate, f.failures, f.retry_in_secs, f.error
                ));
            }
        }
        if let Some(h) = &p.health {
            problems.extend(clock_problems(h));
        }
        let rejected = p.health.as_ref().map(|h| h.replication.bad_events);
        if let Some(n) = rejected.filter(|n| *n > 0) {
            problems.push(format!(
                "{n} events from peers failed verification and were refused (see the daemon's log)"
            ));
        }
        rows.push(NodeRow {
            name: m.name.clone(),
            reachable: p.reachable,
            daemon: p.health.is_some(),
            events: p.health.as_ref().map(|h| h.events),
            behind: lag,
            verified,
            peers,
            rejected_from_peers: rejected,
            images: p.health.as_ref().and_then(|h| h.http.images.clone()),
            wasm: p.health.as_ref().and_then(|h| h.http.wasm.clone()),
            problems,
        });
    }
    let healthy = rows.iter().all(|r| r.problems.is_empty());
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"healthy": healthy, "nodes": rows}))?
        );
    } else {
        print_rows(&rows, healthy);
    }
    Ok(healthy)
}

/// A node's clock this far from its peers' median is a problem: clocks
/// kept by NTP agree within milliseconds, and stamps a node signs, TLS
/// validity and logs all read it.
const CLOCK_OFF_AFTER_MS: u64 = 5_000;

/// What a node's clock says is wrong: far from its peers', or events held
/// for a stamp ahead of it (someone's clock runs ahead).
fn clock_problems(h: &HealthReport) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(ms) = h
        .clock_ahead_of_peers_ms
        .filter(|ms| ms.unsigned_abs() > CLOCK_OFF_AFTER_MS)
    {
        problems.push(format!(
            "its clock is {} s {} its peers' (their median): set it right (NTP); \
             events it signs are held by its peers past log.max_clock_skew",
            ms.unsigned_abs() / 1000,
            if ms > 0 { "ahead of" } else { "behind" }
        ));
    }
    if h.held_ahead_of_clock > 0 {
        problems.push(format!(
            "{} events from peers are stamped ahead of this node's clock past log.max_clock_skew \
             and wait for it (a clock runs ahead somewhere: see which node's is off)",
            h.held_ahead_of_clock
        ));
    }
    problems
}

fn print_rows(rows: &[NodeRow], healthy: bool) {
    for r in rows {
        let state = if !r.reachable {
            "UNREACHABLE"
        } else if !r.daemon {
            "DAEMON DOWN"
        } else if r.problems.is_empty() {
            "ok"
        } else {
            "PROBLEMS"
        };
        let verified = match r.verified {
            Some(true) => "log verified",
            Some(false) => "log verification FAILED",
            None => "log not verified",
        };
        println!(
            "{} — {state}: {} events, {} behind, {verified}",
            r.name,
            r.events.map_or("?".into(), |e| e.to_string()),
            r.behind.map_or("?".into(), |e| e.to_string()),
        );
        for p in &r.peers {
            println!(
                "    → {:<16} {:<5} {:<22} {}",
                p.name,
                if p.alive { "up" } else { "DOWN" },
                p.handshake_age_secs
                    .map_or("no handshake".into(), |s| format!("handshake {s}s ago")),
                match p.in_sync {
                    Some(true) => "in sync",
                    Some(false) => "replicating",
                    None => "",
                }
            );
        }
        if let Some(i) = &r.images {
            println!(
                "    images: {} made, {} from cache ({} of {} MiB), {} refused when busy, {} timed out, {} pool threads",
                i.made,
                i.cache_hits,
                i.cache_bytes >> 20,
                i.cache_limit >> 20,
                i.busy,
                i.timed_out,
                i.pool_threads
            );
        }
        if let Some(w) = r.wasm.as_ref().filter(|w| w.functions + w.transforms > 0) {
            println!(
                "    wasm: {} functions, {} transforms, {} components ready; {} calls, {} failed ({} timed out), {} refused when busy",
                w.functions,
                w.transforms,
                w.components_ready,
                w.calls,
                w.failed,
                w.timeouts,
                w.refused
            );
        }
        for problem in &r.problems {
            println!("    ! {problem}");
        }
    }
    println!(
        "{}",
        if healthy {
            "cluster healthy"
        } else {
            "cluster has problems (see above)"
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_counted_against_the_most_advanced_node_per_author() {
        let vv = |feeds: &[(u8, u64)]| {
            let mut v = VersionVector::default();
            for (author, seq) in feeds {
                for s in 1..=*seq {
                    v.observe(
                        AuthorKey([*author; 32]),
                        s,
                        &makiatto_events::EventId([s as u8; 32]),
                    );
                }
            }
            v
        };
        let a = vv(&[(0xaa, 5), (0xbb, 1)]);
        let b = vv(&[(0xaa, 3), (0xbb, 4)]);
        let c = vv(&[(0xaa, 5)]);
        let best = union(&[&a, &b, &c]);
        assert_eq!(behind(&a, &best), 3);
        assert_eq!(behind(&b, &best), 2);
        assert_eq!(behind(&c, &best), 4);
    }

    #[test]
    fn a_clock_far_from_the_peers_median_or_held_events_are_problems() {
        let fine = HealthReport {
            clock_ahead_of_peers_ms: Some(-1_200),
            ..HealthReport::default()
        };
        assert!(clock_problems(&fine).is_empty());
        let ahead = HealthReport {
            clock_ahead_of_peers_ms: Some(600_000),
            held_ahead_of_clock: 0,
            ..HealthReport::default()
        };
        let p = clock_problems(&ahead);
        assert!(p[0].contains("600 s ahead of its peers'"), "{p:?}");
        let holding = HealthReport {
            held_ahead_of_clock: 3,
            ..HealthReport::default()
        };
        assert!(clock_problems(&holding)[0].contains("3 events from peers"));
    }
}
