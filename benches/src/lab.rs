//! Test hosts for the benchmarks that run a real node against a real
//! anchor server: a one-node local cluster (`maki local up`), namespaces of
//! our own on its bridge for the anchor and the client, and the `/proc`
//! readings that turn a run into server CPU per request.
//!
//! Everything a [`Lab`] made (namespaces, veths, the anchor, the cluster)
//! is removed when it drops, also on a panic: helpers here panic on
//! failure rather than return errors, so a failed step unwinds through
//! that cleanup.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The one node of a lab's cluster, as `maki local` recorded it.
#[derive(Debug, Clone)]
pub struct Node {
    /// The cluster's slot: its hosts are 203.0.113.16·slot + i.
    pub slot: u8,
    pub bridge: String,
    pub netns: String,
    pub ipv4: String,
    /// The node's (and its host's) name.
    pub host: String,
}

impl Node {
    /// The anchor server's address on the cluster's bridge. `maki local`
    /// gives `.1` to the host, `.2` onwards to nodes and `.13` to pebble,
    /// so `.11` and `.12` are free in a one-node cluster.
    pub fn anchor_addr(&self) -> String {
        format!("203.0.113.{}", self.slot * 16 + 11)
    }

    /// The client's address on the cluster's bridge.
    pub fn client_addr(&self) -> String {
        format!("203.0.113.{}", self.slot * 16 + 12)
    }
}

/// Everything a run made; `Drop` removes it in reverse order.
pub struct Lab {
    pub dir: tempfile::TempDir,
    bin: PathBuf,
    /// The cluster's name (`maki local --name`), at most 8 characters.
    pub name: String,
    anchor: Option<Child>,
    namespaces: Vec<String>,
    links: Vec<String>,
}

impl Lab {
    /// A lab named `prefix` + this process's id, using the release `maki`
    /// and `makiatto` beside the running benchmark.
    pub fn new(prefix: &str) -> Lab {
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
        Lab {
            dir: tempfile::tempdir().expect("tempdir"),
            bin,
            name: format!("{prefix}{}", std::process::id() % 100_000),
            anchor: None,
            namespaces: Vec::new(),
            links: Vec::new(),
        }
    }

