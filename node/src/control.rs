//! The local control socket: how `makiatto` subcommands and `maki` (over
//! SSH) talk to a running daemon. One JSON request per line, one JSON
//! response per line. The socket is mode 0600: only root and the daemon's
//! own user may append to the log through it.
//!
//! [`execute`] answers a request against a [`Replica`]; the daemon calls it
//! for requests from the socket and the CLI calls it directly when no daemon
//! runs, so both paths share one implementation.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use makiatto_core::log::AppendOutcome;
use makiatto_core::{IngestError, VersionVector};
use makiatto_events::Event;
use makiatto_projections::ProjectionName;
use serde::{Deserialize, Serialize};

use crate::query::LogFilter;
use crate::replica::{AppendResult, Replica, ReplicaError};

/// The largest request line accepted (a batch of events, hex-encoded).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;

/// What a client asks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Append events given as hex of their canonical bytes.
    Append {
        events: Vec<String>,
    },
    Log {
        filter: LogFilter,
    },
    Show {
        name: String,
        at: Option<String>,
    },
    Verify,
    Status,
    /// What the log holds per author.
    VersionVector,
    /// The events a log holding `vv` lacks (hex), about `max_bytes` at most.
    Missing {
        vv: VersionVector,
        max_bytes: usize,
    },
    /// The current heads, to name as parents of a new event.
    Heads,
    /// An author's latest event (hex), or null.
    Feed {
        author: String,
    },
    /// Every applied configuration change (hex), in canonical order.
    ConfigChanges,
    /// The health table: peers' liveness, load, mesh handshakes and
    /// replication (answered by the running daemon only).
    Health,
    /// Stores manifest `target` rebuilt from manifest `base` (held here)
    /// and a `ManifestDelta` (hex), once it hashes to `target`: a one-file
    /// edit sends about a hundred bytes, not the whole manifest. Answered
    /// by the running daemon only (it keeps recent manifests decoded);
    /// `maki` sends the whole manifest when this fails.
    ManifestPut {
        base: String,
        target: String,
        delta: String,
    },
}

/// The answer: `{"ok": …}` or `{"error": "…"}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Response {
    Ok(serde_json::Value),
    Error(String),
}

/// How appends reach the log: through the daemon's group committer, or
/// straight into the log when the CLI holds the store itself.
pub trait Appender {
    fn append(
        &self,
        replica: &std::sync::Mutex<Replica>,
        events: Vec<Event>,
    ) -> Result<(Vec<AppendOutcome>, Vec<Event>), String>;
}

/// Appends directly (offline use).
pub struct Direct;

impl Appender for Direct {
    fn append(
        &self,
        replica: &std::sync::Mutex<Replica>,
        events: Vec<Event>,
    ) -> Result<(Vec<AppendOutcome>, Vec<Event>), String> {
        let log = replica.lock().map_err(|_| "replica lock poisoned")?.log();
        let mut log = log.lock().map_err(|_| "log lock poisoned")?;
        let report = log.append(events).map_err(|e| e.to_string())?;
        Ok((report.outcomes, report.stored))
    }
}

impl Appender for makiatto_core::GroupCommitter {
    fn append(
        &self,
        _replica: &std::sync::Mutex<Replica>,
        events: Vec<Event>,
    ) -> Result<(Vec<AppendOutcome>, Vec<Event>), String> {
        makiatto_core::GroupCommitter::append(self, events)
    }
}

fn fail(e: impl ToString) -> Response {
    Response::Error(e.to_string())
}

