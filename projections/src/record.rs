//! DNS record data: the one parser of a `[[domain.records]]` entry.
//!
//! `maki config check` and `maki sync` (through `maki/src/project.rs`) and
//! every node's zone compiler (`node/src/dns/zone.rs`) parse a record with
//! [`Record::parse`] and nothing else, so a record the CLI accepts is a
//! record every node serves, and one a node would skip is refused before
//! it is sent, with the same reason.
//!
//! The stored forms stay text: [`RecordConfig`](crate::config::RecordConfig)
//! in the configuration document and [`RecordView`](crate::zones::RecordView)
//! in the zones projection. The document's automerge encoding and the
//! projections' fingerprints are therefore what they were, old logs read
//! the same, and a record type that a newer `maki` writes survives an
//! older one's hydrate and reconcile untouched. Each side parses at its
//! edge: the CLI before it sends, the node when it compiles.
//!
//! # Rules
//! - **Type**: A, AAAA, CNAME, MX, NS, SRV, TXT or CAA, in any case.
//! - **Name**: relative to the domain, trimmed and lowercased; `@` or the
//!   domain itself is the apex; labels of letters, digits, hyphens and
//!   underscores, a leading `*` label allowed; no trailing dot; at most 253
//!   characters with the domain. The apex takes no A, AAAA (GeoDNS makes
//!   them), NS (the cluster's nameservers) or CNAME.
//! - **TTL**: 1 to 2³¹−1 seconds when given (RFC 2181 §8).
//! - **Priority**: required by MX and SRV (0–65535), refused elsewhere.
//! - **Values**: A and AAAA are addresses with nothing around them; CNAME,
//!   NS and MX targets are host names (one trailing dot allowed, `.` alone
//!   for "none"); TXT is at most 4,000 bytes and served trimmed; SRV is
//!   `WEIGHT PORT TARGET`; CAA follows RFC 8659 (see [`CaaData`]).
//! - **Splitting** (SRV and CAA): fields are separated by runs of ASCII
//!   whitespace, as in a zone file (RFC 1035 §5.1), and whitespace around
//!   the whole value is ignored. A CAA value is the rest of the text after
//!   its tag, in double quotes, taken byte for byte between them (no
//!   escapes, so it holds no `"`, `\` or control character).
//!
//! # Layout
//! - `cases`: the table of good and bad records that this crate's, the
//!   CLI's and the node's tests all read (in tests and with the `testing`
//!   feature only).
//!
//! # Contents
//! - [`RecordType`]: the types served.
//! - [`RecordText`]: an entry's fields as written or stored.
//! - [`Record`], [`Owner`], [`RecordData`], [`HostName`]: a parsed record.
//! - [`CaaData`], [`CaaTag`]: a CAA property checked against RFC 8659.
//! - [`RecordErrors`], [`RecordError`], [`Field`], [`SrvError`],
//!   [`CaaError`], [`NameError`]: what is wrong, in which field, and
//!   ([`RecordError::help`]) what would be right.
//! - [`NameKind`], [`check_name`]: the DNS name rules, shared with the
//!   CLI's checks of domains and aliases.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

#[cfg(any(test, feature = "testing"))]
pub mod cases;

/// The longest TTL DNS allows (RFC 2181 §8).
pub const MAX_TTL: u32 = (1 << 31) - 1;
/// The longest TXT value, in bytes (split into 255-byte strings when served).
pub const MAX_TXT_LEN: usize = 4000;
/// The longest CAA tag (RFC 8659 §4.1).
pub const MAX_CAA_TAG_LEN: usize = 15;
/// The longest DNS name in text, without the trailing dot (255 on the wire).
const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// A record type this project serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RecordType {
    A,
    Aaaa,
    Cname,
    Mx,
    Ns,
    Srv,
    Txt,
    Caa,
}

impl RecordType {
    /// Every type, in the order the help text names them.
    pub const ALL: [RecordType; 8] = [
        RecordType::A,
        RecordType::Aaaa,
        RecordType::Cname,
        RecordType::Txt,
        RecordType::Mx,
        RecordType::Srv,
        RecordType::Caa,
        RecordType::Ns,
    ];

