#!/usr/bin/env bash
# Builds the WebAssembly components of the example project and of the
# tests from source (no .wasm is committed):
#   examples/components/hello   (Python)  -> examples/site/api/hello.wasm
#   examples/components/comment (Python)  -> examples/site/transforms/comment.wasm
#   node/tests/components/*.wat (WAT)     -> target/components/*.wasm
#   node/tests/components/*/app.py (Python) -> target/components/*.wasm
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

# python DIR WIT WORLD OUT
python_component() {
  local dir="$1" wit="$root/wit/$2" world="$3" out="$4"
  if stale "$out" "$dir/app.py" "$wit"/*.wit; then
    mkdir -p "$(dirname "$out")"
    local tmp="$out.tmp.$$"
    (cd "$dir" && "$cpy" -d "$wit" -w "$world" componentize app -o "$tmp" >/dev/null)
    mv "$tmp" "$out"
    echo "built $out"
  fi
}

python_component "$root/examples/components/hello" http http "$root/examples/site/api/hello.wasm"
python_component "$root/examples/components/comment" transform transform "$root/examples/site/transforms/comment.wasm"

# The tests' components: Python ones (a directory with app.py, whose
# docstring's first line names the world: "(world: http)"), and
# hand-written core modules in WAT, made components against our WIT.
out_dir="$root/target/components"
mkdir -p "$out_dir"
for app in "$root"/node/tests/components/*/app.py; do
  [[ -e "$app" ]] || continue
  dir="$(dirname "$app")"
  world="$(sed -n '1s/.*(world: *\([a-z]*\)).*/\1/p' "$app")"
  python_component "$dir" "$world" "$world" "$out_dir/$(basename "$dir").wasm"
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
