//! The profile: the public facts about a cluster that `maki` needs to reach
//! it (machines, SSH targets, pinned host keys, public keys, addresses).
//! It holds nothing secret, so it is safe to commit. Chosen by `--profile`,
//! else `MAKIATTO_PROFILE`, else `~/.config/makiatto/default.toml`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// One machine of the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    pub name: String,
    pub ssh_user: String,
    pub ssh_host: String,
    #[serde(default = "default_port")]
    pub ssh_port: u16,
    /// The host key pinned at first contact (OpenSSH form, `ssh-ed25519 AAAA…`).
    pub host_key: String,
    pub ipv4: Option<String>,
    pub ipv6: Option<String>,
    pub latitude: f64,
    pub longitude: f64,
    pub nameserver: bool,
    /// The node's event-signing public key (hex).
    pub signing_key: String,
    /// The node's WireGuard public key (base64).
    pub wg_public_key: String,
    pub mesh_addr: Option<String>,
}

fn default_port() -> u16 {
    22
}

impl Machine {
    /// `user@host` or `user@host:port`.
    pub fn ssh_target(&self) -> String {
        if self.ssh_port == 22 {
            format!("{}@{}", self.ssh_user, self.ssh_host)
        } else {
            format!("{}@{}:{}", self.ssh_user, self.ssh_host, self.ssh_port)
        }
    }
}

/// The whole profile.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The genesis event's id, once the cluster exists.
    pub cluster_id: Option<String>,
    pub cluster_name: Option<String>,
    #[serde(default, rename = "machine")]
    pub machines: Vec<Machine>,
}

/// Where the profile is, and whether it exists yet.
pub fn resolve_path(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p.to_owned());
    }
    if let Some(p) = std::env::var_os("MAKIATTO_PROFILE") {
        return Ok(PathBuf::from(p));
    }
    Ok(config_dir()?.join("default.toml"))
}

/// `~/.config/makiatto` (or `$XDG_CONFIG_HOME/makiatto`).
pub fn config_dir() -> anyhow::Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME") {
        return Ok(PathBuf::from(x).join("makiatto"));
    }
    let home = std::env::home_dir()
        .context("cannot find the home directory; set HOME or pass --profile")?;
    Ok(home.join(".config").join("makiatto"))
}

impl Profile {
    /// Reads the profile; a missing file is an empty profile. Syntax errors
    /// and unknown fields name the file, line and column.
    pub fn load(path: &Path) -> anyhow::Result<Profile> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Profile::default()),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot read the profile {}", path.display()));
            }
        };
        match toml::from_str(&text) {
            Ok(p) => Ok(p),
            Err(e) => {
                let (line, col) = e.span().map(|s| line_col(&text, s.start)).unwrap_or((0, 0));
                bail!(
                    "{}:{line}:{col}: the profile is not valid: {}\n(fix the file, or move it away to start a new profile)",
                    path.display(),
                    e.message()
                )
            }
        }
    }

    /// Writes the profile atomically (write, fsync, rename).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let mut text = String::from(
            "# Makiatto profile: public data only (names, SSH targets, pinned host keys,\n# public keys, addresses). Safe to commit.\n",
        );
        text.push_str(&toml::to_string_pretty(self).context("cannot write the profile")?);
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot replace {}", path.display()))?;
        Ok(())
    }

    pub fn machine(&self, name: &str) -> Option<&Machine> {
        self.machines.iter().find(|m| m.name == name)
    }

    /// Machines named, or all when none are named; unknown names are an error.
    pub fn select(&self, names: &[String]) -> anyhow::Result<Vec<Machine>> {
        if names.is_empty() {
            return Ok(self.machines.clone());
        }
        names
            .iter()
            .map(|n| {
                self.machine(n).cloned().with_context(|| {
                    let known: Vec<&str> = self.machines.iter().map(|m| m.name.as_str()).collect();
                    format!(
                        "no machine {n:?} in the profile (machines: {})",
                        known.join(", ")
                    )
                })
            })
            .collect()
    }

    /// Replaces or adds a machine by name.
    pub fn upsert(&mut self, machine: Machine) {
        match self.machines.iter_mut().find(|m| m.name == machine.name) {
            Some(m) => *m = machine,
            None => self.machines.push(machine),
        }
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// `user@host[:port]` as typed on the command line (parsed where the
/// event payloads define it, so the log and the CLI read it alike).
pub use makiatto_events::payload::SshTarget;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typo_in_the_profile_is_reported_with_its_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "cluster_id = \"x\"\n[[machine]]\nnmae = \"vector\"\n",
        )
        .unwrap();
        let err = Profile::load(&path).unwrap_err().to_string();
        assert!(err.contains("p.toml:3:1"), "{err}");
        assert!(err.contains("nmae"), "{err}");
    }

    #[test]
    fn profiles_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/p.toml");
        let mut p = Profile {
            cluster_id: Some("ab".into()),
            cluster_name: Some("c".into()),
            machines: vec![],
        };
        p.upsert(Machine {
            name: "vector".into(),
            ssh_user: "root".into(),
            ssh_host: "203.0.113.2".into(),
            ssh_port: 22,
            host_key: "ssh-ed25519 AAAA".into(),
            ipv4: Some("203.0.113.2".into()),
            ipv6: None,
            latitude: 51.5,
            longitude: -0.12,
            nameserver: true,
            signing_key: "00".into(),
            wg_public_key: "x".into(),
            mesh_addr: None,
        });
        p.save(&path).unwrap();
        assert_eq!(Profile::load(&path).unwrap(), p);
    }

    #[test]
    fn ssh_targets_parse() {
        assert_eq!(
            "root@203.0.113.1".parse::<SshTarget>(),
            Ok(SshTarget {
                user: "root".into(),
                host: "203.0.113.1".into(),
                port: 22
            })
        );
        assert_eq!("admin@h:2222".parse::<SshTarget>().unwrap().port, 2222);
        assert_eq!(
            "u@[2001:db8::1]:22".parse::<SshTarget>().unwrap().host,
            "2001:db8::1"
        );
        assert!("nohost".parse::<SshTarget>().is_err());
    }
}
