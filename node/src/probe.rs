//! `probe`: this node checks every node of the cluster (itself included)
//! from where it stands, as a visitor's resolver and browser would — and
//! looks at its own headroom. `maki health` asks every node and compares
//! what they found (`makiatto_protocol::probe`).
//!
//! - DNS, over UDP to each node's addresses: every zone's SOA (answered,
//!   authoritative, its serial), and the apex's A records for sample
//!   client subnets sent as EDNS Client Subnet (the geo decision).
//! - HTTPS, to each node's address: a TLS handshake per served name (each
//!   domain with a live site, and its aliases) and `HEAD /`; the
//!   certificate's dates and names, and whether it is the one the log
//!   issued for the name.
//! - Here: free disk of the data directory, available memory, and every
//!   blob of each deployed version present.
//!
//! Only what is asked is sent, to the nodes' public addresses, never
//! elsewhere; each exchange has a deadline, and the nodes are probed at
//! once.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::{Name, RData, RecordType};
use makiatto_projections::certificates::Certificates;
use makiatto_protocol::probe::{
    DnsCheck, HttpsCheck, LocalReport, ProbeReport, SeenCertificate, Space, TargetReport,
    VersionBlobs,
};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::content::Content;
use crate::liveness::Liveness;
use crate::replica::Replica;

/// How long one DNS question or one HTTPS exchange may take.
const DEADLINE: Duration = Duration::from_secs(3);
/// A DNS question is asked this many times before it counts as unanswered.
const TRIES: usize = 2;
/// Missing paths named in a report, at most.
const MISSING_NAMED: usize = 5;

/// What a probe reaches.
pub struct Prober {
    pub replica: Arc<Mutex<Replica>>,
    pub liveness: Liveness,
    pub content: Arc<Content>,
    pub data_dir: PathBuf,
    /// The ports the nodes serve on (this node's, which every node shares).
    pub dns_port: u16,
    pub https_port: u16,
}

/// A node to probe, from the peers projection.
struct Target {
    node: String,
    addresses: Vec<IpAddr>,
}

/// What the log says there is to check.
struct Expected {
    targets: Vec<Target>,
    zones: Vec<String>,
    /// Names served over HTTPS (domains with a live version, and their
    /// aliases; wildcards are left out: no one name stands for them).
    names: Vec<String>,
    certificates: Certificates,
}

impl Prober {
    /// Probes every node, and this one's own state.
    pub async fn probe(&self, subnets: &[String]) -> ProbeReport {
        let expected = Arc::new(self.expected());
        let subnets: Arc<Vec<ClientSubnet>> = Arc::new(
            subnets
                .iter()
                .filter_map(|s| ClientSubnet::from_str(s).ok())
                .collect(),
        );
        let tls = client_config();
        // Every node at once.
        let mut probes = tokio::task::JoinSet::new();
        for (i, target) in expected.targets.iter().enumerate() {
            let asked = Asked {
                expected: expected.clone(),
                subnets: subnets.clone(),
                tls: tls.clone(),
                dns_port: self.dns_port,
                https_port: self.https_port,
            };
            let target = Target {
                node: target.node.clone(),
                addresses: target.addresses.clone(),
            };
            probes.spawn(async move { (i, probe_target(target, asked).await) });
        }
        let mut targets: Vec<(usize, TargetReport)> = probes.join_all().await;
        targets.sort_by_key(|(i, _)| *i);
        let targets = targets.into_iter().map(|(_, t)| t).collect();
        let mut view: Vec<String> = self
            .liveness
            .alive_names()
            .iter()
            .map(|n| n.to_string())
            .collect();
        let me = self.liveness.me().map(|m| m.to_string());
        view.extend(me.clone());
        view.sort();
        view.dedup();
        let local = {
            let content = self.content.clone();
            let dir = self.data_dir.clone();
            tokio::task::spawn_blocking(move || local_report(&content, &dir))
                .await
                .unwrap_or_default()
        };
        ProbeReport {
            node: me,
            view,
            local,
            targets,
        }
    }

