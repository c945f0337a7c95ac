//! A node restored from an old backup of `/var/makiatto` does not fork
//! its own feed: after it starts, it signs nothing until a peer has told
//! it its feed's tip. Needs root.
//!
//! The fault this holds down: the restored node held an old prefix of its
//! feed and signed on top of it, reusing sequence numbers it had already
//! used — a fork of its own feed, flagged on every node for good.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failure is a panic

use std::time::Duration;

use makiatto_harness::{Cluster, example_project, json_lines, require_root, wait_seeing};
use serde_json::Value;

const NODES: [&str; 3] = ["vector", "klukai", "tololo"];

/// Whether every name of the cluster has a certificate from pebble; if
/// not, what `maki certs` said.
fn all_issued(c: &Cluster) -> Result<(), String> {
    let out: Value = serde_json::from_str(&c.ok(&["certs", "--json"])).unwrap();
    let names = out["names"].as_array().cloned().unwrap_or_default();
    let issued = !names.is_empty()
        && names.iter().all(|n| {
            n["issuer"]
                .as_str()
                .is_some_and(|i| i.starts_with("Pebble"))
        });
    if issued {
        Ok(())
    } else {
        Err(serde_json::to_string_pretty(&out).unwrap())
    }
}

/// Every node holds the same events.
fn converged(c: &Cluster) -> Result<(), String> {
    let digests: Vec<String> = NODES
        .iter()
        .map(|n| c.health(n)["vv_digest"].as_str().unwrap_or("").to_owned())
        .collect();
    if digests.iter().all(|d| *d == digests[0]) {
        Ok(())
    } else {
        Err(format!("{digests:?}"))
    }
}

/// The events `author_key` signed, as `node` lists them.
fn feed_of(c: &Cluster, node: &str, author_key: &str) -> Vec<Value> {
    json_lines(&c.exec(node, &["makiatto", "log", "--json"]))
        .into_iter()
        .filter(|l| l["author_key"] == author_key)
        .collect()
}

#[test]
fn a_node_restored_from_an_old_backup_learns_its_feed_before_it_signs() {
    require_root();
    let c = Cluster::new("rb");
    let state = c.up(3, &[]);
    // The orderer (the first node by name alive) is klukai. Until its
    // route to the CA is back it cannot order, so it has signed nothing
    // when its backup is taken, although the domains are configured.
    let pebble = state.address(13).to_string();
    let block = [
        "OUTPUT",
        "-d",
        pebble.as_str(),
        "-j",
        "REJECT",
        "--reject-with",
        "icmp-host-unreachable",
    ];
    let iptables = |op: &str| {
        let mut argv = vec!["iptables", op];
        argv.extend(block);
        c.exec("klukai", &argv);
    };
    iptables("-A");
    let project = example_project();
    c.ok(&["sync", "--file", project.to_str().unwrap()]);
    let klukai_key = c.exec("klukai", &["makiatto", "keys", "show"]);
    let klukai_key: Value = serde_json::from_str(&klukai_key).unwrap();
    let klukai_key = klukai_key["signing_key"].as_str().unwrap().to_owned();
    wait_seeing(
        Duration::from_secs(60),
        "klukai holds the configuration",
        || {
            let sites = c.health("klukai")["sites"].clone();
            if sites.get("example.test").is_some() {
                Ok(())
            } else {
                Err(sites.to_string())
            }
        },
    );
    assert!(feed_of(&c, "klukai", &klukai_key).is_empty());

    // A real backup of /var/makiatto, taken with the daemon stopped.
    c.ok(&["local", "kill", "klukai"]);
    c.exec(
        "klukai",
        &["tar", "-C", "/var", "-cf", "/root/backup.tar", "makiatto"],
    );
    c.ok(&["local", "start", "klukai"]);

    // klukai orders every certificate, signing its own events.
    iptables("-D");
    wait_seeing(
        Duration::from_secs(120),
        "every name has a certificate",
        || all_issued(&c),
    );
    wait_seeing(
        Duration::from_secs(30),
        "every node holds the same events",
        || converged(&c),
    );
    let signed = feed_of(&c, "vector", &klukai_key);
    assert!(!signed.is_empty(), "klukai signed nothing");
    let last_seq = signed
        .iter()
        .map(|l| l["seq"].as_u64().unwrap())
        .max()
        .unwrap();

    // klukai is restored from the backup, cut off from its peers: it holds
    // the configuration and none of its own events, so every certificate
    // looks due to it, and it is the orderer — but it signs nothing.
    c.ok(&["local", "cut", "klukai", "--mesh"]);
    c.ok(&["local", "kill", "klukai"]);
    c.exec(
        "klukai",
        &[
            "sh",
            "-c",
            "rm -rf /var/makiatto && tar -C /var -xpf /root/backup.tar",
        ],
    );
    c.ok(&["local", "start", "klukai"]);
    wait_seeing(
        Duration::from_secs(30),
        "the restored klukai waits to learn its feed's tip from a peer",
        || {
            let h = c.health("klukai");
            if h["own_feed"]["state"] == "waiting" && h["acme"]["orderer"] == true {
                Ok(())
            } else {
                Err(serde_json::to_string_pretty(&h).unwrap())
            }
        },
    );
    assert!(
        feed_of(&c, "klukai", &klukai_key).is_empty(),
        "the restored klukai signed before it learnt its feed"
    );

    // Back on the mesh it learns its feed from its peers, and signs on
    // top of it: a renewal it orders follows its last event.
    c.ok(&["local", "heal", "klukai"]);
    wait_seeing(
        Duration::from_secs(30),
        "klukai learnt its feed's tip",
        || {
            let h = c.health("klukai");
            if h["own_feed"]["state"] == "learnt" {
                Ok(())
            } else {
                Err(h["own_feed"].to_string())
            }
        },
    );
    c.ok(&["certs", "renew", "klukai.ns.example.test"]);
    wait_seeing(
        Duration::from_secs(90),
        "klukai signed the renewal after its last event",
        || {
            let feed = feed_of(&c, "vector", &klukai_key);
            let newest = feed.iter().filter_map(|l| l["seq"].as_u64()).max();
            if newest.is_some_and(|s| s > last_seq)
                && feed.iter().any(|l| {
                    l["kind"] == "certificate-issued" && l["seq"].as_u64() > Some(last_seq)
                })
            {
                Ok(())
            } else {
                Err(format!("{feed:#?}"))
            }
        },
    );
    wait_seeing(
        Duration::from_secs(30),
        "every node holds the same events",
        || converged(&c),
    );
    for node in NODES {
        let forks: Vec<Value> = json_lines(&c.exec(node, &["makiatto", "log", "--json"]))
            .into_iter()
            .filter(|l| l["fork"] == true)
            .collect();
        assert!(forks.is_empty(), "{node} holds a fork: {forks:#?}");
        c.exec(node, &["makiatto", "verify"]);
    }
}
