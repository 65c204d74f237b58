//! The control plane's view of nodes, deployments and instances, kept in memory and
//! written through to a [`Store`]: reads of those three never reach the database, and
//! every write goes to the database first, then to memory, only when it succeeded. Valid
//! because one control plane is the only writer of its database (see the writer lock).
//!
//! Answers are the same as the database's, order included (the store conformance suite
//! runs on this wrapper too): timestamps are kept at the database's precision (whole
//! milliseconds), nodes and deployments ordered by name, instances by creation time
//! then id.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diplo_api::fingerprint::Fingerprint;

use super::{Store, StoreResult};
use crate::model::{
    ApiTokenRecord, DeploymentRecord, DeploymentSpec, DeploymentStatus, EventRecord, InstanceRecord, JoinTokenRecord, NewEvent, NodeRecord,
    NodeStatus, NodeStatusChange,
};

/// A [`Store`] with nodes, deployments and instances served from memory.
pub struct CachedStore {
    inner: Arc<dyn Store>,
    state: RwLock<State>,
    /// Held across a write to the database and its copy in memory, so that two writes
    /// of the same record land in memory in the order they landed in the database.
    writes: tokio::sync::Mutex<()>,
    /// Bumped with the memory lock held for writing: see [`Store::generation`].
    generation: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct State {
    nodes: HashMap<String, NodeRecord>,
    deployments: HashMap<String, DeploymentRecord>,
    instances: HashMap<String, InstanceRecord>,
}

/// A timestamp at the precision the database keeps.
fn stored(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

fn stored_instance(instance: &InstanceRecord) -> InstanceRecord {
    InstanceRecord { created_at: stored(instance.created_at), updated_at: stored(instance.updated_at), ..instance.clone() }
}

fn stored_node(node: &NodeRecord) -> NodeRecord {
    NodeRecord { joined_at: stored(node.joined_at), last_seen_at: stored(node.last_seen_at), ..node.clone() }
}

impl CachedStore {
    /// Loads nodes, deployments and instances from `inner` and serves them from memory
    /// from now on.
    pub async fn load(inner: Arc<dyn Store>) -> StoreResult<Arc<Self>> {
        let state = State {
            nodes: inner.list_nodes().await?.into_iter().map(|n| (n.id.clone(), n)).collect(),
            deployments: inner.list_deployments().await?.into_iter().map(|d| (d.id.clone(), d)).collect(),
            instances: inner.list_instances(None).await?.into_iter().map(|i| (i.id.clone(), i)).collect(),
        };
        Ok(Arc::new(CachedStore {
            inner,
            state: RwLock::new(state),
            writes: tokio::sync::Mutex::new(()),
            generation: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The memory lock for writing. The generation moves while it is held, so a reader
    /// that saw the new generation can only read memory once this write is done.
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        let state = self.state.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        state
    }

    /// Reads one deployment back from the database after a write, so memory holds
    /// exactly what was stored.
    async fn refresh_deployment(&self, id: &str) -> StoreResult<()> {
        let fresh = self.inner.get_deployment(id).await?;
        let mut state = self.write();
        match fresh {
            Some(deployment) if deployment.id == id => {
                state.deployments.insert(deployment.id.clone(), deployment);
            }
            _ => {
                state.deployments.remove(id);
                state.instances.retain(|_, i| i.deployment_id != id);
            }
        }
        Ok(())
    }
}

/// Finds a record by id or, failing that, by name, as the database does.
fn by_id_or_name<'a, T>(map: &'a HashMap<String, T>, id_or_name: &str, name: impl Fn(&T) -> &str) -> Option<&'a T> {
    map.get(id_or_name).or_else(|| map.values().find(|v| name(v) == id_or_name))
}

#[async_trait]
impl Store for CachedStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn generation(&self) -> Option<u64> {
        Some(self.generation.load(std::sync::atomic::Ordering::Acquire))
    }

    // ---- nodes ----

    async fn insert_node(&self, node: &NodeRecord) -> StoreResult<()> {
        let _order = self.writes.lock().await;
        self.inner.insert_node(node).await?;
        self.write().nodes.insert(node.id.clone(), stored_node(node));
        Ok(())
    }

    async fn get_node(&self, id_or_name: &str) -> StoreResult<Option<NodeRecord>> {
        Ok(by_id_or_name(&self.read().nodes, id_or_name, |n| &n.name).cloned())
    }

    async fn list_nodes(&self) -> StoreResult<Vec<NodeRecord>> {
        let mut nodes: Vec<NodeRecord> = self.read().nodes.values().cloned().collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
        Ok(nodes)
    }

    async fn record_session(&self, node_id: &str, fingerprint: &Fingerprint, address: &str, seen_at: DateTime<Utc>) -> StoreResult<()> {
        let _order = self.writes.lock().await;
        self.inner.record_session(node_id, fingerprint, address, seen_at).await?;
        if let Some(node) = self.write().nodes.get_mut(node_id) {
            node.fingerprint = fingerprint.clone();
            node.address = address.to_owned();
            node.status = NodeStatus::Ready;
            node.last_seen_at = stored(seen_at);
        }
        Ok(())
    }

    async fn apply_status_changes(&self, changes: &[NodeStatusChange]) -> StoreResult<()> {
        let _order = self.writes.lock().await;
        self.inner.apply_status_changes(changes).await?;
        let mut state = self.write();
        for change in changes {
            if let Some(node) = state.nodes.get_mut(&change.node_id) {
                node.status = change.status;
                node.last_seen_at = stored(change.last_seen_at);
            }
        }
        Ok(())
    }

    async fn set_cordoned(&self, node_id: &str, cordoned: bool) -> StoreResult<()> {
        let _order = self.writes.lock().await;
        self.inner.set_cordoned(node_id, cordoned).await?;
        if let Some(node) = self.write().nodes.get_mut(node_id) {
            node.cordoned = cordoned;
        }
        Ok(())
    }

    async fn delete_node(&self, node_id: &str) -> StoreResult<bool> {
        let _order = self.writes.lock().await;
        let deleted = self.inner.delete_node(node_id).await?;
        self.write().nodes.remove(node_id);
        Ok(deleted)
    }

    // ---- join tokens, API tokens, events: straight to the database ----

    async fn insert_join_token(&self, token: &JoinTokenRecord) -> StoreResult<()> {
        self.inner.insert_join_token(token).await
    }

    async fn get_join_token(&self, id: &str) -> StoreResult<Option<JoinTokenRecord>> {
        self.inner.get_join_token(id).await
    }

    async fn list_join_tokens(&self) -> StoreResult<Vec<JoinTokenRecord>> {
        self.inner.list_join_tokens().await
    }

    async fn use_join_token(&self, id: &str, now: DateTime<Utc>) -> StoreResult<bool> {
        self.inner.use_join_token(id, now).await
    }

    async fn revoke_join_token(&self, id: &str) -> StoreResult<bool> {
        self.inner.revoke_join_token(id).await
    }

    async fn insert_api_token(&self, token: &ApiTokenRecord) -> StoreResult<()> {
        self.inner.insert_api_token(token).await
    }

    async fn get_api_token(&self, id: &str) -> StoreResult<Option<ApiTokenRecord>> {
        self.inner.get_api_token(id).await
    }

    async fn list_api_tokens(&self) -> StoreResult<Vec<ApiTokenRecord>> {
        self.inner.list_api_tokens().await
    }

    async fn revoke_api_token(&self, id: &str) -> StoreResult<bool> {
        self.inner.revoke_api_token(id).await
    }

    async fn append_event(&self, event: &NewEvent) -> StoreResult<u64> {
        self.inner.append_event(event).await
    }

    async fn append_events(&self, events: &[NewEvent]) -> StoreResult<Vec<u64>> {
        self.inner.append_events(events).await
    }

    async fn list_events(&self, after: u64, limit: u32) -> StoreResult<Vec<EventRecord>> {
        self.inner.list_events(after, limit).await
    }

    async fn prune_events(&self, older_than: Option<DateTime<Utc>>, keep: Option<u64>) -> StoreResult<u64> {
        self.inner.prune_events(older_than, keep).await
    }

    // ---- deployments ----

    async fn create_deployment(&self, deployment: &DeploymentRecord) -> StoreResult<()> {
        let _order = self.writes.lock().await;
        self.inner.create_deployment(deployment).await?;
        self.refresh_deployment(&deployment.id).await
    }

    async fn get_deployment(&self, id_or_name: &str) -> StoreResult<Option<DeploymentRecord>> {
        Ok(by_id_or_name(&self.read().deployments, id_or_name, |d| &d.spec.name).cloned())
    }

    async fn find_deployment_by_key(&self, idempotency_key: &str) -> StoreResult<Option<DeploymentRecord>> {
        Ok(self.read().deployments.values().find(|d| d.idempotency_key.as_deref() == Some(idempotency_key)).cloned())
    }

    async fn list_deployments(&self) -> StoreResult<Vec<DeploymentRecord>> {
        let mut deployments: Vec<DeploymentRecord> = self.read().deployments.values().cloned().collect();
        deployments.sort_by(|a, b| a.spec.name.cmp(&b.spec.name).then_with(|| a.id.cmp(&b.id)));
        Ok(deployments)
    }

    async fn save_deployment(&self, deployment: &DeploymentRecord) -> StoreResult<()> {
        let _order = self.writes.lock().await;
        self.inner.save_deployment(deployment).await?;
        self.refresh_deployment(&deployment.id).await
    }

    async fn set_deployment_status(
        &self,
        read: &DeploymentRecord,
        status: DeploymentStatus,
        message: &str,
        updated_at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let _order = self.writes.lock().await;
        let written = self.inner.set_deployment_status(read, status, message, updated_at).await?;
        if written {
            self.refresh_deployment(&read.id).await?;
        }
        Ok(written)
    }

    async fn get_revision(&self, deployment_id: &str, revision: u32) -> StoreResult<Option<DeploymentSpec>> {
        self.inner.get_revision(deployment_id, revision).await
    }

    async fn delete_deployment(&self, deployment_id: &str) -> StoreResult<bool> {
        let _order = self.writes.lock().await;
        let deleted = self.inner.delete_deployment(deployment_id).await?;
        let mut state = self.write();
        state.deployments.remove(deployment_id);
        state.instances.retain(|_, i| i.deployment_id != deployment_id);
        Ok(deleted)
    }

    // ---- instances ----

    async fn insert_instances(&self, instances: &[InstanceRecord]) -> StoreResult<()> {
        let _order = self.writes.lock().await;
        self.inner.insert_instances(instances).await?;
        let mut state = self.write();
        for instance in instances {
            state.instances.insert(instance.id.clone(), stored_instance(instance));
        }
        Ok(())
    }

    async fn update_instances(&self, instances: &[InstanceRecord]) -> StoreResult<()> {
        let _order = self.writes.lock().await;
        self.inner.update_instances(instances).await?;
        let mut state = self.write();
        for instance in instances {
            // Unknown ids are skipped, as in the database.
            if let Some(cached) = state.instances.get_mut(&instance.id) {
                // The id, deployment and creation time never change.
                *cached = InstanceRecord {
                    id: cached.id.clone(),
                    deployment_id: cached.deployment_id.clone(),
                    created_at: cached.created_at,
                    ..stored_instance(instance)
                };
            }
        }
        Ok(())
    }

    async fn list_instances(&self, deployment_id: Option<&str>) -> StoreResult<Vec<InstanceRecord>> {
        let mut instances: Vec<InstanceRecord> =
            self.read().instances.values().filter(|i| deployment_id.is_none_or(|d| i.deployment_id == d)).cloned().collect();
        instances.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.id.cmp(&b.id)));
        Ok(instances)
    }

