//! The log's admission rules, durability across reopen, and group commit.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failure is a panic

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use makiatto_core::log::AppendOutcome;
use makiatto_core::{Backend, GroupCommitter, IngestError, Log, MemoryBackend, Store};
use makiatto_events::payload::{Genesis, Ipv4Net, OperatorAdded};
use makiatto_events::{Event, FeedWriter, Payload, SigningKey};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn writer(seed: u64) -> FeedWriter {
    FeedWriter::new(SigningKey::generate(&mut ChaCha20Rng::seed_from_u64(seed)))
}

fn genesis(w: &mut FeedWriter, name: &str) -> Event {
    let operator = w.author();
    w.write(
        Payload::Genesis(Genesis {
            cluster_name: name.into(),
            operator_name: "alice".into(),
            operator,
            mesh_range: Ipv4Net::new(Ipv4Addr::new(10, 44, 44, 0), 24).unwrap(),
        }),
        &[],
        1_000,
    )
    .unwrap()
}

fn op(w: &mut FeedWriter, parent: &Event, n: u64) -> Event {
    let key = w.author();
    w.write(
        Payload::OperatorAdded(OperatorAdded {
            name: format!("op{n}"),
            key,
        }),
        &[(parent.id(), parent.hlc())],
        1_000 + n,
    )
    .unwrap()
}

/// The genesis `g` and `n` operators added after it.
fn genesis_and_ops(w: &mut FeedWriter, g: &Event, n: u64) -> Vec<Event> {
    std::iter::once(g.clone())
        .chain((1..=n).map(|i| op(w, g, i)))
        .collect()
}

fn stored(outcome: &AppendOutcome) -> bool {
    matches!(outcome, AppendOutcome::Stored { fork: false, .. })
}

#[test]
fn appended_events_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = writer(1);
    let g = genesis(&mut w, "c");
    let events = genesis_and_ops(&mut w, &g, 20);
    {
        let mut log = Log::open(Store::open(dir.path()).unwrap()).unwrap();
        let report = log.append(events.clone()).unwrap();
        assert!(report.outcomes.iter().all(stored));
    }
    let log = Log::open(Store::open(dir.path()).unwrap()).unwrap();
    assert_eq!(log.version_vector().total(), 21);
    assert_eq!(log.backend().cluster_id(), Some(g.id()));
    for e in &events {
        let bytes = log.backend().get(&e.id()).unwrap().unwrap();
        assert_eq!(Event::decode(&bytes).unwrap(), *e);
    }
}

#[test]
fn stored_events_read_a_chunk_at_a_time_come_once_each_in_canonical_order() {
    use std::ops::Bound;

    use makiatto_core::store::READ_CHUNK;

    let dir = tempfile::tempdir().unwrap();
    let mut w = writer(2);
    let g = genesis(&mut w, "c");
    // Two chunks and a part, and one range that ends exactly on a chunk.
    let events = genesis_and_ops(&mut w, &g, 2 * READ_CHUNK as u64 + 7);
    let store = Store::open(dir.path()).unwrap();
    let mut log = Log::open(store.clone()).unwrap();
    assert!(
        log.append(events.clone())
            .unwrap()
            .outcomes
            .iter()
            .all(stored)
    );
    let mut canonical: Vec<_> = events.iter().map(|e| (e.hlc(), e.id())).collect();
    canonical.sort();
    let read: Vec<_> = store.iter_events().map(|r| r.unwrap().0).collect();
    assert_eq!(read, canonical);
    let last_of_two = canonical[2 * READ_CHUNK];
    let bounded: Vec<_> = store
        .read_events(Bound::Excluded(canonical[0]), Bound::Included(last_of_two))
        .map(|r| r.unwrap().0)
        .collect();
    assert_eq!(bounded, canonical[1..=2 * READ_CHUNK]);
}

#[test]
fn duplicates_forgeries_and_broken_chains_are_refused_and_counted() {
    let mut log = Log::open(MemoryBackend::default()).unwrap();
    let mut w = writer(1);
    let g = genesis(&mut w, "c");
    let a = op(&mut w, &g, 1);
    let b = op(&mut w, &g, 2);
    log.append(vec![g.clone(), a.clone(), b.clone()]).unwrap();

    // Replayed.
    let r = log.append(vec![a.clone()]).unwrap();
    assert_eq!(
        r.outcomes,
        vec![AppendOutcome::Rejected(IngestError::Duplicate(a.id()))]
    );

    // Forged: one flipped bit in the signature.
    let mut forged = b.to_bytes().to_vec();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let r = log.append_bytes(&[forged]).unwrap();
    assert!(matches!(
        r.outcomes[0],
        AppendOutcome::Rejected(IngestError::Invalid(_))
    ));

    // Truncated.
    let r = log.append_bytes(&[b.to_bytes()[..10].to_vec()]).unwrap();
    assert!(matches!(
        r.outcomes[0],
        AppendOutcome::Rejected(IngestError::Invalid(_))
    ));

    // Reordered within the feed: seq 4 claiming the seq-1 event as prev.
    let key = SigningKey::generate(&mut ChaCha20Rng::seed_from_u64(1));
    let bad = makiatto_events::UnsignedEvent::new(
        key.public(),
        4,
        Some(g.id()),
        makiatto_events::Hlc {
            millis: 5_000,
            counter: 0,
        },
        [],
        Payload::OperatorAdded(OperatorAdded {
            name: "x".into(),
            key: key.public(),
        }),
    )
    .sign(&key)
    .unwrap();
    let r = log.append(vec![bad]).unwrap();
    assert!(matches!(
        r.outcomes[0],
        AppendOutcome::Rejected(IngestError::ChainMismatch { .. })
    ));

    // Another cluster's genesis.
    let mut other = writer(9);
    let r = log.append(vec![genesis(&mut other, "other")]).unwrap();
    assert!(matches!(
        r.outcomes[0],
        AppendOutcome::Rejected(IngestError::ForeignCluster { .. })
    ));

    let counts = log.reject_counts();
    assert_eq!(
        (
            counts.duplicate,
            counts.invalid,
            counts.chain_mismatch,
            counts.foreign_cluster
        ),
        (1, 2, 1, 1)
    );
    assert_eq!(log.version_vector().total(), 3);
}

