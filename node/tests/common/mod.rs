//! Helpers for the daemon's integration tests: a cluster history built with
//! real keys, and a daemon process in a temporary data directory.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use makiatto_events::payload::{
    BlobRef, ChangeSummary, Coordinates, Genesis, Ipv4Net, NodeJoined, OperatorAdded,
    SitePublished, SshTarget,
};
use makiatto_events::{
    Blake3Hash, DomainName, Event, FeedWriter, NodeName, Payload, SealingSecret, SigningKey,
    WgPublicKey,
};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

pub const T0: u64 = 1_795_611_600_000; // 2026-11-25T13:00:00Z

pub fn writer(seed: u64) -> FeedWriter {
    FeedWriter::new(SigningKey::generate(&mut ChaCha20Rng::seed_from_u64(seed)))
}

pub fn genesis(w: &mut FeedWriter) -> Event {
    let operator = w.author();
    w.write(
        Payload::Genesis(Genesis {
            cluster_name: "test".into(),
            operator_name: "alice".into(),
            operator,
            mesh_range: Ipv4Net::new(Ipv4Addr::new(198, 51, 100, 0), 24).unwrap(),
        }),
        &[],
        T0,
    )
    .unwrap()
}

pub fn node_joined(w: &mut FeedWriter, parent: &Event, name: &str, seed: u64, at: u64) -> Event {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    w.write(
        Payload::NodeJoined(NodeJoined {
            name: NodeName::new(name).unwrap(),
            signing_key: SigningKey::generate(&mut rng).public(),
            sealing_key: SealingSecret::generate(&mut rng).public(),
            wg_public_key: WgPublicKey([seed as u8; 32]),
            ipv4: Some(Ipv4Addr::new(203, 0, 113, seed as u8)),
            ipv6: None,
            ssh: SshTarget {
                user: "root".into(),
                host: format!("203.0.113.{seed}"),
                port: 22,
            },
            coordinates: Coordinates::from_degrees(51.5, -0.12).unwrap(),
            nameserver: true,
            mesh_addr: Ipv4Addr::new(198, 51, 100, seed as u8),
        }),
        &[(parent.id(), parent.hlc())],
        at,
    )
    .unwrap()
}

pub fn site_published(w: &mut FeedWriter, parent: &Event, n: u64, at: u64) -> Event {
    w.write(
        Payload::SitePublished(SitePublished {
            domain: DomainName::new("example.test").unwrap(),
            manifest: BlobRef {
                hash: Blake3Hash::of(&n.to_be_bytes()),
                size: 100 + n,
            },
            summary: ChangeSummary {
                files: n,
                added: 1,
                changed: 0,
                removed: 0,
                bytes: 1000,
            },
            message: Some(format!("version {n}")),
        }),
        &[(parent.id(), parent.hlc())],
        at,
    )
    .unwrap()
}

pub fn operator_added(
    w: &mut FeedWriter,
    parent: &Event,
    name: &str,
    key: makiatto_events::AuthorKey,
    at: u64,
) -> Event {
    w.write(
        Payload::OperatorAdded(OperatorAdded {
            name: name.into(),
            key,
        }),
        &[(parent.id(), parent.hlc())],
        at,
    )
    .unwrap()
}

pub fn makiatto() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_makiatto"));
    cmd.env("MAKIATTO_LOG", "warn");
    // These daemons run on the host, side by side: no DNS ports.
    cmd.env("MAKIATTO_DNS_PORT", "0")
        .env("MAKIATTO_DOT_PORT", "0");
    cmd
}

/// Runs a read command against a data directory and returns its output.
pub fn run(data_dir: &Path, args: &[&str]) -> Output {
    makiatto()
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .expect("makiatto runs")
}

/// Pipes hex events into `makiatto append`.
pub fn append(data_dir: &Path, events: &[&Event]) -> Output {
    let mut child = makiatto()
        .arg("--data-dir")
        .arg(data_dir)
        .arg("append")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("makiatto append starts");
    let mut input = String::new();
    for e in events {
        input.push_str(&hex::encode(e.to_bytes()));
        input.push('\n');
    }
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

pub fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

/// A daemon on a temporary data directory; killed when dropped.
pub struct Daemon {
    pub child: Child,
    pub data_dir: PathBuf,
}

impl Daemon {
    pub fn start(data_dir: &Path) -> Daemon {
        let child = makiatto()
            .arg("--data-dir")
            .arg(data_dir)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("makiatto run starts");
        let daemon = Daemon {
            child,
            data_dir: data_dir.to_owned(),
        };
        daemon.wait_until_answering();
        daemon
    }

    pub fn socket(&self) -> PathBuf {
        self.data_dir.join("control.sock")
    }

    fn wait_until_answering(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if UnixStream::connect(self.socket()).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the daemon did not open its control socket within 30 s");
    }

    /// Sends one raw request line and returns the response line.
    pub fn request(&self, line: &str) -> serde_json::Value {
        let mut stream = UnixStream::connect(self.socket()).unwrap();
        stream.write_all(line.as_bytes()).unwrap();
        stream.write_all(b"\n").unwrap();
        let mut answer = String::new();
        BufReader::new(stream).read_line(&mut answer).unwrap();
        serde_json::from_str(&answer).unwrap()
    }

    /// Stops with SIGTERM and waits.
    pub fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
