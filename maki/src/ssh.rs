//! SSH to machines: host keys pinned at first contact, commands, uploads
//! streamed over an exec channel, and the daemon's control protocol.
//!
//! On first contact the host key is read with russh, shown for confirmation
//! (on a terminal) or compared with `--accept-host-key` (in scripts), and
//! pinned in the profile; from then on async-ssh2-tokio refuses any other key.

use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use async_ssh2_tokio::{AuthMethod, Client, ServerCheckMethod};
use indicatif::{ProgressBar, ProgressStyle};
use makiatto_protocol::blob_stream::{self, Received};
use makiatto_protocol::client::{self, Answers, Batch};
use makiatto_protocol::version::Version;
use makiatto_protocol::{ControlError, Operation};
use russh::keys::{HashAlg, PublicKey};
use tokio::io::AsyncReadExt;

use crate::prompt::confirm;

/// Where to connect and as whom.
#[derive(Debug, Clone)]
pub struct Target {
    pub user: String,
    pub host: String,
    pub port: u16,
    pub key_file: PathBuf,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}:{}", self.user, self.host, self.port)
    }
}

/// How to treat the host key.
pub enum HostKeyPolicy<'a> {
    /// Must equal this pinned key (OpenSSH form).
    Pinned(&'a str),
    /// First contact: accept the key with this fingerprint (`SHA256:…`), or
    /// ask on a terminal when none is given.
    FirstContact { accept: Option<&'a str> },
}

/// A command's result.
pub struct Output {
    pub stdout: String,
    pub stderr: String,
    pub status: u32,
}

/// An authenticated session to one machine.
pub struct Remote {
    /// The SSH connection: made at once by [`Remote::connect`]; made when
    /// first needed by a remote reached through a kept connection
    /// (`mux.rs`), which carries control requests only.
    link: tokio::sync::OnceCell<Link>,
    target: Target,
    /// The host key as pinned (OpenSSH form).
    pub host_key: String,
    /// One `makiatto control` kept open for every control request of this
    /// connection: starting a command costs a session and a shell on the
    /// machine (150–200 ms on the test hosts), a request on an open one a
    /// round trip.
    control: tokio::sync::Mutex<Option<ControlSession>>,
}

/// What reading an exchange's answers gave: the result (and the daemon's
/// version, once known), or a request to try again over a fresh connection.
enum Exchanged<T> {
    Done(T, Option<Version>),
    Again,
}

/// How long a kept connection (`mux.rs`) may take to answer before the
/// command connects itself.
const KEPT_ANSWER_WITHIN: Duration = Duration::from_secs(20);

/// How long a login may take: the TCP connection, the key exchange and
/// the authentication together. A machine that is down, or cut off
/// without a word (its packets dropped, so no refusal ever comes), is
/// given up after this, not after TCP's minutes of retries.
pub const LOGIN_WITHIN: Duration = Duration::from_secs(10);

/// How long a machine's `makiatto control` may take to answer a `hello`
/// on a connection just made (starting it costs a session and a shell).
pub const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// How often an idle connection sends an SSH keepalive, and how many may
/// go unanswered before it counts as dead: a connection to a machine that
/// vanished (a kept one above all, which no command watches) fails within
/// about 15 s instead of hanging until TCP gives up.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(5);
const KEEPALIVES_UNANSWERED: usize = 2;

/// A logged-in SSH connection.
struct Link {
    client: Client,
    /// Commands run through `sudo -n` when the user is not root.
    sudo: bool,
    /// Keeps the first answers from waiting on a delayed acknowledgement.
    _prompt_ack: Option<crate::prompt_ack::PromptAck>,
}

impl Link {
    fn privileged(&self, command: &str) -> String {
        if self.sudo {
            format!("sudo -n sh -c {}", shell_quote(command))
        } else {
            command.to_owned()
        }
    }
}

/// A running `makiatto control` (over an SSH channel, or through a kept
/// connection's socket): requests in, one answer line each out.
pub struct ControlSession {
    reader: tokio::io::BufReader<Box<dyn tokio::io::AsyncRead + Send + Unpin>>,
    writer: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
    /// Through a kept connection (which may have gone stale).
    kept: bool,
    /// The daemon's version, once its `hello` was answered.
    daemon: Option<Version>,
}

impl ControlSession {
    pub fn new(
        reader: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
        writer: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
        kept: bool,
    ) -> ControlSession {
        ControlSession {
            reader: tokio::io::BufReader::new(reader),
            writer,
            kept,
            daemon: None,
        }
    }
}

/// The default private key: `~/.ssh/id_ed25519`, then `~/.ssh/id_rsa`.
pub fn default_key_file() -> anyhow::Result<PathBuf> {
    let home = std::env::home_dir().context("cannot find the home directory")?;
    for name in ["id_ed25519", "id_rsa"] {
        let p = home.join(".ssh").join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("no SSH key found in ~/.ssh (id_ed25519 or id_rsa); pass --ssh-priv-key PATH")
}

struct KeyCatcher(Arc<Mutex<Option<PublicKey>>>);

impl russh::client::Handler for KeyCatcher {
    type Error = russh::Error;
    async fn check_server_key(&mut self, key: &PublicKey) -> Result<bool, Self::Error> {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(key.clone());
        }
        // Refuse: this connection only reads the key.
        Ok(false)
    }
}

fn socket_addr(target: &Target) -> anyhow::Result<std::net::SocketAddr> {
    (target.host.as_str(), target.port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {}", target.host))?
        .next()
        .with_context(|| format!("{} has no address", target.host))
}

/// Reads the server's host key without authenticating.
async fn read_host_key(target: &Target) -> anyhow::Result<PublicKey> {
    let slot = Arc::new(Mutex::new(None));
    let config = Arc::new(russh::client::Config::default());
    let addr = socket_addr(target)?;
    let attempt = tokio::time::timeout(
        Duration::from_secs(15),
        russh::client::connect(config, addr, KeyCatcher(slot.clone())),
    )
    .await;
    let key = slot.lock().ok().and_then(|s| s.clone());
    match (key, attempt) {
        (Some(k), _) => Ok(k),
        (None, Err(_)) => bail!(
            "{target}: no answer within 15 s (is the machine up and port {} open?)",
            target.port
        ),
        (None, Ok(Err(e))) => bail!("{target}: cannot connect: {e}"),
        (None, Ok(Ok(_))) => bail!("{target}: the server sent no host key"),
    }
}

/// The SHA-256 fingerprint as OpenSSH prints it.
pub fn fingerprint(openssh_key: &str) -> String {
    match PublicKey::from_openssh(openssh_key) {
        Ok(k) => k.fingerprint(HashAlg::Sha256).to_string(),
        Err(_) => "(unreadable key)".into(),
    }
}

/// The SSH client's settings: AES-GCM first. Machines with AES
/// instructions (every server CPU of the last decade) run it at several
/// times ChaCha20-Poly1305's speed, which russh prefers by default. An
/// upload is bound by that cipher on both ends: in maki and in sshd.
/// ChaCha20-Poly1305 stays, for servers that offer nothing else.
fn client_config() -> russh::client::Config {
    use russh::cipher;
    const CIPHERS: &[cipher::Name] = &[
        cipher::AES_128_GCM,
        cipher::AES_256_GCM,
        cipher::CHACHA20_POLY1305,
        cipher::AES_256_CTR,
        cipher::AES_192_CTR,
        cipher::AES_128_CTR,
    ];
    russh::client::Config {
        preferred: russh::Preferred {
            cipher: std::borrow::Cow::Borrowed(CIPHERS),
            ..russh::Preferred::default()
        },
        nodelay: true,
        keepalive_interval: Some(KEEPALIVE_EVERY),
        keepalive_max: KEEPALIVES_UNANSWERED,
        ..russh::client::Config::default()
    }
}

/// Why a login failed: the host key, or anything else (already worded).
enum LoginError {
    HostKey,
    Other(anyhow::Error),
}

impl Remote {
    /// Connects, checking (or pinning) the host key and checking privileges.
    pub async fn connect(target: &Target, policy: HostKeyPolicy<'_>) -> anyhow::Result<Remote> {
        // A pinned key is checked inside the one connection that logs in;
        // the key is read apart (a second key exchange) only on first
        // contact, or to say which key a machine presents instead.
        let seen_openssh = match policy {
            HostKeyPolicy::Pinned(pinned) => {
                let (link, openssh) = Self::pinned_login(target, pinned).await?;
                return Ok(Self::with_link(target, link, openssh));
            }
            HostKeyPolicy::FirstContact { accept } => {
                let seen = read_host_key(target).await?;
                let seen_fp = seen.fingerprint(HashAlg::Sha256).to_string();
                match accept {
                    Some(fp) if fp != seen_fp => bail!(
                        "{target}: the host key's fingerprint is {seen_fp}, not {fp} as given with --accept-host-key; refusing to connect"
                    ),
                    Some(_) => {}
                    None => {
                        eprintln!("{target}: first contact; the host key fingerprint is {seen_fp}");
                        if !confirm(
                            "Is this the machine's key? (compare with `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on it)",
                        )? {
                            bail!(
                                "{target}: host key not confirmed. On a terminal answer y; in scripts pass --accept-host-key {seen_fp}"
                            );
                        }
                    }
                }
                seen.to_openssh().context("cannot encode the host key")?
            }
        };
        match Self::login(target, &seen_openssh).await {
            Ok(client) => {
                let link = Self::finish(target, client).await?;
                Ok(Self::with_link(target, link, seen_openssh))
            }
            Err(LoginError::HostKey) => {
                bail!("{target}: the machine presented another host key while connecting; refusing")
            }
            Err(LoginError::Other(e)) => Err(e),
        }
    }

    /// Logs in to a machine whose host key is pinned (`pinned`, OpenSSH
    /// form); a machine presenting another key is refused, saying which.
    /// Returns the login and the key as OpenSSH writes it.
    async fn pinned_login(target: &Target, pinned: &str) -> anyhow::Result<(Link, String)> {
        let pinned_key = PublicKey::from_openssh(pinned)
            .context("the pinned host key in the profile is not readable")?;
        let openssh = pinned_key
            .to_openssh()
            .context("cannot encode the host key")?;
        match Self::login(target, &openssh).await {
            Ok(client) => Ok((Self::finish(target, client).await?, openssh)),
            Err(LoginError::HostKey) => {
                let seen = read_host_key(target).await?;
                if pinned_key.key_data() != seen.key_data() {
                    bail!(
                        "{target}: HOST KEY CHANGED. The profile pins {} but the machine now presents {}.\n\
                         This may be a machine reinstalled or an attack. If you are sure the machine was rebuilt, \
                         remove it from the profile and run `maki machine init --recreate` or `maki machine add`.",
                        fingerprint(pinned),
                        seen.fingerprint(HashAlg::Sha256)
                    );
                }
                bail!("{target}: the host key check failed although the key is the pinned one")
            }
            Err(LoginError::Other(e)) => Err(e),
        }
    }

    fn with_link(target: &Target, link: Link, host_key: String) -> Remote {
        Remote {
            link: tokio::sync::OnceCell::new_with(Some(link)),
            target: target.clone(),
            host_key,
            control: tokio::sync::Mutex::new(None),
        }
    }

    /// A remote whose control requests go through `session` (a kept
    /// connection); anything else logs in when first needed, the host key
    /// pinned as `host_key`.
    pub fn kept(target: &Target, host_key: &str, session: ControlSession) -> Remote {
        Remote {
            link: tokio::sync::OnceCell::new(),
            target: target.clone(),
            host_key: host_key.to_owned(),
            control: tokio::sync::Mutex::new(Some(session)),
        }
    }

    /// Whether this remote's own SSH connection has ended (keepalives
    /// unanswered, or the machine closed it). A remote with no connection
    /// of its own yet is not closed.
    pub fn is_closed(&self) -> bool {
        self.link.get().is_some_and(|l| l.client.is_closed())
    }

    /// The SSH connection, made now if this remote has none yet.
    async fn link(&self) -> anyhow::Result<&Link> {
        self.link
            .get_or_try_init(|| async {
                let (link, _) = Self::pinned_login(&self.target, &self.host_key).await?;
                Ok(link)
            })
            .await
    }

    /// Logs in, accepting only the host key `openssh`.
    async fn login(target: &Target, openssh: &str) -> Result<Client, LoginError> {
        let base64 = openssh
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let addr = socket_addr(target).map_err(LoginError::Other)?;
        let client = tokio::time::timeout(
            LOGIN_WITHIN,
            Client::connect_with_config(
                addr,
                &target.user,
                AuthMethod::with_key_file(&target.key_file, None),
                ServerCheckMethod::PublicKey(base64),
                client_config(),
            ),
        )
        .await
        .map_err(|_| {
            LoginError::Other(anyhow::anyhow!(
                "{target}: no SSH login within {} s (is the machine up, and port {} reachable from here?)",
                LOGIN_WITHIN.as_secs(),
                target.port
            ))
        })?;
        client.map_err(|e| match e {
            async_ssh2_tokio::Error::ServerCheckFailed
            | async_ssh2_tokio::Error::SshError(russh::Error::UnknownKey) => LoginError::HostKey,
            async_ssh2_tokio::Error::KeyAuthFailed => LoginError::Other(anyhow::anyhow!(
                "{target}: the server refused the key {} (is its public half in ~{}/.ssh/authorized_keys?)",
                target.key_file.display(),
                target.user
            )),
            async_ssh2_tokio::Error::KeyInvalid(e) => LoginError::Other(anyhow::anyhow!(
                "{}: not a usable private key: {e}",
                target.key_file.display()
            )),
            other => LoginError::Other(anyhow::anyhow!("{target}: SSH failed: {other}")),
        })
    }

    /// The logged-in session, once privileges are checked.
    async fn finish(target: &Target, client: Client) -> anyhow::Result<Link> {
        let prompt_ack = crate::prompt_ack::start(*client.get_connection_address());
        let mut link = Link {
            client,
            sudo: false,
            _prompt_ack: prompt_ack,
        };
        if target.user != "root" {
            let check = link.client.execute("sudo -n true").await?;
            if check.exit_status != 0 {
                bail!(
                    "{target}: {} may not use sudo without a password here; give it passwordless sudo or connect as root",
                    target.user
                );
            }
            link.sudo = true;
        }
        Ok(link)
    }

    /// Runs a command (as root) and returns what it printed.
    pub async fn run(&self, command: &str) -> anyhow::Result<Output> {
        let link = self.link().await?;
        let r = link
            .client
            .execute(&link.privileged(command))
            .await
            .with_context(|| format!("{}: cannot run a command", self.target))?;
        Ok(Output {
            stdout: r.stdout,
            stderr: r.stderr,
            status: r.exit_status,
        })
    }

    /// Runs a command that must succeed; its stdout.
    pub async fn run_ok(&self, command: &str) -> anyhow::Result<String> {
        let out = self.run(command).await?;
        if out.status != 0 {
            let first_word = command.split_whitespace().next().unwrap_or(command);
            bail!(
                "{}: `{first_word}` failed (exit {}): {}",
                self.target,
                out.status,
                out.stderr.trim()
            );
        }
        Ok(out.stdout)
    }

    /// Runs a command (as root) with what `feed` sends on its standard
    /// input, then end-of-file; returns its exit status, stdout and stderr.
    ///
    /// A sender of the input stays alive until the command ends: the SSH
    /// library's loop polls the input channel with every message, and a
    /// channel whose senders are all gone answers at once, forever, which
    /// spun a core for as long as the command ran. If `feed` fails, the
    /// channel is dropped (the command sees its input cut) and that error
    /// is returned.
    async fn exec_fed<F, Fut>(
        &self,
        command: &str,
        feed: F,
    ) -> anyhow::Result<(u32, Vec<u8>, Vec<u8>)>
    where
        F: FnOnce(tokio::sync::mpsc::Sender<Vec<u8>>) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>>,
    {
        let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
        let (err_tx, mut err_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
        let (in_tx, in_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
        let link = self.link().await?;
        let cmd = link.privileged(command);
        let exec = async {
            link.client
                .execute_io(&cmd, out_tx, Some(err_tx), Some(in_rx), false, None)
                .await
                .with_context(|| format!("{}: the remote command failed", self.target))
        };
        let feeding = async move {
            feed(in_tx.clone()).await?;
            // An empty message is end-of-file; a command that already
            // exited no longer reads, which is not an error here.
            let _ = in_tx.send(Vec::new()).await;
            anyhow::Ok(in_tx)
        };
        let out = async { anyhow::Ok(collect(&mut out_rx).await) };
        let err = async { anyhow::Ok(collect(&mut err_rx).await) };
        let (status, _held, out, err) = tokio::try_join!(exec, feeding, out, err)?;
        Ok((status, out, err))
    }

    /// Streams a local file to `remote_path` (atomically: a temporary name,
    /// then a rename), with a progress bar.
    pub async fn upload(
        &self,
        local: &Path,
        remote_path: &str,
        mode: u32,
        progress: &ProgressBar,
    ) -> anyhow::Result<()> {
        let mut file = tokio::fs::File::open(local)
            .await
            .with_context(|| format!("cannot read {}", local.display()))?;
        let size = file.metadata().await?.len();
        progress.set_length(size);
        progress.set_position(0);
        let tmp = format!("{remote_path}.upload");
        let cmd = format!(
            "cat > {tmp} && chmod {mode:o} {tmp} && mv -f {tmp} {remote_path}",
            tmp = shell_quote(&tmp),
            remote_path = shell_quote(remote_path)
        );
        let (status, _, err) = self
            .exec_fed(&cmd, |tx| async move {
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = file.read(&mut buf).await?;
                    if n == 0 {
                        return Ok(());
                    }
                    if tx.send(buf[..n].to_vec()).await.is_err() {
                        return Ok(());
                    }
                    progress.inc(n as u64);
                }
            })
            .await?;
        if status != 0 {
            bail!(
                "{}: cannot write {remote_path} (exit {status}): {} (is the disk full?)",
                self.target,
                String::from_utf8_lossy(&err).trim()
            );
        }
        Ok(())
    }

    /// Streams blobs to `makiatto blobs receive` (each: hash, size, bytes)
    /// and returns its JSON report. Files are read as they are sent, never
    /// held whole in memory: a blocking thread reads them in order and
    /// packs them into messages of about [`SEND_BATCH`] bytes, so ten
    /// thousand small files make a few hundred SSH messages, not twenty
    /// thousand, and no runtime handoff per file.
    pub async fn stream_blobs(
        &self,
        blobs: Vec<(makiatto_events::Blake3Hash, crate::sync::Source)>,
        progress: &ProgressBar,
        files: &FileCount,
    ) -> anyhow::Result<Received> {
        let (progress, files) = (progress.clone(), files.clone());
        let (_, out, err) = self
            .exec_fed("makiatto blobs receive", |tx| async move {
                tokio::task::spawn_blocking(move || pack_blobs(&blobs, &tx, &progress, &files))
                    .await
                    .map_err(|e| anyhow::anyhow!("the file reader stopped: {e}"))?
            })
            .await?;
        serde_json::from_slice(&out).with_context(|| {
            format!(
                "{}: makiatto blobs receive failed: {}",
                self.target,
                String::from_utf8_lossy(&err).trim()
            )
        })
    }

    /// One control request to the node's daemon (through `makiatto
    /// control`, started once per connection), its answer as the
    /// operation's own output.
    pub async fn ask<O: Operation>(&self, operation: O) -> anyhow::Result<O::Output> {
        let mut batch = Batch::new();
        let slot = batch.push(operation);
        let mut answers = self.send(batch).await?;
        answers
            .take(slot)
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.target))
    }

    /// Whether the machine's `makiatto control` answers a `hello` within
    /// `within`, on a remote just connected (whose session has not met the
    /// daemon yet); the version learnt spares the next batch its `hello`.
    /// A kept connection that went dead, a machine cut off, a node whose
    /// control does not start: each fails here, promptly, so a command can
    /// go to another machine.
    pub async fn probe(&self, within: Duration) -> anyhow::Result<()> {
        tokio::time::timeout(within, self.send(Batch::new()))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "{}: makiatto control did not answer within {} s",
                    self.target,
                    within.as_secs()
                )
            })?
            .map(|_| ())
    }

    /// Several control requests in one round trip; each answer is taken
    /// from the result with its slot (a refused request gives its error
    /// there, without failing the others).
    ///
    /// A kept connection that fails is dropped and the requests sent again
    /// over a connection of this process: every control request is a read
    /// or idempotent (appending an event twice stores it once). So is a
    /// kept `makiatto control` started before the machine's binary was
    /// upgraded, which may not know a newer request.
    pub async fn send(&self, batch: Batch) -> anyhow::Result<Answers> {
        self.exchange_retrying(
            |daemon| client::lines(&batch, daemon).map_err(anyhow::Error::from),
            |daemon, lines, may_retry| {
                let answers = client::read(&batch, daemon, &lines)?;
                if may_retry && answers.outdated() {
                    return Ok(Exchanged::Again);
                }
                let daemon = answers.daemon().clone();
                Ok(Exchanged::Done(answers, Some(daemon)))
            },
        )
        .await
        .map_err(|e| match e.downcast::<ControlError>() {
            Ok(e) => anyhow::anyhow!("{}: {e}", self.target),
            Err(e) => e,
        })
    }

    /// Request lines in, one answer line each out, as `makiatto control`
    /// speaks, with no `hello` of their own (the keeper of a kept
    /// connection forwards other commands' lines this way).
    pub async fn control_lines(&self, requests: &[String]) -> anyhow::Result<Vec<String>> {
        self.exchange_retrying(
            |_| Ok(requests.to_vec()),
            |_, lines, _| Ok(Exchanged::Done(lines, None)),
        )
        .await
    }

    /// One exchange of lines over this remote's `makiatto control`, started
    /// when there is none. `lines` makes the request lines from what the
    /// session knows of the daemon; `read` reads the answer lines (told
    /// whether it may ask for another try). A kept connection that fails,
    /// or whose answers `read` turns down, is dropped and the lines sent
    /// again over a connection of this process: every control request is
    /// a read or idempotent (appending an event twice stores it once).
    async fn exchange_retrying<T>(
        &self,
        lines: impl Fn(Option<&Version>) -> anyhow::Result<Vec<String>>,
        read: impl Fn(Option<Version>, Vec<String>, bool) -> anyhow::Result<Exchanged<T>>,
    ) -> anyhow::Result<T> {
        let mut slot = self.control.lock().await;
        for attempt in 0..2 {
            let session = match slot.as_mut() {
                Some(s) => s,
                None => slot.insert(self.open_control().await?),
            };
            let may_retry = session.kept && attempt == 0;
            let requests = lines(session.daemon.as_ref())?;
            match Self::exchange_within(session, &requests).await {
                Ok(answers) => match read(session.daemon.clone(), answers, may_retry)? {
                    Exchanged::Done(out, daemon) => {
                        if daemon.is_some() {
                            session.daemon = daemon;
                        }
                        return Ok(out);
                    }
                    Exchanged::Again => *slot = None,
                },
                Err(e) => {
                    // Out of step or gone: the next request starts another.
                    *slot = None;
                    if !may_retry {
                        return Err(e.context(format!(
                            "{}: makiatto control stopped answering (run `maki health` or look at the node's log)",
                            self.target
                        )));
                    }
                }
            }
        }
        bail!("{}: makiatto control stopped answering", self.target)
    }

    /// [`Remote::exchange`], bounded for a kept connection: one to a
    /// machine that vanished without a word would hold the command until
    /// TCP gives up.
    async fn exchange_within(
        session: &mut ControlSession,
        requests: &[String],
    ) -> anyhow::Result<Vec<String>> {
        if session.kept {
            tokio::time::timeout(KEPT_ANSWER_WITHIN, Self::exchange(session, requests))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the kept connection did not answer")))
        } else {
            Self::exchange(session, requests).await
        }
    }

    async fn open_control(&self) -> anyhow::Result<ControlSession> {
        let link = self.link().await?;
        let channel = link
            .client
            .get_channel()
            .await
            .with_context(|| format!("{}: cannot open a session", self.target))?;
        channel
            .exec(true, link.privileged("makiatto control"))
            .await
            .with_context(|| format!("{}: cannot start makiatto control", self.target))?;
        let (reader, writer) = tokio::io::split(channel.into_stream());
        Ok(ControlSession::new(
            Box::new(reader),
            Box::new(writer),
            false,
        ))
    }

    /// Writes the request lines and reads one answer line per request, all
    /// of them (so the session stays in step even when one is an error).
    async fn exchange(
        session: &mut ControlSession,
        requests: &[String],
    ) -> anyhow::Result<Vec<String>> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let mut input = Vec::new();
        for r in requests {
            if r.contains('\n') {
                bail!("a control request spans lines");
            }
            input.extend_from_slice(r.as_bytes());
            input.push(b'\n');
        }
        session.writer.write_all(&input).await?;
        session.writer.flush().await?;
        let mut lines = Vec::with_capacity(requests.len());
        for _ in requests {
            let mut line = String::new();
            if session.reader.read_line(&mut line).await? == 0 {
                bail!(
                    "makiatto control ended (is makiatto installed and its data directory readable?)"
                );
            }
            lines.push(line.trim_end().to_owned());
        }
        Ok(lines)
    }

    pub fn target(&self) -> &Target {
        &self.target
    }
}

