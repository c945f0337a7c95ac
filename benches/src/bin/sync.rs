//! `sync`: `maki sync` against `rsync -a --delete` over SSH (the upstream
//! project's method), on a real local cluster of three nodes.
//!
//! The tree: 10,000 files of 1–10 KB and 100 files of 1 MiB (about 155 MB),
//! from a fixed seed; `MAKIATTO_BENCH_FILES=100000` makes it 100,000 small
//! files (about 650 MB: issue 25's scale case, whose goals are no-op
//! ≤ 0.5 s and one change served by every node ≤ 1 s). Three cases, each timed for both tools in the same
//! run:
//! - **initial**: rsync to one test host; `maki sync` until the version is
//!   deployed on all three nodes (uploaded to one, fetched by the other two
//!   over the mesh); and, as a second anchor, rsync to all three hosts at
//!   once;
//! - **no-op**: nothing changed (best of three), once with every `maki`
//!   command connecting afresh and once with the connection kept between
//!   commands (`MAKIATTO_SSH_PERSIST`, after one uncounted command);
//! - **one change**: one small file rewritten (best of three, both ways); `maki sync`
//!   again until every node serves it.
//!
//! Every measurement starts on a quiet machine (at most 10% busy over a
//! quarter second): after the initial sync the nodes precompress the new
//! files on idle CPU for a while, which is not the next case's cost.
//!
//! The anchor is rsync to all three hosts at once: a user without a mesh
//! deploys to every server (rsync to one host is reported too, as before).
//! `MAKIATTO_BENCH_UPLINK=100mbit` shapes the operator's uplink (tbf on
//! this machine's side of the test bridge; node-to-node traffic unshaped),
//! a laptop deploying to servers in data centres. The tree's bytes are new
//! every run (`MAKIATTO_BENCH_SEED` repeats a run's).
//!
//! Goals (issue 25): initial ≤ 1.0 × rsync to all three unshaped, ≤ 0.4 ×
//! at the shaped uplink; no-op and one change ≤ 0.3 ×.
//! Needs root and rsync (`apt-get install rsync`). Build first:
//! `cargo build --release -p makiatto -p makiatto-cli -p makiatto-benches --bins`
//! then `target/release/sync`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark support: a failure is a panic that fails the run

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use makiatto_benches::measure::{print_json, print_table};
use makiatto_harness::{Cluster, Wait, have};
use rand::{Rng, SeedableRng};

