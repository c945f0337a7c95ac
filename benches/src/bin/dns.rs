//! `dns`: the node daemon's authoritative DNS server against Knot DNS
//! (`knotd`), on this machine, reported as ratios.
//!
//! 1. `maki local up --nodes 1 --sync examples/makiatto.toml` (the release
//!    daemon beside this binary, the DB-IP database from
//!    `~/.cache/makiatto/geoip` for EDNS Client Subnet lookups): one node
//!    serving `example.test` on its host address, port 53.
//! 2. Knot in a network namespace of its own on the cluster's bridge
//!    (203.0.113.16k+11), serving a static zone file made from our node's
//!    answers (SOA, NS and glue, apex A/AAAA, MX, TXT, `_dmarc` TXT, `mail`
//!    A, CAA, `www` A/AAAA), with `udp-workers: 2` (our daemon runs two UDP
//!    threads on two cores) and `edns-client-subnet: on`.
//! 3. dnsperf in a third namespace on the bridge (203.0.113.16k+12), with a
//!    10-query mix (nine names that exist, one NXDOMAIN), `-c 4 -T 2 -l 10`,
//!    plain and with an EDNS Client Subnet option (81.2.69.0/24, London in
//!    DB-IP). Rounds alternate (ours, Knot, ours, Knot, …); best of three
//!    per server and variant.
//! 4. Server CPU per query: utime + stime of the serving process (all its
//!    threads, `/proc/PID/stat`) before and after each run, over the
//!    queries dnsperf completed.
//! 5. Latency at a fixed rate (`-Q 20000 -l 5 -v`): dnsperf's average, and
//!    p50/p99 from the per-query latencies `-v` prints (this dnsperf, 2.10,
//!    has no histogram option).
//! 6. Every query of the mix is asked of both servers with `dig` first;
//!    differences and response sizes are printed (rcode or answer
//!    differences matter, the rest is noted).
//!
//! `MAKIATTO_BENCH_PINNED=1`: both servers on CPU 0 with one worker (our
//! daemon restarted under `taskset -c 0`: one UDP thread; Knot with
//! `udp-workers: 1`), dnsperf (`-T 1`) on CPU 1
//! (`makiatto_harness::Placement`).
//!
//! Each run is also logged on stderr: dnsperf's own CPU per query, how
//! busy the machine was and how much of that was neither the server nor
//! dnsperf ("others": another build on the same cores spoils the run), and
//! the server's busiest threads.
//!
//! Goals (issue 7): ≥ 1.0 × Knot's QPS and ≤ 1.0 × Knot's CPU per query.
//! Needs root, knot, dnsperf and dig (`apt-get install knot dnsperf
//! bind9-dnsutils`). dnsperf shares the two cores with the server it drives,
//! so QPS also depends on what the client spends per answer; CPU per query
//! is the fairer figure.
//! Build first:
//! `cargo build --release -p makiatto -p makiatto-cli -p makiatto-benches --bins`
//! then `target/release/dns`. Everything it made (namespaces, knotd, the
//! cluster) is removed when it ends, also on a panic.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark support: a failure is a panic that fails the run

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use makiatto_benches::measure::{fastest_and_cheapest, print_json, print_table};
use makiatto_benches::reports;
use makiatto_harness::cpu::{Sample, proc_kib};
use makiatto_harness::netns::{daemon_pid, in_namespace};
use makiatto_harness::{Lab, Placement, example_project, have, stdout, wait_until};
use serde_json::json;

/// The query mix: nine names that exist, one that does not.
const MIX: [(&str, &str); 10] = makiatto_harness::EXAMPLE_DNS_MIX;
/// Asked of our node to build Knot's zone, beside the mix.
const ZONE_EXTRA: [(&str, &str); 2] = [("example.test", "CAA"), ("www.example.test", "AAAA")];
/// EDNS Client Subnet option for dnsperf `-E 8:…`: family 1, source /24,
/// scope 0, 81.2.69 (London in DB-IP).
const ECS_HEX: &str = "00011800510245";
const ECS_DIG: &str = "81.2.69.0/24";
const SECONDS: u32 = 10;
const ROUNDS: usize = 3;
const FIXED_QPS: u32 = 20_000;
const FIXED_SECONDS: u32 = 5;

