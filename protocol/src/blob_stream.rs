//! The blob stream: how `maki` uploads files (to `makiatto blobs receive`
//! over SSH, or inline in `blobs-put`) — each blob a 32-byte blake3 hash,
//! its size as 8 bytes big-endian, then exactly that many bytes. The
//! receiver verifies each blob against its hash as it writes it.

use makiatto_events::Blake3Hash;
use serde::{Deserialize, Serialize};

/// The bytes before each blob: hash, then size.
pub const HEADER_BYTES: usize = 40;

/// The header of one blob.
pub fn header(hash: &Blake3Hash, size: u64) -> [u8; HEADER_BYTES] {
    let mut out = [0u8; HEADER_BYTES];
    out[..32].copy_from_slice(hash.as_bytes());
    out[32..].copy_from_slice(&size.to_be_bytes());
    out
}

/// Reads a header back: the blob's hash and size.
pub fn parse_header(bytes: &[u8; HEADER_BYTES]) -> (Blake3Hash, u64) {
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&bytes[..32]);
    let mut size = [0u8; 8];
    size.copy_from_slice(&bytes[32..]);
    (Blake3Hash(hash), u64::from_be_bytes(size))
}

/// Appends one whole blob (header and bytes) to a stream.
pub fn push(stream: &mut Vec<u8>, hash: &Blake3Hash, bytes: &[u8]) {
    stream.extend_from_slice(&header(hash, bytes.len() as u64));
    stream.extend_from_slice(bytes);
}

/// What one stream did, as the receiver reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Received {
    /// Blobs verified and stored durably.
    pub stored: u64,
    /// Blobs the store held already (their bytes were still checked).
    pub already_present: u64,
    pub bytes: u64,
    /// Why blobs were refused (a hash that does not match, a cut stream).
    pub refused: Vec<String>,
}

/// One blob of a `blobs-put` request: its hash and its bytes in hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InlineBlob {
    pub hash: Blake3Hash,
    pub hex: String,
}

/// At most this many bytes of blobs in one `blobs-put` (larger uploads
/// stream through `makiatto blobs receive`).
pub const INLINE_BLOB_BYTES: usize = 8 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_reads_back_as_written() {
        let hash = Blake3Hash::of(b"page");
        let h = header(&hash, 0x0102_0304_0506);
        assert_eq!(&h[32..], &[0, 0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(parse_header(&h), (hash, 0x0102_0304_0506));
        let mut stream = Vec::new();
        push(&mut stream, &hash, b"page");
        assert_eq!(stream.len(), HEADER_BYTES + 4);
        assert_eq!(&stream[HEADER_BYTES..], b"page");
    }
}
