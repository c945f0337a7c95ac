//! The HTTP sockets: port 80 (HTTP/1.1) and port 443 (TLS by SNI, HTTP/2
//! or HTTP/1.1 by ALPN), hyper underneath.
//!
//! One serving thread per CPU, each a single-threaded tokio runtime with
//! its own `SO_REUSEPORT` listeners: the kernel spreads connections over
//! them, and a connection (its TLS, hyper, its streams and the handler)
//! lives on one thread from accept to close. A shared work-stealing
//! runtime woke idle workers and moved tasks between threads on nearly
//! every request; here no request crosses a thread, except a large file's
//! read of uncached pages on the blocking pool.
//!
//! Limits: TLS handshakes and request heads must arrive within 10 s,
//! request heads are at most 64 KiB (431 beyond), HTTP/2 allows 128
//! streams per connection, and at most 4096 connections are served at once.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};

use super::handler::{Ctx, handle};
use super::{Ended, Http};
use crate::handover::{Drain, FIRST_REQUEST_WITHIN, Handover, IDLE_CLOSE_AFTER, Role};

/// Where to listen.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub http: u16,
    pub https: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Ports {
            http: 80,
            https: 443,
        }
    }
}

const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const HANDSHAKE: Duration = Duration::from_secs(10);
/// How long an ended HTTP/2 connection may take to send its last writes.
const LINGER: Duration = Duration::from_secs(10);
const MAX_HEAD: usize = 64 << 10;
const MAX_STREAMS: u32 = 128;
const MAX_CONNECTIONS: usize = 4096;
/// The most TLS records a connection seals ahead of what the socket took:
/// one piece of a large file (`handler::CHUNK`).
const SEALED_AHEAD: usize = 256 << 10;

fn listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

/// How many serving threads: one per CPU this process may run on.
fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(64))
}

/// Binds the ports (those not 0), one listener per serving thread and
/// address family, here (where the process may still bind low ports), or
/// takes those an earlier image handed over; keeps them for the next
/// image; then starts the threads.
pub fn serve(http: Arc<Http>, ports: Ports, handover: &Handover) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let tls = match http.certs.clone().server_configs() {
        Ok(c) => Some(Arc::new(c)),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "no TLS configuration: HTTPS is not served");
            None
        }
    };
    let n = threads();
    let mut per_thread: Vec<Vec<(std::net::TcpListener, bool)>> =
        (0..n).map(|_| Vec::new()).collect();
    for (port, secure) in [(ports.http, false), (ports.https, true)] {
        if port == 0 || (secure && tls.is_none()) {
            continue;
        }
        let role = if secure { Role::Https } else { Role::Http };
        for addr in [
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
        ] {
            let inherited: Vec<std::net::TcpListener> = handover
                .sockets
                .take(role, addr)
                .into_iter()
                .map(std::net::TcpListener::from)
                .collect();
            // All of an address's listeners, or none: a group the kernel
            // spreads over must be whole.
            let group = if inherited.is_empty() {
                (0..n)
                    .map(|_| listener(addr))
                    .collect::<std::io::Result<Vec<_>>>()
            } else {
                Ok(inherited)
            };
            match group {
                Ok(ls) => {
                    for (t, l) in ls.into_iter().enumerate() {
                        let _ = l.set_nonblocking(true);
                        handover.sockets.keep(role, l.as_fd());
                        per_thread[t % n].push((l, secure));
                    }
                }
                Err(e) => tracing::error!(%addr, error = %e, "cannot listen for HTTP"),
            }
        }
    }
    let drain = handover.drains.connections.clone();
    for (t, listeners) in per_thread.into_iter().enumerate() {
        if listeners.is_empty() {
            continue;
        }
        let http = http.clone();
        let tls = tls.clone();
        let slots = slots.clone();
        let drain = drain.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("makiatto-http-{t}"))
            .spawn(move || serve_thread(http, listeners, tls, slots, drain));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start an HTTP serving thread");
        }
    }
    tracing::info!(
        http = ports.http,
        https = ports.https,
        threads = n,
        "HTTP serving"
    );
}

