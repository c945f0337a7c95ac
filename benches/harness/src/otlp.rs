//! A real OTLP/gRPC receiver (`otlp_receiver.py`, built from the
//! OpenTelemetry protocol definitions with PyPI's `opentelemetry-proto`
//! and `grpcio`) run in a namespace, recording what the nodes export as
//! JSON lines. `scripts/install-otlp-receiver.sh` installs its Python
//! packages (into `MAKIATTO_OTLP_VENV`, default
//! `/var/cache/makiatto/otlp-venv`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::wait::Wait;
use crate::{Namespace, Process};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/otlp_receiver.py");

/// The receiver's Python, with its packages.
pub fn python() -> PathBuf {
    let venv = std::env::var_os("MAKIATTO_OTLP_VENV").map_or_else(
        || PathBuf::from("/var/cache/makiatto/otlp-venv"),
        PathBuf::from,
    );
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/install-otlp-receiver.sh (scripts/install-deps.sh does)",
        python.display()
    );
    python
}

/// The receiver, recording into a file; stopped on drop.
pub struct OtlpReceiver {
    process: Option<Process>,
    pub out: PathBuf,
    log: PathBuf,
    listen: String,
    /// Answers without decoding (`--sink`): records one line per call,
    /// `{"signal": …, "bytes": …}`.
    sink: bool,
}

impl OtlpReceiver {
    /// Starts it in `ns`, listening on `listen` (`ADDR:PORT`), recording
    /// under `dir`; returns once the port is bound.
    pub fn start(ns: &Namespace, listen: &str, dir: &Path) -> OtlpReceiver {
        Self::started(ns, listen, dir, false)
    }

    /// Like [`OtlpReceiver::start`], but a collector that takes no CPU
    /// worth measuring (for benchmarks, where it shares the node's
    /// machine): each Export call is answered without decoding it, and
    /// recorded as `{"signal": …, "bytes": …}`.
    pub fn start_sink(ns: &Namespace, listen: &str, dir: &Path) -> OtlpReceiver {
        Self::started(ns, listen, dir, true)
    }

    fn started(ns: &Namespace, listen: &str, dir: &Path, sink: bool) -> OtlpReceiver {
        let mut r = OtlpReceiver {
            process: None,
            out: dir.join("otlp-received.jsonl"),
            log: dir.join("otlp-receiver.log"),
            listen: listen.to_owned(),
            sink,
        };
        r.resume(ns);
        r
    }

    /// Starts it again (after [`OtlpReceiver::stop`]), appending to the
    /// same file.
    pub fn resume(&mut self, ns: &Namespace) {
        let ready = self.out.with_extension("ready");
        let _ = std::fs::remove_file(&ready);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let python = python();
        let mut args = vec![
            python.to_str().unwrap(),
            SCRIPT,
            "--listen",
            &self.listen,
            "--out",
            self.out.to_str().unwrap(),
            "--ready",
            ready.to_str().unwrap(),
        ];
        if self.sink {
            args.push("--sink");
        }
        let process = self.process.insert(Process::spawn(
            ns.command(&args)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        ));
        Wait::up_to(Duration::from_secs(30)).until_seeing(
            &format!("the OTLP receiver listens on {}", self.listen),
            || {
                if let Some(status) = process.exited() {
                    panic!(
                        "the OTLP receiver exited ({status}):\n{}",
                        std::fs::read_to_string(&self.log).unwrap_or_default()
                    );
                }
                if ready.exists() {
                    Ok(())
                } else {
                    Err(String::new())
                }
            },
        );
    }

    /// Stops it (as a collector that went away).
    pub fn stop(&mut self) {
        drop(self.process.take());
    }

    /// Everything received so far.
    pub fn records(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// What was received of one signal (`span`, `metric`, `log`).
    pub fn of(&self, signal: &str) -> Vec<serde_json::Value> {
        self.records()
            .into_iter()
            .filter(|r| r["signal"] == signal)
            .collect()
    }
}