    /// The type's mnemonic, upper case.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordType::A => "A",
            RecordType::Aaaa => "AAAA",
            RecordType::Cname => "CNAME",
            RecordType::Mx => "MX",
            RecordType::Ns => "NS",
            RecordType::Srv => "SRV",
            RecordType::Txt => "TXT",
            RecordType::Caa => "CAA",
        }
    }

    /// The type named `text`, in any case; `None` for a type not served.
    pub fn parse(text: &str) -> Option<RecordType> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(text))
    }

    /// Whether records of this type carry a priority (MX preference, SRV
    /// priority).
    pub fn has_priority(self) -> bool {
        matches!(self, RecordType::Mx | RecordType::Srv)
    }
}

impl fmt::Display for RecordType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One record entry's fields, as `makiatto.toml` has them or as the
/// configuration document stores them. TTL and priority are wide so that
/// the file's out-of-range numbers reach the parser and get its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordText<'a> {
    pub rtype: &'a str,
    pub name: &'a str,
    pub value: &'a str,
    pub ttl: Option<i64>,
    pub priority: Option<i64>,
}

/// Where a record is, relative to its domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owner {
    Apex,
    /// A checked name below the apex, lowercased, without the domain.
    Name(String),
}

impl Owner {
    /// The name as the configuration document keys it: `@` for the apex.
    pub fn relative(&self) -> &str {
        match self {
            Owner::Apex => "@",
            Owner::Name(n) => n,
        }
    }

    /// The absolute name in `domain`, without a trailing dot.
    pub fn within(&self, domain: &str) -> String {
        match self {
            Owner::Apex => domain.to_owned(),
            Owner::Name(n) => format!("{n}.{domain}"),
        }
    }
}

/// A record name as written, normalised the way the parser reads it:
/// trimmed, lowercased, and `@` for the domain itself. The CLI keys its
/// records by this even when the record does not parse, so that rules
/// across records (a CNAME alone at its name) see every record.
pub fn normalise_name(domain: &str, name: &str) -> String {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let name = name.trim().to_ascii_lowercase();
    if name == domain || name.strip_suffix('.') == Some(domain.as_str()) {
        "@".into()
    } else {
        name
    }
}

/// A host name a record points at (CNAME, NS and MX targets, SRV target),
/// as written: checked, case kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostName(String);

