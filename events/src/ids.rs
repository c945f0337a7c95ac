//! Typed 32-byte identities. Each is a distinct type so that an event id can
//! never be passed where a public key is expected; all print as lowercase hex.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Error for a hex string that is not a 32-byte identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{got:?} is not {what} (expected {form})")]
pub struct ParseIdError {
    got: String,
    what: &'static str,
    form: &'static str,
}

macro_rules! id32 {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; 32]);

        /// Raw bytes in binary encodings (the canonical event form), hex in
        /// human-readable ones (JSON output).
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.serialize_str(&self.to_hex())
                } else {
                    self.0.serialize(s)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let s = String::deserialize(d)?;
                    s.parse().map_err(serde::de::Error::custom)
                } else {
                    <[u8; 32]>::deserialize(d).map(Self)
                }
            }
        }

        impl $name {
            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// Lowercase hex of all 32 bytes.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// The first 12 hex characters, as shown in listings.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..6])
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).map_err(|_| ParseIdError {
                    got: s.to_owned(),
                    what: $what,
                    form: "64 hexadecimal characters",
                })?;
                Ok(Self(out))
            }
        }
    };
}

id32!(
    /// The id of an event: blake3 of its canonical bytes.
    EventId,
    "an event id"
);
id32!(
    /// An ed25519 public key that signs events: an operator's or a node's.
    AuthorKey,
    "an author key"
);
id32!(
    /// A blake3 hash naming a blob in the content-addressed store.
    Blake3Hash,
    "a blake3 hash"
);
id32!(
    /// A node's X25519 public key, to which secrets are sealed.
    SealingKey,
    "a sealing key"
);
id32!(
    /// A WireGuard (Curve25519) public key.
    WgPublicKey,
    "a WireGuard public key"
);

impl EventId {
    /// The id of the given canonical event bytes.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }
}

impl Blake3Hash {
    /// The hash of the given bytes.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }
}

impl WgPublicKey {
    /// Standard base64, as `wg` and wg-quick print and read keys.
    pub fn to_base64(&self) -> String {
        base64_encode(&self.0)
    }

    /// Parses a key as `wg` prints it (standard base64 of 32 bytes).
    pub fn from_base64(text: &str) -> Result<Self, ParseIdError> {
        let bad = || ParseIdError {
            got: text.to_owned(),
            what: "a WireGuard public key",
            form: "standard base64 of 32 bytes, as `wg pubkey` prints it",
        };
        let mut bits: u32 = 0;
        let mut n = 0;
        let mut out = Vec::with_capacity(32);
        for c in text.trim_end_matches('=').bytes() {
            let v = BASE64_ALPHABET
                .iter()
                .position(|a| *a == c)
                .ok_or_else(bad)? as u32;
            bits = (bits << 6) | v;
            n += 6;
            if n >= 8 {
                n -= 8;
                out.push((bits >> n) as u8);
                bits &= (1 << n) - 1;
            }
        }
        out.try_into().map(Self).map_err(|_| bad())
    }
}

const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Minimal standard base64 (with padding) for WireGuard keys; 32 bytes only
/// ever, so a dependency would be heavier than these lines.
fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64_ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        let id = EventId([7; 32]);
        assert_eq!(id.to_hex().parse::<EventId>(), Ok(id));
        assert!("zz".parse::<EventId>().is_err());
        assert!("07".repeat(31).parse::<EventId>().is_err());
    }

    #[test]
    fn wireguard_keys_print_as_standard_base64() {
        // 32 zero bytes are "AAAA…A=" (43 characters and one pad).
        let key = WgPublicKey([0; 32]);
        assert_eq!(key.to_base64(), format!("{}=", "A".repeat(43)));
        let key = WgPublicKey([0xff; 32]);
        assert_eq!(key.to_base64(), format!("{}8=", "/".repeat(42)));
        let mixed = WgPublicKey(std::array::from_fn(|i| (i * 37) as u8));
        assert_eq!(WgPublicKey::from_base64(&mixed.to_base64()), Ok(mixed));
        assert!(WgPublicKey::from_base64("not base64!").is_err());
        assert!(WgPublicKey::from_base64("AAAA").is_err());
    }
}
