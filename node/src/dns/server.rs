//! The DNS sockets: UDP served by one plain thread per `SO_REUSEPORT`
//! socket (the kernel spreads queries over them; no task or allocation per
//! query; up to 32 queries per `recvmmsg` and their replies per
//! `sendmmsg`), TCP and DNS over TLS by tokio tasks with idle timeouts and a cap
//! on connections. All three call the same `answer::respond`.
//!
//! The sockets are bound here, or taken from an earlier image of the
//! process that handed them over (`handover`), and kept for the next one;
//! a handover stops the accept loops first and the UDP threads last.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd};

use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use super::answer::{Client, respond};
use super::geoip::Cache;
use super::{Counters, Dns};
use crate::handover::{Drain, Handover, Role};
use crate::telemetry::dns::{self as telemetry, Transport};

/// Where to listen.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub dns: u16,
    pub dot: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Ports { dns: 53, dot: 853 }
    }
}

/// A TCP or TLS connection is closed after this long without a query
/// (RFC 7766 §6.2.3 suggests seconds, not minutes).
const IDLE: Duration = Duration::from_secs(10);
/// TLS handshakes must finish within this.
const HANDSHAKE: Duration = Duration::from_secs(5);
/// Most TCP and TLS connections served at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 1024;

/// Queries a UDP socket holds while nobody reads it (a handover's
/// moment between two images): about four thousand small ones.
const RECEIVE_BUFFER: usize = 4 << 20;
/// How often a UDP thread blocked in `recvmmsg` looks whether to stop.
const STOP_CHECK: Duration = Duration::from_millis(100);

fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// A socket, ready for a UDP thread: blocking, with a receive timeout (to
/// look whether to stop) and a receive buffer that holds the queries of a
/// handover (beyond `net.core.rmem_max` with CAP_NET_ADMIN, which the
/// daemon keeps).
fn prepare_udp(socket: &std::net::UdpSocket) {
    let s = socket2::SockRef::from(socket);
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(STOP_CHECK));
    let forced = nix::sys::socket::setsockopt(
        socket,
        nix::sys::socket::sockopt::RcvBufForce,
        &RECEIVE_BUFFER,
    );
    if forced.is_err() {
        let _ = s.set_recv_buffer_size(RECEIVE_BUFFER);
    }
}

/// Steers each query to the socket of the CPU that received it (CPU mod
/// the number of sockets), instead of a hash of the client's address and
/// port: a few busy clients then never load one thread while the other
/// idles, and a query stays on the CPU whose cache holds it. Without it
/// (an old kernel) the hash still spreads them.
fn steer_by_cpu(socket: &std::net::UdpSocket, sockets: usize) {
    let mut program = [
        // A = the CPU the packet arrived on.
        libc::sock_filter {
            code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
            jt: 0,
            jf: 0,
            k: (libc::SKF_AD_OFF + libc::SKF_AD_CPU) as u32,
        },
        // A = A mod the number of sockets.
        libc::sock_filter {
            code: (libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: sockets as u32,
        },
        // The index of the socket in the group.
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_A) as u16,
            jt: 0,
            jf: 0,
            k: 0,
        },
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    if let Err(e) = nix::sys::socket::setsockopt(
        socket,
        nix::sys::socket::sockopt::AttachReusePortCbpf,
        &fprog,
    ) {
        tracing::debug!(error = %e, "queries are spread by hash, not by CPU");
    }
}

fn tcp_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// A TCP listener for `role` at `addr`: the one an earlier image handed
/// over, else a new one; kept for the next image either way.
fn tcp_listener_for(
    handover: &Handover,
    role: Role,
    addr: SocketAddr,
) -> std::io::Result<TcpListener> {
    let listener = match handover.sockets.take(role, addr).pop() {
        Some(fd) => std::net::TcpListener::from(fd),
        None => tcp_listener(addr)?,
    };
    listener.set_nonblocking(true)?;
    handover.sockets.keep(role, listener.as_fd());
    TcpListener::from_std(listener)
}

