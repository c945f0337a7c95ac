//! Anti-entropy: every [`ANTI_ENTROPY_EVERY`], a session with one live
//! peer chosen at random repairs anything pushes and catch-ups missed.
//! Only live peers: a session to a dead one would hang until it times
//! out, and might land after the peer's own catch-up.

use std::time::Duration;

use rand::Rng;

/// How often a node runs a session with a random peer.
pub const ANTI_ENTROPY_EVERY: Duration = Duration::from_secs(15);

/// The peer of this round, uniformly among `live`; none when none is.
pub fn pick<'a, P>(live: &'a [P], rng: &mut impl Rng) -> Option<&'a P> {
    if live.is_empty() {
        return None;
    }
    Some(&live[rng.random_range(0..live.len())])
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn every_live_peer_gets_picked_and_nobody_when_none_is_live() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        let peers = [1, 2, 3];
        let mut seen = [false; 3];
        for _ in 0..100 {
            let p = pick(&peers, &mut rng).unwrap();
            seen[*p - 1] = true;
        }
        assert_eq!(seen, [true; 3]);
        assert_eq!(pick::<u8>(&[], &mut rng), None);
    }
}
