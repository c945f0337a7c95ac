//! `maki sites`, `maki rollback` and `maki diff`: a domain's published
//! versions, as the sites projection holds them.
//!
//! Versions are numbered from 1 in the order they were published (the
//! canonical order of their events). A version is named by that number, a
//! prefix of its event id, or a time (the latest version published at or
//! before it).

use anyhow::{Context, bail};
use makiatto_events::payload::{ChangeSummary, SiteRolledBack};
use makiatto_events::{Blake3Hash, DomainName, EventId, Hlc, Manifest, Payload};
use makiatto_projections::roles::Roles;
use makiatto_projections::sites::Sites;
use makiatto_protocol::client::Batch;
use makiatto_protocol::request::ShowAs;

use crate::cluster::Ctx;
use crate::ssh::Remote;

/// One version as the projection shows it, numbered and with its
/// author's name.
#[derive(Debug, Clone)]
struct Version {
    number: usize,
    event: EventId,
    manifest: Blake3Hash,
    at: Hlc,
    author: String,
    message: Option<String>,
    summary: ChangeSummary,
}

struct Site {
    live: Option<EventId>,
    versions: Vec<Version>,
}

/// The sites and roles projections, in one round trip.
async fn load(remote: &Remote) -> anyhow::Result<(Sites, Roles)> {
    let mut batch = Batch::new();
    let sites = batch.push(ShowAs::<Sites>::now());
    let roles = batch.push(ShowAs::<Roles>::now());
    let mut answers = remote.send(batch).await?;
    let err = |e| anyhow::anyhow!("{}: {e}", remote.target());
    Ok((
        answers.take(sites).map_err(err)?.state,
        answers.take(roles).map_err(err)?.state,
    ))
}

fn site(sites: &Sites, roles: &Roles, domain: &str) -> anyhow::Result<Site> {
    let Some(s) = DomainName::new(domain)
        .ok()
        .and_then(|d| sites.domains.get(&d))
    else {
        let known: Vec<&str> = sites.domains.keys().map(DomainName::as_str).collect();
        bail!(
            "{domain} has no published version (published domains: {})",
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        );
    };
    let versions = s
        .versions
        .iter()
        .enumerate()
        .map(|(i, v)| Version {
            // The projection keeps the latest versions and counts the
            // earlier ones, so numbers stay those of the whole history.
            number: s.earlier as usize + i + 1,
            event: v.event,
            manifest: v.manifest.hash,
            at: v.at,
            author: roles
                .operators
                .get(&v.author)
                .cloned()
                .unwrap_or_else(|| v.author.short()),
            message: v.message.clone(),
            summary: v.summary,
        })
        .collect();
    Ok(Site {
        live: s.live,
        versions,
    })
}

fn time(hlc: Hlc) -> String {
    jiff::Timestamp::from_millisecond(hlc.millis as i64)
        .map(|t| format!("{t:.0}"))
        .unwrap_or_else(|_| hlc.millis.to_string())
}

/// Finds a version by number, event id prefix or time.
fn find<'a>(site: &'a Site, which: &str) -> anyhow::Result<&'a Version> {
    if let Ok(n) = which.parse::<usize>()
        && which.len() < 6
    {
        return site
            .versions
            .iter()
            .find(|v| v.number == n)
            .with_context(|| {
                format!(
                    "there is no version {n} (versions {} to {} are kept)",
                    site.versions.first().map_or(1, |v| v.number),
                    site.versions.last().map_or(0, |v| v.number)
                )
            });
    }
    if let Ok(t) = which.parse::<jiff::Timestamp>() {
        let millis = t.as_millisecond().max(0) as u64;
        return site
            .versions
            .iter()
            .rfind(|v| v.at.millis <= millis)
            .with_context(|| format!("no version was published at or before {which}"));
    }
    let prefix = which.to_ascii_lowercase();
    let mut found = site
        .versions
        .iter()
        .filter(|v| v.event.to_hex().starts_with(&prefix));
    match (found.next(), found.next()) {
        (Some(v), None) if prefix.len() >= 4 => Ok(v),
        (Some(_), Some(_)) => bail!("{which:?} names several versions: give more of the id"),
        _ => bail!(
            "{which:?} is not a version number, an event id (prefix of 4+ characters) or an RFC 3339 time"
        ),
    }
}

