//! Chaos on a five-node local cluster under load, seeded and reproducible.
//!
//! HTTPS clients and DNS clients (`makiatto_harness::load`, a fixed rate
//! with timeouts, in a namespace of their own) run against every node
//! throughout, while one fault after another is made and ended: a node
//! cut off, a 2|3 partition of the mesh, a flapping link, mesh loss, mesh
//! packets delayed and reordered (`scripts/mesh-delay.py`), a
//! node killed during `maki sync`, during an ACME order and during garbage
//! collection, a full disk, a clock ten minutes ahead and behind, a node
//! restored from an old backup, a rolling restart (`maki machine restart`,
//! which must cost visitors nothing) and every node killed and started in
//! turn. For each: requests
//! and DNS answers that failed or were wrong (at the faulted nodes, and at
//! the others), events lost (must be 0: every event stored anywhere is on
//! every node once the fault ends), the time to converge after the fault
//! ends, and `makiatto verify` on every node. Each scenario prints one
//! JSON line (`{"chaos": …}`); `docs/reliability.md` has the table.
//!
//! The suite runs each fault for a few seconds. The long run:
//!
//! ```text
//! MAKIATTO_CHAOS_SECONDS=60 MAKIATTO_SEED=7 \
//!   cargo nextest run -p makiatto-cli --test chaos --no-capture
//! ```
//!
//! `MAKIATTO_CHAOS=name,name` runs only those scenarios; `MAKIATTO_KEEP=1`
//! leaves the cluster up afterwards. The seed picks
//! which node each fault strikes and when, and the flapping link's rhythm.
//! Needs root (as CI has), iptables and faketime.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failure is a panic

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use makiatto_events::AuthorKey;
use makiatto_harness::load::{Load, Running, Second, Target};
use makiatto_harness::netns::in_namespace;
use makiatto_harness::{
    Cluster, Host, Namespace, clock_offset_env, copy_examples, require_root, wait_seeing,
};
use makiatto_protocol::request::GetVersionVector;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde_json::{Value, json};

/// Requests per second per node and protocol.
const RATE: u32 = 4;
/// How long convergence may take after a fault ends.
const CONVERGE_WITHIN: Duration = Duration::from_secs(120);

/// One fault's figures.
#[derive(Debug, Default)]
struct Figures {
    /// HTTPS: ok, failed, wrong at the nodes under the fault, then at the others.
    https_faulted: [u64; 3],
    https_others: [u64; 3],
    dns_faulted: [u64; 3],
    dns_others: [u64; 3],
    events_lost: u64,
    verified: bool,
}

/// The cluster, its load, the seed.
struct Chaos {
    c: Cluster,
    hosts: Vec<Host>,
    client: Namespace,
    rng: ChaCha20Rng,
    seed: u64,
    fault: Duration,
    project: PathBuf,
    round: u32,
    only: Option<Vec<String>>,
}

impl Chaos {
    fn new() -> Chaos {
        let seed = std::env::var("MAKIATTO_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(7);
        let fault = Duration::from_secs(
            std::env::var("MAKIATTO_CHAOS_SECONDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(5),
        );
        let only = std::env::var("MAKIATTO_CHAOS")
            .ok()
            .map(|s| s.split(',').map(str::to_owned).collect());
        eprintln!(
            "chaos: seed {seed}, faults of {fault:?} (MAKIATTO_SEED, MAKIATTO_CHAOS_SECONDS)"
        );
        let mut c = Cluster::new("ch");
        if std::env::var_os("MAKIATTO_KEEP").is_some() {
            // Left up after the test, to look at (`maki local … down`).
            c.keep_when_dropped();
        }
        let project = c.dir.path().join("project");
        let file = copy_examples(&project);
        let state = c.up(5, &["--sync", file.to_str().unwrap()]);
        let client = c.load_client(&state);
        Chaos {
            c,
            hosts: state.hosts,
            client,
            rng: ChaCha20Rng::seed_from_u64(seed),
            seed,
            fault,
            project,
            round: 0,
            only,
        }
    }

    fn names(&self) -> Vec<String> {
        self.hosts.iter().map(|h| h.node.clone()).collect()
    }

    fn host(&self, node: &str) -> &Host {
        self.hosts.iter().find(|h| h.node == node).unwrap()
    }

    /// A node picked by the seed.
    fn pick(&mut self) -> String {
        let i = self.rng.random_range(0..self.hosts.len());
        self.hosts[i].node.clone()
    }

    fn wanted(&self, name: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|n| n == name))
    }

