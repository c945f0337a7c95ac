//! The answer to one query: which records go in which section, with which
//! rcode and flags. A pure function of the compiled zones, the query, the
//! client's location (asked for only when a geo answer needs it) and the
//! health mask; the transports (`server`) only move bytes.
//!
//! Behaviour (RFC 1034/1035, 2308, 6891, 7871, 8020, 8482, 8914):
//! - a name outside every zone: REFUSED, no AA, EDE 20 (not authoritative);
//! - a name that does not exist: NXDOMAIN, AA, the SOA in authority with
//!   TTL min(SOA TTL, MINIMUM); an empty non-terminal: NODATA;
//! - a name without the type: NODATA (NOERROR, AA, SOA in authority);
//! - a CNAME: answered, and followed inside our zones (up to 8 links);
//! - at or below a delegation: a referral (NS in authority, glue, no AA);
//! - ANY: one synthesized HINFO "RFC8482" (RFC 8482 §4.2);
//! - MX and SRV: the addresses of targets we hold in additional, when
//!   they fit;
//! - a name that does not exist below an existing name that has a `*`
//!   child: that wildcard's records, owned by the asked name (RFC 4592);
//! - the apex and in-zone aliases: A/AAAA of the nearest healthy nodes,
//!   with the ECS scope of the database network that placed the client;
//! - an answer larger than the client's buffer: TC with the question only;
//! - AXFR/IXFR: REFUSED (EDE 18, prohibited); classes other than IN/ANY:
//!   REFUSED; other opcodes: NOTIMP; unreadable messages: FORMERR, or no
//!   reply at all when not even a header could be read.

use std::net::IpAddr;

use super::geo::{self, Located};
use super::wire::{self, ADDITIONAL, AUTHORITY, Query, Read, Response, ResponseOpt, rcode, rtype};
use super::zone::{Compiled, NameData, Rrset};

/// Extended DNS Error codes used here (RFC 8914).
const EDE_PROHIBITED: u16 = 18;
const EDE_NOT_AUTHORITATIVE: u16 = 20;
/// Longest CNAME chain followed.
const MAX_CHAIN: usize = 8;

/// What the answer may depend on besides the query.
pub struct Client<'a> {
    /// The address the query came from (a resolver, usually).
    pub src: IpAddr,
    pub tcp: bool,
    /// Bit i set when `geo[i]` is healthy.
    pub alive: u64,
    /// Looks an address up in the GeoIP database.
    pub locate: &'a mut dyn FnMut(IpAddr) -> Located,
    /// Set by a geo answer: how it chose (for telemetry; reset by the
    /// caller per query).
    pub geo: Option<GeoChoice>,
}

/// How a geo answer chose its node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeoChoice {
    /// The first node answered (index into `Compiled::geo`).
    pub node: u8,
    /// Where the client was placed, if it was.
    pub client: Option<(f64, f64)>,
    /// Placed by its EDNS Client Subnet (else by the source address).
    pub ecs: bool,
}

/// Writes the response to `msg` into `out`; false when no reply is due.
pub fn respond(c: &Compiled, msg: &[u8], client: &mut Client<'_>, out: &mut Vec<u8>) -> bool {
    let q = match wire::read(msg) {
        Read::Drop => return false,
        Read::Error {
            id,
            flags,
            rcode,
            question,
            edns,
        } => {
            let r = Response::start(out, id, flags, question);
            r.finish(
                rcode,
                edns.map(|e| ResponseOpt {
                    dnssec_ok: e.dnssec_ok,
                    ..ResponseOpt::default()
                }),
            );
            return true;
        }
        Read::Query(q) => q,
    };
    let mut opt = q.edns.map(|e| ResponseOpt {
        dnssec_ok: e.dnssec_ok,
        subnet: e.subnet.map(|s| (s, 0)),
        ede: None,
    });
    let mut r = Response::start(out, q.id, q.flags, Some(q.question));
    let question_end = r.len();
    let code = answer(c, &q, client, &mut r, &mut opt);
    if r.len() + opt_len(&opt) > q.limit(client.tcp) {
        r.truncate(question_end);
    }
    r.finish(code, opt);
    true
}