/// Answers one request.
pub fn execute(
    replica: &std::sync::Mutex<Replica>,
    appender: &dyn Appender,
    request: Request,
) -> Response {
    match request {
        Request::Append { events } => append(replica, appender, events),
        Request::Log { filter } => {
            if let Err(e) = filter.check() {
                return fail(e);
            }
            let Ok(replica) = replica.lock() else {
                return fail("replica lock poisoned");
            };
            match replica.log_lines(&filter) {
                Ok(lines) => Response::Ok(serde_json::to_value(lines).unwrap_or_default()),
                Err(e) => fail(e),
            }
        }
        Request::Show { name, at } => {
            let Some(projection) = ProjectionName::parse(&name) else {
                let known: Vec<&str> = ProjectionName::ALL.iter().map(|p| p.as_str()).collect();
                return fail(format!(
                    "unknown projection {name:?}; projections are: {}",
                    known.join(", ")
                ));
            };
            let Ok(mut replica) = replica.lock() else {
                return fail("replica lock poisoned");
            };
            match replica.state_at(at.as_deref()) {
                Ok(state) => Response::Ok(state.to_json(projection)),
                Err(e) => fail(e),
            }
        }
        Request::Verify => {
            let Ok(mut replica) = replica.lock() else {
                return fail("replica lock poisoned");
            };
            match replica.verify() {
                Ok(report) => Response::Ok(serde_json::to_value(report).unwrap_or_default()),
                Err(e) => fail(e),
            }
        }
        Request::Status => match replica.lock() {
            Ok(replica) => Response::Ok(replica.status()),
            Err(_) => fail("replica lock poisoned"),
        },
        Request::VersionVector => reading(replica, |r| {
            Ok(serde_json::to_value(r.version_vector()?).unwrap_or_default())
        }),
        Request::Missing { vv, max_bytes } => reading(replica, |r| {
            let events: Vec<String> = r
                .missing_for(&vv, max_bytes)?
                .iter()
                .map(hex::encode)
                .collect();
            Ok(serde_json::json!(events))
        }),
        Request::Heads => reading(replica, |r| {
            let heads: Vec<_> = r
                .heads()
                .into_iter()
                .map(|(id, hlc)| serde_json::json!({"id": id.to_hex(), "millis": hlc.millis, "counter": hlc.counter}))
                .collect();
            Ok(serde_json::json!(heads))
        }),
        Request::Feed { author } => reading(replica, |r| {
            let author: makiatto_events::AuthorKey = author
                .parse()
                .map_err(|e| ReplicaError::Query(format!("bad author key: {e}")))?;
            Ok(serde_json::json!(r.latest_of(&author)?.map(hex::encode)))
        }),
        Request::Health => fail("health needs the running daemon (start it with `makiatto run`)"),
        Request::ManifestPut { .. } => fail("manifest-put needs the running daemon"),
        Request::ConfigChanges => reading(replica, |r| {
            Ok(serde_json::json!(
                r.config_changes()
                    .iter()
                    .map(hex::encode)
                    .collect::<Vec<_>>()
            ))
        }),
    }
}

fn reading(
    replica: &std::sync::Mutex<Replica>,
    f: impl FnOnce(&Replica) -> Result<serde_json::Value, ReplicaError>,
) -> Response {
    match replica.lock() {
        Ok(r) => match f(&r) {
            Ok(v) => Response::Ok(v),
            Err(e) => fail(e),
        },
        Err(_) => fail("replica lock poisoned"),
    }
}

fn append(
    replica: &std::sync::Mutex<Replica>,
    appender: &dyn Appender,
    hex_events: Vec<String>,
) -> Response {
    let raw: Vec<Result<Vec<u8>, makiatto_events::EventError>> = hex_events
        .iter()
        .map(|text| {
            hex::decode(text.trim())
                .map_err(|_| makiatto_events::EventError::Malformed("not hexadecimal"))
        })
        .collect();
    match ingest(replica, appender, raw) {
        Ok(ingested) => Response::Ok(serde_json::to_value(ingested.results).unwrap_or_default()),
        Err(e) => fail(e),
    }
}

