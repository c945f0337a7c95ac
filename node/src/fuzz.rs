//! Entry points of the coverage-guided fuzz targets (`node/fuzz/`): each
//! takes arbitrary bytes, drives one of the daemon's parsers with them the
//! way the servers do, and panics when an invariant breaks — a panic is
//! what the fuzzer reports as a crash. The suite replays every seed corpus
//! and a bounded run of seeded mutations through them
//! (`node/tests/fuzz_corpora.rs`).
//!
//! - [`dns_message`]: a DNS message through `dns::wire` and
//!   `dns::answer::respond` over fixed zones: a reply, when one is due,
//!   parses, carries the query's id, and fits the client's limit (512
//!   bytes, 1232 with EDNS; 65,535 over TCP).
//! - [`http_request`]: an HTTP/1.1 request head through `httparse` (the
//!   parser hyper uses) and the request decisions and router
//!   (`http::request`, `http::routes`): a path either is refused or names
//!   a manifest key with no `.`/`..` segment, no `\`, NUL or control
//!   character; ranges stay inside the representation.
//! - [`event`]: event bytes through decoding and verification, and the
//!   log's admission; manifest bytes through their decoder.
//! - [`frames`]: a mesh frame and a heartbeat datagram through their codec.
//! - [`session`]: a peer's frames fed to the replication session's state
//!   machine.
//! - [`control`]: a control request line as the daemon reads it, an
//!   answer line as `maki` reads it.
//! - [`record`]: a custom DNS record through the one parser of record
//!   data.
//! - [`image_params`]: an image request's query and `Accept` through
//!   `images::params` (parse, resolve) and `images::geometry::plan` over a
//!   source size: the output is at least 1×1 and never past the cluster's
//!   limit, the resized image sits inside it, the source region inside the
//!   source.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use makiatto_events::{DomainName, NodeName};
use makiatto_projections::zones::{Caa, GeoCandidate, Nameserver, RecordView, Soa, Zone, Zones};

use crate::dns::answer::{Client, respond};
use crate::dns::geo::Located;
use crate::dns::zone::{Compiled, compile};
use crate::http::request::{self, Coding, Ranged, Target};
use crate::http::routes::{Routes, wildcard_of};

/// The zones every DNS case is answered from: three nodes, aliases, every
/// kind of custom record, a delegation, a wildcard, an ACME TXT.
fn compiled() -> &'static Compiled {
    static COMPILED: OnceLock<Compiled> = OnceLock::new();
    COMPILED.get_or_init(|| compile(&zones()))
}

fn zones() -> Zones {
    let apex = "example.test";
    let nodes = [
        ("klukai", 35.67, 139.65, 2u8),
        ("tololo", -23.55, -46.63, 3),
        ("vector", 51.50, -0.12, 1),
    ];
    let record = |rtype: &str, name: &str, value: &str, priority: Option<u16>| RecordView {
        rtype: rtype.into(),
        name: name.into(),
        value: value.into(),
        ttl: 300,
        priority,
    };
    let name = |n: &str| NodeName::new(n).unwrap_or_else(|_| unreachable!("a fixed node name"));
    let zone = Zone {
        serial: 1_700_000_000,
        soa: Soa {
            mname: format!("klukai.ns.{apex}"),
            rname: format!("hostmaster.{apex}"),
            refresh: 7200,
            retry: 3600,
            expire: 1_209_600,
            minimum: 300,
            ttl: 3600,
        },
        nameservers: nodes
            .iter()
            .map(|(n, _, _, i)| Nameserver {
                name: format!("{n}.ns.{apex}"),
                node: name(n),
                ipv4: Some(Ipv4Addr::new(203, 0, 113, *i)),
                ipv6: Some(
                    format!("2001:db8::{i}")
                        .parse()
                        .unwrap_or(std::net::Ipv6Addr::LOCALHOST),
                ),
            })
            .collect(),
        geo: nodes
            .iter()
            .map(|(n, lat, lon, i)| GeoCandidate {
                node: name(n),
                ipv4: Some(Ipv4Addr::new(203, 0, 113, *i)),
                ipv6: None,
                lat_e6: (lat * 1e6) as i32,
                lon_e6: (lon * 1e6) as i32,
            })
            .collect(),
        geo_ttl: 60,
        nearest: 2,
        aliases: vec![format!("www.{apex}"), format!("*.shop.{apex}")],
        caa: vec![Caa {
            flags: 0,
            tag: "issue".into(),
            value: "letsencrypt.org".into(),
        }],
        records: vec![
            record("MX", "@", "mail.example.test", Some(10)),
            record("A", "mail", "192.0.2.25", None),
            record("AAAA", "mail", "2001:db8::25", None),
            record("TXT", "@", "v=spf1 mx -all", None),
            record("TXT", "long", &"x".repeat(255), None),
            record("SRV", "_sip._tcp", "5 5060 sip.example.test", Some(1)),
            record("CNAME", "blog", "www.example.test", None),
            record("CNAME", "loop", "loop2.example.test", None),
            record("CNAME", "loop2", "loop.example.test", None),
            record("NS", "sub", "ns1.sub.example.test", None),
            record("A", "ns1.sub", "192.0.2.53", None),
            record("A", "*.wild", "192.0.2.80", None),
        ],
        acme_txt: vec![(
            "_acme-challenge.www.example.test".into(),
            "dns-01-value".into(),
        )],
    };
    let domain = DomainName::new(apex).unwrap_or_else(|_| unreachable!("a fixed domain"));
    Zones {
        zones: [(domain, zone)].into_iter().collect(),
    }
}

