//! `maki local`: a cluster of test hosts on this machine.
//!
//! Each host is a network namespace with its own mount and UTS namespace (a
//! private /etc and /var overlaid on the host's, private /usr/local/bin
//! and /run, and a /dev/net/tun anyone may open, as Debian's udev makes it)
//! and its own OpenSSH server, joined by a veth pair to a bridge the
//! host also sits on. Hosts have no route but the bridge, so their traffic
//! never leaves this machine. The real `maki machine init` then runs against
//! each host over SSH.
//!
//! Several clusters can run at once: cluster slot `k` (0–14) owns
//! 203.0.113.16k/28 (host .16k+1, nodes from .16k+2), 2001:db8:k+1::/64, the
//! mesh range 198.51.100.16k/28, bridge `mk{k}br` and namespaces `mk-{name}-{node}`.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::cluster::Ctx;
use crate::machine::{self, InitArgs};
use crate::profile::{Profile, SshTarget};

/// Node names (the guide's, then more) and the city each stands in.
pub const NODES: [(&str, &str, f64, f64); 9] = [
    ("vector", "London", 51.5074, -0.1278),
    ("klukai", "Tokyo", 35.6762, 139.6503),
    ("tololo", "São Paulo", -23.5505, -46.6333),
    ("m4a1", "New York", 40.7128, -74.0060),
    ("ro635", "Sydney", -33.8688, 151.2093),
    ("ump45", "Johannesburg", -26.2041, 28.0473),
    ("hk416", "Frankfurt", 50.1109, 8.6821),
    ("an94", "Singapore", 1.3521, 103.8198),
    ("ak12", "Los Angeles", 34.0522, -118.2437),
];
const SLOTS: u8 = 15;
const SLOT_DIR: &str = "/run/makiatto-local";

/// Which cluster: `--dir` and `--name`.
pub struct Where {
    pub dir: PathBuf,
    pub name: String,
}

/// One test host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Host {
    pub node: String,
    pub city: String,
    pub netns: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    pub veth: String,
    pub latitude: f64,
    pub longitude: f64,
}

/// What `up` made, kept in DIR/state.json for the other subcommands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub name: String,
    pub slot: u8,
    pub bridge: String,
    pub host_ipv4: Ipv4Addr,
    pub mesh_range: String,
    pub hosts: Vec<Host>,
    /// The local ACME CA's test host, once started.
    #[serde(default)]
    pub pebble: Option<PebbleHost>,
}

/// Debian's pebble in its own test host: the local cluster's ACME CA.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PebbleHost {
    pub netns: String,
    pub ipv4: Ipv4Addr,
    pub veth: String,
    /// The ACME directory URL.
    pub directory: String,
}

fn sh(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "`{} {}` failed: {}",
            cmd.get_program().to_string_lossy(),
            cmd.get_args()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    sh(Command::new("ip").args(args))
}

