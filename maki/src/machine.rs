//! `maki machine`: initialise, list, add and remove machines (`rollout`
//! upgrades and restarts them).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use makiatto_events::payload::{
    ConfigChanged, Coordinates, Genesis, Ipv4Net, NodeJoined, NodeRemoved,
};
use makiatto_events::{Blake3Hash, FeedWriter, NodeName, Payload};
use makiatto_projections::config::{ConfigDoc, DesiredConfig};
use makiatto_projections::peers::Peers;
use makiatto_projections::roles::Roles;
use makiatto_protocol::client::Batch;
use makiatto_protocol::identity::NodeIdentity;
use makiatto_protocol::request::{self as op, ShowAs};
use makiatto_protocol::status::NodeStatus;
use makiatto_protocol::version::Features;
use sha2::{Digest, Sha256};

use crate::cluster::{Ctx, append, copy_log, now_millis};
use crate::mesh::Mesh;
use crate::profile::{Machine, SshTarget};
use crate::ssh::{HostKeyPolicy, Remote, Target, bytes_bar};

/// Where the daemon is installed on a machine.
pub const REMOTE_BINARY: &str = "/usr/local/bin/makiatto";

/// `maki machine init` arguments.
pub struct InitArgs {
    pub name: String,
    pub target: SshTarget,
    pub binary_path: Option<PathBuf>,
    pub skip_ns: bool,
    pub force_ns: bool,
    pub recreate: bool,
    pub coordinates: Option<(f64, f64)>,
    pub accept_host_key: Option<String>,
    pub mesh_range: Option<Ipv4Net>,
    pub acme: Option<String>,
    pub cluster_name: Option<String>,
    /// Where the GeoIP database is (for coordinates, and for the cluster
    /// this init creates).
    pub geoip_dir: Option<PathBuf>,
    /// Say so when the cluster ends up without a GeoIP database (`maki
    /// local up` says it once for all its machines instead).
    pub warn_geoip: bool,
}

/// The daemon binary to install: `--binary-path`, else the one beside `maki`.
pub fn daemon_binary(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match flag {
        Some(p) => p.to_owned(),
        None => std::env::current_exe()?
            .parent()
            .context("maki has no directory")?
            .join("makiatto"),
    };
    if !path.is_file() {
        bail!(
            "no makiatto daemon binary at {} (maki installs the one beside itself; build it with `cargo build --release` or pass --binary-path)",
            path.display()
        );
    }
    Ok(path)
}

/// The machine architecture an ELF binary is for, as `uname -m` prints it.
pub fn elf_arch(path: &Path) -> anyhow::Result<&'static str> {
    let mut header = [0u8; 20];
    use std::io::Read;
    std::fs::File::open(path)?
        .read_exact(&mut header)
        .with_context(|| format!("{} is not an executable", path.display()))?;
    if &header[..4] != b"\x7fELF" {
        bail!(
            "{} is not a Linux executable (no ELF header)",
            path.display()
        );
    }
    Ok(match u16::from_le_bytes([header[18], header[19]]) {
        0x3e => "x86_64",
        0xb7 => "aarch64",
        0x28 => "armv7l",
        0xf3 => "riscv64",
        _ => "unknown",
    })
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

fn spinner(prefix: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix:10} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_prefix(prefix.to_owned());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// The ACME directory for `--acme`.
fn acme_directory(choice: &str) -> anyhow::Result<Option<String>> {
    Ok(match choice {
        "none" => None,
        "letsencrypt" => Some("https://acme-v02.api.letsencrypt.org/directory".into()),
        "letsencrypt-staging" => {
            Some("https://acme-staging-v02.api.letsencrypt.org/directory".into())
        }
        url if url.starts_with("https://") => Some(url.into()),
        other => bail!(
            "--acme {other:?}: expected none, letsencrypt, letsencrypt-staging or an https:// directory URL"
        ),
    })
}

