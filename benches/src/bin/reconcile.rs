//! `reconcile`: bytes on the wire to bring two logs of a million events
//! together when they differ by 1,000.
//!
//! The history is [`Spec::million`]: 999,000 events both logs hold, then two
//! concurrent branches of 500 events (as after a partition), each written by
//! a different half of the operators. Log A holds the common part and
//! branch A, log B the common part and branch B; both are `Log` over the
//! in-memory backend (the exchange does not depend on the backend).
//!
//! One anti-entropy round, both ways, as `core::replication` states it:
//! each side sends its version vector (postcard), each answers with
//! `Log::missing_for` of the other's vector, and each appends what it
//! received with `Log::append_bytes` (verified like any event from a peer).
//! Payloads are counted as postcard would frame them (`Vec<Vec<u8>>`: a
//! varint length before each event). The anchors are the byte size of the
//! 1,000 differing events (the least any protocol must ship) and of the
//! whole log; the goal is wire bytes proportional to the difference, read
//! here as at most 1.1 × the differing events.
//! `cargo run --release -p makiatto-benches --bin reconcile`

#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark support: a failure is a panic that fails the run

use makiatto_benches::measure::{print_json, print_table, timed};
use makiatto_benches::workload::{Side, Spec, Workload};
use makiatto_core::{Log, MemoryBackend, VersionVector};
use makiatto_events::Event;

const GOAL: f64 = 1.1;

fn main() {
    let spec = Spec::million();
    let (workload, loaded) =
        timed(|| Workload::load_or_generate(spec).expect("the history is generated or read"));
    let (mut a, mut b) = (log(), log());
    let (_, filled) = timed(|| {
        fill(&mut a, &workload, Side::A);
        fill(&mut b, &workload, Side::B);
    });
    let diff_bytes: usize = workload
        .events
        .iter()
        .zip(&workload.sides)
        .filter(|(_, side)| **side != Side::Common)
        .map(|(bytes, _)| bytes.len())
        .sum();
    let log_bytes = workload.bytes();
    let authors = a.version_vector().iter().count();

    // The round: vectors cross, then each side sends what the other lacks.
    let vv_a = encode_vv(a.version_vector());
    let vv_b = encode_vv(b.version_vector());
    let ((to_a, to_b), planned) = timed(|| {
        let to_a = b
            .missing_for(&decode_vv(&vv_a), usize::MAX)
            .expect("memory reads");
        let to_b = a
            .missing_for(&decode_vv(&vv_b), usize::MAX)
            .expect("memory reads");
        (to_a, to_b)
    });
    let payload_a = postcard::to_stdvec(&to_a).expect("byte vectors encode");
    let payload_b = postcard::to_stdvec(&to_b).expect("byte vectors encode");
    let wire = vv_a.len() + vv_b.len() + payload_a.len() + payload_b.len();
    let vv_json = serde_json::to_vec(a.version_vector()).map_or(0, |v| v.len());

    a.append_bytes(&to_a).expect("memory writes");
    b.append_bytes(&to_b).expect("memory writes");
    assert_eq!(
        a.version_vector(),
        b.version_vector(),
        "one round converges"
    );
    assert_eq!(a.reject_counts().total(), 0, "nothing sent was refused");
    assert_eq!(
        to_a.len() + to_b.len(),
        spec.split_tail,
        "exactly the difference is sent"
    );

    let ratio = wire as f64 / diff_bytes as f64;
    let share = wire as f64 / log_bytes as f64;
    print_table(
        "reconcile: one anti-entropy round between logs differing by 1,000 of 1,000,000 events",
        &[
            (
                "logs",
                format!(
                    "{} events each, {} authors; {} in the difference (500 per side)",
                    spec.events - spec.split_tail / 2,
                    authors,
                    spec.split_tail
                ),
            ),
            (
                "setup",
                format!(
                    "{:.1} s history + {:.1} s filling both logs (not measured)",
                    loaded.as_secs_f64(),
                    filled.as_secs_f64()
                ),
            ),
            (
                "version vectors",
                format!(
                    "{} + {} bytes (postcard; JSON would be {vv_json} each)",
                    vv_a.len(),
                    vv_b.len()
                ),
            ),
            (
                "events sent",
                format!(
                    "{} to A + {} to B = {} bytes",
                    to_a.len(),
                    to_b.len(),
                    payload_a.len() + payload_b.len()
                ),
            ),
            ("wire total", format!("{wire} bytes")),
            ("anchor: the difference", format!("{diff_bytes} bytes")),
            ("anchor: the whole log", format!("{log_bytes} bytes")),
            (
                "ratio wire/difference",
                format!("{ratio:.3} (goal ≤ {GOAL})"),
            ),
            ("ratio wire/whole log", format!("{share:.6}")),
            (
                "missing_for, both sides",
                format!("{:.1} ms", planned.as_secs_f64() * 1e3),
            ),
        ],
    );
    print_json(
        "reconcile",
        serde_json::json!({
            "events": spec.events,
            "differing_events": spec.split_tail,
            "authors": authors,
            "vv_bytes": [vv_a.len(), vv_b.len()],
            "vv_encoding": "postcard",
            "vv_json_bytes": vv_json,
            "payload_bytes": payload_a.len() + payload_b.len(),
            "wire_bytes": wire,
            "difference_bytes": diff_bytes,
            "log_bytes": log_bytes,
            "ratio_wire_to_difference": (ratio * 1000.0).round() / 1000.0,
            "ratio_wire_to_log": share,
            "missing_for_ms": planned.as_secs_f64() * 1e3,
            "goal": GOAL,
            "met": ratio <= GOAL,
        }),
    );
}

fn log() -> Log<MemoryBackend> {
    Log::open(MemoryBackend::default()).expect("an empty memory log opens")
}

/// Appends the common events and one branch, in batches (admission checks
/// each event against the rest of its batch, so batches stay small).
fn fill(log: &mut Log<MemoryBackend>, workload: &Workload, side: Side) {
    let mine = workload
        .events
        .iter()
        .zip(&workload.sides)
        .filter(|(_, s)| **s == Side::Common || **s == side)
        .map(|(bytes, _)| Event::decode_trusted(bytes).expect("generated events decode"));
    let mut batch = Vec::with_capacity(1_000);
    for event in mine {
        batch.push(event);
        if batch.len() == 1_000 {
            log.append(std::mem::take(&mut batch))
                .expect("memory writes");
        }
    }
    log.append(batch).expect("memory writes");
    assert_eq!(log.reject_counts().total(), 0, "every event is stored");
}

fn encode_vv(vv: &VersionVector) -> Vec<u8> {
    postcard::to_stdvec(vv).expect("a version vector encodes")
}

fn decode_vv(bytes: &[u8]) -> VersionVector {
    postcard::from_bytes(bytes).expect("a version vector decodes")
}
