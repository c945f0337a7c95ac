//! `maki health`: every machine of the profile checked at once: reachable
//! over SSH, daemon up, mesh handshakes and liveness of each peer as that
//! node sees them, replication lag (events behind the most advanced node)
//! log verification, and whether each site's live version is deployed.
//! Exits non-zero when anything is wrong.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

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
    problems: Vec<String>,
}

/// What one node answered.
struct Probe {
    health: Option<Value>,
    vv: Option<Value>,
    verify: Option<Value>,
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
    match remote.call(json!({"op": "health"})).await {
        Ok(h) => p.health = Some(h),
        Err(e) => p.error = Some(format!("{e:#}")),
    }
    if let Ok(vv) = remote.call(json!({"op": "version-vector"})).await {
        p.vv = Some(vv);
    }
    if verify && let Ok(v) = remote.call(json!({"op": "verify"})).await {
        p.verify = Some(v);
    }
    p
}

/// Per author, the highest seq any node holds.
fn union(vvs: &[&Value]) -> BTreeMap<String, u64> {
    let mut best = BTreeMap::new();
    for vv in vvs {
        for (author, feed) in vv.as_object().into_iter().flatten() {
            let seq = feed["seq"].as_u64().unwrap_or(0);
            let e = best.entry(author.clone()).or_insert(0);
            *e = (*e).max(seq);
        }
    }
    best
}

/// Events `vv` lacks of `best`.
fn behind(vv: &Value, best: &BTreeMap<String, u64>) -> u64 {
    best.iter()
        .map(|(author, seq)| seq.saturating_sub(vv[author]["seq"].as_u64().unwrap_or(0)))
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
        let vvs: Vec<&Value> = probes.iter().filter_map(|p| p.vv.as_ref()).collect();
        let best = union(&vvs);
        // Events still replicating, or a site version still being fetched.
        let deploying = probes.iter().any(|p| {
            p.health
                .as_ref()
                .and_then(|h| h["sites"].as_object())
                .is_some_and(|sites| sites.values().any(|s| s["in_sync"] != true))
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
    let vvs: Vec<&Value> = probes.iter().filter_map(|p| p.vv.as_ref()).collect();
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
            let list = v["problems"].as_array().cloned().unwrap_or_default();
            for item in &list {
                problems.push(format!(
                    "log verification: {}",
                    item.as_str().unwrap_or("?")
                ));
            }
            list.is_empty()
        });
        let mut peers = Vec::new();
        if let Some(h) = &p.health {
            for peer in h["peers"].as_array().into_iter().flatten() {
                let row = PeerRow {
                    name: peer["name"].as_str().unwrap_or("?").to_owned(),
                    alive: peer["alive"] == true,
                    handshake_age_secs: peer["handshake_age_secs"].as_u64(),
                    in_sync: peer["in_sync"].as_bool(),
                    last_error: peer["last_error"].as_str().map(str::to_owned),
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
        if let Some(sites) = p.health.as_ref().and_then(|h| h["sites"].as_object()) {
            for (domain, s) in sites {
                if s["in_sync"] != true {
                    let why = match s["error"].as_str() {
                        Some(e) => e.to_owned(),
                        None => format!("{} blobs still to fetch", s["missing_blobs"]),
                    };
                    problems.push(format!(
                        "{domain}: the live version is not deployed here yet ({why})"
                    ));
                }
            }
        }
        if let Some(dns) = p
            .health
            .as_ref()
            .map(|h| &h["dns"])
            .filter(|d| d.is_object())
        {
            for t in ["udp", "tcp"] {
                if dns["transports"].get(t).is_none() {
                    problems.push(format!(
                        "DNS is not served over {} (port 53 could not be bound: see the daemon's log)",
                        t.to_uppercase()
                    ));
                }
            }
            for skipped in dns["skipped_records"].as_array().into_iter().flatten() {
                problems.push(format!(
                    "DNS record not served: {}",
                    skipped.as_str().unwrap_or("?")
                ));
            }
        }
        // Certificate orders that failed (only the ordering node has any).
        let failures = p
            .health
            .as_ref()
            .and_then(|h| h["acme"]["failures"].as_array().cloned())
            .unwrap_or_default();
        for f in failures {
            problems.push(format!(
                "certificate {}: the order failed {} time(s), next try in {} s: {}",
                f["certificate"].as_str().unwrap_or("?"),
                f["failures"],
                f["retry_in_secs"],
                f["error"].as_str().unwrap_or("?")
            ));
        }
        let rejected = p
            .health
            .as_ref()
            .and_then(|h| h["replication"]["bad_events"].as_u64());
        if let Some(n) = rejected.filter(|n| *n > 0) {
            problems.push(format!(
                "{n} events from peers failed verification and were refused (see the daemon's log)"
            ));
        }
        rows.push(NodeRow {
            name: m.name.clone(),
            reachable: p.reachable,
            daemon: p.health.is_some(),
            events: p.health.as_ref().and_then(|h| h["events"].as_u64()),
            behind: lag,
            verified,
            peers,
            rejected_from_peers: rejected,
            problems,
        });
    }
    let healthy = rows.iter().all(|r| r.problems.is_empty());
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"healthy": healthy, "nodes": rows}))?
        );
    } else {
        print_rows(&rows, healthy);
    }
    Ok(healthy)
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
        let a = json!({"aa": {"seq": 5}, "bb": {"seq": 1}});
        let b = json!({"aa": {"seq": 3}, "bb": {"seq": 4}});
        let c = json!({"aa": {"seq": 5}});
        let best = union(&[&a, &b, &c]);
        assert_eq!(behind(&a, &best), 3);
        assert_eq!(behind(&b, &best), 2);
        assert_eq!(behind(&c, &best), 4);
    }
}
