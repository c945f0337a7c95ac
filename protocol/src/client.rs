//! The client's side of a control session, without I/O: which lines to
//! send for a batch of requests, and how to read the answers back as each
//! request's own output type.
//!
//! A session starts knowing nothing of the daemon. Its first batch is
//! preceded by a [`Hello`], whose answer is the
//! daemon's [`Version`] (a protocol-1 daemon answers it with an error,
//! which reads as [`Version::legacy`]). Requests carry the client's version
//! ([`Envelope::ours`]), except blob requests to a daemon not known to
//! serve protocol 2: protocol 1 refused unknown fields there.
//!
//! ```text
//! let mut batch = Batch::new();
//! let heads = batch.push(Heads {});
//! let feed = batch.push(Feed { author });
//! let lines = lines(&batch, session.daemon())?;     // I/O: send, read
//! let mut answers = read(&batch, known, &answer_lines)?;
//! let heads: Vec<Head> = answers.take(heads)?;
//! ```

use std::marker::PhantomData;

use crate::answer::{Answer, ControlError, ErrorCode};
use crate::request::{Envelope, Hello, Operation, Request};
use crate::version::Version;

/// Requests sent together: one write, one round trip.
#[derive(Debug, Default)]
pub struct Batch {
    requests: Vec<Request>,
}

/// Where one request's answer will be in a batch's [`Answers`], and the
/// type it decodes to.
#[derive(Debug)]
pub struct Slot<O> {
    index: usize,
    operation: PhantomData<fn() -> O>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Adds a request; its answer is taken with the slot returned.
    pub fn push<O: Operation>(&mut self, operation: O) -> Slot<O> {
        self.requests.push(operation.into());
        Slot {
            index: self.requests.len() - 1,
            operation: PhantomData,
        }
    }

    pub fn len(&self) -> usize {
        self.requests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    pub fn requests(&self) -> &[Request] {
        &self.requests
    }
}

/// The request lines of `batch` for a daemon of version `daemon` (`None`:
/// not known yet, so a `hello` goes first). A request the daemon is known
/// not to serve is refused here, naming both versions.
pub fn lines(batch: &Batch, daemon: Option<&Version>) -> Result<Vec<String>, ControlError> {
    let mut out = Vec::with_capacity(batch.len() + 1);
    if daemon.is_none() {
        out.push(encode(&Envelope::ours(Hello(Version::ours())))?);
    }
    for request in &batch.requests {
        if let Some(daemon) = daemon
            && !daemon.serves(request.since())
        {
            return Err(ControlError::new(
                ErrorCode::Unsupported,
                format!(
                    "the node runs makiatto {daemon}, which does not serve `{}` (maki {} needs control protocol {}); upgrade the node with `maki machine upgrade`",
                    request.op(),
                    Version::ours(),
                    request.since()
                ),
            ));
        }
        let modern = daemon.is_some_and(|d| d.serves(crate::version::PROTOCOL));
        let blob = matches!(request, Request::BlobsMissing(_) | Request::BlobsPut(_));
        let envelope = if blob && !modern {
            Envelope::bare(request.clone())
        } else {
            Envelope::ours(request.clone())
        };
        out.push(encode(&envelope)?);
    }
    Ok(out)
}

fn encode(envelope: &Envelope) -> Result<String, ControlError> {
    envelope
        .to_line()
        .map_err(|e| ControlError::failed(format!("the request cannot be encoded: {e}")))
}

/// Reads the answer lines to what [`lines`] made for `batch` with
/// `daemon` known (or not): the daemon's version (from the `hello`, when
/// one was sent) and the batch's answers.
pub fn read(
    batch: &Batch,
    daemon: Option<Version>,
    lines: &[String],
) -> Result<Answers, ControlError> {
    let mut lines = lines.iter();
    let daemon = match daemon {
        Some(v) => v,
        None => {
            let hello = lines
                .next()
                .ok_or_else(|| ControlError::new(ErrorCode::Malformed, "no answer to `hello`"))?;
            match Answer::from_line(hello)?.decode::<Version>() {
                Ok(v) => v,
                // Protocol 1 has no `hello`: it answers with an error.
                Err(e) if e.code == ErrorCode::Failed => Version::legacy(),
                Err(e) => return Err(e),
            }
        }
    };
    let answers = lines
        .map(|l| Answer::from_line(l).map(Some))
        .collect::<Result<Vec<_>, _>>()?;
    if answers.len() != batch.len() {
        return Err(ControlError::new(
            ErrorCode::Malformed,
            format!("{} answers to {} requests", answers.len(), batch.len()),
        ));
    }
    Ok(Answers { answers, daemon })
}

/// The answers to one batch, each taken once with its [`Slot`].
#[derive(Debug)]
pub struct Answers {
    answers: Vec<Option<Answer>>,
    daemon: Version,
}

impl Answers {
    /// The daemon that answered.
    pub fn daemon(&self) -> &Version {
        &self.daemon
    }

    /// The answer in `slot`, as its operation's output (read as the
    /// daemon's version wrote it).
    pub fn take<O: Operation>(&mut self, slot: Slot<O>) -> Result<O::Output, ControlError> {
        let answer = self
            .answers
            .get_mut(slot.index)
            .and_then(Option::take)
            .ok_or_else(|| ControlError::failed("an answer was taken twice"))?;
        answer
            .decode::<O::Output>()
            .map(|output| O::read_from(&self.daemon, output))
    }

