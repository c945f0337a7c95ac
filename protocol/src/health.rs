//! `health`: the running daemon's view of itself and its peers — the mesh,
//! replication, deployed sites, DNS, HTTP and certificates. `maki health`
//! and `maki certs` read it from every node.
//!
//! Every struct reads with defaults for missing fields, so a newer `maki`
//! reads an older daemon's report (and an older one ignores what it does
//! not know).

use std::collections::BTreeMap;

use makiatto_events::{Blake3Hash, EventId};
use makiatto_projections::certificates::CertificateEntry;
use serde::{Deserialize, Serialize};

/// The whole report of one node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthReport {
    /// This node's name, once it has joined.
    pub node: Option<String>,
    pub mesh_addr: Option<String>,
    /// Events held.
    pub events: u64,
    /// Hex of the version vector's digest: equal logs, equal digests.
    pub vv_digest: String,
    pub load: Load,
    pub peers: Vec<PeerHealth>,
    pub replication: ReplicationTotals,
    /// Per domain: the live version and whether this node serves it.
    pub sites: BTreeMap<String, SiteDeployment>,
    /// None from a daemon that does not report DNS.
    pub dns: Option<DnsReport>,
    pub http: HttpReport,
    /// None on a node that has no keys yet.
    pub acme: Option<AcmeReport>,
    /// OTLP export (telemetry); none from a daemon that predates it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<TelemetryReport>,
    /// The daemon's process: since when this image serves, from which
    /// binary, and how the handover that started it went (a daemon
    /// before 0.3 does not say).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daemon: Option<DaemonInfo>,
    /// How far this node's clock is ahead of its live peers' median
    /// (milliseconds; negative: behind), from the clocks their heartbeats
    /// carry. None without such a peer (or from an older daemon).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock_ahead_of_peers_ms: Option<i64>,
    /// Events from peers stamped past `log.max_clock_skew` ahead of this
    /// node's clock, held until it reaches them.
    #[serde(skip_serializing_if = "is_zero")]
    pub held_ahead_of_clock: u64,
    /// Whether this node may sign its own events yet: after a start, not
    /// before a peer confirmed its feed's tip (a node restored from an old
    /// backup would fork its feed). None from an older daemon.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub own_feed: Option<OwnFeedState>,
}

/// The running daemon's process and image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DaemonInfo {
    pub pid: u32,
    /// When this image started serving (a handover keeps the pid and
    /// changes this).
    pub started_unix_millis: u64,
    pub software: String,
    /// The inode of the executable this image runs: a binary renamed over
    /// its path has another, so `maki` can tell which one serves.
    pub exe_inode: u64,
    /// The listening sockets it would hand over.
    pub sockets: usize,
    /// The handover that started this image, if one did.
    pub last_handover: Option<HandoverRecord>,
}

/// How a handover went.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HandoverRecord {
    pub at_unix_millis: u64,
    /// The software handing over, and the one taking over.
    pub from: String,
    pub to: String,
    /// `done`, or `fell back: …` (the new binary did not start, and the
    /// previous one serves on).
    pub outcome: String,
}

/// See [`HealthReport::own_feed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum OwnFeedState {
    /// A peer confirmed its feed's tip (or it has no peer): it signs.
    Learnt,
    /// No peer has answered since it started; it signs nothing for now,
    /// and on its own word after `left_secs`.
    Waiting { left_secs: u64 },
    /// No peer answered in time: it signs on what it holds.
    Unconfirmed,
}

/// Load figures a node reports in its heartbeats (defined beside the
/// events, where the heartbeat's crate sees it too).
pub use makiatto_events::Load;

/// One peer as this node sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PeerHealth {
    pub name: String,
    pub mesh_addr: String,
    /// A heartbeat heard within the liveness window (3 s).
    pub alive: bool,
    pub last_heard_ms: Option<u64>,
    /// Events the peer holds, from its last heartbeat.
    pub events: Option<u64>,
    /// Its last heartbeat carried this node's version-vector digest.
    pub in_sync: Option<bool>,
    pub load: Option<Load>,
    pub handshake_age_secs: Option<u64>,
    pub wg_rx_bytes: Option<u64>,
    pub wg_tx_bytes: Option<u64>,
    pub last_sync_ms: Option<u64>,
    pub last_error: Option<String>,
    pub events_received: u64,
    pub events_sent: u64,
    /// Events and blobs from this peer that failed verification.
    pub bad_events: u64,
    /// Its clock less this node's, from its last heartbeat (milliseconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock_offset_ms: Option<i64>,
}

