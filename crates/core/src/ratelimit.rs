//! Per-client rate limits: a token bucket per client (API key, token
//! subject, or address), refilled at `rate` per second up to `burst`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buckets kept before full (idle) ones are dropped.
const MAX_TRACKED: usize = 10_000;

pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// `rate` 0 turns the limit off.
    pub fn new(rate: f64, burst: u32) -> Self {
        Self {
            rate,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take one request from `client`'s bucket, or say how long until one is there.
    pub fn check(&self, client: &str) -> Result<(), Duration> {
        self.check_at(client, Instant::now())
    }

    fn check_at(&self, client: &str, now: Instant) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().expect("rate limit lock");
        if buckets.len() >= MAX_TRACKED {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| b.refilled(now, rate, burst) < burst);
        }
        let bucket = buckets.entry(client.to_string()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        bucket.tokens = bucket.refilled(now, self.rate, self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
    }
}

impl Bucket {
    fn refilled(&self, now: Instant, rate: f64, burst: f64) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * rate).min(burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_per_client() {
        let limiter = RateLimiter::new(2.0, 3);
        let t = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check_at("a", t).is_ok());
        }
        let wait = limiter.check_at("a", t).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        assert!(
            limiter.check_at("b", t).is_ok(),
            "other clients are not affected"
        );
        assert!(
            limiter
                .check_at("a", t + Duration::from_millis(500))
                .is_ok()
        );
        assert!(
            limiter
                .check_at("a", t + Duration::from_millis(500))
                .is_err()
        );
    }

    #[test]
    fn zero_rate_is_off() {
        let limiter = RateLimiter::new(0.0, 1);
        let t = Instant::now();
        for _ in 0..1000 {
            assert!(limiter.check_at("a", t).is_ok());
        }
    }
}
