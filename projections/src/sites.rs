//! Per domain: every published site version and the one that is live.
//! Manifests are blobs; the projection holds their hashes, never their bytes.

use std::collections::BTreeMap;

use makiatto_events::payload::{BlobRef, ChangeSummary};
use makiatto_events::{AuthorKey, DomainName, Event, EventId, Hlc, Payload};
use serde::{Deserialize, Serialize};

use crate::config::{DesiredConfig, FunctionConfig, TransformConfig};

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

/// One domain's site.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SiteState {
    /// The live version's event id.
    pub live: Option<EventId>,
    /// Every version, oldest first (canonical order).
    pub versions: Vec<SiteVersion>,
    pub functions: Vec<FunctionConfig>,
    pub transforms: Vec<TransformConfig>,
}

impl SiteState {
    /// The live version.
    pub fn live_version(&self) -> Option<&SiteVersion> {
        let live = self.live?;
        self.versions.iter().find(|v| v.event == live)
    }
}

/// Every domain's site.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sites {
    pub domains: BTreeMap<DomainName, SiteState>,
}

impl Sites {
    /// Checks an authorized event before it is applied: a rollback must name
    /// a published version of the same domain, among its parents (so the
    /// verdict depends on the causal past alone).
    pub fn check(&self, event: &Event) -> Result<(), String> {
        if let Payload::SiteRolledBack(r) = event.payload() {
            if !event.parents().contains(&r.to) {
                return Err("a rollback must name its target version among its parents".into());
            }
            let known = self
                .domains
                .get(&r.domain)
                .is_some_and(|s| s.versions.iter().any(|v| v.event == r.to));
            if !known {
                return Err(format!(
                    "{} is not a published version of {}",
                    r.to.short(),
                    r.domain
                ));
            }
        }
        Ok(())
    }

    /// Applies an authorized, checked event.
    pub fn apply(&mut self, event: &Event) {
        match event.payload() {
            Payload::SitePublished(p) => {
                let site = self.domains.entry(p.domain.clone()).or_default();
                site.versions.push(SiteVersion {
                    event: event.id(),
                    manifest: p.manifest,
                    summary: p.summary,
                    message: p.message.clone(),
                    author: event.author(),
                    at: event.hlc(),
                });
                site.live = Some(event.id());
            }
            Payload::SiteRolledBack(r) => {
                if let Some(site) = self.domains.get_mut(&r.domain) {
                    site.live = Some(r.to);
                }
            }
            _ => {}
        }
    }

    /// The projection with each domain's functions and transforms from the
    /// configuration.
    pub fn with_config(&self, config: &DesiredConfig) -> Sites {
        let mut sites = self.clone();
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
