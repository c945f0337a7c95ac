//! The projection rules, case by case: authorization on the causal past,
//! mesh address conflicts, zone serials, rollbacks and config merges.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failure is a panic

use std::net::Ipv4Addr;

use makiatto_events::payload::{
    BlobRef, ChangeSummary, ConfigChanged, Coordinates, Genesis, Ipv4Net, NodeJoined,
    OperatorAdded, OperatorRemoved, SitePublished, SiteRolledBack, SshTarget,
};
use makiatto_events::{
    Blake3Hash, DomainName, Event, FeedWriter, NodeName, Payload, SealingSecret, SigningKey,
    WgPublicKey,
};
use makiatto_projections::config::{ConfigDoc, DesiredConfig, DomainConfig};
use makiatto_projections::{AsOf, Engine, ProjectionName, Verdict};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn writer(seed: u64) -> FeedWriter {
    FeedWriter::new(SigningKey::generate(&mut ChaCha20Rng::seed_from_u64(seed)))
}

fn after(events: &[&Event]) -> Vec<(makiatto_events::EventId, makiatto_events::Hlc)> {
    events.iter().map(|e| (e.id(), e.hlc())).collect()
}

fn genesis(w: &mut FeedWriter) -> Event {
    let operator = w.author();
    w.write(
        Payload::Genesis(Genesis {
            cluster_name: "c".into(),
            operator_name: "alice".into(),
            operator,
            mesh_range: Ipv4Net::new(Ipv4Addr::new(10, 44, 44, 0), 24).unwrap(),
        }),
        &[],
        1_000_000,
    )
    .unwrap()
}

fn add_operator(
    w: &mut FeedWriter,
    name: &str,
    key: makiatto_events::AuthorKey,
    parents: &[&Event],
    at: u64,
) -> Event {
    w.write(
        Payload::OperatorAdded(OperatorAdded {
            name: name.into(),
            key,
        }),
        &after(parents),
        at,
    )
    .unwrap()
}

fn join(w: &mut FeedWriter, name: &str, mesh: u8, parents: &[&Event], at: u64) -> Event {
    let mut rng = ChaCha20Rng::seed_from_u64(u64::from(mesh) + name.len() as u64 * 1000);
    w.write(
        Payload::NodeJoined(NodeJoined {
            name: NodeName::new(name).unwrap(),
            signing_key: SigningKey::generate(&mut rng).public(),
            sealing_key: SealingSecret::generate(&mut rng).public(),
            wg_public_key: WgPublicKey([mesh; 32]),
            ipv4: Some(Ipv4Addr::new(203, 0, 113, mesh)),
            ipv6: None,
            ssh: SshTarget {
                user: "root".into(),
                host: "h".into(),
                port: 22,
            },
            coordinates: Coordinates::from_degrees(50.0, 8.0).unwrap(),
            nameserver: true,
            mesh_addr: Ipv4Addr::new(10, 44, 44, mesh),
        }),
        &after(parents),
        at,
    )
    .unwrap()
}

fn publish(w: &mut FeedWriter, n: u64, parents: &[&Event], at: u64) -> Event {
    w.write(
        Payload::SitePublished(SitePublished {
            domain: DomainName::new("example.com").unwrap(),
            manifest: BlobRef {
                hash: Blake3Hash::of(&n.to_be_bytes()),
                size: n,
            },
            summary: ChangeSummary::default(),
            message: None,
        }),
        &after(parents),
        at,
    )
    .unwrap()
}

fn engine(events: &[&Event]) -> Engine {
    let mut e = Engine::new();
    e.insert(events.iter().map(|e| (*e).clone()));
    e
}

