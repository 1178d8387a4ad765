//! Log lines that anyone on the network can trigger (a connection from a stranger, a
//! malformed UPDATE, an OPEN with the wrong identifier) are rate-limited: at most a burst per
//! window, and the next line logged says how many were left out. The counters and the
//! session state are kept for every event; only the log is thinned.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct LogLimit {
    window: Duration,
    burst: u32,
    start: Instant,
    used: u32,
    dropped: u64,
}

impl LogLimit {
    /// At most `burst` lines per `window`.
    pub fn new(burst: u32, window: Duration) -> Self {
        LogLimit {
            window,
            burst,
            start: Instant::now(),
            used: 0,
            dropped: 0,
        }
    }

    /// `Some(lines left out since the last one logged)` when this line may be logged.
    pub fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if now.duration_since(self.start) >= self.window {
            self.start = now;
            self.used = 0;
        }
        if self.used < self.burst {
            self.used += 1;
            Some(std::mem::take(&mut self.dropped))
        } else {
            self.dropped += 1;
            None
        }
    }
}

/// Ten lines a minute: enough to see what is going on, too few to fill a disk.
pub fn per_minute() -> LogLimit {
    LogLimit::new(10, Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_per_window_then_the_count_of_what_was_left_out() {
        let mut l = LogLimit::new(3, Duration::from_secs(60));
        let got: Vec<Option<u64>> = (0..10).map(|_| l.allow()).collect();
        assert_eq!(got[..3], [Some(0), Some(0), Some(0)]);
        assert!(got[3..].iter().all(Option::is_none));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(l.allow(), Some(7));
        assert_eq!(l.allow(), Some(0));
    }
}
