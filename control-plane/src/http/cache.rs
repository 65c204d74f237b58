//! Serialised answers of large, hot lists (the container list), kept per version of the
//! state they show and per query string: a thousand identical requests a second between
//! two changes cost one serialisation. Access is checked before the cache is consulted
//! (the version comes from a service call that checks it), and only successful answers
//! are kept.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};

/// Most answers kept: distinct query strings of one version (a cap on memory whatever
/// queries callers make: at most this many 1,000-item pages).
pub const MAX_ENTRIES: usize = 16;

/// One successful JSON answer: its headers (paging) and body.
#[derive(Debug, Clone)]
pub struct CachedAnswer {
    headers: HeaderMap,
    body: Bytes,
}

impl CachedAnswer {
    /// `value` serialised as JSON with `headers`.
    pub fn json(headers: HeaderMap, value: &impl serde::Serialize) -> Result<Self, serde_json::Error> {
        Ok(CachedAnswer { headers, body: Bytes::from(serde_json::to_vec(value)?) })
    }
}

impl IntoResponse for CachedAnswer {
    fn into_response(self) -> Response {
        let mut response = (self.headers, self.body).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}

/// The answers of one version.
#[derive(Debug, Default)]
pub struct ListCache {
    state: Mutex<(u64, HashMap<String, CachedAnswer>)>,
}

impl ListCache {
    /// The answer kept for `query` at exactly `version`.
    pub fn get(&self, version: u64, query: &str) -> Option<CachedAnswer> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        (state.0 == version).then(|| state.1.get(query).cloned()).flatten()
    }

    /// Keeps `answer` for `query` at `version`: a newer version drops every older answer;
    /// an answer older than what is kept is not kept; when full, the kept answers go.
    pub fn put(&self, version: u64, query: String, answer: CachedAnswer) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if version < state.0 {
            return;
        }
        if version > state.0 || state.1.len() >= MAX_ENTRIES {
            state.1.clear();
            state.0 = version;
        }
        state.1.insert(query, answer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(body: &str) -> CachedAnswer {
        CachedAnswer { headers: HeaderMap::new(), body: Bytes::from(body.to_owned()) }
    }

    fn body(answer: Option<CachedAnswer>) -> Option<String> {
        answer.map(|a| String::from_utf8(a.body.to_vec()).unwrap_or_default())
    }

    #[test]
    fn an_answer_is_served_only_for_its_version_and_query() {
        let cache = ListCache::default();
        cache.put(3, "limit=10".into(), answer("a"));
        assert_eq!(body(cache.get(3, "limit=10")).as_deref(), Some("a"));
        assert_eq!(body(cache.get(3, "limit=11")), None);
        assert_eq!(body(cache.get(4, "limit=10")), None, "a newer version never gets an older answer");
        cache.put(4, "limit=10".into(), answer("b"));
        assert_eq!(body(cache.get(3, "limit=10")), None, "older answers are dropped");
        cache.put(3, "limit=10".into(), answer("stale"));
        assert_eq!(body(cache.get(4, "limit=10")).as_deref(), Some("b"), "an older build never replaces a newer one");
        assert_eq!(body(cache.get(3, "limit=10")), None);
    }

    #[test]
    fn the_cache_never_holds_more_than_its_cap() {
        let cache = ListCache::default();
        for i in 0..(MAX_ENTRIES * 3) {
            cache.put(1, format!("q={i}"), answer("x"));
            let held = cache.state.lock().map(|s| s.1.len()).unwrap_or(usize::MAX);
            assert!(held <= MAX_ENTRIES, "{held} answers held");
        }
        assert!(cache.get(1, &format!("q={}", MAX_ENTRIES * 3 - 1)).is_some(), "the latest answer is kept");
    }
}
