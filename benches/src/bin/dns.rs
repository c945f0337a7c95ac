//! `dns`: the node daemon's authoritative DNS server against Knot DNS
//! (`knotd`), on this machine, reported as ratios.
//!
//! 1. `maki local up --nodes 1 --sync examples/makiatto.toml` (the release
//!    daemon beside this binary, the DB-IP database from
//!    `~/.cache/makiatto/geoip` for EDNS Client Subnet lookups): one node
//!    serving `example.test` on its host address, port 53.
//! 2. Knot in a network namespace of its own on the cluster's bridge
//!    (203.0.113.16k+13), serving a static zone file made from our node's
//!    answers (SOA, NS and glue, apex A/AAAA, MX, TXT, `_dmarc` TXT, `mail`
//!    A, CAA, `www` A/AAAA), with `udp-workers: 2` (our daemon runs two UDP
//!    threads on two cores) and `edns-client-subnet: on`.
//! 3. dnsperf in a third namespace on the bridge (203.0.113.16k+14), with a
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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use makiatto_benches::measure::{print_json, print_table};
use serde_json::{Value, json};

/// The query mix: nine names that exist, one that does not.
const MIX: [(&str, &str); 10] = [
    ("example.test", "A"),
    ("example.test", "AAAA"),
    ("www.example.test", "A"),
    ("example.test", "MX"),
    ("example.test", "TXT"),
    ("_dmarc.example.test", "TXT"),
    ("mail.example.test", "A"),
    ("nope.example.test", "A"),
    ("example.test", "SOA"),
    ("example.test", "NS"),
];
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

/// Everything this run made; `Drop` removes it in reverse order.
struct Lab {
    dir: tempfile::TempDir,
    bin: PathBuf,
    name: String,
    knot: Option<Child>,
    namespaces: Vec<String>,
    links: Vec<String>,
}

impl Lab {
    fn maki_command(&self, args: &[&str]) -> Command {
        let d = self.dir.path().join("cluster");
        let geoip = std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".cache/makiatto/geoip"))
            .unwrap_or_else(|| PathBuf::from("/root/.cache/makiatto/geoip"));
        let mut cmd = Command::new(self.bin.join("maki"));
        cmd.env("MAKIATTO_PROFILE", d.join("profile.toml"))
            .env("MAKIATTO_OPERATOR_KEY", d.join("operator.key"))
            .env("MAKIATTO_SSH_KEY", d.join("ssh/id_ed25519"))
            .env("MAKIATTO_GEOIP_DIR", geoip)
            .env("MAKIATTO_CACHE_DIR", self.dir.path().join("cache"));
        if args.first() == Some(&"local") {
            cmd.arg("local")
                .arg("--dir")
                .arg(&d)
                .arg("--name")
                .arg(&self.name)
                .args(&args[1..]);
        } else {
            cmd.args(args);
        }
        cmd
    }

    fn maki(&self, args: &[&str]) -> String {
        run(&mut self.maki_command(args))
    }

    /// A namespace joined to `bridge` by a veth pair, holding `addr/28`.
    fn namespace(&mut self, ns: &str, link: &str, addr: &str, bridge: &str) {
        let peer = format!("{link}p");
        run(Command::new("ip").args(["netns", "add", ns]));
        self.namespaces.push(ns.to_owned());
        run(Command::new("ip").args(["link", "add", link, "type", "veth", "peer", "name", &peer]));
        self.links.push(link.to_owned());
        run(Command::new("ip").args(["link", "set", &peer, "netns", ns]));
        run(Command::new("ip").args([
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/28"),
            "dev",
            &peer,
        ]));
        run(Command::new("ip").args(["-n", ns, "link", "set", &peer, "up"]));
        run(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]));
        run(Command::new("ip").args(["link", "set", link, "master", bridge, "up"]));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut knot) = self.knot.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &knot.id().to_string()])
                .status();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = knot.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = knot.kill();
            let _ = knot.wait();
        }
        for ns in self.namespaces.drain(..).rev() {
            // Only processes this run started live in these namespaces
            // (knotd, dnsperf, dig); end any left by a failure, by pid.
            for pid in netns_pids(&ns) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        for link in self.links.drain(..) {
            let _ = Command::new("ip")
                .args(["link", "del", &link])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.maki_command(&["local", "down"]).output();
    }
}

