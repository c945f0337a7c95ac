//! The configuration a sync sends: `makiatto.toml`'s wishes merged field
//! by field with the cluster's current document.
//!
//! Concurrent edits: `maki` keeps the configuration as of this operator's
//! last sync (the base, [`Kept`]). A field the file does not change
//! relative to the base keeps the cluster's current value, so a stale
//! `makiatto.toml` never reverts what another operator changed; the changes
//! are made on top of the cluster's current document, and automerge merges
//! them with anything concurrent. Env values are sealed to every node's
//! sealing key; an unchanged value keeps its sealed form.

use std::collections::BTreeSet;

use anyhow::Context;
use makiatto_events::{Blake3Hash, SealedValue, SealingKey};
use makiatto_projections::config::{ConfigDoc, DesiredConfig, DomainConfig};

use super::kept::{Kept, SealedDigests};
use crate::operator::Operator;
use crate::project::{Domain, Project};

/// What the configuration step decided.
pub struct ConfigChange {
    /// The cluster's document now.
    pub current: DesiredConfig,
    /// What it becomes.
    pub wanted: DesiredConfig,
    /// The automerge changes that make it so (none: nothing to change).
    pub changes: Vec<Vec<u8>>,
    /// The file's configuration, with sealed values: the next sync's base.
    pub file_config: DesiredConfig,
    pub digests: SealedDigests,
    /// Someone else changed what this file manages since its last sync.
    pub others_changed: bool,
}

/// Merges the file into the cluster's document (its changes, as the node
/// sent them in `state`), sealing env values to the nodes of its peers. With
/// `only_selected`, only the selected domains' configuration moves.
pub fn configure(
    project: &Project,
    selected: &[&Domain],
    only_selected: bool,
    state: &super::ClusterState,
    kept: &Kept,
    operator: &Operator,
    timing: &super::timing::Timing,
) -> anyhow::Result<ConfigChange> {
    let (changes, peers) = (&state.changes, &state.peers);
    let mut current_doc = decode_doc(changes)?;
    let current = current_doc.view()?;
    timing.mark("the cluster's configuration read");
    let base = match kept.base()? {
        Some(base) => base,
        // No sync from here yet: the cluster's current state of the
        // domains this file names is the base. Domains it does not name are
        // someone else's; a sync never removes what its operator never sent.
        None => {
            let mut base = current.clone();
            base.domains
                .retain(|name, _| project.domains.iter().any(|d| &d.name == name));
            base
        }
    };
    let mut digests = kept.sealed_digests();
    let recipients: Vec<SealingKey> = peers.nodes.values().map(|n| n.sealing_key).collect();
    let mut file_config = project.to_desired(&base, |domain, path, var, value| {
        seal(&base, &mut digests, &recipients, [domain, path, var], value)
    })?;
    if only_selected {
        keep_unselected(&mut file_config, &base, selected);
    }
    let others_changed = others_changed(&base, &file_config, &current);
    let wanted = merge(&base, &file_config, &current);
    timing.mark("the file merged in");
    let changes = current_doc.edit(&operator.key().public(), rand::random(), &wanted)?;
    Ok(ConfigChange {
        current,
        wanted,
        changes,
        file_config,
        digests,
        others_changed,
    })
}

/// One env value sealed to `recipients`, or its earlier sealed form when
/// the value is the one sealed last time, to exactly these nodes. A node
/// removed since must not keep the value's key, and one added since gets
/// its own entry (until then a node resealed it to it), so a change of
/// nodes seals the value anew.
fn seal(
    base: &DesiredConfig,
    digests: &mut SealedDigests,
    recipients: &[SealingKey],
    [domain, path, var]: [&str; 3],
    value: &str,
) -> anyhow::Result<String> {
    let key = format!("{domain}/{path}/{var}");
    let digest = Blake3Hash::of(value.as_bytes()).to_hex();
    let previous = base
        .domains
        .get(domain)
        .and_then(|d| {
            d.functions
                .iter()
                .find(|f| f.path == path)
                .map(|f| &f.env)
                .or_else(|| d.transforms.iter().find(|t| t.path == path).map(|t| &t.env))
        })
        .and_then(|env| env.get(var));
    let same_nodes = |sealed: &String| {
        let Ok(value) = hex::decode(sealed)
            .map_err(|_| ())
            .and_then(|b| postcard::from_bytes::<SealedValue>(&b).map_err(|_| ()))
        else {
            return false;
        };
        let had: BTreeSet<&SealingKey> = value.recipients().collect();
        let now: BTreeSet<&SealingKey> = recipients.iter().collect();
        had == now
    };
    if let Some(sealed) = previous
        && digests.get(&key) == Some(&digest)
        && same_nodes(sealed)
    {
        return Ok(sealed.clone());
    }
    let sealed = SealedValue::seal(value.as_bytes(), recipients, &mut rand::rng())
        .with_context(|| format!("cannot seal {var} of {path}: the cluster has no nodes"))?;
    digests.insert(key, digest);
    Ok(hex::encode(postcard::to_allocvec(&sealed)?))
}

