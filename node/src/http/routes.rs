//! Which site version answers which host: every configured domain and
//! alias, lowercased, mapped to the version this node has deployed for the
//! domain. Rebuilt when a version switches or the configuration changes;
//! requests read one immutable snapshot (a visitor sees one version whole).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use makiatto_events::{Blake3Hash, EventId, Manifest};

/// One deployed version of a domain.
#[derive(Debug)]
pub struct SiteVersion {
    pub domain: String,
    pub version: EventId,
    /// When the version was published: every file's Last-Modified.
    pub published: SystemTime,
    /// `published` as a header value, made once.
    pub last_modified: hyper::header::HeaderValue,
    pub manifest: Arc<Manifest>,
    /// The manifest's blob hash (names the version's tree for components).
    pub manifest_hash: Blake3Hash,
    /// Prepared encodings per source blob, with their sizes.
    pub variants: Prepared,
    /// [`super::variants::Variants::generation`] when `variants` was read:
    /// while it is unchanged, a rebuild of the routes keeps this snapshot.
    pub variants_generation: u64,
    /// Does the site have its own `404.html`?
    pub has_404: bool,
    /// The version's content types as header values, made once (a site
    /// has a handful).
    pub content_types: foldhash::HashMap<String, hyper::header::HeaderValue>,
}

/// The encodings prepared for a version's files, with their sizes, by
/// source blob. (Hashed with foldhash: read on every request, keyed by
/// hashes we computed, never by a visitor's input.)
pub type Prepared = foldhash::HashMap<Blake3Hash, super::variants::Present>;

/// What a host maps to.
#[derive(Debug, Clone)]
pub enum Route {
    /// The domain's deployed version.
    Site(Arc<SiteVersion>),
    /// Configured, but no version is deployed here yet.
    Pending(String),
}

/// Every host this node serves.
#[derive(Debug, Default)]
pub struct Routes {
    /// (foldhash: only read with a visitor's host, never filled by one.)
    hosts: foldhash::HashMap<String, Route>,
}

impl Routes {
    /// `domains`: domain → aliases; `versions`: domain → its deployed
    /// version, manifest and variants.
    pub fn build(
        domains: &std::collections::BTreeMap<String, Vec<String>>,
        mut versions: HashMap<String, Arc<SiteVersion>>,
    ) -> Routes {
        let mut hosts = foldhash::HashMap::default();
        for (domain, aliases) in domains {
            let route = match versions.remove(domain) {
                Some(v) => Route::Site(v),
                None => Route::Pending(domain.clone()),
            };
            for host in std::iter::once(domain).chain(aliases) {
                hosts.entry(host_key(host)).or_insert_with(|| route.clone());
            }
        }
        Routes { hosts }
    }

    /// The route of a host (lowercased, without port or final dot): its
    /// own, else a wildcard alias one label up (`*.example.com` covers
    /// `a.example.com`, not `a.b.example.com`, as in TLS).
    pub fn get(&self, host: &str) -> Option<&Route> {
        self.hosts
            .get(host)
            .or_else(|| self.hosts.get(&wildcard_of(host)?))
    }

    /// The deployed version serving `domain` (a configured domain's own
    /// name), if any.
    pub fn site(&self, domain: &str) -> Option<&Arc<SiteVersion>> {
        match self.hosts.get(&host_key(domain))? {
            Route::Site(s) => Some(s),
            Route::Pending(_) => None,
        }
    }

    /// The same hosts, each to the same route (the same snapshot of a
    /// version, not an equal one): swapping one for the other changes
    /// nothing a visitor sees.
    pub fn same_as(&self, other: &Routes) -> bool {
        self.hosts.len() == other.hosts.len()
            && self
                .hosts
                .iter()
                .all(|(host, route)| match (route, other.hosts.get(host)) {
                    (Route::Site(a), Some(Route::Site(b))) => Arc::ptr_eq(a, b),
                    (Route::Pending(a), Some(Route::Pending(b))) => a == b,
                    _ => false,
                })
    }

    /// Every deployed version (once each).
    pub fn sites(&self) -> impl Iterator<Item = &Arc<SiteVersion>> {
        let mut seen = std::collections::HashSet::new();
        self.hosts.values().filter_map(move |r| match r {
            Route::Site(s) if seen.insert(s.version) => Some(s),
            _ => None,
        })
    }

