//! `maki`, the Makiatto CLI: manages machines over SSH, signs the operator's
//! events and hands them to the cluster, and runs local test clusters.
//!
//! # Layout
//! - [`profile`]: the profile file (public data only).
//! - [`operator`]: the operator key and outbox.
//! - [`ssh`]: SSH with pinned host keys, uploads, the control protocol.
//! - [`mux`]: kept connections, so that the next command needs no login.
//! - [`prompt_ack`]: prompt TCP acknowledgements on the SSH socket (Linux).
//! - [`cluster`]: signing and delivering events; copying logs between nodes.
//! - [`machine`]: `maki machine init|list|add|remove`.
//! - [`rollout`]: `maki machine upgrade|restart`: one machine at a time,
//!   handed over without dropping a connection, behind a health gate,
//!   rolled back when it fails.
//! - [`commands`]: `maki log`, `maki config`, `maki operator`.
//! - [`completions`]: `maki completions SHELL` and `maki man`.
//! - [`dashboard`]: `maki dashboard`, a read-only status page on this machine.
//! - [`mesh`]: the peers projection as a node shows it; free mesh addresses.
//! - [`peer`]: `maki peer …`, WireGuard peers outside the cluster.
//! - [`prompt`]: yes/no questions on a terminal.
//! - [`health`]: `maki health`: every node checked, and from every node.
//! - [`certs`]: `maki certs`, `maki certs renew`.
//! - [`dns`]: `maki dns nameserver-setup`.
//! - [`geoip`]: the DB-IP database: where a machine is; `maki geoip
//!   update`, which hands it to the cluster as content.
//! - [`sync`]: `maki sync`.
//! - [`sites`]: `maki sites`, `maki rollback`, `maki diff`.
//! - [`local`]: `maki local …`.
//! - [`wit`]: `maki wasm fetch`, the WIT packages embedded in the CLI.
//!
//! From the crate's library (`lib.rs`), so that they can be fuzzed:
//! `project` (`makiatto.toml`, validated: `maki config check`) and `tree`
//! (a domain's files as a manifest, hashed in parallel and cached).

mod certs;
mod cluster;
mod commands;
mod completions;
mod dashboard;
mod dns;
mod geoip;
mod health;
mod local;
mod machine;
mod mesh;
mod mux;
mod operator;
mod peer;
mod profile;
mod prompt;
mod prompt_ack;
mod rollout;
mod sites;
mod ssh;
mod sync;
mod wit;

use makiatto_cli::{project, tree};

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use makiatto_events::payload::Ipv4Net;
use makiatto_events::{PeerName, WgPublicKey};
use makiatto_protocol::log::LogFilter;

const ABOUT: &str = "Makiatto: a self-hosted global CDN";
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\nIP geolocation by DB-IP (https://db-ip.com), DB-IP Lite City, licensed CC BY 4.0."
);

