#!/usr/bin/env bash
# The whole test suite, as CI runs it: dependencies, formatting, lints, tests.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
scripts/fetch-geoip.sh   # the DNS test places real client subnets with it
# The compatibility tests build the previous release from history
# (maki/tests/compat.rs): deepen a shallow clone when the origin allows.
if [ "$(git rev-parse --is-shallow-repository 2>/dev/null)" = true ]; then
  git fetch --quiet --unshallow || echo "note: shallow clone without history; the compatibility tests will skip"
fi
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
