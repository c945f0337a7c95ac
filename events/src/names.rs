//! Names that are checked once, where they enter, and trusted after.
//!
//! Node and peer names become DNS labels (`vector.ns.example.com`), so they
//! follow the rules of a hostname label; domains are lowercase hostnames.
//! Deserialization goes through the same checks, so a decoded event never
//! carries a name that could not have been typed.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} {name:?} is empty")]
    Empty { what: &'static str, name: String },
    #[error("{what} {name:?} is longer than {max} characters")]
    TooLong {
        what: &'static str,
        name: String,
        max: usize,
    },
    #[error(
        "{what} {name:?} may only contain lowercase letters a-z, digits and '-', and may not start or end with '-'"
    )]
    BadLabel { what: &'static str, name: String },
    #[error("domain {name:?} needs at least two labels, such as example.com")]
    SingleLabel { name: String },
}

/// Checks one DNS label: 1–63 of `[a-z0-9-]`, no leading or trailing hyphen.
fn check_label(what: &'static str, whole: &str, label: &str) -> Result<(), NameError> {
    if label.is_empty() {
        return Err(NameError::Empty {
            what,
            name: whole.to_owned(),
        });
    }
    if label.len() > 63 {
        return Err(NameError::TooLong {
            what,
            name: whole.to_owned(),
            max: 63,
        });
    }
    let ok = label
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(NameError::BadLabel {
            what,
            name: whole.to_owned(),
        })
    }
}

macro_rules! label_name {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Checks and wraps a name.
            pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
                let name = name.into();
                check_label($what, &name, &name)?;
                Ok(Self(name))
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
    };
}

label_name!(
    /// A node's name, also its nameserver label (`<name>.ns.<domain>`).
    NodeName,
    "node name"
);
label_name!(
    /// An external WireGuard peer's name (`o11y`, `metrics-o11y`, …).
    PeerName,
    "peer name"
);

impl PeerName {
    /// Whether this peer is the telemetry endpoint: a name that starts or
    /// ends with `o11y` (guide, Observability).
    pub fn is_o11y(&self) -> bool {
        self.0.starts_with("o11y") || self.0.ends_with("o11y")
    }
}

/// A fully qualified domain name, lowercase, without the trailing dot.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DomainName(String);

impl DomainName {
    /// Checks and wraps a domain; uppercase is folded and a trailing dot dropped.
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let mut name: String = name.into();
        if name.ends_with('.') {
            name.pop();
        }
        name.make_ascii_lowercase();
        if name.is_empty() {
            return Err(NameError::Empty {
                what: "domain",
                name,
            });
        }
        if name.len() > 253 {
            return Err(NameError::TooLong {
                what: "domain",
                name,
                max: 253,
            });
        }
        let mut labels = 0;
        for label in name.split('.') {
            check_label("domain", &name, label)?;
            labels += 1;
        }
        if labels < 2 {
            return Err(NameError::SingleLabel { name });
        }
        Ok(Self(name))
    }

    /// The domain as text, without a trailing dot.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `self` is `other` or a name below it.
    pub fn is_within(&self, other: &DomainName) -> bool {
        self.0 == other.0
            || (self.0.len() > other.0.len()
                && self.0.ends_with(other.0.as_str())
                && self.0.as_bytes()[self.0.len() - other.0.len() - 1] == b'.')
    }
}

impl TryFrom<String> for DomainName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        Self::new(s)
    }
}

impl From<DomainName> for String {
    fn from(n: DomainName) -> String {
        n.0
    }
}

impl FromStr for DomainName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        Self::new(s)
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_dns_labels() {
        assert!(NodeName::new("vector").is_ok());
        assert!(NodeName::new("node-2").is_ok());
        for bad in ["", "Vector", "-a", "a-", "a.b", "a b", &"x".repeat(64)] {
            assert!(NodeName::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn domains_are_folded_and_checked() {
        assert_eq!(
            DomainName::new("Example.COM.").map(|d| d.0),
            Ok("example.com".into())
        );
        assert!(matches!(
            DomainName::new("localhost"),
            Err(NameError::SingleLabel { .. })
        ));
        assert!(DomainName::new("a..b").is_err());
        assert!(DomainName::new("bad_char.com").is_err());
    }

    #[test]
    fn within_is_label_aligned() {
        let apex = DomainName::new("example.com").unwrap();
        assert!(DomainName::new("www.example.com").unwrap().is_within(&apex));
        assert!(apex.is_within(&apex));
        assert!(!DomainName::new("badexample.com").unwrap().is_within(&apex));
    }

    #[test]
    fn o11y_peers_are_recognised_by_name() {
        for (name, o11y) in [
            ("o11y", true),
            ("o11y-grafana", true),
            ("metrics-o11y", true),
            ("grafana", false),
        ] {
            assert_eq!(PeerName::new(name).unwrap().is_o11y(), o11y, "{name}");
        }
    }
}
