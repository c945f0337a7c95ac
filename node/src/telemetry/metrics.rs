//! The metrics: recorded on the request paths into per-thread shards
//! (a lock nobody else takes between two collections, a few additions),
//! read from the health report at collection, and turned into one OTLP
//! `ExportMetricsServiceRequest` per interval. Never sampled; cumulative
//! temporality (every data point counts from the daemon's start).
//!
//! The names and units are listed once, in [`CATALOGUE`]: the collector's
//! Prometheus exporter turns `server.request.count` (a counter) into
//! `server_request_count_total` and `server.request.duration` (seconds)
//! into `server_request_duration_seconds_*`, the names the guide's Grafana
//! queries and `docs/grafana-dashboard.json` use.
//!
//! The OpenTelemetry SDK's own instruments are not used here: they look
//! attributes up in a shared map on every call, and they carry no
//! exemplars, which the duration histogram needs to link a slow bucket to
//! a trace.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use makiatto_protocol::health::HealthReport;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Exemplar, Gauge, Histogram, HistogramDataPoint, Metric,
    NumberDataPoint, Sum, exemplar, metric, number_data_point,
};

use super::context::{SpanId, TraceId};

/// What kind of instrument a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A monotonic sum (Prometheus: `_total`).
    Counter,
    Gauge,
    Histogram,
}

/// One exported metric: name, unit (UCUM, as OTLP carries it), kind, and
/// what it means.
pub struct Spec {
    pub name: &'static str,
    pub unit: &'static str,
    pub kind: Kind,
    pub doc: &'static str,
}

const fn spec(name: &'static str, unit: &'static str, kind: Kind, doc: &'static str) -> Spec {
    Spec {
        name,
        unit,
        kind,
        doc,
    }
}

/// Every metric a node exports.
pub const CATALOGUE: &[Spec] = &[
    spec(
        "server.request.count",
        "{request}",
        Kind::Counter,
        "HTTP requests answered, by http.status_code",
    ),
    spec(
        "server.request.duration",
        "s",
        Kind::Histogram,
        "HTTP request duration until the response's last byte, by http.status_code",
    ),
    spec(
        "http.server.request.duration",
        "s",
        Kind::Histogram,
        "HTTP request duration (OpenTelemetry's stable HTTP server convention)",
    ),
    spec(
        "http.server.response.body.size",
        "By",
        Kind::Histogram,
        "HTTP response body bytes sent",
    ),
    spec(
        "cdn.cache.requests",
        "{request}",
        Kind::Counter,
        "representations served, by cdn.cache.hit (true: from an in-memory cache)",
    ),
    spec(
        "makiatto.cache.size",
        "By",
        Kind::Gauge,
        "bytes held by an in-memory cache, by cdn.cache.name",
    ),
    spec(
        "makiatto.image.duration",
        "s",
        Kind::Histogram,
        "time to answer a rendition request, by makiatto.image.outcome (cache, made, unchanged, too_large, busy, timed_out, limited)",
    ),
    spec(
        "makiatto.wasm.duration",
        "s",
        Kind::Histogram,
        "time of a WebAssembly call, by makiatto.wasm.kind (handler, transform) and makiatto.wasm.outcome (ok, not_deployed, concurrency, busy, unusable, timeout, memory, trap)",
    ),
    spec(
        "dns.server.queries",
        "{query}",
        Kind::Counter,
        "DNS queries, by network.transport, dns.response.code and dns.answer.kind",
    ),
    spec(
        "makiatto.replication.lag",
        "{event}",
        Kind::Gauge,
        "events by which a peer's log differs from this node's (0 in sync)",
    ),
    spec(
        "makiatto.replication.sessions",
        "{session}",
        Kind::Counter,
        "replication sessions, by result",
    ),
    spec(
        "makiatto.replication.events",
        "{event}",
        Kind::Counter,
        "events replicated, by direction",
    ),
    spec(
        "makiatto.replication.refused",
        "{event}",
        Kind::Counter,
        "events refused (bad_event) and connections refused (connection), by reason",
    ),
    spec(
        "makiatto.http.connections.ended",
        "{connection}",
        Kind::Counter,
        "HTTP connections the node ended for what the client sent, by reason",
    ),
    spec(
        "makiatto.blob.fetches",
        "{version}",
        Kind::Counter,
        "site versions fetched from peers, by kind (delta, ahead, whole_manifest)",
    ),
    spec(
        "makiatto.peer.up",
        "{peer}",
        Kind::Gauge,
        "1 when a peer's heartbeat was heard within 3 s",
    ),
    spec(
        "makiatto.mesh.handshake.age",
        "s",
        Kind::Gauge,
        "seconds since the last WireGuard handshake with a peer",
    ),
    spec(
        "makiatto.mesh.io",
        "By",
        Kind::Counter,
        "WireGuard bytes with a peer, by network.io.direction",
    ),
    spec(
        "makiatto.certificate.time_to_expiry",
        "d",
        Kind::Gauge,
        "days until a certificate expires",
    ),
    spec(
        "makiatto.site.deployed",
        "{site}",
        Kind::Gauge,
        "1 when this node serves a domain's live version",
    ),
    spec(
        "process.cpu.time",
        "s",
        Kind::Counter,
        "CPU seconds of the daemon, by cpu.mode",
    ),
    spec(
        "process.memory.usage",
        "By",
        Kind::Gauge,
        "resident memory of the daemon",
    ),
    spec(
        "process.memory.virtual",
        "By",
        Kind::Gauge,
        "virtual memory of the daemon",
    ),
    spec(
        "makiatto.telemetry.exported",
        "{item}",
        Kind::Counter,
        "spans and log records the collector took, by signal",
    ),
    spec(
        "makiatto.telemetry.dropped",
        "{item}",
        Kind::Counter,
        "spans, log records and metric exports lost (queue full, collector down), by signal",
    ),
    spec(
        "makiatto.telemetry.queue.size",
        "{item}",
        Kind::Gauge,
        "items waiting in the export queue, by signal",
    ),
];

