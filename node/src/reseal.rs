//! Resealing secrets to nodes that join after they were sealed.
//!
//! The secrets are every sealed `env` value of the functions and
//! transforms (in the configuration document, sealed by `maki sync`) and
//! every current certificate's private key (sealed by the node that
//! ordered it). A value is sealed to the nodes that exist when it is made;
//! a node that joins later holds no entry for it. For each secret and each
//! node of the peers projection without an entry (neither an original
//! recipient nor a `secret-resealed` one), one node that holds an entry
//! wraps the value's data key for the newcomer and writes a
//! `secret-resealed` event: the first by name, of the nodes holding an
//! entry, that this node hears alive (itself included). When that one is
//! down, the next one by name does it; two nodes that briefly disagree on
//! who is alive may both write one, which is harmless (the first entry
//! for a node opens the value). Only the data key, wrapped for the
//! newcomer's sealing key, goes into the log: never the value.
//!
//! [`due`] is the pure decision; [`Resealer`] follows the log and writes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use makiatto_events::payload::SecretResealed;
use makiatto_events::{Payload, Recipient, SealedValue, SealingKey, SealingSecret, SecretId};

use crate::changes::Changes;
use crate::liveness::Liveness;
use crate::replica::Replica;
use crate::signer::Signer;

/// How often the resealer looks again without a log change (a resealer
/// chosen before may have gone down since).
const TICK: Duration = Duration::from_secs(10);

/// One sealed value of the log, and what it is (for the log lines; never
/// its value).
#[derive(Debug, Clone)]
pub struct Secret {
    pub value: SealedValue,
    pub what: String,
}

/// A sealed `env` value as the configuration document holds it: the hex of
/// its postcard encoding.
pub fn env_value(hex: &str) -> Result<SealedValue, &'static str> {
    let bytes = hex::decode(hex).map_err(|_| "not hex")?;
    postcard::from_bytes(&bytes).map_err(|_| "not a sealed value")
}

/// Every sealed value the log holds now: env values, certificate keys.
fn secrets(replica: &mut Replica) -> Vec<Secret> {
    let mut out = Vec::new();
    for (domain, d) in replica.domain_configs() {
        let envs = d
            .functions
            .iter()
            .map(|f| (&f.path, &f.env))
            .chain(d.transforms.iter().map(|t| (&t.path, &t.env)));
        for (path, env) in envs {
            for (name, sealed) in env {
                match env_value(sealed) {
                    Ok(value) => out.push(Secret {
                        value,
                        what: format!("env {name} of {path} ({domain})"),
                    }),
                    Err(why) => {
                        tracing::warn!(%domain, component = %path, variable = %name, why, "an env value is not a sealed value; it cannot be resealed")
                    }
                }
            }
        }
    }
    for (first, c) in replica.certificates().names {
        out.push(Secret {
            value: c.key,
            what: format!("the key of the certificate for {first}"),
        });
    }
    out
}

/// The reseals this node owes: (index into `secrets`, the newcomer's
/// sealing key). `nodes` are the peers projection's nodes by name, `me`
/// this node's name, `alive` whether this node hears a node alive.
pub fn due(
    secrets: &[Secret],
    resealed: &BTreeMap<SecretId, Vec<Recipient>>,
    nodes: &BTreeMap<String, SealingKey>,
    me: &str,
    alive: impl Fn(&str) -> bool,
) -> Vec<(usize, SealingKey)> {
    let mut out = Vec::new();
    for (i, secret) in secrets.iter().enumerate() {
        let extra = resealed
            .get(&secret.value.id())
            .map_or(&[][..], |r| r.as_slice());
        let holds = |key: &SealingKey| {
            secret.value.recipients().any(|r| r == key) || extra.iter().any(|r| r.node == *key)
        };
        // Nodes by name (a BTreeMap): the first that holds an entry and is
        // heard alive reseals.
        let Some(resealer) = nodes
            .iter()
            .find(|(name, key)| holds(key) && (name.as_str() == me || alive(name)))
            .map(|(name, _)| name)
        else {
            continue;
        };
        if resealer != me {
            continue;
        }
        for key in nodes.values().filter(|k| !holds(k)) {
            out.push((i, *key));
        }
    }
    out
}

/// Follows the log and writes the reseals this node owes.
pub struct Resealer {
    replica: Arc<Mutex<Replica>>,
    signer: Arc<Signer>,
    liveness: Liveness,
    sealing: SealingSecret,
}

impl Resealer {
    /// Starts following the log (a change, or every [`TICK`]).
    pub fn start(
        replica: Arc<Mutex<Replica>>,
        signer: Arc<Signer>,
        liveness: Liveness,
        log: Changes,
        sealing: SealingSecret,
    ) {
        let this = Resealer {
            replica,
            signer,
            liveness,
            sealing,
        };
        tokio::spawn(async move {
            let mut changes = log.watch();
            loop {
                if let Err(e) = this.reseal_due().await {
                    tracing::warn!(error = %format!("{e:#}"), "resealing secrets failed; trying again");
                }
                tokio::select! {
                    c = changes.changed() => if c.is_err() { return },
                    _ = tokio::time::sleep(TICK) => {}
                }
            }
        });
    }