/// Checks the machine can take the daemon and installs it when it differs.
async fn install_binary(remote: &Remote, binary: &Path, name: &str) -> anyhow::Result<()> {
    let arch = elf_arch(binary)?;
    let remote_arch = remote.run_ok("uname -m").await?.trim().to_owned();
    if arch != remote_arch {
        bail!(
            "{} is built for {arch} but {name} is {remote_arch}; pass --binary-path with a {remote_arch} build",
            binary.display()
        );
    }
    let local = sha256_file(binary)?;
    let remote_sum = remote
        .run(&format!("sha256sum {REMOTE_BINARY} 2>/dev/null"))
        .await?;
    if remote_sum.stdout.split_whitespace().next() == Some(local.as_str()) {
        return Ok(());
    }
    let size = std::fs::metadata(binary)?.len();
    let free_kb: u64 = remote
        .run_ok("df -Pk /usr/local/bin | tail -1")
        .await?
        .split_whitespace()
        .nth(3)
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    if free_kb.saturating_mul(1024) < size * 2 {
        bail!(
            "{name}: not enough disk space in /usr/local/bin ({free_kb} KiB free, {} KiB needed)",
            size * 2 / 1024
        );
    }
    remote.run_ok("mkdir -p /usr/local/bin").await?;
    let bar = bytes_bar(&format!("{name}: makiatto"));
    remote.upload(binary, REMOTE_BINARY, 0o755, &bar).await?;
    bar.finish_and_clear();
    Ok(())
}

/// Coordinates from the GeoIP database, for a machine given no --lat/--lon.
fn locate(
    dir: Option<&Path>,
    ipv4: Option<Ipv4Addr>,
    ipv6: Option<Ipv6Addr>,
    name: &str,
) -> anyhow::Result<(f64, f64)> {
    let Some(dir) = dir.filter(|d| !crate::geoip::files(d).is_empty()) else {
        bail!(
            "{name}: no coordinates; pass --lat and --lon, or fetch the GeoIP database with scripts/fetch-geoip.sh"
        );
    };
    for ip in ipv4.map(IpAddr::V4).into_iter().chain(ipv6.map(IpAddr::V6)) {
        if let Some((lat, lon, place)) = crate::geoip::lookup(dir, ip)? {
            eprintln!("{name}: {ip} is in {place} ({lat:.4}, {lon:.4}) according to DB-IP");
            return Ok((lat, lon));
        }
    }
    bail!("{name}: the GeoIP database does not place {ipv4:?}/{ipv6:?}; pass --lat and --lon")
}

/// The machine's global addresses as it sees them (`ip -o addr`).
async fn public_addresses(
    remote: &Remote,
    ssh_host: &str,
) -> anyhow::Result<(Option<Ipv4Addr>, Option<Ipv6Addr>)> {
    let out = remote.run("ip -o addr show scope global").await?.stdout;
    let mut v4 = ssh_host.parse::<Ipv4Addr>().ok();
    let mut v6 = ssh_host.parse::<Ipv6Addr>().ok();
    for line in out.lines() {
        let mut words = line.split_whitespace();
        while let Some(w) = words.next() {
            if w == "inet" || w == "inet6" {
                let addr = words.next().unwrap_or("").split('/').next().unwrap_or("");
                match addr.parse::<IpAddr>() {
                    Ok(IpAddr::V4(a)) if v4.is_none() => v4 = Some(a),
                    Ok(IpAddr::V6(a)) if v6.is_none() => v6 = Some(a),
                    _ => {}
                }
            }
        }
    }
    Ok((v4, v6))
}

