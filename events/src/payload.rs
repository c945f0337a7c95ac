//! What an event says. One variant per kind, each numbered once, forever.
//!
//! The number of a kind ([`Payload::kind_number`]) is written into the
//! canonical encoding ahead of the kind's body; it is never reused or changed.
//! To change the shape of a kind, add a new kind (such as `NodeJoinedV2`) and
//! keep decoding the old one. Kinds unknown to this version decode as
//! [`Payload::Unknown`], keeping their bytes, so that they still verify,
//! replicate and show in the log.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::ids::{AuthorKey, Blake3Hash, EventId, SealingKey, WgPublicKey};
use crate::names::{DomainName, NodeName, PeerName};
use crate::sealed::{Recipient, SealedValue, SecretId};

/// An IPv4 range in CIDR form, such as the mesh range `10.44.44.0/24`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ipv4Net {
    /// The network address (host bits zero).
    pub network: Ipv4Addr,
    /// The prefix length, 0–32.
    pub prefix: u8,
}

impl Ipv4Net {
    /// A range from an address and prefix; host bits are cleared.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Self> {
        if prefix > 32 {
            return None;
        }
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        Some(Self {
            network: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }

    /// Whether `addr` lies in the range.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        Self::new(addr, self.prefix).is_some_and(|n| n.network == self.network)
    }

    /// Whether `addr` is a usable host address of the range (in it, and not
    /// its network or broadcast address unless the range is a /31 or /32).
    pub fn is_host(&self, addr: Ipv4Addr) -> bool {
        if !self.contains(addr) {
            return false;
        }
        if self.prefix >= 31 {
            return true;
        }
        let host_bits = u32::from(addr) & !(u32::MAX << (32 - self.prefix));
        host_bits != 0 && host_bits != !(u32::MAX << (32 - self.prefix))
    }

    /// The usable host addresses, network and broadcast excluded (for /31 and
    /// /32, every address).
    pub fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> + use<> {
        let base = u64::from(u32::from(self.network));
        let size = 1u64 << (32 - u32::from(self.prefix.min(32)));
        let (first, last) = if size <= 2 { (0, size) } else { (1, size - 1) };
        (first..last).map(move |i| Ipv4Addr::from((base + i) as u32))
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl fmt::Debug for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Ipv4Net {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR range such as 10.44.44.0/24"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("{prefix:?} is not a prefix length from 0 to 32"))?;
        Self::new(addr, prefix).ok_or_else(|| format!("{s:?} is not a valid range"))
    }
}

/// Geographic coordinates in millionths of a degree: exact, so that every
/// node computes the same distances from the same bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Coordinates {
    /// Latitude, −90 000 000 to 90 000 000 (north positive).
    pub lat_e6: i32,
    /// Longitude, −180 000 000 to 180 000 000 (east positive).
    pub lon_e6: i32,
}

impl Coordinates {
    /// Coordinates from degrees; `None` when out of range or not finite.
    pub fn from_degrees(lat: f64, lon: f64) -> Option<Self> {
        if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
            return None;
        }
        Some(Self {
            lat_e6: (lat * 1e6).round() as i32,
            lon_e6: (lon * 1e6).round() as i32,
        })
    }

    /// Latitude in degrees.
    pub fn lat(&self) -> f64 {
        f64::from(self.lat_e6) / 1e6
    }

    /// Longitude in degrees.
    pub fn lon(&self) -> f64 {
        f64::from(self.lon_e6) / 1e6
    }

    /// Whether both values are in range (checked on every decoded event).
    pub fn is_valid(&self) -> bool {
        (-90_000_000..=90_000_000).contains(&self.lat_e6)
            && (-180_000_000..=180_000_000).contains(&self.lon_e6)
    }
}

impl fmt::Debug for Coordinates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({:.4}, {:.4})", self.lat(), self.lon())
    }
}

/// How `maki` reaches a machine over SSH.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SshTarget {
    pub user: String,
    pub host: String,
    pub port: u16,
}

impl fmt::Display for SshTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port == 22 {
            write!(f, "{}@{}", self.user, self.host)
        } else if self.host.contains(':') {
            write!(f, "{}@[{}]:{}", self.user, self.host, self.port)
        } else {
            write!(f, "{}@{}:{}", self.user, self.host, self.port)
        }
    }
}

