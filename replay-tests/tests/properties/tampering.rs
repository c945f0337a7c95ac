//! Bytes that are not an event as its author signed it never enter a log:
//! flipped bits, truncation, extra bytes and spliced signatures are refused
//! as invalid, counted, and leave the version vector as it was.

use makiatto_core::{AppendOutcome, IngestError, Log, MemoryBackend};
use makiatto_replay_tests::cases;
use makiatto_replay_tests::generator::{History, Shape};
use rand::Rng;
use rand::seq::IndexedRandom;

const CASES: u64 = 4_500;
const TAMPERS_PER_CASE: usize = 4;
const SIGNATURE_LEN: usize = 64;

/// Damages `bytes` one way or another; says how, for the failure message.
fn tamper(rng: &mut impl Rng, bytes: &mut Vec<u8>, other: &[u8]) -> String {
    match rng.random_range(0..5) {
        0 => {
            let bit = rng.random_range(0..bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            format!("bit {bit} flipped")
        }
        1 => {
            let n = rng.random_range(2..=8);
            for _ in 0..n {
                let i = rng.random_range(0..bytes.len());
                bytes[i] ^= rng.random_range(1..=255u8);
            }
            format!("{n} bytes garbled")
        }
        2 => {
            let len = rng.random_range(0..bytes.len());
            bytes.truncate(len);
            format!("truncated to {len} bytes")
        }
        3 => {
            let n = rng.random_range(1..=16);
            bytes.extend((0..n).map(|_| rng.random::<u8>()));
            format!("{n} bytes appended")
        }
        _ => {
            // Another event's signature on this event's body.
            let keep = bytes.len() - SIGNATURE_LEN;
            bytes.truncate(keep);
            bytes.extend_from_slice(&other[other.len() - SIGNATURE_LEN..]);
            "signature spliced from another event".into()
        }
    }
}

#[test]
fn tampered_bytes_are_rejected_and_leave_the_log_unchanged() {
    cases::run(
        "tampered_bytes_are_rejected_and_leave_the_log_unchanged",
        CASES,
        |seed, rng| {
            // Small logs suffice: what matters is the damage, not the history.
            let shape = Shape {
                steps: rng.random_range(2..12),
                ..Shape::small(rng)
            };
            let history = History::generate(seed, shape);
            let events = history.events();
            // The log alone: admission is what is under test, not folding.
            let mut log = Log::open(MemoryBackend::default()).expect("an empty log opens");
            log.append_bytes(&history.bytes()[..rng.random_range(0..=events.len())])
                .expect("the memory backend never fails");
            for _ in 0..TAMPERS_PER_CASE {
                let target = events.choose(rng).expect("not empty");
                let other = events.choose(rng).expect("not empty");
                let mut bytes = target.to_bytes().to_vec();
                let how = tamper(rng, &mut bytes, other.to_bytes());
                if bytes == target.to_bytes() {
                    continue; // a splice of the event's own signature
                }
                let vv = log.version_vector().clone();
                let stored = log.backend().len();
                let invalid = log.reject_counts().invalid;
                let report = log
                    .append_bytes(&[bytes])
                    .expect("the memory backend never fails");
                assert!(
                    matches!(
                        report.outcomes.as_slice(),
                        [AppendOutcome::Rejected(IngestError::Invalid(_))]
                    ),
                    "{target:?} {how}: {:?}",
                    report.outcomes
                );
                assert!(report.stored.is_empty(), "{target:?} {how}: stored");
                assert_eq!(log.version_vector(), &vv, "{target:?} {how}: vector moved");
                assert_eq!(log.backend().len(), stored, "{target:?} {how}: stored");
                assert_eq!(log.reject_counts().invalid, invalid + 1, "{target:?} {how}");
            }
        },
    );
}
