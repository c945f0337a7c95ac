//! Certificates per name. Empty until the ACME events exist; present now so
//! that every node already agrees on its (empty) fingerprint.

use std::collections::BTreeMap;

use serde::Serialize;

/// The current certificate of every name the cluster serves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Certificates {
    pub names: BTreeMap<String, CertificateEntry>,
}

/// One name's certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateEntry {
    pub issuer: String,
    pub not_after_millis: u64,
}
