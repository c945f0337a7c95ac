//! DNS messages on the wire: reading a query (header, one question, the OPT
//! record with its Client Subnet option) and writing a response from
//! pre-rendered record bytes.
//!
//! The reader is strict and allocation-free: every length is checked before
//! it is used, and anything it does not understand becomes an error code or a
//! silent drop, never a panic. The writer never compresses names inside
//! RDATA (always valid); owner names point into the question, so the answer
//! carries the visitor's own spelling of the name (case preserved, 0x20).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The size of the DNS header.
pub const HEADER: usize = 12;
/// The UDP payload size we advertise and the most we answer over UDP with
/// EDNS (the 2020 DNS flag day figure: no IP fragmentation on common paths).
pub const EDNS_UDP_SIZE: u16 = 1232;
/// Without EDNS, a UDP answer is at most this (RFC 1035).
pub const PLAIN_UDP_SIZE: usize = 512;

pub mod rcode {
    pub const NOERROR: u16 = 0;
    pub const FORMERR: u16 = 1;
    pub const SERVFAIL: u16 = 2;
    pub const NXDOMAIN: u16 = 3;
    pub const NOTIMP: u16 = 4;
    pub const REFUSED: u16 = 5;
    /// Extended (needs EDNS): the query's EDNS version is not supported.
    pub const BADVERS: u16 = 16;
}

pub mod rtype {
    pub const A: u16 = 1;
    pub const NS: u16 = 2;
    pub const CNAME: u16 = 5;
    pub const SOA: u16 = 6;
    pub const HINFO: u16 = 13;
    pub const MX: u16 = 15;
    pub const TXT: u16 = 16;
    pub const AAAA: u16 = 28;
    pub const SRV: u16 = 33;
    pub const OPT: u16 = 41;
    pub const IXFR: u16 = 251;
    pub const AXFR: u16 = 252;
    pub const ANY: u16 = 255;
    pub const CAA: u16 = 257;
}

const CLASS_IN: u16 = 1;
const CLASS_ANY: u16 = 255;
const OPCODE_QUERY: u8 = 0;
const EDNS_SUBNET: u16 = 8;
const EDNS_EDE: u16 = 15;
/// Flags: QR, AA, TC, RD, CD.
const QR: u16 = 0x8000;
const AA: u16 = 0x0400;
const TC: u16 = 0x0200;
const RD: u16 = 0x0100;
const CD: u16 = 0x0010;

/// An EDNS Client Subnet option as a query carried it (RFC 7871).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSubnet {
    pub addr: IpAddr,
    pub source_prefix: u8,
}

/// The query's OPT record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    pub udp_size: u16,
    pub version: u8,
    pub dnssec_ok: bool,
    pub subnet: Option<ClientSubnet>,
}

/// A query we can answer.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    pub id: u16,
    /// The query's flags word (opcode, RD, CD are echoed).
    pub flags: u16,
    /// The question section as received: qname, qtype, qclass.
    pub question: &'a [u8],
    /// The qname in wire format as received (case kept).
    pub qname: &'a [u8],
    pub qtype: u16,
    pub qclass: u16,
    pub edns: Option<Edns>,
}

/// What reading a message gave.
#[derive(Debug)]
pub enum Read<'a> {
    Query(Query<'a>),
    /// Answer with only an error code (and the question and OPT when they
    /// were readable).
    Error {
        id: u16,
        flags: u16,
        rcode: u16,
        question: Option<&'a [u8]>,
        edns: Option<Edns>,
    },
    /// Not worth a reply: too short to be a query, or a response (replying
    /// to responses is how reflection loops start).
    Drop,
}

struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.buf.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// An uncompressed name (a question never needs a pointer: there is
    /// nothing before it to point at).
    fn name(&mut self) -> Option<&'a [u8]> {
        let start = self.at;
        loop {
            let len = self.u8()? as usize;
            if len == 0 {
                break;
            }
            if len > 63 {
                return None;
            }
            self.take(len)?;
        }
        let name = &self.buf[start..self.at];
        (name.len() <= 255).then_some(name)
    }
}