/// `user@host[:port]` as typed on the command line (an IPv6 host with a
/// port in brackets: `root@[2001:db8::1]:2222`); the port defaults to 22.
impl std::str::FromStr for SshTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let not_target = || format!("{s:?} is not user@host (for example root@203.0.113.1)");
        let (user, rest) = s.split_once('@').ok_or_else(not_target)?;
        if user.is_empty() || rest.is_empty() {
            return Err(not_target());
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') || h.starts_with('[') => (
                h.trim_matches(['[', ']']),
                p.parse().map_err(|_| format!("bad port in {s:?}"))?,
            ),
            _ => (rest.trim_matches(['[', ']']), 22),
        };
        if host.is_empty() {
            return Err(not_target());
        }
        Ok(SshTarget {
            user: user.to_owned(),
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Debug for SshTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A blob in the content-addressed store, named by its hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
pub struct BlobRef {
    pub hash: Blake3Hash,
    pub size: u64,
}

/// The first event of a cluster, signed by its first operator.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct Genesis {
    pub cluster_name: String,
    /// The first operator's name, shown in `maki log`.
    pub operator_name: String,
    /// The first operator's key; it must be the genesis event's author.
    pub operator: AuthorKey,
    /// Where mesh addresses are allocated.
    pub mesh_range: Ipv4Net,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct OperatorAdded {
    pub name: String,
    pub key: AuthorKey,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct OperatorRemoved {
    pub key: AuthorKey,
}

/// A machine admitted to the cluster (signed by an operator).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct NodeJoined {
    pub name: NodeName,
    /// The key the node signs its own events with.
    pub signing_key: AuthorKey,
    /// The key secrets are sealed to for this node.
    pub sealing_key: SealingKey,
    pub wg_public_key: WgPublicKey,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub ssh: SshTarget,
    pub coordinates: Coordinates,
    /// Whether the node answers as `<name>.ns.<domain>`.
    pub nameserver: bool,
    /// The mesh address the operator chose; the peers projection keeps it
    /// unless an earlier member already holds it (docs/design.md, Projections).
    pub mesh_addr: Ipv4Addr,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct NodeRemoved {
    pub name: NodeName,
}

/// A WireGuard peer outside the cluster (an observability server, a laptop).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct ExternalPeerAdded {
    pub name: PeerName,
    pub wg_public_key: WgPublicKey,
    /// `host` or `host:port`, as given to `maki peer add --endpoint`.
    pub endpoint: String,
    /// The mesh address asked for; allocated like a node's otherwise.
    pub wg_address: Option<Ipv4Addr>,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct ExternalPeerRemoved {
    pub name: PeerName,
}

/// Changes to the desired-configuration document (automerge change bytes,
/// each a complete change as `automerge::Change::raw_bytes` gives it).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigChanged {
    pub changes: Vec<Vec<u8>>,
    /// A human summary written by the author (`set dns.geo_ttl = 30`).
    pub summary: String,
}

impl fmt::Debug for ConfigChanged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ConfigChanged({} change(s): {})",
            self.changes.len(),
            self.summary
        )
    }
}

/// Counts describing a site version against the one before it.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Debug, Default)]
pub struct ChangeSummary {
    pub files: u64,
    pub added: u64,
    pub changed: u64,
    pub removed: u64,
    /// Total size of the version's files.
    pub bytes: u64,
}

/// A new version of a domain's site: its manifest is a blob.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct SitePublished {
    pub domain: DomainName,
    pub manifest: BlobRef,
    pub summary: ChangeSummary,
    pub message: Option<String>,
}

/// Makes an earlier published version live again.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct SiteRolledBack {
    pub domain: DomainName,
    /// The `site-published` event whose version becomes live.
    pub to: EventId,
    pub message: Option<String>,
}

/// A node that can open a secret wraps its key for a newcomer.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct SecretResealed {
    pub secret: SecretId,
    pub recipient: Recipient,
}

/// An ACME challenge the ordering node opened or closed. It travels as an
/// event so that whichever node the CA reaches can answer it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct AcmeChallenge {
    /// The identifier being validated (`example.com`).
    pub name: String,
    /// HTTP-01: the token in `/.well-known/acme-challenge/<token>`;
    /// DNS-01: the TXT owner name (`_acme-challenge.<name>`).
    pub token: String,
    /// HTTP-01: the key authorization; DNS-01: the TXT value.
    pub value: String,
    /// DNS-01 (a TXT record) rather than HTTP-01.
    pub dns: bool,
    /// Opened (true) or closed (false).
    pub open: bool,
}

