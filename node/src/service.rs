//! Supervised mode for machines without systemd: `makiatto run --detach`
//! starts a supervisor in the background, which runs the daemon and starts
//! it again when it crashes (with backoff), until `makiatto stop`.
//!
//! Pid files live in the run directory (default `/run/makiatto`):
//! `supervisor.pid` and `makiatto.pid`.
//!
//! Where systemd runs, `makiatto service install` writes a hardened unit
//! instead, and `run --detach` / `stop` go through `systemctl`.
//!
//! `makiatto reload` asks the running daemon to hand its sockets over to a
//! binary (`handover`): the process stays (the supervisor and systemd see
//! the same pid), its image changes, and no socket is closed.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long `start` waits for the daemon to answer, and `stop` for it to end.
const WAIT: Duration = Duration::from_secs(30);
/// A daemon that stayed up this long is healthy again: backoff resets.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

fn supervisor_pidfile(run_dir: &Path) -> PathBuf {
    run_dir.join("supervisor.pid")
}

fn daemon_pidfile(run_dir: &Path) -> PathBuf {
    run_dir.join("makiatto.pid")
}

/// The pid in a pid file, if that process is alive.
pub fn live_pid(pidfile: &Path) -> Option<Pid> {
    let text = std::fs::read_to_string(pidfile).ok()?;
    let pid = Pid::from_raw(text.trim().parse().ok()?);
    kill(pid, None).ok()?;
    // A killed process whose parent has not reaped it yet is a zombie: dead.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    (state != Some('Z')).then_some(pid)
}

/// The running daemon's and supervisor's pids.
pub fn pids(run_dir: &Path) -> (Option<Pid>, Option<Pid>) {
    (
        live_pid(&daemon_pidfile(run_dir)),
        live_pid(&supervisor_pidfile(run_dir)),
    )
}

fn self_command(data_dir: &Path, run_dir: &Path) -> anyhow::Result<Command> {
    let exe = std::env::current_exe().context("cannot find the makiatto binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("--data-dir")
        .arg(data_dir)
        .arg("--run-dir")
        .arg(run_dir);
    Ok(cmd)
}

const UNIT_PATH: &str = "/etc/systemd/system/makiatto.service";

fn systemd_runs() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// Whether systemd manages the daemon on this machine.
fn under_systemd() -> bool {
    systemd_runs() && Path::new(UNIT_PATH).exists()
}

fn systemctl(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("systemctl")
        .args(args)
        .status()
        .context("cannot run systemctl")?;
    if !status.success() {
        bail!(
            "systemctl {} failed ({status}); see `journalctl -u makiatto`",
            args.join(" ")
        );
    }
    Ok(())
}

/// The hardened unit: the daemon runs as `makiatto` with only the two
/// capabilities it needs, a read-only system with its data directory
/// writable, and little else. `systemd-analyze security` rates its
/// exposure 1.9 of 10 ("OK"; `node/tests/service.rs` checks it stays
/// under 2.0). What it keeps, and why:
/// - CAP_NET_ADMIN (the mesh's TUN device and its address) and
///   CAP_NET_BIND_SERVICE (ports 53, 80, 443, 853), ambient so that a
///   handover's new image (`ExecReload`, `execve` in place) keeps them;
/// - the host's network (it serves it) and AF_NETLINK (`ip` configures
///   the mesh device); /dev/net/tun only of the devices;
/// - `@system-service` system calls, `@privileged` ones refused
///   (`@resources` stays: variants are prepared under SCHED_IDLE);
/// - all of /proc's files (loadavg and meminfo feed heartbeats and `maki
///   health`), other processes hidden.
pub fn unit(exe: &Path, data_dir: &Path) -> String {
    format!(
        "[Unit]\nDescription=Makiatto CDN node\nAfter=network-online.target\nWants=network-online.target\n\n\
         [Service]\nExecStart={exe} --data-dir {data} run\n\
         ExecReload={exe} --data-dir {data} reload\n\
         User=makiatto\nGroup=makiatto\n\
         AmbientCapabilities=CAP_NET_ADMIN CAP_NET_BIND_SERVICE\nCapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE\n\
         NoNewPrivileges=yes\nProtectSystem=strict\nReadWritePaths={data}\nProtectHome=yes\nPrivateTmp=yes\nPrivateMounts=yes\n\
         ProtectKernelModules=yes\nProtectKernelLogs=yes\nProtectKernelTunables=yes\nProtectControlGroups=yes\n\
         ProtectClock=yes\nProtectHostname=yes\nProtectProc=invisible\n\
         RestrictSUIDSGID=yes\nRestrictRealtime=yes\nRestrictNamespaces=yes\n\
         RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK\n\
         LockPersonality=yes\nMemoryDenyWriteExecute=yes\nRemoveIPC=yes\nUMask=0077\n\
         SystemCallArchitectures=native\nSystemCallFilter=@system-service\nSystemCallFilter=~@privileged\nSystemCallErrorNumber=EPERM\n\
         DevicePolicy=closed\nDeviceAllow=/dev/net/tun rw\n\
         RuntimeDirectory=makiatto\nRestart=always\nRestartSec=2\nLimitNOFILE=1048576\n\n\
         [Install]\nWantedBy=multi-user.target\n",
        exe = exe.display(),
        data = data_dir.display()
    )
}

/// `makiatto service install`: a systemd unit where systemd runs; elsewhere
/// nothing to install (the supervised mode needs none). With `print`,
/// the unit is printed instead, wherever this runs.
pub fn install(data_dir: &Path, print: bool) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the makiatto binary")?;
    if print {
        print!("{}", unit(&exe, data_dir));
        return Ok(());
    }
    if !systemd_runs() {
        println!("no systemd on this machine: makiatto runs supervised (makiatto run --detach)");
        return Ok(());
    }
    std::fs::write(UNIT_PATH, unit(&exe, data_dir))
        .with_context(|| format!("cannot write {UNIT_PATH}"))?;
    systemctl(&["daemon-reload"])?;
    systemctl(&["enable", "makiatto"])?;
    println!("installed {UNIT_PATH}");
    Ok(())
}

