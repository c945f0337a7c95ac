//! Secrets sealed to nodes: values that may sit in the log, which anyone with
//! a copy can read, without being readable by anyone but the nodes.
//!
//! A value is encrypted once under a random data key (ChaCha20-Poly1305);
//! the data key is then wrapped for each recipient with an ephemeral X25519
//! exchange against the recipient's sealing key, the wrapping key derived with
//! blake3's KDF. A node that can open a value can add a recipient later (a
//! `secret-resealed` event) without re-encrypting the value.

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};

use crate::ids::SealingKey;
use crate::keys::SealingSecret;

const VALUE_AAD: &[u8] = b"makiatto sealed value v1";
const WRAP_CONTEXT: &str = "makiatto 2026-11 sealed value key wrap v1";

/// Identifies a sealed value: blake3 of its nonce and ciphertext.
pub type SecretId = crate::ids::Blake3Hash;

/// Why a sealed value could not be made or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("this node's sealing key is not among the value's recipients")]
    NotARecipient,
    #[error("the sealed value is corrupt or was not sealed to this key")]
    Corrupt,
    #[error("a sealed value needs at least one recipient")]
    NoRecipients,
}

/// The data key of one value, wrapped for one node.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// The node's sealing key this entry is for.
    pub node: SealingKey,
    /// The ephemeral X25519 public key of the exchange.
    pub ephemeral: [u8; 32],
    /// The 32-byte data key encrypted under the derived key, plus its tag.
    pub wrapped_key: Vec<u8>,
}

impl fmt::Debug for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Recipient({})", self.node.short())
    }
}

/// A value encrypted so that only its recipient nodes can read it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedValue {
    nonce: [u8; 12],
    ciphertext: Vec<u8>,
    recipients: Vec<Recipient>,
}

impl SealedValue {
    /// A value withheld: what a projection read back from its shown JSON
    /// holds in place of a secret (secrets never leave the log as JSON).
    /// It has no recipients, so nobody can open it.
    pub fn withheld() -> SealedValue {
        SealedValue {
            nonce: [0; 12],
            ciphertext: Vec::new(),
            recipients: Vec::new(),
        }
    }
}

impl fmt::Debug for SealedValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SealedValue({} bytes to {} node(s))",
            self.ciphertext.len().saturating_sub(16),
            self.recipients.len()
        )
    }
}

impl SealedValue {
    /// Seals `plaintext` to every key in `to`.
    pub fn seal(
        plaintext: &[u8],
        to: &[SealingKey],
        rng: &mut impl CryptoRng,
    ) -> Result<Self, SealError> {
        if to.is_empty() {
            return Err(SealError::NoRecipients);
        }
        let mut data_key = [0u8; 32];
        rng.fill_bytes(&mut data_key);
        let mut nonce = [0u8; 12];
        rng.fill_bytes(&mut nonce);
        let ciphertext = ChaCha20Poly1305::new(Key::from_slice(&data_key))
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: VALUE_AAD,
                },
            )
            .map_err(|_| SealError::Corrupt)?;
        let mut value = Self {
            nonce,
            ciphertext,
            recipients: Vec::with_capacity(to.len()),
        };
        for node in to {
            let recipient = wrap(&data_key, *node, rng);
            value.recipients.push(recipient);
        }
        Ok(value)
    }

    /// The value's identity, stable across reseals.
    pub fn id(&self) -> SecretId {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&self.nonce);
        hasher.update(&self.ciphertext);
        SecretId::from(*hasher.finalize().as_bytes())
    }

    /// The nodes the value was sealed to when it was made.
    pub fn recipients(&self) -> impl Iterator<Item = &SealingKey> {
        self.recipients.iter().map(|r| &r.node)
    }

    /// Opens the value with a node's secret, looking for its entry among the
    /// original recipients and then among `resealed` (from resealing events).
    pub fn open(
        &self,
        secret: &SealingSecret,
        resealed: &[Recipient],
    ) -> Result<Vec<u8>, SealError> {
        let data_key = self.data_key(secret, resealed)?;
        ChaCha20Poly1305::new(Key::from_slice(&data_key))
            .decrypt(
                Nonce::from_slice(&self.nonce),
                Payload {
                    msg: &self.ciphertext,
                    aad: VALUE_AAD,
                },
            )
            .map_err(|_| SealError::Corrupt)
    }

    /// Adds `newcomer` as a recipient: opens the data key with `secret` and
    /// wraps it again. The result goes into a `secret-resealed` event.
    pub fn reseal(
        &self,
        secret: &SealingSecret,
        resealed: &[Recipient],
        newcomer: SealingKey,
        rng: &mut impl CryptoRng,
    ) -> Result<Recipient, SealError> {
        Ok(wrap(&self.data_key(secret, resealed)?, newcomer, rng))
    }

    /// The data key, unwrapped from this node's recipient entry.
    fn data_key(
        &self,
        secret: &SealingSecret,
        resealed: &[Recipient],
    ) -> Result<[u8; 32], SealError> {
        let me = secret.public();
        let entry = self
            .recipients
            .iter()
            .chain(resealed)
            .find(|r| r.node == me)
            .ok_or(SealError::NotARecipient)?;
        unwrap(entry, secret)
    }
}