/// One dig answer, reduced to what the comparison looks at.
#[derive(Debug, Default, PartialEq)]
struct Answer {
    status: String,
    aa: bool,
    answer: BTreeSet<String>,
    authority: BTreeSet<String>,
    additional: BTreeSet<String>,
    ecs: Option<String>,
    /// The response's size in bytes.
    size: usize,
}

fn dig(client_ns: &str, server: &str, name: &str, rtype: &str, ecs: bool) -> Answer {
    let mut cmd = in_namespace(client_ns, &[], &["dig", "+norec", "+tries=1"]);
    cmd.args(["+time=2", "+nocmd", "+noquestion"])
        .arg(format!("@{server}"))
        .args([name, rtype]);
    // As dnsperf asks: no EDNS, or EDNS with only the client subnet.
    if ecs {
        cmd.args(["+nocookie", &format!("+subnet={ECS_DIG}")]);
    } else {
        cmd.arg("+noedns");
    }
    let out = String::from_utf8_lossy(&cmd.output().expect("dig runs").stdout).into_owned();
    let mut a = Answer::default();
    let mut section = 0;
    for line in out.lines() {
        if let Some(n) = line.strip_prefix(";; MSG SIZE  rcvd: ") {
            a.size = n.trim().parse().unwrap_or(0);
        } else if let Some(rest) = line.split_once("status: ") {
            a.status = rest.1.split(',').next().unwrap_or("").to_owned();
        } else if let Some(flags) = line.strip_prefix(";; flags:") {
            a.aa = flags
                .split(';')
                .next()
                .is_some_and(|f| f.split_whitespace().any(|x| x == "aa"));
        } else if let Some(s) = line.strip_prefix("; CLIENT-SUBNET: ") {
            a.ecs = Some(s.trim().to_owned());
        } else if line.starts_with(";; ANSWER SECTION") {
            section = 1;
        } else if line.starts_with(";; AUTHORITY SECTION") {
            section = 2;
        } else if line.starts_with(";; ADDITIONAL SECTION") {
            section = 3;
        } else if !line.trim().is_empty() && !line.starts_with(';') {
            let rr = line.split_whitespace().collect::<Vec<_>>().join(" ");
            match section {
                1 => a.answer.insert(rr),
                2 => a.authority.insert(rr),
                3 => a.additional.insert(rr),
                _ => false,
            };
        }
    }
    a
}

/// What dnsperf reported for one run, with the server's CPU over it.
#[derive(Debug, Clone, Default)]
struct Run {
    qps: f64,
    completed: u64,
    lost: u64,
    avg_latency_us: f64,
    rcodes: String,
    response_bytes: f64,
    user_us: f64,
    sys_us: f64,
    client_us: f64,
    machine_busy: f64,
    /// Share of the machine used by neither the server nor dnsperf.
    others: f64,
    threads: String,
    latencies_us: Vec<f64>,
}

impl Run {
    fn cpu_us(&self) -> f64 {
        self.user_us + self.sys_us
    }
}

struct Target<'a> {
    label: &'a str,
    addr: &'a str,
    pid: u32,
}