/// Bucket bounds of the duration histograms, in seconds: a CDN answers
/// most requests well under a millisecond, so the low end is finer than
/// the semantic conventions' default.
pub const DURATION_BOUNDS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];
/// Bucket bounds of the response size histogram, in bytes.
pub const SIZE_BOUNDS: [f64; 10] = [
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
];

/// A histogram's counts (cumulative since the start).
#[derive(Debug, Clone, Default)]
pub struct Hist<const N: usize> {
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    /// `N` bounds, `N + 1` buckets (the last one past every bound).
    pub buckets: Vec<u64>,
}

impl<const N: usize> Hist<N> {
    pub fn record(&mut self, bounds: &[f64; N], v: f64) {
        if self.buckets.is_empty() {
            self.buckets = vec![0; N + 1];
            self.min = v;
            self.max = v;
        }
        let i = bounds.partition_point(|b| *b < v);
        self.buckets[i] += 1;
        self.count += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    fn merge(&mut self, other: &Hist<N>) {
        if other.count == 0 {
            return;
        }
        if self.buckets.is_empty() {
            *self = other.clone();
            return;
        }
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }
}

/// The last kept trace of a data point, as an exemplar.
#[derive(Debug, Clone, Copy)]
pub struct Example {
    pub value: f64,
    pub at: SystemTime,
    pub trace: TraceId,
    pub span: SpanId,
}

/// The attributes of an HTTP data point.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HttpKey {
    pub method: &'static str,
    pub status: u16,
    /// A configured domain or alias; `None` is `other`.
    pub address: Option<Arc<str>>,
    pub https: bool,
    pub version: &'static str,
}

#[derive(Debug, Clone, Default)]
pub struct HttpPoint {
    pub duration: Hist<15>,
    pub size: Hist<10>,
    pub example: Option<Example>,
}

/// One serving thread's HTTP figures.
#[derive(Default)]
struct HttpShard {
    points: HashMap<HttpKey, HttpPoint>,
    /// Representations from an in-memory cache, and from disk.
    cache: [u64; 2],
}

/// One DNS thread's (or task's) counts: transport × rcode × answer kind.
const DNS_SLOTS: usize = 3 * 16 * DNS_KINDS.len();

/// `dns.answer.kind` values.
pub const DNS_KINDS: [&str; 7] = [
    "geo", "records", "referral", "nodata", "nxdomain", "refused", "error",
];
/// `network.transport` values of the DNS transports.
pub const DNS_TRANSPORTS: [&str; 3] = ["udp", "tcp", "tls"];

