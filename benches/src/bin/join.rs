//! `join`: a fifth node joining a local cluster whose log holds a million
//! events (issue 25; goal ≤ 60 s, time and bytes reported).
//!
//! Method:
//! 1. `maki local up` of five test hosts with the example site synced, then
//!    `maki machine remove` of the fifth (which wipes it): four members.
//! 2. A second operator (`maki operator add bench`), whose key this process
//!    holds, signs `MAKIATTO_BENCH_EVENTS` (default 1,000,000)
//!    `site-published` events: the common write, `maki sync`, each a new
//!    version of `example.test` with the manifest the site already has (so
//!    no blob is missing anywhere), each on top of the last. Signing is not
//!    timed.
//! 3. They are appended to the first member through one `makiatto control`
//!    session in its host, 4,096 events a request (timed: the ingest rate
//!    of one node), and the mesh replicates them to the other three (timed
//!    until every member's version vector digest is the same).
//! 4. `maki machine init` of the fifth host, timed until the command
//!    returns (it copies the log to the newcomer through `maki`, then signs
//!    the join) and until the newcomer holds the same log as the members
//!    and serves the site's live version. The bytes are what the
//!    newcomer's network interface received (`ip -s link`: the SSH copy and
//!    the mesh). Its daemon's peak resident memory is read from `/proc`.
//!
//! Needs root. Build first:
//! `cargo build --release -p makiatto -p makiatto-cli -p makiatto-benches --bins`
//! then `target/release/join` (`MAKIATTO_BENCH_EVENTS=100000` for a
//! shorter run; `MAKIATTO_BENCH_KEEP=1` keeps the cluster up afterwards,
//! for profiling its daemons by hand).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark support: a failure is a panic that fails the run

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::time::{Duration, Instant, SystemTime};

use makiatto_benches::measure::{mib, print_json, print_table};
use makiatto_events::payload::SitePublished;
use makiatto_events::{Event, FeedWriter, Payload, SigningKey, VersionVector};
use makiatto_harness::cpu::proc_kib;
use makiatto_harness::netns::daemon_pid;
use makiatto_harness::{Cluster, Host, Wait, example_project, require_root};
use makiatto_protocol::request::{Append, Heads, Missing};
use makiatto_protocol::{Answer, Operation, Request};

const GOAL_SECONDS: f64 = 60.0;
/// Events per `append` request (about 1.5 MB of hex).
const CHUNK: usize = 4_096;

