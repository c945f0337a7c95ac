//! The control protocol's serving side: how `makiatto` subcommands and
//! `maki` (over SSH, through `makiatto control`) talk to a node. One JSON
//! request per line, one JSON answer per line, in the types of
//! `makiatto_protocol`. The socket is mode 0600: only root and the daemon's
//! own user may append to the log through it.
//!
//! [`read_request`] turns a line into a request, or into an answer that
//! names both sides' versions when the line is a request this build does
//! not know. [`execute`] answers a request against a [`Replica`]; the
//! daemon calls it for requests from the socket and the CLI calls it
//! directly when no daemon runs, so both paths share one implementation.
//! Every arm builds its operation's own output type ([`reply`]), so an
//! answer cannot drift from what the client decodes.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Mutex;

use makiatto_core::IngestError;
use makiatto_core::log::AppendOutcome;
use makiatto_core::skew::{Timeliness, judge};
use makiatto_events::{Event, EventError};
use makiatto_protocol::append::{AppendResult, Outcome, Refusal};
use makiatto_protocol::request::{self as op, Probe};
use makiatto_protocol::show::Shown;
use makiatto_protocol::{
    Answer, ControlError, Envelope, ErrorCode, Features, Operation, Request, Version,
};

use makiatto_protocol::blob_stream::{self, INLINE_BLOB_BYTES, InlineBlob, Received};

use crate::blobs::BlobStore;
use crate::replica::{Replica, ReplicaError};

/// The largest request line accepted (a batch of events, hex-encoded).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;

/// How appends reach the log: through the daemon's group committer, or
/// straight into the log when the CLI holds the store itself.
pub trait Appender {
    fn append(
        &self,
        replica: &Mutex<Replica>,
        events: Vec<Event>,
    ) -> Result<(Vec<AppendOutcome>, Vec<Event>), String>;
}

/// Appends directly (offline use).
pub struct Direct;

impl Appender for Direct {
    fn append(
        &self,
        replica: &Mutex<Replica>,
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
        _replica: &Mutex<Replica>,
        events: Vec<Event>,
    ) -> Result<(Vec<AppendOutcome>, Vec<Event>), String> {
        makiatto_core::GroupCommitter::append(self, events)
    }
}

/// Reads one request line. A line this build cannot read becomes the
/// error answer to send back: `unsupported` (naming this node's version
/// and the client's, and what to upgrade) when its `op` is one this build
/// does not know, `malformed` otherwise.
pub fn read_request(line: &[u8]) -> Result<Envelope, ControlError> {
    let error = match serde_json::from_slice::<Envelope>(line) {
        Ok(envelope) => return Ok(envelope),
        Err(e) => e,
    };
    let probe = serde_json::from_slice::<Probe>(line).ok();
    let ours = Version::ours();
    match probe {
        Some(Probe {
            op: Some(op),
            client,
        }) if !Request::OPS.contains(&op.as_str()) => {
            let from = client.map_or_else(
                || "a client of another version".to_owned(),
                |c| format!("maki {c}"),
            );
            Err(ControlError::new(
                ErrorCode::Unsupported,
                format!(
                    "this node runs makiatto {ours} and does not serve the request `{op}` from {from}; \
                     upgrade the node (`maki machine upgrade`)"
                ),
            ))
        }
        Some(Probe { op: Some(op), .. }) => Err(ControlError::new(
            ErrorCode::Malformed,
            format!("not a valid `{op}` request for makiatto {ours}: {error}"),
        )),
        _ => Err(ControlError::new(
            ErrorCode::Malformed,
            format!("not a valid request: {error}"),
        )),
    }
}

/// The answer of operation `O`: its output encoded, or its error. The
/// output type is the one the client decodes, checked here at compile time.
pub fn reply<O: Operation>(output: Result<O::Output, ControlError>) -> Answer {
    Answer::of(output)
}