/// `maki machine init`: a pipeline of steps, each with its own progress
/// message — check the arguments, log in (pinning the host key), prepare
/// the machine (binary, user, directories, node keys made on the node),
/// start the daemon, place the machine (addresses, coordinates,
/// nameserver role), then create the cluster with it (its GeoIP database
/// stored there and named in the log) or join it (the node fetches the
/// database from its peers), and record it in the profile. A cluster left
/// without a GeoIP database is said loudly, with how to fix it.
pub async fn init(ctx: &mut Ctx, args: InitArgs) -> anyhow::Result<()> {
    let node_name = NodeName::new(args.name.as_str())
        .with_context(|| format!("{:?} cannot be a machine name", args.name))?;
    let existing = ctx.profile.machine(&args.name).cloned();
    if existing.is_some() && !args.recreate {
        bail!(
            "machine {} is already in the profile; pass --recreate to initialise it again",
            args.name
        );
    }
    let binary = daemon_binary(args.binary_path.as_deref())?;
    let acme = acme_directory(args.acme.as_deref().unwrap_or("letsencrypt"))?;
    let bar = spinner(&args.name);

    bar.set_message(format!(
        "connecting to {}@{}",
        args.target.user, args.target.host
    ));
    let remote = login(ctx, &args, existing.as_ref()).await?;

    bar.set_message("installing the daemon");
    install_binary(&remote, &binary, &args.name).await?;
    bar.set_message("preparing the machine");
    let identity = prepare(&remote, &args).await?;
    bar.set_message("starting the daemon");
    remote
        .run_ok(&format!(
            "{REMOTE_BINARY} service install && {REMOTE_BINARY} run --detach"
        ))
        .await?;
    // What the daemon speaks (a daemon before the `hello` handshake
    // answers as protocol 1, without features).
    let daemon = remote.send(Batch::new()).await?.daemon().clone();
    let geoip_in_log = daemon.features.has(Features::GEOIP_FROM_LOG);
    let local_geoip = match &args.geoip_dir {
        Some(dir) => crate::geoip::Database::find(dir)?,
        None => None,
    };
    if !geoip_in_log && let Some(db) = &local_geoip {
        // A daemon older than the database in the log reads only a copy
        // in its data directory, at start.
        bar.set_message("copying the GeoIP database (an older daemon)");
        db.copy_to(&remote, &args.name).await?;
        remote
            .run_ok(&format!(
                "{REMOTE_BINARY} stop >/dev/null && {REMOTE_BINARY} run --detach >/dev/null"
            ))
            .await?;
    }

    let place = place(ctx, &remote, &args).await?;
    let joined = |mesh_addr: Ipv4Addr| place.joined(&node_name, &identity, &args.target, mesh_addr);
    let cluster = ctx
        .profile
        .cluster_id
        .clone()
        .filter(|_| ctx.profile.machines.iter().any(|m| m.name != args.name));
    let (mesh_addr, cluster_geoip) = match cluster {
        None => {
            bar.set_message("creating the cluster");
            // The cluster answers from the local GeoIP database from its
            // first event on: stored here, named in the log.
            let geoip = match local_geoip.as_ref().filter(|_| geoip_in_log) {
                Some(db) => {
                    bar.set_message("storing the GeoIP database");
                    db.upload(&remote, &args.name).await?;
                    Some(db.hash)
                }
                None => None,
            };
            bar.set_message("creating the cluster");
            let settings = Initial { acme, geoip };
            (
                create_cluster(ctx, &remote, &args, settings, joined).await?,
                geoip,
            )
        }
        Some(cluster_id) => {
            bar.set_message("joining the cluster");
            let mesh_addr = join_cluster(ctx, &remote, &args, &cluster_id, joined).await?;
            (mesh_addr, crate::geoip::cluster_database(&remote).await?)
        }
    };

    ctx.profile.upsert(Machine {
        name: args.name.clone(),
        ssh_user: args.target.user.clone(),
        ssh_host: args.target.host.clone(),
        ssh_port: args.target.port,
        host_key: remote.host_key.clone(),
        ipv4: place.ipv4.map(|a| a.to_string()),
        ipv6: place.ipv6.map(|a| a.to_string()),
        latitude: place.coordinates.lat(),
        longitude: place.coordinates.lon(),
        nameserver: place.nameserver,
        signing_key: identity.signing_key.to_hex(),
        wg_public_key: identity.wg_public_key.to_base64(),
        mesh_addr: Some(mesh_addr.to_string()),
    });
    ctx.save_profile()?;
    bar.finish_and_clear();
    println!(
        "{}: initialised ({}, mesh {mesh_addr}{})",
        args.name,
        args.target.host,
        if place.nameserver { ", nameserver" } else { "" }
    );
    if args.warn_geoip && cluster_geoip.is_none() && (geoip_in_log || local_geoip.is_none()) {
        eprintln!(
            "warning: the cluster has no GeoIP database. {}",
            crate::geoip::MISSING
        );
    }
    Ok(())
}

