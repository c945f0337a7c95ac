//! Folding events as they arrive (on top, or re-folding when an arrival
//! sorts earlier) gives the same bytes as folding everything from scratch.

use makiatto_replay_tests::cases;

use crate::LARGE_ONE_IN;
use makiatto_replay_tests::generator::History;
use makiatto_replay_tests::replica::{Replica, assert_same_state};
use rand::Rng;
use rand::seq::SliceRandom;

const CASES: u64 = 1_000;

#[test]
fn incremental_folding_equals_a_full_rebuild() {
    cases::run(
        "incremental_folding_equals_a_full_rebuild",
        CASES,
        |seed, rng| {
            let history = History::shared(seed, LARGE_ONE_IN);
            let mut bytes = history.bytes();
            if rng.random_bool(0.7) {
                bytes.shuffle(rng);
            }
            let mut replica = Replica::new();
            let mut rest = bytes.as_slice();
            while !rest.is_empty() {
                let (batch, later) = rest.split_at(rng.random_range(1..=rest.len().min(8)));
                rest = later;
                replica.receive(batch);
                if rng.random_bool(0.2) || rest.is_empty() {
                    let incremental = replica.state();
                    let rebuilt = replica.engine().rebuild();
                    assert_same_state(
                        &incremental,
                        &rebuilt,
                        &format!(
                            "incremental against rebuild after {} of {} events",
                            replica.engine().len(),
                            history.events().len()
                        ),
                    );
                }
            }
        },
    );
}
