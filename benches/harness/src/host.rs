//! The test hosts of a local cluster, as `maki local up` recorded them in
//! its `state.json`: the fields the tests and benchmarks use (the file
//! holds more).
//!
//! Cluster slot k owns 203.0.113.16k/28: `.16k+1` is this machine's
//! address on the bridge, nodes have `.16k+2` onwards, pebble `.16k+13`.

use std::net::Ipv4Addr;

use serde::Deserialize;

/// What `maki local up` made.
#[derive(Debug, Clone, Deserialize)]
pub struct State {
    /// The cluster's slot: its hosts are 203.0.113.16·slot + i.
    pub slot: u8,
    /// The bridge every host's veth is on.
    pub bridge: String,
    /// This machine's address on the bridge (`.16k+1`).
    pub host_ipv4: Ipv4Addr,
    /// The mesh range, such as `198.51.100.16/28`.
    pub mesh_range: String,
    /// The nodes' hosts, in the order they were made.
    pub hosts: Vec<Host>,
}

/// One test host, holding one node. Addresses are kept as text: they go
/// on command lines and are compared with what commands print.
#[derive(Debug, Clone, Deserialize)]
pub struct Host {
    /// The node's (and its host's) name.
    pub node: String,
    /// Its network namespace.
    pub netns: String,
    pub ipv4: String,
    pub ipv6: String,
    pub latitude: f64,
    pub longitude: f64,
}

impl Host {
    /// Where it stands: (latitude, longitude).
    pub fn at(&self) -> (f64, f64) {
        (self.latitude, self.longitude)
    }
}

impl State {
    /// The `i`-th address of the slot's /28 (1 to 14). `.11`, `.12` and
    /// `.14` are free with up to nine nodes: a benchmark's anchor and
    /// client and a test's external peer take them.
    pub fn address(&self, i: u8) -> Ipv4Addr {
        assert!((1..15).contains(&i), "a /28 has hosts 1 to 14, not {i}");
        Ipv4Addr::from(u32::from(self.host_ipv4) - 1 + u32::from(i))
    }

    /// The first address of the mesh range.
    pub fn mesh_base(&self) -> Ipv4Addr {
        self.mesh_range
            .split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("a mesh range in state.json: {}", self.mesh_range))
    }

    /// The host of `node`.
    pub fn host(&self, node: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.node == node)
            .unwrap_or_else(|| panic!("no host holds {node}"))
    }

    /// Every node's name, in the order the hosts were made.
    pub fn nodes(&self) -> Vec<String> {
        self.hosts.iter().map(|h| h.node.clone()).collect()
    }
}
