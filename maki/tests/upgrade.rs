//! Upgrades and restarts that drop nothing, on a local cluster under load:
//! HTTPS clients (keep-alive over HTTP/1.1 and HTTP/2, and a new
//! connection per request) and a DNS client ask every node throughout,
//! from a namespace of their own, while `maki machine upgrade` replaces
//! all three nodes with a new build (each hands its sockets over, passes
//! the health gate), `maki machine restart` restarts them, and a broken
//! binary is refused with the cluster serving on, and a broken build that
//! passes its check but cannot start is rolled back. Not one request may
//! fail. Needs root (and `cc`, for the broken build).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failure is a panic

use std::time::Duration;

use makiatto_harness::traffic::{Kind, Latency, Load, Plan, Tally};
use makiatto_harness::{Cluster, Namespace, example_project, require_root, wait_until};
use serde_json::Value;

const NODES: [&str; 3] = ["vector", "klukai", "tololo"];

/// Runs load until `during` is done, with some answered before and after
/// (a baseline to compare the latencies with); returns the clients' tallies
/// and when `during` began and ended (since the load started).
fn under_load(
    client: &Namespace,
    plan: &Plan,
    during: impl FnOnce(),
) -> (Vec<Tally>, Duration, Duration) {
    let load = Load::start(&client.name, plan);
    let some = |load: &Load, from: u64| {
        wait_until(Duration::from_secs(30), "the clients are answered", || {
            load.answered() >= from + 300
        })
    };
    some(&load, 0);
    let began = load.elapsed();
    during();
    let ended = load.elapsed();
    let after = load.answered();
    some(&load, after);
    (load.stop(), began, ended)
}

