//! One replication session between two nodes, as a state machine.
//!
//! Both ends send a [`Hello`] with their version vector (and their
//! [`Features`]), then stream each other what the other lacks — the plan
//! of [`VersionVector::plan_for`], feed by feed, in batches of about
//! [`BATCH_BYTES`] — then `Done`. A peer that announced
//! [`Features::VERSION_AHEAD`] is first sent the site versions offered
//! ahead of their events, and one that announced
//! [`Features::BLOBS_AHEAD`] the blobs that arrived ahead of theirs.
//!
//! After the hellos the two directions are independent, so a session
//! splits into an [`Outbound`] (what to send next: the caller reads feed
//! chunks from its log when told to) and an [`Inbound`] (what a received
//! frame asks of the node: append events, store a version sent ahead).
//! A node runs the two at once; the simulation interleaves them.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::Duration;

use makiatto_events::{AuthorKey, FeedRequest, NodeName, VersionVector};

use makiatto_events::Blake3Hash;

use super::frame::{Features, Frame, Hello, PROTOCOL, VersionAhead};
use super::topology::{Identity, Member};

/// The longest wait for the next frame of a session (or for a frame to
/// be taken): a peer silent longer is gone, and the session fails.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// About this many bytes of events go in one `Events` frame.
pub const BATCH_BYTES: usize = 1 << 20;
/// A version sent ahead of its event carries at most this many bytes
/// (delta and new blobs); a larger one is fetched as before.
pub const AHEAD_MAX_BYTES: u64 = 1 << 20;
/// At most this many versions are offered ahead at once, and taken from
/// one session.
pub const AHEAD_KEPT: usize = 16;
/// A `BlobsAhead` frame names at most this many blobs (32 bytes each: a
/// frame of 2 MiB at most); a node sends a longer list as several.
pub const BLOBS_AHEAD_MAX: usize = 65_536;
/// At most this many `BlobsAhead` frames are taken from one session; more
/// are dropped, so a peer cannot make this node queue fetches unbounded.
pub const BLOBS_AHEAD_FRAMES: usize = 64;

/// Why a session ended before both sides said `Done`.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{peer} speaks replication protocol {theirs}, this node {PROTOCOL}")]
    Protocol { peer: NodeName, theirs: u16 },
    #[error("{peer} belongs to another cluster")]
    OtherCluster { peer: NodeName },
    #[error("the node at {mesh} is not {peer} (another key answered)")]
    OtherNode { peer: NodeName, mesh: Ipv4Addr },
    #[error("{peer} did not start with a hello")]
    NoHello { peer: NodeName },
    #[error("{peer} sent a frame out of place")]
    OutOfPlace { peer: NodeName },
}

/// A session before the peer's hello: what this node says first.
#[derive(Debug)]
pub struct Handshake {
    identity: Identity,
    peer: Member,
    ours: VersionVector,
    features: Features,
    batch_bytes: usize,
}

/// A session past the hellos: its two directions.
#[derive(Debug)]
pub struct Session {
    pub outbound: Outbound,
    pub inbound: Inbound,
}

impl Handshake {
    /// A session of this node (`identity`, holding `ours`) with `peer`,
    /// announcing `features`.
    pub fn new(
        identity: Identity,
        peer: Member,
        ours: VersionVector,
        features: Features,
    ) -> Handshake {
        Handshake {
            identity,
            peer,
            ours,
            features,
            batch_bytes: BATCH_BYTES,
        }
    }

    /// Batches of about `bytes` instead of [`BATCH_BYTES`] (the
    /// simulation's small budgets: a feed must still arrive whole).
    pub fn with_batch_bytes(mut self, bytes: usize) -> Handshake {
        self.batch_bytes = bytes;
        self
    }

    /// The frame this node sends first, and the features written after it.
    pub fn hello(&self) -> (Frame, Features) {
        let hello = Frame::Hello(Hello {
            protocol: PROTOCOL,
            cluster: self.identity.cluster,
            node: self.identity.node,
            vv: self.ours.clone(),
        });
        (hello, self.features)
    }

    /// The peer's first frame: a hello of this cluster, from the key of
    /// the member it came from, speaking this protocol; else the session
    /// ends here.
    pub fn on_hello(self, first: Frame, features: Features) -> Result<Session, SessionError> {
        let peer = self.peer.name.clone();
        let Frame::Hello(hello) = first else {
            return Err(SessionError::NoHello { peer });
        };
        if hello.protocol != PROTOCOL {
            return Err(SessionError::Protocol {
                peer,
                theirs: hello.protocol,
            });
        }
        if hello.cluster != self.identity.cluster {
            return Err(SessionError::OtherCluster { peer });
        }
        if hello.node != self.peer.key {
            return Err(SessionError::OtherNode {
                peer,
                mesh: self.peer.mesh,
            });
        }
        Ok(Session {
            outbound: Outbound {
                ahead: features.has(Features::VERSION_AHEAD),
                blobs_ahead: features.has(Features::BLOBS_AHEAD),
                plan: self.ours.plan_for(&hello.vv).into(),
                reading: None,
                pending: None,
                done: false,
                events: 0,
                batch_bytes: self.batch_bytes,
            },
            inbound: Inbound {
                peer,
                taken: 0,
                blobs_taken: 0,
                done: false,
            },
        })
    }
}

