//! The event: header, payload, signature, and its one canonical encoding.
//!
//! Encoding (version 1), all postcard:
//! `body = version:u8 · header · kind:varint · payload-body:bytes`, and the
//! event's bytes are `body · signature(64)`. The signature is ed25519 over
//! `"makiatto event v1\0" · body`, checked strictly (no malleable signatures),
//! and the id is blake3 of the whole. Decoding re-encodes what it read and
//! refuses any difference, so no second spelling of an event exists.

use std::borrow::Cow;
use std::fmt;

use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::hlc::Hlc;
use crate::ids::{AuthorKey, EventId};
use crate::keys::SigningKey;
use crate::payload::{EventKind, Payload};

/// The largest event accepted anywhere: anything bigger is a blob.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;
/// The most causal parents an event may name.
pub const MAX_PARENTS: usize = 64;

const ENCODING_VERSION: u8 = 1;
const SIGNING_CONTEXT: &[u8] = b"makiatto event v1\0";
const SIGNATURE_LEN: usize = 64;

/// Why bytes are not a valid event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("event is {size} bytes, more than the {MAX_EVENT_BYTES}-byte limit")]
    TooLarge { size: usize },
    #[error("event is truncated ({size} bytes)")]
    Truncated { size: usize },
    #[error("event encoding version {0} is not supported by this version of makiatto")]
    UnsupportedVersion(u8),
    #[error("event bytes are malformed: {0}")]
    Malformed(&'static str),
    #[error("event bytes are not in canonical form")]
    NotCanonical,
    #[error("event header is invalid: {0}")]
    InvalidHeader(&'static str),
    #[error("author key is not a valid ed25519 public key")]
    BadAuthorKey,
    #[error("signature does not verify against the author key")]
    BadSignature,
    #[error("the signing key is not the header's author")]
    WrongSigner,
}

/// Who wrote an event, where it sits in the author's feed, and what it had seen.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct Header {
    /// The signer.
    pub author: AuthorKey,
    /// Position in the author's feed, from 1.
    pub seq: u64,
    /// The author's previous event; `None` exactly when `seq` is 1.
    pub prev: Option<EventId>,
    /// When it was written (hybrid logical clock).
    pub hlc: Hlc,
    /// The heads the author had seen: sorted, unique, containing `prev`.
    pub parents: Vec<EventId>,
}

impl Header {
    fn check(&self, payload: &Payload) -> Result<(), EventError> {
        if self.seq == 0 {
            return Err(EventError::InvalidHeader("sequence numbers start at 1"));
        }
        if self.prev.is_some() != (self.seq > 1) {
            return Err(EventError::InvalidHeader(
                "prev must be set exactly when seq > 1",
            ));
        }
        if self.parents.len() > MAX_PARENTS {
            return Err(EventError::InvalidHeader("too many parents"));
        }
        if !self.parents.windows(2).all(|w| w[0] < w[1]) {
            return Err(EventError::InvalidHeader(
                "parents must be sorted and unique",
            ));
        }
        if let Some(prev) = &self.prev
            && self.parents.binary_search(prev).is_err()
        {
            return Err(EventError::InvalidHeader("parents must include prev"));
        }
        let genesis = matches!(payload, Payload::Genesis(_));
        if genesis && (self.seq != 1 || !self.parents.is_empty()) {
            return Err(EventError::InvalidHeader(
                "genesis must be seq 1 with no parents",
            ));
        }
        if !genesis && self.parents.is_empty() {
            return Err(EventError::InvalidHeader(
                "every event but genesis needs a parent",
            ));
        }
        Ok(())
    }
}

/// The signed part of an event. The header is borrowed when encoding and
/// owned when decoding, so neither direction copies it.
#[derive(Serialize, Deserialize)]
struct Body<'a> {
    version: u8,
    header: Cow<'a, Header>,
    kind: u32,
    #[serde(borrow)]
    payload: &'a [u8],
}

/// The canonical encoding of a body.
fn encode_body(header: &Header, kind: u32, payload: &[u8]) -> Vec<u8> {
    let body = Body {
        version: ENCODING_VERSION,
        header: Cow::Borrowed(header),
        kind,
        payload,
    };
    postcard::to_stdvec(&body).unwrap_or_default()
}

/// An event not yet signed.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct UnsignedEvent {
    pub header: Header,
    pub payload: Payload,
}

