//! The node's private keys, made on the node and never sent anywhere:
//! its event signing key, its sealing key and its WireGuard key. Each is a
//! file of 64 hex characters, mode 0600, in `<data-dir>/keys/`.

use makiatto_protocol::identity::NodeIdentity;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use makiatto_events::{SealingSecret, SigningKey, WgPublicKey};
use rand::RngCore;

/// The node's three secrets.
#[derive(Clone)]
pub struct NodeKeys {
    pub signing: SigningKey,
    pub sealing: SealingSecret,
    /// The WireGuard private key (an X25519 secret, as `wg genkey` makes).
    pub wireguard: SealingSecret,
}

fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("keys")
}

fn read_key(path: &Path) -> anyhow::Result<[u8; 32]> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out).with_context(|| {
        format!(
            "{} is not a 32-byte hex key; remove it to make a new one",
            path.display()
        )
    })?;
    Ok(out)
}

fn write_key(path: &Path, bytes: &[u8; 32]) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(hex::encode(bytes).as_bytes())?;
    f.sync_all()?;
    Ok(())
}

impl NodeKeys {
    /// Loads the keys, making any that are missing. `recreate` replaces all.
    pub fn load_or_create(data_dir: &Path, recreate: bool) -> anyhow::Result<NodeKeys> {
        let dir = dir(data_dir);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        let mut rng = rand::rng();
        let mut get = |name: &str| -> anyhow::Result<[u8; 32]> {
            let path = dir.join(name);
            if recreate && path.exists() {
                std::fs::remove_file(&path)?;
            }
            if !path.exists() {
                let mut bytes = [0u8; 32];
                rng.fill_bytes(&mut bytes);
                write_key(&path, &bytes)?;
            }
            read_key(&path)
        };
        Ok(NodeKeys {
            signing: SigningKey::from_bytes(&get("node.key")?),
            sealing: SealingSecret::from_bytes(get("sealing.key")?),
            wireguard: SealingSecret::from_bytes(get("wireguard.key")?),
        })
    }

    /// Loads existing keys; an error if the node was never initialised.
    pub fn load(data_dir: &Path) -> anyhow::Result<NodeKeys> {
        let dir = dir(data_dir);
        if !dir.join("node.key").exists() {
            bail!(
                "{} has no node keys; run `makiatto keys init` (maki machine init does)",
                dir.display()
            );
        }
        Ok(NodeKeys {
            signing: SigningKey::from_bytes(&read_key(&dir.join("node.key"))?),
            sealing: SealingSecret::from_bytes(read_key(&dir.join("sealing.key"))?),
            wireguard: SealingSecret::from_bytes(read_key(&dir.join("wireguard.key"))?),
        })
    }

    /// What may be shown of them.
    pub fn public(&self) -> NodeIdentity {
        NodeIdentity {
            signing_key: self.signing.public(),
            sealing_key: self.sealing.public(),
            wg_public_key: WgPublicKey(self.wireguard.public().0),
        }
    }
}
