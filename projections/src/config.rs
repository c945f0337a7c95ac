//! The desired configuration: an automerge document whose changes ride in
//! `config-changed` events, and its typed view.
//!
//! Concurrent edits merge field by field: domains and custom records are map
//! entries, so two operators changing different records — or different
//! fields of one record — both win; where both change one field, automerge's
//! rule picks the winner, and `maki log` shows both writes. Cluster-wide
//! settings live here too (never in per-node files), with their defaults
//! stated once in [`SETTINGS`].

use std::collections::BTreeMap;

use automerge::ReadDoc as _;
use automerge::transaction::Transactable as _;
use automerge::{AutoCommit, Change, transaction::CommitOptions};
use autosurgeon::{Hydrate, Reconcile, hydrate, reconcile};
use makiatto_events::{AuthorKey, Blake3Hash};
use serde::{Deserialize, Serialize};

use crate::record::RecordText;

/// Why a configuration change could not be read or made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("a configuration change does not decode: {0}")]
    BadChange(String),
    #[error("a configuration change does not apply: {0}")]
    Apply(String),
    #[error("the configuration document does not have the expected shape: {0}")]
    Shape(String),
    #[error("unknown setting {key:?}; known settings: {known}")]
    UnknownSetting { key: String, known: String },
    #[error("bad value {value:?} for {key}: {why}")]
    BadSetting {
        key: String,
        value: String,
        why: String,
    },
}

/// Everything the operators want the cluster to serve.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, Reconcile, Hydrate)]
pub struct DesiredConfig {
    /// Keyed by domain name.
    #[autosurgeon(missing = "Default::default")]
    pub domains: BTreeMap<String, DomainConfig>,
    #[autosurgeon(missing = "Default::default")]
    pub o11y: O11yConfig,
    #[autosurgeon(missing = "Default::default")]
    pub settings: Settings,
}

/// One `[[domain]]` of `makiatto.toml` (its local `path` stays with `maki`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, Reconcile, Hydrate)]
pub struct DomainConfig {
    #[autosurgeon(missing = "Default::default")]
    pub aliases: Vec<String>,
    /// Custom records, keyed by a stable key chosen by `maki` (type, name
    /// and position among records of that type and name).
    #[autosurgeon(missing = "Default::default")]
    pub records: BTreeMap<String, RecordConfig>,
    #[autosurgeon(missing = "Default::default")]
    pub functions: Vec<FunctionConfig>,
    #[autosurgeon(missing = "Default::default")]
    pub transforms: Vec<TransformConfig>,
}

/// A `[[domain.records]]` entry, stored as text: the typed form is
/// [`Record`](crate::record::Record), parsed at each edge (see
/// `record.rs` for why the stored form stays text).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Reconcile, Hydrate)]
pub struct RecordConfig {
    #[serde(rename = "type")]
    #[autosurgeon(missing = "Default::default")]
    pub rtype: String,
    /// Relative to the domain; `@` is the apex.
    #[autosurgeon(missing = "Default::default")]
    pub name: String,
    #[autosurgeon(missing = "Default::default")]
    pub value: String,
    #[autosurgeon(missing = "Default::default")]
    pub ttl: Option<u32>,
    #[autosurgeon(missing = "Default::default")]
    pub priority: Option<u16>,
}

impl RecordConfig {
    /// The entry's fields for [`Record::parse`](crate::record::Record::parse).
    pub fn text(&self) -> RecordText<'_> {
        RecordText {
            rtype: &self.rtype,
            name: &self.name,
            value: &self.value,
            ttl: self.ttl.map(i64::from),
            priority: self.priority.map(i64::from),
        }
    }
}

/// Sealed environment values: hex of a postcard `SealedValue`, shown by name only.
pub type SealedEnv = BTreeMap<String, String>;

fn names_only<S: serde::Serializer>(env: &SealedEnv, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(env.keys())
}

/// The shown form read back: the names, each with no value (sealed values
/// never leave the log as JSON).
fn names_without_values<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SealedEnv, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    Ok(names.into_iter().map(|n| (n, String::new())).collect())
}

/// A `[[domain.functions]]` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Reconcile, Hydrate)]
pub struct FunctionConfig {
    #[key]
    pub path: String,
    #[autosurgeon(missing = "Default::default")]
    pub methods: Vec<String>,
    #[serde(
        serialize_with = "names_only",
        deserialize_with = "names_without_values"
    )]
    #[autosurgeon(missing = "Default::default")]
    pub env: SealedEnv,
    #[autosurgeon(missing = "Default::default")]
    pub timeout_ms: Option<u64>,
    #[autosurgeon(missing = "Default::default")]
    pub max_memory_mb: Option<u64>,
}

/// A `[[domain.transforms]]` entry; order matters (they run in sequence).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Reconcile, Hydrate)]
pub struct TransformConfig {
    #[key]
    pub path: String,
    #[autosurgeon(missing = "Default::default")]
    pub files: String,
    #[serde(
        serialize_with = "names_only",
        deserialize_with = "names_without_values"
    )]
    #[autosurgeon(missing = "Default::default")]
    pub env: SealedEnv,
    #[autosurgeon(missing = "Default::default")]
    pub timeout_ms: Option<u64>,
    #[autosurgeon(missing = "Default::default")]
    pub max_memory_mb: Option<u64>,
    #[autosurgeon(missing = "Default::default")]
    pub max_file_size_kb: Option<u64>,
}

