//! Flood control: a token bucket that paces the lines the bridge writes so that it stays under a
//! server's flood limits (a burst, then one line per interval).
//!
//! Pure arithmetic over a clock value passed in; the session awaits [`TokenBucket::ready_at`].

use std::time::Duration;

use tokio::time::Instant;

/// A token bucket: `capacity` lines at once, refilled by one every `interval`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    tokens: f64,
    interval: Duration,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket.
    #[must_use]
    pub fn new(capacity: u32, interval: Duration, now: Instant) -> Self {
        Self {
            capacity: f64::from(capacity.max(1)),
            tokens: f64::from(capacity.max(1)),
            interval: interval.max(Duration::from_micros(1)),
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated);
        self.tokens =
            (self.tokens + elapsed.as_secs_f64() / self.interval.as_secs_f64()).min(self.capacity);
        self.updated = now;
    }

    /// When the next line may be sent (now or later).
    pub fn ready_at(&mut self, now: Instant) -> Instant {
        self.refill(now);
        if self.tokens >= 1.0 {
            now
        } else {
            now + self.interval.mul_f64(1.0 - self.tokens)
        }
    }

    /// Take a token for a line about to be sent; returns false (and takes nothing) if none is
    /// available yet.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_paced() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(3, Duration::from_secs(2), start);
        assert!(bucket.try_take(start));
        assert!(bucket.try_take(start));
        assert!(bucket.try_take(start));
        assert!(!bucket.try_take(start));
        assert_eq!(bucket.ready_at(start), start + Duration::from_secs(2));
        assert!(!bucket.try_take(start + Duration::from_millis(1999)));
        assert!(bucket.try_take(start + Duration::from_secs(2)));
        // Ten idle minutes refill to capacity, never beyond.
        let later = start + Duration::from_mins(10);
        assert!(bucket.try_take(later));
        assert!(bucket.try_take(later));
        assert!(bucket.try_take(later));
        assert!(!bucket.try_take(later));
    }
}