/// `maki sites [--json]`.
pub async fn list(ctx: &Ctx, json_out: bool) -> anyhow::Result<()> {
    let (_, remote) = ctx.any_node().await?;
    let (sites, roles) = load(&remote).await?;
    let domains: Vec<String> = sites.domains.keys().map(|d| d.to_string()).collect();
    if json_out {
        let mut out = Vec::new();
        for d in &domains {
            let s = site(&sites, &roles, d)?;
            out.push(serde_json::json!({
                "domain": d,
                "live": s.live,
                "versions": s.versions.iter().map(|v| serde_json::json!({
                    "version": v.number,
                    "event": v.event,
                    "manifest": v.manifest,
                    "published": time(v.at),
                    "author": v.author,
                    "message": v.message,
                    "summary": v.summary,
                    "live": Some(&v.event) == s.live.as_ref(),
                })).collect::<Vec<_>>(),
            }));
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if domains.is_empty() {
        println!("no site is published yet: run `maki sync`");
    }
    for d in &domains {
        let s = site(&sites, &roles, d)?;
        println!("{d}");
        for v in s.versions.iter().rev() {
            let live = if Some(&v.event) == s.live.as_ref() {
                "live"
            } else {
                ""
            };
            println!(
                "  {:>3}  {:<4}  {}  {}  {:<10}  {} files (+{} ~{} -{}){}",
                v.number,
                live,
                v.event.short(),
                time(v.at),
                v.author,
                v.summary.files,
                v.summary.added,
                v.summary.changed,
                v.summary.removed,
                v.message
                    .as_ref()
                    .map(|m| format!("  — {m}"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// `maki rollback DOMAIN [--to VERSION]`: makes an earlier version live
/// again, as a new signed event naming it among its parents.
pub async fn rollback(
    ctx: &Ctx,
    domain: &str,
    to: Option<&str>,
    message: Option<String>,
) -> anyhow::Result<()> {
    let domain =
        DomainName::new(domain).with_context(|| format!("{domain:?} is not a domain name"))?;
    let cluster_id = ctx.cluster_id()?;
    let (_, remote) = ctx.any_node().await?;
    let (sites, roles) = load(&remote).await?;
    let s = site(&sites, &roles, domain.as_str())?;
    let live = s
        .versions
        .iter()
        .find(|v| Some(&v.event) == s.live.as_ref())
        .context("the domain has no live version")?;
    let target = match to {
        Some(which) => find(&s, which)?,
        None => {
            // The version before the live one (by publication order).
            s.versions
                .iter()
                .rev()
                .find(|v| v.number < live.number)
                .context("the live version is the first: there is nothing to roll back to")?
        }
    };
    if target.event == live.event {
        bail!("version {} is already live", target.number);
    }
    let to_id = target.event;
    let payload = Payload::SiteRolledBack(SiteRolledBack {
        domain: domain.clone(),
        to: to_id,
        message,
    });
    ctx.publish(
        &remote,
        &cluster_id,
        vec![payload],
        Some((to_id, target.at)),
        None,
    )
    .await?;
    println!(
        "{domain}: version {} ({}) is live again; every node switches once it holds its files",
        target.number,
        target.event.short()
    );
    Ok(())
}

async fn manifest(remote: &Remote, hash: &Blake3Hash) -> anyhow::Result<Manifest> {
    let out = remote
        .run_ok(&format!("makiatto blobs get --hex {hash}"))
        .await?;
    Ok(Manifest::decode(&hex::decode(out.trim())?)?)
}

/// `maki diff DOMAIN [FROM] [TO]`: paths added, removed and changed
/// between two versions (default: the one before the live one, and live).
pub async fn diff(
    ctx: &Ctx,
    domain: &str,
    from: Option<&str>,
    to: Option<&str>,
) -> anyhow::Result<()> {
    let (_, remote) = ctx.any_node().await?;
    let (sites, roles) = load(&remote).await?;
    let s = site(&sites, &roles, domain)?;
    let live = s
        .versions
        .iter()
        .find(|v| Some(&v.event) == s.live.as_ref())
        .context("the domain has no live version")?;
    let to = match to {
        Some(w) => find(&s, w)?,
        None => live,
    };
    let from = match from {
        Some(w) => Some(find(&s, w)?),
        None => s.versions.iter().rev().find(|v| v.number < to.number),
    };
    let after = manifest(&remote, &to.manifest).await?;
    let before = match from {
        Some(v) => manifest(&remote, &v.manifest).await?,
        None => Manifest::default(),
    };
    println!(
        "{domain}: version {} → {}",
        from.map_or("(none)".into(), |v| v.number.to_string()),
        to.number
    );
    for (path, entry) in &after.files {
        match before.files.get(path) {
            None => println!("  + {path}"),
            Some(old) if old != entry => println!("  ~ {path}"),
            Some(_) => {}
        }
    }
    for path in before.files.keys() {
        if !after.files.contains_key(path) {
            println!("  - {path}");
        }
    }
    let s = after.summary_since(&before);
    println!(
        "{} added, {} changed, {} removed",
        s.added, s.changed, s.removed
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site_of(times: &[u64]) -> Site {
        Site {
            live: Some(EventId([0xab; 32])),
            versions: times
                .iter()
                .enumerate()
                .map(|(i, t)| Version {
                    number: i + 1,
                    event: EventId([i as u8 + 10; 32]),
                    manifest: Blake3Hash([0; 32]),
                    at: Hlc {
                        millis: *t,
                        counter: 0,
                    },
                    author: "alice".into(),
                    message: None,
                    summary: ChangeSummary::default(),
                })
                .collect(),
        }
    }

    #[test]
    fn versions_are_found_by_number_id_prefix_or_time() {
        let s = site_of(&[1_000, 2_000, 3_000]);
        assert_eq!(find(&s, "2").unwrap().number, 2);
        assert!(find(&s, "9").is_err());
        assert_eq!(find(&s, "0c0c0c").unwrap().number, 3);
        assert_eq!(find(&s, "1970-01-01T00:00:02.500Z").unwrap().number, 2);
        assert!(find(&s, "1970-01-01T00:00:00Z").is_err());
        assert!(find(&s, "zz").is_err());
    }
}