    fn start_load(&self) -> Running {
        Load {
            targets: self
                .hosts
                .iter()
                .map(|h| Target {
                    name: h.node.clone(),
                    addr: h.ipv4.parse::<Ipv4Addr>().unwrap(),
                })
                .collect(),
            domain: "example.test".into(),
            path: "/".into(),
            rate: RATE,
        }
        .start_in(&self.client.name)
    }

    /// A configuration change published through `via` (the first machine
    /// `maki` tries), as an operator would during the fault. Whether it
    /// was published: through a node cut off, it may not be.
    fn publish(&mut self, via: &str) -> bool {
        self.round += 1;
        let profile = self.profile_first(via);
        let ttl = (100 + self.round).to_string();
        let out = self
            .c
            .command(&["config", "set", "dns.geo_ttl", &ttl])
            .env("MAKIATTO_PROFILE", &profile)
            .output()
            .unwrap();
        if !out.status.success() {
            eprintln!(
                "chaos: publishing through {via} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out.status.success()
    }

    /// A copy of the profile with `node` first.
    fn profile_first(&self, node: &str) -> PathBuf {
        let path = self.c.cluster_dir().join("profile.toml");
        let mut profile: toml::Table =
            toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        if let Some(toml::Value::Array(machines)) = profile.get_mut("machine") {
            machines.sort_by_key(|m| m.get("name").and_then(|n| n.as_str()) != Some(node));
        }
        let copy = self.c.dir.path().join(format!("profile-{node}.toml"));
        std::fs::write(&copy, toml::to_string(&profile).unwrap()).unwrap();
        copy
    }

    /// Runs `fault` under load: it makes the fault, holds it, ends it,
    /// and returns the nodes it struck. Then convergence is timed, events
    /// counted and every node verified; the figures are printed.
    /// [`Chaos::scenario`] when `run`, or when named in the list of
    /// scenarios to run.
    fn scenario(&mut self, name: &str, fault: impl FnOnce(&mut Chaos) -> Vec<String>) {
        if !self.wanted(name) {
            return;
        }
        eprintln!("chaos: {name}");
        let load = self.start_load();
        let began = load.at();
        let struck = fault(self);
        let ended = Instant::now();
        // Every event stored anywhere when the fault ends: each node must
        // hold all of them once converged. (Events signed later, such as
        // a certificate the orderer issues meanwhile, are not in it: a
        // count taken later would call one still on its way "lost".)
        let stored = self.stored_anywhere();
        let converged = self.converge();
        let converge_ms = ended.elapsed().as_millis() as u64;
        let events_lost = self.lost(&stored);
        // A little load after convergence: the cluster serves as before.
        std::thread::sleep(Duration::from_secs(2));
        let seconds = load.stop();
        let mut f = Figures {
            events_lost,
            verified: self.verify(),
            ..Figures::default()
        };
        tally(&mut f, &seconds, &struck, began);
        let line = json!({
            "chaos": name,
            "seed": self.seed,
            "fault_secs": self.fault.as_secs(),
            "struck": struck,
            "https": {"faulted": f.https_faulted, "others": f.https_others},
            "dns": {"faulted": f.dns_faulted, "others": f.dns_others},
            "events_lost": f.events_lost,
            "converged": converged,
            "converge_ms": converge_ms,
            "verified": f.verified,
        });
        println!("{line}");
        assert!(converged, "{name}: the cluster did not converge: {line}");
        assert_eq!(f.events_lost, 0, "{name}: events were lost: {line}");
        assert!(f.verified, "{name}: a node's log does not verify: {line}");
        // The nodes the fault spared kept serving: no HTTPS request and
        // no DNS query of theirs failed or was wrong.
        assert_eq!(
            f.https_others[1] + f.https_others[2],
            0,
            "{name}: requests to nodes outside the fault failed: {line}"
        );
        assert_eq!(
            f.dns_others[1] + f.dns_others[2],
            0,
            "{name}: DNS answers of nodes outside the fault failed: {line}"
        );
    }

    /// Waits until every node holds the same events and serves the live
    /// version of the site; whether that happened within the limit.
    fn converge(&self) -> bool {
        let names = self.names();
        makiatto_harness::Wait::up_to(CONVERGE_WITHIN)
            .every(Duration::from_millis(250))
            .holds(|| {
                let health: Vec<Value> = names.iter().map(|n| self.health_or_null(n)).collect();
                let digest = health[0]["vv_digest"].clone();
                health.iter().all(|h| {
                    !h.is_null()
                        && h["vv_digest"] == digest
                        && h["sites"]["example.test"]["in_sync"] == true
                        && h["held_ahead_of_clock"].is_null()
                })
            })
    }

    /// `makiatto health --json` on `node`, or null while its daemon does
    /// not answer (a node restarting on its own, as after a full disk).
    fn health_or_null(&self, node: &str) -> Value {
        let out = self
            .c
            .maki(&["local", "exec", node, "--", "makiatto", "health", "--json"]);
        if !out.status.success() {
            return Value::Null;
        }
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// Each node's version vector: the last sequence number it holds of
    /// each author's feed.
    fn version_vectors(&self) -> Vec<(String, BTreeMap<AuthorKey, u64>)> {
        self.names()
            .into_iter()
            .map(|n| {
                let vv = self
                    .c
                    .control(&n, GetVersionVector {})
                    .iter()
                    .map(|(a, f)| (*a, f.seq))
                    .collect();
                (n, vv)
            })
            .collect()
    }

    /// The union of the nodes' version vectors: every event stored on
    /// some node (asked over each node's control socket, which a cut
    /// does not reach).
    fn stored_anywhere(&self) -> BTreeMap<AuthorKey, u64> {
        let mut best: BTreeMap<AuthorKey, u64> = BTreeMap::new();
        for (_, vv) in self.version_vectors() {
            for (a, s) in vv {
                let e = best.entry(a).or_default();
                *e = (*e).max(s);
            }
        }
        best
    }

    /// Of the events `stored` somewhere when the fault ended, those some
    /// node lacks, summed over nodes: 0 once converged.
    fn lost(&self, stored: &BTreeMap<AuthorKey, u64>) -> u64 {
        let vvs = self.version_vectors();
        let lost: u64 = vvs
            .iter()
            .map(|(_, vv)| {
                stored
                    .iter()
                    .map(|(a, s)| s.saturating_sub(vv.get(a).copied().unwrap_or(0)))
                    .sum::<u64>()
            })
            .sum();
        if lost > 0 {
            eprintln!("chaos: stored at the fault's end: {stored:?}");
            for (n, vv) in &vvs {
                eprintln!("chaos: {n} holds {vv:?}");
            }
        }
        lost
    }

    fn verify(&self) -> bool {
        self.names().iter().all(|n| {
            let out = self
                .c
                .maki(&["local", "exec", n, "--", "makiatto", "verify"]);
            if !out.status.success() {
                eprintln!(
                    "chaos: makiatto verify on {n}: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            out.status.success()
        })
    }

    fn exec(&self, node: &str, argv: &[&str]) -> String {
        self.c.exec(node, argv)
    }

    /// iptables in `node`'s host.
    fn iptables(&self, node: &str, args: &[&str]) {
        let mut argv = vec!["iptables"];
        argv.extend(args);
        self.exec(node, &argv);
    }

    fn hold(&self) {
        std::thread::sleep(self.fault);
    }
}

/// Sums the load's counts from the fault's start on, split by whether the
/// target was struck.
fn tally(f: &mut Figures, seconds: &[Second], struck: &[String], from: u64) {
    for s in seconds.iter().filter(|s| s.at >= from) {
        let faulted = struck.contains(&s.target);
        let slot = match (s.protocol.as_str(), faulted) {
            ("https", true) => &mut f.https_faulted,
            ("https", false) => &mut f.https_others,
            (_, true) => &mut f.dns_faulted,
            (_, false) => &mut f.dns_others,
        };
        slot[0] += s.ok;
        slot[1] += s.failed;
        slot[2] += s.wrong;
    }
}

#[test]
fn chaos_on_five_nodes_under_load() {
    require_root();
    let mut chaos = Chaos::new();
    // Every node serves the site before the first fault (it deploys after
    // `up` returns).
    assert!(chaos.converge(), "the cluster did not settle after up");

    // One node cut off (its cable pulled), a change published meanwhile.
    chaos.scenario("isolated", |ch| {
        let node = ch.pick();
        ch.c.ok(&["local", "cut", &node]);
        let others: Vec<String> = ch.names().into_iter().filter(|n| *n != node).collect();
        assert!(ch.publish(&others[0]));
        ch.hold();
        ch.c.ok(&["local", "heal", &node]);
        vec![node]
    });

    // The mesh split 2|3; each side publishes a change.
    chaos.scenario("partition-2-3", |ch| {
        let mut names = ch.names();
        let cut = ch.rng.random_range(0..names.len());
        names.rotate_left(cut);
        let (a, b) = names.split_at(2);
        let (a, b) = (a.to_vec(), b.to_vec());
        let mesh = |side: &[String], other: &[String], ch: &Chaos, op: &str| {
            for n in side {
                for o in other {
                    let ip = ch.host(o).ipv4.clone();
                    for (chain, dir) in [("INPUT", "-s"), ("OUTPUT", "-d")] {
                        ch.iptables(
                            n,
                            &[
                                op, chain, dir, &ip, "-p", "udp", "--dport", "51880", "-j", "DROP",
                            ],
                        );
                        ch.iptables(
                            n,
                            &[
                                op, chain, dir, &ip, "-p", "udp", "--sport", "51880", "-j", "DROP",
                            ],
                        );
                    }
                }
            }
        };
        mesh(&a, &b, ch, "-A");
        mesh(&b, &a, ch, "-A");
        assert!(ch.publish(&a[0]));
        assert!(ch.publish(&b[0]));
        ch.hold();
        mesh(&a, &b, ch, "-D");
        mesh(&b, &a, ch, "-D");
        // Nothing was struck for visitors: every node kept serving.
        Vec::new()
    });

    // One node's mesh link flaps, at the seed's rhythm.
    chaos.scenario("flapping", |ch| {
        let node = ch.pick();
        let until = Instant::now() + ch.fault;
        let mut published = false;
        while Instant::now() < until {
            ch.c.ok(&["local", "cut", &node, "--mesh"]);
            std::thread::sleep(Duration::from_millis(ch.rng.random_range(300..2000)));
            ch.c.ok(&["local", "heal", &node]);
            if !published {
                let other = ch.names().into_iter().find(|n| *n != node).unwrap();
                published = ch.publish(&other);
            }
            std::thread::sleep(Duration::from_millis(ch.rng.random_range(300..2000)));
        }
        Vec::new()
    });

    // 30 % of mesh packets lost on every node, both ways.
    chaos.scenario("mesh-loss", |ch| {
        let loss = |ch: &Chaos, op: &str| {
            for n in ch.names() {
                for chain in ["INPUT", "OUTPUT"] {
                    ch.iptables(
                        &n,
                        &[
                            op,
                            chain,
                            "-p",
                            "udp",
                            "--dport",
                            "51880",
                            "-m",
                            "statistic",
                            "--mode",
                            "random",
                            "--probability",
                            "0.3",
                            "-j",
                            "DROP",
                        ],
                    );
                }
            }
        };
        loss(ch, "-A");
        let via = ch.pick();
        assert!(ch.publish(&via));
        ch.hold();
        loss(ch, "-D");
        Vec::new()
    });

    // Every node's mesh packets held 20–200 ms each, at random, so they
    // also leave out of order (`scripts/mesh-delay.py` on an NFQUEUE: no
    // `tc netem` on this kernel); a change published meanwhile.
    chaos.scenario("mesh-delay", |ch| {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/mesh-delay.py");
        let rule = |op: &'static str| {
            [
                op,
                "OUTPUT",
                "-p",
                "udp",
                "--dport",
                "51880",
                "-j",
                "NFQUEUE",
                "--queue-num",
                "0",
                "--queue-bypass",
            ]
        };
        let relays: Vec<std::process::Child> = ch
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                in_namespace(&h.netns, &[], &["python3"])
                    .arg(&script)
                    .args(["0", "20", "200", &(ch.seed + i as u64).to_string()])
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        // The queue is bound before packets are sent to it.
        std::thread::sleep(Duration::from_millis(500));
        for n in ch.names() {
            ch.iptables(&n, &rule("-A"));
        }
        let via = ch.pick();
        assert!(ch.publish(&via));
        ch.hold();
        for n in ch.names() {
            ch.iptables(&n, &rule("-D"));
        }
        for relay in relays {
            // SIGTERM: it lets go of what it holds and reports.
            let pid = nix::unistd::Pid::from_raw(relay.id() as i32);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
            let out = relay.wait_with_output().unwrap();
            eprintln!(
                "mesh-delay: {}",
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Vec::new()
    });

    // The node `maki sync` talks to is killed in the middle of the sync;
    // it comes back, and the next sync finishes the job.
    chaos.scenario("kill-during-sync", |ch| {
        let first = ch.hosts[0].node.clone();
        let site = ch.project.join("site/chaos");
        std::fs::create_dir_all(&site).unwrap();
        for i in 0..300 {
            let body: String = (0..2000)
                .map(|_| ch.rng.random_range(b'a'..=b'z') as char)
                .collect();
            std::fs::write(site.join(format!("{i}.txt")), body).unwrap();
        }
        let file = ch.project.join("makiatto.toml");
        let mut sync =
            ch.c.command(&["sync", "--file", file.to_str().unwrap()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
        std::thread::sleep(Duration::from_millis(ch.rng.random_range(100..1500)));
        ch.c.ok(&["local", "kill", &first]);
        let _ = sync.wait();
        ch.hold();
        ch.c.ok(&["local", "start", &first]);
        ch.c.ok(&["sync", "--file", file.to_str().unwrap()]);
        vec![first]
    });

    // The orderer is killed while it orders a certificate: the next node
    // by name takes over.
    chaos.scenario("kill-during-acme", |ch| {
        let names = {
            let mut n = ch.names();
            n.sort();
            n
        };
        let orderer = names[0].clone();
        ch.c.ok(&["certs", "renew", "example.test"]);
        let ordering = makiatto_harness::Wait::up_to(Duration::from_secs(30))
            .every(Duration::from_millis(50))
            .holds(|| ch.c.health(&orderer)["acme"]["ordering"].is_string());
        eprintln!("chaos: the orderer {orderer} was ordering: {ordering}");
        ch.c.ok(&["local", "kill", &orderer]);
        wait_seeing(
            Duration::from_secs(120),
            "another node completes the renewal",
            || {
                let out: Value =
                    serde_json::from_str(&ch.c.ok(&["certs", "--json"])).unwrap_or(Value::Null);
                let renewing = out["names"].as_array().into_iter().flatten().any(|n| {
                    n["certificate"] == "example.test"
                        && n["state"].as_str().is_some_and(|s| s != "valid")
                });
                if renewing {
                    Err(out.to_string())
                } else {
                    Ok(())
                }
            },
        );
        ch.hold();
        ch.c.ok(&["local", "start", &orderer]);
        vec![orderer]
    });

    // Garbage collection runs when a daemon starts: old versions' blobs,
    // aged past the hour, are deleted while the node is killed.
    chaos.scenario("kill-during-gc", |ch| {
        ch.c.ok(&["config", "set", "sites.keep_versions", "1"]);
        let file = ch.project.join("makiatto.toml");
        std::fs::remove_dir_all(ch.project.join("site/chaos")).ok();
        ch.c.ok(&["sync", "--file", file.to_str().unwrap()]);
        let node = ch.pick();
        ch.exec(
            &node,
            &[
                "sh",
                "-c",
                "find /var/makiatto/blobs -type f -exec touch -d '2 hours ago' {} +",
            ],
        );
        ch.c.ok(&["local", "kill", &node]);
        ch.c.ok(&["local", "start", &node]);
        std::thread::sleep(Duration::from_millis(ch.rng.random_range(0..300)));
        ch.c.ok(&["local", "kill", &node]);
        ch.hold();
        ch.c.ok(&["local", "start", &node]);
        vec![node]
    });

    // One node's disk is full (a file system under /var/makiatto with
    // 64 MiB more than the node holds, its GeoIP database included,
    // filled); a new site version is published meanwhile.
    chaos.scenario("full-disk", |ch| {
        let node = ch.pick();
        ch.c.ok(&["local", "kill", &node]);
        ch.exec(
            &node,
            &[
                "sh",
                "-c",
                "mkdir -p /run/small \
                 && mount -t tmpfs -o size=$(( $(du -sm /var/makiatto | cut -f1) + 64 ))m tmpfs /run/small \
                 && cp -a /var/makiatto/. /run/small/ && mount --bind /run/small /var/makiatto",
            ],
        );
        ch.c.ok(&["local", "start", &node]);
        ch.exec(
            &node,
            &[
                "sh",
                "-c",
                "dd if=/dev/zero of=/var/makiatto/fill bs=1M 2>/dev/null; true",
            ],
        );
        std::fs::write(
            ch.project.join("site/full-disk.txt"),
            "published while a disk was full\n",
        )
        .unwrap();
        let file = ch.project.join("makiatto.toml");
        let via = ch.names().into_iter().find(|n| *n != node).unwrap();
        let profile = ch.profile_first(&via);
        ch.c.ok_with_profile(&profile, &["sync", "--file", file.to_str().unwrap()]);
        ch.hold();
        ch.exec(&node, &["rm", "-f", "/var/makiatto/fill"]);
        vec![node]
    });

    // One node's clock ten minutes ahead, then ten minutes behind: what it
    // signs waits on the others, what they sign waits on it.
    for (name, offset) in [("clock-ahead", 600i64), ("clock-behind", -600)] {
        chaos.scenario(name, |ch| {
            let node = ch.pick();
            ch.c.ok(&["local", "kill", &node]);
            let mut argv: Vec<String> = vec!["env".into()];
            argv.extend(
                clock_offset_env(offset)
                    .into_iter()
                    .map(|(k, v)| format!("{k}={v}")),
            );
            argv.extend(["makiatto", "run", "--detach"].map(String::from));
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            ch.exec(&node, &argv);
            let via = ch.names().into_iter().find(|n| *n != node).unwrap();
            assert!(ch.publish(&via));
            ch.hold();
            ch.c.ok(&["local", "kill", &node]);
            ch.c.ok(&["local", "start", &node]);
            vec![node]
        });
    }

    // A node restored from an old backup of /var/makiatto.
    chaos.scenario("restored-backup", |ch| {
        let node = ch.pick();
        ch.c.ok(&["local", "kill", &node]);
        ch.exec(
            &node,
            &[
                "tar",
                "-C",
                "/var",
                "-cf",
                "/root/chaos-backup.tar",
                "makiatto",
            ],
        );
        ch.c.ok(&["local", "start", &node]);
        let via = ch.names().into_iter().find(|n| *n != node).unwrap();
        assert!(ch.publish(&via));
        assert!(ch.publish(&via));
        ch.hold();
        ch.c.ok(&["local", "kill", &node]);
        ch.exec(
            &node,
            &[
                "sh",
                "-c",
                "rm -rf /var/makiatto && tar -C /var -xpf /root/chaos-backup.tar",
            ],
        );
        ch.c.ok(&["local", "start", &node]);
        vec![node]
    });

    // A rolling restart as an operator makes it (`maki machine restart`:
    // every node in turn, each handing its sockets to its new image), then
    // every node killed and started in turn, each back in step before the
    // next: visitors must see nothing of the first.
    chaos.scenario("rolling-restart", |ch| {
        ch.c.ok(&["machine", "restart"]);
        Vec::new()
    });
    chaos.scenario("rolling-kill", |ch| {
        let names = ch.names();
        for n in &names {
            ch.c.ok(&["local", "kill", n]);
            ch.c.ok(&["local", "start", n]);
            let first = &names[0];
            makiatto_harness::Wait::up_to(Duration::from_secs(60))
                .until(&format!("{n} is back in step"), || {
                    ch.c.health(n)["vv_digest"] == ch.c.health(first)["vv_digest"]
                });
        }
        names
    });
}