impl HostName {
    /// An absolute host name: labels of letters, digits, hyphens and
    /// underscores, one trailing dot allowed, or `.` alone (the root: "no
    /// such service", as in a null MX).
    pub fn parse(text: &str) -> Result<HostName, NameError> {
        if text != "." {
            check_name(text.strip_suffix('.').unwrap_or(text), NameKind::Host)?;
        }
        Ok(HostName(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A record's data, by type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordData {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Cname(HostName),
    Ns(HostName),
    Mx {
        preference: u16,
        exchange: HostName,
    },
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: HostName,
    },
    /// The text served: the value trimmed, at most [`MAX_TXT_LEN`] bytes.
    Txt(String),
    Caa(CaaData),
}

impl RecordData {
    pub fn rtype(&self) -> RecordType {
        match self {
            RecordData::A(_) => RecordType::A,
            RecordData::Aaaa(_) => RecordType::Aaaa,
            RecordData::Cname(_) => RecordType::Cname,
            RecordData::Ns(_) => RecordType::Ns,
            RecordData::Mx { .. } => RecordType::Mx,
            RecordData::Srv { .. } => RecordType::Srv,
            RecordData::Txt(_) => RecordType::Txt,
            RecordData::Caa(_) => RecordType::Caa,
        }
    }

    /// The priority the entry gave: MX preference, SRV priority.
    pub fn priority(&self) -> Option<u16> {
        match self {
            RecordData::Mx { preference, .. } => Some(*preference),
            RecordData::Srv { priority, .. } => Some(*priority),
            _ => None,
        }
    }
}

/// A parsed record entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub owner: Owner,
    /// As given (checked); `None` takes the zone's default.
    pub ttl: Option<u32>,
    pub data: RecordData,
}

impl Record {
    /// Parses one entry of `domain`. Every problem is reported, not only
    /// the first, each naming the field it is in.
    pub fn parse(domain: &str, text: &RecordText<'_>) -> Result<Record, RecordErrors> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let mut errors = Vec::new();
        let owner = parse_owner(&domain, text.name)
            .map_err(|e| errors.push(e))
            .ok();
        let rtype = RecordType::parse(text.rtype);
        if rtype.is_none() {
            errors.push(RecordError::UnknownType(text.rtype.to_ascii_uppercase()));
        }
        // Checked before the value (which needs it) but reported after it,
        // in the order the fields are usually written.
        let priority: Result<Option<u16>, RecordError> = match (rtype, text.priority) {
            (Some(t), None) if t.has_priority() => Err(RecordError::MissingPriority(t)),
            (Some(t), Some(p)) if t.has_priority() => u16::try_from(p)
                .map(Some)
                .map_err(|_| RecordError::PriorityRange(p)),
            (_, Some(_)) => Err(RecordError::NoPriority(text.rtype.to_ascii_uppercase())),
            (_, None) => Ok(None),
        };
        // The value is checked even when the priority is wrong, so that
        // both problems are shown at once; the placeholder never escapes.
        let placeholder = priority.clone().ok().flatten().unwrap_or(0);
        let data = rtype.and_then(|t| {
            parse_data(t, text.value, placeholder)
                .map_err(|e| errors.push(e))
                .ok()
        });
        if let Err(e) = priority {
            errors.push(e);
        }
        let ttl = text.ttl.and_then(|t| {
            let checked = u32::try_from(t).ok().filter(|t| (1..=MAX_TTL).contains(t));
            if checked.is_none() {
                errors.push(RecordError::TtlRange(t));
            }
            checked
        });
        if let (Some(Owner::Apex), Some(t)) = (&owner, rtype)
            && matches!(
                t,
                RecordType::A | RecordType::Aaaa | RecordType::Cname | RecordType::Ns
            )
        {
            errors.push(RecordError::AtApex {
                rtype: t,
                domain: domain.clone(),
            });
        }
        match (owner, data) {
            (Some(owner), Some(data)) if errors.is_empty() => Ok(Record { owner, ttl, data }),
            _ => Err(RecordErrors(errors)),
        }
    }
}

fn parse_owner(domain: &str, raw: &str) -> Result<Owner, RecordError> {
    let name = normalise_name(domain, raw);
    if name == "@" {
        return Ok(Owner::Apex);
    }
    if let Some(inner) = name
        .strip_suffix(&format!(".{domain}"))
        .or_else(|| name.strip_suffix(&format!(".{domain}.")))
    {
        return Err(RecordError::NotRelative {
            inner: inner.to_owned(),
            domain: domain.to_owned(),
        });
    }
    check_name(&name, NameKind::Owner).map_err(|why| RecordError::BadName {
        name: raw.to_owned(),
        why,
    })?;
    if name.len() + 1 + domain.len() > MAX_NAME_LEN {
        return Err(RecordError::NameTooLong {
            name,
            domain: domain.to_owned(),
        });
    }
    Ok(Owner::Name(name))
}

fn parse_data(rtype: RecordType, value: &str, priority: u16) -> Result<RecordData, RecordError> {
    let host = |value: &str| {
        HostName::parse(value).map_err(|why| RecordError::BadHost {
            value: value.to_owned(),
            why,
        })
    };
    Ok(match rtype {
        RecordType::A => RecordData::A(
            value
                .parse()
                .map_err(|_| RecordError::NotIpv4(value.to_owned()))?,
        ),
        RecordType::Aaaa => RecordData::Aaaa(
            value
                .parse()
                .map_err(|_| RecordError::NotIpv6(value.to_owned()))?,
        ),
        RecordType::Cname => RecordData::Cname(host(value)?),
        RecordType::Ns => RecordData::Ns(host(value)?),
        RecordType::Mx => RecordData::Mx {
            preference: priority,
            exchange: host(value)?,
        },
        RecordType::Srv => {
            let fields: Vec<&str> = value.split_ascii_whitespace().collect();
            let [weight, port, target] = fields[..] else {
                return Err(SrvError::Shape(value.to_owned()).into());
            };
            RecordData::Srv {
                priority,
                weight: weight
                    .parse()
                    .map_err(|_| SrvError::Weight(weight.to_owned()))?,
                port: port.parse().map_err(|_| SrvError::Port(port.to_owned()))?,
                target: HostName::parse(target).map_err(|why| SrvError::Target {
                    target: target.to_owned(),
                    why,
                })?,
            }
        }
        RecordType::Txt => {
            if value.len() > MAX_TXT_LEN {
                return Err(RecordError::TxtTooLong);
            }
            RecordData::Txt(value.trim().to_owned())
        }
        RecordType::Caa => RecordData::Caa(CaaData::parse(value)?),
    })
}

/// A CAA property (RFC 8659): flags 0 or 128, a tag of 1–15 ASCII letters
/// and digits (lowercased: tags match without case), and a value that
/// follows its tag's grammar. `issue` and `issuewild` take an issuer's
/// domain name or nothing, then optional `; key=value` parameters (§4.2,
/// §4.3); `iodef` takes a `mailto:`, `http:` or `https:` URL (§4.4); other
/// tags take any value the quoted form can carry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CaaData {
    flags: u8,
    tag: CaaTag,
    value: String,
}

