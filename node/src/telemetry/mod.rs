//! Telemetry: OpenTelemetry traces, metrics and logs, exported over
//! OTLP/gRPC to the collector on the mesh's `o11y` peer (or the
//! `[o11y] otlp_endpoint`), as the guide's Observability chapter sets up.
//!
//! Serving never waits for telemetry: the request paths record into
//! per-thread metric shards and bounded queues; one task on the shared
//! runtime ([`export`]) sends what they hold, and what does not fit is
//! dropped and counted.
//!
//! # Layout
//! - [`settings`]: `[o11y]` and the peers projection → what is exported
//!   and where (pure; the rule for several `o11y` peers).
//! - [`context`]: trace and span ids, W3C `traceparent`, the span a
//!   thread works for now.
//! - [`sampler`]: the tail decision, made when a request ends (pure).
//! - [`span`]: spans recorded cheaply and built only when kept; the live
//!   settings the recording paths read; traced operations.
//! - [`queue`]: the bounded export queue.
//! - [`metrics`]: the instruments (per-thread shards), the catalogue of
//!   names, and their OTLP form.
//! - [`logs`]: `tracing` events as OTLP log records.
//! - [`export`]: the exporter task: gRPC to the collector, backoff, the
//!   configuration followed live; the report for `makiatto health`.
//! - [`otlp`]: spans written straight into an OTLP export request's
//!   bytes (no intermediate messages), and the gRPC call that sends it.
//! - [`http`], [`dns`], [`images`], [`wasm`]: the hooks on the HTTP, DNS,
//!   image and WebAssembly request paths.

pub mod context;
pub mod dns;
pub mod export;
pub mod http;
pub mod images;
pub mod logs;
pub mod metrics;
pub mod otlp;
pub mod queue;
pub mod sampler;
pub mod settings;
pub mod span;
pub mod wasm;

pub use export::{Source, report, spawn};
pub use span::Operation;
