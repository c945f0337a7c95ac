//! GeoIP that never silently fails, on a local cluster: built without the
//! database, the cluster says so at `maki local up`, in every node's
//! `makiatto status`, and in `maki health` (which fails); `maki geoip
//! update` hands the database to one node, every other node fetches it
//! over the mesh and swaps it in without a restart, and visitors are then
//! placed; a newer release (same data, a later build date) replaces it the
//! same way, its date in `maki health`. Needs root and the GeoIP database
//! (scripts/fetch-geoip.sh).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failure is a panic

use std::time::Duration;

use makiatto_harness::{Cluster, GeoIp, example_project, require_root, wait_seeing};
use serde_json::Value;

const NODES: [&str; 3] = ["vector", "klukai", "tololo"];

/// `dig +short` of example.test A for a London client, asked at `server`
/// from vector's host.
fn london_answer(c: &Cluster, server: &str) -> Vec<String> {
    let out = c.exec(
        "vector",
        &[
            "dig",
            &format!("@{server}"),
            "+norec",
            "+time=2",
            "+tries=1",
            "+short",
            "example.test",
            "A",
            "+subnet=81.2.69.0/24",
        ],
    );
    let mut lines: Vec<String> = out.lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

/// Every node's GeoIP report (`makiatto health --json`).
fn reports(c: &Cluster) -> Vec<Value> {
    NODES
        .iter()
        .map(|n| c.health(n)["dns"]["geoip_database"].clone())
        .collect()
}

/// Waits until every node places visitors with the database whose
/// manifest the log names and which was built at `built`.
fn every_node_loads(c: &Cluster, built: u64, what: &str) -> String {
    let mut manifest = String::new();
    wait_seeing(Duration::from_secs(120), what, || {
        let all = reports(c);
        let wanted = all[0]["wanted"].as_str().unwrap_or_default().to_owned();
        let ok = !wanted.is_empty()
            && all.iter().all(|g| {
                g["wanted"] == wanted.as_str()
                    && g["loaded"]["manifest"] == wanted.as_str()
                    && g["loaded"]["built_unix_secs"] == built
                    && g["problem"].is_null()
            });
        manifest = wanted;
        if ok { Ok(()) } else { Err(format!("{all:#?}")) }
    });
    manifest
}

#[test]
fn a_cluster_without_the_database_says_so_everywhere_and_takes_one_live() {
    require_root();
    let geoip = GeoIp::required();
    let c = Cluster::without_geoip("gi");
    let project = example_project();
    let up = c.ok_output(&[
        "local",
        "up",
        "--nodes",
        "3",
        "--no-ca",
        "--binary-path",
        c.daemon().to_str().unwrap(),
        "--sync",
        project.to_str().unwrap(),
    ]);
    let said = String::from_utf8_lossy(&up.stderr);
    assert!(
        said.contains("GeoDNS cannot place visitors without the GeoIP database")
            && said.contains("scripts/fetch-geoip.sh")
            && said.contains("maki geoip update"),
        "maki local up must say the database is missing and how to get it:\n{said}"
    );
    let hosts = c.state().hosts;

    // Every node says it, in its status and its health.
    for n in NODES {
        let status: Value = serde_json::from_str(&c.exec(n, &["makiatto", "status"])).unwrap();
        assert!(status["geoip"]["loaded"].is_null(), "{n}: {status}");
        assert!(
            status["geoip"]["problem"]
                .as_str()
                .unwrap_or_default()
                .contains("no GeoIP database"),
            "{n}: {status}"
        );
    }
    let health = c.maki(&["health"]);
    assert!(
        !health.status.success(),
        "a cluster without the GeoIP database must not look healthy"
    );
    let text = String::from_utf8_lossy(&health.stdout);
    assert!(text.contains("GeoIP"), "{text}");

    // Unplaced, a London client gets every node.
    for h in &hosts {
        wait_seeing(Duration::from_secs(20), "every node answers", || {
            let a = london_answer(&c, &h.ipv4);
            if a.len() == hosts.len() {
                Ok(())
            } else {
                Err(format!("{a:?}"))
            }
        });
    }

    // The database, handed to the cluster: every node loads it.
    let out = c.ok(&["geoip", "update", "--dir", geoip.dir().to_str().unwrap()]);
    assert!(out.contains("named in the log"), "{out}");
    let first = every_node_loads(&c, geoip.built(), "every node loads the database");
    let config = c.exec("klukai", &["makiatto", "show", "config", "--json"]);
    assert!(config.contains(&first), "the log names it: {config}");
    // Now London is placed: the node in London (vector) answers alone,
    // from every node.
    let london = &hosts.iter().find(|h| h.node == "vector").unwrap().ipv4;
    for h in &hosts {
        assert_eq!(
            london_answer(&c, &h.ipv4),
            std::slice::from_ref(london),
            "asked at {}",
            h.node
        );
    }
    // Twice the same database is nothing new.
    let again = c.ok(&["geoip", "update", "--dir", geoip.dir().to_str().unwrap()]);
    assert!(
        again.contains("already answers from this GeoIP database"),
        "{again}"
    );

    // A newer release: every node switches to it without a restart.
    let pids: Vec<String> = NODES.iter().map(|n| daemon_pid(&c, n)).collect();
    let newer_at = geoip.built() + 30 * 86_400;
    let newer = geoip.rebuilt_at(&c.dir.path().join("newer"), newer_at);
    c.ok(&["geoip", "update", "--dir", newer.dir().to_str().unwrap()]);
    let second = every_node_loads(&c, newer_at, "every node switches to the newer release");
    assert_ne!(first, second);
    let after: Vec<String> = NODES.iter().map(|n| daemon_pid(&c, n)).collect();
    assert_eq!(pids, after, "no daemon restarted");
    for h in &hosts {
        assert_eq!(london_answer(&c, &h.ipv4), std::slice::from_ref(london));
    }
    // `maki health` shows the database's date.
    let date = jiff::Timestamp::from_second(newer_at as i64)
        .unwrap()
        .strftime("%Y-%m-%d")
        .to_string();
    let health = c.maki(&["health"]);
    let text = String::from_utf8_lossy(&health.stdout);
    assert!(
        text.contains(&date),
        "health names the database's date {date}:\n{text}"
    );
}

/// The pid of `node`'s daemon (`makiatto status`).
fn daemon_pid(c: &Cluster, node: &str) -> String {
    let status: Value = serde_json::from_str(&c.exec(node, &["makiatto", "status"])).unwrap();
    status["daemon_pid"].to_string()
}