/// Answers one request against the replica. Requests only the running
/// daemon answers (`health`, `manifest-put`) or that need the blob store
/// (answered by the daemon and by `makiatto control` before this) get
/// [`ErrorCode::NeedsDaemon`].
pub fn execute(replica: &Mutex<Replica>, appender: &dyn Appender, envelope: Envelope) -> Answer {
    let typed_outcomes = envelope
        .client
        .as_ref()
        .is_some_and(|c| c.features.has(Features::TYPED_OUTCOMES));
    let clock_bound = envelope
        .client
        .as_ref()
        .is_some_and(|c| c.features.has(Features::CLOCK_BOUND));
    match envelope.request {
        Request::Hello(_) => reply::<op::Hello>(Ok(Version::ours())),
        Request::Append(op::Append { events }) => {
            reply::<op::Append>(append(replica, appender, &events).map(|results| {
                results
                    .into_iter()
                    .map(|mut r| {
                        // A client that does not know this reason reads
                        // the refusal in words.
                        if !clock_bound && r.reason == Some(Refusal::AheadOfClock) {
                            r.reason = None;
                        }
                        if typed_outcomes { r } else { r.to_legacy() }
                    })
                    .collect()
            }))
        }
        Request::Log(op::Log { filter }) => reply::<op::Log>(
            filter
                .check()
                .map_err(ControlError::failed)
                .and_then(|()| reading(replica, |r| r.log_lines(&filter))),
        ),
        Request::Show(op::Show { name, at }) => reply::<op::Show>(writing(replica, |r| {
            let state = r.state_at(at.as_deref())?;
            Ok(Shown {
                projection: name,
                fingerprint: state.fingerprint(name),
                state: state.value(name),
            })
        })),
        Request::Verify(_) => reply::<op::Verify>(writing(replica, |r| r.verify())),
        Request::Status(_) => reply::<op::GetStatus>(reading(replica, |r| Ok(r.status()))),
        Request::VersionVector(_) => {
            reply::<op::GetVersionVector>(reading(replica, |r| r.version_vector()))
        }
        Request::Missing(op::Missing { vv, max_bytes }) => {
            reply::<op::Missing>(reading(replica, |r| {
                Ok(r.missing_for(&vv, max_bytes)?
                    .iter()
                    .map(hex::encode)
                    .collect())
            }))
        }
        Request::Heads(_) => reply::<op::Heads>(reading(replica, |r| Ok(r.heads()))),
        Request::Feed(op::Feed { author }) => reply::<op::Feed>(reading(replica, |r| {
            Ok(r.latest_of(&author)?.map(hex::encode))
        })),
        Request::ConfigChanges(_) => reply::<op::ConfigChanges>(reading(replica, |r| {
            Ok(r.config_changes().iter().map(hex::encode).collect())
        })),
        Request::Health(_) => Answer::Error(needs_daemon("health")),
        Request::ManifestPut(_) => Answer::Error(needs_daemon("manifest-put")),
        Request::BlobsArrived(_) => Answer::Error(needs_daemon("blobs-arrived")),
        Request::Probe(_) => Answer::Error(needs_daemon("probe")),
        Request::Handover(_) => Answer::Error(needs_daemon("handover")),
        Request::Clock(_) => reply::<op::Clock>(Ok(makiatto_protocol::probe::ClockReading {
            unix_millis: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        })),
        Request::BlobsMissing(_) | Request::BlobsPut(_) => Answer::Error(ControlError::new(
            ErrorCode::NeedsDaemon,
            "blob requests are answered by `makiatto control` or the daemon, which hold the blob store",
        )),
    }
}

fn needs_daemon(op: &str) -> ControlError {
    ControlError::new(
        ErrorCode::NeedsDaemon,
        format!("{op} needs the running daemon (start it with `makiatto run`)"),
    )
}

fn reading<T>(
    replica: &Mutex<Replica>,
    f: impl FnOnce(&Replica) -> Result<T, ReplicaError>,
) -> Result<T, ControlError> {
    let r = replica
        .lock()
        .map_err(|_| ControlError::failed("replica lock poisoned"))?;
    f(&r).map_err(ControlError::failed)
}

fn writing<T>(
    replica: &Mutex<Replica>,
    f: impl FnOnce(&mut Replica) -> Result<T, ReplicaError>,
) -> Result<T, ControlError> {
    let mut r = replica
        .lock()
        .map_err(|_| ControlError::failed("replica lock poisoned"))?;
    f(&mut r).map_err(ControlError::failed)
}

