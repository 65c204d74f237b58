//! Join tokens and API bearer tokens: creation (the whole token is shown once, only a
//! hash of its secret is stored), listing (never the secrets), revocation, and bearer
//! authentication from an in-memory cache of the API token records, so that a request
//! never waits on the database to learn who is calling.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diplo_api::token::{ApiToken, JoinToken, hash_secret};

use super::ControlPlane;
use crate::auth::Caller;
use crate::error::{ServiceError, ServiceResult};
use crate::model::{ApiTokenRecord, JoinTokenRecord, Role};

/// Default lifetime of a join token.
pub const DEFAULT_JOIN_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// Longest lifetime a token may be given.
const MAX_TOKEN_TTL_DAYS: i64 = 3650;

/// A freshly created join token: the whole token is shown once.
#[derive(Clone)]
pub struct CreatedJoinToken {
    /// The token to hand to `diplo-agent --token`.
    pub token: String,
    /// Its stored record.
    pub record: JoinTokenRecord,
}

// The token carries its secret: debug output shows the record only.
impl std::fmt::Debug for CreatedJoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedJoinToken").field("record", &self.record).finish_non_exhaustive()
    }
}

/// What an API token is for, as an admin asks for it.
#[derive(Debug, Clone)]
pub struct NewApiToken {
    /// Who or what it is for (shown in events as the actor); empty: `token-<id>`.
    pub name: String,
    /// `admin`, `deployer` or `viewer`, as typed; errors name the `role` field.
    pub role: String,
    /// Lifetime; `None`: it never expires.
    pub ttl: Option<Duration>,
}

/// A freshly created API token: the whole token is shown once.
#[derive(Clone)]
pub struct CreatedApiToken {
    /// `dpl_<id>.<secret>`, for `Authorization: Bearer`.
    pub token: String,
    /// Its stored record.
    pub record: ApiTokenRecord,
}

// The token carries its secret: debug output shows the record only.
impl std::fmt::Debug for CreatedApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedApiToken").field("record", &self.record).finish_non_exhaustive()
    }
}

/// Every API token record by id, loaded at start and updated on create and revoke.
#[derive(Debug, Default)]
pub struct ApiTokenCache {
    records: RwLock<HashMap<String, ApiTokenRecord>>,
}