impl UnsignedEvent {
    /// An event by `author` at `seq` after `prev`, stamped `hlc`, that had
    /// seen `parents`; the parent list is normalised (sorted, deduplicated,
    /// `prev` included).
    pub fn new(
        author: AuthorKey,
        seq: u64,
        prev: Option<EventId>,
        hlc: Hlc,
        parents: impl IntoIterator<Item = EventId>,
        payload: Payload,
    ) -> Self {
        let mut parents: Vec<EventId> = parents.into_iter().chain(prev).collect();
        parents.sort_unstable();
        parents.dedup();
        Self {
            header: Header {
                author,
                seq,
                prev,
                hlc,
                parents,
            },
            payload,
        }
    }

    /// Signs the event. The key must be the header's author.
    pub fn sign(self, key: &SigningKey) -> Result<Event, EventError> {
        if key.public() != self.header.author {
            return Err(EventError::WrongSigner);
        }
        self.header.check(&self.payload)?;
        let payload = self.payload.body_bytes();
        let mut bytes = encode_body(&self.header, self.payload.kind_number(), &payload);
        let signature = key.sign(&signing_message(&bytes));
        bytes.extend_from_slice(&signature);
        if bytes.len() > MAX_EVENT_BYTES {
            return Err(EventError::TooLarge { size: bytes.len() });
        }
        let id = EventId::of(&bytes);
        Ok(Event {
            header: self.header,
            payload: self.payload,
            bytes,
            id,
        })
    }
}

fn signing_message(body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNING_CONTEXT.len() + body.len());
    message.extend_from_slice(SIGNING_CONTEXT);
    message.extend_from_slice(body);
    message
}

/// An author key parsed for checking signatures. Parsing (decompressing the
/// curve point) costs about 15% of a verification, so the log's ingest keeps
/// one per author instead of parsing the key of every event.
#[derive(Clone, Copy, Debug)]
pub struct AuthorVerifier {
    author: AuthorKey,
    key: VerifyingKey,
}

impl AuthorVerifier {
    /// Parses the key; fails as [`Event::verify_signature`] would.
    pub fn new(author: AuthorKey) -> Result<Self, EventError> {
        let key =
            VerifyingKey::from_bytes(author.as_bytes()).map_err(|_| EventError::BadAuthorKey)?;
        Ok(Self { author, key })
    }
}

/// A signed event in canonical form. It can only be made by signing or by
/// decoding canonical bytes, so its fields, bytes and id always agree.
#[derive(Clone, PartialEq, Eq)]
pub struct Event {
    header: Header,
    payload: Payload,
    bytes: Vec<u8>,
    id: EventId,
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Event({} {} #{} by {})",
            self.id.short(),
            self.payload.kind(),
            self.header.seq,
            self.header.author.short()
        )
    }
}

impl Event {
    /// Decodes and fully verifies bytes from outside: size, canonical form,
    /// header rules and the signature.
    pub fn decode(bytes: &[u8]) -> Result<Event, EventError> {
        let event = Self::decode_trusted(bytes)?;
        event.verify_signature()?;
        Ok(event)
    }

    /// Decodes bytes that were verified when they were stored (a rebuild
    /// re-folds stored events): every check of [`Event::decode`] but the
    /// signature, which `makiatto verify` re-checks separately.
    pub fn decode_trusted(bytes: &[u8]) -> Result<Event, EventError> {
        if bytes.len() > MAX_EVENT_BYTES {
            return Err(EventError::TooLarge { size: bytes.len() });
        }
        if bytes.len() <= SIGNATURE_LEN {
            return Err(EventError::Truncated { size: bytes.len() });
        }
        let body_bytes = &bytes[..bytes.len() - SIGNATURE_LEN];
        let (body, rest) = postcard::take_from_bytes::<Body>(body_bytes)
            .map_err(|_| EventError::Truncated { size: bytes.len() })?;
        if !rest.is_empty() {
            return Err(EventError::Malformed("trailing bytes after the body"));
        }
        if body.version != ENCODING_VERSION {
            return Err(EventError::UnsupportedVersion(body.version));
        }
        let payload = Payload::from_body(body.kind, body.payload)
            .ok_or(EventError::Malformed("payload does not decode as its kind"))?;
        let header = body.header.into_owned();
        // The payload is encoded once: equal to what was read, it is what
        // the re-encoded body must carry too.
        if payload.body_bytes() != body.payload
            || encode_body(&header, payload.kind_number(), body.payload) != body_bytes
        {
            return Err(EventError::NotCanonical);
        }
        header.check(&payload)?;
        Ok(Event {
            header,
            payload,
            bytes: bytes.to_vec(),
            id: EventId::of(bytes),
        })
    }

