#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers of the daemon and of `maki` with
# AFL++ (cargo-afl from crates.io, stable Rust), in persistent mode, from
# the seed corpora in node/fuzz/corpus/. Usage:
#
#   scripts/fuzz.sh [TARGET|all] [SECONDS]     # default: all, 60 s each
#
# Targets: dns http event frames session control record image
# (node/src/fuzz.rs) and project (maki/src/fuzz.rs: makiatto.toml).
# Prints each target's executions, edges found, crashes and hangs from
# AFL++'s fuzzer_stats; findings stay in node/fuzz/out/<target>/.
# CARGO=lcargo builds through the machine's build lock.
set -euo pipefail
target=${1:-all}
seconds=${2:-60}
cargo=${CARGO:-cargo}
cd "$(dirname "$0")/../node/fuzz"
command -v cargo-afl >/dev/null || $cargo install cargo-afl --locked
# AFL++ itself, built once by cargo-afl.
$cargo afl config --build >/dev/null 2>&1 || true
# No `--cfg fuzzing`: with it, rav1e (the images' AVIF encoder) links
# libFuzzer, whose coverage hooks collide with AFL++'s. Nothing of ours
# reads that cfg.
AFL_NO_CFG_FUZZING=1 $cargo afl build --release --quiet
targets=(dns http event frames session control record image project)
[[ $target == all ]] || targets=("$target")
export AFL_SKIP_CPUFREQ=1 AFL_NO_UI=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1
for t in "${targets[@]}"; do
  mkdir -p out
  # The fuzzing itself outside the build lock: it builds nothing.
  cargo afl fuzz -V "$seconds" -i "corpus/$t" -o "out/$t" "target/release/$t" >"out/$t.log" 2>&1 || true
  stats="out/$t/default/fuzzer_stats"
  if [[ -f $stats ]]; then
    get() { awk -F: -v k="$1" '$1 ~ "^"k" *$" {gsub(/ /,"",$2); print $2}' "$stats"; }
    echo "$t: $(get execs_done) executions, $(get edges_found) edges, $(get saved_crashes) crashes, $(get saved_hangs) hangs, $(get run_time) s"
  else
    echo "$t: AFL++ did not run; see node/fuzz/out/$t.log"
  fi
done
