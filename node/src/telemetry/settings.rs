//! What to export and where: the `[o11y]` table of the configuration
//! document and the peers projection, resolved the same way on every node
//! (a pure function, applied again whenever the log changes).
//!
//! The endpoint is `[o11y] otlp_endpoint` when set; otherwise the
//! external peer whose name starts or ends with `o11y`, at
//! `http://<its mesh address>:4317`, reached over the mesh. With several
//! such peers, the first by name (byte order: `metrics-o11y` before
//! `o11y`, `o11y-a` before `o11y-b`) is the collector for every node. No
//! endpoint: nothing is exported, and console logging goes on.

use std::net::Ipv4Addr;
use std::time::Duration;

use makiatto_projections::config::O11yConfig;
use makiatto_projections::peers::Peers;

/// The OTLP/gRPC port an `o11y` peer's collector listens on.
pub const OTLP_PORT: u16 = 4317;
/// `sampling_ratio` when unset.
pub const DEFAULT_RATIO: f64 = 0.1;
/// `dns_sampling_ratio` when unset: a kept DNS span costs about as much
/// as answering ten queries (docs/benchmarks.md), so one query in a
/// thousand keeps tracing within a few percent of serving.
pub const DEFAULT_DNS_RATIO: f64 = 0.001;
/// `slow_threshold_ms` when unset.
pub const DEFAULT_SLOW_MS: u64 = 1000;
/// `metrics_interval_secs` when unset.
pub const DEFAULT_INTERVAL_SECS: u64 = 15;

/// Where the collector is, and why there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub url: String,
    /// `override` (`[o11y] otlp_endpoint`) or `peer <name>`.
    pub source: String,
}

/// The settings in force.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub endpoint: Option<Endpoint>,
    pub tracing: bool,
    pub metrics: bool,
    pub logging: bool,
    pub ratio: f64,
    /// The share of DNS queries traced (`dns_sampling_ratio`).
    pub dns_ratio: f64,
    pub slow: Duration,
    pub interval: Duration,
}

impl Resolved {
    /// Nothing is exported (before the first configuration, or with no
    /// endpoint).
    pub fn off() -> Resolved {
        resolve(&O11yConfig::default(), &Peers::default())
    }

    /// Spans are exported.
    pub fn traces_on(&self) -> bool {
        self.endpoint.is_some() && self.tracing
    }

    pub fn logs_on(&self) -> bool {
        self.endpoint.is_some() && self.logging
    }

    pub fn metrics_on(&self) -> bool {
        self.endpoint.is_some() && self.metrics
    }
}

/// The `o11y` peer every node exports to: the first by name.
pub fn o11y_peer(peers: &Peers) -> Option<(String, Ipv4Addr)> {
    peers
        .external
        .iter()
        .filter(|(name, _)| name.is_o11y())
        .find_map(|(name, p)| Some((name.to_string(), p.mesh_addr?)))
}

pub fn resolve(o11y: &O11yConfig, peers: &Peers) -> Resolved {
    let endpoint = match &o11y.otlp_endpoint {
        Some(url) => Some(Endpoint {
            url: url.clone(),
            source: "override".into(),
        }),
        None => o11y_peer(peers).map(|(name, addr)| Endpoint {
            url: format!("http://{addr}:{OTLP_PORT}"),
            source: format!("peer {name}"),
        }),
    };
    Resolved {
        endpoint,
        tracing: o11y.tracing_enabled.unwrap_or(true),
        metrics: o11y.metrics_enabled.unwrap_or(true),
        logging: o11y.logging_enabled.unwrap_or(true),
        ratio: o11y.sampling_ratio.unwrap_or(DEFAULT_RATIO).clamp(0.0, 1.0),
        dns_ratio: o11y
            .dns_sampling_ratio
            .unwrap_or(DEFAULT_DNS_RATIO)
            .clamp(0.0, 1.0),
        slow: Duration::from_millis(o11y.slow_threshold_ms.unwrap_or(DEFAULT_SLOW_MS)),
        interval: Duration::from_secs(
            o11y.metrics_interval_secs
                .unwrap_or(DEFAULT_INTERVAL_SECS)
                .max(1),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use makiatto_events::{EventId, Hlc, PeerName, WgPublicKey};
    use makiatto_projections::peers::ExternalPeer;

    fn peers(names: &[(&str, u8)]) -> Peers {
        let mut p = Peers::default();
        for &(name, last) in names {
            p.external.insert(
                PeerName::new(name).unwrap(),
                ExternalPeer {
                    wg_public_key: WgPublicKey([last; 32]),
                    endpoint: "192.0.2.1".into(),
                    mesh_addr: Some(Ipv4Addr::new(198, 51, 100, last)),
                    requested_mesh_addr: None,
                    o11y: PeerName::new(name).unwrap().is_o11y(),
                    added: EventId([last; 32]),
                    added_at: Hlc::default(),
                },
            );
        }
        p
    }

    #[test]
    fn the_o11y_peer_first_by_name_is_the_endpoint() {
        let r = resolve(
            &O11yConfig::default(),
            &peers(&[("o11y-b", 5), ("laptop", 3), ("o11y-a", 9)]),
        );
        let e = r.endpoint.clone().unwrap();
        assert_eq!(e.url, "http://198.51.100.9:4317");
        assert_eq!(e.source, "peer o11y-a");
        assert!(r.traces_on() && r.metrics_on() && r.logs_on());
        assert_eq!(r.ratio, 0.1);
        assert_eq!(r.dns_ratio, 0.001);
        assert_eq!(r.slow, Duration::from_millis(1000));
    }

    #[test]
    fn an_override_wins_and_no_peer_means_no_export() {
        let o = O11yConfig {
            otlp_endpoint: Some("http://10.44.44.5:4317".into()),
            tracing_enabled: Some(false),
            sampling_ratio: Some(0.5),
            ..O11yConfig::default()
        };
        let r = resolve(&o, &peers(&[("o11y", 4)]));
        assert_eq!(r.endpoint.as_ref().unwrap().url, "http://10.44.44.5:4317");
        assert_eq!(r.endpoint.as_ref().unwrap().source, "override");
        assert!(!r.traces_on() && r.metrics_on());
        assert_eq!(r.ratio, 0.5);
        let none = resolve(&O11yConfig::default(), &peers(&[("laptop", 3)]));
        assert_eq!(none.endpoint, None);
        assert!(!none.traces_on() && !none.metrics_on() && !none.logs_on());
    }
}