/// The bytes the OPT record will take.
fn opt_len(opt: &Option<ResponseOpt>) -> usize {
    opt.map_or(0, |o| {
        11 + o
            .subnet
            .map_or(0, |(s, _)| 8 + (s.source_prefix as usize).div_ceil(8))
            + o.ede.map_or(0, |_| 6)
    })
}

fn refuse(opt: &mut Option<ResponseOpt>, ede: u16) -> u16 {
    if let Some(o) = opt {
        o.ede = Some(ede);
        o.subnet = o.subnet.map(|(s, _)| (s, 0));
    }
    rcode::REFUSED
}

fn answer(
    c: &Compiled,
    q: &Query<'_>,
    client: &mut Client<'_>,
    r: &mut Response<'_>,
    opt: &mut Option<ResponseOpt>,
) -> u16 {
    if !q.class_in() {
        return refuse(opt, EDE_NOT_AUTHORITATIVE);
    }
    match q.qtype {
        rtype::AXFR | rtype::IXFR => return refuse(opt, EDE_PROHIBITED),
        rtype::OPT => return rcode::FORMERR,
        _ => {}
    }
    let mut lower = [0u8; 255];
    let n = wire::lowercase_into(q.qname, &mut lower);
    let lower = &lower[..n];
    // The zone: the longest suffix that is an apex.
    let Some((zone, apex_at)) =
        wire::suffixes(lower).find_map(|at| c.apex(&lower[at..]).map(|z| (z, at)))
    else {
        return refuse(opt, EDE_NOT_AUTHORITATIVE);
    };
    // Owner names point into the question: the name as the client spelt it.
    let qname_ptr = [0xC0, 12];
    let apex_ptr = pointer(12 + apex_at);
    match c.name(lower) {
        Some((_, node)) if node.below_cut.is_some() || (node.cut.is_some() && q.qtype != 43) => {
            let cut_at = match &node.below_cut {
                Some(cut) => n - cut.len(),
                None => 0,
            };
            referral(c, lower, cut_at, r)
        }
        Some((_, node)) => {
            r.authoritative();
            answer_at(c, q, node, &qname_ptr, zone, &apex_ptr, client, r, opt, 0)
        }
        None => {
            // The closest existing ancestor (the closest encloser) decides
            // between a referral, a wildcard answer and NXDOMAIN.
            for at in wire::suffixes(lower)
                .skip(1)
                .take_while(|&at| at <= apex_at)
            {
                if let Some((_, anc)) = c.name(&lower[at..]) {
                    if anc.cut.is_some() {
                        return referral(c, lower, at, r);
                    }
                    if let Some(cut) = &anc.below_cut {
                        return referral(c, lower, n - cut.len(), r);
                    }
                    // RFC 4592: `*.<closest encloser>` answers for the
                    // name, with the name as the owner.
                    let mut wild = [0u8; 257];
                    let len = n - at + 2;
                    if len <= 255 {
                        wild[..2].copy_from_slice(b"\x01*");
                        wild[2..len].copy_from_slice(&lower[at..]);
                        if let Some((_, w)) = c.name(&wild[..len]) {
                            r.authoritative();
                            return answer_at(
                                c, q, w, &qname_ptr, zone, &apex_ptr, client, r, opt, 0,
                            );
                        }
                    }
                    break;
                }
            }
            r.authoritative();
            negative(c, zone, &apex_ptr, r);
            rcode::NXDOMAIN
        }
    }
}

fn pointer(offset: usize) -> [u8; 2] {
    [0xC0 | (offset >> 8) as u8, offset as u8]
}

fn negative(c: &Compiled, zone: usize, apex_owner: &[u8], r: &mut Response<'_>) {
    r.section(AUTHORITY);
    let soa = &c.zones[zone].soa_negative;
    r.records(apex_owner, &soa.tails, soa.n);
}

