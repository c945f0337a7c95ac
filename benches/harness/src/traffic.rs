//! Load against every node of a cluster, from a network namespace of the
//! test: HTTPS clients (keep-alive over HTTP/1.1 and over HTTP/2, and one
//! that opens a new connection, with a full TLS handshake, per request)
//! and DNS clients over UDP, all at once, each failure counted and each
//! latency kept — what an upgrade or a restart under load is judged by.
//!
//! Like a browser, and unlike h2load, a keep-alive client goes on after
//! the server ends its connection: HTTP/1.1 `Connection: close` and
//! HTTP/2 GOAWAY mean "open a new connection for the next request". A
//! request that fails before any response on a connection that had
//! already carried one (the server closed it as the request left: the
//! idempotent request is sent again, RFC 9112 §9.3.1, RFC 9113 §8.7) is
//! sent once more on a new connection and counted as `retried`, apart
//! from failures; anything else that goes wrong — a refused or reset
//! connection, a timeout, a 5xx, a DNS query unanswered or answered
//! without records — is a failure.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

/// A request or a query gets this long.
const DEADLINE: Duration = Duration::from_secs(10);
/// A DNS query is unanswered after this long (a resolver gives up about
/// then and asks another server).
const DNS_DEADLINE: Duration = Duration::from_secs(3);
/// Errors kept per client, to say what failed.
const ERRORS_KEPT: usize = 5;

/// What the clients ask, and of whom.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `(node, address)` of every node.
    pub nodes: Vec<(String, IpAddr)>,
    /// The HTTPS host (SNI and `Host`) and path.
    pub host: String,
    pub path: String,
    /// The DNS name asked (type A).
    pub dns_name: String,
    /// A pause between one client's requests (none: as fast as answered).
    pub pause: Duration,
}

impl Plan {
    /// The example site's `/` on every node of `state` (and its name over
    /// DNS), with `pause` between one client's requests.
    pub fn example_site(state: &crate::State, pause: Duration) -> Plan {
        Plan {
            nodes: state
                .hosts
                .iter()
                .map(|h| {
                    let ip = h
                        .ipv4
                        .parse::<IpAddr>()
                        .unwrap_or_else(|e| panic!("{}: {e}", h.ipv4));
                    (h.node.clone(), ip)
                })
                .collect(),
            host: "example.test".into(),
            path: "/".into(),
            dns_name: "example.test".into(),
            pause,
        }
    }
}

/// What kind of client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    KeepAliveH1,
    KeepAliveH2,
    NewConnection,
    Dns,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::KeepAliveH1,
        Kind::KeepAliveH2,
        Kind::NewConnection,
        Kind::Dns,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::KeepAliveH1 => "HTTPS keep-alive HTTP/1.1",
            Kind::KeepAliveH2 => "HTTPS keep-alive HTTP/2",
            Kind::NewConnection => "HTTPS new connection per request",
            Kind::Dns => "DNS over UDP",
        }
    }
}

/// One client's run.
#[derive(Debug, Clone)]
pub struct Tally {
    pub kind: Kind,
    pub node: String,
    pub ok: u64,
    pub failures: u64,
    /// Sent again on a new connection after the server ended the one
    /// they went out on (not failures; see the module's docs).
    pub retried: u64,
    /// Connections the server ended (Connection: close, GOAWAY) that the
    /// client replaced.
    pub reconnects: u64,
    /// The first few failures, as said.
    pub errors: Vec<String>,
    /// (when it was sent, since the start; how long it took) of every
    /// answered request.
    pub latencies: Vec<(Duration, Duration)>,
    answered: Arc<AtomicU64>,
}

impl Tally {
    fn new(kind: Kind, node: &str, answered: Arc<AtomicU64>) -> Tally {
        Tally {
            kind,
            node: node.to_owned(),
            ok: 0,
            failures: 0,
            retried: 0,
            reconnects: 0,
            errors: Vec::new(),
            latencies: Vec::new(),
            answered,
        }
    }

    fn answered(&mut self, sent: Instant, started: Instant) {
        self.ok += 1;
        self.answered.fetch_add(1, Ordering::Relaxed);
        self.latencies
            .push((sent.duration_since(started), sent.elapsed()));
    }

    fn fail(&mut self, error: String) {
        self.failures += 1;
        if self.errors.len() < ERRORS_KEPT {
            self.errors.push(error);
        }
    }
}

/// Clients running; [`Load::stop`] ends them and returns what they saw.
pub struct Load {
    started: Instant,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    clients: Vec<JoinHandle<Tally>>,
}

