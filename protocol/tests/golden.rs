//! Golden fixtures of the control protocol: one line per message kind in
//! `fixtures/control.txt` (`name<TAB>json`), every request and every
//! answer built from fixed values and compared with the file byte for
//! byte, then read back and compared with the value.
//!
//! A `maki` and a daemon of different releases talk through these lines
//! during a rolling upgrade: if a comparison fails, a message's wire form
//! changed. Add a field with a default, or a new request, instead (see
//! `version.rs` for the rule). The file is written only when it is missing
//! and `MAKIATTO_BLESS=1`.
//!
//! `fixtures/legacy.txt` holds what protocol 1 (makiatto 0.1, whose JSON
//! was written by hand) sent: its requests must still read as requests,
//! and its answers as answers.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failure is a panic

use std::collections::BTreeMap;
use std::fmt::Debug;

use makiatto_events::{
    AuthorKey, Blake3Hash, EventId, Hlc, SealingKey, VersionVector, WgPublicKey,
};
use makiatto_projections::ProjectionName;
use makiatto_projections::certificates::CertificateEntry;
use makiatto_protocol::append::{AppendResult, Outcome, Refusal};
use makiatto_protocol::blob_stream::{InlineBlob, Received};
use makiatto_protocol::client::{self, Batch};
use makiatto_protocol::health::{
    AcmeReport, DaemonInfo, DnsCounts, DnsReport, DueCertificate, GeoHealth, GeoIpLoaded,
    GeoIpReport, HandoverRecord, HandoverStarted, HealthReport, HttpReport, Load, OrderFailure,
    PeerHealth, ReplicationTotals, ServedSite, SiteDeployment, StatusCounts,
};
use makiatto_protocol::identity::NodeIdentity;
use makiatto_protocol::log::{LogFilter, LogLine};
use makiatto_protocol::probe::{
    ClockReading, DnsCheck, HttpsCheck, LocalReport, ProbeReport, SeenCertificate, Space,
    TargetReport, VersionBlobs,
};
use makiatto_protocol::request::{self as op, Envelope, Request};
use makiatto_protocol::show::Shown;
use makiatto_protocol::status::{
    Head, ManifestStored, NodeStatus, Rejections, Status, VerifyReport,
};
use makiatto_protocol::version::{Features, Version};
use makiatto_protocol::{Answer, ControlError, ErrorCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/control.txt");
const LEGACY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/legacy.txt");
const BLESS_VAR: &str = "MAKIATTO_BLESS";

fn client() -> Version {
    Version {
        protocol: 2,
        features: Features::TYPED_OUTCOMES,
        software: "0.2.0".into(),
    }
}

fn id(b: u8) -> EventId {
    EventId([b; 32])
}

fn hash(b: u8) -> Blake3Hash {
    Blake3Hash([b; 32])
}

fn hlc() -> Hlc {
    Hlc {
        millis: 1_760_000_000_000,
        counter: 2,
    }
}

fn vv() -> VersionVector {
    let mut v = VersionVector::default();
    v.observe(AuthorKey([1; 32]), 1, &id(10));
    v.observe(AuthorKey([1; 32]), 2, &id(11));
    v.observe(AuthorKey([2; 32]), 1, &id(12));
    v
}

/// Every request, in an envelope from a fixed client.
fn requests() -> Vec<(&'static str, Request)> {
    vec![
        ("hello", op::Hello(client()).into()),
        (
            "append",
            op::Append {
                events: vec!["00ff".into()],
            }
            .into(),
        ),
        (
            "log",
            op::Log {
                filter: LogFilter {
                    at: Some("2026-11-25T13:00:00Z".into()),
                    author: Some("alice".into()),
                    kind: Some("site-published".into()),
                    limit: Some(5),
                },
            }
            .into(),
        ),
        (
            "show",
            op::Show {
                name: ProjectionName::Sites,
                at: Some("abcd".into()),
            }
            .into(),
        ),
        ("verify", op::Verify {}.into()),
        ("status", op::GetStatus {}.into()),
        ("version-vector", op::GetVersionVector {}.into()),
        (
            "missing",
            op::Missing {
                vv: vv(),
                max_bytes: 4 << 20,
            }
            .into(),
        ),
        ("heads", op::Heads {}.into()),
        (
            "feed",
            op::Feed {
                author: AuthorKey([1; 32]),
            }
            .into(),
        ),
        ("config-changes", op::ConfigChanges {}.into()),
        ("health", op::Health {}.into()),
        (
            "manifest-put",
            op::ManifestPut {
                base: hash(1),
                target: hash(2),
                delta: "0102".into(),
            }
            .into(),
        ),
        (
            "blobs-missing",
            op::BlobsMissing {
                hashes: vec![hash(3), hash(4)],
            }
            .into(),
        ),
        (
            "blobs-put",
            op::BlobsPut {
                blobs: vec![InlineBlob {
                    hash: hash(5),
                    hex: "68690a".into(),
                }],
            }
            .into(),
        ),
        (
            "blobs-arrived",
            op::BlobsArrived {
                hashes: vec![hash(6)],
            }
            .into(),
        ),
    ]
}

fn health() -> HealthReport {
    let load = Load {
        load1_milli: 250,
        cpus: 2,
        mem_available_mb: 1000,
        mem_total_mb: 2000,
        uptime_secs: 60,
    };
    HealthReport {
        node: Some("vector".into()),
        mesh_addr: Some("198.51.100.1".into()),
        events: 7,
        vv_digest: hex_of(9),
        load: load.clone(),
        peers: vec![PeerHealth {
            name: "klukai".into(),
            mesh_addr: "198.51.100.2".into(),
            alive: true,
            last_heard_ms: Some(120),
            events: Some(7),
            in_sync: Some(true),
            load: Some(load),
            handshake_age_secs: Some(3),
            wg_rx_bytes: Some(1000),
            wg_tx_bytes: Some(2000),
            last_sync_ms: Some(400),
            last_error: Some("connection refused".into()),
            events_received: 3,
            events_sent: 4,
            bad_events: 0,
            clock_offset_ms: None,
        }],
        replication: ReplicationTotals {
            sessions_ok: 1,
            sessions_failed: 2,
            bytes_in: 3,
            bytes_out: 4,
            events_in: 5,
            events_out: 6,
            bad_events: 7,
            refused_connections: 8,
            versions_by_delta: 9,
            versions_ahead: 10,
            manifests_whole: 11,
            blobs_ahead: 0,
            refused_busy: 0,
        },
        sites: BTreeMap::from([(
            "example.test".into(),
            SiteDeployment {
                live: Some(id(20)),
                deployed: Some(id(20)),
                files: Some(12),
                in_sync: true,
                missing_blobs: 0,
                error: None,
            },
        )]),
        dns: Some(DnsReport {
            zones: vec!["example.test".into()],
            serial: 42,
            geoip: true,
            geoip_database: None,
            geo: vec![GeoHealth {
                node: "vector".into(),
                healthy: true,
            }],
            skipped_records: vec!["zone example.test: bad record".into()],
            transports: BTreeMap::from([(
                "udp".into(),
                DnsCounts {
                    queries: 10,
                    dropped: 1,
                    truncated: 2,
                    noerror: 3,
                    formerr: 4,
                    servfail: 5,
                    nxdomain: 6,
                    notimp: 7,
                    refused_or_other: 8,
                },
            )]),
        }),
        http: HttpReport {
            hosts: vec!["example.test".into()],
            sites: BTreeMap::from([(
                "example.test".into(),
                ServedSite {
                    version: Some(id(20)),
                    files: 12,
                    precompressed: 3,
                },
            )]),
            images: None,
            wasm: None,
            ended: None,
            responses: StatusCounts {
                informational: 0,
                success: 10,
                redirection: 1,
                client_error: 2,
                server_error: 0,
            },
        },
        acme: Some(AcmeReport {
            directory: Some("https://localhost:14000/dir".into()),
            challenge: Some("http-01".into()),
            orderer: true,
            ordering: None,
            due: vec![DueCertificate {
                certificate: "example.test".into(),
                domain: "example.test".into(),
                names: vec!["example.test".into(), "www.example.test".into()],
                limited_until_millis: None,
            }],
            failures: vec![OrderFailure {
                certificate: "example.test".into(),
                failures: 1,
                error: "no route to host".into(),
                retry_in_secs: 300,
                ca_unreached: false,
                node: None,
            }],
            certificates: BTreeMap::from([(
                "example.test".into(),
                CertificateEntry {
                    domain: "example.test".into(),
                    names: vec!["example.test".into()],
                    issuer: "Pebble Intermediate CA".into(),
                    not_after_millis: 1_800_000_000_000,
                    chain_pem: "-----BEGIN CERTIFICATE-----".into(),
                    key: makiatto_events::SealedValue::withheld(),
                    key_sealed_to: 3,
                    event: id(21),
                    at: hlc(),
                },
            )]),
            limited: BTreeMap::new(),
        }),
        daemon: None,
        clock_ahead_of_peers_ms: None,
        held_ahead_of_clock: 0,
        own_feed: None,
        telemetry: None,
    }
}

fn hex_of(b: u8) -> String {
    hex::encode([b; 32])
}

/// Every answer, as its operation's output (or an error).
fn answers() -> Vec<(&'static str, Answer)> {
    fn ok<T: Serialize>(v: T) -> Answer {
        Answer::of::<T>(Ok(v))
    }
    vec![
        ("answer hello", ok(client())),
        (
            "answer append",
            ok(vec![
                AppendResult {
                    id: Some(id(1)),
                    outcome: Outcome::Stored,
                    fork: false,
                    error: None,
                    reason: None,
                },
                AppendResult {
                    id: Some(id(2)),
                    outcome: Outcome::Duplicate,
                    fork: false,
                    error: Some("already stored".into()),
                    reason: None,
                },
                AppendResult {
                    id: None,
                    outcome: Outcome::Rejected,
                    fork: false,
                    error: Some("bad signature".into()),
                    reason: Some(Refusal::Invalid),
                },
            ]),
        ),
        (
            "answer log",
            ok(vec![LogLine {
                id: hex_of(1),
                author: "alice".into(),
                author_key: hex_of(2),
                role: Some("operator".into()),
                seq: 1,
                time: "2025-10-09T08:53:20.000Z".into(),
                hlc: "1760000000000.2".into(),
                kind: "genesis".into(),
                summary: "cluster test".into(),
                verified: true,
                applied: true,
                status: "applied".into(),
                reason: None,
                fork: false,
            }]),
        ),
        (
            "answer show",
            ok(Shown {
                projection: ProjectionName::Roles,
                fingerprint: hash(6),
                state: serde_json::json!({"operators": {}}),
            }),
        ),
        (
            "answer verify",
            ok(VerifyReport {
                events: 3,
                problems: vec!["projection zones: no stored copy".into()],
                fingerprints: vec![("peers".into(), hex_of(7))],
            }),
        ),
        (
            "answer status",
            ok(Status {
                cluster: Some(id(8)),
                events: 3,
                waiting_for_predecessor: 1,
                waiting_for_causal_past: 2,
                authors: 2,
                rejected: Rejections {
                    invalid: 1,
                    duplicate: 2,
                    chain_mismatch: 3,
                    foreign_cluster: 4,
                    wait_buffer_full: 5,
                    ahead_of_clock: 0,
                },
                held_ahead_of_clock: 0,
                held_ahead_of_clock_total: 0,
                clock: None,
            }),
        ),
        ("answer version-vector", ok(vv())),
        ("answer missing", ok(vec!["00ff".to_owned()])),
        ("answer heads", ok(vec![Head::new(id(9), hlc())])),
        ("answer feed", ok(Some("00ff".to_owned()))),
        ("answer feed none", ok(None::<String>)),
        ("answer config-changes", ok(vec!["0a0b".to_owned()])),
        ("answer health", ok(health())),
        ("answer manifest-put", ok(ManifestStored { stored: 12 })),
        ("answer blobs-missing", ok(vec![hash(3)])),
        (
            "answer blobs-put",
            ok(Received {
                stored: 1,
                already_present: 2,
                bytes: 3,
                refused: vec!["hash mismatch".into()],
            }),
        ),
        ("answer blobs-arrived", ok(1u64)),
        (
            "answer error",
            Answer::Error(ControlError::new(
                ErrorCode::Unsupported,
                "this node runs makiatto 0.2.0 (control protocol 2)",
            )),
        ),
    ]
}

/// What `makiatto` commands print and `maki` reads over SSH.
fn outputs() -> Vec<(&'static str, String)> {
    let status = NodeStatus {
        status: Status {
            cluster: Some(id(8)),
            events: 3,
            ..Status::default()
        },
        daemon_pid: Some(100),
        supervisor_pid: Some(99),
        running: true,
        geoip: None,
    };
    let identity = NodeIdentity {
        signing_key: AuthorKey([1; 32]),
        sealing_key: SealingKey([2; 32]),
        wg_public_key: WgPublicKey([3; 32]),
    };
    vec![
        ("output status", line(&status)),
        ("output keys", line(&identity)),
    ]
}

fn line<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap()
}