fn wait_for_socket(data_dir: &Path, what: &str) -> anyhow::Result<()> {
    let socket = crate::daemon::socket_path(data_dir);
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "the daemon did not answer within {} s; see {what}",
        WAIT.as_secs()
    )
}

/// Starts the daemon in the background (systemd, or the supervisor) and
/// waits until it answers.
pub fn start_detached(data_dir: &Path, run_dir: &Path) -> anyhow::Result<()> {
    if under_systemd() {
        systemctl(&["start", "makiatto"])?;
        wait_for_socket(data_dir, "`journalctl -u makiatto`")?;
        println!("makiatto started (systemd)");
        return Ok(());
    }
    if let Some(pid) = live_pid(&supervisor_pidfile(run_dir)) {
        println!("makiatto is already running (supervisor pid {pid})");
        return Ok(());
    }
    std::fs::create_dir_all(run_dir)
        .with_context(|| format!("cannot create {}", run_dir.display()))?;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let log_path = data_dir.join("daemon.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let mut supervisor = self_command(data_dir, run_dir)?
        .arg("supervise")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("cannot start the supervisor")?;
    let socket = crate::daemon::socket_path(data_dir);
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            println!("makiatto started (supervisor pid {})", supervisor.id());
            return Ok(());
        }
        if let Some(status) = supervisor.try_wait()? {
            bail!(
                "the supervisor exited ({status}); see {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "the daemon did not answer within {} s; see {}",
        WAIT.as_secs(),
        log_path.display()
    )
}

/// Stops the daemon (through systemd, or its supervisor) and waits for it to end.
pub fn stop(run_dir: &Path) -> anyhow::Result<()> {
    if under_systemd() {
        systemctl(&["stop", "makiatto"])?;
        println!("makiatto stopped (systemd)");
        return Ok(());
    }
    let (daemon, supervisor) = pids(run_dir);
    let target = supervisor.or(daemon);
    let Some(pid) = target else {
        println!("makiatto is not running");
        return Ok(());
    };
    kill(pid, Signal::SIGTERM).with_context(|| format!("cannot signal pid {pid}"))?;
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        let (d, s) = pids(run_dir);
        if d.is_none() && s.is_none() {
            println!("makiatto stopped");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("makiatto did not stop within {} s", WAIT.as_secs())
}

/// The supervisor loop (`makiatto supervise`, started by `start_detached`).
pub fn supervise(data_dir: &Path, run_dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(run_dir)?;
    std::fs::write(supervisor_pidfile(run_dir), std::process::id().to_string())?;
    let stopping = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stopping.clone())?;
    }
    let mut backoff = Duration::from_millis(200);
    while !stopping.load(Ordering::SeqCst) {
        let started = Instant::now();
        let mut child: Child = self_command(data_dir, run_dir)?
            .arg("run")
            .spawn()
            .context("cannot start the daemon")?;
        std::fs::write(daemon_pidfile(run_dir), child.id().to_string())?;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break Some(status);
            }
            if stopping.load(Ordering::SeqCst) {
                let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let _ = std::fs::remove_file(daemon_pidfile(run_dir));
        let Some(status) = status else { break };
        if started.elapsed() > HEALTHY_AFTER {
            backoff = Duration::from_millis(200);
        }
        eprintln!(
            "makiatto supervisor: the daemon exited ({status}); starting it again in {backoff:?}"
        );
        let until = Instant::now() + backoff;
        while Instant::now() < until && !stopping.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    let _ = std::fs::remove_file(supervisor_pidfile(run_dir));
    Ok(())
}

/// How long `reload` waits for the new image to serve.
const RELOAD_WITHIN: Duration = Duration::from_secs(90);

/// `makiatto reload`: the running daemon hands its sockets over to
/// `binary` (default: the path it was started from); waits until the new
/// image serves, or says why the previous one serves on.
pub fn reload(data_dir: &Path, binary: Option<&Path>) -> anyhow::Result<()> {
    use makiatto_protocol::health::HealthReport;
    use makiatto_protocol::request as op;
    use makiatto_protocol::{Envelope, health::HandoverStarted};
    let socket = crate::daemon::socket_path(data_dir);
    let binary = match binary {
        Some(b) => Some(
            std::path::absolute(b)
                .with_context(|| format!("cannot resolve {}", b.display()))?
                .display()
                .to_string(),
        ),
        None => None,
    };
    let answer = crate::control::call(&socket, &Envelope::ours(op::Handover { binary }))
        .with_context(|| {
            format!(
                "no daemon answers on {} (start it with `makiatto run --detach`)",
                socket.display()
            )
        })?;
    let started: HandoverStarted = answer
        .decode()
        .map_err(|e| anyhow::anyhow!("the daemon refused the handover: {e}"))?;
    eprintln!(
        "handing over: makiatto {} (pid {}) to {} ({}); no socket is closed",
        started.from, started.pid, started.binary, started.to
    );
    let deadline = Instant::now() + RELOAD_WITHIN;
    let ask = Envelope::ours(op::Health {});
    while Instant::now() < deadline {
        let health = crate::control::call_within(&socket, &ask, Some(Duration::from_secs(5)))
            .ok()
            .and_then(|a| a.decode::<HealthReport>().ok());
        if let Some(daemon) = health.and_then(|h| h.daemon)
            && daemon.started_unix_millis != started.from_started_unix_millis
        {
            let outcome = daemon
                .last_handover
                .map(|h| h.outcome)
                .unwrap_or_else(|| "done".into());
            if outcome == "done" {
                println!(
                    "makiatto {} serves (pid {}, {} sockets handed over)",
                    daemon.software, daemon.pid, daemon.sockets
                );
                return Ok(());
            }
            bail!(
                "the handover to {} did not take ({outcome}); makiatto {} serves on, with the same sockets",
                started.binary,
                daemon.software
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "the daemon did not serve again within {} s; see {}",
        RELOAD_WITHIN.as_secs(),
        data_dir.join("daemon.log").display()
    )
}