fn append(
    replica: &Mutex<Replica>,
    appender: &dyn Appender,
    hex_events: &[String],
) -> Result<Vec<AppendResult>, ControlError> {
    let raw: Vec<Result<Vec<u8>, EventError>> = hex_events
        .iter()
        .map(|text| hex::decode(text.trim()).map_err(|_| EventError::Malformed("not hexadecimal")))
        .collect();
    ingest(replica, appender, raw, Arrival::FromClient)
        .map(|ingested| ingested.results)
        .map_err(ControlError::failed)
}

/// The result reported for one event's outcome.
fn result_of(outcome: &AppendOutcome) -> AppendResult {
    let (id, outcome, fork, error, reason) = match outcome {
        AppendOutcome::Stored { id, fork } => (Some(*id), Outcome::Stored, *fork, None, None),
        AppendOutcome::Waiting { id, on } => (
            Some(*id),
            Outcome::Waiting,
            false,
            Some(format!("waiting for its feed predecessor {}", on.short())),
            None,
        ),
        AppendOutcome::Held { id, due_millis } => (
            Some(*id),
            Outcome::Waiting,
            false,
            Some(format!(
                "stamped ahead of this node's clock: held until the clock reads {due_millis} (Unix ms)"
            )),
            None,
        ),
        AppendOutcome::Rejected(e @ IngestError::Duplicate(id)) => (
            Some(*id),
            Outcome::Duplicate,
            false,
            Some(e.to_string()),
            None,
        ),
        AppendOutcome::Rejected(e) => (
            None,
            Outcome::Rejected,
            false,
            Some(e.to_string()),
            refusal(e),
        ),
    };
    AppendResult {
        id,
        outcome,
        fork,
        error,
        reason,
    }
}

/// Why an event was refused, as the protocol names it (a duplicate is no
/// refusal).
fn refusal(e: &IngestError) -> Option<Refusal> {
    match e {
        IngestError::Invalid(_) => Some(Refusal::Invalid),
        IngestError::Duplicate(_) => None,
        IngestError::ChainMismatch { .. } => Some(Refusal::ChainMismatch),
        IngestError::ForeignCluster { .. } => Some(Refusal::ForeignCluster),
        IngestError::WaitBufferFull { .. } | IngestError::HoldFull { .. } => {
            Some(Refusal::WaitBufferFull)
        }
        IngestError::AheadOfClock { .. } => Some(Refusal::AheadOfClock),
    }
}

/// Where events come from, which decides what a stamp too far ahead of
/// this node's clock gets (`makiatto_core::skew`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// `maki` (or `makiatto append`) handing over events: one stamped past
    /// the bound is refused outright, and the operator told why.
    FromClient,
    /// A peer's session, or this node's own: held until the clock gets
    /// there, so every node ends up with the same events.
    Replicated,
}

/// What [`ingest`] did with a batch.
pub struct Ingested {
    /// One result per input, in order.
    pub results: Vec<AppendResult>,
    /// How many events this batch stored (its own; not counting others'
    /// events that shared the commit).
    pub stored: usize,
    /// How many events the commit stored in all: this batch's, others'
    /// that shared it, and held events that came due.
    pub committed: usize,
    /// Why events were refused as forged, malformed or off their author's
    /// chain: what a peer that sent them is counted and logged for (a
    /// duplicate or a full wait buffer is nobody's fault).
    pub bad: Vec<String>,
}