/// Reads a query. Never panics, whatever the bytes.
pub fn read(buf: &[u8]) -> Read<'_> {
    if buf.len() < HEADER {
        return Read::Drop;
    }
    let id = u16::from_be_bytes([buf[0], buf[1]]);
    let flags = u16::from_be_bytes([buf[2], buf[3]]);
    if flags & QR != 0 {
        return Read::Drop;
    }
    let count = |i: usize| u16::from_be_bytes([buf[i], buf[i + 1]]);
    let (qd, an, ns, ar) = (count(4), count(6), count(8), count(10));
    let error = |rcode, question, edns| Read::Error {
        id,
        flags,
        rcode,
        question,
        edns,
    };
    let opcode = ((flags >> 11) & 0xF) as u8;
    if qd != 1 {
        return error(
            if opcode == OPCODE_QUERY {
                rcode::FORMERR
            } else {
                rcode::NOTIMP
            },
            None,
            None,
        );
    }
    let mut c = Cursor { buf, at: HEADER };
    let Some(qname) = c.name() else {
        return error(rcode::FORMERR, None, None);
    };
    let (Some(qtype), Some(qclass)) = (c.u16(), c.u16()) else {
        return error(rcode::FORMERR, None, None);
    };
    let question = &buf[HEADER..c.at];
    if opcode != OPCODE_QUERY {
        return error(rcode::NOTIMP, Some(question), None);
    }
    if an != 0 || ns != 0 {
        return error(rcode::FORMERR, Some(question), None);
    }
    let mut edns = None;
    for _ in 0..ar {
        match read_additional(&mut c) {
            Some(Some(opt)) if edns.is_none() => edns = Some(opt),
            // RFC 6891 §6.1.1: more than one OPT is a format error.
            Some(Some(_)) => return error(rcode::FORMERR, Some(question), None),
            Some(None) => {}
            None => {
                return error(rcode::FORMERR, Some(question), edns.and_then(Result::ok));
            }
        }
    }
    let edns = match edns {
        None => None,
        Some(Ok(e)) => Some(e),
        // A malformed option inside a readable OPT: answer FORMERR with OPT.
        Some(Err(e)) => return error(rcode::FORMERR, Some(question), Some(e)),
    };
    if c.at != buf.len() {
        return error(rcode::FORMERR, Some(question), edns);
    }
    if let Some(e) = edns
        && e.version != 0
    {
        return error(rcode::BADVERS, Some(question), Some(e));
    }
    Read::Query(Query {
        id,
        flags,
        question,
        qname,
        qtype,
        qclass,
        edns,
    })
}

/// One additional record: `Some(Some(opt))` for an OPT (its options
/// well-formed or not), `Some(None)` for another record (skipped), `None`
/// when the bytes do not hold a record.
fn read_additional(c: &mut Cursor<'_>) -> Option<Option<Result<Edns, Edns>>> {
    let owner = c.name()?;
    let rtype = c.u16()?;
    let class = c.u16()?;
    let ttl = c.u32()?;
    let len = c.u16()? as usize;
    let rdata = c.take(len)?;
    if rtype != rtype::OPT {
        return Some(None);
    }
    let mut edns = Edns {
        udp_size: class,
        version: (ttl >> 16) as u8,
        dnssec_ok: ttl & 0x8000 != 0,
        subnet: None,
    };
    if owner != [0] {
        return Some(Some(Err(edns)));
    }
    let mut o = Cursor { buf: rdata, at: 0 };
    while o.at < rdata.len() {
        let (Some(code), Some(len)) = (o.u16(), o.u16()) else {
            return Some(Some(Err(edns)));
        };
        let Some(body) = o.take(len as usize) else {
            return Some(Some(Err(edns)));
        };
        if code == EDNS_SUBNET {
            match read_subnet(body) {
                Some(s) if edns.subnet.is_none() => edns.subnet = Some(s),
                _ => return Some(Some(Err(edns))),
            }
        }
    }
    Some(Some(Ok(edns)))
}

