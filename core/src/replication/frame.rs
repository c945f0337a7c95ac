//! The frames of a mesh connection, and how they go on the wire.
//!
//! A frame is a 4-byte big-endian length, then the frame's postcard bytes.
//! A `Hello` carries the sender's [`Features`] after the frame, inside the
//! same length: an older node decodes the frame alone (postcard ignores
//! what follows a value) and announces none, so each side sends the other
//! only frames it announced. A `Blob` frame is followed by that many raw
//! bytes, outside any frame. Heartbeats are datagrams of their own
//! ([`crate::replication::Heartbeat`]).
//!
//! Variants and fields keep their order: their position is their encoding
//! (`replay-tests/fixtures/frames/` holds the bytes of each).

use makiatto_events::{AuthorKey, Blake3Hash, EventId, VersionVector};
use serde::{Deserialize, Serialize};

/// Bumped when the frames change incompatibly; peers speaking another
/// version are refused.
pub const PROTOCOL: u16 = 1;

/// The longest frame body a node accepts.
pub const MAX_FRAME: usize = 16 << 20;

/// What a node can do beyond [`PROTOCOL`], as bits after its `Hello`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features(u32);

impl Features {
    /// What an older node announces (it writes no bits).
    pub const NONE: Features = Features(0);
    /// It takes a site version sent ahead of its event
    /// ([`Frame::VersionAhead`]).
    pub const VERSION_AHEAD: Features = Features(1);
    /// It takes notice of blobs that arrived ahead of their version
    /// ([`Frame::BlobsAhead`]) and fetches them while the upload goes on.
    pub const BLOBS_AHEAD: Features = Features(2);
    /// What this build announces.
    pub const OURS: Features = Features(Features::VERSION_AHEAD.0 | Features::BLOBS_AHEAD.0);

    pub fn from_bits(bits: u32) -> Features {
        Features(bits)
    }

    pub fn bits(self) -> u32 {
        self.0
    }

    /// Whether every bit of `feature` is announced.
    pub fn has(self, feature: Features) -> bool {
        self.0 & feature.0 == feature.0
    }
}

/// The first frame of a session, both ways.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u16,
    pub cluster: EventId,
    pub node: AuthorKey,
    pub vv: VersionVector,
}

/// Everything that crosses a mesh connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Frame {
    Hello(Hello),
    /// Canonical event bytes, verified by the receiver.
    Events(Vec<Vec<u8>>),
    Done,
    /// The first frame of a blob fetch: these blobs, please.
    Fetch(Fetch),
    /// A blob follows: exactly `size` raw bytes after this frame.
    Blob {
        hash: Blake3Hash,
        size: u64,
    },
    /// The peer does not hold this blob.
    NoBlob(Blake3Hash),
    /// The first frame of a version fetch: the manifest `target`, as a
    /// delta from `base` (which the asking node holds), and the blobs the
    /// delta names that `base` does not.
    FetchVersion(FetchVersion),
    /// The answer to `FetchVersion`: the delta (`ManifestDelta` bytes),
    /// then a `Blob` (or `NoBlob`) for each new blob, then `Done`. A peer
    /// that lacks either manifest answers `NoBlob(target)` and `Done`.
    ManifestDelta {
        target: Blake3Hash,
        delta: Vec<u8>,
    },
    /// A site version whose event follows in the same session (sent only
    /// to a peer that announces [`Features::VERSION_AHEAD`]): the manifest
    /// `target` as a delta from `base`, with the blobs new in it, so that
    /// a peer holding `base` deploys the version as soon as the event
    /// lands, with no fetch of its own.
    VersionAhead(VersionAhead),
    /// Blobs that arrived on the sender from `maki` while a sync is still
    /// uploading, before any event names them (sent only to a peer that
    /// announces [`Features::BLOBS_AHEAD`]): the peer fetches those it
    /// lacks from the sender now, so a large sync fans out to every node
    /// while the operator's upload runs, not after it.
    BlobsAhead(Vec<Blake3Hash>),
}

/// See [`Frame::VersionAhead`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionAhead {
    pub base: Blake3Hash,
    pub target: Blake3Hash,
    pub delta: Vec<u8>,
    pub blobs: Vec<(Blake3Hash, Vec<u8>)>,
}

