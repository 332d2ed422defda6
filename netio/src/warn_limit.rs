//! Rate-limited warnings: a peer or client that sends garbage as fast as it can (or a stranger
//! failing TLS handshakes) must not turn the node's log into the attack's amplifier. One line
//! per kind per interval; what was held back is counted and named in the next line.

use std::time::{Duration, Instant};

/// How often one kind of warning may be logged.
pub const WARN_INTERVAL: Duration = Duration::from_secs(1);

/// The state of one kind of warning.
#[derive(Debug, Default)]
pub struct WarnLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnLimit {
    /// Whether a warning at `now` may be logged: `Some(n)` with the `n` warnings held back since
    /// the last one logged, or `None` (this one is counted and held back).
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < WARN_INTERVAL)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_interval_and_the_next_one_counts_the_held_back() {
        let mut limit = WarnLimit::default();
        let t0 = Instant::now();
        assert_eq!(limit.admit(t0), Some(0));
        for i in 1..=5 {
            assert_eq!(limit.admit(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(limit.admit(t0 + WARN_INTERVAL), Some(5));
        assert_eq!(limit.admit(t0 + WARN_INTERVAL), None);
    }
}
