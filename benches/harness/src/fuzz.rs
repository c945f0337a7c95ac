//! Bounded fuzzing in the suite: a fuzz target's seed corpus
//! (`node/fuzz/corpus/<target>/`) and seeded mutations of it through the
//! same entry point the coverage-guided fuzzer drives (`node/fuzz/`); a
//! panic is a crash. `MAKIATTO_FUZZ_CASES` sets the mutations per target
//! (default 20,000), `MAKIATTO_SEED` the seed.

use std::path::Path;

use rand::{Rng, SeedableRng};

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../node/fuzz/corpus")
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

/// Every seed of `target`, then mutations of them (bytes changed, cut, added, copied
/// from another seed), through `run`.
pub fn run_target(target: &str, run: fn(&[u8])) {
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