/// One serving thread: its listeners, and every connection they accept.
fn serve_thread(
    http: Arc<Http>,
    listeners: Vec<(std::net::TcpListener, bool)>,
    tls: Option<Arc<TlsConfigs>>,
    slots: Arc<tokio::sync::Semaphore>,
    drain: Drain,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start an HTTP serving thread's runtime");
            return;
        }
    };
    runtime.block_on(async move {
        let mut accepting = tokio::task::JoinSet::new();
        for (l, secure) in listeners {
            match TcpListener::from_std(l) {
                Ok(l) => {
                    accepting.spawn(accept(
                        http.clone(),
                        l,
                        tls.clone().filter(|_| secure),
                        slots.clone(),
                        drain.clone(),
                    ));
                }
                Err(e) => tracing::error!(error = %e, "cannot register an HTTP listener"),
            }
        }
        while accepting.join_next().await.is_some() {}
        // Drained: the connections still open finish here, until the
        // process's image is replaced.
        std::future::pending::<()>().await;
    });
}

/// Accepts connections until a handover drains (the listener stays open
/// for the next image: new connections wait in its queue).
async fn accept(
    http: Arc<Http>,
    l: TcpListener,
    tls: Option<Arc<TlsConfigs>>,
    slots: Arc<tokio::sync::Semaphore>,
    drain: Drain,
) {
    loop {
        let accepted = tokio::select! {
            a = l.accept() => a,
            _ = drain.wait() => return,
        };
        let (stream, _) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let http = http.clone();
        let tls = tls.clone();
        let busy = drain.busy();
        let drain = drain.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _busy = busy;
            connection(http, stream, tls, drain).await;
        });
    }
}

/// What an HTTP/1.1 connection's service shares with its drain.
#[derive(Clone)]
struct H1Drain {
    drain: Drain,
    /// Whether the connection has sent a request yet.
    asked: Arc<AtomicBool>,
}