struct DnsShard([u64; DNS_SLOTS]);

/// Every shard ever made (a thread's stays when the thread ends: the
/// counts are cumulative).
struct Registry {
    http: Mutex<Vec<Arc<Mutex<HttpShard>>>>,
    dns: Mutex<Vec<Arc<Mutex<DnsShard>>>>,
}

static REGISTRY: Registry = Registry {
    http: Mutex::new(Vec::new()),
    dns: Mutex::new(Vec::new()),
};

thread_local! {
    static HTTP: Arc<Mutex<HttpShard>> = {
        let shard = Arc::new(Mutex::new(HttpShard::default()));
        if let Ok(mut all) = REGISTRY.http.lock() {
            all.push(shard.clone());
        }
        shard
    };
    static DNS: Arc<Mutex<DnsShard>> = {
        let shard = Arc::new(Mutex::new(DnsShard([0; DNS_SLOTS])));
        if let Ok(mut all) = REGISTRY.dns.lock() {
            all.push(shard.clone());
        }
        shard
    };
}

/// Bytes held by the small-file cache (set by the HTTP edge).
pub static SMALL_CACHE_BYTES: AtomicU64 = AtomicU64::new(0);

/// Records one HTTP exchange: `seconds` from the request's head to the
/// response's last byte, `bytes` of body sent, whether the representation
/// came from an in-memory cache (`None`: no representation was served).
pub fn record_http(
    key: HttpKey,
    seconds: f64,
    bytes: u64,
    cached: Option<bool>,
    example: Option<Example>,
) {
    HTTP.with(|shard| {
        if let Ok(mut s) = shard.lock() {
            if let Some(hit) = cached {
                s.cache[usize::from(!hit)] += 1;
            }
            let p = s.points.entry(key).or_default();
            p.duration.record(&DURATION_BOUNDS, seconds);
            p.size.record(&SIZE_BOUNDS, bytes as f64);
            if example.is_some() {
                p.example = example;
            }
        }
    });
}

/// Records one DNS response: its transport (index into
/// [`DNS_TRANSPORTS`]), rcode and answer kind (index into [`DNS_KINDS`]).
pub fn record_dns(transport: usize, rcode: u8, kind: usize) {
    let slot = (transport.min(2) * 16 + usize::from(rcode & 15)) * DNS_KINDS.len()
        + kind.min(DNS_KINDS.len() - 1);
    DNS.with(|shard| {
        if let Ok(mut s) = shard.lock() {
            s.0[slot] += 1;
        }
    });
}

/// The name of a DNS response code (RFC 1035, 2136).
pub fn rcode_name(rcode: u8) -> &'static str {
    match rcode {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        _ => "OTHER",
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A string attribute.
pub fn attr(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn int_attr(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

fn bool_attr(key: &str, value: bool) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::BoolValue(value)),
        }),
        ..Default::default()
    }
}

/// Data points collected in one pass, by metric name.
pub struct Collected {
    start: u64,
    now: u64,
    sums: BTreeMap<&'static str, Vec<NumberDataPoint>>,
    gauges: BTreeMap<&'static str, Vec<NumberDataPoint>>,
    histograms: BTreeMap<&'static str, Vec<HistogramDataPoint>>,
}

impl Collected {
    fn new(start: SystemTime, now: SystemTime) -> Collected {
        Collected {
            start: nanos(start),
            now: nanos(now),
            sums: BTreeMap::new(),
            gauges: BTreeMap::new(),
            histograms: BTreeMap::new(),
        }
    }

    fn point(&self, attributes: Vec<KeyValue>, value: number_data_point::Value) -> NumberDataPoint {
        NumberDataPoint {
            attributes,
            start_time_unix_nano: self.start,
            time_unix_nano: self.now,
            exemplars: Vec::new(),
            flags: 0,
            value: Some(value),
        }
    }

    fn count(&mut self, name: &'static str, attributes: Vec<KeyValue>, v: u64) {
        let p = self.point(
            attributes,
            number_data_point::Value::AsInt(i64::try_from(v).unwrap_or(i64::MAX)),
        );
        self.sums.entry(name).or_default().push(p);
    }

    fn seconds(&mut self, name: &'static str, attributes: Vec<KeyValue>, v: f64) {
        let p = self.point(attributes, number_data_point::Value::AsDouble(v));
        self.sums.entry(name).or_default().push(p);
    }