impl ApiTokenCache {
    /// A cache holding `records`.
    pub fn new(records: Vec<ApiTokenRecord>) -> Self {
        ApiTokenCache { records: RwLock::new(records.into_iter().map(|r| (r.id.clone(), r)).collect()) }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, ApiTokenRecord>> {
        // A poisoned lock only means another thread panicked mid-update of plain data.
        self.records.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, ApiTokenRecord>> {
        self.records.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn insert(&self, record: ApiTokenRecord) {
        self.write().insert(record.id.clone(), record);
    }

    fn revoke(&self, id: &str) {
        if let Some(record) = self.write().get_mut(id) {
            record.revoked = true;
        }
    }

    /// Resolves a bearer token at `now`; revoked, expired and unknown tokens are
    /// refused with the reason.
    pub fn authenticate(&self, bearer: &str, now: DateTime<Utc>) -> ServiceResult<Caller> {
        let token: ApiToken = bearer.parse().map_err(|_| ServiceError::Unauthenticated("malformed bearer token".into()))?;
        let records = self.read();
        let record = records
            .get(&token.id)
            .filter(|record| record.secret_hash == hash_secret(&token.secret))
            .ok_or_else(|| ServiceError::Unauthenticated("bearer token not recognized".into()))?;
        usable_caller(record, now)
    }

    /// The caller of the API token `id` at `now` (a dashboard session holds the id of the
    /// token it was opened with, not its secret); revoked, expired and unknown tokens are
    /// refused as [`ApiTokenCache::authenticate`] refuses them.
    pub fn caller_of(&self, id: &str, now: DateTime<Utc>) -> ServiceResult<Caller> {
        let records = self.read();
        let record = records.get(id).ok_or_else(|| ServiceError::Unauthenticated("bearer token not recognized".into()))?;
        usable_caller(record, now)
    }
}

/// The caller an API token record stands for, unless it is revoked or expired at `now`.
fn usable_caller(record: &ApiTokenRecord, now: DateTime<Utc>) -> ServiceResult<Caller> {
    if record.revoked {
        return Err(ServiceError::Unauthenticated("bearer token was revoked".into()));
    }
    if record.expires_at.is_some_and(|at| at <= now) {
        return Err(ServiceError::Unauthenticated("bearer token expired".into()));
    }
    Ok(Caller::Operator { name: record.name.clone(), role: record.role })
}

impl ControlPlane {
    // ---- join tokens ----

    /// Creates a join token.
    pub async fn create_join_token(
        &self,
        caller: &Caller,
        ttl: Option<Duration>,
        single_use: bool,
        labels: BTreeMap<String, String>,
    ) -> ServiceResult<CreatedJoinToken> {
        caller.require_operator(Role::Admin)?;
        let ttl = token_ttl(ttl.unwrap_or(DEFAULT_JOIN_TOKEN_TTL))?;
        for key in labels.keys() {
            if key.is_empty() || key.len() > 63 {
                return Err(ServiceError::invalid("labels", format!("label key {key:?} must be 1 to 63 characters")));
            }
        }
        let token = JoinToken::generate(&self.pki.ca.fingerprint());
        let now = Utc::now();
        let record = JoinTokenRecord {
            id: token.id.clone(),
            secret_hash: hash_secret(&token.secret),
            created_at: now,
            expires_at: now + ttl,
            single_use,
            uses: 0,
            revoked: false,
            labels,
        };
        self.store.insert_join_token(&record).await?;
        self.emit("join_token.created", &caller.actor(), &record.id, format!("join token {} created", record.id)).await;
        Ok(CreatedJoinToken { token: token.to_string(), record })
    }

    /// Every join token (never their secrets).
    pub async fn list_join_tokens(&self, caller: &Caller) -> ServiceResult<Vec<JoinTokenRecord>> {
        caller.require_operator(Role::Admin)?;
        Ok(self.store.list_join_tokens().await?)
    }

    /// Revokes a join token.
    pub async fn revoke_join_token(&self, caller: &Caller, id: &str) -> ServiceResult<()> {
        caller.require_operator(Role::Admin)?;
        if !self.store.revoke_join_token(id).await? {
            return Err(ServiceError::NotFound(format!("join token {id:?} not found")));
        }
        self.emit("join_token.revoked", &caller.actor(), id, format!("join token {id} revoked")).await;
        Ok(())
    }

    // ---- API tokens ----

    /// Creates an API bearer token with a role (admin only); the whole token is in
    /// the answer and nowhere else.
    pub async fn create_api_token(&self, caller: &Caller, request: NewApiToken) -> ServiceResult<CreatedApiToken> {
        caller.require_operator(Role::Admin)?;
        let role: Role = request.role.trim().parse().map_err(|e: String| ServiceError::invalid("role", e))?;
        let ttl = request.ttl.map(token_ttl).transpose()?;
        self.issue_api_token(&caller.actor(), request.name.trim(), role, ttl).await
    }

    /// Creates an API token without a caller check, recorded as done by `actor` (for
    /// the admin token written at start-up).
    pub(crate) async fn issue_api_token(
        &self,
        actor: &str,
        name: &str,
        role: Role,
        ttl: Option<chrono::Duration>,
    ) -> ServiceResult<CreatedApiToken> {
        if name.len() > 63 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c)) {
            return Err(ServiceError::invalid("name", format!("{name:?} must be up to 63 letters, digits, '-', '_', '.' or '@'")));
        }
        let token = ApiToken::generate();
        let now = Utc::now();
        let record = ApiTokenRecord {
            id: token.id.clone(),
            secret_hash: hash_secret(&token.secret),
            name: if name.is_empty() { format!("token-{}", token.id) } else { name.to_owned() },
            role,
            created_at: now,
            expires_at: ttl.map(|ttl| now + ttl),
            revoked: false,
        };
        self.store.insert_api_token(&record).await?;
        self.api_tokens.insert(record.clone());
        let expiry = record.expires_at.map_or_else(|| "never expires".to_owned(), |at| format!("expires {}", at.to_rfc3339()));
        let message = format!("API token {} ({}, role {}) created; {expiry}", record.id, record.name, record.role);
        self.emit("api_token.created", actor, &record.id, message).await;
        Ok(CreatedApiToken { token: token.to_string(), record })
    }

    /// Every API token (the adapters show no secret hash), newest first.
    pub async fn list_api_tokens(&self, caller: &Caller) -> ServiceResult<Vec<ApiTokenRecord>> {
        caller.require_operator(Role::Admin)?;
        Ok(self.store.list_api_tokens().await?)
    }

    /// Revokes an API token: it is refused from the next request on.
    pub async fn revoke_api_token(&self, caller: &Caller, id: &str) -> ServiceResult<()> {
        caller.require_operator(Role::Admin)?;
        if id.trim().is_empty() {
            return Err(ServiceError::invalid("id", "an API token id is required"));
        }
        if !self.store.revoke_api_token(id).await? {
            return Err(ServiceError::NotFound(format!("API token {id:?} not found")));
        }
        self.api_tokens.revoke(id);
        self.emit("api_token.revoked", &caller.actor(), id, format!("API token {id} revoked")).await;
        Ok(())
    }

    /// Resolves a bearer token to its caller from the in-memory cache (no database
    /// access); revoked, expired and unknown tokens are refused with the reason.
    pub fn authenticate_bearer(&self, bearer: &str) -> ServiceResult<Caller> {
        self.api_tokens.authenticate(bearer, Utc::now())
    }
}

/// A token lifetime between 1 second and 10 years.
fn token_ttl(ttl: Duration) -> ServiceResult<chrono::Duration> {
    chrono::Duration::from_std(ttl)
        .ok()
        .filter(|ttl| *ttl >= chrono::Duration::seconds(1) && *ttl <= chrono::Duration::days(MAX_TOKEN_TTL_DAYS))
        .ok_or_else(|| ServiceError::invalid("ttl", "must be between 1 second and 10 years"))
}

/// Why a stored join token can no longer be used at `now`, if it cannot.
pub(super) fn join_token_usable(record: &JoinTokenRecord, now: DateTime<Utc>) -> ServiceResult<()> {
    let refuse = |why: String| Err(ServiceError::Unauthenticated(why));
    if record.revoked {
        return refuse(format!("join token {} was revoked", record.id));
    }
    if record.expires_at <= now {
        return refuse(format!("join token {} expired at {}", record.id, record.expires_at.to_rfc3339()));
    }
    if record.single_use && record.uses > 0 {
        return refuse(format!("join token {} was single-use and has already been used", record.id));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_tokens_are_refused_with_their_reason() {
        let now = Utc::now();
        let token = JoinTokenRecord {
            id: "abc".into(),
            secret_hash: String::new(),
            created_at: now,
            expires_at: now + chrono::Duration::hours(1),
            single_use: true,
            uses: 0,
            revoked: false,
            labels: BTreeMap::new(),
        };
        assert!(join_token_usable(&token, now).is_ok());
        let used = JoinTokenRecord { uses: 1, ..token.clone() };
        assert!(join_token_usable(&used, now).unwrap_err().to_string().contains("already been used"));
        let revoked = JoinTokenRecord { revoked: true, ..token.clone() };
        assert!(join_token_usable(&revoked, now).unwrap_err().to_string().contains("revoked"));
        let later = now + chrono::Duration::hours(2);
        assert!(join_token_usable(&token, later).unwrap_err().to_string().contains("expired"));
    }

    fn record(token: &ApiToken, role: Role, expires_at: Option<DateTime<Utc>>) -> ApiTokenRecord {
        ApiTokenRecord {
            id: token.id.clone(),
            secret_hash: hash_secret(&token.secret),
            name: "ci".into(),
            role,
            created_at: Utc::now(),
            expires_at,
            revoked: false,
        }
    }

    #[test]
    fn cached_bearer_tokens_are_checked_and_refused_with_their_reason() {
        let now = Utc::now();
        let live = ApiToken::generate();
        let expiring = ApiToken::generate();
        let cache = ApiTokenCache::new(vec![
            record(&live, Role::Viewer, None),
            record(&expiring, Role::Deployer, Some(now + chrono::Duration::minutes(1))),
        ]);
        let caller = cache.authenticate(&live.to_string(), now).expect("a live token");
        assert_eq!(caller, Caller::Operator { name: "ci".into(), role: Role::Viewer });
        assert!(cache.authenticate(&expiring.to_string(), now).is_ok());

        let later = now + chrono::Duration::minutes(2);
        let err = cache.authenticate(&expiring.to_string(), later).unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");

        let wrong_secret = ApiToken { id: live.id.clone(), secret: "x".repeat(32) };
        let err = cache.authenticate(&wrong_secret.to_string(), now).unwrap_err();
        assert!(err.to_string().contains("not recognized"), "{err}");
        let err = cache.authenticate("garbage", now).unwrap_err();
        assert!(err.to_string().contains("malformed"), "{err}");

        cache.revoke(&live.id);
        let err = cache.authenticate(&live.to_string(), now).unwrap_err();
        assert!(matches!(err, ServiceError::Unauthenticated(_)) && err.to_string().contains("revoked"), "{err}");

        let fresh = ApiToken::generate();
        assert!(cache.authenticate(&fresh.to_string(), now).is_err());
        cache.insert(record(&fresh, Role::Admin, None));
        assert!(cache.authenticate(&fresh.to_string(), now).is_ok());
    }

    #[test]
    fn token_lifetimes_are_bounded() {
        assert!(token_ttl(Duration::from_secs(1)).is_ok());
        assert!(token_ttl(Duration::from_millis(10)).unwrap_err().to_string().starts_with("invalid ttl"));
        assert!(token_ttl(Duration::from_secs(11 * 365 * 24 * 3600)).is_err());
    }
}
