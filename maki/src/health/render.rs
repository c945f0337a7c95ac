//! `maki health` as text: per node its state, its GeoIP database, its
//! peers and what was found about it; then what concerns the cluster as a
//! whole; then the verdict. Failures are marked `✗`, warnings `!`, notes
//! `·` (in colour on a terminal, unless `NO_COLOR` is set).

use serde::Serialize;

use super::Report;
use super::check::{Finding, Observed, Probed, Severity, behind, union};
use makiatto_events::VersionVector;
use makiatto_protocol::health::{GeoIpLoaded, TelemetryReport};

/// One peer as a node sees it.
#[derive(Debug, Serialize)]
pub struct PeerRow {
    name: String,
    alive: bool,
    handshake_age_secs: Option<u64>,
    in_sync: Option<bool>,
    last_error: Option<String>,
}

/// One node: what it answered, and the warnings and failures about it.
#[derive(Debug, Serialize)]
pub struct NodeRow {
    name: String,
    reachable: bool,
    daemon: bool,
    events: Option<u64>,
    behind: Option<u64>,
    verified: Option<bool>,
    peers: Vec<PeerRow>,
    rejected_from_peers: Option<u64>,
    /// The GeoIP database it places visitors with.
    geoip: Option<GeoIpLoaded>,
    /// OTLP export: where to, and what was sent or dropped.
    telemetry: Option<TelemetryReport>,
    /// Images on the fly (from daemons that have them).
    #[serde(skip_serializing_if = "Option::is_none")]
    images: Option<makiatto_protocol::health::ImagesReport>,
    /// WebAssembly functions and transforms (from daemons that have them).
    #[serde(skip_serializing_if = "Option::is_none")]
    wasm: Option<makiatto_protocol::health::WasmReport>,
    /// How many nodes its probe reached over DNS and HTTPS, of how many
    /// checks (none when it was not probed from).
    probed: Option<(usize, usize)>,
    /// Its warnings and failures, worst first.
    problems: Vec<String>,
    notes: Vec<String>,
}