    async fn reseal_due(&self) -> anyhow::Result<()> {
        let Some(me) = self.liveness.me() else {
            return Ok(());
        };
        let alive = self.liveness.alive_names();
        let Some((secrets, resealed, nodes)) = self.replica.lock().ok().map(|mut r| {
            let nodes: BTreeMap<String, SealingKey> = r
                .peers()
                .nodes
                .iter()
                .map(|(name, n)| (name.to_string(), n.sealing_key))
                .collect();
            (secrets(&mut r), r.resealed(), nodes)
        }) else {
            return Ok(());
        };
        let owed = due(&secrets, &resealed, &nodes, me.as_str(), |n| {
            alive.iter().any(|a| a.as_str() == n)
        });
        if owed.is_empty() || !self.signer.may_sign() {
            return Ok(());
        }
        let mut payloads = Vec::with_capacity(owed.len());
        for (i, newcomer) in &owed {
            let secret = &secrets[*i];
            let id = secret.value.id();
            let extra = resealed.get(&id).map_or(&[][..], |r| r.as_slice());
            match secret
                .value
                .reseal(&self.sealing, extra, *newcomer, &mut rand::rng())
            {
                Ok(recipient) => {
                    let to = nodes
                        .iter()
                        .find(|(_, k)| *k == newcomer)
                        .map_or("?", |(n, _)| n.as_str());
                    tracing::info!(secret = %secret.what, node = %to, "resealing a secret to a node that joined after it was sealed");
                    payloads.push(Payload::SecretResealed(SecretResealed {
                        secret: id,
                        recipient,
                    }));
                }
                Err(e) => {
                    tracing::warn!(secret = %secret.what, error = %e, "cannot reseal a secret this node holds an entry for")
                }
            }
        }
        if !payloads.is_empty() {
            self.signer.append(payloads).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(seed: u8) -> (SealingSecret, SealingKey) {
        let secret = SealingSecret::from_bytes([seed; 32]);
        let public = secret.public();
        (secret, public)
    }

    fn names(keys: &[(&str, SealingKey)]) -> BTreeMap<String, SealingKey> {
        keys.iter().map(|(n, k)| (n.to_string(), *k)).collect()
    }

    #[test]
    fn the_first_live_holder_by_name_reseals_to_each_newcomer() {
        let (a_secret, a) = node(1);
        let (_, b) = node(2);
        let (_, c) = node(3);
        let value = SealedValue::seal(b"hunter2", &[a, b], &mut rand::rng()).unwrap();
        let secrets = vec![Secret {
            value: value.clone(),
            what: "env X".into(),
        }];
        let nodes = names(&[("a", a), ("b", b), ("c", c)]);
        let none = BTreeMap::new();
        // `a` is first by name and holds an entry: it reseals to `c`.
        assert_eq!(due(&secrets, &none, &nodes, "a", |_| true), vec![(0, c)]);
        assert!(due(&secrets, &none, &nodes, "b", |_| true).is_empty());
        assert!(due(&secrets, &none, &nodes, "c", |_| true).is_empty());
        // `a` is down, as `b` hears it: `b` does it.
        assert_eq!(
            due(&secrets, &none, &nodes, "b", |n| n != "a"),
            vec![(0, c)]
        );
        // Once resealed, nobody owes it any more; `c` opens the value.
        let entry = value.reseal(&a_secret, &[], c, &mut rand::rng()).unwrap();
        let resealed = BTreeMap::from([(value.id(), vec![entry.clone()])]);
        for me in ["a", "b", "c"] {
            assert!(due(&secrets, &resealed, &nodes, me, |_| true).is_empty());
        }
        let (c_secret, _) = node(3);
        assert_eq!(value.open(&c_secret, &[entry]).unwrap(), b"hunter2");
    }

    #[test]
    fn a_node_that_holds_only_a_reseal_entry_reseals_onwards() {
        let (a_secret, a) = node(1);
        let (_, b) = node(2);
        let (_, c) = node(3);
        let value = SealedValue::seal(b"v", &[b], &mut rand::rng()).unwrap();
        // `b` resealed to `a`, which is now first by name: `a` reseals to `c`.
        let (b_secret, _) = node(2);
        let to_a = value.reseal(&b_secret, &[], a, &mut rand::rng()).unwrap();
        let resealed = BTreeMap::from([(value.id(), vec![to_a])]);
        let secrets = vec![Secret {
            value: value.clone(),
            what: "k".into(),
        }];
        let nodes = names(&[("a", a), ("b", b), ("c", c)]);
        assert_eq!(
            due(&secrets, &resealed, &nodes, "a", |_| true),
            vec![(0, c)]
        );
        let extra = &resealed[&value.id()];
        assert!(value.reseal(&a_secret, extra, c, &mut rand::rng()).is_ok());
    }

    #[test]
    fn nobody_reseals_what_no_current_node_can_open() {
        let (_, gone) = node(9);
        let (_, a) = node(1);
        let value = SealedValue::seal(b"v", &[gone], &mut rand::rng()).unwrap();
        let secrets = vec![Secret {
            value,
            what: "k".into(),
        }];
        let nodes = names(&[("a", a)]);
        assert!(due(&secrets, &BTreeMap::new(), &nodes, "a", |_| true).is_empty());
    }

    #[test]
    fn an_env_value_reads_back_from_its_hex_form() {
        let (_, a) = node(1);
        let value = SealedValue::seal(b"v", &[a], &mut rand::rng()).unwrap();
        let hex = hex::encode(postcard::to_allocvec(&value).unwrap());
        assert_eq!(env_value(&hex).unwrap(), value);
        assert!(env_value("zz").is_err());
        assert!(env_value("00").is_err());
    }
}
