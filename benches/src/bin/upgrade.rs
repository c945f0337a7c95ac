//! `upgrade`: what an upgrade and a restart of every node cost the
//! clients, on a real three-node local cluster (release binaries), with
//! load throughout: HTTPS keep-alive over HTTP/1.1 and HTTP/2, HTTPS with a
//! new connection (a full TLS handshake) per request, and DNS over UDP,
//! one client of each against every node, from a namespace of their own
//! (`makiatto_harness::traffic`).
//!
//! The anchor is the same clients' latency before the rollout, in the
//! same run: reported are failures (the goal is 0), requests sent again
//! because the server ended their connection as they left (see the load
//! client's docs), and p50/p99/max latency before and during, with the
//! ratio of p99 during to before.
//!
//! Needs root. `cargo build --release -p makiatto -p makiatto-cli -p
//! makiatto-benches --bins`, then `target/release/upgrade`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark support: a failure is a panic that fails the run

use std::time::Duration;

use makiatto_harness::traffic::{Kind, Latency, Load, Plan, Tally};
use makiatto_harness::{Cluster, example_project, require_root, wait_until};

fn main() {
    require_root();
    let c = Cluster::new("ug");
    let project = example_project();
    let state = c.up(3, &["--no-ca", "--sync", project.to_str().unwrap()]);
    let client = c.load_client(&state);
    let plan = Plan::example_site(&state, Duration::ZERO);
    let binary = c.daemon().to_str().unwrap().to_owned();
    for (what, args) in [
        (
            "maki machine upgrade (3 nodes)",
            vec!["machine", "upgrade", "--binary-path", binary.as_str()],
        ),
        ("maki machine restart (3 nodes)", vec!["machine", "restart"]),
    ] {
        let load = Load::start(&client.name, &plan);
        wait_until(Duration::from_secs(30), "a baseline", || {
            load.answered() > 3_000
        });
        let began = load.elapsed();
        c.ok(&args);
        let ended = load.elapsed();
        let after = load.answered();
        wait_until(Duration::from_secs(30), "after", || {
            load.answered() > after + 3_000
        });
        let tallies = load.stop();
        report(what, &tallies, began, ended);
    }
}

fn report(what: &str, tallies: &[Tally], began: Duration, ended: Duration) {
    println!(
        "\n{what}: {:.1} s under load (the machine is shared: figures are indicative)",
        (ended - began).as_secs_f64()
    );
    println!(
        "| client | answered | failed | sent again | p50 before / during | p99 before / during | max during | p99 ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for kind in Kind::ALL {
        let of: Vec<&Tally> = tallies.iter().filter(|t| t.kind == kind).collect();
        let sum = |f: fn(&Tally) -> u64| of.iter().map(|t| f(t)).sum::<u64>();
        let before = Latency::of(&of, Duration::ZERO, began);
        let during = Latency::of(&of, began, ended);
        println!(
            "| {} | {} | {} | {} | {:.1} / {:.1} ms | {:.1} / {:.1} ms | {:.0} ms | {:.1} |",
            kind.name(),
            sum(|t| t.ok),
            sum(|t| t.failures),
            sum(|t| t.retried),
            ms(before.p50),
            ms(during.p50),
            ms(before.p99),
            ms(during.p99),
            ms(during.max),
            ms(during.p99) / ms(before.p99).max(0.001)
        );
        for t in of.iter().filter(|t| t.failures > 0) {
            println!("  {} failed at {}: {:?}", t.failures, t.node, t.errors);
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
