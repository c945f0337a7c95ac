//! `zones`: a node serving 10,000 domains of 10 records each (issue 25's
//! scale case): what the DNS server's zones cost to build and to hold,
//! and whether answering stays as fast.
//!
//! 1. One node (`maki local up --nodes 1 --no-ca`, the release daemon
//!    beside this binary) serving the example project (`example.test`).
//!    Its RSS, and dnsperf's rate on the example's query mix (best of
//!    three rounds of 10 s, `-c 4 -T 2`, from a namespace of its own on
//!    the cluster's bridge).
//! 2. The project grows by 10,000 domains (`z00000.test` …), each with 10
//!    records (TXT at the apex, `_dmarc` and two more names, MX, A and
//!    AAAA for `mail`, A for `ftp`, CNAME `blog`, CAA) and a one-file site.
//!    `maki sync` is timed, then until the node answers the last domain's
//!    last record; the node's log gives the zones' compile time.
//! 3. The same rounds again: the example's mix (the same names, now among
//!    10,001 zones) and a mix over ten of the new domains. RSS after.
//! 4. One record of one domain changed, `maki sync`, timed until the new
//!    value is answered (the zones compiled again).
//!
//! Goals (issue 25): reported with their command: zone compile time, DNS
//! memory, QPS unchanged (the rate with 10,001 zones ≥ 0.95 × with one).
//! `MAKIATTO_BENCH_DOMAINS=N` changes the 10,000.
//! Needs root, dnsperf and dig. Build first:
//! `cargo build --release -p makiatto -p makiatto-cli -p makiatto-benches --bins`
//! then `target/release/zones`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark support: a failure is a panic that fails the run

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use makiatto_benches::measure::{print_json, print_table};
use makiatto_benches::reports;
use makiatto_harness::cpu::{proc_kib, settle};
use makiatto_harness::netns::{daemon_pid, in_namespace};
use makiatto_harness::{Lab, Wait, copy_examples, have, stdout};
use serde_json::json;

const SECONDS: u32 = 10;
const ROUNDS: usize = 3;

/// The example's mix (as the `dns` bench asks it).
const EXAMPLE_MIX: [(&str, &str); 10] = makiatto_harness::EXAMPLE_DNS_MIX;

/// One domain's ten records.
fn records(i: usize, k1: &str) -> String {
    let d = format!("z{i:05}.test");
    format!(
        "[[domain]]\nname = \"{d}\"\npath = \"./tiny\"\n\n\
         [[domain.records]]\ntype = \"TXT\"\nname = \"@\"\nvalue = \"v=spf1 -all\"\n\n\
         [[domain.records]]\ntype = \"TXT\"\nname = \"_dmarc\"\nvalue = \"v=DMARC1; p=reject\"\n\n\
         [[domain.records]]\ntype = \"TXT\"\nname = \"k1\"\nvalue = \"{k1}\"\n\n\
         [[domain.records]]\ntype = \"TXT\"\nname = \"k2\"\nvalue = \"site {i}\"\n\n\
         [[domain.records]]\ntype = \"MX\"\nname = \"@\"\nvalue = \"mail.{d}\"\npriority = 10\n\n\
         [[domain.records]]\ntype = \"A\"\nname = \"mail\"\nvalue = \"203.0.113.{}\"\n\n\
         [[domain.records]]\ntype = \"AAAA\"\nname = \"mail\"\nvalue = \"2001:db8::{:x}\"\n\n\
         [[domain.records]]\ntype = \"A\"\nname = \"ftp\"\nvalue = \"203.0.113.{}\"\n\n\
         [[domain.records]]\ntype = \"CNAME\"\nname = \"blog\"\nvalue = \"{d}\"\n\n\
         [[domain.records]]\ntype = \"CAA\"\nname = \"@\"\nvalue = \"0 issue \\\"letsencrypt.org\\\"\"\n\n",
        100 + i % 100,
        i + 1,
        150 + i % 100,
    )
}

/// `dig @server name type +short` from the client's namespace.
fn dig_short(ns: &str, server: &str, name: &str, rtype: &str) -> String {
    let mut cmd = in_namespace(ns, &[], &["dig", "+norec", "+tries=1", "+time=2", "+short"]);
    cmd.arg(format!("@{server}")).args([name, rtype]);
    String::from_utf8_lossy(&cmd.output().expect("dig runs").stdout).into_owned()
}

