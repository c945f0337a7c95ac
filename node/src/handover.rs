//! Handing the daemon over to a new binary — or to the same one again, a
//! restart — without closing a socket: an upgrade or a restart drops no
//! connection and leaves no DNS query unanswered.
//!
//! The design, for this daemon (nginx's binary upgrade and Envoy's hot
//! restart pass their listening sockets to the new process; here the
//! process stays, and only its image changes):
//!
//! 1. `makiatto reload` (or `maki machine upgrade`/`restart`) asks the
//!    running daemon to hand over to a binary. The binary is checked
//!    first (`makiatto handover-check`: it runs, it is a makiatto, it
//!    takes sockets this way); a binary that fails the check changes
//!    nothing.
//! 2. The daemon drains: it stops accepting connections (new ones wait in
//!    the kernel's accept queues, which stay open), sends HTTP/2 clients
//!    GOAWAY and HTTP/1.1 clients `Connection: close` on their next
//!    response, and waits for requests in flight (at most
//!    [`DRAIN_WITHIN`]). DNS over UDP goes on meanwhile; then its threads
//!    finish the queries they hold and stop (new queries wait in the
//!    sockets' receive buffers, widened for this).
//! 3. Holding the log's locks (no append half done), it makes the store
//!    durable, marks every descriptor but the listening sockets
//!    close-on-exec, and `execve`s the new binary in place: same pid (the
//!    supervisor and systemd see nothing), same arguments, the sockets'
//!    descriptors named in [`SOCKETS_VAR`]. The kernel closes the store's
//!    files (its lock with them) and the mesh device; the new image opens
//!    them again, then serves the sockets it was given — what queued
//!    meanwhile is answered late, not lost.
//! 4. Until the new image is serving, it holds a descriptor of the
//!    previous binary ([`FALLBACK_VAR`]): if it fails to start (an error
//!    or a panic before it is ready, or no readiness within
//!    [`READY_WITHIN`]), it `fexecve`s that binary with the same sockets,
//!    which serves on as before and reports the failed handover.
//!
//! What cannot be handed over is said: the mesh restarts (peers hear
//! this node again within a heartbeat or two), TLS sessions are not
//! resumed, and a request still running after [`DRAIN_WITHIN`] (a slow
//! download) is cut.

use std::collections::BTreeMap;
use std::ffi::{CString, OsString};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use makiatto_protocol::health::HandoverRecord;
use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use tokio::sync::watch;

/// The listening sockets the new image is given: `role:fd,role:fd,…`.
pub const SOCKETS_VAR: &str = "MAKIATTO_HANDOVER_SOCKETS";
/// The previous binary, open, for the new image to go back to.
pub const FALLBACK_VAR: &str = "MAKIATTO_HANDOVER_FALLBACK";
/// Who handed over, and when: `software,unix-millis`.
pub const FROM_VAR: &str = "MAKIATTO_HANDOVER_FROM";
/// Why a new image gave the sockets back (set by its fallback).
pub const FAILED_VAR: &str = "MAKIATTO_HANDOVER_FAILED";
/// The previous image's arguments (a JSON list), which a fallback starts
/// it with again.
pub const ARGV_VAR: &str = "MAKIATTO_HANDOVER_ARGV";

/// Requests in flight are waited for this long at most.
pub const DRAIN_WITHIN: Duration = Duration::from_secs(15);
/// HTTP/1.1 connections get this long to send a request (answered with
/// `Connection: close`) before the idle ones are closed.
pub const IDLE_CLOSE_AFTER: Duration = Duration::from_millis(300);
/// An HTTP/1.1 connection that has sent no request yet when the drain
/// begins (accepted for a request on its way: its client may not have
/// been scheduled to send it) gets this long, not [`IDLE_CLOSE_AFTER`].
pub const FIRST_REQUEST_WITHIN: Duration = Duration::from_secs(5);
/// A new image not serving within this long gives the sockets back.
pub const READY_WITHIN: Duration = Duration::from_secs(60);

/// What a listening socket serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    DnsUdp,
    DnsTcp,
    Dot,
    Http,
    Https,
    Control,
}

impl Role {
    const ALL: [Role; 6] = [
        Role::DnsUdp,
        Role::DnsTcp,
        Role::Dot,
        Role::Http,
        Role::Https,
        Role::Control,
    ];