/// A CAA property tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CaaTag {
    Issue,
    IssueWild,
    Iodef,
    /// Any other tag (`contactemail`, …), lowercased.
    Other(String),
}

impl CaaTag {
    pub fn as_str(&self) -> &str {
        match self {
            CaaTag::Issue => "issue",
            CaaTag::IssueWild => "issuewild",
            CaaTag::Iodef => "iodef",
            CaaTag::Other(t) => t,
        }
    }
}

impl fmt::Display for CaaTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The issuer critical flag, the only one RFC 8659 defines.
const CAA_CRITICAL: u8 = 128;

/// RFC 5234's WSP: what RFC 8659's grammar allows around its parts.
fn wsp(c: char) -> bool {
    c == ' ' || c == '\t'
}

impl CaaData {
    /// The presentation form `FLAGS TAG "VALUE"`: fields separated by runs
    /// of ASCII whitespace, whitespace around the whole ignored, the value
    /// in double quotes and taken as written between them.
    pub fn parse(text: &str) -> Result<CaaData, CaaError> {
        let text = text.trim_ascii();
        let shape = || CaaError::Shape(text.to_owned());
        let (flags, rest) = text
            .split_once(|c: char| c.is_ascii_whitespace())
            .ok_or_else(shape)?;
        let (tag, value) = rest
            .trim_ascii_start()
            .split_once(|c: char| c.is_ascii_whitespace())
            .ok_or_else(shape)?;
        let value = value.trim_ascii();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .ok_or(CaaError::Unquoted)?;
        let flags = flags
            .parse::<u8>()
            .map_err(|_| CaaError::Flags(flags.to_owned()))?;
        CaaData::new(flags, tag, value)
    }

    /// A property from its parts (the value unquoted).
    pub fn new(flags: u8, tag: &str, value: &str) -> Result<CaaData, CaaError> {
        if flags != 0 && flags != CAA_CRITICAL {
            return Err(CaaError::Flags(flags.to_string()));
        }
        if tag.is_empty()
            || tag.len() > MAX_CAA_TAG_LEN
            || !tag.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(CaaError::Tag(tag.to_owned()));
        }
        if let Some(ch) = value
            .chars()
            .find(|&c| c == '"' || c == '\\' || c.is_control())
        {
            return Err(CaaError::ValueChar(ch));
        }
        let tag = match tag.to_ascii_lowercase().as_str() {
            "issue" => CaaTag::Issue,
            "issuewild" => CaaTag::IssueWild,
            "iodef" => CaaTag::Iodef,
            other => CaaTag::Other(other.to_owned()),
        };
        match tag {
            CaaTag::Issue | CaaTag::IssueWild => check_issue_value(&tag, value)?,
            CaaTag::Iodef => check_iodef(value)?,
            CaaTag::Other(_) => {}
        }
        Ok(CaaData {
            flags,
            tag,
            value: value.to_owned(),
        })
    }

    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// Whether a CA that does not understand the tag must refuse to issue.
    pub fn critical(&self) -> bool {
        self.flags & CAA_CRITICAL != 0
    }

    pub fn tag(&self) -> &CaaTag {
        &self.tag
    }

    /// The value as written (what goes on the wire).
    pub fn value(&self) -> &str {
        &self.value
    }
}

