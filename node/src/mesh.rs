//! The WireGuard mesh: a userspace boringtun device (`makiatto0`, UDP port
//! 51880) whose peers follow the peers projection.
//!
//! The device is driven through its UAPI text protocol over one end of a
//! socket pair that only this process holds (no socket file to guard), and
//! the interface address is set with `ip`. Each change of the peers
//! projection replaces the whole peer list, so a node that joins or leaves
//! is added or removed on every node without a restart.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::process::Command;

use anyhow::{Context, bail};
use boringtun::device::{DeviceConfig, DeviceHandle};
use makiatto_events::{AuthorKey, SealingSecret};
use makiatto_projections::peers::Peers;

/// The mesh interface's name.
pub const INTERFACE: &str = "makiatto0";
/// The UDP port WireGuard listens on (guide: open 51880).
pub const PORT: u16 = 51880;
/// Below a 1500-byte link, so encapsulated packets are not fragmented.
const MTU: u32 = 1420;
/// Keeps NAT mappings open and handshakes fresh.
const KEEPALIVE_SECS: u16 = 25;

/// The device's worker threads: half the CPUs, at least one, at most four.
/// The mesh carries replication, not visitors: it should not take every
/// core from the HTTP and DNS servers. On two cores one thread also moves
/// more than two, which contend for the device's locks and the CPUs (bulk
/// TCP between two test hosts: 153 MB/s with one, 116 MB/s with two;
/// `benches/src/bin/mesh.rs`, docs/benchmarks.md).
fn device_threads() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cpus / 2).clamp(1, 4)
}

/// The running device and what was last applied to it.
pub struct Mesh {
    // Keeps the device's worker threads alive; dropping it stops them.
    _device: DeviceHandle,
    uapi: UnixStream,
    address: Option<(Ipv4Addr, u8)>,
    applied: BTreeMap<[u8; 32], String>,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run ip")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Mesh {
    /// Creates the device with the node's WireGuard key. Needs CAP_NET_ADMIN.
    pub fn start(key: &SealingSecret) -> anyhow::Result<Mesh> {
        let (ours, theirs) = UnixStream::pair().context("cannot make the mesh control socket")?;
        let device = DeviceHandle::new(
            INTERFACE,
            DeviceConfig { n_threads: device_threads(), use_connected_socket: true, use_multi_queue: true, uapi_fd: theirs.into_raw_fd() },
        )
        .map_err(|e| anyhow::anyhow!("cannot create the WireGuard device {INTERFACE}: {e:?} (is /dev/net/tun there, and CAP_NET_ADMIN?)"))?;
        let mut mesh = Mesh {
            _device: device,
            uapi: ours,
            address: None,
            applied: BTreeMap::new(),
        };
        mesh.uapi_set(&format!(
            "private_key={}\nlisten_port={PORT}\n",
            hex::encode(key.to_bytes())
        ))?;
        ip(&["link", "set", INTERFACE, "mtu", &MTU.to_string(), "up"])?;
        Ok(mesh)
    }

    fn uapi_set(&mut self, body: &str) -> anyhow::Result<()> {
        let request = format!("set=1\n{body}\n");
        self.uapi
            .write_all(request.as_bytes())
            .context("the WireGuard device stopped")?;
        let mut reader = BufReader::new(&self.uapi);
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .context("the WireGuard device did not answer")?;
        let mut blank = String::new();
        reader.read_line(&mut blank).ok();
        match line.trim() {
            "errno=0" => Ok(()),
            other => bail!("the WireGuard device refused its configuration ({other})"),
        }
    }