/// A certificate obtained from the ACME CA. Its private key is sealed to
/// every node's sealing key: never plaintext in the log.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct CertificateIssued {
    pub domain: DomainName,
    /// Every name the certificate covers.
    pub names: Vec<String>,
    /// The chain, leaf first, PEM.
    pub chain_pem: String,
    /// The PKCS#8 private key (PEM), sealed.
    pub key: SealedValue,
    pub not_after_millis: u64,
    pub issuer: String,
}

/// An operator asks for a name's certificate to be renewed now.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct CertificateRenewalRequested {
    pub name: String,
}

/// What an event says.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Payload {
    Genesis(Genesis),
    OperatorAdded(OperatorAdded),
    OperatorRemoved(OperatorRemoved),
    NodeJoined(NodeJoined),
    NodeRemoved(NodeRemoved),
    ExternalPeerAdded(ExternalPeerAdded),
    ExternalPeerRemoved(ExternalPeerRemoved),
    ConfigChanged(ConfigChanged),
    SitePublished(SitePublished),
    SiteRolledBack(SiteRolledBack),
    SecretResealed(SecretResealed),
    AcmeChallenge(AcmeChallenge),
    CertificateIssued(CertificateIssued),
    CertificateRenewalRequested(CertificateRenewalRequested),
    /// A kind this version does not know, kept as it came.
    Unknown {
        kind: u32,
        body: Vec<u8>,
    },
}

/// The kind of an event, as named in `makiatto log --kind`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum EventKind {
    Genesis,
    OperatorAdded,
    OperatorRemoved,
    NodeJoined,
    NodeRemoved,
    PeerAdded,
    PeerRemoved,
    ConfigChanged,
    SitePublished,
    SiteRolledBack,
    SecretResealed,
    AcmeChallenge,
    CertificateIssued,
    CertificateRenewalRequested,
    Unknown(u32),
}

impl EventKind {
    /// Every kind this version knows, for help texts and parsing.
    pub const KNOWN: [EventKind; 14] = [
        EventKind::Genesis,
        EventKind::OperatorAdded,
        EventKind::OperatorRemoved,
        EventKind::NodeJoined,
        EventKind::NodeRemoved,
        EventKind::PeerAdded,
        EventKind::PeerRemoved,
        EventKind::ConfigChanged,
        EventKind::SitePublished,
        EventKind::SiteRolledBack,
        EventKind::SecretResealed,
        EventKind::AcmeChallenge,
        EventKind::CertificateIssued,
        EventKind::CertificateRenewalRequested,
    ];

    /// The kind's name in listings and `--kind`.
    pub fn name(&self) -> String {
        match self {
            EventKind::Genesis => "genesis".into(),
            EventKind::OperatorAdded => "operator-added".into(),
            EventKind::OperatorRemoved => "operator-removed".into(),
            EventKind::NodeJoined => "node-joined".into(),
            EventKind::NodeRemoved => "node-removed".into(),
            EventKind::PeerAdded => "peer-added".into(),
            EventKind::PeerRemoved => "peer-removed".into(),
            EventKind::ConfigChanged => "config-changed".into(),
            EventKind::SitePublished => "site-published".into(),
            EventKind::SiteRolledBack => "site-rolled-back".into(),
            EventKind::SecretResealed => "secret-resealed".into(),
            EventKind::AcmeChallenge => "acme-challenge".into(),
            EventKind::CertificateIssued => "certificate-issued".into(),
            EventKind::CertificateRenewalRequested => "certificate-renewal-requested".into(),
            EventKind::Unknown(n) => format!("unknown-{n}"),
        }
    }

    /// Parses a kind name as printed by [`EventKind::name`].
    pub fn parse(name: &str) -> Option<EventKind> {
        Self::KNOWN
            .into_iter()
            .find(|k| k.name() == name)
            .or_else(|| {
                name.strip_prefix("unknown-")
                    .and_then(|n| n.parse().ok())
                    .map(EventKind::Unknown)
            })
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// Postcard-encodes a body; serialization of these plain types cannot fail.
fn body<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).unwrap_or_default()
}