#[test]
fn an_event_ahead_of_its_predecessor_waits_and_is_released() {
    let mut log = Log::open(MemoryBackend::default()).unwrap();
    let mut w = writer(1);
    let g = genesis(&mut w, "c");
    let a = op(&mut w, &g, 1);
    let b = op(&mut w, &g, 2);
    let c = op(&mut w, &g, 3);
    log.append(vec![g]).unwrap();
    let r = log.append(vec![c.clone(), b.clone()]).unwrap();
    assert_eq!(
        r.outcomes,
        vec![
            AppendOutcome::Waiting {
                id: c.id(),
                on: b.id()
            },
            AppendOutcome::Waiting {
                id: b.id(),
                on: a.id()
            },
        ]
    );
    assert_eq!(log.waiting(), 2);
    let r = log.append(vec![a.clone()]).unwrap();
    let ids: Vec<_> = r.stored.iter().map(|e| e.id()).collect();
    assert_eq!(ids, vec![a.id(), b.id(), c.id()]);
    assert_eq!(log.waiting(), 0);
    assert_eq!(log.version_vector().get(&a.author()).unwrap().seq, 4);
}

#[test]
fn two_events_at_one_place_in_a_feed_are_both_kept_as_a_fork() {
    let mut log = Log::open(MemoryBackend::default()).unwrap();
    let mut w = writer(1);
    let g = genesis(&mut w, "c");
    let mut twin = w.clone();
    let a = op(&mut w, &g, 1);
    let a2 = op(&mut twin, &g, 2);
    log.append(vec![g, a]).unwrap();
    let r = log.append(vec![a2.clone()]).unwrap();
    assert_eq!(
        r.outcomes,
        vec![AppendOutcome::Stored {
            id: a2.id(),
            fork: true
        }]
    );
    let feed = log.version_vector().get(&a2.author()).unwrap();
    assert_eq!((feed.seq, feed.count), (2, 3));
}

#[test]
fn the_missing_suffix_is_all_a_peer_is_sent() {
    let mut w = writer(1);
    let g = genesis(&mut w, "c");
    let events = genesis_and_ops(&mut w, &g, 10);
    let mut full = Log::open(MemoryBackend::default()).unwrap();
    full.append(events.clone()).unwrap();
    let mut behind = Log::open(MemoryBackend::default()).unwrap();
    behind.append(events[..4].to_vec()).unwrap();

    let sent = full
        .missing_for(behind.version_vector(), usize::MAX)
        .unwrap();
    assert_eq!(sent.len(), 7);
    behind.append_bytes(&sent).unwrap();
    assert_eq!(behind.version_vector(), full.version_vector());
    assert!(
        full.missing_for(behind.version_vector(), usize::MAX)
            .unwrap()
            .is_empty()
    );

    // A byte budget pages the transfer without losing anything.
    let mut paged = Log::open(MemoryBackend::default()).unwrap();
    loop {
        let page = full.missing_for(paged.version_vector(), 1).unwrap();
        if page.is_empty() {
            break;
        }
        assert_eq!(page.len(), 1);
        paged.append_bytes(&page).unwrap();
    }
    assert_eq!(paged.version_vector(), full.version_vector());
}

