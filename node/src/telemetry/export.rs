//! The exporter: one task that follows the configuration, sends the
//! queued spans and log records in batches, and the metrics every
//! interval, over one gRPC channel to the collector. A batch leaves as
//! soon as it is whole (512 items), otherwise when the oldest waiting
//! item is at most 5 s (spans) or 1 s (log records) old, the delays of
//! OpenTelemetry's batch processors: a busy node sends full batches, a
//! quiet one a few calls a minute rather than one per request.
//!
//! Spans and log records go through `opentelemetry-otlp`'s tonic
//! exporters; metrics through the same channel with the OTLP metrics
//! client of `opentelemetry-proto` (the SDK's metric data cannot be made
//! outside its pipeline, nor carry exemplars). Each call is tried once,
//! with a deadline: a collector that fails makes the exporter wait (1 s,
//! doubling to 30 s) before it tries again, while the queues stay bounded
//! and count what they drop. The channel reconnects by itself.
//!
//! `[o11y]` changes apply when the configuration event arrives: the
//! sampling rules and switches at once, a new endpoint with a new channel.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use makiatto_events::AuthorKey;
use makiatto_protocol::health::{HealthReport, SignalCounts, TelemetryReport};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1 as proto_common;
use opentelemetry_proto::tonic::metrics::v1::{ResourceMetrics, ScopeMetrics};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::{LogBatch, LogExporter as _};

use super::logs::{LOGS, LOGS_ON, Records};
use super::metrics::{self, SelfFigures};
use super::queue::Bounded;
use super::sampler::Rules;
use super::settings::{self, Resolved};
use super::span::{LIVE, SCOPE, SPANS};
use crate::changes::Changes;
use crate::replica::Replica;

/// How often the span queue is drained when no whole batch waits.
const SPAN_DELAY: Duration = Duration::from_secs(5);
/// How often the log queue is drained when no whole batch waits.
const LOG_DELAY: Duration = Duration::from_secs(1);
/// The longest an export call may take (a slow collector is a failed one).
const DEADLINE: Duration = Duration::from_secs(5);
const CONNECT_DEADLINE: Duration = Duration::from_secs(3);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What the exporter reads the daemon through.
pub struct Source {
    pub replica: Arc<Mutex<Replica>>,
    pub changes: Changes,
    /// This node's signing key (its name comes from the peers projection).
    pub me: Option<AuthorKey>,
    /// The health report, read at each metrics collection.
    pub health: Box<dyn Fn() -> HealthReport + Send + Sync>,
}

/// The exporter's state, for `makiatto health`.
struct Status {
    resolved: Mutex<Resolved>,
    last_error: Mutex<Option<String>>,
    last_ok: Mutex<Option<Instant>>,
    spans_exported: AtomicU64,
    logs_exported: AtomicU64,
    metric_exports: AtomicU64,
    metric_exports_failed: AtomicU64,
}

static STATUS: std::sync::LazyLock<Status> = std::sync::LazyLock::new(|| Status {
    resolved: Mutex::new(Resolved::off()),
    last_error: Mutex::new(None),
    last_ok: Mutex::new(None),
    spans_exported: AtomicU64::new(0),
    logs_exported: AtomicU64::new(0),
    metric_exports: AtomicU64::new(0),
    metric_exports_failed: AtomicU64::new(0),
});

/// The telemetry part of `makiatto health`.
pub fn report() -> TelemetryReport {
    let s = &*STATUS;
    let resolved = s
        .resolved
        .lock()
        .map(|r| r.clone())
        .unwrap_or_else(|_| Resolved::off());
    TelemetryReport {
        endpoint: resolved.endpoint.as_ref().map(|e| e.url.clone()),
        source: resolved.endpoint.as_ref().map(|e| e.source.clone()),
        traces: resolved.traces_on(),
        metrics: resolved.metrics_on(),
        logs: resolved.logs_on(),
        sampling_ratio: resolved.ratio,
        dns_sampling_ratio: Some(resolved.dns_ratio),
        slow_threshold_ms: u64::try_from(resolved.slow.as_millis()).unwrap_or(u64::MAX),
        spans: SignalCounts {
            exported: s.spans_exported.load(Ordering::Relaxed),
            dropped: SPANS.dropped(),
            queued: SPANS.len() as u64,
        },
        log_records: SignalCounts {
            exported: s.logs_exported.load(Ordering::Relaxed),
            dropped: super::logs::LOGS.dropped(),
            queued: super::logs::LOGS.len() as u64,
        },
        metric_exports: s.metric_exports.load(Ordering::Relaxed),
        metric_exports_failed: s.metric_exports_failed.load(Ordering::Relaxed),
        last_error: s.last_error.lock().ok().and_then(|e| e.clone()),
        last_export_secs: s
            .last_ok
            .lock()
            .ok()
            .and_then(|t| t.map(|t| t.elapsed().as_secs())),
    }
}

