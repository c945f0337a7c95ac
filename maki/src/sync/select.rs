//! Which domains of `makiatto.toml` a sync publishes: all of them, or
//! those named with `--domain`.

use std::path::Path;

use anyhow::bail;

use crate::project::{Domain, Project};

/// The domains named (all when `names` is empty), in the file's order
/// for all, in the order named otherwise.
pub fn select<'p>(
    project: &'p Project,
    names: &[String],
    file: &Path,
) -> anyhow::Result<Vec<&'p Domain>> {
    if names.is_empty() {
        return Ok(project.domains.iter().collect());
    }
    let mut out = Vec::new();
    for name in names {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        match project.domains.iter().find(|d| d.name == name) {
            Some(d) => out.push(d),
            None => bail!(
                "{name} is not configured in {} (its domains: {})",
                file.display(),
                project
                    .domains
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    Ok(out)
}
