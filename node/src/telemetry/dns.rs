//! The DNS server's hook: every response counted by transport, rcode and
//! answer kind (read from the response's header, never sampled); a span
//! for the kept ones (SERVFAIL always, slow ones, `dns_sampling_ratio`'s
//! share), with the question, the rcode, whether EDNS Client Subnet placed
//! the client, the node chosen and its distance.

use std::time::SystemTime;

use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

use super::metrics::{self, DNS_KINDS};
use super::sampler::Kept;
use super::span::{LIVE, SPANS, Started, took};

/// The transports, as indices of [`metrics::DNS_TRANSPORTS`].
#[derive(Debug, Clone, Copy)]
pub enum Transport {
    Udp = 0,
    Tcp = 1,
    Tls = 2,
}

/// A query begun: its ids and start, when spans are recorded.
pub fn begin() -> Option<Started> {
    LIVE.traces().then(|| Started::new(None))
}

/// How a geo answer was chosen, for the span.
pub struct GeoDetail<'a> {
    pub node: &'a str,
    pub distance_km: Option<f64>,
    pub ecs: bool,
}

/// A response whose span is due: describe it with [`KeptQuery::record`].
pub struct KeptQuery<'a> {
    started: Started,
    kept: Kept,
    end: SystemTime,
    transport: Transport,
    response: &'a [u8],
}

const SERVFAIL: u8 = 2;
const NXDOMAIN: u8 = 3;
const REFUSED: u8 = 5;

/// The answer kind (index into [`DNS_KINDS`]) from the response header.
fn kind(response: &[u8], geo: bool) -> usize {
    let rcode = response[3] & 0x0F;
    let answers = u16::from_be_bytes([response[6], response[7]]);
    let authoritative = response[2] & 0x04 != 0;
    let name = match rcode {
        NXDOMAIN => "nxdomain",
        REFUSED => "refused",
        0 if geo => "geo",
        0 if answers > 0 => "records",
        0 if !authoritative => "referral",
        0 => "nodata",
        _ => "error",
    };
    DNS_KINDS.iter().position(|k| *k == name).unwrap_or(0)
}

/// Counts one response (`replied` false: no reply was due, nothing is
/// counted here); returns the span to record when the query is kept.
pub fn answered<'a>(
    transport: Transport,
    response: &'a [u8],
    replied: bool,
    geo: bool,
    started: Option<Started>,
) -> Option<KeptQuery<'a>> {
    if !replied || response.len() < 12 {
        return None;
    }
    let rcode = response[3] & 0x0F;
    metrics::record_dns(transport as usize, rcode, kind(response, geo));
    let started = started?;
    let end = SystemTime::now();
    let kept = LIVE.dns_rules().decide(
        started.trace,
        rcode == SERVFAIL,
        took(started.at, end),
        false,
    )?;
    Some(KeptQuery {
        started,
        kept,
        end,
        transport,
        response,
    })
}

/// The question of a response: its name as the client spelt it, and type.
fn question(response: &[u8]) -> Option<(String, u16)> {
    let mut at = 12;
    let mut name = String::new();
    loop {
        let len = usize::from(*response.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        let label = response.get(at..at + len)?;
        for &b in label {
            if b.is_ascii_graphic() && b != b'.' && b != b'\\' {
                name.push(char::from(b));
            } else {
                name.push_str(&format!("\\{b:03}"));
            }
        }
        name.push('.');
        at += len;
    }
    if name.is_empty() {
        name.push('.');
    }
    let qtype = u16::from_be_bytes([*response.get(at)?, *response.get(at + 1)?]);
    Some((name, qtype))
}

impl KeptQuery<'_> {
    pub fn record(self, geo: Option<GeoDetail<'_>>) {
        let rcode = self.response[3] & 0x0F;
        let mut attributes = vec![
            KeyValue::new("dns.response.code", metrics::rcode_name(rcode)),
            KeyValue::new(
                "network.transport",
                metrics::DNS_TRANSPORTS[self.transport as usize],
            ),
            KeyValue::new(
                "dns.answer.kind",
                DNS_KINDS[kind(self.response, geo.is_some())],
            ),
        ];
        if let Some((qname, qtype)) = question(self.response) {
            attributes.push(KeyValue::new("dns.question.name", qname));
            attributes.push(KeyValue::new(
                "dns.question.type",
                hickory_proto::rr::RecordType::from(qtype).to_string(),
            ));
        }
        if let Some(g) = &geo {
            attributes.push(KeyValue::new("dns.ecs", g.ecs));
            attributes.push(KeyValue::new("makiatto.geo.node", g.node.to_owned()));
            if let Some(d) = g.distance_km {
                attributes.push(KeyValue::new("makiatto.geo.distance_km", d));
            }
        }
        let error = (rcode == SERVFAIL).then(|| {
            attributes.push(KeyValue::new("error.type", "SERVFAIL"));
            "SERVFAIL".to_owned()
        });
        SPANS.push(self.started.finish(
            "dns.query",
            SpanKind::Server,
            self.end,
            attributes,
            error,
            self.kept,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(rcode: u8, aa: bool, answers: u16) -> Vec<u8> {
        let mut r = vec![0x12, 0x34, 0x80 | if aa { 0x04 } else { 0 }, rcode, 0, 1];
        r.extend_from_slice(&answers.to_be_bytes());
        r.extend_from_slice(&[0, 0, 0, 0]);
        r.extend_from_slice(b"\x07Example\x04test\x00\x00\x01\x00\x01");
        r
    }

    #[test]
    fn the_answer_kind_and_question_come_from_the_response() {
        let k = |r: &[u8], geo| DNS_KINDS[kind(r, geo)];
        assert_eq!(k(&response(0, true, 1), true), "geo");
        assert_eq!(k(&response(0, true, 2), false), "records");
        assert_eq!(k(&response(0, false, 0), false), "referral");
        assert_eq!(k(&response(0, true, 0), false), "nodata");
        assert_eq!(k(&response(3, true, 0), false), "nxdomain");
        assert_eq!(k(&response(5, false, 0), false), "refused");
        assert_eq!(k(&response(2, false, 0), false), "error");
        assert_eq!(
            question(&response(0, true, 1)),
            Some(("Example.test.".into(), 1))
        );
        assert_eq!(question(&response(0, true, 1)[..20]), None);
    }
}
