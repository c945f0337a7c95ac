//! `maki peer`: WireGuard peers outside the cluster (an observability
//! server, a laptop). `add` registers one and gives it a mesh address,
//! `wg-config` prints the wg-quick file it runs, `list` and `remove`.
//!
//! Input is parsed once, where it enters ([`PeerName`], [`Endpoint`],
//! [`parse_wg_key`]), and checked against one node's peers projection
//! ([`Mesh`]) before anything is signed. What is printed is rendered by pure
//! functions ([`wg_config`], [`rows`]) tested below.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

use makiatto_events::payload::{ExternalPeerAdded, ExternalPeerRemoved};
use makiatto_events::{Payload, PeerName, WgPublicKey};
use makiatto_projections::peers::ExternalPeer;
use serde::Serialize;

use crate::cluster::Ctx;
use crate::mesh::{Mesh, MeshError};

/// The UDP port every node's WireGuard device listens on (the daemon's
/// `mesh::PORT`), and the port assumed for an endpoint given without one.
pub const MESH_PORT: u16 = 51880;
/// The keepalive the nodes use towards peers, so NAT mappings stay open.
const KEEPALIVE_SECS: u16 = 25;
/// What `wg-config` prints instead of the key it never sees.
pub const PRIVATE_KEY_PLACEHOLDER: &str = "<private-key>";

/// Why a peer cannot be added, shown, or removed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error(
        "{got:?} is not a WireGuard public key; give the 44-character base64 key that `wg pubkey` prints"
    )]
    BadKey { got: String },
    #[error(
        "endpoint {got:?}: {why}; give an IP address, IP:PORT, [IPv6]:PORT, or a host name with an optional :PORT"
    )]
    BadEndpoint { got: String, why: &'static str },
    #[error(
        "endpoint {0} is inside the mesh range; give the peer's public address, not its WireGuard address"
    )]
    EndpointInMesh(Ipv4Addr),
    #[error("the name {name} is already used by a {by}; choose another name")]
    NameTaken { name: PeerName, by: &'static str },
    #[error("{holder} already has this WireGuard key; every member needs its own (wg genkey)")]
    KeyTaken { holder: String },
    #[error("no peer named {name}; {known}")]
    Unknown { name: PeerName, known: String },
    #[error("peer {0} holds no mesh address yet; try again once the node has folded its log")]
    NoAddress(PeerName),
    #[error(transparent)]
    Mesh(#[from] MeshError),
}

/// Parses a WireGuard public key exactly as `wg pubkey` prints it:
/// standard base64 of 32 bytes, 44 characters with one `=`.
pub fn parse_wg_key(text: &str) -> Result<WgPublicKey, PeerError> {
    let text = text.trim();
    WgPublicKey::from_base64(text)
        .ok()
        // The decoder is lenient (padding, stray low bits); the key is not.
        .filter(|key| key.to_base64() == text)
        .ok_or_else(|| PeerError::BadKey {
            got: text.to_owned(),
        })
}

/// Where a peer's WireGuard listens: an address or a host name, with an
/// optional port (the nodes assume [`MESH_PORT`]). Host names are kept as
/// text and never resolved here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: EndpointHost,
    pub port: Option<u16>,
}

/// The host part of an [`Endpoint`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointHost {
    Ip(IpAddr),
    /// A lowercase DNS name.
    Name(String),
}

impl Endpoint {
    /// The UDP port the peer listens on.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(MESH_PORT)
    }
}

impl FromStr for Endpoint {
    type Err = PeerError;

    fn from_str(text: &str) -> Result<Self, PeerError> {
        let bad = |why| PeerError::BadEndpoint {
            got: text.to_owned(),
            why,
        };
        let port = |p: &str| match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(bad("the port must be a number from 1 to 65535")),
            Ok(p) => Ok(Some(p)),
        };
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Self {
                host: EndpointHost::Ip(ip),
                port: None,
            });
        }
        if let Ok(addr) = text.parse::<SocketAddr>() {
            if addr.port() == 0 {
                return Err(bad("the port must be a number from 1 to 65535"));
            }
            return Ok(Self {
                host: EndpointHost::Ip(addr.ip()),
                port: Some(addr.port()),
            });
        }
        if let Some(rest) = text.strip_prefix('[') {
            // `[v6]:port` that did not parse: say which half is wrong.
            let (ip, p) = rest.split_once("]:").ok_or_else(|| {
                bad("a bracketed IPv6 address needs a port, as [2001:db8::1]:51880")
            })?;
            let ip: std::net::Ipv6Addr = ip.parse().map_err(|_| bad("not an IPv6 address"))?;
            return Ok(Self {
                host: EndpointHost::Ip(IpAddr::V6(ip)),
                port: port(p)?,
            });
        }
        let (name, p) = match text.split_once(':') {
            Some((_, p)) if p.contains(':') => {
                return Err(bad("not an IPv6 address (with a port, write [IPv6]:PORT)"));
            }
            Some((name, p)) => (name, port(p)?),
            None => (text, None),
        };
        check_host_name(name).map_err(bad)?;
        Ok(Self {
            host: EndpointHost::Name(name.to_ascii_lowercase()),
            port: p,
        })
    }
}

