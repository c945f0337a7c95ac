//! Blob and version fetches: what a connection's first frame opens, and
//! which peer a fetch asks first.
//!
//! A node that lacks a site version's blobs asks its live peers for them
//! with a `Fetch` (or, from a version it serves, a `FetchVersion`: the
//! manifest's delta and the blobs new in it) on a connection of its own.
//! Only a member of this cluster, from its own mesh address, is answered.

use makiatto_events::{AuthorKey, Blake3Hash, EventId, NodeName};
use rand::Rng;

use super::frame::{Features, Frame, PROTOCOL};
use super::topology::Member;

/// At most this many blobs asked for in one fetch.
pub const MAX_FETCH: usize = 100_000;

/// What a peer opened a connection for.
#[derive(Debug, Clone, PartialEq)]
pub enum Opening {
    /// A session; the frame is its first (a hello, if all is well).
    Session(Frame, Features),
    /// A fetch from this member of the cluster.
    Fetch(Ask),
}

/// What a peer asked for in a fetch.
#[derive(Debug, Clone, PartialEq)]
pub enum Ask {
    /// These blobs.
    Blobs(Vec<Blake3Hash>),
    /// The manifest `target` as a delta from `base`, and its new blobs.
    Version {
        base: Blake3Hash,
        target: Blake3Hash,
    },
}

/// A fetch this node does not answer.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("a blob fetch that is not from {peer} of this cluster")]
    NotFromPeer { peer: NodeName },
    #[error("{peer} asked for {count} blobs at once")]
    TooMany { peer: NodeName, count: usize },
}

/// What the first frame from `peer` (matched by its mesh address) opens,
/// on a node of `cluster`.
pub fn open(
    first: Frame,
    features: Features,
    peer: &Member,
    cluster: Option<EventId>,
) -> Result<Opening, FetchError> {
    let from_peer = |protocol: u16, from: EventId, node: AuthorKey| {
        if protocol == PROTOCOL && Some(from) == cluster && node == peer.key {
            Ok(())
        } else {
            Err(FetchError::NotFromPeer {
                peer: peer.name.clone(),
            })
        }
    };
    match first {
        Frame::Fetch(f) => {
            from_peer(f.protocol, f.cluster, f.node)?;
            if f.want.len() > MAX_FETCH {
                return Err(FetchError::TooMany {
                    peer: peer.name.clone(),
                    count: f.want.len(),
                });
            }
            Ok(Opening::Fetch(Ask::Blobs(f.want)))
        }
        Frame::FetchVersion(f) => {
            from_peer(f.protocol, f.cluster, f.node)?;
            Ok(Opening::Fetch(Ask::Version {
                base: f.base,
                target: f.target,
            }))
        }
        // A session the peer started may overlap one this node started:
        // both only add what is missing.
        first => Ok(Opening::Session(first, features)),
    }
}

/// The live peers in the order a fetch asks them: first the one that
/// last sent this node new events (a new version's event comes from a
/// node that holds its blobs: the one `maki` uploaded to, or one that
/// fetched them before passing it on), then the others from a random
/// one, so not every node asks the same peer first.
pub fn order(
    mut live: Vec<Member>,
    last_sender: Option<AuthorKey>,
    rng: &mut impl Rng,
) -> Vec<Member> {
    if !live.is_empty() {
        let start = rng.random_range(0..live.len());
        live.rotate_left(start);
    }
    if let Some(at) = live.iter().position(|p| Some(p.key) == last_sender) {
        let first = live.remove(at);
        live.insert(0, first);
    }
    live
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::frame::Fetch;
    use rand::SeedableRng;

    fn member(seed: u8) -> Member {
        Member::of_seed(seed)
    }

    #[test]
    fn a_fetch_is_answered_only_for_the_peer_it_came_from() {
        let cluster = EventId::of(b"cluster");
        let peer = member(2);
        let fetch = |node, cluster, want: usize| {
            Frame::Fetch(Fetch {
                protocol: PROTOCOL,
                cluster,
                node,
                want: vec![Blake3Hash::of(b"b"); want],
            })
        };
        let open = |frame| open(frame, Features::NONE, &peer, Some(cluster));
        assert!(
            matches!(open(fetch(peer.key, cluster, 2)), Ok(Opening::Fetch(Ask::Blobs(w))) if w.len() == 2)
        );
        assert_eq!(
            open(fetch(member(3).key, cluster, 1))
                .unwrap_err()
                .to_string(),
            "a blob fetch that is not from n2 of this cluster"
        );
        assert!(open(fetch(peer.key, EventId::of(b"other"), 1)).is_err());
        assert_eq!(
            open(fetch(peer.key, cluster, MAX_FETCH + 1))
                .unwrap_err()
                .to_string(),
            format!("n2 asked for {} blobs at once", MAX_FETCH + 1)
        );
        assert_eq!(
            open(Frame::Done).unwrap(),
            Opening::Session(Frame::Done, Features::NONE)
        );
    }

    #[test]
    fn the_last_sender_is_asked_first_and_the_rest_from_a_random_start() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let live: Vec<Member> = (1..=4).map(member).collect();
        let mut firsts = std::collections::BTreeSet::new();
        for _ in 0..50 {
            let got = order(live.clone(), Some(member(3).key), &mut rng);
            assert_eq!(got[0], member(3));
            assert_eq!(got.len(), 4);
            let got = order(live.clone(), None, &mut rng);
            firsts.insert(got[0].name.clone());
            // A rotation: the order around the ring is kept.
            let at = live.iter().position(|m| *m == got[0]).unwrap();
            let mut ring = live.clone();
            ring.rotate_left(at);
            assert_eq!(got, ring);
        }
        assert_eq!(firsts.len(), 4, "every peer is asked first sometimes");
    }
}