/// The settings a new cluster starts with.
struct Initial {
    acme: Option<String>,
    /// The GeoIP database's manifest, stored on the first node already.
    geoip: Option<Blake3Hash>,
}

impl Initial {
    /// What `maki log` says of them.
    fn summary(&self) -> String {
        let mut set = Vec::new();
        if let Some(d) = &self.acme {
            set.push(format!("acme.directory = {d}"));
        }
        if let Some(h) = &self.geoip {
            set.push(format!("geoip.database = {}", h.to_hex()));
        }
        format!("set {}", set.join(", "))
    }
}

/// Logs in to the machine: its pinned host key if the profile has it at
/// that address (a `--recreate`), else first contact.
async fn login(ctx: &Ctx, args: &InitArgs, existing: Option<&Machine>) -> anyhow::Result<Remote> {
    let target = Target {
        user: args.target.user.clone(),
        host: args.target.host.clone(),
        port: args.target.port,
        key_file: ctx.ssh_key()?,
    };
    let policy = match existing {
        Some(m) if m.ssh_host == args.target.host && m.ssh_port == args.target.port => {
            HostKeyPolicy::Pinned(&m.host_key)
        }
        _ => HostKeyPolicy::FirstContact {
            accept: args.accept_host_key.as_deref(),
        },
    };
    Remote::connect(&target, policy).await
}

/// The service user and directories, and the node's keys (made on the
/// node; only their public halves come back).
async fn prepare(remote: &Remote, args: &InitArgs) -> anyhow::Result<NodeIdentity> {
    if args.recreate {
        remote
            .run(&format!(
                "{REMOTE_BINARY} stop >/dev/null 2>&1; rm -rf /var/makiatto/* /etc/makiatto/*"
            ))
            .await?;
    }
    remote
        .run_ok(
            "id makiatto >/dev/null 2>&1 || useradd --system --home-dir /var/makiatto --no-create-home --shell /usr/sbin/nologin makiatto; \
             mkdir -p /etc/makiatto /var/makiatto /run/makiatto && chown makiatto:makiatto /var/makiatto && chmod 0750 /var/makiatto /etc/makiatto",
        )
        .await?;
    let keys = remote
        .run_ok(&format!(
            "{REMOTE_BINARY} keys init{}",
            if args.recreate { " --recreate" } else { "" }
        ))
        .await?;
    serde_json::from_str(keys.trim()).context("the node printed unreadable keys")
}

/// Where a machine is and what it does: what its `node-joined` event says
/// besides its keys and mesh address.
struct Place {
    ipv4: Option<Ipv4Addr>,
    ipv6: Option<Ipv6Addr>,
    coordinates: Coordinates,
    nameserver: bool,
}

impl Place {
    fn joined(
        &self,
        name: &NodeName,
        identity: &NodeIdentity,
        ssh: &SshTarget,
        mesh_addr: Ipv4Addr,
    ) -> Payload {
        Payload::NodeJoined(NodeJoined {
            name: name.clone(),
            signing_key: identity.signing_key,
            sealing_key: identity.sealing_key,
            wg_public_key: identity.wg_public_key,
            ipv4: self.ipv4,
            ipv6: self.ipv6,
            ssh: ssh.clone(),
            coordinates: self.coordinates,
            nameserver: self.nameserver,
            mesh_addr,
        })
    }
}

/// The machine's public addresses, its coordinates (`--lat/--lon`, else
/// the GeoIP database), and whether it serves DNS (the first three
/// machines do, unless told otherwise).
async fn place(ctx: &Ctx, remote: &Remote, args: &InitArgs) -> anyhow::Result<Place> {
    let (ipv4, ipv6) = public_addresses(remote, &args.target.host).await?;
    let (lat, lon) = match args.coordinates {
        Some(c) => c,
        None => locate(args.geoip_dir.as_deref(), ipv4, ipv6, &args.name)?,
    };
    let coordinates = Coordinates::from_degrees(lat, lon)
        .with_context(|| format!("--lat {lat} --lon {lon} are out of range"))?;
    let nameservers = ctx
        .profile
        .machines
        .iter()
        .filter(|m| m.name != args.name && m.nameserver)
        .count();
    Ok(Place {
        ipv4,
        ipv6,
        coordinates,
        nameserver: args.force_ns || (!args.skip_ns && nameservers < 3),
    })
}

