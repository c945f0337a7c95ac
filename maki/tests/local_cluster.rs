//! `maki local` and `maki machine` against real test hosts: network
//! namespaces, real OpenSSH servers, the real daemon. Needs root (as CI has).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failure is a panic

use std::process::Command;
use std::time::Duration;

use makiatto_harness::{Cluster, json_lines, require_root, wait_seeing};

#[test]
fn machines_are_managed_over_ssh_on_local_test_hosts() {
    require_root();
    let c = Cluster::new("m");
    let binary = c.daemon().to_str().unwrap();
    c.up(3, &["--no-ca"]);

    // Three healthy machines, initialised over SSH.
    let list = json_lines(&c.ok(&["machine", "list", "--json"]));
    let names: Vec<&str> = list.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["vector", "klukai", "tololo"]);
    assert!(
        list.iter()
            .all(|m| m["running"] == true && m["nameserver"] == true),
        "{list:?}"
    );
    let status: serde_json::Value =
        serde_json::from_str(&c.ok(&["local", "status", "--json"])).unwrap();
    assert!(
        status["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["state"] == "running")
    );

    // The log: genesis, the GeoIP database the cluster places visitors
    // with (when it has one) and three node-joined events, signed by the
    // operator.
    let log = json_lines(&c.ok(&["log", "--json"]));
    let kinds: Vec<&str> = log.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    let mut expected = vec!["genesis"];
    if c.geoip().is_some() {
        expected.push("config-changed");
    }
    expected.extend(["node-joined"; 3]);
    assert_eq!(kinds, expected);
    assert!(
        log.iter()
            .all(|l| l["role"] == "operator" && l["applied"] == true)
    );
    let operator_key = c.ok(&["operator", "key"]).trim().to_owned();
    assert!(log.iter().all(|l| l["author_key"] == operator_key.as_str()));

    // The test host is private: its user and files are not the host's.
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    assert!(
        !passwd.contains("makiatto:"),
        "the makiatto user leaked into the host's /etc/passwd"
    );
    c.ok(&["local", "exec", "vector", "--", "id", "makiatto"]);
    // The daemon dropped root for the makiatto user.
    let owner = c.ok(&[
        "local",
        "exec",
        "vector",
        "--",
        "sh",
        "-c",
        "ps -o user= -p $(cat /run/makiatto/makiatto.pid)",
    ]);
    assert_eq!(owner.trim(), "makiatto");

    // The nodes reach each other over the WireGuard mesh (boringtun).
    let mesh: Vec<String> = list
        .iter()
        .map(|m| m["mesh_addr"].as_str().unwrap().to_owned())
        .collect();
    for target in &mesh[1..] {
        let ping = c.maki(&[
            "local", "exec", "vector", "--", "ping", "-c", "1", "-W", "5", target,
        ]);
        assert!(
            ping.status.success(),
            "vector cannot reach {target} over the mesh: {}",
            String::from_utf8_lossy(&ping.stdout)
        );
    }

    // Cluster-wide settings.
    c.ok(&["config", "set", "dns.geo_ttl", "30"]);
    assert!(
        c.ok(&["config", "show"])
            .contains("dns.geo_ttl            30")
    );
    assert!(
        c.fails(&["config", "set", "dns.ttl", "30"])
            .contains("unknown setting")
    );

    // Operators: add another key, see it listed, revoke it.
    let bob = "ab".repeat(32);
    c.ok(&["operator", "add", "bob", &bob]);
    assert!(c.ok(&["operator", "list"]).contains(&bob));
    c.ok(&["operator", "remove", "bob"]);
    assert!(!c.ok(&["operator", "list"]).contains(&bob));
    assert!(
        c.fails(&["operator", "add", "eve", "not-a-key"])
            .contains("64 hex")
    );

    // Restart; kill and start.
    c.ok(&["machine", "restart", "vector"]);
    c.ok(&["local", "kill", "klukai"]);
    let list = json_lines(
        &c.fails(&["machine", "list", "--json"])
            .lines()
            .filter(|l| l.starts_with('{'))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    assert_eq!(list[1]["running"], false);
    c.ok(&["local", "start", "klukai"]);
    c.ok(&["machine", "list"]);

    // An upgrade to a binary that does not run as makiatto is refused
    // before anything changes on the machine (one that passes that check
    // and then fails to serve is rolled back: tests/upgrade.rs).
    let broken = c.dir.path().join("broken-makiatto");
    std::fs::copy("/bin/false", &broken).unwrap();
    let err = c.fails(&[
        "machine",
        "upgrade",
        "vector",
        "--binary-path",
        broken.to_str().unwrap(),
    ]);
    assert!(
        err.contains("does not run there as makiatto") && err.contains("nothing changed on vector"),
        "{err}"
    );
    c.ok(&["machine", "list"]);
    c.ok(&["machine", "upgrade", "vector", "--binary-path", binary]);

    // Remove wipes the machine; init again; --recreate re-initialises in place.
    c.ok(&["machine", "remove", "tololo", "--force"]);
    assert_eq!(json_lines(&c.ok(&["machine", "list", "--json"])).len(), 2);
    let wiped = c.maki(&[
        "local",
        "exec",
        "tololo",
        "--",
        "sh",
        "-c",
        "test ! -e /var/makiatto && test ! -e /etc/makiatto && test ! -e /usr/local/bin/makiatto && ! id makiatto",
    ]);
    assert!(wiped.status.success(), "tololo was not wiped");
    let fp = c.host_fingerprint("tololo");
    let tololo_ip = status["hosts"][2]["ipv4"].as_str().unwrap().to_owned();
    let target = format!("root@{tololo_ip}");
    let init = [
        "machine",
        "init",
        "tololo",
        &target,
        "--lat",
        "-23.55",
        "--lon",
        "-46.63",
        "--binary-path",
        binary,
    ];
    let mut with_fp = init.to_vec();
    with_fp.extend(["--accept-host-key", &fp]);
    // Without the fingerprint and without a terminal, first contact is refused.
    assert!(c.fails(&init).contains("--accept-host-key"));
    assert!(
        c.fails(&[&init[..], &["--accept-host-key", "SHA256:wrong"]].concat())
            .contains("refusing")
    );
    c.ok(&with_fp);
    assert!(c.fails(&with_fp).contains("--recreate"));
    let mut recreate = with_fp.clone();
    recreate.push("--recreate");
    c.ok(&recreate);
    let list = json_lines(&c.ok(&["machine", "list", "--json"]));
    assert_eq!(list.len(), 3);
    let kinds: Vec<String> = json_lines(&c.ok(&["log", "--json", "--node", "vector"]))
        .iter()
        .map(|l| l["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds.iter().filter(|k| *k == "node-removed").count(), 1);
    assert_eq!(kinds.iter().filter(|k| *k == "node-joined").count(), 5);
    assert_eq!(
        kinds.iter().filter(|k| k.starts_with("operator-")).count(),
        2
    );
    // The rejoined node, with new keys, is in every node's mesh without a
    // restart: `maki health` sees heartbeats and handshakes everywhere.
    wait_seeing(
        Duration::from_secs(30),
        "the cluster becomes healthy after the rejoin",
        || c.healthy(),
    );

    // Bad input leaves the profile as it was, with an error that says what to do.
    let before = std::fs::read_to_string(c.cluster_dir().join("profile.toml")).unwrap();
    let aarch64 = c.dir.path().join("makiatto-aarch64");
    let mut elf = std::fs::read("/bin/false").unwrap();
    elf[18..20].copy_from_slice(&0xb7u16.to_le_bytes());
    std::fs::write(&aarch64, elf).unwrap();
    let extra = [
        "machine",
        "init",
        "extra",
        &target,
        "--lat",
        "1",
        "--lon",
        "1",
        "--accept-host-key",
        &fp,
    ];
    let err = c.fails(&[&extra[..], &["--binary-path", aarch64.to_str().unwrap()]].concat());
    assert!(err.contains("built for aarch64"), "{err}");
    let stranger_key = c.dir.path().join("stranger");
    Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&stranger_key)
        .status()
        .unwrap();
    let err = c.fails(
        &[
            &["--ssh-priv-key", stranger_key.to_str().unwrap()],
            &extra[..],
            &["--binary-path", binary],
        ]
        .concat(),
    );
    assert!(err.contains("refused the key"), "{err}");
    let bridge: std::net::Ipv4Addr = status["host_ipv4"].as_str().unwrap().parse().unwrap();
    let nobody = format!("root@{}", std::net::Ipv4Addr::from(u32::from(bridge) + 13));
    let err = c.fails(&[
        "machine",
        "init",
        "extra",
        &nobody,
        "--lat",
        "1",
        "--lon",
        "1",
        "--binary-path",
        binary,
    ]);
    assert!(
        err.contains("no answer") || err.contains("cannot connect"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(c.cluster_dir().join("profile.toml")).unwrap(),
        before
    );

    // A fresh profile learns an existing machine with `machine add`.
    let fresh = c.dir.path().join("fresh.toml");
    let vector_ip = status["hosts"][0]["ipv4"].as_str().unwrap().to_owned();
    let vector_fp = c.host_fingerprint("vector");
    let vector_target = format!("root@{vector_ip}");
    let add = [
        "--profile",
        fresh.to_str().unwrap(),
        "machine",
        "add",
        &vector_target,
        "--accept-host-key",
        &vector_fp,
    ];
    c.ok(&add);
    let added = std::fs::read_to_string(&fresh).unwrap();
    assert!(
        added.contains("name = \"vector\"") && added.contains("cluster_id"),
        "{added}"
    );
    assert!(c.fails(&add).contains("already in the profile"));

    // A changed host key is refused.
    let profile_path = c.cluster_dir().join("profile.toml");
    let profile = std::fs::read_to_string(&profile_path).unwrap();
    let host_key =
        |node: &str| std::fs::read_to_string(c.host_dir(node).join("ssh_host_ed25519_key.pub"));
    let vector_key = host_key("vector").unwrap();
    let klukai_key = host_key("klukai").unwrap();
    let first = |k: &str| k.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    std::fs::write(
        &profile_path,
        profile.replacen(&first(&vector_key), &first(&klukai_key), 1),
    )
    .unwrap();
    assert!(
        c.fails(&["machine", "restart", "vector"])
            .contains("HOST KEY CHANGED")
    );
    std::fs::write(&profile_path, profile).unwrap();

    // A typo in the profile names the line.
    let good = std::fs::read_to_string(&profile_path).unwrap();
    std::fs::write(&profile_path, good.replacen("ssh_user", "ssh_usr", 1)).unwrap();
    assert!(c.fails(&["machine", "list"]).contains("profile.toml:"));
    std::fs::write(&profile_path, good).unwrap();

    // Down leaves nothing behind, and is idempotent.
    c.ok(&["local", "down"]);
    let netns = String::from_utf8(
        Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(!netns.contains(&format!("mk-{}-", c.name)), "{netns}");
    assert!(!c.cluster_dir().exists());
    assert!(
        !std::path::Path::new("/var/makiatto").exists(),
        "a test host's files leaked into the host's /var"
    );
    let procs = Command::new("pgrep")
        .args(["-f", &c.cluster_dir().display().to_string()])
        .output()
        .unwrap();
    assert!(
        procs.stdout.is_empty(),
        "processes left: {}",
        String::from_utf8_lossy(&procs.stdout)
    );
    c.ok(&["local", "down"]);
}
