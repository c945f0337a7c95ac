//! Per domain, the content of its authoritative zone, built from the
//! configuration and the peers: SOA, NS with glue, the geo candidates for
//! the apex (and in-zone aliases), CAA and custom records. The DNS server
//! renders this to wire format once per change, never per query.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use makiatto_events::{DomainName, NodeName};
use serde::{Deserialize, Serialize};

use crate::certificates::Certificates;
use crate::config::{DesiredConfig, RecordConfig};
use crate::peers::Peers;
use crate::record::RecordText;

/// TTL of the SOA, NS and glue records, in seconds.
pub const INFRA_TTL: u32 = 3600;
/// TTL of custom records that do not set one.
pub const DEFAULT_RECORD_TTL: u32 = 300;
/// SOA timers (refresh, retry, expire, minimum/negative TTL).
pub const SOA_REFRESH: u32 = 7200;
pub const SOA_RETRY: u32 = 3600;
pub const SOA_EXPIRE: u32 = 1_209_600;
pub const SOA_MINIMUM: u32 = 300;

/// The SOA record's fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Hash)]
pub struct Soa {
    pub mname: String,
    pub rname: String,
    pub refresh: u32,
    pub retry: u32,
    pub expire: u32,
    pub minimum: u32,
    pub ttl: u32,
}

/// A nameserver of the zone, `<node>.ns.<domain>`, with its glue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Hash)]
pub struct Nameserver {
    pub name: String,
    pub node: NodeName,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

/// A node the apex may be answered with, and where it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Hash)]
pub struct GeoCandidate {
    pub node: NodeName,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub lat_e6: i32,
    pub lon_e6: i32,
}

/// A CAA record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Hash)]
pub struct Caa {
    pub flags: u8,
    pub tag: String,
    pub value: String,
}

/// One domain's zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Hash)]
pub struct Zone {
    /// Changes whenever the content does; derived from the log, so equal on
    /// every node holding the same events.
    pub serial: u32,
    pub soa: Soa,
    pub nameservers: Vec<Nameserver>,
    pub geo: Vec<GeoCandidate>,
    pub geo_ttl: u32,
    pub nearest: u32,
    /// Names inside this zone answered like the apex (`www.example.com`).
    pub aliases: Vec<String>,
    pub caa: Vec<Caa>,
    /// Custom records, in their configuration key order.
    pub records: Vec<RecordView>,
    /// Open ACME DNS-01 challenges in this zone: (owner name, TXT value).
    pub acme_txt: Vec<(String, String)>,
}

/// A custom record as the zone carries it: text, as configured (its type
/// uppercased, its TTL defaulted), parsed by the zone compiler with
/// [`RecordView::text`] and [`Record::parse`](crate::record::Record::parse).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Hash)]
pub struct RecordView {
    #[serde(rename = "type")]
    pub rtype: String,
    pub name: String,
    pub value: String,
    pub ttl: u32,
    pub priority: Option<u16>,
}

impl From<&RecordConfig> for RecordView {
    fn from(r: &RecordConfig) -> Self {
        Self {
            rtype: r.rtype.to_ascii_uppercase(),
            name: r.name.clone(),
            value: r.value.clone(),
            ttl: r.ttl.unwrap_or(DEFAULT_RECORD_TTL),
            priority: r.priority,
        }
    }
}

impl RecordView {
    /// The entry's fields for [`Record::parse`](crate::record::Record::parse).
    pub fn text(&self) -> RecordText<'_> {
        RecordText {
            rtype: &self.rtype,
            name: &self.name,
            value: &self.value,
            ttl: Some(i64::from(self.ttl)),
            priority: self.priority.map(i64::from),
        }
    }
}

/// Every zone the cluster serves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Zones {
    pub zones: BTreeMap<DomainName, Zone>,
}

/// Builds every zone from the configuration and peers, with the serial the
/// fold derived from the log (see `Fold::bump_serials`).
pub fn build(config: &DesiredConfig, peers: &Peers, certs: &Certificates, serial: u32) -> Zones {
    let mut zones = BTreeMap::new();
    for (name, domain) in &config.domains {
        let Ok(apex) = DomainName::new(name.as_str()) else {
            continue;
        };
        let nameservers: Vec<Nameserver> = peers
            .nodes
            .iter()
            .filter(|(_, n)| n.nameserver)
            .map(|(node, n)| Nameserver {
                name: format!("{node}.ns.{apex}"),
                node: node.clone(),
                ipv4: n.ipv4,
                ipv6: n.ipv6,
            })
            .collect();
        let geo = peers
            .nodes
            .iter()
            .filter(|(_, n)| n.ipv4.is_some() || n.ipv6.is_some())
            .map(|(node, n)| GeoCandidate {
                node: node.clone(),
                ipv4: n.ipv4,
                ipv6: n.ipv6,
                lat_e6: n.coordinates.lat_e6,
                lon_e6: n.coordinates.lon_e6,
            })
            .collect();
        let mut aliases: Vec<String> = domain
            .aliases
            .iter()
            .filter_map(|a| {
                // A wildcard alias (`*.<name in the zone>`) is kept as such:
                // the DNS server answers from it (RFC 4592).
                let (wildcard, base) = match a.strip_prefix("*.") {
                    Some(base) => (true, base),
                    None => (false, a.as_str()),
                };
                let d = DomainName::new(base).ok()?;
                (d.is_within(&apex) && (wildcard || d != apex)).then(|| {
                    if wildcard {
                        format!("*.{d}")
                    } else {
                        d.to_string()
                    }
                })
            })
            .collect();
        aliases.sort();
        aliases.dedup();
        let zone = Zone {
            serial,
            soa: Soa {
                mname: nameservers
                    .first()
                    .map_or_else(|| format!("ns.{apex}"), |n| n.name.clone()),
                rname: format!("hostmaster.{apex}"),
                refresh: SOA_REFRESH,
                retry: SOA_RETRY,
                expire: SOA_EXPIRE,
                minimum: SOA_MINIMUM,
                ttl: INFRA_TTL,
            },
            nameservers,
            geo,
            geo_ttl: config.settings.geo_ttl(),
            nearest: config.settings.nearest(),
            aliases,
            caa: vec![Caa {
                flags: 0,
                tag: "issue".into(),
                value: "letsencrypt.org".into(),
            }],
            records: domain.records.values().map(RecordView::from).collect(),
            acme_txt: certs
                .challenges
                .values()
                .filter(|c| c.open && c.dns)
                .filter_map(|c| {
                    let base = c.name.trim_start_matches("*.").to_ascii_lowercase();
                    let within = base == apex.as_str() || base.ends_with(&format!(".{apex}"));
                    within.then(|| (format!("_acme-challenge.{base}"), c.value.clone()))
                })
                .collect(),
        };
        zones.insert(apex, zone);
    }
    Zones { zones }
}