/// Everything a command's output channel yields, until it closes.
async fn collect(rx: &mut tokio::sync::mpsc::Receiver<Vec<u8>>) -> Vec<u8> {
    let mut v = Vec::new();
    while let Some(c) = rx.recv().await {
        v.extend(c);
    }
    v
}

/// Quotes a string for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// About how many bytes [`Remote::stream_blobs`] puts in one message.
const SEND_BATCH: usize = 256 * 1024;

/// Packs blobs (hash, size, bytes each) into messages of about
/// [`SEND_BATCH`] bytes and sends them; stops quietly when the remote
/// command no longer reads.
fn pack_blobs(
    blobs: &[(makiatto_events::Blake3Hash, crate::sync::Source)],
    tx: &tokio::sync::mpsc::Sender<Vec<u8>>,
    progress: &ProgressBar,
    files: &FileCount,
) -> anyhow::Result<()> {
    use std::io::Read;
    let mut batch: Vec<u8> = Vec::with_capacity(SEND_BATCH);
    // False once the command stopped reading.
    let send = |batch: &mut Vec<u8>| {
        let full = std::mem::replace(batch, Vec::with_capacity(SEND_BATCH));
        full.is_empty() || tx.blocking_send(full).is_ok()
    };
    for (hash, source) in blobs {
        batch.extend_from_slice(&blob_stream::header(hash, source.size()));
        match source {
            crate::sync::Source::Bytes(b) => {
                batch.extend_from_slice(b);
                progress.inc(b.len() as u64);
            }
            crate::sync::Source::File(path, size) => {
                let mut file = std::fs::File::open(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let mut left = *size;
                while left > 0 {
                    if batch.len() >= SEND_BATCH && !send(&mut batch) {
                        return Ok(());
                    }
                    let room = SEND_BATCH.saturating_sub(batch.len()).max(64 * 1024);
                    let want = left.min(room as u64) as usize;
                    let start = batch.len();
                    batch.resize(start + want, 0);
                    let n = file
                        .read(&mut batch[start..])
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    batch.truncate(start + n);
                    if n == 0 {
                        bail!(
                            "{} shrank while it was sent; run maki sync again",
                            path.display()
                        );
                    }
                    progress.inc(n as u64);
                    left -= n as u64;
                }
            }
        }
        files.done(1);
        if batch.len() >= SEND_BATCH && !send(&mut batch) {
            return Ok(());
        }
    }
    send(&mut batch);
    Ok(())
}

/// Files done and files in all, shown by a [`files_bar`].
#[derive(Clone, Default)]
pub struct FileCount(Arc<[std::sync::atomic::AtomicU64; 2]>);

impl FileCount {
    pub fn add_total(&self, n: u64) {
        self.0[1].fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn done(&self, n: u64) {
        self.0[0].fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    fn show(&self, w: &mut dyn std::fmt::Write) {
        let [done, total] = &*self.0;
        let _ = write!(
            w,
            "{}/{} files",
            done.load(std::sync::atomic::Ordering::Relaxed),
            total.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
}

/// A progress bar for a transfer of many files: bytes, files and rate.
pub fn files_bar(message: &str, files: &FileCount) -> ProgressBar {
    let bar = ProgressBar::new(0);
    let files = files.clone();
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:24} [{bar:30}] {bytes}/{total_bytes} {files} {bytes_per_sec}",
        )
        .map(|style| {
            style.with_key(
                "files",
                move |_: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| files.show(w),
            )
        })
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(message.to_owned());
    bar
}

/// A progress bar for byte transfers.
pub fn bytes_bar(message: &str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg:24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(message.to_owned());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use makiatto_protocol::request as op;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

    /// A host key for tests (any ed25519 key in OpenSSH form).
    const HOST_KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f";

    /// A target on loopback where nothing listens: logging in fails at
    /// once, which tells a test that the remote tried to.
    fn nowhere() -> Target {
        Target {
            user: "root".into(),
            host: "127.0.0.1".into(),
            port: 1,
            key_file: PathBuf::from("/nonexistent/key"),
        }
    }

    /// A kept session whose other end answers each request line with
    /// `answer` (or hangs up at once when `answer` is empty).
    fn kept_session(answer: &'static str) -> ControlSession {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let (r, mut w) = tokio::io::split(theirs);
            let mut lines = tokio::io::BufReader::new(r).lines();
            if answer.is_empty() {
                return;
            }
            while let Ok(Some(_)) = lines.next_line().await {
                w.write_all(format!("{answer}\n").as_bytes()).await.unwrap();
            }
        });
        let (r, w) = tokio::io::split(ours);
        ControlSession::new(Box::new(r), Box::new(w), true)
    }

    #[tokio::test]
    async fn a_kept_session_answers_without_logging_in() {
        let remote = Remote::kept(&nowhere(), HOST_KEY, kept_session(r#"{"ok":7}"#));
        let answers = remote
            .control_lines(&[
                r#"{"op":"heads"}"#.to_owned(),
                r#"{"op":"status"}"#.to_owned(),
            ])
            .await
            .unwrap();
        assert_eq!(answers, vec![r#"{"ok":7}"#, r#"{"ok":7}"#]);
    }

    #[tokio::test]
    async fn a_failed_or_outdated_kept_session_falls_back_to_a_login_of_its_own() {
        for answer in [
            "",
            r#"{"error":"not a valid request: unknown variant `blobs-missing`"}"#,
        ] {
            let remote = Remote::kept(&nowhere(), HOST_KEY, kept_session(answer));
            let err = remote
                .ask(op::BlobsMissing { hashes: vec![] })
                .await
                .unwrap_err();
            // The fallback tried to log in (and nothing listens there).
            assert!(format!("{err:#}").contains("127.0.0.1"), "{err:#}");
            assert!(
                !format!("{err:#}").contains("unknown variant"),
                "the kept answer was not taken: {err:#}"
            );
        }
        // Any other error from a kept session is the answer.
        let remote = Remote::kept(
            &nowhere(),
            HOST_KEY,
            kept_session(r#"{"error":"no such domain"}"#),
        );
        let err = remote
            .ask(op::ShowAs::<makiatto_projections::sites::Sites>::now())
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("no such domain"), "{err:#}");
    }
}