/// RFC 8659 §4.2: `*WSP [issuer-domain-name *WSP] [";" *WSP [parameters *WSP]]`.
fn check_issue_value(tag: &CaaTag, value: &str) -> Result<(), CaaError> {
    let (issuer, parameters) = match value.split_once(';') {
        Some((issuer, parameters)) => (issuer, Some(parameters)),
        None => (value, None),
    };
    let issuer = issuer.trim_matches(wsp);
    if !issuer.is_empty() {
        check_name(issuer, NameKind::Domain).map_err(|why| CaaError::Issuer {
            tag: tag.to_string(),
            issuer: issuer.to_owned(),
            why,
        })?;
    }
    let Some(parameters) = parameters.map(|p| p.trim_matches(wsp)) else {
        return Ok(());
    };
    if parameters.is_empty() {
        return Ok(());
    }
    for parameter in parameters.split(';') {
        let parameter = parameter.trim_matches(wsp);
        let bad = |why: &'static str| CaaError::Parameter {
            tag: tag.to_string(),
            parameter: parameter.to_owned(),
            why,
        };
        if parameter.is_empty() {
            return Err(bad(
                "is empty (two semicolons in a row, or one at the end after a parameter)",
            ));
        }
        let Some((key, v)) = parameter.split_once('=') else {
            return Err(bad("is not KEY=VALUE"));
        };
        let key = key.trim_end_matches(wsp);
        let v = v.trim_start_matches(wsp);
        // key = (ALPHA / DIGIT) *( *("-") (ALPHA / DIGIT))
        if key.is_empty()
            || key.starts_with('-')
            || key.ends_with('-')
            || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(bad(
                "has a key that is not letters and digits with inner hyphens",
            ));
        }
        // value = *(%x21-3A / %x3C-7E)
        if !v.bytes().all(|b| b.is_ascii_graphic() && b != b';') {
            return Err(bad(
                "has a value holding a space or other than visible ASCII",
            ));
        }
    }
    Ok(())
}

/// RFC 8659 §4.4: a `mailto:` (RFC 6068) or `http(s):` URL.
fn check_iodef(url: &str) -> Result<(), CaaError> {
    let strip = |prefix: &str| {
        url.get(..prefix.len())
            .filter(|p| p.eq_ignore_ascii_case(prefix))
            .map(|_| &url[prefix.len()..])
    };
    let ok = url.bytes().all(|b| b.is_ascii_graphic())
        && if let Some(address) = strip("mailto:") {
            address
                .split_once('@')
                .is_some_and(|(local, host)| !local.is_empty() && !host.is_empty())
        } else if let Some(rest) = strip("https://").or_else(|| strip("http://")) {
            rest.split(['/', '?', '#'])
                .next()
                .is_some_and(|host| !host.is_empty())
        } else {
            false
        };
    if ok {
        Ok(())
    } else {
        Err(CaaError::Iodef(url.to_owned()))
    }
}

/// What a DNS name may hold, by what it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// A `[[domain]]` name, or a CA's domain in a CAA value: host labels only.
    Domain,
    /// An alias: a leading `*` label allowed (a wildcard alias).
    Alias,
    /// A record's owner: `_` allowed (`_dmarc`, `_sip._tcp`), and a leading `*`.
    Owner,
    /// A record's target, without its trailing dot: `_` allowed.
    Host,
}

