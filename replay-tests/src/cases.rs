//! Running a property over many seeds, reproducibly.
//!
//! Every property runs over the same seeds, `FIRST_SEED`, `FIRST_SEED + 1`,
//! …, so a history generated for one seed is generated once per process and
//! shared ([`crate::generator::History::shared`]); what a property does with
//! it (delivery orders, queried times, damaged bytes) comes from an RNG seeded
//! by the seed and the property's name, so properties do not repeat each
//! other. A failing case prints its seed and the command that reruns it
//! alone; `MAKIATTO_SEED` runs just that seed.

use std::panic::{self, AssertUnwindSafe};
use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// Environment variable that selects one seed to run.
pub const SEED_VAR: &str = "MAKIATTO_SEED";

/// The first seed of every property ("makiatto" in ASCII).
pub const FIRST_SEED: u64 = 0x6d61_6b69_6174_746f;

/// Runs `check(seed, rng)` for `cases` seeds (or only `$MAKIATTO_SEED`),
/// returning how many ran. On a failure, prints the seed and re-raises the
/// panic.
pub fn run(property: &str, cases: u64, mut check: impl FnMut(u64, &mut ChaCha20Rng)) -> u64 {
    let seeds: Vec<u64> = match std::env::var(SEED_VAR) {
        Ok(s) => vec![
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{SEED_VAR}={s:?} is not a whole number")),
        ],
        Err(_) => (0..cases).map(|i| FIRST_SEED.wrapping_add(i)).collect(),
    };
    let salt = name_hash(property);
    let started = Instant::now();
    for seed in &seeds {
        let mut rng = ChaCha20Rng::seed_from_u64(seed ^ salt);
        if let Err(panic) = panic::catch_unwind(AssertUnwindSafe(|| check(*seed, &mut rng))) {
            eprintln!(
                "\n{property}: FAILED with seed {seed}\n  rerun it alone with: \
                 {SEED_VAR}={seed} cargo test -p makiatto-replay-tests {property}\n"
            );
            panic::resume_unwind(panic);
        }
    }
    eprintln!(
        "{property}: {} case(s) passed in {:.1?}",
        seeds.len(),
        started.elapsed()
    );
    seeds.len() as u64
}

/// FNV-1a of a property's name: stable forever, so seeds stay reproducible.
fn name_hash(property: &str) -> u64 {
    property.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
