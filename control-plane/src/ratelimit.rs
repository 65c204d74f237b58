//! In-memory token buckets keyed by source address (for join attempts), and fixed
//! windows per node for audit events (refusals).

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

/// What to do with one more audited refusal of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audit {
    /// Record it as an event; `suppressed_before` refusals of the same node went
    /// unrecorded in its previous window (to be summarised first).
    Record {
        /// How many were counted without an event of their own.
        suppressed_before: u64,
    },
    /// Count it only: the node's quota for this window is used up.
    Suppress,
}

/// At most `per_window` audit events per key and window; the rest are counted, and the
/// counts handed out for a summary when the window ends.
#[derive(Debug)]
pub struct AuditLimiter {
    per_window: u32,
    window: Duration,
    windows: Mutex<HashMap<String, AuditWindow>>,
}

#[derive(Debug, Clone, Copy)]
struct AuditWindow {
    start: Instant,
    recorded: u32,
    suppressed: u64,
}

impl AuditLimiter {
    /// `per_window` events per key and `window`.
    pub fn new(per_window: u32, window: Duration) -> Self {
        AuditLimiter { per_window, window, windows: Mutex::new(HashMap::new()) }
    }

    /// Decides about one more event for `key` at `now`.
    pub fn admit(&self, key: &str, now: Instant) -> Audit {
        let mut windows = self.windows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let fresh = AuditWindow { start: now, recorded: 0, suppressed: 0 };
        let window = windows.entry(key.to_owned()).or_insert(fresh);
        let mut suppressed_before = 0;
        if now.saturating_duration_since(window.start) >= self.window {
            suppressed_before = window.suppressed;
            *window = fresh;
        }
        if window.recorded < self.per_window {
            window.recorded += 1;
            Audit::Record { suppressed_before }
        } else {
            window.suppressed = window.suppressed.saturating_add(1);
            Audit::Suppress
        }
    }

    /// The keys whose window ended by `now` with refusals left unrecorded, with their
    /// counts; ended windows are forgotten.
    pub fn take_ended(&self, now: Instant) -> Vec<(String, u64)> {
        let mut windows = self.windows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut ended = Vec::new();
        windows.retain(|key, window| {
            if now.saturating_duration_since(window.start) < self.window {
                return true;
            }
            if window.suppressed > 0 {
                ended.push((key.clone(), window.suppressed));
            }
            false
        });
        ended.sort();
        ended
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
    fn audit_events_are_capped_per_key_and_window_and_the_rest_counted() {
        let limiter = AuditLimiter::new(3, Duration::from_secs(60));
        let start = Instant::now();
        let decisions: Vec<Audit> = (0..10).map(|_| limiter.admit("node-a", start)).collect();
        assert_eq!(decisions.iter().filter(|d| matches!(d, Audit::Record { .. })).count(), 3);
        // Another node has a quota of its own.
        assert_eq!(limiter.admit("node-b", start), Audit::Record { suppressed_before: 0 });
        assert!(limiter.take_ended(start + Duration::from_secs(59)).is_empty(), "windows still open");
        // The next window starts by saying how many went unrecorded.
        assert_eq!(limiter.admit("node-a", start + Duration::from_secs(61)), Audit::Record { suppressed_before: 7 });
        for _ in 0..4 {
            limiter.admit("node-a", start + Duration::from_secs(62));
        }
        // Or the periodic sweep does, when no refusal comes.
        assert_eq!(limiter.take_ended(start + Duration::from_secs(125)), vec![("node-a".to_owned(), 2)]);
        assert!(limiter.take_ended(start + Duration::from_secs(200)).is_empty(), "reported once");
    }

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
