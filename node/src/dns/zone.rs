//! The zones projection compiled for answering: every name of every zone in
//! a hash map (lowercased wire format), each with its record sets already
//! rendered to wire bytes (type, class, TTL, RDLENGTH, RDATA), so a query
//! costs a lookup and a few copies. Rebuilt whenever the projection changes,
//! never per query. Custom records are parsed by
//! `makiatto_projections::record` (the parser `maki config check` uses, so
//! a record the CLI accepts is served here, and one it would refuse is
//! skipped with the same reason); their data is encoded with hickory-proto's
//! typed records (names uncompressed, so the bytes can be copied anywhere).

use std::collections::HashMap;
use std::net::IpAddr;

use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, NS, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder, NameEncoding};
use makiatto_events::NodeName;
use makiatto_projections::record::{CaaData, Record, RecordData};
use makiatto_projections::zones::{DEFAULT_RECORD_TTL, INFRA_TTL, Zone, Zones};

use super::wire::{encode_name, rtype, split_records};

type Map<V> = HashMap<Box<[u8]>, V, foldhash::fast::FixedState>;

/// Records of one type at one name, rendered.
#[derive(Debug, Clone, Default)]
pub struct Rrset {
    /// How many records `tails` holds.
    pub n: u16,
    /// Each record without its owner: type, class, TTL, RDLENGTH, RDATA.
    pub tails: Vec<u8>,
}

impl Rrset {
    fn push(&mut self, rtype: u16, ttl: u32, rdata: &[u8]) {
        self.n += 1;
        self.tails.extend_from_slice(&rtype.to_be_bytes());
        self.tails.extend_from_slice(&1u16.to_be_bytes());
        self.tails.extend_from_slice(&ttl.to_be_bytes());
        self.tails
            .extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        self.tails.extend_from_slice(rdata);
    }
}

/// Whole records with their owner names (glue for the additional section).
#[derive(Debug, Clone, Default)]
pub struct Glue {
    pub n: u16,
    pub bytes: Vec<u8>,
}

/// One name of a zone.
#[derive(Debug, Clone, Default)]
pub struct NameData {
    /// Record sets by type, in type order.
    pub rrsets: Vec<(u16, Rrset)>,
    /// Answered with the nearest nodes for A and AAAA (the apex and in-zone
    /// aliases).
    pub geo: bool,
    /// A CNAME here (then nothing else is), with its target lowercased.
    pub cname: Option<(Rrset, Box<[u8]>)>,
    /// The NS set of a delegation here (a zone cut below the apex).
    pub cut: Option<Rrset>,
    /// Set on names under a zone cut (their records are glue, not answers):
    /// the cut's name.
    pub below_cut: Option<Box<[u8]>>,
    /// Glue for the additional section of an NS answer from here.
    pub glue: Glue,
    /// Additional data for MX and SRV answers from here: the addresses of
    /// their targets that this server holds (RFC 1035 §3.3.9, RFC 2782).
    pub additional: Vec<(u16, Glue)>,
}

impl NameData {
    pub fn rrset(&self, rtype: u16) -> Option<&Rrset> {
        self.rrsets
            .iter()
            .find(|(t, _)| *t == rtype)
            .map(|(_, r)| r)
    }

    /// Has this name any data (an empty non-terminal has none)?
    pub fn has_data(&self) -> bool {
        !self.rrsets.is_empty() || self.geo || self.cname.is_some() || self.cut.is_some()
    }
}

/// A zone's own data.
#[derive(Debug, Clone)]
pub struct ZoneData {
    pub apex: String,
    /// The SOA for negative answers: TTL min(SOA TTL, MINIMUM) (RFC 2308).
    pub soa_negative: Rrset,
    /// Length of the apex in wire format (to point at it in the question).
    pub apex_len: usize,
}

/// A node that geo answers may name.
#[derive(Debug, Clone)]
pub struct GeoNode {
    pub name: NodeName,
    pub lat: f64,
    pub lon: f64,
    pub a: Option<Rrset>,
    pub aaaa: Option<Rrset>,
}

/// Everything the server answers from.
#[derive(Debug, Default)]
pub struct Compiled {
    pub serial: u32,
    names: Map<usize>,
    apexes: Map<usize>,
    pub nodes: Vec<NameData>,
    pub zones: Vec<ZoneData>,
    /// Geo candidates in node-name order; at most 64 (a health bitmask).
    pub geo: Vec<GeoNode>,
    /// How many nearest nodes a geo answer names.
    pub nearest: usize,
    /// Records that could not be compiled, said once in the log.
    pub skipped: Vec<String>,
}

