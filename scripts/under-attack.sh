#!/usr/bin/env bash
# The hostile-input matrix's figures under attack (docs/reliability.md):
# one node of a two-node local cluster attacked by scripts/hostile.py from
# the other node's host (so every packet stays on the cluster's bridge),
# while a probe on that host asks the attacked node for a page five times
# a second (a new connection each, 2 s timeout; for DNS attacks, `dig`).
#
#   scripts/under-attack.sh ATTACK [SECONDS] [CONNECTIONS]
#
# ATTACK is a mode of scripts/hostile.py. The site is the example project
# plus a function that reads its request body (node/tests/components/
# echo.wat at /api/echo, POST allowed), the target of slow-body and
# huge-body. Needs root, a release build (MAKI, MAKIATTO default to
# target/release/) and the components (scripts/build-components.sh).
# Prints the attack's JSON line, the probe's counts and the attacked
# node's HTTP counters before and after. The cluster stays up for the
# next attack (`MAKIATTO_PROFILE=/tmp/makiatto-attack/profile.toml
# maki local down --name attack --dir /tmp/makiatto-attack/cluster`
# ends it).
set -euo pipefail
cd "$(dirname "$0")/.."
attack=${1:?usage: scripts/under-attack.sh ATTACK [SECONDS] [CONNECTIONS]}
seconds=${2:-15}
conns=${3:-4}
maki=${MAKI:-$PWD/target/release/maki}
makiatto=${MAKIATTO:-$PWD/target/release/makiatto}
dir=${MAKIATTO_ATTACK_DIR:-/tmp/makiatto-attack}
export MAKIATTO_PROFILE=$dir/profile.toml MAKIATTO_OPERATOR_KEY=$dir/operator.key
mk() { "$maki" "$@"; }

if ! mk local status --dir "$dir/cluster" --name attack >/dev/null 2>&1; then
  rm -rf "$dir" && mkdir -p "$dir/project"
  cp -a examples/. "$dir/project/"
  cp target/components/echo.wasm "$dir/project/site/api/echo.wasm"
  cat >>"$dir/project/makiatto.toml" <<'EOF'

[[domain.functions]]
path = "api/echo.wasm"
methods = ["POST"]
EOF
  mk local up --dir "$dir/cluster" --name attack --nodes 2 --no-ca \
    --binary-path "$makiatto" --sync "$dir/project/makiatto.toml" >"$dir/up.log" 2>&1
fi
# `maki local status`: a header line, a column line, then NODE CITY IPV4 ….
status=$(mk local status --dir "$dir/cluster" --name attack)
read -r victim _ victim_ip _ < <(sed -n 3p <<<"$status")
read -r attacker _ < <(sed -n 4p <<<"$status")
on() { mk local exec --dir "$dir/cluster" --name attack "$attacker" -- "$@"; }
http_counts() { mk local exec --dir "$dir/cluster" --name attack "$victim" -- makiatto health --json | jq -c '{responses: .http.responses, ended: .http.ended}'; }
# The site is served (its components compiled) before the attack starts.
for _ in $(seq 1 120); do
  code=$(on curl -sk -o /dev/null -w '%{http_code}' --max-time 2 --resolve "example.test:443:$victim_ip" https://example.test/ || true)
  [[ $code == 200 ]] && break
  sleep 2
done
[[ $code == 200 ]] || { echo "the victim does not serve the site (last status $code)" >&2; exit 1; }

echo "attack $attack on $victim ($victim_ip) from $attacker, $seconds s, $conns connections"
before=$(http_counts)
on python3 - "$victim_ip" "$seconds" "$attack" >"$dir/probe.json" <<'EOF' &
import json, subprocess, sys, time
ip, seconds, attack = sys.argv[1], float(sys.argv[2]), sys.argv[3]
dns = attack.startswith("dns")
ok = failed = 0
took = []
until = time.time() + seconds
while time.time() < until:
    t = time.time()
    if dns:
        argv = ["dig", "@" + ip, "example.test", "A", "+time=2", "+tries=1", "+short"]
    else:
        argv = ["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2",
                "--resolve", "example.test:443:" + ip, "https://example.test/"]
    out = subprocess.run(argv, capture_output=True, text=True)
    good = out.returncode == 0 and (out.stdout.strip() if dns else out.stdout == "200")
    ok += bool(good)
    failed += not good
    took.append(time.time() - t)
    time.sleep(max(0, 0.2 - (time.time() - t)))
took.sort()
print(json.dumps({"probe_ok": ok, "probe_failed": failed,
                  "median_ms": round(took[len(took) // 2] * 1000, 1) if took else None}))
EOF
probe=$!
on python3 "$PWD/scripts/hostile.py" "$attack" "$victim_ip" example.test "$seconds" "$conns" ${ATTACK_PATH:+"$ATTACK_PATH"}
wait "$probe"
cat "$dir/probe.json"
echo "HTTP counters before: $before"
echo "HTTP counters after:  $(http_counts)"