#[derive(Parser)]
#[command(name = "maki", version, long_version = LONG_VERSION, about = ABOUT)]
struct Cli {
    /// The profile to use (else MAKIATTO_PROFILE, else ~/.config/makiatto/default.toml).
    #[arg(long, global = true)]
    profile: Option<PathBuf>,
    /// The operator key (else MAKIATTO_OPERATOR_KEY, else ~/.config/makiatto/operator.key).
    #[arg(long, global = true)]
    operator_key: Option<PathBuf>,
    /// The SSH private key to log in with (else ~/.ssh/id_ed25519).
    #[arg(long, global = true, env = "MAKIATTO_SSH_KEY")]
    ssh_priv_key: Option<PathBuf>,
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand)]
enum Top {
    /// Initialise, list, upgrade and remove machines.
    Machine {
        #[command(subcommand)]
        command: MachineCmd,
    },
    /// The cluster's event log, as a node holds it.
    Log {
        /// Which node to ask (default: the first that answers).
        #[arg(long)]
        node: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        filter: LogFilter,
        /// Keep printing new events.
        #[arg(long)]
        follow: bool,
    },
    /// Cluster-wide settings.
    Config {
        #[command(subcommand)]
        command: ConfigCmd,
    },
    /// Who may operate the cluster.
    Operator {
        #[command(subcommand)]
        command: OperatorCmd,
    },
    /// Publish makiatto.toml and the domains' files to the cluster.
    Sync {
        /// The project file.
        #[arg(long, default_value = project::FILE_NAME)]
        file: PathBuf,
        /// Only these domains (repeat for several).
        #[arg(long = "domain", value_name = "NAME")]
        domains: Vec<String>,
        /// Why, shown in `maki log`.
        #[arg(long, short)]
        message: Option<String>,
        /// Show what would be published and uploaded; send nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Each domain's live version and its history.
    Sites {
        #[arg(long)]
        json: bool,
    },
    /// Make an earlier version of a domain live again (a new signed event).
    Rollback {
        domain: String,
        /// The version: its number in `maki sites`, an event id prefix, or
        /// an RFC 3339 time (default: the version before the live one).
        #[arg(long, value_name = "VERSION|EVENT-ID|TIME")]
        to: Option<String>,
        /// Why, shown in `maki log`.
        #[arg(long, short)]
        message: Option<String>,
    },
    /// Paths added, changed and removed between two versions (default: the
    /// one before the live version, and the live version).
    Diff {
        domain: String,
        from: Option<String>,
        to: Option<String>,
    },
    /// Keeps a connection to a machine for the commands that follow
    /// (started by `maki` itself; see MAKIATTO_SSH_PERSIST).
    #[command(name = "__keep", hide = true)]
    Keep { machine: String },
    /// Check every machine, and every node from every node: SSH, daemon,
    /// mesh, replication lag, log verification, DNS (serials, geo
    /// decisions), HTTPS and certificates, blobs, disk, memory, clocks and
    /// the GeoIP database. Exit status: 0 healthy, 1 warnings, 2 failures.
    Health {
        #[arg(long)]
        json: bool,
        /// Check again every SECS seconds (default 5), redrawing, until
        /// interrupted.
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "5")]
        watch: Option<u64>,
    },
    /// Certificates: names, issuer, expiry and state; force a renewal.
    Certs {
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        command: Option<CertsCmd>,
    },
    /// The GeoIP database the cluster places visitors with.
    Geoip {
        #[command(subcommand)]
        command: GeoipCmd,
    },
    /// DNS: how to point a domain at the cluster's nameservers.
    Dns {
        #[command(subcommand)]
        command: DnsCmd,
    },
    /// WireGuard peers outside the cluster (an observability server, a laptop).
    Peer {
        #[command(subcommand)]
        command: PeerCmd,
    },
    /// WebAssembly components: the interfaces they are built against.
    Wasm {
        #[command(subcommand)]
        command: WasmCmd,
    },
    /// A read-only status page of the cluster, served on this machine
    /// (127.0.0.1 by default): nodes on a world map, the last events,
    /// sites, certificates. Prints its URL, with the token it needs.
    Dashboard {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:7878")]
        listen: std::net::SocketAddr,
        /// Read the cluster again every SECS seconds.
        #[arg(long, value_name = "SECS", default_value_t = 5)]
        refresh: u64,
    },
    /// Shell completions (bash, zsh, fish, elvish, powershell) on
    /// standard output.
    Completions { shell: clap_complete::Shell },
    /// The manual page (roff) on standard output: `maki man | man -l -`.
    Man,
    /// A cluster of test hosts on this machine (Linux, root).
    Local {
        /// Where the cluster's files live.
        #[arg(long, global = true, default_value = "./.makiatto-local")]
        dir: PathBuf,
        /// The cluster's name (several can run at once).
        #[arg(long, global = true, default_value = "local")]
        name: String,
        #[command(subcommand)]
        command: LocalCmd,
    },
}