impl NameKind {
    fn underscore(self) -> bool {
        matches!(self, NameKind::Owner | NameKind::Host)
    }

    fn wildcard(self) -> bool {
        matches!(self, NameKind::Alias | NameKind::Owner)
    }
}

/// Checks a DNS name in text, without a trailing dot: at most 253
/// characters, labels of 1–63 letters, digits and hyphens (and what `kind`
/// adds), no hyphen at a label's ends.
pub fn check_name(name: &str, kind: NameKind) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    for (i, label) in name.split('.').enumerate() {
        if label == "*" && kind.wildcard() && i == 0 {
            continue;
        }
        if label.is_empty() {
            return Err(NameError::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(NameError::LongLabel(label.to_owned()));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(NameError::Hyphen(label.to_owned()));
        }
        if let Some(ch) = label.chars().find(|ch| {
            !(ch.is_ascii_alphanumeric() || *ch == '-' || (kind.underscore() && *ch == '_'))
        }) {
            return Err(NameError::BadChar {
                label: label.to_owned(),
                ch,
            });
        }
    }
    Ok(())
}

/// Why a text is not a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("the name is empty")]
    Empty,
    #[error("the name is longer than 253 characters")]
    TooLong,
    #[error("the name has an empty label (two dots, or a dot at an end)")]
    EmptyLabel,
    #[error("the label {0:?} is longer than 63 characters")]
    LongLabel(String),
    #[error("the label {0:?} starts or ends with a hyphen")]
    Hyphen(String),
    #[error(
        "the label {label:?} holds {ch:?}; use letters, digits and hyphens (internationalised names in their xn-- form)"
    )]
    BadChar { label: String, ch: char },
}

/// Which field of an entry a problem is in (where the CLI points).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Type,
    Name,
    Value,
    Ttl,
    Priority,
    /// The entry as a whole (a field is missing).
    Entry,
}

/// Why an SRV value does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SrvError {
    #[error("{0:?} is not WEIGHT PORT TARGET")]
    Shape(String),
    #[error("the weight {0:?} is not from 0 to 65535")]
    Weight(String),
    #[error("the port {0:?} is not from 0 to 65535")]
    Port(String),
    #[error("the target {target:?}: {why}")]
    Target { target: String, why: NameError },
}

/// Why a CAA value does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaaError {
    #[error("{0:?} is not FLAGS TAG \"VALUE\"")]
    Shape(String),
    #[error("the CAA flags {0:?} are neither 0 nor 128 (RFC 8659 §4.1)")]
    Flags(String),
    #[error("the CAA tag {0:?} is not 1 to 15 ASCII letters and digits (RFC 8659 §4.1)")]
    Tag(String),
    #[error("the CAA value must be in double quotes")]
    Unquoted,
    #[error(
        "the CAA value holds {0:?}: it is taken as written between its quotes, with no escapes, so it cannot hold quotes, backslashes or control characters"
    )]
    ValueChar(char),
    #[error("the {tag} issuer {issuer:?} is not a domain name (RFC 8659 §4.2): {why}")]
    Issuer {
        tag: String,
        issuer: String,
        why: NameError,
    },
    #[error("the {tag} parameter {parameter:?} {why} (RFC 8659 §4.2)")]
    Parameter {
        tag: String,
        parameter: String,
        why: &'static str,
    },
    #[error("the iodef value {0:?} is not a mailto:, http: or https: URL (RFC 8659 §4.4)")]
    Iodef(String),
}

