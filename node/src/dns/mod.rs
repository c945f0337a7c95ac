//! The authoritative GeoDNS server of a node: UDP and TCP on port 53, DNS
//! over TLS on 853, answering for every zone of the zones projection.
//!
//! # Layout
//! - [`wire`]: reading queries and writing responses (bytes only).
//! - [`zone`]: the projection compiled into pre-rendered record sets.
//! - [`answer`]: the answer to one query (pure).
//! - [`geo`]: distances and the nearest-node choice.
//! - [`geoip`]: the GeoIP database the log names, fetched from the peers
//!   and swapped in live.
//! - [`server`]: the sockets.
//!
//! The compiled zones sit behind an `ArcSwap`: a projection change swaps in
//! a new compilation and no query waits for it. Health (which nodes the
//! liveness gossip hears) is a 64-bit mask refreshed every 250 ms; this
//! node counts itself alive, so a node cut off from the mesh answers with
//! itself alone.

pub mod answer;
pub mod geo;
pub mod geoip;
pub mod server;
pub mod wire;
pub mod zone;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use makiatto_projections::zones::Zones;
use makiatto_protocol::health::{DnsCounts, DnsReport, GeoHealth};

use crate::changes::Changes;
use crate::handover::Handover;
use crate::liveness::Liveness;
use crate::replica::Replica;

/// Counters, one set per serving thread or transport (no shared cache
/// line on the hot path); the report sums them.
#[derive(Default)]
pub struct Counters {
    pub queries: AtomicU64,
    pub dropped: AtomicU64,
    pub truncated: AtomicU64,
    pub by_rcode: [AtomicU64; 6],
}

impl Counters {
    /// Counts one response by its rcode (BADVERS and other extended codes
    /// count as FORMERR's neighbour slot 1 would mislead, so they go to 5+).
    pub fn count(&self, out: &[u8], replied: bool) {
        self.queries.fetch_add(1, Ordering::Relaxed);
        if !replied || out.len() < 4 {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if out[2] & 0x02 != 0 {
            self.truncated.fetch_add(1, Ordering::Relaxed);
        }
        let rcode = (out[3] & 0x0F) as usize;
        self.by_rcode[rcode.min(5)].fetch_add(1, Ordering::Relaxed);
    }
}

/// The DNS service of one node.
pub struct Dns {
    compiled: ArcSwap<zone::Compiled>,
    /// What `compiled` was built from (to skip rebuilding the same).
    source: Mutex<Option<Zones>>,
    alive: AtomicU64,
    /// Swapped whole when the log names another database.
    geoip: ArcSwap<geoip::GeoIp>,
    geoip_state: Mutex<geoip::State>,
    counters: Mutex<Vec<(&'static str, Arc<Counters>)>>,
    tls: Arc<server::DotCerts>,
}

impl Dns {
    /// Compiles the current zones, binds the ports and starts serving;
    /// follows projection and health changes from then on.
    pub async fn start(
        geoip: geoip::Sources,
        liveness: Liveness,
        log: Changes,
        ports: server::Ports,
        handover: &Handover,
    ) -> Arc<Dns> {
        let dns = Arc::new(Dns {
            compiled: ArcSwap::from_pointee(zone::Compiled::default()),
            source: Mutex::new(None),
            alive: AtomicU64::new(u64::MAX),
            geoip: ArcSwap::from_pointee(geoip::GeoIp::default()),
            geoip_state: Mutex::new(geoip::State::default()),
            counters: Mutex::new(Vec::new()),
            tls: Arc::new(server::DotCerts::default()),
        });
        let replica = geoip.replica.clone();
        dns.follow(&replica, &liveness);
        server::serve(dns.clone(), ports, handover).await;
        tokio::spawn(geoip::follow(dns.clone(), geoip, log.clone()));
        let follower = dns.clone();
        tokio::spawn(async move {
            let mut changed = log.watch();
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    c = changed.changed() => {
                        if c.is_err() { return }
                        follower.follow(&replica, &liveness);
                    }
                    _ = tick.tick() => follower.refresh_health(&liveness),
                }
            }
        });
        dns
    }