/// Every message of this build, as the fixture lists them.
fn current() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, request) in requests() {
        let envelope = Envelope {
            request,
            client: Some(client()),
        };
        out.push((format!("request {name}"), envelope.to_line().unwrap()));
    }
    for (name, answer) in answers() {
        out.push((name.to_owned(), answer.to_line()));
    }
    for (name, output) in outputs() {
        out.push((name.to_owned(), output));
    }
    for (name, line) in added() {
        out.push((name.to_owned(), line.to_line()));
    }
    out
}

/// A message added after the fixture was first written.
enum Line {
    Request(Request),
    Answer(Answer),
    Status(Box<NodeStatus>),
}

impl Line {
    fn to_line(&self) -> String {
        match self {
            Line::Request(r) => Envelope {
                request: r.clone(),
                client: Some(client()),
            }
            .to_line()
            .unwrap(),
            Line::Answer(a) => a.to_line(),
            Line::Status(s) => line(s.as_ref()),
        }
    }

    /// Reads `text` back as this kind of message and compares.
    fn reads_back(&self, name: &str, text: &str) {
        match self {
            Line::Request(r) => {
                let envelope: Envelope = serde_json::from_str(text).unwrap();
                assert_eq!(&envelope.request, r, "{name}");
                assert_eq!(envelope.client, Some(client()), "{name}");
            }
            Line::Answer(a) => assert_eq!(&Answer::from_line(text).unwrap(), a, "{name}"),
            Line::Status(s) => round_trip(s.as_ref(), text),
        }
    }
}