/// Replication totals since the daemon started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReplicationTotals {
    pub sessions_ok: u64,
    pub sessions_failed: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub events_in: u64,
    pub events_out: u64,
    pub bad_events: u64,
    pub refused_connections: u64,
    /// Site versions fetched as a manifest delta.
    pub versions_by_delta: u64,
    /// Site versions a peer sent ahead of their events, taken.
    pub versions_ahead: u64,
    /// Manifests fetched whole (no peer could send a delta).
    pub manifests_whole: u64,
    /// Blobs fetched while `maki sync` was still uploading them to a peer
    /// (announced ahead of their version). Left out while zero, as a
    /// build before it wrote the totals.
    #[serde(skip_serializing_if = "is_zero")]
    pub blobs_ahead: u64,
    /// Connections of a node refused because it held as many connections
    /// or sessions open on this one as a node may (a member flooding
    /// anti-entropy). Left out while zero.
    #[serde(skip_serializing_if = "is_zero")]
    pub refused_busy: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One domain's live version and what this node serves of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SiteDeployment {
    pub live: Option<EventId>,
    pub deployed: Option<EventId>,
    pub files: Option<u64>,
    /// The live version is the one served.
    pub in_sync: bool,
    pub missing_blobs: usize,
    pub error: Option<String>,
}

/// The authoritative DNS server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DnsReport {
    pub zones: Vec<String>,
    pub serial: u32,
    /// Whether a GeoIP database is loaded (without one, no visitor is placed).
    pub geoip: bool,
    /// Which GeoIP database, from where, of when; and why the one the log
    /// names is not loaded (a daemon before 0.3 does not say).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub geoip_database: Option<GeoIpReport>,
    pub geo: Vec<GeoHealth>,
    /// Records no node serves, with the reason.
    pub skipped_records: Vec<String>,
    /// Per transport (udp, tcp, tls).
    pub transports: BTreeMap<String, DnsCounts>,
}

/// A geo candidate and whether it is healthy, as this node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GeoHealth {
    pub node: String,
    pub healthy: bool,
}

/// Queries of one transport, by what became of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DnsCounts {
    pub queries: u64,
    pub dropped: u64,
    pub truncated: u64,
    pub noerror: u64,
    pub formerr: u64,
    pub servfail: u64,
    pub nxdomain: u64,
    pub notimp: u64,
    pub refused_or_other: u64,
}

/// The HTTP edge.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpReport {
    pub hosts: Vec<String>,
    pub sites: BTreeMap<String, ServedSite>,
    pub responses: StatusCounts,
    /// Connections the node ended for what the client sent or failed to
    /// send, answered by the HTTP stack before any handler (absent from
    /// daemons before them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<ConnectionsEnded>,
    /// Images on the fly (absent from daemons before them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<ImagesReport>,
    /// WebAssembly functions and transforms (absent from daemons before
    /// them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasm: Option<WasmReport>,
}

/// WebAssembly on one node: what is configured and ready, and the calls.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WasmReport {
    /// Functions and transforms configured, over every domain.
    pub functions: u64,
    pub transforms: u64,
    /// Components compiled and linked, ready to run.
    pub components_ready: u64,
    /// Calls made (each stage of a transform chain is one).
    pub calls: u64,
    /// Calls that trapped, timed out or went over their memory.
    pub failed: u64,
    /// Of those, the ones stopped at their timeout (504).
    pub timeouts: u64,
    /// 503: the work pool's queue or the function's `wasm.concurrency`
    /// was full.
    pub refused: u64,
    /// Env values this node cannot open (not sealed to it, no reseal
    /// entry yet): its components run without them.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub env_unopened: u64,
    /// How an instance's memory is made fresh for the next call (absent
    /// from daemons before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_reset: Option<MemoryReset>,
}

/// How the WebAssembly engine gives each call a fresh memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemoryReset {
    /// A pooled slot, its pages the calls wrote found by `PAGEMAP_SCAN`
    /// and restored in place.
    PageScan,
    /// A pooled slot zeroed whole (up to the 2 MiB kept) after every call:
    /// `PAGEMAP_SCAN` is unavailable (Linux before 6.7, or
    /// /proc/self/pagemap unreadable). Slower calls.
    WholeMemory,
    /// No pool (its address space could not be reserved): every call
    /// maps its memory anew. Slower calls.
    OnDemand,
}

/// Images on the fly on one node: what was asked, what the cache and the
/// CPU pool hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImagesReport {
    /// Renditions made (decoded, resized, encoded).
    pub made: u64,
    /// Requests answered from the rendition cache.
    pub cache_hits: u64,
    /// Requests that waited for a rendition another request was making.
    pub coalesced: u64,
    /// Sources served unchanged (not a still raster image).
    pub unchanged: u64,
    /// 422: sources over a limit.
    pub too_large: u64,
    /// 503: the CPU pool's queue was full.
    pub busy: u64,
    /// 503: not made within images.timeout_ms.
    pub timed_out: u64,
    /// 429: too many new renditions of one source per minute.
    pub rate_limited: u64,
    pub cache_bytes: u64,
    pub cache_limit: u64,
    pub cache_entries: u64,
    pub evictions: u64,
    pub pool_threads: u64,
    pub pool_waiting: u64,
    pub pool_queue_limit: u64,
}

/// The version of a domain the HTTP routes serve.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServedSite {
    pub version: Option<EventId>,
    pub files: usize,
    pub precompressed: usize,
}

