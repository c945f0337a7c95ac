//! `mesh`: the WireGuard mesh and replication over it, on a real local
//! cluster of five nodes (`maki local up --nodes 5`, release binaries).
//!
//! 1. **Convergence after a heal.** One node's mesh is cut (`maki local cut
//!    --mesh`); 1,000 new events (about 400 bytes each, signed here by a
//!    key of their own) are appended on another node and replicate to the
//!    three still connected. The cut node is healed and timed until it holds
//!    all of them. Bytes: the replication frames every node sent during the
//!    catch-up (from each daemon's health table), and the WireGuard bytes the
//!    healed node received, against the anchor: the size of the 1,000 events.
//! 2. **Mesh throughput.** A bulk TCP transfer (this binary as sender and
//!    receiver, 256 MiB) between two test hosts over boringtun (mesh
//!    addresses), as a ratio to the same transfer over the bare veth link
//!    (public addresses) in the same run; best of three each, alternating.
//!
//! Needs root. Build everything first:
//! `cargo build --release -p makiatto -p makiatto-cli -p makiatto-benches --bins`
//! then `target/release/mesh` (the `maki` and `makiatto` beside it are used).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark support: a failure is a panic that fails the run

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use makiatto_benches::measure::{print_json, print_table};
use makiatto_events::{FeedWriter, Payload, SigningKey};
use makiatto_harness::netns::in_namespace;
use makiatto_harness::{Cluster, Host, State, Wait, have, with_input};
use serde_json::Value;

const EVENTS: u32 = 1_000;
const BULK_BYTES: u64 = 256 << 20;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("receive") => receive(&args[2]),
        Some("send") => send(&args[2], args[3].parse().unwrap_or(BULK_BYTES)),
        _ => run(),
    }
}

/// Accepts one connection, reads it to the end, answers one byte.
fn receive(addr: &str) {
    let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    println!("ready");
    let _ = std::io::stdout().flush();
    let (mut stream, _) = listener.accept().expect("accept");
    let mut buf = vec![0u8; 1 << 18];
    let mut total = 0u64;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) => panic!("read: {e}"),
        }
    }
    stream.write_all(&[1]).expect("ack");
    println!("{total}");
}

/// Sends `bytes` and waits for the receiver's answer; prints MB/s.
fn send(addr: &str, bytes: u64) {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let buf = vec![0x5au8; 1 << 18];
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        stream.write_all(&buf[..n]).expect("write");
        left -= n as u64;
    }
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    let mut ack = [0u8; 1];
    stream.read_exact(&mut ack).expect("ack");
    let secs = start.elapsed().as_secs_f64();
    println!("{}", bytes as f64 / secs / 1e6);
}

fn sum(nodes: &[String], c: &Cluster, f: impl Fn(&Value) -> u64) -> u64 {
    nodes.iter().map(|n| f(&c.health(n))).sum()
}

/// Waits for `check`, looking every 20 ms: the heal's catch-up is timed
/// by such a wait.
fn wait_until(within: Duration, what: &str, check: impl FnMut() -> bool) {
    Wait::up_to(within)
        .every(Duration::from_millis(20))
        .until(what, check);
}