    /// Takes the first `n` answers, whatever their types; whether each is
    /// `ok` (for requests whose output does not matter, only that they
    /// were served).
    pub fn take_all_ok(&mut self, n: usize) -> bool {
        let mut all = true;
        for answer in self.answers.iter_mut().take(n) {
            all &= matches!(answer.take(), Some(Answer::Ok(_)));
        }
        all
    }

    /// Whether a daemon's `makiatto control` does not know a request of
    /// this batch: one started before its binary was upgraded, whose
    /// requests a fresh one would serve. (A protocol-1 daemon says so only
    /// in words; this is the one place that reads them.)
    pub fn outdated(&self) -> bool {
        self.answers.iter().flatten().any(|a| match a {
            Answer::Error(e) => {
                e.code == ErrorCode::Unsupported
                    || (!self.daemon.serves(crate::version::PROTOCOL)
                        && e.message.contains("not a valid request"))
            }
            Answer::Ok(_) => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::append::{AppendResult, Outcome};
    use crate::request::{Append, BlobsMissing, Heads};
    use crate::status::Head;
    use crate::version::Features;
    use makiatto_events::EventId;

    #[test]
    fn the_first_batch_says_hello_and_later_ones_do_not() {
        let mut batch = Batch::new();
        batch.push(Heads {});
        let first = lines(&batch, None).unwrap();
        assert_eq!(first.len(), 2);
        assert!(first[0].starts_with(r#"{"op":"hello""#), "{}", first[0]);
        assert!(first[1].contains(r#""client""#), "{}", first[1]);
        let later = lines(&batch, Some(&Version::ours())).unwrap();
        assert_eq!(later.len(), 1);
    }

    #[test]
    fn blob_requests_go_bare_until_the_daemon_is_known_to_be_modern() {
        let mut batch = Batch::new();
        batch.push(BlobsMissing { hashes: vec![] });
        for daemon in [None, Some(Version::legacy())] {
            let l = lines(&batch, daemon.as_ref()).unwrap();
            assert!(!l.last().unwrap().contains("client"), "{l:?}");
        }
        let l = lines(&batch, Some(&Version::ours())).unwrap();
        assert!(l[0].contains("client"), "{l:?}");
    }

    #[test]
    fn answers_decode_as_their_operations_output() {
        let mut batch = Batch::new();
        let heads = batch.push(Heads {});
        let id = EventId([3; 32]);
        let hello = Answer::Ok(serde_json::to_value(Version::ours()).unwrap()).to_line();
        let head = format!(
            r#"{{"ok":[{{"id":"{}","millis":5,"counter":1}}]}}"#,
            id.to_hex()
        );
        let mut answers = read(&batch, None, &[hello, head]).unwrap();
        assert_eq!(answers.daemon(), &Version::ours());
        let got: Vec<Head> = answers.take(heads).unwrap();
        assert_eq!(got[0].id, id);
        assert!(!answers.outdated());
    }

    #[test]
    fn a_protocol_one_daemon_is_recognised_and_its_duplicates_read_as_such() {
        let mut batch = Batch::new();
        let appended = batch.push(Append { events: vec![] });
        let hello = r#"{"error":"not a valid request: unknown variant `hello`"}"#.to_owned();
        let result = r#"{"ok":[{"id":null,"outcome":"rejected","fork":false,"error":"event 00 is already stored"}]}"#;
        let mut answers = read(&batch, None, &[hello, result.to_owned()]).unwrap();
        assert_eq!(answers.daemon(), &Version::legacy());
        let results: Vec<AppendResult> = answers.take(appended).unwrap();
        assert_eq!(results[0].outcome, Outcome::Duplicate);
        // The next batch to it carries no hello, and blob requests no version.
        assert!(!Version::legacy().features.has(Features::TYPED_OUTCOMES));
    }

    #[test]
    fn a_request_the_daemon_does_not_serve_is_refused_before_it_is_sent() {
        let mut batch = Batch::new();
        batch.push(Hello(Version::ours()));
        let e = lines(&batch, Some(&Version::legacy())).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unsupported);
        assert!(
            e.message.contains("0.1 (control protocol 1)"),
            "{}",
            e.message
        );
        assert!(e.message.contains("maki machine upgrade"), "{}", e.message);
    }

    #[test]
    fn an_answer_count_that_does_not_match_is_an_error() {
        let mut batch = Batch::new();
        batch.push(Heads {});
        let e = read(&batch, Some(Version::ours()), &[]).unwrap_err();
        assert_eq!(e.code, ErrorCode::Malformed);
    }

    #[test]
    fn an_unsupported_answer_or_a_legacy_unknown_request_means_outdated() {
        let mut batch = Batch::new();
        batch.push(Heads {});
        let unsupported = Answer::Error(ControlError::new(ErrorCode::Unsupported, "x")).to_line();
        assert!(
            read(&batch, Some(Version::ours()), &[unsupported])
                .unwrap()
                .outdated()
        );
        let legacy = r#"{"error":"not a valid request: unknown variant `heads`"}"#.to_owned();
        assert!(
            read(
                &batch,
                Some(Version::legacy()),
                std::slice::from_ref(&legacy)
            )
            .unwrap()
            .outdated()
        );
        // From a modern daemon, words are only words.
        assert!(
            !read(&batch, Some(Version::ours()), &[legacy])
                .unwrap()
                .outdated()
        );
    }
}