/// A DNS message as a server receives it. The first byte picks the
/// transport (bit 0: TCP) and the health mask (the rest); the others are
/// the message.
pub fn dns_message(data: &[u8]) {
    let Some((&how, msg)) = data.split_first() else {
        return;
    };
    let tcp = how & 1 == 1;
    let alive = u64::from(how >> 1);
    let mut locate = |ip: IpAddr| Located {
        coords: match ip {
            IpAddr::V4(v4) if v4.octets()[0] < 128 => Some((48.85, 2.35)),
            IpAddr::V4(_) => Some((-22.9, -43.17)),
            IpAddr::V6(_) => None,
        },
        prefix: 24,
    };
    let mut client = Client {
        src: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
        tcp,
        alive,
        locate: &mut locate,
        geo: None,
    };
    let mut out = Vec::new();
    if !respond(compiled(), msg, &mut client, &mut out) {
        return;
    }
    assert!(out.len() >= 12, "a reply shorter than a header");
    assert_eq!(
        out[..2],
        msg[..2],
        "the reply does not carry the query's id"
    );
    let reply = hickory_proto::op::Message::from_vec(&out)
        .unwrap_or_else(|e| panic!("the reply does not parse: {e}"));
    let limit = if tcp {
        usize::from(u16::MAX)
    } else if reply.edns.is_some() {
        1232
    } else {
        512
    };
    assert!(
        out.len() <= limit,
        "a reply of {} bytes over {limit}",
        out.len()
    );
}

/// The routes of three sites: one plain, one with an alias, one wildcard.
fn routes() -> &'static Routes {
    static ROUTES: OnceLock<Routes> = OnceLock::new();
    ROUTES.get_or_init(|| {
        let domains = [
            (
                "example.test".to_owned(),
                vec!["www.example.test".to_owned()],
            ),
            ("shop.test".to_owned(), vec!["*.shop.test".to_owned()]),
            ("blog.test".to_owned(), Vec::new()),
        ]
        .into_iter()
        .collect();
        Routes::build(&domains, std::collections::HashMap::new())
    })
}

/// An HTTP/1.1 request head (what a connection's first bytes would be).
pub fn http_request(data: &[u8]) {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(data), Ok(httparse::Status::Complete(_))) {
        return;
    }
    let Some(uri) = req.path else { return };
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    // The host names a route, or none; a wildcard covers one label.
    if let Some(host) = header("host") {
        let host = host
            .split(':')
            .next()
            .unwrap_or("")
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let _ = routes().get(&host);
        if let Some(w) = wildcard_of(&host) {
            assert!(w.starts_with("*.") && w.len() < host.len() + 2);
        }
    }
    let path = uri.split('?').next().unwrap_or("");
    match request::target(path) {
        Ok(Target::File { key, .. }) => {
            for seg in key.split('/') {
                assert!(
                    seg != "." && seg != "..",
                    "a dot segment reached a lookup: {key:?}"
                );
                assert!(
                    !seg.chars().any(|c| c == '\\' || c.is_control()),
                    "a backslash or control character reached a lookup: {key:?}"
                );
            }
            assert!(!key.starts_with('/'), "an absolute key: {key:?}");
        }
        Err(_) => {}
    }
    let codings = Coding::ALL;
    if let Some(c) = request::choose_coding(header("accept-encoding"), &codings) {
        assert!(codings.contains(&c));
    }
    if let Some(h) = header("if-none-match") {
        let _ = request::none_match(h, "\"0123456789abcdef0123456789abcdef\"");
    }
    let modified = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    if let Some(h) = header("if-modified-since") {
        let _ = request::not_modified_since(h, modified);
    }
    for len in [0u64, 1, 1000] {
        match request::range(header("range"), header("if-range"), "\"e\"", modified, len) {
            Ranged::Part(a, b) => assert!(a <= b && b < len, "range {a}-{b} of {len}"),
            Ranged::Full | Ranged::Unsatisfiable => {}
        }
    }
}

