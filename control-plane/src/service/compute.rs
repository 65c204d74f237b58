//! The compute view of the cluster (LibGo's `/api/v1/compute/*`): instances are the
//! replicas of deployments *and* the containers created directly (outside any
//! deployment); backends are the container runtimes across the nodes.

use std::collections::BTreeMap;

use chrono::Utc;
use diplo_api::container::{ContainerStatus, LABEL_DEPLOYMENT, RestartPolicy};
use diplo_api::runtime::{Capability, Runtime};

use super::ControlPlane;
use crate::auth::Caller;
use crate::error::{ServiceError, ServiceResult};
use crate::model::{DeploymentRecord, InstanceDesired, InstanceRecord, InstanceStatus, NodeStatus, ObservedContainer, Role};
use crate::planner::DIRECT;

/// Instances counted: every deployment instance not being removed, and every direct
/// container; running ones apart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InstanceCounts {
    /// All instances.
    pub total: u32,
    /// Those whose container runs.
    pub running: u32,
}

/// Whether an observed container was created directly rather than for a deployment.
pub fn is_direct(container: &ObservedContainer) -> bool {
    container.info.labels.get(LABEL_DEPLOYMENT).is_some_and(|d| d == DIRECT)
}

/// Counts instances: deployment instances desired to run (one being removed is on its
/// way out and no longer counts), plus direct containers (a deployment's containers are
/// already counted through its instances).
pub fn count_instances<'a>(
    instances: impl IntoIterator<Item = &'a InstanceRecord>,
    containers: impl IntoIterator<Item = &'a ObservedContainer>,
) -> InstanceCounts {
    let mut counts = InstanceCounts::default();
    for instance in instances.into_iter().filter(|i| i.desired == InstanceDesired::Run) {
        counts.total += 1;
        counts.running += u32::from(instance.status == InstanceStatus::Running);
    }
    for container in containers.into_iter().filter(|c| is_direct(c)) {
        counts.total += 1;
        counts.running += u32::from(container.info.status == ContainerStatus::Running);
    }
    counts
}

/// What an operator does to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceAction {
    /// Start its stopped container.
    Start,
    /// Stop its container: SIGTERM, SIGKILL after the grace period (default 10 s).
    Stop(Option<std::time::Duration>),
    /// Restart its container in place.
    Restart,
    /// Remove it.
    Delete,
}

/// An instance: one of a deployment's, or a direct container.
#[derive(Debug, Clone)]
pub enum AnyInstance {
    /// A deployment's instance.
    Deployment(super::InstanceView),
    /// A direct container (for a deletion: as it was just before).
    Direct(DirectInstance),
}

/// A direct container listed as an instance: its container id is its instance id.
#[derive(Debug, Clone)]
pub struct DirectInstance {
    /// Node id.
    pub node_id: String,
    /// Node name.
    pub node_name: String,
    /// The container as last observed.
    pub container: ObservedContainer,
}

/// One node's share of a backend (runtime).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendNode {
    /// Node id.
    pub node_id: String,
    /// Node name.
    pub node_name: String,
    /// The node's health.
    pub status: NodeStatus,
    /// The runtime answers on this node.
    pub available: bool,
    /// Its version there.
    pub version: String,
    /// Why it is unavailable, if it is.
    pub error: String,
    /// Instances it runs there (deployment instances and direct containers).
    pub instances: InstanceCounts,
}

/// A backend (runtime) across the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendInfo {
    /// Which runtime.
    pub runtime: Runtime,
    /// Available on at least one ready node.
    pub available: bool,
    /// What its driver supports.
    pub capabilities: Vec<Capability>,
    /// Every node that reports this runtime (available or not).
    pub nodes: Vec<BackendNode>,
    /// Instances on it, cluster-wide.
    pub instances: InstanceCounts,
}

/// New settings for an instance; `None` keeps the current one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceUpdate {
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU limit in millicores.
    pub cpu_millis: Option<u32>,
    /// Restart policy.
    pub restart_policy: Option<RestartPolicy>,
}

