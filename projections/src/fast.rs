//! Hash maps keyed by event ids, which the fold touches several times per
//! event. foldhash is several times faster than the standard SipHash here and
//! still seeded per map, so crafted ids cannot aim at buckets. Nothing in
//! the projections depends on a map's iteration order.

pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