    fn name(self) -> &'static str {
        match self {
            Role::DnsUdp => "dns-udp",
            Role::DnsTcp => "dns-tcp",
            Role::Dot => "dot",
            Role::Http => "http",
            Role::Https => "https",
            Role::Control => "control",
        }
    }

    fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// The value of [`SOCKETS_VAR`] for these descriptors.
fn sockets_value(fds: &[(Role, RawFd)]) -> String {
    fds.iter()
        .map(|(r, fd)| format!("{}:{fd}", r.name()))
        .collect::<Vec<_>>()
        .join(",")
}

/// [`SOCKETS_VAR`]'s value read back; entries that do not parse are left out.
fn parse_sockets(value: &str) -> Vec<(Role, RawFd)> {
    value
        .split(',')
        .filter_map(|item| {
            let (role, fd) = item.split_once(':')?;
            Some((Role::parse(role)?, fd.parse().ok()?))
        })
        .collect()
}

/// The daemon's listening sockets: those an earlier image handed over
/// (taken by the servers as they start) and a duplicate of every socket
/// serving now (for the next image).
#[derive(Default)]
pub struct Sockets {
    /// As inherited, until this image serves (what a fallback hands back).
    inherited: Mutex<Vec<(Role, OwnedFd, bool)>>,
    serving: Mutex<Vec<(Role, OwnedFd)>>,
}

impl Sockets {
    /// The sockets named in [`SOCKETS_VAR`], if an earlier image handed
    /// any over. Each is checked to be an open socket; each is made
    /// close-on-exec (so no child process holds one).
    pub fn inherit() -> Sockets {
        let Some(value) = std::env::var_os(SOCKETS_VAR) else {
            return Sockets::default();
        };
        let mut inherited = Vec::new();
        for (role, fd) in parse_sockets(&value.to_string_lossy()) {
            // SAFETY: only looked at (fstat fails on a descriptor that is
            // not open); owned below once it is known to be a socket.
            let is_socket = nix::sys::stat::fstat(unsafe { BorrowedFd::borrow_raw(fd) })
                .is_ok_and(|s| s.st_mode & libc::S_IFMT == libc::S_IFSOCK);
            if !is_socket {
                tracing::warn!(
                    fd,
                    role = role.name(),
                    "a handed-over descriptor is not a socket; ignored"
                );
                continue;
            }
            // SAFETY: the previous image of this process named `fd` in
            // the environment as a socket it left open for this one, and
            // nothing in this process has taken it (it is read once, here,
            // before any other descriptor is opened); it is checked above
            // to be an open socket.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            let _ = fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
            inherited.push((role, owned, false));
        }
        if !inherited.is_empty() {
            tracing::info!(
                sockets = inherited.len(),
                "listening sockets handed over by the previous image"
            );
        }
        Sockets {
            inherited: Mutex::new(inherited),
            serving: Mutex::new(Vec::new()),
        }
    }