/// Binds every socket (or takes those an earlier image handed over) and
/// starts serving. A port that cannot be bound (IPv6 absent, port taken)
/// is said in the log; the rest still serve.
pub async fn serve(dns: Arc<Dns>, ports: Ports, handover: &Handover) {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    let unspecified = [
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, ports.dns)),
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, ports.dns)),
    ];
    for addr in unspecified.into_iter().filter(|_| ports.dns != 0) {
        let inherited: Vec<std::net::UdpSocket> = handover
            .sockets
            .take(Role::DnsUdp, addr)
            .into_iter()
            .map(std::net::UdpSocket::from)
            .collect();
        let sockets = if inherited.is_empty() {
            let per_family = if addr.is_ipv4() { threads } else { 1 };
            let mut bound = Vec::new();
            for i in 0..per_family {
                match udp_socket(addr) {
                    Ok(socket) => {
                        if i == 0 && per_family > 1 {
                            steer_by_cpu(&socket, per_family);
                        }
                        bound.push(socket);
                    }
                    Err(e) => {
                        tracing::error!(%addr, error = %e, "cannot listen for DNS over UDP");
                        break;
                    }
                }
            }
            bound
        } else {
            // The group and its steering program came with them.
            inherited
        };
        for (i, socket) in sockets.into_iter().enumerate() {
            prepare_udp(&socket);
            handover.sockets.keep(Role::DnsUdp, socket.as_fd());
            let dns = dns.clone();
            let counters = dns.counters("udp");
            let stop = handover.drains.datagrams.clone();
            let busy = stop.busy();
            let spawned = std::thread::Builder::new()
                .name(format!("dns-udp-{i}"))
                .spawn(move || {
                    let _busy = busy;
                    udp_loop(&dns, &socket, &counters, &stop)
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a DNS thread");
            }
        }
        match tcp_listener_for(handover, Role::DnsTcp, addr) {
            Ok(l) => {
                let drain = handover.drains.connections.clone();
                tokio::spawn(accept(dns.clone(), l, None, drain));
            }
            Err(e) => tracing::error!(%addr, error = %e, "cannot listen for DNS over TCP"),
        }
    }
    let tls = dns.tls.clone().server_config();
    for port_addr in [
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, ports.dot)),
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, ports.dot)),
    ]
    .into_iter()
    .filter(|_| ports.dot != 0)
    {
        match (tcp_listener_for(handover, Role::Dot, port_addr), &tls) {
            (Ok(l), Ok(config)) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
                let drain = handover.drains.connections.clone();
                tokio::spawn(accept(dns.clone(), l, Some(acceptor), drain));
            }
            (Err(e), _) => {
                tracing::error!(addr = %port_addr, error = %e, "cannot listen for DNS over TLS")
            }
            (_, Err(e)) => {
                tracing::error!(error = %e, "no TLS configuration for DNS over TLS");
                break;
            }
        }
    }
    tracing::info!(
        port = ports.dns,
        dot = ports.dot,
        udp_threads = threads,
        "DNS serving"
    );
}

/// Queries taken from the socket in one `recvmmsg`, replies sent in one
/// `sendmmsg`: under load the system calls per query fall by up to this.
const BATCH: usize = 32;
/// The largest query read; a longer datagram is dropped (a real query,
/// with EDNS options and padding, is far smaller).
const MAX_QUERY: usize = 4096;

/// A geo answer's choice as telemetry names it: the node and how far the
/// client is from it (computed only for a span that is kept).
fn geo_detail(
    compiled: &super::zone::Compiled,
    geo: Option<super::answer::GeoChoice>,
) -> Option<telemetry::GeoDetail<'_>> {
    let g = geo?;
    let node = compiled.geo.get(usize::from(g.node))?;
    Some(telemetry::GeoDetail {
        node: node.name.as_str(),
        distance_km: g
            .client
            .map(|c| super::geo::distance_km(c, (node.lat, node.lon))),
        ecs: g.ecs,
    })
}

/// Where a datagram came from, as the standard library says it.
fn std_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