/// RFC 7871 §6: family 1 or 2, a prefix within the family, exactly
/// ceil(prefix/8) address bytes with the bits past the prefix zero, and a
/// zero scope in queries; anything else is a format error.
fn read_subnet(body: &[u8]) -> Option<ClientSubnet> {
    let [f0, f1, source, scope] = *<&[u8; 4]>::try_from(body.get(..4)?).ok()?;
    let addr = &body[4..];
    let family = u16::from_be_bytes([f0, f1]);
    let width = match family {
        1 => 32,
        2 => 128,
        _ => return None,
    };
    if source > width || scope != 0 || addr.len() != (source as usize).div_ceil(8) {
        return None;
    }
    if let Some(&last) = addr.last() {
        let used = source % 8;
        if used != 0 && last & (0xFF >> used) != 0 {
            return None;
        }
    }
    let addr = if family == 1 {
        let mut b = [0u8; 4];
        b[..addr.len()].copy_from_slice(addr);
        IpAddr::V4(Ipv4Addr::from(b))
    } else {
        let mut b = [0u8; 16];
        b[..addr.len()].copy_from_slice(addr);
        IpAddr::V6(Ipv6Addr::from(b))
    };
    Some(ClientSubnet {
        addr,
        source_prefix: source,
    })
}

impl Query<'_> {
    /// Is this a question of class IN (or ANY, answered as IN)?
    pub fn class_in(&self) -> bool {
        self.qclass == CLASS_IN || self.qclass == CLASS_ANY
    }

    /// The most this answer may take: 512 without EDNS, the client's
    /// buffer (at least 512, at most ours) with it, 64 KiB over TCP.
    pub fn limit(&self, tcp: bool) -> usize {
        if tcp {
            return u16::MAX as usize;
        }
        match self.edns {
            None => PLAIN_UDP_SIZE,
            Some(e) => (e.udp_size.clamp(PLAIN_UDP_SIZE as u16, EDNS_UDP_SIZE)) as usize,
        }
    }
}

/// The OPT record a response carries.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResponseOpt {
    pub dnssec_ok: bool,
    /// Echo of the query's subnet with this scope prefix.
    pub subnet: Option<(ClientSubnet, u8)>,
    /// An Extended DNS Error code (RFC 8914).
    pub ede: Option<u16>,
}

/// Builds a response in a reused buffer: header, question, then sections
/// in order (answer, authority, additional), then the OPT record.
pub struct Response<'b> {
    buf: &'b mut Vec<u8>,
    counts: [u16; 3],
    section: usize,
}

/// Response sections.
pub const ANSWER: usize = 0;
pub const AUTHORITY: usize = 1;
pub const ADDITIONAL: usize = 2;

impl<'b> Response<'b> {
    /// Starts a response to `id`/`flags` with `question` (which may be
    /// absent for unreadable queries).
    pub fn start(buf: &'b mut Vec<u8>, id: u16, query_flags: u16, question: Option<&[u8]>) -> Self {
        buf.clear();
        buf.extend_from_slice(&id.to_be_bytes());
        let flags = QR | (query_flags & (0x7800 | RD | CD));
        buf.extend_from_slice(&flags.to_be_bytes());
        buf.extend_from_slice(&[0, u8::from(question.is_some()), 0, 0, 0, 0, 0, 0]);
        if let Some(q) = question {
            buf.extend_from_slice(q);
        }
        Response {
            buf,
            counts: [0; 3],
            section: ANSWER,
        }
    }

    /// Marks the answer authoritative.
    pub fn authoritative(&mut self) {
        self.buf[2] |= (AA >> 8) as u8;
    }

    /// Moves on to a later section.
    pub fn section(&mut self, section: usize) {
        debug_assert!(section >= self.section);
        self.section = section;
    }

    /// Appends records: an owner name (a pointer or full wire name), then
    /// pre-rendered records (type, class, TTL, RDLENGTH, RDATA), `n` of them,
    /// each needing the owner before it.
    pub fn records(&mut self, owner: &[u8], tails: &[u8], n: u16) {
        for one in split_records(tails).take(n.into()) {
            self.buf.extend_from_slice(owner);
            self.buf.extend_from_slice(one);
            self.counts[self.section] += 1;
        }
    }