    pub fn maki_command(&self, args: &[&str]) -> Command {
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

    pub fn maki(&self, args: &[&str]) -> String {
        run(&mut self.maki_command(args))
    }

    /// `maki local up --nodes 1` with the release daemon, syncing
    /// `project`; `extra` are more flags of `up` (such as `--no-ca`).
    pub fn up(&self, project: &Path, extra: &[&str]) -> Node {
        self.up_nodes(1, project, extra).remove(0)
    }

    /// [`Lab::up`] with `n` nodes.
    pub fn up_nodes(&self, n: usize, project: &Path, extra: &[&str]) -> Vec<Node> {
        let daemon = self.bin.join("makiatto");
        let n_text = n.to_string();
        let mut args = vec![
            "local",
            "up",
            "--nodes",
            &n_text,
            "--binary-path",
            daemon.to_str().expect("utf-8"),
            "--sync",
            project.to_str().expect("utf-8"),
        ];
        args.extend(extra);
        self.maki(&args);
        let state: Value = serde_json::from_str(
            &std::fs::read_to_string(self.dir.path().join("cluster/state.json")).expect("state"),
        )
        .expect("json");
        let text = |v: &Value| v.as_str().expect("a string in state.json").to_owned();
        (0..n)
            .map(|i| Node {
                slot: state["slot"].as_u64().expect("slot") as u8,
                bridge: text(&state["bridge"]),
                netns: text(&state["hosts"][i]["netns"]),
                ipv4: text(&state["hosts"][i]["ipv4"]),
                host: text(&state["hosts"][i]["node"]),
            })
            .collect()
    }

    /// Runs `binary` as `node`'s daemon from now on: installed in its
    /// host's `/usr/local/bin`, the daemon killed and started again.
    pub fn swap_daemon(&self, node: &Node, binary: &Path) {
        let bin_dir = self
            .dir
            .path()
            .join("cluster/hosts")
            .join(&node.host)
            .join("usr-local-bin");
        // A new file renamed over the old: the running one stays intact.
        let tmp = bin_dir.join("makiatto.swap");
        std::fs::copy(binary, &tmp).expect("copy the daemon");
        std::fs::rename(&tmp, bin_dir.join("makiatto")).expect("install the daemon");
        self.maki(&["local", "kill", &node.host]);
        self.maki(&["local", "start", &node.host]);
    }

    /// A namespace joined to `bridge` by a veth pair, holding `addr/28`.
    pub fn namespace(&mut self, ns: &str, link: &str, addr: &str, bridge: &str) {
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

    /// Starts the anchor server in the foreground, as our child, in `ns`:
    /// `ip netns exec` execs it, so the child's pid is the server's and
    /// `Drop` ends exactly it. Returns that pid.
    pub fn spawn_anchor(&mut self, ns: &str, argv: &[&str]) -> u32 {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{argv:?} starts: {e}"));
        let pid = child.id();
        self.anchor = Some(child);
        pid
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut anchor) = self.anchor.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &anchor.id().to_string()])
                .status();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = anchor.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = anchor.kill();
            let _ = anchor.wait();
        }
        for ns in self.namespaces.drain(..).rev() {
            // Only processes this run started live in these namespaces
            // (the anchor and its workers, the clients); end any left by a
            // failure, by pid.
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
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Is `tool` on the PATH?
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn wait_until(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < within, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The processes in a network namespace.
pub fn netns_pids(ns: &str) -> Vec<u32> {
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

/// The `makiatto … run` process of a host (the one serving), as
/// `maki local` finds daemons: by executable name in the namespace.
pub fn daemon_pid(ns: &str) -> Option<u32> {
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

/// Fields of `/proc/PID/stat` after the command name, which is in
/// parentheses and may hold spaces.
fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect())
}

/// (utime, stime) of a process, all its threads, in clock ticks.
fn cpu_ticks(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("process {pid} is gone: {e}"));
    let f = stat_fields(&stat);
    (f[11].parse().expect("utime"), f[12].parse().expect("stime"))
}

/// CPU ticks of every thread of a process, by thread id, with its name.
fn thread_ticks(pid: u32, into: &mut BTreeMap<u32, (String, u64)>) {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for e in dir.flatten() {
        let Ok(tid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        into.insert(tid, name_and_ticks(&stat));
    }
}

/// CPU ticks of every process on the machine, by pid, with its name.
fn process_ticks() -> BTreeMap<u32, (String, u64)> {
    let mut all = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return all;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        all.insert(pid, name_and_ticks(&stat));
    }
    all
}

/// The command name and utime + stime of a `stat` line.
fn name_and_ticks(stat: &str) -> (String, u64) {
    let name = stat
        .split_once('(')
        .and_then(|(_, r)| r.rsplit_once(')'))
        .map_or("", |(n, _)| n)
        .to_owned();
    let f = stat_fields(stat);
    let ticks = f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    (name, ticks)
}

/// CPU ticks of this process's waited-for children (cutime + cstime):
/// the clients, which `ip netns exec` becomes.
fn children_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let f = stat_fields(&stat);
    f[13].parse::<u64>().unwrap_or(0) + f[14].parse::<u64>().unwrap_or(0)
}

/// Jiffies of the whole machine (`/proc/stat`).
#[derive(Clone, Copy)]
struct Machine {
    busy: u64,
    total: u64,
    softirq: u64,
    steal: u64,
}

fn machine_ticks() -> Machine {
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
    Machine {
        busy: total - idle,
        total,
        softirq: f[6],
        steal: f[7],
    }
}

