//! Every control request, and the type of its answer.
//!
//! A request is one JSON object per line, tagged by `op`
//! (`{"op":"heads"}`); [`Envelope`] adds the client's [`Version`]. Each
//! request type implements [`Operation`], which names the type its answer
//! decodes to, so a field misspelt on either side fails to compile rather
//! than on a user's cluster.

use std::marker::PhantomData;

use makiatto_events::{AuthorKey, Blake3Hash, VersionVector};
use makiatto_projections::{Projection, ProjectionName};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::append::AppendResult;
use crate::blob_stream::{InlineBlob, Received};
use crate::health::HealthReport;
use crate::log::{LogFilter, LogLine};
use crate::probe::{ClockReading, ProbeReport};
use crate::show::Shown;
use crate::status::{Head, ManifestStored, Status, VerifyReport};
use crate::version::{Features, LEGACY_PROTOCOL, PROTOCOL, Version};

/// A request and the type of its answer.
pub trait Operation: Into<Request> {
    type Output: Serialize + DeserializeOwned;
    /// The first protocol whose daemons serve it.
    const SINCE: u32 = LEGACY_PROTOCOL;

    /// The output as this build reads it, from what a daemon of version
    /// `daemon` wrote (most outputs have one form in every version).
    fn read_from(daemon: &Version, output: Self::Output) -> Self::Output {
        let _ = daemon;
        output
    }
}

/// Every request a daemon serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    Hello(Hello),
    Append(Append),
    Log(Log),
    Show(Show),
    Verify(Verify),
    Status(GetStatus),
    VersionVector(GetVersionVector),
    Missing(Missing),
    Heads(Heads),
    Feed(Feed),
    ConfigChanges(ConfigChanges),
    Health(Health),
    ManifestPut(ManifestPut),
    BlobsMissing(BlobsMissing),
    BlobsPut(BlobsPut),
    BlobsArrived(BlobsArrived),
    Probe(ProbeCluster),
    Clock(Clock),
    Handover(Handover),
}

impl Request {
    /// Every `op`, as the wire spells them.
    pub const OPS: [&'static str; 19] = [
        "hello",
        "append",
        "log",
        "show",
        "verify",
        "status",
        "version-vector",
        "missing",
        "heads",
        "feed",
        "config-changes",
        "health",
        "manifest-put",
        "blobs-missing",
        "blobs-put",
        "blobs-arrived",
        "probe",
        "clock",
        "handover",
    ];

    /// The `op` as the wire spells it.
    pub fn op(&self) -> &'static str {
        let i = match self {
            Request::Hello(_) => 0,
            Request::Append(_) => 1,
            Request::Log(_) => 2,
            Request::Show(_) => 3,
            Request::Verify(_) => 4,
            Request::Status(_) => 5,
            Request::VersionVector(_) => 6,
            Request::Missing(_) => 7,
            Request::Heads(_) => 8,
            Request::Feed(_) => 9,
            Request::ConfigChanges(_) => 10,
            Request::Health(_) => 11,
            Request::ManifestPut(_) => 12,
            Request::BlobsMissing(_) => 13,
            Request::BlobsPut(_) => 14,
            Request::BlobsArrived(_) => 15,
            Request::Probe(_) => 16,
            Request::Clock(_) => 17,
            Request::Handover(_) => 18,
        };
        Self::OPS[i]
    }

    /// The first protocol that serves it.
    pub fn since(&self) -> u32 {
        match self {
            Request::Hello(_) | Request::BlobsArrived(_) => PROTOCOL,
            _ => LEGACY_PROTOCOL,
        }
    }
}

/// A request with the client's version: the form of every request after
/// a `hello` answered by a daemon of protocol 2 or later. (A protocol-1
/// daemon is sent the bare request: its blob requests refuse unknown
/// fields.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(flatten)]
    pub request: Request,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<Version>,
}

impl Envelope {
    /// A request from this build: it carries our version.
    pub fn ours(request: impl Into<Request>) -> Envelope {
        Envelope {
            request: request.into(),
            client: Some(Version::ours()),
        }
    }