fn check_prerequisites() -> anyhow::Result<()> {
    if !cfg!(target_os = "linux") {
        bail!("maki local needs Linux (network and mount namespaces)");
    }
    if !nix::unistd::Uid::effective().is_root() {
        bail!(
            "maki local needs root (it creates network namespaces, bridges and mounts); run it with sudo"
        );
    }
    for tool in ["ip", "unshare", "nsenter", "ssh-keygen", "/usr/sbin/sshd"] {
        let found = if tool.starts_with('/') {
            Path::new(tool).exists()
        } else {
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !found {
            bail!(
                "maki local needs {tool}; install openssh-server, openssh-client, iproute2 and util-linux (scripts/install-deps.sh does)"
            );
        }
    }
    Ok(())
}

fn state_path(w: &Where) -> PathBuf {
    w.dir.join("state.json")
}

fn load_state(w: &Where) -> anyhow::Result<Option<State>> {
    match std::fs::read_to_string(state_path(w)) {
        Ok(text) => Ok(Some(
            serde_json::from_str(&text).context("state.json is unreadable")?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn require_state(w: &Where) -> anyhow::Result<State> {
    load_state(w)?.with_context(|| {
        format!(
            "no local cluster in {} (run `maki local up` first)",
            w.dir.display()
        )
    })
}

/// Picks the lowest free slot, recording it under /run/makiatto-local as
/// "name pid". The record is made with O_EXCL, so clusters brought up at
/// the same time (tests run in parallel) never take one slot twice. A slot
/// is busy while its bridge exists or while the process that claimed it
/// lives (it is still making the bridge); a record left by a dead process
/// with no bridge is taken over.
fn claim_slot(name: &str) -> anyhow::Result<u8> {
    std::fs::create_dir_all(SLOT_DIR)?;
    // One claimer at a time: a record is created and then written, so
    // without the lock a second `up` could read it empty in between, take
    // it for stale and claim the same slot.
    let lock = std::fs::File::create(Path::new(SLOT_DIR).join(".lock"))?;
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("cannot lock {SLOT_DIR}/.lock: {e}"))?;
    let me = format!("{name} {}", std::process::id());
    let create = |path: &Path| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, me.as_bytes()))
    };
    for k in 0..SLOTS {
        let path = Path::new(SLOT_DIR).join(format!("{k}"));
        if create(&path).is_ok() {
            return Ok(k);
        }
        let record = std::fs::read_to_string(&path).unwrap_or_default();
        let mut fields = record.split_whitespace();
        let (owner, pid) = (fields.next().unwrap_or(""), fields.next());
        if owner == name {
            std::fs::write(&path, &me)?;
            return Ok(k);
        }
        let bridge_exists = Path::new(&format!("/sys/class/net/mk{k}br")).exists();
        let claimer_alive = pid
            .and_then(|p| p.parse::<i32>().ok())
            .is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
        if bridge_exists || claimer_alive {
            continue;
        }
        // Stale: whoever removes it first and creates it again wins.
        if std::fs::remove_file(&path).is_ok() && create(&path).is_ok() {
            return Ok(k);
        }
    }
    bail!(
        "all {SLOTS} local cluster slots are in use; take one down with `maki local down --name …`"
    )
}

fn host_v4(slot: u8, i: u8) -> Ipv4Addr {
    Ipv4Addr::new(203, 0, 113, slot * 16 + i)
}

fn host_v6(slot: u8, i: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, u16::from(slot) + 1, 0, 0, 0, 0, i)
}

/// Builds the WebAssembly components of a project synced by `maki local up
/// --sync` when it lies in a Makiatto checkout (the example project): the
/// checkout's `scripts/build-components.sh` builds them from source. Any
/// other project brings its components built.
pub fn build_components(project: &Path) -> anyhow::Result<()> {
    let dir = std::fs::canonicalize(project)
        .with_context(|| format!("cannot read {}", project.display()))?;
    let Some(script) = dir
        .ancestors()
        .map(|d| d.join("scripts/build-components.sh"))
        .find(|s| s.is_file())
    else {
        return Ok(());
    };
    let status = std::process::Command::new(&script)
        .status()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !status.success() {
        anyhow::bail!(
            "{} failed: the example's components were not built (run scripts/install-deps.sh for the tools)",
            script.display()
        );
    }
    Ok(())
}

/// `maki local up`.
pub async fn up(w: &Where, nodes: usize, binary: Option<&Path>, ca: bool) -> anyhow::Result<()> {
    check_prerequisites()?;
    if !(1..=NODES.len()).contains(&nodes) {
        bail!("--nodes must be from 1 to {}", NODES.len());
    }
    if w.name.is_empty()
        || w.name.len() > 8
        || !w
            .name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        bail!("--name must be 1–8 lowercase letters or digits (it names namespaces)");
    }
    if let Some(state) = load_state(w)? {
        bail!(
            "local cluster {:?} is already up in {} (run `maki local down` first)",
            state.name,
            w.dir.display()
        );
    }
    // Another directory's cluster of the same name owns these namespaces:
    // refuse before making (or, on failure, removing) anything.
    let prefix = format!("mk-{}-", w.name);
    let taken = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with(&prefix));
    if taken {
        bail!(
            "a local cluster named {:?} is already up (its namespaces {prefix}* exist); pick another --name or take that one down",
            w.name
        );
    }
    let binary = machine::daemon_binary(binary)?;
    let result = build(w, nodes, &binary, ca).await;
    if let Err(e) = result {
        eprintln!("maki local up failed; removing what it made");
        let _ = down(w);
        return Err(e);
    }
    let env = env_file(w);
    println!(
        "\nLocal cluster {:?} is up with {nodes} node(s). To use it:\n\n    source {}\n    maki machine list\n",
        w.name,
        env.display()
    );
    if crate::geoip::default_dir().is_none_or(|d| crate::geoip::files(&d).is_empty()) {
        eprintln!(
            "warning: the cluster has no GeoIP database. {}",
            crate::geoip::MISSING
        );
    }
    Ok(())
}