/// The first machine: its genesis (this operator, the mesh range), the
/// ACME directory and GeoIP database, and its own join, appended to it.
/// Returns its mesh address.
async fn create_cluster(
    ctx: &mut Ctx,
    remote: &Remote,
    args: &InitArgs,
    settings: Initial,
    joined: impl Fn(Ipv4Addr) -> Payload,
) -> anyhow::Result<Ipv4Addr> {
    let operator = ctx.operator()?;
    let range = args.mesh_range.unwrap_or(Ipv4Net {
        network: Ipv4Addr::new(10, 44, 44, 0),
        prefix: 24,
    });
    let mesh_addr = range
        .hosts()
        .next()
        .context("the mesh range has no host addresses")?;
    let mut writer = FeedWriter::new(operator.key().clone());
    let cluster_name = args
        .cluster_name
        .clone()
        .unwrap_or_else(|| "makiatto".into());
    let genesis = writer.write(
        Payload::Genesis(Genesis {
            cluster_name: cluster_name.clone(),
            operator_name: operator_name(),
            operator: operator.key().public(),
            mesh_range: range,
        }),
        &[],
        now_millis(),
    )?;
    let cluster_id = genesis.id().to_hex();
    let mut events = vec![genesis.clone()];
    let mut parents = vec![(genesis.id(), genesis.hlc())];
    if settings.acme.is_some() || settings.geoip.is_some() {
        let mut doc = ConfigDoc::default();
        let mut wanted = DesiredConfig::default();
        wanted.settings.acme_directory = settings.acme.clone();
        wanted.settings.geoip_database = settings.geoip.map(|h| h.to_hex());
        let changes = doc.edit(&operator.key().public(), rand::random(), &wanted)?;
        let e = writer.write(
            Payload::ConfigChanged(ConfigChanged {
                changes,
                summary: settings.summary(),
            }),
            &parents,
            now_millis(),
        )?;
        parents = vec![(e.id(), e.hlc())];
        events.push(e);
    }
    events.push(writer.write(joined(mesh_addr), &parents, now_millis())?);
    operator.outbox(&cluster_id)?.record(&events)?;
    append(remote, &events).await?;
    ctx.profile.cluster_id = Some(cluster_id);
    ctx.profile.cluster_name = Some(cluster_name);
    Ok(mesh_addr)
}

/// A machine joining: the log copied to it from a member, a free mesh
/// address chosen, and its join signed and handed to both. Returns its
/// mesh address.
async fn join_cluster(
    ctx: &Ctx,
    remote: &Remote,
    args: &InitArgs,
    cluster_id: &str,
    joined: impl Fn(Ipv4Addr) -> Payload,
) -> anyhow::Result<Ipv4Addr> {
    let (source_machine, source) = ctx.any_node_except(&args.name).await?;
    let node_vv = remote.ask(op::GetVersionVector {}).await?;
    if node_vv.iter().next().is_some() && !args.recreate {
        // A machine with another cluster's log: refuse rather than mix.
        let roles = remote.ask(ShowAs::<Roles>::now()).await?.state;
        let theirs = roles.cluster.map(|c| c.id.to_hex()).unwrap_or_default();
        if theirs != cluster_id {
            bail!(
                "{} already holds the log of another cluster ({theirs}); pass --recreate to wipe it",
                args.name
            );
        }
    }
    copy_log(&source, remote)
        .await
        .with_context(|| format!("copying the log from {}", source_machine.name))?;
    let peers = source.ask(ShowAs::<Peers>::now()).await?.state;
    let mesh_addr = Mesh(peers).free_addr(Some(&args.name))?;
    let events = ctx
        .sign(&source, cluster_id, vec![joined(mesh_addr)])
        .await?;
    ctx.deliver(remote, cluster_id, &events).await?;
    // The source's mesh hands the join to every other node.
    ctx.deliver(&source, cluster_id, &events).await?;
    Ok(mesh_addr)
}