/// With `--domain`, the other domains keep their base configuration.
fn keep_unselected(file: &mut DesiredConfig, base: &DesiredConfig, selected: &[&Domain]) {
    let is_selected = |name: &String| selected.iter().any(|s| &s.name == name);
    for (name, d) in &base.domains {
        if !is_selected(name) {
            file.domains.insert(name.clone(), d.clone());
        }
    }
    file.domains
        .retain(|name, _| is_selected(name) || base.domains.contains_key(name));
}

/// Whether anyone else changed what this file manages since its last sync.
fn others_changed(base: &DesiredConfig, file: &DesiredConfig, current: &DesiredConfig) -> bool {
    current.o11y != base.o11y
        || base
            .domains
            .keys()
            .chain(file.domains.keys())
            .any(|name| current.domains.get(name) != base.domains.get(name))
}

/// Three-way merge at the level of fields: where `file` equals `base`, the
/// cluster's `current` value stays; where it differs, the file wins.
pub fn merge(base: &DesiredConfig, file: &DesiredConfig, current: &DesiredConfig) -> DesiredConfig {
    let mut out = current.clone();
    if file.o11y != base.o11y {
        out.o11y = file.o11y.clone();
    }
    let names: BTreeSet<&String> = base.domains.keys().chain(file.domains.keys()).collect();
    let empty = DomainConfig::default();
    for name in names {
        let b = base.domains.get(name);
        let f = file.domains.get(name);
        match (b, f) {
            (Some(_), None) => {
                out.domains.remove(name);
            }
            (None, Some(f)) => {
                out.domains.insert(name.clone(), f.clone());
            }
            (Some(b), Some(f)) if b == f => {}
            (b, Some(f)) => {
                let b = b.unwrap_or(&empty);
                let cur = out.domains.entry(name.clone()).or_default();
                if f.aliases != b.aliases {
                    cur.aliases = f.aliases.clone();
                }
                if f.functions != b.functions {
                    cur.functions = f.functions.clone();
                }
                if f.transforms != b.transforms {
                    cur.transforms = f.transforms.clone();
                }
                let keys: BTreeSet<&String> = b.records.keys().chain(f.records.keys()).collect();
                for key in keys {
                    match (b.records.get(key), f.records.get(key)) {
                        (x, y) if x == y => {}
                        (_, Some(r)) => {
                            cur.records.insert(key.clone(), r.clone());
                        }
                        (_, None) => {
                            cur.records.remove(key);
                        }
                    }
                }
            }
            (None, None) => {}
        }
    }
    out
}

fn decode_doc(hex_changes: &[String]) -> anyhow::Result<ConfigDoc> {
    let bytes: Vec<Vec<u8>> = hex_changes
        .iter()
        .map(hex::decode)
        .collect::<Result<_, _>>()
        .context("the node sent a configuration change that is not hex")?;
    let mut doc = ConfigDoc::default();
    // As the nodes folded them: a change they refused is skipped.
    doc.apply_as_folded(ConfigDoc::decode(&bytes)?);
    Ok(doc)
}