/// Bytes that claim to be an event (from a peer or `maki`): decoding
/// verifies size, canonical form, header rules and the signature; an event
/// that decodes re-encodes to the same bytes and is named by their hash,
/// and the log's admission judges it without a panic.
pub fn event(data: &[u8]) {
    use makiatto_core::{Log, MemoryBackend};
    use makiatto_events::Event;
    if let Ok(e) = Event::decode(data) {
        assert_eq!(e.to_bytes(), data, "a decoded event re-encodes otherwise");
        assert_eq!(
            e.id(),
            makiatto_events::EventId::of(data),
            "an event's id is not its hash"
        );
    }
    if let Ok(mut log) = Log::open(MemoryBackend::default()) {
        let _ = log.append_bytes(&[data.to_vec()]);
    }
    // A manifest, as a blob named by an event or sent by a peer.
    if let Ok(m) = makiatto_events::Manifest::decode(data) {
        for path in m.files.keys() {
            assert!(
                !path
                    .split('/')
                    .any(|s| s.is_empty() || s == "." || s == ".."),
                "a manifest path escapes its site: {path:?}"
            );
        }
    }
}

/// The frames of a mesh connection, and a heartbeat datagram: a frame
/// that decodes re-encodes to bytes that decode to it again.
pub fn frames(data: &[u8]) {
    use makiatto_core::replication::{Heartbeat, frame};
    if let Ok((f, _)) = frame::decode(data) {
        let mut wire = Vec::new();
        if frame::encode(&f, &mut wire).is_ok() {
            let again = frame::decode(&wire[4..]).map(|(f, _)| f);
            assert!(
                again.is_ok_and(|g| g == f),
                "a frame does not survive its own encoding"
            );
        }
    }
    let _ = Heartbeat::decode_with_clock(data);
    if data.len() >= 4 {
        let _ = frame::body_len([data[0], data[1], data[2], data[3]]);
    }
}