/// The `[o11y]` table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, Reconcile, Hydrate)]
pub struct O11yConfig {
    #[autosurgeon(missing = "Default::default")]
    pub otlp_endpoint: Option<String>,
    #[autosurgeon(missing = "Default::default")]
    pub sampling_ratio: Option<f64>,
    #[autosurgeon(missing = "Default::default")]
    pub tracing_enabled: Option<bool>,
    #[autosurgeon(missing = "Default::default")]
    pub metrics_enabled: Option<bool>,
    #[autosurgeon(missing = "Default::default")]
    pub logging_enabled: Option<bool>,
    /// Requests slower than this are always traced (milliseconds; default
    /// 1000). Left out of the JSON when unset, so documents written before
    /// it existed keep their fingerprints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[autosurgeon(missing = "Default::default")]
    pub slow_threshold_ms: Option<u64>,
    /// How often metrics are exported (seconds; default 15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[autosurgeon(missing = "Default::default")]
    pub metrics_interval_secs: Option<u64>,
    /// The share of DNS queries traced, besides the ones always kept
    /// (default 0.001): a query costs a tenth of an HTTP request and comes
    /// ten times as often, so `sampling_ratio` would make tracing cost
    /// more than answering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[autosurgeon(missing = "Default::default")]
    pub dns_sampling_ratio: Option<f64>,
}

/// Cluster-wide settings (`maki config set KEY VALUE`). `None` means the
/// default of [`SETTINGS`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Reconcile, Hydrate)]
pub struct Settings {
    #[autosurgeon(missing = "Default::default")]
    pub dns_geo_ttl: Option<u32>,
    #[autosurgeon(missing = "Default::default")]
    pub dns_nearest: Option<u32>,
    #[autosurgeon(missing = "Default::default")]
    pub acme_directory: Option<String>,
    #[autosurgeon(missing = "Default::default")]
    pub acme_ca_root: Option<String>,
    #[autosurgeon(missing = "Default::default")]
    pub acme_challenge: Option<String>,
    #[autosurgeon(missing = "Default::default")]
    pub sites_keep_versions: Option<u32>,
    /// Added after the others: left out of the JSON while unset, so the
    /// fingerprints of logs that never set it stay what they were.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_max_clock_skew: Option<u32>,
    // The settings below came with images on the fly. Unset, they are left
    // out of the JSON, so a projection's bytes (and fingerprint) stay those
    // of a build that never knew them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[autosurgeon(missing = "Default::default")]
    pub images_cache_mb: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[autosurgeon(missing = "Default::default")]
    pub images_max_megapixels: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[autosurgeon(missing = "Default::default")]
    pub images_max_output: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[autosurgeon(missing = "Default::default")]
    pub images_max_decode_mb: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[autosurgeon(missing = "Default::default")]
    pub images_timeout_ms: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[autosurgeon(missing = "Default::default")]
    pub images_renditions_per_minute: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[autosurgeon(missing = "Default::default")]
    pub work_queue: Option<u32>,
    // WebAssembly functions and transforms: left out of the JSON while
    // unset, as the image settings are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[autosurgeon(missing = "Default::default")]
    pub wasm_timeout_ms: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[autosurgeon(missing = "Default::default")]
    pub wasm_max_timeout_ms: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[autosurgeon(missing = "Default::default")]
    pub wasm_memory_mb: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[autosurgeon(missing = "Default::default")]
    pub wasm_max_memory_mb: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[autosurgeon(missing = "Default::default")]
    pub wasm_concurrency: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[autosurgeon(missing = "Default::default")]
    pub wasm_outgoing_calls: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[autosurgeon(missing = "Default::default")]
    pub wasm_max_request_kb: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[autosurgeon(missing = "Default::default")]
    pub wasm_body_timeout_ms: Option<u32>,
    /// The GeoIP database every node answers with: the blake3 hash of its
    /// manifest blob (`maki geoip update`). Unset, it is left out of the
    /// canonical form, so a log without it keeps its fingerprint.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geoip_database: Option<String>,
}

/// A whole-number setting: its key, its field, its range and its default
/// (the default is stated in [`SETTINGS`] too; a test checks they agree).
struct Number {
    key: &'static str,
    field: fn(&Settings) -> Option<u32>,
    field_mut: fn(&mut Settings) -> &mut Option<u32>,
    lo: u32,
    hi: u32,
    default: u32,
}

macro_rules! number {
    ($key:literal, $field:ident, $lo:expr, $hi:expr, $default:expr) => {
        Number {
            key: $key,
            field: |s| s.$field,
            field_mut: |s| &mut s.$field,
            lo: $lo,
            hi: $hi,
            default: $default,
        }
    };
}

const NUMBERS: &[Number] = &[
    number!("dns.geo_ttl", dns_geo_ttl, 1, 86_400, 60),
    number!("dns.nearest", dns_nearest, 1, 8, 1),
    number!("sites.keep_versions", sites_keep_versions, 1, 1000, 10),
    number!("log.max_clock_skew", log_max_clock_skew, 5, 86_400, 60),
    number!("images.cache_mb", images_cache_mb, 0, 65_536, 500),
    number!("images.max_megapixels", images_max_megapixels, 1, 1000, 50),
    number!("images.max_output", images_max_output, 16, 16_384, 4096),
    number!(
        "images.max_decode_mb",
        images_max_decode_mb,
        16,
        16_384,
        256
    ),
    number!("images.timeout_ms", images_timeout_ms, 100, 600_000, 10_000),
    number!(
        "images.renditions_per_minute",
        images_renditions_per_minute,
        1,
        1_000_000,
        100
    ),
    number!("work.queue", work_queue, 1, 100_000, 64),
    number!("wasm.timeout_ms", wasm_timeout_ms, 1, 600000, 5000),
    number!("wasm.max_timeout_ms", wasm_max_timeout_ms, 1, 600000, 30000),
    number!("wasm.memory_mb", wasm_memory_mb, 1, 512, 64),
    number!("wasm.max_memory_mb", wasm_max_memory_mb, 1, 512, 512),
    number!("wasm.concurrency", wasm_concurrency, 1, 100000, 16),
    number!("wasm.outgoing_calls", wasm_outgoing_calls, 0, 10000, 16),
    number!("wasm.max_request_kb", wasm_max_request_kb, 0, 1048576, 1024),
    number!(
        "wasm.body_timeout_ms",
        wasm_body_timeout_ms,
        100,
        600000,
        10000
    ),
];