    /// A request in protocol 1's form (no version), for a daemon that
    /// did not answer `hello`.
    pub fn bare(request: impl Into<Request>) -> Envelope {
        Envelope {
            request: request.into(),
            client: None,
        }
    }

    /// The request line (without the newline).
    pub fn to_line(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }
}

/// What a daemon reads of a line it cannot parse whole: the op, and who
/// sent it, to say which two versions met.
#[derive(Debug, Deserialize)]
pub struct Probe {
    pub op: Option<String>,
    #[serde(default)]
    pub client: Option<Version>,
}

macro_rules! operation {
    ($name:ident => $output:ty) => {
        impl Operation for $name {
            type Output = $output;
        }
        impl From<$name> for Request {
            fn from(r: $name) -> Request {
                Request::$name(r)
            }
        }
    };
    ($name:ident as $variant:ident => $output:ty) => {
        impl Operation for $name {
            type Output = $output;
        }
        impl From<$name> for Request {
            fn from(r: $name) -> Request {
                Request::$variant(r)
            }
        }
    };
}

/// The first request of a connection: the client's version; the answer
/// is the daemon's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello(pub Version);

impl Operation for Hello {
    type Output = Version;
    const SINCE: u32 = PROTOCOL;
}

impl From<Hello> for Request {
    fn from(r: Hello) -> Request {
        Request::Hello(r)
    }
}

/// Appends events (hex of their canonical bytes); one result each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Append {
    pub events: Vec<String>,
}

impl Operation for Append {
    type Output = Vec<AppendResult>;

    /// A daemon without typed outcomes reports a duplicate as `rejected`.
    fn read_from(daemon: &Version, output: Vec<AppendResult>) -> Vec<AppendResult> {
        if daemon.features.has(Features::TYPED_OUTCOMES) {
            output
        } else {
            output.into_iter().map(AppendResult::from_legacy).collect()
        }
    }
}

impl From<Append> for Request {
    fn from(r: Append) -> Request {
        Request::Append(r)
    }
}

/// The log's events, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Log {
    pub filter: LogFilter,
}
operation!(Log => Vec<LogLine>);

/// One projection, now or as of an event or a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Show {
    pub name: ProjectionName,
    #[serde(default)]
    pub at: Option<String>,
}
operation!(Show => Shown<serde_json::Value>);

/// [`Show`] of one projection, decoded as its own type.
pub struct ShowAs<P> {
    pub at: Option<String>,
    projection: PhantomData<P>,
}

impl<P: Projection> ShowAs<P> {
    /// The projection as of now.
    pub fn now() -> ShowAs<P> {
        ShowAs {
            at: None,
            projection: PhantomData,
        }
    }
}

impl<P: Projection> From<ShowAs<P>> for Request {
    fn from(r: ShowAs<P>) -> Request {
        Request::Show(Show {
            name: P::NAME,
            at: r.at,
        })
    }
}

impl<P: Projection> Operation for ShowAs<P> {
    type Output = Shown<P>;
}

/// Re-checks every event and rebuilds every projection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verify {}
operation!(Verify => VerifyReport);

/// Counts of events held, waiting and refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetStatus {}
operation!(GetStatus as Status => Status);

/// What the log holds per author.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetVersionVector {}
operation!(GetVersionVector as VersionVector => VersionVector);

/// The events a log holding `vv` lacks (hex), about `max_bytes` at most.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Missing {
    pub vv: VersionVector,
    pub max_bytes: usize,
}
operation!(Missing => Vec<String>);

/// The heads, to name as parents of a new event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heads {}
operation!(Heads => Vec<Head>);

/// An author's latest event (hex), if the log holds one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feed {
    pub author: AuthorKey,
}
operation!(Feed => Option<String>);

/// Every applied configuration change (hex), in canonical order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigChanges {}
operation!(ConfigChanges => Vec<String>);

/// The health table (the running daemon only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {}
operation!(Health => HealthReport);

