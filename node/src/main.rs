//! `makiatto`, the node daemon, and the commands that read its data directory.
//!
//! # Layout
//! - [`daemon`]: `makiatto run`, the long-running process and its control socket.
//! - [`control`]: the control protocol, shared by the daemon and offline commands.
//! - [`replica`]: this node's log and projections.
//! - [`query`]: `makiatto log` lines and filters.
//!
//! Read commands (`log`, `show`, `verify`, `status`, `append`) go through
//! the running daemon's socket when one answers, and otherwise open the data
//! directory themselves (the store admits one process at a time).

mod acme;
mod blobs;
mod changes;
mod content;
mod control;
mod daemon;
mod dns;
mod gossip;
mod http;
mod keys;
mod liveness;
mod mesh;
mod peer_blobs;
mod privileges;
mod query;
mod replica;
mod service;
mod topology;

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use control::{Request, Response};

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
        /// Only events as of an event (id prefix: its causal past) or a time (RFC 3339).
        #[arg(long, value_name = "ID|TIME")]
        at: Option<String>,
        /// Only events by this author (name or key prefix).
        #[arg(long, value_name = "NAME|KEY")]
        author: Option<String>,
        /// Only events of this kind (genesis, node-joined, site-published, …).
        #[arg(long)]
        kind: Option<String>,
        /// Only the last N events.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
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
}

