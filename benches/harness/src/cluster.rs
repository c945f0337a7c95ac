//! A local cluster made with `maki local up` in a temporary directory,
//! and `maki` against it: its profile, operator key and SSH key are the
//! ones `maki local` made there. Dropped, even on a panic, it is taken
//! down (`maki local down`: its processes, namespaces, bridge and files).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use makiatto_events::{EventId, Hlc};
use makiatto_protocol::request::Heads;
use makiatto_protocol::{Answer, Operation, Request};

use crate::binaries::Binaries;
use crate::geoip::GeoIp;
use crate::host::State;
use crate::process::with_input;

/// A local cluster (once [`Cluster::up`] has made it).
pub struct Cluster {
    /// The temporary directory: the cluster's files are in `cluster/`, the
    /// rest is the test's.
    pub dir: tempfile::TempDir,
    /// `maki local --name`: unique among the clusters up at once.
    pub name: String,
    maki: PathBuf,
    makiatto: PathBuf,
    /// The GeoIP database `maki machine init` hands the cluster, if any.
    geoip: Option<GeoIp>,
    /// `MAKIATTO_SSH_PERSIST` of every `maki`.
    ssh_persist: AtomicU32,
    /// Left up when dropped.
    keep: bool,
}

impl Cluster {
    /// A cluster named `prefix` (at most three characters) and this
    /// process's id, with the `maki` and `makiatto` of this build. It gets
    /// the GeoIP database when it is where `maki` looks (as
    /// `scripts/test.sh` makes sure): a cluster without one is not healthy.
    /// The first node receives it; the others fetch it over the mesh.
    pub fn new(prefix: &str) -> Cluster {
        let binaries = Binaries::of_this_build();
        Cluster::with_binaries(prefix, &binaries, &binaries)
    }

    /// [`Cluster::new`] whose nodes get no GeoIP database: what a test of
    /// a cluster without one starts from.
    pub fn without_geoip(prefix: &str) -> Cluster {
        let mut c = Cluster::new(prefix);
        c.geoip = None;
        c
    }

    /// [`Cluster::new`] with other binaries: `maki` drives the cluster and
    /// `makiatto` is what `up` installs (another release's, say).
    pub fn with_binaries(prefix: &str, maki: &Binaries, makiatto: &Binaries) -> Cluster {
        // `maki local` names take at most 8 characters.
        assert!(
            prefix.len() <= 3,
            "a cluster prefix of 3 characters at most"
        );
        Cluster {
            dir: tempfile::tempdir().expect("a temporary directory"),
            name: format!("{prefix}{}", std::process::id() % 100_000),
            maki: maki.maki(),
            makiatto: makiatto.makiatto(),
            geoip: GeoIp::find(),
            ssh_persist: AtomicU32::new(0),
            keep: false,
        }
    }

    /// [`Cluster::new`] whose nodes get the GeoIP database, which must be
    /// there.
    pub fn with_geoip(prefix: &str) -> Cluster {
        let mut c = Cluster::new(prefix);
        c.geoip = Some(GeoIp::required());
        c
    }

    /// The GeoIP database its nodes get, if any: what a test computes its
    /// expectations from.
    pub fn geoip(&self) -> Option<&GeoIp> {
        self.geoip.as_ref()
    }

    /// Leaves the cluster and its directory when dropped, and says how to
    /// take it down (to look at it after a benchmark).
    pub fn keep_when_dropped(&mut self) {
        self.keep = true;
    }

    /// How long a connection `maki` keeps waits for the next command, in
    /// seconds. 0, the default, keeps none: a keeper would outlive the
    /// test's hosts. Keepers put their sockets in this cluster's own
    /// runtime directory ([`Cluster::kept_sockets`]).
    pub fn set_ssh_persist(&self, seconds: u32) {
        self.ssh_persist.store(seconds, Ordering::Relaxed);
    }

    /// `XDG_RUNTIME_DIR` of every `maki`: this cluster's, so its kept
    /// connections are its own.
    fn runtime_dir(&self) -> PathBuf {
        let dir = self.dir.path().join("runtime");
        std::fs::create_dir_all(&dir).expect("a runtime directory");
        dir
    }