#[allow(clippy::too_many_arguments)]
fn answer_at(
    c: &Compiled,
    q: &Query<'_>,
    node: &NameData,
    owner: &[u8],
    zone: usize,
    apex_owner: &[u8],
    client: &mut Client<'_>,
    r: &mut Response<'_>,
    opt: &mut Option<ResponseOpt>,
    depth: usize,
) -> u16 {
    if q.qtype == rtype::ANY && node.has_data() {
        // RFC 8482 §4.2: one synthesized HINFO instead of everything.
        let mut hinfo = Rrset::default();
        let rdata = [&[7u8][..], b"RFC8482", &[0]].concat();
        hinfo.n = 1;
        hinfo.tails.extend_from_slice(&rtype::HINFO.to_be_bytes());
        hinfo.tails.extend_from_slice(&1u16.to_be_bytes());
        hinfo.tails.extend_from_slice(&3600u32.to_be_bytes());
        hinfo
            .tails
            .extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        hinfo.tails.extend_from_slice(&rdata);
        r.records(owner, &hinfo.tails, 1);
        return rcode::NOERROR;
    }
    if let Some((cname, target)) = &node.cname {
        r.records(owner, &cname.tails, cname.n);
        if q.qtype == rtype::CNAME || depth >= MAX_CHAIN {
            return rcode::NOERROR;
        }
        // Follow the chain when the target is ours; the owner of what
        // follows is the target as the CNAME spells it.
        let target_owner = &cname.tails[10..];
        let Some((tz, t_apex_at)) =
            wire::suffixes(target).find_map(|at| c.apex(&target[at..]).map(|z| (z, at)))
        else {
            return rcode::NOERROR;
        };
        let t_apex_owner = &target_owner[t_apex_at..];
        return match c.name(target) {
            Some((_, t)) if t.below_cut.is_none() && t.cut.is_none() => answer_at(
                c,
                q,
                t,
                target_owner,
                tz,
                t_apex_owner,
                client,
                r,
                opt,
                depth + 1,
            ),
            Some(_) => rcode::NOERROR,
            None => {
                negative(c, tz, t_apex_owner, r);
                rcode::NXDOMAIN
            }
        };
    }
    if node.geo && (q.qtype == rtype::A || q.qtype == rtype::AAAA) {
        let v6 = q.qtype == rtype::AAAA;
        let subnet = q
            .edns
            .and_then(|e| e.subnet)
            .filter(|s| s.source_prefix > 0);
        let located = (client.locate)(subnet.map_or(client.src, |s| s.addr));
        let (chosen, k) = geo::choose(&c.geo, v6, located.coords, client.alive, c.nearest);
        if let Some(o) = opt
            && let Some((_, scope)) = &mut o.subnet
            && subnet.is_some()
        {
            *scope = located.prefix;
        }
        if k == 0 {
            negative(c, zone, apex_owner, r);
            return rcode::NOERROR;
        }
        client.geo = Some(GeoChoice {
            node: chosen[0],
            client: located.coords,
            ecs: subnet.is_some(),
        });
        for &i in &chosen[..k] {
            let g = &c.geo[i as usize];
            if let Some(set) = if v6 { &g.aaaa } else { &g.a } {
                r.records(owner, &set.tails, set.n);
            }
        }
        return rcode::NOERROR;
    }
    match node.rrset(q.qtype) {
        Some(set) => {
            r.records(owner, &set.tails, set.n);
            if q.qtype == rtype::NS && node.glue.n > 0 {
                r.section(ADDITIONAL);
                r.whole(&node.glue.bytes, node.glue.n);
            }
            // Targets' addresses, only when they fit: they are a courtesy,
            // never a reason to truncate.
            if let Some((_, extra)) = node.additional.iter().find(|(t, _)| *t == q.qtype)
                && r.len() + extra.bytes.len() + opt_len(opt) <= q.limit(client.tcp)
            {
                r.section(ADDITIONAL);
                r.whole(&extra.bytes, extra.n);
            }
        }
        None => negative(c, zone, apex_owner, r),
    }
    rcode::NOERROR
}