    fn gauge(&mut self, name: &'static str, attributes: Vec<KeyValue>, v: f64) {
        let mut p = self.point(attributes, number_data_point::Value::AsDouble(v));
        p.start_time_unix_nano = 0;
        self.gauges.entry(name).or_default().push(p);
    }

    fn histogram<const N: usize>(
        &mut self,
        name: &'static str,
        attributes: Vec<KeyValue>,
        bounds: &[f64; N],
        h: &Hist<N>,
        example: Option<&Example>,
    ) {
        if h.count == 0 {
            return;
        }
        let exemplars = example
            .map(|e| Exemplar {
                filtered_attributes: Vec::new(),
                time_unix_nano: nanos(e.at),
                span_id: e.span.0.to_vec(),
                trace_id: e.trace.0.to_vec(),
                value: Some(exemplar::Value::AsDouble(e.value)),
            })
            .into_iter()
            .collect();
        self.histograms
            .entry(name)
            .or_default()
            .push(HistogramDataPoint {
                attributes,
                start_time_unix_nano: self.start,
                time_unix_nano: self.now,
                count: h.count,
                sum: Some(h.sum),
                bucket_counts: h.buckets.clone(),
                explicit_bounds: bounds.to_vec(),
                exemplars,
                flags: 0,
                min: Some(h.min),
                max: Some(h.max),
            });
    }

    /// The OTLP metrics, in catalogue order.
    pub fn into_metrics(mut self) -> Vec<Metric> {
        let mut out = Vec::new();
        for s in CATALOGUE {
            let data = match s.kind {
                Kind::Counter => self.sums.remove(s.name).map(|data_points| {
                    metric::Data::Sum(Sum {
                        data_points,
                        aggregation_temporality: AggregationTemporality::Cumulative as i32,
                        is_monotonic: true,
                    })
                }),
                Kind::Gauge => self
                    .gauges
                    .remove(s.name)
                    .map(|data_points| metric::Data::Gauge(Gauge { data_points })),
                Kind::Histogram => self.histograms.remove(s.name).map(|data_points| {
                    metric::Data::Histogram(Histogram {
                        data_points,
                        aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    })
                }),
            };
            if let Some(data) = data {
                out.push(Metric {
                    name: s.name.into(),
                    description: s.doc.into(),
                    unit: s.unit.into(),
                    metadata: Vec::new(),
                    data: Some(data),
                });
            }
        }
        out
    }
}

/// Figures of the exporter itself, by signal.
#[derive(Debug, Clone, Copy, Default)]
pub struct SelfFigures {
    pub spans_exported: u64,
    pub spans_dropped: u64,
    pub spans_queued: u64,
    pub logs_exported: u64,
    pub logs_dropped: u64,
    pub logs_queued: u64,
    pub metric_exports_failed: u64,
}

/// Every metric as of `now`: the request paths' shards, the health
/// report's figures, the process and the exporter.
pub fn collect(
    start: SystemTime,
    now: SystemTime,
    health: Option<&HealthReport>,
    me: &SelfFigures,
) -> Vec<Metric> {
    let mut c = Collected::new(start, now);
    http_points(&mut c);
    dns_points(&mut c);
    c.gauge(
        "makiatto.cache.size",
        vec![attr("cdn.cache.name", "small-files")],
        SMALL_CACHE_BYTES.load(Ordering::Relaxed) as f64,
    );
    if let Some(h) = health {
        health_points(&mut c, h, now);
    }
    image_points(&mut c);
    wasm_points(&mut c);
    process_points(&mut c);
    for (signal, exported, dropped, queued) in [
        (
            "spans",
            me.spans_exported,
            me.spans_dropped,
            me.spans_queued,
        ),
        ("logs", me.logs_exported, me.logs_dropped, me.logs_queued),
    ] {
        let s = || vec![attr("signal", signal)];
        c.count("makiatto.telemetry.exported", s(), exported);
        c.count("makiatto.telemetry.dropped", s(), dropped);
        c.gauge("makiatto.telemetry.queue.size", s(), queued as f64);
    }
    c.count(
        "makiatto.telemetry.dropped",
        vec![attr("signal", "metrics")],
        me.metric_exports_failed,
    );
    c.into_metrics()
}