fn dnsperf(
    client: &Client,
    queries: &Path,
    t: &Target<'_>,
    ecs: bool,
    fixed_qps: Option<u32>,
) -> Run {
    let mut cmd = in_namespace(&client.ns, &client.placement.client(), &["dnsperf"]);
    cmd.args(["-s", t.addr, "-d"]).arg(queries).args([
        "-c",
        "4",
        "-T",
        &client.placement.workers().to_string(),
    ]);
    if ecs {
        cmd.args(["-E", &format!("8:{ECS_HEX}")]);
    }
    match fixed_qps {
        Some(q) => cmd.args(["-l", &FIXED_SECONDS.to_string(), "-Q", &q.to_string(), "-v"]),
        None => cmd.args(["-l", &SECONDS.to_string()]),
    };
    let before = Sample::take(&[t.pid]);
    let out = stdout(&mut cmd);
    let u = Sample::take(&[t.pid]).since(&before);
    let report = reports::Dnsperf::parse(&out);
    let per_query = |seconds: f64| seconds * 1e6 / report.completed as f64;
    let r = Run {
        qps: report.qps,
        completed: report.completed,
        lost: report.lost,
        avg_latency_us: report.avg_latency_us,
        rcodes: report.rcodes,
        response_bytes: report.response_bytes,
        user_us: per_query(u.user_s),
        sys_us: per_query(u.sys_s),
        client_us: per_query(u.client_s),
        machine_busy: u.machine_busy,
        others: u.others,
        threads: u.threads,
        latencies_us: report.latencies_us,
    };
    eprintln!(
        "{:>5} {:<5}{}: {:>9.0} qps, {:>5.2} µs/query (user {:.2} + sys {:.2}), dnsperf {:.2} µs/query, {} lost, avg latency {:.0} µs, machine busy {:.0}% (others {:.0}%) [{}]",
        t.label,
        if ecs { "ECS" } else { "plain" },
        fixed_qps.map_or(String::new(), |q| format!(" at {q} qps")),
        r.qps,
        r.cpu_us(),
        r.user_us,
        r.sys_us,
        r.client_us,
        r.lost,
        r.avg_latency_us,
        r.machine_busy * 100.0,
        r.others * 100.0,
        r.threads
    );
    r
}

