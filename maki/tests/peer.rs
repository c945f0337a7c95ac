//! `maki peer` against real test hosts and a real WireGuard peer: a network
//! namespace on the cluster's bridge runs wireguard-go, takes the
//! configuration `maki peer wg-config` prints, and reaches every node over
//! the mesh. Needs root, wireguard-go and wireguard-tools (installed by
//! scripts/install-deps.sh).
//!
//! Traffic stays between the test's own namespaces; every address is
//! numeric, so nothing asks the system resolver.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failure is a panic

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use makiatto_harness::{
    Cluster, Namespace, Process, eventually, have, json_lines, require_root, stdout, wait_until,
    with_input,
};

/// The daemon's replication port (TCP) on its mesh address: what the
/// peer connects to, to show that TCP crosses the mesh.
const REPLICATION_PORT: u16 = 51881;
/// How long the mesh may take to carry a first packet.
const MESH_DEADLINE: Duration = Duration::from_secs(30);

/// Opens COUNT connections to ADDR:PORT one after another, writes a false
/// hello (a frame header claiming 64 bytes, then 64 bytes) on each and
/// reads until the other side closes; prints what it saw as JSON.
const FLOOD: &str = r#"
import json, socket, sys, time
addr, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
connected = failed = answered = 0
start = time.time()
for _ in range(count):
    try:
        s = socket.create_connection((addr, port), timeout=5)
    except OSError:
        failed += 1
        continue
    connected += 1
    try:
        s.sendall(b"\x00\x00\x00\x40" + b"\x01" * 64)
        while True:
            d = s.recv(4096)
            if not d:
                break
            answered += len(d)
    except OSError:
        pass
    s.close()
print(json.dumps({"connected": connected, "failed": failed, "answered_bytes": answered,
                  "seconds": round(time.time() - start, 2)}))
"#;

/// A namespace outside the cluster, on its bridge, with no default route:
/// the external peer's machine. Removed on drop, with its wireguard-go.
struct ExtHost {
    // Fields drop in this order: wireguard-go, then its namespace.
    wireguard_go: Option<Process>,
    ns: Namespace,
    interface: String,
}

impl ExtHost {
    /// Makes namespace `mk-<cluster>-ext` joined to `bridge` with `addr`/28.
    fn create(cluster: &str, slot: u8, bridge: &str, addr: Ipv4Addr) -> ExtHost {
        ExtHost {
            wireguard_go: None,
            ns: Namespace::create(
                &format!("mk-{cluster}-ext"),
                &format!("mk{slot}x"),
                addr,
                bridge,
            ),
            interface: format!("wgx{slot}"),
        }
    }

    /// A command run inside the namespace.
    fn command(&self, argv: &[&str]) -> Command {
        self.ns.command(argv)
    }

    fn run(&self, argv: &[&str]) -> String {
        self.ns.run(argv)
    }