fn run() {
    let mut c = Cluster::without_geoip("b");
    // `MAKIATTO_BENCH_KEEP=1`: the cluster stays up, to be looked at.
    if std::env::var_os("MAKIATTO_BENCH_KEEP").is_some() {
        c.keep_when_dropped();
    }
    let state = c.up(5, &[]);
    let hosts = &state.hosts;
    let nodes = state.nodes();
    let (writer_node, cut_node) = (&nodes[0], &nodes[4]);
    wait_until(Duration::from_secs(30), "every peer alive", || {
        nodes.iter().all(|n| {
            let h = c.health(n);
            h["peers"]
                .as_array()
                .is_some_and(|p| p.len() == nodes.len() - 1 && p.iter().all(|p| p["alive"] == true))
        })
    });

    // 1,000 events, signed here, on top of the writer's heads.
    let parent = c.head(writer_node);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut writer = FeedWriter::new(SigningKey::from_bytes(&[42; 32]));
    let mut input = String::new();
    let mut event_bytes = 0u64;
    for i in 0..EVENTS {
        let body = std::iter::repeat_n(i.to_le_bytes(), 64).flatten().collect();
        let e = writer
            .write(
                Payload::Unknown { kind: 900, body },
                &[parent],
                now + u64::from(i),
            )
            .expect("signs");
        event_bytes += e.to_bytes().len() as u64;
        input.push_str(&hex::encode(e.to_bytes()));
        input.push('\n');
    }

    c.ok(&["local", "cut", cut_node, "--mesh"]);
    wait_until(Duration::from_secs(10), "the cut node is seen down", || {
        c.health(writer_node)["peers"].as_array().is_some_and(|p| {
            p.iter()
                .any(|p| p["name"] == cut_node.as_str() && p["alive"] == false)
        })
    });
    c.exec_with_input(writer_node, &["makiatto", "append"], input.as_bytes());
    let total = c.events(writer_node);
    let connected = &nodes[..4];
    wait_until(
        Duration::from_secs(30),
        "the connected nodes converge",
        || connected.iter().all(|n| c.events(n) == total),
    );
    let frames_out = |h: &Value| h["replication"]["bytes_out"].as_u64().unwrap_or(0);
    let wg_rx = |h: &Value| {
        h["peers"].as_array().map_or(0, |p| {
            p.iter().filter_map(|p| p["wg_rx_bytes"].as_u64()).sum()
        })
    };
    let sent_before = sum(&nodes, &c, frames_out);
    let wg_before = wg_rx(&c.health(cut_node));

    c.ok(&["local", "heal", cut_node]);
    let healed = Instant::now();
    eprintln!("healed at {:?}", SystemTime::now());
    // Polled through `maki local exec` (nsenter, no SSH): about 30 ms a
    // look, so the figure is at most that much late.
    wait_until(
        Duration::from_secs(60),
        "the healed node catches up",
        || c.events(cut_node) == total,
    );
    let converged = healed.elapsed();
    eprintln!("caught up at {:?}", SystemTime::now());
    // Let the heartbeats settle so that any duplicate session would show.
    std::thread::sleep(Duration::from_secs(2));
    let sent = sum(&nodes, &c, frames_out) - sent_before;
    let wg = wg_rx(&c.health(cut_node)) - wg_before;
    let frame_ratio = sent as f64 / event_bytes as f64;
    let wg_ratio = wg as f64 / event_bytes as f64;

    // Throughput: two hosts, over the mesh and over the veth link.
    let mesh_of = |n: &str| c.health(n)["mesh_addr"].as_str().unwrap_or("").to_owned();
    let (a, b) = (&hosts[0], &hosts[1]);
    let (a_ns, b_ns) = (&a.netns, &b.netns);
    let b_public = b.ipv4.clone();
    let b_mesh = mesh_of(&nodes[1]);
    let me = std::env::current_exe().expect("exe");
    let transfer = |to: &str, port: u16| -> f64 {
        let addr = format!("{to}:{port}");
        let mut server = in_namespace(b_ns, &[], &[])
            .arg(&me)
            .args(["receive", &addr])
            .stdout(Stdio::piped())
            .spawn()
            .expect("receiver");
        let mut ready = [0u8; 6];
        server
            .stdout
            .as_mut()
            .expect("stdout")
            .read_exact(&mut ready)
            .expect("receiver ready");
        let out = in_namespace(a_ns, &[], &[])
            .arg(&me)
            .args(["send", &addr, &BULK_BYTES.to_string()])
            .output()
            .expect("sender");
        let _ = server.wait();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0.0)
    };
    // The userspace reference: wireguard-go on the same two hosts, beside
    // the daemons, on addresses of the cluster's mesh range no node holds.
    let wg_go = wireguard_go_pair(&c, &state, a, b);
    let (mut mesh_best, mut veth_best, mut go_best) = (0.0f64, 0.0f64, 0.0f64);
    for round in 0..3u16 {
        mesh_best = mesh_best.max(transfer(&b_mesh, 40000 + round));
        veth_best = veth_best.max(transfer(&b_public, 40100 + round));
        if let Some(addr) = &wg_go {
            go_best = go_best.max(transfer(addr, 40200 + round));
        }
    }
    let throughput_ratio = mesh_best / veth_best;
    let go_ratio = mesh_best / go_best;

    print_table(
        "mesh (5 nodes, release build)",
        &[
            ("events appended during the cut", EVENTS.to_string()),
            ("their size (anchor)", format!("{event_bytes} bytes")),
            (
                "convergence after the heal",
                format!("{:.0} ms", converged.as_secs_f64() * 1e3),
            ),
            (
                "replication frames sent, all nodes",
                format!("{sent} bytes ({frame_ratio:.3} × the events)"),
            ),
            (
                "WireGuard bytes into the healed node",
                format!("{wg} bytes ({wg_ratio:.3} × the events)"),
            ),
            ("bulk TCP over the mesh", format!("{mesh_best:.0} MB/s")),
            (
                "bulk TCP over the veth (anchor)",
                format!("{veth_best:.0} MB/s"),
            ),
            ("mesh / veth", format!("{throughput_ratio:.3}")),
            (
                "bulk TCP over wireguard-go (anchor)",
                if wg_go.is_some() {
                    format!("{go_best:.0} MB/s")
                } else {
                    "wireguard-go not installed".into()
                },
            ),
            ("mesh / wireguard-go", format!("{go_ratio:.3}")),
        ],
    );
    print_json(
        "mesh",
        serde_json::json!({
            "events": EVENTS,
            "event_bytes": event_bytes,
            "converge_ms": converged.as_millis() as u64,
            "frame_bytes": sent,
            "frame_ratio": frame_ratio,
            "wg_rx_bytes": wg,
            "wg_ratio": wg_ratio,
            "mesh_mb_s": mesh_best,
            "veth_mb_s": veth_best,
            "throughput_ratio": throughput_ratio,
            "wireguard_go_mb_s": go_best,
            "wireguard_go_ratio": go_ratio,
        }),
    );
}

