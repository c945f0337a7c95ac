#!/usr/bin/env bash
# The main job: a local cluster of three Makiatto nodes on this machine, each
# a test host (network + mount namespace with its own sshd), initialised over
# SSH by `maki machine init`, serving the example site (examples/, domain
# example.test) synced with `maki sync`. Needs root on Linux. Tear down with:
#   target/release/maki local down
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo build --release --locked -p makiatto -p makiatto-cli
target/release/maki local up --sync examples/makiatto.toml "$@"
source .makiatto-local/env.sh
target/release/maki machine list
target/release/maki log
target/release/maki health
