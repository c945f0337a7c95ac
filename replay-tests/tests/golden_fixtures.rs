//! Golden fixtures: one event of every payload kind, built from fixed keys,
//! fixed clocks and fixed contents, and compared byte for byte with
//! `fixtures/events.txt` (lines of `kind id hex-bytes`).
//!
//! Events already in logs must decode, verify and fold the same way
//! forever. If a comparison here fails, an existing encoding changed: add a
//! new payload kind (or a new encoding version) instead of changing the old
//! one. The file is written only when it is missing and `MAKIATTO_BLESS=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark support: a failure is a panic that fails the run

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use makiatto_events::payload::{
    AcmeChallenge, BlobRef, CertificateIssued, CertificateRenewalRequested, ChangeSummary,
    ConfigChanged, Coordinates, ExternalPeerAdded, ExternalPeerRemoved, Genesis, Ipv4Net,
    NodeJoined, NodeRemoved, OperatorAdded, OperatorRemoved, SecretResealed, SitePublished,
    SiteRolledBack, SshTarget,
};
use makiatto_events::{
    Blake3Hash, DomainName, Event, EventId, EventKind, FeedWriter, NodeName, Payload, PeerName,
    Recipient, SealedValue, SealingKey, SigningKey, WgPublicKey,
};
use makiatto_projections::Verdict;
use makiatto_projections::config::ConfigDoc;
use makiatto_replay_tests::replica::fold;
use rand::SeedableRng;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/events.txt");
const BLESS_VAR: &str = "MAKIATTO_BLESS";

/// An automerge change as `ConfigDoc::edit` wrote it (actor: the operator
/// key below, time 0): example.com gets the TXT record `@ = v=golden`
/// (TTL 300) and `dns.geo_ttl` becomes 30. Kept as bytes so that the
/// fixture pins this crate's encoding, not automerge's output; the decode
/// test checks that automerge still reads it.
const CONFIG_CHANGE_HEX: &str = concat!(
    "856f4a83da205aaa01f90200208a88e3dd7409f195fd52db2d3cba5d72ca6709",
    "bf1d94121bf3748801b40f6f5c0101000000080104020e1583023401420c560d",
    "570f70020003150000037f010502050304047f1105136807646f6d61696e7304",
    "6f3131790873657474696e67730b6578616d706c652e636f6d0f6c6f6767696e",
    "675f656e61626c65640f6d6574726963735f656e61626c65640d6f746c705f65",
    "6e64706f696e740e73616d706c696e675f726174696f0f74726163696e675f65",
    "6e61626c65640c61636d655f63615f726f6f740e61636d655f6469726563746f",
    "72790b646e735f67656f5f74746c0b646e735f6e656172657374137369746573",
    "5f6b6565705f76657273696f6e7307616c69617365730966756e6374696f6e73",
    "077265636f7264730a7472616e73666f726d730754585420402030046e616d65",
    "087072696f726974790572747970650374746c0576616c75651804000a010202",
    "7d00020005010b007f1307007b1600362386011e40545854ac02763d676f6c64",
    "656e1800",
);

/// When the fixed history starts (2025-10-09 UTC).
const START_MILLIS: u64 = 1_760_000_000_000;

fn operator() -> SigningKey {
    SigningKey::from_bytes(&[1; 32])
}

fn second_operator() -> SigningKey {
    SigningKey::from_bytes(&[2; 32])
}

fn node() -> SigningKey {
    SigningKey::from_bytes(&[3; 32])
}

/// A chain of events, each naming the one before as its parent, one
/// second apart.
#[derive(Default)]
struct Chain {
    events: Vec<Event>,
}

impl Chain {
    fn add(&mut self, writer: &mut FeedWriter, payload: Payload) -> EventId {
        let parents: Vec<_> = self
            .events
            .last()
            .map(|e| (e.id(), e.hlc()))
            .into_iter()
            .collect();
        let now = START_MILLIS + 1_000 * self.events.len() as u64;
        let event = writer
            .write(payload, &parents, now)
            .expect("fixture events are well formed");
        let id = event.id();
        self.events.push(event);
        id
    }
}