/// One setting: its key, its default and what it does.
pub struct SettingSpec {
    pub key: &'static str,
    pub default: &'static str,
    pub doc: &'static str,
}

/// Every setting, its default and its meaning: the one place they are stated.
pub const SETTINGS: &[SettingSpec] = &[
    SettingSpec {
        key: "dns.geo_ttl",
        default: "60",
        doc: "TTL in seconds of geo-routed A/AAAA answers (1–86400)",
    },
    SettingSpec {
        key: "dns.nearest",
        default: "1",
        doc: "how many nearest healthy nodes a geo answer returns (1–8)",
    },
    SettingSpec {
        key: "acme.directory",
        default: "",
        doc: "ACME directory URL; empty means no certificate is ordered",
    },
    SettingSpec {
        key: "acme.ca_root",
        default: "",
        doc: "PEM of a private ACME CA's root (such as pebble's)",
    },
    SettingSpec {
        key: "acme.challenge",
        default: "http-01",
        doc: "how names are proved to the CA: http-01, or dns-01 through our nameservers (wildcards always use dns-01)",
    },
    SettingSpec {
        key: "sites.keep_versions",
        default: "10",
        doc: "site versions per domain kept by garbage collection (1–1000)",
    },
    SettingSpec {
        key: "log.max_clock_skew",
        default: "60",
        doc: "seconds an event may be stamped ahead of a node's clock: past it, events from peers wait for the clock, from maki are refused (5–86400)",
    },
    SettingSpec {
        key: "images.cache_mb",
        default: "500",
        doc: "memory per node for resized images, in MiB of encoded bytes (0–65536; 0 keeps none)",
    },
    SettingSpec {
        key: "images.max_megapixels",
        default: "50",
        doc: "largest source image processed, in megapixels, read from its header (1–1000); larger gets 422",
    },
    SettingSpec {
        key: "images.max_output",
        default: "4096",
        doc: "largest width or height of a resized image, after dpr (16–16384); larger gets 400",
    },
    SettingSpec {
        key: "images.max_decode_mb",
        default: "256",
        doc: "most memory one image's decoded pixels may take, in MiB (16–16384); more gets 422",
    },
    SettingSpec {
        key: "images.timeout_ms",
        default: "10000",
        doc: "longest wait for one resize, queue included (100–600000); longer gets 503",
    },
    SettingSpec {
        key: "images.renditions_per_minute",
        default: "100",
        doc: "new renditions of one source image a node makes per minute (1–1000000); more gets 429",
    },
    SettingSpec {
        key: "work.queue",
        default: "64",
        doc: "jobs waiting for the CPU pool (image resizing, WebAssembly) beyond which requests get 503 (1–100000)",
    },
    SettingSpec {
        key: "wasm.timeout_ms",
        default: "5000",
        doc: "a function's or transform's default time limit in milliseconds, stopped by epoch interruption (1–600000); a component may set its own timeout_ms",
    },
    SettingSpec {
        key: "wasm.max_timeout_ms",
        default: "30000",
        doc: "the cap on any component's timeout_ms (1–600000)",
    },
    SettingSpec {
        key: "wasm.memory_mb",
        default: "64",
        doc: "a component's default memory limit in MiB (1–512); a component may set its own max_memory_mb",
    },
    SettingSpec {
        key: "wasm.max_memory_mb",
        default: "512",
        doc: "the cap on any component's max_memory_mb, in MiB (1–512; 512 is the pooling allocator's slot size)",
    },
    SettingSpec {
        key: "wasm.concurrency",
        default: "16",
        doc: "calls of one function or transform running or queued at once on a node (1–100000); more get 503",
    },
    SettingSpec {
        key: "wasm.outgoing_calls",
        default: "16",
        doc: "outgoing HTTP requests and TCP connections one call may make (0–10000)",
    },
    SettingSpec {
        key: "wasm.max_request_kb",
        default: "1024",
        doc: "the largest request body a function is given, in KiB (0–1048576); larger gets 413",
    },
    SettingSpec {
        key: "wasm.body_timeout_ms",
        default: "10000",
        doc: "how long reading a function's request body may take, in milliseconds (100–600000); longer gets 408",
    },
    SettingSpec {
        key: "geoip.database",
        default: "",
        doc: "the GeoIP database's manifest (blake3), set by `maki geoip update`; empty: none, and GeoDNS places no visitor",
    },
];

fn ranged(key: &str, value: &str, lo: u32, hi: u32) -> Result<u32, ConfigError> {
    value
        .parse::<u32>()
        .ok()
        .filter(|v| (lo..=hi).contains(v))
        .ok_or_else(|| ConfigError::BadSetting {
            key: key.into(),
            value: value.into(),
            why: format!("expected a whole number from {lo} to {hi}"),
        })
}

