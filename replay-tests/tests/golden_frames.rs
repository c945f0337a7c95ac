//! Golden fixtures of the gossip wire: one frame of every kind (and the
//! heartbeat datagram), built from fixed keys and contents, compared byte
//! for byte with `fixtures/frames/<name>.hex`, and decoded back.
//!
//! The fixtures were recorded from the build before replication moved to
//! `makiatto_core::replication` (8caa03a): nodes of two builds talk during
//! a rolling upgrade only while these bytes stay. If a comparison fails,
//! the wire changed: announce a new feature bit (or bump `PROTOCOL`)
//! instead of changing an existing frame. A file is written only when it
//! is missing and `MAKIATTO_BLESS=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failure is a panic

use makiatto_core::replication::frame::{self, Features, Fetch, FetchVersion, Frame, Hello};
use makiatto_core::replication::{Heartbeat, PROTOCOL, VersionAhead};
use makiatto_events::{Blake3Hash, EventId, Load, SigningKey, VersionVector};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/frames");
const BLESS_VAR: &str = "MAKIATTO_BLESS";

/// What the wire carries: a frame (with the features after it, for a
/// hello), or a heartbeat datagram.
enum Wire {
    Frame(Frame, Option<Features>),
    Heartbeat(Heartbeat),
}

impl Wire {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Wire::Frame(f, features) => {
                let mut wire = Vec::new();
                frame::encode_with(f, *features, &mut wire).unwrap();
                wire
            }
            Wire::Heartbeat(beat) => beat.encode().unwrap(),
        }
    }
}

fn cases() -> Vec<(&'static str, Wire)> {
    let key = |seed: u8| SigningKey::from_bytes(&[seed; 32]).public();
    let cluster = EventId::of(b"golden cluster");
    let node = key(3);
    let mut vv = VersionVector::default();
    vv.observe(key(1), 1, &EventId::of(b"first"));
    vv.observe(key(1), 2, &EventId::of(b"second"));
    vv.observe(key(2), 1, &EventId::of(b"third"));
    let (h1, h2) = (Blake3Hash::of(b"blob one"), Blake3Hash::of(b"blob two"));
    let hello = || {
        Frame::Hello(Hello {
            protocol: PROTOCOL,
            cluster,
            node,
            vv: vv.clone(),
        })
    };
    let frame = |f| Wire::Frame(f, None);
    vec![
        // The features of the build that recorded it (versions ahead);
        // later bits have fixtures of their own.
        ("hello", Wire::Frame(hello(), Some(Features::VERSION_AHEAD))),
        (
            "hello-blobs-ahead",
            Wire::Frame(
                hello(),
                Some(Features::from_bits(
                    Features::VERSION_AHEAD.bits() | Features::BLOBS_AHEAD.bits(),
                )),
            ),
        ),
        ("hello-without-features", frame(hello())),
        (
            "events",
            frame(Frame::Events(vec![
                b"an event".to_vec(),
                vec![0, 1, 2, 255],
            ])),
        ),
        ("done", frame(Frame::Done)),
        (
            "fetch",
            frame(Frame::Fetch(Fetch {
                protocol: PROTOCOL,
                cluster,
                node,
                want: vec![h1, h2],
            })),
        ),
        (
            "blob",
            frame(Frame::Blob {
                hash: h1,
                size: 1_234_567,
            }),
        ),
        ("no-blob", frame(Frame::NoBlob(h2))),
        (
            "fetch-version",
            frame(Frame::FetchVersion(FetchVersion {
                protocol: PROTOCOL,
                cluster,
                node,
                base: h1,
                target: h2,
            })),
        ),
        (
            "manifest-delta",
            frame(Frame::ManifestDelta {
                target: h2,
                delta: b"a delta".to_vec(),
            }),
        ),
        (
            "version-ahead",
            frame(Frame::VersionAhead(VersionAhead {
                base: h1,
                target: h2,
                delta: b"a delta".to_vec(),
                blobs: vec![(h1, b"blob one".to_vec())],
            })),
        ),
        ("blobs-ahead", frame(Frame::BlobsAhead(vec![h1, h2]))),
        (
            "heartbeat",
            Wire::Heartbeat(Heartbeat {
                protocol: PROTOCOL,
                cluster,
                node,
                events: 3,
                vv_digest: vv.digest(),
                load: Load {
                    load1_milli: 1_250,
                    cpus: 4,
                    mem_available_mb: 2_048,
                    mem_total_mb: 4_096,
                    uptime_secs: 3_600,
                },
            }),
        ),
    ]
}

/// The recorded bytes of `name` (written from `built` when missing and
/// blessing).
fn recorded(name: &str, built: &[u8]) -> Vec<u8> {
    let path = format!("{DIR}/{name}.hex");
    match std::fs::read_to_string(&path) {
        Ok(hex) => hex::decode(hex.trim()).unwrap(),
        Err(_) if std::env::var(BLESS_VAR).is_ok_and(|v| v == "1") => {
            std::fs::create_dir_all(DIR).unwrap();
            std::fs::write(&path, hex::encode(built) + "\n").unwrap();
            eprintln!("wrote {path}");
            built.to_vec()
        }
        Err(e) => panic!(
            "the golden fixture {path} is missing ({e}), so nothing shows whether the gossip \
             wire changed; to write it for the first time, run with {BLESS_VAR}=1"
        ),
    }
}

#[test]
fn every_gossip_frame_keeps_its_wire_bytes() {
    for (name, wire) in cases() {
        let built = wire.bytes();
        assert_eq!(
            hex::encode(&built),
            hex::encode(recorded(name, &built)),
            "{name}: the wire bytes of a gossip frame changed; nodes of the previous build \
             would no longer understand this one"
        );
    }
}

#[test]
fn every_fixture_still_decodes_to_its_frame() {
    for (name, wire) in cases() {
        let recorded = recorded(name, &wire.bytes());
        match wire {
            Wire::Heartbeat(beat) => {
                assert_eq!(Heartbeat::decode(&recorded).unwrap(), beat, "{name}");
            }
            Wire::Frame(expected, features) => {
                let len = frame::body_len(recorded[..4].try_into().unwrap()).unwrap();
                assert_eq!(len, recorded.len() - 4, "{name}: its length");
                let (decoded, announced) = frame::decode(&recorded[4..]).unwrap();
                assert_eq!(decoded, expected, "{name}");
                assert_eq!(announced, features.unwrap_or(Features::NONE), "{name}");
            }
        }
    }
}
