//! The DNS server's hook: every response counted by transport, rcode and
//! answer kind (read from the response's header, never sampled); a span
//! for the kept ones (SERVFAIL always, slow batches, `dns_sampling_ratio`'s
//! share), with the question, the rcode, whether EDNS Client Subnet placed
//! the client, the node chosen and its distance.

use std::time::SystemTime;

use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

use super::context::{self, TraceId};
use super::metrics::{self, DNS_KINDS};
use super::sampler::{Kept, Rules};
use super::span::{LIVE, SPANS, Started, took};

/// The transports, as indices of [`metrics::DNS_TRANSPORTS`].
#[derive(Debug, Clone, Copy)]
pub enum Transport {
    Udp = 0,
    Tcp = 1,
    Tls = 2,
}

/// The queries answered from one receive (a UDP `recvmmsg` batch of up
/// to 32, or one query over TCP), while spans are recorded. A query is
/// cheap (about 1,900 instructions to answer), so recording each one
/// must cost next to nothing: one clock read for the whole batch, the
/// rules loaded once, and per query one random draw for the ratio (a
/// few instructions); the ids and the end time are made only for a
/// query that is kept. A batch that took at least the slow threshold
/// keeps every query in it ([`Batch::slow_end`]).
pub struct Batch {
    at: SystemTime,
    rules: Rules,
    /// A SplitMix64 state, seeded from the thread's generator.
    draws: u64,
}

/// A batch begun, when spans are recorded.
pub fn batch() -> Option<Batch> {
    LIVE.traces().then(|| Batch {
        at: SystemTime::now(),
        rules: LIVE.dns_rules(),
        draws: context::next_u64(),
    })
}

impl Batch {
    /// 64 random bits (SplitMix64).
    fn draw(&mut self) -> u64 {
        self.draws = self.draws.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.draws;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A kept query's span begins: a new trace whose random bits are the
    /// draw that kept it, begun with the batch.
    fn started(&self, bits: u64) -> Started {
        let mut trace = [0u8; 16];
        trace[..8].copy_from_slice(&context::next_u64().to_be_bytes());
        trace[8..].copy_from_slice(&bits.to_be_bytes());
        if trace == [0; 16] {
            trace[15] = 1;
        }
        Started {
            trace: TraceId(trace),
            span: context::new_span_id(),
            parent: None,
            remote: false,
            at: self.at,
        }
    }

    /// The end of a batch that took at least the slow threshold: its
    /// queries not kept yet are kept as slow ([`Batch::slow`]).
    pub fn slow_end(&self) -> Option<SystemTime> {
        let end = SystemTime::now();
        (took(self.at, end) >= self.rules.slow).then_some(end)
    }

    /// A query of a slow batch (see [`Batch::slow_end`]), as kept.
    pub fn slow<'a>(
        &mut self,
        end: SystemTime,
        transport: Transport,
        response: &'a [u8],
        geo: bool,
    ) -> KeptQuery<'a> {
        let bits = self.draw();
        KeptQuery {
            started: self.started(bits),
            kept: Kept::Slow,
            end,
            transport,
            response,
            geo,
        }
    }
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
    /// A geo answer (the detail may be unknown: a slow batch's queries).
    geo: bool,
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
/// counted here); returns the span to record when the query is kept: a
/// SERVFAIL, or the ratio's share (`dns_sampling_ratio`). A query not
/// kept costs the batch one random draw.
pub fn answered<'a>(
    transport: Transport,
    response: &'a [u8],
    replied: bool,
    geo: bool,
    batch: Option<&mut Batch>,
) -> Option<KeptQuery<'a>> {
    if !replied || response.len() < 12 {
        return None;
    }
    let rcode = response[3] & 0x0F;
    metrics::record_dns(transport as usize, rcode, kind(response, geo));
    let batch = batch?;
    let bits = batch.draw();
    let kept = if rcode == SERVFAIL {
        Kept::Error
    } else if batch.rules.keeps(bits) {
        Kept::Ratio
    } else {
        return None;
    };
    Some(KeptQuery {
        started: batch.started(bits),
        kept,
        end: SystemTime::now(),
        transport,
        response,
        geo,
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
            KeyValue::new("dns.answer.kind", DNS_KINDS[kind(self.response, self.geo)]),
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

    fn batch(ratio: f64, at: SystemTime) -> Batch {
        Batch {
            at,
            rules: Rules::new(ratio, std::time::Duration::from_secs(1)),
            draws: 7,
        }
    }

    #[test]
    fn a_batch_keeps_every_servfail_the_ratios_share_and_a_slow_batch() {
        let now = SystemTime::now();
        let ok = response(0, true, 1);
        let fail = response(SERVFAIL, false, 0);
        let kept = |b: &mut Batch, r: &[u8]| {
            answered(Transport::Udp, r, true, true, Some(b)).map(|k| k.kept)
        };
        assert_eq!(kept(&mut batch(1.0, now), &ok), Some(Kept::Ratio));
        assert_eq!(kept(&mut batch(0.0, now), &ok), None);
        assert_eq!(kept(&mut batch(0.0, now), &fail), Some(Kept::Error));
        // No reply due, or no batch (spans off): nothing.
        assert!(
            answered(
                Transport::Udp,
                &fail,
                false,
                false,
                Some(&mut batch(1.0, now))
            )
            .is_none()
        );
        assert!(answered(Transport::Udp, &fail, true, false, None).is_none());
        // The ratio keeps its share (binomial: five standard deviations).
        let mut tenth = batch(0.1, now);
        let n = 100_000;
        let share = (0..n).filter(|_| kept(&mut tenth, &ok).is_some()).count() as f64;
        let sd = (n as f64 * 0.1 * 0.9).sqrt();
        assert!(
            (share - n as f64 * 0.1).abs() < 5.0 * sd,
            "kept {share} of {n}"
        );
        // A kept query's trace carries the draw that kept it.
        let mut b = batch(0.5, now);
        let k = (0..100)
            .find_map(|_| answered(Transport::Udp, &ok, true, false, Some(&mut b)))
            .unwrap();
        assert!(b.rules.keeps(k.started.trace.random_bits()));
        assert_eq!(k.started.at, now);
        // A batch that took the slow threshold keeps the rest of it.
        assert!(batch(0.0, now).slow_end().is_none());
        let mut old = batch(0.0, now - std::time::Duration::from_secs(2));
        let end = old.slow_end().unwrap();
        assert_eq!(old.slow(end, Transport::Udp, &ok, true).kept, Kept::Slow);
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
