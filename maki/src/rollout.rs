//! `maki machine upgrade` and `maki machine restart`: one machine at a
//! time, each behind a health gate, with the previous binary restored when
//! the gate fails — and, where the daemon can hand its sockets over
//! (`Features::HANDOVER`), without dropping a connection or a query.
//!
//! Per machine, an upgrade:
//! 1. uploads the binary beside the installed one (`makiatto.new`) and
//!    checks that it runs there as a makiatto (`handover-check`): a
//!    broken build stops the rollout here, with nothing changed;
//! 2. keeps the installed binary (`makiatto.prev`) and renames the new one
//!    over it;
//! 3. has the running daemon hand over to it (`makiatto reload`: the
//!    process stays, its image changes, its sockets stay open), or, for a
//!    daemon older than handovers, stops and starts it (said: that node
//!    refuses connections meanwhile);
//! 4. gates: the daemon runs the new binary, answers DNS and HTTPS (its
//!    own probe of itself) and has caught up with the log, within
//!    [`GATE_WITHIN`];
//! 5. on a failed gate, renames the previous binary back, hands over to it
//!    the same way, and stops the rollout.
//!
//! A restart is step 3 with the installed binary, then the gate.
//!
//! A cluster whose nodes had the GeoIP database as copies (an older
//! `maki` put them there) gets it named in the log, from this machine's
//! database, once a node that reads it from there serves.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use makiatto_protocol::client::Batch;
use makiatto_protocol::request as op;
use makiatto_protocol::version::{Features, Version};

use crate::cluster::Ctx;
use crate::health::check::{behind, union};
use crate::machine::{REMOTE_BINARY, daemon_binary, elf_arch};
use crate::profile::Machine;
use crate::ssh::{Remote, bytes_bar};

/// How long a daemon has, after a handover or a start, to pass the gate.
const GATE_WITHIN: Duration = Duration::from_secs(60);

/// `maki machine upgrade`.
pub async fn upgrade(ctx: &Ctx, names: &[String], binary: Option<&Path>) -> anyhow::Result<()> {
    let binary = daemon_binary(binary)?;
    let arch = elf_arch(&binary)?;
    for m in ctx.profile.select(names)? {
        let remote = ctx.connect(&m).await?;
        upgrade_one(ctx, &m, &remote, &binary, arch).await?;
    }
    Ok(())
}

/// `maki machine restart`.
pub async fn restart(ctx: &Ctx, names: &[String]) -> anyhow::Result<()> {
    for m in ctx.profile.select(names)? {
        let remote = ctx.connect(&m).await?;
        let daemon = running(&remote).await?;
        let how = switch(&m, &remote, &daemon, true).await?;
        gate(ctx, &m, &remote, &daemon, None)
            .await
            .with_context(|| format!("{} after the restart", m.name))?;
        println!("{}: restarted ({how})", m.name);
    }
    Ok(())
}

/// The running daemon's version and the start of its image.
struct Running {
    version: Version,
    started: Option<u64>,
}

async fn running(remote: &Remote) -> anyhow::Result<Running> {
    let mut batch = Batch::new();
    let health = batch.push(op::Health {});
    let mut answers = remote.send(batch).await?;
    let version = answers.daemon().clone();
    let started = answers
        .take(health)
        .ok()
        .and_then(|h| h.daemon)
        .map(|d| d.started_unix_millis);
    Ok(Running { version, started })
}