fn self_figures() -> SelfFigures {
    let s = &*STATUS;
    SelfFigures {
        spans_exported: s.spans_exported.load(Ordering::Relaxed),
        spans_dropped: SPANS.dropped(),
        spans_queued: SPANS.len() as u64,
        logs_exported: s.logs_exported.load(Ordering::Relaxed),
        logs_dropped: LOGS.dropped(),
        logs_queued: LOGS.len() as u64,
        metric_exports_failed: s.metric_exports_failed.load(Ordering::Relaxed),
    }
}

/// Who this node is, for the resource every signal carries.
#[derive(Debug, Clone, PartialEq, Default)]
struct Identity {
    node: Option<String>,
    cluster: Option<String>,
    coordinates: Option<(f64, f64)>,
    host: String,
}

impl Identity {
    /// The resource attributes: `service.name` is `makiatto.{node}` (the
    /// collector's Prometheus exporter makes it the `job` label, and with
    /// `resource_to_telemetry_conversion` a `service_name` label).
    fn attributes(&self) -> Vec<(&'static str, Value)> {
        let node = self.node.clone().unwrap_or_else(|| "unjoined".into());
        let mut a: Vec<(&'static str, Value)> = vec![
            ("service.name", format!("makiatto.{node}").into()),
            ("service.version", env!("CARGO_PKG_VERSION").into()),
            ("service.instance.id", node.clone().into()),
            ("host.name", self.host.clone().into()),
            ("makiatto.node", node.into()),
        ];
        if let Some(c) = &self.cluster {
            a.push(("makiatto.cluster", c.clone().into()));
        }
        if let Some((lat, lon)) = self.coordinates {
            a.push(("geo.location.lat", lat.into()));
            a.push(("geo.location.lon", lon.into()));
        }
        a
    }

    fn sdk(&self) -> Resource {
        Resource::builder_empty()
            .with_attributes(
                self.attributes()
                    .into_iter()
                    .map(|(k, v)| KeyValue::new(k, v)),
            )
            .build()
    }