    /// Every host name (for certificates).
    pub fn hosts(&self) -> impl Iterator<Item = &String> {
        self.hosts.keys()
    }
}

impl SiteVersion {
    /// The version as the WebAssembly service takes it.
    pub fn deployed(&self) -> crate::wasm::Deployed<'_> {
        crate::wasm::Deployed {
            domain: &self.domain,
            manifest: &self.manifest,
            manifest_hash: self.manifest_hash,
        }
    }

    pub fn new(
        domain: String,
        version: EventId,
        published_millis: u64,
        manifest: Arc<Manifest>,
        manifest_hash: Blake3Hash,
        variants: Prepared,
        variants_generation: u64,
    ) -> SiteVersion {
        let has_404 = manifest.files.contains_key("404.html");
        let mut content_types = foldhash::HashMap::default();
        for entry in manifest.files.values() {
            if !content_types.contains_key(&entry.content_type)
                && let Ok(v) = hyper::header::HeaderValue::from_str(&entry.content_type)
            {
                content_types.insert(entry.content_type.clone(), v);
            }
        }
        let published = SystemTime::UNIX_EPOCH + Duration::from_millis(published_millis);
        let last_modified =
            hyper::header::HeaderValue::from_str(&httpdate::fmt_http_date(published))
                .unwrap_or_else(|_| {
                    hyper::header::HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT")
                });
        SiteVersion {
            domain,
            version,
            published,
            last_modified,
            manifest,
            manifest_hash,
            variants,
            variants_generation,
            has_404,
            content_types,
        }
    }
}

/// A configured name as the routes key it: lowercased, without a final
/// dot.
fn host_key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The wildcard name that would cover `host`: `*.` and all but its first
/// label; none for a name of one or two labels, or one that is a wildcard.
pub fn wildcard_of(host: &str) -> Option<String> {
    let (first, rest) = host.split_once('.')?;
    (!first.is_empty() && first != "*" && rest.contains('.')).then(|| format!("*.{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_covers_one_label() {
        assert_eq!(
            wildcard_of("a.example.com").as_deref(),
            Some("*.example.com")
        );
        assert_eq!(wildcard_of("example.com"), None);
        assert_eq!(wildcard_of("*.example.com"), None);
        assert_eq!(wildcard_of(".example.com"), None);
        let domains = [("example.com".to_owned(), vec!["*.example.com".to_owned()])]
            .into_iter()
            .collect();
        let routes = Routes::build(&domains, HashMap::new());
        assert!(routes.get("example.com").is_some());
        assert!(routes.get("a.example.com").is_some());
        assert!(routes.get("a.b.example.com").is_none());
        assert!(routes.get("example.org").is_none());
    }

    #[test]
    fn routes_made_again_from_the_same_snapshots_are_the_same() {
        let domains: std::collections::BTreeMap<String, Vec<String>> = [
            ("example.com".to_owned(), vec!["www.example.com".to_owned()]),
            ("other.com".to_owned(), vec![]),
        ]
        .into_iter()
        .collect();
        let site = |n: u8| {
            Arc::new(SiteVersion::new(
                "example.com".into(),
                EventId::of(&[n]),
                0,
                Arc::new(Manifest::default()),
                Manifest::default().hash(),
                Prepared::default(),
                0,
            ))
        };
        let v1 = site(1);
        let routes = |v: &Arc<SiteVersion>| {
            Routes::build(
                &domains,
                [("example.com".to_owned(), v.clone())]
                    .into_iter()
                    .collect(),
            )
        };
        let a = routes(&v1);
        assert!(Arc::ptr_eq(a.site("Example.com.").unwrap(), &v1));
        assert!(a.site("other.com").is_none(), "pending");
        assert!(a.same_as(&routes(&v1)));
        // An equal version made again, another version, another alias:
        // not the same.
        assert!(!a.same_as(&routes(&site(1))));
        assert!(!a.same_as(&routes(&site(2))));
        let mut more = domains.clone();
        more.insert("third.com".into(), vec![]);
        let b = Routes::build(
            &more,
            [("example.com".to_owned(), v1.clone())]
                .into_iter()
                .collect(),
        );
        assert!(!a.same_as(&b) && !b.same_as(&a));
    }
}