    /// Recompiles when the zones changed.
    fn follow(&self, replica: &Mutex<Replica>, liveness: &Liveness) {
        let Some(zones) = replica.lock().ok().map(|mut r| r.zones()) else {
            return;
        };
        self.install(&zones, liveness);
    }

    fn install(&self, zones: &Zones, liveness: &Liveness) {
        if let Ok(mut source) = self.source.lock() {
            if source.as_ref() == Some(zones) {
                return;
            }
            *source = Some(zones.clone());
        }
        let started = std::time::Instant::now();
        let compiled = zone::compile(zones);
        let compile_ms = started.elapsed().as_secs_f64() * 1e3;
        for s in &compiled.skipped {
            tracing::warn!(record = %s, "a record is not served");
        }
        tracing::info!(
            zones = compiled.zones.len(),
            serial = compiled.serial,
            compile_ms = format_args!("{compile_ms:.1}"),
            "DNS zones compiled"
        );
        let names: Vec<String> = compiled.apexes().map(str::to_string).collect();
        self.compiled.store(Arc::new(compiled));
        self.refresh_health(liveness);
        let me = liveness.me().map(|m| m.to_string());
        self.tls.ensure_self_signed(me.as_deref(), &names);
    }

    /// Serves DNS over TLS with an issued certificate from now on.
    pub fn install_certificate(
        &self,
        names: &[String],
        key: std::sync::Arc<rustls::sign::CertifiedKey>,
    ) {
        self.tls.install(names, key);
    }

    /// Which geo candidates are alive: this node always, peers when the
    /// liveness gossip hears them.
    fn refresh_health(&self, liveness: &Liveness) {
        let compiled = self.compiled.load();
        let alive = liveness.alive_names();
        let me = liveness.me();
        let mut mask = 0u64;
        for (i, g) in compiled.geo.iter().enumerate() {
            if Some(&g.name) == me.as_ref() || alive.contains(&g.name) {
                mask |= 1 << i;
            }
        }
        // Without a mesh identity yet, everyone counts as healthy.
        if me.is_none() {
            mask = u64::MAX;
        }
        self.alive.store(mask, Ordering::Relaxed);
    }

    /// A new set of counters for one serving thread or transport.
    fn counters(&self, transport: &'static str) -> Arc<Counters> {
        let c = Arc::new(Counters::default());
        if let Ok(mut all) = self.counters.lock() {
            all.push((transport, c.clone()));
        }
        c
    }

    /// For `makiatto health`: zones, serial, health mask, counters.
    pub fn report(&self) -> DnsReport {
        let compiled = self.compiled.load();
        let alive = self.alive.load(Ordering::Relaxed);
        let mut transports: BTreeMap<String, DnsCounts> = BTreeMap::new();
        if let Ok(all) = self.counters.lock() {
            for (t, c) in all.iter() {
                let e = transports.entry(t.to_string()).or_default();
                let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
                e.queries += load(&c.queries);
                e.dropped += load(&c.dropped);
                e.truncated += load(&c.truncated);
                let [noerror, formerr, servfail, nxdomain, notimp, other] = &c.by_rcode;
                e.noerror += load(noerror);
                e.formerr += load(formerr);
                e.servfail += load(servfail);
                e.nxdomain += load(nxdomain);
                e.notimp += load(notimp);
                e.refused_or_other += load(other);
            }
        }
        DnsReport {
            zones: compiled.apexes().map(str::to_owned).collect(),
            serial: compiled.serial,
            geoip: self.geoip.load().loaded().is_some(),
            geoip_database: Some(self.geoip_report()),
            geo: compiled
                .geo
                .iter()
                .enumerate()
                .map(|(i, g)| GeoHealth {
                    node: g.name.to_string(),
                    healthy: alive & (1 << i) != 0,
                })
                .collect(),
            skipped_records: compiled.skipped.clone(),
            transports,
        }
    }
}
