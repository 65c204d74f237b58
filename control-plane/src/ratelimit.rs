//! In-memory token buckets keyed by source address (for join attempts).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buckets beyond this many trigger a sweep of the full (idle) ones.
const SWEEP_ABOVE: usize = 4096;

/// A token bucket per key: `capacity` attempts at once, refilled at `capacity` per
/// `period`.
#[derive(Debug)]
pub struct RateLimiter {
    capacity: f64,
    per_second: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    /// `capacity` attempts per `period` and key (at least one).
    pub fn new(capacity: u32, period: Duration) -> Self {
        let capacity = f64::from(capacity.max(1));
        RateLimiter { capacity, per_second: capacity / period.as_secs_f64().max(0.001), buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one attempt for `key` at `now`; `Err(wait)` when the bucket is empty,
    /// with how long until the next attempt is allowed.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() > SWEEP_ABOVE {
            let (capacity, per_second) = (self.capacity, self.per_second);
            buckets.retain(|_, bucket| bucket.refilled(now, capacity, per_second) < capacity);
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket { tokens: self.capacity, updated: now });
        bucket.tokens = bucket.refilled(now, self.capacity, self.per_second);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.per_second))
        }
    }
}

impl Bucket {
    fn refilled(&self, now: Instant, capacity: f64, per_second: f64) -> f64 {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        (self.tokens + elapsed * per_second).min(capacity)
    }
}

/// The IP address of `host:port` (the port changes with every connection), or the
/// text itself when it is not a socket address.
pub fn source_key(address: &str) -> String {
    match address.parse::<SocketAddr>() {
        Ok(addr) => addr.ip().to_canonical().to_string(),
        Err(_) => address.parse::<IpAddr>().map_or_else(|_| address.to_owned(), |ip| ip.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_gets_its_own_bucket_refilled_over_time() {
        let limiter = RateLimiter::new(3, Duration::from_secs(60));
        let start = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check("10.0.0.1", start).is_ok());
        }
        let wait = limiter.check("10.0.0.1", start).expect_err("the fourth attempt is refused");
        assert!(wait > Duration::from_secs(19) && wait <= Duration::from_secs(20), "{wait:?}");
        assert!(limiter.check("10.0.0.2", start).is_ok(), "another source is not affected");
        assert!(limiter.check("10.0.0.1", start + Duration::from_secs(21)).is_ok(), "one attempt back after 20 s");
        assert!(limiter.check("10.0.0.1", start + Duration::from_secs(22)).is_err());
    }

    #[test]
    fn sources_are_keyed_by_ip_without_the_port() {
        assert_eq!(source_key("127.0.0.1:5000"), "127.0.0.1");
        assert_eq!(source_key("[::ffff:10.1.2.3]:80"), "10.1.2.3");
        assert_eq!(source_key("[::1]:80"), "::1");
        assert_eq!(source_key(""), "");
    }
}
