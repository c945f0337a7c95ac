//! Kept connections: one `maki` command leaves its SSH connection and its
//! `makiatto control` open for the commands that follow, as OpenSSH's
//! `ControlPersist` does.
//!
//! Every `maki` command pays a key exchange and a remote command before
//! its first request (0.25–0.35 s on the test hosts), more than a no-op
//! `maki sync` needs for everything else. So after a command connects to a
//! machine, it starts `maki __keep <machine>` in the background: a process
//! that logs in (the host key pinned, as any command does), starts
//! `makiatto control`, and answers control requests from a Unix socket
//! until it has been idle for `MAKIATTO_SSH_PERSIST` seconds (default 60;
//! 0 turns it off). The next commands find the socket and send their
//! control requests through it; anything else (a blob stream, a shell
//! command) still logs in itself.
//!
//! The socket sits in a directory only this user can enter
//! (`$XDG_RUNTIME_DIR/makiatto`, else `<tmp>/makiatto-<uid>`, mode 0700,
//! checked before use), like OpenSSH's control path: whoever can reach it
//! can do what this user's key can. Its name is derived from the user,
//! host, port, key file and pinned host key, so a machine re-pinned or
//! reached with another key gets another connection.
//!
//! A kept connection that fails (the machine restarted, the network
//! changed) answers nothing: the command sends the requests again over a
//! connection of its own ([`crate::ssh::Remote::control_lines`]) and the
//! keeper exits. A command first asks a kept connection for a `hello`
//! and skips it unless it answers within a few seconds
//! (`Ctx::connect`); the keeper's SSH keepalives find a machine that
//! vanished within about 15 s, and it then leaves, its socket with it. So does a command whose request the kept `makiatto
//! control` does not know (it was started before the machine's binary was
//! upgraded).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::ssh::{ControlSession, HostKeyPolicy, Remote, Target};

/// How often a keeper looks whether its connection has ended.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// How long a kept connection waits for the next command.
pub fn idle_limit() -> Duration {
    let secs = std::env::var("MAKIATTO_SSH_PERSIST")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(60);
    Duration::from_secs(secs)
}

/// The directory of this user's sockets, made (0700) if absent; `None`
/// when it exists but is not this user's alone.
fn socket_dir() -> Option<PathBuf> {
    let uid = nix::unistd::geteuid().as_raw();
    let dir = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("makiatto"),
        _ => std::env::temp_dir().join(format!("makiatto-{uid}")),
    };
    if std::fs::create_dir(&dir).is_ok() {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).ok()?;
    }
    let meta = std::fs::symlink_metadata(&dir).ok()?;
    (meta.is_dir() && meta.uid() == uid && meta.mode() & 0o077 == 0).then_some(dir)
}

/// The socket of the kept connection to `target` with `host_key` pinned.
pub fn socket_path(target: &Target, host_key: &str) -> Option<PathBuf> {
    let mut h = blake3::Hasher::new();
    for part in [
        target.user.as_str(),
        target.host.as_str(),
        &target.port.to_string(),
        &target.key_file.to_string_lossy(),
        host_key,
    ] {
        h.update(part.as_bytes());
        h.update(&[0]);
    }
    let name = format!("{}.sock", &h.finalize().to_hex()[..24]);
    Some(socket_dir()?.join(name))
}

/// A remote whose control requests go through the kept connection, if one
/// answers.
pub async fn attach(target: &Target, host_key: &str) -> Option<Remote> {
    let path = socket_path(target, host_key)?;
    let stream = tokio::time::timeout(Duration::from_millis(500), UnixStream::connect(&path))
        .await
        .ok()?
        .ok()?;
    let (r, w) = stream.into_split();
    let session = ControlSession::new(Box::new(r), Box::new(w), true);
    Some(Remote::kept(target, host_key, session))
}

/// Starts a keeper for `machine` in the background (its own process
/// group, so a Ctrl-C of this command does not stop it); failing to is
/// no error.
pub fn spawn(machine: &str, profile: &Path, ssh_key: &Path) {
    use std::os::unix::process::CommandExt;
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let _ = std::process::Command::new(exe)
        .arg("--profile")
        .arg(profile)
        .arg("--ssh-priv-key")
        .arg(ssh_key)
        .arg("__keep")
        .arg(machine)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn();
}

/// `maki __keep <machine>`: logs in, starts `makiatto control`, and serves
/// the socket until idle for [`idle_limit`] or the connection fails.
pub async fn keep(target: &Target, host_key: &str) -> anyhow::Result<()> {
    let idle = idle_limit();
    if idle.is_zero() {
        return Ok(());
    }
    let path = socket_path(target, host_key).context("no private directory for the socket")?;
    // One keeper per machine: it holds the lock for as long as it runs, so
    // a second one (two commands started close together) leaves, and the
    // socket file is only ever bound and removed by its holder.
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path.with_extension("lock"))?;
    let Ok(_lock) = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
    else {
        return Ok(());
    };
    let remote = Arc::new(Remote::connect(target, HostKeyPolicy::Pinned(host_key)).await?);
    remote
        .control_lines(&[r#"{"op":"heads"}"#.to_owned()])
        .await
        .context("makiatto control does not answer")?;
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("cannot bind {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let started = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let clients = Arc::new(AtomicUsize::new(0));
    let (failed_tx, mut failed) = tokio::sync::mpsc::channel::<()>(1);
    let result = loop {
        let quiet = Duration::from_millis(last.load(Ordering::Relaxed));
        let wait = (quiet + idle).saturating_sub(started.elapsed());
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                clients.fetch_add(1, Ordering::SeqCst);
                let (remote, last, clients, failed_tx) = (remote.clone(), last.clone(), clients.clone(), failed_tx.clone());
                tokio::spawn(async move {
                    if serve(&remote, stream, &last, started).await.is_err() {
                        let _ = failed_tx.try_send(());
                    }
                    last.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                    clients.fetch_sub(1, Ordering::SeqCst);
                });
            }
            _ = failed.recv() => break Ok(()),
            // Keepalives unanswered: the machine is gone. Leaving removes
            // the socket, so the next command does not even try it.
            _ = tokio::time::sleep(CHECK_EVERY) => {
                if remote.is_closed() {
                    break Ok(());
                }
            }
            _ = tokio::time::sleep(wait.max(Duration::from_millis(50))) => {
                let quiet_for = started.elapsed().saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
                if clients.load(Ordering::SeqCst) == 0 && quiet_for >= idle {
                    break Ok(());
                }
            }
        }
    };
    let _ = std::fs::remove_file(&path);
    result
}

/// Answers one client's request lines, each in turn, until it hangs up.
/// An error is the machine's connection failing (the keeper then exits).
async fn serve(
    remote: &Remote,
    stream: UnixStream,
    last: &AtomicU64,
    started: Instant,
) -> anyhow::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        last.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        let answers = remote.control_lines(&[line]).await?;
        for a in answers {
            if w.write_all(a.as_bytes()).await.is_err() || w.write_all(b"\n").await.is_err() {
                return Ok(());
            }
        }
        if w.flush().await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// Whether a keeper may be started (persistence is on).
pub fn enabled() -> bool {
    !idle_limit().is_zero()
}