/// Answers the queries of one socket until a handover stops it (after
/// the batch in hand).
fn udp_loop(dns: &Dns, socket: &std::net::UdpSocket, counters: &Counters, stop: &Drain) {
    let fd = socket.as_raw_fd();
    let Ok(mut bufs): Result<Box<[[u8; MAX_QUERY]; BATCH]>, _> =
        vec![[0u8; MAX_QUERY]; BATCH].into_boxed_slice().try_into()
    else {
        return;
    };
    let mut outs: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(1232)).collect();
    let mut rx = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut tx = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut cache = Cache::default();
    // Per batch: (length, source, truncated) of each datagram received;
    // then the replies due, by index, with their destinations.
    let mut got: Vec<(usize, Option<SockaddrStorage>, bool)> = Vec::with_capacity(BATCH);
    let mut due: Vec<(usize, SockaddrStorage)> = Vec::with_capacity(BATCH);
    // The replies of a batch not kept for telemetry, by index, and whether
    // each is a geo answer (kept all the same if the batch was slow).
    let mut unkept: Vec<(usize, bool)> = Vec::with_capacity(BATCH);
    while !stop.started() {
        got.clear();
        {
            let mut iovs = bufs.each_mut().map(|b| [IoSliceMut::new(b)]);
            // Waits for one datagram (at most `STOP_CHECK`), then takes
            // what else is queued.
            match recvmmsg(fd, &mut rx, iovs.iter_mut(), MsgFlags::MSG_WAITFORONE, None) {
                Ok(received) => got.extend(
                    received.map(|m| (m.bytes, m.address, m.flags.contains(MsgFlags::MSG_TRUNC))),
                ),
                Err(Errno::EINTR | Errno::EAGAIN) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "DNS receive failed");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
        }
        let compiled = dns.compiled.load();
        let geoip = dns.geoip.load();
        let alive = dns.alive.load(Ordering::Relaxed);
        due.clear();
        unkept.clear();
        let mut batch = telemetry::batch();
        for (i, (n, src, truncated)) in got.iter().enumerate() {
            let (Some(src), false) = (src, truncated) else {
                continue;
            };
            let Some(from) = std_addr(src) else {
                continue;
            };
            let mut locate = |ip| geoip.locate(ip, &mut cache);
            let mut client = Client {
                src: from.ip(),
                tcp: false,
                alive,
                locate: &mut locate,
                geo: None,
            };
            let replied = respond(&compiled, &bufs[i][..*n], &mut client, &mut outs[i]);
            counters.count(&outs[i], replied);
            let geo = client.geo;
            match telemetry::answered(
                Transport::Udp,
                &outs[i],
                replied,
                geo.is_some(),
                batch.as_mut(),
            ) {
                Some(kept) => kept.record(geo_detail(&compiled, geo)),
                None if replied && batch.is_some() => unkept.push((i, geo.is_some())),
                None => {}
            }
            if replied {
                due.push((i, *src));
            }
        }
        // A batch that took as long as a slow query keeps the rest of it.
        if let Some(b) = &mut batch
            && let Some(end) = b.slow_end()
        {
            for &(i, geo) in &unkept {
                b.slow(end, Transport::Udp, &outs[i], geo).record(None);
            }
        }
        // Send every reply; a partial send goes on with the rest, a
        // failed one is dropped (the client asks again).
        let mut sent = 0;
        while sent < due.len() {
            let rest = &due[sent..];
            let slices: [[IoSlice<'_>; 1]; BATCH] = std::array::from_fn(|j| {
                [IoSlice::new(
                    rest.get(j).map_or(&[][..], |(i, _)| &outs[*i]),
                )]
            });
            let addrs: [Option<SockaddrStorage>; BATCH] =
                std::array::from_fn(|j| rest.get(j).map(|(_, a)| *a));
            let n = rest.len();
            match sendmmsg(fd, &mut tx, &slices, &addrs[..n], [], MsgFlags::empty()) {
                Ok(r) => sent += r.count().max(1),
                Err(Errno::EINTR) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "DNS send failed");
                    sent += 1;
                }
            }
        }
    }
}

/// Accepts connections until a handover drains (the listener stays open
/// for the next image; the connections it holds end with this one).
async fn accept(
    dns: Arc<Dns>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    drain: Drain,
) {
    let transport = if tls.is_some() { "tls" } else { "tcp" };
    let counters = dns.counters(transport);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = drain.wait() => return,
        };
        let (stream, src) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "DNS accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue; // dropping the stream closes it
        };
        let _ = stream.set_nodelay(true);
        let dns = dns.clone();
        let counters = counters.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => stream_loop(&dns, stream, src, &counters, Transport::Tcp).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => stream_loop(&dns, s, src, &counters, Transport::Tls).await,
                        Ok(Err(e)) => tracing::debug!(%src, error = %e, "DoT handshake failed"),
                        Err(_) => tracing::debug!(%src, "DoT handshake timed out"),
                    }
                }
            }
        });
    }
}

