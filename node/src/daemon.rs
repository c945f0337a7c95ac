//! `makiatto run`: opens the replica, serves the control socket, and shuts
//! down cleanly on SIGTERM or SIGINT (socket removed, store flushed), or
//! hands its sockets over to a new binary (`handover`) without closing
//! them. Later subsystems (mesh, DNS, HTTP) hang off the same runtime.
//!
//! When the store fails to write (a full disk), the log writer stops and
//! the store refuses every later write until it is opened again. The
//! daemon goes on serving what it holds, looks every second whether the
//! data directory takes writes again ([`STORE_PROBE_BYTES`]), and then
//! exits with an error, so that its supervisor (systemd, or
//! `makiatto run --detach`) starts it again on a reopened store, which
//! catches up from its peers.

use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use makiatto_core::GroupCommitter;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{SignalKind, signal};

use crate::changes::Changes;
use crate::content::Content;
use makiatto_protocol::health::{DaemonInfo, HandoverStarted};
use makiatto_protocol::request as op;
use makiatto_protocol::status::ManifestStored;
use makiatto_protocol::{Answer, ControlError, Envelope, ErrorCode, Request};

use crate::control::{self, MAX_REQUEST_BYTES};
use crate::gossip::Gossip;
use crate::handover::{Handover, Role};
use crate::liveness::Liveness;
use crate::replica::Replica;
use crate::topology::{MeshSlot, follow_peers};

/// Where the control socket of a data directory lives.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("control.sock")
}

/// What the daemon sets up before its runtime starts.
pub struct Prepared {
    mesh: Option<crate::mesh::Mesh>,
    me: Option<makiatto_events::AuthorKey>,
    /// The WebAssembly engine, made while the process is root's: see
    /// [`prepare`].
    engine: crate::wasm::engine::NodeEngine,
}

/// Opens the privileged resources (the mesh device: /dev/net/tun is root's),
/// then drops root, keeping CAP_NET_ADMIN and CAP_NET_BIND_SERVICE. Runs
/// before the runtime's threads exist: capabilities are per thread, and
/// threads made later inherit this one's. (The device's own threads, made
/// before the drop, lose theirs; they need none.)
pub fn prepare(data_dir: &Path) -> anyhow::Result<Prepared> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let identity = crate::keys::NodeKeys::load(data_dir).ok();
    let mesh = match &identity {
        Some(keys) => match crate::mesh::Mesh::start(&keys.wireguard) {
            Ok(mesh) => Some(mesh),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "no mesh: this node serves alone until it is fixed");
                None
            }
        },
        None => None,
    };
    // Made before the drop: its instance pool opens /proc/self/pagemap
    // then, to reset a slot's memory by the pages a call wrote. A process
    // that has dropped root is not dumpable and that file becomes root's,
    // so a pool made afterwards cannot open it and instead zeroes each
    // slot's whole kept memory after every call (1,088 KiB for the Rust
    // hello, which writes 16 KiB: 13% of the work threads' time).
    let engine =
        crate::wasm::engine::engine().map_err(|e| anyhow::anyhow!("the wasmtime engine: {e:#}"))?;
    if let Some(user) = crate::privileges::drop_to_service_user(data_dir)? {
        tracing::info!(
            user,
            "running unprivileged, keeping CAP_NET_ADMIN and CAP_NET_BIND_SERVICE"
        );
    }
    Ok(Prepared {
        mesh,
        me: identity.map(|k| k.signing.public()),
        engine,
    })
}

