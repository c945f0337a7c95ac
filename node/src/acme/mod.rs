//! Certificates from an ACME CA (instant-acme): one per domain (with its
//! aliases in our zones; an alias elsewhere has its own), and one per
//! nameserver name (`<node>.ns.<domain>`, for DNS
//! over TLS), so a node that is down holds up only its own.
//!
//! - **Who orders**: one node, chosen from the log: the first by name among
//!   the nodes this node hears alive (itself included). When it goes down,
//!   the next takes over; an order in flight elsewhere is then simply made
//!   again.
//! - **Challenges** travel as `acme-challenge` events, so whichever node
//!   the CA reaches answers: HTTP-01 by default (the token under
//!   `/.well-known/acme-challenge/`), DNS-01 (a TXT record at
//!   `_acme-challenge.<name>` in our own zones) for wildcards, and for every
//!   name in our zones when `acme.challenge = dns-01`. The orderer waits
//!   until its live peers hold the event before telling the CA to validate.
//! - **The result** is a `certificate-issued` event: the chain in clear,
//!   the private key sealed to every node's sealing key.
//! - **Every node** opens the key of each current certificate (with the
//!   log's reseal entries: a node that joined after the issue gets one,
//!   `crate::reseal`) and installs it for HTTPS (and DoT for its own
//!   nameserver names), without a restart.
//! - **When**: a name without a certificate, a certificate whose names no
//!   longer match the configuration, one within 30 days of expiry, one
//!   whose key a node no longer in the cluster could open (sealed or
//!   resealed to it: a removed node's access ends), or a renewal asked
//!   with `maki certs renew`. Failures back off (`retry`):
//!   an order that never reached the CA is tried again within seconds
//!   (2 s doubling to 5 min) and at once when the CA answers again or a
//!   peer comes back; an answer from the CA keeps the slow schedule (5 min
//!   doubling to 6 h, so a name failing again and again stays under Let's
//!   Encrypt's 5 failed validations per hour; at least 1 h when the CA
//!   says rate limited). A renewal asked after a failure tries again at
//!   once. At 5 certificates for one exact set of names in 7 days (Let's
//!   Encrypt's duplicate limit), nothing more is ordered for it until the
//!   oldest ages out, renewals asked included.
//! - **Signing**: an order signs events (`crate::signer`), so none starts
//!   before a peer confirmed this node's own feed since it started
//!   (`makiatto_core::replication::own_feed`).
//! - With no `acme.directory` set, nothing is ordered: never a public CA by
//!   default.
//!
//! # Layout
//! - `retry`: why an order failed (the CA answered, or was never reached)
//!   and when it is tried again.

mod retry;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use makiatto_events::payload::{AcmeChallenge, CertificateIssued};
use makiatto_events::{DomainName, Payload, SealedValue};
use makiatto_protocol::health::{AcmeReport, DueCertificate, OrderFailure};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::sign::CertifiedKey;

use crate::changes::Changes;
use crate::clock::now_millis;
use crate::keys::NodeKeys;
use crate::liveness::Liveness;
use crate::replica::Replica;
use crate::signer::Signer;
use retry::{Failure, Failures};

/// Renew this long before expiry.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often the orderer looks for work (a log change also wakes it).
const TICK: Duration = Duration::from_secs(10);
/// CAs limit certificates for one exact set of names (Let's Encrypt: 5
/// per 7 days); at the limit the orderer waits for the oldest to age out.
const DUPLICATE_LIMIT: usize = 5;
const DUPLICATE_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long the CA may take to answer the first requests of an order
/// (the account, the new order) before the attempt counts as not
/// reaching it.
const FIRST_CONTACT_WITHIN: Duration = Duration::from_secs(30);
/// While an order waits after failing to reach the CA, how often its
/// address is tried (a TCP connection, which costs the CA nothing): when
/// it answers, the order is made at once.
const PROBE_EVERY: Duration = Duration::from_secs(2);
/// Longest wait for live peers to hold a challenge before validation.
const REPLICATION_WAIT: Duration = Duration::from_secs(10);