/// The profile, operator key and SSH key of a local cluster, as `maki`
/// commands use them (what `env.sh` exports).
pub fn ctx(w: &Where) -> anyhow::Result<Ctx> {
    let dir = std::path::absolute(&w.dir)?;
    let profile_path = dir.join("profile.toml");
    Ok(Ctx {
        profile: Profile::load(&profile_path)?,
        profile_path,
        operator_key_path: dir.join("operator.key"),
        ssh_key: Some(dir.join("ssh/id_ed25519")),
    })
}

fn env_file(w: &Where) -> PathBuf {
    w.dir.join("env.sh")
}

async fn build(w: &Where, nodes: usize, binary: &Path, ca: bool) -> anyhow::Result<()> {
    let dir = std::path::absolute(&w.dir)?;
    std::fs::create_dir_all(dir.join("ssh"))?;
    let slot = claim_slot(&w.name)?;
    let bridge = format!("mk{slot}br");
    let host_ipv4 = host_v4(slot, 1);
    let mesh_range = format!("198.51.100.{}/28", slot * 16);
    let hosts: Vec<Host> = NODES
        .iter()
        .take(nodes)
        .enumerate()
        .map(|(i, (node, city, lat, lon))| Host {
            node: node.to_string(),
            city: city.to_string(),
            netns: format!("mk-{}-{node}", w.name),
            ipv4: host_v4(slot, 2 + i as u8),
            ipv6: host_v6(slot, 2 + i as u16),
            veth: format!("mk{slot}h{i}"),
            latitude: *lat,
            longitude: *lon,
        })
        .collect();
    let state = State {
        name: w.name.clone(),
        slot,
        bridge: bridge.clone(),
        host_ipv4,
        mesh_range: mesh_range.clone(),
        hosts: hosts.clone(),
        pebble: None,
    };
    std::fs::write(state_path(w), serde_json::to_string_pretty(&state)?)?;

    // The operator's SSH key, trusted by every host.
    let key = dir.join("ssh/id_ed25519");
    if !key.exists() {
        sh(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "maki-local", "-f"])
            .arg(&key))?;
    }
    std::fs::copy(
        dir.join("ssh/id_ed25519.pub"),
        dir.join("ssh/authorized_keys"),
    )?;

    ip(&["link", "add", &bridge, "type", "bridge"])?;
    ip(&["addr", "add", &format!("{host_ipv4}/28"), "dev", &bridge])?;
    ip(&[
        "-6",
        "addr",
        "add",
        &format!("{}/64", host_v6(slot, 1)),
        "dev",
        &bridge,
        "nodad",
    ])?;
    ip(&["link", "set", &bridge, "up"])?;
    for (i, h) in hosts.iter().enumerate() {
        make_host(&dir, slot, i, h, &bridge)?;
    }
    for h in &hosts {
        wait_for_ssh(h).await?;
    }

    // The real init, over SSH, for every host.
    let profile_path = dir.join("profile.toml");
    let mut ctx = Ctx {
        profile_path: profile_path.clone(),
        profile: Profile::load(&profile_path)?,
        operator_key_path: dir.join("operator.key"),
        ssh_key: Some(key.clone()),
    };
    for h in &hosts {
        let host_pub = std::fs::read_to_string(
            dir.join("hosts")
                .join(&h.node)
                .join("ssh_host_ed25519_key.pub"),
        )?;
        machine::init(
            &mut ctx,
            InitArgs {
                name: h.node.clone(),
                target: SshTarget {
                    user: "root".into(),
                    host: h.ipv4.to_string(),
                    port: 22,
                },
                binary_path: Some(binary.to_owned()),
                skip_ns: false,
                force_ns: false,
                recreate: false,
                coordinates: Some((h.latitude, h.longitude)),
                accept_host_key: Some(crate::ssh::fingerprint(host_pub.trim())),
                mesh_range: Some(mesh_range.parse().map_err(|e: String| anyhow::anyhow!(e))?),
                acme: Some("none".into()),
                cluster_name: Some(format!("local-{}", w.name)),
                geoip_dir: crate::geoip::default_dir(),
                warn_geoip: false,
            },
        )
        .await
        .with_context(|| format!("initialising {}", h.node))?;
    }
    // The cluster's own ACME CA (pebble), named in the cluster settings.
    if ca {
        let pebble = start_pebble(&dir, slot, &w.name, &bridge, hosts[0].ipv4)?;
        let mut state = state;
        state.pebble = Some(pebble.clone());
        std::fs::write(state_path(w), serde_json::to_string_pretty(&state)?)?;
        let root = dir.join("pebble/ca.pem").display().to_string();
        crate::commands::config_set(&ctx, "acme.ca_root", &root).await?;
        crate::commands::config_set(&ctx, "acme.directory", &pebble.directory).await?;
    }
    std::fs::write(
        env_file(w),
        format!(
            "export MAKIATTO_PROFILE={}\nexport MAKIATTO_OPERATOR_KEY={}\nexport MAKIATTO_SSH_KEY={}\n",
            profile_path.display(),
            dir.join("operator.key").display(),
            key.display()
        ),
    )?;
    Ok(())
}