fn http_points(c: &mut Collected) {
    let shards: Vec<_> = REGISTRY.http.lock().map(|v| v.clone()).unwrap_or_default();
    let mut all: HashMap<HttpKey, HttpPoint> = HashMap::new();
    let mut cache = [0u64; 2];
    for shard in shards {
        let Ok(s) = shard.lock() else { continue };
        cache[0] += s.cache[0];
        cache[1] += s.cache[1];
        for (k, p) in &s.points {
            let a = all.entry(k.clone()).or_default();
            a.duration.merge(&p.duration);
            a.size.merge(&p.size);
            if let Some(e) = p.example
                && a.example.is_none_or(|x| x.at < e.at)
            {
                a.example = Some(e);
            }
        }
    }
    // The guide's metrics: by status code alone.
    let mut by_status: BTreeMap<u16, (Hist<15>, Option<Example>)> = BTreeMap::new();
    let mut keys: Vec<&HttpKey> = all.keys().collect();
    keys.sort_by(|a, b| {
        (a.status, a.method, &a.address, a.https, a.version)
            .cmp(&(b.status, b.method, &b.address, b.https, b.version))
    });
    for k in keys {
        let p = &all[k];
        let s = by_status.entry(k.status).or_default();
        s.0.merge(&p.duration);
        if let Some(e) = p.example
            && s.1.is_none_or(|x| x.at < e.at)
        {
            s.1 = Some(e);
        }
        let attrs = || {
            vec![
                attr("http.request.method", k.method),
                int_attr("http.response.status_code", i64::from(k.status)),
                attr("server.address", k.address.as_deref().unwrap_or("other")),
                attr("url.scheme", if k.https { "https" } else { "http" }),
                attr("network.protocol.version", k.version),
            ]
        };
        c.histogram(
            "http.server.request.duration",
            attrs(),
            &DURATION_BOUNDS,
            &p.duration,
            p.example.as_ref(),
        );
        c.histogram(
            "http.server.response.body.size",
            attrs(),
            &SIZE_BOUNDS,
            &p.size,
            None,
        );
    }
    for (status, (h, example)) in &by_status {
        let attrs = || vec![int_attr("http.status_code", i64::from(*status))];
        c.count("server.request.count", attrs(), h.count);
        c.histogram(
            "server.request.duration",
            attrs(),
            &DURATION_BOUNDS,
            h,
            example.as_ref(),
        );
    }
    for (hit, n) in [(true, cache[0]), (false, cache[1])] {
        c.count(
            "cdn.cache.requests",
            vec![bool_attr("cdn.cache.hit", hit)],
            n,
        );
    }
}

fn image_points(c: &mut Collected) {
    let durations = super::images::DURATIONS
        .lock()
        .map(|d| d.clone())
        .unwrap_or_default();
    for (outcome, h) in super::images::OUTCOMES.iter().zip(&durations) {
        if let Some(h) = h {
            c.histogram(
                "makiatto.image.duration",
                vec![attr("makiatto.image.outcome", *outcome)],
                &DURATION_BOUNDS,
                h,
                None,
            );
        }
    }
}

fn wasm_points(c: &mut Collected) {
    let durations = super::wasm::DURATIONS
        .lock()
        .map(|d| d.clone())
        .unwrap_or_default();
    for (kind, by_outcome) in super::wasm::KINDS.iter().zip(&durations) {
        for (outcome, h) in super::wasm::OUTCOMES.iter().zip(by_outcome) {
            if let Some(h) = h {
                c.histogram(
                    "makiatto.wasm.duration",
                    vec![
                        attr("makiatto.wasm.kind", *kind),
                        attr("makiatto.wasm.outcome", *outcome),
                    ],
                    &DURATION_BOUNDS,
                    h,
                    None,
                );
            }
        }
    }
}

