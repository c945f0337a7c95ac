//! The checks of `maki health`, as a pure function of what every node
//! answered: no I/O, no clock of its own (the time is passed in), so each
//! rule is tested on made-up reports.
//!
//! Each finding has a severity, and the worst one is the exit status:
//! 0 healthy (notes only), 1 warnings (the cluster answers correctly, but
//! something needs an operator soon: a certificate under 14 days, clocks
//! more than a second apart, a GeoIP database older than 60 days or not
//! the one the log names yet, little disk or memory left, refused events),
//! 2 failures (a node answers wrongly or not at all: unreachable, down,
//! behind, a zone or geo decision differing between nodes, DNS or HTTPS
//! unanswered, a certificate expired, for other names or not the issued
//! one, blobs missing, no GeoIP database).

use std::collections::{BTreeMap, BTreeSet};

use makiatto_events::{AuthorKey, VersionVector};
use makiatto_protocol::health::{GeoIpReport, HealthReport, TelemetryReport};
use makiatto_protocol::probe::{ProbeReport, Space};
use makiatto_protocol::status::VerifyReport;
use serde::Serialize;

/// A handshake older than this means the tunnel is not working (WireGuard
/// renews sessions every two minutes while traffic flows; keepalives keep
/// it flowing).
pub const STALE_HANDSHAKE_SECS: u64 = 180;
/// A certificate expiring sooner is a warning.
pub const CERTIFICATE_WARN_DAYS: i64 = 14;
/// Clocks further apart are a warning: the log's clocks depend on them.
pub const CLOCK_WARN_MS: i64 = 1000;
/// A GeoIP database older than this is a warning (DB-IP releases monthly).
pub const GEOIP_WARN_DAYS: i64 = 60;
/// Less free disk or memory than these shares is a warning, then a failure.
pub const HEADROOM_WARN: f64 = 0.10;
pub const HEADROOM_FAIL: f64 = 0.02;
/// Less free disk than this is a failure whatever the share.
pub const DISK_FAIL_BYTES: u64 = 256 << 20;

/// How bad a finding is. The worst decides the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; nothing is wrong.
    Note,
    /// Correct answers, but an operator should act soon.
    Warning,
    /// A node answers wrongly or not at all.
    Failure,
}

impl Severity {
    /// The exit status of a run whose worst finding is this.
    pub fn exit_code(worst: Option<Severity>) -> u8 {
        match worst {
            None | Some(Severity::Note) => 0,
            Some(Severity::Warning) => 1,
            Some(Severity::Failure) => 2,
        }
    }
}

/// One thing found, about one node (or the cluster, `node` empty).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Finding {
    pub node: String,
    pub severity: Severity,
    /// Which check: `ssh`, `daemon`, `lag`, `dns`, `https`, `geoip`, …
    pub check: &'static str,
    pub message: String,
}

/// A node's clock against `maki`'s: its reading minus the middle of the
/// round trip that read it, give or take half that round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ClockOffset {
    pub offset_ms: i64,
    pub uncertainty_ms: i64,
}

/// What a node's probe came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Probed {
    Report(Box<ProbeReport>),
    /// Its daemon cannot probe (an older release), named.
    Unsupported(String),
    /// The probe was asked and failed.
    Failed(String),
    /// Not asked (the daemon did not answer at all).
    NotAsked,
}

/// What `maki` gathered from one node.
#[derive(Debug, Clone)]
pub struct Observed {
    pub name: String,
    /// Why it could not be reached over SSH.
    pub unreachable: Option<String>,
    pub health: Option<HealthReport>,
    /// Why the daemon did not answer.
    pub daemon_error: Option<String>,
    pub vv: Option<VersionVector>,
    pub verify: Option<VerifyReport>,
    pub probe: Probed,
    pub clock: Option<ClockOffset>,
}