    /// The sockets of the connections `maki` keeps to this cluster's
    /// machines now (one per machine, once a command connected to it and
    /// its keeper logged in).
    pub fn kept_sockets(&self) -> usize {
        std::fs::read_dir(self.runtime_dir().join("makiatto")).map_or(0, |entries| {
            entries
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "sock"))
                .count()
        })
    }

    /// The daemon `up` installs on the nodes.
    pub fn daemon(&self) -> &Path {
        &self.makiatto
    }

    /// Where `maki local` keeps the cluster's files.
    pub fn cluster_dir(&self) -> PathBuf {
        self.dir.path().join("cluster")
    }

    /// A host's own files (its `/var`, `/usr/local/bin`, host keys).
    pub fn host_dir(&self, node: &str) -> PathBuf {
        self.cluster_dir().join("hosts").join(node)
    }

    /// Where a node's daemon writes its log, as seen from outside.
    pub fn daemon_log(&self, node: &str) -> PathBuf {
        self.host_dir(node).join("var-upper/makiatto/daemon.log")
    }

    /// The SSH key that logs in to every host as root.
    pub fn ssh_key(&self) -> PathBuf {
        self.cluster_dir().join("ssh/id_ed25519")
    }

    /// `maki ARGS` against this cluster's profile and keys; `local …`
    /// gets the cluster's `--dir` and `--name`.
    pub fn command(&self, args: &[&str]) -> Command {
        let d = self.cluster_dir();
        let mut cmd = Command::new(&self.maki);
        cmd.env("MAKIATTO_PROFILE", d.join("profile.toml"))
            .env("MAKIATTO_OPERATOR_KEY", d.join("operator.key"))
            .env("MAKIATTO_SSH_KEY", self.ssh_key())
            .env(
                "MAKIATTO_GEOIP_DIR",
                self.geoip
                    .as_ref()
                    .map_or_else(|| self.dir.path().join("no-geoip"), |g| g.dir().to_owned()),
            )
            .env("MAKIATTO_CACHE_DIR", self.dir.path().join("cache"))
            .env_remove("XDG_CONFIG_HOME")
            .env("XDG_RUNTIME_DIR", self.runtime_dir())
            .env(
                "MAKIATTO_SSH_PERSIST",
                self.ssh_persist.load(Ordering::Relaxed).to_string(),
            );
        if args.first() == Some(&"local") {
            cmd.arg("local")
                .arg("--dir")
                .arg(&d)
                .arg("--name")
                .arg(&self.name)
                .args(&args[1..]);
        } else {
            cmd.args(args);
        }
        cmd
    }

    /// What `maki ARGS` did.
    pub fn maki(&self, args: &[&str]) -> Output {
        let mut cmd = self.command(args);
        cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
    }

    /// What `maki ARGS` did; fails unless it succeeded.
    pub fn ok_output(&self, args: &[&str]) -> Output {
        succeeded(args, self.maki(args))
    }

    /// The standard output of `maki ARGS` run with `profile` in place of
    /// the cluster's (one naming only some of its machines, so that the
    /// command goes through those); fails unless it succeeded.
    pub fn ok_with_profile(&self, profile: &Path, args: &[&str]) -> String {
        let mut cmd = self.command(args);
        cmd.env("MAKIATTO_PROFILE", profile);
        let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        String::from_utf8_lossy(&succeeded(args, out).stdout).into_owned()
    }

    /// The standard output of `maki ARGS`; fails unless it succeeded.
    pub fn ok(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.ok_output(args).stdout).into_owned()
    }

    /// What `maki ARGS` printed (both streams); fails if it succeeded.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.maki(args);
        assert!(
            !out.status.success(),
            "maki {args:?} should have failed:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// `maki local up --nodes N --binary-path <this build's daemon>`, with
    /// more `flags` of `up` (`--no-ca`, `--sync FILE`); what it made.
    pub fn up(&self, nodes: usize, flags: &[&str]) -> State {
        let nodes = nodes.to_string();
        let mut args = vec![
            "local",
            "up",
            "--nodes",
            &nodes,
            "--binary-path",
            self.makiatto.to_str().expect("a UTF-8 path"),
        ];
        args.extend(flags);
        self.ok(&args);
        let state = self.state();
        // The first node was handed the GeoIP database; the others fetch it
        // over the mesh. Tests and benchmarks start once every node places
        // visitors with it, as the cluster will from then on.
        if self.geoip.is_some() {
            for h in &state.hosts {
                crate::wait_until(
                    std::time::Duration::from_secs(90),
                    &format!("{} loads the GeoIP database", h.node),
                    || self.health(&h.node)["dns"]["geoip"] == true,
                );
            }
        }
        state
    }

    /// Whether `maki health` finds the cluster healthy; otherwise what it
    /// found. Healthy is exit status 0, or warnings that all concern this
    /// machine rather than the cluster: the age of its GeoIP database (the
    /// newest release the registry gives may be older than the 60 days
    /// after which health warns), and the free disk and memory its test
    /// hosts share with everything else it runs.
    pub fn healthy(&self) -> Result<(), String> {
        let out = self.maki(&["health", "--json"]);
        if out.status.success() {
            return Ok(());
        }
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "maki health --json: {e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        let findings = report["findings"].as_array().cloned().unwrap_or_default();
        let wrong: Vec<&serde_json::Value> = findings
            .iter()
            .filter(|f| f["severity"] != "note")
            .filter(|f| {
                let machines = f["check"] == "disk"
                    || f["check"] == "memory"
                    || (f["check"] == "geoip"
                        && f["message"]
                            .as_str()
                            .is_some_and(|m| m.contains("days ago")));
                !(machines && f["severity"] == "warning")
            })
            .collect();
        if wrong.is_empty() && out.status.code() == Some(1) {
            return Ok(());
        }
        Err(format!(
            "exit {:?}: {}",
            out.status.code(),
            serde_json::to_string_pretty(&wrong).unwrap_or_default()
        ))
    }

    /// The fingerprint of `node`'s SSH host key, as `maki machine init
    /// --accept-host-key` takes it (`SHA256:…`).
    pub fn host_fingerprint(&self, node: &str) -> String {
        let key = self.host_dir(node).join("ssh_host_ed25519_key.pub");
        let out = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(&key)
            .output()
            .unwrap_or_else(|e| panic!("ssh-keygen -lf {}: {e}", key.display()));
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("no fingerprint of {}", key.display()))
            .to_owned()
    }

    /// `maki machine init` of `host` (a test host `up` made, whose node
    /// was removed or never initialised): at its place, with this build's
    /// daemon, its host key accepted.
    pub fn init_machine(&self, host: &crate::Host) {
        let fp = self.host_fingerprint(&host.node);
        let (lat, lon) = (host.latitude.to_string(), host.longitude.to_string());
        self.ok(&[
            "machine",
            "init",
            &host.node,
            &format!("root@{}", host.ipv4),
            "--lat",
            &lat,
            "--lon",
            &lon,
            "--binary-path",
            self.makiatto.to_str().expect("a UTF-8 path"),
            "--accept-host-key",
            &fp,
        ]);
    }

    /// A namespace of its own for load clients, at the 12th address of the
    /// cluster's range, on its bridge (`state`: what `up` returned).
    pub fn load_client(&self, state: &State) -> crate::Namespace {
        crate::Namespace::create(
            &format!("mk-{}-load", self.name),
            &format!("mk{}ld", state.slot),
            state.address(12),
            &state.bridge,
        )
    }

    /// What `maki local up` recorded.
    pub fn state(&self) -> State {
        let path = self.cluster_dir().join("state.json");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Runs `argv` in `node`'s test host (`maki local exec`); returns its
    /// standard output, failing unless it succeeds.
    pub fn exec(&self, node: &str, argv: &[&str]) -> String {
        let mut args = vec!["local", "exec", node, "--"];
        args.extend(argv);
        self.ok(&args)
    }

    /// [`Cluster::exec`] with `input` on the command's standard input.
    pub fn exec_with_input(&self, node: &str, argv: &[&str], input: &[u8]) -> String {
        let mut args = vec!["local", "exec", node, "--"];
        args.extend(argv);
        let out = with_input(&mut self.command(&args), input);
        assert!(
            out.status.success(),
            "{argv:?} on {node} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// What `curl -w FORMAT` writes of one request run in test host
    /// `from` with `args` (the body discarded): a status code, a redirect,
    /// a protocol version.
    pub fn curl_writes(&self, from: &str, format: &str, args: &[&str]) -> String {
        let mut argv = vec![
            "curl",
            "-s",
            "--max-time",
            "20",
            "-o",
            "/dev/null",
            "-w",
            format,
        ];
        argv.extend(args);
        self.exec(from, &argv)
    }

    /// What `makiatto health --json` says on `node`.
    pub fn health(&self, node: &str) -> serde_json::Value {
        let text = self.exec(node, &["makiatto", "health", "--json"]);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("health on {node}: {e}: {text}"))
    }

    /// How many events `node`'s log holds (`makiatto status`).
    pub fn events(&self, node: &str) -> u64 {
        let text = self.exec(node, &["makiatto", "status"]);
        let status: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("status on {node}: {e}: {text}"));
        status["events"]
            .as_u64()
            .unwrap_or_else(|| panic!("no event count in {node}'s status: {text}"))
    }

    /// Asks `node`'s daemon one control request (through `makiatto
    /// control` in its host) and returns the answer; fails on an error
    /// answer.
    pub fn control<O: Operation>(&self, node: &str, request: O) -> O::Output {
        let request: Request = request.into();
        let line = serde_json::to_string(&request).expect("a request encodes");
        let answer = self.exec_with_input(
            node,
            &["makiatto", "control"],
            format!("{line}\n").as_bytes(),
        );
        Answer::from_line(answer.trim_end())
            .and_then(Answer::decode)
            .unwrap_or_else(|e| panic!("{} on {node}: {e}", request.op()))
    }

    /// A head of `node`'s log, to name as the parent of an event signed
    /// here.
    pub fn head(&self, node: &str) -> (EventId, Hlc) {
        let heads = self.control(node, Heads {});
        let head = heads
            .first()
            .unwrap_or_else(|| panic!("{node}'s log has no head"));
        (
            head.id,
            Hlc {
                millis: head.millis,
                counter: head.counter,
            },
        )
    }

    /// The public key of the operator key in `file` (made there if it is
    /// missing): a second operator's.
    pub fn operator_key(&self, file: &Path) -> String {
        let out = self
            .command(&["operator", "key"])
            .env("MAKIATTO_OPERATOR_KEY", file)
            .output()
            .expect("maki operator key runs");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .last()
            .unwrap_or_else(|| panic!("maki operator key printed no key: {out:?}"))
            .to_owned()
    }

    /// Runs `binary` as `node`'s daemon from now on: installed in its
    /// host's `/usr/local/bin`, the daemon killed and started again.
    pub fn swap_daemon(&self, node: &str, binary: &Path) {
        let bin_dir = self.host_dir(node).join("usr-local-bin");
        // A new file renamed over the old: the running one stays intact.
        let tmp = bin_dir.join("makiatto.swap");
        std::fs::copy(binary, &tmp).expect("copy the daemon");
        std::fs::rename(&tmp, bin_dir.join("makiatto")).expect("install the daemon");
        self.ok(&["local", "kill", node]);
        self.ok(&["local", "start", node]);
    }
}