    /// The inherited sockets of `role` bound to `addr`'s family and port
    /// (duplicates: the originals stay until this image serves).
    pub fn take(&self, role: Role, addr: SocketAddr) -> Vec<OwnedFd> {
        self.take_where(role, |fd| {
            nix::sys::socket::getsockname::<nix::sys::socket::SockaddrStorage>(fd.as_raw_fd())
                .ok()
                .and_then(|a| {
                    a.as_sockaddr_in()
                        .map(|v4| SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
                        .or_else(|| {
                            a.as_sockaddr_in6()
                                .map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
                        })
                })
                .is_some_and(|bound| {
                    bound.is_ipv4() == addr.is_ipv4() && bound.port() == addr.port()
                })
        })
    }

    /// The inherited socket of a role that has one (the control socket).
    pub fn take_one(&self, role: Role) -> Option<OwnedFd> {
        self.take_where(role, |_| true).into_iter().next()
    }

    fn take_where(&self, role: Role, matches: impl Fn(&OwnedFd) -> bool) -> Vec<OwnedFd> {
        let Ok(mut inherited) = self.inherited.lock() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (r, fd, taken) in inherited.iter_mut() {
            if *r == role && !*taken && matches(fd) {
                match fd.try_clone() {
                    Ok(dup) => {
                        *taken = true;
                        out.push(dup);
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot take a handed-over socket"),
                }
            }
        }
        out
    }

    /// Keeps a duplicate of a socket now serving, for the next image.
    pub fn keep(&self, role: Role, fd: BorrowedFd<'_>) {
        match fd.try_clone_to_owned() {
            Ok(dup) => {
                if let Ok(mut s) = self.serving.lock() {
                    s.push((role, dup));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, role = role.name(), "cannot keep a socket for the next image: a handover will rebind it")
            }
        }
    }

    /// This image serves: the originals of what it took are not needed
    /// for a fallback any more; those it did not take (a port now 0)
    /// are closed.
    pub fn serving_now(&self) {
        if let Ok(mut inherited) = self.inherited.lock() {
            for (role, _, _) in inherited.iter().filter(|(_, _, taken)| !*taken) {
                tracing::info!(
                    role = role.name(),
                    "a handed-over socket is not served any more; closed"
                );
            }
            inherited.clear();
        }
    }

    /// How many sockets serve now.
    pub fn count(&self) -> usize {
        self.serving.lock().map_or(0, |s| s.len())
    }

    /// The descriptors to hand over: the serving ones.
    fn serving_fds(&self) -> Vec<(Role, RawFd)> {
        self.serving
            .lock()
            .map(|s| s.iter().map(|(r, fd)| (*r, fd.as_raw_fd())).collect())
            .unwrap_or_default()
    }

    /// Duplicates of the descriptors inherited (for a fallback).
    fn inherited_dups(&self) -> Vec<(Role, OwnedFd)> {
        self.inherited
            .lock()
            .map(|s| {
                s.iter()
                    .filter_map(|(r, fd, _)| Some((*r, fd.try_clone().ok()?)))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One stage of a drain: its start, and what is still finishing.
#[derive(Clone)]
pub struct Drain {
    started: Arc<watch::Sender<bool>>,
    busy: Arc<AtomicUsize>,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            started: Arc::new(watch::Sender::new(false)),
            busy: Arc::new(AtomicUsize::new(0)),
        }
    }
}

/// Held by something that must finish before the drain is over (a
/// connection, a serving thread, a control request).
pub struct Busy(Arc<AtomicUsize>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drain {
    /// Has it started?
    pub fn started(&self) -> bool {
        *self.started.borrow()
    }

    /// Returns once it has started.
    pub async fn wait(&self) {
        let mut rx = self.started.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Counts one more thing that must finish.
    pub fn busy(&self) -> Busy {
        self.busy.fetch_add(1, Ordering::SeqCst);
        Busy(self.busy.clone())
    }

    pub(crate) fn start(&self) {
        self.started.send_replace(true);
    }

    /// Starts it and waits until nothing is busy (or `within` passed);
    /// returns how many were still busy.
    async fn run(&self, within: Duration) -> usize {
        self.start();
        let deadline = Instant::now() + within;
        loop {
            let busy = self.busy.load(Ordering::SeqCst);
            if busy == 0 || Instant::now() >= deadline {
                return busy;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The two stages: connections (HTTP, DNS over TCP and TLS, the control
/// socket), then datagrams (DNS over UDP, which answers until the last).
#[derive(Clone, Default)]
pub struct Drains {
    pub connections: Drain,
    pub datagrams: Drain,
}

/// Whether this image came from a handover, and how the last one went.
pub struct Origin {
    pub record: Option<HandoverRecord>,
}

impl Origin {
    /// Read from the environment the previous image left.
    pub fn from_env() -> Origin {
        let failed = std::env::var(FAILED_VAR).ok();
        let from = std::env::var(FROM_VAR).ok();
        let record = from.map(|f| {
            let (software, at) = f.split_once(',').unwrap_or((f.as_str(), "0"));
            match &failed {
                Some(why) => HandoverRecord {
                    at_unix_millis: at.parse().unwrap_or(0),
                    from: software.to_owned(),
                    to: env!("CARGO_PKG_VERSION").to_owned(),
                    outcome: format!("fell back: {why}"),
                },
                None => HandoverRecord {
                    at_unix_millis: at.parse().unwrap_or(0),
                    from: software.to_owned(),
                    to: env!("CARGO_PKG_VERSION").to_owned(),
                    outcome: "done".into(),
                },
            }
        });
        if let Some(r) = &record {
            if failed.is_some() {
                tracing::error!(outcome = %r.outcome, "a handover to a new binary failed; this binary serves on with the same sockets");
            } else {
                tracing::info!(from = %r.from, "handed over: serving the sockets of the previous image");
            }
        }
        Origin { record }
    }
}

/// The way back of an image started by a handover, until it serves.
struct Fallback {
    binary: OwnedFd,
    argv: Vec<CString>,
    /// Duplicates of the sockets handed over: open whatever this image
    /// has dropped meanwhile.
    sockets: Vec<(Role, OwnedFd)>,
    from: String,
}

static FALLBACK: Mutex<Option<Fallback>> = Mutex::new(None);
static READY: AtomicBool = AtomicBool::new(false);

/// Arms the fallback of an image started by a handover: an error or a
/// panic before [`ready`], or no readiness within [`READY_WITHIN`], hands
/// the sockets back to the previous binary.
pub fn arm_fallback(sockets: &Sockets) {
    let Some(fd) = std::env::var(FALLBACK_VAR)
        .ok()
        .and_then(|v| v.parse::<RawFd>().ok())
    else {
        return;
    };
    // SAFETY: the previous image named `fd` in the environment as the
    // open binary it left for this one, read once, here.
    let binary = unsafe { OwnedFd::from_raw_fd(fd) };
    let _ = fcntl(&binary, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    // The previous image's arguments (this one's may differ).
    let argv = std::env::var(ARGV_VAR)
        .ok()
        .and_then(|v| serde_json::from_str::<Vec<String>>(&v).ok())
        .map(|a| a.into_iter().map(OsString::from).collect::<Vec<_>>())
        .unwrap_or_else(|| std::env::args_os().collect())
        .into_iter()
        .filter_map(|a| CString::new(a.as_bytes()).ok())
        .collect();
    let fallback = Fallback {
        binary,
        argv,
        sockets: sockets.inherited_dups(),
        from: std::env::var(FROM_VAR).unwrap_or_default(),
    };
    if let Ok(mut f) = FALLBACK.lock() {
        *f = Some(fallback);
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        fall_back(&format!("the new binary panicked: {info}"));
    }));
    let spawned = std::thread::Builder::new()
        .name("handover-watch".into())
        .spawn(|| {
            let deadline = Instant::now() + READY_WITHIN;
            while Instant::now() < deadline {
                if READY.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            fall_back(&format!(
                "the new binary was not serving within {} s",
                READY_WITHIN.as_secs()
            ));
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot watch the new image's start");
    }
}

/// This image serves: no way back is needed any more.
pub fn ready(sockets: &Sockets) {
    READY.store(true, Ordering::SeqCst);
    if let Ok(mut f) = FALLBACK.lock() {
        *f = None;
    }
    sockets.serving_now();
}

/// Hands the sockets back to the previous binary, if this image was
/// started by a handover and does not serve yet; returns otherwise.
pub fn fall_back(why: &str) {
    if READY.load(Ordering::SeqCst) {
        return;
    }
    let Some(f) = FALLBACK.lock().ok().and_then(|mut f| f.take()) else {
        return;
    };
    eprintln!("makiatto: handing the sockets back to the previous binary: {why}");
    let fds: Vec<(Role, RawFd)> = f
        .sockets
        .iter()
        .map(|(r, fd)| (*r, fd.as_raw_fd()))
        .collect();
    let env = environment(&[
        (SOCKETS_VAR, sockets_value(&fds)),
        (FROM_VAR, f.from.clone()),
        (FAILED_VAR, why.replace('\n', " ")),
    ]);
    for (_, fd) in &fds {
        clear_cloexec(*fd);
    }
    let err = nix::unistd::fexecve(f.binary.as_fd(), &f.argv, &env);
    eprintln!("makiatto: cannot go back to the previous binary: {err:?}");
}

fn clear_cloexec(fd: RawFd) {
    // SAFETY: `fd` is one of this process's open sockets, named by the
    // registry that owns it; only its close-on-exec flag changes.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let _ = fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()));
}

/// The current environment without the handover's variables, plus `set`.
fn environment(set: &[(&str, String)]) -> Vec<CString> {
    let ours = [SOCKETS_VAR, FALLBACK_VAR, FROM_VAR, FAILED_VAR, ARGV_VAR];
    std::env::vars_os()
        .filter(|(k, _)| !ours.iter().any(|o| k.as_bytes() == o.as_bytes()))
        .map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            kv
        })
        .chain(set.iter().map(|(k, v)| format!("{k}={v}").into_bytes()))
        .filter_map(|kv| CString::new(kv).ok())
        .collect()
}

/// Why a handover did not happen.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("cannot run {binary}: {error}")]
    Unrunnable { binary: String, error: String },
    #[error("{binary} failed its check ({why}); nothing changed")]
    Check { binary: String, why: String },
    #[error(
        "{binary} is makiatto {software}, which cannot take sockets over (no handover feature); restart it instead (`makiatto stop` and `makiatto run --detach`)"
    )]
    Unable { binary: String, software: String },
    #[error("a handover is already under way")]
    Busy,
    #[error(
        "the next image could not open the mesh device: {why}. A handover would leave this node without its mesh; restart it instead (`makiatto stop` and `makiatto run --detach`), or let the service user open the device as Debian's udev does (mode 0666)"
    )]
    NoMeshDevice { why: String },
}

/// Whether the next image, which runs as this process's user, can open
/// the TUN device that the mesh needs (it makes its device anew; a daemon
/// that dropped root keeps CAP_NET_ADMIN but not the right to open a
/// `/dev/net/tun` only root may open).
pub fn mesh_device_opens() -> Result<(), HandoverError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map(drop)
        .map_err(|e| HandoverError::NoMeshDevice {
            why: format!("/dev/net/tun: {e}"),
        })
}

/// What `makiatto handover-check` prints: the binary's version.
pub fn check(binary: &Path) -> Result<makiatto_protocol::Version, HandoverError> {
    let name = binary.display().to_string();
    let out = std::process::Command::new(binary)
        .arg("handover-check")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| HandoverError::Unrunnable {
            binary: name.clone(),
            error: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(HandoverError::Check {
            binary: name,
            why: format!(
                "{}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .map(|l| format!(": {l}"))
                    .unwrap_or_default()
            ),
        });
    }
    let version: makiatto_protocol::Version =
        serde_json::from_slice(&out.stdout).map_err(|e| HandoverError::Check {
            binary: name.clone(),
            why: format!("it printed no version: {e}"),
        })?;
    if !version.features.has(makiatto_protocol::Features::HANDOVER) {
        return Err(HandoverError::Unable {
            binary: name,
            software: version.software,
        });
    }
    Ok(version)
}

/// The handover of this image: at most one at a time.
pub struct Handover {
    pub sockets: Arc<Sockets>,
    pub drains: Drains,
    /// The arguments this process was started with (the new image gets
    /// them too).
    argv: Vec<OsString>,
    under_way: AtomicBool,
    /// How the handover that made this image went, if one did.
    pub origin: Option<HandoverRecord>,
}

impl Handover {
    pub fn new(sockets: Arc<Sockets>, origin: Origin) -> Handover {
        Handover {
            sockets,
            drains: Drains::default(),
            argv: std::env::args_os().collect(),
            under_way: AtomicBool::new(false),
            origin: origin.record,
        }
    }

    /// Claims the one handover.
    pub fn claim(&self) -> Result<(), HandoverError> {
        if self.under_way.swap(true, Ordering::SeqCst) {
            return Err(HandoverError::Busy);
        }
        Ok(())
    }

    /// Gives up the claim (the binary failed its check: nothing changed).
    pub fn release(&self) {
        self.under_way.store(false, Ordering::SeqCst);
    }

    /// Drains (connections, then datagrams). Returns what was still busy
    /// at each stage's deadline.
    pub async fn drain(&self) -> (usize, usize) {
        let cut = self.drains.connections.run(DRAIN_WITHIN).await;
        if cut > 0 {
            tracing::warn!(
                connections = cut,
                "handover: connections still busy after the drain are cut"
            );
        }
        let left = self.drains.datagrams.run(Duration::from_secs(2)).await;
        (cut, left)
    }

    /// Replaces this process's image with `binary`, handing it the
    /// sockets. Returns only if `execve` failed (then the caller starts
    /// this binary again the same way: the sockets stay open).
    pub fn exec(&self, binary: &Path, from: &str) -> std::io::Error {
        let sockets = self.sockets.serving_fds();
        // The way back: this image's own binary (its inode, whatever was
        // renamed over its path since).
        let own = match std::fs::File::open("/proc/self/exe") {
            Ok(f) => OwnedFd::from(f),
            Err(e) => return e,
        };
        let at = now_millis();
        let argv_json = serde_json::to_string(
            &self
                .argv
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>(),
        )
        .unwrap_or_default();
        let env = environment(&[
            (SOCKETS_VAR, sockets_value(&sockets)),
            (FALLBACK_VAR, own.as_raw_fd().to_string()),
            (FROM_VAR, format!("{from},{at}")),
            (ARGV_VAR, argv_json),
        ]);
        let mut keep: Vec<RawFd> = sockets.iter().map(|(_, fd)| *fd).collect();
        keep.push(own.as_raw_fd());
        close_on_exec_all_but(&keep);
        let Ok(path) = CString::new(binary.as_os_str().as_bytes()) else {
            return std::io::Error::other("the binary's path has a NUL byte");
        };
        let argv: Vec<CString> = std::iter::once(path.clone())
            .chain(
                self.argv
                    .iter()
                    .skip(1)
                    .filter_map(|a| CString::new(a.as_bytes()).ok()),
            )
            .collect();
        let err = nix::unistd::execve(&path, &argv, &env);
        // Still here: nothing was replaced. Start this binary again, the
        // same way (its own fallback is itself).
        tracing::error!(?err, binary = %binary.display(), "execve failed; restarting this binary on the same sockets");
        let again = environment(&[
            (SOCKETS_VAR, sockets_value(&sockets)),
            (FROM_VAR, format!("{from},{at}")),
            (
                FAILED_VAR,
                format!("execve of {} failed: {err:?}", binary.display()),
            ),
        ]);
        let own_argv: Vec<CString> = self
            .argv
            .iter()
            .filter_map(|a| CString::new(a.as_bytes()).ok())
            .collect();
        let err2 = nix::unistd::fexecve(own.as_fd(), &own_argv, &again);
        std::io::Error::other(format!(
            "execve failed ({err:?}), and so did restarting ({err2:?})"
        ))
    }

    /// What `makiatto health` says of this image.
    pub fn record(&self) -> Option<HandoverRecord> {
        self.origin.clone()
    }
}

/// Wall-clock Unix milliseconds.
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Marks every descriptor of this process close-on-exec, except `keep`
/// (whose flag is cleared) and the standard three.
fn close_on_exec_all_but(keep: &[RawFd]) {
    let open: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let wanted: BTreeMap<RawFd, bool> = open
        .into_iter()
        .filter(|fd| *fd > 2)
        .map(|fd| (fd, keep.contains(&fd)))
        .collect();
    for (fd, kept) in wanted {
        // SAFETY: `fd` was listed open a moment ago; only its
        // close-on-exec flag is set (a descriptor closed since makes
        // fcntl fail, which is ignored).
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let flag = if kept {
            FdFlag::empty()
        } else {
            FdFlag::FD_CLOEXEC
        };
        let _ = fcntl(borrowed, FcntlArg::F_SETFD(flag));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sockets_variable_reads_back_what_was_written() {
        let fds = [(Role::DnsUdp, 7), (Role::Https, 12), (Role::Control, 3)];
        let value = sockets_value(&fds);
        assert_eq!(value, "dns-udp:7,https:12,control:3");
        assert_eq!(parse_sockets(&value), fds);
        assert_eq!(parse_sockets("dns-udp:x,bogus:3,http:4"), [(Role::Http, 4)]);
    }

    #[tokio::test]
    async fn a_drain_waits_for_what_is_busy() {
        let d = Drain::default();
        assert!(!d.started());
        let busy = d.busy();
        let waiter = {
            let d = d.clone();
            tokio::spawn(async move { d.wait().await })
        };
        let run = {
            let d = d.clone();
            tokio::spawn(async move { d.run(Duration::from_secs(5)).await })
        };
        waiter.await.unwrap();
        assert!(d.started());
        drop(busy);
        assert_eq!(run.await.unwrap(), 0);
        let stuck = d.busy();
        assert_eq!(d.run(Duration::from_millis(50)).await, 1);
        drop(stuck);
    }
}