fn geoip_report() -> GeoIpReport {
    GeoIpReport {
        wanted: Some(hash(30)),
        loaded: Some(GeoIpLoaded {
            manifest: Some(hash(29)),
            built_unix_secs: 1_764_547_200,
            database_type: "DBIP-City-Lite".into(),
            families: vec!["ipv4".into(), "ipv6".into()],
        }),
        problem: Some(
            "fetching the GeoIP database 1e1e1e1e1e1e: 1 of its 2 files not here yet".into(),
        ),
    }
}

/// Messages added since the fixture was first written, in the order
/// they were added: their lines follow the first ones, which never change.
fn added() -> Vec<(&'static str, Line)> {
    let mut with_geoip = health();
    if let Some(dns) = with_geoip.dns.as_mut() {
        dns.geoip_database = Some(geoip_report());
    }
    let status = NodeStatus {
        status: Status {
            cluster: Some(id(8)),
            events: 3,
            ..Status::default()
        },
        daemon_pid: Some(100),
        supervisor_pid: None,
        running: true,
        geoip: Some(GeoIpReport {
            wanted: None,
            loaded: None,
            problem: Some("no GeoIP database".into()),
        }),
    };
    let mut with_daemon = health();
    with_daemon.daemon = Some(DaemonInfo {
        pid: 100,
        started_unix_millis: 1_760_000_001_000,
        software: "0.3.0".into(),
        exe_inode: 1234,
        sockets: 9,
        last_handover: Some(HandoverRecord {
            at_unix_millis: 1_760_000_000_500,
            from: "0.2.0".into(),
            to: "0.3.0".into(),
            outcome: "done".into(),
        }),
    });
    vec![
        (
            "answer health with geoip",
            Line::Answer(Answer::of::<HealthReport>(Ok(with_geoip))),
        ),
        ("output status with geoip", Line::Status(Box::new(status))),
        (
            "request probe",
            Line::Request(
                op::ProbeCluster {
                    subnets: vec!["81.2.69.0/24".into()],
                }
                .into(),
            ),
        ),
        ("request clock", Line::Request(op::Clock {}.into())),
        (
            "answer probe",
            Line::Answer(Answer::of::<ProbeReport>(Ok(probe_report()))),
        ),
        (
            "answer clock",
            Line::Answer(Answer::of::<ClockReading>(Ok(ClockReading {
                unix_millis: 1_760_000_000_123,
            }))),
        ),
        (
            "request handover",
            Line::Request(
                op::Handover {
                    binary: Some("/usr/local/bin/makiatto".into()),
                }
                .into(),
            ),
        ),
        (
            "answer handover",
            Line::Answer(Answer::of::<HandoverStarted>(Ok(HandoverStarted {
                pid: 100,
                from: "0.2.0".into(),
                from_started_unix_millis: 1_760_000_000_000,
                binary: "/usr/local/bin/makiatto".into(),
                to: "0.3.0".into(),
            }))),
        ),
        (
            "answer health with daemon",
            Line::Answer(Answer::of::<HealthReport>(Ok(with_daemon))),
        ),
    ]
}

