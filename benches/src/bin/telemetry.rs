//! `telemetry`: what exporting telemetry costs a node (issue 22), export
//! on against export off on the same node in the same run.
//!
//! 1. One node (`maki local up --nodes 1 --no-ca --sync`, the release
//!    daemon beside this binary) serving the example project's
//!    `example.test`, with `1k.txt` (1 KiB) added, over HTTPS (its
//!    self-signed P-256 certificate) and DNS.
//! 2. The guide's observability set-up: an external peer `o11y` on the
//!    cluster's bridge (wireguard-go configured from `maki peer wg-config
//!    o11y` after `maki peer add o11y …`), with a real OTLP/gRPC receiver
//!    on its mesh address, port 4317. The receiver is a sink
//!    (`otlp_receiver.py --sink`: each Export call answered without
//!    decoding it): the guide puts the collector on a machine of its own,
//!    and here it shares the node's two cores, so its own work would be
//!    counted against the node. `MAKIATTO_BENCH_RECORDING_COLLECTOR=1`
//!    runs the tests' receiver instead, which decodes every span into a
//!    JSON line (runs T1–T9).
//! 3. Two settings, switched live by `maki sync` of the project's `[o11y]`
//!    table (no restart; each round waits until `makiatto health` shows
//!    it): **on**, the defaults (`sampling_ratio = 0.1`, traces, metrics
//!    and logs exported); **off**, `tracing_enabled`, `metrics_enabled`
//!    and `logging_enabled` all false — on the serving paths the same as a
//!    cluster with no collector (the per-thread metric shards are kept in
//!    both, for `maki health`).
//! 4. Rounds alternate (on, off, then off, on, …); best of three per
//!    setting (`MAKIATTO_BENCH_ROUNDS` for more), and their medians: h2load, 1 KiB over HTTP/1.1 keep-alive, 64 connections,
//!    10 s; dnsperf, a 6-query mix of the zone, `-c 4`, 10 s. Server CPU
//!    per request from `/proc` (all the daemon's threads: the exporter
//!    included).
//! 5. Instructions per request (`makiatto_harness::instructions`): the
//!    daemon restarted under callgrind, 20,000 HTTPS requests (8
//!    connections) and 20,000 DNS queries counted with each setting: the
//!    figure that does not move with the machine's load. Under callgrind
//!    the load runs tens of times slower than at full speed, so the
//!    daemon's periodic work (the metric export every interval, timers)
//!    would be counted tens of times over per request: it is counted
//!    first with no load for 30 s (instructions per second), and taken
//!    out of each count in proportion to its time. Both figures are
//!    reported; the goal is judged on the first.
//! 6. The collector down: the receiver stopped, every trace kept
//!    (`sampling_ratio = 1.0`, the queue's worst case), a fixed load of
//!    HTTPS requests (a new connection each) and DNS queries
//!    (`makiatto_harness::load`) for `MAKIATTO_BENCH_DOWN_SECS` (default
//!    600): the daemon's RSS and the export queues sampled every 10 s,
//!    the load's failures counted; then the receiver started again and
//!    the time until the node exports again.
//!
//! Goals (issue 22): HTTPS 1 KiB and DNS rate with export on ≥ 0.95 × off,
//! and at most 5% more instructions per request; the queue's memory with
//! the collector down bounded and reported.
//!
//! `MAKIATTO_BENCH_KEEP_DUMPS=DIR`: the callgrind dumps of step 5 copied
//! to DIR, for `callgrind_annotate` (one per count, in the order on:
//! HTTPS, DNS; off: HTTPS, DNS).
//!
//! `MAKIATTO_BENCH_PINNED=1`: the daemon on CPU 0 (one serving thread,
//! one DNS thread), h2load and dnsperf on CPU 1, and so is the collector's
//! machine (wireguard-go and the receiver, as on a machine of its own);
//! the receiver, started again after the collector-down step, floats.
//!
//! Needs root, h2load, dnsperf, valgrind, wireguard-go and the receiver's
//! Python packages (`scripts/install-deps.sh`). Build first:
//! `cargo build --release -p makiatto -p makiatto-cli -p makiatto-benches --bins`
//! then `target/release/telemetry`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark support: a failure is a panic that fails the run

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use makiatto_benches::measure::{print_json, print_table};
use makiatto_benches::reports;
use makiatto_harness::cpu::{Sample, proc_kib};
use makiatto_harness::instructions::UnderCallgrind;
use makiatto_harness::load::{Load, Target};
use makiatto_harness::netns::{daemon_pid, in_namespace};
use makiatto_harness::{
    Lab, OtlpReceiver, Placement, WgPeer, copy_examples, have, stdout, wait_until,
};
use serde_json::{Value, json};

