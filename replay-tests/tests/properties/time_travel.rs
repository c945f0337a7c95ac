//! "As of" answers are the projections of exactly the events they name: as
//! of a time, everything stamped at or before it; as of an event, its causal
//! past including itself.

use makiatto_events::Hlc;
use makiatto_projections::AsOf;
use makiatto_replay_tests::cases;

use crate::LARGE_ONE_IN;
use makiatto_replay_tests::generator::History;
use makiatto_replay_tests::replica::{assert_same_state, fold};
use rand::Rng;
use rand::seq::IndexedRandom;

const CASES: u64 = 500;
const QUERIES: usize = 4;

/// A time worth asking about: an event's exact stamp, the end of its
/// millisecond, just before it, or any time around the history.
fn interesting_time(rng: &mut impl Rng, history: &History) -> Hlc {
    let events = history.events();
    let at = events.choose(rng).expect("a history has a genesis").hlc();
    match rng.random_range(0..5) {
        0 => at,
        1 => Hlc::end_of_millis(at.millis),
        2 => Hlc {
            millis: at.millis.saturating_sub(1),
            counter: u32::MAX,
        },
        3 => Hlc {
            millis: at.millis,
            counter: at.counter.saturating_sub(1),
        },
        _ => {
            let lo = events.iter().map(|e| e.hlc().millis).min().unwrap_or(0);
            let hi = events.iter().map(|e| e.hlc().millis).max().unwrap_or(0);
            Hlc {
                millis: rng.random_range(lo.saturating_sub(10)..=hi + 10),
                counter: rng.random_range(0..3),
            }
        }
    }
}

#[test]
fn as_of_a_time_equals_a_fresh_fold_of_everything_stamped_up_to_it() {
    cases::run(
        "as_of_a_time_equals_a_fresh_fold_of_everything_stamped_up_to_it",
        CASES,
        |seed, rng| {
            let history = History::shared(seed, LARGE_ONE_IN);
            let engine = fold(history.events().iter().cloned());
            for _ in 0..QUERIES {
                let t = interesting_time(rng, &history);
                let prefix = history.events().iter().filter(|e| e.hlc() <= t).cloned();
                let mut fresh = fold(prefix);
                let travelled = engine.as_of(AsOf::Time(t)).expect("times always answer");
                assert_same_state(&travelled, fresh.state(), &format!("as of {t:?}"));
            }
        },
    );
}

#[test]
fn as_of_an_event_equals_a_fresh_fold_of_its_causal_past() {
    cases::run(
        "as_of_an_event_equals_a_fresh_fold_of_its_causal_past",
        CASES,
        |seed, rng| {
            let history = History::shared(seed, LARGE_ONE_IN);
            let engine = fold(history.events().iter().cloned());
            for _ in 0..QUERIES {
                let event = history.events().choose(rng).expect("not empty");
                let mut fresh = fold(history.causal_past(&event.id()));
                let travelled = engine
                    .as_of(AsOf::Event(event.id()))
                    .expect("every event of the history is ready");
                assert_same_state(&travelled, fresh.state(), &format!("as of {event:?}"));
            }
        },
    );
}