impl Payload {
    /// The kind's permanent number in the encoding.
    pub fn kind_number(&self) -> u32 {
        match self {
            Payload::Genesis(_) => 0,
            Payload::OperatorAdded(_) => 1,
            Payload::OperatorRemoved(_) => 2,
            Payload::NodeJoined(_) => 3,
            Payload::NodeRemoved(_) => 4,
            Payload::ExternalPeerAdded(_) => 5,
            Payload::ExternalPeerRemoved(_) => 6,
            Payload::ConfigChanged(_) => 7,
            Payload::SitePublished(_) => 8,
            Payload::SiteRolledBack(_) => 9,
            Payload::SecretResealed(_) => 10,
            Payload::AcmeChallenge(_) => 11,
            Payload::CertificateIssued(_) => 12,
            Payload::CertificateRenewalRequested(_) => 13,
            Payload::Unknown { kind, .. } => *kind,
        }
    }

    /// The kind, for filtering and display.
    pub fn kind(&self) -> EventKind {
        match self {
            Payload::Genesis(_) => EventKind::Genesis,
            Payload::OperatorAdded(_) => EventKind::OperatorAdded,
            Payload::OperatorRemoved(_) => EventKind::OperatorRemoved,
            Payload::NodeJoined(_) => EventKind::NodeJoined,
            Payload::NodeRemoved(_) => EventKind::NodeRemoved,
            Payload::ExternalPeerAdded(_) => EventKind::PeerAdded,
            Payload::ExternalPeerRemoved(_) => EventKind::PeerRemoved,
            Payload::ConfigChanged(_) => EventKind::ConfigChanged,
            Payload::SitePublished(_) => EventKind::SitePublished,
            Payload::SiteRolledBack(_) => EventKind::SiteRolledBack,
            Payload::SecretResealed(_) => EventKind::SecretResealed,
            Payload::AcmeChallenge(_) => EventKind::AcmeChallenge,
            Payload::CertificateIssued(_) => EventKind::CertificateIssued,
            Payload::CertificateRenewalRequested(_) => EventKind::CertificateRenewalRequested,
            Payload::Unknown { kind, .. } => EventKind::Unknown(*kind),
        }
    }

    /// The body bytes that follow the kind number in the encoding.
    pub(crate) fn body_bytes(&self) -> Vec<u8> {
        match self {
            Payload::Genesis(p) => body(p),
            Payload::OperatorAdded(p) => body(p),
            Payload::OperatorRemoved(p) => body(p),
            Payload::NodeJoined(p) => body(p),
            Payload::NodeRemoved(p) => body(p),
            Payload::ExternalPeerAdded(p) => body(p),
            Payload::ExternalPeerRemoved(p) => body(p),
            Payload::ConfigChanged(p) => body(p),
            Payload::SitePublished(p) => body(p),
            Payload::SiteRolledBack(p) => body(p),
            Payload::SecretResealed(p) => body(p),
            Payload::AcmeChallenge(p) => body(p),
            Payload::CertificateIssued(p) => body(p),
            Payload::CertificateRenewalRequested(p) => body(p),
            Payload::Unknown { body, .. } => body.clone(),
        }
    }

