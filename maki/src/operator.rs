//! The operator's signing key and outbox.
//!
//! The key lives outside the profile (`~/.config/makiatto/operator.key`,
//! mode 0600; `--operator-key` or `MAKIATTO_OPERATOR_KEY` override it) and is
//! made on first use. The outbox keeps every event this key signed for a
//! cluster, beside the key, so that `maki` always signs on top of its own
//! last event whichever node it talks to, and can hand a node the events of
//! its feed that the node lacks: the operator's feed never forks.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use makiatto_events::{Event, FeedWriter, SigningKey};
use rand::RngCore;

/// The operator's key.
pub struct Operator {
    key: SigningKey,
    path: PathBuf,
}

/// Where the key is: flag, then environment, then the config directory.
pub fn resolve_key_path(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p.to_owned());
    }
    if let Some(p) = std::env::var_os("MAKIATTO_OPERATOR_KEY") {
        return Ok(PathBuf::from(p));
    }
    Ok(crate::profile::config_dir()?.join("operator.key"))
}

impl Operator {
    /// Loads the key, making it (mode 0600) if it does not exist.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Operator> {
        if !path.exists() {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let mut seed = [0u8; 32];
            rand::rng().fill_bytes(&mut seed);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("cannot create the operator key {}", path.display()))?;
            f.write_all(hex::encode(seed).as_bytes())?;
            f.sync_all()?;
            eprintln!("created a new operator key at {}", path.display());
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut seed = [0u8; 32];
        if hex::decode_to_slice(text.trim(), &mut seed).is_err() {
            bail!(
                "{} is not an operator key (expected 64 hex characters)",
                path.display()
            );
        }
        Ok(Operator {
            key: SigningKey::from_bytes(&seed),
            path: path.to_owned(),
        })
    }

    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// The outbox for one cluster.
    pub fn outbox(&self, cluster_id: &str) -> anyhow::Result<Outbox> {
        let dir = self.path.parent().unwrap_or(Path::new(".")).join("outbox");
        Outbox::load(&dir.join(format!("{cluster_id}.events")))
    }
}

/// The events this operator signed for one cluster, oldest first.
pub struct Outbox {
    path: PathBuf,
    events: Vec<Event>,
}

impl Outbox {
    fn load(path: &Path) -> anyhow::Result<Outbox> {
        let mut events = Vec::new();
        if let Ok(text) = std::fs::read_to_string(path) {
            for (n, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let bytes = hex::decode(line.trim())
                    .with_context(|| format!("{}:{}: not a hex event", path.display(), n + 1))?;
                let event = Event::decode(&bytes)
                    .with_context(|| format!("{}:{}: not a valid event", path.display(), n + 1))?;
                events.push(event);
            }
        }
        Ok(Outbox {
            path: path.to_owned(),
            events,
        })
    }

    /// A writer continuing after the latest of our outbox and of what a node
    /// knows of our feed (in case this outbox was lost).
    pub fn writer(&self, key: &SigningKey, node_latest: Option<&Event>) -> FeedWriter {
        let ours = self.events.last();
        let latest = match (ours, node_latest) {
            (Some(a), Some(b)) if b.seq() > a.seq() => Some(b),
            (Some(a), _) => Some(a),
            (None, b) => b,
        };
        match latest {
            Some(last) => FeedWriter::resume(key.clone(), last),
            None => FeedWriter::new(key.clone()),
        }
    }

    /// Our events after `seq`, for a node whose copy of our feed ends there.
    pub fn after(&self, seq: u64) -> Vec<Event> {
        self.events
            .iter()
            .filter(|e| e.seq() > seq)
            .cloned()
            .collect()
    }

    /// Records newly signed events durably, before they are sent anywhere.
    pub fn record(&mut self, events: &[Event]) -> anyhow::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
            .with_context(|| format!("cannot write the outbox {}", self.path.display()))?;
        for e in events {
            writeln!(f, "{}", hex::encode(e.to_bytes()))?;
        }
        f.sync_all()?;
        self.events.extend(events.iter().cloned());
        Ok(())
    }
}