/// A DNS name: 1–253 characters, labels of 1–63 letters, digits and `-`
/// (not at either end), the last label not all digits (a mistyped IPv4).
fn check_host_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 253 {
        return Err("a host name has 1 to 253 characters");
    }
    let labels: Vec<&str> = name.split('.').collect();
    let good_label = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if !labels.iter().all(good_label) {
        return Err("not an IP address or a host name");
    }
    if labels
        .last()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("not a valid IPv4 address");
    }
    Ok(())
}

impl fmt::Display for Endpoint {
    /// The form the daemon reads back: `ip`, `ip:port`, `[v6]:port`, `name[:port]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.host, self.port) {
            (EndpointHost::Ip(ip), Some(p)) => write!(f, "{}", SocketAddr::new(*ip, p)),
            (EndpointHost::Ip(ip), None) => write!(f, "{ip}"),
            (EndpointHost::Name(n), Some(p)) => write!(f, "{n}:{p}"),
            (EndpointHost::Name(n), None) => f.write_str(n),
        }
    }
}

/// What `maki peer add` asks for.
pub struct AddArgs {
    pub name: PeerName,
    pub key: WgPublicKey,
    pub endpoint: Endpoint,
    pub wg_address: Option<Ipv4Addr>,
}

/// Checks a new peer against the mesh and picks its address.
pub fn plan_add(mesh: &Mesh, args: &AddArgs) -> Result<Ipv4Addr, PeerError> {
    if mesh.external.contains_key(&args.name) {
        return Err(PeerError::NameTaken {
            name: args.name.clone(),
            by: "peer",
        });
    }
    if mesh.nodes.keys().any(|n| n.as_str() == args.name.as_str()) {
        return Err(PeerError::NameTaken {
            name: args.name.clone(),
            by: "node",
        });
    }
    let holder = mesh
        .nodes
        .iter()
        .find(|(_, n)| n.wg_public_key == args.key)
        .map(|(name, _)| format!("node {name}"))
        .or_else(|| {
            mesh.external
                .iter()
                .find(|(_, p)| p.wg_public_key == args.key)
                .map(|(name, _)| format!("peer {name}"))
        });
    if let Some(holder) = holder {
        return Err(PeerError::KeyTaken { holder });
    }
    if let (EndpointHost::Ip(IpAddr::V4(ip)), Some(range)) = (&args.endpoint.host, mesh.mesh_range)
        && range.contains(*ip)
    {
        return Err(PeerError::EndpointInMesh(*ip));
    }
    Ok(mesh.choose_addr(args.wg_address)?)
}

/// The peer named `name`, or an error naming the peers there are.
fn find<'a>(mesh: &'a Mesh, name: &PeerName) -> Result<&'a ExternalPeer, PeerError> {
    mesh.external.get(name).ok_or_else(|| {
        let known = if mesh.external.is_empty() {
            "the cluster has no peers yet (add one with `maki peer add`)".to_owned()
        } else {
            let names: Vec<&str> = mesh.external.keys().map(PeerName::as_str).collect();
            format!("peers: {}", names.join(", "))
        };
        PeerError::Unknown {
            name: name.clone(),
            known,
        }
    })
}