impl From<[u8; 32]> for SecretId {
    fn from(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

fn wrapping_key(shared: &[u8; 32], ephemeral: &[u8; 32], node: &SealingKey) -> [u8; 32] {
    let mut material = Vec::with_capacity(96);
    material.extend_from_slice(shared);
    material.extend_from_slice(ephemeral);
    material.extend_from_slice(node.as_bytes());
    blake3::derive_key(WRAP_CONTEXT, &material)
}

fn wrap(data_key: &[u8; 32], node: SealingKey, rng: &mut impl CryptoRng) -> Recipient {
    let ephemeral = SealingSecret::generate(rng);
    let ephemeral_public = ephemeral.public().0;
    let shared = ephemeral.diffie_hellman(node.as_bytes());
    let kek = wrapping_key(&shared, &ephemeral_public, &node);
    // The wrapping key is fresh for every exchange, so a fixed nonce is safe.
    let wrapped_key = ChaCha20Poly1305::new(Key::from_slice(&kek))
        .encrypt(Nonce::from_slice(&[0u8; 12]), data_key.as_slice())
        .unwrap_or_default();
    Recipient {
        node,
        ephemeral: ephemeral_public,
        wrapped_key,
    }
}

fn unwrap(entry: &Recipient, secret: &SealingSecret) -> Result<[u8; 32], SealError> {
    let shared = secret.diffie_hellman(&entry.ephemeral);
    let kek = wrapping_key(&shared, &entry.ephemeral, &entry.node);
    let key = ChaCha20Poly1305::new(Key::from_slice(&kek))
        .decrypt(Nonce::from_slice(&[0u8; 12]), entry.wrapped_key.as_slice())
        .map_err(|_| SealError::Corrupt)?;
    key.try_into().map_err(|_| SealError::Corrupt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn rng() -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(7)
    }

    #[test]
    fn every_recipient_opens_and_nobody_else() {
        let mut rng = rng();
        let a = SealingSecret::generate(&mut rng);
        let b = SealingSecret::generate(&mut rng);
        let outsider = SealingSecret::generate(&mut rng);
        let v =
            SealedValue::seal(b"API_TOKEN=s3cret", &[a.public(), b.public()], &mut rng).unwrap();
        assert_eq!(v.open(&a, &[]).unwrap(), b"API_TOKEN=s3cret");
        assert_eq!(v.open(&b, &[]).unwrap(), b"API_TOKEN=s3cret");
        assert_eq!(v.open(&outsider, &[]), Err(SealError::NotARecipient));
    }

    #[test]
    fn the_ciphertext_and_its_debug_form_hide_the_plaintext() {
        let mut rng = rng();
        let a = SealingSecret::generate(&mut rng);
        let v = SealedValue::seal(b"hunter2hunter2", &[a.public()], &mut rng).unwrap();
        let bytes = postcard::to_stdvec(&v).unwrap();
        assert!(!bytes.windows(7).any(|w| w == b"hunter2"));
        assert!(!format!("{v:?}").contains("hunter2"));
    }

    #[test]
    fn a_reseal_lets_a_newcomer_open_without_changing_the_id() {
        let mut rng = rng();
        let a = SealingSecret::generate(&mut rng);
        let newcomer = SealingSecret::generate(&mut rng);
        let v = SealedValue::seal(b"x", &[a.public()], &mut rng).unwrap();
        let id = v.id();
        let entry = v.reseal(&a, &[], newcomer.public(), &mut rng).unwrap();
        assert_eq!(v.open(&newcomer, &[entry]).unwrap(), b"x");
        assert_eq!(v.id(), id);
        // A node that cannot open the value cannot reseal it either.
        let outsider = SealingSecret::generate(&mut rng);
        assert_eq!(
            v.reseal(&outsider, &[], newcomer.public(), &mut rng),
            Err(SealError::NotARecipient)
        );
    }

    #[test]
    fn tampering_is_detected() {
        let mut rng = rng();
        let a = SealingSecret::generate(&mut rng);
        let mut v = SealedValue::seal(b"value", &[a.public()], &mut rng).unwrap();
        v.ciphertext[0] ^= 1;
        assert_eq!(v.open(&a, &[]), Err(SealError::Corrupt));
    }

    #[test]
    fn sealing_to_nobody_is_refused() {
        assert_eq!(
            SealedValue::seal(b"v", &[], &mut rng()),
            Err(SealError::NoRecipients)
        );
    }
}
