//! A daemon killed with SIGKILL in the middle of appends leaves a log that
//! opens and verifies, holds every event it acknowledged, and no partial event.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failure is a panic

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use makiatto_harness::daemon::{Daemon, append, run};
use makiatto_harness::json_lines;

#[test]
fn sigkill_during_appends_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(dir.path());
    let mut alice = writer(1);
    let g = genesis(&mut alice);
    let out = append(dir.path(), &[&g]);
    assert!(out.status.success());

    // Four clients append batches as fast as they can and report each
    // acknowledged id; the daemon is killed while they are at it.
    let (acked_tx, acked_rx) = mpsc::channel::<String>();
    let clients: Vec<_> = (0..4u64)
        .map(|c| {
            let socket = daemon.socket();
            let acked = acked_tx.clone();
            let g = g.clone();
            let mut w = writer(10 + c);
            std::thread::spawn(move || {
                let Ok(mut stream) = UnixStream::connect(&socket) else {
                    return;
                };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut parent = g.clone();
                for batch in 0..10_000u64 {
                    let events: Vec<_> = (0..5)
                        .map(|i| {
                            let e = site_published(&mut w, &parent, batch * 5 + i, T0 + 10 + batch);
                            parent = e.clone();
                            e
                        })
                        .collect();
                    let hex: Vec<String> =
                        events.iter().map(|e| hex::encode(e.to_bytes())).collect();
                    let line = serde_json::json!({"op": "append", "events": hex}).to_string();
                    if stream.write_all(format!("{line}\n").as_bytes()).is_err() {
                        return;
                    }
                    let mut answer = String::new();
                    if reader.read_line(&mut answer).unwrap_or(0) == 0 {
                        return;
                    }
                    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
                    for r in answer["ok"].as_array().unwrap() {
                        // Unauthorized authors are stored (and flagged) all the same.
                        assert_eq!(r["outcome"], "stored", "{r}");
                        acked.send(r["id"].as_str().unwrap().to_owned()).unwrap();
                    }
                }
            })
        })
        .collect();
    drop(acked_tx);

    // Kill once a few hundred events are acknowledged.
    let mut acked = Vec::new();
    while acked.len() < 300 {
        acked.push(
            acked_rx
                .recv_timeout(Duration::from_secs(60))
                .expect("appends make progress"),
        );
    }
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    for c in clients {
        c.join().unwrap();
    }
    acked.extend(acked_rx.try_iter());

    let verify = run(dir.path(), &["verify"]);
    assert!(
        verify.status.success(),
        "verify after SIGKILL: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let stored: std::collections::HashSet<String> =
        json_lines(&run(dir.path(), &["log", "--json"]).stdout)
            .iter()
            .map(|l| l["id"].as_str().unwrap().to_owned())
            .collect();
    let lost: Vec<_> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged events lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );

    // The data directory is usable again by a new daemon.
    let daemon = Daemon::start(dir.path());
    daemon.stop();
}
