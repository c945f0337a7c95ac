//! The WireGuard mesh: a userspace boringtun device (`makiatto0`, UDP port
//! 51880) whose peers follow the peers projection.
//!
//! The device is driven through its UAPI text protocol over one end of a
//! socket pair that only this process holds (no socket file to guard), and
//! the interface address is set with `ip`. Each change of the peers
//! projection replaces the whole peer list, so a node that joins or leaves
//! is added or removed on every node without a restart.

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

/// The running device and what was last applied to it.
pub struct Mesh {
    // Keeps the device's worker threads alive; dropping it stops them.
    _device: DeviceHandle,
    uapi: UnixStream,
    address: Option<(Ipv4Addr, u8)>,
    applied: Option<String>,
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
            DeviceConfig { n_threads: 2, use_connected_socket: true, use_multi_queue: true, uapi_fd: theirs.into_raw_fd() },
        )
        .map_err(|e| anyhow::anyhow!("cannot create the WireGuard device {INTERFACE}: {e:?} (is /dev/net/tun there, and CAP_NET_ADMIN?)"))?;
        let mut mesh = Mesh {
            _device: device,
            uapi: ours,
            address: None,
            applied: None,
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
        let mut body = String::from("replace_peers=true\n");
        for node in peers.nodes.values().filter(|n| n.signing_key != *me) {
            let (Some(mesh), Some(endpoint)) = (node.mesh_addr, node.ipv4) else {
                continue;
            };
            body.push_str(&format!(
                "public_key={}\nendpoint={endpoint}:{PORT}\npersistent_keepalive_interval={KEEPALIVE_SECS}\nreplace_allowed_ips=true\nallowed_ip={mesh}/32\n",
                hex::encode(node.wg_public_key.as_bytes())
            ));
        }
        for peer in peers.external.values() {
            let Some(mesh) = peer.mesh_addr else { continue };
            body.push_str(&format!(
                "public_key={}\nreplace_allowed_ips=true\nallowed_ip={mesh}/32\n",
                hex::encode(peer.wg_public_key.as_bytes())
            ));
            if let Some(endpoint) = endpoint_of(&peer.endpoint) {
                body.push_str(&format!(
                    "endpoint={endpoint}\npersistent_keepalive_interval={KEEPALIVE_SECS}\n"
                ));
            }
        }
        if self.applied.as_deref() == Some(body.as_str()) {
            return Ok(());
        }
        self.uapi_set(&body)?;
        tracing::info!(
            peers = body.matches("public_key=").count(),
            "mesh peers applied"
        );
        self.applied = Some(body);
        Ok(())
    }
}

/// `host` or `host:port` as an IP socket address (names are resolved by
/// whoever added the peer; here only literal addresses are used).
fn endpoint_of(text: &str) -> Option<std::net::SocketAddr> {
    text.parse::<std::net::SocketAddr>().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| std::net::SocketAddr::new(ip, PORT))
    })
}
