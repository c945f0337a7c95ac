//! The smaller commands: `maki log`, `maki config`, `maki operator`.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, bail};
use makiatto_events::payload::{ConfigChanged, OperatorAdded, OperatorRemoved};
use makiatto_events::{AuthorKey, Payload};
use makiatto_projections::config::{ConfigDoc, DesiredConfig, SETTINGS};
use makiatto_projections::roles::Roles;
use makiatto_protocol::log::{LogFilter, LogLine};
use makiatto_protocol::request::{self as op, ShowAs};

use crate::cluster::Ctx;
use crate::machine::REMOTE_BINARY;
use crate::ssh::shell_quote;

/// `maki log` arguments, passed to `makiatto log` on a node.
pub struct LogArgs {
    pub node: Option<String>,
    pub json: bool,
    pub filter: LogFilter,
    pub follow: bool,
}

/// `maki log`: the log as one node holds it, authors shown by name.
pub async fn log(ctx: &Ctx, args: LogArgs) -> anyhow::Result<()> {
    let remote = match &args.node {
        Some(name) => {
            ctx.connect(&ctx.profile.select(std::slice::from_ref(name))?.remove(0))
                .await?
        }
        None => ctx.any_node().await?.1,
    };
    let mut flags = String::from(" --json");
    for (flag, value) in [
        ("--at", &args.filter.at),
        ("--author", &args.filter.author),
        ("--kind", &args.filter.kind),
    ] {
        if let Some(v) = value {
            flags.push_str(&format!(" {flag} {}", shell_quote(v)));
        }
    }
    let mut seen: HashSet<String> = HashSet::new();
    let mut first = true;
    loop {
        let mut cmd = format!("{REMOTE_BINARY} log{flags}");
        if first && let Some(n) = args.filter.limit {
            cmd.push_str(&format!(" --limit {n}"));
        }
        let out = remote.run(&cmd).await?;
        if out.status != 0 {
            bail!("{}", out.stderr.trim());
        }
        for line in out.stdout.lines() {
            let entry: LogLine =
                serde_json::from_str(line).context("unreadable log line from the node")?;
            if !first && seen.contains(&entry.id) {
                continue;
            }
            if args.json {
                println!("{line}");
            } else {
                println!("{}", entry.render());
            }
            seen.insert(entry.id);
        }
        if !args.follow {
            return Ok(());
        }
        first = false;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `maki config show`.
pub async fn config_show(ctx: &Ctx, json_out: bool) -> anyhow::Result<()> {
    let (_, remote) = ctx.any_node().await?;
    let config = remote.ask(ShowAs::<DesiredConfig>::now()).await?;
    if json_out {
        println!("{}", serde_json::to_string(&config)?);
        return Ok(());
    }
    for spec in SETTINGS {
        let value = match config.state.settings.get(spec.key) {
            None => format!(
                "{} (default)",
                if spec.default.is_empty() {
                    "none"
                } else {
                    spec.default
                }
            ),
            Some(s) if s.contains('\n') => format!(
                "{} (PEM, {} lines)",
                s.lines().next().unwrap_or(""),
                s.lines().count()
            ),
            Some(s) => s,
        };
        println!("{:<22} {:<50} # {}", spec.key, value, spec.doc);
    }
    Ok(())
}

/// `maki config set KEY VALUE`: a configuration change on top of the
/// cluster's current document, touching only that setting.
pub async fn config_set(ctx: &Ctx, key: &str, value: &str) -> anyhow::Result<()> {
    let (_, remote) = ctx.any_node().await?;
    let value = if key == "acme.ca_root" && std::path::Path::new(value).is_file() {
        std::fs::read_to_string(value).with_context(|| format!("cannot read {value}"))?
    } else {
        value.to_owned()
    };
    let shown = shown(&value);
    if set_setting(ctx, &remote, key, &value).await? {
        println!("{key} = {shown}");
    } else {
        println!("{key} is already {shown}");
    }
    Ok(())
}

/// A value as `maki log` and the output show it (a PEM by its kind).
fn shown(value: &str) -> String {
    if value.contains('\n') {
        "(PEM)".to_owned()
    } else {
        value.to_owned()
    }
}

/// Sets one cluster-wide setting through `remote`: a change on top of the
/// cluster's current document, touching only that setting. Returns
/// whether anything changed (a setting already at `value` signs nothing).
pub async fn set_setting(
    ctx: &Ctx,
    remote: &crate::ssh::Remote,
    key: &str,
    value: &str,
) -> anyhow::Result<bool> {
    let cluster_id = ctx.cluster_id()?;
    let operator = ctx.operator()?;
    let changes = remote.ask(op::ConfigChanges {}).await?;
    let mut doc = ConfigDoc::default();
    let decoded: Vec<Vec<u8>> = changes.iter().map(hex::decode).collect::<Result<_, _>>()?;
    // As the nodes folded them: a change they refused is skipped.
    doc.apply_as_folded(ConfigDoc::decode(&decoded)?);
    let mut wanted = doc.view()?;
    wanted.settings.set(key, value)?;
    let changes = doc.edit(&operator.key().public(), rand::random(), &wanted)?;
    if changes.is_empty() {
        return Ok(false);
    }
    let payload = Payload::ConfigChanged(ConfigChanged {
        changes,
        summary: format!("set {key} = {}", shown(value)),
    });
    ctx.publish(remote, &cluster_id, vec![payload], None, None)
        .await?;
    Ok(true)
}

/// `maki operator key`.
pub fn operator_key(ctx: &Ctx) -> anyhow::Result<()> {
    println!("{}", ctx.operator()?.key().public());
    Ok(())
}

/// `maki operator add NAME KEY` / `remove NAME`.
pub async fn operator_change(
    ctx: &Ctx,
    add: Option<(&str, &str)>,
    remove: Option<&str>,
) -> anyhow::Result<()> {
    let cluster_id = ctx.cluster_id()?;
    let (_, remote) = ctx.any_node().await?;
    let payload = match (add, remove) {
        (Some((name, key)), _) => {
            let key: AuthorKey = key
                .parse()
                .context("the operator key must be 64 hex characters (from `maki operator key`)")?;
            Payload::OperatorAdded(OperatorAdded {
                name: name.to_owned(),
                key,
            })
        }
        (None, Some(name)) => {
            let roles = remote.ask(ShowAs::<Roles>::now()).await?.state;
            let key = roles
                .operators
                .iter()
                .find(|(_, n)| n.as_str() == name)
                .map(|(k, _)| *k)
                .with_context(|| format!("no operator named {name:?}"))?;
            Payload::OperatorRemoved(OperatorRemoved { key })
        }
        (None, None) => bail!("nothing to change"),
    };
    let events = ctx
        .publish(&remote, &cluster_id, vec![payload], None, None)
        .await?;
    println!("{}", events[0].payload().summary());
    Ok(())
}

/// `maki operator list`.
pub async fn operator_list(ctx: &Ctx, json_out: bool) -> anyhow::Result<()> {
    let (_, remote) = ctx.any_node().await?;
    let roles = remote.ask(ShowAs::<Roles>::now()).await?.state;
    let me = ctx.operator()?.key().public();
    for (key, name) in &roles.operators {
        if json_out {
            println!(
                "{}",
                serde_json::json!({"name": name, "key": key, "you": *key == me})
            );
        } else {
            println!(
                "{:<16} {key}{}",
                name,
                if *key == me { "  (you)" } else { "" }
            );
        }
    }
    Ok(())
}