/// dnsperf's namespace and where it runs.
struct Client {
    ns: String,
    placement: Placement,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn main() {
    for tool in ["knotd", "dnsperf", "dig"] {
        assert!(
            have(tool),
            "{tool} is not installed: apt-get install knot dnsperf bind9-dnsutils"
        );
    }
    let project = example_project();
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let mut lab = Lab::new("d");
    let name = lab.cluster.name.clone();
    eprintln!("bringing up one node ({name})");
    let node = lab.up(1, &project, &[]).remove(0);
    // `MAKIATTO_BENCH_PINNED=1`: both servers on CPU 0 with one worker,
    // dnsperf (one thread) on CPU 1.
    let placement = Placement::from_env();
    if placement.pinned() {
        lab.cluster.restart_daemon(&node.node, &placement.server());
    }
    let (node_ns, ours_addr) = (node.netns, node.ipv4);
    let knot_ns = format!("mkdns-{name}-knot");
    let client_ns = format!("mkdns-{name}-client");
    let knot_addr = lab.anchor_namespace(&knot_ns, "dk");
    lab.client_namespace(&client_ns, "dc");
    let client = Client {
        ns: client_ns.clone(),
        placement,
    };

    // Our node serves the whole project once the last record answers.
    wait_until(
        Duration::from_secs(30),
        "the node serves example.test",
        || {
            let a = dig(&client_ns, &ours_addr, "_dmarc.example.test", "TXT", false);
            a.status == "NOERROR" && !a.answer.is_empty()
        },
    );

    // Knot's zone: our node's answers, as a master file.
    let mut rrs = BTreeSet::new();
    for (name, rtype) in MIX.iter().chain(ZONE_EXTRA.iter()) {
        let a = dig(&client_ns, &ours_addr, name, rtype, false);
        rrs.extend(a.answer);
        if *rtype == "NS" {
            rrs.extend(a.additional);
        }
    }
    let soa = rrs
        .iter()
        .find(|r| r.split_whitespace().nth(3) == Some("SOA"))
        .expect("an SOA record")
        .clone();
    let mut zone = format!("{soa}\n");
    for rr in rrs.iter().filter(|r| **r != soa) {
        let _ = writeln!(zone, "{rr}");
    }
    let kdir = lab.cluster.dir.path().join("knot");
    std::fs::create_dir_all(kdir.join("run")).expect("knot dir");
    std::fs::create_dir_all(kdir.join("db")).expect("knot dir");
    std::fs::write(kdir.join("example.test.zone"), &zone).expect("zone file");
    let kd = kdir.display();
    let workers = placement.workers();
    let conf = format!(
        "server:\n    rundir: \"{kd}/run\"\n    pidfile: \"{kd}/run/knot.pid\"\n    user: root:root\n    \
         listen: {knot_addr}@53\n    udp-workers: {workers}\n    tcp-workers: 1\n    background-workers: 1\n    \
         edns-client-subnet: on\n\
         database:\n    storage: \"{kd}/db\"\n\
         log:\n  - target: \"{kd}/knot.log\"\n    any: info\n\
         template:\n  - id: default\n    storage: \"{kd}\"\n    zonefile-sync: -1\n    \
         zonefile-load: whole\n    journal-content: none\n\
         zone:\n  - domain: example.test\n    file: \"{kd}/example.test.zone\"\n"
    );
    let conf_path = kdir.join("knot.conf");
    std::fs::write(&conf_path, &conf).expect("knot.conf");
    let conf_arg = conf_path.to_str().expect("utf-8");
    let mut argv = placement.server();
    argv.extend(["knotd", "-c", conf_arg]);
    let knot_pid = lab.spawn_anchor(&knot_ns, &argv);
    wait_until(Duration::from_secs(20), "knotd answers", || {
        let a = dig(&client_ns, &knot_addr, "example.test", "SOA", false);
        a.status == "NOERROR" && a.aa
    });
    let ours_pid = daemon_pid(&node_ns).expect("the node's `makiatto run` process");

    // The same questions of both servers.
    let mut differences = Vec::new();
    let mut serious = 0;
    let mut sizes = Vec::new();
    for ecs in [false, true] {
        for (name, rtype) in MIX {
            let o = dig(&client_ns, &ours_addr, name, rtype, ecs);
            let k = dig(&client_ns, &knot_addr, name, rtype, ecs);
            let q = format!("{name} {rtype}{}", if ecs { " +ECS" } else { "" });
            sizes.push(json!({ "query": q, "ours": o.size, "knot": k.size }));
            eprintln!("size of {q}: ours {} bytes, knot {} bytes", o.size, k.size);
            if o.status != k.status || o.aa != k.aa || o.answer != k.answer {
                serious += 1;
                differences.push(format!(
                    "{q}: ours {} aa={} {:?}, knot {} aa={} {:?}",
                    o.status, o.aa, o.answer, k.status, k.aa, k.answer
                ));
            }
            for (what, a, b) in [
                ("authority", &o.authority, &k.authority),
                ("additional", &o.additional, &k.additional),
            ] {
                if a != b {
                    differences.push(format!("{q}: {what} ours {a:?}, knot {b:?}"));
                }
            }
            if o.ecs != k.ecs {
                differences.push(format!(
                    "{q}: ECS ours {:?}, knot {:?}",
                    o.ecs.as_deref().unwrap_or("none"),
                    k.ecs.as_deref().unwrap_or("none")
                ));
            }
        }
    }
    for d in &differences {
        eprintln!("differs: {d}");
    }

    let queries = lab.cluster.dir.path().join("queries.txt");
    let mix: String = MIX.iter().map(|(n, t)| format!("{n} {t}\n")).collect();
    std::fs::write(&queries, mix).expect("query file");
    let ours = Target {
        label: "ours",
        addr: &ours_addr,
        pid: ours_pid,
    };
    let knot = Target {
        label: "knot",
        addr: &knot_addr,
        pid: knot_pid,
    };

    // Throughput and CPU: alternating rounds, best of ROUNDS.
    let mut best = Vec::new(); // [(ours, knot)] for plain, ECS
    let mut ranges = Vec::new(); // the same, (lowest, highest) QPS
    for ecs in [false, true] {
        let mut runs: [Vec<Run>; 2] = [Vec::new(), Vec::new()];
        for _ in 0..ROUNDS {
            runs[0].push(dnsperf(&client, &queries, &ours, ecs, None));
            runs[1].push(dnsperf(&client, &queries, &knot, ecs, None));
        }
        let pick = |rs: &[Run]| {
            let (fastest, cheapest) = fastest_and_cheapest(rs, |r| r.qps, Run::cpu_us);
            Run {
                user_us: cheapest.user_us,
                sys_us: cheapest.sys_us,
                ..fastest.clone()
            }
        };
        let range = |rs: &[Run]| {
            let lo = rs.iter().map(|r| r.qps).fold(f64::MAX, f64::min);
            let hi = rs.iter().map(|r| r.qps).fold(0.0, f64::max);
            (lo, hi)
        };
        ranges.push((range(&runs[0]), range(&runs[1])));
        best.push((pick(&runs[0]), pick(&runs[1])));
    }

    // Latency at a fixed rate.
    let mut fixed = Vec::new();
    for ecs in [false, true] {
        let mut o = dnsperf(&client, &queries, &ours, ecs, Some(FIXED_QPS));
        let mut k = dnsperf(&client, &queries, &knot, ecs, Some(FIXED_QPS));
        o.latencies_us.sort_by(f64::total_cmp);
        k.latencies_us.sort_by(f64::total_cmp);
        fixed.push((o, k));
    }

    let rss = |pid: u32| {
        (
            proc_kib(pid, "status", "VmRSS"),
            proc_kib(pid, "status", "VmHWM"),
        )
    };
    let (ours_rss, ours_hwm) = rss(ours_pid);
    let (knot_rss, knot_hwm) = rss(knot_pid);

    let mut rows: Vec<(String, String)> = vec![
        ("load average at start".into(), loadavg.trim().to_owned()),
        (
            "dnsperf".into(),
            format!(
                "-c 4 -T {} -l {SECONDS}, 10-query mix, best of {ROUNDS} alternating rounds",
                placement.workers()
            ),
        ),
        ("placement".into(), placement.label().to_owned()),
    ];
    let mut json_variants = serde_json::Map::new();
    for (i, (o, k)) in best.iter().enumerate() {
        let v = if i == 0 { "plain" } else { "ECS" };
        let qps_ratio = o.qps / k.qps;
        let cpu_ratio = o.cpu_us() / k.cpu_us();
        rows.push((format!("{v}: QPS ours"), format!("{:.0}", o.qps)));
        rows.push((format!("{v}: QPS Knot (anchor)"), format!("{:.0}", k.qps)));
        rows.push((
            format!("{v}: QPS ratio (goal ≥ 1.0)"),
            format!("{qps_ratio:.2}"),
        ));
        let ((olo, ohi), (klo, khi)) = ranges[i];
        rows.push((
            format!("{v}: QPS range of the {ROUNDS} rounds, ours / Knot"),
            format!("{olo:.0}–{ohi:.0} / {klo:.0}–{khi:.0}"),
        ));
        for (who, r) in [("ours", o), ("Knot", k)] {
            rows.push((
                format!("{v}: server CPU per query, {who}"),
                format!(
                    "{:.2} µs (user {:.2} + sys {:.2})",
                    r.cpu_us(),
                    r.user_us,
                    r.sys_us
                ),
            ));
        }
        rows.push((
            format!("{v}: CPU per query ratio (goal ≤ 1.0)"),
            format!("{cpu_ratio:.2}"),
        ));
        rows.push((
            format!("{v}: dnsperf CPU per query, with ours / Knot"),
            format!("{:.2} µs / {:.2} µs", o.client_us, k.client_us),
        ));
        rows.push((
            format!("{v}: machine busy (other processes), with ours / Knot"),
            format!(
                "{:.0}% ({:.0}%) / {:.0}% ({:.0}%)",
                o.machine_busy * 100.0,
                o.others * 100.0,
                k.machine_busy * 100.0,
                k.others * 100.0
            ),
        ));
        rows.push((
            format!("{v}: avg latency at full load, ours / Knot"),
            format!("{:.0} µs / {:.0} µs", o.avg_latency_us, k.avg_latency_us),
        ));
        rows.push((
            format!("{v}: response size, ours / Knot"),
            format!("{:.1} / {:.1} bytes", o.response_bytes, k.response_bytes),
        ));
        rows.push((format!("{v}: rcodes, ours"), o.rcodes.clone()));
        rows.push((format!("{v}: rcodes, Knot"), k.rcodes.clone()));
        let (fo, fk) = &fixed[i];
        let lat = |r: &Run| {
            format!(
                "avg {:.0}, p50 {:.0}, p99 {:.0} µs ({:.0} qps, {} lost, {:.1} µs CPU/query, others {:.0}%)",
                r.avg_latency_us,
                percentile(&r.latencies_us, 0.50),
                percentile(&r.latencies_us, 0.99),
                r.qps,
                r.lost,
                r.cpu_us(),
                r.others * 100.0
            )
        };
        rows.push((format!("{v}: at {FIXED_QPS} qps, ours"), lat(fo)));
        rows.push((format!("{v}: at {FIXED_QPS} qps, Knot"), lat(fk)));
        let run_json = |r: &Run| {
            json!({
                "qps": r.qps,
                "completed": r.completed,
                "lost": r.lost,
                "cpu_us_per_query": r.cpu_us(),
                "user_us_per_query": r.user_us,
                "sys_us_per_query": r.sys_us,
                "dnsperf_us_per_query": r.client_us,
                "machine_busy": r.machine_busy,
                "others_busy": r.others,
                "avg_latency_us": r.avg_latency_us,
                "response_bytes": r.response_bytes,
                "rcodes": r.rcodes,
            })
        };
        let fixed_json = |r: &Run| {
            json!({
                "qps": r.qps,
                "lost": r.lost,
                "avg_latency_us": r.avg_latency_us,
                "p50_us": percentile(&r.latencies_us, 0.50),
                "p99_us": percentile(&r.latencies_us, 0.99),
                "cpu_us_per_query": r.cpu_us(),
                "others_busy": r.others,
            })
        };
        json_variants.insert(
            v.to_lowercase(),
            json!({
                "ours": run_json(o),
                "knot": run_json(k),
                "qps_ratio": qps_ratio,
                "cpu_ratio": cpu_ratio,
                "fixed_rate": { "qps": FIXED_QPS, "ours": fixed_json(fo), "knot": fixed_json(fk) },
            }),
        );
    }
    rows.push((
        "RSS ours (makiatto run), now / peak".into(),
        format!(
            "{:.1} / {:.1} MiB",
            ours_rss as f64 / 1024.0,
            ours_hwm as f64 / 1024.0
        ),
    ));
    rows.push((
        "RSS Knot (knotd), now / peak".into(),
        format!(
            "{:.1} / {:.1} MiB",
            knot_rss as f64 / 1024.0,
            knot_hwm as f64 / 1024.0
        ),
    ));
    rows.push((
        "answers differing from Knot's".into(),
        format!(
            "{} (rcode or answer section: {serious}); listed on stderr",
            differences.len()
        ),
    ));
    let rows_ref: Vec<(&str, String)> = rows.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    print_table(
        "dns: makiatto vs Knot 3.2 (1 node, 2 UDP workers each)",
        &rows_ref,
    );
    let mut fields = json!({
        "rss_kib": { "ours": ours_rss, "knot": knot_rss },
        "peak_rss_kib": { "ours": ours_hwm, "knot": knot_hwm },
        "differences": differences,
        "serious_differences": serious,
        "response_sizes": sizes,
        "seconds": SECONDS,
        "rounds": ROUNDS,
        "pinned": placement.pinned(),
    });
    if let Some(m) = fields.as_object_mut() {
        m.extend(json_variants);
    }
    print_json("dns", fields);
    drop(lab);
}
