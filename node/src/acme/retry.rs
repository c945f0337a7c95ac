//! When a failed certificate order is tried again, and why it failed.
//!
//! An order that never reached the CA (no route, connection refused, a
//! timeout, the directory's name not resolving, TLS to it failing) cost
//! the CA nothing: it is tried again within seconds, 2 s doubling to
//! 5 min, and at once when the CA's address answers again or a peer comes
//! back up (the node's network is back). An answer from the CA — a problem
//! document, a failed validation, an order that went invalid — keeps the
//! slow schedule: 5 min doubling to 6 h, which keeps a name that fails
//! again and again under Let's Encrypt's 5 failed validations per hour,
//! and at least an hour when the CA says rate limited.

use std::time::Duration;

/// The first wait after an order that never reached the CA; it doubles.
pub const UNREACHED_FIRST: Duration = Duration::from_secs(2);
/// The longest wait after orders that never reached the CA.
pub const UNREACHED_LONGEST: Duration = Duration::from_secs(300);
/// The first wait after the CA refused or failed an order; it doubles.
pub const ANSWERED_FIRST: Duration = Duration::from_secs(300);
/// The longest wait after the CA refused or failed orders.
pub const ANSWERED_LONGEST: Duration = Duration::from_secs(6 * 3600);
/// The least wait when the CA says rate limited.
pub const RATE_LIMITED_LEAST: Duration = Duration::from_secs(3600);

/// Why an order failed, as far as the schedule cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The request never got an answer from the CA.
    Unreached,
    /// The CA answered (refused, failed validation, or anything of ours
    /// after it answered).
    Answered { rate_limited: bool },
}

/// The failures of one certificate in a row, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Failures {
    /// Every failure since the last success (what people are shown).
    pub total: u32,
    /// Those the CA answered: the slow schedule's step.
    pub answered: u32,
    /// Failures that never reached the CA since the last one that did.
    pub unreached_in_a_row: u32,
}

impl Failures {
    /// After one more failure: the counts, and how long to wait.
    pub fn after(self, failure: Failure) -> (Failures, Duration) {
        let total = self.total + 1;
        match failure {
            Failure::Unreached => {
                let n = self.unreached_in_a_row + 1;
                let wait = (UNREACHED_FIRST * (1 << (n - 1).min(16))).min(UNREACHED_LONGEST);
                let next = Failures {
                    total,
                    unreached_in_a_row: n,
                    ..self
                };
                (next, wait)
            }
            Failure::Answered { rate_limited } => {
                let n = self.answered + 1;
                let mut wait = (ANSWERED_FIRST * (1 << (n - 1).min(8))).min(ANSWERED_LONGEST);
                if rate_limited {
                    wait = wait.max(RATE_LIMITED_LEAST);
                }
                let next = Failures {
                    total,
                    answered: n,
                    unreached_in_a_row: 0,
                };
                (next, wait)
            }
        }
    }
}

/// Why `error` (an order's failure, with its context) happened: the first
/// ACME error in its chain decides; without one, the CA is taken to have
/// answered (the slow schedule is the safe one for a CA).
pub fn classify(error: &anyhow::Error) -> Failure {
    let rate_limited = {
        let text = format!("{error:#}");
        text.contains("rateLimited") || text.contains("429")
    };
    for cause in error.chain() {
        if let Some(acme) = cause.downcast_ref::<instant_acme::Error>() {
            return match acme {
                instant_acme::Error::Hyper(_) => Failure::Unreached,
                instant_acme::Error::Other(inner) if transport(inner.as_ref()) => {
                    Failure::Unreached
                }
                _ => Failure::Answered { rate_limited },
            };
        }
        if transport(cause) {
            return Failure::Unreached;
        }
    }
    Failure::Answered { rate_limited }
}