/// Verifies raw events (from `maki` or a peer), appends the valid ones
/// durably and folds what was stored into the projections. Refusals are
/// counted in the log's reject counters.
pub fn ingest(
    replica: &Mutex<Replica>,
    appender: &dyn Appender,
    raw: Vec<Result<Vec<u8>, EventError>>,
    arrival: Arrival,
) -> Result<Ingested, String> {
    // From a client, the bound on stamps is checked here, before the log
    // (which would hold the event): the clock now, the bound in force.
    let bound = match arrival {
        Arrival::FromClient => replica.lock().ok().map(|r| r.clock()),
        Arrival::Replicated => None,
    };
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
                .unwrap_or(Err(EventError::Malformed("lost in decoding"))),
            Err(e) => Err(e.clone()),
        }
        .map_err(IngestError::Invalid);
        let decoded = decoded.and_then(|event| match bound {
            Some(clock) => match judge(event.hlc(), clock.now_millis, clock.max_skew_millis) {
                Timeliness::OnTime => Ok(event),
                Timeliness::Ahead { ahead_millis, .. } => Err(IngestError::AheadOfClock {
                    id: event.id(),
                    ahead_millis,
                    max_ahead_millis: clock.max_skew_millis,
                }),
            },
            None => Ok(event),
        });
        match decoded {
            Ok(event) => {
                valid.push(event);
                results.push(None);
            }
            Err(error) => {
                results.push(Some(result_of(&AppendOutcome::Rejected(error.clone()))));
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
        .filter(|e| refusal(e).is_some_and(Refusal::is_fault))
        .map(|e| e.to_string())
        .collect();
    let mut outcomes = outcomes.iter();
    let results: Vec<AppendResult> = results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                outcomes.next().map(result_of).unwrap_or(AppendResult {
                    id: None,
                    outcome: Outcome::Rejected,
                    fork: false,
                    error: Some("no outcome was reported".into()),
                    reason: None,
                })
            })
        })
        .collect();
    let committed = stored.len();
    let mut r = replica.lock().map_err(|_| "replica lock poisoned")?;
    r.absorb(stored)
        .map_err(|e| format!("events were stored but the projections could not be updated: {e}"))?;
    Ok(Ingested {
        results,
        stored: own_stored,
        committed,
        bad,
    })
}

/// Answers `blobs-missing` and `blobs-put` from the blob store (the
/// daemon, and `makiatto control` itself when it holds the store); any
/// other request is not a blob request.
pub fn answer_blobs(store: &BlobStore, request: Request) -> Answer {
    match request {
        Request::BlobsMissing(op::BlobsMissing { hashes }) => {
            reply::<op::BlobsMissing>(Ok(store.missing(&hashes)))
        }
        Request::BlobsPut(op::BlobsPut { blobs }) => {
            reply::<op::BlobsPut>(put_inline(store, &blobs))
        }
        other => Answer::Error(ControlError::failed(format!(
            "`{}` is not a blob request",
            other.op()
        ))),
    }
}

/// Stores blobs sent inline, each verified against its hash, as
/// `makiatto blobs receive` does.
fn put_inline(store: &BlobStore, blobs: &[InlineBlob]) -> Result<Received, ControlError> {
    let mut stream = Vec::new();
    for b in blobs {
        let bytes = hex::decode(&b.hex)
            .map_err(|_| ControlError::failed(format!("blob {}: its bytes are not hex", b.hash)))?;
        blob_stream::push(&mut stream, &b.hash, &bytes);
        if stream.len() > INLINE_BLOB_BYTES {
            return Err(ControlError::new(
                ErrorCode::TooLarge,
                format!(
                    "more than {INLINE_BLOB_BYTES} bytes of blobs in one request; stream them with `makiatto blobs receive`"
                ),
            ));
        }
    }
    store
        .receive(&mut &stream[..])
        .map_err(|e| ControlError::failed(format!("{e:#}")))
}

/// Sends one request to a running daemon's socket and reads its answer.
pub fn call(socket: &Path, envelope: &Envelope) -> std::io::Result<Answer> {
    call_within(socket, envelope, None)
}

