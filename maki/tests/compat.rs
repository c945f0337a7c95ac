//! A release works with the one before it, in both directions: an older
//! `maki` drives newer daemons, a newer `maki` drives older daemons, and
//! during a rolling upgrade older and newer daemons replicate with each
//! other. The previous release is built from this repository's history
//! (`makiatto_harness::previous_release`), its binaries then used as they
//! are. Needs root (as CI has).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failure is a panic

use std::time::Duration;

use makiatto_harness::{
    Binaries, Cluster, copy_examples, previous_release, require_root, wait_until,
};
use serde_json::Value;

/// Every node's `makiatto health` (run there with the node's own binary)
/// names `live` as deployed for example.test.
fn deployed_on(c: &Cluster, nodes: &[&str], what: &str) -> String {
    let mut live = String::new();
    wait_until(Duration::from_secs(60), what, || {
        let sites: Vec<Value> = nodes
            .iter()
            .map(|n| c.health(n)["sites"]["example.test"].clone())
            .collect();
        live = sites[0]["live"].as_str().unwrap_or("").to_owned();
        !live.is_empty()
            && sites
                .iter()
                .all(|s| s["in_sync"] == true && s["live"].as_str() == Some(live.as_str()))
    });
    live
}

/// `maki health` passes (a daemon just restarted has to hear its peers'
/// heartbeats first).
fn healthy(c: &Cluster, what: &str) {
    wait_until(Duration::from_secs(30), what, || c.healthy().is_ok());
}

/// The example site's index served by `node`, fetched from the node itself.
fn index(c: &Cluster, node: &str, ip: &str) -> String {
    c.exec(
        node,
        &[
            "curl",
            "-sf",
            "--resolve",
            &format!("example.test:80:{ip}"),
            "http://example.test/",
        ],
    )
}

#[test]
fn a_previous_maki_drives_new_daemons() {
    require_root();
    let Some(previous) = previous_release() else {
        return;
    };
    let ours = Binaries::of_this_build();
    let c = Cluster::with_binaries("cpa", &previous, &ours);
    let project = c.dir.path().join("project");
    let file = copy_examples(&project);
    let file = file.to_str().unwrap();
    let state = c.up(2, &["--no-ca"]);
    let out = c.ok(&["sync", "--file", file, "-m", "from the previous maki"]);
    assert!(out.contains("example.test: published"), "{out}");
    deployed_on(&c, &["vector", "klukai"], "the site reaches both new nodes");
    let page = index(&c, "klukai", &state.hosts[1].ipv4);
    assert!(!page.is_empty());
    // Its reading commands understand the new daemons' answers.
    let log = c.ok(&["log"]);
    assert!(log.contains("site-published"), "{log}");
    let sites = c.ok(&["sites"]);
    assert!(sites.contains("example.test"), "{sites}");
    c.healthy().unwrap_or_else(|e| panic!("maki health: {e}"));
    // A replay through the previous maki is still no error: a new daemon
    // answers it in the form that maki reads.
    let again = c.ok(&["sync", "--file", file]);
    assert!(again.contains("everything is up to date"), "{again}");
}

#[test]
fn a_new_maki_drives_previous_daemons_through_a_rolling_upgrade() {
    require_root();
    let Some(previous) = previous_release() else {
        return;
    };
    let ours = Binaries::of_this_build();
    let c = Cluster::with_binaries("cpb", &ours, &previous);
    let project = c.dir.path().join("project");
    let file = copy_examples(&project);
    let file = file.to_str().unwrap();
    c.up(2, &["--no-ca"]);
    let out = c.ok(&["sync", "--file", file]);
    assert!(out.contains("example.test: published"), "{out}");
    let first = deployed_on(&c, &["vector", "klukai"], "the site reaches both old nodes");
    c.healthy().unwrap_or_else(|e| panic!("maki health: {e}"));
    assert!(c.ok(&["log"]).contains("site-published"));
    assert!(c.ok(&["sites"]).contains("example.test"));

    // A rolling upgrade: vector runs this build, klukai the previous one,
    // and a change published through either reaches the other.
    c.ok(&[
        "machine",
        "upgrade",
        "vector",
        "--binary-path",
        ours.makiatto().to_str().unwrap(),
    ]);
    std::fs::write(project.join("site/index.html"), "<h1>upgraded</h1>\n").unwrap();
    c.ok(&["sync", "--file", file]);
    let second = deployed_on(
        &c,
        &["vector", "klukai"],
        "a new node's version reaches an old one",
    );
    assert_ne!(first, second);
    c.healthy().unwrap_or_else(|e| panic!("maki health: {e}"));

    // And the rest of the cluster follows.
    c.ok(&[
        "machine",
        "upgrade",
        "klukai",
        "--binary-path",
        ours.makiatto().to_str().unwrap(),
    ]);
    std::fs::write(project.join("site/index.html"), "<h1>all new</h1>\n").unwrap();
    c.ok(&["sync", "--file", file]);
    let third = deployed_on(&c, &["vector", "klukai"], "the upgraded cluster serves");
    assert_ne!(second, third);
    healthy(&c, "the upgraded cluster is healthy");
}