impl InstanceUpdate {
    /// Nothing to change.
    pub fn is_empty(&self) -> bool {
        *self == InstanceUpdate::default()
    }
}

/// Builds the backend report from the nodes, the instances and the observed containers.
pub fn backend_info(
    runtime: Runtime,
    nodes: &[crate::model::NodeRecord],
    instances: &[InstanceRecord],
    containers: &[(String, ObservedContainer)],
) -> BackendInfo {
    let mut per_node: Vec<BackendNode> = Vec::new();
    for node in nodes {
        let Some(report) = node.fingerprint.runtimes.iter().find(|r| r.runtime == runtime) else { continue };
        let mine = instances.iter().filter(|i| i.node_id.as_deref() == Some(&node.id) && i.runtime == Some(runtime));
        let direct = containers.iter().filter(|(id, c)| *id == node.id && c.runtime == runtime).map(|(_, c)| c);
        per_node.push(BackendNode {
            node_id: node.id.clone(),
            node_name: node.name.clone(),
            status: node.status,
            available: report.available,
            version: report.version.clone(),
            error: report.error.clone(),
            instances: count_instances(mine, direct),
        });
    }
    let instances = per_node.iter().fold(InstanceCounts::default(), |sum, n| InstanceCounts {
        total: sum.total + n.instances.total,
        running: sum.running + n.instances.running,
    });
    BackendInfo {
        runtime,
        available: per_node.iter().any(|n| n.available && n.status == NodeStatus::Ready),
        capabilities: runtime.capabilities(),
        nodes: per_node,
        instances,
    }
}

/// The deployment template with `update` applied; errors name the field.
pub fn apply_update(deployment: &DeploymentRecord, update: &InstanceUpdate) -> ServiceResult<crate::model::DeploymentSpec> {
    if update.is_empty() {
        return Err(ServiceError::invalid("body", "nothing to update: give memory, cpus or restart_policy"));
    }
    let mut spec = deployment.spec.clone();
    if let Some(memory) = update.memory_bytes {
        spec.container.memory_bytes = Some(memory);
    }
    if let Some(cpu) = update.cpu_millis {
        spec.container.cpu_millis = Some(cpu);
    }
    if let Some(policy) = update.restart_policy {
        spec.container.restart_policy = policy;
    }
    Ok(spec)
}

impl ControlPlane {
    /// Instances counted across the cluster (see [`count_instances`]).
    pub async fn count_instances(&self) -> ServiceResult<InstanceCounts> {
        let views = self.shared_deployment_views().await?;
        let containers = self.nodes.shared_containers();
        Ok(count_instances(views.iter().flat_map(|v| &v.instances), containers.iter().map(|(_, c)| c)))
    }

    /// Direct containers (outside any deployment), listed as instances.
    pub async fn direct_instances(&self, caller: &Caller) -> ServiceResult<Vec<DirectInstance>> {
        caller.require_operator(Role::Viewer)?;
        let names: BTreeMap<String, String> = self.store.list_nodes().await?.into_iter().map(|n| (n.id, n.name)).collect();
        Ok(self
            .nodes
            .containers()
            .into_iter()
            .filter(|(_, c)| is_direct(c))
            .map(|(node_id, container)| DirectInstance { node_name: names.get(&node_id).cloned().unwrap_or_default(), node_id, container })
            .collect())
    }

    /// The direct container whose id or name is `id`, as an instance.
    pub async fn find_direct_instance(&self, caller: &Caller, id: &str) -> ServiceResult<Option<DirectInstance>> {
        Ok(self.direct_instances(caller).await?.into_iter().find(|d| d.container.info.id == id || d.container.info.name == id))
    }

