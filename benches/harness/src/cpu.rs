//! `/proc` readings that turn a benchmark's run into server CPU per
//! request: the server's processes and threads, this process's waited-for
//! children (the clients), the whole machine and every other process on
//! it, before and after; and resident memory.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Fields of `/proc/PID/stat` after the command name, which is in
/// parentheses and may hold spaces.
fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect())
}

/// A field of those, as a number (0 where missing).
fn field(fields: &[&str], i: usize) -> u64 {
    fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// (utime, stime) of a process, all its threads, in clock ticks.
fn cpu_ticks(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("process {pid} is gone: {e}"));
    let f = stat_fields(&stat);
    (field(&f, 11), field(&f, 12))
}

/// CPU time (user + system) a process has used so far, all its threads.
pub fn cpu_time(pid: u32) -> Duration {
    let (user, sys) = cpu_ticks(pid);
    Duration::from_secs_f64((user + sys) as f64 / clock_ticks())
}

/// The command name and utime + stime of each `<dir>/<id>/stat`: every
/// thread of a process (`/proc/PID/task`) or every process (`/proc`).
fn ticks_by_id(dir: &Path) -> BTreeMap<u32, (String, u64)> {
    let mut all = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return all;
    };
    for e in entries.flatten() {
        let Ok(id) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        all.insert(id, name_and_ticks(&stat));
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
    (name, field(&f, 11) + field(&f, 12))
}

/// CPU ticks of this process's waited-for children (cutime + cstime):
/// the clients, which `ip netns exec` becomes.
fn children_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let f = stat_fields(&stat);
    field(&f, 13) + field(&f, 14)
}

/// Jiffies of the whole machine so far (`/proc/stat`).
#[derive(Debug, Clone, Copy)]
pub struct Machine {
    /// Neither idle nor waiting for I/O.
    pub busy: u64,
    pub total: u64,
    pub softirq: u64,
    pub steal: u64,
}

impl Machine {
    pub fn now() -> Machine {
        let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
        let f: Vec<u64> = stat
            .lines()
            .next()
            .expect("the cpu line")
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        let at = |i: usize| f.get(i).copied().unwrap_or(0);
        let total: u64 = f.iter().take(8).sum();
        Machine {
            busy: total - at(3) - at(4),
            total,
            softirq: at(6),
            steal: at(7),
        }
    }
}

/// Waits until the machine is at most 10% busy over a quarter second, for
/// at most `within`; how long that took. What a node still does after the
/// last case (precompressing new files, folding a large configuration) is
/// then not charged to the next measurement.
pub fn settle(within: Duration) -> Duration {
    let start = std::time::Instant::now();
    while start.elapsed() < within {
        let m0 = Machine::now();
        std::thread::sleep(Duration::from_millis(250));
        let m1 = Machine::now();
        let (busy, total) = (m1.busy - m0.busy, m1.total - m0.total);
        if total > 0 && busy as f64 <= 0.1 * total as f64 {
            break;
        }
    }
    start.elapsed()
}

/// A `kB` field of a `/proc/PID/` file such as `status` (`VmRSS`) or
/// `smaps_rollup` (`Pss`), in KiB (0 where unavailable).
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

/// Clock ticks per second (`getconf CLK_TCK`).
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
            threads.extend(ticks_by_id(Path::new(&format!("/proc/{pid}/task"))));
        }
        Sample {
            server,
            threads,
            children: children_ticks(),
            machine: Machine::now(),
            processes: ticks_by_id(Path::new("/proc")),
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
