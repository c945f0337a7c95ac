//! `maki sync` against real test hosts: validation before anything is sent,
//! first sync, no-op, one change, a deletion, and a node cut off from the
//! mesh that keeps its old version until it can fetch every blob of the new
//! one. Needs root (as CI has).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failure is a panic

use std::time::Duration;

use makiatto_harness::{Cluster, copy_examples, require_root, wait_until, with_input};
use serde_json::Value;

const NODES: [&str; 3] = ["vector", "klukai", "tololo"];

fn sites(c: &Cluster, node: &str) -> Value {
    c.health(node)["sites"]["example.test"].clone()
}

/// Every node serves `version` (deployed), with `files` files.
fn deployed_everywhere(c: &Cluster, what: &str) -> String {
    let mut live = String::new();
    wait_until(Duration::from_secs(30), what, || {
        let all: Vec<Value> = NODES.iter().map(|n| sites(c, n)).collect();
        live = all[0]["live"].as_str().unwrap_or("").to_owned();
        all.iter()
            .all(|s| s["in_sync"] == true && s["live"].as_str() == Some(live.as_str()))
    });
    live
}

#[test]
fn sync_publishes_atomically_on_every_node() {
    require_root();
    let c = Cluster::new("sy");
    // The project: a copy of the example, to change it freely.
    let project = c.dir.path().join("project");
    let file = copy_examples(&project);
    let file = file.to_str().unwrap();

    // A broken file is refused with its position, before any cluster exists.
    let good = std::fs::read_to_string(project.join("makiatto.toml")).unwrap();
    std::fs::write(
        project.join("makiatto.toml"),
        good.replace("\"A\"", "\"AA\""),
    )
    .unwrap();
    let err = c.fails(&["config", "check", "--file", file]);
    assert!(
        err.contains("makiatto.toml:27:8: record type \"AA\" is not supported"),
        "{err}"
    );
    std::fs::write(project.join("makiatto.toml"), &good).unwrap();
    c.ok(&["config", "check", "--file", file]);

    c.up(3, &["--no-ca"]);
    let out = c.ok(&["sync", "--file", file, "--dry-run"]);
    assert!(out.contains("would publish 6 files"), "{out}");
    assert!(sites(&c, "vector").is_null(), "a dry run sent something");

    let out = c.ok(&["sync", "--file", file, "-m", "first"]);
    assert!(
        out.contains("example.test: published 6 files: 0 changed, 6 added, 0 removed"),
        "{out}"
    );
    let first = deployed_everywhere(&c, "the first version reaches every node");
    assert!(
        c.ok(&["sync", "--file", file])
            .contains("everything is up to date")
    );

    // The configuration went with it: the zone has the file's records.
    let zones = c.exec("klukai", &["makiatto", "show", "zones", "--json"]);
    assert!(zones.contains("v=DMARC1; p=reject"), "{zones}");

    // One change and one deletion. An earlier sync was cut off after it
    // had sent the changed file's blob (here: sent by hand), and the live
    // version did not move: this one sends nothing again.
    let changed = b"<h1>changed</h1>\n";
    let mut frame = blake3::hash(changed).as_bytes().to_vec();
    frame.extend_from_slice(&(changed.len() as u64).to_be_bytes());
    frame.extend_from_slice(changed);
    let staged = with_input(
        &mut c.command(&[
            "local", "exec", "vector", "--", "makiatto", "blobs", "receive",
        ]),
        &frame,
    );
    assert!(staged.status.success());
    assert_eq!(sites(&c, "vector")["live"].as_str(), Some(first.as_str()));
    // The cut-off sync also left its marker here: the next one asks the
    // node before it sends anything.
    let kept = std::fs::read_dir(c.cluster_dir().join("base"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "manifests"))
        .expect("the first sync kept its manifest");
    let marker = kept.join("example.test.unfinished");
    std::fs::write(&marker, "").unwrap();
    std::fs::write(project.join("site/index.html"), changed).unwrap();
    std::fs::remove_file(project.join("site/404.html")).unwrap();
    let out = c.ok(&["sync", "--file", file]);
    assert!(
        out.contains("resuming: the last sync of example.test stopped before it finished")
            && out.contains("5 files: 1 changed, 0 added, 1 removed, 0 B uploaded"),
        "{out}"
    );
    assert!(!marker.exists(), "a finished sync removes its marker");
    let second = deployed_everywhere(&c, "the second version reaches every node");
    assert_ne!(first, second);
    // The other nodes had the first version: vector sent them the second,
    // small, ahead of its event (its manifest as a delta, with the one new
    // blob); not the whole manifest again.
    let replication = |n: &str| -> Value { c.health(n)["replication"].clone() };
    for n in ["klukai", "tololo"] {
        let r = replication(n);
        assert!(r["versions_ahead"].as_u64() >= Some(1), "{n}: {r}");
        assert_eq!(
            r["manifests_whole"].as_u64(),
            Some(1),
            "{n}: only the first: {r}"
        );
    }

    // tololo is cut from the mesh: it learns nothing new and keeps serving
    // the second version; after the heal it fetches the blobs and switches.
    c.ok(&["local", "cut", "tololo", "--mesh"]);
    std::fs::write(project.join("site/new.html"), "<p>new page</p>\n").unwrap();
    // With more than fits inline (a 3 MiB file between 50 small ones):
    // streamed, many files to a message and one file over several, each
    // blob verified by the node.
    std::fs::create_dir_all(project.join("site/many")).unwrap();
    for i in 0..50u32 {
        let page = format!("<p>page {i}</p>\n").repeat(1 + i as usize);
        std::fs::write(project.join(format!("site/many/p{i:02}.html")), page).unwrap();
    }
    let big: Vec<u8> = (0..3u32 << 20)
        .map(|i| (i.wrapping_mul(7919) % 251) as u8)
        .collect();
    std::fs::write(project.join("site/many/big.bin"), &big).unwrap();
    let out = c.ok(&["sync", "--file", file]);
    assert!(
        out.contains("52 added") && out.contains("3.2 MB uploaded"),
        "{out}"
    );
    wait_until(
        Duration::from_secs(20),
        "vector and klukai deploy the third version",
        || {
            ["vector", "klukai"].iter().all(|n| {
                sites(&c, n)["in_sync"] == true
                    && sites(&c, n)["live"].as_str() != Some(second.as_str())
            })
        },
    );
    let cut = sites(&c, "tololo");
    assert_eq!(cut["deployed"].as_str(), Some(second.as_str()), "{cut}");
    c.ok(&["local", "heal", "tololo"]);
    let third = deployed_everywhere(&c, "tololo catches up and switches");
    assert_ne!(third, second);
    let blob = c.exec("tololo", &["sh", "-c", "cat /var/makiatto/deployed.json"]);
    assert!(blob.contains(&third), "{blob}");
    let big_hash = blake3::hash(&big).to_hex().to_string();
    let stored = c.exec(
        "tololo",
        &[
            "stat",
            "-c",
            "%s",
            &format!("/var/makiatto/blobs/{}/{big_hash}", &big_hash[..2]),
        ],
    );
    assert_eq!(
        stored.trim(),
        (3u32 << 20).to_string(),
        "the big file's blob"
    );
    // Too large to go ahead of its event: fetched from a peer as a delta.
    for n in ["klukai", "tololo"] {
        let r = replication(n);
        assert!(r["versions_by_delta"].as_u64() >= Some(1), "{n}: {r}");
        assert_eq!(r["manifests_whole"].as_u64(), Some(1), "{n}: {r}");
    }
    // History, diff and rollback.
    let listed: Value = serde_json::from_str(&c.ok(&["sites", "--json"])).unwrap();
    let versions = listed[0]["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 3, "{listed}");
    assert_eq!(versions[2]["live"], true);
    assert_eq!(versions[0]["message"], "first");
    let diff = c.ok(&["diff", "example.test"]);
    assert!(
        diff.contains("+ new.html")
            && diff.contains("+ many/big.bin")
            && diff.contains("52 added, 0 changed, 0 removed"),
        "{diff}"
    );
    let diff = c.ok(&["diff", "example.test", "1", "2"]);
    assert!(
        diff.contains("~ index.html") && diff.contains("- 404.html"),
        "{diff}"
    );
    c.ok(&["rollback", "example.test", "-m", "bad page"]);
    assert_eq!(
        deployed_everywhere(&c, "the rollback reaches every node"),
        second
    );
    c.ok(&["rollback", "example.test", "--to", "1"]);
    assert_eq!(deployed_everywhere(&c, "a rollback to version 1"), first);
    assert!(
        c.fails(&["rollback", "example.test", "--to", "1"])
            .contains("already live")
    );
    assert!(
        c.fails(&["rollback", "example.test", "--to", "7"])
            .contains("no version 7")
    );
    assert!(
        c.fails(&["rollback", "nope.test"])
            .contains("no published version")
    );
    let rollbacks = c.ok(&["log", "--kind", "site-rolled-back"]);
    assert_eq!(rollbacks.lines().count(), 2, "{rollbacks}");

    // Two operators sync different projects at once: both land, and the
    // newcomer's file (which does not name example.test) removes nothing.
    let bob_key = c.dir.path().join("bob.key");
    c.ok(&["operator", "add", "bob", &c.operator_key(&bob_key)]);
    let other = c.dir.path().join("other");
    std::fs::create_dir_all(other.join("www")).unwrap();
    std::fs::write(other.join("www/index.html"), "<p>other</p>\n").unwrap();
    std::fs::write(
        other.join("makiatto.toml"),
        "[[domain]]\nname = \"other.test\"\npath = \"www\"\n",
    )
    .unwrap();
    std::fs::write(project.join("site/index.html"), "<h1>again</h1>\n").unwrap();
    let bob_sync = c
        .command(&[
            "sync",
            "--file",
            other.join("makiatto.toml").to_str().unwrap(),
        ])
        .env("MAKIATTO_OPERATOR_KEY", &bob_key)
        .spawn()
        .unwrap();
    let alice_sync = c.command(&["sync", "--file", file]).output().unwrap();
    assert!(alice_sync.status.success(), "{alice_sync:?}");
    assert!(bob_sync.wait_with_output().unwrap().status.success());
    deployed_everywhere(&c, "alice's version everywhere");
    wait_until(Duration::from_secs(30), "bob's site everywhere", || {
        NODES
            .iter()
            .all(|n| c.health(n)["sites"]["other.test"]["in_sync"] == true)
    });
    let config = c.exec("tololo", &["makiatto", "show", "config", "--json"]);
    assert!(
        config.contains("\"example.test\"") && config.contains("\"other.test\""),
        "{config}"
    );

    let log = c.ok(&["log", "--kind", "site-published"]);
    assert_eq!(log.lines().count(), 5, "{log}");
    assert!(log.contains("first"), "{log}");

    // A one-file edit, nothing cut off before: the new file goes with the
    // manifest's delta, without a question first. (Alice's sync above
    // brought back the files rolled back, which the node held: it asked.)
    std::fs::write(
        project.join("site/index.html"),
        "<h1>edited</h1>
",
    )
    .unwrap();
    let edit = c
        .command(&["sync", "--file", file])
        .env("MAKIATTO_TIMINGS", "1")
        .output()
        .unwrap();
    assert!(edit.status.success(), "{edit:?}");
    let (said, timings) = (
        String::from_utf8_lossy(&edit.stdout),
        String::from_utf8_lossy(&edit.stderr),
    );
    assert!(
        said.contains("1 changed, 0 added, 0 removed, 16 B uploaded") && !said.contains("resuming"),
        "{said}"
    );
    assert!(
        timings.contains("sent ahead") && !timings.contains("blobs asked"),
        "{timings}"
    );
    deployed_everywhere(&c, "the edit reaches every node");

    // A kept connection: the first command leaves a keeper, the next ones
    // send their control requests through it and answer the same; idle
    // for its limit, it leaves.
    let profile = c.cluster_dir().join("profile.toml");
    let keepers = || -> Vec<u32> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            if args.contains(&&b"__keep"[..])
                && args.contains(&profile.as_os_str().as_encoded_bytes())
            {
                out.push(pid);
            }
        }
        out
    };
    let kept = |args: &[&str]| {
        let out = c
            .command(args)
            .env("MAKIATTO_SSH_PERSIST", "2")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let direct = c.ok(&["sites", "--json"]);
    assert_eq!(kept(&["sites", "--json"]), direct);
    wait_until(Duration::from_secs(20), "a keeper runs", || {
        keepers().len() == 1
    });
    for _ in 0..3 {
        assert_eq!(kept(&["sites", "--json"]), direct);
    }
    assert_eq!(keepers().len(), 1, "one keeper per machine");
    wait_until(Duration::from_secs(30), "the idle keeper leaves", || {
        keepers().is_empty()
    });
    assert_eq!(c.ok(&["sites", "--json"]), direct);
}

