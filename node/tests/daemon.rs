//! The daemon's log over its control socket and from a stopped data directory:
//! append, list, show, time travel, verify.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failure is a panic

mod common;

use common::*;
use makiatto_harness::daemon::{Daemon, append, run};
use makiatto_harness::json_lines;

#[test]
fn a_running_daemon_appends_lists_shows_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());

    let mut alice = writer(1);
    let g = genesis(&mut alice);
    let vector = node_joined(&mut alice, &g, "vector", 1, T0 + 1_000);
    let v1 = site_published(&mut alice, &vector, 1, T0 + 2_000);
    let v2 = site_published(&mut alice, &v1, 2, T0 + 3_000);
    // A stranger's key publishing a site: stored, flagged, without effect.
    let mut mallory = writer(66);
    let forged_site = site_published(&mut mallory, &v2, 3, T0 + 4_000);

    let out = append(dir.path(), &[&g, &vector, &v1, &v2, &forged_site]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results = json_lines(&out.stdout);
    assert!(
        results.iter().all(|r| r["outcome"] == "stored"),
        "{results:?}"
    );

    // Garbage and a replay are refused and counted.
    let out = append(dir.path(), &[&v1]);
    assert!(!out.status.success());
    assert!(
        json_lines(&out.stdout)[0]["error"]
            .as_str()
            .unwrap()
            .contains("already stored")
    );
    let line = r#"{"op":"append","events":["00ff"]}"#;
    let answer = daemon.request(line);
    assert_eq!(answer["ok"][0]["outcome"], "rejected");
    let answer = daemon.request("this is not json");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("not a valid request")
    );

    let log = json_lines(&run(dir.path(), &["log", "--json"]).stdout);
    let kinds: Vec<&str> = log.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "genesis",
            "node-joined",
            "site-published",
            "site-published",
            "site-published"
        ]
    );
    assert_eq!(log[0]["author"], "alice");
    assert_eq!(log[0]["role"], "operator");
    assert_eq!(log[0]["time"], "2026-11-25T13:00:00.000Z");
    for key in ["id", "author_key", "seq", "summary", "verified", "applied"] {
        assert!(log[0].get(key).is_some(), "missing {key}");
    }
    assert_eq!(log[4]["status"], "unauthorized");
    assert_eq!(log[4]["applied"], false);
    let text = String::from_utf8(run(dir.path(), &["log"]).stdout).unwrap();
    assert!(text.contains("[UNAUTHORIZED"), "{text}");
    assert!(
        text.contains("sync example.test: 0 changed, 1 added"),
        "{text}"
    );

    // Filters.
    let only = json_lines(&run(dir.path(), &["log", "--json", "--kind", "node-joined"]).stdout);
    assert_eq!(only.len(), 1);
    let by_alice = json_lines(&run(dir.path(), &["log", "--json", "--author", "alice"]).stdout);
    assert_eq!(by_alice.len(), 4);
    let last = json_lines(&run(dir.path(), &["log", "--json", "--limit", "2"]).stdout);
    assert_eq!(last[1]["id"], forged_site.id().to_hex());
    let bad = run(dir.path(), &["log", "--kind", "nonsense"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown kind"));

    // Projections, now and in the past.
    let sites = show_json(dir.path(), &["show", "sites", "--json"]);
    assert_eq!(
        sites["state"]["domains"]["example.test"]["live"],
        v2.id().to_hex()
    );
    assert_eq!(sites["fingerprint"].as_str().unwrap().len(), 64);
    let earlier = show_json(
        dir.path(),
        &["show", "sites", "--json", "--at", &v1.id().to_hex()[..10]],
    );
    assert_eq!(
        earlier["state"]["domains"]["example.test"]["live"],
        v1.id().to_hex()
    );
    let by_time = show_json(
        dir.path(),
        &[
            "show",
            "sites",
            "--json",
            "--at",
            "2026-11-25T13:00:02.500Z",
        ],
    );
    assert_eq!(
        by_time["state"]["domains"]["example.test"]["live"],
        v1.id().to_hex()
    );
    let peers = show_json(dir.path(), &["show", "peers", "--json"]);
    assert_eq!(
        peers["state"]["nodes"]["vector"]["mesh_addr"],
        "198.51.100.1"
    );

    let verify = run(dir.path(), &["verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );

    // Stopped: the same answers straight from the data directory.
    let online_fingerprint = sites["fingerprint"].clone();
    daemon.stop();
    assert!(!dir.path().join("control.sock").exists());
    let offline = show_json(dir.path(), &["show", "sites", "--json"]);
    assert_eq!(offline["fingerprint"], online_fingerprint);
    let verify = run(dir.path(), &["verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    assert_eq!(
        json_lines(&run(dir.path(), &["log", "--json"]).stdout).len(),
        5
    );
}

#[test]
fn a_stopped_daemon_saves_its_fold_and_the_next_start_begins_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());
    let mut alice = writer(1);
    let g = genesis(&mut alice);
    let v1 = site_published(&mut alice, &g, 1, T0 + 1_000);
    let v2 = site_published(&mut alice, &v1, 2, T0 + 2_000);
    assert!(append(dir.path(), &[&g, &v1, &v2]).status.success());
    let online = show_json(dir.path(), &["show", "sites", "--json"]);
    daemon.stop();

    // The clean stop saved an entry per event, a checkpoint and the record.
    {
        let store = makiatto_core::Store::open(&dir.path().join("log")).unwrap();
        assert!(store.fold_record().unwrap().is_some());
        assert_eq!(store.index_len().unwrap(), 3);
    }
    // Started from the checkpoint: the same projections, now and as of an
    // event, and verify re-folds the log and checks the checkpoint.
    let offline = show_json(dir.path(), &["show", "sites", "--json"]);
    assert_eq!(offline["fingerprint"], online["fingerprint"]);
    let earlier = show_json(
        dir.path(),
        &["show", "sites", "--json", "--at", &v1.id().to_hex()],
    );
    assert_eq!(
        earlier["state"]["domains"]["example.test"]["live"],
        v1.id().to_hex()
    );
    // An event stored after the save is folded on top of the checkpoint.
    let v3 = site_published(&mut alice, &v2, 3, T0 + 3_000);
    assert!(append(dir.path(), &[&v3]).status.success());
    let latest = show_json(dir.path(), &["show", "sites", "--json"]);
    assert_eq!(
        latest["state"]["domains"]["example.test"]["live"],
        v3.id().to_hex()
    );
    let verify = run(dir.path(), &["verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    // With the fold forgotten (as a log written by an older build), the
    // log is folded from the start, to the same state.
    makiatto_core::Store::open(&dir.path().join("log"))
        .unwrap()
        .clear_fold()
        .unwrap();
    let refolded = show_json(dir.path(), &["show", "sites", "--json"]);
    assert_eq!(refolded["fingerprint"], latest["fingerprint"]);
}

#[test]
fn verify_names_a_stored_projection_that_disagrees_with_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let mut alice = writer(1);
    let g = genesis(&mut alice);
    let out = append(dir.path(), &[&g]);
    assert!(out.status.success());
    {
        let store = makiatto_core::Store::open(&dir.path().join("log")).unwrap();
        store
            .put_projection("peers", b"{\"tampered\":true}")
            .unwrap();
    }
    let verify = run(dir.path(), &["verify"]);
    assert!(!verify.status.success());
    assert!(
        String::from_utf8_lossy(&verify.stdout).contains("projection peers: stored copy differs")
    );
}

#[test]
fn reading_a_directory_without_a_log_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["log"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no Makiatto log"));
}

fn show_json(dir: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let out = run(dir, args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