/// Runs the daemon until a shutdown signal: claims the control socket
/// (or takes the one an earlier image handed over), starts every
/// subsystem ([`Services::start`]), then answers control connections
/// until SIGTERM or SIGINT, or until a handover replaces this image.
pub async fn run(
    data_dir: PathBuf,
    prepared: Prepared,
    ports: crate::dns::server::Ports,
    web: crate::http::server::Ports,
    handover: Arc<Handover>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let socket = socket_path(&data_dir);
    let inherited = handover.sockets.take_one(Role::Control);
    if inherited.is_none() {
        claim_socket(&data_dir)?;
    }
    let services = Services::start(&data_dir, prepared, ports, web, handover.clone()).await?;
    let listener = match inherited {
        // Connections made meanwhile waited in its queue.
        Some(fd) => {
            let l = std::os::unix::net::UnixListener::from(fd);
            l.set_nonblocking(true)?;
            UnixListener::from_std(l)?
        }
        None => {
            let l = UnixListener::bind(&socket)
                .with_context(|| format!("cannot listen on {}", socket.display()))?;
            std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("cannot restrict {}", socket.display()))?;
            l
        }
    };
    handover.sockets.keep(Role::Control, listener.as_fd());
    crate::handover::ready(&handover.sockets);
    tracing::info!(data_dir = %data_dir.display(), socket = %socket.display(), sockets = handover.sockets.count(), "makiatto daemon ready");
    let served = serve_until_signal(&listener, &services).await;
    if let Err(e) = &served {
        tracing::error!(error = %format!("{e:#}"), "makiatto daemon stops");
    }
    tracing::info!("shutting down");
    // The fold's state saved, the next start folds nothing.
    match services.replica.lock().map(|mut r| r.save()) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot save the fold at shutdown; the next start re-folds from the last checkpoint")
        }
        Err(_) => tracing::warn!("replica lock poisoned at shutdown; the fold is not saved"),
    }
    let _ = std::fs::remove_file(&socket);
    served
}

/// The control socket's path, free to bind: a socket left by a daemon
/// that died is removed; one that answers belongs to a running daemon,
/// which this one must not displace.
fn claim_socket(data_dir: &Path) -> anyhow::Result<()> {
    let socket = socket_path(data_dir);
    if socket.exists() {
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            bail!(
                "another makiatto daemon is serving {} (its control socket answers); stop it first",
                data_dir.display()
            );
        }
        std::fs::remove_file(&socket)
            .with_context(|| format!("cannot remove the stale socket {}", socket.display()))?;
    }
    Ok(())
}

/// Answers control connections, each on a task of its own, until SIGTERM
/// or SIGINT; once a handover drains, it accepts no more (they wait in
/// the socket's queue for the next image) and waits for a signal.
async fn serve_until_signal(listener: &UnixListener, services: &Services) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut store_failed = services.store_failed.clone();
    let drain = services.handover.drains.connections.clone();
    loop {
        tokio::select! {
            // (A writer that stopped without a failure, at shutdown, closes
            // the channel: `None`, and the branch is off.)
            Some(why) = async {
                store_failed.wait_for(Option::is_some).await.ok().and_then(|m| m.clone())
            } => {
                bail!("{why}: restarting to reopen the event store");
            }
            accepted = listener.accept(), if !drain.started() => match accepted {
                Ok((stream, _)) => {
                    let services = services.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve(stream, services).await {
                            tracing::debug!(error = %e, "control connection ended with an error");
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "accepting a control connection failed"),
            },
            _ = drain.wait(), if !drain.started() => {}
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
        }
    }
}

/// The running subsystems: what a control connection may reach.
#[derive(Clone)]
struct Services {
    replica: Arc<Mutex<Replica>>,
    committer: GroupCommitter,
    mesh: MeshSlot,
    gossip: Arc<Gossip>,
    changes: Changes,
    content: Arc<Content>,
    dns: Arc<crate::dns::Dns>,
    http: Arc<crate::http::Http>,
    acme: Option<Arc<crate::acme::Acme>>,
    /// Why the store stopped taking writes, once the data directory takes
    /// them again (see the module's notes).
    store_failed: tokio::sync::watch::Receiver<Option<String>>,
    prober: Arc<crate::probe::Prober>,
    handover: Arc<Handover>,
    /// When this image started serving (Unix millis).
    started: u64,
}

/// The size of the file written to see whether the data directory takes
/// writes again after the store failed: room for a batch of events.
pub const STORE_PROBE_BYTES: usize = 1 << 20;

