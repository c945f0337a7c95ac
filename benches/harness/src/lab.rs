//! What a benchmark that runs a real node against a real anchor server
//! stands on: a local cluster, namespaces of our own on its bridge for
//! the anchor and the client, and the anchor itself.
//!
//! Everything a [`Lab`] made is removed when it drops, also on a panic:
//! the anchor first, then the namespaces (with any process left in them),
//! then the cluster.

use std::process::Stdio;

use crate::cluster::Cluster;
use crate::host::Host;
use crate::netns::{Namespace, in_namespace};
use crate::process::Process;

/// A cluster with an anchor server and a client beside it.
pub struct Lab {
    // Fields drop in this order.
    anchor: Option<Process>,
    namespaces: Vec<Namespace>,
    pub cluster: Cluster,
}

impl Lab {
    /// A lab whose cluster is named `prefix` + this process's id, using the
    /// release `maki` and `makiatto` beside the running benchmark; its
    /// nodes get the GeoIP database when it is there (for EDNS Client
    /// Subnet answers).
    pub fn new(prefix: &str) -> Lab {
        Lab {
            anchor: None,
            namespaces: Vec::new(),
            cluster: Cluster::new(prefix),
        }
    }

    /// `maki local up --nodes N` syncing `project`, with more `flags` of
    /// `up`; the nodes' hosts.
    pub fn up(&self, nodes: usize, project: &std::path::Path, flags: &[&str]) -> Vec<Host> {
        let mut all = vec!["--sync", project.to_str().expect("a UTF-8 path")];
        all.extend(flags);
        self.cluster.up(nodes, &all).hosts
    }

    /// The anchor server's namespace `name`, on the cluster's bridge by
    /// veth `mk{slot}{veth}`; returns its address, the slot's `.11`.
    pub fn anchor_namespace(&mut self, name: &str, veth: &str) -> String {
        self.namespace(name, veth, 11)
    }

    /// The client's namespace `name`, on the cluster's bridge by veth
    /// `mk{slot}{veth}`; returns its address, the slot's `.12`.
    pub fn client_namespace(&mut self, name: &str, veth: &str) -> String {
        self.namespace(name, veth, 12)
    }

    /// A namespace holding address `i` of the slot (free ones: see
    /// [`crate::State::address`]).
    fn namespace(&mut self, name: &str, veth: &str, i: u8) -> String {
        let state = self.cluster.state();
        let addr = state.address(i);
        let veth = format!("mk{}{veth}", state.slot);
        self.namespaces
            .push(Namespace::create(name, &veth, addr, &state.bridge));
        addr.to_string()
    }

    /// Starts the anchor server in the foreground, as our child, in
    /// namespace `ns`: `ip netns exec` execs it, so the child's pid is the
    /// server's and `Drop` ends exactly it. Returns that pid.
    pub fn spawn_anchor(&mut self, ns: &str, argv: &[&str]) -> u32 {
        let anchor = Process::spawn(
            in_namespace(ns, &[], argv)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let pid = anchor.id();
        self.anchor = Some(anchor);
        pid
    }
}