/// Two wireguard-go devices, one on each host, peered over the hosts'
/// public addresses (UDP 51990); returns the receiving side's tunnel
/// address. The devices die with the hosts (`maki local down`).
fn wireguard_go_pair(c: &Cluster, state: &State, a: &Host, b: &Host) -> Option<String> {
    if !(have("wireguard-go") && have("wg")) {
        return None;
    }
    let base = u32::from(state.mesh_base());
    let addr_of = |i: u32| std::net::Ipv4Addr::from(base + i).to_string();
    let (addr_a, addr_b) = (addr_of(13), addr_of(14));
    let keys = || -> (String, String) {
        let private = Command::new("wg")
            .arg("genkey")
            .output()
            .expect("wg genkey");
        let private = String::from_utf8_lossy(&private.stdout).trim().to_owned();
        let public = with_input(Command::new("wg").arg("pubkey"), private.as_bytes());
        (
            private,
            String::from_utf8_lossy(&public.stdout).trim().to_owned(),
        )
    };
    let (a_key, a_pub) = keys();
    let (b_key, b_pub) = keys();
    let setup = |ns: &str,
                 ifname: &str,
                 key: &str,
                 addr: &str,
                 peer_pub: &str,
                 peer_ip: &str,
                 peer_addr: &str| {
        let key_file = c.dir.path().join(format!("{ifname}.key"));
        std::fs::write(&key_file, key).expect("key file");
        let script = format!(
            "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 wireguard-go {ifname} && wg set {ifname} private-key {key} listen-port 51990 \
             peer {peer_pub} endpoint {peer_ip}:51990 allowed-ips {peer_addr}/32 && \
             ip addr add {addr}/32 dev {ifname} && ip link set {ifname} mtu 1420 up && \
             ip route add {peer_addr}/32 dev {ifname}",
            key = key_file.display()
        );
        let ok = in_namespace(ns, &[], &["sh", "-c", &script])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "wireguard-go setup failed in {ns}");
    };
    setup(
        &a.netns, "wgbencha", &a_key, &addr_a, &b_pub, &b.ipv4, &addr_b,
    );
    setup(
        &b.netns, "wgbenchb", &b_key, &addr_b, &a_pub, &a.ipv4, &addr_a,
    );
    Some(addr_b)
}