fn main() {
    require_root();
    let events: usize = std::env::var("MAKIATTO_BENCH_EVENTS")
        .ok()
        .map(|n| n.parse().expect("MAKIATTO_BENCH_EVENTS is a whole number"))
        .unwrap_or(1_000_000);
    let mut c = Cluster::without_geoip("jn");
    if std::env::var_os("MAKIATTO_BENCH_KEEP").is_some() {
        c.keep_when_dropped();
    }
    let project = example_project();
    let state = c.up(5, &["--no-ca", "--sync", project.to_str().unwrap()]);
    let newcomer = state.hosts[4].clone();
    c.ok(&["machine", "remove", &newcomer.node, "--force"]);
    let members: Vec<String> = state.hosts[..4].iter().map(|h| h.node.clone()).collect();
    let first = members[0].as_str();

    // The second operator, whose feed this process writes.
    let key_file = c.dir.path().join("bench-operator.key");
    let public = c.operator_key(&key_file);
    c.ok(&["operator", "add", "bench", &public]);
    let mut seed = [0u8; 32];
    hex::decode_to_slice(
        std::fs::read_to_string(&key_file).unwrap().trim(),
        &mut seed,
    )
    .expect("an operator key is 64 hex characters");
    let mut writer = FeedWriter::new(SigningKey::from_bytes(&seed));
    let in_sync = || same_log(&c, &members).is_some();
    Wait::up_to(Duration::from_secs(120))
        .every(Duration::from_millis(500))
        .until("the members hold the same log", in_sync);

    let mut session = Session::open(&c, first);
    let published = last_published(&mut session);
    let heads: Vec<_> = session
        .ask(Heads {})
        .iter()
        .map(|h| {
            (
                h.id,
                makiatto_events::Hlc {
                    millis: h.millis,
                    counter: h.counter,
                },
            )
        })
        .collect();
    let before = c.health(first)["events"].as_u64().unwrap();

    eprintln!("signing {events} events");
    let t = Instant::now();
    let mut signed = Vec::with_capacity(events);
    for i in 0..events {
        let payload = Payload::SitePublished(SitePublished {
            message: Some(format!("deploy #{i} from the join bench")),
            ..published.clone()
        });
        let parents = if i == 0 { heads.as_slice() } else { &[] };
        signed.push(writer.write(payload, parents, now_millis()).unwrap());
    }
    let log_bytes: usize = signed.iter().map(|e| e.to_bytes().len()).sum();
    eprintln!(
        "signed in {:.1} s, {:.0} MiB",
        t.elapsed().as_secs_f64(),
        mib(log_bytes as u64)
    );

    let t = Instant::now();
    for chunk in signed.chunks(CHUNK) {
        let events: Vec<String> = chunk.iter().map(|e| hex::encode(e.to_bytes())).collect();
        let results = session.ask(Append { events });
        if let Some(refused) = results.iter().find(|r| !r.is_accepted()) {
            panic!("{first} refused an event: {refused:?}");
        }
    }
    let ingest = t.elapsed();
    drop(signed);
    session.close();
    let total = before + events as u64;
    let t = Instant::now();
    Wait::up_to(Duration::from_secs(1800))
        .every(Duration::from_millis(500))
        .until("every member holds every event", || {
            members
                .iter()
                .all(|m| c.health(m)["events"].as_u64() >= Some(total))
                && in_sync()
        });
    let replicate = t.elapsed();
    let member_rss: Vec<u64> = state.hosts[..4]
        .iter()
        .map(|h| proc_kib(daemon_of(h), "status", "VmRSS"))
        .collect();
    eprintln!(
        "appended in {:.1} s, replicated in {:.1} s",
        ingest.as_secs_f64(),
        replicate.as_secs_f64()
    );

    // The join.
    let rx_before = rx_bytes(&newcomer);
    let t = Instant::now();
    c.init_machine(&newcomer);
    let init = t.elapsed();
    let live = c.health(first)["sites"]["example.test"]["live"]
        .as_str()
        .map(str::to_owned);
    let mut everyone = members.clone();
    everyone.push(newcomer.node.clone());
    Wait::up_to(Duration::from_secs(1800))
        .every(Duration::from_millis(500))
        .until("the newcomer holds the log and serves", || {
            let served = c.health(&newcomer.node)["sites"]["example.test"]["live"]
                .as_str()
                .map(str::to_owned);
            served.is_some() && served == live && same_log(&c, &everyone).is_some()
        });
    let joined = t.elapsed();
    let rx = rx_bytes(&newcomer) - rx_before;
    // `maki machine init` uploads the daemon binary first.
    let binary = std::fs::metadata(c.daemon()).unwrap().len();
    let pid = daemon_of(&newcomer);
    let (peak, rss) = (
        proc_kib(pid, "status", "VmHWM"),
        proc_kib(pid, "status", "VmRSS"),
    );
    let health = c.health(&newcomer.node);
    let replication = &health["replication"];

    let secs = |d: Duration| format!("{:.1} s", d.as_secs_f64());
    print_table(
        &format!(
            "join: a fifth node joining a cluster of {} events",
            health["events"]
        ),
        &[
            (
                "log appended to one member",
                format!(
                    "{} ({:.0} events/s)",
                    secs(ingest),
                    events as f64 / ingest.as_secs_f64()
                ),
            ),
            ("replicated to the other three", secs(replicate)),
            (
                "members' RSS after",
                member_rss
                    .iter()
                    .map(|k| format!("{:.0} MiB", *k as f64 / 1024.0))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            ("maki machine init returned", secs(init)),
            (
                "newcomer holds the log and serves",
                format!("{} (goal ≤ {GOAL_SECONDS} s)", secs(joined)),
            ),
            (
                "bytes received by the newcomer",
                format!(
                    "{:.0} MiB, of which the daemon binary {:.0} MiB (the log's events: {:.0} MiB)",
                    mib(rx),
                    mib(binary),
                    mib(log_bytes as u64)
                ),
            ),
            (
                "newcomer's daemon RSS, peak / now",
                format!(
                    "{:.0} / {:.0} MiB",
                    peak as f64 / 1024.0,
                    rss as f64 / 1024.0
                ),
            ),
        ],
    );
    print_json(
        "join",
        serde_json::json!({
            "events": events,
            "log_bytes": log_bytes,
            "ingest_secs": ingest.as_secs_f64(),
            "replicate_secs": replicate.as_secs_f64(),
            "members_rss_kib": member_rss,
            "init_secs": init.as_secs_f64(),
            "join_secs": joined.as_secs_f64(),
            "newcomer_rx_bytes": rx,
            "daemon_binary_bytes": binary,
            "newcomer_peak_rss_kib": peak,
            "newcomer_rss_kib": rss,
            "newcomer_replication": replication,
            "goal_secs": GOAL_SECONDS,
            "met": joined.as_secs_f64() <= GOAL_SECONDS,
        }),
    );
}

/// One `makiatto control` in a node's host, kept open for many requests.
struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    node: String,
}