    fn expected(&self) -> Expected {
        let Ok(mut r) = self.replica.lock() else {
            return Expected {
                targets: Vec::new(),
                zones: Vec::new(),
                names: Vec::new(),
                certificates: Certificates::default(),
            };
        };
        let targets = r
            .peers()
            .nodes
            .iter()
            .map(|(name, n)| Target {
                node: name.to_string(),
                addresses: n
                    .ipv4
                    .map(IpAddr::V4)
                    .into_iter()
                    .chain(n.ipv6.map(IpAddr::V6))
                    .collect(),
            })
            .collect();
        let (domains, _) = r.domains();
        let live: Vec<String> = r
            .sites()
            .domains
            .iter()
            .filter(|(_, s)| s.live_version().is_some())
            .map(|(d, _)| d.to_string())
            .collect();
        let mut names = Vec::new();
        for d in &live {
            names.push(d.clone());
            for alias in domains.get(d).into_iter().flatten() {
                if !alias.starts_with("*.") {
                    names.push(alias.clone());
                }
            }
        }
        Expected {
            targets,
            zones: domains.keys().cloned().collect(),
            names,
            certificates: r.certificates(),
        }
    }
}

/// What one target's probe needs.
struct Asked {
    expected: Arc<Expected>,
    subnets: Arc<Vec<ClientSubnet>>,
    tls: Arc<rustls::ClientConfig>,
    dns_port: u16,
    https_port: u16,
}

async fn probe_target(target: Target, asked: Asked) -> TargetReport {
    let expected = &asked.expected;
    let mut dns = Vec::new();
    // Every zone at every address; the geo decision at the first (the
    // decision does not depend on the address asked).
    for (i, addr) in target.addresses.iter().enumerate() {
        let at = SocketAddr::new(*addr, asked.dns_port);
        for zone in &expected.zones {
            let geo: &[ClientSubnet] = if i == 0 { &asked.subnets } else { &[] };
            dns.push(dns_check(at, zone, geo).await);
        }
    }
    let mut https = Vec::new();
    if let Some(addr) = target.addresses.first() {
        let at = SocketAddr::new(*addr, asked.https_port);
        for name in &expected.names {
            https.push(https_check(at, name, asked.tls.clone(), &expected.certificates).await);
        }
    }
    TargetReport {
        node: target.node,
        dns,
        https,
    }
}

/// One zone asked at `at`: its SOA, then the apex's A for each subnet.
async fn dns_check(at: SocketAddr, zone: &str, subnets: &[ClientSubnet]) -> DnsCheck {
    let mut check = DnsCheck {
        zone: zone.to_owned(),
        address: at.ip().to_string(),
        ..DnsCheck::default()
    };
    let Ok(name) = Name::from_str(&format!("{}.", zone.trim_end_matches('.'))) else {
        check.error = Some(format!("{zone} is not a DNS name"));
        return check;
    };
    let started = Instant::now();
    match ask(at, &name, RecordType::SOA, None).await {
        Ok(answer) => {
            check.rtt_ms = Some(started.elapsed().as_millis() as u32);
            check.authoritative = answer.metadata.authoritative;
            check.serial = answer.answers.iter().find_map(|r| match &r.data {
                RData::SOA(soa) => Some(soa.serial),
                _ => None,
            });
            if answer.metadata.response_code != ResponseCode::NoError {
                check.error = Some(format!("answered {}", answer.metadata.response_code));
            } else if check.serial.is_none() {
                check.error = Some("answered without the zone's SOA".into());
            }
        }
        Err(e) => {
            check.error = Some(e);
            return check;
        }
    }
    for subnet in subnets {
        let key = format!("{}/{}", subnet.addr(), subnet.source_prefix());
        match ask(at, &name, RecordType::A, Some(*subnet)).await {
            Ok(answer) => {
                let mut addrs: Vec<String> = answer
                    .answers
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::A(a) => Some(a.0.to_string()),
                        _ => None,
                    })
                    .collect();
                addrs.sort();
                check.geo.insert(key, addrs);
            }
            Err(e) => {
                check.error.get_or_insert(format!("{key}: {e}"));
            }
        }
    }
    check
}

