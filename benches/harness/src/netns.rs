//! Network namespaces of our own on a local cluster's bridge (a
//! benchmark's anchor server and client, a test's external peer), and the
//! processes in a namespace.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::process::stdout;

/// `ip netns exec NS PLACE… ARGV…`: a command run in namespace `ns`,
/// behind `place` (such as `taskset -c 1`, see
/// [`crate::placement::Placement::client`]; empty to run it anywhere).
/// `ip netns exec` execs it: the child's pid is the command's.
pub fn in_namespace(ns: &str, place: &[&str], argv: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(place).args(argv);
    cmd
}

/// A namespace joined to a bridge by a veth pair, its end inside named
/// `eth0`. Dropped, it ends every process left in it and is deleted with
/// its veth.
#[derive(Debug)]
pub struct Namespace {
    /// The namespace's name (`ip netns`).
    pub name: String,
    /// The veth's end outside, on the bridge.
    veth: String,
}

impl Namespace {
    /// Namespace `name`, with `addr`/28 on `eth0`, joined to `bridge` by
    /// the veth `veth` (at most 15 characters; its inside end is made as
    /// `{veth}p`, then renamed).
    pub fn create(name: &str, veth: &str, addr: Ipv4Addr, bridge: &str) -> Namespace {
        let inside = format!("{veth}p");
        ip(&["netns", "add", name]);
        // From here on, a failed step unwinds through `Drop`.
        let ns = Namespace {
            name: name.to_owned(),
            veth: veth.to_owned(),
        };
        ip(&["link", "add", veth, "type", "veth", "peer", "name", &inside]);
        ip(&["link", "set", &inside, "netns", name]);
        ns.ip(&["link", "set", &inside, "name", "eth0"]);
        ns.ip(&["addr", "add", &format!("{addr}/28"), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["link", "set", "lo", "up"]);
        ip(&["link", "set", veth, "master", bridge, "up"]);
        ns
    }

    /// `argv` to be run inside (`ip netns exec` execs it: the child's pid
    /// is the command's).
    pub fn command(&self, argv: &[&str]) -> Command {
        in_namespace(&self.name, &[], argv)
    }

    /// Runs `argv` inside; returns its standard output, failing unless it
    /// succeeds.
    pub fn run(&self, argv: &[&str]) -> String {
        stdout(&mut self.command(argv))
    }

    /// `ip ARGS` inside.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut argv = vec!["ip"];
        argv.extend_from_slice(args);
        self.run(&argv)
    }

    /// The processes in it.
    pub fn pids(&self) -> Vec<u32> {
        netns_pids(&self.name)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Only processes this run started live here; end any a failure
        // left, by pid.
        for pid in self.pids() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .stderr(Stdio::null())
            .status();
    }
}

fn ip(args: &[&str]) -> String {
    stdout(Command::new("ip").args(args))
}

/// The processes in a network namespace.
pub fn netns_pids(ns: &str) -> Vec<u32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The `makiatto … run` process of a host (the one serving), as
/// `maki local` finds daemons: by executable name in the namespace.
pub fn daemon_pid(ns: &str) -> Option<u32> {
    netns_pids(ns).into_iter().find(|p| {
        let exe = std::fs::read_link(format!("/proc/{p}/exe")).ok();
        let is_makiatto = exe
            .as_deref()
            .and_then(Path::file_name)
            .is_some_and(|n| n.to_string_lossy().starts_with("makiatto"));
        let args = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        is_makiatto && args.split(|b| *b == 0).any(|a| a == b"run")
    })
}
