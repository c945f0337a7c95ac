//! An external WireGuard peer of a local cluster, set up exactly as the
//! guide tells an operator to: a machine of its own (a namespace on the
//! cluster's bridge), `wg genkey`, `maki peer add NAME --wg-pubkey KEY
//! --endpoint ADDR`, the output of `maki peer wg-config NAME` with the
//! private key filled in, on wireguard-go. Dropped, wireguard-go ends and
//! the namespace goes.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::wait::Wait;
use crate::{Cluster, Namespace, Process, State, have, stdout, with_input};

/// How long the mesh may take to carry a first packet.
const MESH_DEADLINE: Duration = Duration::from_secs(30);

/// A peer on the mesh, outside the cluster.
pub struct WgPeer {
    // Fields drop in this order: wireguard-go, then its namespace.
    wireguard_go: Option<Process>,
    pub ns: Namespace,
    /// Its address on the bridge (its WireGuard endpoint).
    pub addr: Ipv4Addr,
    /// Its address on the mesh, as `maki peer add` allocated it.
    pub mesh_addr: Ipv4Addr,
    pub interface: String,
}

/// The values of `key = value` lines in a wg-quick file.
pub fn wg_values<'a>(config: &'a str, key: &str) -> Vec<&'a str> {
    config
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
        .collect()
}

impl WgPeer {
    /// Peer `name` of the cluster, on bridge host number `host` (its
    /// address `state.address(host)`), added with `maki peer add` and
    /// configured from `maki peer wg-config`; returns once it pings every
    /// node over the mesh.
    pub fn add(c: &Cluster, state: &State, name: &str, host: u8) -> WgPeer {
        for tool in ["wireguard-go", "wg", "wg-quick"] {
            assert!(have(tool), "{tool} is missing: run scripts/install-deps.sh");
        }
        let addr = state.address(host);
        let ns = Namespace::create(
            &format!("mk-{}-{name}", c.name),
            &format!("mk{}w{host}", state.slot),
            addr,
            &state.bridge,
        );
        let mut peer = WgPeer {
            wireguard_go: None,
            ns,
            addr,
            mesh_addr: Ipv4Addr::UNSPECIFIED,
            interface: format!("wg{}p{host}", state.slot),
        };
        let private = peer.ns.run(&["wg", "genkey"]).trim().to_owned();
        let public = {
            let out = with_input(&mut peer.ns.command(&["wg", "pubkey"]), private.as_bytes());
            assert!(out.status.success(), "wg pubkey");
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        };
        peer.start_wireguard_go(&c.dir.path().join(format!("wireguard-go-{name}.log")));
        c.ok(&[
            "peer",
            "add",
            name,
            "--wg-pubkey",
            &public,
            "--endpoint",
            &addr.to_string(),
        ]);
        let config = c.ok(&["peer", "wg-config", name]);
        let conf = c.dir.path().join(format!("{name}.conf"));
        std::fs::write(&conf, config.replace("<private-key>", &private)).unwrap();
        let stripped = stdout(Command::new("wg-quick").arg("strip").arg(&conf));
        let setconf = c.dir.path().join(format!("{name}.setconf"));
        std::fs::write(&setconf, stripped).unwrap();
        peer.ns
            .run(&["wg", "setconf", &peer.interface, setconf.to_str().unwrap()]);
        let address = wg_values(&config, "Address");
        assert_eq!(address.len(), 1, "{config}");
        peer.mesh_addr = address[0]
            .trim_end_matches("/32")
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e}", address[0]));
        peer.ns
            .ip(&["addr", "add", address[0], "dev", &peer.interface]);
        peer.ns.ip(&["link", "set", &peer.interface, "up"]);
        let nodes: Vec<String> = wg_values(&config, "AllowedIPs")
            .into_iter()
            .map(str::to_owned)
            .collect();
        for allowed in &nodes {
            peer.ns
                .ip(&["route", "add", allowed, "dev", &peer.interface]);
        }
        for node in &nodes {
            let target = node.trim_end_matches("/32");
            Wait::up_to(MESH_DEADLINE).until_seeing(
                &format!("peer {name} reaches {target} over the mesh"),
                || {
                    if peer.pings(target) {
                        Ok(())
                    } else {
                        Err(peer.ns.run(&["wg", "show", &peer.interface]))
                    }
                },
            );
        }
        peer
    }

    fn socket(&self) -> PathBuf {
        Path::new("/var/run/wireguard").join(format!("{}.sock", self.interface))
    }

    /// Starts wireguard-go on the interface and waits for its UAPI socket.
    fn start_wireguard_go(&mut self, log: &Path) {
        let socket = self.socket();
        let _ = std::fs::remove_file(&socket);
        let log = std::fs::File::create(log).unwrap();
        let wireguard_go = self.wireguard_go.insert(Process::spawn(
            self.ns
                .command(&["wireguard-go", "-f", &self.interface])
                // This kernel has WireGuard; the test is about the userspace one.
                .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        ));
        Wait::up_to(Duration::from_secs(10)).until(
            &format!("wireguard-go opens {}", socket.display()),
            || {
                if let Some(status) = wireguard_go.exited() {
                    panic!("wireguard-go exited ({status}) before opening its socket");
                }
                socket.exists()
            },
        );
    }

    /// Whether one ping to `addr` is answered within a second.
    pub fn pings(&self, addr: &str) -> bool {
        self.ns
            .command(&["ping", "-n", "-c", "1", "-W", "1", addr])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

impl Drop for WgPeer {
    fn drop(&mut self) {
        drop(self.wireguard_go.take());
        let _ = std::fs::remove_file(self.socket());
    }
}
