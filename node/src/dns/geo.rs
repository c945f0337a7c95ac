//! Which nodes are nearest a client.
//!
//! Where the client is comes from the GeoIP database (`geoip`).
//! Distances are great-circle (haversine) on a sphere of the Earth's mean
//! radius. The choice is a pure function of the candidates, the client's
//! coordinates and the health mask.

use super::zone::GeoNode;

/// The Earth's mean radius (IUGG), in kilometres.
const EARTH_RADIUS_KM: f64 = 6371.0088;

/// Great-circle distance in kilometres between two (latitude, longitude)
/// points given in degrees.
pub fn distance_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (lat1, lon1) = (a.0.to_radians(), a.1.to_radians());
    let (lat2, lon2) = (b.0.to_radians(), b.1.to_radians());
    let h = ((lat2 - lat1) / 2.0).sin().powi(2)
        + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// Where a client is, as far as the database knows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Located {
    /// (latitude, longitude), or `None` for addresses the database does not
    /// place (private, reserved, unlisted).
    pub coords: Option<(f64, f64)>,
    /// The prefix length of the database network that decided it: the ECS
    /// scope of a geo answer.
    pub prefix: u8,
}

/// Most nodes a geo answer names.
pub const MAX_ANSWER: usize = 8;

/// The nodes a geo answer names, best first, for the family asked
/// (`v6`): the `n` nearest of the healthy ones (bit i of `alive` is
/// `geo[i]`); when none of that family is healthy, the nearest of all of
/// them (a possibly-down node beats an empty answer). Unknown location:
/// every healthy node of the family, in name order, up to
/// [`MAX_ANSWER`] — the same on every node that sees the same health.
/// Ties go to the node whose name sorts first.
pub fn choose(
    geo: &[GeoNode],
    v6: bool,
    client: Option<(f64, f64)>,
    alive: u64,
    n: usize,
) -> ([u8; MAX_ANSWER], usize) {
    let has = |g: &GeoNode| if v6 { g.aaaa.is_some() } else { g.a.is_some() };
    let mut pool: Vec<(f64, usize)> = geo
        .iter()
        .enumerate()
        .filter(|(i, g)| has(g) && alive & (1u64 << i) != 0)
        .map(|(i, _)| (0.0, i))
        .collect();
    if pool.is_empty() {
        pool = geo
            .iter()
            .enumerate()
            .filter(|(_, g)| has(g))
            .map(|(i, _)| (0.0, i))
            .collect();
    }
    let take = match client {
        Some(c) => {
            for p in &mut pool {
                p.0 = distance_km(c, (geo[p.1].lat, geo[p.1].lon));
            }
            pool.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            n.clamp(1, MAX_ANSWER)
        }
        None => MAX_ANSWER,
    };
    let mut out = [0u8; MAX_ANSWER];
    let k = pool.len().min(take);
    for (o, p) in out.iter_mut().zip(&pool[..k]) {
        *o = p.1 as u8;
    }
    (out, k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::zone::Rrset;

    const LONDON: (f64, f64) = (51.5074, -0.1278);
    const TOKYO: (f64, f64) = (35.6762, 139.6503);
    const SAO_PAULO: (f64, f64) = (-23.5505, -46.6333);
    const NEW_YORK: (f64, f64) = (40.7128, -74.0060);
    const SYDNEY: (f64, f64) = (-33.8688, 151.2093);

    #[test]
    fn great_circle_distances_match_known_city_pairs() {
        // Reference figures (great-circle, mean radius), within 0.5%.
        for (a, b, km) in [
            (LONDON, NEW_YORK, 5570.0),
            (LONDON, TOKYO, 9560.0),
            (SYDNEY, TOKYO, 7820.0),
            (SAO_PAULO, LONDON, 9490.0),
        ] {
            let d = distance_km(a, b);
            assert!(
                (d - km).abs() / km < 0.005,
                "{a:?}–{b:?}: {d} km, expected {km}"
            );
            assert!((distance_km(b, a) - d).abs() < 1e-6, "symmetric");
        }
        assert!(distance_km(LONDON, LONDON) < 1e-9);
        // Swapping latitude and longitude would put London in Somalia:
        // the order is checked by a pair that breaks under a swap.
        assert!(distance_km(LONDON, (-0.1278, 51.5074)) > 5000.0);
    }

    fn node(name: &str, at: (f64, f64), v4: bool, v6: bool) -> GeoNode {
        GeoNode {
            name: makiatto_events::NodeName::new(name).unwrap(),
            lat: at.0,
            lon: at.1,
            a: v4.then(Rrset::default),
            aaaa: v6.then(Rrset::default),
        }
    }

    #[test]
    fn the_nearest_healthy_node_of_the_family_is_chosen() {
        let geo = [
            node("klukai", TOKYO, true, true),
            node("tololo", SAO_PAULO, true, false),
            node("vector", LONDON, true, true),
        ];
        let all = 0b111;
        let pick = |c, alive, v6, n| {
            let (o, k) = choose(&geo, v6, c, alive, n);
            o[..k].to_vec()
        };
        // Paris → London; Rio → São Paulo; Rio over IPv6 → London (São
        // Paulo has no IPv6).
        assert_eq!(pick(Some((48.85, 2.35)), all, false, 1), vec![2]);
        assert_eq!(pick(Some((-22.9, -43.2)), all, false, 1), vec![1]);
        assert_eq!(pick(Some((-22.9, -43.2)), all, true, 1), vec![2]);
        // Two nearest from Paris: London, then São Paulo (9,170 km) before
        // Tokyo (9,710 km).
        assert_eq!(pick(Some((48.85, 2.35)), all, false, 2), vec![2, 1]);
        // London down: Paris gets the next nearest.
        assert_eq!(pick(Some((48.85, 2.35)), 0b011, false, 1), vec![1]);
        // Nothing healthy: the nearest anyway.
        assert_eq!(pick(Some((48.85, 2.35)), 0, false, 1), vec![2]);
        // Unknown location: every healthy node, in name order.
        assert_eq!(pick(None, 0b101, false, 1), vec![0, 2]);
    }
}