fn dns_points(c: &mut Collected) {
    let shards: Vec<_> = REGISTRY.dns.lock().map(|v| v.clone()).unwrap_or_default();
    let mut all = [0u64; DNS_SLOTS];
    for shard in shards {
        if let Ok(s) = shard.lock() {
            for (a, b) in all.iter_mut().zip(s.0.iter()) {
                *a += b;
            }
        }
    }
    for (slot, n) in all.iter().enumerate() {
        if *n == 0 {
            continue;
        }
        let kind = slot % DNS_KINDS.len();
        let rcode = (slot / DNS_KINDS.len()) % 16;
        let transport = slot / DNS_KINDS.len() / 16;
        c.count(
            "dns.server.queries",
            vec![
                attr("network.transport", DNS_TRANSPORTS[transport]),
                attr("dns.response.code", rcode_name(rcode as u8)),
                attr("dns.answer.kind", DNS_KINDS[kind]),
            ],
            *n,
        );
    }
}

fn health_points(c: &mut Collected, h: &HealthReport, now: SystemTime) {
    for p in &h.peers {
        let peer = || vec![attr("makiatto.peer", p.name.clone())];
        c.gauge("makiatto.peer.up", peer(), if p.alive { 1.0 } else { 0.0 });
        let lag = match (p.in_sync, p.events) {
            (Some(true), _) => Some(0),
            (_, Some(theirs)) => Some(theirs.abs_diff(h.events)),
            _ => None,
        };
        if let Some(lag) = lag {
            c.gauge("makiatto.replication.lag", peer(), lag as f64);
        }
        if let Some(age) = p.handshake_age_secs {
            c.gauge("makiatto.mesh.handshake.age", peer(), age as f64);
        }
        for (direction, bytes) in [("receive", p.wg_rx_bytes), ("transmit", p.wg_tx_bytes)] {
            if let Some(b) = bytes {
                let mut a = peer();
                a.push(attr("network.io.direction", direction));
                c.count("makiatto.mesh.io", a, b);
            }
        }
    }
    let r = &h.replication;
    for (result, n) in [("ok", r.sessions_ok), ("failed", r.sessions_failed)] {
        c.count(
            "makiatto.replication.sessions",
            vec![attr("result", result)],
            n,
        );
    }
    for (direction, n) in [("received", r.events_in), ("sent", r.events_out)] {
        c.count(
            "makiatto.replication.events",
            vec![attr("direction", direction)],
            n,
        );
    }
    for (reason, n) in [
        ("bad_event", r.bad_events),
        ("connection", r.refused_connections),
        ("busy", r.refused_busy),
    ] {
        c.count(
            "makiatto.replication.refused",
            vec![attr("reason", reason)],
            n,
        );
    }
    for (kind, n) in [
        ("delta", r.versions_by_delta),
        ("ahead", r.versions_ahead),
        ("whole_manifest", r.manifests_whole),
    ] {
        c.count("makiatto.blob.fetches", vec![attr("kind", kind)], n);
    }
    if let Some(acme) = &h.acme {
        let now_ms = nanos(now) / 1_000_000;
        for (name, cert) in &acme.certificates {
            let days = (cert.not_after_millis as f64 - now_ms as f64) / 86_400_000.0;
            c.gauge(
                "makiatto.certificate.time_to_expiry",
                vec![attr("makiatto.certificate", name.clone())],
                days,
            );
        }
    }
    if let Some(e) = &h.http.ended {
        for (reason, n) in [
            ("head_too_large", e.head_too_large),
            ("head_timeout", e.head_timeout),
            ("bad_request", e.bad_request),
            ("tls_failed", e.tls_failed),
            ("h2_error", e.h2_error),
        ] {
            c.count(
                "makiatto.http.connections.ended",
                vec![attr("reason", reason)],
                n,
            );
        }
    }
    if let Some(images) = &h.http.images {
        c.gauge(
            "makiatto.cache.size",
            vec![attr("cdn.cache.name", "images")],
            images.cache_bytes as f64,
        );
    }
    for (domain, site) in &h.sites {
        c.gauge(
            "makiatto.site.deployed",
            vec![attr("makiatto.domain", domain.clone())],
            if site.in_sync { 1.0 } else { 0.0 },
        );
    }
}