impl Settings {
    /// A whole-number setting's value, or its default.
    pub fn number(&self, key: &str) -> u32 {
        NUMBERS
            .iter()
            .find(|n| n.key == key)
            .map_or(0, |n| (n.field)(self).unwrap_or(n.default))
    }

    pub fn geo_ttl(&self) -> u32 {
        self.number("dns.geo_ttl")
    }

    pub fn nearest(&self) -> u32 {
        self.number("dns.nearest")
    }

    /// `images.cache_mb`.
    pub fn images_cache_mb(&self) -> u32 {
        self.number("images.cache_mb")
    }

    /// `images.max_megapixels`.
    pub fn images_max_megapixels(&self) -> u32 {
        self.number("images.max_megapixels")
    }

    /// `images.max_output`.
    pub fn images_max_output(&self) -> u32 {
        self.number("images.max_output")
    }

    /// `images.max_decode_mb`.
    pub fn images_max_decode_mb(&self) -> u32 {
        self.number("images.max_decode_mb")
    }

    /// `images.timeout_ms`.
    pub fn images_timeout_ms(&self) -> u32 {
        self.number("images.timeout_ms")
    }

    /// `images.renditions_per_minute`.
    pub fn images_renditions_per_minute(&self) -> u32 {
        self.number("images.renditions_per_minute")
    }

    /// `work.queue`.
    pub fn work_queue(&self) -> u32 {
        self.number("work.queue")
    }

    /// Whether names are proved by DNS-01 (else HTTP-01; wildcards always
    /// use DNS-01).
    pub fn acme_dns01(&self) -> bool {
        self.acme_challenge.as_deref() == Some("dns-01")
    }

    pub fn keep_versions(&self) -> u32 {
        self.number("sites.keep_versions")
    }

    /// How far ahead of a node's clock an event may be stamped.
    pub fn max_clock_skew_millis(&self) -> u64 {
        u64::from(self.number("log.max_clock_skew")) * 1000
    }

    /// The manifest of the GeoIP database every node should answer with.
    /// A value that is not a hash (set by hand around `maki config set`'s
    /// check) names nothing.
    pub fn geoip_database(&self) -> Option<Blake3Hash> {
        self.geoip_database.as_deref()?.parse().ok()
    }

    /// One setting's value as text (`None`: unset, so its default holds,
    /// or no such key).
    pub fn get(&self, key: &str) -> Option<String> {
        if let Some(n) = NUMBERS.iter().find(|n| n.key == key) {
            return (n.field)(self).map(|v| v.to_string());
        }
        match key {
            "acme.directory" => self.acme_directory.clone(),
            "acme.challenge" => self.acme_challenge.clone(),
            "acme.ca_root" => self.acme_ca_root.clone(),
            "geoip.database" => self.geoip_database.clone(),
            _ => None,
        }
    }