/// [`call`], the answer awaited at most `within` (none: as long as it
/// takes).
pub fn call_within(
    socket: &Path,
    envelope: &Envelope,
    within: Option<std::time::Duration>,
) -> std::io::Result<Answer> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(within)?;
    let mut line = envelope.to_line().map_err(std::io::Error::other)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    reader.read_line(&mut answer)?;
    Answer::from_line(answer.trim_end()).map_err(|e| {
        std::io::Error::other(format!("the daemon's answer is not valid: {}", e.message))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_request_names_both_versions_and_what_to_upgrade() {
        let line =
            br#"{"op":"purge-cache","client":{"protocol":9,"features":0,"software":"9.0.0"}}"#;
        let e = read_request(line).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unsupported);
        assert!(e.message.contains("purge-cache"), "{}", e.message);
        assert!(
            e.message.contains("9.0.0 (control protocol 9)"),
            "{}",
            e.message
        );
        assert!(
            e.message
                .contains(&format!("control protocol {}", makiatto_protocol::PROTOCOL)),
            "{}",
            e.message
        );
        assert!(e.message.contains("maki machine upgrade"), "{}", e.message);
    }

    #[test]
    fn a_known_request_with_bad_fields_is_malformed_not_unsupported() {
        let e = read_request(br#"{"op":"feed","author":"xyz"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::Malformed);
        assert!(e.message.contains("`feed`"), "{}", e.message);
        let e = read_request(br#"{"op":"manifest-put","base":"xyz","target":"xyz","delta":""}"#)
            .unwrap_err();
        assert!(e.message.contains("not a blake3 hash"), "{}", e.message);
        let e = read_request(b"not json").unwrap_err();
        assert_eq!(e.code, ErrorCode::Malformed);
        // A bare request (an older maki's) reads as an envelope without client.
        let bare = read_request(br#"{"op":"heads"}"#).unwrap();
        assert_eq!(bare.client, None);
    }

    #[test]
    fn outcomes_are_typed_and_a_legacy_client_reads_a_duplicate_as_before() {
        let id = makiatto_events::EventId([7; 32]);
        let dup = result_of(&AppendOutcome::Rejected(IngestError::Duplicate(id)));
        assert_eq!(dup.outcome, Outcome::Duplicate);
        assert_eq!(dup.id, Some(id));
        let legacy = serde_json::to_value(dup.to_legacy()).unwrap();
        assert_eq!(legacy["outcome"], "rejected");
        assert!(legacy["error"].as_str().unwrap().contains("already stored"));
        assert_eq!(legacy["id"], serde_json::Value::Null);
        let chain = result_of(&AppendOutcome::Rejected(IngestError::ChainMismatch {
            id,
            prev: id,
            expected_seq: 2,
        }));
        assert_eq!(chain.reason, Some(Refusal::ChainMismatch));
    }

    use makiatto_events::Blake3Hash;

    /// A blob request line answered as `makiatto control` answers it.
    fn ask(store: &BlobStore, line: &str) -> Result<serde_json::Value, String> {
        let request = read_request(line.as_bytes()).map_err(|e| e.message)?;
        match answer_blobs(store, request.request) {
            Answer::Ok(v) => Ok(v),
            Answer::Error(e) => Err(e.message),
        }
    }

    #[test]
    fn control_stores_inline_blobs_verified_and_lists_the_missing() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let good = b"<h1>inline</h1>";
        let h = Blake3Hash::of(good).to_hex();
        let other = Blake3Hash::of(b"other").to_hex();
        let missing = ask(
            &store,
            &format!(r#"{{"op":"blobs-missing","hashes":["{h}","{other}"]}}"#),
        )
        .unwrap();
        assert_eq!(missing, serde_json::json!([h, other]));

        // One blob whose bytes match, one whose bytes do not: the first is
        // kept, the second refused, and the report says so.
        let put = format!(
            r#"{{"op":"blobs-put","blobs":[{{"hash":"{h}","hex":"{}"}},{{"hash":"{other}","hex":"{}"}}]}}"#,
            hex::encode(good),
            hex::encode(b"not other")
        );
        let report = ask(&store, &put).unwrap();
        assert_eq!(report["stored"], 1, "{report}");
        assert_eq!(
            report["refused"].as_array().map(Vec::len),
            Some(1),
            "{report}"
        );
        let missing = ask(
            &store,
            &format!(r#"{{"op":"blobs-missing","hashes":["{h}","{other}"]}}"#),
        )
        .unwrap();
        assert_eq!(missing, serde_json::json!([other]));

        // Bad input is a clear error, never a panic.
        let bad_hash = ask(&store, r#"{"op":"blobs-missing","hashes":["xyz"]}"#);
        assert!(bad_hash.unwrap_err().contains("not a blake3 hash"));
        let bad_hex = ask(
            &store,
            &format!(r#"{{"op":"blobs-put","blobs":[{{"hash":"{h}","hex":"zz"}}]}}"#),
        );
        assert!(bad_hex.unwrap_err().contains("not hex"));
        let big = hex::encode(vec![0u8; INLINE_BLOB_BYTES + 1]);
        let too_big = ask(
            &store,
            &format!(r#"{{"op":"blobs-put","blobs":[{{"hash":"{h}","hex":"{big}"}}]}}"#),
        );
        assert!(too_big.unwrap_err().contains("blobs receive"));
        // Other requests are not blob requests (they go to the daemon).
        assert!(ask(&store, r#"{"op":"heads"}"#).is_err());
    }
}
