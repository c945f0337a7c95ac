"""A real OTLP/gRPC receiver for the telemetry tests: the collector's
receiving end, built from the OpenTelemetry protocol definitions (PyPI's
opentelemetry-proto and grpcio; scripts/install-otlp-receiver.sh).

It serves the TraceService, MetricsService and LogsService Export calls on
--listen and appends what it receives to --out, one JSON object per span,
metric data point or log record, flattened for the tests to read:

  {"signal": "span", "service": "makiatto.vector", "resource": {...},
   "name": ..., "kind": ..., "trace_id": hex, "span_id": hex,
   "parent_span_id": hex, "status": code, "attributes": {...},
   "start": ns, "end": ns}
  {"signal": "metric", "service": ..., "resource": {...}, "name": ...,
   "unit": ..., "type": "sum"|"gauge"|"histogram", "monotonic": bool,
   "temporality": int, "attributes": {...}, "value": number (sum, gauge),
   "count", "sum", "buckets", "bounds" (histogram), "exemplars": [hex trace ids]}
  {"signal": "log", "service": ..., "resource": {...}, "severity": ...,
   "body": ..., "trace_id": hex, "span_id": hex, "attributes": {...}}

--ready names a file written once the port is bound.

--sink makes it a collector that takes no CPU worth measuring, for the
telemetry bench (where the collector shares the node's machine, though the
guide puts it on one of its own): each Export call is answered without
decoding its message, and one line records it:

  {"signal": "span"|"metric"|"log", "bytes": length of the request}
"""

import argparse
import json
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


def value(v):
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return attrs(v.kvlist_value.values)
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind)


def attrs(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


class Sink:
    def __init__(self, path):
        self.lock = threading.Lock()
        self.out = open(path, "a", encoding="utf-8")

    def write(self, records):
        with self.lock:
            for r in records:
                self.out.write(json.dumps(r) + "\n")
            self.out.flush()


def with_resource(resource):
    r = attrs(resource.attributes)
    return {"service": r.get("service.name"), "resource": r}


class Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, sink):
        self.sink = sink

    def Export(self, request, context):
        records = []
        for rs in request.resource_spans:
            base = with_resource(rs.resource)
            for ss in rs.scope_spans:
                for s in ss.spans:
                    records.append(dict(
                        base, signal="span", scope=ss.scope.name, name=s.name, kind=s.kind,
                        trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(), status=s.status.code,
                        attributes=attrs(s.attributes),
                        start=s.start_time_unix_nano, end=s.end_time_unix_nano))
        self.sink.write(records)
        return trace_service_pb2.ExportTraceServiceResponse()


def number(p):
    return p.as_int if p.WhichOneof("value") == "as_int" else p.as_double


class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, sink):
        self.sink = sink

    def Export(self, request, context):
        records = []
        for rm in request.resource_metrics:
            base = with_resource(rm.resource)
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    kind = m.WhichOneof("data")
                    head = dict(base, signal="metric", name=m.name, unit=m.unit, type=kind)
                    if kind == "sum":
                        for p in m.sum.data_points:
                            records.append(dict(
                                head, monotonic=m.sum.is_monotonic,
                                temporality=m.sum.aggregation_temporality,
                                attributes=attrs(p.attributes), value=number(p)))
                    elif kind == "gauge":
                        for p in m.gauge.data_points:
                            records.append(dict(head, attributes=attrs(p.attributes), value=number(p)))
                    elif kind == "histogram":
                        for p in m.histogram.data_points:
                            records.append(dict(
                                head, temporality=m.histogram.aggregation_temporality,
                                attributes=attrs(p.attributes), count=p.count, sum=p.sum,
                                buckets=list(p.bucket_counts), bounds=list(p.explicit_bounds),
                                exemplars=[e.trace_id.hex() for e in p.exemplars]))
        self.sink.write(records)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class Logs(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, sink):
        self.sink = sink

    def Export(self, request, context):
        records = []
        for rl in request.resource_logs:
            base = with_resource(rl.resource)
            for sl in rl.scope_logs:
                for r in sl.log_records:
                    records.append(dict(
                        base, signal="log", severity=r.severity_text,
                        severity_number=r.severity_number, body=value(r.body),
                        trace_id=r.trace_id.hex(), span_id=r.span_id.hex(),
                        attributes=attrs(r.attributes)))
        self.sink.write(records)
        return logs_service_pb2.ExportLogsServiceResponse()


SERVICES = {
    "span": "opentelemetry.proto.collector.trace.v1.TraceService",
    "metric": "opentelemetry.proto.collector.metrics.v1.MetricsService",
    "log": "opentelemetry.proto.collector.logs.v1.LogsService",
}


def add_sinks(server, sink):
    """The three Export calls, answered with an empty response (the
    encoding of every Export*ServiceResponse with no partial success)."""

    def export(signal):
        def handle(request, context):
            sink.write([{"signal": signal, "bytes": len(request)}])
            return b""

        # No deserializer and no serializer: the request arrives as bytes.
        return grpc.unary_unary_rpc_method_handler(handle)

    server.add_generic_rpc_handlers([
        grpc.method_handlers_generic_handler(service, {"Export": export(signal)})
        for signal, service in SERVICES.items()
    ])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--ready", required=True)
    parser.add_argument("--sink", action="store_true")
    args = parser.parse_args()
    sink = Sink(args.out)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    if args.sink:
        add_sinks(server, sink)
    else:
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(sink), server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(sink), server)
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(sink), server)
    if server.add_insecure_port(args.listen) == 0:
        raise SystemExit(f"cannot listen on {args.listen}")
    server.start()
    with open(args.ready, "w", encoding="utf-8") as f:
        f.write("listening\n")
    server.wait_for_termination()


if __name__ == "__main__":
    main()