/// The name the first operator is shown under: the local user's.
fn operator_name() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .unwrap_or_else(|| "operator".into())
}

/// One row of `maki machine list`.
#[derive(serde::Serialize)]
struct Row {
    name: String,
    ssh: String,
    ipv4: Option<String>,
    ipv6: Option<String>,
    mesh_addr: Option<String>,
    nameserver: bool,
    latitude: f64,
    longitude: f64,
    reachable: bool,
    running: bool,
    events: Option<u64>,
    error: Option<String>,
}

/// `maki machine list`.
pub async fn list(ctx: &Ctx, json_out: bool) -> anyhow::Result<bool> {
    let checks = ctx.profile.machines.iter().map(|m| async move {
        let status = async {
            let remote = ctx.connect(m).await?;
            let out = remote.run_ok(&format!("{REMOTE_BINARY} status")).await?;
            anyhow::Ok(
                serde_json::from_str::<NodeStatus>(&out)
                    .context("the node printed an unreadable status")?,
            )
        }
        .await;
        let (reachable, running, events, error) = match status {
            Ok(s) => (true, s.running, Some(s.status.events), None),
            Err(e) => (false, false, None, Some(format!("{e:#}"))),
        };
        Row {
            name: m.name.clone(),
            ssh: m.ssh_target(),
            ipv4: m.ipv4.clone(),
            ipv6: m.ipv6.clone(),
            mesh_addr: m.mesh_addr.clone(),
            nameserver: m.nameserver,
            latitude: m.latitude,
            longitude: m.longitude,
            reachable,
            running,
            events,
            error,
        }
    });
    // All machines at once: one that does not answer costs its timeout once.
    let rows = futures::future::join_all(checks).await;
    let healthy = rows.iter().all(|r| r.running);
    if json_out {
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
    } else if rows.is_empty() {
        println!("no machines in {}", ctx.profile_path.display());
    } else {
        println!(
            "{:<10} {:<24} {:<16} {:<4} {:<9} {:>7}",
            "NAME", "SSH", "MESH", "NS", "STATE", "EVENTS"
        );
        for r in &rows {
            let state = if r.running {
                "healthy"
            } else if r.reachable {
                "stopped"
            } else {
                "unreachable"
            };
            println!(
                "{:<10} {:<24} {:<16} {:<4} {:<9} {:>7}",
                r.name,
                r.ssh,
                r.mesh_addr.as_deref().unwrap_or("-"),
                if r.nameserver { "yes" } else { "no" },
                state,
                r.events.map_or("-".into(), |e| e.to_string())
            );
            if let Some(e) = &r.error {
                println!("           {e}");
            }
        }
    }
    Ok(healthy)
}

