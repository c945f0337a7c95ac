//! The daemon's `tracing` events as OTLP log records: a layer beside the
//! console's, which queues each event (with the trace and span this
//! thread works for, when there is one) for the exporter.
//!
//! The exporter's own records never feed back: events of the telemetry
//! module and of the libraries it sends with (tonic, h2, hyper, tower,
//! OpenTelemetry's crates) stay on the console only, so a collector that
//! fails cannot make the failure's log records fill the queue it is
//! failing to drain.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::trace::{SpanId as OtelSpanId, TraceFlags, TraceId as OtelTraceId};
use opentelemetry_sdk::logs::{SdkLogRecord, SdkLogger, SdkLoggerProvider};
use tracing::field::{Field, Visit};

use super::context::{self, SpanId, TraceId};
use super::queue::Bounded;

/// Log records waiting for the exporter, at most this many.
pub const LOG_QUEUE: usize = 4096;

/// Log records per export call (OpenTelemetry's batch processor's
/// default).
pub const LOG_BATCH: usize = 512;

pub static LOGS: Bounded<LogItem> = Bounded::new(LOG_QUEUE, LOG_BATCH);

/// Log records are exported (an endpoint is known, logging enabled).
pub static LOGS_ON: AtomicBool = AtomicBool::new(false);

/// One event, as recorded.
pub struct LogItem {
    pub at: SystemTime,
    pub level: tracing::Level,
    pub target: &'static str,
    pub body: String,
    pub fields: Vec<(&'static str, String)>,
    pub ids: Option<(TraceId, SpanId)>,
}

/// Targets whose events are never exported: the exporter itself and what
/// it sends with.
const OWN: [&str; 8] = [
    "makiatto::telemetry",
    "opentelemetry",
    "tonic",
    "h2",
    "hyper",
    "tower",
    "rustls",
    "tokio",
];

fn own(target: &str) -> bool {
    OWN.iter().any(|t| {
        target
            .strip_prefix(t)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::") || rest.starts_with('_'))
    })
}

/// The layer to add beside the console's.
pub struct Layer;

#[derive(Default)]
struct Fields {
    message: String,
    fields: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.fields.push((field.name(), value.to_owned()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.fields.push((field.name(), format!("{value:?}")));
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Layer {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if !LOGS_ON.load(Ordering::Relaxed) {
            return;
        }
        let meta = event.metadata();
        if own(meta.target()) {
            return;
        }
        let mut f = Fields::default();
        event.record(&mut f);
        LOGS.push(LogItem {
            at: SystemTime::now(),
            level: *meta.level(),
            target: meta.target(),
            body: f.message,
            fields: f.fields,
            ids: context::current(),
        });
    }
}

fn severity(level: tracing::Level) -> (Severity, &'static str) {
    match level {
        tracing::Level::ERROR => (Severity::Error, "ERROR"),
        tracing::Level::WARN => (Severity::Warn, "WARN"),
        tracing::Level::INFO => (Severity::Info, "INFO"),
        tracing::Level::DEBUG => (Severity::Debug, "DEBUG"),
        tracing::Level::TRACE => (Severity::Trace, "TRACE"),
    }
}

/// Makes SDK log records (the exporter's input type) without an SDK
/// pipeline: a provider with no processor is only their factory.
pub struct Records {
    logger: SdkLogger,
    _provider: SdkLoggerProvider,
}

impl Records {
    pub fn new() -> Records {
        let provider = SdkLoggerProvider::builder().build();
        Records {
            logger: provider.logger("makiatto"),
            _provider: provider,
        }
    }

    pub fn record(&self, item: LogItem) -> SdkLogRecord {
        let mut r = self.logger.create_log_record();
        let (number, text) = severity(item.level);
        r.set_timestamp(item.at);
        r.set_observed_timestamp(item.at);
        r.set_severity_number(number);
        r.set_severity_text(text);
        r.set_target(item.target);
        r.set_body(AnyValue::from(item.body));
        r.add_attributes(item.fields);
        if let Some((trace, span)) = item.ids {
            r.set_trace_context(
                OtelTraceId::from_bytes(trace.0),
                OtelSpanId::from_bytes(span.0),
                Some(TraceFlags::SAMPLED),
            );
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exporters_own_records_are_not_exported() {
        for t in [
            "makiatto::telemetry",
            "makiatto::telemetry::export",
            "tonic::transport",
            "h2",
            "h2::proto",
            "opentelemetry_otlp",
            "opentelemetry_sdk::logs",
            "hyper_util::client",
        ] {
            assert!(own(t), "{t}");
        }
        for t in ["makiatto::http", "makiatto::dns::server", "makiatto", "h2o"] {
            assert!(!own(t), "{t}");
        }
    }
}