/// The wg-quick configuration of peer `name`: its own address, and every
/// node that has a mesh address and a public address as a `[Peer]`.
pub fn wg_config(mesh: &Mesh, name: &PeerName) -> Result<String, PeerError> {
    let peer = find(mesh, name)?;
    let addr = peer
        .mesh_addr
        .ok_or_else(|| PeerError::NoAddress(name.clone()))?;
    // The nodes send to the endpoint's port; listen there (it was checked at add).
    let listen = peer
        .endpoint
        .parse::<Endpoint>()
        .map_or(MESH_PORT, |e| e.port());
    let mut out = format!(
        "# WireGuard configuration of peer {name} (maki peer wg-config {name}).\n\
         # Replace {PRIVATE_KEY_PLACEHOLDER} with this peer's private key.\n\
         [Interface]\n\
         PrivateKey = {PRIVATE_KEY_PLACEHOLDER}\n\
         Address = {addr}/32\n\
         ListenPort = {listen}\n"
    );
    for (node_name, node) in &mesh.nodes {
        let endpoint = match (node.ipv4, node.ipv6) {
            (Some(v4), _) => SocketAddr::new(IpAddr::V4(v4), MESH_PORT),
            (None, Some(v6)) => SocketAddr::new(IpAddr::V6(v6), MESH_PORT),
            (None, None) => {
                out.push_str(&format!(
                    "\n# node {node_name}: no public address, left out\n"
                ));
                continue;
            }
        };
        let Some(mesh_addr) = node.mesh_addr else {
            out.push_str(&format!(
                "\n# node {node_name}: no mesh address yet, left out\n"
            ));
            continue;
        };
        out.push_str(&format!(
            "\n# node {node_name}\n\
             [Peer]\n\
             PublicKey = {}\n\
             Endpoint = {endpoint}\n\
             AllowedIPs = {mesh_addr}/32\n\
             PersistentKeepalive = {KEEPALIVE_SECS}\n",
            node.wg_public_key.to_base64()
        ));
    }
    Ok(out)
}

/// One line of `maki peer list`.
#[derive(Debug, Serialize, PartialEq)]
pub struct Row {
    pub name: String,
    pub mesh_addr: Option<Ipv4Addr>,
    pub endpoint: String,
    pub wg_public_key: String,
    /// Whether the nodes send telemetry here (the name starts or ends with `o11y`).
    pub o11y: bool,
}

/// The rows of `maki peer list`, by name.
pub fn rows(mesh: &Mesh) -> Vec<Row> {
    mesh.external
        .iter()
        .map(|(name, p)| Row {
            name: name.to_string(),
            mesh_addr: p.mesh_addr,
            endpoint: p.endpoint.clone(),
            wg_public_key: p.wg_public_key.to_base64(),
            o11y: name.is_o11y(),
        })
        .collect()
}

/// `maki peer add`.
pub async fn add(ctx: &Ctx, args: AddArgs) -> anyhow::Result<()> {
    let cluster_id = ctx.cluster_id()?;
    let (_, remote) = ctx.any_node().await?;
    let mesh = Mesh::fetch(&remote).await?;
    let addr = plan_add(&mesh, &args)?;
    let payload = Payload::ExternalPeerAdded(ExternalPeerAdded {
        name: args.name.clone(),
        wg_public_key: args.key,
        endpoint: args.endpoint.to_string(),
        wg_address: Some(addr),
    });
    let events = ctx
        .publish(&remote, &cluster_id, vec![payload], None, None)
        .await?;
    // The projection has the last word (a concurrent join may move the address).
    let held = Mesh::fetch(&remote)
        .await?
        .external
        .get(&args.name)
        .and_then(|p| p.mesh_addr)
        .unwrap_or(addr);
    println!("{}", events[0].payload().summary());
    println!("mesh address: {held}");
    println!(
        "Run `maki peer wg-config {}` for the peer's WireGuard configuration.",
        args.name
    );
    Ok(())
}

/// `maki peer wg-config`.
pub async fn show_wg_config(ctx: &Ctx, name: &PeerName) -> anyhow::Result<()> {
    let (_, remote) = ctx.any_node().await?;
    print!("{}", wg_config(&Mesh::fetch(&remote).await?, name)?);
    Ok(())
}

/// `maki peer remove`.
pub async fn remove(ctx: &Ctx, name: &PeerName, force: bool) -> anyhow::Result<()> {
    let cluster_id = ctx.cluster_id()?;
    let (_, remote) = ctx.any_node().await?;
    let peer = find(&Mesh::fetch(&remote).await?, name)?.clone();
    crate::prompt::confirm_permanent(
        force,
        &format!("removing peer {name}"),
        &format!(
            "Remove peer {name} ({}) from the mesh? It will no longer reach any node.",
            peer.endpoint
        ),
    )?;
    let payload = Payload::ExternalPeerRemoved(ExternalPeerRemoved { name: name.clone() });
    let events = ctx
        .publish(&remote, &cluster_id, vec![payload], None, None)
        .await?;
    println!("{}", events[0].payload().summary());
    Ok(())
}