/// dnsperf's best rate of [`ROUNDS`] over `queries`.
fn best_rate(ns: &str, server: &str, queries: &Path) -> (f64, String) {
    let mut best = (0.0, String::new());
    for _ in 0..ROUNDS {
        let mut cmd = in_namespace(ns, &[], &["dnsperf"]);
        cmd.args(["-s", server, "-d"]).arg(queries).args([
            "-c",
            "4",
            "-T",
            "2",
            "-l",
            &SECONDS.to_string(),
        ]);
        let out = stdout(&mut cmd);
        let r = reports::Dnsperf::parse(&out);
        if r.qps > best.0 {
            best = (r.qps, r.rcodes);
        }
    }
    best
}

fn write_queries(path: &Path, mix: &[(String, String)]) {
    let mut text = String::new();
    for (name, rtype) in mix {
        writeln!(text, "{name} {rtype}").unwrap();
    }
    std::fs::write(path, text).unwrap();
}

/// The `compile_ms` of the last "DNS zones compiled" line of `log` that
/// counts `zones` zones.
fn compile_ms(log: &Path, zones: usize) -> Option<f64> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .filter(|l| l.contains("DNS zones compiled") && l.contains(&format!("zones={zones} ")))
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("compile_ms="))
                .and_then(|v| v.parse().ok())
        })
}

/// `maki sync --file FILE` with `MAKIATTO_TIMINGS=1`: its phases go to
/// standard error.
fn sync(lab: &Lab, file: &str) {
    let out = lab.cluster.ok_output(&["sync", "--file", file]);
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        if line.starts_with("timing:") {
            eprintln!("{line}");
        }
    }
}

