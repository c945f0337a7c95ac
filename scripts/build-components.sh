#!/usr/bin/env bash
# Builds the WebAssembly components of the example project and of the
# tests from source (no .wasm is committed):
#   examples/components/hello   (Python)  -> examples/site/api/hello.wasm
#   examples/components/comment (Python)  -> examples/site/transforms/comment.wasm
#   node/tests/components/*.wat (WAT)     -> target/components/*.wasm
#   node/tests/components/*/app.py (Python) -> target/components/*.wasm
# A test component with a world of its own (a .wit beside its app.py,
# importing WASI, e.g. wasi:http) is built against a WIT directory
# assembled under target/components/wit/: that world, our packages and
# the WASI packages of the wasmtime-wasi-http crate in Cargo.lock, as
# Cargo downloaded it (found by `cargo metadata --offline`; build the
# workspace first), so it imports what the node provides.
# Tools: componentize-py and wasm-tools from the venv that
# scripts/install-deps.sh makes (MAKIATTO_WASM_VENV, default
# /opt/makiatto-wasm/venv). A component newer than its sources is not
# built again. Called by `maki local up` for the example project and by
# the tests' set-up.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${MAKIATTO_WASM_VENV:-/opt/makiatto-wasm/venv}"
cpy="$venv/bin/componentize-py"
wt="$venv/bin/wasm-tools"
for tool in "$cpy" "$wt"; do
  if [[ ! -x "$tool" ]]; then
    echo "build-components: $tool is missing; run scripts/install-deps.sh" >&2
    exit 1
  fi
done

# One build at a time: test processes run this at once, and each would
# otherwise see the other's half-written outputs.
mkdir -p "$root/target"
exec 9>"$root/target/.build-components.lock"
flock 9

# stale OUT SOURCES...: whether OUT is missing or older than a source.
stale() {
  local out="$1"; shift
  [[ -e "$out" ]] || return 0
  local src
  for src in "$@"; do
    [[ "$src" -nt "$out" ]] && return 0
  done
  return 1
}

# componentize DIR WIT WORLD OUT: DIR/app.py made a component of WORLD,
# against the WIT directory WIT.
componentize() {
  local dir="$1" wit="$2" world="$3" out="$4"
  mkdir -p "$(dirname "$out")"
  local tmp="$out.tmp.$$"
  (cd "$dir" && "$cpy" -d "$wit" -w "$world" componentize app -o "$tmp" >/dev/null)
  mv "$tmp" "$out"
  echo "built $out"
}

# python DIR PACKAGE WORLD OUT: against our WIT package PACKAGE.
python_component() {
  local dir="$1" wit="$root/wit/$2" world="$3" out="$4"
  if stale "$out" "$dir/app.py" "$wit"/*.wit; then
    componentize "$dir" "$wit" "$world" "$out"
  fi
}

# wasmtime_wasi_http_manifest: the Cargo.toml of the wasmtime-wasi-http
# crate that Cargo.lock names, where Cargo downloaded it. Offline and for
# this machine's platform only: nothing is fetched.
wasmtime_wasi_http_manifest() {
  local host metadata
  host="$("${RUSTC:-rustc}" -vV | sed -n 's/^host: //p')" || return 1
  metadata="$(cd "$root" && "${CARGO:-cargo}" metadata --format-version 1 --locked --offline --filter-platform "$host")" || return 1
  "$venv/bin/python3" -c 'import json, sys
print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "wasmtime-wasi-http"))' <<<"$metadata"
}

# assemble_wit DIR WIT: the WIT directory WIT made anew for the component
# in DIR: its own .wit files (their wasi: imports set to the crate's WASI
# version), our packages and the crate's WASI packages under deps/.
assemble_wit() {
  local dir="$1" wit="$2" manifest
  if ! manifest="$(wasmtime_wasi_http_manifest)"; then
    echo "build-components: cannot find the wasmtime-wasi-http crate through cargo metadata; build the workspace first" >&2
    exit 1
  fi
  local wasi="${manifest%/Cargo.toml}/wit/deps"
  local version
  version="$(sed -n 's/^package wasi:http@\(.*\);$/\1/p' "$wasi/http.wit")"
  if [[ -z "$version" ]]; then
    echo "build-components: no wasi:http package in $wasi" >&2
    exit 1
  fi
  local tmp="$wit.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp/deps"
  local f package
  for f in "$dir"/*.wit; do
    sed -E "s#(wasi:[a-z-]+/[a-z-]+)@[0-9][0-9.]*#\1@$version#g" "$f" >"$tmp/$(basename "$f")"
  done
  for package in "$root"/wit/*/; do
    cp -r "$package" "$tmp/deps/makiatto-$(basename "$package")"
  done
  cp "$wasi"/*.wit "$tmp/deps/"
  rm -rf "$wit"
  mv "$tmp" "$wit"
}

python_component "$root/examples/components/hello" http http "$root/examples/site/api/hello.wasm"
python_component "$root/examples/components/comment" transform transform "$root/examples/site/transforms/comment.wasm"

# The tests' components: Python ones (a directory with app.py, whose
# docstring's first line names the world: "(world: http)"; our package of
# that name, or the component's own world, see above), and
# hand-written core modules in WAT, made components against our WIT.
out_dir="$root/target/components"
mkdir -p "$out_dir"
for app in "$root"/node/tests/components/*/app.py; do
  [[ -e "$app" ]] || continue
  dir="$(dirname "$app")"
  name="$(basename "$dir")"
  world="$(sed -n '1s/.*(world: *\([a-z]*\)).*/\1/p' "$app")"
  out="$out_dir/$name.wasm"
  if compgen -G "$dir/*.wit" >/dev/null; then
    # Its own world: Cargo.lock names the WASI packages it is built against.
    if stale "$out" "$app" "$dir"/*.wit "$root"/wit/*/*.wit "$root/Cargo.lock"; then
      wit="$out_dir/wit/$name"
      assemble_wit "$dir" "$wit"
      componentize "$dir" "$wit" "$world" "$out"
    fi
  else
    python_component "$dir" "$world" "$world" "$out"
  fi
done
for wat in "$root"/node/tests/components/*.wat; do
  [[ -e "$wat" ]] || continue
  name="$(basename "$wat" .wat)"
  out="$out_dir/$name.wasm"
  # The first line names the package: ;; world: http | transform
  world="$(sed -n '1s/^;; world: *//p' "$wat")"
  if stale "$out" "$wat" "$root/wit/$world"/*.wit; then
    tmp="$out.tmp.$$"
    "$wt" parse "$wat" -o "$tmp.core"
    "$wt" component embed "$root/wit/$world" --world "$world" "$tmp.core" -o "$tmp.embedded"
    "$wt" component new "$tmp.embedded" -o "$tmp"
    rm -f "$tmp.core" "$tmp.embedded"
    mv "$tmp" "$out"
    echo "built $out"
  fi
done