    fn proto(&self) -> ProtoResource {
        ProtoResource {
            attributes: self
                .attributes()
                .into_iter()
                .map(|(k, v)| proto_common::KeyValue {
                    key: k.into(),
                    value: Some(proto_common::AnyValue {
                        value: Some(match v {
                            Value::F64(f) => proto_common::any_value::Value::DoubleValue(f),
                            other => proto_common::any_value::Value::StringValue(other.to_string()),
                        }),
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }
}

/// The settings and identity as the log says now.
fn view(source: &Source) -> Option<(Resolved, Identity)> {
    let mut r = source.replica.lock().ok()?;
    let (o11y, cluster) = r.o11y();
    let peers = r.peers();
    drop(r);
    let mine = source
        .me
        .and_then(|me| peers.nodes.iter().find(|(_, n)| n.signing_key == me));
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    Some((
        settings::resolve(&o11y, &peers),
        Identity {
            node: mine.map(|(name, _)| name.to_string()),
            cluster,
            coordinates: mine.map(|(_, n)| (n.latitude, n.longitude)),
            host,
        },
    ))
}

/// The exporters of one endpoint, on one channel.
struct Pipeline {
    url: String,
    identity: Identity,
    /// Spans go out encoded by [`super::otlp`], on this channel.
    channel: tonic::transport::Channel,
    /// The resource's encoded message, every span request's.
    resource_bytes: Vec<u8>,
    logs: opentelemetry_otlp::LogExporter,
    metrics: MetricsServiceClient<tonic::transport::Channel>,
    resource: ProtoResource,
    records: Records,
}

impl Pipeline {
    fn build(url: &str, identity: &Identity) -> anyhow::Result<Pipeline> {
        let channel = tonic::transport::Endpoint::from_shared(url.to_owned())?
            .connect_timeout(CONNECT_DEADLINE)
            .timeout(DEADLINE)
            .connect_lazy();
        let resource = identity.sdk();
        let mut logs = opentelemetry_otlp::LogExporter::builder()
            .with_tonic()
            .with_channel(channel.clone())
            .with_timeout(DEADLINE)
            .with_retry_policy(opentelemetry_otlp::RetryPolicy::disabled())
            .build()?;
        logs.set_resource(&resource);
        Ok(Pipeline {
            url: url.to_owned(),
            identity: identity.clone(),
            logs,
            metrics: MetricsServiceClient::new(channel.clone()),
            channel,
            resource_bytes: super::otlp::resource_bytes(&identity.proto()),
            resource: identity.proto(),
            records: Records::new(),
        })
    }
}

/// Each signal's [`Backoff`].
#[derive(Default)]
struct Backoffs {
    spans: Backoff,
    logs: Backoff,
    metrics: Backoff,
}

/// When the next export may be tried.
struct Backoff {
    until: Option<Instant>,
    wait: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            until: None,
            wait: FIRST_BACKOFF,
        }
    }
}

impl Backoff {
    fn ready(&self) -> bool {
        self.until.is_none_or(|t| Instant::now() >= t)
    }

    fn ok(&mut self) {
        self.until = None;
        self.wait = FIRST_BACKOFF;
        if let Ok(mut t) = STATUS.last_ok.lock() {
            *t = Some(Instant::now());
        }
    }

    fn failed(&mut self, what: &str, error: String) {
        if let Ok(mut e) = STATUS.last_error.lock() {
            if e.as_deref() != Some(error.as_str()) {
                tracing::warn!(%error, retry_in_secs = self.wait.as_secs(), "{what} export failed");
            }
            *e = Some(format!("{what}: {error}"));
        }
        self.until = Some(Instant::now() + self.wait);
        self.wait = (self.wait * 2).min(MAX_BACKOFF);
    }
}

/// Starts the exporter on the current runtime.
pub fn spawn(source: Source) {
    tokio::spawn(run(source));
}

async fn run(source: Source) {
    let start = SystemTime::now();
    let mut changes = source.changes.watch();
    let mut pipeline: Option<Pipeline> = None;
    let mut resolved = Resolved::off();
    // Each signal backs off on its own failures: a metrics export failing
    // every interval must not keep the spans from being tried (and, when
    // they fail, dropped and counted).
    let mut backoff = Backoffs::default();
    let mut span_timer = tokio::time::interval(SPAN_DELAY);
    span_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut log_timer = tokio::time::interval(LOG_DELAY);
    log_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_metrics = tokio::time::Instant::now() + resolved.interval;
    let mut reconfigure = true;
    loop {
        if reconfigure {
            reconfigure = false;
            if let Some((r, identity)) = view(&source) {
                apply(&r);
                let url = r.endpoint.as_ref().map(|e| e.url.clone());
                let same = pipeline
                    .as_ref()
                    .is_some_and(|p| Some(&p.url) == url.as_ref() && p.identity == identity);
                if !same {
                    pipeline = url.and_then(|url| match Pipeline::build(&url, &identity) {
                        Ok(p) => {
                            tracing::info!(endpoint = %url, service = %format!("makiatto.{}", identity.node.as_deref().unwrap_or("unjoined")), "exporting telemetry");
                            Some(p)
                        }
                        Err(e) => {
                            backoff.spans.failed("telemetry", format!("{e:#}"));
                            None
                        }
                    });
                    backoff = Backoffs::default();
                }
                if r.interval != resolved.interval {
                    next_metrics = tokio::time::Instant::now() + r.interval;
                }
                resolved = r;
            }
        }
        tokio::select! {
            c = changes.changed() => {
                if c.is_err() {
                    return;
                }
                reconfigure = true;
            }
            () = timer_or_batch(&mut span_timer, &SPANS) => {
                match &pipeline {
                    Some(p) if backoff.spans.ready() => flush_spans(p, &mut backoff.spans).await,
                    Some(_) => {}
                    // Nothing to send to: what was queued before the
                    // change is lost.
                    None => SPANS.lost(SPANS.take(usize::MAX).len()),
                }
            }
            () = timer_or_batch(&mut log_timer, &LOGS) => {
                match &pipeline {
                    Some(p) if backoff.logs.ready() => flush_logs(p, &mut backoff.logs).await,
                    Some(_) => {}
                    None => LOGS.lost(LOGS.take(usize::MAX).len()),
                }
            }
            _ = tokio::time::sleep_until(next_metrics) => {
                next_metrics = tokio::time::Instant::now() + resolved.interval;
                if let Some(p) = &mut pipeline
                    && resolved.metrics_on()
                {
                    export_metrics(p, &source, start, &mut backoff.metrics).await;
                }
            }
        }
    }
}

/// Makes the recording paths follow the settings.
fn apply(r: &Resolved) {
    LIVE.set_dns(Rules::new(r.dns_ratio, r.slow));
    LIVE.set(r.traces_on(), Rules::new(r.ratio, r.slow));
    LOGS_ON.store(r.logs_on(), Ordering::Relaxed);
    if let Ok(mut s) = STATUS.resolved.lock() {
        *s = r.clone();
    }
}

/// The queue's timer ticks, or a whole batch waits in it (the timer then
/// starts again: the next partial batch waits its full delay).
async fn timer_or_batch<T>(timer: &mut tokio::time::Interval, queue: &Bounded<T>) {
    tokio::select! {
        _ = timer.tick() => {}
        () = queue.full_batch() => timer.reset(),
    }
}

/// Sends the spans queued now, a batch at a time (those queued meanwhile
/// wait for the next turn: the other queues and the metrics get theirs).
async fn flush_spans(p: &Pipeline, backoff: &mut Backoff) {
    for _ in 0..SPANS.len().div_ceil(SPANS.batch()) {
        let batch = SPANS.take(SPANS.batch());
        if batch.is_empty() {
            break;
        }
        let n = batch.len();
        let request = super::otlp::encode_request(&p.resource_bytes, batch);
        match tokio::time::timeout(DEADLINE, super::otlp::export(&p.channel, request)).await {
            Ok(Ok(rejected)) => {
                // What the collector said it could not take is dropped.
                let rejected = usize::try_from(rejected).unwrap_or(0).min(n);
                SPANS.lost(rejected);
                STATUS
                    .spans_exported
                    .fetch_add((n - rejected) as u64, Ordering::Relaxed);
                backoff.ok();
            }
            failed => {
                SPANS.lost(n);
                let error = match failed {
                    Ok(Err(e)) => e.message().to_owned(),
                    _ => "no answer within the deadline".into(),
                };
                backoff.failed("span", error);
                return;
            }
        }
    }
}

/// Sends the log records queued now, a batch at a time.
async fn flush_logs(p: &Pipeline, backoff: &mut Backoff) {
    for _ in 0..LOGS.len().div_ceil(LOGS.batch()) {
        let items = LOGS.take(LOGS.batch());
        if items.is_empty() {
            break;
        }
        let n = items.len();
        let records: Vec<_> = items.into_iter().map(|i| p.records.record(i)).collect();
        let scope: &InstrumentationScope = &SCOPE;
        let pairs: Vec<_> = records.iter().map(|r| (r, scope)).collect();
        match tokio::time::timeout(DEADLINE, p.logs.export(LogBatch::new(&pairs))).await {
            Ok(Ok(())) => {
                STATUS.logs_exported.fetch_add(n as u64, Ordering::Relaxed);
                backoff.ok();
            }
            failed => {
                LOGS.lost(n);
                let error = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "no answer within the deadline".into(),
                };
                backoff.failed("log", error);
                return;
            }
        }
    }
}

async fn export_metrics(
    p: &mut Pipeline,
    source: &Source,
    start: SystemTime,
    backoff: &mut Backoff,
) {
    if !backoff.ready() {
        STATUS.metric_exports_failed.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let health = (source.health)();
    let metrics = metrics::collect(start, SystemTime::now(), Some(&health), &self_figures());
    let request = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(p.resource.clone()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(proto_common::InstrumentationScope {
                    name: "makiatto".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                metrics,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    };
    match tokio::time::timeout(DEADLINE, p.metrics.export(request)).await {
        Ok(Ok(_)) => {
            STATUS.metric_exports.fetch_add(1, Ordering::Relaxed);
            backoff.ok();
        }
        failed => {
            STATUS.metric_exports_failed.fetch_add(1, Ordering::Relaxed);
            let error = match failed {
                Ok(Err(e)) => e.message().to_owned(),
                _ => "no answer within the deadline".into(),
            };
            backoff.failed("metrics", error);
        }
    }
}
