//! The `makiatto` command line: every subcommand, parsed (clap) and
//! carried out by the modules it names. `main.rs` only calls [`main`].

use crate::{blobs, control, daemon, dns, gossip, handover, http, images, keys, replica, service};
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use makiatto_projections::ProjectionName;
use makiatto_protocol::append::Outcome;
use makiatto_protocol::log::{LogFilter, LogLine};
use makiatto_protocol::request as op;
use makiatto_protocol::status::Status;
use makiatto_protocol::{Answer, ControlError, Envelope, Operation, Request};

#[derive(Parser)]
#[command(name = "makiatto", version, about = "The Makiatto CDN node daemon")]
struct Cli {
    /// The node's data directory.
    #[arg(
        long,
        global = true,
        env = "MAKIATTO_DATA_DIR",
        default_value = "/var/makiatto"
    )]
    data_dir: PathBuf,
    /// Where pid files live.
    #[arg(
        long,
        global = true,
        env = "MAKIATTO_RUN_DIR",
        default_value = "/run/makiatto"
    )]
    run_dir: PathBuf,
    /// The DNS port (UDP and TCP); 0 serves no DNS.
    #[arg(long, global = true, env = "MAKIATTO_DNS_PORT", default_value_t = 53)]
    dns_port: u16,
    /// The DNS-over-TLS port; 0 serves none.
    #[arg(long, global = true, env = "MAKIATTO_DOT_PORT", default_value_t = 853)]
    dot_port: u16,
    /// The HTTP port; 0 serves none.
    #[arg(long, global = true, env = "MAKIATTO_HTTP_PORT", default_value_t = 80)]
    http_port: u16,
    /// The HTTPS port; 0 serves none.
    #[arg(
        long,
        global = true,
        env = "MAKIATTO_HTTPS_PORT",
        default_value_t = 443
    )]
    https_port: u16,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node daemon (in the foreground, or supervised in the background).
    Run {
        /// Start a supervisor in the background that keeps the daemon running.
        #[arg(long)]
        detach: bool,
    },
    /// Stop the daemon started with `run --detach`.
    Stop,
    /// Hand the running daemon's sockets over to a binary (default: the
    /// one at the path it was started from, so a restart runs what is
    /// there now) without closing any: an upgrade or restart that drops
    /// nothing. Waits until the new image serves.
    Reload {
        /// The binary to run from now on.
        #[arg(long)]
        binary: Option<PathBuf>,
    },
    /// Print this binary's version and whether it takes sockets over (the
    /// check a handover makes of the binary it hands over to).
    #[command(hide = true)]
    HandoverCheck,
    /// Install the service: a hardened systemd unit where systemd runs.
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
    },
    #[command(hide = true)]
    Supervise,
    /// The node's keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Speak the control protocol on standard input and output (one JSON
    /// request per line), for `maki` over SSH.
    #[command(hide = true)]
    Control,
    /// List the events of the log, oldest first.
    Log {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        filter: LogFilter,
    },
    /// Show a projection: peers, roles, config, zones, certificates or sites.
    Show {
        name: String,
        #[arg(long, value_name = "ID|TIME")]
        at: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Re-check every event and rebuild every projection; exit 0 only if all agree.
    Verify {
        #[arg(long)]
        json: bool,
    },
    /// Counts of events held, waiting and rejected.
    Status,
    /// Append events read from standard input, one hex-encoded event per line.
    Append,
    /// The health table: every peer's liveness, load, mesh handshake and
    /// replication state, as this node sees it (needs the running daemon).
    Health {
        #[arg(long)]
        json: bool,
    },
    /// The content-addressed blob store (for `maki sync`).
    #[command(hide = true)]
    Blobs {
        #[command(subcommand)]
        command: BlobsCommand,
    },
    /// Make one rendition of an image file as the edge would for these
    /// parameters (`w=800&fmt=webp&q=85`), with the default limits; writes
    /// it to standard output, or with `--repeat`, times that many and
    /// prints the time per image (the image benchmark uses this).
    Image {
        file: PathBuf,
        query: String,
        /// As the request's Accept header (for fmt=auto).
        #[arg(long)]
        accept: Option<String>,
        #[arg(long)]
        repeat: Option<u32>,
    },
    /// Tools for tests that play a misbehaving peer.
    #[command(hide = true)]
    Debug {
        #[command(subcommand)]
        command: DebugCommand,
    },
}

