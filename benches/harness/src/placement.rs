//! Where a benchmark's server and its load generator run.
//!
//! Free (the default): everything may use both cores, as on a real
//! two-core server that also runs its own clients — which measures the
//! client as much as the server. Pinned (`MAKIATTO_BENCH_PINNED=1`): every
//! server (ours, nginx, Knot) on CPU 0 with one worker, the load generator
//! on CPU 1, so the server's figures are its own. Ours is started under
//! `taskset`, so it sizes its threads (serving threads, DNS sockets, the
//! mesh) to the one CPU it sees, as the anchors run one worker.

/// The two placements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    Free,
    Pinned,
}

/// The CPU pinned servers run on.
pub const SERVER_CPU: &str = "0";
/// The CPU a pinned load generator runs on.
pub const CLIENT_CPU: &str = "1";

impl Placement {
    /// `MAKIATTO_BENCH_PINNED=1` pins; anything else leaves all free.
    pub fn from_env() -> Placement {
        match std::env::var("MAKIATTO_BENCH_PINNED").as_deref() {
            Ok("1") => Placement::Pinned,
            _ => Placement::Free,
        }
    }

    pub fn pinned(self) -> bool {
        self == Placement::Pinned
    }

    /// What a server's command line starts with.
    pub fn server(self) -> Vec<&'static str> {
        match self {
            Placement::Free => Vec::new(),
            Placement::Pinned => vec!["taskset", "-c", SERVER_CPU],
        }
    }

    /// What a load generator's command line starts with.
    pub fn client(self) -> Vec<&'static str> {
        match self {
            Placement::Free => Vec::new(),
            Placement::Pinned => vec!["taskset", "-c", CLIENT_CPU],
        }
    }

    /// How many workers (threads or processes) a server and a load
    /// generator get: one each when pinned, else one per core.
    pub fn workers(self) -> usize {
        match self {
            Placement::Free => 2,
            Placement::Pinned => 1,
        }
    }

    /// How tables name it.
    pub fn label(self) -> &'static str {
        match self {
            Placement::Free => "unpinned (server and client share both cores)",
            Placement::Pinned => "pinned (servers on CPU 0, one worker; load on CPU 1)",
        }
    }
}
