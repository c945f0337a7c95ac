//! Timing, memory and the report every benchmark prints: a small table for
//! people and one JSON line (`{"bench": …}`) for scripts.

use std::fs;
use std::time::{Duration, Instant};

/// Runs `f` once and returns its result with the wall time it took.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let value = f();
    (value, start.elapsed())
}

/// CPU time (user + system) of the whole process so far, every thread
/// included (`/proc/self/stat`, in 10 ms ticks).
pub fn process_cpu() -> Duration {
    let ticks = fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            // Fields after the command name, which is in parentheses.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// Runs `f` once and returns its result with the wall time and the process
/// CPU time it took.
pub fn timed_cpu<T>(f: impl FnOnce() -> T) -> (T, Duration, Duration) {
    let cpu = process_cpu();
    let (value, wall) = timed(f);
    (value, wall, process_cpu().saturating_sub(cpu))
}

/// A `kB` field of `/proc/self/status`, in bytes (0 where unavailable).
fn status_kb(field: &str) -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                let value = line.strip_prefix(field)?.strip_prefix(':')?;
                value
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
        })
        .map_or(0, |kb| kb * 1024)
}

/// Peak resident memory of this process so far (`VmHWM`).
pub fn peak_rss_bytes() -> u64 {
    status_kb("VmHWM")
}

/// Resident memory now (`VmRSS`).
pub fn rss_bytes() -> u64 {
    status_kb("VmRSS")
}

/// The CPUs this process may run on (`Cpus_allowed_list`, such as `0` or `0-1`).
pub fn allowed_cpus() -> String {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|l| {
                l.strip_prefix("Cpus_allowed_list:")
                    .map(|v| v.trim().to_owned())
            })
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Mebibytes, for tables.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The fastest of a case's rounds (highest `rate`) and, apart, the
/// cheapest (lowest `cpu` per request): a best-of-N report takes its rate
/// from the one and its CPU from the other, each the least disturbed.
pub fn fastest_and_cheapest<R>(
    rounds: &[R],
    rate: impl Fn(&R) -> f64,
    cpu: impl Fn(&R) -> f64,
) -> (&R, &R) {
    let fastest = rounds
        .iter()
        .max_by(|a, b| rate(a).total_cmp(&rate(b)))
        .expect("at least one round");
    let cheapest = rounds
        .iter()
        .min_by(|a, b| cpu(a).total_cmp(&cpu(b)))
        .expect("at least one round");
    (fastest, cheapest)
}

/// Prints rows of (what, value) as an aligned two-column table.
pub fn print_table(title: &str, rows: &[(&str, String)]) {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    println!("{title}");
    println!("{}", "-".repeat(title.len()));
    for (key, value) in rows {
        println!("{key:<width$}  {value}");
    }
}

/// Prints the machine-readable result: one line of JSON with the bench name.
pub fn print_json(bench: &str, mut fields: serde_json::Value) {
    if let Some(map) = fields.as_object_mut() {
        map.insert("bench".into(), bench.into());
    }
    println!("{fields}");
}