/// Length-prefixed messages (RFC 1035 §4.2.2) until the client closes,
/// goes idle, or sends something unanswerable.
async fn stream_loop<S: AsyncRead + AsyncWrite + Unpin>(
    dns: &Dns,
    mut s: S,
    src: SocketAddr,
    counters: &Counters,
    transport: Transport,
) {
    let mut buf = vec![0u8; 65535];
    let mut out = Vec::with_capacity(4096);
    let mut cache = Cache::default();
    loop {
        let Ok(Ok(len)) = tokio::time::timeout(IDLE, s.read_u16()).await else {
            return;
        };
        let len = len as usize;
        let Ok(Ok(_)) = tokio::time::timeout(IDLE, s.read_exact(&mut buf[..len])).await else {
            return;
        };
        let replied = {
            let compiled = dns.compiled.load();
            let geoip = dns.geoip.load();
            let mut locate = |ip| geoip.locate(ip, &mut cache);
            let mut client = Client {
                src: src.ip(),
                tcp: true,
                alive: dns.alive.load(Ordering::Relaxed),
                locate: &mut locate,
                geo: None,
            };
            let mut batch = telemetry::batch();
            let replied = respond(&compiled, &buf[..len], &mut client, &mut out);
            let geo = client.geo;
            match telemetry::answered(transport, &out, replied, geo.is_some(), batch.as_mut()) {
                Some(kept) => kept.record(geo_detail(&compiled, geo)),
                None if replied => {
                    if let Some(b) = &mut batch
                        && let Some(end) = b.slow_end()
                    {
                        b.slow(end, transport, &out, geo.is_some())
                            .record(geo_detail(&compiled, geo));
                    }
                }
                None => {}
            }
            replied
        };
        counters.count(&out, replied);
        if !replied {
            return;
        }
        let mut framed = Vec::with_capacity(out.len() + 2);
        framed.extend_from_slice(&(out.len() as u16).to_be_bytes());
        framed.extend_from_slice(&out);
        if tokio::time::timeout(IDLE, s.write_all(&framed))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// The certificate DNS over TLS presents: self-signed for this node's
/// nameserver names until the HTTPS subsystem brings issued ones. Read on
/// every handshake, so a new one applies without a restart.
#[derive(Debug, Default)]
pub struct DotCerts {
    current: RwLock<Option<(Vec<String>, Arc<CertifiedKey>)>>,
    /// Issued certificates by name (they win over the self-signed one).
    issued: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl DotCerts {
    /// Presents this issued certificate for these names from the next
    /// handshake on.
    pub fn install(&self, names: &[String], key: Arc<CertifiedKey>) {
        if let Ok(mut i) = self.issued.write() {
            for n in names {
                i.insert(n.to_ascii_lowercase(), key.clone());
            }
        }
    }

    /// Makes a self-signed certificate for `<me>.ns.<zone>` of every zone,
    /// unless the current one already names exactly those.
    pub fn ensure_self_signed(&self, me: Option<&str>, zones: &[String]) {
        let mut names: Vec<String> = match me {
            Some(me) => zones.iter().map(|z| format!("{me}.ns.{z}")).collect(),
            None => Vec::new(),
        };
        if names.is_empty() {
            names.push("localhost".into());
        }
        if self
            .current
            .read()
            .is_ok_and(|c| c.as_ref().is_some_and(|(n, _)| *n == names))
        {
            return;
        }
        match self_signed(&names) {
            Ok(key) => {
                if let Ok(mut c) = self.current.write() {
                    *c = Some((names, Arc::new(key)));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot make a self-signed certificate for DNS over TLS")
            }
        }
    }

    fn server_config(self: Arc<Self>) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        if self.current.read().is_ok_and(|c| c.is_none()) {
            self.ensure_self_signed(None, &[]);
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self);
        config.alpn_protocols = vec![b"dot".to_vec()];
        Ok(Arc::new(config))
    }
}

fn self_signed(names: &[String]) -> anyhow::Result<CertifiedKey> {
    let made = rcgen::generate_simple_self_signed(names.to_vec())?;
    let cert = CertificateDer::from(made.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    Ok(CertifiedKey::from_der(vec![cert], key, &provider)?)
}

impl ResolvesServerCert for DotCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        {
            let issued = self.issued.read().ok()?;
            // The certificate for the name asked (kdig +tls-hostname sends
            // it), else any issued one (clients that send no SNI).
            let asked = hello
                .server_name()
                .map(|n| n.trim_end_matches('.').to_ascii_lowercase());
            if let Some(k) = asked
                .and_then(|n| issued.get(&n))
                .or_else(|| issued.values().next())
            {
                return Some(k.clone());
            }
        }
        self.current.read().ok()?.as_ref().map(|(_, k)| k.clone())
    }
}