/// A `kB` field of a `/proc/PID/` file such as `status` (`VmRSS`) or
/// `smaps_rollup` (`Pss`), in KiB.
pub fn proc_kib(pid: u32, file: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
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

/// CPU counters of a server (one or more processes), of this process's
/// children and of the machine, at one moment.
pub struct Sample {
    server: (u64, u64),
    threads: BTreeMap<u32, (String, u64)>,
    children: u64,
    machine: Machine,
    /// Every process on the machine, to name what else ran.
    processes: BTreeMap<u32, (String, u64)>,
}

/// What was spent between two samples.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    /// Server user and system time, seconds.
    pub user_s: f64,
    pub sys_s: f64,
    /// CPU time of the children waited for meanwhile (the client), seconds.
    pub client_s: f64,
    /// Share of the whole machine that was busy.
    pub machine_busy: f64,
    /// Share of the machine used by neither the server nor the client:
    /// another build on the same cores spoils the run. Includes `steal`.
    pub others: f64,
    /// Share of the machine the hypervisor took (`steal` in `/proc/stat`).
    pub steal: f64,
    /// Share of the machine in softirq (the network stack), whoever's
    /// time it was charged to.
    pub softirq: f64,
    /// The busiest other processes (neither the server nor a client), in
    /// % of one core; those that started and ended within the run are
    /// not seen.
    pub other_processes: String,
    /// The server's busiest threads, in % of one core.
    pub threads: String,
}

impl Sample {
    /// The counters now; `pids` are the server's processes.
    pub fn take(pids: &[u32]) -> Sample {
        let mut server = (0, 0);
        let mut threads = BTreeMap::new();
        for &pid in pids {
            let (u, s) = cpu_ticks(pid);
            server.0 += u;
            server.1 += s;
            thread_ticks(pid, &mut threads);
        }
        Sample {
            server,
            threads,
            children: children_ticks(),
            machine: machine_ticks(),
            processes: process_ticks(),
        }
    }

    /// What was spent from `earlier` to this sample.
    pub fn since(&self, earlier: &Sample) -> Usage {
        let tck = clock_ticks();
        let user = self.server.0 - earlier.server.0;
        let sys = self.server.1 - earlier.server.1;
        let client = self.children - earlier.children;
        let busy = self.machine.busy - earlier.machine.busy;
        let total = (self.machine.total - earlier.machine.total).max(1);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let wall = total as f64 / cores;
        let top = |now: &BTreeMap<u32, (String, u64)>,
                   before: &BTreeMap<u32, (String, u64)>,
                   skip: &dyn Fn(u32) -> bool| {
            let mut busiest: Vec<(u64, &str)> = now
                .iter()
                .filter(|(id, _)| !skip(**id))
                .map(|(id, (name, t))| {
                    let before = before.get(id).map_or(0, |x| x.1);
                    (t.saturating_sub(before), name.as_str())
                })
                .filter(|(d, _)| *d > 0)
                .collect();
            busiest.sort_by_key(|b| std::cmp::Reverse(b.0));
            busiest
                .iter()
                .take(4)
                .map(|(d, n)| format!("{n} {:.0}%", *d as f64 / wall * 100.0))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let threads = top(&self.threads, &earlier.threads, &|_| false);
        let me = std::process::id();
        let other_processes = top(&self.processes, &earlier.processes, &|pid| {
            pid == me || self.threads.contains_key(&pid)
        });
        Usage {
            user_s: user as f64 / tck,
            sys_s: sys as f64 / tck,
            client_s: client as f64 / tck,
            machine_busy: busy as f64 / total as f64,
            others: busy.saturating_sub(user + sys + client) as f64 / total as f64,
            steal: (self.machine.steal - earlier.machine.steal) as f64 / total as f64,
            softirq: (self.machine.softirq - earlier.machine.softirq) as f64 / total as f64,
            other_processes,
            threads,
        }
    }
}
