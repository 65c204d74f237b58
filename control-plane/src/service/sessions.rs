//! Dashboard sessions: an API token pasted once at login becomes a random session id
//! (the cookie's value; the token itself is never kept or sent back) mapped in memory to
//! the token's id and a per-session CSRF token. Every use checks the token again (a
//! revoked or expired token ends its sessions at once), sessions idle longer than
//! [`Config::dashboard_session_idle`](crate::config::Config) expire, and at most
//! [`MAX_SESSIONS`] live at once (the least recently used goes first).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use chrono::Utc;
use diplo_api::token::ApiToken;

use super::ControlPlane;
use crate::auth::Caller;
use crate::error::{ServiceError, ServiceResult};

/// Most dashboard sessions alive at once; a login beyond drops the least recently used.
pub const MAX_SESSIONS: usize = 10_000;

/// Default idle time after which a dashboard session expires.
pub const DEFAULT_SESSION_IDLE: Duration = Duration::from_secs(12 * 3600);

/// A session as a request sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DashboardSession {
    /// Who the session acts as (the API token's name and role).
    pub caller: Caller,
    /// The token every write must carry in `X-CSRF-Token`.
    pub csrf_token: String,
}

/// A fresh login: the cookie's value and the session.
#[derive(Clone)]
pub struct DashboardLogin {
    /// The random session id (the cookie's value).
    pub session_id: String,
    /// The session it opens.
    pub session: DashboardSession,
}

// The session id is a credential: debug output leaves it out.
impl std::fmt::Debug for DashboardLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DashboardLogin").field("caller", &self.session.caller).finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Entry {
    token_id: String,
    csrf_token: String,
    last_used: Instant,
}

/// Live dashboard sessions by session id.
#[derive(Debug, Default)]
pub struct DashboardSessions {
    entries: Mutex<HashMap<String, Entry>>,
}