    /// Appends `n` whole records (owner names included) verbatim.
    pub fn whole(&mut self, bytes: &[u8], n: u16) {
        self.buf.extend_from_slice(bytes);
        self.counts[self.section] += n;
    }

    /// The bytes so far (before the OPT), to check against a limit.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Writes the counts and the OPT record (when the query had EDNS).
    pub fn finish(self, rcode: u16, opt: Option<ResponseOpt>) {
        let mut arcount = self.counts[ADDITIONAL];
        if let Some(opt) = opt {
            arcount += 1;
            self.buf.push(0);
            self.buf.extend_from_slice(&rtype::OPT.to_be_bytes());
            self.buf.extend_from_slice(&EDNS_UDP_SIZE.to_be_bytes());
            let ttl: u32 =
                (u32::from((rcode >> 4) as u8) << 24) | if opt.dnssec_ok { 0x8000 } else { 0 };
            self.buf.extend_from_slice(&ttl.to_be_bytes());
            let len_at = self.buf.len();
            self.buf.extend_from_slice(&[0, 0]);
            if let Some((s, scope)) = opt.subnet {
                let (family, bytes): (u16, Vec<u8>) = match s.addr {
                    IpAddr::V4(a) => (1, a.octets().to_vec()),
                    IpAddr::V6(a) => (2, a.octets().to_vec()),
                };
                let n = (s.source_prefix as usize).div_ceil(8);
                self.buf.extend_from_slice(&EDNS_SUBNET.to_be_bytes());
                self.buf.extend_from_slice(&((4 + n) as u16).to_be_bytes());
                self.buf.extend_from_slice(&family.to_be_bytes());
                self.buf.push(s.source_prefix);
                self.buf.push(scope);
                // The query's address had zero bits past its prefix (checked
                // when read), so these bytes echo it exactly.
                self.buf.extend_from_slice(&bytes[..n]);
            }
            if let Some(code) = opt.ede {
                self.buf.extend_from_slice(&EDNS_EDE.to_be_bytes());
                self.buf.extend_from_slice(&2u16.to_be_bytes());
                self.buf.extend_from_slice(&code.to_be_bytes());
            }
            let len = (self.buf.len() - len_at - 2) as u16;
            self.buf[len_at..len_at + 2].copy_from_slice(&len.to_be_bytes());
        }
        self.buf[3] = (self.buf[3] & 0xF0) | (rcode & 0xF) as u8;
        for (i, n) in [self.counts[ANSWER], self.counts[AUTHORITY], arcount]
            .into_iter()
            .enumerate()
        {
            self.buf[6 + 2 * i..8 + 2 * i].copy_from_slice(&n.to_be_bytes());
        }
    }

    /// Drops every record written after the question and sets TC: the
    /// answer did not fit, the client should ask again over TCP.
    pub fn truncate(&mut self, question_end: usize) {
        self.buf.truncate(question_end);
        self.counts = [0; 3];
        self.buf[2] |= (TC >> 8) as u8;
    }
}

/// Pre-rendered records without owners (type, class, TTL, RDLENGTH,
/// RDATA), one at a time; stops at the first that is cut short.
pub fn split_records(tails: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = tails;
    std::iter::from_fn(move || {
        let len = 10 + u16::from_be_bytes([*rest.get(8)?, *rest.get(9)?]) as usize;
        let (one, tail) = rest.split_at_checked(len)?;
        rest = tail;
        Some(one)
    })
}

/// A name in wire format, lowercased, into `out` (for map lookups).
pub fn lowercase_into(name: &[u8], out: &mut [u8; 255]) -> usize {
    let n = name.len().min(255);
    for (o, b) in out.iter_mut().zip(&name[..n]) {
        *o = b.to_ascii_lowercase();
    }
    n
}

/// A wire name's label boundaries: the offsets where each suffix starts,
/// from the whole name to the root.
pub fn suffixes(name: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let mut at = Some(0usize);
    std::iter::from_fn(move || {
        let here = at?;
        let len = *name.get(here)? as usize;
        at = (len != 0).then_some(here + 1 + len);
        Some(here)
    })
}

