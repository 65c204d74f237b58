//! Image registries: the cluster registry and the insecure (plain-HTTP) registries come
//! from the command line; credentials per registry are set by admins and stored. The
//! merged settings go to every agent over its session (after the welcome, and again
//! whenever credentials change) and are used by the control plane's own image-platform
//! look-ups. A password never leaves the control plane except to agents: listings show
//! the registry, the user name and when it was set; events and logs name the registry
//! and the user name only. In the database a password is sealed (ChaCha20-Poly1305,
//! bound to its registry's name) under a key kept in the data directory
//! ([`KEY_FILE`], 0600, created on first start): a copy of the database alone does not
//! reveal it.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use diplo_api::registry::{MAX_PASSWORD_BYTES, MAX_USERNAME_BYTES, RegistryConfig, RegistryCredential, validate_registry_name};
use serde::Serialize;

use super::{ControlPlane, ServiceResult};
use crate::auth::Caller;
use crate::config::Config;
use crate::error::ServiceError;
use crate::model::Role;
use crate::model::{RegistryCredentialRecord, SessionMessage};
use crate::store::Store;

/// How long sending new settings down one session may wait for room.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// The settings in force, replaced whole on every change.
pub(crate) struct RegistrySettings {
    current: RwLock<Arc<RegistryConfig>>,
    seal: PasswordSeal,
}

impl RegistrySettings {
    pub(crate) fn new(config: RegistryConfig, seal: PasswordSeal) -> Self {
        RegistrySettings { current: RwLock::new(Arc::new(config)), seal }
    }

    fn get(&self) -> Arc<RegistryConfig> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn set(&self, config: RegistryConfig) -> Arc<RegistryConfig> {
        let config = Arc::new(config);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = config.clone();
        config
    }
}

/// A registry login as listed: never the password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RegistryLogin {
    /// `host[:port]`.
    pub registry: String,
    /// User name.
    pub username: String,
    /// When it was last set.
    pub updated_at: DateTime<Utc>,
}

/// What `registry login` asks for. `Debug` never shows the password.
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryLoginRequest {
    /// `host[:port]`.
    #[serde(default)]
    pub registry: String,
    /// User name.
    #[serde(default)]
    pub username: String,
    /// Password or token.
    #[serde(default)]
    pub password: String,
}

impl std::fmt::Debug for RegistryLoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryLoginRequest")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The key file, in the data directory, that seals stored registry passwords.
pub const KEY_FILE: &str = "registry-credentials.key";
/// How a sealed password starts in the database.
const SEALED_PREFIX: &str = "sealed:v1:";

/// Seals and opens registry passwords with the data directory's key.
pub(crate) struct PasswordSeal {
    key: ring::aead::LessSafeKey,
}