/// CPU time and memory of this process, from `/proc/self`.
fn process_points(c: &mut Collected) {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as f64;
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
        && let Some((_, rest)) = stat.rsplit_once(')')
    {
        // Fields from the state on: utime and stime are the 12th and 13th.
        let fields: Vec<&str> = rest.split_whitespace().collect();
        for (mode, i) in [("user", 11), ("system", 12)] {
            if let Some(t) = fields.get(i).and_then(|f| f.parse::<f64>().ok()) {
                c.seconds("process.cpu.time", vec![attr("cpu.mode", mode)], t / ticks);
            }
        }
    }
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
        let mut f = statm.split_whitespace().map(|v| v.parse::<f64>().ok());
        if let (Some(Some(virt)), Some(Some(rss))) = (f.next(), f.next()) {
            c.gauge("process.memory.usage", Vec::new(), rss * page);
            c.gauge("process.memory.virtual", Vec::new(), virt * page);
        }
    }
}

/// The name Prometheus gives a metric through the OpenTelemetry
/// collector's `prometheus` exporter (its translation rules, without
/// namespace): `.` → `_`, the unit as a suffix (`s` → `_seconds`, `By` →
/// `_bytes`, `d` → `_days`; annotations in braces add nothing; the
/// catalogue has no unit `1`, which would add `_ratio` to a gauge),
/// counters `_total`. Histograms are queried as `NAME_bucket`, `_sum`,
/// `_count`. (The collector does this, not the node: only the tests that
/// check the docs' queries against the catalogue use it.)
#[cfg(test)]
pub fn prometheus_name(s: &Spec) -> String {
    let mut name = s.name.replace('.', "_");
    let unit = match s.unit {
        "s" => Some("seconds"),
        "By" => Some("bytes"),
        "d" => Some("days"),
        _ => None,
    };
    if let Some(u) = unit
        && !name.ends_with(u)
    {
        name = format!("{name}_{u}");
    }
    if s.kind == Kind::Counter {
        name.push_str("_total");
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guides_prometheus_names_come_out_of_the_catalogue() {
        let names: Vec<String> = CATALOGUE.iter().map(prometheus_name).collect();
        for wanted in [
            "server_request_count_total",
            "server_request_duration_seconds",
            "http_server_request_duration_seconds",
            "http_server_response_body_size_bytes",
            "dns_server_queries_total",
            "process_cpu_time_seconds_total",
            "makiatto_telemetry_dropped_total",
        ] {
            assert!(names.iter().any(|n| n == wanted), "{wanted}: {names:?}");
        }
    }

    /// The metric names a PromQL expression selects (not its functions,
    /// keywords, label names, strings, numbers or durations).
    fn metric_names(expr: &str) -> Vec<String> {
        const WORDS: [&str; 8] = [
            "by", "without", "on", "ignoring", "bool", "and", "or", "unless",
        ];
        // Aggregations may put `by (…)` between their name and their
        // parenthesis: `sum by (job) (rate(x[5m]))`.
        const AGGREGATIONS: [&str; 12] = [
            "sum",
            "min",
            "max",
            "avg",
            "count",
            "group",
            "stddev",
            "stdvar",
            "topk",
            "bottomk",
            "quantile",
            "count_values",
        ];
        let b = expr.as_bytes();
        let mut names = Vec::new();
        let (mut i, mut braces, mut label_list) = (0, 0, false);
        while i < b.len() {
            let c = b[i];
            if c == b'"' {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += 1 + usize::from(b[i] == b'\\');
                }
                i += 1;
            } else if c == b'[' {
                while i < b.len() && b[i] != b']' {
                    i += 1;
                }
            } else if c == b'{' || c == b'}' {
                braces += if c == b'{' { 1 } else { -1 };
                i += 1;
            } else if c == b')' {
                label_list = false;
                i += 1;
            } else if c.is_ascii_alphabetic() || c == b'_' {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':')
                {
                    i += 1;
                }
                let word = &expr[start..i];
                let next = expr[i..].trim_start().bytes().next();
                if WORDS.contains(&word) {
                    label_list = matches!(word, "by" | "without" | "on" | "ignoring");
                } else if braces == 0
                    && !label_list
                    && next != Some(b'(')
                    && !AGGREGATIONS.contains(&word)
                {
                    names.push(word.to_owned());
                }
            } else {
                i += 1;
            }
        }
        names
    }

    #[test]
    fn every_metric_the_dashboard_and_the_guide_query_is_exported() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../../docs/grafana-dashboard.json")).unwrap();
        let mut exprs: Vec<String> = dashboard["panels"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["targets"].as_array().unwrap().iter())
            .map(|t| t["expr"].as_str().unwrap().to_owned())
            .collect();
        // The guide's three queries, as a user pastes them.
        let guide = [
            "sum by (service_name) (rate(server_request_count_total[5m]))",
            r#"sum(rate(server_request_count_total{http_status_code=~"5.."}[5m]))"#,
            "histogram_quantile(0.95, sum(rate(server_request_duration_seconds_bucket[5m])) by (le))",
        ];
        for g in guide {
            assert!(exprs.iter().any(|e| e == g), "the dashboard has {g}");
        }
        exprs.extend(guide.iter().map(|g| (*g).to_owned()));
        let mut exported: Vec<String> = Vec::new();
        for s in CATALOGUE {
            let name = prometheus_name(s);
            if s.kind == Kind::Histogram {
                for suffix in ["_bucket", "_sum", "_count"] {
                    exported.push(format!("{name}{suffix}"));
                }
            } else {
                exported.push(name);
            }
        }
        let mut seen = 0;
        for e in &exprs {
            for name in metric_names(e) {
                assert!(exported.contains(&name), "{name} (in {e}) is not exported");
                seen += 1;
            }
        }
        assert!(seen >= exprs.len(), "every query names a metric");
        assert_eq!(
            metric_names(r#"sum by (a, le) (rate(x_total{b="c d", e=~"5.."}[5m])) / y"#),
            ["x_total", "y"]
        );
        assert_eq!(
            metric_names("count by (d) (z == 0) + max without (e) (w)"),
            ["z", "w"]
        );
    }

    #[test]
    fn http_exchanges_become_the_guides_and_the_conventions_metrics() {
        let host: Arc<str> = Arc::from("example.test");
        let key = move |status| HttpKey {
            method: "GET",
            status,
            address: Some(host.clone()),
            https: true,
            version: "2",
        };
        let example = Example {
            value: 0.002,
            at: SystemTime::now(),
            trace: TraceId([7; 16]),
            span: SpanId([8; 8]),
        };
        // Recorded on another thread: its shard is collected too.
        std::thread::spawn(move || {
            record_http(key(200), 0.0004, 1024, Some(true), None);
            record_http(key(200), 0.002, 1024, Some(false), Some(example));
            record_http(key(503), 0.001, 20, None, None);
        })
        .join()
        .unwrap();
        let now = SystemTime::now();
        let metrics = collect(now, now, None, &SelfFigures::default());
        let find = |name: &str| metrics.iter().find(|m| m.name == name).unwrap();
        let Some(metric::Data::Sum(count)) = &find("server.request.count").data else {
            panic!("server.request.count is not a sum");
        };
        assert!(count.is_monotonic);
        assert_eq!(
            count.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let by_status: Vec<(String, i64)> = count
            .data_points
            .iter()
            .map(|p| {
                let code = match &p.attributes[0].value.as_ref().unwrap().value {
                    Some(any_value::Value::IntValue(v)) => v.to_string(),
                    other => panic!("{other:?}"),
                };
                let n = match p.value {
                    Some(number_data_point::Value::AsInt(n)) => n,
                    _ => panic!(),
                };
                (format!("{}={code}", p.attributes[0].key), n)
            })
            .collect();
        // Other tests record too: at least these.
        assert!(
            by_status
                .iter()
                .any(|(k, n)| k == "http.status_code=200" && *n >= 2)
        );
        assert!(by_status.iter().any(|(k, _)| k == "http.status_code=503"));
        let Some(metric::Data::Histogram(h)) = &find("http.server.request.duration").data else {
            panic!("not a histogram");
        };
        let p = h
            .data_points
            .iter()
            .find(|p| {
                p.attributes.iter().any(|a| {
                    a.key == "server.address" && format!("{:?}", a.value).contains("example.test")
                }) && p.attributes.iter().any(|a| {
                    a.key == "http.response.status_code"
                        && a.value.as_ref().unwrap().value == Some(any_value::Value::IntValue(200))
                })
            })
            .unwrap();
        assert_eq!(p.bucket_counts.iter().sum::<u64>(), p.count);
        assert_eq!(p.explicit_bounds.len() + 1, p.bucket_counts.len());
        assert_eq!(p.exemplars.len(), 1);
        assert_eq!(p.exemplars[0].trace_id, vec![7; 16]);
        assert_eq!(find("http.server.request.duration").unit, "s");
    }
}