impl DashboardSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A poisoned lock only means another thread panicked mid-update of plain data.
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens a session for the API token `token_id`; drops expired sessions, then the
    /// least recently used ones beyond `max - 1`.
    fn open(&self, token_id: &str, now: Instant, idle: Duration, max: usize) -> (String, String) {
        let (session_id, csrf_token) = (random_token(), random_token());
        let mut entries = self.lock();
        entries.retain(|_, entry| now.saturating_duration_since(entry.last_used) < idle);
        while entries.len() >= max.max(1) {
            let Some(oldest) = entries.iter().min_by_key(|(_, entry)| entry.last_used).map(|(id, _)| id.clone()) else { break };
            entries.remove(&oldest);
        }
        entries.insert(session_id.clone(), Entry { token_id: token_id.to_owned(), csrf_token: csrf_token.clone(), last_used: now });
        (session_id, csrf_token)
    }

    /// The token id and CSRF token of a live session, marking it used at `now`; an
    /// expired session is removed.
    fn touch(&self, session_id: &str, now: Instant, idle: Duration) -> Option<(String, String)> {
        let mut entries = self.lock();
        let entry = entries.get_mut(session_id)?;
        if now.saturating_duration_since(entry.last_used) >= idle {
            entries.remove(session_id);
            return None;
        }
        entry.last_used = now;
        Some((entry.token_id.clone(), entry.csrf_token.clone()))
    }

    fn remove(&self, session_id: &str) -> bool {
        self.lock().remove(session_id).is_some()
    }

    /// How many sessions are held (expired ones not yet swept included).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no session is held.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// 32 random bytes, URL-safe base64 without padding.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    // The system's random source does not fail on any platform Diplo runs on; were it to,
    // an all-zero id would be guessable, so stop rather than hand it out.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        panic!("the system random source failed");
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `a` equals `b`, in time that depends on their lengths only.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl ControlPlane {
    /// Logs into the dashboard with an API token: the same verification as a bearer
    /// token; opens a session for it.
    pub fn dashboard_login(&self, token: &str) -> ServiceResult<DashboardLogin> {
        let token = token.trim();
        if token.is_empty() {
            return Err(ServiceError::invalid("token", "an API token is required"));
        }
        let caller = self.authenticate_bearer(token)?;
        let token_id = token.parse::<ApiToken>().map_err(|_| ServiceError::Unauthenticated("malformed bearer token".into()))?.id;
        let (session_id, csrf_token) =
            self.dashboard_sessions.open(&token_id, Instant::now(), self.config.dashboard_session_idle, MAX_SESSIONS);
        tracing::info!(actor = %caller.actor(), "dashboard login");
        Ok(DashboardLogin { session_id, session: DashboardSession { caller, csrf_token } })
    }

    /// The session a cookie names, if it is live and its API token is still valid.
    pub fn dashboard_session(&self, session_id: &str) -> ServiceResult<DashboardSession> {
        let expired = || ServiceError::Unauthenticated("the dashboard session expired or was logged out; log in again".into());
        let (token_id, csrf_token) =
            self.dashboard_sessions.touch(session_id, Instant::now(), self.config.dashboard_session_idle).ok_or_else(expired)?;
        match self.api_tokens.caller_of(&token_id, Utc::now()) {
            Ok(caller) => Ok(DashboardSession { caller, csrf_token }),
            Err(err) => {
                self.dashboard_sessions.remove(session_id);
                Err(err)
            }
        }
    }

    /// Ends the session a cookie names (nothing when it is not live).
    pub fn dashboard_logout(&self, session_id: &str) -> bool {
        self.dashboard_sessions.remove(session_id)
    }

    /// Whether the REST gateway is served over HTTPS (session cookies are then `Secure`).
    pub fn rest_over_tls(&self) -> bool {
        self.config.rest_tls.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_when_idle_and_stay_bounded() {
        let sessions = DashboardSessions::default();
        let start = Instant::now();
        let idle = Duration::from_secs(60);
        let (a, csrf_a) = sessions.open("tok-a", start, idle, 2);
        assert_eq!(sessions.touch(&a, start + Duration::from_secs(59), idle), Some(("tok-a".to_owned(), csrf_a.clone())));
        // Used at 59 s: still alive at 118 s, gone at 119 s.
        assert!(sessions.touch(&a, start + Duration::from_secs(118), idle).is_some());
        assert!(sessions.touch(&a, start + Duration::from_secs(178), idle).is_none());
        assert!(sessions.is_empty(), "an expired session is removed");

        let (b, _) = sessions.open("tok-b", start, idle, 2);
        let (c, _) = sessions.open("tok-c", start + Duration::from_secs(1), idle, 2);
        assert!(sessions.touch(&b, start + Duration::from_secs(2), idle).is_some());
        // A third session drops the least recently used (c), not b, which was just used.
        let (d, _) = sessions.open("tok-d", start + Duration::from_secs(3), idle, 2);
        assert_eq!(sessions.len(), 2);
        assert!(sessions.touch(&c, start + Duration::from_secs(4), idle).is_none());
        assert!(sessions.touch(&b, start + Duration::from_secs(4), idle).is_some());
        assert!(sessions.touch(&d, start + Duration::from_secs(4), idle).is_some());
        assert!(sessions.remove(&d) && !sessions.remove(&d));
    }

    #[test]
    fn ids_and_csrf_tokens_are_random_and_distinct() {
        let sessions = DashboardSessions::default();
        let (id, csrf) = sessions.open("tok", Instant::now(), Duration::from_secs(60), 10);
        let (id2, csrf2) = sessions.open("tok", Instant::now(), Duration::from_secs(60), 10);
        assert_eq!(id.len(), 43);
        assert!(id != csrf && id != id2 && csrf != csrf2);
        assert!(!id.contains("tok"));
    }

    #[test]
    fn constant_time_eq_compares_bytes() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
