//! Per domain: the site versions published, which one is live, and the
//! latest [`VERSIONS_KEPT`] of them in full.
//!
//! Manifests are blobs; the projection holds their hashes, never their
//! bytes. Every version stays in the log (`makiatto log --kind
//! site-published`); the projection keeps the latest [`VERSIONS_KEPT`],
//! which is the most `sites.keep_versions` lets garbage collection keep
//! the files of, and counts the earlier ones so that versions keep their
//! numbers. A history of a million publications therefore costs the
//! projection no more memory than one of a thousand.

use std::collections::{BTreeMap, VecDeque};

use makiatto_events::payload::{BlobRef, ChangeSummary};
use makiatto_events::{AuthorKey, DomainName, Event, EventId, Hlc, Payload};
use serde::{Deserialize, Serialize};

use crate::config::{DesiredConfig, FunctionConfig, TransformConfig};

/// Versions kept per domain in the projection: the most
/// `sites.keep_versions` can be set to.
pub const VERSIONS_KEPT: usize = 1000;

/// One published version of a site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteVersion {
    /// The `site-published` event, which names the version.
    pub event: EventId,
    pub manifest: BlobRef,
    pub summary: ChangeSummary,
    pub message: Option<String>,
    pub author: AuthorKey,
    pub at: Hlc,
}

impl SiteVersion {
    /// The version a `site-published` event publishes.
    pub fn of(event: &Event) -> Option<(DomainName, SiteVersion)> {
        let Payload::SitePublished(p) = event.payload() else {
            return None;
        };
        Some((
            p.domain.clone(),
            SiteVersion {
                event: event.id(),
                manifest: p.manifest,
                summary: p.summary,
                message: p.message.clone(),
                author: event.author(),
                at: event.hlc(),
            },
        ))
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One domain's site.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SiteState {
    /// The live version's event id.
    pub live: Option<EventId>,
    /// The latest versions, oldest first (canonical order): all of them
    /// while there are at most [`VERSIONS_KEPT`].
    pub versions: Vec<SiteVersion>,
    /// How many versions were published before `versions[0]`: version
    /// `versions[i]` is number `earlier + i + 1`. Absent when zero.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub earlier: u64,
    /// The live version when a rollback made one older than `versions`
    /// live again. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_earlier: Option<SiteVersion>,
    pub functions: Vec<FunctionConfig>,
    pub transforms: Vec<TransformConfig>,
}

impl SiteState {
    /// The live version.
    pub fn live_version(&self) -> Option<&SiteVersion> {
        let live = self.live?;
        self.versions
            .iter()
            .find(|v| v.event == live)
            .or(self.live_earlier.as_ref().filter(|v| v.event == live))
    }
}

/// Every domain's site.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sites {
    pub domains: BTreeMap<DomainName, SiteState>,
}

/// One domain's history as the fold keeps it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DomainHistory {
    live: Option<EventId>,
    versions: VecDeque<SiteVersion>,
    earlier: u64,
    live_earlier: Option<SiteVersion>,
}

/// The fold's accumulator for the sites projection: per domain the latest
/// [`VERSIONS_KEPT`] versions, how many came before, and the live one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SiteHistory {
    domains: BTreeMap<DomainName, DomainHistory>,
}

impl SiteHistory {
    /// Applies an authorized `site-published` or a checked
    /// `site-rolled-back`; for a rollback, `target` is the version it
    /// names (read from the log when it is older than those kept).
    pub fn apply(&mut self, event: &Event, target: Option<SiteVersion>) {
        match event.payload() {
            Payload::SitePublished(_) => {
                let Some((domain, version)) = SiteVersion::of(event) else {
                    return;
                };
                let site = self.domains.entry(domain).or_default();
                site.live = Some(version.event);
                site.live_earlier = None;
                site.versions.push_back(version);
                if site.versions.len() > VERSIONS_KEPT {
                    site.versions.pop_front();
                    site.earlier += 1;
                }
            }
            Payload::SiteRolledBack(r) => {
                if let Some(site) = self.domains.get_mut(&r.domain) {
                    site.live = Some(r.to);
                    site.live_earlier = if site.versions.iter().any(|v| v.event == r.to) {
                        None
                    } else {
                        target.filter(|v| v.event == r.to)
                    };
                }
            }
            _ => {}
        }
    }

    /// Whether `id` is one of the versions of `domain` kept here.
    pub fn keeps(&self, domain: &DomainName, id: &EventId) -> bool {
        self.domains
            .get(domain)
            .is_some_and(|s| s.versions.iter().any(|v| v.event == *id))
    }

    /// The projection, with each domain's functions and transforms from
    /// the configuration.
    pub fn view(&self, config: &DesiredConfig) -> Sites {
        let mut sites = Sites {
            domains: self
                .domains
                .iter()
                .map(|(name, h)| {
                    (
                        name.clone(),
                        SiteState {
                            live: h.live,
                            versions: h.versions.iter().cloned().collect(),
                            earlier: h.earlier,
                            live_earlier: h.live_earlier.clone(),
                            functions: Vec::new(),
                            transforms: Vec::new(),
                        },
                    )
                })
                .collect(),
        };
        for (name, domain) in &config.domains {
            let Ok(name) = DomainName::new(name.as_str()) else {
                continue;
            };
            let site = sites.domains.entry(name).or_default();
            site.functions = domain.functions.clone();
            site.transforms = domain.transforms.clone();
        }
        sites
    }
}
