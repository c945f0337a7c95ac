//! Child processes whose peak resident memory is their own.
//!
//! `wait4`'s `ru_maxrss` for a child is not the child's alone: when a
//! process calls `exec`, Linux keeps the high-water mark of the memory it
//! had before (for a child made with `fork` or `vfork`, the parent's whole
//! resident set) as the floor of its `ru_maxrss`. A bench that holds a
//! 300 MiB history and then starts `makiatto` reads at least 300 MiB
//! whatever `makiatto` used. So commands whose memory is measured are
//! started by a [`Launcher`]: this same binary, re-executed before the
//! bench has loaded anything (a few MiB), which runs each command it is
//! sent and answers with its exit status, wall time and `ru_maxrss`.
//!
//! A bench that uses it calls [`Launcher::serve_if_asked`] first in `main`.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The environment variable that turns the bench binary into a launcher.
const SERVE: &str = "MAKIATTO_BENCH_LAUNCHER";

/// A small process of this binary that starts commands for the bench.
pub struct Launcher {
    child: Child,
    to: Option<ChildStdin>,
    from: BufReader<ChildStdout>,
}

/// One command's run, as its launcher saw it.
#[derive(Debug)]
pub struct Launched {
    /// Whether it exited with status 0.
    pub success: bool,
    /// Its wait status as `wait4` gave it.
    pub status: i32,
    /// From its start to its exit.
    pub took: Duration,
    /// Its own peak resident set (`ru_maxrss`), in bytes.
    pub peak_rss: u64,
    /// What it wrote to standard output.
    pub stdout: String,
}

impl Launcher {
    /// Starts the launcher: call it early, before the bench holds much
    /// memory, since the launcher starts as a copy of this process.
    pub fn start() -> Launcher {
        let exe = std::env::current_exe().expect("the bench binary's path");
        let mut child = Command::new(exe)
            .env(SERVE, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the launcher starts");
        let to = child.stdin.take().expect("the launcher's stdin");
        let from = BufReader::new(child.stdout.take().expect("the launcher's stdout"));
        Launcher {
            child,
            to: Some(to),
            from,
        }
    }

    /// Runs `program` with `args` from the launcher and waits for it.
    pub fn run(&mut self, program: impl Into<OsString>, args: &[OsString]) -> Launched {
        let argv: Vec<String> = std::iter::once(program.into())
            .chain(args.iter().cloned())
            .map(|a| a.into_string().expect("arguments are UTF-8"))
            .collect();
        let line = json!({ "argv": argv }).to_string();
        let to = self.to.as_mut().expect("the launcher runs");
        writeln!(to, "{line}").expect("send the launcher a command");
        to.flush().expect("send the launcher a command");
        let mut answer = String::new();
        self.from
            .read_line(&mut answer)
            .expect("read the launcher's answer");
        let answer: Value = serde_json::from_str(&answer).expect("the launcher answers JSON");
        Launched {
            success: answer["success"].as_bool().unwrap_or(false),
            status: answer["status"].as_i64().unwrap_or(-1) as i32,
            took: Duration::from_micros(answer["micros"].as_u64().unwrap_or(0)),
            peak_rss: answer["maxrss_kib"].as_u64().unwrap_or(0) * 1024,
            stdout: answer["stdout"].as_str().unwrap_or_default().to_owned(),
        }
    }

    /// In the launcher process: serves commands until the bench closes its
    /// end, then exits. Elsewhere: returns at once.
    pub fn serve_if_asked() {
        if std::env::var_os(SERVE).is_none() {
            return;
        }
        let stdin = std::io::stdin();
        let mut out = std::io::stdout();
        for line in stdin.lock().lines() {
            let line = line.expect("read a command");
            let request: Value = serde_json::from_str(&line).expect("a command is JSON");
            let argv: Vec<&str> = request["argv"]
                .as_array()
                .expect("a command has argv")
                .iter()
                .map(|a| a.as_str().expect("argv is strings"))
                .collect();
            let answer = launch(&argv);
            writeln!(out, "{answer}").expect("answer the bench");
            out.flush().expect("answer the bench");
        }
        std::process::exit(0);
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        // Closing its stdin ends the launcher's loop.
        drop(self.to.take());
        let _ = self.child.wait();
    }
}

/// Runs one command and reports it (in the launcher).
// The child is reaped by `wait4` (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn launch(argv: &[&str]) -> Value {
    let started = Instant::now();
    let child = Command::new(argv[0])
        .args(&argv[1..])
        .stdout(Stdio::piped())
        .spawn()
        .expect("the command starts");
    let pid = child.id() as libc::pid_t;
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout {
        out.read_to_string(&mut stdout)
            .expect("read the command's output");
    }
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own child, not yet waited for; both pointers are valid.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4 on the command");
    json!({
        "success": libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "status": status,
        "micros": started.elapsed().as_micros() as u64,
        "maxrss_kib": usage.ru_maxrss as u64,
        "stdout": stdout,
    })
}
