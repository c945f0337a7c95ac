#!/usr/bin/env bash
# The main job: a local cluster of three Makiatto nodes on this machine, each
# a test host (network + mount namespace with its own sshd), initialised over
# SSH by `maki machine init`, serving the example site (examples/, domain
# example.test) synced with `maki sync`, answered by every node's GeoDNS and
# served over HTTPS with certificates from a local ACME CA (pebble). Needs
# root on Linux. Tear down with:
#   target/release/maki local down
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/step.sh
source scripts/step.sh
scripts/install-deps.sh
scripts/fetch-geoip.sh
step "building makiatto and maki (release; ten minutes the first time)" \
  cargo build --release --locked -p makiatto -p makiatto-cli
target/release/maki local up --sync examples/makiatto.toml "$@"
source .makiatto-local/env.sh
target/release/maki machine list
target/release/maki log
# Certificates from the cluster's own ACME CA (pebble) arrive within seconds.
M=target/release/maki
for _ in $(seq 60); do
  $M certs --json | jq -e '.names[] | select(.name == "example.test") | .state | startswith("valid")' >/dev/null && break
  sleep 1
done
$M certs
$M health
first=$(jq -r '.hosts[0].ipv4' .makiatto-local/state.json)
echo "GeoDNS (a London subnet, asked at $first):"
$M local exec vector -- dig +short @"$first" example.test A +subnet=81.2.69.0/24
echo "HTTPS, verified against the local CA:"
$M local exec vector -- curl -sS --cacert "$($M local ca)" --resolve "example.test:443:$first" https://example.test/ | head -5
