//! Version vectors, and the plan of what one log must send another so that
//! both hold the union: the data replication exchanges (in heartbeats, in a
//! session's `Hello`, in `maki`'s control requests), kept here because it is
//! pure and every side of the wire needs it.
//!
//! A version vector maps each author to a [`FeedSummary`]. Because stored
//! feeds have no holes, `seq` names a whole prefix, and a peer that lacks
//! events is sent only the suffix after its `seq`: bytes on the wire follow
//! the difference, not the log size. Forks (one key used on two devices) are
//! the exception: when either side holds or suspects a fork, the whole feed
//! of that author is offered, and the digests stop the exchange once both
//! hold the same set.

use std::collections::BTreeMap;

use crate::{AuthorKey, EventId};
use serde::{Deserialize, Serialize};

/// One author's feed as one log holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedSummary {
    /// The highest sequence number stored (feeds have no holes).
    pub seq: u64,
    /// How many events are stored; more than `seq` means a fork.
    pub count: u64,
    /// XOR of the stored ids: equal sets give equal digests.
    pub digest: [u8; 32],
    /// This log received an event that extends a branch it does not hold.
    pub diverged: bool,
}

impl FeedSummary {
    fn forked(&self) -> bool {
        self.diverged || self.count != self.seq
    }

    fn same_set(&self, other: &FeedSummary) -> bool {
        self.seq == other.seq && self.count == other.count && self.digest == other.digest
    }
}

/// Per author, what a log holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionVector(BTreeMap<AuthorKey, FeedSummary>);

/// What to send a peer for one author: every event with `seq >= from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedRequest {
    pub author: AuthorKey,
    pub from: u64,
}

impl VersionVector {
    /// Records a stored event.
    pub fn observe(&mut self, author: AuthorKey, seq: u64, id: &EventId) {
        let entry = self.0.entry(author).or_insert(FeedSummary {
            seq: 0,
            count: 0,
            digest: [0; 32],
            diverged: false,
        });
        entry.seq = entry.seq.max(seq);
        entry.count += 1;
        for (d, b) in entry.digest.iter_mut().zip(id.as_bytes()) {
            *d ^= b;
        }
    }

    /// Marks an author whose feed this log knows to have diverged.
    pub fn mark_diverged(&mut self, author: AuthorKey, diverged: bool) {
        if let Some(entry) = self.0.get_mut(&author) {
            entry.diverged = diverged;
        }
    }

    /// The summary for one author.
    pub fn get(&self, author: &AuthorKey) -> Option<&FeedSummary> {
        self.0.get(author)
    }

    /// Every author and summary, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&AuthorKey, &FeedSummary)> {
        self.0.iter()
    }

    /// A short fingerprint of the whole vector: equal logs have equal
    /// digests (gossiped in heartbeats, so a peer that differs is noticed
    /// without exchanging vectors).
    pub fn digest(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        for (author, f) in &self.0 {
            h.update(author.as_bytes());
            h.update(&f.seq.to_le_bytes());
            h.update(&f.count.to_le_bytes());
            h.update(&f.digest);
        }
        *h.finalize().as_bytes()
    }

    /// The number of events held.
    pub fn total(&self) -> u64 {
        self.0.values().map(|f| f.count).sum()
    }

    /// How many events `other` holds beyond this log's prefixes (the
    /// replication lag shown by `maki health`).
    pub fn behind(&self, other: &VersionVector) -> u64 {
        other
            .0
            .iter()
            .map(|(a, theirs)| {
                theirs
                    .seq
                    .saturating_sub(self.0.get(a).map_or(0, |ours| ours.seq))
            })
            .sum()
    }

    /// What `self` (the local log) must send a peer holding `remote`.
    pub fn plan_for(&self, remote: &VersionVector) -> Vec<FeedRequest> {
        let mut plan = Vec::new();
        for (author, ours) in &self.0 {
            let from = match remote.0.get(author) {
                None => Some(1),
                Some(theirs) if ours.same_set(theirs) => None,
                Some(theirs) if ours.forked() || theirs.forked() => Some(1),
                Some(theirs) if ours.seq > theirs.seq => Some(theirs.seq + 1),
                // Fork-free, equally long and different: the feeds diverged
                // without either side having seen both branches yet.
                Some(theirs) if ours.seq == theirs.seq => Some(1),
                Some(_) => None,
            };
            if let Some(from) = from {
                plan.push(FeedRequest {
                    author: *author,
                    from,
                });
            }
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vv(entries: &[(u8, &[u8])]) -> VersionVector {
        let mut v = VersionVector::default();
        for (author, ids) in entries {
            for (i, id) in ids.iter().enumerate() {
                v.observe(AuthorKey([*author; 32]), i as u64 + 1, &EventId([*id; 32]));
            }
        }
        v
    }

    #[test]
    fn a_peer_is_sent_only_the_suffix_it_lacks() {
        let local = vv(&[(1, &[1, 2, 3, 4]), (2, &[5])]);
        let remote = vv(&[(1, &[1, 2])]);
        assert_eq!(
            local.plan_for(&remote),
            vec![
                FeedRequest {
                    author: AuthorKey([1; 32]),
                    from: 3
                },
                FeedRequest {
                    author: AuthorKey([2; 32]),
                    from: 1
                },
            ]
        );
        assert!(remote.plan_for(&local).is_empty());
        assert_eq!(remote.behind(&local), 3);
    }

    #[test]
    fn equal_logs_exchange_nothing() {
        let a = vv(&[(1, &[1, 2]), (2, &[3])]);
        assert!(a.plan_for(&a.clone()).is_empty());
    }

    #[test]
    fn diverged_feeds_are_sent_whole_until_both_hold_both_branches() {
        let a = vv(&[(1, &[1, 2])]);
        let b = vv(&[(1, &[1, 9])]);
        assert_eq!(
            a.plan_for(&b),
            vec![FeedRequest {
                author: AuthorKey([1; 32]),
                from: 1
            }]
        );
        let mut both = a.clone();
        both.observe(AuthorKey([1; 32]), 2, &EventId([9; 32]));
        assert!(both.plan_for(&both.clone()).is_empty());
    }
}