fn probe_report() -> ProbeReport {
    ProbeReport {
        node: Some("vector".into()),
        view: vec!["klukai".into(), "vector".into()],
        local: LocalReport {
            disk: Some(Space {
                free_bytes: 10 << 30,
                total_bytes: 100 << 30,
            }),
            memory: Some(Space {
                free_bytes: 1 << 30,
                total_bytes: 2 << 30,
            }),
            blobs: BTreeMap::from([(
                "example.test".into(),
                VersionBlobs {
                    version: Some(id(20)),
                    files: 12,
                    missing: 1,
                    missing_paths: vec!["index.html".into()],
                    error: None,
                },
            )]),
        },
        targets: vec![TargetReport {
            node: "klukai".into(),
            dns: vec![DnsCheck {
                zone: "example.test".into(),
                address: "203.0.113.3".into(),
                serial: Some(42),
                authoritative: true,
                rtt_ms: Some(1),
                error: None,
                geo: BTreeMap::from([("81.2.69.0/24".into(), vec!["203.0.113.2".into()])]),
            }],
            https: vec![HttpsCheck {
                name: "example.test".into(),
                address: "203.0.113.3".into(),
                status: Some(200),
                certificate: Some(SeenCertificate {
                    not_before_unix_secs: 1_760_000_000,
                    not_after_unix_secs: 1_767_776_000,
                    issuer: "Pebble Intermediate CA".into(),
                    names: vec!["example.test".into()],
                    covers: true,
                    issued: true,
                    issued_exists: true,
                }),
                rtt_ms: Some(3),
                error: None,
            }],
        }],
    }
}