const DOMAIN: &str = "example.test";
const SECONDS: u32 = 10;
/// Rounds per setting unless `MAKIATTO_BENCH_ROUNDS` says otherwise.
const ROUNDS: usize = 3;
/// Requests (and queries) per setting in the instruction counts.
const COUNTED: u32 = 20_000;
/// The DNS mix: names of the example zone, and one that does not exist.
const MIX: [(&str, &str); 6] = [
    ("example.test", "A"),
    ("www.example.test", "A"),
    ("example.test", "MX"),
    ("example.test", "TXT"),
    ("_dmarc.example.test", "TXT"),
    ("nx.example.test", "A"),
];
/// Requests per second of each protocol while the collector is down.
const DOWN_RATE: u32 = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Export {
    On,
    Off,
}

impl Export {
    fn label(self) -> &'static str {
        match self {
            Export::On => "on",
            Export::Off => "off",
        }
    }
}

/// One run of one setting: rate and the server's CPU per request.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    rate: f64,
    cpu_us: f64,
}

/// The best rate and, apart, the lowest CPU per request of some runs.
fn best(runs: &[Run]) -> Run {
    Run {
        rate: runs.iter().map(|r| r.rate).fold(0.0, f64::max),
        cpu_us: runs.iter().map(|r| r.cpu_us).fold(f64::INFINITY, f64::min),
    }
}

/// The median rate and, apart, the median CPU per request.
fn median(runs: &[Run]) -> Run {
    let mid = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    Run {
        rate: mid(runs.iter().map(|r| r.rate).collect()),
        cpu_us: mid(runs.iter().map(|r| r.cpu_us).collect()),
    }
}

struct Bench {
    lab: Lab,
    file: PathBuf,
    node: String,
    netns: String,
    addr: String,
    client_ns: String,
    placement: Placement,
    queries: PathBuf,
}

impl Bench {
    /// `ip netns exec CLIENT [taskset -c 1] ARGV…`.
    fn client(&self, argv: &[&str]) -> Command {
        in_namespace(&self.client_ns, &self.placement.client(), argv)
    }

    /// The node answers `1k.txt` (never panics: also asked while the
    /// daemon starts).
    fn serves_1k(&self) -> bool {
        self.client(&["curl", "-sk", "--max-time", "5", "--resolve"])
            .arg(format!("{DOMAIN}:443:{}", self.addr))
            .arg(format!("https://{DOMAIN}/1k.txt"))
            .output()
            .is_ok_and(|out| out.stdout.len() == 1024)
    }

    fn pid(&self) -> u32 {
        daemon_pid(&self.netns).expect("the node's `makiatto run` process")
    }

    fn telemetry(&self) -> Value {
        self.lab.cluster.health(&self.node)["telemetry"].clone()
    }