impl Load {
    /// Starts one client of each kind against every node, in network
    /// namespace `netns` (`ip netns`).
    pub fn start(netns: &str, plan: &Plan) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut clients = Vec::new();
        for (node, ip) in &plan.nodes {
            for kind in Kind::ALL {
                let (netns, plan, node, ip, stop, answered) = (
                    netns.to_owned(),
                    plan.clone(),
                    node.clone(),
                    *ip,
                    stop.clone(),
                    answered.clone(),
                );
                let handle = std::thread::Builder::new()
                    .name(format!("load-{node}"))
                    .spawn(move || {
                        enter(&netns);
                        let mut tally = Tally::new(kind, &node, answered);
                        match kind {
                            Kind::Dns => dns_client(&plan, ip, started, &stop, &mut tally),
                            _ => {
                                let runtime = tokio::runtime::Builder::new_current_thread()
                                    .enable_all()
                                    .build()
                                    .expect("a runtime");
                                runtime.block_on(http_client(
                                    kind, &plan, ip, started, &stop, &mut tally,
                                ));
                            }
                        }
                        tally
                    })
                    .expect("a client thread");
                clients.push(handle);
            }
        }
        Load {
            started,
            stop,
            answered,
            clients,
        }
    }

    /// Requests and queries answered so far, by every client.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// How long the clients have run.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops the clients; what each saw.
    pub fn stop(self) -> Vec<Tally> {
        self.stop.store(true, Ordering::SeqCst);
        self.clients
            .into_iter()
            .map(|c| c.join().expect("a client thread ends"))
            .collect()
    }
}

/// This thread enters network namespace `netns`: its sockets are made there.
fn enter(netns: &str) {
    let file = std::fs::File::open(format!("/run/netns/{netns}"))
        .unwrap_or_else(|e| panic!("namespace {netns}: {e}"));
    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("entering namespace {netns}: {e}"));
}

/// A query for `name` A with id `id` (RD off, no EDNS).
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

fn dns_client(plan: &Plan, ip: IpAddr, started: Instant, stop: &AtomicBool, tally: &mut Tally) {
    let local: SocketAddr = if ip.is_ipv4() {
        "0.0.0.0:0".parse().expect("an address")
    } else {
        "[::]:0".parse().expect("an address")
    };
    let socket = UdpSocket::bind(local).expect("a UDP socket");
    socket
        .connect(SocketAddr::new(ip, 53))
        .expect("a DNS server address");
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("a timeout");
    let mut id: u16 = rand_id();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::SeqCst) {
        id = id.wrapping_add(1);
        let sent = Instant::now();
        let q = query(id, &plan.dns_name);
        if let Err(e) = socket.send(&q) {
            tally.fail(format!("cannot send a query: {e}"));
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        // Late answers to earlier queries are read past.
        let answer = loop {
            if sent.elapsed() > DNS_DEADLINE {
                break None;
            }
            match socket.recv(&mut buf) {
                Ok(n) if n >= 12 && buf[..2] == id.to_be_bytes() => break Some(n),
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                // An ICMP port unreachable (nothing bound): a failure now,
                // and the socket goes on.
                Err(e) => {
                    tally.fail(format!("query {id}: {e}"));
                    break Some(0);
                }
            }
        };
        match answer {
            None => tally.fail(format!(
                "query {id} unanswered within {} s",
                DNS_DEADLINE.as_secs()
            )),
            Some(0) => std::thread::sleep(Duration::from_millis(10)),
            Some(n) => {
                let rcode = buf[3] & 0x0f;
                let answers = u16::from_be_bytes([buf[6], buf[7]]);
                if rcode != 0 || answers == 0 || n < 12 {
                    tally.fail(format!(
                        "query {id}: rcode {rcode}, {answers} answer records"
                    ));
                } else {
                    tally.answered(sent, started);
                }
            }
        }
        if !plan.pause.is_zero() {
            std::thread::sleep(plan.pause);
        }
    }
}

fn rand_id() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (nanos ^ std::process::id()) as u16
}