/// TTL of ACME DNS-01 challenge records (resolvers must not keep old ones).
const ACME_TTL: u32 = 60;

/// The most geo candidates (they share one 64-bit health mask).
pub const MAX_GEO: usize = 64;

impl Compiled {
    /// The name, by its lowercased wire form.
    pub fn name(&self, lower: &[u8]) -> Option<(usize, &NameData)> {
        let i = *self.names.get(lower)?;
        Some((i, &self.nodes[i]))
    }

    /// The zone whose apex this lowercased wire name is.
    pub fn apex(&self, lower: &[u8]) -> Option<usize> {
        self.apexes.get(lower).copied()
    }

    /// Every zone apex (for the DoT certificate's names and the logs).
    pub fn apexes(&self) -> impl Iterator<Item = &str> {
        self.zones.iter().map(|z| z.apex.as_str())
    }
}

fn render(rdata: &RData) -> Option<Vec<u8>> {
    let mut buf = Vec::with_capacity(64);
    let mut enc = BinEncoder::new(&mut buf);
    // Names inside RDATA are written whole: these bytes are copied into
    // responses at any offset, so a pointer could never be right.
    enc.set_name_encoding(NameEncoding::Uncompressed);
    rdata.emit(&mut enc).ok()?;
    Some(buf)
}

fn host(value: &str) -> Result<Name, String> {
    let mut n =
        Name::from_ascii(value).map_err(|e| format!("{value:?} is not a host name: {e}"))?;
    n.set_fqdn(true);
    Ok(n)
}

/// A parsed custom record's type and RDATA. Everything about its text was
/// checked by [`Record::parse`], the parser `maki config check` uses too.
fn custom_rdata(data: &RecordData) -> Result<(u16, Vec<u8>), String> {
    let rdata = match data {
        RecordData::A(ip) => RData::A(A(*ip)),
        RecordData::Aaaa(ip) => RData::AAAA(AAAA(*ip)),
        RecordData::Cname(target) => RData::CNAME(CNAME(host(target.as_str())?)),
        RecordData::Ns(target) => RData::NS(NS(host(target.as_str())?)),
        RecordData::Mx {
            preference,
            exchange,
        } => RData::MX(MX::new(*preference, host(exchange.as_str())?)),
        RecordData::Srv {
            priority,
            weight,
            port,
            target,
        } => RData::SRV(SRV::new(*priority, *weight, *port, host(target.as_str())?)),
        RecordData::Txt(text) => {
            // One value, split into character-strings of at most 255 bytes.
            let chunks: Vec<String> = text
                .as_bytes()
                .chunks(255)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect();
            RData::TXT(TXT::new(if chunks.is_empty() {
                vec![String::new()]
            } else {
                chunks
            }))
        }
        RecordData::Caa(caa) => return Ok((rtype::CAA, caa_rdata(caa))),
    };
    let code = u16::from(rdata.record_type());
    Ok((code, render(&rdata).ok_or("cannot encode")?))
}

/// CAA RDATA (RFC 8659 §4.1): flags, tag length, tag, value.
fn caa_rdata(caa: &CaaData) -> Vec<u8> {
    let tag = caa.tag().as_str();
    let mut out = vec![caa.flags(), tag.len() as u8];
    out.extend_from_slice(tag.as_bytes());
    out.extend_from_slice(caa.value().as_bytes());
    out
}

struct Builder {
    c: Compiled,
}

impl Builder {
    /// The name's entry, made (with its empty non-terminal ancestors up to
    /// the apex) if new.
    fn entry(&mut self, zone: usize, wire: &[u8]) -> usize {
        let lower: Box<[u8]> = wire.to_ascii_lowercase().into();
        if let Some(&i) = self.c.names.get(&lower) {
            return i;
        }
        let i = self.c.nodes.len();
        self.c.nodes.push(NameData::default());
        self.c.names.insert(lower.clone(), i);
        // Ancestors below the apex exist too (RFC 8020: NODATA, not NXDOMAIN).
        let apex_len = self.c.zones[zone].apex_len;
        if lower.len() > apex_len && lower[0] as usize + 1 < lower.len() {
            let parent = lower[lower[0] as usize + 1..].to_vec();
            if parent.len() >= apex_len {
                self.entry(zone, &parent);
            }
        }
        i
    }

    fn add(&mut self, zone: usize, wire: &[u8], rtype: u16, ttl: u32, rdata: &[u8]) {
        let i = self.entry(zone, wire);
        let sets = &mut self.c.nodes[i].rrsets;
        let at = match sets.iter().position(|(t, _)| *t == rtype) {
            Some(p) => p,
            None => {
                sets.push((rtype, Rrset::default()));
                sets.len() - 1
            }
        };
        sets[at].1.push(rtype, ttl, rdata);
    }
}