/// One event of every kind, the same on every run.
fn fixture_events() -> Vec<Event> {
    let mut op = FeedWriter::new(operator());
    let mut node_writer = FeedWriter::new(node());
    let node_name = NodeName::new("vector").expect("a valid label");
    let peer_name = PeerName::new("o11y").expect("a valid label");
    let domain = DomainName::new("example.com").expect("a valid domain");
    let mut chain = Chain::default();
    chain.add(
        &mut op,
        Payload::Genesis(Genesis {
            cluster_name: "golden".into(),
            operator_name: "alice".into(),
            operator: operator().public(),
            mesh_range: Ipv4Net::new(Ipv4Addr::new(198, 51, 100, 0), 24).expect("a valid range"),
        }),
    );
    chain.add(
        &mut op,
        Payload::OperatorAdded(OperatorAdded {
            name: "bob".into(),
            key: second_operator().public(),
        }),
    );
    chain.add(
        &mut op,
        Payload::OperatorRemoved(OperatorRemoved {
            key: second_operator().public(),
        }),
    );
    chain.add(
        &mut op,
        Payload::NodeJoined(NodeJoined {
            name: node_name.clone(),
            signing_key: node().public(),
            sealing_key: SealingKey([4; 32]),
            wg_public_key: WgPublicKey([5; 32]),
            ipv4: Some(Ipv4Addr::new(203, 0, 113, 10)),
            ipv6: Some(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 10)),
            ssh: SshTarget {
                user: "root".into(),
                host: "203.0.113.10".into(),
                port: 22,
            },
            coordinates: Coordinates {
                lat_e6: 51_507_400,
                lon_e6: -127_800,
            },
            nameserver: true,
            mesh_addr: Ipv4Addr::new(198, 51, 100, 1),
        }),
    );
    chain.add(
        &mut op,
        Payload::ExternalPeerAdded(ExternalPeerAdded {
            name: peer_name.clone(),
            wg_public_key: WgPublicKey([6; 32]),
            endpoint: "203.0.113.20:51820".into(),
            wg_address: Some(Ipv4Addr::new(198, 51, 100, 200)),
        }),
    );
    chain.add(
        &mut op,
        Payload::ExternalPeerRemoved(ExternalPeerRemoved { name: peer_name }),
    );
    chain.add(
        &mut op,
        Payload::ConfigChanged(ConfigChanged {
            changes: vec![hex::decode(CONFIG_CHANGE_HEX).expect("the recorded change is hex")],
            summary: "set dns.geo_ttl = 30".into(),
        }),
    );
    let published = chain.add(
        &mut op,
        Payload::SitePublished(SitePublished {
            domain: domain.clone(),
            manifest: BlobRef {
                hash: Blake3Hash([7; 32]),
                size: 4_096,
            },
            summary: ChangeSummary {
                files: 3,
                added: 3,
                changed: 0,
                removed: 0,
                bytes: 12_345,
            },
            message: Some("first version".into()),
        }),
    );
    chain.add(
        &mut op,
        Payload::SiteRolledBack(SiteRolledBack {
            domain,
            to: published,
            message: Some("back to the first version".into()),
        }),
    );
    chain.add(
        &mut node_writer,
        Payload::SecretResealed(SecretResealed {
            secret: Blake3Hash([8; 32]),
            recipient: Recipient {
                node: SealingKey([9; 32]),
                ephemeral: [10; 32],
                wrapped_key: vec![11; 48],
            },
        }),
    );
    chain.add(
        &mut op,
        Payload::NodeRemoved(NodeRemoved { name: node_name }),
    );
    chain.add(
        &mut op,
        Payload::Unknown {
            kind: 4242,
            body: vec![1, 2, 3, 4],
        },
    );
    // Kinds added later follow, in the order they were added: earlier
    // lines never move. (The node above is removed by now, so the operator
    // writes these; nodes may too.)
    chain.add(
        &mut op,
        Payload::AcmeChallenge(AcmeChallenge {
            name: "example.com".into(),
            token: "golden-token".into(),
            value: "golden-token.thumbprint".into(),
            dns: false,
            open: true,
        }),
    );
    let mut rng = rand_chacha::ChaCha20Rng::from_seed([12; 32]);
    let key = SealedValue::seal(
        b"-----BEGIN PRIVATE KEY-----",
        &[SealingKey([9; 32])],
        &mut rng,
    )
    .expect("one recipient");
    chain.add(
        &mut op,
        Payload::CertificateIssued(CertificateIssued {
            domain: DomainName::new("example.com").expect("a domain"),
            names: vec!["example.com".into(), "www.example.com".into()],
            chain_pem: "-----BEGIN CERTIFICATE-----".into(),
            key,
            not_after_millis: 1_800_000_000_000,
            issuer: "Golden CA".into(),
        }),
    );
    chain.add(
        &mut op,
        Payload::CertificateRenewalRequested(CertificateRenewalRequested {
            name: "example.com".into(),
        }),
    );
    chain.events
}

fn line(event: &Event) -> String {
    format!(
        "{} {} {}",
        event.kind().name(),
        event.id().to_hex(),
        hex::encode(event.to_bytes())
    )
}