impl Cluster {
    /// The command-line prefix that runs a command in `node`'s test host
    /// (`maki local exec NODE --`), for tools that take one.
    pub fn exec_prefix(&self, node: &str) -> Vec<String> {
        vec![
            self.maki.to_string_lossy().into_owned(),
            "local".into(),
            "--dir".into(),
            self.cluster_dir().to_string_lossy().into_owned(),
            "--name".into(),
            self.name.clone(),
            "exec".into(),
            node.into(),
            "--".into(),
        ]
    }

    /// Starts `node`'s daemon again, its command line prefixed by
    /// `prefix` (`taskset -c 0`: the daemon then sizes its threads to the
    /// CPUs it may use). The old process is killed first.
    pub fn restart_daemon(&self, node: &str, prefix: &[&str]) {
        self.ok(&["local", "kill", node]);
        let mut argv = vec!["local", "exec", node, "--"];
        argv.extend(prefix);
        argv.extend(["/usr/local/bin/makiatto", "run", "--detach"]);
        self.ok(&argv);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.keep {
            self.dir.disable_cleanup(true);
            eprintln!(
                "kept the cluster: maki local --dir {} --name {} down",
                self.cluster_dir().display(),
                self.name
            );
            return;
        }
        // Never leave namespaces or processes behind, even when a test fails.
        let _ = self.command(&["local", "down"]).output();
    }
}

/// `out` of `maki ARGS`; fails, showing both streams, unless it succeeded.
fn succeeded(args: &[&str], out: Output) -> Output {
    assert!(
        out.status.success(),
        "maki {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
