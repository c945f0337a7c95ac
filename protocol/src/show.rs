//! `show`: one projection with its name and fingerprint.

use makiatto_events::Blake3Hash;
use makiatto_projections::ProjectionName;
use serde::{Deserialize, Serialize};

/// A projection as `show` answers it: the same form as `makiatto show
/// --json`, the state as the projection's own type (or any JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shown<T> {
    pub projection: ProjectionName,
    /// blake3 of the state's canonical JSON.
    pub fingerprint: Blake3Hash,
    pub state: T,
}