#[derive(Subcommand)]
enum ServiceCommand {
    /// Write and enable the systemd unit (nothing to do without systemd).
    Install,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MAKIATTO_LOG")
                .unwrap_or_else(|_| "info,fjall=warn,lsm_tree=warn".into()),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
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
            runtime.block_on(daemon::run(data_dir, prepared, ports, web))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Supervise => {
            service::supervise(&data_dir, &cli.run_dir)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Service {
            command: ServiceCommand::Install,
        } => {
            service::install(&data_dir)?;
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
            // a whole command): each line is answered as it arrives.
            let mut store = None;
            for line in std::io::stdin().lock().lines() {
                let line = line.context("cannot read standard input")?;
                let response = if let Ok(blob_req) = serde_json::from_str::<BlobRequest>(&line) {
                    match blob_request(&data_dir, &mut store, blob_req) {
                        Ok(v) => Response::Ok(v),
                        Err(e) => Response::Error(format!("{e:#}")),
                    }
                } else {
                    match serde_json::from_str::<Request>(&line) {
                        Ok(req) => match request(&data_dir, req) {
                            Ok(v) => Response::Ok(v),
                            Err(e) => Response::Error(format!("{e:#}")),
                        },
                        Err(e) => Response::Error(format!("not a valid request: {e}")),
                    }
                };
                println!("{}", serde_json::to_string(&response)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Log {
            json,
            at,
            author,
            kind,
            limit,
        } => {
            let filter = query::LogFilter {
                at,
                author,
                kind,
                limit,
            };
            let value = request(&data_dir, Request::Log { filter })?;
            let lines: Vec<query::LogLine> = serde_json::from_value(value)?;
            for line in lines {
                if json {
                    println!("{}", serde_json::to_string(&line)?);
                } else {
                    println!("{}", line.render());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Show { name, at, json } => {
            let value = request(
                &data_dir,
                Request::Show {
                    name: name.clone(),
                    at,
                },
            )?;
            if json {
                println!("{}", serde_json::to_string(&value)?);
            } else {
                println!(
                    "{name} (fingerprint {})",
                    value["fingerprint"].as_str().unwrap_or("?")
                );
                println!("{}", serde_json::to_string_pretty(&value["state"])?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { json } => {
            let value = request(&data_dir, Request::Verify)?;
            let report: replica_report::Report = serde_json::from_value(value.clone())?;
            if json {
                println!("{}", serde_json::to_string(&value)?);
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
            let mut value = if data_dir.join("log").exists() || daemon.is_some() {
                request(&data_dir, Request::Status)?
            } else {
                serde_json::json!({"events": 0})
            };
            value["daemon_pid"] = serde_json::json!(daemon.map(|p| p.as_raw()));
            value["supervisor_pid"] = serde_json::json!(supervisor.map(|p| p.as_raw()));
            // Running means answering, not merely having a pid.
            let answering =
                std::os::unix::net::UnixStream::connect(daemon::socket_path(&data_dir)).is_ok();
            value["running"] = serde_json::json!(answering);
            println!("{}", serde_json::to_string_pretty(&value)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Health { json } => {
            let value = request(&data_dir, Request::Health)?;
            if json {
                println!("{}", serde_json::to_string(&value)?);
            } else {
                print_health(&value);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Blobs { command } => {
            let store = blobs::BlobStore::open(&data_dir)
                .with_context(|| format!("cannot open the blob store in {}", data_dir.display()))?;
            match command {
                BlobsCommand::Receive => {
                    let report = store.receive(&mut blobs::stdin_stream())?;
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
        Command::Debug {
            command: DebugCommand::SendEvents { to },
        } => {
            let keys = keys::NodeKeys::load(&data_dir)?;
            let status = request(&data_dir, Request::Status)?;
            let cluster: makiatto_events::EventId = status["cluster"]
                .as_str()
                .context("the node has no cluster yet")?
                .parse()
                .context("bad cluster id")?;
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
            let vv = serde_json::from_value(request(&data_dir, Request::VersionVector)?)?;
            runtime.block_on(gossip::send_raw(
                keys.signing.public(),
                cluster,
                vv,
                to,
                events,
            ))?;
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
            let value = request(&data_dir, Request::Append { events })?;
            let results = value.as_array().cloned().unwrap_or_default();
            let mut all_ok = true;
            for r in &results {
                all_ok &= r["outcome"] != "rejected";
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

/// Sends a request to the running daemon, or answers it from the data
/// directory when no daemon runs.
fn request(data_dir: &Path, request: Request) -> anyhow::Result<serde_json::Value> {
    let socket = daemon::socket_path(data_dir);
    let response = match control::call(&socket, &request) {
        Ok(response) => response,
        Err(_) if !data_dir.join("log").exists() && !matches!(request, Request::Append { .. }) => {
            bail!(
                "{} holds no Makiatto log (is this the right --data-dir?)",
                data_dir.display()
            )
        }
        Err(_) => {
            let replica = replica::Replica::open(data_dir).with_context(|| {
                format!(
                    "no daemon answers on {} and the log cannot be opened",
                    socket.display()
                )
            })?;
            control::execute(&Mutex::new(replica), &control::Direct, request)
        }
    };
    match response {
        Response::Ok(value) => Ok(value),
        Response::Error(e) => bail!("{e}"),
    }
}

/// Requests about the blob store, answered by `makiatto control` itself
/// (the store is files under the data directory; the daemon is not asked).
#[derive(serde::Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
enum BlobRequest {
    /// Which of these blobs (hex hashes) are not stored here.
    BlobsMissing { hashes: Vec<String> },
    /// Stores small blobs sent inline (hex), each verified against its
    /// hash, as `makiatto blobs receive` does; answers its report.
    BlobsPut { blobs: Vec<InlineBlob> },
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct InlineBlob {
    hash: String,
    hex: String,
}

/// At most this many bytes of blobs in one `blobs-put` (larger uploads
/// stream through `makiatto blobs receive`).
const INLINE_BLOB_BYTES: usize = 8 << 20;

fn blob_request(
    data_dir: &Path,
    store: &mut Option<blobs::BlobStore>,
    req: BlobRequest,
) -> anyhow::Result<serde_json::Value> {
    let store = match store {
        Some(s) => s,
        None => store
            .insert(blobs::BlobStore::open(data_dir).with_context(|| {
                format!("cannot open the blob store in {}", data_dir.display())
            })?),
    };
    match req {
        BlobRequest::BlobsMissing { hashes } => {
            let hashes = hashes
                .iter()
                .map(|h| blobs::parse_hash(h))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let missing: Vec<String> = store.missing(&hashes).iter().map(|h| h.to_hex()).collect();
            Ok(serde_json::json!(missing))
        }
        BlobRequest::BlobsPut { blobs } => {
            let mut stream = Vec::new();
            for b in &blobs {
                let hash = blobs::parse_hash(&b.hash)?;
                let bytes = hex::decode(&b.hex)
                    .with_context(|| format!("blob {}: its bytes are not hex", b.hash))?;
                stream.extend_from_slice(hash.as_bytes());
                stream.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
                stream.extend_from_slice(&bytes);
                if stream.len() > INLINE_BLOB_BYTES {
                    bail!(
                        "more than {INLINE_BLOB_BYTES} bytes of blobs in one request; stream them with `makiatto blobs receive`"
                    );
                }
            }
            let report = store.receive(&mut &stream[..])?;
            Ok(serde_json::to_value(&report)?)
        }
    }
}

/// The verify report as the CLI reads it back.
mod replica_report {
    #[derive(serde::Deserialize)]
    pub struct Report {
        pub events: usize,
        pub problems: Vec<String>,
        pub fingerprints: Vec<(String, String)>,
    }
}

/// The health table as text.
fn print_health(v: &serde_json::Value) {
    println!(
        "{} ({}): {} events",
        v["node"].as_str().unwrap_or("?"),
        v["mesh_addr"].as_str().unwrap_or("no mesh address"),
        v["events"]
    );
    for p in v["peers"].as_array().into_iter().flatten() {
        let state = if p["alive"].as_bool() == Some(true) {
            "up"
        } else {
            "DOWN"
        };
        let sync = match p["in_sync"].as_bool() {
            Some(true) => "in sync".to_owned(),
            Some(false) => format!("{} events", p["events"]),
            None => "not heard".to_owned(),
        };
        let handshake = p["handshake_age_secs"]
            .as_u64()
            .map_or("no handshake".to_owned(), |s| format!("handshake {s}s ago"));
        println!(
            "  {:<16} {:<15} {:<5} {:<18} {}",
            p["name"].as_str().unwrap_or("?"),
            p["mesh_addr"].as_str().unwrap_or("?"),
            state,
            sync,
            handshake
        );
        if let Some(e) = p["last_error"].as_str() {
            println!("    last replication error: {e}");
        }
    }
    println!("  replication: {}", v["replication"]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use makiatto_events::Blake3Hash;

    fn ask(
        dir: &Path,
        store: &mut Option<blobs::BlobStore>,
        line: &str,
    ) -> anyhow::Result<serde_json::Value> {
        let req: BlobRequest = serde_json::from_str(line)?;
        blob_request(dir, store, req)
    }

    #[test]
    fn control_stores_inline_blobs_verified_and_lists_the_missing() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = None;
        let good = b"<h1>inline</h1>";
        let h = Blake3Hash::of(good).to_hex();
        let other = Blake3Hash::of(b"other").to_hex();
        let missing = ask(
            dir.path(),
            &mut store,
            &format!(r#"{{"op":"blobs-missing","hashes":["{h}","{other}"]}}"#),
        )
        .unwrap();
        assert_eq!(missing, serde_json::json!([h, other]));

        // One blob whose bytes match, one whose bytes do not: the first is
        // kept, the second refused, and the report says so.
        let put = format!(
            r#"{{"op":"blobs-put","blobs":[{{"hash":"{h}","hex":"{}"}},{{"hash":"{other}","hex":"{}"}}]}}"#,
            hex::encode(good),
            hex::encode(b"not other")
        );
        let report = ask(dir.path(), &mut store, &put).unwrap();
        assert_eq!(report["stored"], 1, "{report}");
        assert_eq!(
            report["refused"].as_array().map(Vec::len),
            Some(1),
            "{report}"
        );
        let missing = ask(
            dir.path(),
            &mut store,
            &format!(r#"{{"op":"blobs-missing","hashes":["{h}","{other}"]}}"#),
        )
        .unwrap();
        assert_eq!(missing, serde_json::json!([other]));

        // Bad input is a clear error, never a panic.
        let bad_hash = ask(
            dir.path(),
            &mut store,
            r#"{"op":"blobs-missing","hashes":["xyz"]}"#,
        );
        assert!(format!("{:#}", bad_hash.unwrap_err()).contains("not a blake3 hash"));
        let bad_hex = ask(
            dir.path(),
            &mut store,
            &format!(r#"{{"op":"blobs-put","blobs":[{{"hash":"{h}","hex":"zz"}}]}}"#),
        );
        assert!(format!("{:#}", bad_hex.unwrap_err()).contains("not hex"));
        let big = hex::encode(vec![0u8; INLINE_BLOB_BYTES + 1]);
        let too_big = ask(
            dir.path(),
            &mut store,
            &format!(r#"{{"op":"blobs-put","blobs":[{{"hash":"{h}","hex":"{big}"}}]}}"#),
        );
        assert!(format!("{:#}", too_big.unwrap_err()).contains("blobs receive"));
        // Other requests are not blob requests (they go to the daemon).
        assert!(serde_json::from_str::<BlobRequest>(r#"{"op":"heads"}"#).is_err());
    }
}
