//! Private keys: an author's ed25519 signing key and a node's X25519 sealing
//! key. They are created from caller-supplied randomness and never printed.

use std::fmt;

use ed25519_dalek::Signer;
use rand_core::CryptoRng;

use crate::ids::{AuthorKey, SealingKey};

/// An ed25519 key that signs events (an operator's device or a node).
#[derive(Clone)]
pub struct SigningKey(ed25519_dalek::SigningKey);

impl SigningKey {
    /// A fresh key from the given cryptographic RNG.
    pub fn generate(rng: &mut impl CryptoRng) -> Self {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        Self::from_bytes(&seed)
    }

    /// The key whose 32-byte seed is `seed` (as stored in a key file).
    pub fn from_bytes(seed: &[u8; 32]) -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    /// The 32-byte seed, for writing to a key file with tight permissions.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The public key that verifies this key's signatures.
    pub fn public(&self) -> AuthorKey {
        AuthorKey(self.0.verifying_key().to_bytes())
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(public {})", self.public().short())
    }
}

/// A node's X25519 secret for opening sealed values.
#[derive(Clone)]
pub struct SealingSecret(x25519_dalek::StaticSecret);

impl SealingSecret {
    /// A fresh secret from the given cryptographic RNG.
    pub fn generate(rng: &mut impl CryptoRng) -> Self {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        Self::from_bytes(bytes)
    }

    /// The secret with these bytes (as stored in a key file).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(x25519_dalek::StaticSecret::from(bytes))
    }

    /// The 32 secret bytes, for writing to a key file with tight permissions.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The public key that values are sealed to.
    pub fn public(&self) -> SealingKey {
        SealingKey(x25519_dalek::PublicKey::from(&self.0).to_bytes())
    }

    pub(crate) fn diffie_hellman(&self, public: &[u8; 32]) -> [u8; 32] {
        self.0
            .diffie_hellman(&x25519_dalek::PublicKey::from(*public))
            .to_bytes()
    }
}

impl fmt::Debug for SealingSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealingSecret(public {})", self.public().short())
    }
}
