//! Certificates per domain, the ACME challenges that are open, and the
//! renewals operators asked for.
//!
//! Order-insensitive (docs/design.md, Projections): per first name the issued certificate with
//! the greatest (HLC, id) wins, per challenge token its latest open/close by
//! (HLC, id), per name the latest renewal request; so a partition that
//! heals with older events in it folds to the same state on every node.

use std::collections::BTreeMap;

use makiatto_events::{Event, EventId, Hlc, Payload, SealedValue};
use serde::{Deserialize, Serialize};

/// Everything the certificates projection holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificates {
    /// The current certificates, by their first name (a site's domain, or
    /// a nameserver's name).
    pub names: BTreeMap<String, CertificateEntry>,
    /// ACME challenges by token, open or closed.
    pub challenges: BTreeMap<String, ChallengeEntry>,
    /// When a renewal was last asked for, by name.
    pub renewals: BTreeMap<String, Hlc>,
    /// When certificates were issued, per exact set of names (sorted,
    /// joined by `,`): the latest [`ISSUED_KEPT`] by (HLC, id). CAs limit
    /// duplicate certificates (Let's Encrypt: 5 per 7 days); the orderer
    /// reads this to stay under such limits.
    pub issued: BTreeMap<String, Vec<(Hlc, EventId)>>,
}

/// Issue times kept per set of names.
pub const ISSUED_KEPT: usize = 16;

/// The key of a set of names in [`Certificates::issued`].
pub fn names_key(names: &[String]) -> String {
    let mut sorted: Vec<String> = names
        .iter()
        .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
        .collect();
    sorted.sort();
    sorted.dedup();
    sorted.join(",")
}

/// One certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateEntry {
    pub domain: String,
    pub names: Vec<String>,
    pub issuer: String,
    pub not_after_millis: u64,
    pub chain_pem: String,
    /// Sealed to the nodes; shown as the number of recipients.
    #[serde(skip, default = "SealedValue::withheld")]
    pub key: SealedValue,
    pub key_sealed_to: usize,
    pub event: EventId,
    pub at: Hlc,
}

/// One ACME challenge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeEntry {
    pub name: String,
    pub value: String,
    pub dns: bool,
    pub open: bool,
    pub at: Hlc,
    pub event: EventId,
}

impl Certificates {
    /// Applies an authorized event; returns whether DNS zones may change
    /// (a DNS-01 challenge opened or closed).
    pub fn apply(&mut self, event: &Event) -> bool {
        let key = (event.hlc(), event.id());
        match event.payload() {
            Payload::CertificateIssued(c) => {
                let Some(first) = c.names.first() else {
                    return false;
                };
                let times = self.issued.entry(names_key(&c.names)).or_default();
                if let Err(at) = times.binary_search(&key) {
                    times.insert(at, key);
                    if times.len() > ISSUED_KEPT {
                        times.remove(0);
                    }
                }
                let newer = self.names.get(first).is_none_or(|e| (e.at, e.event) < key);
                if newer {
                    self.names.insert(
                        first.clone(),
                        CertificateEntry {
                            domain: c.domain.to_string(),
                            names: c.names.clone(),
                            issuer: c.issuer.clone(),
                            not_after_millis: c.not_after_millis,
                            chain_pem: c.chain_pem.clone(),
                            key_sealed_to: c.key.recipients().count(),
                            key: c.key.clone(),
                            event: event.id(),
                            at: event.hlc(),
                        },
                    );
                }
                false
            }
            Payload::AcmeChallenge(c) => {
                let newer = self
                    .challenges
                    .get(&c.token)
                    .is_none_or(|e| (e.at, e.event) < key);
                if newer {
                    self.challenges.insert(
                        c.token.clone(),
                        ChallengeEntry {
                            name: c.name.clone(),
                            value: c.value.clone(),
                            dns: c.dns,
                            open: c.open,
                            at: event.hlc(),
                            event: event.id(),
                        },
                    );
                }
                c.dns
            }
            Payload::CertificateRenewalRequested(r) => {
                let at = self.renewals.entry(r.name.clone()).or_insert(event.hlc());
                *at = (*at).max(event.hlc());
                false
            }
            _ => false,
        }
    }

    /// The open HTTP-01 challenges: token → key authorization.
    pub fn http_challenges(&self) -> impl Iterator<Item = (&String, &String)> {
        self.challenges
            .iter()
            .filter(|(_, c)| c.open && !c.dns)
            .map(|(t, c)| (t, &c.value))
    }
}
