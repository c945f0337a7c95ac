//! A cluster history built with real keys, for the daemon's integration
//! tests. (The daemon they run it in is the harness's:
//! `makiatto_harness::daemon`.)

#![allow(dead_code)]

use std::net::Ipv4Addr;

use makiatto_events::payload::{
    BlobRef, ChangeSummary, Coordinates, Genesis, Ipv4Net, NodeJoined, OperatorAdded,
    SitePublished, SshTarget,
};
use makiatto_events::{
    Blake3Hash, DomainName, Event, FeedWriter, NodeName, Payload, SealingSecret, SigningKey,
    WgPublicKey,
};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

pub const T0: u64 = 1_795_611_600_000; // 2026-11-25T13:00:00Z

pub fn writer(seed: u64) -> FeedWriter {
    FeedWriter::new(SigningKey::generate(&mut ChaCha20Rng::seed_from_u64(seed)))
}

pub fn genesis(w: &mut FeedWriter) -> Event {
    let operator = w.author();
    w.write(
        Payload::Genesis(Genesis {
            cluster_name: "test".into(),
            operator_name: "alice".into(),
            operator,
            mesh_range: Ipv4Net::new(Ipv4Addr::new(198, 51, 100, 0), 24).unwrap(),
        }),
        &[],
        T0,
    )
    .unwrap()
}

pub fn node_joined(w: &mut FeedWriter, parent: &Event, name: &str, seed: u64, at: u64) -> Event {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    w.write(
        Payload::NodeJoined(NodeJoined {
            name: NodeName::new(name).unwrap(),
            signing_key: SigningKey::generate(&mut rng).public(),
            sealing_key: SealingSecret::generate(&mut rng).public(),
            wg_public_key: WgPublicKey([seed as u8; 32]),
            ipv4: Some(Ipv4Addr::new(203, 0, 113, seed as u8)),
            ipv6: None,
            ssh: SshTarget {
                user: "root".into(),
                host: format!("203.0.113.{seed}"),
                port: 22,
            },
            coordinates: Coordinates::from_degrees(51.5, -0.12).unwrap(),
            nameserver: true,
            mesh_addr: Ipv4Addr::new(198, 51, 100, seed as u8),
        }),
        &[(parent.id(), parent.hlc())],
        at,
    )
    .unwrap()
}

pub fn site_published(w: &mut FeedWriter, parent: &Event, n: u64, at: u64) -> Event {
    w.write(
        Payload::SitePublished(SitePublished {
            domain: DomainName::new("example.test").unwrap(),
            manifest: BlobRef {
                hash: Blake3Hash::of(&n.to_be_bytes()),
                size: 100 + n,
            },
            summary: ChangeSummary {
                files: n,
                added: 1,
                changed: 0,
                removed: 0,
                bytes: 1000,
            },
            message: Some(format!("version {n}")),
        }),
        &[(parent.id(), parent.hlc())],
        at,
    )
    .unwrap()
}

pub fn operator_added(
    w: &mut FeedWriter,
    parent: &Event,
    name: &str,
    key: makiatto_events::AuthorKey,
    at: u64,
) -> Event {
    w.write(
        Payload::OperatorAdded(OperatorAdded {
            name: name.into(),
            key,
        }),
        &[(parent.id(), parent.hlc())],
        at,
    )
    .unwrap()
}