/// One question over UDP, asked up to [`TRIES`] times; the answer that
/// echoes its id.
async fn ask(
    at: SocketAddr,
    name: &Name,
    kind: RecordType,
    subnet: Option<ClientSubnet>,
) -> Result<Message, String> {
    let id: u16 = rand::random();
    let mut query = Message::new(id, MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = false;
    query.add_query(Query::query(name.clone(), kind));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    if let Some(s) = subnet {
        edns.options_mut().insert(EdnsOption::Subnet(s));
    }
    query.set_edns(edns);
    let bytes = query
        .to_vec()
        .map_err(|e| format!("cannot encode a query: {e}"))?;
    let local: SocketAddr = if at.is_ipv4() {
        "0.0.0.0:0".parse().map_err(|_| "no local address")?
    } else {
        "[::]:0".parse().map_err(|_| "no local address")?
    };
    let socket = UdpSocket::bind(local)
        .await
        .map_err(|e| format!("cannot open a UDP socket: {e}"))?;
    socket
        .connect(at)
        .await
        .map_err(|e| format!("cannot reach {at}: {e}"))?;
    let mut buf = vec![0u8; 4096];
    let mut last = String::from("no answer");
    for _ in 0..TRIES {
        if let Err(e) = socket.send(&bytes).await {
            last = format!("cannot send: {e}");
            continue;
        }
        let deadline = Instant::now() + DEADLINE / TRIES as u32;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, socket.recv(&mut buf)).await {
                Err(_) => {
                    last = format!(
                        "no answer within {} ms",
                        (DEADLINE / TRIES as u32).as_millis()
                    );
                    break;
                }
                Ok(Err(e)) => {
                    last = format!("{e}");
                    break;
                }
                Ok(Ok(n)) => match Message::from_vec(&buf[..n]) {
                    Ok(m) if m.metadata.id == id => return Ok(m),
                    // Another query's late answer: keep waiting.
                    Ok(_) => continue,
                    Err(e) => return Err(format!("an answer that does not parse: {e}")),
                },
            }
        }
    }
    Err(last)
}

/// One name over HTTPS at `at`: the handshake (SNI = the name), the
/// certificate shown, and `HEAD /`'s status.
async fn https_check(
    at: SocketAddr,
    name: &str,
    tls: Arc<rustls::ClientConfig>,
    certificates: &Certificates,
) -> HttpsCheck {
    let mut check = HttpsCheck {
        name: name.to_owned(),
        address: at.ip().to_string(),
        ..HttpsCheck::default()
    };
    let started = Instant::now();
    let exchange = async {
        let server = ServerName::try_from(name.to_owned())
            .map_err(|e| format!("{name} is not a server name: {e}"))?;
        let tcp = TcpStream::connect(at)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let mut stream = tokio_rustls::TlsConnector::from(tls)
            .connect(server, tcp)
            .await
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
        let seen = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|leaf| seen_certificate(leaf, name, certificates));
        let request = format!(
            "HEAD / HTTP/1.1\r\nHost: {name}\r\nUser-Agent: makiatto-probe\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("cannot send the request: {e}"))?;
        let mut head = Vec::with_capacity(1024);
        let mut buf = [0u8; 1024];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 8192 {
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|e| format!("no response: {e}"))?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let status = String::from_utf8_lossy(&head)
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok());
        Ok::<_, String>((seen, status))
    };
    match tokio::time::timeout(DEADLINE, exchange).await {
        Ok(Ok((seen, status))) => {
            check.certificate = seen;
            check.status = status;
            check.rtt_ms = Some(started.elapsed().as_millis() as u32);
            if status.is_none() {
                check.error = Some("the response has no status line".into());
            }
        }
        Ok(Err(e)) => check.error = Some(e),
        Err(_) => check.error = Some(format!("no answer within {} s", DEADLINE.as_secs())),
    }
    check
}