/// One sender of requests on one connection.
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    async fn send(
        &mut self,
        req: hyper::Request<Empty<Bytes>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, hyper::Error> {
        match self {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }
}

async fn connect(kind: Kind, plan: &Plan, ip: IpAddr) -> Result<Sender, String> {
    let tcp = TcpStream::connect(SocketAddr::new(ip, 443))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(crate::load::any_certificate(provider))
        .with_no_client_auth();
    config.alpn_protocols = vec![if kind == Kind::KeepAliveH2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    let name = ServerName::try_from(plan.host.clone()).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    let io = TokioIo::new(tls);
    if kind == Kind::KeepAliveH2 {
        let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("HTTP/2 handshake failed: {e}"))?;
        tokio::spawn(conn);
        Ok(Sender::H2(sender))
    } else {
        let (sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("HTTP/1.1 handshake failed: {e}"))?;
        tokio::spawn(conn);
        Ok(Sender::H1(sender))
    }
}

/// One request on `sender`; its status and body read whole.
async fn request(sender: &mut Sender, plan: &Plan, h2: bool) -> Result<(), Failed> {
    let mut req = hyper::Request::builder()
        .uri(if h2 {
            format!("https://{}{}", plan.host, plan.path)
        } else {
            plan.path.clone()
        })
        .body(Empty::<Bytes>::new())
        .map_err(|e| Failed::Other(e.to_string()))?;
    if !h2 {
        req.headers_mut().insert(
            hyper::header::HOST,
            plan.host
                .parse()
                .map_err(|_| Failed::Other("a bad host".into()))?,
        );
    }
    let sent = tokio::time::timeout(DEADLINE, sender.send(req)).await;
    let response = match sent {
        Err(_) => {
            return Err(Failed::Other(format!(
                "no response within {} s",
                DEADLINE.as_secs()
            )));
        }
        Ok(Err(e)) => return Err(Failed::BeforeResponse(e.to_string())),
        Ok(Ok(r)) => r,
    };
    let status = response.status();
    let body = tokio::time::timeout(DEADLINE, response.into_body().collect()).await;
    match body {
        Err(_) => Err(Failed::Other("the body did not arrive in time".into())),
        Ok(Err(e)) => Err(Failed::Other(format!("the body broke off: {e}"))),
        Ok(Ok(_)) if status.is_server_error() => Err(Failed::Other(format!("status {status}"))),
        Ok(Ok(_)) => Ok(()),
    }
}

/// Why a request failed.
enum Failed {
    /// Before any response (on a reused connection, possibly the server
    /// closing it as the request left).
    BeforeResponse(String),
    Other(String),
}

async fn http_client(
    kind: Kind,
    plan: &Plan,
    ip: IpAddr,
    started: Instant,
    stop: &AtomicBool,
    tally: &mut Tally,
) {
    let h2 = kind == Kind::KeepAliveH2;
    let mut sender: Option<Sender> = None;
    let mut used = false;
    while !stop.load(Ordering::SeqCst) {
        let sent = Instant::now();
        let mut retried = false;
        let outcome = loop {
            if kind == Kind::NewConnection || sender.as_ref().is_some_and(Sender::is_closed) {
                if sender.take().is_some() && kind != Kind::NewConnection {
                    tally.reconnects += 1;
                }
                used = false;
            }
            let s = match sender.as_mut() {
                Some(s) => s,
                None => match connect(kind, plan, ip).await {
                    Ok(s) => sender.insert(s),
                    Err(e) => break Err(e),
                },
            };
            match request(s, plan, h2).await {
                Ok(()) => {
                    used = true;
                    break Ok(());
                }
                Err(Failed::BeforeResponse(_)) if used && !retried => {
                    // The server ended the connection as the request left:
                    // once more, on a new one.
                    retried = true;
                    tally.retried += 1;
                    sender = None;
                    used = false;
                }
                Err(Failed::BeforeResponse(e) | Failed::Other(e)) => {
                    sender = None;
                    break Err(e);
                }
            }
        };
        match outcome {
            Ok(()) => tally.answered(sent, started),
            Err(e) => {
                tally.fail(e);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        if !plan.pause.is_zero() {
            tokio::time::sleep(plan.pause).await;
        }
    }
}

/// Latency figures of a set of samples.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub count: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Latency {
    /// Of the samples sent within `[from, to)` since the start.
    pub fn of(tallies: &[&Tally], from: Duration, to: Duration) -> Latency {
        let mut all: Vec<Duration> = tallies
            .iter()
            .flat_map(|t| t.latencies.iter())
            .filter(|(at, _)| *at >= from && *at < to)
            .map(|(_, took)| *took)
            .collect();
        all.sort();
        let at = |q: f64| {
            all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        Latency {
            count: all.len(),
            p50: at(0.5),
            p99: at(0.99),
            max: all.last().copied().unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_is_a_dns_message_for_the_name() {
        let q = query(0x1234, "example.test.");
        assert_eq!(&q[..2], &[0x12, 0x34]);
        assert_eq!(&q[4..6], &[0, 1], "one question");
        assert_eq!(&q[12..20], b"\x07example");
        assert_eq!(&q[q.len() - 4..], &[0, 1, 0, 1], "A, IN");
    }
}