#[test]
fn a_removal_does_not_reach_back_over_concurrent_work() {
    // Alice adds Bob; then, concurrently, Alice removes Bob and Bob publishes
    // a site without having seen the removal. Bob's publication was
    // authorized in its own causal past, so it stays applied whatever order
    // the events arrive in; Bob's next event, after he saw the removal, is not.
    let mut alice = writer(1);
    let mut bob = writer(2);
    let g = genesis(&mut alice);
    let added = add_operator(&mut alice, "bob", bob.author(), &[&g], 1_000_100);
    let removed = alice
        .write(
            Payload::OperatorRemoved(OperatorRemoved { key: bob.author() }),
            &after(&[&added]),
            1_000_200,
        )
        .unwrap();
    let published = publish(&mut bob, 1, &[&added], 1_000_300);
    let too_late = publish(&mut bob, 2, &[&published, &removed], 1_000_400);

    let all = [&g, &added, &removed, &published, &too_late];
    let mut fingerprints = Vec::new();
    for order in [[0, 1, 2, 3, 4], [0, 1, 3, 4, 2], [4, 3, 2, 1, 0]] {
        let mut e = Engine::new();
        for i in order {
            e.insert([all[i].clone()]);
        }
        assert_eq!(e.verdict(&published.id()), Some(&Verdict::Applied));
        assert!(matches!(
            e.verdict(&too_late.id()),
            Some(Verdict::Unauthorized(_))
        ));
        assert_eq!(e.state().roles.operators.len(), 1);
        fingerprints.push(e.state().fingerprint(ProjectionName::Sites));
    }
    assert!(fingerprints.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn strangers_and_nodes_cannot_make_operator_changes() {
    let mut alice = writer(1);
    let g = genesis(&mut alice);
    let mut stranger = writer(9);
    let by_stranger = publish(&mut stranger, 1, &[&g], 1_000_100);
    let mut e = engine(&[&g, &by_stranger]);
    assert!(matches!(
        e.verdict(&by_stranger.id()),
        Some(Verdict::Unauthorized(_))
    ));
    assert!(e.state().sites.domains.is_empty());

    // A second genesis and a genesis not signed by its operator are invalid.
    let mut other = writer(3);
    let second = genesis(&mut other);
    let e = engine(&[&g, &second]);
    // Both are stamped alike, so the id breaks the tie: exactly one counts.
    let verdicts = [
        e.verdict(&g.id()).cloned(),
        e.verdict(&second.id()).cloned(),
    ];
    assert_eq!(
        verdicts
            .iter()
            .filter(|v| **v == Some(Verdict::Applied))
            .count(),
        1
    );
    assert_eq!(
        verdicts
            .iter()
            .filter(|v| matches!(v, Some(Verdict::Invalid(_))))
            .count(),
        1
    );
}

#[test]
fn the_last_operator_cannot_be_removed() {
    let mut alice = writer(1);
    let g = genesis(&mut alice);
    let me = alice.author();
    let removal = alice
        .write(
            Payload::OperatorRemoved(OperatorRemoved { key: me }),
            &after(&[&g]),
            1_000_100,
        )
        .unwrap();
    let mut e = engine(&[&g, &removal]);
    assert!(matches!(
        e.verdict(&removal.id()),
        Some(Verdict::Unauthorized(_))
    ));
    assert_eq!(e.state().roles.operators.len(), 1);
}

#[test]
fn joins_on_both_sides_of_a_partition_that_chose_one_address_are_resolved_alike() {
    let mut alice = writer(1);
    let mut bob = writer(2);
    let g = genesis(&mut alice);
    let added = add_operator(&mut alice, "bob", bob.author(), &[&g], 1_000_100);
    // Both pick 10.44.44.1 without seeing each other.
    let left = join(&mut alice, "vector", 1, &[&added], 1_000_200);
    let right = join(&mut bob, "klukai", 1, &[&added], 1_000_300);
    for order in [[&left, &right], [&right, &left]] {
        let mut e = engine(&[&g, &added]);
        e.insert(order.iter().map(|e| (**e).clone()));
        let peers = &e.state().peers;
        assert_eq!(
            peers.nodes[&NodeName::new("vector").unwrap()].mesh_addr,
            Some(Ipv4Addr::new(10, 44, 44, 1))
        );
        assert_eq!(
            peers.nodes[&NodeName::new("klukai").unwrap()].mesh_addr,
            Some(Ipv4Addr::new(10, 44, 44, 2))
        );
    }
}

#[test]
fn zone_serials_move_with_zone_changes_not_with_site_publications() {
    let mut alice = writer(1);
    let g = genesis(&mut alice);
    let mut doc = ConfigDoc::default();
    let mut cfg = DesiredConfig::default();
    cfg.domains
        .insert("example.com".into(), DomainConfig::default());
    let changes = doc.edit(&alice.author(), [0; 16], &cfg).unwrap();
    let configured = alice
        .write(
            Payload::ConfigChanged(ConfigChanged {
                changes,
                summary: "add example.com".into(),
            }),
            &after(&[&g]),
            2_000_000,
        )
        .unwrap();
    let mut e = engine(&[&g, &configured]);
    let domain = DomainName::new("example.com").unwrap();
    let s1 = e.state().zones.zones[&domain].serial;
    assert_eq!(s1, 2_000);

    // A site publication does not touch the zone.
    let published = publish(&mut alice, 1, &[&configured], 3_000_000);
    e.insert([published.clone()]);
    assert_eq!(e.state().zones.zones[&domain].serial, s1);

    // A nameserver joining does, even within the same second.
    let joined = join(&mut alice, "vector", 1, &[&published], 3_000_001);
    e.insert([joined]);
    let s2 = e.state().zones.zones[&domain].serial;
    assert!(s2 > s1, "{s2} > {s1}");
    assert_eq!(
        e.state().zones.zones[&domain].nameservers[0].name,
        "vector.ns.example.com"
    );
}

#[test]
fn a_rollback_must_name_a_published_version_among_its_parents() {
    let mut alice = writer(1);
    let g = genesis(&mut alice);
    let v1 = publish(&mut alice, 1, &[&g], 1_000_100);
    let v2 = publish(&mut alice, 2, &[&v1], 1_000_200);
    let back = alice
        .write(
            Payload::SiteRolledBack(SiteRolledBack {
                domain: DomainName::new("example.com").unwrap(),
                to: v1.id(),
                message: None,
            }),
            &after(&[&v2, &v1]),
            1_000_300,
        )
        .unwrap();
    let bogus = alice
        .write(
            Payload::SiteRolledBack(SiteRolledBack {
                domain: DomainName::new("example.com").unwrap(),
                to: g.id(),
                message: None,
            }),
            &after(&[&back]),
            1_000_400,
        )
        .unwrap();
    let mut e = engine(&[&g, &v1, &v2, &back, &bogus]);
    let domain = DomainName::new("example.com").unwrap();
    assert_eq!(e.verdict(&back.id()), Some(&Verdict::Applied));
    assert!(matches!(e.verdict(&bogus.id()), Some(Verdict::Invalid(_))));
    assert_eq!(e.state().sites.domains[&domain].live, Some(v1.id()));
    // Time travel: as of v2, v2 is live.
    let then = e.as_of(AsOf::Event(v2.id())).unwrap();
    assert_eq!(then.sites.domains[&domain].live, Some(v2.id()));
}

#[test]
fn an_event_whose_clock_is_not_after_its_parents_is_invalid() {
    let mut alice = writer(1);
    let g = genesis(&mut alice);
    let key = SigningKey::generate(&mut ChaCha20Rng::seed_from_u64(1));
    let backdated = makiatto_events::UnsignedEvent::new(
        key.public(),
        2,
        Some(g.id()),
        makiatto_events::Hlc {
            millis: 999_999,
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
    let e = engine(&[&g, &backdated]);
    assert!(matches!(
        e.verdict(&backdated.id()),
        Some(Verdict::Invalid(_))
    ));
}

#[test]
fn events_wait_until_their_causal_past_arrives() {
    let mut alice = writer(1);
    let g = genesis(&mut alice);
    let v1 = publish(&mut alice, 1, &[&g], 1_000_100);
    let mut e = Engine::new();
    e.insert([v1.clone()]);
    assert_eq!(e.verdict(&v1.id()), None);
    assert!(!e.is_ready(&v1.id()));
    let report = e.insert([g.clone()]);
    assert_eq!(report.folded, vec![g.id(), v1.id()]);
    assert_eq!(e.verdict(&v1.id()), Some(&Verdict::Applied));
}
