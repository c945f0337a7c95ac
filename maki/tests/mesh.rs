//! Replication over the WireGuard mesh between real daemons on test hosts:
//! an append reaches every node; a node cut off from the mesh catches up
//! after the heal with nothing lost (two operators writing on both sides);
//! a node SIGKILLed while it catches up resumes and verifies; forged events
//! sent by a peer are refused and counted; a member flooding anti-entropy
//! is bounded while the others replicate and the node serves; `maki
//! health` tells all of it.
//! Needs root (as CI has).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failure is a panic

use std::process::Stdio;
use std::time::Duration;

use makiatto_events::{FeedWriter, Payload, SigningKey};
use makiatto_harness::{Cluster, json_lines, require_root, wait_until};
use serde_json::Value;

const NODES: [&str; 3] = ["vector", "klukai", "tololo"];
const PROJECTIONS: &str = "peers roles config zones certificates sites";

/// Every projection's fingerprint on a node, in one call.
fn fingerprints(c: &Cluster, node: &str) -> Vec<String> {
    let script =
        format!("for p in {PROJECTIONS}; do makiatto show $p --json || exit 1; echo; done");
    json_lines(
        &c.exec(node, &["sh", "-c", &script])
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .iter()
    .map(|v| v["fingerprint"].as_str().unwrap().to_owned())
    .collect()
}

/// Waits until every node holds the same events and folds them alike.
fn converged(c: &Cluster, within: Duration, what: &str) -> Vec<String> {
    let mut last = Vec::new();
    wait_until(within, what, || {
        let all: Vec<Vec<String>> = NODES.iter().map(|n| fingerprints(c, n)).collect();
        let same = all.iter().all(|f| *f == all[0]);
        last = all[0].clone();
        same
    });
    last
}

/// A copy of the cluster's profile holding only `node`, so that `maki`
/// talks to that node alone (an operator on one side of a partition).
fn profile_with_only(c: &Cluster, node: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(c.cluster_dir().join("profile.toml")).unwrap();
    let mut parts = text.split("[[machine]]");
    let mut out = parts.next().unwrap().to_owned();
    for block in parts {
        if block.contains(&format!("name = \"{node}\"")) {
            out.push_str("[[machine]]");
            out.push_str(block);
        }
    }
    let path = c.dir.path().join(format!("only-{node}.toml"));
    std::fs::write(&path, out).unwrap();
    path
}

#[test]
fn the_mesh_replicates_through_cuts_kills_and_forgeries() {
    require_root();
    let c = Cluster::new("ms");
    c.up(3, &["--no-ca"]);

    // The three nodes hear each other over the mesh and agree.
    wait_until(
        Duration::from_secs(20),
        "every peer alive on every node",
        || {
            NODES.iter().all(|n| {
                let h = c.health(n);
                let peers = h["peers"].as_array().unwrap();
                peers.len() == 2 && peers.iter().all(|p| p["alive"] == true)
            })
        },
    );
    converged(&c, Duration::from_secs(20), "the joins reach every node");
    c.healthy().unwrap_or_else(|e| panic!("maki health: {e}"));

    // An append on one node is on all of them, by the mesh alone (maki
    // hands it to the first node of the profile only).
    c.ok(&["config", "set", "dns.geo_ttl", "30"]);
    let before = converged(&c, Duration::from_secs(10), "a setting reaches every node");
    for n in NODES {
        let config = c.exec(n, &["makiatto", "show", "config", "--json"]);
        assert!(config.contains("\"dns_geo_ttl\":30"), "{n}: {config}");
    }

    // Two operators write on both sides of a mesh partition.
    let bob_key = c.dir.path().join("bob.key");
    let bob = c.operator_key(&bob_key);
    c.ok(&["operator", "add", "bob", &bob]);
    converged(&c, Duration::from_secs(10), "bob reaches every node");
    c.ok(&["local", "cut", "tololo", "--mesh"]);
    wait_until(Duration::from_secs(10), "vector sees tololo down", || {
        c.health("vector")["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "tololo" && p["alive"] == false)
    });
    let alice_side = profile_with_only(&c, "vector");
    let bob_side = profile_with_only(&c, "tololo");
    c.ok_with_profile(&alice_side, &["config", "set", "dns.nearest", "2"]);
    let out = c
        .command(&["config", "set", "sites.keep_versions", "7"])
        .env("MAKIATTO_PROFILE", &bob_side)
        .env("MAKIATTO_OPERATOR_KEY", &bob_key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // Each side has its own change only: the cut holds.
    assert!(
        c.exec("klukai", &["makiatto", "show", "config", "--json"])
            .contains("\"dns_nearest\":2")
    );
    let tololo = c.exec("tololo", &["makiatto", "show", "config", "--json"]);
    assert!(!tololo.contains("\"dns_nearest\":2"), "{tololo}");
    assert!(tololo.contains("\"sites_keep_versions\":7"), "{tololo}");
    let fails = c.maki(&["health"]);
    assert!(
        !fails.status.success(),
        "health must fail while a node is cut"
    );

    c.ok(&["local", "heal", "tololo"]);
    let after = converged(&c, Duration::from_secs(15), "the partition heals");
    assert_ne!(before, after);
    for n in NODES {
        let config = c.exec(n, &["makiatto", "show", "config", "--json"]);
        assert!(
            config.contains("\"dns_nearest\":2") && config.contains("\"sites_keep_versions\":7"),
            "{n} lost a change made during the partition: {config}"
        );
    }
    let log = json_lines(&c.ok(&["log", "--json", "--node", "tololo"]));
    let summaries: Vec<&str> = log.iter().filter_map(|l| l["summary"].as_str()).collect();
    assert!(
        summaries.iter().any(|s| s.contains("dns.nearest"))
            && summaries.iter().any(|s| s.contains("sites.keep_versions")),
        "{summaries:?}"
    );

    // A node killed while it catches up resumes where it stopped. Its
    // backlog: 10,000 events of about 4 KB (40 MB), signed here by a key
    // that holds no role (replication carries every verified event; the
    // fold flags them unauthorized and they change nothing).
    c.ok(&["local", "kill", "klukai"]);
    let parent = c.head("vector");
    let mut writer = FeedWriter::new(SigningKey::from_bytes(&[7; 32]));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut batches = vec![String::new(); 5];
    for i in 0..10_000u32 {
        let body = std::iter::repeat_n(i.to_le_bytes(), 1000)
            .flatten()
            .collect();
        let e = writer
            .write(
                Payload::Unknown { kind: 900, body },
                &[parent],
                now + u64::from(i),
            )
            .unwrap();
        let batch = &mut batches[(i / 2000) as usize];
        batch.push_str(&hex::encode(e.to_bytes()));
        batch.push('\n');
    }
    for batch in &batches {
        c.exec_with_input("vector", &["makiatto", "append"], batch.as_bytes());
    }
    let total = c.events("vector");
    wait_until(Duration::from_secs(60), "tololo gets the backlog", || {
        c.events("tololo") == total
    });
    let before_restart = c.events("klukai");
    c.ok(&["local", "start", "klukai"]);
    let mut partial = 0;
    wait_until(Duration::from_secs(60), "klukai starts catching up", || {
        partial = c.events("klukai");
        partial > before_restart
    });
    c.ok(&["local", "kill", "klukai"]);
    eprintln!("klukai was killed holding {partial} of {total} events");
    c.ok(&["local", "start", "klukai"]);
    wait_until(
        Duration::from_secs(120),
        "klukai catches up after the kill",
        || c.events("klukai") == total,
    );
    let verify = c.maki(&["local", "exec", "klukai", "--", "makiatto", "verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    converged(
        &c,
        Duration::from_secs(20),
        "every node folds the backlog alike",
    );

    // A peer gone bad: tololo sends vector a forged event (a flipped
    // signature bit) and bytes that are no event at all.
    let mut forged = writer
        .write(
            Payload::Unknown {
                kind: 901,
                body: vec![1; 64],
            },
            &[parent],
            now + 20_000,
        )
        .unwrap()
        .to_bytes()
        .to_vec();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let input = format!(
        "{}\n{}\n",
        hex::encode(&forged),
        hex::encode(b"not an event")
    );
    let vector_mesh = c.health("vector")["mesh_addr"].as_str().unwrap().to_owned();
    c.exec_with_input(
        "tololo",
        &["makiatto", "debug", "send-events", "--to", &vector_mesh],
        input.as_bytes(),
    );
    let h = c.health("vector");
    let from_tololo = h["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "tololo")
        .unwrap()
        .clone();
    assert_eq!(from_tololo["bad_events"], 2, "{h}");
    assert_eq!(c.events("vector"), total, "a forged event was stored");
    let status: Value = serde_json::from_str(&c.exec("vector", &["makiatto", "status"])).unwrap();
    assert!(
        status["rejected"]["invalid"].as_u64().unwrap() >= 2,
        "{status}"
    );
    let out = c.maki(&["health", "--json"]);
    assert!(!out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["healthy"], false);
    assert!(
        report.to_string().contains("failed verification"),
        "{report}"
    );

    // A member flooding anti-entropy: tololo opens 64 sessions with vector
    // at once, each asking for the whole log, again as each ends, for
    // 15 s. Vector runs at most 4 of them (`replication::incoming`) and
    // closes the rest at once, counted. Meanwhile a change reaches vector
    // through klukai, and vector answers HTTP.
    let busy = |c: &Cluster| {
        c.health("vector")["replication"]["refused_busy"]
            .as_u64()
            .unwrap_or(0)
    };
    let busy_before = busy(&c);
    let vector_ip = c
        .state()
        .hosts
        .iter()
        .find(|h| h.node == "vector")
        .unwrap()
        .ipv4
        .clone();
    let mut flood = c
        .command(&[
            "local",
            "exec",
            "tololo",
            "--",
            "makiatto",
            "debug",
            "flood-sessions",
            "--to",
            &vector_mesh,
            "--connections",
            "64",
            "--seconds",
            "15",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let klukai_only = profile_with_only(&c, "klukai");
    c.ok_with_profile(&klukai_only, &["config", "set", "dns.geo_ttl", "45"]);
    wait_until(
        Duration::from_secs(15),
        "the change reaches vector during the flood",
        || {
            c.exec("vector", &["makiatto", "show", "config", "--json"])
                .contains("\"dns_geo_ttl\":45")
        },
    );
    let (mut ok, mut failed) = (0, 0);
    while flood.try_wait().unwrap().is_none() {
        let code = c.curl_writes(
            "klukai",
            "%{http_code}",
            &["--max-time", "2", &format!("http://{vector_ip}/")],
        );
        // No site is deployed here: the node's own 404 is its answer.
        if code == "404" { ok += 1 } else { failed += 1 }
    }
    let out = flood.wait_with_output().unwrap();
    let flood: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    let refused = busy(&c) - busy_before;
    eprintln!(
        "a member's flood: {flood}; vector refused {refused} as busy; HTTP during it: {ok} ok, {failed} failed"
    );
    assert!(flood["answered"].as_u64().unwrap() > 0, "{flood}");
    assert!(flood["refused"].as_u64().unwrap() > 0, "{flood}");
    assert!(
        refused >= flood["refused"].as_u64().unwrap(),
        "every refusal counted: {flood}"
    );
    assert_eq!(failed, 0, "vector answers HTTP during the flood");
    assert!(ok > 0);
    converged(
        &c,
        Duration::from_secs(30),
        "the nodes agree after the flood",
    );
}
