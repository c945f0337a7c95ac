#!/usr/bin/env bash
# Builds the wasm bench's anchor: wasmtime's own CLI, version 48.0.8 (the
# runtime version the daemon links), with `wasmtime serve`, from crates.io
# (no Debian package carries it). About 20 minutes on two cores; the
# bench looks for it at /opt/makiatto-bench/wasmtime/bin/wasmtime (or
# $MAKIATTO_BENCH_WASMTIME) and leaves the anchor out without it. Not part
# of the tests or `.ci/run`.
set -euo pipefail

root=${MAKIATTO_BENCH_TOOLS:-/opt/makiatto-bench}/wasmtime
if [ -x "$root/bin/wasmtime" ] && "$root/bin/wasmtime" --version | grep -q '^wasmtime 48\.0\.8'; then
  echo "wasmtime 48.0.8 is already at $root/bin/wasmtime"
  exit 0
fi
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/wasmtime-cli-build} \
  cargo install --root "$root" wasmtime-cli --version =48.0.8 --locked \
  --no-default-features \
  --features run,serve,cranelift,pooling-allocator,parallel-compilation,wat,cache,component-model-async
"$root/bin/wasmtime" --version