impl PasswordSeal {
    /// The key in `data_dir`'s [`KEY_FILE`], created (32 random bytes, 0600) when
    /// missing.
    pub(crate) fn open_or_create(data_dir: &std::path::Path) -> ServiceResult<Self> {
        use base64::Engine as _;
        let path = data_dir.join(KEY_FILE);
        let engine = base64::engine::general_purpose::STANDARD;
        let bytes = match std::fs::read_to_string(&path) {
            Ok(text) => {
                engine.decode(text.trim()).map_err(|_| ServiceError::Internal(format!("{} does not hold a base64 key", path.display())))?
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
                    .map_err(|_| ServiceError::Internal("no randomness for the registry credential key".into()))?;
                diplo_api::files::write_private(&path, &format!("{}\n", engine.encode(key)))
                    .map_err(|e| ServiceError::Internal(format!("cannot write {}: {e}", path.display())))?;
                key.to_vec()
            }
            Err(err) => return Err(ServiceError::Internal(format!("cannot read {}: {err}", path.display()))),
        };
        let key = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &bytes)
            .map_err(|_| ServiceError::Internal(format!("{} does not hold a 32-byte key", path.display())))?;
        Ok(PasswordSeal { key: ring::aead::LessSafeKey::new(key) })
    }

    /// `password` sealed for `registry` (which it is bound to).
    fn seal(&self, registry: &str, password: &str) -> ServiceResult<String> {
        use base64::Engine as _;
        let mut nonce = [0u8; ring::aead::NONCE_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
            .map_err(|_| ServiceError::Internal("no randomness to seal a password".into()))?;
        let mut sealed = password.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(ring::aead::Nonce::assume_unique_for_key(nonce), ring::aead::Aad::from(registry), &mut sealed)
            .map_err(|_| ServiceError::Internal("cannot seal a password".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(format!("{SEALED_PREFIX}{}", base64::engine::general_purpose::STANDARD.encode(out)))
    }

    /// The password `stored` for `registry`; `None` when it was not sealed for it with
    /// this key.
    fn open(&self, registry: &str, stored: &str) -> Option<String> {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD.decode(stored.strip_prefix(SEALED_PREFIX)?).ok()?;
        if bytes.len() < ring::aead::NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = bytes.split_at(ring::aead::NONCE_LEN);
        let nonce = ring::aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut sealed = sealed.to_vec();
        let plain = self.key.open_in_place(nonce, ring::aead::Aad::from(registry), &mut sealed).ok()?;
        String::from_utf8(plain.to_vec()).ok()
    }
}

/// The settings from the flags and the stored credentials (a credential that cannot be
/// opened with `seal` is left out and logged).
pub(crate) async fn load(config: &Config, store: &dyn Store, seal: &PasswordSeal) -> ServiceResult<RegistryConfig> {
    let mut registry =
        RegistryConfig { insecure: config.insecure_registries.clone(), cluster: config.registry.clone(), ..Default::default() };
    for record in store.list_registry_credentials().await? {
        let Some(password) = seal.open(&record.registry, &record.password) else {
            tracing::warn!(registry = %record.registry, key_file = KEY_FILE, "a stored registry credential cannot be opened with this key; log in again");
            continue;
        };
        registry.credentials.insert(record.registry, RegistryCredential { username: record.username, password });
    }
    Ok(registry)
}

/// Checks a registry name from a request (`field` names it in the error).
pub fn check_registry_name(field: &'static str, name: &str) -> ServiceResult<()> {
    validate_registry_name(field, name).map(drop).map_err(|err| ServiceError::invalid(err.field, err.message))
}

impl ControlPlane {
    /// The registry settings in force (credentials included: for agents and look-ups,
    /// never for operators).
    pub fn registry_config(&self) -> Arc<RegistryConfig> {
        self.registry_settings.get()
    }

    /// The message that hands the current settings to an agent.
    pub(crate) fn registry_message(&self) -> SessionMessage {
        SessionMessage::Registry(self.registry_config())
    }

    /// Stores the credential for a registry (admin only); `true` when it is new. The
    /// settings then go to every connected agent.
    pub async fn registry_login(&self, caller: &Caller, request: RegistryLoginRequest) -> ServiceResult<bool> {
        caller.require_operator(Role::Admin)?;
        let registry = request.registry.trim().to_owned();
        check_registry_name("registry", &registry)?;
        if request.username.is_empty() || request.username.len() > MAX_USERNAME_BYTES {
            return Err(ServiceError::invalid("username", format!("must be 1 to {MAX_USERNAME_BYTES} bytes")));
        }
        if request.username.chars().any(|c| c.is_control() || c == ':') {
            return Err(ServiceError::invalid("username", "must not contain ':' or control characters"));
        }
        if request.password.is_empty() || request.password.len() > MAX_PASSWORD_BYTES {
            return Err(ServiceError::invalid("password", format!("must be 1 to {MAX_PASSWORD_BYTES} bytes")));
        }
        if request.password.chars().any(char::is_control) {
            return Err(ServiceError::invalid("password", "must not contain control characters"));
        }
        let password = self.registry_settings.seal.seal(&registry, &request.password)?;
        let record =
            RegistryCredentialRecord { registry: registry.clone(), username: request.username.clone(), password, updated_at: Utc::now() };
        let created = self.store.set_registry_credential(&record).await?;
        tracing::info!(registry = %registry, username = %request.username, actor = %caller.actor(), "registry credential set");
        self.emit("registry.login", &caller.actor(), &registry, format!("credential for {registry} set (user {})", request.username)).await;
        self.registry_changed().await?;
        Ok(created)
    }

    /// Deletes the credential for `registry` (admin only). The settings then go to
    /// every connected agent.
    pub async fn registry_logout(&self, caller: &Caller, registry: &str) -> ServiceResult<()> {
        caller.require_operator(Role::Admin)?;
        check_registry_name("registry", registry)?;
        if !self.store.delete_registry_credential(registry).await? {
            return Err(ServiceError::NotFound(format!("no credential stored for registry {registry}")));
        }
        tracing::info!(registry = %registry, actor = %caller.actor(), "registry credential removed");
        self.emit("registry.logout", &caller.actor(), registry, format!("credential for {registry} removed")).await;
        self.registry_changed().await
    }

    /// The stored registry logins, without passwords (admins and deployers).
    pub async fn list_registry_logins(&self, caller: &Caller) -> ServiceResult<Vec<RegistryLogin>> {
        caller.require_operator(Role::Deployer)?;
        Ok(self
            .store
            .list_registry_credentials()
            .await?
            .into_iter()
            .map(|record| RegistryLogin { registry: record.registry, username: record.username, updated_at: record.updated_at })
            .collect())
    }

    /// Reloads the settings, hands them to the image-platform look-ups and sends them
    /// down every open session.
    async fn registry_changed(&self) -> ServiceResult<()> {
        let config = self.registry_settings.set(load(&self.config, self.store.as_ref(), &self.registry_settings.seal).await?);
        self.image_platforms.set_registry_config(RegistryConfig::clone(&config));
        for downstream in self.nodes.sessions() {
            let message = SessionMessage::Registry(config.clone());
            if let Err(tokio::sync::mpsc::error::TrySendError::Full(message)) = downstream.try_send(message) {
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(SEND_TIMEOUT, downstream.send(message)).await;
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_request_never_shows_its_password() {
        let request = RegistryLoginRequest { registry: "r:5000".into(), username: "u".into(), password: "hunter2-SECRET".into() };
        assert!(!format!("{request:?}").contains("hunter2"));
        let record = RegistryCredentialRecord {
            registry: "r".into(),
            username: "u".into(),
            password: "hunter2-SECRET".into(),
            updated_at: Utc::now(),
        };
        assert!(!format!("{record:?}").contains("hunter2"));
    }

    #[test]
    fn passwords_are_sealed_under_the_data_directory_key_and_bound_to_their_registry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let seal = PasswordSeal::open_or_create(dir.path()).expect("key created");
        let key = dir.path().join(KEY_FILE);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key).expect("key file").permissions().mode() & 0o777, 0o600);
        let sealed = seal.seal("r.example:5000", "hunter2-SECRET").expect("sealed");
        assert!(sealed.starts_with(SEALED_PREFIX) && !sealed.contains("hunter2"), "{sealed}");
        assert_ne!(sealed, seal.seal("r.example:5000", "hunter2-SECRET").expect("sealed"), "a fresh nonce each time");
        assert_eq!(seal.open("r.example:5000", &sealed).as_deref(), Some("hunter2-SECRET"));
        // Moved to another registry's row, or opened with another key: nothing.
        assert_eq!(seal.open("evil.example:5000", &sealed), None);
        let again = PasswordSeal::open_or_create(dir.path()).expect("key read back");
        assert_eq!(again.open("r.example:5000", &sealed).as_deref(), Some("hunter2-SECRET"));
        let other = tempfile::tempdir().expect("tempdir");
        assert_eq!(PasswordSeal::open_or_create(other.path()).expect("another key").open("r.example:5000", &sealed), None);
        assert_eq!(seal.open("r.example:5000", "hunter2-SECRET"), None, "plain text is not a sealed password");
    }

    #[test]
    fn registry_names_are_checked_naming_the_field() {
        assert!(check_registry_name("registry", "127.0.0.1:5000").is_ok());
        for bad in ["", "http://r", "r/x", "r:99999"] {
            match check_registry_name("registry", bad) {
                Err(ServiceError::InvalidArgument { field: "registry", .. }) => {}
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