impl H1Drain {
    fn new(drain: &Drain) -> H1Drain {
        H1Drain {
            drain: drain.clone(),
            asked: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// An HTTP/1.1 connection, closed gracefully when a handover drains: its
/// next response says `Connection: close` (the service adds it), and if
/// it sends no request within `IDLE_CLOSE_AFTER` (`FIRST_REQUEST_WITHIN`
/// for one that has asked nothing yet: its request is on its way), it is
/// closed idle. A connection hyper ended for what the client sent is
/// counted.
async fn h1<I, S, B>(io: I, svc: S, h1: &H1Drain, ended: impl Fn(Ended))
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .max_header_size(MAX_HEAD)
        .serve_connection(io, svc);
    let mut conn = std::pin::pin!(conn);
    let count = |r: Result<(), hyper::Error>| {
        if let Some(why) = r.err().as_ref().and_then(Ended::of_h1) {
            ended(why);
        }
    };
    tokio::select! {
        r = conn.as_mut() => return count(r),
        _ = h1.drain.wait() => {}
    }
    let grace = if h1.asked.load(Ordering::Relaxed) {
        IDLE_CLOSE_AFTER
    } else {
        FIRST_REQUEST_WITHIN
    };
    tokio::select! {
        r = conn.as_mut() => return count(r),
        _ = tokio::time::sleep(grace) => {}
    }
    conn.as_mut().graceful_shutdown();
    count(conn.await);
}

async fn connection(
    http: Arc<Http>,
    stream: TcpStream,
    tls: Option<Arc<TlsConfigs>>,
    drain: Drain,
) {
    let Some(configs) = tls else {
        let h = H1Drain::new(&drain);
        let svc = service(http.clone(), None, Some(h.clone()));
        h1(TokioIo::new(stream), svc, &h, |why| http.ended(why)).await;
        return;
    };
    let handshake = async {
        let start =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream)
                .await?;
        let config = configs.for_hello(&start.client_hello());
        start.into_stream(config).await
    };
    let mut stream = match tokio::time::timeout(HANDSHAKE, handshake).await {
        Ok(Ok(s)) => s,
        _ => {
            http.ended(Ended::TlsFailed);
            return;
        }
    };
    // A large file's piece is sealed whole and leaves in one `writev` of
    // 16 records, not four of four (rustls's default limit, 64 KiB).
    stream.get_mut().1.set_buffer_limit(Some(SEALED_AHEAD));
    let (_, conn) = stream.get_ref();
    let h2 = conn.alpn_protocol() == Some(b"h2");
    let sni = conn
        .server_name()
        .map(|s| Arc::from(s.trim_end_matches('.').to_ascii_lowercase()));
    if h2 {
        let svc = service(http.clone(), Some(sni), None);
        // Gathered: a round of responses leaves in one TLS record and one
        // syscall, not one each (see `gather`).
        let (io, sender) = super::gather::gathered(stream);
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_concurrent_streams(MAX_STREAMS)
            .max_header_list_size(MAX_HEAD as u32)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(10))
            .serve_connection(TokioIo::new(io), svc);
        // A handover drains it with GOAWAY: streams begun are answered,
        // the client opens new ones on a new connection.
        let conn = async move {
            let mut conn = std::pin::pin!(conn);
            let r = tokio::select! {
                r = conn.as_mut() => r,
                _ = drain.wait() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = &r
                && !from_io(e)
            {
                http.ended(Ended::H2Error);
            }
            r
        };
        super::gather::drive(conn, sender, LINGER).await;
    } else {
        let h = H1Drain::new(&drain);
        let svc = service(http.clone(), Some(sni), Some(h.clone()));
        h1(TokioIo::new(stream), svc, &h, |why| http.ended(why)).await;
    }
}

/// Whether an error comes from the socket (a client that went away)
/// rather than from what the client sent.
fn from_io(e: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// The service of a connection; an HTTP/1.1 one (`h1_drain`) answers with
/// `Connection: close` once a handover drains.
fn service(
    http: Arc<Http>,
    tls: Option<Option<Arc<str>>>,
    h1_drain: Option<H1Drain>,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = hyper::Response<crate::telemetry::http::Measured<super::handler::Body>>,
    Error = Infallible,
    Future: Send + 'static,
> {
    service_fn(move |req| {
        let routes = http.routes.load_full();
        // Telemetry: begun with the head; `server.address` only for a
        // configured domain or alias.
        let address = super::handler::host_of(&req).filter(|h| routes.get(h).is_some());
        let exchange = crate::telemetry::http::begin(&req, tls.is_some(), address.as_deref());
        drop(address);
        let ctx = Ctx {
            routes,
            tls: tls.clone(),
            challenges: http.challenges.load_full(),
            http: http.clone(),
            served: Default::default(),
        };
        if let Some(h) = &h1_drain {
            h.asked.store(true, Ordering::Relaxed);
        }
        let closing = h1_drain.as_ref().is_some_and(|h| h.drain.started());
        async move {
            let handled = Box::pin(handle(req, &ctx));
            let mut r = match exchange.ids() {
                Some(ids) => crate::telemetry::context::InSpan::new(ids, handled).await,
                None => handled.await,
            };
            ctx.http.count(r.status());
            if closing {
                r.headers_mut().insert(
                    hyper::header::CONNECTION,
                    hyper::header::HeaderValue::from_static("close"),
                );
            }
            // The exchange ends when hyper drops the body (last byte sent).
            Ok(exchange.respond(r, &ctx.served))
        }
    })
}

/// Certificates by SNI name: self-signed ones made on first use, until the
/// ACME subsystem installs issued ones. Read on every handshake.
#[derive(Debug, Default)]
pub struct SiteCerts {
    by_name: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    /// Names with an issued (not self-signed) certificate.
    issued: RwLock<std::collections::HashSet<String>>,
    /// Names we may make a self-signed certificate for (hosts we serve).
    known: RwLock<std::collections::HashSet<String>>,
}

impl SiteCerts {
    /// Serves an issued certificate for these names from the next handshake.
    pub fn install(&self, names: &[String], key: Arc<CertifiedKey>) {
        if let (Ok(mut by), Ok(mut issued)) = (self.by_name.write(), self.issued.write()) {
            for n in names {
                let n = n.trim_end_matches('.').to_ascii_lowercase();
                by.insert(n.clone(), key.clone());
                issued.insert(n);
            }
        }
    }

    /// Does `host` have an issued certificate (so plain HTTP redirects)?
    pub fn has_issued(&self, host: &str) -> bool {
        self.issued_for(host).is_some()
    }

    /// The issued certificate for `host`, or for the wildcard covering it.
    fn issued_for(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        // In `install`'s order: names, then the issued set.
        let by = self.by_name.read().ok()?;
        let issued = self.issued.read().ok()?;
        let get = |name: &str| {
            issued
                .contains(name)
                .then(|| by.get(name).cloned())
                .flatten()
        };
        get(host).or_else(|| get(&super::routes::wildcard_of(host)?))
    }

    /// Does the issued certificate presented for `sni` also cover `host`?
    /// Then a client may reuse the connection for it (HTTP/2 coalescing,
    /// RFC 9113 §9.1.1); otherwise the request gets 421.
    pub fn covers(&self, sni: &str, host: &str) -> bool {
        match (self.issued_for(sni), self.issued_for(host)) {
            (Some(a), Some(b)) => Arc::ptr_eq(&a, &b),
            _ => false,
        }
    }

    /// The hosts served now (self-signed certificates are made only for them).
    pub fn set_known(&self, hosts: impl Iterator<Item = String>) {
        if let Ok(mut k) = self.known.write() {
            *k = hosts.collect();
        }
    }

    fn server_configs(self: Arc<Self>) -> anyhow::Result<TlsConfigs> {
        let make = |suites: Vec<rustls::SupportedCipherSuite>, ours_first: bool| {
            let mut provider = rustls::crypto::aws_lc_rs::default_provider();
            provider.cipher_suites = suites;
            let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_cert_resolver(self.clone());
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            config.ignore_client_order = ours_first;
            anyhow::Ok(Arc::new(config))
        };
        let default = rustls::crypto::aws_lc_rs::default_provider().cipher_suites;
        let mut ours = default.clone();
        // Stable: AES-128-GCM first, the rest in the provider's order.
        ours.sort_by_key(|s| !AES_128_GCM.contains(&s.suite()));
        Ok(TlsConfigs {
            ours: make(ours, true)?,
            clients: make(default, false)?,
        })
    }

    fn self_signed(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let made = rcgen::generate_simple_self_signed(vec![name.to_owned()]).ok()?;
        let cert = CertificateDer::from(made.cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let key = Arc::new(CertifiedKey::from_der(vec![cert], key, &provider).ok()?);
        if let Ok(mut m) = self.by_name.write() {
            m.insert(name.to_owned(), key.clone());
        }
        Some(key)
    }
}

/// The suites chosen first when the client's order is not followed.
const AES_128_GCM: [rustls::CipherSuite; 3] = [
    rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
    rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
];

/// The two TLS configurations, alike but for the choice of cipher suite.
///
/// Most clients list AES-256-GCM first (OpenSSL's default, so curl's),
/// with a SHA-384 key schedule. AES-128-GCM is as safe, its bulk
/// encryption takes 10 rounds instead of 14, and SHA-256 runs on the SHA
/// extensions where SHA-512 does not (aws-lc's SHA-512 takes its generic
/// path on AMD processors: 13% of a full handshake's CPU). So the server
/// chooses AES-128-GCM, as Go's does, unless the client lists
/// ChaCha20-Poly1305 first: a client without AES instructions says so that
/// way, and its order is followed.
pub struct TlsConfigs {
    ours: Arc<rustls::ServerConfig>,
    clients: Arc<rustls::ServerConfig>,
}

impl TlsConfigs {
    fn for_hello(&self, hello: &ClientHello<'_>) -> Arc<rustls::ServerConfig> {
        let first = hello.cipher_suites().iter().find(|s| {
            !matches!(
                s,
                rustls::CipherSuite::TLS_EMPTY_RENEGOTIATION_INFO_SCSV
                    | rustls::CipherSuite::Unknown(_)
            )
        });
        let chacha_first = matches!(
            first,
            Some(
                rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
                    | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
                    | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
            )
        );
        if chacha_first {
            self.clients.clone()
        } else {
            self.ours.clone()
        }
    }
}

/// The name a certificate is made for when the client sent no SNI or one
/// we do not serve (the request then gets 421).
const FALLBACK_NAME: &str = "makiatto.invalid";

impl ResolvesServerCert for SiteCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let asked = hello
            .server_name()
            .map(|s| s.trim_end_matches('.').to_ascii_lowercase());
        // The name itself, else the wildcard covering it, else the
        // fallback.
        let ours = |n: &String| {
            self.known.read().is_ok_and(|k| k.contains(n))
                || self.issued.read().is_ok_and(|i| i.contains(n))
        };
        let name = asked
            .and_then(|n| {
                if ours(&n) {
                    return Some(n);
                }
                super::routes::wildcard_of(&n).filter(|w| ours(w))
            })
            .unwrap_or_else(|| FALLBACK_NAME.to_owned());
        if let Some(k) = self.by_name.read().ok()?.get(&name) {
            return Some(k.clone());
        }
        self.self_signed(&name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A test connection's service: every request answered 200, marked
    /// asked, and with `Connection: close` once the drain has begun, as
    /// the daemon's service does.
    fn answering(
        h: H1Drain,
    ) -> impl hyper::service::Service<
        hyper::Request<hyper::body::Incoming>,
        Response = hyper::Response<http_body_util::Full<bytes::Bytes>>,
        Error = Infallible,
        Future: Send + 'static,
    > {
        service_fn(move |_req| {
            h.asked.store(true, Ordering::Relaxed);
            let mut r = hyper::Response::new(http_body_util::Full::from("ok"));
            if h.drain.started() {
                r.headers_mut().insert(
                    hyper::header::CONNECTION,
                    hyper::header::HeaderValue::from_static("close"),
                );
            }
            async { Ok(r) }
        })
    }

    /// A connection accepted just before a handover drains, whose client
    /// had not sent its request yet, is answered when the request comes
    /// later than the idle grace of a keep-alive connection, and closed
    /// with the answer.
    #[tokio::test(start_paused = true)]
    async fn a_request_on_its_way_is_answered_through_a_drain() {
        let drain = Drain::default();
        let (mut client, server) = tokio::io::duplex(4096);
        let h = H1Drain::new(&drain);
        let serving = tokio::spawn({
            let h = h.clone();
            async move { h1(TokioIo::new(server), answering(h.clone()), &h, |_| {}).await }
        });
        drain.start();
        // The client is slow: it sends its request later than a
        // keep-alive connection's grace.
        tokio::time::sleep(IDLE_CLOSE_AFTER * 3).await;
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n")
            .await
            .unwrap();
        let mut answer = vec![0u8; 512];
        let n = client.read(&mut answer).await.unwrap();
        assert!(
            answer[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&answer[..n])
        );
        // `Connection: close`: the connection ends with its answer.
        let started = tokio::time::Instant::now();
        serving.await.unwrap();
        assert!(started.elapsed() < IDLE_CLOSE_AFTER);
    }
}
