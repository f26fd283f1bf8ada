//! Token-bucket rate limits for a whole peer process (one for uploads, one for downloads), and the
//! parser for human rate units (`20MiB`, `500k`).
//!
//! Acquiring takes the tokens at once and sleeps off any debt afterwards, outside the lock, so a
//! request larger than the bucket still goes through at the configured average rate and waiters
//! are served in arrival order.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// A shared token bucket. `None` rate means unlimited.
#[derive(Debug)]
pub struct RateLimiter {
    rate: Option<f64>,
    burst: f64,
    /// Tokens available (negative: debt being slept off) and when they were last topped up.
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// A limiter of `rate` bytes per second (unlimited when `None`). The bucket holds 50 ms of
    /// traffic, so bursts stay short and swarm benchmarks see the configured rate.
    pub fn new(rate: Option<u64>) -> Self {
        let rate = rate.filter(|&r| r > 0).map(|r| r as f64);
        let burst = rate.map_or(0.0, |r| (r * 0.05).max(16.0 * 1024.0));
        Self { rate, burst, state: Mutex::new((burst, Instant::now())) }
    }

    /// The configured rate in bytes per second.
    pub fn rate(&self) -> Option<u64> {
        self.rate.map(|r| r as u64)
    }

    /// Waits until `bytes` may pass.
    pub async fn acquire(&self, bytes: usize) {
        let Some(rate) = self.rate else { return };
        let wait = {
            let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            let (tokens, last) = *st;
            let tokens = (tokens + now.duration_since(last).as_secs_f64() * rate).min(self.burst) - bytes as f64;
            *st = (tokens, now);
            if tokens < 0.0 {
                Duration::from_secs_f64(-tokens / rate)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Parses a byte rate with optional unit (see [`proto::units::parse_bytes`]): `1500`, `500k`
/// (x1000), `20MiB` (x1024^2), `1.5G`, `2GiB`, with an optional trailing `/s`. At least one byte
/// per second.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    match proto::units::parse_bytes(s.trim().trim_end_matches("/s"))? {
        0 => Err(format!("{s:?} is not a rate: at least 1 byte per second")),
        v => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_bytes("1500"), Ok(1500));
        assert_eq!(parse_bytes("500k"), Ok(500_000));
        assert_eq!(parse_bytes("20MiB"), Ok(20 * 1024 * 1024));
        assert_eq!(parse_bytes("20Mi/s"), Ok(20 * 1024 * 1024));
        assert_eq!(parse_bytes("1.5G"), Ok(1_500_000_000));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        for bad in ["", "k", "10x", "-5", "0", "1e3", "0.1"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn enforces_the_average_rate() {
        let rl = RateLimiter::new(Some(1_000_000));
        let start = Instant::now();
        for _ in 0..20 {
            rl.acquire(100_000).await;
        }
        // 2 MB at 1 MB/s, minus the initial 50 ms burst.
        let t = start.elapsed().as_secs_f64();
        assert!((1.9..2.1).contains(&t), "{t}");
    }

    #[tokio::test]
    async fn unlimited_never_waits() {
        let rl = RateLimiter::new(None);
        rl.acquire(usize::MAX).await;
        assert_eq!(rl.rate(), None);
    }
}