/// One problem of a record entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record type {0:?} is not supported")]
    UnknownType(String),
    #[error("record names are relative to {domain}")]
    NotRelative { inner: String, domain: String },
    #[error("{name:?} is not a valid record name: {why}")]
    BadName { name: String, why: NameError },
    #[error("{name}.{domain} is longer than 253 characters")]
    NameTooLong { name: String, domain: String },
    #[error("{rtype} at {domain}: {}", apex_reason(.rtype))]
    AtApex { rtype: RecordType, domain: String },
    #[error("{0:?} is not an IPv4 address")]
    NotIpv4(String),
    #[error("{0:?} is not an IPv6 address")]
    NotIpv6(String),
    #[error("{value:?} is not a host name: {why}")]
    BadHost { value: String, why: NameError },
    #[error("the TXT value is longer than 4,000 bytes")]
    TxtTooLong,
    #[error(transparent)]
    Srv(#[from] SrvError),
    #[error(transparent)]
    Caa(#[from] CaaError),
    #[error("{} {} record needs a priority", article(.0), .0)]
    MissingPriority(RecordType),
    #[error("priority must be from 0 to 65535")]
    PriorityRange(i64),
    #[error("a {0} record has no priority")]
    NoPriority(String),
    #[error("ttl must be from 1 to {MAX_TTL} seconds")]
    TtlRange(i64),
}

/// "an MX", "a SRV": the article before a type's name, as it is read.
fn article(rtype: &RecordType) -> &'static str {
    if *rtype == RecordType::Mx { "an" } else { "a" }
}

fn apex_reason(rtype: &RecordType) -> &'static str {
    match rtype {
        RecordType::Cname => "a CNAME cannot be at the apex: the apex holds SOA and NS records",
        RecordType::Ns => {
            "the apex's NS records are the cluster's nameservers; they are made for you"
        }
        _ => "the apex's A and AAAA records are made by GeoDNS (the nearest healthy node)",
    }
}

impl RecordError {
    /// The field the problem is in.
    pub fn field(&self) -> Field {
        match self {
            RecordError::UnknownType(_) => Field::Type,
            RecordError::NotRelative { .. }
            | RecordError::BadName { .. }
            | RecordError::NameTooLong { .. }
            | RecordError::AtApex { .. } => Field::Name,
            RecordError::NotIpv4(_)
            | RecordError::NotIpv6(_)
            | RecordError::BadHost { .. }
            | RecordError::TxtTooLong
            | RecordError::Srv(_)
            | RecordError::Caa(_) => Field::Value,
            RecordError::MissingPriority(_) => Field::Entry,
            RecordError::PriorityRange(_) | RecordError::NoPriority(_) => Field::Priority,
            RecordError::TtlRange(_) => Field::Ttl,
        }
    }

    /// What would be right, when the message alone does not say.
    pub fn help(&self) -> Option<String> {
        let text = match self {
            RecordError::UnknownType(_) => {
                let names: Vec<&str> = RecordType::ALL.iter().map(|t| t.as_str()).collect();
                let (last, rest) = names.split_last()?;
                return Some(format!("use {} or {last}", rest.join(", ")));
            }
            RecordError::NotRelative { inner, .. } => {
                return Some(format!("write name = {inner:?}"));
            }
            RecordError::BadName { .. } => {
                "use \"@\" for the domain itself, or labels such as \"www\" or \"_dmarc\""
            }
            RecordError::NameTooLong { .. } => {
                "use shorter labels: DNS names end at 253 characters"
            }
            RecordError::AtApex { .. } => {
                "remove this record, or put it on a subdomain such as name = \"www\""
            }
            RecordError::NotIpv4(_) => "for example \"192.0.2.10\"",
            RecordError::NotIpv6(_) => "for example \"2001:db8::10\"",
            RecordError::BadHost { .. } => "name the target host, for example \"mail.example.com\"",
            RecordError::TxtTooLong => "split it over several records",
            RecordError::Srv(_) => {
                "write \"WEIGHT PORT TARGET\", for example \"5 5060 sip.example.com\", and give `priority`"
            }
            RecordError::Caa(e) => match e {
                CaaError::Shape(_) | CaaError::Unquoted | CaaError::ValueChar(_) => {
                    "write FLAGS TAG \"VALUE\", for example: 0 issue \"letsencrypt.org\""
                }
                CaaError::Flags(_) => {
                    "write 0, or 128 to make CAs that do not know the tag refuse to issue; the other bits are reserved"
                }
                CaaError::Tag(_) => "use issue, issuewild or iodef",
                CaaError::Issuer { .. } => {
                    "name the CA by its domain, for example 0 issue \"letsencrypt.org\"; \";\" alone lets no CA issue"
                }
                CaaError::Parameter { .. } => {
                    "add parameters as \"; key=value\", for example 0 issue \"letsencrypt.org; validationmethods=dns-01\""
                }
                CaaError::Iodef(_) => {
                    "for example 0 iodef \"mailto:security@example.com\" or 0 iodef \"https://example.com/caa\""
                }
            },
            RecordError::MissingPriority(_) => "add priority = 10 (lower is preferred)",
            RecordError::PriorityRange(_) | RecordError::TtlRange(_) => return None,
            RecordError::NoPriority(_) => "remove it: only MX and SRV records have one",
        };
        Some(text.to_owned())
    }
}