    /// Publishes the `[o11y]` table for `export` (and `ratio` of traces
    /// kept) with `maki sync`; returns once the node applies it.
    fn set(&self, export: Export, ratio: f64) {
        let table = match export {
            Export::On => format!("sampling_ratio = {ratio:?}"),
            Export::Off => {
                "tracing_enabled = false\nmetrics_enabled = false\nlogging_enabled = false"
                    .to_owned()
            }
        };
        let text = std::fs::read_to_string(&self.file).unwrap();
        let base = text.split("\n[o11y]").next().unwrap().to_owned();
        std::fs::write(&self.file, format!("{base}\n[o11y]\n{table}\n")).unwrap();
        self.lab
            .cluster
            .ok(&["sync", "--file", self.file.to_str().unwrap()]);
        let on = export == Export::On;
        wait_until(
            Duration::from_secs(120),
            "the node applies the [o11y] settings",
            || {
                let t = self.telemetry();
                t["traces"] == on
                    && t["metrics"] == on
                    && t["logs"] == on
                    && (!on || t["sampling_ratio"].as_f64() == Some(ratio))
            },
        );
    }

    /// h2load: 1 KiB over HTTP/1.1, 64 connections, for [`SECONDS`].
    fn https(&self, label: &str) -> Run {
        let pid = self.pid();
        let mut cmd = self.client(&["timeout", "120", "h2load", "--h1"]);
        cmd.arg(format!("--connect-to={}:443", self.addr))
            .args(["-t", &self.placement.workers().to_string()])
            .args(["-c", "64", "-D", &SECONDS.to_string()])
            .arg(format!("https://{DOMAIN}/1k.txt"));
        let before = Sample::take(&[pid]);
        let out = stdout(&mut cmd);
        std::thread::sleep(Duration::from_millis(300));
        let usage = Sample::take(&[pid]).since(&before);
        let r = reports::H2load::parse(&out);
        assert!(r.all_ok(), "export {label}: requests failed:\n{out}");
        let run = Run {
            rate: r.rate(),
            cpu_us: (usage.user_s + usage.sys_s) * 1e6 / r.succeeded() as f64,
        };
        eprintln!(
            "https, export {label:>3}: {:>8.0} req/s, {:>6.2} µs CPU/request, client {:.2} µs/request, machine busy {:.0}% (others {:.0}%)",
            run.rate,
            run.cpu_us,
            usage.client_s * 1e6 / r.succeeded() as f64,
            usage.machine_busy * 100.0,
            usage.others * 100.0
        );
        run
    }

    /// dnsperf over the mix for [`SECONDS`].
    fn dns(&self, label: &str) -> Run {
        let pid = self.pid();
        let mut cmd = self.client(&["dnsperf", "-s", &self.addr, "-d"]);
        cmd.arg(&self.queries)
            .args(["-c", "4", "-l", &SECONDS.to_string()]);
        cmd.args(["-T", &self.placement.workers().to_string()]);
        let before = Sample::take(&[pid]);
        let out = stdout(&mut cmd);
        let usage = Sample::take(&[pid]).since(&before);
        let r = reports::Dnsperf::parse(&out);
        let run = Run {
            rate: r.qps,
            cpu_us: (usage.user_s + usage.sys_s) * 1e6 / r.completed as f64,
        };
        eprintln!(
            "dns,   export {label:>3}: {:>8.0} q/s,   {:>6.2} µs CPU/query, {} lost, machine busy {:.0}% (others {:.0}%)",
            run.rate,
            run.cpu_us,
            r.lost,
            usage.machine_busy * 100.0,
            usage.others * 100.0
        );
        run
    }

    /// dnsperf `runs` times through the mix; the queries answered.
    fn fixed_dns(&self, runs: u32) -> u64 {
        let mut cmd = self.client(&["dnsperf", "-s", &self.addr, "-d"]);
        cmd.arg(&self.queries)
            .args(["-c", "4", "-T", "1", "-n", &runs.to_string()]);
        let out = stdout(&mut cmd);
        let r = reports::Dnsperf::parse(&out);
        assert_eq!(r.lost, 0, "counted queries were lost:\n{out}");
        r.completed
    }

