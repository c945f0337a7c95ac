//! Replication between nodes, as a sans-I/O state machine.
//!
//! A node's gossip (`node/src/gossip/`) owns the sockets, the timers and
//! the stores; everything it *decides* is here, where a seeded simulation
//! (`replay-tests`) runs the very same code over a faulty network: what a
//! session sends and in which batches, what a received frame asks of the
//! node, who is alive, when a catch-up starts, which peer anti-entropy
//! picks, whom a fetch asks first. Inputs are frames, heartbeats and the
//! time; outputs are frames to send and steps for the caller to carry out
//! (read a feed chunk, append events, store a version sent ahead, start a
//! session with a peer).
//!
//! # Layout
//! - [`frame`]: the frames of a mesh connection and their codec (length,
//!   postcard body, the feature bits after a `Hello`).
//! - [`topology`]: this node and its peers, as replication names them.
//! - [`session`]: one session: the hello exchange, the plan sent in
//!   batches, and what each received frame asks of the node.
//! - [`liveness`]: heartbeats, who is alive, and when a catch-up starts.
//! - [`schedule`]: one session per peer at a time (a push meanwhile runs
//!   one more), one catch-up at a time.
//! - [`incoming`]: how many connections and sessions one peer may hold
//!   open on this node (a member flooding anti-entropy is bounded).
//! - [`anti_entropy`]: the peer of the periodic session.
//! - [`own_feed`]: after a restart, whether the node has learnt its own
//!   feed's tip from a peer and may sign.
//! - [`fetch`]: blob and version fetches: what a connection's first frame
//!   opens, and which peer is asked first.
//!
//! # Invariants
//! - No I/O, no clock, no randomness of its own: time comes in as a
//!   [`Moment`], randomness as an RNG, so a seed replays a run exactly.
//! - The wire format is pinned by golden fixtures
//!   (`replay-tests/fixtures/frames/`): nodes of two builds talk during a
//!   rolling upgrade. New abilities are announced as [`Features`];
//!   [`PROTOCOL`] is bumped only for changes older nodes cannot ignore.

pub mod anti_entropy;
pub mod fetch;
pub mod frame;
pub mod incoming;
pub mod liveness;
pub mod own_feed;
pub mod schedule;
pub mod session;
pub mod topology;

pub use frame::{Features, Fetch, FetchVersion, Frame, FrameError, Hello, PROTOCOL, VersionAhead};
pub use incoming::Incoming;
pub use liveness::{DEAD_AFTER, HEARTBEAT_EVERY, Hearing, Heartbeat, Liveness, Moment};
pub use own_feed::{OwnFeed, SignGate};
pub use schedule::Schedule;
pub use session::{
    AHEAD_KEPT, AHEAD_MAX_BYTES, BATCH_BYTES, BLOBS_AHEAD_FRAMES, BLOBS_AHEAD_MAX, FRAME_TIMEOUT,
    FeedRead, Handshake, Inbound, Outbound, Received, Session, SessionError, Step,
};
pub use topology::{Identity, Member, Topology};
