//! Clocks that are wrong: an event stamped further ahead of a node's
//! clock than `log.max_clock_skew` is refused when `maki` hands it over,
//! held (and counted) when a peer sends it, and admitted everywhere once
//! the clock reaches it; `maki` will not sign with a clock far from the
//! node's; `maki health` names a node whose clock is far from its peers'.
//! Needs root (as CI has) and Debian's faketime.
//!
//! The fault this holds down: nothing bounded an event's stamp, and every
//! later event must sort after its parents, so one clock a year ahead
//! dragged every node's later events into that year.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failure is a panic

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use makiatto_events::{FeedWriter, Payload, SigningKey};
use makiatto_harness::{Cluster, clock_offset_env, require_root, wait_seeing, wait_until};
use serde_json::Value;

const NODES: [&str; 3] = ["vector", "klukai", "tololo"];

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn status(c: &Cluster, node: &str) -> Value {
    serde_json::from_str(&c.exec(node, &["makiatto", "status"])).unwrap()
}

/// An event by a key that holds no role (replication carries it; the fold
/// flags it unauthorized), stamped `ahead_ms` past now, on `node`'s head.
fn stamped_ahead(c: &Cluster, node: &str, seed: u8, ahead_ms: u64) -> String {
    let parent = c.head(node);
    let mut writer = FeedWriter::new(SigningKey::from_bytes(&[seed; 32]));
    let e = writer
        .write(
            Payload::Unknown {
                kind: 950,
                body: vec![seed; 16],
            },
            &[parent],
            now_millis() + ahead_ms,
        )
        .unwrap();
    hex::encode(e.to_bytes())
}

#[test]
fn stamps_past_the_clock_bound_are_refused_from_maki_and_held_from_peers() {
    require_root();
    let c = Cluster::new("ck");
    c.up(3, &["--no-ca"]);

    // `maki` with its clock ten minutes ahead signs nothing, and says why.
    let mut skewed = c.command(&["config", "set", "dns.geo_ttl", "33"]);
    for (k, v) in clock_offset_env(600) {
        skewed.env(k, v);
    }
    let out = skewed.output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "maki signed with its clock 600 s ahead"
    );
    assert!(
        said.contains("s ahead of the clock of") && said.contains("log.max_clock_skew"),
        "{said}"
    );
    assert!(!c.ok(&["config", "show"]).contains("33"));

    // A tight bound, so that the held events below come due in seconds.
    c.ok(&["config", "set", "log.max_clock_skew", "5"]);
    wait_until(Duration::from_secs(30), "every node has the bound", || {
        NODES
            .iter()
            .all(|n| status(&c, n)["clock"]["max_skew_millis"] == 5000)
    });

    // Handed over directly (as `maki` would), an event a minute ahead is
    // refused outright, counted, and stored nowhere.
    let before = c.events("vector");
    let ahead = stamped_ahead(&c, "vector", 41, 60_000);
    let refused = makiatto_harness::with_input(
        &mut c.command(&["local", "exec", "vector", "--", "makiatto", "append"]),
        format!("{ahead}\n").as_bytes(),
    );
    assert!(!refused.status.success());
    let line = String::from_utf8_lossy(&refused.stdout);
    assert!(line.contains("ahead of this node's clock"), "{line}");
    assert_eq!(c.events("vector"), before);
    assert_eq!(status(&c, "vector")["rejected"]["ahead_of_clock"], 1);

    // Sent by a peer, an event 20 s ahead (15 s past the bound) is held:
    // counted, not stored, shown by `maki health` — then admitted on every
    // node once the clock reaches it.
    let held = stamped_ahead(&c, "vector", 42, 20_000);
    let vector_mesh = c.health("vector")["mesh_addr"].as_str().unwrap().to_owned();
    c.exec_with_input(
        "tololo",
        &["makiatto", "debug", "send-events", "--to", &vector_mesh],
        format!("{held}\n").as_bytes(),
    );
    let s = status(&c, "vector");
    assert_eq!(s["held_ahead_of_clock"], 1, "{s}");
    assert_eq!(s["held_ahead_of_clock_total"], 1, "{s}");
    assert_eq!(c.events("vector"), before);
    let health = c.maki(&["health", "--json"]);
    let report = String::from_utf8_lossy(&health.stdout);
    assert!(
        report.contains("stamped ahead of this node's clock"),
        "{report}"
    );
    wait_seeing(
        Duration::from_secs(60),
        "every node admits the held event once the clock reaches it",
        || {
            let counts: Vec<u64> = NODES.iter().map(|n| c.events(n)).collect();
            if counts.iter().all(|n| *n == before + 1) {
                Ok(())
            } else {
                Err(format!("{counts:?}"))
            }
        },
    );
    assert_eq!(status(&c, "vector")["held_ahead_of_clock"], Value::Null);
    for n in NODES {
        c.exec(n, &["makiatto", "verify"]);
    }

    // A node whose clock runs ten minutes ahead: `maki health` names it,
    // and only it.
    c.ok(&["local", "kill", "tololo"]);
    let mut argv: Vec<String> = vec!["env".into()];
    argv.extend(
        clock_offset_env(600)
            .into_iter()
            .map(|(k, v)| format!("{k}={v}")),
    );
    argv.extend(["makiatto", "run", "--detach"].map(String::from));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    c.exec("tololo", &argv);
    wait_seeing(
        Duration::from_secs(60),
        "maki health names tololo's clock, and no other",
        || {
            let out = c.maki(&["health", "--json"]);
            let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            let problems = |node: &str| -> Vec<String> {
                report["nodes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|r| r["name"] == node)
                    .and_then(|r| r["problems"].as_array())
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p.as_str().map(str::to_owned))
                    .filter(|p| p.contains("clock"))
                    .collect()
            };
            let tololo = problems("tololo");
            let others: Vec<String> = ["vector", "klukai"]
                .iter()
                .flat_map(|n| problems(n))
                .collect();
            if tololo.iter().any(|p| p.contains("ahead of its peers'")) && others.is_empty() {
                Ok(())
            } else {
                Err(format!("tololo: {tololo:?}, others: {others:?}"))
            }
        },
    );
}