/// A large upload fans out while it runs: blobs streamed to one node reach
/// the others before any event names them (here none ever does), each
/// fetched from the node that took the upload, as it announced them.
#[test]
fn blobs_uploaded_to_one_node_reach_the_others_before_their_version() {
    require_root();
    let c = Cluster::new("fo");
    c.up(3, &[]);
    // More blobs than one commit batch, so that some are announced while
    // the stream still runs; new bytes every run.
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let blobs: Vec<Vec<u8>> = (0..3000)
        .map(|i| {
            format!("fan-out blob {i} of run {nonce}\n")
                .repeat(40)
                .into_bytes()
        })
        .collect();
    let mut stream = Vec::new();
    for b in &blobs {
        stream.extend_from_slice(blake3::hash(b).as_bytes());
        stream.extend_from_slice(&(b.len() as u64).to_be_bytes());
        stream.extend_from_slice(b);
    }
    let report: Value = serde_json::from_str(&c.exec_with_input(
        "vector",
        &["makiatto", "blobs", "receive"],
        &stream,
    ))
    .unwrap();
    assert_eq!(report["stored"].as_u64(), Some(3000), "{report}");
    for n in ["klukai", "tololo"] {
        wait_until(
            Duration::from_secs(60),
            &format!("{n} fetches the announced blobs"),
            || c.health(n)["replication"]["blobs_ahead"].as_u64() >= Some(3000),
        );
        // The bytes are the uploaded ones (a few, read back on the peer).
        for b in [&blobs[0], &blobs[1500], &blobs[2999]] {
            let hash = blake3::hash(b).to_hex().to_string();
            let got = c.exec(n, &["makiatto", "blobs", "get", &hash]);
            assert_eq!(got.as_bytes(), &b[..], "{n}: blob {hash}");
        }
    }
    // The node that took the upload fetched nothing.
    assert_eq!(
        c.health("vector")["replication"]["blobs_ahead"].as_u64(),
        None,
        "left out while zero"
    );
}