/// `maki ARGS` against the cluster, failing unless it succeeds; its
/// standard output. With `MAKIATTO_TIMINGS=1`, the phase times `maki
/// sync` printed go to standard error.
fn maki(c: &Cluster, args: &[&str]) -> String {
    let out = c.ok_output(args);
    if args.first() == Some(&"sync") {
        for line in String::from_utf8_lossy(&out.stderr).lines() {
            if line.starts_with("timing:") {
                eprintln!("{line}");
            }
        }
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The version every node serves, if they all serve the same one. The
/// nodes are asked at once (one probe costs 30–70 ms here; asked one
/// after another they would add up to 0.2 s to every measurement).
fn live_everywhere(c: &Cluster, nodes: &[String]) -> Option<String> {
    let served: Vec<Option<String>> = std::thread::scope(|scope| {
        let probes: Vec<_> = nodes
            .iter()
            .map(|n| {
                scope.spawn(move || {
                    let h = c.health(n);
                    let s = &h["sites"]["bench.test"];
                    if s["in_sync"] != true {
                        return None;
                    }
                    s["live"].as_str().map(str::to_owned)
                })
            })
            .collect();
        probes
            .into_iter()
            .map(|p| p.join().ok().flatten())
            .collect()
    });
    let first = served.first()?.clone()?;
    served
        .iter()
        .all(|v| v.as_deref() == Some(first.as_str()))
        .then_some(first)
}

/// The length of each node's daemon log now: where [`served_everywhere`] starts
/// reading.
fn log_ends(c: &Cluster, nodes: &[String]) -> Vec<u64> {
    nodes
        .iter()
        .map(|n| std::fs::metadata(c.daemon_log(n)).map_or(0, |m| m.len()))
        .collect()
}

/// Reads what each node's log gained since `offsets` (whole lines
/// only) and adds its "serving site version" lines to `served`: per
/// node, (short version, when). A version every node serves, other
/// than `before`, is returned with the time the last node switched.
/// Reading a file costs the nodes nothing; probing each with a
/// `makiatto health` process every few milliseconds took the two
/// cores from them in the very window measured.
fn served_everywhere(
    c: &Cluster,
    nodes: &[String],
    offsets: &mut [u64],
    served: &mut [Vec<(String, SystemTime)>],
    before: Option<&str>,
) -> Option<(String, SystemTime)> {
    use std::io::{Read, Seek};
    for (i, n) in nodes.iter().enumerate() {
        let Ok(mut f) = std::fs::File::open(c.daemon_log(n)) else {
            continue;
        };
        let mut new = Vec::new();
        if f.seek(std::io::SeekFrom::Start(offsets[i])).is_err() || f.read_to_end(&mut new).is_err()
        {
            continue;
        }
        let Some(end) = new.iter().rposition(|b| *b == b'\n') else {
            continue;
        };
        offsets[i] += end as u64 + 1;
        for l in String::from_utf8_lossy(&new[..=end]).lines() {
            if !l.contains("serving site version") {
                continue;
            }
            let short = l
                .split_whitespace()
                .find_map(|w| w.strip_prefix("version="));
            let at = l.split_whitespace().next().and_then(log_time);
            if let (Some(short), Some(at)) = (short, at) {
                served[i].push((short.to_owned(), at));
            }
        }
    }
    let (first, rest) = served.split_first()?;
    first.iter().rev().find_map(|(short, at)| {
        if before.is_some_and(|b| b.starts_with(short.as_str())) {
            return None;
        }
        let mut last = *at;
        for other in rest {
            let (_, t) = other.iter().find(|(s, _)| s == short)?;
            last = last.max(*t);
        }
        Some((short.clone(), last))
    })
}

/// With `MAKIATTO_TIMINGS=1`: when each node heard of `version` (hex),
/// deployed it and served it, in ms from `wall`, from its log: where the time
/// after `maki sync` returned went.
fn print_timeline(c: &Cluster, nodes: &[String], version: &str, wall: SystemTime) {
    if std::env::var_os("MAKIATTO_TIMINGS").is_none_or(|v| v != "1") {
        return;
    }
    let Some(short) = version.get(..12) else {
        return;
    };
    for n in nodes {
        let Ok(text) = std::fs::read_to_string(c.daemon_log(n)) else {
            continue;
        };
        // `MAKIATTO_BENCH_LOG_LINES=1`: every line of the node's log
        // in that time, not only the steps above.
        let every_line = std::env::var_os("MAKIATTO_BENCH_LOG_LINES").is_some();
        let mut line = format!("timeline: {n}:");
        for l in text.lines() {
            // Each line's time, read once; lines before `wall` are not
            // this version's.
            let Some(at) = l.split_whitespace().next().and_then(log_time) else {
                continue;
            };
            let Ok(since) = at.duration_since(wall) else {
                continue;
            };
            let what = if l.contains("replicated") && l.contains("received=1") {
                "event received"
            } else if l.contains("fetched a version as a delta") {
                "delta fetched"
            } else if l.contains("took a version sent ahead") {
                "version taken ahead of its event"
            } else if l.contains("site version deployed") && l.contains(short) {
                "deployed"
            } else if l.contains("serving site version") && l.contains(short) {
                "serving"
            } else if every_line {
                l.split_once(' ').map_or(l, |(_, rest)| rest)
            } else {
                continue;
            };
            line.push_str(&format!(" {what} {:.1} ms;", since.as_secs_f64() * 1e3));
        }
        eprintln!("{line}");
    }
}

/// A log line's time, `2026-11-26T09:05:09.250087Z`.
fn log_time(stamp: &str) -> Option<SystemTime> {
    let (date, time) = stamp.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, min, sec) = (t.next()??, t.next()??, t.next()??);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + min * 60 + sec;
    let micros: u64 = format!("{frac:0<6}").get(..6)?.parse().ok()?;
    Some(
        SystemTime::UNIX_EPOCH
            + Duration::from_secs(u64::try_from(secs).ok()?)
            + Duration::from_micros(micros),
    )
}

/// `files` small files (1–10 KB, 200 a directory, at least 50
/// directories) and 100 of 1 MiB; their bytes in all.
fn make_tree(root: &Path, seed: u64, files: u32) -> u64 {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut total = 0;
    let dirs = (files / 200).max(50);
    for i in 0..files {
        let dir = root.join(format!("d{:02}", i % dirs));
        std::fs::create_dir_all(&dir).expect("dir");
        let size = rng.random_range(1024..10 * 1024);
        let mut bytes = vec![0u8; size];
        rng.fill(&mut bytes[..]);
        std::fs::write(dir.join(format!("f{i}.html")), &bytes).expect("file");
        total += size as u64;
    }
    std::fs::create_dir_all(root.join("big")).expect("dir");
    for i in 0..100u32 {
        let mut bytes = vec![0u8; 1 << 20];
        rng.fill(&mut bytes[..]);
        std::fs::write(root.join(format!("big/b{i}.bin")), &bytes).expect("file");
        total += 1 << 20;
    }
    total
}

/// Times `f`, once the machine is quiet (see [`settle`]).
fn timed(f: impl FnOnce()) -> Duration {
    settle();
    let start = Instant::now();
    f();
    start.elapsed()
}

/// Waits until the machine is quiet (at most a minute): what a node still
/// does for the last case (precompressed variants of 10,000 new files, on
/// idle CPU) is not charged to the next measurement, of either tool.
fn settle() -> Duration {
    makiatto_harness::cpu::settle(Duration::from_secs(60))
}

fn main() {
    assert!(
        have("rsync"),
        "rsync is not installed: apt-get install rsync"
    );
    let c = Cluster::without_geoip("s");
    let project = c.dir.path().join("project");
    let site = project.join("site");
    // New bytes every run (`MAKIATTO_BENCH_SEED` repeats one).
    let seed = std::env::var("MAKIATTO_BENCH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(2026, |d| d.as_secs())
        });
    eprintln!("tree seed {seed} (MAKIATTO_BENCH_SEED={seed} repeats it)");
    // `MAKIATTO_BENCH_FILES=100000`: the site of 100,000 files (issue 25's
    // scale case; its own goals: no-op ≤ 0.5 s, one change on every node
    // ≤ 1 s).
    let files: u32 = std::env::var("MAKIATTO_BENCH_FILES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let bytes = make_tree(&site, seed, files);
    std::fs::write(
        project.join("makiatto.toml"),
        "[[domain]]\nname = \"bench.test\"\npath = \"site\"\n",
    )
    .expect("project");
    let file = project.join("makiatto.toml");
    let file = file.to_str().expect("utf-8");
    // Each host's node name and address.
    let state = c.up(3, &[]);
    // `MAKIATTO_BENCH_UPLINK=100mbit`: the operator's uplink shaped (tbf on
    // this machine's side of the test bridge, where `maki` and rsync send
    // from); the nodes' traffic to each other stays unshaped, as between
    // servers in data centres.
    let uplink = std::env::var("MAKIATTO_BENCH_UPLINK").ok();
    if let Some(rate) = &uplink {
        let status = Command::new("tc")
            .args(["qdisc", "replace", "dev", &state.bridge, "root", "tbf"])
            .args(["rate", rate, "burst", "256kb", "latency", "100ms"])
            .status()
            .expect("tc runs");
        assert!(status.success(), "tc could not shape {}", state.bridge);
        eprintln!(
            "the operator's uplink ({}) is shaped to {rate}",
            state.bridge
        );
    }
    let (nodes, hosts): (Vec<String>, Vec<String>) =
        state.hosts.into_iter().map(|h| (h.node, h.ipv4)).unzip();
    let key = c.ssh_key();
    let known = c.dir.path().join("known_hosts");
    let ssh = format!(
        "ssh -i {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=accept-new -o BatchMode=yes",
        key.display(),
        known.display()
    );
    let rsync_to = |host: &str, dir: &str| {
        let out = Command::new("rsync")
            .args(["-a", "--delete", "-e", &ssh])
            .arg(format!("{}/", site.display()))
            .arg(format!("root@{host}:{dir}"))
            .stdin(Stdio::null())
            .output()
            .expect("rsync runs");
        assert!(
            out.status.success(),
            "rsync: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let rsync = || rsync_to(&hosts[0], "/var/tmp/rsync-target/");
    // A second reading of the initial case: rsync to every host at once,
    // as a tool without a mesh would reach all three.
    let rsync_everywhere = || {
        std::thread::scope(|scope| {
            for h in &hosts {
                scope.spawn(|| rsync_to(h, "/var/tmp/rsync-everywhere/"));
            }
        });
    };
    let upload_ms = std::cell::Cell::new(0u128);
    // From the start of `maki sync` to the last node's switch, as its log
    // tells it; and to when the bench saw it (reading the logs every 2 ms).
    let switch = std::cell::Cell::new(Duration::ZERO);
    let observed = std::cell::Cell::new(Duration::ZERO);
    let sync_everywhere = |before: Option<&str>| {
        let mut offsets = log_ends(&c, &nodes);
        let mut served = vec![Vec::new(); nodes.len()];
        let start = Instant::now();
        let wall = SystemTime::now();
        maki(&c, &["sync", "--file", file]);
        upload_ms.set(start.elapsed().as_millis());
        let mut seen = None;
        Wait::up_to(Duration::from_secs(300))
            .every(Duration::from_millis(2))
            .until("every node serves the new version", || {
                seen = served_everywhere(&c, &nodes, &mut offsets, &mut served, before);
                seen.is_some()
            });
        let (short, at) = seen.expect("the version every node serves");
        observed.set(start.elapsed());
        switch.set(at.duration_since(wall).unwrap_or_default());
        // Then, untimed, each node confirms: that version is the live one
        // and deployed there.
        let mut live = None;
        Wait::up_to(Duration::from_secs(30))
            .every(Duration::from_millis(20))
            .until(
                &format!("the nodes serve {short} and report it live and deployed"),
                || {
                    live = live_everywhere(&c, &nodes).filter(|v| v.starts_with(short.as_str()));
                    live.is_some()
                },
            );
        let v = live.expect("the version live everywhere");
        print_timeline(&c, &nodes, &v, wall);
        v
    };

    // Initial.
    let rsync_initial = timed(rsync);
    let rsync_initial_all = timed(rsync_everywhere);
    let mut version = sync_everywhere(None);
    let maki_initial = observed.get();
    let initial_upload_ms = upload_ms.get();
    let initial_switch = switch.get();
    let quiet_after_initial = settle();

    // No-op and one change, best of three each, first with every `maki`
    // command connecting afresh (as rsync does), then with the connection
    // kept between commands (after one command, not counted, that starts
    // the keeper).
    let mut rsync_noop = Duration::MAX;
    let mut rsync_one = Duration::MAX;
    let mut rsync_noop_all = Duration::MAX;
    let mut rsync_one_all = Duration::MAX;
    let mut maki_noop = [Duration::MAX; 2];
    let mut maki_one = [Duration::MAX; 2];
    let mut switch_one = [Duration::MAX; 2];
    let mut round = 0u8;
    // The one change: 100 bytes more in one small file.
    let edit_one = |round: u8| {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(site.join("d00/f0.html"))
            .expect("file");
        f.write_all(&[round; 100]).expect("write");
    };
    for (k, persist) in [0, 60].into_iter().enumerate() {
        c.set_ssh_persist(persist);
        if persist != 0 {
            maki(&c, &["sync", "--file", file]);
        }
        for _ in 0..3 {
            rsync_noop = rsync_noop.min(timed(rsync));
            rsync_noop_all = rsync_noop_all.min(timed(rsync_everywhere));
            maki_noop[k] = maki_noop[k].min(timed(|| {
                let out = maki(&c, &["sync", "--file", file]);
                assert!(out.contains("up to date"), "{out}");
            }));
        }
        for _ in 0..3 {
            round += 1;
            edit_one(round);
            rsync_one = rsync_one.min(timed(rsync));
            rsync_one_all = rsync_one_all.min(timed(rsync_everywhere));
            let before = version.clone();
            version = sync_everywhere(Some(&before));
            maki_one[k] = maki_one[k].min(observed.get());
            switch_one[k] = switch_one[k].min(switch.get());
        }
    }
    // `MAKIATTO_BENCH_PERF=FILE`: a profile of the whole machine (every
    // node, `maki`, sshd) over 15 more one-change syncs with the
    // connection kept, after the measured ones (`perf report -i FILE`).
    if let Some(out) = std::env::var_os("MAKIATTO_BENCH_PERF") {
        let mut perf = Command::new("perf")
            .args(["record", "-a", "-g", "-F", "999", "-o"])
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("perf runs");
        std::thread::sleep(Duration::from_millis(500));
        for _ in 0..15 {
            round += 1;
            edit_one(round);
            let before = version.clone();
            version = sync_everywhere(Some(&before));
        }
        let _ = Command::new("kill")
            .args(["-INT", &perf.id().to_string()])
            .status();
        let _ = perf.wait();
    }
    c.set_ssh_persist(0);

    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1e3);
    // Connecting / kept, each to the anchor.
    let ratios = |maki: [Duration; 2], anchor: Duration| {
        format!(
            "{:.2} / {:.2}",
            ratio(maki[0], anchor),
            ratio(maki[1], anchor)
        )
    };
    let network = match &uplink {
        Some(rate) => format!("the operator's uplink shaped to {rate}"),
        None => "unshaped".to_owned(),
    };
    let initial_goal = if uplink.is_some() { "0.4" } else { "1.0" };
    let scale_rows = if files >= 100_000 {
        vec![
            (
                "no-op, connecting / kept (goal at 100,000 files ≤ 500 ms)",
                format!("{} / {}", ms(maki_noop[0]), ms(maki_noop[1])),
            ),
            (
                "one change on every node, connecting / kept (goal at 100,000 files ≤ 1 s)",
                format!("{} / {}", ms(maki_one[0]), ms(maki_one[1])),
            ),
        ]
    } else {
        Vec::new()
    };
    let title = format!(
        "sync: {} files of 1–10 KB + 100 of 1 MiB",
        thousands(u64::from(files))
    );
    let initial_label =
        format!("initial ratio to rsync reaching all 3 hosts (goal ≤ {initial_goal})");
    let mut rows: Vec<(&str, String)> = vec![
        (
            "tree",
            format!("{:.1} MB (seed {seed})", bytes as f64 / 1e6),
        ),
        ("network", network),
        ("initial: maki sync, all 3 nodes serving", ms(maki_initial)),
        (
            "  of which maki sync itself (hash, upload to one node)",
            format!("{initial_upload_ms} ms"),
        ),
        ("  last node switched (its log)", ms(initial_switch)),
        (
            "initial: rsync to all 3 hosts at once (anchor)",
            ms(rsync_initial_all),
        ),
        ("initial: rsync to one host", ms(rsync_initial)),
        (
            "  until the machine was quiet after the initial sync",
            ms(quiet_after_initial),
        ),
        (
            &initial_label,
            format!("{:.2}", ratio(maki_initial, rsync_initial_all)),
        ),
        (
            "initial ratio to rsync to one host",
            format!("{:.2}", ratio(maki_initial, rsync_initial)),
        ),
        ("no-op: maki sync, connecting", ms(maki_noop[0])),
        ("no-op: maki sync, connection kept", ms(maki_noop[1])),
        ("no-op: rsync to all 3 hosts (anchor)", ms(rsync_noop_all)),
        ("no-op: rsync to one host", ms(rsync_noop)),
        (
            "no-op ratio to all 3, connecting / kept (goal ≤ 0.3)",
            ratios(maki_noop, rsync_noop_all),
        ),
        (
            "no-op ratio to one host, connecting / kept",
            ratios(maki_noop, rsync_noop),
        ),
        (
            "one change: maki sync, all 3 nodes serving, connecting",
            ms(maki_one[0]),
        ),
        (
            "one change: maki sync, all 3 nodes serving, connection kept",
            ms(maki_one[1]),
        ),
        (
            "  last node switched (its log), connecting / kept",
            format!("{} / {}", ms(switch_one[0]), ms(switch_one[1])),
        ),
        (
            "one change: rsync to all 3 hosts (anchor)",
            ms(rsync_one_all),
        ),
        ("one change: rsync to one host", ms(rsync_one)),
        (
            "one change ratio to all 3, connecting / kept (goal ≤ 0.3)",
            ratios(maki_one, rsync_one_all),
        ),
        (
            "one change ratio to one host, connecting / kept",
            ratios(maki_one, rsync_one),
        ),
        (
            "  by the logs' switch times, to all 3, connecting / kept",
            ratios(switch_one, rsync_one_all),
        ),
    ];
    rows.extend(scale_rows);
    print_table(&title, &rows);
    print_json(
        "sync",
        serde_json::json!({
            "tree_bytes": bytes,
            "files": files,
            "initial_ms": maki_initial.as_millis() as u64,
            "rsync_initial_ms": rsync_initial.as_millis() as u64,
            "rsync_initial_all_ms": rsync_initial_all.as_millis() as u64,
            "initial_upload_ms": initial_upload_ms as u64,
            "noop_ms": maki_noop[0].as_millis() as u64,
            "noop_kept_ms": maki_noop[1].as_millis() as u64,
            "rsync_noop_ms": rsync_noop.as_millis() as u64,
            "one_change_ms": maki_one[0].as_millis() as u64,
            "one_change_kept_ms": maki_one[1].as_millis() as u64,
            "initial_switch_ms": initial_switch.as_millis() as u64,
            "one_change_switch_ms": switch_one[0].as_millis() as u64,
            "one_change_kept_switch_ms": switch_one[1].as_millis() as u64,
            "rsync_one_change_ms": rsync_one.as_millis() as u64,
            "rsync_noop_all_ms": rsync_noop_all.as_millis() as u64,
            "rsync_one_change_all_ms": rsync_one_all.as_millis() as u64,
            "uplink": uplink,
            "seed": seed,
        }),
    );
}

/// `n` with thousands separated by commas.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_times_are_read_as_utc() {
        let t = super::log_time("2026-11-26T09:05:09.250087Z").unwrap();
        let d = t.duration_since(std::time::SystemTime::UNIX_EPOCH).unwrap();
        // `date -u -d 2026-11-26T09:05:09Z +%s`
        assert_eq!(d.as_secs(), 1_795_683_909);
        assert_eq!(d.subsec_micros(), 250_087);
        assert!(super::log_time("2026-02-29T00:00:00Z").is_some());
        assert!(super::log_time("not a time").is_none());
    }
}