/// What failed for a domain, and when to try again.
#[derive(Debug, Clone)]
struct Backoff {
    failures: Failures,
    /// Why the last attempt failed.
    last: Failure,
    /// The latest renewal request when it failed: a newer one (`maki
    /// certs renew`) tries again at once.
    renewal: Option<makiatto_events::Hlc>,
    next: Instant,
    error: String,
}

/// The ACME subsystem of one node.
pub struct Acme {
    data_dir: PathBuf,
    replica: Arc<Mutex<Replica>>,
    /// Signs and appends this node's events.
    signer: Arc<Signer>,
    /// Who is alive (the orderer is the first), and whether the peers
    /// hold what this node holds.
    liveness: Liveness,
    /// The log changed; events this node appends go to the peers.
    log: Changes,
    keys: NodeKeys,
    http: Arc<crate::http::Http>,
    dns: Arc<crate::dns::Dns>,
    backoff: Mutex<HashMap<String, Backoff>>,
    /// Certificate events already installed here.
    installed: Mutex<BTreeSet<makiatto_events::EventId>>,
    /// Certificate events whose key this node could not open, with how
    /// many reseal entries there were then (a new one is tried again).
    unopened: Mutex<HashMap<makiatto_events::EventId, usize>>,
    /// The domain being ordered now, if any.
    ordering: Mutex<Option<String>>,
}

/// Where and how to order: the cluster's ACME settings.
#[derive(Debug, Clone)]
struct Directory {
    url: String,
    ca_root: Option<String>,
    /// `acme.challenge = dns-01`: prove names in our zones by DNS-01.
    dns01: bool,
    /// The zones we serve (DNS-01 works only inside them).
    zones: Vec<String>,
}

/// What one domain needs.
struct Wanted {
    domain: String,
    /// The first name keys the certificate in the projection.
    names: Vec<String>,
    /// The latest `maki certs renew` of any of the names.
    renewal: Option<makiatto_events::Hlc>,
    /// Unix millis until which the CA's duplicate limit forbids another
    /// certificate for exactly these names.
    limited_until: Option<u64>,
}

