//! Instruction counts: what a server executes in user space for a fixed
//! amount of work, the same whatever else the machine does (valgrind's
//! callgrind counts instructions; it does not time them). Wall-clock A/B
//! runs of two builds differ by 9–13% here, so a change of a few percent is
//! judged by these counts instead.
//!
//! The server runs under `valgrind --tool=callgrind --instr-atstart=no`
//! ([`callgrind_prefix`]); around the work, instrumentation is switched on
//! and off with `callgrind_control` (through vgdb, run where the server
//! runs: test hosts have a private `/tmp`), and the dump's total `Ir` is
//! read. (`--collect-atstart=no` would be wrong here: `--instr=on` does not
//! switch collection on, and every count would be 0.)
//! System calls are counted apart, on the server running normally
//! ([`count_syscalls`], perf's `raw_syscalls:sys_enter` tracepoint): under
//! valgrind a server makes system calls of valgrind's own.

use std::path::Path;
use std::process::{Command, Stdio};

/// The command-line prefix that runs a server under callgrind, counting
/// nothing until its instrumentation is switched on, its dumps written as
/// `DIR/callgrind.out.<pid>`.
pub fn callgrind_prefix(dir: &Path) -> Vec<String> {
    vec![
        "valgrind".into(),
        "--tool=callgrind".into(),
        "--instr-atstart=no".into(),
        "--vgdb=yes".into(),
        format!("--callgrind-out-file={}/callgrind.out.%p", dir.display()),
    ]
}

/// `callgrind_control ARGS PID`, run by `within` (a command prefix that
/// enters the server's namespaces, such as `ip netns exec NS`, or
/// `maki local exec NODE --`).
fn control(within: &[String], args: &[&str], pid: u32) {
    let mut cmd = Command::new(&within[0]);
    cmd.args(&within[1..])
        .arg("callgrind_control")
        .args(args)
        .arg(pid.to_string())
        .stdout(Stdio::null());
    let status = cmd.status().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed");
}

/// The instructions (`Ir`) server `pid` (running under callgrind, see
/// [`callgrind_prefix`]) executes while `work` runs, and work's result.
/// Its dumps are in `dir`.
pub fn count_instructions<T>(
    within: &[String],
    pid: u32,
    dir: &Path,
    work: impl FnOnce() -> T,
) -> (T, u64) {
    let (out, total, _) = count_instructions_timed(within, pid, dir, work);
    (out, total)
}

/// [`count_instructions`], with the wall-clock time the instrumentation
/// was on (from switching it on to switching it off): what a server does
/// per second whatever its load (timers, periodic exports) is counted in
/// proportion to it, and can be taken out with an idle count
/// ([`Idle`]).
pub fn count_instructions_timed<T>(
    within: &[String],
    pid: u32,
    dir: &Path,
    work: impl FnOnce() -> T,
) -> (T, u64, std::time::Duration) {
    control(within, &["--zero"], pid);
    let on = std::time::Instant::now();
    control(within, &["--instr=on"], pid);
    let out = work();
    control(within, &["--instr=off"], pid);
    let elapsed = on.elapsed();
    control(within, &["--dump=counted"], pid);
    let total = latest_total(dir, pid);
    (out, total, elapsed)
}

/// What a server under callgrind executes per second with no load: its
/// periodic work. Under callgrind a fixed batch of requests takes tens of
/// times longer than at full speed, so periodic work that is negligible
/// per request at real rates is counted many times over; this takes it
/// out.
#[derive(Debug, Clone, Copy)]
pub struct Idle {
    pub per_second: f64,
}

impl Idle {
    /// Instructions counted over `elapsed` that are not periodic work.
    pub fn net(self, total: u64, elapsed: std::time::Duration) -> f64 {
        (total as f64 - self.per_second * elapsed.as_secs_f64()).max(0.0)
    }
}

