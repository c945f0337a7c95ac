//! Waiting for a condition: it is checked again and again until it holds
//! or a deadline passes. A test never sleeps a fixed time in the hope that
//! something happened; it asks until it has.

use std::time::{Duration, Instant};

/// How long to wait and how often to look.
#[derive(Debug, Clone, Copy)]
pub struct Wait {
    within: Duration,
    every: Duration,
}

impl Wait {
    /// At most `within`, looking every 100 ms.
    pub const fn up_to(within: Duration) -> Wait {
        Wait {
            within,
            every: Duration::from_millis(100),
        }
    }

    /// Looking every `every` instead: a benchmark that times the wait
    /// looks more often, a test of a slow probe less.
    pub const fn every(self, every: Duration) -> Wait {
        Wait { every, ..self }
    }

    /// Whether `check` held before the deadline.
    pub fn holds(self, mut check: impl FnMut() -> bool) -> bool {
        self.seeing(|| if check() { Ok(()) } else { Err(()) })
            .is_ok()
    }

    /// Fails with `what` unless `check` holds before the deadline.
    pub fn until(self, what: &str, mut check: impl FnMut() -> bool) {
        self.until_seeing(what, || if check() { Ok(()) } else { Err(String::new()) });
    }

    /// [`Wait::until`] for a check that says what it saw when it fails:
    /// the last of those ends the failure's message.
    pub fn until_seeing(self, what: &str, check: impl FnMut() -> Result<(), String>) {
        if let Err(seen) = self.seeing(check) {
            panic!(
                "not within {:?}: {what}{}{seen}",
                self.within,
                if seen.is_empty() {
                    ""
                } else {
                    "; last seen:\n"
                }
            );
        }
    }

    /// Checks until `check` is `Ok` or the deadline has passed; then the
    /// last thing it saw.
    fn seeing<E>(self, mut check: impl FnMut() -> Result<(), E>) -> Result<(), E> {
        let start = Instant::now();
        loop {
            match check() {
                Ok(()) => return Ok(()),
                Err(seen) if start.elapsed() >= self.within => return Err(seen),
                Err(_) => std::thread::sleep(self.every),
            }
        }
    }
}

/// Fails with `what` unless `check` holds within `within`.
pub fn wait_until(within: Duration, what: &str, check: impl FnMut() -> bool) {
    Wait::up_to(within).until(what, check);
}

/// [`wait_until`] for a check that says what it saw when it fails.
pub fn wait_seeing(within: Duration, what: &str, check: impl FnMut() -> Result<(), String>) {
    Wait::up_to(within).until_seeing(what, check);
}

/// Whether `check` holds within `within`, for a test that says itself
/// what failed.
pub fn eventually(within: Duration, check: impl FnMut() -> bool) -> bool {
    Wait::up_to(within).holds(check)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_that_comes_true_is_waited_for() {
        let mut n = 0;
        assert!(
            Wait::up_to(Duration::from_secs(5))
                .every(Duration::from_millis(1))
                .holds(|| {
                    n += 1;
                    n == 3
                })
        );
        assert_eq!(n, 3);
    }

    #[test]
    fn a_condition_that_never_holds_is_checked_once_more_at_the_deadline() {
        let mut n = 0;
        assert!(!Wait::up_to(Duration::ZERO).holds(|| {
            n += 1;
            false
        }));
        assert_eq!(n, 1);
    }

    #[test]
    #[should_panic(expected = "not within 0ns: it holds; last seen:\nno")]
    fn a_failed_wait_says_what_it_saw_last() {
        wait_seeing(Duration::ZERO, "it holds", || Err("no".into()));
    }
}
