//! `makiatto run`: opens the replica, serves the control socket, and shuts
//! down cleanly on SIGTERM or SIGINT (socket removed, store flushed).
//! Later subsystems (mesh, DNS, HTTP) hang off the same runtime.

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
use makiatto_protocol::request as op;
use makiatto_protocol::status::ManifestStored;
use makiatto_protocol::{Answer, ControlError, Envelope, ErrorCode, Request};

use crate::control::{self, MAX_REQUEST_BYTES};
use crate::gossip::Gossip;
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
    if let Some(user) = crate::privileges::drop_to_service_user(data_dir)? {
        tracing::info!(
            user,
            "running unprivileged, keeping CAP_NET_ADMIN and CAP_NET_BIND_SERVICE"
        );
    }
    Ok(Prepared {
        mesh,
        me: identity.map(|k| k.signing.public()),
    })
}

/// Runs the daemon until a shutdown signal: claims the control socket,
/// starts every subsystem ([`Services::start`]), then answers control
/// connections until SIGTERM or SIGINT.
pub async fn run(
    data_dir: PathBuf,
    prepared: Prepared,
    ports: crate::dns::server::Ports,
    web: crate::http::server::Ports,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let socket = claim_socket(&data_dir)?;
    let services = Services::start(&data_dir, prepared, ports, web).await?;
    let listener = UnixListener::bind(&socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", socket.display()))?;
    tracing::info!(data_dir = %data_dir.display(), socket = %socket.display(), "makiatto daemon ready");
    let served = serve_until_signal(&listener, &services).await;
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
fn claim_socket(data_dir: &Path) -> anyhow::Result<PathBuf> {
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
    Ok(socket)
}

/// Answers control connections, each on a task of its own, until SIGTERM
/// or SIGINT.
async fn serve_until_signal(listener: &UnixListener, services: &Services) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
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
    ) -> anyhow::Result<Services> {
        let mut replica = Replica::open(data_dir)
            .with_context(|| format!("cannot open the event log in {}", data_dir.display()))?;
        replica.save_projections()?;
        let (committer, _writer) = GroupCommitter::start(replica.log());
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
            blobs,
            gossip.clone(),
            changes.clone(),
        );
        if let Some(t) = follow_peers(&replica, &mesh) {
            gossip.set_topology(t);
        }
        let dns = crate::dns::Dns::start(
            &data_dir.join("geoip"),
            replica.clone(),
            liveness.clone(),
            changes.clone(),
            ports,
        )
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
            pool,
        )
        .with_context(|| format!("cannot start the HTTP server in {}", data_dir.display()))?;
        // Certificates need the node's keys (a node not yet initialised has none).
        let acme = crate::keys::NodeKeys::load(data_dir).ok().map(|keys| {
            crate::acme::Acme::start(
                data_dir.to_owned(),
                replica.clone(),
                committer.clone(),
                liveness.clone(),
                changes.clone(),
                keys,
                http.clone(),
                dns.clone(),
            )
        });
        Ok(Services {
            replica,
            committer,
            mesh,
            gossip,
            changes,
            content,
            dns,
            http,
            acme,
        })
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
            let stored = tokio::task::spawn_blocking(move || {
                crate::blobs::put_manifest_delta(&blobs, &base, &target, &delta)
            })
            .await;
            control::reply::<op::ManifestPut>(match stored {
                Ok(Ok(put)) => {
                    let files = put.files;
                    // A small version goes to the peers with its event
                    // (`Gossip::offer_version`).
                    s.gossip.offer_version(put);
                    Ok(ManifestStored { stored: files })
                }
                Ok(Err(e)) => Err(ControlError::failed(format!("{e:#}"))),
                Err(e) => Err(ControlError::failed(format!("the request failed: {e}"))),
            })
        }
        Request::Health(_) => {
            let mut report = s.gossip.report();
            report.sites = s.content.report();
            report.dns = Some(s.dns.report());
            report.http = s.http.report();
            report.acme = s.acme.as_ref().map(|a| a.report());
            control::reply::<op::Health>(Ok(report))
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
