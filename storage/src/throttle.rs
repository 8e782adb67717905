//! A byte-rate limit for background I/O (Kafka's `log.cleaner.io.max.bytes.per.second`):
//! compaction's reads and writes share the device with appends and their syncs, and a
//! pass that reads as fast as the device allows lengthens the syncs beside it.
//!
//! A virtual clock: each byte costs `1 / rate` seconds, charged after the bytes before
//! it. Work that runs ahead of the clock by more than a short burst waits until it is
//! within it again, so the rate holds over any stretch longer than the burst, and no
//! single wait is longer than the work just done took at the limit.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// How far ahead of its rate the work may run before it waits: short, so that a pass
/// is spread out rather than let through in bursts.
const BURST: Duration = Duration::from_millis(10);

#[derive(Debug)]
pub(crate) struct IoThrottle {
    /// `None`: no limit.
    bytes_per_second: Option<u64>,
    /// When the bytes charged so far would have been done at the limit.
    paid_until: Cell<Option<Instant>>,
    /// Time spent waiting, for the stats.
    waited: Cell<Duration>,
}

impl IoThrottle {
    /// A limit of `bytes_per_second`; 0 is no limit.
    pub fn new(bytes_per_second: u64) -> IoThrottle {
        IoThrottle {
            bytes_per_second: (bytes_per_second > 0).then_some(bytes_per_second),
            paid_until: Cell::new(None),
            waited: Cell::new(Duration::ZERO),
        }
    }

    /// Charges `bytes` at `now`; returns how long to wait before going on.
    fn charge(&self, bytes: u64, now: Instant) -> Duration {
        let Some(rate) = self.bytes_per_second else {
            return Duration::ZERO;
        };
        // Idle time is not saved up: the clock starts again from now.
        let start = self.paid_until.get().map_or(now, |paid| paid.max(now));
        let cost = Duration::from_secs_f64(bytes as f64 / rate as f64);
        let paid = start + cost;
        self.paid_until.set(Some(paid));
        paid.saturating_duration_since(now + BURST)
    }

    /// Charges `bytes`, waiting while the work is ahead of the limit.
    pub async fn pace(&self, bytes: u64) {
        let wait = self.charge(bytes, Instant::now());
        if !wait.is_zero() {
            self.waited.set(self.waited.get() + wait);
            glommio::timer::sleep(wait).await;
        }
    }

    /// Time spent waiting so far.
    pub fn waited(&self) -> Duration {
        self.waited.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_limit_never_waits() {
        let throttle = IoThrottle::new(0);
        let now = Instant::now();
        assert_eq!(throttle.charge(u64::MAX, now), Duration::ZERO);
    }

    /// At 1 MB/s, a burst's worth (10 ms, 10 KB) goes at once; beyond it each byte waits
    /// its turn; time that passes pays for bytes; idle time is not saved up.
    #[test]
    fn work_ahead_of_the_rate_waits_for_it() {
        let throttle = IoThrottle::new(1_000_000);
        let t0 = Instant::now();
        assert_eq!(throttle.charge(10_000, t0), Duration::ZERO);
        assert_eq!(throttle.charge(5_000, t0), Duration::from_millis(5));
        // 15 ms of work charged at t0: 5 ms later, 5 ms of it is still ahead of the
        // clock, within the burst.
        assert_eq!(
            throttle.charge(0, t0 + Duration::from_millis(5)),
            Duration::ZERO
        );
        assert_eq!(
            throttle.charge(20_000, t0 + Duration::from_millis(5)),
            Duration::from_millis(20)
        );
        // After a long pause the clock restarts from now.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(throttle.charge(10_000, later), Duration::ZERO);
        assert_eq!(throttle.charge(1_000, later), Duration::from_millis(1));
    }

    /// Over many charges the total wait is what the rate asks, less one burst.
    #[test]
    fn the_rate_holds_over_a_long_pass() {
        let throttle = IoThrottle::new(2_000_000);
        let mut now = Instant::now();
        let mut waited = Duration::ZERO;
        for _ in 0..1000 {
            let wait = throttle.charge(16_384, now);
            waited += wait;
            now += wait;
        }
        // 16,384,000 bytes at 2 MB/s: 8.192 s.
        let expected = Duration::from_secs_f64(8.192) - BURST;
        let error = waited.abs_diff(expected);
        assert!(error < Duration::from_millis(1), "waited {waited:?}");
    }
}