/// HTTP connections ended by the node for what the client sent, since
/// the daemon started: the answers the HTTP stack makes itself (431, 408,
/// 400) never reach [`StatusCounts`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnectionsEnded {
    /// A request head over the 64 KiB limit (HTTP/1.1: 431).
    pub head_too_large: u64,
    /// A request head not complete within the head timeout (slowloris).
    pub head_timeout: u64,
    /// A request head that does not parse (400), or a body cut short.
    pub bad_request: u64,
    /// A TLS handshake that failed or did not end within its timeout.
    pub tls_failed: u64,
    /// An HTTP/2 connection ended with an error (flow control, rapid
    /// reset, an oversized header list …).
    pub h2_error: u64,
}

/// Responses by status class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusCounts {
    #[serde(rename = "1xx")]
    pub informational: u64,
    #[serde(rename = "2xx")]
    pub success: u64,
    #[serde(rename = "3xx")]
    pub redirection: u64,
    #[serde(rename = "4xx")]
    pub client_error: u64,
    #[serde(rename = "5xx")]
    pub server_error: u64,
}

/// Certificates: what is issued, what is due, what failed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AcmeReport {
    /// The ACME directory; none: nothing is ordered.
    pub directory: Option<String>,
    /// `http-01` or `dns-01`.
    pub challenge: Option<String>,
    /// This node is the one that orders.
    pub orderer: bool,
    /// The certificate being ordered now (on the orderer).
    pub ordering: Option<String>,
    pub due: Vec<DueCertificate>,
    /// Orders that failed, and when they are tried again (on the orderer).
    pub failures: Vec<OrderFailure>,
    /// The certificates projection's entries, by first name.
    pub certificates: BTreeMap<String, CertificateEntry>,
    /// Certificates at the CA's duplicate limit, and until when (Unix ms).
    pub limited: BTreeMap<String, u64>,
}

/// A certificate to order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DueCertificate {
    pub certificate: String,
    pub domain: String,
    pub names: Vec<String>,
    pub limited_until_millis: Option<u64>,
}

/// An order that failed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OrderFailure {
    pub certificate: String,
    pub failures: u32,
    pub error: String,
    pub retry_in_secs: u64,
    /// The last attempt never reached the CA (no route, refused, timed
    /// out): tried again within seconds, and at once when the CA answers.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ca_unreached: bool,
    /// The node that tries again (the orderer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// Telemetry export: where to, what is on, and what was sent or lost.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TelemetryReport {
    /// The OTLP/gRPC endpoint; none: nothing is exported.
    pub endpoint: Option<String>,
    /// Why that endpoint: `override` (`[o11y] otlp_endpoint`) or
    /// `peer NAME` (the o11y peer on the mesh).
    pub source: Option<String>,
    pub traces: bool,
    pub metrics: bool,
    pub logs: bool,
    pub sampling_ratio: f64,
    /// The share of DNS queries traced (`[o11y] dns_sampling_ratio`);
    /// none from a build before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_sampling_ratio: Option<f64>,
    pub slow_threshold_ms: u64,
    pub spans: SignalCounts,
    pub log_records: SignalCounts,
    pub metric_exports: u64,
    pub metric_exports_failed: u64,
    /// The last export that failed, and why.
    pub last_error: Option<String>,
    /// Seconds since the collector last took an export.
    pub last_export_secs: Option<u64>,
}

/// One signal's items: sent, dropped (queue full or collector away) and
/// waiting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SignalCounts {
    pub exported: u64,
    pub dropped: u64,
    pub queued: u64,
}

/// The GeoIP database a node places visitors with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GeoIpReport {
    /// The database the log names (`geoip.database`: its manifest's hash).
    pub wanted: Option<Blake3Hash>,
    /// The database loaded now, if any.
    pub loaded: Option<GeoIpLoaded>,
    /// Why the database is not (or not the wanted one): being fetched,
    /// missing everywhere, unreadable. None when all is well.
    pub problem: Option<String>,
}

impl GeoIpReport {
    /// Whether visitors are placed with the database the log names (or,
    /// where the log names none, with one at all).
    pub fn serving_wanted(&self) -> bool {
        match (&self.wanted, &self.loaded) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(w), Some(l)) => l.manifest.as_ref() == Some(w),
        }
    }
}

/// A loaded GeoIP database.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GeoIpLoaded {
    /// The manifest it came from, when it is the log's; none for a copy
    /// made by an older `maki` in the node's `geoip/` directory.
    pub manifest: Option<Blake3Hash>,
    /// When the database was built (its metadata's build epoch, Unix
    /// seconds; the older of its two files).
    pub built_unix_secs: u64,
    /// Its type as the file says (`DBIP-City-Lite`, …).
    pub database_type: String,
    /// The address families it places (`ipv4`, `ipv6`).
    pub families: Vec<String>,
}

/// A handover begun: who hands over, to what.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HandoverStarted {
    pub pid: u32,
    /// The image handing over: its software and when it started serving
    /// (the next image's `DaemonInfo::started_unix_millis` differs).
    pub from: String,
    pub from_started_unix_millis: u64,
    /// The binary taking over, and its software (from its check).
    pub binary: String,
    pub to: String,
}
