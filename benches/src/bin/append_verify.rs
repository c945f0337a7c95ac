//! `append_verify`: how fast the log admits events from outside, on one core.
//!
//! Ours: `Log<Store>::append_bytes` over a fresh fjall store in a temp
//! directory, fed 50,000 signed events of a realistic history (mostly
//! `site-published`, 8 operator feeds, about 300 bytes each) in batches of
//! 256: every event is decoded, checked for canonical form, its signature
//! verified (`verify_strict`), admitted against its feed and stored, with
//! one fsync per batch.
//!
//! Anchor: ed25519-dalek's `verify_strict` over the very same messages and
//! signatures, the same count, in two forms: with each author's key parsed
//! once (the pure signature check: the headline anchor, since the log keeps
//! parsed keys too), and with the key parsed from its 32 bytes for every
//! message (what `openssl speed ed25519` measures).
//!
//! The three alternate batch by batch, so load from other processes hits
//! them alike; five rounds, best total of each. Goal: ours / anchor ≥ 0.7.
//! Run it pinned to one core (fjall's background threads share that core):
//! `taskset -c 0 cargo run --release -p makiatto-benches --bin append_verify`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark support: a failure is a panic that fails the run

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::time::Duration;

use ed25519_dalek::{Signature, VerifyingKey};
use makiatto_benches::measure::{allowed_cpus, print_json, print_table, timed};
use makiatto_benches::workload::{Spec, Workload, decode_all};
use makiatto_core::{AppendOutcome, Log, Store};

const EVENTS: usize = 50_000;
const BATCH: usize = 256;
const ROUNDS: usize = 5;
const GOAL: f64 = 0.7;

/// What `makiatto-events` signs: this context, then the event body.
const SIGNING_CONTEXT: &[u8] = b"makiatto event v1\0";

/// One signature check as the anchor sees it.
struct Check {
    key_bytes: [u8; 32],
    /// The same key, parsed once per author before any timing.
    key: VerifyingKey,
    message: Vec<u8>,
    signature: Signature,
}

/// Time spent by each contender over one round.
#[derive(Clone, Copy, Default)]
struct Totals {
    ours: Duration,
    anchor: Duration,
    anchor_unparsed: Duration,
    /// One 300-byte write + fsync per batch, on the same disk: the floor of
    /// a durable batch, to tell disk waits from our own work.
    fsync: Duration,
}