/// What [`ingest`] did with a batch.
pub struct Ingested {
    /// One result per input, in order.
    pub results: Vec<AppendResult>,
    /// How many events this batch stored (its own; not counting others'
    /// events that shared the commit).
    pub stored: usize,
    /// Why events were refused as forged, malformed or off their author's
    /// chain: what a peer that sent them is counted and logged for (a
    /// duplicate or a full wait buffer is nobody's fault).
    pub bad: Vec<String>,
}

fn is_bad(e: &IngestError) -> bool {
    matches!(
        e,
        IngestError::Invalid(_)
            | IngestError::ChainMismatch { .. }
            | IngestError::ForeignCluster { .. }
    )
}

/// Verifies raw events (from `maki` or a peer), appends the valid ones
/// durably and folds what was stored into the projections. Refusals are
/// counted in the log's reject counters.
pub fn ingest(
    replica: &std::sync::Mutex<Replica>,
    appender: &dyn Appender,
    raw: Vec<Result<Vec<u8>, makiatto_events::EventError>>,
) -> Result<Ingested, String> {
    // Verify outside any lock, on every core: signatures are the expensive part.
    let bytes: Vec<&[u8]> = raw
        .iter()
        .filter_map(|r| r.as_ref().ok().map(Vec::as_slice))
        .collect();
    let mut decoded = Event::decode_all(&bytes).into_iter();
    let mut results: Vec<Option<AppendResult>> = Vec::with_capacity(raw.len());
    let mut valid = Vec::new();
    let mut rejected = Vec::new();
    for item in &raw {
        let decoded = match item {
            Ok(_) => decoded
                .next()
                .unwrap_or(Err(makiatto_events::EventError::Malformed(
                    "lost in decoding",
                ))),
            Err(e) => Err(e.clone()),
        };
        match decoded {
            Ok(event) => {
                valid.push(event);
                results.push(None);
            }
            Err(error) => {
                let error = IngestError::Invalid(error);
                results.push(Some(AppendResult::from(&AppendOutcome::Rejected(
                    error.clone(),
                ))));
                rejected.push(error);
            }
        }
    }
    if !rejected.is_empty()
        && let Ok(r) = replica.lock()
        && let Ok(mut log) = r.log().lock()
    {
        for error in &rejected {
            log.count_rejection(error);
        }
    }
    let (outcomes, stored) = appender
        .append(replica, valid)
        .map_err(|e| format!("the log could not store the events: {e}"))?;
    let own_stored = outcomes
        .iter()
        .filter(|o| matches!(o, AppendOutcome::Stored { .. }))
        .count();
    let bad: Vec<String> = rejected
        .iter()
        .chain(outcomes.iter().filter_map(|o| match o {
            AppendOutcome::Rejected(e) => Some(e),
            _ => None,
        }))
        .filter(|e| is_bad(e))
        .map(|e| e.to_string())
        .collect();
    let mut outcomes = outcomes.iter();
    let results: Vec<AppendResult> = results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                outcomes
                    .next()
                    .map(AppendResult::from)
                    .unwrap_or_else(|| AppendResult {
                        id: None,
                        outcome: "rejected",
                        fork: false,
                        error: Some("no outcome was reported".into()),
                    })
            })
        })
        .collect();
    let mut r = replica.lock().map_err(|_| "replica lock poisoned")?;
    r.absorb(stored)
        .map_err(|e| format!("events were stored but the projections could not be updated: {e}"))?;
    Ok(Ingested {
        results,
        stored: own_stored,
        bad,
    })
}

/// Sends one request to a running daemon's socket.
pub fn call(socket: &Path, request: &Request) -> std::io::Result<Response> {
    let mut stream = UnixStream::connect(socket)?;
    let mut line = serde_json::to_vec(request).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    reader.read_line(&mut answer)?;
    serde_json::from_str(&answer)
        .map_err(|e| std::io::Error::other(format!("the daemon's answer is not valid: {e}")))
}

impl From<ReplicaError> for Response {
    fn from(e: ReplicaError) -> Self {
        Response::Error(e.to_string())
    }
}