/// A dotted name (`www.example.com`, with or without the final dot) in
/// wire format; `None` when a label is empty or too long.
pub fn encode_name(name: &str) -> Option<Vec<u8>> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let mut out = Vec::with_capacity(name.len() + 2);
    if !name.is_empty() {
        for label in name.split('.') {
            if label.is_empty() || label.len() > 63 {
                return None;
            }
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
    }
    out.push(0);
    (out.len() <= 255).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16, edns: Option<&[u8]>) -> Vec<u8> {
        let mut q = vec![
            0x12,
            0x34,
            0x01,
            0x00,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            u8::from(edns.is_some()),
        ];
        q.extend(encode_name(name).unwrap());
        q.extend(qtype.to_be_bytes());
        q.extend(1u16.to_be_bytes());
        if let Some(options) = edns {
            q.extend([0, 0, 41, 0x04, 0xD0, 0, 0, 0, 0]);
            q.extend((options.len() as u16).to_be_bytes());
            q.extend(options);
        }
        q
    }

    #[test]
    fn a_plain_query_reads_with_its_name_as_sent() {
        let q = query("WwW.Example.COM", rtype::A, None);
        let Read::Query(r) = read(&q) else { panic!() };
        assert_eq!(r.id, 0x1234);
        assert_eq!(r.qname, encode_name("WwW.Example.COM").unwrap());
        assert_eq!(r.qtype, rtype::A);
        assert_eq!(r.limit(false), 512);
        assert_eq!(r.limit(true), 65535);
    }

    #[test]
    fn client_subnet_reads_and_bad_ones_are_format_errors() {
        // 81.2.69.0/24
        let ok = [0, 8, 0, 7, 0, 1, 24, 0, 81, 2, 69];
        let q = query("example.com", 1, Some(&ok));
        let Read::Query(r) = read(&q) else { panic!() };
        let e = r.edns.unwrap();
        assert_eq!(e.udp_size, 1232);
        assert_eq!(
            e.subnet,
            Some(ClientSubnet {
                addr: "81.2.69.0".parse().unwrap(),
                source_prefix: 24
            })
        );
        for bad in [
            &[0, 8, 0, 7, 0, 1, 24, 1, 81, 2, 69][..], // scope set in a query
            &[0, 8, 0, 7, 0, 1, 23, 0, 81, 2, 69],     // bits past the prefix
            &[0, 8, 0, 6, 0, 1, 24, 0, 81, 2],         // too few bytes
            &[0, 8, 0, 7, 0, 3, 24, 0, 81, 2, 69],     // unknown family
            &[0, 8, 0, 4, 0, 1, 33, 0],                // prefix too long
            &[0, 8, 0, 9, 0, 1],                       // option overruns
        ] {
            let q = query("example.com", 1, Some(bad));
            let Read::Error { rcode, edns, .. } = read(&q) else {
                panic!("{bad:?} read")
            };
            assert_eq!(rcode, rcode::FORMERR, "{bad:?}");
            assert!(edns.is_some(), "{bad:?}: the OPT itself was readable");
        }
    }

    #[test]
    fn responses_and_short_messages_are_dropped_and_garbage_is_formerr() {
        assert!(matches!(read(&[0; 11]), Read::Drop));
        let mut r = query("example.com", 1, None);
        r[2] |= 0x80;
        assert!(matches!(read(&r), Read::Drop));
        let mut trailing = query("example.com", 1, None);
        trailing.push(0);
        assert!(matches!(
            read(&trailing),
            Read::Error {
                rcode: rcode::FORMERR,
                ..
            }
        ));
        let mut pointer = query("example.com", 1, None);
        pointer[12] = 0xC0;
        assert!(matches!(
            read(&pointer),
            Read::Error {
                rcode: rcode::FORMERR,
                question: None,
                ..
            }
        ));
    }

    #[test]
    fn suffixes_walk_label_boundaries() {
        let n = encode_name("a.bc.d").unwrap();
        assert_eq!(suffixes(&n).collect::<Vec<_>>(), vec![0, 2, 5, 7]);
        assert_eq!(suffixes(&[0]).collect::<Vec<_>>(), vec![0]);
    }
}
