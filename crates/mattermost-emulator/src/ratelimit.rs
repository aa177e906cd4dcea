//! Optional GCRA rate limiting of `/api/v4` by remote address, as `RateLimitSettings` does it:
//! `X-RateLimit-*` headers on every limited route, a plain-text 429 when over the limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Limiter state: `per_sec` requests a second, bursts of up to `burst` requests.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    burst: u32,
    tat: HashMap<IpAddr, Instant>,
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy)]
pub struct Verdict {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the bucket is full again (rounded up).
    pub reset_secs: u64,
    /// Seconds until the next request would be allowed (rounded up, at least 1), when refused.
    pub retry_after_secs: u64,
}

fn ceil_secs(d: Duration) -> u64 {
    let ms = d.as_millis() as u64;
    ms.div_ceil(1000)
}

impl RateLimiter {
    /// `per_sec` ≥ 1; the burst equals `per_sec`.
    pub fn new(per_sec: u32) -> Self {
        let per_sec = per_sec.max(1);
        Self {
            interval: Duration::from_secs(1) / per_sec,
            burst: per_sec,
            tat: HashMap::new(),
        }
    }

    /// Count one request from `ip`.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Verdict {
        let window = self.interval * self.burst;
        let tat = self.tat.get(&ip).copied().unwrap_or(now).max(now);
        let new_tat = tat + self.interval;
        let ahead = new_tat - now;
        if ahead > window {
            let wait = ahead - window;
            return Verdict {
                allowed: false,
                limit: self.burst,
                remaining: 0,
                reset_secs: ceil_secs(tat - now),
                retry_after_secs: ceil_secs(wait).max(1),
            };
        }
        self.tat.insert(ip, new_tat);
        let remaining = ((window - ahead).as_nanos() / self.interval.as_nanos().max(1)) as u32;
        Verdict {
            allowed: true,
            limit: self.burst,
            remaining,
            reset_secs: ceil_secs(ahead),
            retry_after_secs: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refuse() {
        let mut rl = RateLimiter::new(3);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let now = Instant::now();
        let v: Vec<bool> = (0..4).map(|_| rl.check(ip, now).allowed).collect();
        assert_eq!(v, [true, true, true, false]);
        let later = now + Duration::from_millis(400);
        assert!(rl.check(ip, later).allowed);
    }
}