    async fn delete_instances(&self, ids: &[String]) -> StoreResult<()> {
        let _order = self.writes.lock().await;
        self.inner.delete_instances(ids).await?;
        let mut state = self.write();
        for id in ids {
            state.instances.remove(id);
        }
        Ok(())
    }

    // ---- builds (not cached: read rarely, written by one task per build) ----

    async fn insert_build(&self, build: &crate::model::BuildRecord) -> StoreResult<()> {
        self.inner.insert_build(build).await
    }

    async fn get_build(&self, id: &str) -> StoreResult<Option<crate::model::BuildRecord>> {
        self.inner.get_build(id).await
    }

    async fn list_builds(&self, limit: u32) -> StoreResult<Vec<crate::model::BuildRecord>> {
        self.inner.list_builds(limit).await
    }

    async fn update_build(&self, build: &crate::model::BuildRecord, expected: diplo_api::build::BuildStatus) -> StoreResult<bool> {
        self.inner.update_build(build, expected).await
    }

    async fn save_build_log(&self, id: &str, log: &[u8]) -> StoreResult<bool> {
        self.inner.save_build_log(id, log).await
    }

    async fn get_build_log(&self, id: &str) -> StoreResult<Option<Vec<u8>>> {
        self.inner.get_build_log(id).await
    }

    // ---- registry credentials (rarely read: not cached) ----

    async fn set_registry_credential(&self, credential: &crate::model::RegistryCredentialRecord) -> StoreResult<bool> {
        self.inner.set_registry_credential(credential).await
    }

    async fn list_registry_credentials(&self) -> StoreResult<Vec<crate::model::RegistryCredentialRecord>> {
        self.inner.list_registry_credentials().await
    }

    async fn delete_registry_credential(&self, registry: &str) -> StoreResult<bool> {
        self.inner.delete_registry_credential(registry).await
    }

    // ---- stacks (read on deploys and by the stack rollout: not cached) ----

    async fn save_stack(&self, stack: &crate::model::StackRecord) -> StoreResult<bool> {
        self.inner.save_stack(stack).await
    }

    async fn get_stack(&self, name: &str) -> StoreResult<Option<crate::model::StackRecord>> {
        self.inner.get_stack(name).await
    }

    async fn list_stacks(&self) -> StoreResult<Vec<crate::model::StackRecord>> {
        self.inner.list_stacks().await
    }

    async fn delete_stack(&self, name: &str) -> StoreResult<bool> {
        self.inner.delete_stack(name).await
    }
}
