//! The smaller commands: `maki log`, `maki config`, `maki operator`.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, bail};
use makiatto_events::payload::{ConfigChanged, OperatorAdded, OperatorRemoved};
use makiatto_events::{AuthorKey, Payload};
use makiatto_projections::config::{ConfigDoc, SETTINGS};
use serde_json::{Value, json};

use crate::cluster::Ctx;
use crate::machine::REMOTE_BINARY;
use crate::ssh::shell_quote;

/// `maki log` arguments, passed to `makiatto log` on a node.
pub struct LogArgs {
    pub node: Option<String>,
    pub json: bool,
    pub at: Option<String>,
    pub author: Option<String>,
    pub kind: Option<String>,
    pub limit: Option<usize>,
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
        ("--at", &args.at),
        ("--author", &args.author),
        ("--kind", &args.kind),
    ] {
        if let Some(v) = value {
            flags.push_str(&format!(" {flag} {}", shell_quote(v)));
        }
    }
    let mut seen: HashSet<String> = HashSet::new();
    let mut first = true;
    loop {
        let mut cmd = format!("{REMOTE_BINARY} log{flags}");
        if first && let Some(n) = args.limit {
            cmd.push_str(&format!(" --limit {n}"));
        }
        let out = remote.run(&cmd).await?;
        if out.status != 0 {
            bail!("{}", out.stderr.trim());
        }
        for line in out.stdout.lines() {
            let v: Value =
                serde_json::from_str(line).context("unreadable log line from the node")?;
            let id = v["id"].as_str().unwrap_or_default().to_owned();
            if !first && seen.contains(&id) {
                continue;
            }
            seen.insert(id);
            if args.json {
                println!("{line}");
            } else {
                println!("{}", render(&v));
            }
        }
        if !args.follow {
            return Ok(());
        }
        first = false;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn render(v: &Value) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or("").to_owned();
    let who = match v["role"].as_str() {
        Some(role) => format!("{} ({role})", s("author")),
        None => format!("{} (unknown key)", s("author")),
    };
    let mut line = format!(
        "{}  {}  {:<22} {:<16} {}",
        s("time"),
        &s("id")[..12.min(s("id").len())],
        who,
        s("kind"),
        s("summary")
    );
    if v["status"] != "applied" {
        line.push_str(&format!(
            "  [{}: {}]",
            s("status").to_uppercase(),
            s("reason")
        ));
    }
    if v["fork"] == true {
        line.push_str("  [FORK]");
    }
    line
}

/// `maki config show`.
pub async fn config_show(ctx: &Ctx, json_out: bool) -> anyhow::Result<()> {
    let (_, remote) = ctx.any_node().await?;
    let config = remote.call(json!({"op": "show", "name": "config"})).await?;
    let settings = &config["state"]["settings"];
    if json_out {
        println!("{}", serde_json::to_string(&config)?);
        return Ok(());
    }
    for spec in SETTINGS {
        let field = spec.key.replace('.', "_");
        let value = match &settings[&field] {
            Value::Null => format!(
                "{} (default)",
                if spec.default.is_empty() {
                    "none"
                } else {
                    spec.default
                }
            ),
            Value::String(s) if s.contains('\n') => format!(
                "{} (PEM, {} lines)",
                s.lines().next().unwrap_or(""),
                s.lines().count()
            ),
            other => other.to_string().trim_matches('"').to_owned(),
        };
        println!("{:<22} {:<50} # {}", spec.key, value, spec.doc);
    }
    Ok(())
}

/// `maki config set KEY VALUE`: a configuration change on top of the
/// cluster's current document, touching only that setting.
pub async fn config_set(ctx: &Ctx, key: &str, value: &str) -> anyhow::Result<()> {
    let cluster_id = ctx.cluster_id()?;
    let operator = ctx.operator()?;
    let (_, remote) = ctx.any_node().await?;
    let changes: Vec<String> =
        serde_json::from_value(remote.call(json!({"op": "config-changes"})).await?)?;
    let mut doc = ConfigDoc::default();
    let decoded: Vec<Vec<u8>> = changes.iter().map(hex::decode).collect::<Result<_, _>>()?;
    doc.apply(ConfigDoc::decode(&decoded)?)?;
    let mut wanted = doc.view()?;
    let value = if key == "acme.ca_root" && std::path::Path::new(value).is_file() {
        std::fs::read_to_string(value).with_context(|| format!("cannot read {value}"))?
    } else {
        value.to_owned()
    };
    wanted.settings.set(key, &value)?;
    let changes = doc.edit(&operator.key().public(), &wanted)?;
    if changes.is_empty() {
        println!("{key} is already {value}");
        return Ok(());
    }
    let shown = if value.contains('\n') {
        "(PEM)".to_owned()
    } else {
        value.clone()
    };
    let payload = Payload::ConfigChanged(ConfigChanged {
        changes,
        summary: format!("set {key} = {shown}"),
    });
    ctx.publish(&remote, &cluster_id, vec![payload], None, None)
        .await?;
    println!("{key} = {shown}");
    Ok(())
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
            let roles = remote.call(json!({"op": "show", "name": "roles"})).await?;
            let key = roles["state"]["operators"]
                .as_object()
                .into_iter()
                .flatten()
                .find(|(_, n)| n.as_str() == Some(name))
                .map(|(k, _)| k.clone())
                .with_context(|| format!("no operator named {name:?}"))?;
            Payload::OperatorRemoved(OperatorRemoved { key: key.parse()? })
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
    let roles = remote.call(json!({"op": "show", "name": "roles"})).await?;
    let me = ctx.operator()?.key().public().to_hex();
    for (key, name) in roles["state"]["operators"]
        .as_object()
        .into_iter()
        .flatten()
    {
        if json_out {
            println!("{}", json!({"name": name, "key": key, "you": *key == me}));
        } else {
            println!(
                "{:<16} {key}{}",
                name.as_str().unwrap_or(""),
                if *key == me { "  (you)" } else { "" }
            );
        }
    }
    Ok(())
}