    /// Starts, stops, restarts or deletes an instance: the deployment instance `id`, else
    /// the direct container whose id or name is `id` (a direct container is an instance
    /// too). A deleted deployment instance is replaced by its deployment; a deleted direct
    /// container is gone (stopped first). `NotFound` when neither exists.
    pub async fn act_on_instance(
        self: &std::sync::Arc<Self>,
        caller: &Caller,
        id: &str,
        action: InstanceAction,
    ) -> ServiceResult<AnyInstance> {
        caller.require_operator(Role::Deployer)?;
        let missing = match self.get_instance(caller, id).await {
            Ok(_) => None,
            Err(ServiceError::NotFound(message)) => Some(message),
            Err(err) => return Err(err),
        };
        let Some(missing) = missing else {
            let view = match action {
                InstanceAction::Start => self.start_instance(caller, id).await?,
                InstanceAction::Stop(grace) => self.stop_instance(caller, id, grace).await?,
                InstanceAction::Restart => self.restart_instance(caller, id).await?,
                InstanceAction::Delete => self.delete_instance(caller, id).await?,
            };
            return Ok(AnyInstance::Deployment(view));
        };
        let Some(direct) = self.find_direct_instance(caller, id).await? else {
            return Err(ServiceError::NotFound(missing));
        };
        let container_id = direct.container.info.id.clone();
        let view = match action {
            InstanceAction::Start => self.start_container(caller, &container_id).await?,
            InstanceAction::Stop(grace) => self.stop_container(caller, &container_id, grace).await?,
            InstanceAction::Restart => self.restart_container(caller, &container_id).await?,
            InstanceAction::Delete => {
                self.remove_container(caller, &container_id, true).await?;
                return Ok(AnyInstance::Direct(direct));
            }
        };
        let container = ObservedContainer { runtime: view.runtime, info: view.info };
        Ok(AnyInstance::Direct(DirectInstance { node_id: view.node_id, node_name: view.node_name, container }))
    }

    /// One backend (runtime) across the cluster.
    pub async fn backend_info(&self, caller: &Caller, runtime: Runtime) -> ServiceResult<BackendInfo> {
        let nodes = self.list_nodes(caller).await?;
        let instances: Vec<InstanceRecord> =
            self.store.list_instances(None).await?.into_iter().filter(|i| i.desired == InstanceDesired::Run).collect();
        let containers: Vec<(String, ObservedContainer)> = self.nodes.containers().into_iter().filter(|(_, c)| is_direct(c)).collect();
        Ok(backend_info(runtime, &nodes, &instances, &containers))
    }