    fn ip(&self, args: &[&str]) -> String {
        self.ns.ip(args)
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
        wait_until(
            Duration::from_secs(10),
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
    fn pings(&self, addr: &str) -> bool {
        self.command(&["ping", "-n", "-c", "1", "-W", "1", addr])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

impl Drop for ExtHost {
    fn drop(&mut self) {
        // wireguard-go ends first (`ip netns exec` execs, so the child is
        // wireguard-go itself); its socket is left outside the namespace.
        drop(self.wireguard_go.take());
        let _ = std::fs::remove_file(self.socket());
    }
}

/// The values of `key = value` lines in a wg-quick file.
fn values<'a>(config: &'a str, key: &str) -> Vec<&'a str> {
    config
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
        .collect()
}

/// `maki peer add NAME --wg-pubkey KEY --endpoint ENDPOINT`.
fn peer_add<'a>(name: &'a str, key: &'a str, endpoint: &'a str) -> [&'a str; 7] {
    [
        "peer",
        "add",
        name,
        "--wg-pubkey",
        key,
        "--endpoint",
        endpoint,
    ]
}

#[test]
fn an_external_peer_reaches_every_node_through_the_printed_wg_config() {
    require_root();
    for tool in ["wireguard-go", "wg", "wg-quick"] {
        assert!(have(tool), "{tool} is missing: run scripts/install-deps.sh");
    }
    let c = Cluster::new("p");
    let state = c.up(2, &["--no-ca"]);

    // The peer's machine: the slot's last usable address, .16k+14.
    let ext_addr = state.address(14);
    let mut ext = ExtHost::create(&c.name, state.slot, &state.bridge, ext_addr);

    let private = ext.run(&["wg", "genkey"]).trim().to_owned();
    let public = {
        let out = with_input(&mut ext.command(&["wg", "pubkey"]), private.as_bytes());
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    ext.start_wireguard_go(&c.dir.path().join("wireguard-go.log"));

    // Register the peer; its address is the lowest free one after the nodes'.
    let added = c.ok(&peer_add("ext", &public, &ext_addr.to_string()));
    assert!(added.contains("maki peer wg-config ext"), "{added}");
    let mesh_base = state.mesh_base();
    let expected_addr = Ipv4Addr::from(u32::from(mesh_base) + 3);
    assert!(
        added.contains(&format!("mesh address: {expected_addr}")),
        "{added}"
    );
    assert!(
        c.fails(&peer_add("ext", &public, "192.0.2.1"))
            .contains("already used by a peer")
    );
    assert!(
        c.fails(&peer_add("vector", &public, "192.0.2.1"))
            .contains("already used by a node")
    );
    assert!(
        c.fails(&peer_add("x", "abc", "192.0.2.1"))
            .contains("wg pubkey")
    );

    // The printed configuration, with the private key filled in, drives wireguard-go.
    let config = c.ok(&["peer", "wg-config", "ext"]);
    eprintln!("maki peer add:\n{added}\nmaki peer wg-config ext:\n{config}");
    assert_eq!(values(&config, "PrivateKey"), ["<private-key>"]);
    assert_eq!(values(&config, "Address"), [format!("{expected_addr}/32")]);
    let node_addrs: Vec<&str> = values(&config, "AllowedIPs");
    assert_eq!(node_addrs.len(), 2, "{config}");
    let machines = json_lines(&c.ok(&["machine", "list", "--json"]));
    for m in &machines {
        let mesh = format!("{}/32", m["mesh_addr"].as_str().unwrap());
        assert!(node_addrs.contains(&mesh.as_str()), "{mesh}: {config}");
    }
    assert!(
        c.fails(&["peer", "wg-config", "nosuch"])
            .contains("no peer named nosuch; peers: ext")
    );
    let conf = c.dir.path().join(format!("{}.conf", ext.interface));
    std::fs::write(&conf, config.replace("<private-key>", &private)).unwrap();
    let stripped = stdout(Command::new("wg-quick").arg("strip").arg(&conf));
    let setconf = c.dir.path().join("setconf.conf");
    std::fs::write(&setconf, stripped).unwrap();
    ext.run(&["wg", "setconf", &ext.interface, setconf.to_str().unwrap()]);
    for address in values(&config, "Address") {
        ext.ip(&["addr", "add", address, "dev", &ext.interface]);
    }
    ext.ip(&["link", "set", &ext.interface, "up"]);
    for allowed in &node_addrs {
        ext.ip(&["route", "add", allowed, "dev", &ext.interface]);
    }

    // Every node answers over the mesh.
    let targets: Vec<&str> = node_addrs
        .iter()
        .filter_map(|a| a.strip_suffix("/32"))
        .collect();
    for target in &targets {
        assert!(
            eventually(MESH_DEADLINE, || ext.pings(target)),
            "the peer did not reach {target} over the mesh within {MESH_DEADLINE:?}\nwg show:\n{}",
            ext.run(&["wg", "show", &ext.interface])
        );
    }

    // TCP crosses the mesh: each daemon's replication port accepts the
    // connection (and, the peer not being a node, says nothing on it).
    for target in &targets {
        let connect = format!("exec 3<>/dev/tcp/{target}/{REPLICATION_PORT}");
        let connected = ext
            .command(&["timeout", "10", "bash", "-c", &connect])
            .output()
            .unwrap();
        assert!(
            connected.status.success(),
            "no TCP over the mesh to {target}:{REPLICATION_PORT}: {}",
            String::from_utf8_lossy(&connected.stderr)
        );
    }

    // A non-member flooding the replication port (the hostile-input
    // matrix): connections opened as fast as one process can, each
    // writing a false hello. Each is dropped before a byte is read or
    // answered and counted; meanwhile the cluster replicates a change and
    // serves.
    let node = state.hosts[0].node.as_str();
    let target = machines
        .iter()
        .find(|m| m["name"] == node)
        .and_then(|m| m["mesh_addr"].as_str())
        .unwrap()
        .to_owned();
    let refused = |c: &Cluster| {
        c.health(node)["replication"]["refused_connections"]
            .as_u64()
            .unwrap()
    };
    let before = refused(&c);
    let flood = ext
        .command(&[
            "python3",
            "-c",
            FLOOD,
            &target,
            &REPLICATION_PORT.to_string(),
            "20000",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.ok(&["config", "set", "sites.keep_versions", "7"]);
    wait_until(
        Duration::from_secs(60),
        "both nodes hold the change",
        || {
            let digests: Vec<_> = machines
                .iter()
                .map(|m| c.health(m["name"].as_str().unwrap())["vv_digest"].clone())
                .collect();
            digests.windows(2).all(|w| w[0] == w[1])
        },
    );
    let probe = c.curl_writes(
        node,
        "%{http_code}",
        &[
            "-H",
            "Host: example.test",
            &format!("http://{}/", state.hosts[0].ipv4),
        ],
    );
    // No site is deployed in this test: the node's own 404 is its answer.
    assert_eq!(probe, "404", "the node answers HTTP during the flood");
    let out = flood.wait_with_output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!(
        "flood of the replication port: {report}, refused before {before}, after {}",
        refused(&c)
    );
    assert_eq!(report["answered_bytes"], 0, "{report}");
    assert_eq!(report["connected"], 20000, "{report}");
    assert!(
        refused(&c) >= before + 20000,
        "every connection counted: {report}"
    );

    // Listed, with its key and endpoint.
    let peers = json_lines(&c.ok(&["peer", "list", "--json"]));
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(peers[0]["name"], "ext");
    assert_eq!(peers[0]["mesh_addr"], expected_addr.to_string());
    assert_eq!(peers[0]["endpoint"], ext_addr.to_string());
    assert_eq!(peers[0]["wg_public_key"], public.as_str());
    assert_eq!(peers[0]["o11y"], false);

    // Removal needs --force in a script; then the nodes forget the peer.
    assert!(c.fails(&["peer", "remove", "ext"]).contains("--force"));
    c.ok(&["peer", "remove", "ext", "--force"]);
    for m in &machines {
        let node = m["name"].as_str().unwrap();
        let shown = c.ok(&[
            "local",
            "exec",
            node,
            "--",
            "/usr/local/bin/makiatto",
            "show",
            "peers",
            "--json",
        ]);
        let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
        assert!(
            shown["state"]["external"]
                .as_object()
                .is_some_and(|e| e.is_empty()),
            "{node} still lists a peer: {shown}"
        );
    }
    assert!(c.ok(&["peer", "list", "--json"]).trim().is_empty());
    assert!(
        eventually(MESH_DEADLINE, || !ext.pings(targets[0])),
        "{} still answers the removed peer",
        targets[0]
    );

    // Nothing is left behind.
    let interface = ext.interface.clone();
    let netns = ext.ns.name.clone();
    drop(ext);
    c.ok(&["local", "down"]);
    let namespaces = stdout(Command::new("ip").args(["netns", "list"]));
    assert!(!namespaces.contains(&netns), "{namespaces}");
    assert!(
        !namespaces.contains(&format!("mk-{}-", c.name)),
        "{namespaces}"
    );
    let wg = Command::new("pgrep")
        .args(["-a", "wireguard-go"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&wg.stdout).contains(&interface),
        "wireguard-go left running: {}",
        String::from_utf8_lossy(&wg.stdout)
    );
}
