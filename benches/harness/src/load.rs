//! Load at a fixed rate against every node of a cluster: HTTPS requests
//! and DNS queries, each with a client timeout, so that a failure counts
//! as a failure and not as the client starving on a shared machine.
//!
//! Every target gets its own thread per protocol, which sends on a fixed
//! schedule (the `n`-th request at `start + n / rate`, skipped when late
//! rather than sent in a burst, and counted failed), waits at most
//! [`TIMEOUT`] for the answer, and counts it per second: ok, failed (no
//! answer, a broken connection, or skipped while waiting on one),
//! wrong (an HTTP status that is not 200; a DNS answer that is not
//! NOERROR with addresses of nodes only). It runs until stopped.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How long a client waits for an answer before counting a failure.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// What the load asks of one target.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub addr: Ipv4Addr,
}

/// One second of one target and protocol.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Second {
    pub target: String,
    /// `https` or `dns`.
    pub protocol: String,
    /// Seconds since the load started.
    pub at: u64,
    pub ok: u64,
    /// No answer within the timeout, or a broken connection.
    pub failed: u64,
    /// An answer, but not the right one (HTTP status, DNS rcode or data).
    pub wrong: u64,
}

/// The load's settings.
#[derive(Debug, Clone)]
pub struct Load {
    pub targets: Vec<Target>,
    /// The site's name: the HTTPS requests' SNI and Host, the DNS question.
    pub domain: String,
    /// The HTTPS path asked.
    pub path: String,
    /// Requests per second per target and protocol.
    pub rate: u32,
}

/// A load running; [`Running::stop`] ends it.
pub struct Running {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Second>>,
    started: Instant,
}

impl Running {
    /// Seconds since it started (the `at` of its counts).
    pub fn at(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Ends the load; every second's counts.
    pub fn stop(self) -> Vec<Second> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap_or_default()
    }
}

impl Load {
    /// Starts the load on a thread inside network namespace `netns` (the
    /// threads it starts are in it too).
    pub fn start_in(self, netns: &str) -> Running {
        let path = format!("/var/run/netns/{netns}");
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("entering {path}: {e}"));
            self.run(started, &flag)
        });
        Running {
            stop,
            thread,
            started,
        }
    }

    /// Runs the load (blocking) until `stop`; every second's counts.
    fn run(&self, start: Instant, stop: &Arc<AtomicBool>) -> Vec<Second> {
        let nodes: Arc<Vec<Ipv4Addr>> = Arc::new(self.targets.iter().map(|t| t.addr).collect());
        let tls = Arc::new(tls_config());
        let mut threads = Vec::new();
        for t in &self.targets {
            for protocol in ["https", "dns"] {
                let (t, nodes, tls, stop) = (t.clone(), nodes.clone(), tls.clone(), stop.clone());
                let (domain, path, rate) = (self.domain.clone(), self.path.clone(), self.rate);
                threads.push(std::thread::spawn(move || {
                    let ask = |id: u16| match protocol {
                        "https" => https(&tls, t.addr, &domain, &path),
                        _ => dns(t.addr, &domain, id, &nodes),
                    };
                    schedule(&t.name, protocol, rate, start, &stop, ask)
                }));
            }
        }
        threads
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    }
}

/// The answer to one request.
enum Answer {
    Ok,
    Failed,
    Wrong,
}

/// Sends at `rate` per second until `stop`, counting per second.
fn schedule(
    target: &str,
    protocol: &str,
    rate: u32,
    start: Instant,
    stop: &AtomicBool,
    ask: impl Fn(u16) -> Answer,
) -> Vec<Second> {
    let mut seconds: Vec<Second> = Vec::new();
    let every = Duration::from_secs(1) / rate.max(1);
    let mut n: u32 = 0;
    while !stop.load(Ordering::SeqCst) {
        let due = every * n;
        let now = start.elapsed();
        if now < due {
            std::thread::sleep(due - now);
        } else if now > due + every {
            // Late (the last request took its timeout): the requests that
            // were due meanwhile count as failed (a visitor's would have
            // waited on the same dead server), and the schedule goes on
            // from now.
            let caught_up = (now.as_nanos() / every.as_nanos().max(1)) as u32 + 1;
            let second = now.as_secs();
            while seconds.len() as u64 <= second {
                seconds.push(Second {
                    target: target.to_owned(),
                    protocol: protocol.to_owned(),
                    at: seconds.len() as u64,
                    ..Second::default()
                });
            }
            seconds[second as usize].failed += u64::from(caught_up - n);
            n = caught_up;
            continue;
        }
        let second = start.elapsed().as_secs();
        while seconds.len() as u64 <= second {
            seconds.push(Second {
                target: target.to_owned(),
                protocol: protocol.to_owned(),
                at: seconds.len() as u64,
                ..Second::default()
            });
        }
        let slot = &mut seconds[second as usize];
        match ask(n as u16) {
            Answer::Ok => slot.ok += 1,
            Answer::Failed => slot.failed += 1,
            Answer::Wrong => slot.wrong += 1,
        }
        n += 1;
    }
    seconds
}