/// Every problem of one record entry (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordErrors(Vec<RecordError>);

impl RecordErrors {
    pub fn iter(&self) -> std::slice::Iter<'_, RecordError> {
        self.0.iter()
    }
}

impl<'a> IntoIterator for &'a RecordErrors {
    type Item = &'a RecordError;
    type IntoIter = std::slice::Iter<'a, RecordError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Display for RecordErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RecordErrors {}

#[cfg(test)]
mod tests {
    use super::cases::{CASES, DOMAIN, Verdict};
    use super::*;

    #[test]
    fn the_shared_table_is_what_the_parser_says() {
        for case in CASES {
            let got = Record::parse(DOMAIN, &case.text());
            match (case.verdict, &got) {
                (Verdict::Accept, Ok(_)) => {}
                (Verdict::Refuse(why), Err(e)) => {
                    assert!(e.to_string().contains(why), "{case:?}: {e}");
                }
                _ => panic!("{case:?}: {got:?}"),
            }
        }
    }

    #[test]
    fn every_problem_of_an_entry_is_reported_in_its_field() {
        let e = Record::parse(
            "example.com",
            &RecordText {
                rtype: "MX",
                name: "bad name",
                value: "not a host!",
                ttl: Some(0),
                priority: None,
            },
        )
        .unwrap_err();
        let fields: Vec<Field> = e.iter().map(RecordError::field).collect();
        assert_eq!(
            fields,
            [Field::Name, Field::Value, Field::Entry, Field::Ttl],
            "{e}"
        );
    }

    #[test]
    fn parsed_records_carry_typed_data() {
        let r = Record::parse(
            "Example.com.",
            &RecordText {
                rtype: "srv",
                name: "_SIP._tcp",
                value: " 5\t5060  sip.example.com ",
                ttl: Some(600),
                priority: Some(1),
            },
        )
        .unwrap();
        assert_eq!(r.owner, Owner::Name("_sip._tcp".into()));
        assert_eq!(r.owner.within("example.com"), "_sip._tcp.example.com");
        assert_eq!(r.ttl, Some(600));
        assert_eq!(
            r.data,
            RecordData::Srv {
                priority: 1,
                weight: 5,
                port: 5060,
                target: HostName::parse("sip.example.com").unwrap(),
            }
        );
        let caa =
            CaaData::parse("128  ISSUE \"letsencrypt.org; validationmethods=dns-01\"").unwrap();
        assert!(caa.critical());
        assert_eq!(caa.tag(), &CaaTag::Issue);
        assert_eq!(caa.value(), "letsencrypt.org; validationmethods=dns-01");
    }

    #[test]
    fn names_follow_their_kind() {
        assert!(check_name("_dmarc", NameKind::Owner).is_ok());
        assert!(check_name("_dmarc", NameKind::Domain).is_err());
        assert!(check_name("*.example.com", NameKind::Alias).is_ok());
        assert!(check_name("*.example.com", NameKind::Host).is_err());
        assert_eq!(
            check_name("a..b", NameKind::Domain),
            Err(NameError::EmptyLabel)
        );
        assert!(HostName::parse(".").is_ok());
        assert!(HostName::parse("mail.example.com.").is_ok());
        assert!(HostName::parse("mail.example.com..").is_err());
    }
}