/// Compiles the zones projection. `zones.geo` (the same for every zone)
/// gives the geo candidates.
pub fn compile(zones: &Zones) -> Compiled {
    let mut b = Builder {
        c: Compiled::default(),
    };
    for (apex, zone) in &zones.zones {
        b.c.serial = zone.serial;
        b.c.nearest = zone.nearest.max(1) as usize;
        if b.c.geo.is_empty() {
            b.c.geo = zone
                .geo
                .iter()
                .take(MAX_GEO)
                .map(|g| GeoNode {
                    name: g.node.clone(),
                    lat: f64::from(g.lat_e6) / 1e6,
                    lon: f64::from(g.lon_e6) / 1e6,
                    a: g.ipv4.map(|ip| one(rtype::A, zone.geo_ttl, &ip.octets())),
                    aaaa: g
                        .ipv6
                        .map(|ip| one(rtype::AAAA, zone.geo_ttl, &ip.octets())),
                })
                .collect();
        }
        if let Err(e) = compile_zone(&mut b, apex.as_str(), zone) {
            b.c.skipped.push(format!("zone {apex}: {e}"));
        }
    }
    // Mark names under zone cuts.
    let cuts: Vec<Box<[u8]>> =
        b.c.names
            .iter()
            .filter(|(_, i)| b.c.nodes[**i].cut.is_some())
            .map(|(n, _)| n.clone())
            .collect();
    let names: Vec<(Box<[u8]>, usize)> = b.c.names.iter().map(|(n, i)| (n.clone(), *i)).collect();
    for (name, i) in names {
        for cut in &cuts {
            if name.len() > cut.len() && name.ends_with(cut) {
                let node = &mut b.c.nodes[i];
                if node.below_cut.as_ref().is_none_or(|c| c.len() > cut.len()) {
                    node.below_cut = Some(cut.clone());
                }
            }
        }
    }
    additional_for_targets(&mut b.c);
    b.c
}

/// For every MX and SRV set, the A and AAAA records of its targets that
/// are ours (static records; not geo names, whose answer depends on the
/// client, nor names under a delegation), as whole records.
fn additional_for_targets(c: &mut Compiled) {
    let mut found = Vec::new();
    for (i, node) in c.nodes.iter().enumerate() {
        for (t, set) in &node.rrsets {
            // Where the target name starts in the RDATA.
            let skip = match *t {
                rtype::MX => 2,
                rtype::SRV => 6,
                _ => continue,
            };
            let mut glue = Glue::default();
            let mut seen = std::collections::HashSet::new();
            for record in split_records(&set.tails) {
                let Some(target) = record.get(10 + skip..) else {
                    continue;
                };
                let lower: Box<[u8]> = target.to_ascii_lowercase().into();
                if !seen.insert(lower.clone()) {
                    continue;
                }
                let Some(&ti) = c.names.get(&lower) else {
                    continue;
                };
                let tn = &c.nodes[ti];
                if tn.below_cut.is_some() || tn.cut.is_some() {
                    continue;
                }
                for addrs in [rtype::A, rtype::AAAA]
                    .into_iter()
                    .filter_map(|t| tn.rrset(t))
                {
                    for record in split_records(&addrs.tails).take(addrs.n.into()) {
                        glue.bytes.extend_from_slice(target);
                        glue.bytes.extend_from_slice(record);
                        glue.n += 1;
                    }
                }
            }
            if glue.n > 0 {
                found.push((i, *t, glue));
            }
        }
    }
    for (i, t, glue) in found {
        c.nodes[i].additional.push((t, glue));
    }
}

fn one(rtype: u16, ttl: u32, rdata: &[u8]) -> Rrset {
    let mut r = Rrset::default();
    r.push(rtype, ttl, rdata);
    r
}