    /// The header of encoded event bytes, read alone, nothing checked:
    /// for a copier that orders or keeps track of events it passes on
    /// before the receiver has verified them (the receiver's verdict stays
    /// the one that counts). `None` when the header does not decode.
    pub fn peek_header(bytes: &[u8]) -> Option<Header> {
        let body = bytes.get(..bytes.len().checked_sub(SIGNATURE_LEN)?)?;
        let (body, _) = postcard::take_from_bytes::<Body>(body).ok()?;
        Some(body.header.into_owned())
    }

    /// [`Event::decode_trusted`] for many stored events at once, spread over
    /// the machine's cores (a node reads its whole log when it starts). The
    /// error names the position of the first event that does not decode.
    pub fn decode_trusted_all<B: AsRef<[u8]> + Sync>(
        raw: &[B],
    ) -> Result<Vec<Event>, (usize, EventError)> {
        let parts = across_cores(raw, 1024, |start, part| {
            part.iter()
                .enumerate()
                .map(|(i, b)| Event::decode_trusted(b.as_ref()).map_err(|e| (start + i, e)))
                .collect::<Result<Vec<Event>, _>>()
        });
        let mut all = Vec::with_capacity(raw.len());
        for part in parts {
            all.extend(part?);
        }
        Ok(all)
    }

    /// [`Event::decode`] (full verification, signature included) for a
    /// batch from outside; one result per input, in order.
    ///
    /// The events are decoded on the calling thread, which keeps them, and
    /// only their signatures are checked on the machine's cores, each
    /// author's key parsed once per core rather than once per event.
    pub fn decode_all<B: AsRef<[u8]> + Sync>(raw: &[B]) -> Vec<Result<Event, EventError>> {
        let mut decoded: Vec<Result<Event, EventError>> = raw
            .iter()
            .map(|b| Self::decode_trusted(b.as_ref()))
            .collect();
        let verdicts = across_cores(&decoded, 64, |_, part| {
            let mut verifiers: Vec<AuthorVerifier> = Vec::new();
            part.iter()
                .map(|event| {
                    let Ok(event) = event else {
                        return Ok(());
                    };
                    let author = event.header.author;
                    let known = verifiers.iter().position(|v| v.author == author);
                    let at = match known {
                        Some(at) => at,
                        None => {
                            verifiers.push(AuthorVerifier::new(author)?);
                            verifiers.len() - 1
                        }
                    };
                    event.verify_signature_with(&verifiers[at])
                })
                .collect::<Vec<_>>()
        });
        for (event, verdict) in decoded.iter_mut().zip(verdicts.into_iter().flatten()) {
            if let Err(e) = verdict
                && event.is_ok()
            {
                *event = Err(e);
            }
        }
        decoded
    }

    /// Checks the ed25519 signature (strict: rejects malleable encodings).
    pub fn verify_signature(&self) -> Result<(), EventError> {
        self.verify_signature_with(&AuthorVerifier::new(self.header.author)?)
    }

    /// [`Event::verify_signature`] with the author's key already parsed,
    /// for callers that check many events of few authors.
    pub fn verify_signature_with(&self, verifier: &AuthorVerifier) -> Result<(), EventError> {
        if verifier.author != self.header.author {
            return Err(EventError::WrongSigner);
        }
        let (body, sig) = self.bytes.split_at(self.bytes.len() - SIGNATURE_LEN);
        let sig = Signature::from_slice(sig).map_err(|_| EventError::BadSignature)?;
        verifier
            .key
            .verify_strict(&signing_message(body), &sig)
            .map_err(|_| EventError::BadSignature)
    }

