//! Phase times on standard error with `MAKIATTO_TIMINGS=1`: where a slow
//! sync spends its time.

use std::cell::Cell;
use std::time::Instant;

pub struct Timing {
    start: Option<Instant>,
    last: Cell<Option<Instant>>,
}

impl Timing {
    pub fn from_env() -> Timing {
        let start = std::env::var_os("MAKIATTO_TIMINGS")
            .is_some_and(|v| v == "1")
            .then(Instant::now);
        Timing {
            start,
            last: Cell::new(start),
        }
    }

    /// Prints how long the phase that ends now took.
    pub fn mark(&self, phase: &str) {
        if let (Some(start), Some(last)) = (self.start, self.last.get()) {
            let now = Instant::now();
            eprintln!(
                "timing: {phase}: {:.1} ms (at {:.1} ms)",
                (now - last).as_secs_f64() * 1e3,
                (now - start).as_secs_f64() * 1e3
            );
            self.last.set(Some(now));
        }
    }
}