impl NodeRow {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ok`, `problems`, `down` (the daemon does not answer) or
    /// `unreachable`.
    pub fn state(&self) -> &'static str {
        if !self.reachable {
            "unreachable"
        } else if !self.daemon {
            "down"
        } else if self.problems.is_empty() {
            "ok"
        } else {
            "problems"
        }
    }

    pub fn events(&self) -> Option<u64> {
        self.events
    }

    pub fn problems(&self) -> &[String] {
        &self.problems
    }
}

/// The rows of every node.
pub fn rows(observed: &[Observed], findings: &[Finding]) -> Vec<NodeRow> {
    let vvs: Vec<&VersionVector> = observed.iter().filter_map(|o| o.vv.as_ref()).collect();
    let best = union(&vvs);
    observed
        .iter()
        .map(|o| {
            let mine = findings.iter().filter(|f| f.node == o.name);
            let (notes, problems): (Vec<&Finding>, Vec<&Finding>) =
                mine.partition(|f| f.severity == Severity::Note);
            let h = o.health.as_ref();
            NodeRow {
                name: o.name.clone(),
                reachable: o.unreachable.is_none(),
                daemon: h.is_some(),
                events: h.map(|h| h.events),
                behind: o.vv.as_ref().map(|vv| behind(vv, &best)),
                verified: o.verify.as_ref().map(|v| v.problems.is_empty()),
                peers: h
                    .map(|h| {
                        h.peers
                            .iter()
                            .map(|p| PeerRow {
                                name: p.name.clone(),
                                alive: p.alive,
                                handshake_age_secs: p.handshake_age_secs,
                                in_sync: p.in_sync,
                                last_error: p.last_error.clone(),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                rejected_from_peers: h.map(|h| h.replication.bad_events),
                geoip: h
                    .and_then(|h| h.dns.as_ref())
                    .and_then(|d| d.geoip_database.as_ref())
                    .and_then(|g| g.loaded.clone()),
                telemetry: h.and_then(|h| h.telemetry.clone()),
                images: h.and_then(|h| h.http.images.clone()),
                wasm: h.and_then(|h| h.http.wasm.clone()),
                probed: match &o.probe {
                    Probed::Report(r) => {
                        let checks = r.targets.iter().map(|t| t.dns.len() + t.https.len()).sum();
                        let answered = r
                            .targets
                            .iter()
                            .map(|t| {
                                t.dns.iter().filter(|d| d.error.is_none()).count()
                                    + t.https.iter().filter(|h| h.error.is_none()).count()
                            })
                            .sum();
                        Some((answered, checks))
                    }
                    _ => None,
                },
                problems: problems.iter().map(|f| f.message.clone()).collect(),
                notes: notes.iter().map(|f| f.message.clone()).collect(),
            }
        })
        .collect()
}

/// Colours for the marks, when they are wanted.
struct Marks {
    colour: bool,
}

impl Marks {
    fn new() -> Marks {
        use std::io::IsTerminal;
        Marks {
            colour: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    fn mark(&self, s: Severity) -> String {
        let (mark, colour) = match s {
            Severity::Failure => ("✗", "31"),
            Severity::Warning => ("!", "33"),
            Severity::Note => ("·", "2"),
        };
        if self.colour {
            format!("\x1b[{colour}m{mark}\x1b[0m")
        } else {
            mark.to_owned()
        }
    }
}

/// Prints the report.
pub fn print(report: &Report) {
    let marks = Marks::new();
    let now = (crate::cluster::now_millis() / 1000) as i64;
    for r in &report.nodes {
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
        if let Some(l) = &r.geoip {
            let days = (now - l.built_unix_secs as i64) / 86_400;
            println!(
                "    GeoIP {} built {} ({days} days ago){}",
                if l.database_type.is_empty() {
                    "database"
                } else {
                    &l.database_type
                },
                crate::geoip::date(l.built_unix_secs),
                if l.manifest.is_none() {
                    ", this node's own copy"
                } else {
                    ""
                }
            );
        }
        if let Some((answered, checks)) = r.probed {
            println!(
                "    probed every node from here: {answered} of {checks} DNS and HTTPS checks answered"
            );
        }
        if let Some(t) = &r.telemetry {
            println!("    {}", telemetry_line(t));
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
            use makiatto_protocol::health::MemoryReset;
            let reset = match w.memory_reset {
                Some(MemoryReset::WholeMemory) => {
                    "; each call's memory zeroed whole (no PAGEMAP_SCAN)"
                }
                Some(MemoryReset::OnDemand) => "; instances allocated on demand (no pool)",
                Some(MemoryReset::PageScan) | None => "",
            };
            println!(
                "    wasm: {} functions, {} transforms, {} components ready; {} calls, {} failed ({} timed out), {} refused when busy{reset}",
                w.functions,
                w.transforms,
                w.components_ready,
                w.calls,
                w.failed,
                w.timeouts,
                w.refused
            );
        }
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
        for f in report.findings.iter().filter(|f| f.node == r.name) {
            println!("    {} {}", marks.mark(f.severity), f.message);
        }
    }
    let cluster: Vec<&Finding> = report
        .findings
        .iter()
        .filter(|f| f.node.is_empty())
        .collect();
    if !cluster.is_empty() {
        println!("cluster");
        for f in cluster {
            println!("    {} {}", marks.mark(f.severity), f.message);
        }
    }
    println!(
        "{}",
        match report.exit_code {
            0 => "cluster healthy",
            1 => "cluster has warnings (see above; exit status 1)",
            _ => "cluster has problems (see above; exit status 2)",
        }
    );
}

/// One line on a node's telemetry export.
fn telemetry_line(t: &TelemetryReport) -> String {
    let Some(endpoint) = &t.endpoint else {
        return "telemetry: not exported (no o11y peer, no [o11y] otlp_endpoint)".into();
    };
    let on = |b: bool, what: &str| {
        if b {
            what.to_owned()
        } else {
            format!("no {what}")
        }
    };
    format!(
        "telemetry → {endpoint} ({}): {}, {}, {}; spans {} sent, {} dropped; log records {} sent, {} dropped; metric exports {} ok, {} failed",
        t.source.as_deref().unwrap_or("?"),
        on(
            t.traces,
            &match t.dns_sampling_ratio {
                Some(dns) => format!("traces at {} (DNS {dns})", t.sampling_ratio),
                None => format!("traces at {}", t.sampling_ratio),
            }
        ),
        on(t.metrics, "metrics"),
        on(t.logs, "logs"),
        t.spans.exported,
        t.spans.dropped,
        t.log_records.exported,
        t.log_records.dropped,
        t.metric_exports,
        t.metric_exports_failed,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_telemetry_line_says_where_to_and_what_went() {
        assert!(telemetry_line(&TelemetryReport::default()).contains("not exported"));
        let mut t = TelemetryReport {
            endpoint: Some("http://198.51.100.9:4317".into()),
            source: Some("peer o11y".into()),
            traces: true,
            metrics: true,
            logs: false,
            sampling_ratio: 0.1,
            dns_sampling_ratio: Some(0.001),
            ..TelemetryReport::default()
        };
        t.spans.dropped = 7;
        let line = telemetry_line(&t);
        assert!(line.contains("peer o11y") && line.contains("traces at 0.1 (DNS 0.001)"));
        assert!(line.contains("no logs") && line.contains("7 dropped"));
    }
}
