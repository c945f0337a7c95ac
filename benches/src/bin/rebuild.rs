//! `rebuild`: folding every projection from scratch over a million events.
//!
//! The history ([`Spec::million`]): a genesis, 8 operator devices and 6
//! nodes, then site versions published by the operators across 12 domains,
//! a `config-changed` event (made with `ConfigDoc::edit`) every 1,000
//! events, and a final 1,000 events in two concurrent branches. It is
//! generated once (signing a million events takes a while) and cached under
//! the temp directory; the cache is never part of the timing.
//!
//! Two parts.
//!
//! **The fold alone**, in memory: the stored bytes in event-id order
//! (causally shuffled), decoded with `Event::decode_trusted_all` (no
//! signature check: they were verified on the way in; spread over the
//! cores), and all of them given to one `Engine::insert` on an engine over
//! an in-memory source, which orders them causally and folds them. The
//! in-memory source holds every event, so this part's memory is not a
//! node's.
//!
//! **A node's start-up from its store**: the history appended to a fjall
//! store through the log (as a node stores it; the store is kept under the
//! temp directory and reused, its fold forgotten before each run), then the
//! real daemon binary opened on it, each a process of its own, timed with
//! its peak resident memory (`ru_maxrss` from `wait4`, started by a small
//! launcher process so that this process's memory is not counted in it):
//! `makiatto status` on a store whose fold was forgotten (a full fold from
//! the start, read from the store a batch at a time), `makiatto status`
//! again (start-up from the saved checkpoint), `makiatto log --limit 20`
//! and `makiatto verify` (every signature, and a full re-fold compared
//! with the saved entries, checkpoints and projections). The store's size
//! on disk is printed after the append and after the fold's save.
//!
//! Goals at 1M events: full fold ≤ 10 s, start-up from the checkpoint
//! ≤ 2 s, node RSS ≤ 256 MB.
//! `cargo run --release -p makiatto-benches --bin rebuild [EVENTS]
//! [--store-only | --forget-fold]` (a release build of `makiatto` beside
//! it; EVENTS defaults to 1,000,000; `--store-only` skips the in-memory
//! part; `--forget-fold` only appends the store if needed, forgets its
//! fold and prints its directory, for profiling a full fold by hand).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark support: a failure is a panic that fails the run

use std::ffi::OsString;
use std::path::Path;
use std::time::Instant;

use makiatto_benches::launcher::{Launched, Launcher};
use makiatto_benches::measure::{
    mib, peak_rss_bytes, print_json, print_table, rss_bytes, timed, timed_cpu,
};
use makiatto_benches::workload::{Spec, Workload};
use makiatto_core::{Log, Store};
use makiatto_events::{Event, EventId, EventKind};
use makiatto_harness::binaries::Binaries;
use makiatto_projections::Engine;

const GOAL_SECONDS: f64 = 10.0;
const START_GOAL_SECONDS: f64 = 2.0;
const RSS_GOAL_BYTES: u64 = 256 * 1024 * 1024;

