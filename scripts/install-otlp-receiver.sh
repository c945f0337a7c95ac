#!/usr/bin/env bash
# The OTLP/gRPC receiver of the telemetry tests (benches/harness/otlp_receiver.py)
# runs on PyPI's grpcio and opentelemetry-proto (Debian's grpcio and protobuf
# are too old). Installs them into a virtual environment of their own, once:
#   ${MAKIATTO_OTLP_VENV:-/var/cache/makiatto/otlp-venv}
# Idempotent; needs Debian's python3-venv (scripts/install-deps.sh).
set -euo pipefail

venv="${MAKIATTO_OTLP_VENV:-/var/cache/makiatto/otlp-venv}"
want=("grpcio==1.85.1" "opentelemetry-proto==1.45.2")
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import grpc, opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc' 2>/dev/null; then
  exit 0
fi
echo "installing the OTLP receiver's Python packages into $venv"
mkdir -p "$(dirname "$venv")"
/usr/bin/python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${want[@]}"
