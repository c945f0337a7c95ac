//! A bounded run of every fuzz target, in the suite: each target's seed
//! corpus (`node/fuzz/corpus/<target>/`) and seeded mutations of it go
//! through the same entry point the coverage-guided fuzzer drives
//! (`makiatto::fuzz`); a panic is a crash. The long runs, with AFL++ and
//! coverage guidance, are `scripts/fuzz.sh` (figures in
//! `docs/reliability.md`). `MAKIATTO_FUZZ_CASES` sets the mutations per
//! target (default 20,000), `MAKIATTO_SEED` the seed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failure is a panic

use std::path::Path;

use rand::{Rng, SeedableRng};

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(!seeds.is_empty(), "{target} has no seeds");
    seeds
}

/// The seeds, then mutations of them (bytes changed, cut, added, copied
/// from another seed), through `run`.
fn run_target(target: &str, run: fn(&[u8])) {
    let seeds = corpus(target);
    for (i, s) in seeds.iter().enumerate() {
        let s = s.clone();
        if std::panic::catch_unwind(|| run(&s)).is_err() {
            panic!("{target}: seed {i} crashed");
        }
    }
    let cases: u64 = std::env::var("MAKIATTO_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let seed: u64 = std::env::var("MAKIATTO_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for case in 0..cases {
        let mut m = seeds[rng.random_range(0..seeds.len())].clone();
        for _ in 0..rng.random_range(1..8) {
            match rng.random_range(0..5) {
                0 if !m.is_empty() => {
                    let i = rng.random_range(0..m.len());
                    m[i] = rng.random();
                }
                1 if !m.is_empty() => {
                    let i = rng.random_range(0..m.len());
                    m[i] ^= 1 << rng.random_range(0..8);
                }
                2 if !m.is_empty() => {
                    let n = rng.random_range(0..m.len());
                    m.truncate(n);
                }
                3 => {
                    let other = &seeds[rng.random_range(0..seeds.len())];
                    if !other.is_empty() {
                        let a = rng.random_range(0..other.len());
                        let b = rng.random_range(a..other.len());
                        let at = rng.random_range(0..=m.len());
                        m.splice(at..at, other[a..b].iter().copied());
                    }
                }
                _ => m.push(rng.random()),
            }
        }
        let input = m.clone();
        if std::panic::catch_unwind(|| run(&input)).is_err() {
            panic!(
                "{target}: case {case} (seed {seed}) crashed on {}",
                hex::encode(&m)
            );
        }
    }
}

#[test]
fn dns_messages_through_parse_and_answer() {
    run_target("dns", makiatto::fuzz::dns_message);
}

#[test]
fn http_requests_through_the_parser_and_router() {
    run_target("http", makiatto::fuzz::http_request);
}

#[test]
fn events_through_decoding_verification_and_admission() {
    run_target("event", makiatto::fuzz::event);
}

#[test]
fn mesh_frames_and_heartbeats_through_their_codec() {
    run_target("frames", makiatto::fuzz::frames);
}

#[test]
fn a_peers_frames_through_the_session_state_machine() {
    run_target("session", makiatto::fuzz::session);
}

#[test]
fn control_lines_both_ways() {
    run_target("control", makiatto::fuzz::control);
}

#[test]
fn image_requests_through_the_parameter_parser_and_the_plan() {
    run_target("image", makiatto::fuzz::image_params);
}

#[test]
fn dns_records_through_the_record_parser() {
    run_target("record", makiatto::fuzz::record);
}