async fn upgrade_one(
    ctx: &Ctx,
    m: &Machine,
    remote: &Remote,
    binary: &Path,
    arch: &str,
) -> anyhow::Result<()> {
    let name = &m.name;
    let theirs = remote.run_ok("uname -m").await?;
    if arch != theirs.trim() {
        bail!(
            "{name}: {} is built for {arch} but {name} is {}; pass --binary-path with a {} build",
            binary.display(),
            theirs.trim(),
            theirs.trim()
        );
    }
    let staged = format!("{REMOTE_BINARY}.new");
    let bar = bytes_bar(&format!("{name}: upload"));
    remote.upload(binary, &staged, 0o755, &bar).await?;
    bar.finish_and_clear();
    // Does it run there, as a makiatto? A broken build stops here.
    let new = match checked(remote, &staged).await? {
        Ok(v) => v,
        Err(why) => {
            remote.run(&format!("rm -f {staged}")).await?;
            bail!(
                "{name}: {} does not run there as makiatto ({why}); nothing changed on {name}, and the rollout stopped",
                binary.display(),
            );
        }
    };
    let daemon = running(remote).await?;
    remote
        .run_ok(&format!(
            "cp -p {REMOTE_BINARY} {REMOTE_BINARY}.prev && mv -f {staged} {REMOTE_BINARY}"
        ))
        .await?;
    let inode = installed_inode(remote).await?;
    let switched = switch(m, remote, &daemon, new.features.has(Features::HANDOVER)).await;
    let gated = match switched {
        Ok(how) => gate(ctx, m, remote, &daemon, Some(inode))
            .await
            .map(|()| how),
        Err(e) => Err(e),
    };
    let how = match gated {
        Ok(how) => how,
        Err(e) => {
            rollback(ctx, m, remote, &e).await?;
            bail!(
                "{name}: the new daemon failed its health gate ({e:#}); the previous binary serves again and the rollout stopped"
            );
        }
    };
    remote.run(&format!("rm -f {REMOTE_BINARY}.prev")).await?;
    if new.features.has(Features::GEOIP_FROM_LOG) {
        carry_geoip(remote, ctx, name).await?;
    }
    // The systemd unit of this release (where systemd runs).
    remote
        .run(&format!("{REMOTE_BINARY} service install >/dev/null"))
        .await?;
    println!("{name}: upgraded to makiatto {} ({how})", new.software);
    Ok(())
}

/// Puts the previous binary back in service after a failed gate.
async fn rollback(
    ctx: &Ctx,
    m: &Machine,
    remote: &Remote,
    why: &anyhow::Error,
) -> anyhow::Result<()> {
    let name = &m.name;
    eprintln!(
        "{name}: the new daemon failed its health gate ({why:#}); restoring the previous binary"
    );
    remote
        .run_ok(&format!("mv -f {REMOTE_BINARY}.prev {REMOTE_BINARY}"))
        .await?;
    let inode = installed_inode(remote).await?;
    let takes = checked(remote, REMOTE_BINARY)
        .await?
        .is_ok_and(|v| v.features.has(Features::HANDOVER));
    let now = match running(remote).await {
        Ok(now) => {
            switch(m, remote, &now, takes).await?;
            now
        }
        // Down (the new binary crashed): started afresh.
        Err(_) => {
            remote
                .run(&format!(
                    "{REMOTE_BINARY} stop >/dev/null 2>&1; {REMOTE_BINARY} run --detach >/dev/null"
                ))
                .await?;
            Running {
                version: Version::legacy(),
                started: None,
            }
        }
    };
    gate(ctx, m, remote, &now, Some(inode))
        .await
        .with_context(|| format!("{name}: the previous binary did not come back healthy either"))
}

/// A cluster that had its GeoIP database as copies on each node (an older
/// `maki` put them there) gets it in the log, from this machine's local
/// database, once a node reads it from there.
async fn carry_geoip(remote: &Remote, ctx: &Ctx, name: &str) -> anyhow::Result<()> {
    if crate::geoip::cluster_database(remote).await?.is_some() {
        return Ok(());
    }
    let Some(db) = crate::geoip::Database::find_default()? else {
        eprintln!(
            "warning: the cluster's log names no GeoIP database. {}",
            crate::geoip::MISSING
        );
        return Ok(());
    };
    db.upload(remote, name).await?;
    crate::commands::set_setting(ctx, remote, "geoip.database", &db.hash.to_hex()).await?;
    println!(
        "{name}: the cluster's log names no GeoIP database: this machine's (built {}) is named there now, and every upgraded node answers from it",
        db.built()
    );
    Ok(())
}

/// What `path handover-check` says of itself on the machine: its version,
/// or why it does not run as a makiatto.
async fn checked(remote: &Remote, path: &str) -> anyhow::Result<Result<Version, String>> {
    let out = remote.run(&format!("{path} handover-check")).await?;
    Ok(match serde_json::from_str::<Version>(out.stdout.trim()) {
        Ok(v) if out.status == 0 => Ok(v),
        _ => Err(format!(
            "exit {}: {}",
            out.status,
            first_line(&out.stderr, &out.stdout)
        )),
    })
}

/// The inode of the installed binary: what the daemon runs once it runs it.
async fn installed_inode(remote: &Remote) -> anyhow::Result<u64> {
    remote
        .run_ok(&format!("stat -c %i {REMOTE_BINARY}"))
        .await?
        .trim()
        .parse()
        .context("stat printed no inode")
}

