//! Heartbeats and who is alive.
//!
//! Every [`HEARTBEAT_EVERY`] a node tells each peer, in one datagram, that
//! it is up, how loaded it is, and a digest of its version vector. A peer
//! heard within [`DEAD_AFTER`] is alive: pushes, anti-entropy and fetches
//! go only to live peers, and GeoDNS answers only with them. A heartbeat
//! whose digest differs from this node's starts a catch-up, from the node
//! holding fewer events (on a tie, the smaller key), so the two do not
//! both start one: a node back from a partition or a crash fetches the
//! difference within a heartbeat of its return.
//!
//! Heartbeats are never events: they feed this table, not history.

use std::collections::BTreeMap;
use std::time::Duration;

use makiatto_events::{AuthorKey, EventId, Load, VersionVector};
use serde::{Deserialize, Serialize};

use super::frame::{FrameError, PROTOCOL};
use super::topology::{Identity, Member};

/// How often every peer is sent a heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);
/// A peer not heard from for this long is down.
pub const DEAD_AFTER: Duration = Duration::from_secs(3);

/// A point on a node's monotonic clock: the time since the clock's origin
/// (a node: when it started; the simulation: tick zero). Passed in, never
/// read here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Moment(Duration);

impl Moment {
    /// The moment `elapsed` after the origin.
    pub const fn after(elapsed: Duration) -> Moment {
        Moment(elapsed)
    }

    /// How long after `earlier` this is (zero if it is not after it).
    pub fn since(self, earlier: Moment) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

/// What one node says of itself twice a second (one datagram).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub protocol: u16,
    pub cluster: EventId,
    pub node: AuthorKey,
    /// Events held, and a digest of the version vector.
    pub events: u64,
    pub vv_digest: [u8; 32],
    pub load: Load,
}

impl Heartbeat {
    /// This node's heartbeat, holding `vv`.
    pub fn new(identity: Identity, vv: &VersionVector, load: Load) -> Heartbeat {
        Heartbeat {
            protocol: PROTOCOL,
            cluster: identity.cluster,
            node: identity.node,
            events: vv.total(),
            vv_digest: vv.digest(),
            load,
        }
    }

    /// The datagram's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        postcard::to_allocvec(self).map_err(FrameError::Encode)
    }

    /// The datagram's bytes with the sender's wall clock (Unix ms) after
    /// the heartbeat: an older node decodes the heartbeat alone (postcard
    /// ignores what follows a value), a newer one learns the sender's
    /// clock from it.
    pub fn encode_with_clock(&self, clock_millis: u64) -> Result<Vec<u8>, FrameError> {
        let mut bytes = self.encode()?;
        bytes.extend(postcard::to_allocvec(&clock_millis).map_err(FrameError::Encode)?);
        Ok(bytes)
    }

    pub fn decode(bytes: &[u8]) -> Result<Heartbeat, FrameError> {
        postcard::from_bytes(bytes).map_err(FrameError::Decode)
    }

    /// The heartbeat and the sender's clock, when it sent one.
    pub fn decode_with_clock(bytes: &[u8]) -> Result<(Heartbeat, Option<u64>), FrameError> {
        let (beat, rest) = postcard::take_from_bytes(bytes).map_err(FrameError::Decode)?;
        Ok((beat, postcard::from_bytes(rest).ok()))
    }
}

/// What this node last heard from one peer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LastHeard {
    pub at: Option<Moment>,
    pub heartbeat: Option<Heartbeat>,
    /// The peer's clock less this node's when its last heartbeat that
    /// carried a clock arrived (milliseconds; the time in flight, well
    /// under a second on a mesh, counts against the peer).
    pub clock_offset_millis: Option<i64>,
}

/// What a heartbeat asks of this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hearing {
    /// The peer was not alive before: it may hold what this node waits for.
    pub back_up: bool,
    /// Its log differs and this node is the one to start a catch-up.
    pub catch_up: bool,
    /// Events the peer holds, and this node.
    pub theirs: u64,
    pub ours: u64,
}

/// Every peer's last heartbeat.
#[derive(Debug, Clone, Default)]
pub struct Liveness {
    peers: BTreeMap<AuthorKey, LastHeard>,
}

impl Liveness {
    /// A heartbeat arrived from the address of `peer`. One that is not of
    /// this protocol and cluster, or not signed off by that peer's key, is
    /// ignored (`None`).
    pub fn heard(
        &mut self,
        me: Identity,
        peer: &Member,
        beat: Heartbeat,
        ours: &VersionVector,
        now: Moment,
    ) -> Option<Hearing> {
        if beat.protocol != PROTOCOL || beat.cluster != me.cluster || beat.node != peer.key {
            return None;
        }
        let differs = beat.vv_digest != ours.digest();
        // The node with fewer events starts the catch-up (on a tie, the
        // smaller key), so two nodes do not both start one.
        let (theirs, held) = (beat.events, ours.total());
        let starts = theirs > held || (theirs == held && me.node < peer.key);
        let back_up = !self.alive(&peer.key, now);
        let last = self.peers.entry(peer.key).or_default();
        last.at = Some(now);
        last.heartbeat = Some(beat);
        Some(Hearing {
            back_up,
            catch_up: differs && starts,
            theirs,
            ours: held,
        })
    }

