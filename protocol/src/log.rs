//! `log` requests: which events, and one line per event.

use makiatto_events::{Event, EventKind, Hlc};
use makiatto_projections::Verdict;
use makiatto_projections::roles::Roles;
use serde::{Deserialize, Serialize};

/// Which events a `log` request lists; also the arguments of `maki log`
/// and `makiatto log` (feature `clap`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct LogFilter {
    /// Only events as of an event (id prefix: its causal past) or a time (RFC 3339).
    #[cfg_attr(feature = "clap", arg(long, value_name = "ID|TIME"))]
    pub at: Option<String>,
    /// Only events by this author (name or key prefix).
    #[cfg_attr(feature = "clap", arg(long, value_name = "NAME|KEY"))]
    pub author: Option<String>,
    /// Only events of this kind (genesis, node-joined, site-published, …).
    #[cfg_attr(feature = "clap", arg(long))]
    pub kind: Option<String>,
    /// Only the last N events.
    #[cfg_attr(feature = "clap", arg(long, value_name = "N"))]
    pub limit: Option<usize>,
}

impl LogFilter {
    /// Checks the filter's own arguments before anything is read.
    pub fn check(&self) -> Result<(), String> {
        if let Some(kind) = &self.kind
            && EventKind::parse(kind).is_none()
        {
            let known: Vec<String> = EventKind::KNOWN.iter().map(|k| k.name()).collect();
            return Err(format!(
                "unknown kind {kind:?}; kinds are: {}",
                known.join(", ")
            ));
        }
        Ok(())
    }

    pub fn matches(&self, line: &LogLine) -> bool {
        if let Some(kind) = &self.kind
            && line.kind != *kind
        {
            return false;
        }
        if let Some(author) = &self.author {
            let author = author.to_ascii_lowercase();
            if line.author != author && !line.author_key.starts_with(&author) {
                return false;
            }
        }
        true
    }
}

/// One line of the log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LogLine {
    pub id: String,
    /// The author's name where the cluster knows it, else a short key.
    pub author: String,
    pub author_key: String,
    pub role: Option<String>,
    pub seq: u64,
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    pub hlc: String,
    pub kind: String,
    pub summary: String,
    /// Signature, id and chain were checked when the event was stored.
    pub verified: bool,
    pub applied: bool,
    /// `applied`, `unauthorized`, `invalid`, or `pending` (causal past incomplete).
    pub status: String,
    pub reason: Option<String>,
    pub fork: bool,
}

impl LogLine {
    pub fn new(event: &Event, roles: &Roles, verdict: Option<&Verdict>) -> LogLine {
        let key = event.author();
        let (author, role) = match roles.describe(&key) {
            Some((name, role)) => (name, Some(role.to_owned())),
            None => (key.short(), None),
        };
        let (status, reason) = match verdict {
            None => (
                "pending",
                Some("some of its causal past has not arrived".to_owned()),
            ),
            Some(Verdict::Applied) => ("applied", None),
            Some(Verdict::Unauthorized(r)) => ("unauthorized", Some(r.clone())),
            Some(Verdict::Invalid(r)) => ("invalid", Some(r.clone())),
        };
        let fork = roles
            .forks
            .get(&key)
            .is_some_and(|seqs| seqs.contains(&event.seq()));
        LogLine {
            id: event.id().to_hex(),
            author,
            author_key: key.to_hex(),
            role,
            seq: event.seq(),
            time: format_time(event.hlc()),
            hlc: format!("{}.{}", event.hlc().millis, event.hlc().counter),
            kind: event.kind().name(),
            summary: event.payload().summary(),
            verified: true,
            applied: verdict.is_some_and(|v| v.is_applied()),
            status: status.to_owned(),
            reason,
            fork,
        }
    }

    /// The human form: time, short id, author (role), kind, summary, flags.
    pub fn render(&self) -> String {
        let who = match &self.role {
            Some(role) => format!("{} ({role})", self.author),
            None => format!("{} (unknown key)", self.author),
        };
        let mut line = format!(
            "{}  {}  {:<22} {:<16} {}",
            self.time,
            self.id.get(..12).unwrap_or(&self.id),
            who,
            self.kind,
            self.summary
        );
        if self.status != "applied" {
            line.push_str(&format!("  [{}", self.status.to_uppercase()));
            if let Some(r) = &self.reason {
                line.push_str(&format!(": {r}"));
            }
            line.push(']');
        }
        if self.fork {
            line.push_str("  [FORK: this author signed two events at seq ");
            line.push_str(&self.seq.to_string());
            line.push_str(
                "; stop using one of the devices sharing this key and add a new key for it]",
            );
        }
        line
    }
}

/// An HLC's wall-clock part as RFC 3339 UTC with milliseconds.
pub fn format_time(hlc: Hlc) -> String {
    i64::try_from(hlc.millis)
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map(|ts| format!("{ts:.3}"))
        .unwrap_or_else(|| format!("@{}ms", hlc.millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_render_as_rfc3339_utc() {
        assert_eq!(
            format_time(Hlc {
                millis: 1_795_611_600_123,
                counter: 0
            }),
            "2026-11-25T13:00:00.123Z"
        );
    }
}