/// Makes pebble's test host (address `.13` of the slot) and starts pebble
/// there: its HTTPS API on :14000 with a certificate from a CA made here
/// (`DIR/pebble/ca.pem`, which the nodes trust through `acme.ca_root`),
/// challenges checked on ports 80 and 443, names resolved by the first node's
/// DNS. Waits until the directory answers, then fetches the issuing root.
fn start_pebble(
    dir: &Path,
    slot: u8,
    name: &str,
    bridge: &str,
    resolver: Ipv4Addr,
) -> anyhow::Result<PebbleHost> {
    let pdir = dir.join("pebble");
    std::fs::create_dir_all(&pdir)?;
    let ipv4 = host_v4(slot, 13);
    let host = PebbleHost {
        netns: format!("mk-{name}-pebble"),
        ipv4,
        veth: format!("mk{slot}hp"),
        directory: format!("https://{ipv4}:14000/dir"),
    };
    let openssl = |args: &[&str]| sh(Command::new("openssl").args(args).current_dir(&pdir));
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "3650",
        "-subj",
        "/CN=maki local ACME listener CA",
    ]);
    openssl(&ca)?;
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "key.pem",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=pebble",
    ]);
    openssl(&csr)?;
    std::fs::write(
        pdir.join("leaf.ext"),
        format!("subjectAltName=DNS:pebble,DNS:localhost,IP:{ipv4},IP:127.0.0.1\n"),
    )?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "cert.pem",
        "-days",
        "3650",
        "-extfile",
        "leaf.ext",
    ])?;
    let config = serde_json::json!({"pebble": {
        "listenAddress": format!("{ipv4}:14000"),
        "managementListenAddress": format!("{ipv4}:15000"),
        "certificate": pdir.join("cert.pem"),
        "privateKey": pdir.join("key.pem"),
        "httpPort": 80,
        "tlsPort": 443,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false,
    }});
    std::fs::write(
        pdir.join("config.json"),
        serde_json::to_vec_pretty(&config)?,
    )?;

    let peer = format!("mk{slot}np");
    ip(&["netns", "add", &host.netns])?;
    ip(&[
        "link", "add", &host.veth, "type", "veth", "peer", "name", &peer,
    ])?;
    ip(&["link", "set", &peer, "netns", &host.netns])?;
    let n = |args: &[&str]| -> anyhow::Result<String> {
        let mut all = vec!["-n", host.netns.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    };
    n(&["link", "set", &peer, "name", "eth0"])?;
    n(&["addr", "add", &format!("{ipv4}/28"), "dev", "eth0"])?;
    // Both families: pebble validates over IPv6 when a name has AAAA.
    n(&[
        "-6",
        "addr",
        "add",
        &format!("{}/64", host_v6(slot, 13)),
        "dev",
        "eth0",
        "nodad",
    ])?;
    n(&["link", "set", "lo", "up"])?;
    n(&["link", "set", "eth0", "up"])?;
    ip(&["link", "set", &host.veth, "master", bridge, "up"])?;

    let log = std::fs::File::create(pdir.join("pebble.log"))?;
    use std::os::unix::process::CommandExt;
    Command::new("ip")
        .args(["netns", "exec", &host.netns, "pebble", "-config"])
        .arg(pdir.join("config.json"))
        .args(["-dnsserver", &format!("{resolver}:53")])
        // No random validation sleeps, no rejected nonces: tests stay fast
        // and deterministic. Valid authorizations are rarely reused (pebble
        // still reuses one in about 100 at 0: a test that needs every
        // challenge afresh orders from a new account).
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .env("PEBBLE_AUTHZREUSE", "0")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("cannot start pebble")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while fetch_pebble_root(dir, &host).is_err() {
        if Instant::now() > deadline {
            bail!(
                "pebble did not answer within 20 s; see {}",
                pdir.join("pebble.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(host)
}

/// Fetches pebble's issuing root (new at every start) from its management
/// API, from inside pebble's host, into `DIR/pebble/root.pem`.
fn fetch_pebble_root(dir: &Path, p: &PebbleHost) -> anyhow::Result<PathBuf> {
    let pdir = dir.join("pebble");
    let out = pdir.join("root.pem");
    sh(Command::new("ip")
        .args([
            "netns",
            "exec",
            &p.netns,
            "curl",
            "-sf",
            "--max-time",
            "5",
            "--cacert",
        ])
        .arg(pdir.join("ca.pem"))
        .arg(format!("https://{}:15000/roots/0", p.ipv4))
        .arg("-o")
        .arg(&out))?;
    Ok(out)
}

/// `maki local ca`: the path of pebble's current issuing root.
pub fn ca(w: &Where) -> anyhow::Result<()> {
    let state = require_state(w)?;
    let p = state
        .pebble
        .as_ref()
        .context("this local cluster has no ACME CA (it was made by an older maki)")?;
    let path = fetch_pebble_root(&std::path::absolute(&w.dir)?, p)?;
    println!("{}", path.display());
    Ok(())
}

fn make_host(dir: &Path, slot: u8, i: usize, h: &Host, bridge: &str) -> anyhow::Result<()> {
    let root = dir.join("hosts").join(&h.node);
    for sub in [
        "var-upper",
        "var-work",
        "usr-local-bin",
        "etc-upper",
        "etc-work",
        "root-home",
    ] {
        std::fs::create_dir_all(root.join(sub))?;
    }
    // Root's home is a fresh Debian root's, not this machine's: a login
    // shell here would otherwise run whatever this machine's own
    // `~/.bashrc` runs (on the machines we test on, pyenv's init: 0.1 s
    // added to every command sshd runs, ours and rsync's alike).
    for (from, to) in [("dot.bashrc", ".bashrc"), ("dot.profile", ".profile")] {
        let from = Path::new("/usr/share/base-files").join(from);
        let to = root.join("root-home").join(to);
        if from.exists() && !to.exists() {
            std::fs::copy(&from, &to)
                .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
        }
    }
    let host_key = root.join("ssh_host_ed25519_key");
    if !host_key.exists() {
        sh(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", &h.node, "-f"])
            .arg(&host_key))?;
    }
    let config = root.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port 22\nListenAddress {}\nListenAddress {}\nHostKey {}\nPidFile /run/sshd.pid\nAuthorizedKeysFile {}\n\
             PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             UsePAM no\nStrictModes no\nSubsystem sftp internal-sftp\n",
            h.ipv4,
            h.ipv6,
            host_key.display(),
            dir.join("ssh/authorized_keys").display()
        ),
    )?;

    let peer = format!("mk{slot}n{i}");
    ip(&["netns", "add", &h.netns])?;
    ip(&[
        "link", "add", &h.veth, "type", "veth", "peer", "name", &peer,
    ])?;
    ip(&["link", "set", &peer, "netns", &h.netns])?;
    let n = |args: &[&str]| -> anyhow::Result<String> {
        let mut all = vec!["-n", h.netns.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    };
    n(&["link", "set", &peer, "name", "eth0"])?;
    n(&["addr", "add", &format!("{}/28", h.ipv4), "dev", "eth0"])?;
    n(&[
        "-6",
        "addr",
        "add",
        &format!("{}/64", h.ipv6),
        "dev",
        "eth0",
        "nodad",
    ])?;
    n(&["link", "set", "lo", "up"])?;
    n(&["link", "set", "eth0", "up"])?;
    ip(&["link", "set", &h.veth, "master", bridge, "up"])?;

    // Mount points must exist before the private mounts cover them.
    std::fs::create_dir_all("/usr/local/bin")?;
    let script = format!(
        "set -e; hostname {node}; \
         mount -t overlay overlay -o lowerdir=/var,upperdir={root}/var-upper,workdir={root}/var-work /var; \
         mount --bind {root}/usr-local-bin /usr/local/bin; \
         chmod 0700 {root}/root-home; mount --bind {root}/root-home /root; \
         mount -t tmpfs -o mode=0755 tmpfs /run; mkdir -p /run/sshd /run/makiatto; \
         mount -t tmpfs -o mode=0755 tmpfs /dev/net; mknod -m 0666 /dev/net/tun c 10 200; \
         mount -t overlay overlay -o lowerdir=/etc,upperdir={root}/etc-upper,workdir={root}/etc-work /etc; \
         exec /usr/sbin/sshd -D -e -f {config}",
        node = h.node,
        root = root.display(),
        config = config.display()
    );
    let log = std::fs::File::create(root.join("sshd.log"))?;
    use std::os::unix::process::CommandExt;
    Command::new("ip")
        .args([
            "netns",
            "exec",
            &h.netns,
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--uts",
            "--fork",
            "sh",
            "-c",
            &script,
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start the host {}", h.node))?;
    Ok(())
}

async fn wait_for_ssh(h: &Host) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if tokio::net::TcpStream::connect((h.ipv4, 22)).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "sshd on {} ({}) did not start within 20 s; see its sshd.log",
                h.node,
                h.ipv4
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Pids of every process in a network namespace.
fn netns_pids(netns: &str) -> Vec<i32> {
    ip(&["netns", "pids", netns])
        .map(|out| {
            out.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// The process holding the host's mount namespace (its sshd listener).
fn host_pid(h: &Host) -> anyhow::Result<i32> {
    netns_pids(&h.netns)
        .into_iter()
        .filter(|p| {
            std::fs::read_link(format!("/proc/{p}/exe"))
                .is_ok_and(|e| e == Path::new("/usr/sbin/sshd"))
        })
        .min()
        .with_context(|| format!("host {} is not running (its sshd is gone)", h.node))
}

fn host<'a>(state: &'a State, node: &str) -> anyhow::Result<&'a Host> {
    state
        .hosts
        .iter()
        .find(|h| h.node == node)
        .with_context(|| {
            let names: Vec<&str> = state.hosts.iter().map(|h| h.node.as_str()).collect();
            format!(
                "no host {node:?} in local cluster {:?} (hosts: {})",
                state.name,
                names.join(", ")
            )
        })
}

/// Runs a command inside a host (its network, mount and UTS namespaces).
pub fn exec_in(
    state: &State,
    node: &str,
    argv: &[String],
) -> anyhow::Result<std::process::ExitStatus> {
    let h = host(state, node)?;
    let pid = host_pid(h)?;
    Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "-m", "-u", "--"])
        .args(argv)
        .status()
        .context("cannot run nsenter")
}

/// `maki local exec`.
pub fn exec(w: &Where, node: &str, argv: &[String]) -> anyhow::Result<i32> {
    check_prerequisites()?;
    let state = require_state(w)?;
    if argv.is_empty() {
        bail!("give a command after --, e.g. maki local exec vector -- ip addr");
    }
    Ok(exec_in(&state, node, argv)?.code().unwrap_or(1))
}

fn daemon_pids(h: &Host) -> Vec<i32> {
    netns_pids(&h.netns)
        .into_iter()
        .filter(|p| {
            std::fs::read_link(format!("/proc/{p}/exe"))
                .ok()
                .and_then(|e| {
                    e.file_name()
                        .map(|n| n.to_string_lossy().starts_with("makiatto"))
                })
                .unwrap_or(false)
        })
        .collect()
}

/// `maki local status`.
pub fn status(w: &Where, json_out: bool) -> anyhow::Result<()> {
    let state = require_state(w)?;
    let mut rows = Vec::new();
    for h in &state.hosts {
        let up = Path::new("/run/netns").join(&h.netns).exists();
        let sshd = host_pid(h).ok();
        let pids = daemon_pids(h);
        let daemon = pids.iter().copied().find(|p| cmdline(*p).contains(" run"));
        let cable = std::fs::read_to_string(format!("/sys/class/net/{}/operstate", h.veth))
            .unwrap_or_default();
        rows.push(serde_json::json!({
            "node": h.node, "city": h.city, "netns": h.netns, "ipv4": h.ipv4, "ipv6": h.ipv6,
            "host_up": up && sshd.is_some(), "sshd_pid": sshd, "daemon_pid": daemon,
            "state": if daemon.is_some() { "running" } else if sshd.is_some() { "stopped" } else { "down" },
            "cable": if cable.trim() == "down" { "cut" } else { "connected" },
        }));
    }
    if json_out {
        println!(
            "{}",
            serde_json::json!({"name": state.name, "bridge": state.bridge, "host_ipv4": state.host_ipv4, "mesh_range": state.mesh_range, "hosts": rows})
        );
    } else {
        println!(
            "local cluster {:?}: bridge {} (host {}), mesh {}",
            state.name, state.bridge, state.host_ipv4, state.mesh_range
        );
        println!(
            "{:<8} {:<14} {:<16} {:<20} {:<9} {:<9} CABLE",
            "NODE", "CITY", "IPV4", "NETNS", "DAEMON", "STATE"
        );
        for r in rows {
            println!(
                "{:<8} {:<14} {:<16} {:<20} {:<9} {:<9} {}",
                r["node"].as_str().unwrap_or(""),
                r["city"].as_str().unwrap_or(""),
                r["ipv4"].as_str().unwrap_or(""),
                r["netns"].as_str().unwrap_or(""),
                r["daemon_pid"]
                    .as_i64()
                    .map_or("-".into(), |p| p.to_string()),
                r["state"].as_str().unwrap_or(""),
                r["cable"].as_str().unwrap_or("")
            );
        }
    }
    Ok(())
}

/// `maki local cut` / `heal`: pull or plug a host's cable. With `mesh`,
/// only node-to-node traffic (the WireGuard port) is cut.
pub fn cable(w: &Where, node: Option<&str>, connect: bool, mesh_only: bool) -> anyhow::Result<()> {
    check_prerequisites()?;
    let state = require_state(w)?;
    let targets: Vec<&Host> = match node {
        Some(n) => vec![host(&state, n)?],
        None => state.hosts.iter().collect(),
    };
    for h in targets {
        let iptables = Command::new("sh")
            .args(["-c", "command -v iptables"])
            .output()
            .is_ok_and(|o| o.status.success());
        if mesh_only && !iptables {
            bail!("cutting only the mesh needs iptables (apt-get install iptables)");
        }
        if iptables && (mesh_only || connect) {
            // Remove (on heal) or add (on cut) the rule dropping mesh packets.
            let rule = ["-p", "udp", "--dport", "51880", "-j", "DROP"];
            let have = Command::new("ip")
                .args(["netns", "exec", &h.netns, "iptables", "-C", "INPUT"])
                .args(rule)
                .status()
                .is_ok_and(|s| s.success());
            if connect && have {
                for chain in ["INPUT", "OUTPUT"] {
                    // Quietly: a rule already gone is what was wanted.
                    let _ = Command::new("ip")
                        .args(["netns", "exec", &h.netns, "iptables", "-D", chain])
                        .args(rule)
                        .output();
                }
            } else if mesh_only && !connect && !have {
                for chain in ["INPUT", "OUTPUT"] {
                    sh(Command::new("ip")
                        .args(["netns", "exec", &h.netns, "iptables", "-A", chain])
                        .args(rule))
                    .context("cutting the mesh needs iptables (apt-get install iptables)")?;
                }
            }
        }
        if !mesh_only {
            ip(&["link", "set", &h.veth, if connect { "up" } else { "down" }])?;
        }
        println!(
            "{}: {}",
            h.node,
            if connect {
                "reconnected"
            } else if mesh_only {
                "mesh cut"
            } else {
                "cable pulled"
            }
        );
    }
    Ok(())
}

/// `maki local kill`: the machine crashed; daemon and supervisor SIGKILLed.
pub fn kill(w: &Where, node: &str) -> anyhow::Result<()> {
    check_prerequisites()?;
    let state = require_state(w)?;
    let h = host(&state, node)?;
    let pids = daemon_pids(h);
    for p in &pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    println!("{node}: killed {} process(es)", pids.len());
    Ok(())
}

/// `maki local start`: boots the daemon of a killed host again.
pub fn start(w: &Where, node: &str) -> anyhow::Result<()> {
    check_prerequisites()?;
    let state = require_state(w)?;
    let status = exec_in(
        &state,
        node,
        &[
            machine::REMOTE_BINARY.into(),
            "run".into(),
            "--detach".into(),
        ],
    )?;
    if !status.success() {
        bail!("{node}: the daemon did not start");
    }
    Ok(())
}

/// `maki local down`: removes every namespace, process, bridge and file
/// `up` made. Safe to run twice.
pub fn down(w: &Where) -> anyhow::Result<()> {
    check_prerequisites()?;
    let Some(state) = load_state(w)? else {
        println!("no local cluster in {}", w.dir.display());
        if w.dir.exists() && w.dir.join("hosts").exists() {
            std::fs::remove_dir_all(&w.dir)?;
        }
        return Ok(());
    };
    for h in &state.hosts {
        for _ in 0..50 {
            let pids = netns_pids(&h.netns);
            if pids.is_empty() {
                break;
            }
            for p in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = ip(&["netns", "del", &h.netns]);
        let _ = ip(&["link", "del", &h.veth]);
    }
    if let Some(p) = &state.pebble {
        for _ in 0..50 {
            let pids = netns_pids(&p.netns);
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = ip(&["netns", "del", &p.netns]);
        let _ = ip(&["link", "del", &p.veth]);
    }
    let _ = ip(&["link", "del", &state.bridge]);
    let slot = Path::new(SLOT_DIR).join(state.slot.to_string());
    if std::fs::read_to_string(&slot)
        .is_ok_and(|o| o.split_whitespace().next() == Some(state.name.as_str()))
    {
        let _ = std::fs::remove_file(slot);
    }
    // Gone once no cluster holds a slot.
    let _ = std::fs::remove_dir(SLOT_DIR);
    std::fs::remove_dir_all(&w.dir)
        .with_context(|| format!("cannot remove {}", w.dir.display()))?;
    println!("local cluster {:?} removed", state.name);
    Ok(())
}