    /// A heartbeat from `key` carried its clock, `theirs`, which arrived
    /// when this node's read `ours` (both Unix ms).
    pub fn clock_heard(&mut self, key: &AuthorKey, theirs: u64, ours: u64) {
        if let Some(last) = self.peers.get_mut(key) {
            last.clock_offset_millis = Some(theirs as i64 - ours as i64);
        }
    }

    /// How far this node's clock is ahead of the cluster's (milliseconds):
    /// the median of the clocks of this node and its live peers that send
    /// theirs, taken from this node's, negated; `None` with no such peer.
    /// One clock gone wrong among three moves the median little, so a node
    /// is told its own clock is off, not its neighbour's.
    pub fn clock_ahead_of_peers(&self, peers: &[Member], now: Moment) -> Option<i64> {
        let mut offsets: Vec<i64> = peers
            .iter()
            .filter(|p| self.alive(&p.key, now))
            .filter_map(|p| self.peers.get(&p.key)?.clock_offset_millis)
            .collect();
        if offsets.is_empty() {
            return None;
        }
        // This node's own clock, offset nothing from itself.
        offsets.push(0);
        offsets.sort_unstable();
        let n = offsets.len();
        let median = if n % 2 == 1 {
            offsets[n / 2]
        } else {
            (offsets[n / 2 - 1] + offsets[n / 2]) / 2
        };
        Some(-median)
    }

    /// Heard from within [`DEAD_AFTER`].
    pub fn alive(&self, key: &AuthorKey, now: Moment) -> bool {
        self.peers
            .get(key)
            .and_then(|p| p.at)
            .is_some_and(|at| now.since(at) < DEAD_AFTER)
    }

    /// What was last heard from `key`.
    pub fn last(&self, key: &AuthorKey) -> Option<&LastHeard> {
        self.peers.get(key)
    }

    /// Do the peers alive now hold what this node holds (their last
    /// heartbeat carried `digest`)?
    pub fn in_sync(&self, peers: &[Member], digest: &[u8; 32], now: Moment) -> bool {
        peers.iter().all(|p| {
            !self.alive(&p.key, now)
                || self
                    .last(&p.key)
                    .and_then(|l| l.heartbeat.as_ref())
                    .is_some_and(|b| b.vv_digest == *digest)
        })
    }

