//! One connection's streams over the simulated [`crate::network`], as TCP
//! makes them: each end numbers the frames it sends, and the other end
//! takes them in that order, once each, however the network reorders and
//! duplicates them. (A frame the network loses at random is sent again by
//! the simulation; one a partition cuts leaves a hole the stream waits on
//! until the session times out.)

use std::collections::BTreeMap;

/// Numbers the frames one end sends.
#[derive(Debug, Default)]
pub struct Outgoing {
    next: u64,
}

impl Outgoing {
    /// The number of the next frame sent.
    pub fn number(&mut self) -> u64 {
        let seq = self.next;
        self.next += 1;
        seq
    }
}

/// Puts the frames one end receives back in order.
#[derive(Debug, Default)]
pub struct Incoming {
    expected: u64,
    early: BTreeMap<u64, Vec<u8>>,
}

impl Incoming {
    /// Frame `seq` arrived (again, maybe: a duplicate is dropped).
    pub fn arrived(&mut self, seq: u64, bytes: Vec<u8>) {
        if seq >= self.expected {
            self.early.entry(seq).or_insert(bytes);
        }
    }

    /// The next frame in order, if it is here.
    pub fn take(&mut self) -> Option<Vec<u8>> {
        let bytes = self.early.remove(&self.expected)?;
        self.expected += 1;
        Some(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_taken_in_order_and_once_whatever_the_network_does() {
        let mut out = Outgoing::default();
        let frames: Vec<(u64, Vec<u8>)> = (0..4u8).map(|i| (out.number(), vec![i])).collect();
        let mut inc = Incoming::default();
        // 2 and 1 overtake 0; 1 comes twice, 0 again after it was taken.
        inc.arrived(2, frames[2].1.clone());
        inc.arrived(1, frames[1].1.clone());
        assert_eq!(inc.take(), None, "frame 0 is not here yet");
        inc.arrived(0, frames[0].1.clone());
        inc.arrived(1, frames[1].1.clone());
        let mut taken = Vec::new();
        while let Some(f) = inc.take() {
            taken.push(f);
        }
        inc.arrived(0, frames[0].1.clone());
        assert_eq!(inc.take(), None, "a duplicate of a taken frame is dropped");
        assert_eq!(taken, vec![vec![0], vec![1], vec![2]]);
        // A hole holds back what follows it.
        inc.arrived(3, frames[3].1.clone());
        assert_eq!(inc.take(), Some(vec![3]));
    }
}
