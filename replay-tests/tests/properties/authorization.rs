//! Authorization is judged on each event's causal past: unauthorized events
//! stay in the log, are flagged, and change nothing.

use makiatto_projections::Verdict;
use makiatto_replay_tests::cases;

use crate::LARGE_ONE_IN;
use makiatto_replay_tests::generator::{Expected, History, Shape};
use makiatto_replay_tests::replica::{Replica, assert_same_state, fold};
use rand::seq::SliceRandom;

const CASES: u64 = 800;
const VERDICT_CASES: u64 = 1_500;

#[test]
fn unauthorized_events_change_nothing() {
    cases::run("unauthorized_events_change_nothing", CASES, |seed, rng| {
        let mut shape = if seed % LARGE_ONE_IN == 0 {
            Shape::large(rng)
        } else {
            Shape::small(rng)
        };
        shape.intruders = true;
        shape.intruders_visible = false;
        let history = History::generate(seed, shape);
        assert!(history.unauthorized_are_leaves());

        let mut with = Replica::new();
        let mut bytes = history.bytes();
        bytes.shuffle(rng);
        with.receive(&bytes);
        let authorized = history
            .events()
            .iter()
            .filter(|e| history.expected(&e.id()) == Expected::Applied)
            .cloned();
        let mut without = fold(authorized);
        assert_same_state(
            &with.state(),
            without.state(),
            "with the unauthorized events against without them",
        );
        for e in history.unauthorized() {
            assert!(
                matches!(
                    with.engine().verdict(&e.id()),
                    Some(Verdict::Unauthorized(_))
                ),
                "{e:?} by {} got {:?}",
                history.writer(&e.id()),
                with.engine().verdict(&e.id())
            );
        }
    });
}

#[test]
fn every_verdict_is_the_one_its_causal_past_dictates() {
    cases::run(
        "every_verdict_is_the_one_its_causal_past_dictates",
        VERDICT_CASES,
        |seed, rng| {
            let history = History::shared(seed, LARGE_ONE_IN);
            let mut events = history.events().to_vec();
            events.shuffle(rng);
            let engine = fold(events);
            for e in history.events() {
                let verdict = engine
                    .verdict(&e.id())
                    .unwrap_or_else(|| panic!("{e:?} was never folded"));
                let expected = history.expected(&e.id());
                let agrees = match expected {
                    Expected::Applied => verdict.is_applied(),
                    Expected::Unauthorized => matches!(verdict, Verdict::Unauthorized(_)),
                };
                assert!(
                    agrees,
                    "{e:?} by {} got {verdict:?}, expected {expected:?}",
                    history.writer(&e.id())
                );
            }
        },
    );
}