    /// The members of `peers` alive now, in their order.
    pub fn live<'a>(&self, peers: &'a [Member], now: Moment) -> Vec<&'a Member> {
        peers.iter().filter(|p| self.alive(&p.key, now)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(seed: u8) -> Member {
        Member::of_seed(seed)
    }

    fn identity(m: &Member) -> Identity {
        Identity {
            cluster: EventId::of(b"cluster"),
            node: m.key,
        }
    }

    fn vv(n: u64) -> VersionVector {
        let mut vv = VersionVector::default();
        for seq in 1..=n {
            vv.observe(member(9).key, seq, &EventId::of(&[seq as u8]));
        }
        vv
    }

    fn at(ms: u64) -> Moment {
        Moment::after(Duration::from_millis(ms))
    }

    #[test]
    fn a_peer_is_alive_for_three_seconds_after_its_heartbeat() {
        let (me, peer) = (member(1), member(2));
        let mut table = Liveness::default();
        assert!(!table.alive(&peer.key, at(0)));
        let beat = Heartbeat::new(identity(&peer), &vv(1), Load::default());
        let heard = table.heard(identity(&me), &peer, beat.clone(), &vv(1), at(1_000));
        assert_eq!(
            heard,
            Some(Hearing {
                back_up: true,
                catch_up: false,
                theirs: 1,
                ours: 1
            })
        );
        assert!(table.alive(&peer.key, at(3_999)));
        assert!(!table.alive(&peer.key, at(4_000)));
        let again = table.heard(identity(&me), &peer, beat, &vv(1), at(2_000));
        assert!(!again.unwrap().back_up);
    }

    #[test]
    fn the_node_holding_fewer_events_starts_the_catch_up_on_a_tie_the_smaller_key() {
        let (a, b) = (member(1), member(2));
        let (small, large) = if a.key < b.key { (a, b) } else { (b, a) };
        let hear = |me: &Member, peer: &Member, ours: VersionVector, theirs: VersionVector| {
            let beat = Heartbeat::new(identity(peer), &theirs, Load::default());
            Liveness::default()
                .heard(identity(me), peer, beat, &ours, at(0))
                .unwrap()
                .catch_up
        };
        assert!(hear(&small, &large, vv(1), vv(2)));
        assert!(!hear(&large, &small, vv(2), vv(1)));
        // Same count, different events: only the smaller key starts.
        let mut other = VersionVector::default();
        other.observe(member(8).key, 1, &EventId::of(b"other"));
        assert!(hear(&small, &large, vv(1), other.clone()));
        assert!(!hear(&large, &small, vv(1), other));
        // Equal logs: nothing to catch up.
        assert!(!hear(&small, &large, vv(3), vv(3)));
    }

    #[test]
    fn heartbeats_of_another_cluster_protocol_or_key_are_ignored() {
        let (me, peer) = (member(1), member(2));
        let mut table = Liveness::default();
        let good = Heartbeat::new(identity(&peer), &vv(0), Load::default());
        let bad = [
            Heartbeat {
                protocol: PROTOCOL + 1,
                ..good.clone()
            },
            Heartbeat {
                cluster: EventId::of(b"elsewhere"),
                ..good.clone()
            },
            Heartbeat {
                node: member(3).key,
                ..good
            },
        ];
        for beat in bad {
            assert_eq!(table.heard(identity(&me), &peer, beat, &vv(0), at(0)), None);
        }
        assert!(!table.alive(&peer.key, at(0)));
    }

    #[test]
    fn peers_are_in_sync_when_every_live_one_carries_our_digest() {
        let (me, b, c) = (member(1), member(2), member(3));
        let peers = [b.clone(), c.clone()];
        let mut table = Liveness::default();
        let ours = vv(2);
        // Nobody heard: nothing contradicts.
        assert!(table.in_sync(&peers, &ours.digest(), at(0)));
        let beat = |m: &Member, v: &VersionVector| Heartbeat::new(identity(m), v, Load::default());
        table.heard(identity(&me), &b, beat(&b, &ours), &ours, at(0));
        table.heard(identity(&me), &c, beat(&c, &vv(1)), &ours, at(0));
        assert!(!table.in_sync(&peers, &ours.digest(), at(100)));
        assert_eq!(table.live(&peers, at(100)).len(), 2);
        // Once the one behind is down, it no longer counts.
        table.heard(identity(&me), &b, beat(&b, &ours), &ours, at(2_000));
        assert!(table.in_sync(&peers, &ours.digest(), at(3_500)));
        assert_eq!(table.live(&peers, at(3_500)), vec![&b]);
    }

    #[test]
    fn a_clock_after_a_heartbeat_is_read_by_new_nodes_and_ignored_by_old_ones() {
        let beat = Heartbeat::new(identity(&member(2)), &vv(3), Load::default());
        let bytes = beat.encode_with_clock(1_700_000_000_123).unwrap();
        // An older node reads the heartbeat alone, as it always did.
        assert_eq!(Heartbeat::decode(&bytes).unwrap(), beat);
        assert_eq!(
            Heartbeat::decode_with_clock(&bytes).unwrap(),
            (beat.clone(), Some(1_700_000_000_123))
        );
        // An older node's heartbeat carries no clock.
        assert_eq!(
            Heartbeat::decode_with_clock(&beat.encode().unwrap()).unwrap(),
            (beat, None)
        );
    }

    #[test]
    fn a_node_far_from_its_peers_median_clock_is_told_apart_from_one_skewed_peer() {
        let (me, b, c, d) = (member(1), member(2), member(3), member(4));
        let peers = [b.clone(), c.clone(), d.clone()];
        let mut table = Liveness::default();
        assert_eq!(table.clock_ahead_of_peers(&peers, at(0)), None);
        for p in &peers {
            let beat = Heartbeat::new(identity(p), &vv(1), Load::default());
            table.heard(identity(&me), p, beat, &vv(1), at(0));
        }
        // One peer ten minutes ahead, the others right: this node is fine
        // (the median of 0, 20, -10 and ten minutes is 10 ms).
        table.clock_heard(&b.key, 1_000_000 + 600_000, 1_000_000);
        table.clock_heard(&c.key, 1_000_020, 1_000_000);
        table.clock_heard(&d.key, 999_990, 1_000_000);
        assert_eq!(table.clock_ahead_of_peers(&peers, at(100)), Some(-10));
        // This node ten minutes ahead: every peer is behind it.
        for p in &peers {
            table.clock_heard(&p.key, 1_000_000, 1_600_000);
        }
        assert_eq!(table.clock_ahead_of_peers(&peers, at(100)), Some(600_000));
        // Peers no longer heard do not count.
        assert_eq!(table.clock_ahead_of_peers(&peers, at(10_000)), None);
    }

    #[test]
    fn a_heartbeat_round_trips_as_one_datagram() {
        let beat = Heartbeat::new(identity(&member(2)), &vv(3), Load::default());
        assert_eq!(Heartbeat::decode(&beat.encode().unwrap()).unwrap(), beat);
        assert!(Heartbeat::decode(b"\x01").is_err());
    }
}