/// One HTTPS GET on a connection of its own (no session resumption, as a
/// new visitor): 200 is ok, another status wrong, anything else failed.
fn https(tls: &Arc<rustls::ClientConfig>, addr: Ipv4Addr, domain: &str, path: &str) -> Answer {
    let attempt = || -> Option<u16> {
        let deadline = Instant::now() + TIMEOUT;
        let sock = TcpStream::connect_timeout(&SocketAddr::from((addr, 443)), TIMEOUT).ok()?;
        sock.set_read_timeout(Some(TIMEOUT)).ok()?;
        sock.set_write_timeout(Some(TIMEOUT)).ok()?;
        let name = rustls::pki_types::ServerName::try_from(domain.to_owned()).ok()?;
        let conn = rustls::ClientConnection::new(tls.clone(), name).ok()?;
        let mut stream = rustls::StreamOwned::new(conn, sock);
        let request = format!("GET {path} HTTP/1.1\r\nHost: {domain}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).ok()?;
        let mut response = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            if Instant::now() > deadline {
                return None;
            }
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => response.extend_from_slice(&buf[..n]),
                // A close without close_notify after the whole response.
                Err(_) if !response.is_empty() => break,
                Err(_) => return None,
            }
        }
        let status = std::str::from_utf8(response.get(9..12)?).ok()?;
        status.parse().ok()
    };
    match attempt() {
        Some(200) => Answer::Ok,
        Some(_) => Answer::Wrong,
        None => Answer::Failed,
    }
}

/// One DNS query for `domain` A over UDP: NOERROR with at least one
/// address, every one of them a node's, is ok.
fn dns(addr: Ipv4Addr, domain: &str, id: u16, nodes: &[Ipv4Addr]) -> Answer {
    let attempt = || -> Option<Answer> {
        let sock = UdpSocket::bind(("0.0.0.0", 0)).ok()?;
        sock.set_read_timeout(Some(TIMEOUT)).ok()?;
        sock.send_to(&query(id, domain), (addr, 53)).ok()?;
        let mut buf = [0u8; 1500];
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if Instant::now() > deadline {
                return None;
            }
            let (n, _) = sock.recv_from(&mut buf).ok()?;
            let reply = &buf[..n];
            if reply.len() < 12 || u16::from_be_bytes([reply[0], reply[1]]) != id {
                continue;
            }
            return Some(match addresses(reply) {
                Some(a) if !a.is_empty() && a.iter().all(|a| nodes.contains(a)) => Answer::Ok,
                _ => Answer::Wrong,
            });
        }
    };
    attempt().unwrap_or(Answer::Failed)
}

/// A query for `domain` A, recursion not desired.
fn query(id: u16, domain: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in domain.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// The A records of a NOERROR reply's answer section; `None` for another
/// rcode or a reply that does not parse.
fn addresses(reply: &[u8]) -> Option<Vec<Ipv4Addr>> {
    if reply[3] & 0x0f != 0 {
        return None;
    }
    let qd = u16::from_be_bytes([reply[4], reply[5]]);
    let an = u16::from_be_bytes([reply[6], reply[7]]);
    let mut at = 12;
    for _ in 0..qd {
        at = skip_name(reply, at)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        at = skip_name(reply, at)?;
        let rtype = u16::from_be_bytes([*reply.get(at)?, *reply.get(at + 1)?]);
        let len = u16::from_be_bytes([*reply.get(at + 8)?, *reply.get(at + 9)?]) as usize;
        let data = reply.get(at + 10..at + 10 + len)?;
        if rtype == 1 && len == 4 {
            out.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        at += 10 + len;
    }
    Some(out)
}

/// The offset after a (possibly compressed) name starting at `at`.
fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *msg.get(at)? as usize;
        if len == 0 {
            return Some(at + 1);
        }
        if len & 0xc0 == 0xc0 {
            return Some(at + 2);
        }
        at += 1 + len;
    }
}

/// A TLS client that takes any certificate: the load measures whether the
/// node answers, and a node may serve its self-signed fallback while a
/// certificate is ordered.
fn tls_config() -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| panic!("TLS versions: {e}"))
        .dangerous()
        .with_custom_certificate_verifier(any_certificate(provider))
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    config
}

/// Completes any handshake whose signatures verify with `provider`: the
/// harness's clients measure answers, not which certificate (the health
/// checks judge that).
pub(crate) fn any_certificate(
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Arc<dyn rustls::client::danger::ServerCertVerifier> {
    Arc::new(AnyCertificate(provider))
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_is_read_back_and_answers_are_parsed() {
        let q = query(7, "example.test");
        assert_eq!(&q[..2], &[0, 7]);
        // A reply: the question, then one A record pointing at it.
        let mut reply = q.clone();
        reply[2] = 0x84;
        reply[7] = 1;
        reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 203, 0, 113, 2]);
        assert_eq!(addresses(&reply), Some(vec![Ipv4Addr::new(203, 0, 113, 2)]));
        reply[3] = 3;
        assert_eq!(addresses(&reply), None);
    }
}