    /// Changes an instance's resources or restart policy. A deployment's instances are
    /// copies of its template, so the change goes to the template: a new revision of the
    /// deployment, rolled out to every instance of it (one instance different from its
    /// siblings would be undone by the next rollout). A direct container's settings are
    /// fixed when it is created: the answer says to run it again.
    pub async fn update_instance(&self, caller: &Caller, id: &str, update: InstanceUpdate) -> ServiceResult<DeploymentRecord> {
        caller.require_operator(Role::Deployer)?;
        if id.trim().is_empty() {
            return Err(ServiceError::invalid("id", "an instance id is required"));
        }
        let Some(instance) = self.store.list_instances(None).await?.into_iter().find(|i| i.id == id) else {
            if self.nodes.containers().iter().any(|(_, c)| is_direct(c) && (c.info.id == id || c.info.name == id)) {
                return Err(ServiceError::FailedPrecondition(format!(
                    "instance {id} is a direct container, whose resources and restart policy are fixed at creation: \
                     remove it and run it again with the new settings, or deploy it to make it updatable"
                )));
            }
            return Err(ServiceError::NotFound(format!("instance {id:?} not found")));
        };
        let deployment = self
            .store
            .get_deployment(&instance.deployment_id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("the deployment of instance {id} is gone")))?;
        let spec = apply_update(&deployment, &update)?;
        let updated = self.update_deployment(caller, spec).await?;
        tracing::info!(instance = id, deployment = %updated.spec.name, revision = updated.revision, at = %Utc::now(), "instance update rolled out through its deployment");
        Ok(updated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diplo_api::container::ContainerInfo;

    fn instance(desired: InstanceDesired, status: InstanceStatus, node: &str, runtime: Runtime) -> InstanceRecord {
        let mut record = InstanceRecord::placed(uuid::Uuid::new_v4().to_string(), "d1", 1, node, runtime, Utc::now());
        record.desired = desired;
        record.status = status;
        record
    }

    fn container(deployment: &str, status: ContainerStatus, runtime: Runtime) -> ObservedContainer {
        let mut info = ContainerInfo::new(uuid::Uuid::new_v4().to_string(), "c", "img", status);
        info.labels.insert(LABEL_DEPLOYMENT.into(), deployment.into());
        ObservedContainer { runtime, info }
    }

    #[test]
    fn instances_are_counted_with_direct_containers_and_without_those_being_removed() {
        use InstanceDesired::*;
        use InstanceStatus::*;
        let d = Runtime::Docker;
        let cases: Vec<(Vec<InstanceRecord>, Vec<ObservedContainer>, InstanceCounts)> = vec![
            (vec![], vec![], InstanceCounts { total: 0, running: 0 }),
            (vec![instance(Run, Running, "n1", d), instance(Run, Starting, "n1", d)], vec![], InstanceCounts { total: 2, running: 1 }),
            (vec![instance(Remove, Running, "n1", d), instance(Run, Failed, "n1", d)], vec![], InstanceCounts { total: 1, running: 0 }),
            (
                vec![],
                vec![container(DIRECT, ContainerStatus::Running, d), container(DIRECT, ContainerStatus::Exited, d)],
                InstanceCounts { total: 2, running: 1 },
            ),
            // A deployment's container is counted through its instance, not twice.
            (
                vec![instance(Run, Running, "n1", d)],
                vec![container("d1", ContainerStatus::Running, d), container(DIRECT, ContainerStatus::Running, d)],
                InstanceCounts { total: 2, running: 2 },
            ),
        ];
        for (i, (instances, containers, expected)) in cases.iter().enumerate() {
            assert_eq!(count_instances(instances, containers), *expected, "case {i}");
        }
    }

    #[test]
    fn a_backend_reports_its_nodes_versions_capabilities_and_instances() {
        use diplo_api::fingerprint::{Fingerprint, RuntimeReport};
        let node = |id: &str, status: NodeStatus, runtimes: Vec<RuntimeReport>| crate::model::NodeRecord {
            id: id.to_owned(),
            name: format!("name-{id}"),
            status,
            fingerprint: Fingerprint { runtimes, ..Fingerprint::default() },
            cordoned: false,
            labels: BTreeMap::new(),
            joined_at: Utc::now(),
            last_seen_at: Utc::now(),
            address: String::new(),
        };
        let report = |runtime: Runtime, available: bool, version: &str| RuntimeReport {
            runtime,
            available,
            version: version.into(),
            endpoint: String::new(),
            error: String::new(),
            rootless: false,
        };
        let nodes = vec![
            node("n1", NodeStatus::Ready, vec![report(Runtime::Docker, true, "27.1"), report(Runtime::Lxc, true, "5.0")]),
            node("n2", NodeStatus::Ready, vec![report(Runtime::Docker, false, "")]),
            node("n3", NodeStatus::Ready, vec![report(Runtime::Podman, true, "4.9")]),
        ];
        let instances = vec![
            instance(InstanceDesired::Run, InstanceStatus::Running, "n1", Runtime::Docker),
            instance(InstanceDesired::Run, InstanceStatus::Running, "n1", Runtime::Lxc),
        ];
        let containers = vec![("n1".to_owned(), container(DIRECT, ContainerStatus::Exited, Runtime::Docker))];
        let docker = backend_info(Runtime::Docker, &nodes, &instances, &containers);
        assert!(docker.available);
        assert_eq!(docker.capabilities, Runtime::Docker.capabilities());
        let versions: Vec<(&str, bool, &str)> =
            docker.nodes.iter().map(|n| (n.node_id.as_str(), n.available, n.version.as_str())).collect();
        assert_eq!(versions, [("n1", true, "27.1"), ("n2", false, "")]);
        assert_eq!(docker.nodes[0].instances, InstanceCounts { total: 2, running: 1 });
        assert_eq!(docker.instances, InstanceCounts { total: 2, running: 1 });
        let containerd = backend_info(Runtime::Containerd, &nodes, &instances, &containers);
        assert!(!containerd.available && containerd.nodes.is_empty());
        assert_eq!(containerd.instances, InstanceCounts::default());
    }
}