fn main() {
    let (workload, generated) = timed(|| Workload::generate(Spec::cluster(EVENTS)));
    let checks = checks(&workload);

    let rounds: Vec<Totals> = (0..ROUNDS).map(|_| round(&workload, &checks)).collect();
    let best = |f: fn(&Totals) -> Duration| rounds.iter().map(f).min().unwrap_or_default();
    let rate = |d: Duration| EVENTS as f64 / d.as_secs_f64();
    let ours = rate(best(|t| t.ours));
    let anchor = rate(best(|t| t.anchor));
    let anchor_unparsed = rate(best(|t| t.anchor_unparsed));
    let ratio = ours / anchor;
    let ratio_unparsed = ours / anchor_unparsed;
    let batches = EVENTS.div_ceil(BATCH);
    let fsync = best(|t| t.fsync);
    let fsync_ms = fsync.as_secs_f64() * 1e3 / batches as f64;
    let fsync_share = fsync.as_secs_f64() / best(|t| t.ours).as_secs_f64();

    let cpus = allowed_cpus();
    print_table(
        "append_verify: Log<Store>::append_bytes vs ed25519 verify_strict (one core)",
        &[
            (
                "events",
                format!("{EVENTS}, {} bytes on average", workload.bytes() / EVENTS),
            ),
            ("batch", format!("{BATCH} events, one fsync each")),
            ("cpus allowed", cpus.clone()),
            (
                "generation",
                format!("{:.1} s (not timed)", generated.as_secs_f64()),
            ),
            ("ours: append_bytes", format!("{ours:.0} events/s")),
            (
                "anchor: verify_strict",
                format!("{anchor:.0} verifies/s (keys parsed once)"),
            ),
            (
                "  key parsed per message",
                format!("{anchor_unparsed:.0} verifies/s"),
            ),
            ("ratio ours/anchor", format!("{ratio:.2} (goal ≥ {GOAL})")),
            (
                "  vs key parsed per message",
                format!("{ratio_unparsed:.2}"),
            ),
            (
                "disk: 300-byte write+fsync",
                format!(
                    "{fsync_ms:.2} ms on average, one per batch = {:.0}% of ours",
                    fsync_share * 100.0
                ),
            ),
        ],
    );
    if !cpus.chars().all(|c| c.is_ascii_digit()) {
        println!("note: not pinned to one core; run it under `taskset -c 0`");
    }
    print_json(
        "append_verify",
        serde_json::json!({
            "events": EVENTS,
            "batch": BATCH,
            "cpus_allowed": cpus,
            "events_per_s": ours.round(),
            "anchor_verifies_per_s": anchor.round(),
            "anchor_key_parsed_per_message_verifies_per_s": anchor_unparsed.round(),
            "ratio": round2(ratio),
            "ratio_vs_key_parsed_per_message": round2(ratio_unparsed),
            "fsync_ms": round2(fsync_ms),
            "fsync_share_of_ours": round2(fsync_share),
            "goal": GOAL,
            "met": ratio >= GOAL,
        }),
    );
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The anchor's input, built from the events' bytes before any timing.
fn checks(workload: &Workload) -> Vec<Check> {
    let mut keys = HashMap::new();
    decode_all(&workload.events)
        .iter()
        .map(|event| {
            let key_bytes = *event.author().as_bytes();
            let key = *keys.entry(key_bytes).or_insert_with(|| {
                VerifyingKey::from_bytes(&key_bytes).expect("generated keys are valid")
            });
            let bytes = event.to_bytes();
            let (body, signature) = bytes.split_at(bytes.len() - 64);
            Check {
                key_bytes,
                key,
                message: [SIGNING_CONTEXT, body].concat(),
                signature: Signature::from_slice(signature).expect("64 bytes"),
            }
        })
        .collect()
}

/// One round: a fresh store, then batch by batch the anchor (both forms)
/// and ours, each timed on its own.
fn round(workload: &Workload, checks: &[Check]) -> Totals {
    let dir = tempfile::tempdir().expect("a temp directory");
    let store = Store::open(dir.path()).expect("a fresh store opens");
    let mut log = Log::open(store).expect("an empty log opens");
    let mut probe = fs::File::create(dir.path().join("fsync-probe")).expect("a probe file");
    let mut totals = Totals::default();
    for (batch, checks) in workload.events.chunks(BATCH).zip(checks.chunks(BATCH)) {
        let (verified, took) = timed(|| {
            checks
                .iter()
                .filter(|c| c.key.verify_strict(&c.message, &c.signature).is_ok())
                .count()
        });
        assert_eq!(verified, checks.len(), "every generated signature verifies");
        totals.anchor += took;

        let (verified, took) = timed(|| {
            checks
                .iter()
                .filter(|c| {
                    VerifyingKey::from_bytes(&c.key_bytes)
                        .and_then(|key| key.verify_strict(&c.message, &c.signature))
                        .is_ok()
                })
                .count()
        });
        assert_eq!(verified, checks.len(), "every generated signature verifies");
        totals.anchor_unparsed += took;

        let (report, took) = timed(|| log.append_bytes(batch).expect("the store accepts writes"));
        let stored = report
            .outcomes
            .iter()
            .filter(|o| matches!(o, AppendOutcome::Stored { fork: false, .. }))
            .count();
        assert_eq!(stored, batch.len(), "every event is stored");
        totals.ours += took;

        let ((), took) = timed(|| {
            probe
                .write_all(&[0x55; 300])
                .expect("the probe file takes writes");
            probe.sync_all().expect("the probe file syncs");
        });
        totals.fsync += took;
    }
    totals
}