    /// Decodes a body of the given kind. `None` means the body is not a
    /// valid, fully consumed encoding of that kind.
    pub(crate) fn from_body(kind: u32, bytes: &[u8]) -> Option<Payload> {
        fn exact<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
            match postcard::take_from_bytes::<T>(bytes) {
                Ok((value, [])) => Some(value),
                _ => None,
            }
        }
        Some(match kind {
            0 => Payload::Genesis(exact(bytes)?),
            1 => Payload::OperatorAdded(exact(bytes)?),
            2 => Payload::OperatorRemoved(exact(bytes)?),
            3 => {
                let p: NodeJoined = exact(bytes)?;
                if !p.coordinates.is_valid() {
                    return None;
                }
                Payload::NodeJoined(p)
            }
            4 => Payload::NodeRemoved(exact(bytes)?),
            5 => Payload::ExternalPeerAdded(exact(bytes)?),
            6 => Payload::ExternalPeerRemoved(exact(bytes)?),
            7 => Payload::ConfigChanged(exact(bytes)?),
            8 => Payload::SitePublished(exact(bytes)?),
            9 => Payload::SiteRolledBack(exact(bytes)?),
            10 => Payload::SecretResealed(exact(bytes)?),
            11 => Payload::AcmeChallenge(exact(bytes)?),
            12 => Payload::CertificateIssued(exact(bytes)?),
            13 => Payload::CertificateRenewalRequested(exact(bytes)?),
            kind => Payload::Unknown {
                kind,
                body: bytes.to_vec(),
            },
        })
    }

    /// A one-line human summary for `makiatto log`.
    pub fn summary(&self) -> String {
        match self {
            Payload::Genesis(g) => format!(
                "cluster {:?} created by operator {} (mesh {})",
                g.cluster_name, g.operator_name, g.mesh_range
            ),
            Payload::OperatorAdded(o) => format!("operator {} added ({})", o.name, o.key.short()),
            Payload::OperatorRemoved(o) => format!("operator {} removed", o.key.short()),
            Payload::NodeJoined(n) => {
                let mut ips: Vec<String> = Vec::new();
                ips.extend(n.ipv4.map(|a| a.to_string()));
                ips.extend(n.ipv6.map(|a| a.to_string()));
                format!(
                    "node {} joined ({}{}, mesh {})",
                    n.name,
                    if ips.is_empty() {
                        "no public address".to_owned()
                    } else {
                        ips.join(", ")
                    },
                    if n.nameserver { ", nameserver" } else { "" },
                    n.mesh_addr
                )
            }
            Payload::NodeRemoved(n) => format!("node {} removed", n.name),
            Payload::ExternalPeerAdded(p) => {
                format!("peer {} added (endpoint {})", p.name, p.endpoint)
            }
            Payload::ExternalPeerRemoved(p) => format!("peer {} removed", p.name),
            Payload::ConfigChanged(c) => format!("config: {}", c.summary),
            Payload::SitePublished(s) => {
                let mut line = format!(
                    "sync {}: {} changed, {} added, {} removed ({} files)",
                    s.domain,
                    s.summary.changed,
                    s.summary.added,
                    s.summary.removed,
                    s.summary.files
                );
                if let Some(m) = &s.message {
                    line.push_str(&format!(" — {m}"));
                }
                line
            }
            Payload::SiteRolledBack(r) => format!("rollback {} to {}", r.domain, r.to.short()),
            Payload::SecretResealed(r) => format!(
                "secret {} resealed to node key {}",
                r.secret.short(),
                r.recipient.node.short()
            ),
            Payload::AcmeChallenge(c) => format!(
                "ACME {} challenge for {} {}",
                if c.dns { "DNS-01" } else { "HTTP-01" },
                c.name,
                if c.open { "opened" } else { "closed" }
            ),
            Payload::CertificateIssued(c) => format!(
                "certificate for {} issued by {} (key sealed to {} nodes)",
                c.names.join(", "),
                c.issuer,
                c.key.recipients().count()
            ),
            Payload::CertificateRenewalRequested(r) => {
                format!("certificate renewal requested for {}", r.name)
            }
            Payload::Unknown { kind, body } => {
                format!(
                    "event kind {kind} from a newer version ({} bytes)",
                    body.len()
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_list_usable_hosts() {
        let net: Ipv4Net = "10.44.44.7/30".parse().unwrap();
        assert_eq!(net.network, Ipv4Addr::new(10, 44, 44, 4));
        let hosts: Vec<_> = net.hosts().collect();
        assert_eq!(
            hosts,
            [Ipv4Addr::new(10, 44, 44, 5), Ipv4Addr::new(10, 44, 44, 6)]
        );
        assert!(net.contains(Ipv4Addr::new(10, 44, 44, 7)));
        assert!(!net.contains(Ipv4Addr::new(10, 44, 44, 8)));
        assert!(net.is_host(Ipv4Addr::new(10, 44, 44, 5)));
        assert!(!net.is_host(Ipv4Addr::new(10, 44, 44, 4)));
        assert!(!net.is_host(Ipv4Addr::new(10, 44, 44, 7)));
        assert!("10.0.0.0/33".parse::<Ipv4Net>().is_err());
    }

    #[test]
    fn coordinates_are_exact_and_checked() {
        let london = Coordinates::from_degrees(51.5074, -0.1278).unwrap();
        assert_eq!((london.lat_e6, london.lon_e6), (51_507_400, -127_800));
        assert!(Coordinates::from_degrees(91.0, 0.0).is_none());
        assert!(Coordinates::from_degrees(f64::NAN, 0.0).is_none());
    }

    #[test]
    fn kind_names_round_trip() {
        for kind in EventKind::KNOWN {
            assert_eq!(EventKind::parse(&kind.name()), Some(kind));
        }
        assert_eq!(EventKind::parse("unknown-42"), Some(EventKind::Unknown(42)));
        assert_eq!(EventKind::parse("nope"), None);
    }
}