/// What this node sends in a session, one step at a time.
#[derive(Debug)]
pub struct Outbound {
    /// Versions offered ahead still to go (the peer reads them).
    ahead: bool,
    /// Blobs offered ahead still to go (the peer fetches them).
    blobs_ahead: bool,
    plan: VecDeque<FeedRequest>,
    /// The feed being read, and the next seq of it.
    reading: Option<(AuthorKey, u64)>,
    pending: Option<Frame>,
    done: bool,
    events: u64,
    batch_bytes: usize,
}

/// The next thing to do for the sending side of a session.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Send the versions offered ahead that this peer was not sent yet,
    /// as `VersionAhead` frames, before any event: a peer that takes one
    /// holds it whole when the event naming it arrives.
    SendAhead,
    /// Send the blobs that arrived ahead of their version and that this
    /// peer was not told of yet, as `BlobsAhead` frames of at most
    /// [`BLOBS_AHEAD_MAX`] hashes.
    SendBlobsAhead,
    /// Read a chunk of a feed from the log (`Log::feed_chunk`) and hand
    /// it to [`Outbound::read`].
    Read(FeedRead),
    /// Write this frame.
    Send(Frame),
    /// Everything is sent, `Done` last.
    Finished,
}

/// A chunk of one author's feed to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedRead {
    pub author: AuthorKey,
    pub from: u64,
    pub max_bytes: usize,
}

impl Outbound {
    /// What to do next. A [`Step::Read`] is asked again until its chunk
    /// is handed to [`Outbound::read`].
    pub fn step(&mut self) -> Step {
        if std::mem::take(&mut self.ahead) {
            return Step::SendAhead;
        }
        if std::mem::take(&mut self.blobs_ahead) {
            return Step::SendBlobsAhead;
        }
        if let Some(frame) = self.pending.take() {
            return Step::Send(frame);
        }
        if self.reading.is_none()
            && let Some(request) = self.plan.pop_front()
        {
            self.reading = Some((request.author, request.from));
        }
        if let Some((author, from)) = self.reading {
            return Step::Read(FeedRead {
                author,
                from,
                max_bytes: self.batch_bytes,
            });
        }
        if !std::mem::replace(&mut self.done, true) {
            return Step::Send(Frame::Done);
        }
        Step::Finished
    }

    /// The chunk a [`Step::Read`] asked for, and the seq to read next
    /// (`None`: the feed is exhausted). An empty chunk ends the feed.
    pub fn read(&mut self, batch: Vec<Vec<u8>>, next: Option<u64>) {
        let Some((author, _)) = self.reading.take() else {
            return;
        };
        if batch.is_empty() {
            return;
        }
        self.events += batch.len() as u64;
        self.pending = Some(Frame::Events(batch));
        self.reading = next.map(|seq| (author, seq));
    }

    /// Events handed out to send so far.
    pub fn events_sent(&self) -> u64 {
        self.events
    }
}

/// What this node receives in a session.
#[derive(Debug)]
pub struct Inbound {
    peer: NodeName,
    taken: usize,
    blobs_taken: usize,
    done: bool,
}

/// What a received frame asks of the node.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// Verify and append these events (each is judged; bad ones count
    /// against the peer).
    Events(Vec<Vec<u8>>),
    /// Store this version sent ahead of its event, while the session
    /// reads on.
    TakeAhead(VersionAhead),
    /// More, or larger, than a node offers: dropped, so a peer cannot make
    /// this node store more unasked.
    DropAhead { bytes: u64 },
    /// Fetch what of these blobs this node lacks from the peer, now: a
    /// sync is uploading them to it.
    FetchAhead(Vec<Blake3Hash>),
    /// More blob notices than a node sends: dropped.
    DropBlobsAhead { blobs: usize },
    /// The peer sent everything; finish what was taken.
    Done,
}