#[test]
fn a_peer_is_sent_events_after_their_parents_whichever_feed_they_are_in() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = (writer(5), writer(6));
    let g = genesis(&mut a, "c");
    let mut events = vec![g.clone()];
    let added = |w: &FeedWriter, n: u64| {
        Payload::OperatorAdded(OperatorAdded {
            name: format!("op{n}"),
            key: w.author(),
        })
    };
    // b's feed, longer than a page of the feed index, starts on a's
    // genesis; a's second event names one in the middle of it. Feed after
    // feed, one of the two comes before a parent whatever the keys.
    for n in 0..2_500u64 {
        let parents = if n == 0 {
            vec![(g.id(), g.hlc())]
        } else {
            vec![]
        };
        let e = b.write(added(&b, n), &parents, 2_000 + n).unwrap();
        events.push(e.clone());
        if n == 1_200 {
            events.push(
                a.write(added(&a, n), &[(e.id(), e.hlc())], 2_000 + n)
                    .unwrap(),
            );
        }
    }
    let mut full = Log::open(Store::open(dir.path()).unwrap()).unwrap();
    assert!(
        full.append(events.clone())
            .unwrap()
            .outcomes
            .iter()
            .all(stored)
    );

    let mut peer = Log::open(MemoryBackend::default()).unwrap();
    let mut sent = Vec::new();
    loop {
        let page = full.missing_for(peer.version_vector(), 16 * 1024).unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() < events.len(), "the budget cuts");
        peer.append_bytes(&page).unwrap();
        sent.extend(page.iter().map(|b| Event::decode(b).unwrap()));
    }
    assert_eq!(peer.version_vector(), full.version_vector());
    assert_eq!(sent.len(), events.len());
    let at: std::collections::HashMap<_, _> =
        sent.iter().enumerate().map(|(i, e)| (e.id(), i)).collect();
    for (i, e) in sent.iter().enumerate() {
        for p in e.parents() {
            assert!(at[p] < i, "{} is sent before its parent {p}", e.id());
        }
    }
}

#[test]
fn concurrent_appenders_share_batches_through_the_group_committer() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Mutex::new(
        Log::open(Store::open(dir.path()).unwrap()).unwrap(),
    ));
    let (committer, _thread) = GroupCommitter::start(log.clone());
    let mut w = writer(1);
    let g = genesis(&mut w, "c");
    committer.append(vec![g.clone()]).unwrap();
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let committer = committer.clone();
            let g = g.clone();
            std::thread::spawn(move || {
                let mut w = writer(100 + t);
                for n in 0..50 {
                    let e = op(&mut w, &g, n);
                    let (outcomes, _) = committer.append(vec![e]).unwrap();
                    assert!(stored(&outcomes[0]), "{outcomes:?}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(log.lock().unwrap().version_vector().total(), 1 + 8 * 50);
}

/// A clock for the skew bound that a test moves by hand.
fn manual_clock(
    start: u64,
) -> (
    Arc<std::sync::atomic::AtomicU64>,
    makiatto_core::skew::Clock,
) {
    let now = Arc::new(std::sync::atomic::AtomicU64::new(start));
    let read = now.clone();
    (
        now,
        Arc::new(move || read.load(std::sync::atomic::Ordering::SeqCst)),
    )
}

#[test]
fn an_event_stamped_past_the_skew_bound_is_held_until_the_clock_reaches_it() {
    use makiatto_core::skew::SkewBound;
    use std::sync::atomic::Ordering;
    let mut log = Log::open(MemoryBackend::default()).unwrap();
    // The events are stamped at 1_000 + n ms; the node's clock reads 0 and
    // allows 500 ms ahead.
    let (now, clock) = manual_clock(0);
    log.bound_skew(SkewBound {
        clock,
        max_ahead_millis: 500,
    });
    let mut w = writer(1);
    let g = genesis(&mut w, "c");
    let a = op(&mut w, &g, 1);
    let b = op(&mut w, &g, 2);
    let r = log.append(vec![g.clone(), a.clone()]).unwrap();
    assert_eq!(
        r.outcomes,
        vec![
            AppendOutcome::Held {
                id: g.id(),
                due_millis: 500
            },
            AppendOutcome::Held {
                id: a.id(),
                due_millis: 501
            },
        ]
    );
    assert!(r.stored.is_empty());
    assert_eq!(log.held(), (2, 2));
    assert_eq!(log.next_due(), Some(500));
    // Sent again meanwhile (anti-entropy): still held, counted once.
    log.append(vec![a.clone()]).unwrap();
    assert_eq!(log.held(), (2, 2));
    assert_eq!(log.version_vector().total(), 0);

    // The clock reaches the first: it is admitted with the next append
    // (an empty one will do), the second still waits.
    now.store(500, Ordering::SeqCst);
    let r = log.append(vec![]).unwrap();
    assert_eq!(r.stored, vec![g.clone()]);
    assert!(
        r.outcomes.is_empty(),
        "released events were reported already"
    );
    // A later event of the feed waits for the held one, in the gap buffer.
    now.store(10_000, Ordering::SeqCst);
    let r = log.append(vec![b.clone()]).unwrap();
    let ids: Vec<_> = r.stored.iter().map(|e| e.id()).collect();
    assert_eq!(ids, vec![a.id(), b.id()], "the held one goes first");
    assert_eq!(log.held(), (0, 2));
    assert_eq!(log.version_vector().total(), 3);
    // Nothing was refused: holding is no rejection.
    assert_eq!(log.reject_counts().total(), 0);
}

#[test]
fn without_a_skew_bound_any_stamp_is_admitted() {
    let mut log = Log::open(MemoryBackend::default()).unwrap();
    let mut w = writer(1);
    let g = genesis(&mut w, "c");
    let r = log.append(vec![g]).unwrap();
    assert!(stored(&r.outcomes[0]));
}