fn read_fixture(path: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, json) = l.split_once('\t').expect("name<TAB>json");
            (name.to_owned(), json.to_owned())
        })
        .collect()
}

#[test]
fn every_message_has_the_wire_form_of_the_fixture() {
    let current = current();
    if !std::path::Path::new(FIXTURE).exists() {
        assert!(
            std::env::var_os(BLESS_VAR).is_some(),
            "{FIXTURE} is missing: run with {BLESS_VAR}=1 once to write it"
        );
        let mut text = String::from(
            "# The control protocol's wire form (protocol/tests/golden.rs): never edit a line.\n",
        );
        for (name, json) in &current {
            text.push_str(&format!("{name}\t{json}\n"));
        }
        std::fs::write(FIXTURE, text).unwrap();
    }
    let fixture = read_fixture(FIXTURE);
    let names: Vec<&String> = current.iter().map(|(n, _)| n).collect();
    let fixed: Vec<&String> = fixture.iter().map(|(n, _)| n).collect();
    assert_eq!(names, fixed, "every message kind has one fixture line");
    for ((name, ours), (_, theirs)) in current.iter().zip(&fixture) {
        assert_eq!(ours, theirs, "{name}: the wire form changed");
    }
    // Every request kind is covered.
    let added_requests = added()
        .iter()
        .filter(|(_, l)| matches!(l, Line::Request(_)))
        .count();
    assert_eq!(requests().len() + added_requests, Request::OPS.len());
}

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &T, line: &str) {
    let back: T = serde_json::from_str(line).unwrap();
    assert_eq!(&back, value);
}