/// Runs a command and returns its stdout; panics (and so cleans up) when
/// it fails.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn netns_pids(ns: &str) -> Vec<u32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The `makiatto … run` process of a host (the one serving DNS), as
/// `maki local` finds daemons: by executable name in the namespace.
fn daemon_pid(ns: &str) -> Option<u32> {
    netns_pids(ns).into_iter().find(|p| {
        let exe = std::fs::read_link(format!("/proc/{p}/exe")).ok();
        let is_makiatto = exe
            .as_deref()
            .and_then(Path::file_name)
            .is_some_and(|n| n.to_string_lossy().starts_with("makiatto"));
        let args = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        is_makiatto && args.split(|b| *b == 0).any(|a| a == b"run")
    })
}

/// (utime, stime) of a process, all its threads, in clock ticks.
fn cpu_ticks(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("process {pid} is gone: {e}"));
    let rest = stat.rsplit_once(')').expect("stat").1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    (f[11].parse().expect("utime"), f[12].parse().expect("stime"))
}

/// CPU ticks of every thread of a process, by thread id, with its name.
fn thread_ticks(pid: u32) -> BTreeMap<u32, (String, u64)> {
    let mut threads = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return threads;
    };
    for e in dir.flatten() {
        let Ok(tid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let name = head.split_once('(').map_or("", |(_, n)| n).to_owned();
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        threads.insert(tid, (name, ticks));
    }
    threads
}

/// CPU ticks of this process's waited-for children (cutime + cstime):
/// dnsperf, which `ip netns exec` becomes.
fn children_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat")
        .1
        .split_whitespace()
        .collect();
    f[13].parse::<u64>().unwrap_or(0) + f[14].parse::<u64>().unwrap_or(0)
}

/// Busy and total jiffies of the whole machine (`/proc/stat`).
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let f: Vec<u64> = stat
        .lines()
        .next()
        .expect("cpu line")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = f.iter().take(8).sum();
    let idle = f[3] + f[4];
    (total - idle, total)
}

/// A `kB` field of `/proc/PID/status`, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(field)?
                    .strip_prefix(':')?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

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
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", client_ns, "dig", "+norec", "+tries=1"])
        .args(["+time=2", "+nocmd", "+noquestion"])
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

fn field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines()
        .find_map(|l| l.trim_start().strip_prefix(key))
        .map(str::trim)
}

fn first_number(s: Option<&str>) -> f64 {
    s.and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.trim_end_matches(',').parse().ok())
        .unwrap_or(0.0)
}

struct Target<'a> {
    label: &'a str,
    addr: &'a str,
    pid: u32,
}