/// Whether an error is the transport's (the HTTP client's or a socket's),
/// before any answer: instant-acme wraps its client's failures whole.
fn transport(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<std::io::Error>() || e.is::<hyper::Error>() {
            return true;
        }
        // hyper-util's client error, whose type is not ours to name:
        // "client error (Connect)", "(SendRequest)".
        if e.to_string().starts_with("client error (") {
            return true;
        }
        cause = e.source();
    }
    false
}

/// The CA's host and port, from its directory URL (`https://host[:port]/…`).
pub fn ca_address(directory: &str) -> Option<(String, u16)> {
    let rest = directory.strip_prefix("https://")?;
    let authority = rest.split('/').next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, port) = v6.split_once(']')?;
        let port = match port.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => 443,
        };
        return Some((host.to_owned(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_owned(), port.parse().ok()?)),
        None if !authority.is_empty() => Some((authority.to_owned(), 443)),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_that_never_reached_the_ca_is_tried_again_within_seconds() {
        let mut f = Failures::default();
        let mut waits = Vec::new();
        for _ in 0..10 {
            let (next, wait) = f.after(Failure::Unreached);
            f = next;
            waits.push(wait.as_secs());
        }
        assert_eq!(waits, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(f.total, 10);
        assert_eq!(f.answered, 0);
    }

    #[test]
    fn answers_from_the_ca_keep_the_slow_schedule_whatever_came_between() {
        let f = Failures::default();
        let (f, wait) = f.after(Failure::Answered {
            rate_limited: false,
        });
        assert_eq!(wait, Duration::from_secs(300));
        // The network fails meanwhile: seconds, not the slow schedule.
        let (f, wait) = f.after(Failure::Unreached);
        assert_eq!(wait, Duration::from_secs(2));
        // The CA answers again: its schedule goes on where it was.
        let (f, wait) = f.after(Failure::Answered {
            rate_limited: false,
        });
        assert_eq!(wait, Duration::from_secs(600));
        assert_eq!((f.total, f.answered, f.unreached_in_a_row), (3, 2, 0));
        let (_, wait) = f.after(Failure::Answered { rate_limited: true });
        assert_eq!(wait, Duration::from_secs(3600));
        let mut f = Failures::default();
        for _ in 0..20 {
            f = f
                .after(Failure::Answered {
                    rate_limited: false,
                })
                .0;
        }
        assert_eq!(
            f.after(Failure::Answered {
                rate_limited: false
            })
            .1,
            ANSWERED_LONGEST
        );
    }

    #[test]
    fn failures_are_told_apart_by_whether_the_ca_answered() {
        let refused = std::io::Error::new(std::io::ErrorKind::HostUnreachable, "No route to host");
        let unreached = anyhow::Error::new(instant_acme::Error::Other(Box::new(refused)))
            .context("cannot create an ACME account at https://10.0.0.1:14000/dir");
        assert_eq!(classify(&unreached), Failure::Unreached);
        let problem: instant_acme::Problem = serde_json::from_str(
            r#"{"type":"urn:ietf:params:acme:error:rateLimited","detail":"too many","status":429}"#,
        )
        .unwrap();
        let limited = anyhow::Error::new(instant_acme::Error::Api(problem))
            .context("the CA refused the order");
        assert_eq!(classify(&limited), Failure::Answered { rate_limited: true });
        let invalid = anyhow::anyhow!("the order is Invalid, not ready");
        assert_eq!(
            classify(&invalid),
            Failure::Answered {
                rate_limited: false
            }
        );
    }

    #[test]
    fn the_ca_address_is_read_from_its_directory_url() {
        assert_eq!(
            ca_address("https://203.0.113.13:14000/dir"),
            Some(("203.0.113.13".into(), 14000))
        );
        assert_eq!(
            ca_address("https://acme-v02.api.letsencrypt.org/directory"),
            Some(("acme-v02.api.letsencrypt.org".into(), 443))
        );
        assert_eq!(
            ca_address("https://[2001:db8::13]:14000/dir"),
            Some(("2001:db8::13".into(), 14000))
        );
        assert_eq!(ca_address("http://ca/dir"), None);
    }
}
