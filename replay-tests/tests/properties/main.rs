//! Properties of the log and the projections over generated histories.
//!
//! Each property runs over many seeds (see `makiatto_replay_tests::cases`);
//! a failure prints its seed, and `MAKIATTO_SEED=<seed>` reruns only it.
//! Most histories are small; one seed in [`LARGE_ONE_IN`] gets a large one.
//!
//! Cases per `cargo test` run: see each module's `CASES`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark support: a failure is a panic that fails the run

mod authorization;
mod convergence;
mod coverage;
mod rebuild;
mod tampering;
mod time_travel;

/// One seed in this many gets a large history (shared by every property).
pub const LARGE_ONE_IN: u64 = 400;