#[test]
fn every_fixture_line_reads_back_as_its_value() {
    let fixture: BTreeMap<String, String> = read_fixture(FIXTURE).into_iter().collect();
    for (name, request) in requests() {
        let line = &fixture[&format!("request {name}")];
        let envelope: Envelope = serde_json::from_str(line).unwrap();
        assert_eq!(envelope.request, request, "{name}");
        assert_eq!(envelope.client, Some(client()));
    }
    for (name, answer) in answers() {
        assert_eq!(Answer::from_line(&fixture[name]).unwrap(), answer, "{name}");
    }
    let health: HealthReport = Answer::from_line(&fixture["answer health"])
        .unwrap()
        .decode()
        .unwrap();
    // Sealed keys never cross the wire: the certificate's key reads back
    // withheld, everything else as it was.
    assert_eq!(health, self::health());
    let outputs: BTreeMap<&str, String> = outputs().into_iter().collect();
    let status: NodeStatus = serde_json::from_str(&outputs["output status"]).unwrap();
    round_trip(&status, &fixture["output status"]);
    let identity: NodeIdentity = serde_json::from_str(&outputs["output keys"]).unwrap();
    round_trip(&identity, &fixture["output keys"]);
    for (name, line) in added() {
        line.reads_back(name, &fixture[name]);
    }
}

#[test]
fn protocol_one_lines_still_read() {
    let legacy: BTreeMap<String, String> = read_fixture(LEGACY).into_iter().collect();
    // Its requests (no envelope) read as requests without a client.
    for (name, line) in legacy.iter().filter(|(n, _)| n.starts_with("request ")) {
        let envelope: Envelope =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(envelope.client, None, "{name}");
        assert_eq!(
            format!("request {}", envelope.request.op()),
            *name,
            "{name}"
        );
    }
    // Its answers read as this build's types, through a client session
    // that learned from the hello that it talks to protocol 1.
    let mut batch = Batch::new();
    let append = batch.push(op::Append { events: vec![] });
    let heads = batch.push(op::Heads {});
    let status = batch.push(op::GetStatus {});
    let health = batch.push(op::Health {});
    let show = batch.push(op::Show {
        name: ProjectionName::Peers,
        at: None,
    });
    let missing = batch.push(op::BlobsMissing { hashes: vec![] });
    let put = batch.push(op::BlobsPut { blobs: vec![] });
    let lines: Vec<String> = [
        "answer hello",
        "answer append",
        "answer heads",
        "answer status",
        "answer health",
        "answer show",
        "answer blobs-missing",
        "answer blobs-put",
    ]
    .iter()
    .map(|n| legacy[*n].clone())
    .collect();
    let mut answers = client::read(&batch, None, &lines).unwrap();
    assert_eq!(answers.daemon(), &Version::legacy());
    let appended = answers.take(append).unwrap();
    assert_eq!(appended[0].outcome, Outcome::Stored);
    assert_eq!(
        appended[1].outcome,
        Outcome::Duplicate,
        "read from its words"
    );
    assert_eq!(appended[2].outcome, Outcome::Rejected);
    assert_eq!(answers.take(heads).unwrap().len(), 1);
    assert_eq!(answers.take(status).unwrap().events, 5);
    let h = answers.take(health).unwrap();
    assert_eq!(h.peers[0].name, "klukai");
    assert_eq!(h.sites["example.test"].files, Some(12));
    assert_eq!(
        answers.take(show).unwrap().projection,
        ProjectionName::Peers
    );
    assert_eq!(answers.take(missing).unwrap(), vec![hash(3)]);
    assert_eq!(answers.take(put).unwrap().stored, 1);
}

#[test]
fn a_blob_request_to_an_unknown_daemon_is_the_bare_form_protocol_one_reads() {
    // Protocol 1 refused unknown fields in blob requests.
    let legacy: BTreeMap<String, String> = read_fixture(LEGACY).into_iter().collect();
    let mut batch = Batch::new();
    batch.push(op::BlobsMissing {
        hashes: vec![hash(3), hash(4)],
    });
    let lines = client::lines(&batch, Some(&Version::legacy())).unwrap();
    let ours: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    let theirs: serde_json::Value = serde_json::from_str(&legacy["request blobs-missing"]).unwrap();
    assert_eq!(ours, theirs);
}