#[derive(Subcommand)]
enum BlobsCommand {
    /// Store the blobs streamed on standard input (each: 32-byte blake3
    /// hash, 8-byte big-endian size, the bytes), verifying every one;
    /// prints a JSON report.
    Receive,
    /// Print which of the hex hashes on standard input (one per line) are
    /// not stored.
    Missing,
    /// Write a stored blob to standard output.
    Get {
        hash: String,
        /// As hex (for callers that read text).
        #[arg(long)]
        hex: bool,
    },
}

#[derive(Subcommand)]
enum DebugCommand {
    /// Send hex events read from standard input (one per line) to a peer's
    /// replication port, as this node, unchecked.
    SendEvents {
        /// The peer's mesh address.
        #[arg(long)]
        to: std::net::Ipv4Addr,
    },
    /// Flood a peer's replication port as this node: CONNECTIONS sessions
    /// at once, each asking for the whole log, opened again as each ends,
    /// for SECONDS; prints what came back as JSON.
    FloodSessions {
        /// The peer's mesh address.
        #[arg(long)]
        to: std::net::Ipv4Addr,
        #[arg(long, default_value_t = 32)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
}

#[derive(Subcommand)]
enum ServiceCommand {
    /// Write and enable the systemd unit (nothing to do without systemd).
    Install {
        /// Print the unit instead of installing it.
        #[arg(long)]
        print: bool,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Make the node's keys if they are missing, and print the public halves.
    Init {
        /// Replace existing keys (the node then joins as a new member).
        #[arg(long)]
        recreate: bool,
    },
    /// Print the public halves of the node's keys.
    Show,
}

/// Parses the command line, sets up logging and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // The console, and beside it the OTLP log export (off until the
    // daemon finds a collector).
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::EnvFilter::try_from_env("MAKIATTO_LOG")
                .unwrap_or_else(|_| "info,fjall=warn,lsm_tree=warn".into()),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr),
        )
        .with(crate::telemetry::logs::Layer)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let data_dir = cli.data_dir.clone();
    match cli.command {
        Command::Run { detach: true } => {
            service::start_detached(&data_dir, &cli.run_dir)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { detach: false } => {
            // Sockets an earlier image of this process handed over, and
            // the way back to it should this binary fail to start.
            let sockets = std::sync::Arc::new(handover::Sockets::inherit());
            handover::arm_fallback(&sockets);
            let origin = handover::Origin::from_env();
            let started = (|| {
                let prepared = daemon::prepare(&data_dir)?;
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()?;
                let ports = dns::server::Ports {
                    dns: cli.dns_port,
                    dot: cli.dot_port,
                };
                let web = http::server::Ports {
                    http: cli.http_port,
                    https: cli.https_port,
                };
                let handover = std::sync::Arc::new(handover::Handover::new(sockets, origin));
                runtime.block_on(daemon::run(data_dir, prepared, ports, web, handover))
            })();
            if let Err(e) = &started {
                handover::fall_back(&format!("{e:#}"));
            }
            started?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Reload { binary } => {
            service::reload(&data_dir, binary.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::HandoverCheck => {
            println!(
                "{}",
                serde_json::to_string(&makiatto_protocol::Version::ours())?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Supervise => {
            service::supervise(&data_dir, &cli.run_dir)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Service {
            command: ServiceCommand::Install { print },
        } => {
            service::install(&data_dir, print)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Stop => {
            service::stop(&cli.run_dir)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys { command } => {
            let keys = match command {
                KeysCommand::Init { recreate } => {
                    keys::NodeKeys::load_or_create(&data_dir, recreate)?
                }
                KeysCommand::Show => keys::NodeKeys::load(&data_dir)?,
            };
            println!("{}", serde_json::to_string(&keys.public())?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Control => {
            // One session may carry many requests (`maki` keeps it open for
            // a whole command): each line is answered as it arrives. Blob
            // requests are answered here, from the store; the rest by the
            // daemon (or the data directory when none runs).
            let mut store = None;
            for line in std::io::stdin().lock().lines() {
                let line = line.context("cannot read standard input")?;
                let answer = match control::read_request(line.as_bytes()) {
                    Err(e) => Answer::Error(e),
                    Ok(envelope)
                        if matches!(
                            envelope.request,
                            Request::BlobsMissing(_) | Request::BlobsPut(_)
                        ) =>
                    {
                        match blob_store(&data_dir, &mut store) {
                            Ok(store) => control::answer_blobs(store, envelope.request),
                            Err(e) => Answer::Error(ControlError::failed(format!("{e:#}"))),
                        }
                    }
                    Ok(envelope) => answer(&data_dir, envelope)
                        .unwrap_or_else(|e| Answer::Error(ControlError::failed(format!("{e:#}")))),
                };
                println!("{}", answer.to_line());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Log { json, filter } => {
            for line in ask(&data_dir, op::Log { filter })? {
                if json {
                    println!("{}", serde_json::to_string(&line)?);
                } else {
                    println!("{}", LogLine::render(&line));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Show { name, at, json } => {
            let name = ProjectionName::parse(&name).with_context(|| {
                let known: Vec<&str> = ProjectionName::ALL.iter().map(|p| p.as_str()).collect();
                format!(
                    "unknown projection {name:?}; projections are: {}",
                    known.join(", ")
                )
            })?;
            let shown = ask(&data_dir, op::Show { name, at })?;
            if json {
                println!("{}", serde_json::to_string(&shown)?);
            } else {
                println!("{name} (fingerprint {})", shown.fingerprint);
                println!("{}", serde_json::to_string_pretty(&shown.state)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { json } => {
            let report = ask(&data_dir, op::Verify {})?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("checked {} events", report.events);
                for (name, fp) in &report.fingerprints {
                    println!("  {name:<13} {fp}");
                }
                for p in &report.problems {
                    println!("PROBLEM: {p}");
                }
                if report.problems.is_empty() {
                    println!(
                        "ok: every signature, id and chain verifies, and every projection matches a rebuild"
                    );
                }
            }
            Ok(if report.problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Status => {
            let (daemon, supervisor) = service::pids(&cli.run_dir);
            let status = if data_dir.join("log").exists() || daemon.is_some() {
                ask(&data_dir, op::GetStatus {})?
            } else {
                Status::default()
            };
            // Running means answering, not merely having a pid.
            let running =
                std::os::unix::net::UnixStream::connect(daemon::socket_path(&data_dir)).is_ok();
            // What the daemon places visitors with (only it knows).
            let geoip = running
                .then(|| ask(&data_dir, op::Health {}).ok())
                .flatten()
                .and_then(|h| h.dns)
                .and_then(|d| d.geoip_database);
            if let Some(p) = geoip.as_ref().and_then(|g| g.problem.as_deref()) {
                eprintln!("warning: {p}");
            }
            let shown = makiatto_protocol::status::NodeStatus {
                status,
                daemon_pid: daemon.map(|p| p.as_raw()),
                supervisor_pid: supervisor.map(|p| p.as_raw()),
                running,
                geoip,
            };
            println!("{}", serde_json::to_string_pretty(&shown)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Health { json } => {
            let report = ask(&data_dir, op::Health {})?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print_health(&report);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Blobs { command } => {
            let store = blobs::BlobStore::open(&data_dir)
                .with_context(|| format!("cannot open the blob store in {}", data_dir.display()))?;
            match command {
                BlobsCommand::Receive => {
                    let announce = announcer(daemon::socket_path(&data_dir));
                    let report =
                        store.receive_announcing(&mut blobs::stdin_stream(), |hashes| {
                            let _ = announce.0.send(hashes);
                        })?;
                    drop(announce.0);
                    let _ = announce.1.join();
                    println!("{}", serde_json::to_string(&report)?);
                    if !report.refused.is_empty() {
                        return Ok(ExitCode::FAILURE);
                    }
                }
                BlobsCommand::Get { hash, hex } => {
                    let path = store.path(&blobs::parse_hash(&hash)?);
                    let data = std::fs::read(&path)
                        .with_context(|| format!("blob {hash} is not stored here"))?;
                    let mut stdout = std::io::stdout().lock();
                    if hex {
                        writeln!(stdout, "{}", hex::encode(&data))?;
                    } else {
                        stdout.write_all(&data)?;
                    }
                }
                BlobsCommand::Missing => {
                    let mut hashes = Vec::new();
                    for line in std::io::stdin().lock().lines() {
                        let line = line?;
                        let line = line.trim();
                        if line.is_empty() {
                            continue;
                        }
                        hashes.push(blobs::parse_hash(line)?);
                    }
                    for h in store.missing(&hashes) {
                        println!("{}", h.to_hex());
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Image {
            file,
            query,
            accept,
            repeat,
        } => {
            images::render_file(&file, &query, accept.as_deref(), repeat)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Debug {
            command: DebugCommand::SendEvents { to },
        } => {
            let keys = keys::NodeKeys::load(&data_dir)?;
            let cluster = ask(&data_dir, op::GetStatus {})?
                .cluster
                .context("the node has no cluster yet")?;
            let mut input = String::new();
            std::io::stdin().lock().read_to_string(&mut input)?;
            let events = input
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| hex::decode(l.trim()).context("not hexadecimal"))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let vv = ask(&data_dir, op::GetVersionVector {})?;
            runtime.block_on(gossip::send_raw(
                keys.signing.public(),
                cluster,
                vv,
                to,
                events,
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Debug {
            command:
                DebugCommand::FloodSessions {
                    to,
                    connections,
                    seconds,
                },
        } => {
            let keys = keys::NodeKeys::load(&data_dir)?;
            let cluster = ask(&data_dir, op::GetStatus {})?
                .cluster
                .context("the node has no cluster yet")?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let flood = runtime.block_on(gossip::flood_sessions(
                keys.signing.public(),
                cluster,
                to,
                connections,
                seconds,
            ))?;
            println!("{}", serde_json::to_string(&flood)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Append => {
            let mut input = String::new();
            std::io::stdin()
                .lock()
                .read_to_string(&mut input)
                .context("cannot read standard input")?;
            let events: Vec<String> = input
                .as_bytes()
                .lines()
                .map_while(Result::ok)
                .filter(|l| !l.trim().is_empty())
                .collect();
            let results = ask(&data_dir, op::Append { events })?;
            // Every event newly taken, or it fails: a replay is refused
            // here as much as a forgery (the line says which).
            let mut all_ok = true;
            for r in &results {
                all_ok &= matches!(r.outcome, Outcome::Stored | Outcome::Waiting);
                println!("{}", serde_json::to_string(r)?);
            }
            Ok(if all_ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// Asks the running daemon, or answers from the data directory when no
/// daemon runs; the answer decoded as the operation's own output.
/// Tells the running daemon (on `socket`) of each batch of blobs as
/// `makiatto blobs receive` commits it, on a thread of its own so the
/// stream never waits for it; the daemon has its peers fetch them while
/// the upload goes on. No daemon (or an older one): the blobs reach the
/// peers after their event, as before, so failures are only logged.
fn announcer(
    socket: PathBuf,
) -> (
    std::sync::mpsc::Sender<Vec<makiatto_events::Blake3Hash>>,
    std::thread::JoinHandle<()>,
) {
    let (tx, rx) = std::sync::mpsc::channel::<Vec<makiatto_events::Blake3Hash>>();
    let thread = std::thread::spawn(move || {
        let mut answering = true;
        for hashes in rx {
            if !answering {
                continue;
            }
            let call = control::call(&socket, &Envelope::ours(op::BlobsArrived { hashes }));
            if let Err(e) = call
                .map_err(anyhow::Error::from)
                .and_then(|a| a.decode::<u64>().map_err(anyhow::Error::from))
            {
                tracing::debug!(error = %format!("{e:#}"), "the daemon was not told of blobs received; its peers fetch them after the event");
                answering = false;
            }
        }
    });
    (tx, thread)
}

fn ask<O: Operation>(data_dir: &Path, operation: O) -> anyhow::Result<O::Output> {
    Ok(answer(data_dir, Envelope::ours(operation))?.decode::<O::Output>()?)
}

/// The answer to one request: from the daemon's socket, or from the data
/// directory when no daemon runs.
fn answer(data_dir: &Path, envelope: Envelope) -> anyhow::Result<Answer> {
    let socket = daemon::socket_path(data_dir);
    match control::call(&socket, &envelope) {
        Ok(answer) => Ok(answer),
        Err(_)
            if !data_dir.join("log").exists()
                && !matches!(envelope.request, Request::Append(_)) =>
        {
            bail!(
                "{} holds no Makiatto log (is this the right --data-dir?)",
                data_dir.display()
            )
        }
        Err(_) => match replica::Replica::open(data_dir) {
            Ok(replica) => Ok(control::execute(
                &Mutex::new(replica),
                &control::Direct,
                envelope,
            )),
            // Held by a daemon that is starting (it opens the log before
            // its socket) or restarting on its own, as after a full disk:
            // its answer is the one wanted.
            Err(e) => wait_for_daemon(&socket, &envelope, DAEMON_STARTING).with_context(|| {
                format!(
                    "no daemon answers on {} and the log cannot be opened ({e:#})",
                    socket.display()
                )
            }),
        },
    }
}

/// How long a read command waits for a daemon that holds the log but does
/// not answer yet.
const DAEMON_STARTING: std::time::Duration = std::time::Duration::from_secs(30);

/// Asks the daemon on `socket` until it answers, for `within` at most.
fn wait_for_daemon(
    socket: &Path,
    envelope: &Envelope,
    within: std::time::Duration,
) -> anyhow::Result<Answer> {
    let deadline = std::time::Instant::now() + within;
    loop {
        match control::call(socket, envelope) {
            Ok(answer) => return Ok(answer),
            Err(e) if std::time::Instant::now() >= deadline => {
                bail!("no daemon answered within {} s: {e}", within.as_secs())
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(200)),
        }
    }
}

/// The blob store, opened on first use.
fn blob_store<'a>(
    data_dir: &Path,
    store: &'a mut Option<blobs::BlobStore>,
) -> anyhow::Result<&'a blobs::BlobStore> {
    match store {
        Some(s) => Ok(s),
        None => Ok(store
            .insert(blobs::BlobStore::open(data_dir).with_context(|| {
                format!("cannot open the blob store in {}", data_dir.display())
            })?)),
    }
}

/// The health table as text.
fn print_health(v: &makiatto_protocol::health::HealthReport) {
    println!(
        "{} ({}): {} events",
        v.node.as_deref().unwrap_or("?"),
        v.mesh_addr.as_deref().unwrap_or("no mesh address"),
        v.events
    );
    for p in &v.peers {
        let state = if p.alive { "up" } else { "DOWN" };
        let sync = match p.in_sync {
            Some(true) => "in sync".to_owned(),
            Some(false) => format!("{} events", p.events.unwrap_or(0)),
            None => "not heard".to_owned(),
        };
        let handshake = p
            .handshake_age_secs
            .map_or("no handshake".to_owned(), |s| format!("handshake {s}s ago"));
        println!(
            "  {:<16} {:<15} {:<5} {:<18} {}",
            p.name, p.mesh_addr, state, sync, handshake
        );
        if let Some(e) = &p.last_error {
            println!("    last replication error: {e}");
        }
    }
    let r = &v.replication;
    println!(
        "  replication: sessions {} ok, {} failed; events {} in, {} out; {} bad",
        r.sessions_ok, r.sessions_failed, r.events_in, r.events_out, r.bad_events
    );
    if let Some(g) = v.dns.as_ref().and_then(|d| d.geoip_database.as_ref()) {
        match &g.loaded {
            Some(l) => println!(
                "  GeoIP: {} built {}{}",
                if l.database_type.is_empty() {
                    "database"
                } else {
                    &l.database_type
                },
                jiff::Timestamp::from_second(l.built_unix_secs as i64).map_or_else(
                    |_| "at an unknown time".to_owned(),
                    |t| t.strftime("%Y-%m-%d").to_string()
                ),
                l.manifest.map_or_else(
                    || " (this node's own copy)".to_owned(),
                    |m| format!(" (manifest {})", m.short())
                )
            ),
            None => println!("  GeoIP: none loaded"),
        }
        if let Some(p) = &g.problem {
            println!("    {p}");
        }
    }
}
