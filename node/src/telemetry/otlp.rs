//! Spans to the collector: a batch of queued spans written straight into
//! the bytes of an OTLP `ExportTraceServiceRequest`, and sent with tonic.
//!
//! `opentelemetry-otlp`'s exporter converts every span into
//! `opentelemetry-proto`'s message types first (a `String` per attribute
//! key and value, a `Vec` per id), encodes them, and frees them again:
//! measured under callgrind, about 20,000 instructions per span, more than
//! answering the request the span describes. Written here with prost's
//! wire primitives from the spans as they are, a span costs a few
//! thousand. The message is the same: the tests decode it with
//! `opentelemetry-proto`'s types and compare it with that library's own
//! conversion of the same spans. A span with events or links (none of the
//! daemon's have them) is converted by the library, so nothing is lost.

use std::time::SystemTime;

use bytes::{Buf, BufMut};
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::common::v1 as proto_common;
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use opentelemetry_sdk::trace::SpanData;
use prost::Message as _;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// The gRPC method spans are exported with.
const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Writes field `tag` as length-delimited `bytes`.
fn put_bytes(out: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

fn put_varint(out: &mut Vec<u8>, tag: u32, value: u64) {
    encode_key(tag, WireType::Varint, out);
    encode_varint(value, out);
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// An `AnyValue` message's body.
fn put_any_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::String(s) => put_bytes(out, 1, s.as_str().as_bytes()),
        Value::Bool(b) => put_varint(out, 2, u64::from(*b)),
        // int64 is written as the two's complement varint.
        Value::I64(i) => put_varint(out, 3, *i as u64),
        Value::F64(f) => {
            encode_key(4, WireType::SixtyFourBit, out);
            out.put_f64_le(*f);
        }
        // Arrays and anything newer: the library's conversion.
        other => {
            let any = proto_common::AnyValue::from(other.clone());
            if let Some(v) = any.value {
                v.encode(out);
            }
        }
    }
}

/// Buffers a message's nested messages are built in (their lengths come
/// before them), reused from span to span.
#[derive(Default)]
struct Scratch {
    attribute: Vec<u8>,
    value: Vec<u8>,
}

/// A `KeyValue` message, as field `tag` of `out`.
fn put_attribute(out: &mut Vec<u8>, tag: u32, kv: &KeyValue, scratch: &mut Scratch) {
    scratch.attribute.clear();
    let key = kv.key.as_str();
    if !key.is_empty() {
        put_bytes(&mut scratch.attribute, 1, key.as_bytes());
    }
    scratch.value.clear();
    put_any_value(&mut scratch.value, &kv.value);
    put_bytes(&mut scratch.attribute, 2, &scratch.value);
    put_bytes(out, tag, &scratch.attribute);
}