/// `maki machine remove`.
pub async fn remove(ctx: &mut Ctx, name: &str, force: bool) -> anyhow::Result<()> {
    let machine = ctx.profile.select(&[name.to_owned()])?.remove(0);
    crate::prompt::confirm_permanent(
        force,
        &format!("removing {name}"),
        &format!(
            "Remove {name} ({}) from the cluster and wipe it?",
            machine.ssh_target()
        ),
    )?;
    let cluster_id = ctx.cluster_id()?;
    let payload = Payload::NodeRemoved(NodeRemoved {
        name: NodeName::new(name)?,
    });
    let via = match ctx.any_node_except(name).await {
        Ok((_, r)) => r,
        Err(_) => ctx.connect(&machine).await?,
    };
    // The mesh hands the removal to every other node.
    ctx.publish(&via, &cluster_id, vec![payload], None, None)
        .await?;
    match ctx.connect(&machine).await {
        Ok(remote) => {
            remote
                .run_ok(&format!(
                    "{REMOTE_BINARY} stop >/dev/null 2>&1; (systemctl disable makiatto >/dev/null 2>&1; rm -f /etc/systemd/system/makiatto.service; systemctl daemon-reload >/dev/null 2>&1); rm -rf /var/makiatto /etc/makiatto /run/makiatto {REMOTE_BINARY} {REMOTE_BINARY}.prev {REMOTE_BINARY}.new; (id makiatto >/dev/null 2>&1 && userdel --force makiatto) ; true"
                ))
                .await?;
        }
        Err(e) => eprintln!(
            "warning: {name} is unreachable, so it was removed from the cluster but not wiped: {e:#}"
        ),
    }
    ctx.profile.machines.retain(|m| m.name != name);
    if ctx.profile.machines.is_empty() {
        ctx.profile.cluster_id = None;
    }
    ctx.save_profile()?;
    println!("{name}: removed");
    if !ctx.profile.machines.is_empty() {
        // Its sealing key opened the cluster's secrets until now.
        println!(
            "  certificates whose key {name} could open are ordered again by the nodes; \
             run `maki sync` to seal env values anew to the nodes left"
        );
    }
    Ok(())
}

/// `maki machine add`: puts an existing node of this cluster into the
/// profile (another operator's machine, or a profile rebuilt from scratch).
pub async fn add(
    ctx: &mut Ctx,
    target: SshTarget,
    accept_host_key: Option<&str>,
) -> anyhow::Result<()> {
    let key_file = ctx.ssh_key()?;
    let t = Target {
        user: target.user.clone(),
        host: target.host.clone(),
        port: target.port,
        key_file,
    };
    let remote = Remote::connect(
        &t,
        HostKeyPolicy::FirstContact {
            accept: accept_host_key,
        },
    )
    .await?;
    let identity: NodeIdentity = serde_json::from_str(
        remote
            .run_ok(&format!("{REMOTE_BINARY} keys show"))
            .await
            .context("this machine does not run Makiatto (no node keys); use `maki machine init`")?
            .trim(),
    )
    .context("the node printed unreadable keys")?;
    let mut batch = Batch::new();
    let peers = batch.push(ShowAs::<Peers>::now());
    let roles = batch.push(ShowAs::<Roles>::now());
    let mut answers = remote.send(batch).await?;
    let err = |e| anyhow::anyhow!("{}: {e}", remote.target());
    let peers = answers.take(peers).map_err(err)?.state;
    let roles = answers.take(roles).map_err(err)?.state;
    let cluster = roles
        .cluster
        .with_context(|| format!("{} holds no cluster's log", target.host))?;
    let cluster_id = cluster.id.to_hex();
    if let Some(ours) = &ctx.profile.cluster_id
        && *ours != cluster_id
    {
        bail!(
            "{} belongs to cluster {cluster_id}, but this profile is for {ours}",
            target.host
        );
    }
    let (name, node) = peers
        .nodes
        .into_iter()
        .find(|(_, n)| n.signing_key == identity.signing_key)
        .with_context(|| {
            format!(
                "{} has node keys but has not joined the cluster it holds",
                target.host
            )
        })?;
    let name = name.to_string();
    if ctx.profile.machine(&name).is_some() {
        bail!("machine {name} is already in the profile");
    }
    ctx.profile.cluster_id = Some(cluster_id);
    ctx.profile.cluster_name = Some(cluster.name);
    ctx.profile.upsert(Machine {
        name: name.clone(),
        ssh_user: target.user.clone(),
        ssh_host: target.host.clone(),
        ssh_port: target.port,
        host_key: remote.host_key.clone(),
        ipv4: node.ipv4.map(|a| a.to_string()),
        ipv6: node.ipv6.map(|a| a.to_string()),
        latitude: node.latitude,
        longitude: node.longitude,
        nameserver: node.nameserver,
        signing_key: identity.signing_key.to_hex(),
        wg_public_key: identity.wg_public_key.to_base64(),
        mesh_addr: node.mesh_addr.map(|a| a.to_string()),
    });
    ctx.save_profile()?;
    println!("{name}: added to the profile ({})", target.host);
    Ok(())
}