impl Session {
    fn open(c: &Cluster, node: &str) -> Session {
        let mut child = c
            .command(&["local", "exec", node, "--", "makiatto", "control"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("makiatto control starts");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Session {
            child,
            stdin,
            stdout,
            node: node.to_owned(),
        }
    }

    fn ask<O: Operation>(&mut self, request: O) -> O::Output {
        let request: Request = request.into();
        let op = request.op();
        let mut line = serde_json::to_string(&request).expect("a request encodes");
        line.push('\n');
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.flush().unwrap();
        let mut answer = String::new();
        self.stdout.read_line(&mut answer).unwrap();
        Answer::from_line(answer.trim_end())
            .and_then(Answer::decode)
            .unwrap_or_else(|e| panic!("{op} on {}: {e}", self.node))
    }

    fn close(mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "makiatto control on {}: {status}",
            self.node
        );
    }
}

/// The newest `site-published` event of the log: the live site's.
fn last_published(session: &mut Session) -> SitePublished {
    let log = session.ask(Missing {
        vv: VersionVector::default(),
        max_bytes: 64 * 1024 * 1024,
    });
    let mut events: Vec<Event> = log
        .iter()
        .map(|h| Event::decode(&hex::decode(h).unwrap()).unwrap())
        .collect();
    events.sort_by_key(|e| e.hlc());
    events
        .iter()
        .rev()
        .find_map(|e| match e.payload() {
            Payload::SitePublished(p) if p.domain.as_str() == "example.test" => Some(p.clone()),
            _ => None,
        })
        .expect("the example site was published")
}

/// The version vector digest every one of `nodes` reports, if they agree.
fn same_log(c: &Cluster, nodes: &[String]) -> Option<String> {
    let digests: Vec<Option<String>> = nodes
        .iter()
        .map(|n| c.health(n)["vv_digest"].as_str().map(str::to_owned))
        .collect();
    let first = digests.first()?.clone()?;
    digests
        .iter()
        .all(|d| d.as_deref() == Some(first.as_str()))
        .then_some(first)
}

/// The host's serving daemon.
fn daemon_of(host: &Host) -> u32 {
    daemon_pid(&host.netns).unwrap_or_else(|| panic!("no daemon runs on {}", host.node))
}

/// What the host's network interfaces received, in bytes (loopback aside).
fn rx_bytes(host: &Host) -> u64 {
    let out = std::process::Command::new("ip")
        .args(["-n", &host.netns, "-j", "-s", "link", "show"])
        .output()
        .expect("ip runs");
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j prints JSON");
    links
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["ifname"] != "lo")
        .filter_map(|l| l["stats64"]["rx"]["bytes"].as_u64())
        .sum()
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
