//! The generator must keep producing what the other properties are about:
//! every payload kind, forks, mesh address conflicts, concurrent writes,
//! and each kind of intruder. A generator that quietly stopped producing
//! one of them would make the properties pass for the wrong reason.

use std::collections::{BTreeMap, HashSet};

use makiatto_events::{EventKind, Payload};
use makiatto_replay_tests::cases::{self, SEED_VAR};
use makiatto_replay_tests::generator::{Expected, History};

use crate::LARGE_ONE_IN;

const CASES: u64 = 300;

#[test]
fn generated_histories_cover_every_kind_and_scenario() {
    let mut seen: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut kinds: HashSet<String> = HashSet::new();
    cases::run(
        "generated_histories_cover_every_kind_and_scenario",
        CASES,
        |seed, _| {
            let history = History::shared(seed, LARGE_ONE_IN);
            let mut note = |what| *seen.entry(what).or_default() += 1;
            // When each operator was removed (by an applied removal).
            let removals: Vec<_> = history
                .events()
                .iter()
                .filter(|e| history.expected(&e.id()) == Expected::Applied)
                .filter_map(|e| match e.payload() {
                    Payload::OperatorRemoved(r) => Some((r.key, (e.hlc(), e.id()))),
                    _ => None,
                })
                .collect();
            let mut places = HashSet::new();
            let mut mesh = HashSet::new();
            for e in history.events() {
                kinds.insert(match e.kind() {
                    EventKind::Unknown(_) => "unknown".into(),
                    kind => kind.name(),
                });
                if !places.insert((e.author(), e.seq())) {
                    note("fork");
                }
                if let Payload::NodeJoined(n) = e.payload()
                    && !mesh.insert(n.mesh_addr)
                {
                    note("mesh address asked twice");
                }
                if e.parents().len() > 1 {
                    note("event with concurrent parents");
                }
                let removed_earlier = removals
                    .iter()
                    .any(|(key, at)| *key == e.author() && *at < (e.hlc(), e.id()));
                if removed_earlier && history.expected(&e.id()) == Expected::Applied {
                    // Sorts after its author's removal, which is not in its
                    // causal past: it must stay applied.
                    note("applied after a concurrent removal");
                }
                if history.expected(&e.id()) == Expected::Unauthorized {
                    let writer = history.writer(&e.id());
                    note(match (writer, e.kind()) {
                        ("stranger", _) => "unauthorized: stranger",
                        (_, EventKind::Unknown(_)) => "unauthorized: unknown kind",
                        (w, _) if w.starts_with("op") => "unauthorized: removed operator",
                        _ => "unauthorized: node or removed node",
                    });
                }
            }
        },
    );
    eprintln!("coverage: {seen:#?}");
    if std::env::var(SEED_VAR).is_ok() {
        return; // one seed cannot cover everything
    }
    for kind in EventKind::KNOWN {
        assert!(
            kinds.contains(&kind.name()),
            "no {kind} event was generated"
        );
    }
    assert!(kinds.contains("unknown"), "no event of an unknown kind");
    for scenario in [
        "fork",
        "mesh address asked twice",
        "event with concurrent parents",
        "applied after a concurrent removal",
        "unauthorized: stranger",
        "unauthorized: unknown kind",
        "unauthorized: removed operator",
        "unauthorized: node or removed node",
    ] {
        assert!(
            seen.get(scenario).copied().unwrap_or(0) >= 5,
            "the generator hardly produces {scenario:?}: {seen:?}"
        );
    }
}