/// A session as a peer would run it: the input is a sequence of frames
/// (each a 2-byte length, then the body), the first taken as the peer's
/// hello (made to name this cluster and the peer when the first byte is
/// even, so the fuzzer gets past the gate), the rest fed to the session
/// state machine while this node's side steps along. Errors end it;
/// nothing may panic or loop.
pub fn session(data: &[u8]) {
    use makiatto_core::VersionVector;
    use makiatto_core::replication::frame::{self, Features, Frame};
    use makiatto_core::replication::{Handshake, Identity, Member, Step};
    use makiatto_events::{EventId, SigningKey, WgPublicKey};
    let Some((&how, mut rest)) = data.split_first() else {
        return;
    };
    let cluster = EventId::of(b"fuzz cluster");
    let me = SigningKey::from_bytes(&[1; 32]).public();
    let peer = Member {
        name: NodeName::new("peer").unwrap_or_else(|_| unreachable!("a fixed node name")),
        key: SigningKey::from_bytes(&[2; 32]).public(),
        mesh: Ipv4Addr::new(198, 51, 100, 2),
        wg: WgPublicKey([2; 32]),
    };
    let mut next = || -> Option<(Frame, Features)> {
        if rest.len() < 2 {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let body = &rest[2..2 + len];
        rest = &rest[2 + len..];
        frame::decode(body).ok()
    };
    let Some((mut first, features)) = next() else {
        return;
    };
    if how % 2 == 0
        && let Frame::Hello(h) = &mut first
    {
        h.cluster = cluster;
        h.node = peer.key;
    }
    let handshake = Handshake::new(
        Identity { cluster, node: me },
        peer,
        VersionVector::default(),
        Features::OURS,
    );
    let Ok(mut session) = handshake.on_hello(first, features) else {
        return;
    };
    for _ in 0..10_000 {
        match session.outbound.step() {
            Step::Read(_) => session.outbound.read(Vec::new(), None),
            Step::Finished => break,
            Step::Send(_) | Step::SendAhead | Step::SendBlobsAhead => {}
        }
    }
    while let Some((f, _)) = next() {
        if session.inbound.on_frame(f).is_err() || session.inbound.is_done() {
            break;
        }
    }
}

/// A control request line as the daemon reads it, and an answer line as
/// `maki` reads it.
pub fn control(data: &[u8]) {
    let _ = crate::control::read_request(data);
    if let Ok(line) = std::str::from_utf8(data) {
        if let Ok(answer) = makiatto_protocol::Answer::from_line(line) {
            let _ = answer.decode::<makiatto_protocol::health::HealthReport>();
        }
        let mut batch = makiatto_protocol::client::Batch::new();
        batch.push(makiatto_protocol::request::Heads {});
        let lines: Vec<String> = line.lines().map(str::to_owned).collect();
        let _ = makiatto_protocol::client::read(&batch, None, &lines);
    }
}

/// A custom DNS record as `makiatto.toml` gives it (type, name, value,
/// one per line), through the one parser of record data.
pub fn record(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut fields = text.splitn(3, '\n');
    let (rtype, name, value) = (
        fields.next().unwrap_or(""),
        fields.next().unwrap_or(""),
        fields.next().unwrap_or(""),
    );
    let _ = makiatto_projections::record::Record::parse(
        "example.test",
        &makiatto_projections::record::RecordText {
            rtype,
            name,
            value,
            ttl: Some(300),
            priority: Some(10),
        },
    );
}

/// The output limit the image cases are parsed against.
const IMAGE_MAX_OUTPUT: u32 = 4096;

/// An image request: two bytes of source width, two of height, one of the
/// source's kind, then the query string and, after a newline, `Accept`.
pub fn image_params(data: &[u8]) {
    use crate::images::geometry::{Size, plan};
    use crate::images::params::{Params, SourceKind};
    let [w0, w1, h0, h1, kind, rest @ ..] = data else {
        return;
    };
    let source = Size {
        w: u32::from(u16::from_le_bytes([*w0, *w1])).max(1),
        h: u32::from(u16::from_le_bytes([*h0, *h1])).max(1),
    };
    let kind = [
        SourceKind::Jpeg,
        SourceKind::Png,
        SourceKind::Webp,
        SourceKind::Gif,
    ][usize::from(*kind % 4)];
    let text = String::from_utf8_lossy(rest);
    let (query, accept) = text.split_once('\n').unwrap_or((&text, ""));
    let Ok(Some(params)) = Params::parse(query, IMAGE_MAX_OUTPUT) else {
        return;
    };
    let accept = (!accept.is_empty()).then_some(accept);
    let Ok(spec) = params.resolve(kind, accept, IMAGE_MAX_OUTPUT) else {
        return;
    };
    assert!(
        spec.width
            .is_none_or(|w| (1..=IMAGE_MAX_OUTPUT).contains(&w))
    );
    assert!(
        spec.height
            .is_none_or(|h| (1..=IMAGE_MAX_OUTPUT).contains(&h))
    );
    let p = plan(source, &spec, IMAGE_MAX_OUTPUT);
    let within = |s: Size| s.w >= 1 && s.h >= 1;
    assert!(within(p.canvas) && within(p.resized), "{p:?}");
    assert!(
        p.canvas.w <= IMAGE_MAX_OUTPUT.max(source.w)
            && p.canvas.h <= IMAGE_MAX_OUTPUT.max(source.h),
        "{p:?} for {source:?}"
    );
    assert!(
        u64::from(p.offset.0) + u64::from(p.resized.w) <= u64::from(p.canvas.w)
            && u64::from(p.offset.1) + u64::from(p.resized.h) <= u64::from(p.canvas.h),
        "{p:?}"
    );
    let r = p.region;
    let eps = 1e-6;
    assert!(
        r.x >= -eps
            && r.y >= -eps
            && r.w > 0.0
            && r.h > 0.0
            && r.x + r.w <= f64::from(source.w) + eps
            && r.y + r.h <= f64::from(source.h) + eps,
        "{p:?} for {source:?}"
    );
    assert!([1, 2, 4, 8].contains(&p.shrink_on_load()));
}
