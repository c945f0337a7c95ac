//! The daemon hands its sockets over to a new image of itself without
//! closing them: `makiatto reload` keeps the process (same pid), replaces
//! its image, and every DNS query and HTTP request asked meanwhile is
//! answered; a new binary that fails to start gives the sockets back to
//! the previous one, which serves on and says so.
//!
//! A daemon on a temporary data directory, on this machine, with DNS and
//! HTTP on free ports of the loopback's addresses.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failure is a panic

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use makiatto_harness::daemon::on;
use makiatto_harness::{Binaries, Wait, stdout};
use serde_json::Value;

/// A port free for UDP and TCP now.
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

struct Running {
    child: Child,
    dns: u16,
    http: u16,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path) -> Running {
    let (dns, http) = (free_port(), free_port());
    let child = on(dir)
        .env("MAKIATTO_DNS_PORT", dns.to_string())
        .env("MAKIATTO_HTTP_PORT", http.to_string())
        .env("MAKIATTO_HTTPS_PORT", "0")
        .env("MAKIATTO_DOT_PORT", "0")
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let r = Running { child, dns, http };
    Wait::up_to(Duration::from_secs(30))
        .every(Duration::from_millis(20))
        .until("the daemon answers", || {
            std::os::unix::net::UnixStream::connect(dir.join("control.sock")).is_ok()
        });
    r
}

fn health(dir: &Path) -> Value {
    let out = stdout(on(dir).args(["health", "--json"]));
    serde_json::from_str(&out).unwrap()
}

/// Clients asking the daemon all along: DNS over UDP (any answer counts:
/// there are no zones, so REFUSED) and HTTP/1.1 on new connections (any
/// status counts). Every question unanswered is a failure.
struct Clients {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<Vec<String>>>,
}

impl Clients {
    fn start(dns: u16, http: u16) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let dns_client = {
            let (stop, answered) = (stop.clone(), answered.clone());
            std::thread::spawn(move || {
                let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
                socket.connect(("127.0.0.1", dns)).unwrap();
                socket
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                let mut failures = Vec::new();
                let mut id: u16 = 1;
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::SeqCst) {
                    id = id.wrapping_add(1);
                    let mut q = id.to_be_bytes().to_vec();
                    q.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
                    q.extend_from_slice(b"\x07example\x04test\x00\x00\x01\x00\x01");
                    socket.send(&q).unwrap();
                    let deadline = Instant::now() + Duration::from_secs(5);
                    loop {
                        match socket.recv(&mut buf) {
                            Ok(n) if n >= 2 && buf[..2] == id.to_be_bytes() => {
                                answered.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            Ok(_) if Instant::now() < deadline => continue,
                            other => {
                                failures.push(format!("query {id}: {other:?}"));
                                break;
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                failures
            })
        };
        let http_client = {
            let (stop, answered) = (stop.clone(), answered.clone());
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let exchange = (|| -> std::io::Result<String> {
                        let mut s = TcpStream::connect(("127.0.0.1", http))?;
                        s.set_read_timeout(Some(Duration::from_secs(10)))?;
                        s.write_all(
                            b"GET / HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n",
                        )?;
                        let mut out = String::new();
                        s.read_to_string(&mut out)?;
                        Ok(out)
                    })();
                    match exchange {
                        Ok(r) if r.starts_with("HTTP/1.1 ") => {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        other => failures.push(format!("{other:?}")),
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                failures
            })
        };
        Clients {
            stop,
            answered,
            threads: vec![dns_client, http_client],
        }
    }

    /// Waits until `more` questions more were answered.
    fn answered_more(&self, more: u64) {
        let from = self.answered.load(Ordering::Relaxed);
        Wait::up_to(Duration::from_secs(30)).until("the clients are answered", || {
            self.answered.load(Ordering::Relaxed) >= from + more
        });
    }

    /// Stops them; every failure.
    fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    }
}

#[test]
fn a_reload_replaces_the_image_and_answers_everything_asked_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path());
    let before = health(dir.path())["daemon"].clone();
    assert!(before["sockets"].as_u64().unwrap() >= 4, "{before}");
    let clients = Clients::start(d.dns, d.http);
    clients.answered_more(200);
    let out = on(dir.path()).arg("reload").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    clients.answered_more(200);
    let failures = clients.stop();
    assert!(failures.is_empty(), "unanswered meanwhile: {failures:#?}");
    let after = health(dir.path())["daemon"].clone();
    assert_eq!(after["pid"], before["pid"], "the same process");
    assert_ne!(after["started_unix_millis"], before["started_unix_millis"]);
    assert_eq!(after["last_handover"]["outcome"], "done", "{after}");
    assert_eq!(after["sockets"], before["sockets"]);
}

#[test]
fn a_new_binary_that_fails_to_start_gives_the_sockets_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path());
    let before = health(dir.path())["daemon"].clone();
    // A build that passes the check and then cannot start: a makiatto
    // started with a data directory it cannot make.
    let real = Binaries::of_this_build().makiatto();
    let check = stdout(std::process::Command::new(&real).arg("handover-check"));
    let broken = dir.path().join("makiatto-broken");
    std::fs::write(
        &broken,
        format!(
            "#!/bin/sh\nif [ \"$1\" = handover-check ]; then echo '{}'; exit 0; fi\nexec {} --data-dir /proc/makiatto-cannot-be-here run\n",
            check.trim(),
            real.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    let clients = Clients::start(d.dns, d.http);
    clients.answered_more(200);
    let out = on(dir.path())
        .args(["reload", "--binary", broken.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the reload reports the failure");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("did not take") && said.contains("serves on"),
        "{said}"
    );
    clients.answered_more(200);
    let failures = clients.stop();
    assert!(failures.is_empty(), "unanswered meanwhile: {failures:#?}");
    let after = health(dir.path())["daemon"].clone();
    assert_eq!(after["pid"], before["pid"]);
    let outcome = after["last_handover"]["outcome"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(outcome.starts_with("fell back:"), "{after}");
    assert!(outcome.contains("makiatto-cannot-be-here"), "{outcome}");
}

#[test]
fn a_binary_that_is_not_makiatto_is_refused_before_anything_changes() {
    let dir = tempfile::tempdir().unwrap();
    let _d = start(dir.path());
    let before = health(dir.path())["daemon"].clone();
    let out = on(dir.path())
        .args(["reload", "--binary", "/bin/false"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("failed its check") && said.contains("nothing changed"),
        "{said}"
    );
    let after = health(dir.path())["daemon"].clone();
    assert_eq!(after["started_unix_millis"], before["started_unix_millis"]);
}