fn kind(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

/// A `Span` message's body.
fn put_span(out: &mut Vec<u8>, span: &SpanData, scratch: &mut Scratch) {
    let context = &span.span_context;
    put_bytes(out, 1, &context.trace_id().to_bytes());
    put_bytes(out, 2, &context.span_id().to_bytes());
    let state = context.trace_state().header();
    if !state.is_empty() {
        put_bytes(out, 3, state.as_bytes());
    }
    if span.parent_span_id != opentelemetry::trace::SpanId::INVALID {
        put_bytes(out, 4, &span.parent_span_id.to_bytes());
    }
    // Flags: the W3C trace flags, and whether the parent is remote (and
    // that this is known), as `build_span_flags` in opentelemetry-proto.
    let mut flags = u32::from(context.trace_flags().to_u8()) | 0x100;
    if span.parent_span_is_remote {
        flags |= 0x200;
    }
    encode_key(16, WireType::ThirtyTwoBit, out);
    out.put_u32_le(flags);
    if !span.name.is_empty() {
        put_bytes(out, 5, span.name.as_bytes());
    }
    put_varint(out, 6, kind(&span.span_kind));
    encode_key(7, WireType::SixtyFourBit, out);
    out.put_u64_le(nanos(span.start_time));
    encode_key(8, WireType::SixtyFourBit, out);
    out.put_u64_le(nanos(span.end_time));
    for kv in &span.attributes {
        put_attribute(out, 9, kv, scratch);
    }
    if span.dropped_attributes_count != 0 {
        put_varint(out, 10, u64::from(span.dropped_attributes_count));
    }
    // Status, always present (as the library writes it).
    let status = &mut scratch.value;
    status.clear();
    let code = match &span.status {
        Status::Unset => 0,
        Status::Ok => 1,
        Status::Error { description } => {
            if !description.is_empty() {
                put_bytes(status, 2, description.as_bytes());
            }
            2
        }
    };
    if code != 0 {
        put_varint(status, 3, code);
    }
    put_bytes(out, 15, status);
}

/// A scope's message body (`InstrumentationScope`), by the library.
fn scope_bytes(scope: &InstrumentationScope) -> Vec<u8> {
    let proto: proto_common::InstrumentationScope = (scope, None).into();
    proto.encode_to_vec()
}

/// The `ExportTraceServiceRequest` for `spans`, with `resource` (its
/// encoded message body) as every span's resource.
pub fn encode_request(resource: &[u8], spans: Vec<SpanData>) -> Vec<u8> {
    let mut body = Vec::with_capacity(spans.len() * 320);
    let mut span_buf = Vec::with_capacity(512);
    let mut scratch = Scratch::default();
    // Scope after scope, in the order they first appear (the daemon's
    // spans all have one).
    let mut scopes: Vec<(&InstrumentationScope, Vec<u8>)> = Vec::new();
    for span in &spans {
        let at = match scopes
            .iter()
            .position(|(s, _)| *s == &span.instrumentation_scope)
        {
            Some(i) => i,
            None => {
                let mut group = Vec::new();
                put_bytes(&mut group, 1, &scope_bytes(&span.instrumentation_scope));
                scopes.push((&span.instrumentation_scope, group));
                scopes.len() - 1
            }
        };
        let group = &mut scopes[at].1;
        span_buf.clear();
        if span.events.is_empty() && span.links.is_empty() {
            put_span(&mut span_buf, span, &mut scratch);
        } else {
            let library = opentelemetry_proto::tonic::trace::v1::Span::from(span.clone());
            span_buf.extend_from_slice(&library.encode_to_vec());
        }
        put_bytes(group, 2, &span_buf);
    }
    for (scope, mut group) in scopes {
        if let Some(url) = scope.schema_url()
            && !url.is_empty()
        {
            put_bytes(&mut group, 3, url.as_bytes());
        }
        put_bytes(&mut body, 2, &group);
    }
    // ResourceSpans { resource = 1, scope_spans = 2 }, in the request's
    // field 1.
    let mut resource_spans = Vec::with_capacity(
        body.len() + resource.len() + 2 * encoded_len_varint(resource.len() as u64) + 2,
    );
    put_bytes(&mut resource_spans, 1, resource);
    resource_spans.extend_from_slice(&body);
    let mut request = Vec::with_capacity(resource_spans.len() + 8);
    put_bytes(&mut request, 1, &resource_spans);
    request
}

/// The resource's message body, once per pipeline.
pub fn resource_bytes(resource: &ProtoResource) -> Vec<u8> {
    resource.encode_to_vec()
}

/// A codec that sends bytes already encoded, and decodes the answer.
#[derive(Clone, Copy, Default)]
struct Encoded;

impl Codec for Encoded {
    type Encode = Vec<u8>;
    type Decode = ExportTraceServiceResponse;
    type Encoder = Encoded;
    type Decoder = Encoded;

    fn encoder(&mut self) -> Self::Encoder {
        Encoded
    }

    fn decoder(&mut self) -> Self::Decoder {
        Encoded
    }
}

impl Encoder for Encoded {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Encoded {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut DecodeBuf<'_>,
    ) -> Result<Option<ExportTraceServiceResponse>, tonic::Status> {
        let answer = ExportTraceServiceResponse::decode(src.copy_to_bytes(src.remaining()))
            .map_err(|e| tonic::Status::internal(format!("the collector's answer: {e}")))?;
        Ok(Some(answer))
    }
}

/// Sends one encoded request; the spans the collector said it rejected.
pub async fn export(
    channel: &tonic::transport::Channel,
    request: Vec<u8>,
) -> Result<i64, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(EXPORT);
    let answer = grpc
        .unary(tonic::Request::new(request), path, Encoded)
        .await?
        .into_inner();
    Ok(answer.partial_success.map_or(0, |p| p.rejected_spans))
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::time::Duration;

    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};

    use super::*;

    fn span(i: u8, parent: bool, status: Status, scope: &InstrumentationScope) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes([i; 16]),
                SpanId::from_bytes([i + 1; 8]),
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
            parent_span_id: if parent {
                SpanId::from_bytes([9; 8])
            } else {
                SpanId::INVALID
            },
            parent_span_is_remote: parent,
            span_kind: if parent {
                SpanKind::Server
            } else {
                SpanKind::Internal
            },
            name: Cow::Borrowed("GET"),
            start_time: SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
            end_time: SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_223_456_789),
            attributes: vec![
                KeyValue::new("http.request.method", "GET"),
                KeyValue::new("http.response.status_code", 503_i64),
                KeyValue::new("http.response.body.size", -1_i64),
                KeyValue::new("url.path", "/ä/%2e%2e/".to_owned()),
                KeyValue::new(
                    "server.address",
                    std::sync::Arc::<str>::from("example.test"),
                ),
                KeyValue::new("cdn.cache.hit", false),
                KeyValue::new("makiatto.dns.distance_km", 0.0),
                KeyValue::new("makiatto.ratio", 12.5),
                KeyValue::new(
                    "makiatto.list",
                    Value::Array(opentelemetry::Array::I64(vec![1, 2])),
                ),
                KeyValue::new("", ""),
            ],
            dropped_attributes_count: u32::from(i),
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: scope.clone(),
        }
    }

    fn resource() -> (Resource, ProtoResource) {
        let sdk = Resource::builder_empty()
            .with_attributes([
                KeyValue::new("service.name", "makiatto.a"),
                KeyValue::new("geo.location.lat", 51.5),
            ])
            .build();
        let proto = ProtoResource {
            attributes: vec![
                proto_common::KeyValue {
                    key: "service.name".into(),
                    value: Some(proto_common::AnyValue {
                        value: Some(proto_common::any_value::Value::StringValue(
                            "makiatto.a".into(),
                        )),
                    }),
                    ..Default::default()
                },
                proto_common::KeyValue {
                    key: "geo.location.lat".into(),
                    value: Some(proto_common::AnyValue {
                        value: Some(proto_common::any_value::Value::DoubleValue(51.5)),
                    }),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        (sdk, proto)
    }

    /// The request with its resource's attributes in key order (the SDK's
    /// resource keeps them in a hash map: their order means nothing).
    fn normalized(mut r: ExportTraceServiceRequest) -> ExportTraceServiceRequest {
        for rs in &mut r.resource_spans {
            if let Some(res) = &mut rs.resource {
                res.attributes.sort_by(|a, b| a.key.cmp(&b.key));
            }
        }
        r
    }

    #[test]
    fn the_request_is_what_the_library_would_send() {
        let ours = InstrumentationScope::builder("makiatto")
            .with_version("1.2.3")
            .build();
        let other = InstrumentationScope::builder("other")
            .with_schema_url("https://opentelemetry.io/schemas/1.0")
            .build();
        let spans = vec![
            span(1, true, Status::Unset, &ours),
            span(2, false, Status::error("status 503"), &ours),
            span(3, false, Status::Ok, &other),
            span(4, true, Status::error(""), &ours),
        ];
        let (sdk, proto) = resource();
        let bytes = encode_request(&resource_bytes(&proto), spans.clone());
        let decoded = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
        let expected = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(
                spans,
                &ResourceAttributesWithSchema::from(&sdk),
            ),
        };
        assert_eq!(normalized(decoded), normalized(expected));
    }

    #[test]
    fn a_span_with_events_is_converted_by_the_library() {
        let scope = InstrumentationScope::builder("makiatto").build();
        let mut s = span(5, false, Status::Unset, &scope);
        s.events.events.push(opentelemetry::trace::Event::new(
            "retry",
            SystemTime::UNIX_EPOCH + Duration::from_secs(1),
            vec![KeyValue::new("attempt", 2_i64)],
            0,
        ));
        let (sdk, proto) = resource();
        let bytes = encode_request(&resource_bytes(&proto), vec![s.clone()]);
        let decoded = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
        let expected = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(
                vec![s],
                &ResourceAttributesWithSchema::from(&sdk),
            ),
        };
        assert_eq!(normalized(decoded.clone()), normalized(expected));
        assert_eq!(
            decoded.resource_spans[0].scope_spans[0].spans[0].events[0].name,
            "retry"
        );
    }

    #[test]
    fn an_empty_batch_is_a_request_with_its_resource_only() {
        let (_, proto) = resource();
        let bytes = encode_request(&resource_bytes(&proto), Vec::new());
        let decoded = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded.resource_spans.len(), 1);
        assert!(decoded.resource_spans[0].scope_spans.is_empty());
        assert_eq!(decoded.resource_spans[0].resource, Some(proto));
    }
}