impl Inbound {
    /// Judges the next frame the peer sent.
    pub fn on_frame(&mut self, frame: Frame) -> Result<Received, SessionError> {
        if self.done {
            return Err(self.out_of_place());
        }
        match frame {
            Frame::Events(batch) => Ok(Received::Events(batch)),
            Frame::VersionAhead(ahead) => {
                let bytes = ahead.bytes();
                if self.taken < AHEAD_KEPT && bytes <= AHEAD_MAX_BYTES {
                    self.taken += 1;
                    Ok(Received::TakeAhead(ahead))
                } else {
                    Ok(Received::DropAhead { bytes })
                }
            }
            Frame::BlobsAhead(blobs) => {
                if self.blobs_taken < BLOBS_AHEAD_FRAMES && blobs.len() <= BLOBS_AHEAD_MAX {
                    self.blobs_taken += 1;
                    Ok(Received::FetchAhead(blobs))
                } else {
                    Ok(Received::DropBlobsAhead { blobs: blobs.len() })
                }
            }
            Frame::Done => {
                self.done = true;
                Ok(Received::Done)
            }
            _ => Err(self.out_of_place()),
        }
    }

    /// Whether the peer said `Done`.
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn out_of_place(&self) -> SessionError {
        SessionError::OutOfPlace {
            peer: self.peer.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use makiatto_events::{Blake3Hash, EventId, SigningKey};

    fn member(seed: u8) -> Member {
        Member::of_seed(seed)
    }

    fn identity(seed: u8) -> Identity {
        Identity {
            cluster: EventId::of(b"cluster"),
            node: member(seed).key,
        }
    }

    fn vv(entries: &[(u8, u64)]) -> VersionVector {
        let mut vv = VersionVector::default();
        for (author, n) in entries {
            for seq in 1..=*n {
                let key = SigningKey::from_bytes(&[*author; 32]).public();
                vv.observe(key, seq, &EventId::of(&[*author, seq as u8]));
            }
        }
        vv
    }

    /// A session of node 1 (holding `ours`) with node 2 (holding
    /// `theirs`, announcing `features`).
    fn session(ours: VersionVector, theirs: VersionVector, features: Features) -> Session {
        let mine = Handshake::new(identity(1), member(2), ours, Features::OURS);
        let peer = Handshake::new(identity(2), member(1), theirs, features);
        let (hello, _) = peer.hello();
        mine.on_hello(hello, features).unwrap()
    }

    #[test]
    fn a_hello_is_accepted_only_from_the_member_of_this_cluster_it_came_from() {
        let hello = |identity: Identity, protocol| {
            Frame::Hello(Hello {
                protocol,
                cluster: identity.cluster,
                node: identity.node,
                vv: VersionVector::default(),
            })
        };
        let mine = || Handshake::new(identity(1), member(2), vv(&[]), Features::OURS);
        let err = |frame| {
            mine()
                .on_hello(frame, Features::NONE)
                .unwrap_err()
                .to_string()
        };
        assert!(
            mine()
                .on_hello(hello(identity(2), PROTOCOL), Features::NONE)
                .is_ok()
        );
        assert_eq!(
            err(hello(identity(2), PROTOCOL + 1)),
            format!(
                "n2 speaks replication protocol {}, this node 1",
                PROTOCOL + 1
            )
        );
        let other = Identity {
            cluster: EventId::of(b"another cluster"),
            ..identity(2)
        };
        assert_eq!(err(hello(other, PROTOCOL)), "n2 belongs to another cluster");
        assert_eq!(
            err(hello(identity(3), PROTOCOL)),
            "the node at 198.51.100.2 is not n2 (another key answered)"
        );
        assert_eq!(err(Frame::Done), "n2 did not start with a hello");
    }

    #[test]
    fn the_plan_is_read_in_chunks_and_sent_in_order_then_done() {
        let mut s = session(vv(&[(5, 3), (6, 1)]), vv(&[(5, 1)]), Features::NONE);
        let (a5, a6) = (
            SigningKey::from_bytes(&[5; 32]).public(),
            SigningKey::from_bytes(&[6; 32]).public(),
        );
        let read = |author, from| {
            Step::Read(FeedRead {
                author,
                from,
                max_bytes: BATCH_BYTES,
            })
        };
        // Author 5 from seq 2, in two chunks.
        assert_eq!(s.outbound.step(), read(a5, 2));
        // Asked again until answered.
        assert_eq!(s.outbound.step(), read(a5, 2));
        s.outbound.read(vec![b"e2".to_vec()], Some(3));
        assert_eq!(
            s.outbound.step(),
            Step::Send(Frame::Events(vec![b"e2".to_vec()]))
        );
        assert_eq!(s.outbound.step(), read(a5, 3));
        s.outbound.read(vec![b"e3".to_vec()], None);
        assert_eq!(
            s.outbound.step(),
            Step::Send(Frame::Events(vec![b"e3".to_vec()]))
        );
        // Author 6 whole; an empty chunk ends its feed.
        assert_eq!(s.outbound.step(), read(a6, 1));
        s.outbound.read(Vec::new(), Some(7));
        assert_eq!(s.outbound.step(), Step::Send(Frame::Done));
        assert_eq!(s.outbound.step(), Step::Finished);
        assert_eq!(s.outbound.step(), Step::Finished);
        assert_eq!(s.outbound.events_sent(), 2);
    }

    #[test]
    fn versions_ahead_go_first_and_only_to_a_peer_that_announced_them() {
        let mut s = session(vv(&[(5, 1)]), vv(&[]), Features::VERSION_AHEAD);
        assert_eq!(s.outbound.step(), Step::SendAhead);
        assert!(matches!(s.outbound.step(), Step::Read(_)));
        let mut s = session(vv(&[]), vv(&[]), Features::NONE);
        assert_eq!(s.outbound.step(), Step::Send(Frame::Done));
    }

    #[test]
    fn blobs_ahead_go_before_events_and_only_to_a_peer_that_announced_them() {
        let mut s = session(vv(&[(5, 1)]), vv(&[]), Features::OURS);
        assert_eq!(s.outbound.step(), Step::SendAhead);
        assert_eq!(s.outbound.step(), Step::SendBlobsAhead);
        assert!(matches!(s.outbound.step(), Step::Read(_)));
        let mut s = session(vv(&[]), vv(&[]), Features::VERSION_AHEAD);
        assert_eq!(s.outbound.step(), Step::SendAhead);
        assert_eq!(s.outbound.step(), Step::Send(Frame::Done));
    }

    #[test]
    fn blob_notices_are_taken_within_what_a_node_sends() {
        let mut s = session(vv(&[]), vv(&[]), Features::OURS);
        let inbound = &mut s.inbound;
        let hashes = |n: usize| vec![Blake3Hash::of(b"blob"); n];
        assert_eq!(
            inbound.on_frame(Frame::BlobsAhead(hashes(2))).unwrap(),
            Received::FetchAhead(hashes(2))
        );
        assert_eq!(
            inbound
                .on_frame(Frame::BlobsAhead(hashes(BLOBS_AHEAD_MAX + 1)))
                .unwrap(),
            Received::DropBlobsAhead {
                blobs: BLOBS_AHEAD_MAX + 1
            }
        );
        for _ in 1..BLOBS_AHEAD_FRAMES {
            assert!(matches!(
                inbound.on_frame(Frame::BlobsAhead(hashes(1))).unwrap(),
                Received::FetchAhead(_)
            ));
        }
        assert_eq!(
            inbound.on_frame(Frame::BlobsAhead(hashes(1))).unwrap(),
            Received::DropBlobsAhead { blobs: 1 }
        );
    }

    #[test]
    fn a_small_budget_is_passed_to_every_read() {
        let mine = Handshake::new(identity(1), member(2), vv(&[(5, 2)]), Features::OURS)
            .with_batch_bytes(300);
        let (hello, _) = Handshake::new(identity(2), member(1), vv(&[]), Features::NONE).hello();
        let mut s = mine.on_hello(hello, Features::NONE).unwrap();
        assert!(matches!(s.outbound.step(), Step::Read(r) if r.max_bytes == 300));
    }

    #[test]
    fn received_frames_ask_for_appends_and_takes_within_what_a_node_offers() {
        let mut s = session(vv(&[]), vv(&[]), Features::NONE);
        let ahead = |bytes: usize| VersionAhead {
            base: Blake3Hash::of(b"base"),
            target: Blake3Hash::of(b"target"),
            delta: vec![0; bytes],
            blobs: Vec::new(),
        };
        let inbound = &mut s.inbound;
        assert_eq!(
            inbound
                .on_frame(Frame::Events(vec![b"e".to_vec()]))
                .unwrap(),
            Received::Events(vec![b"e".to_vec()])
        );
        let too_large = AHEAD_MAX_BYTES as usize + 1;
        assert_eq!(
            inbound
                .on_frame(Frame::VersionAhead(ahead(too_large)))
                .unwrap(),
            Received::DropAhead {
                bytes: too_large as u64
            }
        );
        for _ in 0..AHEAD_KEPT {
            assert!(matches!(
                inbound.on_frame(Frame::VersionAhead(ahead(10))).unwrap(),
                Received::TakeAhead(_)
            ));
        }
        assert_eq!(
            inbound.on_frame(Frame::VersionAhead(ahead(10))).unwrap(),
            Received::DropAhead { bytes: 10 }
        );
        assert_eq!(
            inbound
                .on_frame(Frame::NoBlob(Blake3Hash::of(b"x")))
                .unwrap_err()
                .to_string(),
            "n2 sent a frame out of place"
        );
        assert_eq!(inbound.on_frame(Frame::Done).unwrap(), Received::Done);
        assert!(inbound.is_done());
        assert!(inbound.on_frame(Frame::Done).is_err());
    }
}