impl VersionAhead {
    /// What it would make the receiver store: the delta and the blobs.
    pub fn bytes(&self) -> u64 {
        self.delta.len() as u64 + self.blobs.iter().map(|(_, b)| b.len() as u64).sum::<u64>()
    }
}

/// See [`Frame::FetchVersion`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FetchVersion {
    pub protocol: u16,
    pub cluster: EventId,
    pub node: AuthorKey,
    pub base: Blake3Hash,
    pub target: Blake3Hash,
}

/// See [`Frame::Fetch`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fetch {
    pub protocol: u16,
    pub cluster: EventId,
    pub node: AuthorKey,
    pub want: Vec<Blake3Hash>,
}

/// A frame that cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("cannot encode a frame")]
    Encode(#[source] postcard::Error),
    #[error("the peer sent a frame that does not decode")]
    Decode(#[source] postcard::Error),
    #[error("the peer sent a frame of {len} bytes (at most {MAX_FRAME})")]
    TooLarge { len: usize },
}

/// Appends `frame` as it goes on the wire: its length, then its bytes.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) -> Result<(), FrameError> {
    encode_with(frame, None, out)
}

/// Appends `frame` with `features` after it, in the same length (a
/// `Hello`); `None` writes the frame alone, as an older node does.
pub fn encode_with(
    frame: &Frame,
    features: Option<Features>,
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    let mut body = postcard::to_allocvec(frame).map_err(FrameError::Encode)?;
    if let Some(features) = features {
        body.extend(postcard::to_allocvec(&features.bits()).map_err(FrameError::Encode)?);
    }
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(())
}

/// The length of the body that follows `prefix`, if a node accepts it.
pub fn body_len(prefix: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge { len });
    }
    Ok(len)
}

/// A frame's body decoded, with the features after it ([`Features::NONE`]
/// when none follow, as from an older node).
pub fn decode(body: &[u8]) -> Result<(Frame, Features), FrameError> {
    let (frame, rest) = postcard::take_from_bytes(body).map_err(FrameError::Decode)?;
    let features = postcard::from_bytes(rest).map_or(Features::NONE, Features::from_bits);
    Ok((frame, features))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Frame {
        Frame::Hello(Hello {
            protocol: PROTOCOL,
            cluster: EventId::of(b"a cluster"),
            node: makiatto_events::SigningKey::from_bytes(&[2; 32]).public(),
            vv: VersionVector::default(),
        })
    }

    #[test]
    fn feature_bits_after_a_hello_are_invisible_to_older_nodes() {
        let mut wire = Vec::new();
        encode_with(&hello(), Some(Features::OURS), &mut wire).unwrap();
        // An older node decodes the frame alone, as it always did.
        let old: Frame = postcard::from_bytes(&wire[4..]).unwrap();
        assert!(matches!(old, Frame::Hello(h) if h.protocol == PROTOCOL));
        let (frame, features) = decode(&wire[4..]).unwrap();
        assert_eq!(frame, hello());
        assert_eq!(features, Features::OURS);
        // An older node's hello announces nothing.
        let mut wire = Vec::new();
        encode(&hello(), &mut wire).unwrap();
        assert_eq!(decode(&wire[4..]).unwrap().1, Features::NONE);
    }

    #[test]
    fn a_frame_longer_than_a_node_accepts_is_refused_before_it_is_read() {
        assert_eq!(
            body_len((MAX_FRAME as u32).to_be_bytes()).unwrap(),
            MAX_FRAME
        );
        assert!(matches!(
            body_len((MAX_FRAME as u32 + 1).to_be_bytes()),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn bytes_that_are_no_frame_do_not_decode() {
        assert!(matches!(decode(&[200, 1, 2]), Err(FrameError::Decode(_))));
        assert!(matches!(decode(&[]), Err(FrameError::Decode(_))));
    }

    #[test]
    fn features_are_sets_of_bits() {
        assert!(Features::OURS.has(Features::VERSION_AHEAD));
        assert!(!Features::NONE.has(Features::VERSION_AHEAD));
        assert!(Features::NONE.has(Features::NONE));
        assert_eq!(Features::from_bits(1), Features::VERSION_AHEAD);
    }
}