/// `maki peer list`.
pub async fn list(ctx: &Ctx, json_out: bool) -> anyhow::Result<()> {
    let (_, remote) = ctx.any_node().await?;
    let rows = rows(&Mesh::fetch(&remote).await?);
    if json_out {
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
        return Ok(());
    }
    println!(
        "{:<20} {:<16} {:<28} {:<45} O11Y",
        "NAME", "MESH ADDR", "ENDPOINT", "PUBLIC KEY"
    );
    for r in rows {
        println!(
            "{:<20} {:<16} {:<28} {:<45} {}",
            r.name,
            r.mesh_addr.map_or("-".into(), |a| a.to_string()),
            r.endpoint,
            r.wg_public_key,
            if r.o11y { "yes" } else { "no" }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::tests::shown;

    fn mesh() -> Mesh {
        Mesh::from_state(&shown()).unwrap()
    }

    fn name(n: &str) -> PeerName {
        PeerName::new(n).unwrap()
    }

    fn key(b: u8) -> WgPublicKey {
        WgPublicKey([b; 32])
    }

    fn args(n: &str, endpoint: &str, wg_address: Option<&str>) -> AddArgs {
        AddArgs {
            name: name(n),
            key: key(9),
            endpoint: endpoint.parse().unwrap(),
            wg_address: wg_address.map(|a| a.parse().unwrap()),
        }
    }

    #[test]
    fn keys_are_read_exactly_as_wg_pubkey_prints_them() {
        let k = WgPublicKey(std::array::from_fn(|i| (i * 7) as u8));
        let text = k.to_base64();
        assert_eq!(parse_wg_key(&text), Ok(k));
        assert_eq!(parse_wg_key(&format!("{text}\n")), Ok(k));
        for bad in [
            "",
            "not a key",
            &text[..43],         // no padding
            &format!("{text}="), // extra padding
            &"A".repeat(64),     // 48 bytes
            &text.replace('=', "A"),
        ] {
            assert!(
                matches!(parse_wg_key(bad), Err(PeerError::BadKey { .. })),
                "{bad:?}"
            );
        }
        // Stray low bits in the last character: not what `wg` prints.
        let mut sloppy = text.clone().into_bytes();
        sloppy[42] = b'B';
        let sloppy = String::from_utf8(sloppy).unwrap();
        if sloppy != text {
            assert!(parse_wg_key(&sloppy).is_err(), "{sloppy}");
        }
    }

    #[test]
    fn endpoints_are_addresses_or_host_names_with_optional_ports() {
        let ok = |text: &str, shown: &str, port: u16| {
            let e: Endpoint = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(e.to_string(), shown, "{text}");
            assert_eq!(e.port(), port, "{text}");
            // What is stored reads back the same.
            assert_eq!(shown.parse::<Endpoint>().unwrap(), e);
        };
        ok("192.0.2.7", "192.0.2.7", MESH_PORT);
        ok("192.0.2.7:51820", "192.0.2.7:51820", 51820);
        ok("2001:db8::7", "2001:db8::7", MESH_PORT);
        ok("[2001:db8::7]:443", "[2001:db8::7]:443", 443);
        ok("o11y.example.com", "o11y.example.com", MESH_PORT);
        ok("O11y.Example.com:9000", "o11y.example.com:9000", 9000);
        ok("localhost", "localhost", MESH_PORT);
        for bad in [
            "",
            "192.0.2.7:0",
            "192.0.2.7:65536",
            "192.0.2.7:port",
            "192.0.2.999",
            "[2001:db8::7]",
            "[2001:db8::zz]:80",
            "2001:db8::7:80:",
            "-bad.example.com",
            "bad..example.com",
            "under_score.example.com",
            "host name",
            "https://example.com",
            &"a".repeat(64),
        ] {
            assert!(
                matches!(bad.parse::<Endpoint>(), Err(PeerError::BadEndpoint { .. })),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn a_new_peer_gets_the_lowest_free_address_or_the_one_asked_for() {
        let m = mesh();
        assert_eq!(
            plan_add(&m, &args("ext", "192.0.2.9", None)),
            Ok("198.51.100.4".parse().unwrap())
        );
        assert_eq!(
            plan_add(&m, &args("ext", "192.0.2.9", Some("198.51.100.14"))),
            Ok("198.51.100.14".parse().unwrap())
        );
        assert!(matches!(
            plan_add(&m, &args("ext", "192.0.2.9", Some("198.51.100.1"))),
            Err(PeerError::Mesh(MeshError::Taken { .. }))
        ));
        assert!(matches!(
            plan_add(&m, &args("ext", "192.0.2.9", Some("10.44.44.9"))),
            Err(PeerError::Mesh(MeshError::OutsideRange { .. }))
        ));
    }

    #[test]
    fn a_new_peer_needs_its_own_name_key_and_a_public_endpoint() {
        let m = mesh();
        assert!(matches!(
            plan_add(&m, &args("o11y", "192.0.2.9", None)),
            Err(PeerError::NameTaken { by: "peer", .. })
        ));
        assert!(matches!(
            plan_add(&m, &args("vector", "192.0.2.9", None)),
            Err(PeerError::NameTaken { by: "node", .. })
        ));
        let mut same_key = args("ext", "192.0.2.9", None);
        same_key.key = key(1);
        assert_eq!(
            plan_add(&m, &same_key),
            Err(PeerError::KeyTaken {
                holder: "node vector".into()
            })
        );
        assert!(matches!(
            plan_add(&m, &args("ext", "198.51.100.1", None)),
            Err(PeerError::EndpointInMesh(_))
        ));
    }

    #[test]
    fn the_wg_config_lists_every_node_as_a_peer() {
        let text = wg_config(&mesh(), &name("o11y")).unwrap();
        let b64 = |b: u8| key(b).to_base64();
        let expected = format!(
            "# WireGuard configuration of peer o11y (maki peer wg-config o11y).\n\
             # Replace <private-key> with this peer's private key.\n\
             [Interface]\n\
             PrivateKey = <private-key>\n\
             Address = 198.51.100.3/32\n\
             ListenPort = 51880\n\
             \n\
             # node klukai\n\
             [Peer]\n\
             PublicKey = {}\n\
             Endpoint = [2001:db8:1::3]:51880\n\
             AllowedIPs = 198.51.100.2/32\n\
             PersistentKeepalive = 25\n\
             \n\
             # node vector\n\
             [Peer]\n\
             PublicKey = {}\n\
             Endpoint = 203.0.113.2:51880\n\
             AllowedIPs = 198.51.100.1/32\n\
             PersistentKeepalive = 25\n",
            b64(2),
            b64(1)
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn the_wg_config_listens_on_the_endpoint_port_and_skips_unreachable_nodes() {
        let mut m = mesh();
        if let Some(p) = m.external.get_mut(&name("o11y")) {
            p.endpoint = "o11y.example.com:9000".into();
        }
        if let Some(n) = m.nodes.values_mut().next() {
            n.ipv4 = None;
            n.ipv6 = None;
        }
        let text = wg_config(&m, &name("o11y")).unwrap();
        assert!(text.contains("ListenPort = 9000\n"), "{text}");
        assert!(text.contains("# node klukai: no public address, left out\n"));
        assert_eq!(text.matches("[Peer]").count(), 1);
    }

    #[test]
    fn an_unknown_peer_is_named_with_the_known_ones() {
        let err = wg_config(&mesh(), &name("grafana")).unwrap_err();
        assert_eq!(err.to_string(), "no peer named grafana; peers: o11y");
        let empty = Mesh(makiatto_projections::peers::Peers {
            mesh_range: mesh().mesh_range,
            ..Default::default()
        });
        assert!(
            wg_config(&empty, &name("o11y"))
                .unwrap_err()
                .to_string()
                .contains("maki peer add")
        );
    }

    #[test]
    fn the_list_marks_the_telemetry_endpoint() {
        let mut m = mesh();
        let other = m.external.values().next().cloned().unwrap();
        m.external.insert(name("laptop"), other);
        let rows = rows(&m);
        let o11y: Vec<(&str, bool)> = rows.iter().map(|r| (r.name.as_str(), r.o11y)).collect();
        assert_eq!(o11y, [("laptop", false), ("o11y", true)]);
        assert_eq!(rows[1].wg_public_key, key(3).to_base64());
        assert_eq!(rows[1].mesh_addr, Some("198.51.100.3".parse().unwrap()));
    }
}