fn dnsperf(
    client_ns: &str,
    queries: &Path,
    t: &Target<'_>,
    ecs: bool,
    fixed_qps: Option<u32>,
    tck: f64,
) -> Run {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", client_ns, "dnsperf", "-s", t.addr, "-d"])
        .arg(queries)
        .args(["-c", "4", "-T", "2"]);
    if ecs {
        cmd.args(["-E", &format!("8:{ECS_HEX}")]);
    }
    match fixed_qps {
        Some(q) => cmd.args(["-l", &FIXED_SECONDS.to_string(), "-Q", &q.to_string(), "-v"]),
        None => cmd.args(["-l", &SECONDS.to_string()]),
    };
    let (u0, s0) = cpu_ticks(t.pid);
    let (b0, t0) = machine_ticks();
    let th0 = thread_ticks(t.pid);
    let c0 = children_ticks();
    let out = run(&mut cmd);
    let c1 = children_ticks();
    let (u1, s1) = cpu_ticks(t.pid);
    let (b1, t1) = machine_ticks();
    let th1 = thread_ticks(t.pid);
    // Where the server's CPU went: its busiest threads, in % of one core.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let wall = (t1 - t0).max(1) as f64 / cores;
    let mut busy: Vec<(u64, &str)> = th1
        .iter()
        .map(|(tid, (name, t))| {
            (
                t.saturating_sub(th0.get(tid).map_or(0, |x| x.1)),
                name.as_str(),
            )
        })
        .filter(|(d, _)| *d > 0)
        .collect();
    busy.sort_by_key(|b| std::cmp::Reverse(b.0));
    let threads = busy
        .iter()
        .take(4)
        .map(|(d, n)| format!("{n} {:.0}%", *d as f64 / wall * 100.0))
        .collect::<Vec<_>>()
        .join(", ");
    let completed = first_number(field(&out, "Queries completed:")) as u64;
    assert!(completed > 0, "dnsperf completed no queries:\n{out}");
    let per_query = |ticks: u64| ticks as f64 / tck * 1e6 / completed as f64;
    let latencies_us = out
        .lines()
        .filter_map(|l| l.strip_prefix("> "))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|s| s * 1e6)
        .collect();
    let r = Run {
        qps: first_number(field(&out, "Queries per second:")),
        completed,
        lost: first_number(field(&out, "Queries lost:")) as u64,
        avg_latency_us: first_number(field(&out, "Average Latency (s):")) * 1e6,
        rcodes: field(&out, "Response codes:").unwrap_or("").to_owned(),
        response_bytes: field(&out, "Average packet size:")
            .and_then(|s| s.split_once("response "))
            .and_then(|(_, n)| n.trim().parse().ok())
            .unwrap_or(0.0),
        user_us: per_query(u1 - u0),
        sys_us: per_query(s1 - s0),
        client_us: per_query(c1 - c0),
        machine_busy: (b1 - b0) as f64 / (t1 - t0).max(1) as f64,
        others: (b1 - b0).saturating_sub(u1 - u0 + s1 - s0 + c1 - c0) as f64
            / (t1 - t0).max(1) as f64,
        threads,
        latencies_us,
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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn wait_until(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < within, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn main() {
    let bin = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .expect("the binary's directory");
    for b in ["maki", "makiatto"] {
        assert!(
            bin.join(b).exists(),
            "{b} is not beside this binary: cargo build --release -p makiatto -p makiatto-cli -p makiatto-benches --bins"
        );
    }
    for tool in ["knotd", "dnsperf", "dig"] {
        assert!(
            have(tool),
            "{tool} is not installed: apt-get install knot dnsperf bind9-dnsutils"
        );
    }
    let project = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/makiatto.toml");
    let project = std::path::absolute(&project).expect("path");
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let tck = clock_ticks();

    let mut lab = Lab {
        dir: tempfile::tempdir().expect("tempdir"),
        bin: bin.clone(),
        name: format!("d{}", std::process::id() % 100_000),
        knot: None,
        namespaces: Vec::new(),
        links: Vec::new(),
    };
    eprintln!("bringing up one node ({})", lab.name);
    lab.maki(&[
        "local",
        "up",
        "--nodes",
        "1",
        "--binary-path",
        bin.join("makiatto").to_str().expect("utf-8"),
        "--sync",
        project.to_str().expect("utf-8"),
    ]);
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(lab.dir.path().join("cluster/state.json")).expect("state"),
    )
    .expect("json");
    let slot = state["slot"].as_u64().expect("slot") as u8;
    let bridge = state["bridge"].as_str().expect("bridge").to_owned();
    let node_ns = state["hosts"][0]["netns"]
        .as_str()
        .expect("netns")
        .to_owned();
    let ours_addr = state["hosts"][0]["ipv4"].as_str().expect("ipv4").to_owned();
    let knot_addr = format!("203.0.113.{}", slot * 16 + 13);
    let client_addr = format!("203.0.113.{}", slot * 16 + 14);
    let knot_ns = format!("mkdns-{}-knot", lab.name);
    let client_ns = format!("mkdns-{}-client", lab.name);
    lab.namespace(&knot_ns, &format!("mk{slot}dk"), &knot_addr, &bridge);
    lab.namespace(&client_ns, &format!("mk{slot}dc"), &client_addr, &bridge);

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
    let kdir = lab.dir.path().join("knot");
    std::fs::create_dir_all(kdir.join("run")).expect("knot dir");
    std::fs::create_dir_all(kdir.join("db")).expect("knot dir");
    std::fs::write(kdir.join("example.test.zone"), &zone).expect("zone file");
    let kd = kdir.display();
    let conf = format!(
        "server:\n    rundir: \"{kd}/run\"\n    pidfile: \"{kd}/run/knot.pid\"\n    user: root:root\n    \
         listen: {knot_addr}@53\n    udp-workers: 2\n    tcp-workers: 1\n    background-workers: 1\n    \
         edns-client-subnet: on\n\
         database:\n    storage: \"{kd}/db\"\n\
         log:\n  - target: \"{kd}/knot.log\"\n    any: info\n\
         template:\n  - id: default\n    storage: \"{kd}\"\n    zonefile-sync: -1\n    \
         zonefile-load: whole\n    journal-content: none\n\
         zone:\n  - domain: example.test\n    file: \"{kd}/example.test.zone\"\n"
    );
    let conf_path = kdir.join("knot.conf");
    std::fs::write(&conf_path, &conf).expect("knot.conf");
    // In the foreground, as our child: `ip netns exec` execs knotd, so the
    // child's pid is knotd's and Drop ends exactly it.
    let knot = Command::new("ip")
        .args(["netns", "exec", &knot_ns, "knotd", "-c"])
        .arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("knotd starts");
    let knot_pid = knot.id();
    lab.knot = Some(knot);
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

    let queries = lab.dir.path().join("queries.txt");
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
            runs[0].push(dnsperf(&client_ns, &queries, &ours, ecs, None, tck));
            runs[1].push(dnsperf(&client_ns, &queries, &knot, ecs, None, tck));
        }
        let pick = |rs: &[Run]| {
            let mut b = rs
                .iter()
                .max_by(|a, b| a.qps.total_cmp(&b.qps))
                .expect("runs")
                .clone();
            let cpu = rs
                .iter()
                .min_by(|a, b| a.cpu_us().total_cmp(&b.cpu_us()))
                .expect("runs");
            b.user_us = cpu.user_us;
            b.sys_us = cpu.sys_us;
            b
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
        let mut o = dnsperf(&client_ns, &queries, &ours, ecs, Some(FIXED_QPS), tck);
        let mut k = dnsperf(&client_ns, &queries, &knot, ecs, Some(FIXED_QPS), tck);
        o.latencies_us.sort_by(f64::total_cmp);
        k.latencies_us.sort_by(f64::total_cmp);
        fixed.push((o, k));
    }

    let rss = |pid: u32| (status_kib(pid, "VmRSS"), status_kib(pid, "VmHWM"));
    let (ours_rss, ours_hwm) = rss(ours_pid);
    let (knot_rss, knot_hwm) = rss(knot_pid);

    let mut rows: Vec<(String, String)> = vec![
        ("load average at start".into(), loadavg.trim().to_owned()),
        (
            "dnsperf".into(),
            format!("-c 4 -T 2 -l {SECONDS}, 10-query mix, best of {ROUNDS} alternating rounds"),
        ),
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
    });
    if let Some(m) = fields.as_object_mut() {
        m.extend(json_variants);
    }
    print_json("dns", fields);
    drop(lab);
}
