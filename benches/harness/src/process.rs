//! Running commands: their output checked, input given on stdin, child
//! processes that end with the value holding them; the tools a test needs
//! and the privileges it needs.

use std::io::Write;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::wait::Wait;

/// Fails unless this runs as root (network namespaces need it).
pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test needs root (network namespaces)"
    );
}

/// Is `tool` on the PATH?
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Debian's libfaketime (package `faketime`), which sets one process's
/// wall clock apart from the machine's.
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The environment that runs a process with its wall clock `offset_secs`
/// ahead of the machine's (behind when negative), its monotonic clock
/// untouched (timers and timeouts keep their pace). Panics when
/// libfaketime is missing (`scripts/install-deps.sh` installs it).
pub fn clock_offset_env(offset_secs: i64) -> Vec<(&'static str, String)> {
    assert!(
        std::path::Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: run scripts/install-deps.sh (package faketime)"
    );
    vec![
        ("LD_PRELOAD", LIBFAKETIME.to_owned()),
        ("FAKETIME", format!("{offset_secs:+}")),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
    ]
}

/// Runs a command and returns its standard output; panics (and so cleans
/// up) when it fails, with what it printed.
pub fn stdout(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command with `input` on its standard input and returns what it
/// did. The input is written while the output is read, so neither pipe
/// fills up and stalls the other.
pub fn with_input(cmd: &mut Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let mut stdin = child.stdin.take().expect("a piped stdin");
    std::thread::scope(|scope| {
        // A command may end without reading all of it: that is its answer.
        scope.spawn(move || {
            let _ = stdin.write_all(input);
        });
        child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
    })
}

/// One JSON value per line (`--json` output, control answers).
pub fn json_lines<T: AsRef<[u8]> + ?Sized>(text: &T) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(text.as_ref())
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

/// A child process that is ended when this is dropped: asked to stop
/// (SIGTERM), then killed if it has not within five seconds.
#[derive(Debug)]
pub struct Process {
    child: Child,
}

impl Process {
    /// Starts `cmd`.
    pub fn spawn(cmd: &mut Command) -> Process {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?} starts: {e}"));
        Process { child }
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// How it ended, if it has.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let _ = Wait::up_to(Duration::from_secs(5))
            .every(Duration::from_millis(20))
            .holds(|| self.exited().is_some());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