/// A referral to the delegation at `lower[cut_at..]`: its NS set in
/// authority (owner pointing into the question), glue we hold in additional.
fn referral(c: &Compiled, lower: &[u8], cut_at: usize, r: &mut Response<'_>) -> u16 {
    let Some((_, cut)) = c.name(&lower[cut_at..]) else {
        return rcode::SERVFAIL;
    };
    let Some(ns) = &cut.cut else {
        return rcode::SERVFAIL;
    };
    r.section(AUTHORITY);
    r.records(&pointer(12 + cut_at), &ns.tails, ns.n);
    r.section(ADDITIONAL);
    let mut rest = &ns.tails[..];
    while rest.len() >= 10 {
        let len = u16::from_be_bytes([rest[8], rest[9]]) as usize;
        let Some(target) = rest.get(10..10 + len) else {
            break;
        };
        if let Some((_, t)) = c.name(&target.to_ascii_lowercase()) {
            for t_type in [rtype::A, rtype::AAAA] {
                if let Some(set) = t.rrset(t_type) {
                    r.records(target, &set.tails, set.n);
                }
            }
        }
        rest = &rest[10 + len..];
    }
    rcode::NOERROR
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    use hickory_proto::op::{Edns, Message, ResponseCode};
    use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
    use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
    use makiatto_events::{DomainName, NodeName};
    use makiatto_projections::zones::{
        Caa, GeoCandidate, Nameserver, RecordView, Soa, Zone, Zones,
    };
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::dns::zone::compile;

    /// Paris, Rio, Tokyo (the nodes stand in London, São Paulo, Tokyo).
    const PARIS: &str = "192.0.2.0";
    const RIO: &str = "198.51.100.0";

    fn record(rtype: &str, name: &str, value: &str, priority: Option<u16>) -> RecordView {
        RecordView {
            rtype: rtype.into(),
            name: name.into(),
            value: value.into(),
            ttl: 300,
            priority,
        }
    }

    fn zones() -> Zones {
        let nodes = [
            ("klukai", 35.6762, 139.6503, 2, true),
            ("tololo", -23.5505, -46.6333, 3, false),
            ("vector", 51.5074, -0.1278, 1, true),
        ];
        let apex = "example.test";
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
                .map(|(n, _, _, i, v6)| Nameserver {
                    name: format!("{n}.ns.{apex}"),
                    node: NodeName::new(*n).unwrap(),
                    ipv4: Some(Ipv4Addr::new(203, 0, 113, *i)),
                    ipv6: v6.then(|| format!("2001:db8::{i}").parse().unwrap()),
                })
                .collect(),
            geo: nodes
                .iter()
                .map(|(n, lat, lon, i, v6)| GeoCandidate {
                    node: NodeName::new(*n).unwrap(),
                    ipv4: Some(Ipv4Addr::new(203, 0, 113, *i)),
                    ipv6: v6.then(|| format!("2001:db8::{i}").parse().unwrap()),
                    lat_e6: (lat * 1e6) as i32,
                    lon_e6: (lon * 1e6) as i32,
                })
                .collect(),
            geo_ttl: 60,
            nearest: 1,
            aliases: vec![format!("www.{apex}")],
            caa: vec![Caa {
                flags: 0,
                tag: "issue".into(),
                value: "letsencrypt.org".into(),
            }],
            records: vec![
                record("MX", "@", "mail.example.test", Some(10)),
                record("A", "mail", "192.0.2.25", None),
                record("TXT", "@", "v=spf1 mx -all", None),
                record("TXT", "_dmarc", "v=DMARC1; p=none", None),
                record("SRV", "_sip._tcp", "5 5060 sip.example.test", Some(1)),
                record("CNAME", "blog", "www.example.test", None),
                record("CNAME", "gone", "nothing.example.test", None),
                record("CNAME", "away", "elsewhere.example.org", None),
                record("NS", "sub", "ns1.sub.example.test", None),
                record("A", "ns1.sub", "192.0.2.53", None),
                record("CAA", "@", "0 iodef \"mailto:sec@example.test\"", None),
            ],
            acme_txt: vec![(
                "_acme-challenge.www.example.test".into(),
                "dns-01-value".into(),
            )],
        };
        Zones {
            zones: BTreeMap::from([(DomainName::new(apex).unwrap(), zone)]),
        }
    }

    fn locate(ip: IpAddr) -> Located {
        let net = match ip {
            IpAddr::V4(v4) => Ipv4Addr::from(u32::from(v4) & 0xFFFF_FF00).to_string(),
            v6 => v6.to_string(),
        };
        let coords = match net.as_str() {
            PARIS => Some((48.8566, 2.3522)),
            RIO => Some((-22.9068, -43.1729)),
            _ => None,
        };
        Located { coords, prefix: 24 }
    }

    fn query(name: &str, rtype: RecordType, ecs: Option<&str>) -> Message {
        let mut m = Message::query();
        m.metadata.id = 4242;
        m.add_query(hickory_proto::op::Query::query(
            Name::from_ascii(name).unwrap(),
            rtype,
        ));
        if let Some(subnet) = ecs {
            let mut e = Edns::new();
            e.set_max_payload(1232);
            e.options_mut()
                .insert(EdnsOption::Subnet(subnet.parse::<ClientSubnet>().unwrap()));
            m.set_edns(e);
        }
        m
    }

    fn ask_bytes(c: &Compiled, bytes: &[u8], alive: u64, tcp: bool) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let mut loc = locate;
        let mut client = Client {
            src: "198.18.0.1".parse().unwrap(),
            tcp,
            alive,
            locate: &mut loc,
            geo: None,
        };
        respond(c, bytes, &mut client, &mut out).then_some(out)
    }

    fn ask(c: &Compiled, m: &Message) -> Message {
        let out = ask_bytes(c, &m.to_vec().unwrap(), u64::MAX, false).expect("a reply");
        Message::from_vec(&out).expect("our response parses")
    }

    fn addrs(m: &Message) -> Vec<String> {
        m.answers.iter().map(|r| r.data.to_string()).collect()
    }

    fn subnet_scope(m: &Message) -> Option<u8> {
        m.edns
            .as_ref()?
            .options()
            .get(hickory_proto::rr::rdata::opt::EdnsCode::Subnet)
            .and_then(|o| match o {
                EdnsOption::Subnet(s) => Some(s.scope_prefix()),
                _ => None,
            })
    }

    #[test]
    fn the_apex_answers_the_node_nearest_the_client_subnet_with_its_scope() {
        let c = compile(&zones());
        let r = ask(
            &c,
            &query("ExAmple.TEST.", RecordType::A, Some("192.0.2.0/24")),
        );
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.metadata.authoritative);
        assert_eq!(addrs(&r), ["203.0.113.1"], "Paris → London");
        // Case preserved in the answer's owner.
        assert_eq!(r.answers[0].name.to_string(), "ExAmple.TEST.");
        assert_eq!(r.answers[0].ttl, 60);
        assert_eq!(subnet_scope(&r), Some(24));
        let r = ask(
            &c,
            &query("www.example.test.", RecordType::A, Some("198.51.100.0/24")),
        );
        assert_eq!(
            addrs(&r),
            ["203.0.113.3"],
            "Rio → São Paulo, alias like the apex"
        );
        let r = ask(
            &c,
            &query("example.test.", RecordType::AAAA, Some("198.51.100.0/24")),
        );
        assert_eq!(addrs(&r), ["2001:db8::1"], "São Paulo has no IPv6: London");
        // Unknown location (no ECS, resolver unplaced): every healthy node.
        let r = ask(&c, &query("example.test.", RecordType::A, None));
        assert_eq!(addrs(&r).len(), 3);
        assert_eq!(r.edns, None, "no OPT in the answer to a query without one");
    }

    #[test]
    fn a_node_down_is_left_out_while_another_is_up() {
        let c = compile(&zones());
        let q = query("example.test.", RecordType::A, Some("192.0.2.0/24"));
        let bytes = q.to_vec().unwrap();
        // geo order is by name: klukai, tololo, vector. vector (London) down.
        let out = ask_bytes(&c, &bytes, 0b011, false).unwrap();
        let r = Message::from_vec(&out).unwrap();
        assert_eq!(
            addrs(&r),
            ["203.0.113.3"],
            "Paris → São Paulo when London is down"
        );
    }

    #[test]
    fn missing_names_and_types_get_nxdomain_and_nodata_with_the_soa() {
        let c = compile(&zones());
        let r = ask(&c, &query("nope.example.test.", RecordType::A, None));
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        assert!(r.metadata.authoritative);
        assert!(r.answers.is_empty());
        assert_eq!(r.authorities.len(), 1);
        assert_eq!(r.authorities[0].record_type(), RecordType::SOA);
        assert_eq!(r.authorities[0].ttl, 300, "min(SOA TTL, MINIMUM)");
        assert_eq!(r.authorities[0].name.to_string(), "example.test.");
        for (name, t) in [
            ("www.example.test.", RecordType::TXT),
            ("mail.example.test.", RecordType::AAAA),
            // Empty non-terminals exist (RFC 8020).
            ("ns.example.test.", RecordType::A),
            ("_tcp.example.test.", RecordType::SRV),
        ] {
            let r = ask(&c, &query(name, t, None));
            assert_eq!(r.metadata.response_code, ResponseCode::NoError, "{name}");
            assert!(r.answers.is_empty(), "{name}");
            assert_eq!(r.authorities[0].record_type(), RecordType::SOA, "{name}");
        }
    }

    #[test]
    fn a_wildcard_answers_for_names_that_do_not_exist_below_its_parent() {
        let mut z = zones();
        if let Some(zone) = z.zones.values_mut().next() {
            zone.aliases.push("*.example.test".into());
        }
        let c = compile(&z);
        for name in ["anything.example.test.", "a.b.example.test."] {
            let r = ask(
                &c,
                &query(name, RecordType::A, Some(&format!("{PARIS}/24"))),
            );
            assert_eq!(r.metadata.response_code, ResponseCode::NoError, "{name}");
            assert!(r.metadata.authoritative, "{name}");
            assert_eq!(r.answers.len(), 1, "{name}");
            assert_eq!(
                r.answers[0].name.to_string(),
                name,
                "owned by the asked name"
            );
            assert_eq!(r.answers[0].ttl, 60, "a geo answer");
        }
        // A type the wildcard lacks: NODATA, with the SOA.
        let r = ask(&c, &query("anything.example.test.", RecordType::MX, None));
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.answers.is_empty());
        assert_eq!(r.authorities[0].record_type(), RecordType::SOA);
        // Names that exist keep their own data; a closest encloser without
        // a `*` child still gives NXDOMAIN; delegations still refer.
        let r = ask(&c, &query("mail.example.test.", RecordType::A, None));
        assert_eq!(addrs(&r), ["192.0.2.25"]);
        let r = ask(&c, &query("x.mail.example.test.", RecordType::A, None));
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        let r = ask(&c, &query("x.sub.example.test.", RecordType::A, None));
        assert!(!r.metadata.authoritative, "a referral");
        assert_eq!(r.authorities[0].record_type(), RecordType::NS);
        // Without the wildcard, the same name does not exist.
        let r = ask(
            &compile(&zones()),
            &query("anything.example.test.", RecordType::A, None),
        );
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn mx_answers_carry_the_addresses_of_targets_we_hold_when_they_fit() {
        let c = compile(&zones());
        let r = ask(&c, &query("example.test.", RecordType::MX, None));
        assert_eq!(r.answers.len(), 1);
        let extra: Vec<String> = r
            .additionals
            .iter()
            .map(|a| format!("{} {}", a.name, a.data))
            .collect();
        assert_eq!(extra, ["mail.example.test. 192.0.2.25"]);
        // A target we do not hold: nothing added.
        let r = ask(&c, &query("_sip._tcp.example.test.", RecordType::SRV, None));
        assert_eq!(r.answers.len(), 1);
        assert!(r.additionals.is_empty());
        // Many MX records pointing at many hosts: the answer fits in 512
        // bytes without EDNS, so the courtesy records are left out, never TC.
        let mut z = zones();
        if let Some(zone) = z.zones.values_mut().next() {
            for i in 0..12 {
                zone.records
                    .push(record("MX", "@", &format!("mx{i}.example.test"), Some(20)));
                zone.records.push(record(
                    "A",
                    &format!("mx{i}"),
                    &format!("192.0.2.{}", 100 + i),
                    None,
                ));
            }
        }
        let c = compile(&z);
        let m = query("example.test.", RecordType::MX, None);
        let bytes = ask_bytes(&c, &m.to_vec().unwrap(), u64::MAX, false).unwrap();
        assert!(bytes.len() <= 512);
        let r = Message::from_vec(&bytes).unwrap();
        assert!(!r.metadata.truncation);
        assert_eq!(r.answers.len(), 13);
        assert!(r.additionals.is_empty());
        // Over TCP they fit.
        let bytes = ask_bytes(&c, &m.to_vec().unwrap(), u64::MAX, true).unwrap();
        let r = Message::from_vec(&bytes).unwrap();
        assert_eq!(r.additionals.len(), 13);
    }

    #[test]
    fn other_zones_are_refused_without_authority() {
        let c = compile(&zones());
        let r = ask(
            &c,
            &query("example.org.", RecordType::A, Some("192.0.2.0/24")),
        );
        assert_eq!(r.metadata.response_code, ResponseCode::Refused);
        assert!(!r.metadata.authoritative);
        assert_eq!(subnet_scope(&r), Some(0));
        let mut chaos = query("version.bind.", RecordType::TXT, None);
        chaos.queries[0].set_query_class(DNSClass::CH);
        assert_eq!(
            ask(&c, &chaos).metadata.response_code,
            ResponseCode::Refused
        );
        let r = ask(&c, &query("example.test.", RecordType::AXFR, None));
        assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    }

    #[test]
    fn every_record_type_is_served_as_configured() {
        let c = compile(&zones());
        let r = ask(&c, &query("example.test.", RecordType::NS, None));
        assert_eq!(r.answers.len(), 3);
        assert_eq!(r.additionals.len(), 5, "glue: three A, two AAAA");
        let r = ask(&c, &query("example.test.", RecordType::SOA, None));
        let RData::SOA(soa) = &r.answers[0].data else {
            panic!()
        };
        assert_eq!(soa.serial, 1_700_000_000);
        assert!(r.authorities.is_empty(), "minimal responses");
        let r = ask(&c, &query("example.test.", RecordType::MX, None));
        assert_eq!(addrs(&r), ["10 mail.example.test."]);
        let r = ask(&c, &query("_dmarc.example.test.", RecordType::TXT, None));
        assert_eq!(addrs(&r), ["v=DMARC1; p=none"]);
        let r = ask(&c, &query("_sip._tcp.example.test.", RecordType::SRV, None));
        assert_eq!(addrs(&r), ["1 5 5060 sip.example.test."]);
        let r = ask(&c, &query("example.test.", RecordType::CAA, None));
        assert_eq!(r.answers.len(), 2);
        let r = ask(
            &c,
            &query("vector.ns.example.test.", RecordType::AAAA, None),
        );
        assert_eq!(addrs(&r), ["2001:db8::1"]);
    }

    #[test]
    fn cnames_are_followed_inside_our_zones() {
        let c = compile(&zones());
        let r = ask(
            &c,
            &query("blog.example.test.", RecordType::A, Some("192.0.2.0/24")),
        );
        assert_eq!(r.answers.len(), 2);
        assert_eq!(r.answers[0].record_type(), RecordType::CNAME);
        assert_eq!(r.answers[1].name.to_string(), "www.example.test.");
        assert_eq!(r.answers[1].data.to_string(), "203.0.113.1");
        let r = ask(&c, &query("gone.example.test.", RecordType::A, None));
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain, "RFC 6604");
        assert_eq!(r.answers.len(), 1);
        let r = ask(&c, &query("away.example.test.", RecordType::A, None));
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert_eq!(r.answers.len(), 1, "outside our zones: the CNAME alone");
    }

    #[test]
    fn names_under_a_delegation_get_a_referral() {
        let c = compile(&zones());
        for name in [
            "sub.example.test.",
            "x.sub.example.test.",
            "ns1.sub.example.test.",
        ] {
            let r = ask(&c, &query(name, RecordType::A, None));
            assert_eq!(r.metadata.response_code, ResponseCode::NoError, "{name}");
            assert!(!r.metadata.authoritative, "{name}");
            assert!(r.answers.is_empty(), "{name}");
            assert_eq!(r.authorities[0].record_type(), RecordType::NS, "{name}");
            let glue: Vec<String> = r.additionals.iter().map(|r| r.data.to_string()).collect();
            assert_eq!(glue, ["192.0.2.53"], "{name}");
        }
    }

    #[test]
    fn any_is_answered_minimally() {
        let c = compile(&zones());
        let r = ask(&c, &query("example.test.", RecordType::ANY, None));
        assert_eq!(r.answers.len(), 1);
        assert_eq!(r.answers[0].record_type(), RecordType::HINFO);
    }

    #[test]
    fn answers_too_large_for_udp_are_truncated_and_whole_over_tcp() {
        let mut z = zones();
        let zone = z.zones.values_mut().next().unwrap();
        for i in 0..12 {
            zone.records.push(record(
                "TXT",
                "big",
                &format!("{i:02}{}", "x".repeat(60)),
                None,
            ));
        }
        let c = compile(&z);
        let q = query("big.example.test.", RecordType::TXT, None)
            .to_vec()
            .unwrap();
        let out = ask_bytes(&c, &q, u64::MAX, false).unwrap();
        assert!(out.len() <= 512);
        let r = Message::from_vec(&out).unwrap();
        assert!(r.metadata.truncation);
        assert!(r.answers.is_empty());
        let out = ask_bytes(&c, &q, u64::MAX, true).unwrap();
        let r = Message::from_vec(&out).unwrap();
        assert!(!r.metadata.truncation);
        assert_eq!(r.answers.len(), 12);
    }

    #[test]
    fn edns_versions_above_zero_get_badvers() {
        let c = compile(&zones());
        let mut q = query("example.test.", RecordType::A, Some("192.0.2.0/24"));
        q.edns.as_mut().unwrap().set_version(1);
        let r = ask(&c, &q);
        // 16 is BADVERS with an OPT (hickory names the code BADSIG).
        assert_eq!(u16::from(r.metadata.response_code), 16);
        assert!(r.edns.is_some());
    }

    /// Seeded arbitrary and mutated messages: never a panic, never a reply
    /// larger than the query allows, every reply well-formed and carrying
    /// the query's id. `MAKIATTO_FUZZ_CASES` runs more (the documented
    /// longer run uses 5,000,000).
    #[test]
    fn arbitrary_messages_never_crash_or_amplify() {
        let c = compile(&zones());
        let cases: u64 = std::env::var("MAKIATTO_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200_000);
        let seed: u64 = std::env::var("MAKIATTO_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(7);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let seeds: Vec<Vec<u8>> = [
            query("example.test.", RecordType::A, Some("192.0.2.0/24")),
            query("www.example.test.", RecordType::AAAA, None),
            query("x.sub.example.test.", RecordType::MX, None),
            query("blog.example.test.", RecordType::A, Some("2001:db8::/56")),
        ]
        .iter()
        .map(|m| m.to_vec().unwrap())
        .collect();
        for case in 0..cases {
            let msg: Vec<u8> = if case % 4 == 0 {
                let len = rng.random_range(0..600);
                (0..len).map(|_| rng.random()).collect()
            } else {
                let mut m = seeds[rng.random_range(0..seeds.len())].clone();
                for _ in 0..rng.random_range(1..6) {
                    match rng.random_range(0..3) {
                        0 if !m.is_empty() => {
                            let i = rng.random_range(0..m.len());
                            m[i] = rng.random();
                        }
                        1 if !m.is_empty() => {
                            let n = rng.random_range(0..m.len());
                            m.truncate(n);
                        }
                        _ => m.push(rng.random()),
                    }
                }
                if m.len() > 2 {
                    m[2] &= 0x7F;
                }
                m
            };
            let Some(out) = ask_bytes(&c, &msg, rng.random(), false) else {
                continue;
            };
            assert_eq!(out[..2], msg[..2], "case {case}: id echoed");
            let reply = match Message::from_vec(&out) {
                Ok(r) => r,
                Err(e) => panic!(
                    "case {case} (seed {seed}): reply does not parse: {e}\nquery {msg:02x?}\nreply {out:02x?}"
                ),
            };
            // Over 512 bytes only for a query that offered more (then the
            // reply carries our OPT), and never over our own maximum.
            let limit = if reply.edns.is_some() { 1232 } else { 512 };
            assert!(out.len() <= limit, "case {case}: {} > {limit}", out.len());
        }
    }
}