/// The fixture's lines, written first if missing and blessing is asked
/// for. Shared by both tests, so a blessing run writes the file once.
fn fixture_lines() -> &'static Vec<String> {
    static LINES: OnceLock<Vec<String>> = OnceLock::new();
    let bless = std::env::var(BLESS_VAR).is_ok_and(|v| v == "1");
    LINES.get_or_init(|| match std::fs::read_to_string(FIXTURE) {
        Ok(text) => {
            let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
            // A kind added since: blessing appends its line, and only when
            // every recorded line is still built exactly as recorded.
            let built: Vec<String> = fixture_events().iter().map(line).collect();
            if bless && built.len() > lines.len() && built[..lines.len()] == lines[..] {
                lines = built;
                std::fs::write(FIXTURE, lines.join("\n") + "\n")
                    .expect("the fixture can be written");
                eprintln!("appended new kinds to {FIXTURE}");
            }
            lines
        }
        Err(_) if bless => {
            let lines: Vec<String> = fixture_events().iter().map(line).collect();
            std::fs::write(FIXTURE, lines.join("\n") + "\n").expect("the fixture can be written");
            eprintln!("wrote {FIXTURE}");
            lines
        }
        Err(e) => panic!(
            "the golden fixture {FIXTURE} is missing ({e}), so nothing shows whether an \
             existing encoding changed. Restore it from version control; only when creating \
             it for the first time, run with {BLESS_VAR}=1"
        ),
    })
}

#[test]
fn every_payload_kind_keeps_its_encoding() {
    let events = fixture_events();
    let mut kinds: Vec<EventKind> = events.iter().map(|e| e.kind()).collect();
    kinds.sort();
    let mut expected: Vec<EventKind> = EventKind::KNOWN.to_vec();
    expected.push(EventKind::Unknown(4242));
    expected.sort();
    assert_eq!(
        kinds, expected,
        "the fixtures cover every payload kind once"
    );

    let recorded = fixture_lines();
    assert_eq!(
        recorded.len(),
        events.len(),
        "{FIXTURE} holds {} events but {} are built: an existing encoding changed \
         (or a kind was added without a fixture)",
        recorded.len(),
        events.len()
    );
    for (event, recorded) in events.iter().zip(recorded) {
        let built = line(event);
        assert!(
            built == *recorded,
            "an existing encoding changed: the {} event no longer encodes as recorded in \
             {FIXTURE}.\n  recorded: {recorded}\n  built:    {built}\nEvents already in logs \
             must keep decoding the same way: add a new payload kind or encoding version \
             instead of changing this one.",
            event.kind()
        );
    }
}

#[test]
fn every_fixture_still_decodes_verifies_and_folds() {
    let mut events = Vec::new();
    for recorded in fixture_lines() {
        let mut fields = recorded.split(' ');
        let (Some(kind), Some(id), Some(bytes), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            panic!("{FIXTURE}: malformed line {recorded:?}");
        };
        let bytes = hex::decode(bytes).expect("fixture bytes are hex");
        let event = Event::decode(&bytes).unwrap_or_else(|e| {
            panic!("an event of kind {kind} written by an older version no longer decodes: {e}")
        });
        assert_eq!(event.kind().name(), kind, "{kind}: decodes as another kind");
        assert_eq!(event.id().to_hex(), id, "{kind}: its id changed");
        assert_eq!(
            event.to_bytes(),
            bytes,
            "{kind}: does not re-encode to its bytes"
        );
        events.push(event);
    }

    // The recorded configuration change still reads with today's automerge.
    let config = events
        .iter()
        .find_map(|e| match e.payload() {
            Payload::ConfigChanged(c) => Some(c.changes.clone()),
            _ => None,
        })
        .expect("a config-changed fixture");
    let mut doc = ConfigDoc::default();
    doc.apply(ConfigDoc::decode(&config).expect("the recorded change decodes"))
        .expect("the recorded change applies");
    let view = doc
        .view()
        .expect("the recorded change has the expected shape");
    assert_eq!(view.settings.dns_geo_ttl, Some(30));
    assert_eq!(
        view.domains["example.com"].records["TXT @ 0"].value,
        "v=golden"
    );

    // And the recorded history still folds as it did: every kind this
    // version knows is applied; the unknown kind is flagged, not applied.
    let engine = fold(events.clone());
    for e in &events {
        let verdict = engine.verdict(&e.id());
        match e.kind() {
            EventKind::Unknown(_) => assert!(
                matches!(verdict, Some(Verdict::Unauthorized(_))),
                "{e:?}: {verdict:?}"
            ),
            _ => assert_eq!(verdict, Some(&Verdict::Applied), "{e:?}"),
        }
    }
}
