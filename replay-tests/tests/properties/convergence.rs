//! Nodes that hold the same events build the same projections and judge
//! every event alike, whatever order, duplicates, drops and partitions the
//! events came through on the way.

use std::collections::{BTreeSet, HashMap};

use makiatto_events::{AuthorKey, EventId};
use makiatto_projections::{State, Verdict};
use makiatto_replay_tests::cases;

use crate::LARGE_ONE_IN;
use makiatto_replay_tests::generator::{Expected, History};
use makiatto_replay_tests::replica::{Replica, assert_same_state, fingerprints};
use rand::Rng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;

const CASES: u64 = 600;

/// What one node receives: batches before the heal (with duplicates, some
/// events dropped and the far side of a partition missing), then batches
/// after it (everything missed, and some repeats).
struct Delivery {
    before_heal: Vec<Vec<Vec<u8>>>,
    after_heal: Vec<Vec<Vec<u8>>>,
}

impl Delivery {
    fn random(rng: &mut ChaCha20Rng, history: &History) -> Delivery {
        let authors: BTreeSet<AuthorKey> = history.events().iter().map(|e| e.author()).collect();
        let partitioned = rng.random_bool(0.5);
        let far_side: BTreeSet<AuthorKey> = authors
            .into_iter()
            .filter(|_| partitioned && rng.random_bool(0.4))
            .collect();
        let mut first = Vec::new();
        let mut missed = Vec::new();
        for e in history.events() {
            let bytes = e.to_bytes().to_vec();
            if far_side.contains(&e.author()) || rng.random_bool(0.15) {
                missed.push(bytes);
                continue;
            }
            if rng.random_bool(0.2) {
                first.push(bytes.clone());
            }
            first.push(bytes);
        }
        // Most nodes get a random order; some get the order written.
        if rng.random_bool(0.8) {
            first.shuffle(rng);
        }
        let mut second = missed;
        second.extend(first.iter().filter(|_| rng.random_bool(0.1)).cloned());
        second.shuffle(rng);
        Delivery {
            before_heal: batches(rng, first),
            after_heal: batches(rng, second),
        }
    }

    fn batches(&self) -> impl Iterator<Item = &Vec<Vec<u8>>> {
        self.before_heal.iter().chain(&self.after_heal)
    }
}

fn batches(rng: &mut impl Rng, items: Vec<Vec<u8>>) -> Vec<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        let size = rng.random_range(1..=6);
        out.push(items.by_ref().take(size).collect());
    }
    out
}

fn assert_holds_everything(replica: &Replica, history: &History, what: &str) {
    for e in history.events() {
        assert!(replica.stores(&e.id()), "{what}: {e:?} was never stored");
        assert!(
            replica.engine().is_ready(&e.id()),
            "{what}: {e:?} is held without its causal past"
        );
    }
}

/// docs/design.md, Projections: no two live members of the mesh ever hold one address, even
/// when joins on both sides of a partition asked for the same one.
fn assert_no_address_held_twice(state: &State) {
    let peers = &state.peers;
    let held = peers
        .nodes
        .values()
        .filter_map(|n| n.mesh_addr)
        .chain(peers.external.values().filter_map(|p| p.mesh_addr));
    let mut seen = BTreeSet::new();
    for addr in held {
        assert!(seen.insert(addr), "mesh address {addr} is held twice");
    }
}

#[test]
fn nodes_holding_the_same_events_build_identical_projections_whatever_the_delivery() {
    cases::run(
        "nodes_holding_the_same_events_build_identical_projections_whatever_the_delivery",
        CASES,
        |seed, rng| {
            let history = History::shared(seed, LARGE_ONE_IN);
            let mut reference: Option<State> = None;
            for node in 0..rng.random_range(2..=4) {
                let delivery = Delivery::random(rng, &history);
                let mut replica = Replica::new();
                for batch in delivery.batches() {
                    replica.receive(batch);
                }
                assert_holds_everything(&replica, &history, &format!("node {node}"));
                let state = replica.state();
                assert_no_address_held_twice(&state);
                match &reference {
                    None => reference = Some(state),
                    Some(first) => {
                        assert_eq!(
                            fingerprints(&state),
                            fingerprints(first),
                            "node {node}'s fingerprints differ from node 0's"
                        );
                        assert_same_state(&state, first, &format!("node {node} against node 0"));
                    }
                }
            }
        },
    );
}

#[test]
fn verdicts_never_flip_and_agree_on_every_node() {
    cases::run(
        "verdicts_never_flip_and_agree_on_every_node",
        CASES,
        |seed, rng| {
            let history = History::shared(seed, LARGE_ONE_IN);
            let mut reference: Option<Vec<(EventId, Verdict)>> = None;
            for node in 0..rng.random_range(2..=4) {
                let delivery = Delivery::random(rng, &history);
                let mut replica = Replica::new();
                // The first verdict each event got on this node.
                let mut first: HashMap<EventId, Verdict> = HashMap::new();
                for batch in delivery.batches() {
                    replica.receive(batch);
                    for (id, verdict) in replica.verdicts() {
                        let earlier = first.entry(id).or_insert_with(|| verdict.clone());
                        assert_eq!(
                            *earlier,
                            verdict,
                            "node {node}: the verdict on {id} (by {}) flipped",
                            history.writer(&id)
                        );
                    }
                }
                assert_holds_everything(&replica, &history, &format!("node {node}"));
                let verdicts = replica.verdicts();
                for (id, verdict) in &verdicts {
                    let expected = history.expected(id);
                    assert_eq!(
                        verdict.is_applied(),
                        expected == Expected::Applied,
                        "node {node}: {id} by {} got {verdict:?}, expected {expected:?}",
                        history.writer(id)
                    );
                }
                match &reference {
                    None => reference = Some(verdicts),
                    Some(first) => assert_eq!(
                        &verdicts, first,
                        "node {node} judged some event differently from node 0"
                    ),
                }
            }
        },
    );
}
