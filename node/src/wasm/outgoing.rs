//! A component's outgoing connections: wasi:http requests (this sender, in
//! place of wasmtime-wasi-http's default one, which would bring rustls'
//! `ring` provider beside the project's aws-lc-rs) and wasi:sockets TCP
//! (checked through `socket_addr_check`, see `sandbox`). Each request's
//! name is resolved once, every address checked (`destination`), and the
//! connection made to exactly the checked address: a second lookup could
//! answer differently (DNS rebinding). A call has a budget of outgoing
//! requests and connections (`wasm.outgoing_calls`), and every wait ends
//! by the call's deadline.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use super::destination::Destinations;

/// One call's outgoing budget and rule, shared by its sockets and requests.
#[derive(Clone)]
pub struct Outgoing {
    /// Whose calls these are, for the log: (domain, component path).
    caller: Arc<(Arc<str>, Arc<str>)>,
    rule: Destinations,
    left: Arc<AtomicU32>,
    deadline: Instant,
}

type Sent = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), Error>> + Send>,
    ),
    Error,
>;

impl Outgoing {
    pub fn new(
        caller: (Arc<str>, Arc<str>),
        rule: Destinations,
        calls: u32,
        deadline: Instant,
    ) -> Outgoing {
        Outgoing {
            caller: Arc::new(caller),
            rule,
            left: Arc::new(AtomicU32::new(calls)),
            deadline,
        }
    }

    /// Whether a connection to `ip` may be made (and, if so, one of the
    /// call's budget is spent).
    pub fn allow(&self, ip: IpAddr) -> bool {
        if let Err(why) = self.rule.check(ip) {
            let (domain, component) = &*self.caller;
            tracing::warn!(%domain, %component, %why, "a component's connection was refused");
            return false;
        }
        self.spend()
    }

    fn spend(&self) -> bool {
        let spent = self
            .left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if !spent {
            let (domain, component) = &*self.caller;
            tracing::warn!(%domain, %component, "a component made more outgoing calls than wasm.outgoing_calls allows");
        }
        spent
    }

    /// The time left for a step: the option's, at most until the deadline.
    fn within(&self, option: Option<Duration>) -> Duration {
        let left = self.deadline.saturating_duration_since(Instant::now());
        option.map_or(left, |o| o.min(left))
    }

    async fn send_checked(
        self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Sent {
        let uri = request.uri().clone();
        let authority = uri.authority().ok_or(Error::HttpRequestUriInvalid)?;
        let use_tls = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let port = authority
            .port_u16()
            .unwrap_or(if use_tls { 443 } else { 80 });
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::time::timeout(
                self.within(None),
                tokio::net::lookup_host((host.as_str(), port)),
            )
            .await
            .map_err(|_| Error::DnsTimeout)?
            .map_err(|_| Error::DnsError {
                rcode: None,
                info_code: None,
            })?
            .collect(),
        };
        // The first address that passes; the connection goes to it.
        let Some(addr) = addrs
            .iter()
            .copied()
            .find(|a| self.rule.check(a.ip()).is_ok())
        else {
            let (domain, component) = &*self.caller;
            tracing::warn!(%domain, %component, %host, addresses = ?addrs, "a component's request to a non-public address was refused");
            return Err(Error::DestinationIpProhibited);
        };
        if !self.spend() {
            return Err(Error::HttpRequestDenied);
        }
        let connect = self.within(options.and_then(|o| o.connect_timeout));
        let tcp = tokio::time::timeout(connect, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| Error::ConnectionTimeout)?
            .map_err(Error::Connect)?;
        let stream: Box<dyn Stream> = if use_tls {
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|_| Error::HttpRequestUriInvalid)?;
            let tls = tokio::time::timeout(
                connect,
                tokio_rustls::TlsConnector::from(tls_config()?).connect(name, tcp),
            )
            .await
            .map_err(|_| Error::ConnectionTimeout)?
            .map_err(Error::Tls)?;
            Box::new(tls)
        } else {
            Box::new(tcp)
        };
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(Error::from)?;
        let io = tokio::spawn(conn);
        // The request line names the path only (no proxy).
        *request.uri_mut() = uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .map_err(|_| Error::HttpRequestUriInvalid)?;
        let first_byte = self.within(options.and_then(|o| o.first_byte_timeout));
        let response = tokio::time::timeout(first_byte, sender.send_request(request))
            .await
            .map_err(|_| Error::ConnectionReadTimeout)?
            .map_err(Error::from)?;
        let io = async move {
            match io.await {
                Ok(r) => r.map_err(Error::from),
                Err(_) => Err(Error::ConnectionTerminated),
            }
        };
        Ok((
            response.map(|b| b.map_err(Error::from).boxed_unsync()),
            Box::new(io) as Box<dyn Future<Output = Result<(), Error>> + Send>,
        ))
    }
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T> Stream for T where T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}

impl WasiHttpHooks for Outgoing {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = Sent> + Send> {
        Box::new(self.clone().send_checked(request, options))
    }
}

/// The TLS client configuration: the project's provider (aws-lc-rs) and
/// the system's roots, made once.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, Error> {
    use rustls_platform_verifier::BuilderVerifierExt;
    static CONFIG: std::sync::OnceLock<Option<Arc<rustls::ClientConfig>>> =
        std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .ok()?
                .with_platform_verifier()
                .ok()
                .map(|b| Arc::new(b.with_no_client_auth()))
        })
        .clone()
        .ok_or(Error::TlsProtocolError)
}