    /// Makes the device match the peers projection: this node's mesh
    /// address, and every other node and external peer as a WireGuard peer.
    pub fn apply(&mut self, peers: &Peers, me: &AuthorKey) -> anyhow::Result<()> {
        let Some(range) = peers.mesh_range else {
            return Ok(());
        };
        let Some(own) = peers.nodes.values().find(|n| n.signing_key == *me) else {
            return Ok(());
        };
        if let Some(addr) = own.mesh_addr
            && self.address != Some((addr, range.prefix))
        {
            let _ = ip(&["addr", "flush", "dev", INTERFACE]);
            ip(&[
                "addr",
                "add",
                &format!("{addr}/{}", range.prefix),
                "dev",
                INTERFACE,
            ])?;
            self.address = Some((addr, range.prefix));
            tracing::info!(%addr, "mesh address set");
        }
        // Each peer's configuration, by public key.
        let mut wanted: BTreeMap<[u8; 32], String> = BTreeMap::new();
        for node in peers.nodes.values().filter(|n| n.signing_key != *me) {
            let (Some(mesh), Some(endpoint)) = (node.mesh_addr, node.ipv4) else {
                continue;
            };
            wanted.insert(
                *node.wg_public_key.as_bytes(),
                format!(
                    "endpoint={endpoint}:{PORT}\npersistent_keepalive_interval={KEEPALIVE_SECS}\nallowed_ip={mesh}/32\n"
                ),
            );
        }
        for peer in peers.external.values() {
            let Some(mesh) = peer.mesh_addr else { continue };
            let mut body = format!("allowed_ip={mesh}/32\n");
            if let Some(endpoint) = endpoint_of(&peer.endpoint) {
                body.push_str(&format!(
                    "endpoint={endpoint}\npersistent_keepalive_interval={KEEPALIVE_SECS}\n"
                ));
            }
            wanted.insert(*peer.wg_public_key.as_bytes(), body);
        }
        // Only what changed is touched: a peer left alone keeps its session.
        // boringtun cannot modify a peer in place, and its replace_peers
        // leaks the old peers' sockets (which then swallow their packets),
        // so a changed peer is removed and added again, one `set` per peer
        // (its parser carries settings over from one peer to the next).
        let stale: Vec<[u8; 32]> = self
            .applied
            .iter()
            .filter(|(k, body)| wanted.get(*k) != Some(*body))
            .map(|(k, _)| *k)
            .collect();
        let removed = stale.len();
        for key in stale {
            self.uapi_set(&format!("public_key={}\nremove=true\n", hex::encode(key)))?;
            self.applied.remove(&key);
        }
        let mut added = 0;
        for (key, body) in &wanted {
            if self.applied.contains_key(key) {
                continue;
            }
            self.uapi_set(&format!("public_key={}\n{body}", hex::encode(key)))?;
            self.applied.insert(*key, body.clone());
            added += 1;
        }
        if added + removed > 0 {
            tracing::info!(
                peers = self.applied.len(),
                added,
                removed,
                "mesh peers applied"
            );
        }
        Ok(())
    }
}

/// `host`, `host:port`, `[v6]:port` as a socket address. Literal addresses
/// are used as they are; a host name is resolved by the system resolver
/// when the peers are applied (an external peer's endpoint may be a name).
fn endpoint_of(text: &str) -> Option<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = text.parse::<std::net::SocketAddr>() {
        return Some(addr);
    }
    if let Ok(ip) = text.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        return Some(std::net::SocketAddr::new(ip, PORT));
    }
    let with_port = if text.contains(':') {
        text.to_owned()
    } else {
        format!("{text}:{PORT}")
    };
    match with_port.to_socket_addrs() {
        Ok(mut addrs) => addrs.next(),
        Err(e) => {
            tracing::warn!(endpoint = text, error = %e, "cannot resolve a mesh peer's endpoint");
            None
        }
    }
}

/// One WireGuard peer as the device reports it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Link {
    /// Seconds since the last completed handshake (boringtun reports the
    /// age, not a time), or none yet.
    pub handshake_age_secs: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub endpoint: Option<String>,
}

impl Mesh {
    /// Every peer's handshake time and byte counters, by public key.
    pub fn links(&mut self) -> anyhow::Result<std::collections::HashMap<[u8; 32], Link>> {
        self.uapi
            .write_all(b"get=1\n\n")
            .context("the WireGuard device stopped")?;
        let mut reader = BufReader::new(&self.uapi);
        let mut links = std::collections::HashMap::new();
        let mut current: Option<([u8; 32], Link)> = None;
        let mut errno = None;
        loop {
            let mut line = String::new();
            if reader
                .read_line(&mut line)
                .context("the WireGuard device did not answer")?
                == 0
            {
                break;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            match key {
                "public_key" => {
                    if let Some((k, l)) = current.take() {
                        links.insert(k, l);
                    }
                    let mut k = [0u8; 32];
                    if hex::decode_to_slice(value, &mut k).is_ok() {
                        current = Some((k, Link::default()));
                    }
                }
                "last_handshake_time_sec" => {
                    if let Some((_, l)) = current.as_mut() {
                        l.handshake_age_secs = value.parse().ok();
                    }
                }
                "rx_bytes" => {
                    if let Some((_, l)) = current.as_mut() {
                        l.rx_bytes = value.parse().unwrap_or(0);
                    }
                }
                "tx_bytes" => {
                    if let Some((_, l)) = current.as_mut() {
                        l.tx_bytes = value.parse().unwrap_or(0);
                    }
                }
                "endpoint" => {
                    if let Some((_, l)) = current.as_mut() {
                        l.endpoint = Some(value.to_owned());
                    }
                }
                "errno" => errno = Some(value.to_owned()),
                _ => {}
            }
        }
        if let Some((k, l)) = current.take() {
            links.insert(k, l);
        }
        match errno.as_deref() {
            Some("0") | None => Ok(links),
            Some(other) => {
                bail!("the WireGuard device refused to report its peers (errno {other})")
            }
        }
    }
}