/// Stores manifest `target` rebuilt from manifest `base` (held there) and
/// a `ManifestDelta` (hex), once it hashes to `target`: a one-file edit
/// sends about a hundred bytes, not the whole manifest (the running daemon
/// only; it keeps recent manifests decoded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestPut {
    pub base: Blake3Hash,
    pub target: Blake3Hash,
    pub delta: String,
}
operation!(ManifestPut => ManifestStored);

/// Which of these blobs the node lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobsMissing {
    pub hashes: Vec<Blake3Hash>,
}
operation!(BlobsMissing => Vec<Blake3Hash>);

/// Stores small blobs sent inline, each verified against its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobsPut {
    pub blobs: Vec<InlineBlob>,
}
operation!(BlobsPut => Received);

/// Blobs `makiatto blobs receive` has just committed for a sync that is
/// still uploading (the running daemon only): the daemon tells its peers,
/// which fetch them now rather than after the version is published.
/// Answers how many it offered. A daemon that does not know the request
/// answers an error, and the blobs go to the peers after the event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobsArrived {
    pub hashes: Vec<Blake3Hash>,
}
operation!(BlobsArrived => u64);

/// Checks every node of the cluster from this one (the running daemon
/// only; a daemon without `Features::PROBE` does not know it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeCluster {
    /// Client subnets whose geo answers are asked with EDNS Client Subnet
    /// (`probe::SAMPLE_SUBNETS`).
    pub subnets: Vec<String>,
}
operation!(ProbeCluster as Probe => ProbeReport);

/// This machine's wall clock.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clock {}
operation!(Clock => ClockReading);

/// Hands the daemon's sockets over to `binary` (default: the path it was
/// started from, so a restart runs what is there now) without closing
/// them: the running daemon drains and replaces its image (the running
/// daemon only; one without `Features::HANDOVER` does not know it). The
/// answer comes before the drain; the new image reports itself in
/// `health` (`daemon`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<String>,
}
operation!(Handover => crate::health::HandoverStarted);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_is_named_as_serde_spells_it() {
        let requests: Vec<Request> = vec![
            Hello(Version::ours()).into(),
            Append { events: vec![] }.into(),
            Log {
                filter: LogFilter::default(),
            }
            .into(),
            Show {
                name: ProjectionName::Sites,
                at: None,
            }
            .into(),
            Verify {}.into(),
            GetStatus {}.into(),
            GetVersionVector {}.into(),
            Missing {
                vv: VersionVector::default(),
                max_bytes: 1,
            }
            .into(),
            Heads {}.into(),
            Feed {
                author: AuthorKey([1; 32]),
            }
            .into(),
            ConfigChanges {}.into(),
            Health {}.into(),
            ManifestPut {
                base: Blake3Hash([1; 32]),
                target: Blake3Hash([2; 32]),
                delta: String::new(),
            }
            .into(),
            BlobsMissing { hashes: vec![] }.into(),
            BlobsPut { blobs: vec![] }.into(),
            BlobsArrived { hashes: vec![] }.into(),
            ProbeCluster { subnets: vec![] }.into(),
            Clock {}.into(),
            Handover { binary: None }.into(),
        ];
        assert_eq!(requests.len(), Request::OPS.len());
        for r in requests {
            let v = serde_json::to_value(&r).unwrap();
            assert_eq!(v["op"], r.op(), "{v}");
        }
    }

    #[test]
    fn an_envelope_is_the_bare_request_plus_the_client() {
        let bare = serde_json::to_value(Request::from(Heads {})).unwrap();
        assert_eq!(bare, serde_json::json!({"op": "heads"}));
        let line = Envelope {
            request: Heads {}.into(),
            client: Some(Version::ours()),
        }
        .to_line()
        .unwrap();
        let back: Envelope = serde_json::from_str(&line).unwrap();
        assert_eq!(back.request, Request::Heads(Heads {}));
        assert_eq!(back.client, Some(Version::ours()));
        // A bare request (protocol 1's form) is an envelope without client.
        let old: Envelope = serde_json::from_str(r#"{"op":"heads"}"#).unwrap();
        assert_eq!(old.client, None);
    }
}