    /// Exactly [`COUNTED`] HTTPS requests (8 connections).
    fn fixed_https(&self) {
        let mut cmd = self.client(&["timeout", "900", "h2load", "--h1"]);
        cmd.arg(format!("--connect-to={}:443", self.addr))
            .args(["-t", "1", "-c", "8", "-n", &COUNTED.to_string()])
            .arg(format!("https://{DOMAIN}/1k.txt"));
        let out = stdout(&mut cmd);
        assert_eq!(
            reports::H2load::parse(&out).succeeded(),
            u64::from(COUNTED),
            "not every counted request succeeded:\n{out}"
        );
    }
}

/// How long the periodic work is counted with no load, per setting.
const IDLE: Duration = Duration::from_secs(30);

/// One setting's instruction counts.
#[derive(Debug, Clone, Copy)]
struct Counted {
    /// Per request and per query, everything the daemon did meanwhile.
    https: f64,
    dns: f64,
    /// The same with the periodic work taken out.
    https_net: f64,
    dns_net: f64,
    idle_per_second: f64,
    /// How long the counts ran, under callgrind.
    https_secs: f64,
    dns_secs: f64,
}

impl Counted {
    fn json(self) -> Value {
        json!({
            "https": self.https, "dns": self.dns,
            "https_net": self.https_net, "dns_net": self.dns_net,
            "idle_per_second": self.idle_per_second,
            "https_secs": self.https_secs, "dns_secs": self.dns_secs,
        })
    }
}

/// The example project without its WebAssembly, with `1k.txt`.
fn make_project(dir: &Path) -> PathBuf {
    let file = copy_examples(dir);
    let line = "Makiatto serves this line from every node of the cluster.\n";
    let text: String = line
        .repeat(1024 / line.len() + 1)
        .chars()
        .take(1024)
        .collect();
    std::fs::write(dir.join("site/1k.txt"), text).unwrap();
    file
}

fn ratio_row(rows: &mut Vec<(String, String)>, name: &str, on: Run, off: Run, unit: &str) {
    rows.push((
        format!("{name}: export on / off, rate (goal ≥ 0.95)"),
        format!(
            "{:.3} ({:.0} against {:.0} {unit})",
            on.rate / off.rate,
            on.rate,
            off.rate
        ),
    ));
    rows.push((
        format!("{name}: export on / off, CPU per request"),
        format!(
            "{:.3} ({:.2} against {:.2} µs)",
            on.cpu_us / off.cpu_us,
            on.cpu_us,
            off.cpu_us
        ),
    ));
}