/// The total `Ir` of the newest dump of `pid` in `dir` (its `totals:`
/// line).
fn latest_total(dir: &Path, pid: u32) -> u64 {
    let prefix = format!("callgrind.out.{pid}");
    let newest = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .unwrap_or_else(|| panic!("no callgrind dump of {pid} in {}", dir.display()));
    let text = std::fs::read_to_string(newest.path()).expect("the dump");
    // `totals:` is this dump's cost; `summary:` (0 after `--zero` with
    // the instrumentation switched on later) is not.
    text.lines()
        .find_map(|l| l.strip_prefix("totals:"))
        .and_then(|n| n.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{}: no total", newest.path().display()))
}

/// The system calls the threads of `pids` make while `work` runs, and
/// work's result (perf's `raw_syscalls:sys_enter`, summed over them: every
/// process that may serve, since a worker that took no connection is
/// never scheduled and perf then counts nothing for it).
pub fn count_syscalls<T>(pids: &[u32], work: impl FnOnce() -> T) -> (T, u64) {
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    let perf = Command::new("perf")
        .args(["stat", "-x", ",", "-e", "raw_syscalls:sys_enter", "-p"])
        .arg(pids.join(","))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("perf starts (apt-get install linux-perf)");
    // perf attaches before counting; a short wait keeps the first requests
    // from slipping past it (they would only be undercounted).
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = work();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(perf.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let report = perf.wait_with_output().expect("perf ends");
    let text = String::from_utf8_lossy(&report.stderr);
    let calls = text
        .lines()
        .find(|l| l.contains("raw_syscalls:sys_enter"))
        .and_then(|l| l.split(',').next()?.trim().parse().ok())
        .unwrap_or_else(|| panic!("perf counted nothing:\n{text}"));
    (out, calls)
}

/// A node's daemon, restarted in the foreground under callgrind
/// (`maki local exec NODE -- valgrind … makiatto run`); ends with it.
pub struct UnderCallgrind {
    _daemon: crate::Process,
    /// valgrind's pid (the daemon's, as callgrind_control names it).
    pub pid: u32,
    /// The prefix that runs `callgrind_control` where the daemon runs.
    pub within: Vec<String>,
    /// Where its dumps go.
    pub dumps: std::path::PathBuf,
}

impl UnderCallgrind {
    /// Kills `node`'s daemon and starts it again under callgrind, dumping
    /// into `dumps`; returns once `ready` holds (the daemon serves).
    pub fn restart(
        cluster: &crate::Cluster,
        node: &str,
        dumps: &Path,
        ready: impl Fn() -> bool,
    ) -> UnderCallgrind {
        std::fs::create_dir_all(dumps).expect("the dump directory");
        let prefix = callgrind_prefix(dumps);
        // The daemon stays root here: a daemon that dropped to the
        // `makiatto` user is no longer dumpable, and vgdb, which valgrind
        // made as root, then never gets its answers (callgrind_control
        // waits forever). Where no `makiatto` user exists the daemon keeps
        // running as who started it, so the host's own mount namespace
        // gets a user database without one. What a request executes is the
        // same either way.
        let passwd = dumps.join("passwd-without-makiatto");
        let users = cluster.exec(node, &["cat", "/etc/passwd"]);
        let without: String = users
            .lines()
            .filter(|l| !l.starts_with("makiatto:"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&passwd, without).expect("the user database copy");
        cluster.exec(
            node,
            &[
                "mount",
                "--bind",
                passwd.to_str().expect("a UTF-8 path"),
                "/etc/passwd",
            ],
        );
        cluster.ok(&["local", "kill", node]);
        let mut argv: Vec<&str> = vec!["local", "exec", node, "--"];
        argv.extend(prefix.iter().map(String::as_str));
        argv.extend(["/usr/local/bin/makiatto", "run"]);
        // Its output (valgrind's and the daemon's) is kept: a daemon that
        // cannot start under valgrind says why there.
        let log = std::fs::File::create(dumps.join("daemon.log")).expect("the daemon's log");
        let daemon = crate::Process::spawn(
            cluster
                .command(&argv)
                .stdout(log.try_clone().expect("the daemon's log"))
                .stderr(log),
        );
        let ns = cluster
            .state()
            .hosts
            .iter()
            .find(|h| h.node == node)
            .expect("the node's host")
            .netns
            .clone();
        let mut pid = None;
        crate::wait_until(
            std::time::Duration::from_secs(120),
            &format!(
                "the daemon serves under callgrind (its output: {})",
                dumps.join("daemon.log").display()
            ),
            || {
                pid = crate::netns::netns_pids(&ns).into_iter().find(|p| {
                    let args = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                    let args = String::from_utf8_lossy(&args);
                    args.contains("callgrind") && args.contains("makiatto")
                });
                pid.is_some() && ready()
            },
        );
        let pid = pid.expect("the daemon under callgrind");
        UnderCallgrind {
            _daemon: daemon,
            pid,
            within: cluster.exec_prefix(node),
            dumps: dumps.to_owned(),
        }
    }

    /// Its instructions while `work` runs, and work's result.
    pub fn count<T>(&self, work: impl FnOnce() -> T) -> (T, u64) {
        count_instructions(&self.within, self.pid, &self.dumps, work)
    }

    /// [`UnderCallgrind::count`], with the time the count ran.
    pub fn count_timed<T>(&self, work: impl FnOnce() -> T) -> (T, u64, std::time::Duration) {
        count_instructions_timed(&self.within, self.pid, &self.dumps, work)
    }

    /// Its periodic work: instructions per second over `over` with no
    /// load.
    pub fn idle(&self, over: std::time::Duration) -> Idle {
        let ((), total, elapsed) = self.count_timed(|| std::thread::sleep(over));
        Idle {
            per_second: total as f64 / elapsed.as_secs_f64(),
        }
    }
}