fn main() {
    Launcher::serve_if_asked();
    let mut launcher = Launcher::start();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let forget_only = args.iter().any(|a| a == "--forget-fold");
    let store_only = forget_only || args.iter().any(|a| a == "--store-only");
    let events: usize = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map(|n| n.parse().expect("EVENTS is a whole number"))
        .unwrap_or(1_000_000);
    let spec = Spec {
        events,
        ..Spec::million()
    };
    let load = move || Workload::load_or_generate(spec).expect("the history is generated or read");
    if store_only {
        // The history is loaded only if the store must be appended.
        let node = node_start_up(&mut launcher, spec, load, forget_only);
        print_json("rebuild", serde_json::json!({ "node": node }));
        return;
    }
    let (workload, loaded) = timed(load);
    let bytes_total = workload.bytes();
    let mut stored = workload.events.clone();
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
        "rebuild: decode_trusted + Engine::insert from scratch, in memory",
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
    drop(engine);
    let node = node_start_up(&mut launcher, spec, move || workload, forget_only);
    print_json(
        "rebuild",
        serde_json::json!({
            "node": node,
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

/// One run of the daemon binary from the launcher (so that its peak
/// resident memory is its own, not this process's): wall time, peak RSS.
fn run_makiatto(launcher: &mut Launcher, data_dir: &Path, args: &[&str]) -> Launched {
    let makiatto = Binaries::of_this_build().makiatto();
    let mut argv: Vec<OsString> = vec![
        "--data-dir".into(),
        data_dir.into(),
        "--run-dir".into(),
        data_dir.join("run").into(),
    ];
    argv.extend(args.iter().map(OsString::from));
    let run = launcher.run(makiatto, &argv);
    assert!(
        run.success,
        "makiatto {args:?} failed ({}): {}",
        run.status, run.stdout
    );
    run
}

/// The history in a store (appended once and reused), then the daemon
/// binary opened on it: full fold, start-up from the checkpoint, `log`,
/// `verify`.
fn node_start_up(
    launcher: &mut Launcher,
    spec: Spec,
    workload: impl FnOnce() -> Workload,
    forget_only: bool,
) -> serde_json::Value {
    let dir = std::env::temp_dir()
        .join("makiatto-benches")
        .join(format!("rebuild-store-{}-{:x}", spec.events, spec.seed));
    let log_dir = dir.join("log");
    let mut appended = None;
    if !dir.join("complete").exists() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the store's directory");
        let workload = workload();
        let mut events = Event::decode_trusted_all(&workload.events).expect("events decode");
        events.sort_by_key(|e| (e.hlc(), e.id()));
        let store = Store::open(&log_dir).expect("open the store");
        let mut log = Log::open(store.clone()).expect("open the log");
        let started = Instant::now();
        let mut it = events.into_iter();
        loop {
            let batch: Vec<Event> = it.by_ref().take(10_000).collect();
            if batch.is_empty() {
                break;
            }
            let report = log.append(batch).expect("append");
            assert!(
                report
                    .outcomes
                    .iter()
                    .all(|o| matches!(o, makiatto_core::AppendOutcome::Stored { .. })),
                "every event is stored"
            );
        }
        appended = Some(started.elapsed());
        std::fs::write(dir.join("complete"), b"").expect("mark the store complete");
    }
    let (disk_events, stored) = {
        let store = Store::open(&log_dir).expect("open the store");
        store.clear_fold().expect("forget the fold");
        (store.disk_space(), store.len().expect("count"))
    };
    assert_eq!(stored, spec.events, "the store holds the history");
    if forget_only {
        println!("{}", dir.display());
        return serde_json::json!({ "store": dir, "fold": "forgotten" });
    }
    let full = run_makiatto(launcher, &dir, &["status"]);
    let again = run_makiatto(launcher, &dir, &["status"]);
    let listing = run_makiatto(launcher, &dir, &["log", "--limit", "20"]);
    let verify = run_makiatto(launcher, &dir, &["verify", "--json"]);
    let report: serde_json::Value =
        serde_json::from_str(&verify.stdout).expect("verify --json is JSON");
    // The store was written by the log alone, not by a daemon, so no copy
    // of the projections is stored for verify to compare: that is the one
    // problem it may name.
    let problems: Vec<&str> = report["problems"]
        .as_array()
        .expect("verify lists problems")
        .iter()
        .filter_map(|p| p.as_str())
        .filter(|p| !p.ends_with("no stored copy"))
        .collect();
    assert!(problems.is_empty(), "verify finds no problem: {problems:?}");
    let disk_folded = Store::open(&log_dir).expect("open the store").disk_space();
    let per_million = |bytes: u64| bytes as f64 * 1e6 / spec.events as f64;
    let row = |r: &Launched| {
        format!(
            "{:.2} s, peak RSS {:.0} MiB",
            r.took.as_secs_f64(),
            mib(r.peak_rss)
        )
    };
    print_table(
        &format!(
            "rebuild: the daemon binary opening a store of {} events",
            spec.events
        ),
        &[
            (
                "append (log, SyncAll per 10k)",
                appended.map_or("reused from an earlier run".into(), |d| {
                    format!("{:.1} s", d.as_secs_f64())
                }),
            ),
            (
                "disk: events",
                format!(
                    "{:.0} MiB ({:.0} MiB per million events)",
                    mib(disk_events),
                    mib(per_million(disk_events) as u64)
                ),
            ),
            (
                "disk: with the fold's index",
                format!(
                    "{:.0} MiB ({:.0} MiB per million events)",
                    mib(disk_folded),
                    mib(per_million(disk_folded) as u64)
                ),
            ),
            (
                "status, full fold",
                format!("{} (goal ≤ {GOAL_SECONDS} s)", row(&full)),
            ),
            (
                "status, from checkpoint",
                format!("{} (goal ≤ {START_GOAL_SECONDS} s)", row(&again)),
            ),
            ("log --limit 20", row(&listing)),
            ("verify", row(&verify)),
            (
                "node RSS goal",
                format!(
                    "≤ {:.0} MiB: {}",
                    mib(RSS_GOAL_BYTES),
                    if full.peak_rss.max(again.peak_rss) <= RSS_GOAL_BYTES {
                        "met"
                    } else {
                        "NOT met"
                    }
                ),
            ),
        ],
    );
    let json = |r: &Launched| {
        serde_json::json!({
            "s": r.took.as_secs_f64(),
            "peak_rss_bytes": r.peak_rss,
        })
    };
    serde_json::json!({
        "events": spec.events,
        "append_s": appended.map(|d| d.as_secs_f64()),
        "disk_events_bytes": disk_events,
        "disk_folded_bytes": disk_folded,
        "full_fold": json(&full),
        "from_checkpoint": json(&again),
        "log_limit_20": json(&listing),
        "verify": json(&verify),
    })
}