    /// Sets one setting from text, refusing unknown keys and bad values.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        if let Some(n) = NUMBERS.iter().find(|n| n.key == key) {
            *(n.field_mut)(self) = Some(ranged(key, value, n.lo, n.hi)?);
            return Ok(());
        }
        match key {
            "acme.directory" => {
                self.acme_directory = match value {
                    "" => None,
                    url if url.starts_with("https://") => Some(url.to_owned()),
                    _ => {
                        return Err(ConfigError::BadSetting {
                            key: key.into(),
                            value: value.into(),
                            why: "expected an https:// URL, or \"\" for none".into(),
                        });
                    }
                }
            }
            "acme.challenge" => {
                self.acme_challenge = match value {
                    "" | "http-01" => None,
                    "dns-01" => Some(value.to_owned()),
                    _ => {
                        return Err(ConfigError::BadSetting {
                            key: key.into(),
                            value: value.into(),
                            why: "expected http-01 or dns-01".into(),
                        });
                    }
                }
            }
            "acme.ca_root" => {
                self.acme_ca_root = match value {
                    "" => None,
                    pem if pem.contains("-----BEGIN CERTIFICATE-----") => Some(pem.to_owned()),
                    _ => {
                        return Err(ConfigError::BadSetting {
                            key: key.into(),
                            value: value.into(),
                            why: "expected a PEM certificate, or \"\" for none".into(),
                        });
                    }
                }
            }
            "geoip.database" => {
                self.geoip_database = match value {
                    "" => None,
                    hash if hash.parse::<Blake3Hash>().is_ok() => Some(hash.to_ascii_lowercase()),
                    _ => {
                        return Err(ConfigError::BadSetting {
                            key: key.into(),
                            value: value.into(),
                            why: "expected a blake3 hash (64 hexadecimal characters), or \"\" for none; `maki geoip update` sets it".into(),
                        });
                    }
                }
            }
            _ => {
                return Err(ConfigError::UnknownSetting {
                    key: key.into(),
                    known: SETTINGS
                        .iter()
                        .map(|s| s.key)
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        Ok(())
    }
}

/// The automerge document behind [`DesiredConfig`].
#[derive(Debug, Clone, Default)]
pub struct ConfigDoc {
    doc: AutoCommit,
}

impl ConfigDoc {
    /// Decodes change bytes from an event; all must decode or none apply.
    pub fn decode(changes: &[Vec<u8>]) -> Result<Vec<Change>, ConfigError> {
        changes
            .iter()
            .map(|bytes| {
                Change::from_bytes(bytes.clone()).map_err(|e| ConfigError::BadChange(e.to_string()))
            })
            .collect()
    }

    /// Applies decoded changes. Changes whose dependencies are missing (for
    /// example, on a change that was not authorized) wait inside the document
    /// and have no effect until those arrive.
    pub fn apply(&mut self, changes: Vec<Change>) -> Result<(), ConfigError> {
        self.doc
            .apply_changes(changes)
            .map_err(|e| ConfigError::Apply(e.to_string()))
    }

    /// The whole document, to keep on disk (`maki` keeps the configuration
    /// as of its last sync this way).
    pub fn save(&self) -> Vec<u8> {
        self.doc.clone().save()
    }

    /// A document saved with [`ConfigDoc::save`].
    pub fn load(bytes: &[u8]) -> Result<ConfigDoc, ConfigError> {
        AutoCommit::load(bytes)
            .map(|doc| ConfigDoc { doc })
            .map_err(|e| ConfigError::BadChange(e.to_string()))
    }

    /// The typed view of the document.
    pub fn view(&self) -> Result<DesiredConfig, ConfigError> {
        hydrate(&self.doc).map_err(|e| ConfigError::Shape(e.to_string()))
    }

    /// Applies changes the way every node's fold does: one at a time, in
    /// the log's order, skipping any the document refuses (such as a
    /// second change with an automerge actor's sequence number taken).
    /// How many were refused. `maki` rebuilds the document this way, so it
    /// sees what the nodes see and can still edit on top of it.
    ///
    /// The changes are first applied together, as one batch: automerge
    /// rewrites its columns once per batch, so one at a time costs the
    /// whole document each (a project of 10,000 domains, split into that
    /// many changes, took minutes). The result is the same: a batch that
    /// applies whole applies exactly the changes one at a time would
    /// (automerge's state is a function of the changes applied). A batch
    /// the document refuses is undone, and the changes go one at a time.
    pub fn apply_as_folded(&mut self, changes: Vec<Change>) -> usize {
        if changes.len() > 1 {
            let before = self.doc.clone();
            if self.doc.apply_changes(changes.iter().cloned()).is_ok() {
                return 0;
            }
            self.doc = before;
        }
        changes
            .into_iter()
            .filter(|c| self.doc.apply_changes([c.clone()]).is_err())
            .count()
    }

    /// Turns `wanted` into changes on top of this document, authored by
    /// `actor`, and returns their bytes for a `config-changed` event. Only
    /// the fields that differ are written, so a stale copy does not revert
    /// fields it did not touch.
    ///
    /// The automerge actor is the operator's key followed by `nonce`, a
    /// value new to every edit (`maki` draws it at random): automerge
    /// numbers each actor's changes 1, 2, 3…, so two edits one operator
    /// makes concurrently from the same copy (two sides of a partition,
    /// two devices) under one actor would both take the next number, and
    /// every document holding both would refuse the second — and every
    /// later edit on top of it.
    ///
    /// An edit is one change when it is small. A larger one (more than
    /// [`SPLIT_ABOVE`] bytes) is one change per domain that differs, then
    /// one for the rest, so that `maki` can spread them over events of at
    /// most `MAX_EVENT_BYTES` each (see [`pack_changes`]). A project of
    /// more than [`LARGE_PROJECT`] domains is always edited that way, the
    /// document read once and only the domains that differ written: a
    /// whole-document reconcile of thousands of domains costs seconds.
    pub fn edit(
        &mut self,
        actor: &AuthorKey,
        nonce: [u8; 16],
        wanted: &DesiredConfig,
    ) -> Result<Vec<Vec<u8>>, ConfigError> {
        let before = self.doc.get_heads();
        let actor = actor_id(actor, nonce);
        if wanted.domains.len().max(self.domain_count()) > LARGE_PROJECT {
            let current = self.view()?;
            self.doc.set_actor(actor);
            self.edit_by_domain(&current, wanted)?;
            return Ok(self.changes_since(&before));
        }
        let unedited = self.doc.clone();
        self.doc.set_actor(actor.clone());
        reconcile(&mut self.doc, wanted).map_err(|e| ConfigError::Shape(e.to_string()))?;
        self.doc.commit_with(CommitOptions::default().with_time(0));
        let changes = self.changes_since(&before);
        if changes.iter().map(Vec::len).sum::<usize>() <= SPLIT_ABOVE {
            return Ok(changes);
        }
        // Again, a domain at a time.
        self.doc = unedited;
        let current = self.view()?;
        self.doc.set_actor(actor);
        self.edit_by_domain(&current, wanted)?;
        Ok(self.changes_since(&before))
    }

    /// How many domains the document's map holds (without reading them).
    fn domain_count(&self) -> usize {
        match self.doc.get(automerge::ROOT, "domains") {
            Ok(Some((automerge::Value::Object(_), id))) => self.doc.length(&id),
            _ => 0,
        }
    }

    /// A document holding `wanted` as one change, however large: for a copy
    /// kept whole (`maki`'s base), never sent as events.
    pub fn whole(
        actor: &AuthorKey,
        nonce: [u8; 16],
        wanted: &DesiredConfig,
    ) -> Result<ConfigDoc, ConfigError> {
        let mut doc = ConfigDoc::default();
        doc.doc.set_actor(actor_id(actor, nonce));
        reconcile(&mut doc.doc, wanted).map_err(|e| ConfigError::Shape(e.to_string()))?;
        doc.doc.commit_with(CommitOptions::default().with_time(0));
        Ok(doc)
    }

    /// Writes what differs between `current` (this document's view) and
    /// `wanted`: a change per domain that differs, then one for the rest.
    fn edit_by_domain(
        &mut self,
        current: &DesiredConfig,
        wanted: &DesiredConfig,
    ) -> Result<(), ConfigError> {
        let shape = |e: autosurgeon::ReconcileError| ConfigError::Shape(e.to_string());
        let domains = match self.doc.get(automerge::ROOT, "domains") {
            Ok(Some((automerge::Value::Object(automerge::ObjType::Map), id))) => id,
            _ => self
                .doc
                .put_object(automerge::ROOT, "domains", automerge::ObjType::Map)
                .map_err(|e| ConfigError::Shape(e.to_string()))?,
        };
        let names: std::collections::BTreeSet<&String> = wanted
            .domains
            .keys()
            .chain(current.domains.keys())
            .collect();
        for name in names {
            match (wanted.domains.get(name), current.domains.get(name)) {
                (Some(w), c) if c != Some(w) => {
                    autosurgeon::reconcile_prop(&mut self.doc, &domains, name.as_str(), w)
                        .map_err(shape)?;
                }
                (None, Some(_)) => {
                    self.doc
                        .delete(&domains, name.as_str())
                        .map_err(|e| ConfigError::Shape(e.to_string()))?;
                }
                _ => continue,
            }
            self.doc.commit_with(CommitOptions::default().with_time(0));
        }
        // The rest: the tables beside the domains, each only if it differs.
        if current.o11y != wanted.o11y {
            autosurgeon::reconcile_prop(&mut self.doc, automerge::ROOT, "o11y", &wanted.o11y)
                .map_err(shape)?;
        }
        if current.settings != wanted.settings {
            autosurgeon::reconcile_prop(
                &mut self.doc,
                automerge::ROOT,
                "settings",
                &wanted.settings,
            )
            .map_err(shape)?;
        }
        self.doc.commit_with(CommitOptions::default().with_time(0));
        Ok(())
    }

    fn changes_since(&mut self, before: &[automerge::ChangeHash]) -> Vec<Vec<u8>> {
        self.doc
            .get_changes(before)
            .iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect()
    }
}

/// An edit whose changes come to more bytes than this is split, a domain
/// per change ([`ConfigDoc::edit`]).
pub const SPLIT_ABOVE: usize = 32 * 1024;

/// Above this many domains, [`ConfigDoc::edit`] writes only the domains
/// that differ, a change each.
pub const LARGE_PROJECT: usize = 256;

/// The automerge actor of one edit: the operator's key, then the edit's
/// nonce (see [`ConfigDoc::edit`] for why each edit has its own).
fn actor_id(actor: &AuthorKey, nonce: [u8; 16]) -> automerge::ActorId {
    let mut id = actor.as_bytes().to_vec();
    id.extend_from_slice(&nonce);
    automerge::ActorId::from(id)
}

/// Groups `changes`, in order, into as few events' worth as it can, each
/// at most `budget` bytes of changes; `Err(size)` names a single change
/// larger than the budget (a domain whose configuration alone does not fit
/// in an event).
pub fn pack_changes(changes: &[Vec<u8>], budget: usize) -> Result<Vec<Vec<Vec<u8>>>, usize> {
    let mut groups: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut size = 0;
    for c in changes {
        if c.len() > budget {
            return Err(c.len());
        }
        match groups.last_mut() {
            Some(group) if size + c.len() <= budget => {
                size += c.len();
                group.push(c.clone());
            }
            _ => {
                size = c.len();
                groups.push(vec![c.clone()]);
            }
        }
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_whole_number_setting_is_documented_with_its_default_and_range() {
        for n in NUMBERS {
            let spec = SETTINGS.iter().find(|s| s.key == n.key).unwrap();
            assert_eq!(spec.default, n.default.to_string(), "{}", n.key);
            assert!(spec.doc.contains(&format!("{}–", n.lo)), "{}", n.key);
            let mut s = Settings::default();
            assert_eq!(s.number(n.key), n.default);
            assert_eq!(s.get(n.key), None);
            s.set(n.key, &n.hi.to_string()).unwrap();
            assert_eq!(s.number(n.key), n.hi);
            assert_eq!(s.get(n.key), Some(n.hi.to_string()));
            assert!(s.set(n.key, &(u64::from(n.hi) + 1).to_string()).is_err());
            if n.lo > 0 {
                assert!(s.set(n.key, &(n.lo - 1).to_string()).is_err());
            }
        }
    }

    #[test]
    fn unset_image_settings_leave_the_json_as_before() {
        let json = serde_json::to_string(&Settings::default()).unwrap();
        assert!(!json.contains("images"), "{json}");
        assert!(!json.contains("work_queue"), "{json}");
        let mut s = Settings::default();
        s.set("images.cache_mb", "1").unwrap();
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"images_cache_mb\":1"), "{json}");
        assert_eq!(serde_json::from_str::<Settings>(&json).unwrap(), s);
    }

    fn record(value: &str, ttl: Option<u32>) -> RecordConfig {
        RecordConfig {
            rtype: "TXT".into(),
            name: "@".into(),
            value: value.into(),
            ttl,
            priority: None,
        }
    }

    /// `n` domains of ten records each, named from `from` on.
    fn many_domains(n: usize, tag: &str) -> DesiredConfig {
        let mut cfg = DesiredConfig::default();
        for i in 0..n {
            let mut domain = DomainConfig::default();
            for r in 0..10 {
                domain.records.insert(
                    format!("TXT r{r} 0"),
                    record(&format!("{tag} {i} {r}"), None),
                );
            }
            cfg.domains.insert(format!("d{i:05}.test"), domain);
        }
        cfg
    }

    #[test]
    fn a_large_edit_is_split_into_changes_that_fit_in_events_and_apply_alike() {
        let alice = AuthorKey([1; 32]);
        let mut doc = ConfigDoc::default();
        // 1,000 domains (10,000 records): far more than one event holds.
        let mut wanted = many_domains(1000, "v=1");
        wanted.settings.set("dns.geo_ttl", "42").unwrap();
        let changes = doc.edit(&alice, [7; 16], &wanted).unwrap();
        let total: usize = changes.iter().map(Vec::len).sum();
        assert!(total > 64 * 1024, "{total} bytes");
        assert!(changes.len() > 1000, "{} changes", changes.len());
        let largest = changes.iter().map(Vec::len).max().unwrap();
        assert!(largest < 4096, "a change of {largest} bytes");
        let groups = pack_changes(&changes, 48 * 1024).unwrap();
        assert!(groups.len() > 1);
        assert!(
            groups
                .iter()
                .all(|g| g.iter().map(Vec::len).sum::<usize>() <= 48 * 1024)
        );
        assert_eq!(groups.concat(), changes, "packed in order, none lost");
        // A node folds them, an event at a time.
        let mut node = ConfigDoc::default();
        for g in &groups {
            assert_eq!(node.apply_as_folded(ConfigDoc::decode(g).unwrap()), 0);
        }
        assert_eq!(node.view().unwrap(), wanted);
        assert_eq!(doc.view().unwrap(), wanted);

        // Then one domain changes and one goes: in a project this large,
        // a change for each, written without touching the other 998.
        let mut next = wanted.clone();
        next.domains.remove("d00003.test");
        next.domains
            .get_mut("d00004.test")
            .unwrap()
            .records
            .insert("TXT r0 0".into(), record("v=2", Some(60)));
        let small = doc.edit(&alice, [8; 16], &next).unwrap();
        assert_eq!(small.len(), 2);
        assert!(
            small.iter().map(Vec::len).sum::<usize>() < 1024,
            "{small:?}"
        );
        node.apply_as_folded(ConfigDoc::decode(&small).unwrap());
        assert_eq!(node.view().unwrap(), next);

        // Every domain rewritten and half removed: split again.
        let mut last = many_domains(600, "v=3");
        last.settings.set("dns.geo_ttl", "43").unwrap();
        let big = doc.edit(&alice, [9; 16], &last).unwrap();
        assert!(big.len() > 1);
        for g in pack_changes(&big, 48 * 1024).unwrap() {
            node.apply_as_folded(ConfigDoc::decode(&g).unwrap());
        }
        assert_eq!(node.view().unwrap(), last);
    }

    #[test]
    fn a_change_larger_than_an_event_is_named() {
        assert_eq!(pack_changes(&[vec![0; 10], vec![0; 100]], 50), Err(100));
        assert_eq!(
            pack_changes(&[vec![1; 10], vec![2; 30], vec![3; 20]], 40),
            Ok(vec![vec![vec![1; 10], vec![2; 30]], vec![vec![3; 20]]])
        );
        assert_eq!(pack_changes(&[], 40), Ok(vec![]));
    }

    #[test]
    fn concurrent_edits_of_different_fields_of_one_record_both_win() {
        let alice = AuthorKey([1; 32]);
        let bob = AuthorKey([2; 32]);
        let mut base = ConfigDoc::default();
        let mut cfg = DesiredConfig::default();
        let mut domain = DomainConfig::default();
        domain.records.insert("TXT @ 0".into(), record("v=1", None));
        cfg.domains.insert("example.com".into(), domain);
        let genesis = base.edit(&alice, [0; 16], &cfg).unwrap();

        let mut a = base.clone();
        let mut a_cfg = cfg.clone();
        a_cfg
            .domains
            .get_mut("example.com")
            .unwrap()
            .records
            .get_mut("TXT @ 0")
            .unwrap()
            .value = "v=2".into();
        let from_a = a.edit(&alice, [1; 16], &a_cfg).unwrap();

        let mut b = base.clone();
        let mut b_cfg = cfg.clone();
        b_cfg
            .domains
            .get_mut("example.com")
            .unwrap()
            .records
            .get_mut("TXT @ 0")
            .unwrap()
            .ttl = Some(300);
        let from_b = b.edit(&bob, [2; 16], &b_cfg).unwrap();

        for order in [[&from_a, &from_b], [&from_b, &from_a]] {
            let mut doc = ConfigDoc::default();
            doc.apply(ConfigDoc::decode(&genesis).unwrap()).unwrap();
            for changes in order {
                doc.apply(ConfigDoc::decode(changes).unwrap()).unwrap();
            }
            let merged = doc.view().unwrap();
            assert_eq!(
                merged.domains["example.com"].records["TXT @ 0"],
                record("v=2", Some(300))
            );
        }
    }

    #[test]
    fn one_operators_concurrent_edits_from_one_copy_both_apply_and_later_edits_too() {
        // Two sides of a partition, one operator: each side's copy of the
        // document is the same, each gets an edit.
        let alice = AuthorKey([1; 32]);
        let mut base = ConfigDoc::default();
        let genesis = base
            .edit(&alice, [0; 16], &DesiredConfig::default())
            .unwrap();
        let edit = |nonce: u8, key: &str, value: &str| {
            let mut side = base.clone();
            let mut wanted = side.view().unwrap();
            wanted.settings.set(key, value).unwrap();
            side.edit(&alice, [nonce; 16], &wanted).unwrap()
        };
        let a = edit(1, "dns.geo_ttl", "101");
        let b = edit(2, "sites.keep_versions", "3");
        for order in [[&a, &b], [&b, &a]] {
            let mut doc = ConfigDoc::default();
            let mut all = genesis.clone();
            all.extend(order.iter().flat_map(|c| c.iter().cloned()));
            doc.apply(ConfigDoc::decode(&all).unwrap()).unwrap();
            let mut wanted = doc.view().unwrap();
            assert_eq!(wanted.settings.get("dns.geo_ttl").as_deref(), Some("101"));
            assert_eq!(
                wanted.settings.get("sites.keep_versions").as_deref(),
                Some("3")
            );
            // And the next edit, on top of both, applies too.
            wanted.settings.set("dns.geo_ttl", "102").unwrap();
            let next = doc.edit(&alice, [3; 16], &wanted).unwrap();
            let mut again = ConfigDoc::default();
            all.extend(next);
            again.apply(ConfigDoc::decode(&all).unwrap()).unwrap();
            assert_eq!(
                again.view().unwrap().settings.get("dns.geo_ttl").as_deref(),
                Some("102")
            );
        }
    }

    #[test]
    fn a_change_the_document_refuses_is_skipped_as_the_fold_skips_it() {
        // Two edits under one actor and sequence number (as `maki` made
        // them before each edit had an actor of its own): the second is
        // refused, the document still takes edits on top.
        let alice = AuthorKey([1; 32]);
        let mut base = ConfigDoc::default();
        let genesis = base
            .edit(&alice, [0; 16], &DesiredConfig::default())
            .unwrap();
        let edit = |key: &str, value: &str| {
            let mut side = base.clone();
            let mut wanted = side.view().unwrap();
            wanted.settings.set(key, value).unwrap();
            side.edit(&alice, [9; 16], &wanted).unwrap()
        };
        let a = edit("dns.geo_ttl", "101");
        let b = edit("sites.keep_versions", "3");
        let all: Vec<Vec<u8>> = [genesis, a, b].concat();
        assert!(
            ConfigDoc::default()
                .apply(ConfigDoc::decode(&all).unwrap())
                .is_err()
        );
        let mut doc = ConfigDoc::default();
        assert_eq!(doc.apply_as_folded(ConfigDoc::decode(&all).unwrap()), 1);
        let mut wanted = doc.view().unwrap();
        assert_eq!(wanted.settings.get("dns.geo_ttl").as_deref(), Some("101"));
        assert_eq!(wanted.settings.get("sites.keep_versions"), None);
        wanted.settings.set("sites.keep_versions", "4").unwrap();
        assert_eq!(doc.edit(&alice, [10; 16], &wanted).unwrap().len(), 1);
    }

    #[test]
    fn settings_refuse_unknown_keys_and_bad_values() {
        let mut s = Settings::default();
        assert_eq!(s.geo_ttl(), 60);
        s.set("dns.geo_ttl", "30").unwrap();
        assert_eq!(s.geo_ttl(), 30);
        assert!(matches!(
            s.set("dns.geo_ttl", "0"),
            Err(ConfigError::BadSetting { .. })
        ));
        assert!(matches!(
            s.set("dns.ttl", "30"),
            Err(ConfigError::UnknownSetting { .. })
        ));
        assert!(matches!(
            s.set("acme.directory", "http://x"),
            Err(ConfigError::BadSetting { .. })
        ));
        s.set("acme.directory", "https://localhost:14000/dir")
            .unwrap();
        assert!(!s.acme_dns01());
        s.set("acme.challenge", "dns-01").unwrap();
        assert!(s.acme_dns01());
        assert!(matches!(
            s.set("acme.challenge", "tls-alpn-01"),
            Err(ConfigError::BadSetting { .. })
        ));
        s.set("acme.challenge", "http-01").unwrap();
        assert!(!s.acme_dns01());
        assert!(matches!(
            s.set("geoip.database", "dbip-2026-12"),
            Err(ConfigError::BadSetting { .. })
        ));
        let hash = "AB".repeat(32);
        s.set("geoip.database", &hash).unwrap();
        assert_eq!(s.geoip_database(), Some(Blake3Hash([0xab; 32])));
        assert_eq!(s.get("geoip.database"), Some(hash.to_ascii_lowercase()));
        s.set("geoip.database", "").unwrap();
        assert_eq!(s.geoip_database(), None);
    }

    #[test]
    fn an_unset_geoip_database_leaves_the_canonical_form_as_before() {
        let json = serde_json::to_string(&Settings::default()).unwrap();
        assert!(!json.contains("geoip"), "{json}");
    }

    #[test]
    fn an_empty_or_partial_document_reads_as_defaults() {
        assert_eq!(
            ConfigDoc::default().view().unwrap(),
            DesiredConfig::default()
        );
        let mut doc = ConfigDoc::default();
        let mut cfg = DesiredConfig::default();
        cfg.settings.dns_geo_ttl = Some(30);
        doc.edit(&AuthorKey([1; 32]), [0; 16], &cfg).unwrap();
        assert_eq!(doc.view().unwrap(), cfg);
    }

    #[test]
    fn garbage_change_bytes_are_refused() {
        assert!(ConfigDoc::decode(&[vec![1, 2, 3]]).is_err());
    }
}
