//! Image registries: the cluster registry and the insecure (plain-HTTP) registries come
//! from the command line; credentials per registry are set by admins and stored. The
//! merged settings go to every agent over its session (after the welcome, and again
//! whenever credentials change) and are used by the control plane's own image-platform
//! look-ups. A password never leaves the control plane except to agents: listings show
//! the registry, the user name and when it was set; events and logs name the registry
//! and the user name only.

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
}

impl RegistrySettings {
    pub(crate) fn new(config: RegistryConfig) -> Self {
        RegistrySettings { current: RwLock::new(Arc::new(config)) }
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

/// The settings from the flags and the stored credentials.
pub(crate) async fn load(config: &Config, store: &dyn Store) -> ServiceResult<RegistryConfig> {
    let mut registry =
        RegistryConfig { insecure: config.insecure_registries.clone(), cluster: config.registry.clone(), ..Default::default() };
    for record in store.list_registry_credentials().await? {
        registry.credentials.insert(record.registry, RegistryCredential { username: record.username, password: record.password });
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
        let record = RegistryCredentialRecord {
            registry: registry.clone(),
            username: request.username.clone(),
            password: request.password,
            updated_at: Utc::now(),
        };
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
        let config = self.registry_settings.set(load(&self.config, self.store.as_ref()).await?);
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
