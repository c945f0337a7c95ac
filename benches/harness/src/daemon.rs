//! The daemon on a temporary data directory, on this machine rather than
//! in a test host: `makiatto` commands against the directory, and a
//! running daemon answering on its control socket. For the daemon's own
//! tests, which need neither root nor a cluster.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use makiatto_events::Event;

use crate::binaries::Binaries;
use crate::process::with_input;
use crate::wait::Wait;

/// `makiatto` of this build, logging only warnings. These daemons run on
/// this machine, side by side: no DNS ports.
pub fn makiatto() -> Command {
    let mut cmd = Command::new(Binaries::of_this_build().makiatto());
    cmd.env("MAKIATTO_LOG", "warn")
        .env("MAKIATTO_DNS_PORT", "0")
        .env("MAKIATTO_DOT_PORT", "0");
    cmd
}

/// `makiatto --data-dir DATA_DIR`, to be given its command.
pub fn on(data_dir: &Path) -> Command {
    let mut cmd = makiatto();
    cmd.arg("--data-dir").arg(data_dir);
    cmd
}

/// Runs a command against a data directory and returns what it did.
pub fn run(data_dir: &Path, args: &[&str]) -> Output {
    on(data_dir).args(args).output().expect("makiatto runs")
}

/// Pipes hex events into `makiatto append`.
pub fn append(data_dir: &Path, events: &[&Event]) -> Output {
    let mut input = String::new();
    for e in events {
        input.push_str(&hex::encode(e.to_bytes()));
        input.push('\n');
    }
    with_input(on(data_dir).arg("append"), input.as_bytes())
}

/// A daemon on a data directory; killed when dropped.
pub struct Daemon {
    pub child: Child,
    pub data_dir: PathBuf,
}

impl Daemon {
    /// `makiatto run` on `data_dir`, once it answers on its socket.
    pub fn start(data_dir: &Path) -> Daemon {
        let child = on(data_dir)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("makiatto run starts");
        let daemon = Daemon {
            child,
            data_dir: data_dir.to_owned(),
        };
        Wait::up_to(Duration::from_secs(30))
            .every(Duration::from_millis(20))
            .until("the daemon opens its control socket", || {
                UnixStream::connect(daemon.socket()).is_ok()
            });
        daemon
    }

    /// Its control socket.
    pub fn socket(&self) -> PathBuf {
        self.data_dir.join("control.sock")
    }

    /// Sends one raw request line and returns the response line.
    pub fn request(&self, line: &str) -> serde_json::Value {
        let mut stream = UnixStream::connect(self.socket()).expect("the control socket");
        stream
            .write_all(format!("{line}\n").as_bytes())
            .expect("a request is sent");
        let mut answer = String::new();
        BufReader::new(stream)
            .read_line(&mut answer)
            .expect("an answer");
        serde_json::from_str(&answer).unwrap_or_else(|e| panic!("not JSON: {answer:?}: {e}"))
    }

    /// Stops with SIGTERM and waits.
    pub fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