    pub fn id(&self) -> EventId {
        self.id
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn author(&self) -> AuthorKey {
        self.header.author
    }

    pub fn seq(&self) -> u64 {
        self.header.seq
    }

    pub fn hlc(&self) -> Hlc {
        self.header.hlc
    }

    pub fn parents(&self) -> &[EventId] {
        &self.header.parents
    }

    pub fn payload(&self) -> &Payload {
        &self.payload
    }

    pub fn kind(&self) -> EventKind {
        self.payload.kind()
    }

    /// The canonical bytes, as stored and sent.
    pub fn to_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The canonical bytes, consuming the event.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// `work` over `items` cut into one part per core (at most 8 parts, each
/// at least `min_part` long), each on a scoped thread and given its
/// offset; the parts' results in order.
fn across_cores<T: Sync, R: Send>(
    items: &[T],
    min_part: usize,
    work: impl Fn(usize, &[T]) -> R + Sync,
) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    let part = items.len().div_ceil(threads).max(min_part);
    let work = &work;
    std::thread::scope(|scope| {
        let parts: Vec<_> = items
            .chunks(part)
            .enumerate()
            .map(|(n, items)| scope.spawn(move || work(n * part, items)))
            .collect();
        parts
            .into_iter()
            .map(|p| {
                p.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::{Genesis, Ipv4Net, OperatorAdded};
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;
    use std::net::Ipv4Addr;

    fn key(seed: u64) -> SigningKey {
        SigningKey::generate(&mut ChaCha20Rng::seed_from_u64(seed))
    }

    #[test]
    fn the_header_is_read_alone() {
        let k = key(3);
        let e = genesis(&k);
        assert_eq!(Event::peek_header(e.to_bytes()).as_ref(), Some(e.header()));
        for bad in [&[][..], &[0u8; 10][..], &[0xff; 200][..]] {
            assert_eq!(Event::peek_header(bad), None);
        }
    }

    fn genesis(k: &SigningKey) -> Event {
        UnsignedEvent::new(
            k.public(),
            1,
            None,
            Hlc {
                millis: 1_700_000_000_000,
                counter: 0,
            },
            [],
            Payload::Genesis(Genesis {
                cluster_name: "test".into(),
                operator_name: "alice".into(),
                operator: k.public(),
                mesh_range: Ipv4Net::new(Ipv4Addr::new(10, 44, 44, 0), 24).unwrap(),
            }),
        )
        .sign(k)
        .unwrap()
    }

    #[test]
    fn signed_events_decode_to_themselves() {
        let k = key(1);
        let g = genesis(&k);
        let back = Event::decode(g.to_bytes()).unwrap();
        assert_eq!(back, g);
        assert_eq!(back.id(), EventId::of(g.to_bytes()));
    }

    #[test]
    fn every_flipped_bit_is_rejected() {
        let g = genesis(&key(1));
        let bytes = g.to_bytes();
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut forged = bytes.to_vec();
                forged[i] ^= bit;
                assert!(Event::decode(&forged).is_err(), "flip at byte {i} accepted");
            }
        }
    }

    #[test]
    fn truncated_and_extended_bytes_are_rejected() {
        let g = genesis(&key(1));
        let bytes = g.to_bytes();
        for len in 0..bytes.len() {
            assert!(
                Event::decode(&bytes[..len]).is_err(),
                "prefix of {len} accepted"
            );
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(Event::decode(&longer).is_err());
    }

    #[test]
    fn a_key_cannot_sign_for_another_author() {
        let a = key(1);
        let b = key(2);
        let mut unsigned = UnsignedEvent::new(
            a.public(),
            2,
            Some(EventId([1; 32])),
            Hlc::default(),
            [],
            Payload::OperatorAdded(OperatorAdded {
                name: "bob".into(),
                key: b.public(),
            }),
        );
        assert_eq!(unsigned.clone().sign(&b), Err(EventError::WrongSigner));
        unsigned.header.prev = None;
        assert!(matches!(
            unsigned.sign(&a),
            Err(EventError::InvalidHeader(_))
        ));
    }

    #[test]
    fn oversized_events_are_refused_at_signing() {
        let k = key(1);
        let unsigned = UnsignedEvent::new(
            k.public(),
            2,
            Some(EventId([1; 32])),
            Hlc::default(),
            [],
            Payload::OperatorAdded(OperatorAdded {
                name: "x".repeat(MAX_EVENT_BYTES),
                key: k.public(),
            }),
        );
        assert!(matches!(
            unsigned.sign(&k),
            Err(EventError::TooLarge { .. })
        ));
    }

    #[test]
    fn many_stored_events_decode_at_once_and_a_bad_one_is_named() {
        let k = key(1);
        let g = genesis(&k);
        let mut raw: Vec<Vec<u8>> = vec![g.to_bytes().to_vec(); 5000];
        let all = Event::decode_trusted_all(&raw).unwrap();
        assert_eq!(all.len(), 5000);
        assert!(all.iter().all(|e| *e == g));
        raw[3333].truncate(10);
        assert!(matches!(Event::decode_trusted_all(&raw), Err((3333, _))));
    }

    #[test]
    fn unknown_kinds_still_verify_and_round_trip() {
        let k = key(3);
        let e = UnsignedEvent::new(
            k.public(),
            2,
            Some(EventId([9; 32])),
            Hlc::default(),
            [],
            Payload::Unknown {
                kind: 4242,
                body: vec![1, 2, 3],
            },
        )
        .sign(&k)
        .unwrap();
        let back = Event::decode(e.to_bytes()).unwrap();
        assert_eq!(back.kind(), EventKind::Unknown(4242));
    }
}