impl Acme {
    // One argument per subsystem it works with, each a narrow handle.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        data_dir: PathBuf,
        replica: Arc<Mutex<Replica>>,
        signer: Arc<Signer>,
        liveness: Liveness,
        log: Changes,
        keys: NodeKeys,
        http: Arc<crate::http::Http>,
        dns: Arc<crate::dns::Dns>,
    ) -> Arc<Acme> {
        let acme = Arc::new(Acme {
            data_dir,
            replica,
            signer,
            liveness,
            log,
            keys,
            http,
            dns,
            backoff: Mutex::new(HashMap::new()),
            installed: Mutex::new(BTreeSet::new()),
            unopened: Mutex::new(HashMap::new()),
            ordering: Mutex::new(None),
        });
        // Installing follows the log on its own: an order in progress (on
        // this node) must not hold back the challenges it opened.
        let this = acme.clone();
        tokio::spawn(async move {
            let mut changes = this.log.watch();
            loop {
                this.install();
                tokio::select! {
                    c = changes.changed() => if c.is_err() { return },
                    _ = tokio::time::sleep(TICK) => {}
                }
            }
        });
        let this = acme.clone();
        tokio::spawn(async move {
            let mut changes = this.log.watch();
            let mut peers_up = this.log.watch_peers_up();
            loop {
                if let Err(e) = this.clone().order_due().await {
                    tracing::warn!(error = %format!("{e:#}"), "certificate ordering failed");
                }
                let unreached = this.waiting_unreached();
                // The next try of an order that never reached the CA, or
                // the next look at the CA's address, if sooner than a tick.
                let nap = match unreached {
                    Some(next) => TICK
                        .min(PROBE_EVERY)
                        .min(next.saturating_duration_since(Instant::now()))
                        .max(Duration::from_millis(500)),
                    None => TICK,
                };
                tokio::select! {
                    c = changes.changed() => if c.is_err() { return },
                    c = peers_up.changed() => {
                        if c.is_err() { return }
                        // The mesh is back: so, likely, is the route.
                        this.retry_unreached_now("a peer is back up");
                    }
                    _ = tokio::time::sleep(nap) => {
                        if unreached.is_some() && this.ca_answers().await {
                            this.retry_unreached_now("the CA answers again");
                        }
                    }
                }
            }
        });
        acme
    }

    /// Installs every current certificate this node can open, and the open
    /// HTTP-01 challenges.
    fn install(&self) {
        let Some((certs, resealed)) = self
            .replica
            .lock()
            .ok()
            .map(|mut r| (r.certificates(), r.resealed()))
        else {
            return;
        };
        let challenges: HashMap<String, String> = certs
            .http_challenges()
            .map(|(t, v)| (t.clone(), v.clone()))
            .collect();
        self.http.set_challenges(challenges);
        let me = self.liveness.me();
        for entry in certs.names.values() {
            if self
                .installed
                .lock()
                .is_ok_and(|i| i.contains(&entry.event))
            {
                continue;
            }
            // A key this node could not open is tried again once a reseal
            // of it arrives (a node that joined after the issue).
            let extra: &[makiatto_events::Recipient] =
                resealed.get(&entry.key.id()).map_or(&[], |r| r.as_slice());
            if self
                .unopened
                .lock()
                .is_ok_and(|u| u.get(&entry.event) == Some(&extra.len()))
            {
                continue;
            }
            match open(&self.keys, entry, extra) {
                Ok(key) => {
                    let key = Arc::new(key);
                    self.http.install_certificate(&entry.names, key.clone());
                    if let Some(me) = &me {
                        let mine = format!("{me}.ns.");
                        if entry.names.iter().any(|n| n.starts_with(&mine)) {
                            self.dns.install_certificate(&entry.names, key);
                        }
                    }
                    tracing::info!(names = %entry.names.join(", "), issuer = %entry.issuer, "certificate installed");
                }
                Err(e) => {
                    tracing::warn!(names = %entry.names.join(", "), error = %format!("{e:#}"), "cannot open a certificate's key (yet: a node that can reseals it to this one)");
                    if let Ok(mut u) = self.unopened.lock() {
                        u.insert(entry.event, extra.len());
                    }
                    continue;
                }
            }
            if let Ok(mut i) = self.installed.lock() {
                i.insert(entry.event);
            }
            if let Ok(mut u) = self.unopened.lock() {
                u.remove(&entry.event);
            }
        }
    }

    /// Is this node the one that orders? The first by name of the nodes it
    /// hears alive, itself included.
    fn is_orderer(&self) -> bool {
        let Some(me) = self.liveness.me() else {
            return false;
        };
        let alive = self.liveness.alive_names();
        let Some(peers) = self.replica.lock().ok().map(|mut r| r.peers()) else {
            return false;
        };
        peers
            .nodes
            .keys()
            .find(|n| **n == me || alive.contains(n))
            .is_some_and(|first| *first == me)
    }

    /// The certificates the configuration calls for and whether each is due.
    fn due(&self) -> (Option<Directory>, Vec<Wanted>) {
        let Ok(mut r) = self.replica.lock() else {
            return (None, Vec::new());
        };
        let settings = r.settings();
        let (domains, _) = r.domains();
        let clean = |n: &str| n.trim_end_matches('.').to_ascii_lowercase();
        let zones: Vec<String> = domains.keys().map(|d| clean(d)).collect();
        let directory = settings.acme_directory.clone().map(|url| Directory {
            url,
            ca_root: settings.acme_ca_root.clone(),
            dns01: settings.acme_dns01(),
            zones: zones.clone(),
        });
        let peers = r.peers();
        let certs = r.certificates();
        let resealed = r.resealed();
        drop(r);
        // A key that a node no longer in the cluster could open (sealed or
        // resealed to it) is replaced: a new certificate, a new key.
        let current: BTreeSet<makiatto_events::SealingKey> =
            peers.nodes.values().map(|n| n.sealing_key).collect();
        let exposed = |key: &SealedValue| {
            key.recipients()
                .chain(
                    resealed
                        .get(&key.id())
                        .into_iter()
                        .flatten()
                        .map(|r| &r.node),
                )
                .any(|k| !current.contains(k))
        };
        let now = now_millis();
        let mut wanted = Vec::new();
        let mut add = |domain: &str, names: Vec<String>| {
            let key = names[0].clone();
            let due = match certs.names.get(&key) {
                None => true,
                Some(c) => {
                    c.names != names
                        || exposed(&c.key)
                        || c.not_after_millis < now + RENEW_BEFORE.as_millis() as u64
                        || names
                            .iter()
                            .any(|n| certs.renewals.get(n).is_some_and(|at| *at > c.at))
                }
            };
            if due {
                let renewal = names
                    .iter()
                    .filter_map(|n| certs.renewals.get(n).copied())
                    .max();
                wanted.push(Wanted {
                    domain: domain.to_owned(),
                    limited_until: duplicate_limit(&certs, &names, now),
                    names,
                    renewal,
                });
            }
        };
        for (domain, aliases) in &domains {
            // The site's certificate: the domain first (it names the
            // certificate), then its aliases inside our zones. An alias
            // elsewhere gets a certificate of its own: it validates only
            // once its owner's CNAME points at us, and must not hold up
            // the site's.
            let mut names = vec![clean(domain)];
            let mut rest: Vec<String> = aliases.iter().map(|a| clean(a)).collect();
            rest.sort();
            rest.dedup();
            rest.retain(|a| *a != names[0]);
            let (ours, elsewhere): (Vec<String>, Vec<String>) = rest
                .into_iter()
                .partition(|a| in_zones(a.trim_start_matches("*."), &zones));
            names.extend(ours);
            add(domain, names);
            for alias in elsewhere {
                add(domain, vec![alias]);
            }
            // Each nameserver's own name has its own certificate (for DoT):
            // a node that is down then holds up only its own.
            for (node, n) in &peers.nodes {
                if n.nameserver {
                    add(domain, vec![format!("{node}.ns.{}", clean(domain))]);
                }
            }
        }
        (directory, wanted)
    }

    async fn order_due(self: Arc<Self>) -> anyhow::Result<()> {
        let (directory, wanted) = self.due();
        // Failures of certificates no longer due (issued since, perhaps by
        // another node) are history.
        if let Ok(mut b) = self.backoff.lock() {
            b.retain(|name, _| wanted.iter().any(|w| w.names[0] == *name));
        }
        let Some(directory) = directory else {
            return Ok(());
        };
        if wanted.is_empty() || !self.is_orderer() {
            return Ok(());
        }
        // An order signs events: not before a peer confirmed this node's
        // feed (a node restored from an old backup would fork it).
        if !self.may_sign() {
            return Ok(());
        }
        for w in wanted {
            let waiting = self.backoff.lock().is_ok_and(|b| {
                b.get(&w.names[0])
                    .is_some_and(|b| b.next > Instant::now() && w.renewal <= b.renewal)
            });
            if waiting || w.limited_until.is_some() {
                continue;
            }
            if let Ok(mut o) = self.ordering.lock() {
                *o = Some(w.names[0].clone());
            }
            // Telemetry: an order is a span, kept whatever it ends with.
            let result = crate::telemetry::Operation::new("acme.order")
                .attr("acme.certificate", w.names[0].clone())
                .attr("acme.names", w.names.join(", "))
                .attr("acme.renewal", w.renewal.is_some())
                .run(self.order(&directory, &w))
                .await;
            if let Ok(mut o) = self.ordering.lock() {
                *o = None;
            }
            match result {
                Ok(()) => {
                    if let Ok(mut b) = self.backoff.lock() {
                        b.remove(&w.names[0]);
                    }
                }
                Err(e) => {
                    let failure = retry::classify(&e);
                    let error = format!("{e:#}");
                    if let Ok(mut b) = self.backoff.lock() {
                        let before = b.get(&w.names[0]).map(|b| b.failures).unwrap_or_default();
                        let (failures, wait) = before.after(failure);
                        tracing::warn!(
                            certificate = %w.names[0],
                            %error,
                            ca_reached = failure != Failure::Unreached,
                            retry_in_secs = wait.as_secs(),
                            "certificate order failed"
                        );
                        b.insert(
                            w.names[0].clone(),
                            Backoff {
                                failures,
                                last: failure,
                                renewal: w.renewal,
                                next: Instant::now() + wait,
                                error,
                            },
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// When the earliest order that never reached the CA is tried again,
    /// if one waits.
    fn waiting_unreached(&self) -> Option<Instant> {
        self.backoff
            .lock()
            .ok()?
            .values()
            .filter(|b| b.last == Failure::Unreached)
            .map(|b| b.next)
            .min()
    }

    /// Tries every order that never reached the CA again now.
    fn retry_unreached_now(&self, why: &str) {
        let now = Instant::now();
        let mut retried = 0;
        if let Ok(mut b) = self.backoff.lock() {
            for entry in b.values_mut() {
                if entry.last == Failure::Unreached && entry.next > now {
                    entry.next = now;
                    retried += 1;
                }
            }
        }
        if retried > 0 {
            tracing::info!(
                orders = retried,
                reason = why,
                "retrying certificate orders that never reached the CA"
            );
        }
    }

    /// Whether the CA's address takes a TCP connection now (within
    /// [`PROBE_EVERY`]): nothing is sent, so it costs the CA nothing.
    async fn ca_answers(&self) -> bool {
        let Some(directory) = self.due().0 else {
            return false;
        };
        let Some((host, port)) = retry::ca_address(&directory.url) else {
            return false;
        };
        tokio::time::timeout(
            PROBE_EVERY,
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        .is_ok_and(|c| c.is_ok())
    }

    /// The ACME account for this directory, made once and kept in the data
    /// directory (per node: any orderer can make its own).
    async fn account(&self, directory: &str, ca_root: Option<&str>) -> anyhow::Result<Account> {
        let dir = self.data_dir.join("acme");
        std::fs::create_dir_all(&dir)?;
        let tag = blake3::hash(directory.as_bytes()).to_hex();
        let builder = || -> anyhow::Result<instant_acme::AccountBuilder> {
            Ok(match ca_root {
                Some(pem) => {
                    let path = dir.join(format!("ca-{}.pem", &tag[..16]));
                    std::fs::write(&path, pem)?;
                    Account::builder_with_root(&path)?
                }
                None => Account::builder()?,
            })
        };
        let creds_path = dir.join(format!("account-{}.json", &tag[..16]));
        if let Ok(bytes) = std::fs::read(&creds_path)
            && let Ok(creds) = serde_json::from_slice(&bytes)
            && let Ok(account) = builder()?.from_credentials(creds).await
        {
            return Ok(account);
        }
        let (account, creds) = builder()?
            .create(
                &NewAccount {
                    contact: &[],
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                directory.to_owned(),
                None,
            )
            .await
            .with_context(|| format!("cannot create an ACME account at {directory}"))?;
        let tmp = creds_path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&creds)?)?;
        std::fs::rename(&tmp, &creds_path)?;
        Ok(account)
    }

    async fn order(&self, directory: &Directory, w: &Wanted) -> anyhow::Result<()> {
        tracing::info!(certificate = %w.names[0], names = %w.names.join(", "), directory = %directory.url, "ordering a certificate");
        // The first contact is bounded: a CA that does not answer at all
        // (its packets dropped) would otherwise hold the orderer for as
        // long as TCP retries.
        let no_answer = || {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no answer from the CA within {} s",
                    FIRST_CONTACT_WITHIN.as_secs()
                ),
            )
        };
        let account = tokio::time::timeout(
            FIRST_CONTACT_WITHIN,
            self.account(&directory.url, directory.ca_root.as_deref()),
        )
        .await
        .map_err(|_| anyhow::Error::new(no_answer()))
        .with_context(|| format!("cannot reach the ACME directory {}", directory.url))??;
        let identifiers: Vec<Identifier> = w.names.iter().cloned().map(Identifier::Dns).collect();
        let mut order = tokio::time::timeout(
            FIRST_CONTACT_WITHIN,
            account.new_order(&NewOrder::new(&identifiers)),
        )
        .await
        .map_err(|_| anyhow::Error::new(no_answer()))
        .context("the CA did not answer the order")?
        .context("the CA refused the order")?;
        let mut opened = Vec::new();
        {
            let mut authzs = order.authorizations();
            while let Some(authz) = authzs.next().await {
                let mut authz = authz?;
                if authz.status == AuthorizationStatus::Valid {
                    continue;
                }
                let (base, wildcard) = {
                    let id = authz.identifier();
                    let base = match id.identifier {
                        Identifier::Dns(d) => d.trim_end_matches('.').to_ascii_lowercase(),
                        other => bail!("the CA asks to validate {other:?}, not a DNS name"),
                    };
                    (base, id.wildcard)
                };
                let name = if wildcard {
                    format!("*.{base}")
                } else {
                    base.clone()
                };
                let dns = challenge_by_dns(&base, wildcard, directory)?;
                let (kind, what) = if dns {
                    (ChallengeType::Dns01, "DNS-01")
                } else {
                    (ChallengeType::Http01, "HTTP-01")
                };
                let mut challenge = authz
                    .challenge(kind)
                    .with_context(|| format!("the CA offers no {what} challenge for {name}"))?;
                let key_authorization = challenge.key_authorization();
                let open = AcmeChallenge {
                    name,
                    token: challenge.token.clone(),
                    value: if dns {
                        key_authorization.dns_value()
                    } else {
                        key_authorization.as_str().to_owned()
                    },
                    dns,
                    open: true,
                };
                self.append(vec![Payload::AcmeChallenge(open.clone())])
                    .await?;
                // Served here at once; the others once they hold the event.
                self.install();
                self.wait_replicated().await;
                challenge.set_ready().await?;
                opened.push(open);
            }
        }
        let status = order.poll_ready(&RetryPolicy::default()).await;
        let close: Vec<Payload> = opened
            .iter()
            .map(|c| {
                Payload::AcmeChallenge(AcmeChallenge {
                    open: false,
                    ..c.clone()
                })
            })
            .collect();
        let status = match status {
            Ok(s) => s,
            Err(e) => {
                let _ = self.append(close).await;
                return Err(e).context("the challenges did not validate");
            }
        };
        if status != OrderStatus::Ready {
            let _ = self.append(close).await;
            bail!("the order is {status:?}, not ready");
        }
        let key_pem = order.finalize().await?;
        let chain_pem = order.poll_certificate(&RetryPolicy::default()).await?;
        let (not_after_millis, issuer) = leaf_facts(&chain_pem)?;
        let sealing_keys: Vec<makiatto_events::SealingKey> = self
            .replica
            .lock()
            .map_err(|_| anyhow::anyhow!("replica lock poisoned"))?
            .peers()
            .nodes
            .values()
            .map(|n| n.sealing_key)
            .collect();
        let key = SealedValue::seal(key_pem.as_bytes(), &sealing_keys, &mut rand::rng())
            .map_err(|e| anyhow::anyhow!("cannot seal the key: {e}"))?;
        let mut events = close;
        events.push(Payload::CertificateIssued(CertificateIssued {
            domain: DomainName::new(w.domain.as_str())?,
            names: w.names.clone(),
            chain_pem,
            key,
            not_after_millis,
            issuer: issuer.clone(),
        }));
        self.append(events).await?;
        tracing::info!(certificate = %w.names[0], %issuer, "certificate issued");
        Ok(())
    }

    /// Waits until every live peer holds what this node holds (their
    /// heartbeats carry the same version-vector digest), or a while.
    async fn wait_replicated(&self) {
        let start = Instant::now();
        while start.elapsed() < REPLICATION_WAIT && !self.liveness.peers_in_sync() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Signs `payloads` as this node and appends them (`Signer`).
    async fn append(&self, payloads: Vec<Payload>) -> anyhow::Result<()> {
        self.signer.append(payloads).await
    }

    fn may_sign(&self) -> bool {
        self.signer.may_sign()
    }

    /// For `makiatto health` and `maki certs`: per domain, what is wanted,
    /// what is current, what failed.
    pub fn report(&self) -> AcmeReport {
        let (directory, due) = self.due();
        let certs = self
            .replica
            .lock()
            .ok()
            .map(|mut r| r.certificates())
            .unwrap_or_default();
        let backoff = self.backoff.lock().map(|b| b.clone()).unwrap_or_default();
        let ordering = self.ordering.lock().ok().and_then(|o| o.clone());
        let orderer = self.is_orderer();
        let now = Instant::now();
        // Certificates at the CA's duplicate limit, and until when.
        let limited = certs
            .names
            .iter()
            .filter_map(|(first, c)| {
                duplicate_limit(&certs, &c.names, now_millis()).map(|until| (first.clone(), until))
            })
            .collect();
        AcmeReport {
            directory: directory.as_ref().map(|d| d.url.clone()),
            challenge: directory
                .as_ref()
                .map(|d| if d.dns01 { "dns-01" } else { "http-01" }.to_owned()),
            orderer,
            ordering,
            due: due
                .iter()
                .map(|w| DueCertificate {
                    certificate: w.names.first().cloned().unwrap_or_default(),
                    domain: w.domain.clone(),
                    names: w.names.clone(),
                    limited_until_millis: w.limited_until,
                })
                .collect(),
            // Only the orderer tries again: another node's failures (from
            // when it ordered) have no schedule.
            failures: backoff
                .iter()
                .filter(|_| orderer)
                .map(|(d, b)| OrderFailure {
                    certificate: d.clone(),
                    failures: b.failures.total,
                    error: b.error.clone(),
                    retry_in_secs: b.next.saturating_duration_since(now).as_secs(),
                    ca_unreached: b.last == Failure::Unreached,
                    node: self.liveness.me().map(|n| n.to_string()),
                })
                .collect(),
            certificates: certs.names.clone(),
            limited,
        }
    }
}

/// When the CA's duplicate limit lets the next certificate for exactly
/// `names` be ordered (Unix millis), from when the earlier ones were
/// issued: `None` when it may be ordered now.
fn duplicate_limit(
    certs: &makiatto_projections::certificates::Certificates,
    names: &[String],
    now: u64,
) -> Option<u64> {
    let issued: Vec<u64> = certs
        .issued
        .get(&makiatto_projections::certificates::names_key(names))?
        .iter()
        .map(|(hlc, _)| hlc.millis)
        .collect();
    limit_until(&issued, now)
}

/// The duplicate limit over issue times (Unix millis).
fn limit_until(issued: &[u64], now: u64) -> Option<u64> {
    let window = DUPLICATE_WINDOW.as_millis() as u64;
    let mut recent: Vec<u64> = issued
        .iter()
        .copied()
        .filter(|t| t + window > now)
        .collect();
    if recent.len() < DUPLICATE_LIMIT {
        return None;
    }
    recent.sort_unstable();
    // The oldest of the last LIMIT must age out first.
    Some(recent[recent.len() - DUPLICATE_LIMIT] + window)
}

/// Is `name` one of `zones` or under one?
fn in_zones(name: &str, zones: &[String]) -> bool {
    zones.iter().any(|z| {
        name == z
            || name
                .strip_suffix(z.as_str())
                .is_some_and(|p| p.ends_with('.'))
    })
}

/// Whether `base` (a wildcard's when `wildcard`) is proved by DNS-01:
/// always for wildcards, for every name in our zones when `acme.challenge`
/// says so; never outside our zones (the TXT record would not be ours to
/// publish).
fn challenge_by_dns(base: &str, wildcard: bool, directory: &Directory) -> anyhow::Result<bool> {
    let ours = in_zones(base, &directory.zones);
    if wildcard && !ours {
        bail!(
            "*.{base} can only be proved by DNS-01, and {base} is in none of the zones this cluster serves"
        );
    }
    Ok(wildcard || (directory.dns01 && ours))
}

/// Opens a certificate's sealed key with this node's sealing secret.
fn open(
    keys: &NodeKeys,
    entry: &makiatto_projections::certificates::CertificateEntry,
    resealed: &[makiatto_events::Recipient],
) -> anyhow::Result<CertifiedKey> {
    let pem = entry
        .key
        .open(&keys.sealing, resealed)
        .map_err(|e| anyhow::anyhow!("the key is not sealed to this node: {e}"))?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(entry.chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .context("the chain is not PEM")?;
    let key = PrivateKeyDer::from_pem_slice(&pem).context("the key is not PEM")?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    CertifiedKey::from_der(chain, key, &provider).context("the key does not match the certificate")
}

/// The leaf's expiry (Unix millis) and issuer common name.
fn leaf_facts(chain_pem: &str) -> anyhow::Result<(u64, String)> {
    let leaf = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .context("the CA sent no certificate")?
        .context("the CA's certificate is not PEM")?;
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf)
        .map_err(|e| anyhow::anyhow!("the CA's certificate does not parse: {e}"))?;
    let not_after = cert.validity().not_after.timestamp().max(0) as u64 * 1000;
    let issuer = cert
        .issuer()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("unknown CA")
        .to_owned();
    Ok((not_after, issuer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directory(dns01: bool) -> Directory {
        Directory {
            url: "https://ca.test/dir".into(),
            ca_root: None,
            dns01,
            zones: vec!["example.test".into(), "example.co.uk".into()],
        }
    }

    #[test]
    fn the_duplicate_limit_waits_for_the_oldest_to_age_out() {
        let day = 24 * 3600 * 1000;
        let now = 100 * day;
        assert_eq!(limit_until(&[], now), None);
        assert_eq!(limit_until(&[now - day; 4], now), None);
        let five = [now - 6 * day, now - 5 * day, now - 3 * day, now - day, now];
        assert_eq!(limit_until(&five, now), Some(now + day));
        // Older ones do not count.
        let old = [
            now - 30 * day,
            now - 20 * day,
            now - 8 * day,
            now - day,
            now,
        ];
        assert_eq!(limit_until(&old, now), None);
    }

    #[test]
    fn names_in_our_zones_are_told_apart_from_names_elsewhere() {
        let zones = directory(false).zones;
        assert!(in_zones("example.test", &zones));
        assert!(in_zones("www.example.test", &zones));
        assert!(in_zones("a.b.example.co.uk", &zones));
        assert!(!in_zones("notexample.test", &zones));
        assert!(!in_zones("example.test.evil", &zones));
        assert!(!in_zones("old-domain.com", &zones));
    }

    #[test]
    fn wildcards_always_use_dns01_and_other_names_follow_the_setting() {
        let http = directory(false);
        let dns = directory(true);
        assert!(!challenge_by_dns("www.example.test", false, &http).unwrap());
        assert!(challenge_by_dns("www.example.test", false, &dns).unwrap());
        assert!(challenge_by_dns("example.test", true, &http).unwrap());
        // Outside our zones: HTTP-01 only, and a wildcard cannot be proved.
        assert!(!challenge_by_dns("old-domain.com", false, &dns).unwrap());
        let err = challenge_by_dns("old-domain.com", true, &dns).unwrap_err();
        assert!(err.to_string().contains("only be proved by DNS-01"));
    }
}