/// The `config-changed` event's one-line summary.
pub fn summary(current: &DesiredConfig, wanted: &DesiredConfig) -> String {
    let mut parts = Vec::new();
    for (name, d) in &wanted.domains {
        match current.domains.get(name) {
            None => parts.push(format!("{name} added")),
            Some(c) if c != d => parts.push(format!("{name} changed")),
            Some(_) => {}
        }
    }
    for name in current.domains.keys() {
        if !wanted.domains.contains_key(name) {
            parts.push(format!("{name} removed"));
        }
    }
    if current.o11y != wanted.o11y {
        parts.push("o11y changed".into());
    }
    // One line: the first few, then how many more (a project of thousands
    // of domains must not fill an event with its summary).
    const LISTED: usize = 8;
    let more = parts.len().saturating_sub(LISTED);
    parts.truncate(LISTED);
    if more > 0 {
        parts.push(format!("and {more} more"));
    }
    format!(
        "sync: {}",
        if parts.is_empty() {
            "configuration".into()
        } else {
            parts.join(", ")
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use makiatto_projections::config::RecordConfig;

    #[test]
    fn an_env_value_is_sealed_anew_when_the_nodes_change() {
        let key = |seed: u8| makiatto_events::SealingSecret::from_bytes([seed; 32]).public();
        let (a, b, c) = (key(1), key(2), key(3));
        let mut digests = SealedDigests::new();
        let at = ["a.com", "api/f.wasm", "TOKEN"];
        let first = seal(&DesiredConfig::default(), &mut digests, &[a, b], at, "v").unwrap();
        let mut base = DesiredConfig::default();
        base.domains
            .entry("a.com".into())
            .or_default()
            .functions
            .push(makiatto_projections::config::FunctionConfig {
                path: "api/f.wasm".into(),
                env: [("TOKEN".to_owned(), first.clone())].into(),
                ..Default::default()
            });
        // The same value to the same nodes keeps its sealed form.
        assert_eq!(seal(&base, &mut digests, &[a, b], at, "v").unwrap(), first);
        // A node removed, or one added: sealed anew, to the nodes now.
        for now in [&[a][..], &[a, b, c][..]] {
            let again = seal(&base, &mut digests, now, at, "v").unwrap();
            assert_ne!(again, first);
            let value: SealedValue = postcard::from_bytes(&hex::decode(&again).unwrap()).unwrap();
            assert_eq!(value.recipients().count(), now.len());
        }
    }

    fn with(domain: &str, aliases: &[&str], records: &[(&str, &str)]) -> DesiredConfig {
        let mut c = DesiredConfig::default();
        let d = c.domains.entry(domain.to_owned()).or_default();
        d.aliases = aliases.iter().map(|a| (*a).to_owned()).collect();
        for (key, value) in records {
            d.records.insert(
                (*key).to_owned(),
                RecordConfig {
                    value: (*value).to_owned(),
                    ..RecordConfig::default()
                },
            );
        }
        c
    }

    #[test]
    fn a_summary_of_thousands_of_domains_stays_one_short_line() {
        let mut wanted = DesiredConfig::default();
        for i in 0..10_000 {
            wanted
                .domains
                .insert(format!("d{i:05}.test"), Default::default());
        }
        let s = summary(&DesiredConfig::default(), &wanted);
        assert!(s.len() < 300, "{s}");
        assert!(
            s.starts_with("sync: d00000.test added, d00001.test added"),
            "{s}"
        );
        assert!(s.ends_with("and 9992 more"), "{s}");
    }

    #[test]
    fn a_field_the_file_did_not_change_keeps_the_clusters_value() {
        let base = with("a.com", &["www.a.com"], &[("TXT @ 0", "v1")]);
        // Someone else changed the aliases; this file changed the record.
        let current = with("a.com", &["www.a.com", "w2.a.com"], &[("TXT @ 0", "v1")]);
        let file = with("a.com", &["www.a.com"], &[("TXT @ 0", "v2")]);
        let out = merge(&base, &file, &current);
        let d = &out.domains["a.com"];
        assert_eq!(d.aliases, ["www.a.com", "w2.a.com"]);
        assert_eq!(d.records["TXT @ 0"].value, "v2");
        assert!(others_changed(&base, &file, &current));
        assert!(!others_changed(&base, &file, &base));
    }

    #[test]
    fn a_domain_removed_from_the_file_is_removed_and_one_added_is_added() {
        let base = with("a.com", &[], &[]);
        let current = base.clone();
        let file = with("b.com", &[], &[]);
        let out = merge(&base, &file, &current);
        assert!(!out.domains.contains_key("a.com"));
        assert!(out.domains.contains_key("b.com"));
        assert_eq!(summary(&current, &out), "sync: b.com added, a.com removed");
        assert_eq!(summary(&current, &current), "sync: configuration");
    }
}
