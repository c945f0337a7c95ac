//! Commands that need "any node" reach a live one promptly when a machine
//! of the profile is cut off — the first, the second or the third — also
//! when an earlier command left a kept connection to it (`maki/src/mux.rs`)
//! that has gone dead without a word. Needs root (as CI has).
//!
//! The fault this holds down: with the first machine cut, `maki sync` took
//! the kept connection to it, waited 20 s for an answer, then 20 s for a
//! login of its own, and failed with "SSH login timed out" instead of
//! publishing through another node.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failure is a panic

use std::time::{Duration, Instant};

use makiatto_harness::{Cluster, copy_examples, require_root, wait_until};

const NODES: [&str; 3] = ["vector", "klukai", "tololo"];

/// `maki`'s bound on one login (`ssh::LOGIN_WITHIN`): a command that
/// waited on the machine cut off would take at least this long.
const LOGIN_WITHIN: Duration = Duration::from_secs(10);

#[test]
fn every_any_node_command_reaches_a_live_node_with_any_one_machine_cut_off() {
    require_root();
    let c = Cluster::new("an");
    // Kept connections, as a user has them (60 s by default).
    c.set_ssh_persist(60);
    let project = c.dir.path().join("project");
    let file = copy_examples(&project);
    let file = file.to_str().unwrap();
    c.up(3, &["--no-ca"]);
    c.ok(&["sync", "--file", file, "-m", "first"]);

    for (round, cut) in NODES.iter().enumerate() {
        // A kept connection to every machine, as after a `maki machine
        // list` a moment ago.
        c.ok(&["machine", "list"]);
        wait_until(
            Duration::from_secs(30),
            "a kept connection to every machine",
            || c.kept_sockets() == NODES.len(),
        );
        c.ok(&["local", "cut", cut]);

        std::fs::write(
            project.join("site/round.txt"),
            format!("round {round}, {cut} cut off\n"),
        )
        .unwrap();
        let ttl = format!("{}", 40 + round);
        let message = format!("{cut} cut off");
        let commands: Vec<Vec<&str>> = vec![
            vec!["config", "show"],
            vec!["log", "--limit", "3"],
            vec!["sites"],
            vec!["diff", "example.test"],
            vec!["operator", "list"],
            vec!["peer", "list"],
            vec!["dns", "nameserver-setup"],
            vec!["certs"],
            vec!["config", "set", "dns.geo_ttl", &ttl],
            vec!["sync", "--file", file, "-m", &message],
        ];
        for args in &commands {
            let started = Instant::now();
            let out = c.maki(args);
            let took = started.elapsed();
            assert!(
                out.status.success(),
                "maki {args:?} failed with {cut} cut off:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            // `certs` asks every machine for its ACME report, so it waits
            // for the one cut off to fail its login; the others must not.
            if args[0] != "certs" {
                assert!(
                    took < LOGIN_WITHIN,
                    "maki {args:?} took {took:?} with {cut} cut off: it waited on the machine cut off"
                );
            }
        }
        c.ok(&["local", "heal", cut]);
    }

    // Everything published with a machine cut off reached every node.
    let published = c.ok(&["config", "show"]);
    assert!(published.contains("42"), "{published}");
    let state = c.state();
    for host in &state.hosts {
        let resolve = format!("example.test:80:{}", host.ipv4);
        wait_until(
            Duration::from_secs(60),
            &format!("{} serves the last round's file", host.node),
            || {
                c.curl_writes(
                    "vector",
                    "%{http_code}",
                    &["--resolve", &resolve, "http://example.test/round.txt"],
                ) == "200"
            },
        );
    }
}