/// What a client sees of a leaf certificate asked as `name`.
fn seen_certificate(
    leaf: &CertificateDer<'_>,
    name: &str,
    certificates: &Certificates,
) -> SeenCertificate {
    let issued_leaf = certificates
        .names
        .values()
        .filter(|e| e.names.iter().any(|n| n == name))
        .find_map(|e| {
            CertificateDer::pem_slice_iter(e.chain_pem.as_bytes())
                .next()
                .and_then(Result::ok)
        });
    let mut seen = SeenCertificate {
        issued_exists: issued_leaf.is_some(),
        issued: issued_leaf.is_some_and(|l| l.as_ref() == leaf.as_ref()),
        ..SeenCertificate::default()
    };
    if let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) {
        seen.not_before_unix_secs = cert.validity().not_before.timestamp();
        seen.not_after_unix_secs = cert.validity().not_after.timestamp();
        seen.issuer = cert
            .issuer()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or("unknown")
            .to_owned();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                    seen.names.push((*d).to_owned());
                }
            }
        }
        seen.covers = seen.names.iter().any(|n| covers(n, name));
    }
    seen
}

/// Whether certificate name `pattern` covers `host` (RFC 6125: a wildcard
/// stands for exactly one leftmost label).
fn covers(pattern: &str, host: &str) -> bool {
    let (pattern, host) = (pattern.to_ascii_lowercase(), host.to_ascii_lowercase());
    match pattern.strip_prefix("*.") {
        Some(rest) => host
            .split_once('.')
            .is_some_and(|(first, tail)| !first.is_empty() && tail == rest),
        None => pattern == host,
    }
}

/// A client that completes any handshake whose signatures verify, and
/// leaves judging the certificate to [`seen_certificate`]: the point is to
/// see what a node presents, valid or not.
fn client_config() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.dangerous()
                .with_custom_certificate_verifier(Arc::new(Observer(provider)))
                .with_no_client_auth()
        });
    match config {
        Ok(mut c) => {
            c.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(c)
        }
        // The provider's defaults are always consistent; a client that
        // fails every handshake is the total fallback.
        Err(_) => Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        ),
    }
}

/// Accepts the certificate (to look at it afterwards), verifies the
/// handshake's signatures with it.
#[derive(Debug)]
struct Observer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for Observer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
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
        cert: &CertificateDer<'_>,
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

/// This node's disk, memory and deployed blobs.
fn local_report(content: &Content, data_dir: &std::path::Path) -> LocalReport {
    let disk = nix::sys::statvfs::statvfs(data_dir).ok().map(|s| Space {
        free_bytes: s.blocks_available() * s.fragment_size(),
        total_bytes: s.blocks() * s.fragment_size(),
    });
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| memory(&m));
    let blobs = content.blobs();
    let mut versions = BTreeMap::new();
    for (domain, deployed) in content.deployed() {
        let mut v = VersionBlobs {
            version: Some(deployed.version),
            ..VersionBlobs::default()
        };
        match blobs.manifest(&deployed.manifest) {
            Ok(manifest) => {
                v.files = manifest.files.len() as u64;
                for (path, entry) in &manifest.files {
                    if !blobs.contains(&entry.hash) {
                        v.missing += 1;
                        if v.missing_paths.len() < MISSING_NAMED {
                            v.missing_paths.push(path.clone());
                        }
                    }
                }
            }
            Err(e) => v.error = Some(format!("its manifest cannot be read: {e}")),
        }
        versions.insert(domain, v);
    }
    LocalReport {
        disk,
        memory,
        blobs: versions,
    }
}

/// `MemAvailable` of `MemTotal`, from `/proc/meminfo`'s text.
fn memory(meminfo: &str) -> Option<Space> {
    let field = |name: &str| {
        meminfo.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
    };
    Some(Space {
        free_bytes: field("MemAvailable")? * 1024,
        total_bytes: field("MemTotal")? * 1024,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_covers_one_label_and_names_compare_without_case() {
        assert!(covers("example.test", "EXAMPLE.test"));
        assert!(covers("*.example.test", "www.example.test"));
        assert!(!covers("*.example.test", "example.test"));
        assert!(!covers("*.example.test", "a.b.example.test"));
        assert!(!covers("www.example.test", "example.test"));
    }

    #[test]
    fn memory_is_read_from_meminfo() {
        let m =
            memory("MemTotal:        2048 kB\nMemFree: 1 kB\nMemAvailable:    1024 kB\n").unwrap();
        assert_eq!((m.free_bytes, m.total_bytes), (1024 * 1024, 2048 * 1024));
        assert!(memory("MemTotal: 5 kB\n").is_none());
    }
}