/// Puts the installed binary in service: a handover where the running
/// daemon (and, `takes`, the binary) can, else a stop and a start.
async fn switch(
    m: &Machine,
    remote: &Remote,
    daemon: &Running,
    takes: bool,
) -> anyhow::Result<&'static str> {
    if daemon.version.features.has(Features::HANDOVER) && takes {
        let out = remote
            .run(&format!("{REMOTE_BINARY} reload --binary {REMOTE_BINARY}"))
            .await?;
        if out.status == 0 {
            return Ok("handed over: no socket closed");
        }
        // Refused (the daemon runs on as it was) or failed (its supervisor
        // starts it again): a stop and a start puts the binary in service
        // either way, and the gate judges it.
        eprintln!(
            "{}: the handover did not take ({}): it is stopped and started instead, and refuses connections meanwhile",
            m.name,
            first_line(&out.stderr, &out.stdout)
        );
    } else {
        eprintln!(
            "{}: its daemon ({}) cannot hand over its sockets: it is stopped and started, and refuses connections meanwhile",
            m.name, daemon.version
        );
    }
    remote
        .run_ok(&format!(
            "{REMOTE_BINARY} stop >/dev/null && {REMOTE_BINARY} run --detach >/dev/null"
        ))
        .await?;
    Ok("stopped and started")
}

/// The last non-empty line a command printed (stderr first).
fn first_line(stderr: &str, stdout: &str) -> String {
    stderr
        .lines()
        .chain(stdout.lines())
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or("no output")
        .trim()
        .to_owned()
}

/// Waits until `m`'s daemon is a new image (of the binary with `inode`,
/// when given), answers DNS and HTTPS as its own probe sees them, and has
/// caught up with the other nodes' log.
async fn gate(
    ctx: &Ctx,
    m: &Machine,
    remote: &Remote,
    before: &Running,
    inode: Option<u64>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + GATE_WITHIN;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        match passes(ctx, m, remote, before, inode).await {
            Ok(()) => return Ok(()),
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("not healthy within {} s: {last}", GATE_WITHIN.as_secs())
}

async fn passes(
    ctx: &Ctx,
    m: &Machine,
    remote: &Remote,
    before: &Running,
    inode: Option<u64>,
) -> anyhow::Result<()> {
    let mut batch = Batch::new();
    let health = batch.push(op::Health {});
    let vv = batch.push(op::GetVersionVector {});
    let mut answers = remote.send(batch).await?;
    let version = answers.daemon().clone();
    let health = answers
        .take(health)
        .map_err(|e| anyhow::anyhow!("the daemon does not answer: {e}"))?;
    let vv = answers
        .take(vv)
        .map_err(|e| anyhow::anyhow!("the daemon does not answer: {e}"))?;
    if let Some(d) = &health.daemon {
        if before.started.is_some_and(|s| s == d.started_unix_millis) {
            bail!("the previous image still serves");
        }
        if let Some(want) = inode
            && d.exe_inode != want
        {
            bail!("the daemon does not run the installed binary yet");
        }
        if let Some(h) = d.last_handover.as_ref().filter(|h| h.outcome != "done") {
            bail!("the handover did not take: {}", h.outcome);
        }
    }
    // Caught up with the log: nothing any other node holds is missing.
    let mut vvs = vec![vv.clone()];
    for other in ctx.profile.machines.iter().filter(|o| o.name != m.name) {
        if let Ok(r) = ctx.connect(other).await
            && let Ok(v) = r.ask(op::GetVersionVector {}).await
        {
            vvs.push(v);
        }
    }
    let refs: Vec<&makiatto_events::VersionVector> = vvs.iter().collect();
    let lag = behind(&vv, &union(&refs));
    if lag > 0 {
        bail!("{lag} events behind the other nodes");
    }
    // Answering: DNS and HTTPS, as the node's own probe reaches itself.
    if version.features.has(Features::PROBE) {
        let probe = remote
            .ask(op::ProbeCluster {
                subnets: Vec::new(),
            })
            .await?;
        for t in probe.targets.iter().filter(|t| t.node == m.name) {
            for d in &t.dns {
                if let Some(e) = &d.error {
                    bail!("DNS for {} at {} not answered: {e}", d.zone, d.address);
                }
            }
            for h in &t.https {
                if let Some(e) = &h.error {
                    bail!("HTTPS for {} at {} not answered: {e}", h.name, h.address);
                }
                if let Some(s) = h.status.filter(|s| *s >= 500) {
                    bail!("HTTPS for {} answered {s}", h.name);
                }
            }
        }
    }
    Ok(())
}