fn compile_zone(b: &mut Builder, apex: &str, zone: &Zone) -> Result<(), String> {
    let apex_wire = encode_name(apex).ok_or("the apex is not a valid name")?;
    let z = b.c.zones.len();
    let soa = SOA::new(
        host(&zone.soa.mname)?,
        host(&zone.soa.rname)?,
        zone.serial,
        zone.soa.refresh as i32,
        zone.soa.retry as i32,
        zone.soa.expire as i32,
        zone.soa.minimum,
    );
    let soa_rdata = render(&RData::SOA(soa)).ok_or("cannot encode the SOA")?;
    b.c.zones.push(ZoneData {
        apex: apex.to_string(),
        soa_negative: one(rtype::SOA, zone.soa.ttl.min(zone.soa.minimum), &soa_rdata),
        apex_len: apex_wire.len(),
    });
    b.c.apexes.insert(apex_wire.to_ascii_lowercase().into(), z);
    let apex_i = b.entry(z, &apex_wire);
    b.c.nodes[apex_i].geo = true;
    b.add(z, &apex_wire, rtype::SOA, zone.soa.ttl, &soa_rdata);

    // NS with glue; each nameserver's own name answers its addresses.
    let mut glue = Glue::default();
    for ns in &zone.nameservers {
        let name = host(&ns.name)?;
        let rdata = render(&RData::NS(NS(name))).ok_or("cannot encode NS")?;
        b.add(z, &apex_wire, rtype::NS, INFRA_TTL, &rdata);
        let wire = encode_name(&ns.name).ok_or("bad nameserver name")?;
        let addrs: Vec<IpAddr> = ns
            .ipv4
            .map(IpAddr::V4)
            .into_iter()
            .chain(ns.ipv6.map(IpAddr::V6))
            .collect();
        for ip in addrs {
            let (t, bytes) = match ip {
                IpAddr::V4(a) => (rtype::A, a.octets().to_vec()),
                IpAddr::V6(a) => (rtype::AAAA, a.octets().to_vec()),
            };
            b.add(z, &wire, t, INFRA_TTL, &bytes);
            let mut rr = Rrset::default();
            rr.push(t, INFRA_TTL, &bytes);
            glue.n += 1;
            glue.bytes.extend_from_slice(&wire);
            glue.bytes.extend_from_slice(&rr.tails);
        }
    }
    b.c.nodes[apex_i].glue = glue;

    for c in &zone.caa {
        let caa = CaaData::new(c.flags, &c.tag, &c.value).map_err(|e| e.to_string())?;
        b.add(z, &apex_wire, rtype::CAA, INFRA_TTL, &caa_rdata(&caa));
    }

    for alias in &zone.aliases {
        let wire = encode_name(alias).ok_or("bad alias")?;
        let i = b.entry(z, &wire);
        b.c.nodes[i].geo = true;
    }

    // Open ACME DNS-01 challenges: short-lived TXT records.
    for (owner, value) in &zone.acme_txt {
        let txt = RData::TXT(TXT::new(vec![value.clone()]));
        match (encode_name(owner), render(&txt)) {
            (Some(wire), Some(rdata)) => b.add(z, &wire, rtype::TXT, ACME_TTL, &rdata),
            _ => {
                b.c.skipped
                    .push(format!("{owner} TXT: not a valid ACME challenge"))
            }
        }
    }

    for r in &zone.records {
        let record = match Record::parse(apex, &r.text()) {
            Ok(record) => record,
            Err(e) => {
                let owner = if r.name == "@" || r.name.is_empty() {
                    apex.to_string()
                } else {
                    format!("{}.{apex}", r.name)
                };
                b.c.skipped.push(format!("{owner} {}: {e}", r.rtype));
                continue;
            }
        };
        let owner = record.owner.within(apex);
        let ttl = record.ttl.unwrap_or(DEFAULT_RECORD_TTL);
        let Some(wire) = encode_name(&owner) else {
            b.c.skipped.push(format!("{owner}: not a valid name"));
            continue;
        };
        match custom_rdata(&record.data) {
            Ok((t, rdata)) => {
                let i = b.entry(z, &wire);
                let node = &mut b.c.nodes[i];
                let ok = match t {
                    rtype::CNAME => {
                        if node.has_data() || i == apex_i {
                            Err("a CNAME cannot sit beside other data")
                        } else {
                            let target = rdata.to_ascii_lowercase().into();
                            node.cname = Some((one(t, ttl, &rdata), target));
                            Ok(())
                        }
                    }
                    rtype::NS if i != apex_i => {
                        node.cut
                            .get_or_insert_with(Rrset::default)
                            .push(t, ttl, &rdata);
                        Ok(())
                    }
                    _ if node.cname.is_some() => Err("a CNAME already owns this name"),
                    rtype::A | rtype::AAAA if node.geo => {
                        Err("geo-answered names take no custom A/AAAA")
                    }
                    _ => {
                        b.add(z, &wire, t, ttl, &rdata);
                        Ok(())
                    }
                };
                if let Err(e) = ok {
                    b.c.skipped.push(format!("{owner} {}: {e}", r.rtype));
                }
            }
            Err(e) => b.c.skipped.push(format!("{owner} {}: {e}", r.rtype)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use makiatto_projections::config::RecordConfig;
    use makiatto_projections::record::CaaError;
    use makiatto_projections::record::cases::{CASES, DOMAIN, Verdict};

    use super::*;

    /// The presentation form to RDATA, as a custom CAA record is compiled.
    fn caa(value: &str) -> Result<Vec<u8>, CaaError> {
        CaaData::parse(value).map(|c| caa_rdata(&c))
    }

    #[test]
    fn caa_values_encode_as_rfc_8659_says() {
        assert_eq!(
            caa("0 issue \"letsencrypt.org\"").unwrap(),
            [&[0u8, 5][..], b"issue", b"letsencrypt.org"].concat()
        );
        assert!(caa("0 issue letsencrypt.org").is_err());
        assert!(caa("x issue \"a\"").is_err());
    }

    /// Records of type `t` this compiled zone holds at `owner` (answers,
    /// a CNAME, or a delegation's NS set).
    fn held(c: &Compiled, owner: &str, t: u16) -> u16 {
        let wire = encode_name(owner).unwrap().to_ascii_lowercase();
        let Some((_, node)) = c.name(&wire) else {
            return 0;
        };
        let answers = node.rrset(t).map_or(0, |r| r.n);
        let cname = node.cname.as_ref().filter(|_| t == rtype::CNAME);
        let cut = node.cut.as_ref().filter(|_| t == rtype::NS);
        answers + cname.map_or(0, |(r, _)| r.n) + cut.map_or(0, |r| r.n)
    }

    /// The zone of `records`, folded the way every node folds it: from the
    /// configuration document's records through the zones projection.
    fn compiled_with(records: Vec<RecordConfig>) -> Compiled {
        use makiatto_projections::certificates::Certificates;
        use makiatto_projections::config::{DesiredConfig, DomainConfig};
        use makiatto_projections::peers::Peers;

        let mut config = DesiredConfig::default();
        let mut domain = DomainConfig::default();
        for (i, r) in records.into_iter().enumerate() {
            domain
                .records
                .insert(format!("{} {} {i}", r.rtype, r.name), r);
        }
        config.domains.insert(DOMAIN.into(), domain);
        let zones = makiatto_projections::zones::build(
            &config,
            &Peers::default(),
            &Certificates::default(),
            1,
        );
        compile(&zones)
    }

    /// The CLI's tests (`maki/src/project.rs`) read the same rows: what
    /// `maki config check` accepts, every node serves; what it refuses, a
    /// node skips, for the same reason.
    #[test]
    fn the_shared_table_of_records_is_served_or_skipped_as_the_cli_checks_it() {
        let baseline = compiled_with(Vec::new());
        assert!(baseline.skipped.is_empty(), "{:?}", baseline.skipped);
        for case in CASES {
            let (Ok(ttl), Ok(priority)) = (
                case.ttl.map(u32::try_from).transpose(),
                case.priority.map(u16::try_from).transpose(),
            ) else {
                // The stored form cannot hold it, so no node ever sees it.
                assert!(matches!(case.verdict, Verdict::Refuse(_)), "{case:?}");
                continue;
            };
            let config = RecordConfig {
                rtype: case.rtype.into(),
                name: case.name.into(),
                value: case.value.into(),
                ttl,
                priority,
            };
            let c = compiled_with(vec![config.clone()]);
            match case.verdict {
                Verdict::Accept => {
                    assert!(c.skipped.is_empty(), "{case:?}: {:?}", c.skipped);
                    let Ok(record) = Record::parse(DOMAIN, &config.text()) else {
                        panic!("{case:?}: accepted, yet the parser refuses it");
                    };
                    let owner = record.owner.within(DOMAIN);
                    let t = custom_rdata(&record.data).unwrap().0;
                    assert_eq!(
                        held(&c, &owner, t),
                        held(&baseline, &owner, t) + 1,
                        "{case:?}: not served at {owner}"
                    );
                }
                Verdict::Refuse(why) => {
                    let Err(errors) = Record::parse(DOMAIN, &config.text()) else {
                        panic!("{case:?}: refused, yet the parser accepts it");
                    };
                    assert_eq!(c.skipped.len(), 1, "{case:?}: {:?}", c.skipped);
                    assert!(
                        c.skipped[0].ends_with(&format!(": {errors}")),
                        "{case:?}: {:?}",
                        c.skipped
                    );
                    assert!(c.skipped[0].contains(why), "{case:?}: {:?}", c.skipped);
                }
            }
        }
    }
}