/// Per author, the highest seq any node holds.
pub fn union(vvs: &[&VersionVector]) -> BTreeMap<AuthorKey, u64> {
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
pub fn behind(vv: &VersionVector, best: &BTreeMap<AuthorKey, u64>) -> u64 {
    best.iter()
        .map(|(author, seq)| seq.saturating_sub(vv.get(author).map_or(0, |f| f.seq)))
        .sum()
}

/// Whether anything is still on its way (events replicating, a version
/// or the GeoIP database being fetched, zones compiled at different
/// serials): what a moment's wait may settle.
pub fn settling(nodes: &[Observed]) -> bool {
    let vvs: Vec<&VersionVector> = nodes.iter().filter_map(|n| n.vv.as_ref()).collect();
    let best = union(&vvs);
    let lag = vvs.iter().any(|vv| behind(vv, &best) > 0);
    let fetching = nodes.iter().filter_map(|n| n.health.as_ref()).any(|h| {
        h.sites.values().any(|s| !s.in_sync)
            || !compiling(h).is_empty()
            || h.http.wasm.as_ref().is_some_and(|w| w.env_unopened > 0)
            || geoip(h).is_some_and(|g| g.wanted.is_some() && !g.serving_wanted())
    });
    lag || fetching || serials(nodes).values().any(|s| s.len() > 1)
}

/// The domains whose live version is deployed on the node but not yet
/// served by its edge (its components are compiling first).
fn compiling(h: &HealthReport) -> Vec<&str> {
    h.sites
        .iter()
        .filter(|(domain, s)| {
            s.in_sync
                && s.live.is_some()
                && h.http
                    .sites
                    .get(*domain)
                    .is_none_or(|served| served.version != s.live)
        })
        .map(|(domain, _)| domain.as_str())
        .collect()
}

fn geoip(h: &HealthReport) -> Option<&GeoIpReport> {
    h.dns.as_ref()?.geoip_database.as_ref()
}

/// Per zone, each serial answered and by which nodes.
fn serials(nodes: &[Observed]) -> BTreeMap<String, BTreeMap<u32, BTreeSet<String>>> {
    let mut out: BTreeMap<String, BTreeMap<u32, BTreeSet<String>>> = BTreeMap::new();
    for report in reports(nodes) {
        for t in &report.targets {
            for d in &t.dns {
                if let Some(serial) = d.serial {
                    out.entry(d.zone.clone())
                        .or_default()
                        .entry(serial)
                        .or_default()
                        .insert(t.node.clone());
                }
            }
        }
    }
    out
}

fn reports(nodes: &[Observed]) -> impl Iterator<Item = &ProbeReport> {
    nodes.iter().filter_map(|n| match &n.probe {
        Probed::Report(r) => Some(r.as_ref()),
        _ => None,
    })
}

/// Collects findings; the same finding about one node seen from several
/// probing nodes is said once, naming them.
#[derive(Default)]
struct Findings {
    seen: BTreeMap<(String, Severity, &'static str, String), BTreeSet<String>>,
}

impl Findings {
    fn add(&mut self, node: &str, severity: Severity, check: &'static str, message: String) {
        self.seen
            .entry((node.to_owned(), severity, check, message))
            .or_default();
    }

    /// A finding about `node` seen by the probe of `from`.
    fn seen_from(
        &mut self,
        node: &str,
        from: &str,
        severity: Severity,
        check: &'static str,
        message: String,
    ) {
        self.seen
            .entry((node.to_owned(), severity, check, message))
            .or_default()
            .insert(from.to_owned());
    }

    fn into_vec(self) -> Vec<Finding> {
        let mut out: Vec<Finding> = self
            .seen
            .into_iter()
            .map(|((node, severity, check, message), from)| Finding {
                message: if from.is_empty() {
                    message
                } else {
                    format!(
                        "{message} (seen from {})",
                        from.into_iter().collect::<Vec<_>>().join(", ")
                    )
                },
                node,
                severity,
                check,
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.node, std::cmp::Reverse(a.severity), a.check, &a.message).cmp(&(
                &b.node,
                std::cmp::Reverse(b.severity),
                b.check,
                &b.message,
            ))
        });
        out
    }
}

/// Every finding about `nodes`, at `now` (Unix seconds).
pub fn evaluate(nodes: &[Observed], now: i64) -> Vec<Finding> {
    let mut f = Findings::default();
    let vvs: Vec<&VersionVector> = nodes.iter().filter_map(|n| n.vv.as_ref()).collect();
    let best = union(&vvs);
    let acme_configured = nodes
        .iter()
        .filter_map(|n| n.health.as_ref())
        .any(|h| h.acme.as_ref().is_some_and(|a| a.directory.is_some()));
    for n in nodes {
        node_checks(&mut f, n, &best, now);
    }
    for n in nodes {
        if let Probed::Report(report) = &n.probe {
            probe_checks(&mut f, &n.name, report, acme_configured, now);
        }
    }
    serial_checks(&mut f, nodes);
    geo_checks(&mut f, nodes);
    clock_checks(&mut f, nodes);
    f.into_vec()
}

/// What one node says of itself and its peers.
fn node_checks(f: &mut Findings, n: &Observed, best: &BTreeMap<AuthorKey, u64>, now: i64) {
    use Severity::*;
    let name = n.name.as_str();
    if let Some(e) = &n.unreachable {
        f.add(name, Failure, "ssh", format!("unreachable over SSH: {e}"));
        return;
    }
    let Some(h) = &n.health else {
        f.add(
            name,
            Failure,
            "daemon",
            format!(
                "the daemon does not answer: {}",
                n.daemon_error.as_deref().unwrap_or("no answer")
            ),
        );
        return;
    };
    if let Some(lag) = n.vv.as_ref().map(|vv| behind(vv, best)).filter(|l| *l > 0) {
        f.add(
            name,
            Failure,
            "lag",
            format!("{lag} events behind the most advanced node"),
        );
    }
    for item in n.verify.iter().flat_map(|v| &v.problems) {
        f.add(name, Failure, "verify", format!("log verification: {item}"));
    }
    for peer in &h.peers {
        if !peer.alive {
            f.add(
                name,
                Failure,
                "mesh",
                format!("no heartbeat from {} over the mesh", peer.name),
            );
        }
        match peer.handshake_age_secs {
            None => f.add(
                name,
                Failure,
                "mesh",
                format!("no WireGuard handshake with {}", peer.name),
            ),
            Some(s) if s > STALE_HANDSHAKE_SECS => f.add(
                name,
                Failure,
                "mesh",
                format!("last WireGuard handshake with {} was {s}s ago", peer.name),
            ),
            _ => {}
        }
    }
    for (domain, s) in &h.sites {
        if !s.in_sync {
            let why = match &s.error {
                Some(e) => e.clone(),
                None => format!("{} blobs still to fetch", s.missing_blobs),
            };
            f.add(
                name,
                Failure,
                "sites",
                format!("{domain}: the live version is not deployed here yet ({why})"),
            );
        }
    }
    for domain in compiling(h) {
        f.add(
            name,
            Warning,
            "wasm",
            format!(
                "{domain}: the live version is deployed but not served yet: its components are compiling (see the daemon's log)"
            ),
        );
    }
    if let Some(w) = h.http.wasm.as_ref().filter(|w| w.env_unopened > 0) {
        f.add(
            name,
            Warning,
            "wasm",
            format!(
                "{} env value(s) cannot be opened here (not sealed to this node, and no node has resealed them to it yet); its components run without them",
                w.env_unopened
            ),
        );
    }
    use makiatto_protocol::health::MemoryReset;
    if let Some(reset) = h.http.wasm.as_ref().and_then(|w| w.memory_reset) {
        let why = match reset {
            MemoryReset::PageScan => None,
            MemoryReset::WholeMemory => Some(
                "each WebAssembly call's memory is zeroed whole after it ends: PAGEMAP_SCAN is unavailable (Linux before 6.7, or /proc/self/pagemap unreadable); calls are slower",
            ),
            MemoryReset::OnDemand => Some(
                "WebAssembly instances are allocated on demand: the instance pool could not reserve its address space (ulimit -v or strict overcommit); calls are slower",
            ),
        };
        if let Some(why) = why {
            f.add(name, Warning, "wasm", why.to_owned());
        }
    }
    if let Some(dns) = &h.dns {
        for t in ["udp", "tcp"] {
            if !dns.transports.contains_key(t) {
                f.add(
                    name,
                    Failure,
                    "dns",
                    format!(
                        "DNS is not served over {} (port 53 could not be bound: see the daemon's log)",
                        t.to_uppercase()
                    ),
                );
            }
        }
        for skipped in &dns.skipped_records {
            f.add(
                name,
                Failure,
                "dns",
                format!("DNS record not served: {skipped}"),
            );
        }
        geoip_checks(f, name, dns.geoip, dns.geoip_database.as_ref(), now);
    }
    for o in h.acme.iter().flat_map(|a| &a.failures) {
        f.add(
            name,
            Warning,
            "acme",
            format!(
                "certificate {}: the order failed {} time(s), next try in {} s: {}",
                o.certificate, o.failures, o.retry_in_secs, o.error
            ),
        );
    }
    for (severity, message) in clock_problems(h) {
        f.add(name, severity, "clock", message);
    }
    if let Some(message) = h.telemetry.as_ref().and_then(telemetry_problem) {
        f.add(name, Warning, "telemetry", message);
    }
    if h.replication.bad_events > 0 {
        f.add(
            name,
            Warning,
            "replication",
            format!(
                "{} events from peers failed verification and were refused (see the daemon's log)",
                h.replication.bad_events
            ),
        );
    }
    match &n.probe {
        Probed::Unsupported(version) => f.add(
            name,
            Note,
            "probe",
            format!(
                "not probed from here: its daemon ({version}) cannot probe; `maki machine upgrade {name}` adds DNS, HTTPS, disk and memory checks from it"
            ),
        ),
        Probed::Failed(e) => f.add(name, Warning, "probe", format!("its probe failed: {e}")),
        Probed::Report(_) | Probed::NotAsked => {}
    }
}

/// The GeoIP database a node answers with.
fn geoip_checks(
    f: &mut Findings,
    name: &str,
    loaded_any: bool,
    report: Option<&GeoIpReport>,
    now: i64,
) {
    use Severity::*;
    let Some(g) = report else {
        // An older daemon says only whether one is loaded.
        if !loaded_any {
            f.add(
                name,
                Failure,
                "geoip",
                format!("no GeoIP database loaded. {}", crate::geoip::MISSING),
            );
        }
        return;
    };
    match &g.loaded {
        None => f.add(
            name,
            Failure,
            "geoip",
            g.problem
                .clone()
                .unwrap_or_else(|| format!("no GeoIP database loaded. {}", crate::geoip::MISSING)),
        ),
        Some(l) => {
            if let Some(p) = &g.problem {
                f.add(name, Warning, "geoip", p.clone());
            }
            let days = (now - l.built_unix_secs as i64) / 86_400;
            if days > GEOIP_WARN_DAYS {
                f.add(
                    name,
                    Warning,
                    "geoip",
                    format!(
                        "the GeoIP database was built {} ({days} days ago): fetch this month's release (scripts/fetch-geoip.sh) and run `maki geoip update`",
                        crate::geoip::date(l.built_unix_secs)
                    ),
                );
            }
        }
    }
}

/// What one node's probe found, of itself and of every node.
fn probe_checks(
    f: &mut Findings,
    from: &str,
    report: &ProbeReport,
    acme_configured: bool,
    now: i64,
) {
    use Severity::*;
    headroom(f, from, "disk", "free disk", report.local.disk);
    headroom(f, from, "memory", "available memory", report.local.memory);
    for (domain, v) in &report.local.blobs {
        if let Some(e) = &v.error {
            f.add(from, Failure, "blobs", format!("{domain}: {e}"));
        } else if v.missing > 0 {
            f.add(
                from,
                Failure,
                "blobs",
                format!(
                    "{domain}: {} of the served version's {} files have no blob here (they are 404): {}",
                    v.missing,
                    v.files,
                    v.missing_paths.join(", ")
                ),
            );
        }
    }
    for t in &report.targets {
        for d in &t.dns {
            if let Some(e) = &d.error {
                f.seen_from(
                    &t.node,
                    from,
                    Failure,
                    "dns",
                    format!("DNS for {} at {} not answered: {e}", d.zone, d.address),
                );
            } else if !d.authoritative {
                f.seen_from(
                    &t.node,
                    from,
                    Failure,
                    "dns",
                    format!(
                        "DNS for {} at {} answered without authority (no AA bit)",
                        d.zone, d.address
                    ),
                );
            }
        }
        for h in &t.https {
            let at = format!("{} at {}", h.name, h.address);
            if let Some(e) = &h.error {
                f.seen_from(
                    &t.node,
                    from,
                    Failure,
                    "https",
                    format!("HTTPS for {at} not answered: {e}"),
                );
                continue;
            }
            if let Some(status) = h.status.filter(|s| *s >= 500) {
                f.seen_from(
                    &t.node,
                    from,
                    Failure,
                    "https",
                    format!("HTTPS for {at} answered {status}"),
                );
            }
            let Some(c) = &h.certificate else {
                continue;
            };
            if !c.issued_exists {
                let (severity, message) = if acme_configured {
                    (
                        Failure,
                        format!(
                            "HTTPS for {at} presents a self-signed certificate: none is issued for {} yet (`maki certs` says why)",
                            h.name
                        ),
                    )
                } else {
                    (
                        Note,
                        format!(
                            "HTTPS for {at} presents a self-signed certificate: no ACME directory is configured (`maki config set acme.directory …`)"
                        ),
                    )
                };
                f.seen_from(&t.node, from, severity, "https", message);
                continue;
            }
            if !c.issued {
                f.seen_from(
                    &t.node,
                    from,
                    Failure,
                    "https",
                    format!(
                        "HTTPS for {at} presents a certificate other than the one the log issued (issuer {})",
                        c.issuer
                    ),
                );
            }
            if !c.covers {
                f.seen_from(
                    &t.node,
                    from,
                    Failure,
                    "https",
                    format!(
                        "HTTPS for {at} presents a certificate for {} only",
                        c.names.join(", ")
                    ),
                );
            }
            let left = c.not_after_unix_secs - now;
            if left <= 0 {
                f.seen_from(
                    &t.node,
                    from,
                    Failure,
                    "https",
                    format!(
                        "HTTPS for {at}: the certificate expired on {}",
                        crate::geoip::date(c.not_after_unix_secs.max(0) as u64)
                    ),
                );
            } else if c.not_before_unix_secs > now {
                f.seen_from(
                    &t.node,
                    from,
                    Failure,
                    "https",
                    format!("HTTPS for {at}: the certificate is not valid yet"),
                );
            } else if left < CERTIFICATE_WARN_DAYS * 86_400 {
                f.seen_from(
                    &t.node,
                    from,
                    Warning,
                    "https",
                    format!(
                        "HTTPS for {at}: the certificate expires in {} days ({}); renewal is due 30 days before: `maki certs` says why it has not happened",
                        left / 86_400,
                        crate::geoip::date(c.not_after_unix_secs as u64)
                    ),
                );
            }
        }
    }
}

fn headroom(f: &mut Findings, node: &str, check: &'static str, what: &str, space: Option<Space>) {
    let Some(s) = space else {
        return;
    };
    let share = s.free_share();
    let text = format!(
        "{what}: {} of {} ({:.0}%)",
        bytes(s.free_bytes),
        bytes(s.total_bytes),
        share * 100.0
    );
    let disk_floor = check == "disk" && s.free_bytes < DISK_FAIL_BYTES;
    if share < HEADROOM_FAIL || disk_floor {
        f.add(
            node,
            Severity::Failure,
            check,
            format!("{text}: nearly exhausted"),
        );
    } else if share < HEADROOM_WARN {
        f.add(
            node,
            Severity::Warning,
            check,
            format!("{text}: running low"),
        );
    }
}

/// Bytes as people read them.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Every node answers every zone with one serial.
fn serial_checks(f: &mut Findings, nodes: &[Observed]) {
    for (zone, by_serial) in serials(nodes) {
        if by_serial.len() > 1 {
            let seen: Vec<String> = by_serial
                .iter()
                .map(|(serial, nodes)| {
                    format!(
                        "{serial} at {}",
                        nodes.iter().cloned().collect::<Vec<_>>().join(", ")
                    )
                })
                .collect();
            f.add(
                "",
                Severity::Failure,
                "dns",
                format!(
                    "zone {zone} is served with different serials: {}",
                    seen.join("; ")
                ),
            );
        }
    }
}

/// Nodes that hear the same nodes and load the same GeoIP database give
/// each client subnet the same answer.
fn geo_checks(f: &mut Findings, nodes: &[Observed]) {
    // Each node's own view and database, from its own reports.
    let mut standing: BTreeMap<String, (Vec<String>, Option<String>)> = BTreeMap::new();
    for n in nodes {
        if let Probed::Report(r) = &n.probe {
            let db = n
                .health
                .as_ref()
                .and_then(geoip)
                .and_then(|g| g.loaded.as_ref())
                .map(|l| {
                    l.manifest.map_or_else(
                        || format!("copy built {}", l.built_unix_secs),
                        |m| m.to_hex(),
                    )
                });
            standing.insert(n.name.clone(), (r.view.clone(), db));
        }
    }
    // (zone, subnet, view, db) → answer → nodes answering it.
    type Key = (String, String, Vec<String>, Option<String>);
    let mut answers: BTreeMap<Key, BTreeMap<Vec<String>, BTreeSet<String>>> = BTreeMap::new();
    for report in reports(nodes) {
        for t in &report.targets {
            let Some((view, db)) = standing.get(&t.node) else {
                continue;
            };
            for d in &t.dns {
                for (subnet, answer) in &d.geo {
                    answers
                        .entry((d.zone.clone(), subnet.clone(), view.clone(), db.clone()))
                        .or_default()
                        .entry(answer.clone())
                        .or_default()
                        .insert(t.node.clone());
                }
            }
        }
    }
    for ((zone, subnet, _, _), by_answer) in answers {
        if by_answer.len() > 1 {
            let seen: Vec<String> = by_answer
                .iter()
                .map(|(answer, nodes)| {
                    format!(
                        "{} from {}",
                        if answer.is_empty() {
                            "nothing".to_owned()
                        } else {
                            answer.join(" ")
                        },
                        nodes.iter().cloned().collect::<Vec<_>>().join(", ")
                    )
                })
                .collect();
            f.add(
                "",
                Severity::Failure,
                "geo",
                format!(
                    "{zone} for clients in {subnet}: nodes that see the same peers with the same GeoIP database answer differently: {}",
                    seen.join("; ")
                ),
            );
        }
    }
}

/// Telemetry not taken by the collector for this long is a problem.
const TELEMETRY_STALE_SECS: u64 = 60;

/// The collector has not taken an export for a while, and the last one
/// failed: what the node records is being dropped.
fn telemetry_problem(t: &TelemetryReport) -> Option<String> {
    let endpoint = t.endpoint.as_ref()?;
    let error = t.last_error.as_ref()?;
    let stale = t.last_export_secs.is_none_or(|s| s > TELEMETRY_STALE_SECS);
    stale.then(|| {
        format!(
            "the collector at {endpoint} is not taking telemetry ({} spans, {} log records dropped so far): {error}",
            t.spans.dropped, t.log_records.dropped
        )
    })
}

/// A node's clock this far from its peers' median (as their heartbeats
/// carry it) is wrong: clocks kept by NTP agree within milliseconds, and
/// stamps a node signs, TLS validity and logs all read it.
const CLOCK_OFF_AFTER_MS: u64 = 5_000;

/// What a node's clock says is wrong: far from its peers', or events held
/// for a stamp ahead of it (someone's clock runs ahead). Warnings: the node
/// still answers; what it cannot apply yet shows as lag.
fn clock_problems(h: &HealthReport) -> Vec<(Severity, String)> {
    let mut problems = Vec::new();
    if let Some(ms) = h
        .clock_ahead_of_peers_ms
        .filter(|ms| ms.unsigned_abs() > CLOCK_OFF_AFTER_MS)
    {
        problems.push((
            Severity::Warning,
            format!(
                "its clock is {} s {} its peers' (their median): set it right (NTP); \
                 events it signs are held by its peers past log.max_clock_skew",
                ms.unsigned_abs() / 1000,
                if ms > 0 { "ahead of" } else { "behind" }
            ),
        ));
    }
    if h.held_ahead_of_clock > 0 {
        problems.push((
            Severity::Warning,
            format!(
                "{} events from peers are stamped ahead of this node's clock past log.max_clock_skew \
                 and wait for it (a clock runs ahead somewhere: see which node's is off)",
                h.held_ahead_of_clock
            ),
        ));
    }
    problems
}

/// Clocks within a second of each other (beyond what the round trips
/// leave uncertain).
fn clock_checks(f: &mut Findings, nodes: &[Observed]) {
    let clocks: Vec<(&str, ClockOffset)> = nodes
        .iter()
        .filter_map(|n| n.clock.map(|c| (n.name.as_str(), c)))
        .collect();
    for (i, (a, ca)) in clocks.iter().enumerate() {
        for (b, cb) in &clocks[i + 1..] {
            let apart = (ca.offset_ms - cb.offset_ms).abs();
            let surely = apart - ca.uncertainty_ms - cb.uncertainty_ms;
            if surely > CLOCK_WARN_MS {
                f.add(
                    "",
                    Severity::Warning,
                    "clock",
                    format!(
                        "the clocks of {a} and {b} are {apart} ms apart (± {} ms): the log's timestamps and `--at` depend on them; run NTP (chrony, systemd-timesyncd) on every node",
                        ca.uncertainty_ms + cb.uncertainty_ms
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use makiatto_events::{Blake3Hash, EventId};
    use makiatto_protocol::health::{DnsCounts, DnsReport, GeoIpLoaded, PeerHealth};
    use makiatto_protocol::probe::{
        DnsCheck, HttpsCheck, LocalReport, SeenCertificate, TargetReport, VersionBlobs,
    };

    const NOW: i64 = 1_780_000_000;
    const DAY: i64 = 86_400;

    fn healthy_dns(built: i64) -> DnsReport {
        DnsReport {
            geoip: true,
            geoip_database: Some(GeoIpReport {
                wanted: Some(Blake3Hash([1; 32])),
                loaded: Some(GeoIpLoaded {
                    manifest: Some(Blake3Hash([1; 32])),
                    built_unix_secs: built as u64,
                    database_type: "DBIP-City-Lite".into(),
                    families: vec!["ipv4".into()],
                }),
                problem: None,
            }),
            transports: [("udp", DnsCounts::default()), ("tcp", DnsCounts::default())]
                .into_iter()
                .map(|(t, c)| (t.to_owned(), c))
                .collect(),
            ..DnsReport::default()
        }
    }

    fn cert(not_after: i64) -> SeenCertificate {
        SeenCertificate {
            not_before_unix_secs: NOW - 10 * DAY,
            not_after_unix_secs: not_after,
            issuer: "Pebble Intermediate CA".into(),
            names: vec!["example.test".into()],
            covers: true,
            issued: true,
            issued_exists: true,
        }
    }

    /// A node whose own report and probe of every node are all well.
    fn node(name: &str, names: &[&str]) -> Observed {
        let targets = names
            .iter()
            .map(|t| TargetReport {
                node: (*t).to_owned(),
                dns: vec![DnsCheck {
                    zone: "example.test".into(),
                    address: format!("{t}-addr"),
                    serial: Some(7),
                    authoritative: true,
                    geo: [("81.2.69.0/24".to_owned(), vec!["203.0.113.2".to_owned()])]
                        .into_iter()
                        .collect(),
                    ..DnsCheck::default()
                }],
                https: vec![HttpsCheck {
                    name: "example.test".into(),
                    address: format!("{t}-addr"),
                    status: Some(200),
                    certificate: Some(cert(NOW + 60 * DAY)),
                    ..HttpsCheck::default()
                }],
            })
            .collect();
        Observed {
            name: name.to_owned(),
            unreachable: None,
            health: Some(HealthReport {
                peers: names
                    .iter()
                    .filter(|n| **n != name)
                    .map(|n| PeerHealth {
                        name: (*n).to_owned(),
                        alive: true,
                        handshake_age_secs: Some(5),
                        ..PeerHealth::default()
                    })
                    .collect(),
                dns: Some(healthy_dns(NOW - 20 * DAY)),
                ..HealthReport::default()
            }),
            daemon_error: None,
            vv: Some(VersionVector::default()),
            verify: Some(VerifyReport::default()),
            probe: Probed::Report(Box::new(ProbeReport {
                node: Some(name.to_owned()),
                view: names.iter().map(|n| (*n).to_owned()).collect(),
                local: LocalReport {
                    disk: Some(Space {
                        free_bytes: 50 << 30,
                        total_bytes: 100 << 30,
                    }),
                    memory: Some(Space {
                        free_bytes: 1 << 30,
                        total_bytes: 2 << 30,
                    }),
                    blobs: [(
                        "example.test".to_owned(),
                        VersionBlobs {
                            version: Some(EventId([2; 32])),
                            files: 3,
                            ..VersionBlobs::default()
                        },
                    )]
                    .into_iter()
                    .collect(),
                },
                targets,
            })),
            clock: Some(ClockOffset {
                offset_ms: 0,
                uncertainty_ms: 2,
            }),
        }
    }

    const NAMES: [&str; 3] = ["a", "b", "c"];

    fn cluster() -> Vec<Observed> {
        NAMES.iter().map(|n| node(n, &NAMES)).collect()
    }

    fn worst(findings: &[Finding]) -> u8 {
        Severity::exit_code(findings.iter().map(|f| f.severity).max())
    }

    fn probe_of(n: &mut Observed) -> &mut ProbeReport {
        match &mut n.probe {
            Probed::Report(r) => r,
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_cluster_where_everything_answers_is_healthy() {
        let findings = evaluate(&cluster(), NOW);
        assert!(findings.is_empty(), "{findings:#?}");
        assert_eq!(worst(&findings), 0);
    }

    #[test]
    fn a_node_that_does_not_answer_https_fails_once_naming_who_saw_it() {
        let mut nodes = cluster();
        for n in &mut nodes {
            let t = &mut probe_of(n).targets[1];
            t.https[0].error = Some("cannot connect: Connection refused".into());
            t.https[0].certificate = None;
        }
        let findings = evaluate(&nodes, NOW);
        assert_eq!(findings.len(), 1, "{findings:#?}");
        assert_eq!(findings[0].node, "b");
        assert_eq!(findings[0].severity, Severity::Failure);
        assert!(
            findings[0].message.ends_with("(seen from a, b, c)"),
            "{findings:?}"
        );
        assert_eq!(worst(&findings), 2);
    }

    #[test]
    fn certificates_warn_under_fourteen_days_and_fail_expired_or_foreign() {
        let mut nodes = cluster();
        probe_of(&mut nodes[0]).targets[0].https[0].certificate = Some(cert(NOW + 13 * DAY));
        let findings = evaluate(&nodes, NOW);
        assert_eq!(worst(&findings), 1, "{findings:#?}");
        assert!(findings[0].message.contains("expires in 13 days"));

        probe_of(&mut nodes[0]).targets[0].https[0].certificate = Some(cert(NOW - DAY));
        assert_eq!(worst(&evaluate(&nodes, NOW)), 2);

        let mut foreign = cert(NOW + 60 * DAY);
        foreign.issued = false;
        probe_of(&mut nodes[0]).targets[0].https[0].certificate = Some(foreign);
        let findings = evaluate(&nodes, NOW);
        assert!(
            findings
                .iter()
                .any(|f| f.message.contains("other than the one the log issued"))
        );
    }

    #[test]
    fn a_self_signed_certificate_fails_only_where_an_acme_directory_is_set() {
        let mut nodes = cluster();
        for n in &mut nodes {
            for t in &mut probe_of(n).targets {
                let c = t.https[0].certificate.as_mut().unwrap();
                c.issued = false;
                c.issued_exists = false;
            }
        }
        let findings = evaluate(&nodes, NOW);
        assert_eq!(worst(&findings), 0, "{findings:#?}");
        assert!(findings.iter().all(|f| f.severity == Severity::Note));
        nodes[0].health.as_mut().unwrap().acme = Some(makiatto_protocol::health::AcmeReport {
            directory: Some("https://acme.test/dir".into()),
            ..Default::default()
        });
        assert_eq!(worst(&evaluate(&nodes, NOW)), 2);
    }

    #[test]
    fn serials_and_geo_decisions_must_agree_between_nodes_of_one_view() {
        let mut nodes = cluster();
        for n in &mut nodes {
            probe_of(n).targets[2].dns[0].serial = Some(8);
        }
        let findings = evaluate(&nodes, NOW);
        assert!(
            findings
                .iter()
                .any(|f| f.message.contains("different serials")
                    && f.message.contains("7 at a, b")
                    && f.message.contains("8 at c")),
            "{findings:#?}"
        );
        let mut nodes = cluster();
        for n in &mut nodes {
            probe_of(n).targets[2].dns[0]
                .geo
                .insert("81.2.69.0/24".into(), vec!["203.0.113.4".into()]);
        }
        let findings = evaluate(&nodes, NOW);
        assert!(findings.iter().any(|f| f.check == "geo"), "{findings:#?}");
        // Node c hears only itself: its answer may differ.
        probe_of(&mut nodes[2]).view = vec!["c".into()];
        assert!(evaluate(&nodes, NOW).is_empty());
    }

    #[test]
    fn a_version_compiling_or_env_values_not_resealed_yet_are_warned_and_settle() {
        use makiatto_protocol::health::{ServedSite, SiteDeployment, WasmReport};
        let mut nodes = cluster();
        let live = makiatto_events::EventId([7; 32]);
        let older = makiatto_events::EventId([6; 32]);
        let h = nodes[0].health.as_mut().unwrap();
        h.sites.insert(
            "a.test".into(),
            SiteDeployment {
                live: Some(live),
                deployed: Some(live),
                in_sync: true,
                ..SiteDeployment::default()
            },
        );
        h.http.sites.insert(
            "a.test".into(),
            ServedSite {
                version: Some(older),
                ..ServedSite::default()
            },
        );
        h.http.wasm = Some(WasmReport {
            env_unopened: 2,
            ..WasmReport::default()
        });
        assert!(settling(&nodes));
        let findings = evaluate(&nodes, NOW);
        assert_eq!(findings.len(), 2, "{findings:#?}");
        assert!(
            findings
                .iter()
                .all(|f| f.severity == Severity::Warning && f.check == "wasm")
        );
        let said = |what: &str| findings.iter().any(|f| f.message.contains(what));
        assert!(said("components are compiling"), "{findings:#?}");
        assert!(said("2 env value(s) cannot be opened"), "{findings:#?}");
        // Served, and opened: nothing to say.
        let h = nodes[0].health.as_mut().unwrap();
        h.http.sites.get_mut("a.test").unwrap().version = Some(live);
        h.http.wasm = Some(WasmReport::default());
        assert!(!settling(&nodes));
        assert!(evaluate(&nodes, NOW).is_empty());
    }

    #[test]
    fn a_node_whose_calls_get_no_pooled_page_scan_reset_is_warned() {
        use makiatto_protocol::health::{MemoryReset, WasmReport};
        for (reset, said) in [
            (Some(MemoryReset::PageScan), None),
            (None, None),
            (
                Some(MemoryReset::WholeMemory),
                Some("PAGEMAP_SCAN is unavailable"),
            ),
            (Some(MemoryReset::OnDemand), Some("allocated on demand")),
        ] {
            let mut nodes = cluster();
            nodes[1].health.as_mut().unwrap().http.wasm = Some(WasmReport {
                memory_reset: reset,
                ..WasmReport::default()
            });
            let findings = evaluate(&nodes, NOW);
            match said {
                None => assert!(findings.is_empty(), "{reset:?}: {findings:#?}"),
                Some(what) => {
                    assert_eq!(findings.len(), 1, "{findings:#?}");
                    assert_eq!(findings[0].severity, Severity::Warning);
                    assert_eq!(findings[0].check, "wasm");
                    assert!(findings[0].message.contains(what), "{findings:#?}");
                }
            }
            // A warning, not something a moment's wait settles.
            assert!(!settling(&nodes));
        }
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
        assert!(p[0].1.contains("600 s ahead of its peers'"), "{p:?}");
        let holding = HealthReport {
            held_ahead_of_clock: 3,
            ..HealthReport::default()
        };
        assert!(
            clock_problems(&holding)[0]
                .1
                .contains("3 events from peers")
        );
    }

    #[test]
    fn clocks_more_than_a_second_apart_warn() {
        let mut nodes = cluster();
        nodes[1].clock = Some(ClockOffset {
            offset_ms: 1500,
            uncertainty_ms: 2,
        });
        let findings = evaluate(&nodes, NOW);
        assert_eq!(worst(&findings), 1);
        assert!(findings.iter().all(|f| f.check == "clock"), "{findings:#?}");
        // Within what the round trips leave uncertain: nothing said.
        nodes[1].clock = Some(ClockOffset {
            offset_ms: 1500,
            uncertainty_ms: 600,
        });
        assert!(evaluate(&nodes, NOW).is_empty());
    }

    #[test]
    fn the_geoip_database_must_be_there_and_recent() {
        let mut nodes = cluster();
        nodes[0].health.as_mut().unwrap().dns = Some(healthy_dns(NOW - 61 * DAY));
        let findings = evaluate(&nodes, NOW);
        assert_eq!(worst(&findings), 1);
        assert!(findings[0].message.contains("61 days ago"), "{findings:?}");
        let dns = nodes[0].health.as_mut().unwrap().dns.as_mut().unwrap();
        dns.geoip = false;
        dns.geoip_database = Some(GeoIpReport {
            problem: Some("no GeoIP database: …".into()),
            ..GeoIpReport::default()
        });
        assert_eq!(worst(&evaluate(&nodes, NOW)), 2);
        // An older daemon says only whether it has one.
        let dns = nodes[0].health.as_mut().unwrap().dns.as_mut().unwrap();
        dns.geoip_database = None;
        assert_eq!(worst(&evaluate(&nodes, NOW)), 2);
        let dns = nodes[0].health.as_mut().unwrap().dns.as_mut().unwrap();
        dns.geoip = true;
        assert_eq!(worst(&evaluate(&nodes, NOW)), 0);
    }

    #[test]
    fn headroom_and_blobs_are_checked_on_each_node() {
        let mut nodes = cluster();
        probe_of(&mut nodes[0]).local.disk = Some(Space {
            free_bytes: 5 << 30,
            total_bytes: 100 << 30,
        });
        assert_eq!(worst(&evaluate(&nodes, NOW)), 1);
        probe_of(&mut nodes[0]).local.disk = Some(Space {
            free_bytes: 100 << 20,
            total_bytes: 100 << 30,
        });
        assert_eq!(worst(&evaluate(&nodes, NOW)), 2);
        let mut nodes = cluster();
        let v = probe_of(&mut nodes[1])
            .local
            .blobs
            .get_mut("example.test")
            .unwrap();
        v.missing = 1;
        v.missing_paths = vec!["index.html".into()];
        let findings = evaluate(&nodes, NOW);
        assert!(findings[0].message.contains("index.html"), "{findings:?}");
        assert_eq!(worst(&findings), 2);
    }

    #[test]
    fn lag_is_counted_against_the_most_advanced_node_per_author() {
        let vv = |feeds: &[(u8, u64)]| {
            let mut v = VersionVector::default();
            for (author, seq) in feeds {
                for s in 1..=*seq {
                    v.observe(AuthorKey([*author; 32]), s, &EventId([s as u8; 32]));
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
    fn an_older_daemon_is_a_note_and_an_unreachable_one_a_failure() {
        let mut nodes = cluster();
        nodes[2].probe = Probed::Unsupported("0.2.0 (control protocol 2)".into());
        let findings = evaluate(&nodes, NOW);
        assert_eq!(worst(&findings), 0, "{findings:#?}");
        nodes[2].unreachable = Some("connection refused".into());
        assert_eq!(worst(&evaluate(&nodes, NOW)), 2);
    }

    #[test]
    fn a_collector_that_takes_nothing_is_a_problem() {
        let off = TelemetryReport::default();
        assert_eq!(telemetry_problem(&off), None);
        let mut t = TelemetryReport {
            endpoint: Some("http://198.51.100.9:4317".into()),
            source: Some("peer o11y".into()),
            traces: true,
            metrics: true,
            sampling_ratio: 0.1,
            dns_sampling_ratio: None,
            ..TelemetryReport::default()
        };
        t.spans.dropped = 7;
        // Failing, but the collector took something within the minute.
        t.last_error = Some("span: connection refused".into());
        t.last_export_secs = Some(5);
        assert_eq!(telemetry_problem(&t), None);
        t.last_export_secs = None;
        let problem = telemetry_problem(&t).unwrap();
        assert!(problem.contains("7 spans") && problem.contains("connection refused"));
    }
}