fn main() {
    for tool in ["dnsperf", "dig"] {
        assert!(have(tool), "{tool} is missing: run scripts/install-deps.sh");
    }
    let domains: usize = std::env::var("MAKIATTO_BENCH_DOMAINS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut lab = Lab::new("z");
    let name = lab.cluster.name.clone();
    let project = lab.cluster.dir.path().join("project");
    let file = copy_examples(&project);
    let base = std::fs::read_to_string(&file).unwrap();
    std::fs::create_dir_all(project.join("tiny")).unwrap();
    std::fs::write(project.join("tiny/index.html"), "<h1>hello</h1>\n").unwrap();

    eprintln!("bringing up one node ({name})");
    let node = lab.up(1, &file, &["--no-ca"]).remove(0);
    let client_ns = format!("mkz-{name}-client");
    lab.client_namespace(&client_ns, "zc");
    let addr = node.ipv4.clone();
    Wait::up_to(Duration::from_secs(30)).until("the node serves example.test", || {
        dig_short(&client_ns, &addr, "_dmarc.example.test", "TXT").contains("DMARC1")
    });
    let pid = daemon_pid(&node.netns).expect("the node's `makiatto run` process");
    let rss = || proc_kib(pid, "status", "VmRSS");

    let dir = lab.cluster.dir.path();
    let example_queries = dir.join("example-mix.txt");
    let example_mix: Vec<(String, String)> = EXAMPLE_MIX
        .iter()
        .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
        .collect();
    write_queries(&example_queries, &example_mix);
    let rss_before = rss();
    let (rate_before, rcodes_before) = best_rate(&client_ns, &addr, &example_queries);
    eprintln!("one zone: {rate_before:.0} q/s ({rcodes_before}), RSS {rss_before} KiB");

    // The project grows.
    let mut grown = base.clone();
    for i in 0..domains {
        grown.push('\n');
        grown.push_str(&records(i, "first"));
    }
    std::fs::write(&file, &grown).unwrap();
    let file_arg = file.to_str().unwrap();
    let last = format!("k2.z{:05}.test", domains - 1);
    // `MAKIATTO_BENCH_PERF=FILE`: a profile of the whole machine over
    // this sync (`perf report -i FILE`).
    let perf = std::env::var_os("MAKIATTO_BENCH_PERF").map(|out| {
        let perf = std::process::Command::new("perf")
            .args(["record", "-a", "-g", "-F", "499", "-o"])
            .arg(out)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("perf runs");
        std::thread::sleep(Duration::from_millis(500));
        perf
    });
    let start = Instant::now();
    sync(&lab, file_arg);
    let sync_took = start.elapsed();
    eprintln!("maki sync of {domains} more domains: {sync_took:?}");
    Wait::up_to(Duration::from_secs(600))
        .every(Duration::from_millis(20))
        .until("the node answers the last domain", || {
            dig_short(&client_ns, &addr, &last, "TXT").contains("site")
        });
    let answered_took = start.elapsed();
    if let Some(mut perf) = perf {
        let _ = std::process::Command::new("kill")
            .args(["-INT", &perf.id().to_string()])
            .status();
        let _ = perf.wait();
    }
    // What the node still does after it answers is not charged to the
    // rates below.
    let quiet_after = settle(Duration::from_secs(120));
    let log = lab.cluster.daemon_log(&node.node);
    let compile_all = compile_ms(&log, domains + 1);
    let rss_after = rss();
    let (rate_after, rcodes_after) = best_rate(&client_ns, &addr, &example_queries);
    let big_queries = dir.join("big-mix.txt");
    let big_mix: Vec<(String, String)> = (0..10)
        .map(|k| {
            let d = format!("z{:05}.test", (k * (domains / 10) + 7) % domains);
            let (prefix, rtype) = [
                ("", "A"),
                ("", "TXT"),
                ("_dmarc.", "TXT"),
                ("", "MX"),
                ("mail.", "A"),
                ("mail.", "AAAA"),
                ("blog.", "A"),
                ("nope.", "A"),
                ("", "SOA"),
                ("ftp.", "A"),
            ][k];
            (format!("{prefix}{d}"), rtype.to_owned())
        })
        .collect();
    write_queries(&big_queries, &big_mix);
    let (rate_big, rcodes_big) = best_rate(&client_ns, &addr, &big_queries);
    eprintln!(
        "{} zones: example mix {rate_after:.0} q/s ({rcodes_after}), new domains {rate_big:.0} q/s ({rcodes_big}), RSS {rss_after} KiB",
        domains + 1
    );

    // One record of one domain changes.
    let changed = grown.replacen(
        &records(domains / 2, "first"),
        &records(domains / 2, "second"),
        1,
    );
    std::fs::write(&file, &changed).unwrap();
    let k1 = format!("k1.z{:05}.test", domains / 2);
    let start = Instant::now();
    sync(&lab, file_arg);
    let one_sync = start.elapsed();
    Wait::up_to(Duration::from_secs(120))
        .every(Duration::from_millis(5))
        .until("the node answers the changed record", || {
            dig_short(&client_ns, &addr, &k1, "TXT").contains("second")
        });
    let one_took = start.elapsed();
    let compile_one = compile_ms(&log, domains + 1);
    let rss_end = rss();

    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1e3);
    let opt_ms = |v: Option<f64>| v.map_or("not logged".to_owned(), |v| format!("{v:.0} ms"));
    let title = format!("zones: {domains} domains of 10 records on one node");
    let rows: Vec<(&str, String)> = vec![
        ("load average at start", loadavg.trim().to_owned()),
        ("maki sync adding the domains", ms(sync_took)),
        ("  until the node answered the last one", ms(answered_took)),
        (
            "  the zones' compile, as the node logged it",
            opt_ms(compile_all),
        ),
        ("  then until the machine was quiet", ms(quiet_after)),
        (
            "daemon RSS: one zone; all; after the change",
            format!(
                "{:.1} MiB; {:.1} MiB; {:.1} MiB",
                rss_before as f64 / 1024.0,
                rss_after as f64 / 1024.0,
                rss_end as f64 / 1024.0
            ),
        ),
        (
            "  per domain",
            format!(
                "{:.1} KiB",
                (rss_after as f64 - rss_before as f64) / domains as f64
            ),
        ),
        (
            "example mix: one zone; among all (ratio, goal ≥ 0.95)",
            format!(
                "{rate_before:.0} q/s; {rate_after:.0} q/s ({:.3})",
                rate_after / rate_before
            ),
        ),
        (
            "a mix over ten of the new domains (ratio to one zone)",
            format!("{rate_big:.0} q/s ({:.3})", rate_big / rate_before),
        ),
        (
            "one record changed: maki sync; until answered",
            format!("{}; {}", ms(one_sync), ms(one_took)),
        ),
        ("  the zones' compile again", opt_ms(compile_one)),
    ];
    print_table(&title, &rows);
    print_json(
        "zones",
        json!({
            "domains": domains,
            "sync_ms": sync_took.as_millis() as u64,
            "answered_ms": answered_took.as_millis() as u64,
            "quiet_after_ms": quiet_after.as_millis() as u64,
            "compile_ms": compile_all,
            "rss_kib": {"before": rss_before, "after": rss_after, "end": rss_end},
            "qps": {"one_zone": rate_before, "all_example_mix": rate_after, "all_new_mix": rate_big},
            "rcodes": {"one_zone": rcodes_before, "all_example_mix": rcodes_after, "all_new_mix": rcodes_big},
            "one_change": {"sync_ms": one_sync.as_millis() as u64, "answered_ms": one_took.as_millis() as u64, "compile_ms": compile_one},
        }),
    );
}
