//! `maki certs [--json]` and `maki certs renew NAME`: the certificates the
//! cluster holds (from one node's ACME report: names, issuer, expiry,
//! state) and a forced renewal (a signed `certificate-renewal-requested`
//! event; the ordering node sees it and orders again).

use anyhow::{Context, bail};
use makiatto_events::Payload;
use makiatto_events::payload::CertificateRenewalRequested;
use makiatto_protocol::health::{AcmeReport, OrderFailure};
use makiatto_protocol::request as op;

use crate::cluster::Ctx;

/// One name's row.
#[derive(Debug, serde::Serialize)]
struct Row {
    name: String,
    domain: String,
    /// The certificate's first name (a domain or a nameserver name).
    certificate: String,
    issuer: Option<String>,
    not_after: Option<String>,
    state: String,
}

fn time(millis: u64) -> String {
    jiff::Timestamp::from_millisecond(millis as i64)
        .map(|t| format!("{t:.0}"))
        .unwrap_or_else(|_| millis.to_string())
}

/// How a failed order stands: what failed, who tries again, and when.
fn failing_state(f: &OrderFailure) -> String {
    let on = f
        .node
        .as_deref()
        .map(|n| format!(" on {n}"))
        .unwrap_or_default();
    if f.ca_unreached {
        format!(
            "failing{on}: {} (the CA was not reached: retry in {}s, or as soon as it answers)",
            f.error, f.retry_in_secs
        )
    } else {
        format!("failing{on}: {} (retry in {}s)", f.error, f.retry_in_secs)
    }
}

fn rows(acme: &AcmeReport) -> Vec<Row> {
    let mut rows = Vec::new();
    let failing = |cert: &str| {
        if let Some(until) = acme
            .due
            .iter()
            .find(|d| d.certificate == cert)
            .and_then(|d| d.limited_until_millis)
        {
            return Some(format!(
                "waiting for the CA's duplicate limit (5 certificates for these names in 7 days) until {}",
                time(until)
            ));
        }
        acme.failures
            .iter()
            .find(|f| f.certificate == cert)
            .map(failing_state)
    };
    let ordering = acme.ordering.as_deref();
    for (cert, c) in &acme.certificates {
        let renewing = acme.due.iter().any(|d| d.certificate == *cert);
        for name in &c.names {
            let state = if ordering == Some(cert.as_str()) {
                "valid, renewal in progress".to_owned()
            } else if let Some(f) = failing(cert) {
                format!("valid, renewal {f}")
            } else if renewing {
                "valid, renewal due".to_owned()
            } else {
                "valid".to_owned()
            };
            rows.push(Row {
                name: name.clone(),
                domain: c.domain.clone(),
                certificate: cert.clone(),
                issuer: Some(c.issuer.clone()),
                not_after: Some(time(c.not_after_millis)),
                state,
            });
        }
    }
    for d in &acme.due {
        let cert = d.certificate.as_str();
        for name in &d.names {
            if rows.iter().any(|r| r.name == *name) {
                continue;
            }
            let state = if ordering == Some(cert) {
                "self-signed; ordering now".to_owned()
            } else if let Some(f) = failing(cert) {
                format!("self-signed; {f}")
            } else if acme.directory.is_none() {
                "self-signed; no acme.directory set".to_owned()
            } else {
                "self-signed; order due".to_owned()
            };
            rows.push(Row {
                name: name.clone(),
                domain: d.domain.clone(),
                certificate: cert.to_owned(),
                issuer: None,
                not_after: None,
                state,
            });
        }
    }
    rows.sort_by(|a, b| (&a.domain, &a.name).cmp(&(&b.domain, &b.name)));
    rows
}

/// The ACME report of every node that answers, merged: the certificates
/// and what is due (the same on every node that holds the same log), the
/// order in progress and the failures (only the ordering node has them).
async fn acme_report(ctx: &Ctx) -> anyhow::Result<AcmeReport> {
    let asks = ctx.profile.machines.iter().map(|m| async move {
        let remote = ctx.connect(m).await?;
        let health = remote.ask(op::Health {}).await?;
        anyhow::Ok((m.name.clone(), health.acme))
    });
    let mut merged: Option<AcmeReport> = None;
    let mut errors = Vec::new();
    let mut failures = Vec::new();
    let mut ordering = None;
    for answer in futures::future::join_all(asks).await {
        match answer {
            Ok((_, Some(acme))) => {
                failures.extend(acme.failures.iter().cloned());
                if acme.ordering.is_some() {
                    ordering = acme.ordering.clone();
                }
                merged.get_or_insert(acme);
            }
            Ok((name, None)) => errors.push(format!(
                "{name} has no ACME subsystem running (is it initialised?)"
            )),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    let Some(mut acme) = merged else {
        bail!("no node answered:\n  {}", errors.join("\n  "));
    };
    acme.failures = failures;
    acme.ordering = ordering;
    Ok(acme)
}

/// `maki certs [--json]`.
pub async fn list(ctx: &Ctx, json_out: bool) -> anyhow::Result<()> {
    let acme = acme_report(ctx).await?;
    let rows = rows(&acme);
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"directory": acme.directory, "names": rows})
            )?
        );
        return Ok(());
    }
    println!(
        "ACME directory: {}",
        acme.directory
            .as_deref()
            .unwrap_or("(none: nothing is ordered)")
    );
    if rows.is_empty() {
        println!("no domain is configured yet");
    }
    for r in rows {
        println!(
            "{:<32} {:<24} {:<22} {}",
            r.name,
            r.issuer.as_deref().unwrap_or("-"),
            r.not_after.as_deref().unwrap_or("-"),
            r.state
        );
    }
    Ok(())
}

/// `maki certs renew NAME`.
pub async fn renew(ctx: &Ctx, name: &str) -> anyhow::Result<()> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let acme = acme_report(ctx).await?;
    let Some(row) = rows(&acme).into_iter().find(|r| r.name == name) else {
        bail!("no certificate covers {name}; `maki certs` lists the names the cluster serves");
    };
    if let Some(until) = acme.limited.get(&row.certificate).copied() {
        eprintln!(
            "warning: {} already had 5 certificates in 7 days (the CA's duplicate limit); the renewal waits until {}",
            row.certificate,
            time(until)
        );
    }
    let cluster_id = ctx.cluster_id()?;
    let (_, remote) = ctx.any_node().await?;
    ctx.publish(
        &remote,
        &cluster_id,
        vec![Payload::CertificateRenewalRequested(
            CertificateRenewalRequested { name: name.clone() },
        )],
        None,
        None,
    )
    .await
    .context("cannot publish the renewal request")?;
    println!(
        "{name}: renewal requested; the ordering node orders a new certificate now (see `maki certs`)"
    );
    Ok(())
}
