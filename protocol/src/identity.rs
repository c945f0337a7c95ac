//! `makiatto keys init` and `keys show`: the public halves of a node's
//! keys, as the command prints them and `maki` reads them over SSH.

use makiatto_events::{AuthorKey, SealingKey, WgPublicKey};
use serde::{Deserialize, Serialize};

/// A node's public keys. The WireGuard key is in base64, as `wg` writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    pub signing_key: AuthorKey,
    pub sealing_key: SealingKey,
    #[serde(with = "wg_base64")]
    pub wg_public_key: WgPublicKey,
}

mod wg_base64 {
    use makiatto_events::WgPublicKey;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(key: &WgPublicKey, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&key.to_base64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<WgPublicKey, D::Error> {
        let text = String::deserialize(d)?;
        WgPublicKey::from_base64(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wireguard_key_is_base64_and_reads_back() {
        let id = NodeIdentity {
            signing_key: AuthorKey([1; 32]),
            sealing_key: SealingKey([2; 32]),
            wg_public_key: WgPublicKey([3; 32]),
        };
        let json = serde_json::to_value(&id).unwrap();
        assert_eq!(json["wg_public_key"], WgPublicKey([3; 32]).to_base64());
        assert_eq!(json["signing_key"], AuthorKey([1; 32]).to_hex());
        let back: NodeIdentity = serde_json::from_value(json).unwrap();
        assert_eq!(back, id);
        let bad = serde_json::json!({"signing_key": "xy", "sealing_key": "", "wg_public_key": ""});
        assert!(serde_json::from_value::<NodeIdentity>(bad).is_err());
    }
}