/// Waits (on threads of their own) for a store failure — the log writer
/// stopping on a failed write (or a panic), or a failure told on the
/// returned sender (the projections' save) — then until the data
/// directory takes a [`STORE_PROBE_BYTES`] write again, and then says so
/// on the returned channel.
fn watch_store(
    writer: std::thread::JoinHandle<Result<(), makiatto_core::StoreError>>,
    data_dir: PathBuf,
) -> (
    tokio::sync::watch::Receiver<Option<String>>,
    std::sync::mpsc::Sender<String>,
) {
    let (tx, rx) = tokio::sync::watch::channel(None);
    let (failed, failures) = std::sync::mpsc::channel::<String>();
    let from_writer = failed.clone();
    let joined = std::thread::Builder::new()
        .name("makiatto-store-writer".into())
        .spawn(move || {
            // A failed write, or a panic on one (its message may be lost
            // with the log file on a full disk).
            let e = match writer.join() {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e.to_string(),
                Err(_) => "the log writer panicked".to_owned(),
            };
            let _ = from_writer.send(e);
        });
    let spawned = joined.and_then(|_| {
        std::thread::Builder::new()
        .name("makiatto-store-watch".into())
        .spawn(move || {
            let Ok(e) = failures.recv() else { return };
            tracing::error!(error = %e, "the event store failed to write; serving what it holds, \
                 and restarting as soon as the data directory takes writes again");
            let probe = data_dir.join("store-probe");
            let takes_writes = || {
                use std::io::Write;
                let wrote = std::fs::File::create(&probe).and_then(|mut f| {
                    f.write_all(&vec![0u8; STORE_PROBE_BYTES])?;
                    f.sync_all()
                });
                let _ = std::fs::remove_file(&probe);
                wrote.is_ok()
            };
            while !takes_writes() {
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
            let _ = tx.send(Some(format!("the event store failed to write ({e})")));
        })
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the store watch: a store failure will need a restart by hand");
    }
    (rx, failed)
}

impl Services {
    /// Opens the log and starts every subsystem, wired through the narrow
    /// handles (`Changes`, `Liveness`): replication, the content follower,
    /// DNS, HTTP and, on a node with keys, ACME.
    async fn start(
        data_dir: &Path,
        prepared: Prepared,
        ports: crate::dns::server::Ports,
        web: crate::http::server::Ports,
        handover: Arc<Handover>,
    ) -> anyhow::Result<Services> {
        let mut replica = Replica::open(data_dir)
            .with_context(|| format!("cannot open the event log in {}", data_dir.display()))?;
        replica.save_projections()?;
        let (committer, writer) = GroupCommitter::start(replica.log());
        let (store_failed, store_failures) = watch_store(writer, data_dir.to_owned());
        replica.on_store_failure(store_failures);
        let mesh = Arc::new(Mutex::new(prepared.mesh.zip(prepared.me)));
        let replica = Arc::new(Mutex::new(replica));
        let blobs =
            Arc::new(crate::blobs::BlobStore::open(data_dir).with_context(|| {
                format!("cannot open the blob store in {}", data_dir.display())
            })?);
        let liveness = Liveness::new(replica.clone());
        let changes = Changes::default();
        let gossip = Gossip::start(
            replica.clone(),
            committer.clone(),
            mesh.clone(),
            blobs.clone(),
            liveness.clone(),
            changes.clone(),
        );
        let content = Content::start(
            data_dir,
            replica.clone(),
            blobs.clone(),
            gossip.clone(),
            changes.clone(),
        );
        if let Some(t) = follow_peers(&replica, &mesh) {
            gossip.set_topology(t);
        }
        let geoip = crate::dns::geoip::Sources {
            replica: replica.clone(),
            blobs,
            peers: gossip.clone(),
            copy: data_dir.join("geoip"),
        };
        let prober = Arc::new(crate::probe::Prober {
            replica: replica.clone(),
            liveness: liveness.clone(),
            content: content.clone(),
            data_dir: data_dir.to_owned(),
            dns_port: ports.dns,
            https_port: web.https,
        });
        let dns =
            crate::dns::Dns::start(geoip, liveness.clone(), changes.clone(), ports, &handover)
                .await;
        // The one pool for CPU-heavy work (images; its queue limit follows
        // `work.queue`, set by the image service from the settings).
        let pool = Arc::new(
            crate::work_pool::WorkPool::start(64).context("cannot start the CPU work pool")?,
        );
        let http = crate::http::Http::start(
            data_dir,
            replica.clone(),
            content.clone(),
            changes.clone(),
            web,
            crate::http::Work {
                pool,
                engine: prepared.engine,
            },
            &handover,
        )
        .with_context(|| format!("cannot start the HTTP server in {}", data_dir.display()))?;
        // Certificates need the node's keys (a node not yet initialised has none).
        // And so does resealing secrets to nodes that join later.
        let acme = crate::keys::NodeKeys::load(data_dir).ok().map(|keys| {
            let signer = Arc::new(crate::signer::Signer::new(
                replica.clone(),
                committer.clone(),
                liveness.clone(),
                changes.clone(),
                keys.signing.clone(),
            ));
            crate::reseal::Resealer::start(
                replica.clone(),
                signer.clone(),
                liveness.clone(),
                changes.clone(),
                keys.sealing.clone(),
            );
            crate::acme::Acme::start(
                data_dir.to_owned(),
                replica.clone(),
                signer,
                liveness.clone(),
                changes.clone(),
                keys,
                http.clone(),
                dns.clone(),
            )
        });
        let services = Services {
            replica,
            committer,
            mesh,
            gossip,
            changes,
            content,
            dns,
            http,
            acme,
            store_failed,
            prober,
            handover,
            started: crate::handover::now_millis(),
        };
        // Telemetry follows the configuration and the peers from here on;
        // its metrics read the health report.
        let health = services.clone();
        crate::telemetry::spawn(crate::telemetry::Source {
            replica: services.replica.clone(),
            changes: services.changes.clone(),
            me: prepared.me,
            health: Box::new(move || health.health()),
        });
        Ok(services)
    }

    /// This node's health report (without telemetry's own part).
    fn health(&self) -> makiatto_protocol::health::HealthReport {
        let mut report = self.gossip.report();
        report.sites = self.content.report();
        report.dns = Some(self.dns.report());
        report.http = self.http.report();
        report.acme = self.acme.as_ref().map(|a| a.report());
        report
    }
}

/// Begins a handover to `binary` (default: the path this process was
/// started from): checks the binary, answers, then drains and replaces
/// this image on a task of its own.
async fn begin_handover(s: &Services, binary: Option<String>) -> Answer {
    let binary = binary.map(PathBuf::from).unwrap_or_else(own_path);
    if let Err(e) = s.handover.claim() {
        return control::reply::<op::Handover>(Err(ControlError::failed(e.to_string())));
    }
    let meshed = s.mesh.lock().is_ok_and(|m| m.is_some());
    if meshed && let Err(e) = crate::handover::mesh_device_opens() {
        s.handover.release();
        return control::reply::<op::Handover>(Err(ControlError::failed(e.to_string())));
    }
    let checked = {
        let binary = binary.clone();
        tokio::task::spawn_blocking(move || crate::handover::check(&binary)).await
    };
    let to = match checked {
        Ok(Ok(version)) => version,
        Ok(Err(e)) => {
            s.handover.release();
            return control::reply::<op::Handover>(Err(ControlError::failed(e.to_string())));
        }
        Err(e) => {
            s.handover.release();
            return control::reply::<op::Handover>(Err(ControlError::failed(format!(
                "checking the binary stopped: {e}"
            ))));
        }
    };
    tracing::info!(binary = %binary.display(), to = %to.software, "handing over: draining");
    let started = HandoverStarted {
        pid: std::process::id(),
        from: makiatto_protocol::version::SOFTWARE.to_owned(),
        from_started_unix_millis: s.started,
        binary: binary.display().to_string(),
        to: to.software.clone(),
    };
    tokio::spawn(hand_over(s.clone(), binary));
    control::reply::<op::Handover>(Ok(started))
}

/// The path this process was started from: a restart runs what is there
/// now (`/proc/self/exe` would be the running binary, even replaced).
fn own_path() -> PathBuf {
    let argv0 = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/local/bin/makiatto"));
    std::path::absolute(&argv0).unwrap_or(argv0)
}

/// Drains, then replaces this image with `binary`, the log's locks held
/// (no append half done) and the store made durable.
async fn hand_over(s: Services, binary: PathBuf) {
    let (cut, _) = s.handover.drain().await;
    tracing::info!(cut, binary = %binary.display(), "handing over: replacing this image");
    let replica = s.replica.clone();
    let handover = s.handover.clone();
    let _ = tokio::task::spawn_blocking(move || {
        let held = replica.lock();
        let log = held.as_ref().ok().map(|r| r.log());
        let _appending = log.as_ref().map(|l| l.lock());
        if let Ok(r) = &held
            && let Err(e) = r.persist()
        {
            tracing::warn!(error = %e, "cannot make the store durable before the handover; its journal recovers it");
        }
        let err = handover.exec(&binary, makiatto_protocol::version::SOFTWARE);
        // Neither the new binary nor this one could be started again:
        // the supervisor (or systemd) starts the daemon afresh.
        eprintln!("makiatto: the handover failed: {err}");
        std::process::exit(70);
    })
    .await;
}

/// This image, for `makiatto health`.
fn daemon_info(s: &Services) -> DaemonInfo {
    use std::os::unix::fs::MetadataExt;
    DaemonInfo {
        pid: std::process::id(),
        started_unix_millis: s.started,
        software: makiatto_protocol::version::SOFTWARE.to_owned(),
        exe_inode: std::fs::metadata("/proc/self/exe").map_or(0, |m| m.ino()),
        sockets: s.handover.sockets.count(),
        last_handover: s.handover.record(),
    }
}

async fn serve(stream: UnixStream, services: Services) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        // Never buffer more than one request's worth from a client.
        let n = (&mut reader)
            .take(MAX_REQUEST_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        let too_long = line.len() > MAX_REQUEST_BYTES;
        // A request in hand is answered before a handover replaces this
        // image.
        let busy = services.handover.drains.connections.busy();
        let answer = if too_long {
            Answer::Error(ControlError::new(
                ErrorCode::TooLarge,
                format!("request is larger than {MAX_REQUEST_BYTES} bytes"),
            ))
        } else {
            match control::read_request(&line) {
                Ok(envelope) => answer(envelope, &services).await,
                Err(e) => Answer::Error(e),
            }
        };
        let mut bytes = answer.to_line().into_bytes();
        bytes.push(b'\n');
        write.write_all(&bytes).await?;
        drop(busy);
        if too_long {
            return Ok(());
        }
    }
}

/// Answers one request: what needs the daemon's own parts here, the rest
/// through [`control::execute`] on a blocking thread.
async fn answer(envelope: Envelope, services: &Services) -> Answer {
    let s = services;
    match envelope.request {
        Request::ManifestPut(op::ManifestPut {
            base,
            target,
            delta,
        }) => {
            let blobs = s.content.blobs().clone();
            let manifest = target.to_hex();
            let put = async move {
                match tokio::task::spawn_blocking(move || {
                    crate::blobs::put_manifest_delta(&blobs, &base, &target, &delta)
                })
                .await
                {
                    Ok(Ok(put)) => Ok(put),
                    Ok(Err(e)) => Err(format!("{e:#}")),
                    Err(e) => Err(format!("the request failed: {e}")),
                }
            };
            // Telemetry: `maki sync`'s upload of a version is a span.
            let stored = crate::telemetry::Operation::new("sync.manifest_put")
                .attr("makiatto.manifest", manifest)
                .run(put)
                .await;
            control::reply::<op::ManifestPut>(match stored {
                Ok(put) => {
                    let files = put.files;
                    // A small version goes to the peers with its event
                    // (`Gossip::offer_version`).
                    s.gossip.offer_version(put);
                    Ok(ManifestStored { stored: files })
                }
                Err(e) => Err(ControlError::failed(e)),
            })
        }
        Request::BlobsArrived(op::BlobsArrived { hashes }) => {
            let offered = hashes.len() as u64;
            s.gossip.offer_blobs(hashes);
            control::reply::<op::BlobsArrived>(Ok(offered))
        }
        Request::Health(_) => {
            let mut report = s.health();
            report.telemetry = Some(crate::telemetry::report());
            report.daemon = Some(daemon_info(s));
            control::reply::<op::Health>(Ok(report))
        }
        Request::Handover(op::Handover { binary }) => begin_handover(s, binary).await,
        Request::Probe(op::ProbeCluster { subnets }) => {
            control::reply::<op::ProbeCluster>(Ok(s.prober.probe(&subnets).await))
        }
        Request::BlobsMissing(_) | Request::BlobsPut(_) => {
            let blobs = s.content.blobs().clone();
            tokio::task::spawn_blocking(move || control::answer_blobs(&blobs, envelope.request))
                .await
                .unwrap_or_else(|e| {
                    Answer::Error(ControlError::failed(format!("the request failed: {e}")))
                })
        }
        _ => {
            let (replica, committer, mesh) =
                (s.replica.clone(), s.committer.clone(), s.mesh.clone());
            let appends = matches!(envelope.request, Request::Append(_));
            let (answer, topology) = tokio::task::spawn_blocking(move || {
                let answer = control::execute(&replica, &committer, envelope);
                let topology = if appends {
                    follow_peers(&replica, &mesh)
                } else {
                    None
                };
                (answer, topology)
            })
            .await
            .unwrap_or_else(|e| {
                (
                    Answer::Error(ControlError::failed(format!("the request failed: {e}"))),
                    None,
                )
            });
            if let Some(t) = topology {
                s.gossip.set_topology(t);
            }
            if appends {
                s.changes.appended();
            }
            answer
        }
    }
}
