//! `rebuild`: folding every projection from scratch over a million events.
//!
//! The history ([`Spec::million`]): a genesis, 8 operator devices and 6
//! nodes, then site versions published by the operators across 12 domains,
//! a `config-changed` event (made with `ConfigDoc::edit`) every 1,000
//! events, and a final 1,000 events in two concurrent branches. It is
//! generated once (signing a million events takes a while) and cached under
//! the temp directory; the cache is never part of the timing.
//!
//! What is timed is what `makiatto` does when it opens its data directory
//! (`Replica::open`): the stored bytes come in event-id order (the order of
//! the store's `events` keyspace, so causally shuffled), each is decoded
//! with `Event::decode_trusted_all` (no signature check: they were verified
//! on the way in; spread over the cores, as `Replica::open` does), and all of them go to one `Engine::insert` on an empty
//! engine, which orders them causally and folds them. Building the first
//! snapshot of the projections (`Engine::state`) is timed on its own.
//!
//! Goal: decode + insert under 10 s on this machine. Peak resident memory
//! (`VmHWM`) is printed with the memory held before the rebuild began.
//! `cargo run --release -p makiatto-benches --bin rebuild`

#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark support: a failure is a panic that fails the run

use makiatto_benches::measure::{
    mib, peak_rss_bytes, print_json, print_table, rss_bytes, timed, timed_cpu,
};
use makiatto_benches::workload::{Spec, Workload};
use makiatto_events::{Event, EventId, EventKind};
use makiatto_projections::Engine;

const GOAL_SECONDS: f64 = 10.0;

fn main() {
    let spec = Spec::million();
    let (workload, loaded) =
        timed(|| Workload::load_or_generate(spec).expect("the history is generated or read"));
    let bytes_total = workload.bytes();
    let mut stored = workload.events;
    stored.sort_by_cached_key(|bytes| EventId::of(bytes));
    let rss_before = rss_bytes();

    let (events, decode, decode_cpu) =
        timed_cpu(|| Event::decode_trusted_all(&stored).expect("stored events decode"));
    drop(stored);
    let configs = events
        .iter()
        .filter(|e| e.kind() == EventKind::ConfigChanged)
        .count();

    let mut engine = Engine::new();
    let (report, insert, insert_cpu) = timed_cpu(|| engine.insert(events));
    assert_eq!(report.folded.len(), spec.events, "every event is folded");
    let applied = report
        .folded
        .iter()
        .filter(|id| engine.verdict(id).is_some_and(|v| v.is_applied()))
        .count();
    assert_eq!(applied, spec.events, "every generated event is applied");
    let (sites, snapshot) = timed(|| engine.state().sites.domains.len());
    let peak = peak_rss_bytes();

    let total = decode + insert;
    let seconds = total.as_secs_f64();
    print_table(
        "rebuild: decode_trusted + Engine::insert of 1,000,000 events from scratch",
        &[
            (
                "events",
                format!(
                    "{} ({:.0} MiB, {configs} config-changed, {sites} sites)",
                    spec.events,
                    mib(bytes_total as u64)
                ),
            ),
            (
                "history",
                format!(
                    "{:.1} s to generate or read (not timed)",
                    loaded.as_secs_f64()
                ),
            ),
            ("order", "event id, as the store returns them".into()),
            (
                "decode_trusted",
                format!(
                    "{:.2} s ({:.2} s CPU)",
                    decode.as_secs_f64(),
                    decode_cpu.as_secs_f64()
                ),
            ),
            (
                "Engine::insert",
                format!(
                    "{:.2} s ({:.2} s CPU)",
                    insert.as_secs_f64(),
                    insert_cpu.as_secs_f64()
                ),
            ),
            (
                "total",
                format!(
                    "{seconds:.2} s = {:.0} events/s (goal < {GOAL_SECONDS} s)",
                    spec.events as f64 / seconds
                ),
            ),
            (
                "first Engine::state",
                format!("{:.2} s (not in the total)", snapshot.as_secs_f64()),
            ),
            (
                "peak RSS (VmHWM)",
                format!(
                    "{:.0} MiB ({:.0} MiB held before, mostly the raw bytes)",
                    mib(peak),
                    mib(rss_before)
                ),
            ),
        ],
    );
    print_json(
        "rebuild",
        serde_json::json!({
            "events": spec.events,
            "bytes": bytes_total,
            "decode_s": decode.as_secs_f64(),
            "insert_s": insert.as_secs_f64(),
            "total_s": seconds,
            "decode_cpu_s": decode_cpu.as_secs_f64(),
            "insert_cpu_s": insert_cpu.as_secs_f64(),
            "state_s": snapshot.as_secs_f64(),
            "events_per_s": (spec.events as f64 / seconds).round(),
            "peak_rss_bytes": peak,
            "rss_before_bytes": rss_before,
            "goal_s": GOAL_SECONDS,
            "met": seconds < GOAL_SECONDS,
        }),
    );
}