/// Prints what the clients saw, and fails on any failure.
fn no_failures(what: &str, tallies: &[Tally], began: Duration, ended: Duration) {
    println!("{what}: during {:.1} s", (ended - began).as_secs_f64());
    for kind in Kind::ALL {
        let of: Vec<&Tally> = tallies.iter().filter(|t| t.kind == kind).collect();
        let ok: u64 = of.iter().map(|t| t.ok).sum();
        let failures: u64 = of.iter().map(|t| t.failures).sum();
        let retried: u64 = of.iter().map(|t| t.retried).sum();
        let reconnects: u64 = of.iter().map(|t| t.reconnects).sum();
        let before = Latency::of(&of, Duration::ZERO, began);
        let amid = Latency::of(&of, began, ended);
        println!(
            "  {:<34} {ok:>7} answered, {failures} failed, {retried} retried, {reconnects} reconnects; p50/p99/max before {:?}/{:?}/{:?}, during {:?}/{:?}/{:?}",
            kind.name(),
            before.p50,
            before.p99,
            before.max,
            amid.p50,
            amid.p99,
            amid.max
        );
    }
    let failed: Vec<String> = tallies
        .iter()
        .filter(|t| t.failures > 0)
        .map(|t| {
            format!(
                "{} at {}: {} failed: {:?}",
                t.kind.name(),
                t.node,
                t.failures,
                t.errors
            )
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{what}: requests failed:\n{}",
        failed.join("\n")
    );
}

fn daemon(c: &Cluster, node: &str) -> Value {
    c.health(node)["daemon"].clone()
}

#[test]
fn upgrading_and_restarting_every_node_under_load_drops_nothing() {
    require_root();
    let c = Cluster::new("up");
    let project = example_project();
    let state = c.up(3, &["--no-ca", "--sync", project.to_str().unwrap()]);
    for h in &state.hosts {
        wait_until(
            Duration::from_secs(30),
            "every node serves the site",
            || {
                c.curl_writes(
                    "vector",
                    "%{http_code}",
                    &[
                        "-k",
                        "--resolve",
                        &format!("example.test:443:{}", h.ipv4),
                        "https://example.test/",
                    ],
                ) == "200"
            },
        );
    }
    let client = c.load_client(&state);
    let plan = Plan::example_site(&state, Duration::from_millis(2));
    let pids: Vec<Value> = NODES.iter().map(|n| daemon(&c, n)["pid"].clone()).collect();

    // A new build: the same program in another file (a few bytes more).
    let new_build = c.dir.path().join("makiatto-new");
    let mut bytes = std::fs::read(c.daemon()).unwrap();
    bytes.extend_from_slice(b"\0a new build\0");
    std::fs::write(&new_build, bytes).unwrap();
    std::fs::set_permissions(
        &new_build,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let (tallies, began, ended) = under_load(&client, &plan, || {
        let out = c.ok(&[
            "machine",
            "upgrade",
            "--binary-path",
            new_build.to_str().unwrap(),
        ]);
        for n in NODES {
            assert!(
                out.contains(&format!("{n}: upgraded")) && out.contains("no socket closed"),
                "{out}"
            );
        }
    });
    no_failures("maki machine upgrade", &tallies, began, ended);
    for (n, pid) in NODES.iter().zip(&pids) {
        let d = daemon(&c, n);
        assert_eq!(&d["pid"], pid, "{n}: the same process serves");
        assert_eq!(d["last_handover"]["outcome"], "done", "{n}: {d}");
    }

    // A restart, the same way.
    let restarted = std::time::Instant::now();
    let (tallies, began, ended) = under_load(&client, &plan, || {
        let out = c.ok(&["machine", "restart"]);
        for n in NODES {
            assert!(
                out.contains(&format!("{n}: restarted (handed over")),
                "{out}"
            );
        }
    });
    no_failures("maki machine restart", &tallies, began, ended);

    // A broken binary (an executable of the right architecture that is
    // no makiatto): refused on the first node, nothing changed, the
    // cluster serving throughout.
    let broken = c.dir.path().join("makiatto-broken");
    std::fs::copy("/bin/false", &broken).unwrap();
    let installed: Vec<String> = NODES
        .iter()
        .map(|n| c.exec(n, &["sha256sum", "/usr/local/bin/makiatto"]))
        .collect();
    let (tallies, began, ended) = under_load(&client, &plan, || {
        let out = c.fails(&[
            "machine",
            "upgrade",
            "--binary-path",
            broken.to_str().unwrap(),
        ]);
        assert!(
            out.contains("does not run there as makiatto") && out.contains("rollout stopped"),
            "{out}"
        );
    });
    no_failures("a broken binary refused", &tallies, began, ended);
    for (n, before) in NODES.iter().zip(&installed) {
        assert_eq!(
            &c.exec(n, &["sha256sum", "/usr/local/bin/makiatto"]),
            before,
            "{n} keeps its binary"
        );
        assert_eq!(
            c.exec(n, &["sh", "-c", "ls /usr/local/bin/makiatto.new /usr/local/bin/makiatto.prev 2>/dev/null | wc -l"])
                .trim(),
            "0",
            "{n}: nothing left behind"
        );
    }

    // A broken build that passes its check and then cannot start (a
    // program that answers `handover-check` as this build does, and
    // otherwise runs the kept previous binary on a data directory that
    // cannot exist): the node's new image fails, its previous image takes
    // the sockets back, `maki` rolls the binary back, and the cluster
    // serves throughout.
    let doomed = broken_build(&c);
    let (tallies, began, ended) = under_load(&client, &plan, || {
        let out = c.fails(&[
            "machine",
            "upgrade",
            "--binary-path",
            doomed.to_str().unwrap(),
        ]);
        assert!(
            out.contains("failed its health gate")
                && out.contains("the previous binary serves again")
                && out.contains("rollout stopped"),
            "{out}"
        );
    });
    no_failures("a broken build rolled back", &tallies, began, ended);
    for (n, before) in NODES.iter().zip(&installed) {
        assert_eq!(
            &c.exec(n, &["sha256sum", "/usr/local/bin/makiatto"]),
            before,
            "{n} has its binary back"
        );
    }
    let first = daemon(&c, NODES[0]);
    assert_eq!(first["pid"], pids[0], "the same process serves: {first}");
    assert_eq!(first["last_handover"]["outcome"], "done", "{first}");
    // Every image made its mesh device anew: each node hears every peer,
    // over a handshake made since the restart.
    for n in NODES {
        wait_until(
            Duration::from_secs(60),
            &format!("{n} hears every peer over the mesh again"),
            || {
                let peers = c.health(n)["peers"].as_array().cloned().unwrap_or_default();
                peers.len() == NODES.len() - 1
                    && peers.iter().all(|p| {
                        p["alive"] == true
                            && p["handshake_age_secs"]
                                .as_u64()
                                .is_some_and(|a| a <= restarted.elapsed().as_secs())
                    })
            },
        );
    }
    // Healthy, but for what depends on this machine rather than on the
    // rollouts (its free disk and memory, the age of its GeoIP copy).
    if let Err(wrong) = c.healthy() {
        panic!("after the rollouts: {wrong}");
    }
}

/// A build that passes `handover-check` (it answers as this build does)
/// and cannot start: it runs the kept previous binary
/// (`/usr/local/bin/makiatto.prev`, there while an upgrade is gated) on a
/// data directory that cannot be made. An ELF of this machine, compiled
/// with `cc`, as `maki` takes only executables of the node's architecture.
fn broken_build(c: &Cluster) -> std::path::PathBuf {
    let check = std::process::Command::new(c.daemon())
        .arg("handover-check")
        .output()
        .unwrap();
    assert!(check.status.success());
    let check = String::from_utf8(check.stdout).unwrap();
    let literal = check.trim().replace('\\', "\\\\").replace('"', "\\\"");
    let source = c.dir.path().join("broken.c");
    std::fs::write(
        &source,
        format!(
            r#"#include <stdio.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "handover-check") == 0) {{ puts("{literal}"); return 0; }}
    execl("/usr/local/bin/makiatto.prev", "makiatto", "--data-dir",
          "/proc/makiatto-cannot-be-here", "run", (char *)0);
    return 1;
}}
"#
        ),
    )
    .unwrap();
    let binary = c.dir.path().join("makiatto-doomed");
    let cc = std::process::Command::new("cc")
        .arg("-o")
        .arg(&binary)
        .arg(&source)
        .status()
        .unwrap();
    assert!(cc.success(), "cc compiles the broken build");
    binary
}
