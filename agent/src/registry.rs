//! The registry settings every driver reads at pull time: the agent's own (its
//! `--insecure-registry` list) merged with what the control plane sends over the
//! session (cluster registry, insecure registries, credentials), replaced whole each
//! time the control plane sends them.

use std::sync::{Arc, PoisonError, RwLock};

use diplo_api::registry::RegistryConfig;

/// One shared, updatable [`RegistryConfig`]; clones share it.
#[derive(Clone, Default)]
pub struct SharedRegistry {
    inner: Arc<RwLock<State>>,
}

#[derive(Default)]
struct State {
    /// The agent's own settings (command line).
    local: RegistryConfig,
    /// The merge of `local` and the control plane's last settings.
    current: RegistryConfig,
}

impl SharedRegistry {
    /// Settings that start as the agent's own `local` ones.
    pub fn new(local: RegistryConfig) -> Self {
        SharedRegistry { inner: Arc::new(RwLock::new(State { current: local.clone(), local })) }
    }

    /// The settings in force now (for a pull or a build).
    pub fn current(&self) -> RegistryConfig {
        self.inner.read().unwrap_or_else(PoisonError::into_inner).current.clone()
    }

    /// Replaces the control plane's part by `learnt`: insecure registries are the union
    /// of both, the cluster registry and credentials are the control plane's where it
    /// names them, the agent's own otherwise.
    pub fn apply(&self, learnt: RegistryConfig) {
        let mut state = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        state.current = merge(&state.local, learnt);
    }
}

/// `local` overlaid by `learnt` (see [`SharedRegistry::apply`]).
fn merge(local: &RegistryConfig, learnt: RegistryConfig) -> RegistryConfig {
    let mut merged = local.clone();
    for registry in learnt.insecure {
        if !merged.insecure.contains(&registry) {
            merged.insecure.push(registry);
        }
    }
    if learnt.cluster.is_some() {
        merged.cluster = learnt.cluster;
    }
    merged.credentials.extend(learnt.credentials);
    merged
}

impl From<RegistryConfig> for SharedRegistry {
    fn from(local: RegistryConfig) -> Self {
        SharedRegistry::new(local)
    }
}

impl std::fmt::Debug for SharedRegistry {
    /// The current settings, without secrets (see [`RegistryConfig`]'s `Debug`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.current().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diplo_api::registry::RegistryCredential;

    fn credential(user: &str) -> RegistryCredential {
        RegistryCredential { username: user.to_owned(), password: format!("{user}-secret") }
    }

    #[test]
    fn learnt_settings_merge_with_the_agents_own_and_replace_the_previous_ones() {
        let mut local = RegistryConfig { insecure: vec!["lan:5000".to_owned()], ..Default::default() };
        local.credentials.insert("own:5000".to_owned(), credential("own"));
        let shared = SharedRegistry::new(local.clone());
        assert_eq!(shared.current(), local);

        let mut learnt = RegistryConfig {
            insecure: vec!["lan:5000".to_owned(), "cp:5000".to_owned()],
            cluster: Some("cp:5000".to_owned()),
            ..Default::default()
        };
        learnt.credentials.insert("cp:5000".to_owned(), credential("cp"));
        let reader = shared.clone();
        shared.apply(learnt);
        let now = reader.current();
        assert_eq!(now.insecure, vec!["lan:5000".to_owned(), "cp:5000".to_owned()]);
        assert_eq!(now.cluster.as_deref(), Some("cp:5000"));
        assert_eq!(now.credential("cp:5000"), Some(&credential("cp")));
        assert_eq!(now.credential("own:5000"), Some(&credential("own")));

        // A logout on the control plane: the next settings lack the credential.
        shared.apply(RegistryConfig::default());
        assert_eq!(reader.current(), local);
        assert!(!format!("{shared:?}").contains("secret"));
    }
}
