//! `maki peer` against real test hosts and a real WireGuard peer: a network
//! namespace on the cluster's bridge runs wireguard-go, takes the
//! configuration `maki peer wg-config` prints, and reaches every node over
//! the mesh. Needs root, wireguard-go and wireguard-tools (installed by
//! scripts/install-deps.sh).
//!
//! Traffic stays between the test's own namespaces; every address is
//! numeric, so nothing asks the system resolver.

mod common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, daemon_binary, json_lines, require_root};

/// The daemon's replication port (TCP) on its mesh address: what the
/// peer connects to, to show that TCP crosses the mesh.
const REPLICATION_PORT: u16 = 51881;
/// How long the mesh may take to carry a first packet.
const MESH_DEADLINE: Duration = Duration::from_secs(30);

/// A namespace outside the cluster, on its bridge, with no default route:
/// the external peer's machine. Removed on drop, with its wireguard-go.
struct ExtHost {
    netns: String,
    veth: String,
    interface: String,
    wireguard_go: Option<Child>,
}

fn sh(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ip(args: &[&str]) -> Output {
    sh(Command::new("ip").args(args))
}

impl ExtHost {
    /// Makes namespace `mk-<cluster>-ext` joined to `bridge` with `addr`/28.
    fn create(cluster: &str, slot: u64, bridge: &str, addr: Ipv4Addr) -> ExtHost {
        let host = ExtHost {
            netns: format!("mk-{cluster}-ext"),
            veth: format!("mk{slot}x"),
            interface: format!("wgx{slot}"),
            wireguard_go: None,
        };
        let inside = format!("mk{slot}xn");
        ip(&["netns", "add", &host.netns]);
        ip(&[
            "link", "add", &host.veth, "type", "veth", "peer", "name", &inside,
        ]);
        ip(&["link", "set", &inside, "netns", &host.netns]);
        host.ip(&["link", "set", &inside, "name", "eth0"]);
        host.ip(&["addr", "add", &format!("{addr}/28"), "dev", "eth0"]);
        host.ip(&["link", "set", "lo", "up"]);
        host.ip(&["link", "set", "eth0", "up"]);
        ip(&["link", "set", &host.veth, "master", bridge, "up"]);
        host
    }

    /// A command run inside the namespace.
    fn command(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns]).args(argv);
        cmd
    }

    fn run(&self, argv: &[&str]) -> String {
        String::from_utf8_lossy(&sh(&mut self.command(argv)).stdout).into_owned()
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut argv = vec!["ip"];
        argv.extend_from_slice(args);
        self.run(&argv)
    }

    fn socket(&self) -> PathBuf {
        Path::new("/var/run/wireguard").join(format!("{}.sock", self.interface))
    }

    /// Starts wireguard-go on the interface and waits for its UAPI socket.
    fn start_wireguard_go(&mut self, log: &Path) {
        let _ = std::fs::remove_file(self.socket());
        let log = std::fs::File::create(log).unwrap();
        let child = self
            .command(&["wireguard-go", "-f", &self.interface])
            // This kernel has WireGuard; the test is about the userspace one.
            .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.wireguard_go = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.socket().exists() {
            if let Some(Ok(Some(status))) = self.wireguard_go.as_mut().map(Child::try_wait) {
                panic!("wireguard-go exited ({status}) before opening its socket");
            }
            assert!(
                Instant::now() < deadline,
                "wireguard-go did not open {} within 10 s",
                self.socket().display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
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
        if let Some(mut child) = self.wireguard_go.take() {
            // `ip netns exec` execs, so this is wireguard-go itself.
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.socket());
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .stderr(Stdio::null())
            .status();
    }
}

/// Waits until `ok` holds, for at most `deadline`.
fn eventually(deadline: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if ok() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
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

#[test]
fn an_external_peer_reaches_every_node_through_the_printed_wg_config() {
    require_root();
    for tool in ["wireguard-go", "wg", "wg-quick"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success()),
            "{tool} is missing: run scripts/install-deps.sh"
        );
    }
    let binary = daemon_binary();
    let c = Cluster::new(format!("p{}", std::process::id() % 100_000));
    c.ok(&[
        "local",
        "up",
        "--no-ca",
        "--nodes",
        "2",
        "--binary-path",
        binary.to_str().unwrap(),
    ]);

    // The peer's machine: the slot's last usable address, .16k+14.
    let state = c.state();
    let slot = state["slot"].as_u64().unwrap();
    let bridge = state["bridge"].as_str().unwrap();
    let first: Ipv4Addr = state["host_ipv4"].as_str().unwrap().parse().unwrap();
    let ext_addr = Ipv4Addr::from(u32::from(first) + 13);
    let mut ext = ExtHost::create(&c.name, slot, bridge, ext_addr);

    let private = ext.run(&["wg", "genkey"]).trim().to_owned();
    let public = {
        let mut pubkey = ext
            .command(&["wg", "pubkey"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        pubkey
            .stdin
            .take()
            .unwrap()
            .write_all(private.as_bytes())
            .unwrap();
        let out = pubkey.wait_with_output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    ext.start_wireguard_go(&c.dir.path().join("wireguard-go.log"));

    // Register the peer; its address is the lowest free one after the nodes'.
    let added = c.ok(&[
        "peer",
        "add",
        "ext",
        "--wg-pubkey",
        &public,
        "--endpoint",
        &ext_addr.to_string(),
    ]);
    assert!(added.contains("maki peer wg-config ext"), "{added}");
    let mesh_base: Ipv4Addr = state["mesh_range"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let expected_addr = Ipv4Addr::from(u32::from(mesh_base) + 3);
    assert!(
        added.contains(&format!("mesh address: {expected_addr}")),
        "{added}"
    );
    assert!(
        c.fails(&[
            "peer",
            "add",
            "ext",
            "--wg-pubkey",
            &public,
            "--endpoint",
            "192.0.2.1"
        ])
        .contains("already used by a peer")
    );
    assert!(
        c.fails(&[
            "peer",
            "add",
            "vector",
            "--wg-pubkey",
            &public,
            "--endpoint",
            "192.0.2.1"
        ])
        .contains("already used by a node")
    );
    assert!(
        c.fails(&[
            "peer",
            "add",
            "x",
            "--wg-pubkey",
            "abc",
            "--endpoint",
            "192.0.2.1"
        ])
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
    let stripped = sh(Command::new("wg-quick").arg("strip").arg(&conf)).stdout;
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
    let netns = ext.netns.clone();
    drop(ext);
    c.ok(&["local", "down"]);
    let namespaces = String::from_utf8(ip(&["netns", "list"]).stdout).unwrap();
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