#[derive(Subcommand)]
enum MachineCmd {
    /// Install the daemon on a machine and admit it to the cluster.
    Init {
        name: String,
        /// user@host
        target: String,
        /// SSH port.
        #[arg(long)]
        port: Option<u16>,
        /// The daemon to install (default: `makiatto` beside `maki`).
        #[arg(long)]
        binary_path: Option<PathBuf>,
        /// Do not make this machine a nameserver.
        #[arg(long)]
        skip_ns: bool,
        /// Make this machine a nameserver even past the first three.
        #[arg(long)]
        force_ns: bool,
        /// Wipe the machine's Makiatto state and initialise it again.
        #[arg(long)]
        recreate: bool,
        #[arg(long, allow_hyphen_values = true, requires = "lon")]
        lat: Option<f64>,
        #[arg(long, allow_hyphen_values = true, requires = "lat")]
        lon: Option<f64>,
        /// Accept the host key with this fingerprint (SHA256:…) without asking.
        #[arg(long, value_name = "FINGERPRINT")]
        accept_host_key: Option<String>,
        /// The mesh range, when this init creates the cluster.
        #[arg(long, value_name = "CIDR")]
        mesh_range: Option<Ipv4Net>,
        /// The ACME CA, when this init creates the cluster: none, letsencrypt,
        /// letsencrypt-staging or a directory URL.
        #[arg(long)]
        acme: Option<String>,
        /// The cluster's name, when this init creates it.
        #[arg(long)]
        cluster_name: Option<String>,
        /// The GeoIP database directory (default: ~/.cache/makiatto/geoip).
        #[arg(long, env = "MAKIATTO_GEOIP_DIR")]
        geoip_dir: Option<PathBuf>,
    },
    /// Add an existing node of the cluster to this profile.
    Add {
        /// user@host
        target: String,
        #[arg(long)]
        port: Option<u16>,
        /// Accept the host key with this fingerprint (SHA256:…) without asking.
        #[arg(long, value_name = "FINGERPRINT")]
        accept_host_key: Option<String>,
    },
    /// List the machines and whether they are healthy.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Replace the daemon, one machine at a time: each hands its sockets
    /// over to the new binary (no connection dropped), must pass a health
    /// gate (DNS, HTTPS, caught up), and gets its previous binary back if
    /// it does not (the rollout stops there).
    Upgrade {
        names: Vec<String>,
        #[arg(long)]
        binary_path: Option<PathBuf>,
    },
    /// Restart the daemon, one machine at a time, handing its sockets
    /// over (no connection dropped), each behind the health gate.
    Restart { names: Vec<String> },
    /// Remove a machine from the cluster and wipe it.
    Remove {
        name: String,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Show the cluster-wide settings.
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Set one cluster-wide setting (dns.geo_ttl, dns.nearest, acme.*, sites.keep_versions, log.max_clock_skew, images.*, work.queue, wasm.*, geoip.database; `maki config show` lists them).
    Set { key: String, value: String },
    /// Validate makiatto.toml (domains, records, functions, transforms,
    /// \[o11y\]) without sending anything.
    Check {
        /// The project file.
        #[arg(long, default_value = project::FILE_NAME)]
        file: PathBuf,
        /// Print the configuration it would send (env values by name only).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum OperatorCmd {
    /// Print this operator's public key.
    Key,
    /// Allow another operator key to run the cluster.
    Add { name: String, pubkey: String },
    /// Revoke an operator.
    Remove { name: String },
    /// List the operators.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum CertsCmd {
    /// Order a new certificate for NAME now.
    Renew { name: String },
}

#[derive(Subcommand)]
enum WasmCmd {
    /// Write the WIT packages of this maki's version (makiatto:http,
    /// makiatto:transform) to a directory; nothing is downloaded.
    Fetch {
        /// Where to write them.
        #[arg(long, default_value = "./wit")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum GeoipCmd {
    /// Hand the local DB-IP database (scripts/fetch-geoip.sh) to the
    /// cluster: stored on one node, named in the log, fetched by every
    /// other node over the mesh and swapped in live.
    Update {
        /// Where the database is (default: MAKIATTO_GEOIP_DIR, else
        /// ~/.cache/makiatto/geoip).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DnsCmd {
    /// Print the glue records and nameserver names to give your registrar.
    NameserverSetup {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PeerCmd {
    /// Register a peer and give it a mesh address.
    Add {
        /// Its name; one that starts or ends with "o11y" receives telemetry.
        name: PeerName,
        /// Its public key, as `wg pubkey` prints it.
        #[arg(long, value_name = "KEY", value_parser = peer::parse_wg_key)]
        wg_pubkey: WgPublicKey,
        /// Its public address or host name, not its WireGuard address
        /// (port 51880 unless given).
        #[arg(long, value_name = "HOST[:PORT]")]
        endpoint: peer::Endpoint,
        /// The mesh address it should hold (default: the lowest free one).
        #[arg(long, value_name = "ADDR")]
        wg_address: Option<Ipv4Addr>,
    },
    /// Print the peer's wg-quick configuration (all nodes as its peers).
    WgConfig { name: PeerName },
    /// Remove a peer from the mesh.
    Remove {
        name: PeerName,
        #[arg(long)]
        force: bool,
    },
    /// List the peers.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum LocalCmd {
    /// Print the path of the local ACME CA's (pebble's) current issuing
    /// root, for `curl --cacert`.
    Ca,
    /// Create test hosts and initialise a node on each over SSH.
    Up {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[arg(long)]
        binary_path: Option<PathBuf>,
        /// Then `maki sync` this project to the new cluster
        /// (scripts/demo.sh passes examples/makiatto.toml).
        #[arg(long, value_name = "MAKIATTO_TOML")]
        sync: Option<PathBuf>,
        /// No local ACME CA (pebble): the nodes order no certificates and
        /// serve self-signed ones.
        #[arg(long)]
        no_ca: bool,
    },
    /// Remove everything `up` made.
    Down,
    /// Each host's addresses, namespace, daemon and state.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Run a command inside a host.
    Exec {
        node: String,
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Pull a host's cable (or, with --mesh, cut only node-to-node traffic).
    Cut {
        node: String,
        #[arg(long)]
        mesh: bool,
    },
    /// Reconnect one host, or all.
    Heal { node: Option<String> },
    /// SIGKILL a host's daemon and supervisor (it stays down).
    Kill { node: String },
    /// Boot a killed host's daemon again.
    Start { node: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn ctx(cli: &Cli) -> anyhow::Result<cluster::Ctx> {
    let profile_path = profile::resolve_path(cli.profile.as_deref())?;
    Ok(cluster::Ctx {
        profile: profile::Profile::load(&profile_path)?,
        profile_path,
        operator_key_path: operator::resolve_key_path(cli.operator_key.as_deref())?,
        ssh_key: cli.ssh_priv_key.clone(),
    })
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Top::Machine { command } => {
            let mut ctx = ctx(&cli)?;
            match command {
                MachineCmd::Init {
                    name,
                    target,
                    port,
                    binary_path,
                    skip_ns,
                    force_ns,
                    recreate,
                    lat,
                    lon,
                    accept_host_key,
                    mesh_range,
                    acme,
                    cluster_name,
                    geoip_dir,
                } => {
                    let mut target: profile::SshTarget =
                        target.parse().map_err(|e: String| anyhow::anyhow!(e))?;
                    if let Some(p) = port {
                        target.port = *p;
                    }
                    machine::init(
                        &mut ctx,
                        machine::InitArgs {
                            name: name.clone(),
                            target,
                            binary_path: binary_path.clone(),
                            skip_ns: *skip_ns,
                            force_ns: *force_ns,
                            recreate: *recreate,
                            coordinates: lat.zip(*lon),
                            accept_host_key: accept_host_key.clone(),
                            mesh_range: *mesh_range,
                            acme: acme.clone(),
                            cluster_name: cluster_name.clone(),
                            geoip_dir: geoip_dir.clone().or_else(geoip::default_dir),
                            warn_geoip: true,
                        },
                    )
                    .await?;
                }
                MachineCmd::Add {
                    target,
                    port,
                    accept_host_key,
                } => {
                    let mut target: profile::SshTarget =
                        target.parse().map_err(|e: String| anyhow::anyhow!(e))?;
                    if let Some(p) = port {
                        target.port = *p;
                    }
                    machine::add(&mut ctx, target, accept_host_key.as_deref()).await?;
                }
                MachineCmd::List { json } => {
                    if !machine::list(&ctx, *json).await? {
                        return Ok(ExitCode::FAILURE);
                    }
                }
                MachineCmd::Upgrade { names, binary_path } => {
                    rollout::upgrade(&ctx, names, binary_path.as_deref()).await?
                }
                MachineCmd::Restart { names } => rollout::restart(&ctx, names).await?,
                MachineCmd::Remove { name, force } => {
                    machine::remove(&mut ctx, name, *force).await?
                }
            }
        }
        Top::Log {
            node,
            json,
            filter,
            follow,
        } => {
            let ctx = ctx(&cli)?;
            commands::log(
                &ctx,
                commands::LogArgs {
                    node: node.clone(),
                    json: *json,
                    filter: filter.clone(),
                    follow: *follow,
                },
            )
            .await?;
        }
        Top::Config { command } => match command {
            ConfigCmd::Check { file, json } => {
                if !project::check(file, *json)? {
                    return Ok(ExitCode::FAILURE);
                }
            }
            ConfigCmd::Show { json } => commands::config_show(&ctx(&cli)?, *json).await?,
            ConfigCmd::Set { key, value } => commands::config_set(&ctx(&cli)?, key, value).await?,
        },
        Top::Operator { command } => {
            let ctx = ctx(&cli)?;
            match command {
                OperatorCmd::Key => commands::operator_key(&ctx)?,
                OperatorCmd::Add { name, pubkey } => {
                    commands::operator_change(&ctx, Some((name, pubkey)), None).await?
                }
                OperatorCmd::Remove { name } => {
                    commands::operator_change(&ctx, None, Some(name)).await?
                }
                OperatorCmd::List { json } => commands::operator_list(&ctx, *json).await?,
            }
        }
        Top::Sync {
            file,
            domains,
            message,
            dry_run,
        } => {
            let ctx = ctx(&cli)?;
            sync::sync(
                &ctx,
                sync::SyncArgs {
                    file: file.clone(),
                    domains: domains.clone(),
                    message: message.clone(),
                    dry_run: *dry_run,
                },
            )
            .await?;
        }
        Top::Sites { json } => sites::list(&ctx(&cli)?, *json).await?,
        Top::Rollback {
            domain,
            to,
            message,
        } => sites::rollback(&ctx(&cli)?, domain, to.as_deref(), message.clone()).await?,
        Top::Diff { domain, from, to } => {
            sites::diff(&ctx(&cli)?, domain, from.as_deref(), to.as_deref()).await?
        }
        Top::Keep { machine } => ctx(&cli)?.keep(machine).await?,
        Top::Completions { shell } => completions::completions(
            *shell,
            &mut <Cli as clap::CommandFactory>::command(),
            &mut std::io::stdout(),
        ),
        Top::Man => completions::man(
            <Cli as clap::CommandFactory>::command(),
            &mut std::io::stdout().lock(),
        )?,
        Top::Dashboard { listen, refresh } => {
            let args = dashboard::Args {
                listen: *listen,
                refresh: std::time::Duration::from_secs((*refresh).max(1)),
            };
            dashboard::dashboard(ctx(&cli)?, args).await?
        }
        Top::Health { json, watch } => {
            let ctx = ctx(&cli)?;
            let args = health::Args {
                json: *json,
                watch: watch.map(|s| std::time::Duration::from_secs(s.max(1))),
            };
            return Ok(ExitCode::from(health::health(&ctx, args).await?));
        }
        Top::Certs { json, command } => match command {
            None => certs::list(&ctx(&cli)?, *json).await?,
            Some(CertsCmd::Renew { name }) => certs::renew(&ctx(&cli)?, name).await?,
        },
        Top::Wasm {
            command: WasmCmd::Fetch { dir },
        } => wit::fetch(dir)?,
        Top::Geoip {
            command: GeoipCmd::Update { dir },
        } => geoip::update(&ctx(&cli)?, dir.as_deref()).await?,
        Top::Dns {
            command: DnsCmd::NameserverSetup { json },
        } => dns::nameserver_setup(&ctx(&cli)?, *json).await?,
        Top::Peer { command } => {
            let ctx = ctx(&cli)?;
            match command {
                PeerCmd::Add {
                    name,
                    wg_pubkey,
                    endpoint,
                    wg_address,
                } => {
                    peer::add(
                        &ctx,
                        peer::AddArgs {
                            name: name.clone(),
                            key: *wg_pubkey,
                            endpoint: endpoint.clone(),
                            wg_address: *wg_address,
                        },
                    )
                    .await?
                }
                PeerCmd::WgConfig { name } => peer::show_wg_config(&ctx, name).await?,
                PeerCmd::Remove { name, force } => peer::remove(&ctx, name, *force).await?,
                PeerCmd::List { json } => peer::list(&ctx, *json).await?,
            }
        }
        Top::Local { dir, name, command } => {
            let w = local::Where {
                dir: dir.clone(),
                name: name.clone(),
            };
            match command {
                LocalCmd::Up {
                    nodes,
                    binary_path,
                    sync: project,
                    no_ca,
                } => {
                    local::up(&w, *nodes, binary_path.as_deref(), !*no_ca).await?;
                    if let Some(file) = project {
                        local::build_components(file)?;
                        let args = sync::SyncArgs {
                            file: file.clone(),
                            domains: Vec::new(),
                            message: Some("maki local up".into()),
                            dry_run: false,
                        };
                        sync::sync(&local::ctx(&w)?, args).await?;
                    }
                }
                LocalCmd::Down => local::down(&w)?,
                LocalCmd::Ca => local::ca(&w)?,
                LocalCmd::Status { json } => local::status(&w, *json)?,
                LocalCmd::Exec { node, command } => {
                    let code = local::exec(&w, node, command)?;
                    return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
                }
                LocalCmd::Cut { node, mesh } => local::cable(&w, Some(node), false, *mesh)?,
                LocalCmd::Heal { node } => local::cable(&w, node.as_deref(), true, false)?,
                LocalCmd::Kill { node } => local::kill(&w, node)?,
                LocalCmd::Start { node } => {
                    local::start(&w, node).context("starting the daemon")?
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