fn main() {
    for tool in ["h2load", "dnsperf", "valgrind", "callgrind_control"] {
        assert!(
            have(tool),
            "{tool} is not installed: scripts/install-deps.sh"
        );
    }
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let down_secs: u64 = std::env::var("MAKIATTO_BENCH_DOWN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);

    let mut lab = Lab::new("o");
    let project = lab.cluster.dir.path().join("project");
    let file = make_project(&project);
    eprintln!("bringing up one node ({})", lab.cluster.name);
    let host = lab.up(1, &file, &["--no-ca"]).remove(0);
    let placement = Placement::from_env();
    if placement.pinned() {
        lab.cluster.restart_daemon(&host.node, &placement.server());
    }
    let client_ns = format!("mktel-{}-client", lab.cluster.name);
    lab.client_namespace(&client_ns, "oc");
    let queries = lab.cluster.dir.path().join("queries.txt");
    let mix: String = MIX.iter().fold(String::new(), |mut s, (n, t)| {
        let _ = writeln!(s, "{n} {t}");
        s
    });
    std::fs::write(&queries, mix).unwrap();
    let bench = Bench {
        file,
        node: host.node.clone(),
        netns: host.netns.clone(),
        addr: host.ipv4.clone(),
        client_ns,
        placement,
        queries,
        lab,
    };
    wait_until(Duration::from_secs(60), "the node serves 1k.txt", || {
        bench.serves_1k()
    });

    // The guide's step 1: the o11y peer and its collector.
    let state = bench.lab.cluster.state();
    let peer = WgPeer::add(&bench.lab.cluster, &state, "o11y", 14);
    let recording = std::env::var_os("MAKIATTO_BENCH_RECORDING_COLLECTOR").is_some();
    let collector = if recording {
        "recording (every span decoded into JSON)"
    } else {
        "sink (calls answered undecoded)"
    };
    let mut receiver = if recording {
        OtlpReceiver::start(&peer.ns, "0.0.0.0:4317", bench.lab.cluster.dir.path())
    } else {
        OtlpReceiver::start_sink(&peer.ns, "0.0.0.0:4317", bench.lab.cluster.dir.path())
    };
    // Pinned, the collector's machine (wireguard-go and the receiver) is
    // the load generator's CPU: the guide puts it on a machine of its own,
    // and the server's CPU stays the server's.
    if bench.placement.pinned() {
        for pid in peer.ns.pids() {
            let _ = Command::new("taskset")
                .args(["-a", "-c", "-p", makiatto_harness::placement::CLIENT_CPU])
                .arg(pid.to_string())
                .stdout(std::process::Stdio::null())
                .status();
        }
    }
    wait_until(
        Duration::from_secs(60),
        "the node finds the o11y peer",
        || bench.telemetry()["source"] == "peer o11y",
    );

    // Rounds: on and off alternate.
    let mut https: [Vec<Run>; 2] = [Vec::new(), Vec::new()];
    let mut dns: [Vec<Run>; 2] = [Vec::new(), Vec::new()];
    let rounds: usize = std::env::var("MAKIATTO_BENCH_ROUNDS")
        .ok()
        .map(|n| n.parse().expect("MAKIATTO_BENCH_ROUNDS is a whole number"))
        .unwrap_or(ROUNDS);
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [Export::On, Export::Off]
        } else {
            [Export::Off, Export::On]
        };
        for export in order {
            bench.set(export, 0.1);
            let i = usize::from(export == Export::Off);
            https[i].push(bench.https(export.label()));
            dns[i].push(bench.dns(export.label()));
        }
    }
    bench.set(Export::On, 0.1);
    wait_until(
        Duration::from_secs(60),
        "the receiver has the node's spans",
        || !receiver.of("span").is_empty(),
    );
    let exported = bench.telemetry();

    // The collector down, every trace kept.
    bench.set(Export::On, 1.0);
    receiver.stop();
    let pid = bench.pid();
    let rss_before = proc_kib(pid, "status", "VmRSS");
    let load = Load {
        targets: vec![Target {
            name: bench.node.clone(),
            addr: bench.addr.parse().expect("an IPv4 address"),
        }],
        domain: DOMAIN.to_owned(),
        path: "/1k.txt".to_owned(),
        rate: DOWN_RATE,
    }
    .start_in(&bench.client_ns);
    let started = Instant::now();
    let mut samples: Vec<Value> = Vec::new();
    while started.elapsed() < Duration::from_secs(down_secs) {
        let remaining = Duration::from_secs(down_secs).saturating_sub(started.elapsed());
        std::thread::sleep(remaining.min(Duration::from_secs(10)));
        let t = bench.telemetry();
        let sample = json!({
            "at_s": started.elapsed().as_secs(),
            "rss_kib": proc_kib(pid, "status", "VmRSS"),
            "spans": t["spans"],
            "log_records": t["log_records"],
        });
        eprintln!("collector down: {sample}");
        samples.push(sample);
    }
    let seconds = load.stop();
    let (ok, failed, wrong) = seconds.iter().fold((0, 0, 0), |(o, f, w), s| {
        (o + s.ok, f + s.failed, w + s.wrong)
    });
    let rss_max = samples
        .iter()
        .filter_map(|s| s["rss_kib"].as_u64())
        .max()
        .unwrap_or(0);
    let rss_end = samples
        .last()
        .and_then(|s| s["rss_kib"].as_u64())
        .unwrap_or(0);
    let queued_max = samples
        .iter()
        .filter_map(|s| s["spans"]["queued"].as_u64())
        .max()
        .unwrap_or(0);
    let down = bench.telemetry();
    // The collector back: export resumes by itself.
    let exported_before = down["spans"]["exported"].as_u64().unwrap_or(0);
    receiver.resume(&peer.ns);
    let back = Instant::now();
    wait_until(
        Duration::from_secs(300),
        "the node exports again once the collector is back",
        || bench.telemetry()["spans"]["exported"].as_u64().unwrap_or(0) > exported_before,
    );
    let resumed_s = back.elapsed().as_secs_f64();

    // Instructions per request, each setting, under callgrind.
    let dumps = bench.lab.cluster.dir.path().join("callgrind");
    let daemon = UnderCallgrind::restart(&bench.lab.cluster, &bench.node, &dumps, || {
        bench.serves_1k()
    });
    wait_until(
        Duration::from_secs(120),
        "the daemon under callgrind finds the o11y peer",
        || bench.telemetry()["source"] == "peer o11y",
    );
    let runs_through = COUNTED / MIX.len() as u32;
    let mut instructions = Vec::new();
    for export in [Export::On, Export::Off] {
        bench.set(export, 0.1);
        // The periodic work first (the metric export every interval, the
        // exporter's timers): counted per second with no load, then taken
        // out of the loaded counts in proportion to their time.
        let idle = daemon.idle(IDLE);
        let ((), h, h_took) = daemon.count_timed(|| bench.fixed_https());
        let (answered, d, d_took) = daemon.count_timed(|| bench.fixed_dns(runs_through));
        let counted = Counted {
            https: h as f64 / f64::from(COUNTED),
            dns: d as f64 / answered as f64,
            https_net: idle.net(h, h_took) / f64::from(COUNTED),
            dns_net: idle.net(d, d_took) / answered as f64,
            idle_per_second: idle.per_second,
            https_secs: h_took.as_secs_f64(),
            dns_secs: d_took.as_secs_f64(),
        };
        eprintln!("instructions, export {}: {counted:?}", export.label());
        instructions.push(counted);
    }
    drop(daemon);
    // The dumps, to read with callgrind_annotate (the cluster's directory
    // goes with the cluster).
    if let Some(keep) = std::env::var_os("MAKIATTO_BENCH_KEEP_DUMPS") {
        let keep = std::path::PathBuf::from(keep);
        std::fs::create_dir_all(&keep).unwrap();
        for dump in std::fs::read_dir(&dumps).unwrap().flatten() {
            std::fs::copy(dump.path(), keep.join(dump.file_name())).unwrap();
        }
        eprintln!("callgrind dumps kept in {}", keep.display());
    }

    let (h_on, h_off) = (best(&https[0]), best(&https[1]));
    let (d_on, d_off) = (best(&dns[0]), best(&dns[1]));
    let mut rows: Vec<(String, String)> = vec![
        ("load average at start".into(), loadavg.trim().to_owned()),
        ("placement".into(), bench.placement.label().to_owned()),
        ("collector".into(), collector.to_owned()),
        (
            "rounds".into(),
            format!("best of {rounds} alternating rounds of {SECONDS} s (and their medians)"),
        ),
    ];
    ratio_row(&mut rows, "HTTPS 1 KiB HTTP/1.1", h_on, h_off, "req/s");
    ratio_row(&mut rows, "DNS", d_on, d_off, "q/s");
    let (hm_on, hm_off) = (median(&https[0]), median(&https[1]));
    let (dm_on, dm_off) = (median(&dns[0]), median(&dns[1]));
    ratio_row(
        &mut rows,
        "HTTPS 1 KiB HTTP/1.1, medians",
        hm_on,
        hm_off,
        "req/s",
    );
    ratio_row(&mut rows, "DNS, medians", dm_on, dm_off, "q/s");
    let [on, off] = [instructions[0], instructions[1]];
    rows.push((
        "instructions per HTTPS request, on / off, periodic work out (goal ≤ 1.05)".into(),
        format!(
            "{:.3} ({:.0} against {:.0})",
            on.https_net / off.https_net,
            on.https_net,
            off.https_net
        ),
    ));
    rows.push((
        "instructions per DNS query, on / off, periodic work out (goal ≤ 1.05)".into(),
        format!(
            "{:.3} ({:.0} against {:.0})",
            on.dns_net / off.dns_net,
            on.dns_net,
            off.dns_net
        ),
    ));
    rows.push((
        "instructions per HTTPS request, on / off, everything counted".into(),
        format!(
            "{:.3} ({:.0} against {:.0}; {:.0} s and {:.0} s under callgrind)",
            on.https / off.https,
            on.https,
            off.https,
            on.https_secs,
            off.https_secs
        ),
    ));
    rows.push((
        "instructions per DNS query, on / off, everything counted".into(),
        format!(
            "{:.3} ({:.0} against {:.0}; {:.0} s and {:.0} s under callgrind)",
            on.dns / off.dns,
            on.dns,
            off.dns,
            on.dns_secs,
            off.dns_secs
        ),
    ));
    rows.push((
        "periodic work, instructions per second with no load, on; off".into(),
        format!("{:.0}; {:.0}", on.idle_per_second, off.idle_per_second),
    ));
    rows.push((
        "spans exported during the rounds".into(),
        format!(
            "{} (dropped {})",
            exported["spans"]["exported"], exported["spans"]["dropped"]
        ),
    ));
    rows.push((
        format!("collector down {down_secs} s, every trace kept: daemon RSS"),
        format!(
            "{:.1} MiB before, {:.1} MiB at most, {:.1} MiB at the end",
            rss_before as f64 / 1024.0,
            rss_max as f64 / 1024.0,
            rss_end as f64 / 1024.0
        ),
    ));
    rows.push((
        "collector down: spans queued at most, dropped".into(),
        format!("{queued_max} (bound 4096), {}", down["spans"]["dropped"]),
    ));
    rows.push((
        "collector down: the load's answers".into(),
        format!("{ok} ok, {failed} failed, {wrong} wrong"),
    ));
    rows.push((
        "collector back: the node exports again after".into(),
        format!("{resumed_s:.1} s"),
    ));
    let table: Vec<(&str, String)> = rows.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    print_table("telemetry: export on against export off", &table);
    print_json(
        "telemetry",
        json!({
            "placement": bench.placement.label(),
            "collector": collector,
            "https": {"on": {"rate": h_on.rate, "cpu_us": h_on.cpu_us}, "off": {"rate": h_off.rate, "cpu_us": h_off.cpu_us},
                      "median": {"on": {"rate": hm_on.rate, "cpu_us": hm_on.cpu_us}, "off": {"rate": hm_off.rate, "cpu_us": hm_off.cpu_us}}},
            "dns": {"on": {"rate": d_on.rate, "cpu_us": d_on.cpu_us}, "off": {"rate": d_off.rate, "cpu_us": d_off.cpu_us},
                    "median": {"on": {"rate": dm_on.rate, "cpu_us": dm_on.cpu_us}, "off": {"rate": dm_off.rate, "cpu_us": dm_off.cpu_us}}},
            "instructions": {"on": on.json(), "off": off.json()},
            "down": {"seconds": down_secs, "rss_kib_before": rss_before, "rss_kib_max": rss_max, "rss_kib_end": rss_end,
                     "spans_queued_max": queued_max, "spans": down["spans"], "log_records": down["log_records"],
                     "load": {"ok": ok, "failed": failed, "wrong": wrong}, "samples": samples},
            "resumed_s": resumed_s,
        }),
    );
}
